"""Per-sample activations of units (neurons, heads, SAE features), ready for scoring.

A unit's activation on an image is its maximum (or mean) over the image's patch tokens
(CLS excluded), on a text its maximum over the tokens up to EOT: per *sample*, never per
token row (a token row carrying its sample's label measures nothing the paper
means). The result's ``meta()`` carries the :class:`UnitLayout` that ``top_units`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.causal.core.units import Segment, UnitLayout, kind_of, model_id
from vlmfast.errors import InputError, ShapeError


@dataclass
class UnitActivations:
    """Per-sample unit activations ``values[N, U]`` and the layout of their columns."""

    values: npt.NDArray[np.float32]
    layout: UnitLayout
    reduce: str = "max"

    def meta(self) -> dict[str, Any]:
        """Returns ``{"units": layout, "reduce": ...}`` for ``score_units(..., meta=)``."""
        return {"units": self.layout.to_meta(), "reduce": self.reduce}


def _text_valid(tokens: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: positions up to and including EOT (the row's largest id)."""
    eot = tokens.argmax(dim=-1, keepdim=True)
    pos = torch.arange(tokens.shape[1], device=tokens.device).view(1, -1)
    return pos <= eot


def _reduce(x: torch.Tensor, valid: torch.Tensor | None, reduce: str) -> torch.Tensor:
    """[B, T, U] -> [B, U] over the valid positions."""
    if valid is None:
        return x.amax(1) if reduce == "max" else x.mean(1)
    v = valid.view(*valid.shape, 1).to(x.device)
    if reduce == "max":
        return x.masked_fill(~v, float("-inf")).amax(1)
    return (x * v).sum(1) / v.sum(1).clamp_min(1)


def unit_activations(
    pair: Any,
    *,
    images: Any = None,
    texts: Any = None,
    hooks: str | Sequence[str] = "image.blocks.*.mlp.post",
    reduce: str = "max",
    saes: Mapping[str, Any] | None = None,
    batch_size: int = 256,
) -> UnitActivations:
    """Per-sample activations of every unit of ``hooks`` (one tower: images or texts).

    Neurons (``mlp.post``/``mlp.pre``) and dimensions are reduced over tokens; heads
    (``attn.z``, ``attn.head_out``, ...) by the norm of their output at each token, then
    reduced; with ``saes={hook: TopKSAE}`` the units of those hooks are the SAE's
    features (dense codes, then reduced). ``reduce``: ``max`` or ``mean`` over the image's
    patch tokens (CLS excluded) or the text's tokens up to EOT.

    Returns:
        The activations ``values[N, U]`` (float32, in the hooks' units) and the layout
            of their columns, as :class:`UnitActivations`.

    Raises:
        InputError: an unknown ``reduce``, not exactly one of ``images`` / ``texts``, or
            an SAE for a hook not among ``hooks``.
        ShapeError: an SAE does not take its hook's width.
    """
    if reduce not in ("max", "mean"):
        raise InputError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    if (images is None) == (texts is None):
        raise InputError("unit_activations needs exactly one of images= or texts=")
    from vlmfast.models.hooks import resolve_hooks

    tower = "image" if images is not None else "text"
    names = resolve_hooks(hooks, [p for p in pair.hook_points() if p.startswith(tower + ".")])
    saes = dict(saes or {})
    for key in saes:
        if key not in names:
            raise InputError(f"saes has an SAE for {key!r}, which is not among hooks {names}")
    if tower == "image":
        inputs = images if isinstance(images, torch.Tensor) else pair.preprocess(images)
    else:
        inputs = texts if isinstance(texts, torch.Tensor) else pair.tokenize(texts)
    skip_cls = tower == "image" and bool(pair.config.image.class_token)
    chunks: list[list[torch.Tensor]] = [[] for _ in names]
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size]
            run = (
                pair.run(images=x, cache=names)
                if tower == "image"
                else pair.run(texts=x, cache=names)
            )
            valid = _text_valid(x) if tower == "text" else None
            for k, name in enumerate(names):
                a = run.cache[name]
                if name in saes:
                    sae = saes[name]
                    if a.shape[-1] != sae.d_in:
                        raise ShapeError(
                            f"saes[{name!r}] has d_in={sae.d_in}, the hook has width {a.shape[-1]}"
                        )
                    flat = a.reshape(-1, a.shape[-1]).float()
                    val, idx = sae.encode(flat)
                    dense = torch.zeros(flat.shape[0], sae.n_latents, dtype=torch.float32)
                    dense.scatter_(1, idx.long().cpu(), val.float().cpu())
                    a = dense.view(*a.shape[:-1], sae.n_latents)
                elif kind_of(name) == "head":
                    a = a.float().norm(dim=-1)  # [B, T, H]
                if a.dim() == 2:  # pooled hooks: no token axis
                    chunks[k].append(a.float().cpu())
                    continue
                if skip_cls:
                    a = a[:, 1:]
                chunks[k].append(_reduce(a.float(), valid, reduce).cpu())
    cols = [torch.cat(c).numpy().astype(np.float32) for c in chunks]
    segs = tuple(
        Segment(n, int(c.shape[1]), kind_of(n, n if n in saes else None), n if n in saes else None)
        for n, c in zip(names, cols)
    )
    return UnitActivations(np.concatenate(cols, axis=1), UnitLayout(segs, model_id(pair)), reduce)
