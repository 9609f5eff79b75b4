"""``HookedPair``: both towers of a CLIP/SigLIP model and the logit, under one hook namespace."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmfast.errors import HookNameError, InputError, ModelLoadError
from vlmfast.models.config import PairConfig
from vlmfast.models.hooks import HookContext, is_glob, resolve_hooks
from vlmfast.models.towers import ImageTower, TextTower, Tower
from vlmfast.models.weights import export_state_dict, load_into

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from PIL.Image import Image

    from vlmfast.models.interventions import Intervention

Tokenizer = Callable[[list[str]], Tensor]
Preprocess = Callable[["Image"], Tensor]


@dataclass
class RunOutput:
    """Result of ``HookedPair.run``; a tower that was not run gives ``None``."""

    logits: Tensor | None
    """[n_img, n_txt] = exp(logit_scale) * cos (+ logit_bias); ``None`` unless both towers ran."""
    image_embeds: Tensor | None
    """Projected, unnormalised image embeddings [n_img, embed_dim]."""
    text_embeds: Tensor | None
    """Projected, unnormalised text embeddings [n_txt, embed_dim]."""
    cache: dict[str, Tensor] = field(default_factory=dict)
    """Cached hook values by full name (after any interventions at that hook)."""

    def __getitem__(self, name: str) -> Tensor:
        return self.cache[name]


class HookedPair(nn.Module):
    """A two-tower model (image + text) with hooks on every head, neuron and residual stream.

    Build with ``vf.load_pair(spec)`` or ``HookedPair.from_state_dict(config, weights)``.
    Parameters do not require grad (an analysis model); call ``requires_grad_(True)`` to
    train it.
    """

    def __init__(
        self,
        config: PairConfig,
        *,
        tokenizer: Tokenizer | None = None,
        preprocess: Preprocess | None = None,
        spec: str = "",
    ) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.image = ImageTower(config.image)
        self.text = TextTower(config.text)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0)) if config.logit_bias else None
        self._tokenizer = tokenizer
        self._preprocess = preprocess
        self._hook_points = self.image.hook_points() + self.text.hook_points()
        self.requires_grad_(requires_grad=False)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_state_dict(
        cls,
        config: PairConfig,
        state_dict: Mapping[str, Tensor],
        *,
        tokenizer: Tokenizer | None = None,
        preprocess: Preprocess | None = None,
        spec: str = "",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        share_memory: bool = False,
    ) -> HookedPair:
        """Returns a pair built from a config and an internal-format state dict (see ``weights``).

        ``share_memory=True`` reuses the state dict's tensors where possible instead of
        copying them (the caller must not modify them afterwards).
        """
        with torch.device("meta"):
            pair = cls(config, tokenizer=tokenizer, preprocess=preprocess, spec=spec)
        pair = pair.to_empty(device=device or "cpu")
        if dtype is not None:
            pair = pair.to(dtype=dtype)
        load_into(pair, state_dict, share=share_memory)
        return pair

    def internal_state_dict(self) -> dict[str, Tensor]:
        """Returns the weights in the internal format (what ``from_state_dict`` consumes)."""
        return export_state_dict(self)

    # ---- properties --------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights."""
        return self.logit_scale.dtype

    def tower(self, name: str) -> Tower:
        """Returns the ``"image"`` or ``"text"`` tower.

        Raises:
            InputError: ``name`` is neither.
        """
        if name == "image":
            return self.image
        if name == "text":
            return self.text
        raise InputError(f"unknown tower {name!r}: expected 'image' or 'text'")

    def hook_points(self) -> list[str]:
        """Returns every hook name of this model, image tower first, in forward order."""
        return list(self._hook_points)

    # ---- inputs ------------------------------------------------------------------------
    def preprocess(self, images: Image | Sequence[Image], pool: Executor | None = None) -> Tensor:
        """Returns the pixel tensor [B, 3, H, W] of PIL images, on the model's device and dtype.

        ``pool``: transform the images on these threads (PIL and torch release the
        GIL while they resize and normalise); the tensor is the same either way.

        Raises:
            ModelLoadError: the model was built without image preprocessing.
            InputError: ``images`` is empty.
        """
        if self._preprocess is None:
            raise ModelLoadError(
                f"model {self.spec or self.config.name!r} has no image preprocessing: pass "
                "preprocess= when building it"
            )
        if not isinstance(images, Sequence):
            images = [images]
        if len(images) == 0:
            raise InputError("preprocess got no images")
        if pool is not None and len(images) > 1:
            px = torch.stack(list(pool.map(self._preprocess, images)))
        else:
            px = torch.stack([self._preprocess(img) for img in images])
        return px.to(device=self.device, dtype=self.dtype)

    def tokenize(self, texts: str | Sequence[str]) -> Tensor:
        """Returns the token ids [B, T] (LongTensor) of strings, on the model's device.

        Raises:
            ModelLoadError: the model was built without a tokenizer.
            InputError: ``texts`` is empty.
        """
        if self._tokenizer is None:
            raise ModelLoadError(
                f"model {self.spec or self.config.name!r} has no tokenizer: pass tokenizer= "
                "when building it"
            )
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise InputError("tokenize got no texts")
        tok = self._tokenizer(list(texts))
        return torch.as_tensor(tok, dtype=torch.long).to(self.device)

    def _as_pixels(self, images: Any) -> Tensor:
        if isinstance(images, Tensor):
            return images.to(device=self.device, dtype=self.dtype)
        return self.preprocess(images)

    def _as_tokens(self, texts: Any) -> Tensor:
        if isinstance(texts, Tensor):
            return texts.to(self.device)
        return self.tokenize(texts)

    # ---- forward -----------------------------------------------------------------------
    def encode_image(self, images: Tensor | Sequence[Image]) -> Tensor:
        """Returns the projected, unnormalised image embeddings [B, embed_dim]."""
        return self.image(self._as_pixels(images))[0]

    def encode_text(self, texts: Tensor | Sequence[str]) -> Tensor:
        """Returns the projected, unnormalised text embeddings [B, embed_dim]."""
        return self.text(self._as_tokens(texts))[0]

    def logits_from_embeds(self, image_embeds: Tensor, text_embeds: Tensor) -> Tensor:
        """Returns the logits [n_img, n_txt] = exp(logit_scale) * cos(image, text) (+ logit_bias)."""
        img = F.normalize(image_embeds, dim=-1)
        txt = F.normalize(text_embeds, dim=-1)
        logits = self.logit_scale.exp() * img @ txt.T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits

    def logits(self, images: Tensor | Sequence[Image], texts: Tensor | Sequence[str]) -> Tensor:
        """Returns the image-text logits [n_img, n_txt] (SigLIP: ``scale*cos + bias``, before
        the sigmoid)."""
        return self.logits_from_embeds(self.encode_image(images), self.encode_text(texts))

    def forward(self, images: Tensor, texts: Tensor) -> Tensor:
        """Returns the same as ``logits``: image-text logits [n_img, n_txt]."""
        return self.logits(images, texts)

    def _context(
        self,
        towers: Sequence[str],
        cache: str | Iterable[str] | None,
        interventions: Sequence[Intervention] | None,
    ) -> HookContext | None:
        available = [p for p in self._hook_points if p.split(".", 1)[0] in towers]
        if cache is not None:
            patterns = [cache] if isinstance(cache, str) else list(cache)
            self._check_tower_names(patterns, available, towers)
        for iv in interventions or ():
            if not hasattr(iv, "targets") or not hasattr(iv, "apply"):
                raise InputError(f"{iv!r} is not an intervention (needs targets() and apply())")
            hook = getattr(iv, "hook", None)
            if isinstance(hook, str):
                self._check_tower_names([hook], available, towers)
        return HookContext.for_names(available, cache, interventions)

    def _check_tower_names(
        self, patterns: Sequence[str], available: Sequence[str], towers: Sequence[str]
    ) -> None:
        known = set(self._hook_points)
        for pattern in patterns:
            if not isinstance(pattern, str):
                raise HookNameError(f"hook names must be strings, got {pattern!r}")
            if not is_glob(pattern) and pattern in known and pattern not in available:
                tower = pattern.split(".", 1)[0]
                raise InputError(
                    f"hook {pattern!r} belongs to the {tower} tower, but run() got no {tower} "
                    f"inputs (pass {'images' if tower == 'image' else 'texts'}=...)"
                )
        resolve_hooks(patterns, self._hook_points)  # unknown names -> HookNameError

    def run(
        self,
        images: Tensor | Sequence[Image] | None = None,
        texts: Tensor | Sequence[str] | None = None,
        *,
        cache: str | Iterable[str] | None = None,
        interventions: Sequence[Intervention] | None = None,
        all_rows: bool = False,
    ) -> RunOutput:
        """Runs one or both towers with caching (names or globs) and interventions.

        Hooks of a tower that is not run are skipped by globs and rejected by name.
        Runs under the caller's grad mode: wrap in ``torch.no_grad()`` when you need no
        gradients. ``all_rows=True`` turns off the last block's pooled-row shortcut
        (``Tower.forward_from``): every row of every block runs, as a reference does.

        Returns:
            The logits (both towers run), embeddings and cached hook values, as a
                :class:`RunOutput`.

        Raises:
            InputError: neither ``images`` nor ``texts``, an object that is not an
                intervention, or a hook name of a tower that is not run.
            HookNameError: a hook name or glob matches no hook of the model.
        """
        towers = [t for t, inp in (("image", images), ("text", texts)) if inp is not None]
        if not towers:
            raise InputError("run() needs images=, texts= or both")
        ctx = self._context(towers, cache, interventions)
        img = txt = None
        if images is not None:
            img = self.image(self._as_pixels(images), ctx, all_rows=all_rows)[0]
        if texts is not None:
            txt = self.text(self._as_tokens(texts), ctx, all_rows=all_rows)[0]
        logits = self.logits_from_embeds(img, txt) if img is not None and txt is not None else None
        return RunOutput(logits, img, txt, ctx.cache if ctx is not None else {})

    def extra_repr(self) -> str:
        """Returns the ``spec`` and ``name`` that ``repr(pair)`` shows."""
        return f"spec={self.spec!r}, name={self.config.name!r}"
