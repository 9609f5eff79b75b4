"""Word-level tokenizer of the synthetic benchmark (the bundled tiny CLIP's tokenizer).

Ids: ``<pad>`` = 0, ``<sot>`` = 1, ``<unk>`` = 2, the words, and ``<eot>`` last,
so the end-of-text token has the largest id: open_clip (and vlmfast's ``eot``
pooling) pools the text tower at ``argmax`` of the token ids, which then lands
on ``<eot>``. Text is lower-cased and split on anything that is not a letter;
unknown words map to ``<unk>``; sequences longer than the context are truncated
with ``<eot>`` kept as the last token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vlmfast.data.synthetic import spec

if TYPE_CHECKING:
    import torch

_WORD = re.compile(r"[a-z]+")

EXTRA_WORDS: tuple[str, ...] = (
    "a",
    "an",
    "and",
    "of",
    "left",
    "right",
    "shape",
    "photo",
    "the",
    "with",
)


def vocabulary() -> list[str]:
    """Every token, in id order."""
    words: set[str] = set(EXTRA_WORDS) | set(spec.SHAPES) | set(spec.COLORS) | set(spec.SIZES)
    for rel in spec.RELATIONS:
        words.update(rel.split())
    return ["<pad>", "<sot>", "<unk>", *sorted(words), "<eot>"]


class WordTokenizer:
    """Callable ``list[str] -> LongTensor[B, context_length]`` like open_clip's tokenizers."""

    def __init__(self, context_length: int = 20) -> None:
        self.vocab = vocabulary()
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = context_length
        self.pad_id, self.sot_id, self.unk_id = 0, 1, 2
        self.eot_id = len(self.vocab) - 1

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text: ``<sot>`` words ``<eot>``, truncated, unpadded."""
        body = [self.ids.get(w, self.unk_id) for w in _WORD.findall(text.lower())]
        body = body[: self.context_length - 2]
        return [self.sot_id, *body, self.eot_id]

    def decode(self, ids: Sequence[int]) -> str:
        """Words of a token sequence, specials dropped."""
        return " ".join(self.vocab[i] for i in ids if i > self.unk_id and i != self.eot_id)

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.Tensor:
        import torch

        if isinstance(texts, str):
            texts = [texts]
        ctx = context_length or self.context_length
        out = torch.zeros((len(texts), ctx), dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > ctx:
                ids = [*ids[: ctx - 1], self.eot_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
