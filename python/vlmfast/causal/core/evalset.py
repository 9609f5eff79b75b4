"""The evaluation set of a concept intervention and its metrics.

An :class:`EvalSet` holds matched image/caption pairs (for retrieval), what each image
shows (``labels[N, C]``, for per-concept figures) and zero-shot prompts per concept.
:func:`concept_metrics` turns embeddings of one or many intervened variants into the
figures ``concept_intervention`` reports, all batched over the variants:

* ``score``: mean over the concept's images of ``scale*cos(image, prompt) + bias``;
* ``cosine``: the same without scale and bias;
* ``margin``: zero-shot logit margin, ``logit(concept) - max logit(absent concepts of the
  same kind)`` (colors compete with colors), mean over the concept's images;
* ``zero_shot``: the fraction of those images whose margin is positive (ties are wrong);
* ``i2t@1/@5``, ``t2i@1/@5``: recall of the matched caption / image among all pairs, over
  the pairs whose image shows the concept; rank = 1 + candidates scoring strictly higher
  that are not duplicates of the matched one (an identical caption, or identical pixels,
  counts as found; without the mask, last-bit noise that differs with batch layout and
  CPU kernels would decide between them).

Overall figures use every (image, concept shown) pair and every caption pair.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.errors import InputError, ShapeError

METRICS: tuple[str, ...] = (
    "margin",
    "score",
    "cosine",
    "zero_shot",
    "i2t@1",
    "i2t@5",
    "t2i@1",
    "t2i@5",
)


@dataclass
class EvalSet:
    """Matched image/caption pairs, their concept labels and the zero-shot prompts.

    Raises:
        ShapeError: (constructing) ``captions``, ``labels`` or ``kinds`` do not match the
            images and concepts.
    """

    images: torch.Tensor
    """Pixels ``[N, 3, H, W]`` (preprocessed)."""
    captions: list[str]
    """Caption ``i`` describes image ``i``."""
    labels: npt.NDArray[np.bool_]
    """``[N, C]``: image ``i`` shows concept ``c``."""
    concepts: tuple[str, ...]
    kinds: tuple[str, ...]
    """Kind of each concept; zero-shot candidates are the concepts of the same kind."""
    prompts: dict[str, list[str]] = field(default_factory=dict)
    """Prompt texts per concept (embeddings averaged); default ``"a photo of a {}."``."""

    def __post_init__(self) -> None:
        n = int(self.images.shape[0])
        self.labels = np.asarray(self.labels, dtype=bool)
        if len(self.captions) != n:
            raise ShapeError(f"eval_data has {n} images but {len(self.captions)} captions")
        if self.labels.shape != (n, len(self.concepts)):
            raise ShapeError(
                f"eval_data.labels must be [{n}, {len(self.concepts)}], got {self.labels.shape}"
            )
        if len(self.kinds) != len(self.concepts):
            raise ShapeError("eval_data.kinds needs one kind per concept")
        for c in self.concepts:
            self.prompts.setdefault(c, [f"a photo of a {c}."])

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    def prompt_texts(self) -> tuple[list[str], npt.NDArray[np.int64]]:
        """Returns all prompts and the concept column of each (``int64[prompts]``)."""
        texts: list[str] = []
        owner: list[int] = []
        for c, name in enumerate(self.concepts):
            for p in self.prompts[name]:
                texts.append(p)
                owner.append(c)
        return texts, np.asarray(owner, dtype=np.int64)

    def select(self, concepts: Sequence[str]) -> EvalSet:
        """Returns the same pairs with only ``concepts`` as columns.

        Raises:
            InputError: a concept is not in this set.
        """
        missing = [c for c in concepts if c not in self.concepts]
        if missing:
            raise InputError(
                f"concepts {missing} are not in eval_data; it has {list(self.concepts)}"
            )
        cols = [self.concepts.index(c) for c in concepts]
        return EvalSet(
            self.images,
            list(self.captions),
            self.labels[:, cols],
            tuple(concepts),
            tuple(self.kinds[c] for c in cols),
            {c: list(self.prompts[c]) for c in concepts},
        )

    @classmethod
    def synthetic(
        cls,
        n: int = 256,
        *,
        seed: int = 1,
        split: str = "test",
        max_objects: int = 3,
        kinds: Sequence[str] = ("color", "shape"),
        pair: Any = None,
    ) -> EvalSet:
        """``n`` samples of the synthetic benchmark with at most ``max_objects`` objects.

        Labels: the colors and shapes each image shows. Prompts: the benchmark's zero-shot
        templates (``"a {color} shape"``, ``"a {shape}"``). Captions: the samples' own.
        With ``pair``, the images go through ``pair.preprocess`` (any image size), else
        they are the bundled model's normalised 64 x 64 pixels.

        Returns:
            The eval set of ``n`` pairs, labelled by color and / or shape.

        Raises:
            InputError: an unknown kind, or too few samples with ``<= max_objects`` objects.
        """
        from vlmfast.data.synthetic import spec
        from vlmfast.data.synthetic.dataset import make_sample, render_batch
        from vlmfast.data.synthetic.model import pixels_from_uint8

        bad = sorted(set(kinds) - {"color", "shape"})
        if bad:
            raise InputError(f"synthetic eval kinds must be 'color'/'shape', got {bad}")
        samples: list[Any] = []
        i = 0
        while len(samples) < n:
            s = make_sample(seed, split, i)
            i += 1
            if len(s.scene.objects) <= max_objects:
                samples.append(s)
            if i > 50 * n + 100:
                raise InputError(f"too few synthetic samples with <= {max_objects} objects")
        names: list[str] = []
        kind_of: list[str] = []
        prompts: dict[str, list[str]] = {}
        if "color" in kinds:
            for c in spec.COLORS:
                names.append(c)
                kind_of.append("color")
                prompts[c] = [f"a {c} shape".replace("a orange", "an orange")]
        if "shape" in kinds:
            for s_ in spec.SHAPES:
                names.append(s_)
                kind_of.append("shape")
                prompts[s_] = [f"a {s_}"]
        labels = np.zeros((len(samples), len(names)), dtype=bool)
        for r, s in enumerate(samples):
            for o in s.scene.objects:
                for attr in (o.color, o.shape):
                    if attr in names:
                        labels[r, names.index(attr)] = True
        raw = render_batch(samples)
        if pair is not None:
            from PIL import Image

            px = pair.preprocess([Image.fromarray(a) for a in raw])
        else:
            px = pixels_from_uint8(raw)
        return cls(
            px, [s.caption.text for s in samples], labels, tuple(names), tuple(kind_of), prompts
        )

    @classmethod
    def from_spec(cls, spec_str: str, pair: Any = None) -> EvalSet:
        """Returns the eval set of a spec ``synthetic[:split[:n[:seed[:max_objects]]]]``,
        e.g. ``synthetic:test:256:1:1`` (see :meth:`synthetic`).

        Raises:
            InputError: a malformed spec or a source other than ``synthetic``.
        """
        parts = spec_str.split(":")
        if parts[0] != "synthetic":
            raise InputError(
                f"--data {spec_str!r}: expected synthetic[:split[:n[:seed[:max_objects]]]]"
            )
        try:
            split = parts[1] if len(parts) > 1 and parts[1] else "test"
            n = int(parts[2]) if len(parts) > 2 else 256
            seed = int(parts[3]) if len(parts) > 3 else 1
            max_obj = int(parts[4]) if len(parts) > 4 else 3
        except ValueError as err:
            raise InputError(f"--data {spec_str!r}: {err}") from None
        return cls.synthetic(n, seed=seed, split=split, max_objects=max_obj, pair=pair)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def concept_embeds(
    prompt_embeds: torch.Tensor, owner: npt.NDArray[np.int64], n_concepts: int
) -> torch.Tensor:
    """``[V, P, E]`` prompt embeddings -> ``[V, C, E]`` per-concept mean of normalized prompts."""
    own = torch.as_tensor(owner, device=prompt_embeds.device)
    onehot = torch.zeros(
        n_concepts, len(owner), dtype=prompt_embeds.dtype, device=prompt_embeds.device
    )
    onehot[own, torch.arange(len(owner), device=prompt_embeds.device)] = 1.0
    onehot = onehot / onehot.sum(1, keepdim=True)
    return _normalize(onehot @ _normalize(prompt_embeds))


@dataclass
class MetricTable:
    """Figures of ``V`` variants: ``per_concept[V, C, M]`` and ``overall[V, M]`` (``METRICS``)."""

    per_concept: npt.NDArray[np.float64]
    overall: npt.NDArray[np.float64]


def _margins(s: torch.Tensor, lab: torch.Tensor, kinds: Sequence[str]) -> torch.Tensor:
    """Zero-shot margin ``[V, N, C]``: the concept's logit minus the best absent concept of
    the same kind (NaN where no concept of the kind is absent)."""
    margin = torch.full_like(s, float("nan"))
    kind_arr = np.asarray(kinds, dtype=object)
    for kind in dict.fromkeys(kinds):
        cols = torch.as_tensor(np.flatnonzero(kind_arr == kind), device=s.device)
        sk = s[..., cols].masked_fill(lab[:, cols], float("-inf"))
        comp = sk.amax(-1, keepdim=True)  # best absent concept of the kind
        m = s[..., cols] - comp
        m = torch.where(torch.isfinite(comp), m, torch.full_like(m, float("nan")))
        margin[..., cols] = m
    return margin


def duplicate_masks(ev: EvalSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``same_caption[i, j]`` (caption texts equal) and ``same_image[j, i]`` (pixels equal).

    Returns:
        Two ``bool[N, N]`` masks. A retrieval rank skips candidates that duplicate the
            matched one: identical captions embed identically up to the last bits, which
            differ with batch layout and CPU kernels, so only an explicit mask makes them
            tie.
    """
    caps = np.asarray(ev.captions, dtype=object)
    same_cap = torch.as_tensor(caps[:, None] == caps[None, :], device=device)
    keys = np.asarray([hash(x.cpu().numpy().tobytes()) for x in ev.images], dtype=np.int64)
    same_img = torch.as_tensor(keys[:, None] == keys[None, :], device=device)
    return same_cap, same_img


def concept_metrics(
    image_embeds: torch.Tensor,
    caption_embeds: torch.Tensor,
    prompt_embeds: torch.Tensor,
    ev: EvalSet,
    owner: npt.NDArray[np.int64],
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
) -> MetricTable:
    """The METRICS of each variant from its embeddings (``[V, N, E]``, ``[V, N, E]``, ``[V, P, E]``)."""
    img = _normalize(image_embeds.double())
    cap = _normalize(caption_embeds.double())
    con = concept_embeds(prompt_embeds.double(), owner, len(ev.concepts))
    scale = float(logit_scale.exp())
    bias = 0.0 if logit_bias is None else float(logit_bias)
    cos = img @ con.transpose(-1, -2)  # [V, N, C]
    s = cos * scale + bias
    lab = torch.as_tensor(ev.labels, device=s.device)
    margin = _margins(s, lab, ev.kinds)
    logits = img @ cap.transpose(-1, -2)  # [V, N, N]
    diag = logits.diagonal(dim1=-2, dim2=-1)
    same_cap, same_img = duplicate_masks(ev, logits.device)
    rank_i2t = ((logits > diag.unsqueeze(-1)) & ~same_cap).sum(-1) + 1  # [V, N]
    rank_t2i = ((logits > diag.unsqueeze(-2)) & ~same_img).sum(-2) + 1
    pos = lab.double()  # [N, C]
    npos = pos.sum(0)  # [C]

    def per_c(x: torch.Tensor) -> torch.Tensor:  # x [V, N, C] -> [V, C] mean over positives
        w = pos * torch.isfinite(x)
        return torch.nan_to_num(x, nan=0.0).mul(w).sum(-2) / w.sum(-2)

    def per_c_rows(x: torch.Tensor) -> torch.Tensor:  # x [V, N] -> [V, C]
        return (x.double() @ pos) / npos

    per = torch.stack(
        [
            per_c(margin),
            per_c(s),
            per_c(cos),
            per_c((margin > 0).double().masked_fill(torch.isnan(margin), float("nan"))),
            per_c_rows(rank_i2t <= 1),
            per_c_rows(rank_i2t <= 5),
            per_c_rows(rank_t2i <= 1),
            per_c_rows(rank_t2i <= 5),
        ],
        dim=-1,
    )

    def all_pos(x: torch.Tensor) -> torch.Tensor:  # [V, N, C] -> [V]
        w = pos * torch.isfinite(x)
        return torch.nan_to_num(x, nan=0.0).mul(w).sum((-2, -1)) / w.sum((-2, -1))

    overall = torch.stack(
        [
            all_pos(margin),
            all_pos(s),
            all_pos(cos),
            all_pos((margin > 0).double().masked_fill(torch.isnan(margin), float("nan"))),
            (rank_i2t <= 1).double().mean(-1),
            (rank_i2t <= 5).double().mean(-1),
            (rank_t2i <= 1).double().mean(-1),
            (rank_t2i <= 5).double().mean(-1),
        ],
        dim=-1,
    )
    return MetricTable(per.cpu().numpy(), overall.cpu().numpy())


def as_eval_set(eval_data: Any, pair: Any) -> EvalSet:
    """An EvalSet from an EvalSet, a spec string or a mapping of its fields."""
    if isinstance(eval_data, EvalSet):
        ev = eval_data
    elif isinstance(eval_data, str):
        ev = EvalSet.from_spec(eval_data, pair)
    elif isinstance(eval_data, Mapping):
        try:
            ev = EvalSet(**dict(eval_data))
        except TypeError as err:
            raise InputError(f"eval_data mapping: {err}") from None
    else:
        raise InputError(
            "eval_data must be a vf.causal.EvalSet, a spec like 'synthetic:test:256' or a "
            f"mapping of EvalSet fields; got {type(eval_data).__name__}"
        )
    if not isinstance(ev.images, torch.Tensor):
        ev.images = pair.preprocess(ev.images)
    ev.images = ev.images.to(device=pair.device, dtype=pair.dtype)
    size = int(pair.config.image.image_size)
    if tuple(ev.images.shape[1:]) != (3, size, size):
        raise InputError(
            f"eval_data images are {tuple(ev.images.shape[1:])}, the model takes (3, {size}, "
            f"{size}): build the EvalSet with pair= (EvalSet.synthetic(..., pair=pair))"
        )
    return ev
