"""The causal test of grounding heads: patch the top heads from clean into corrupted images.

For matched pairs ``(clean image i, corrupted image i, caption i)``, where caption i
matches the clean image (the corruption changes the named object, e.g. its color),
``m`` is the mean over pairs of the matched logit ``logit[i, i]`` (``scale·cos (+ bias)``,
the pair's real score). The heads' ``attn.z`` (every token position) is taken from the
clean run and written into the corrupted run. **Recovery** follows the project's
denoising convention (:mod:`vlmfast.causal.core.conventions`)::

    recovery = (m(patched) − m(corrupt)) / (m(clean) − m(corrupt))

0 = nothing restored, 1 = the clean logit restored. It is undefined (``None`` with a
reason, never 0) when ``|m(clean) − m(corrupt)|`` is at most ``tol``. Interval: percentile
bootstrap over pairs (replicates whose denominator falls below ``tol`` are dropped and
counted). Null: ``n_null`` random sets of as many *other* image-tower heads (drawn
uniformly among the heads not tested), each patched the same way; one-sided p-value
``(1 + #{null ≥ observed}) / (1 + n_null)`` (None, with an empty null, when fewer other
heads exist than are tested). The paper's figure to set it beside: 62%.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.causal.core.conventions import RECOVERY_TOL, check_eval_mode, check_paired
from vlmfast.crossmodal.checks import to_jsonable
from vlmfast.crossmodal.grounding import GroundingScores
from vlmfast.errors import InputError
from vlmfast.models.interventions import Patch

Array = npt.NDArray[np.float64]


@dataclass
class GroundingPatching:
    """Recovered fraction of the matched logit when the given heads are patched."""

    heads: list[tuple[int, int]]
    """The patched heads ``(layer, head)``."""
    clean: float
    """Mean matched logit on the clean images."""
    corrupt: float
    """Mean matched logit on the corrupted images."""
    patched: float
    """Mean matched logit on the corrupted images with the heads patched from clean."""
    recovery: float | None
    """``(patched − corrupt) / (clean − corrupt)``; None when undefined (see ``reason``)."""
    ci_low: float | None
    """Bootstrap lower end of ``recovery`` (percentile, resampling pairs)."""
    ci_high: float | None
    """Bootstrap upper end of ``recovery``."""
    null_recovery: Array
    """``[n_null]`` recovery of random head sets of the same size."""
    pvalue: float | None
    """One-sided p-value of ``recovery`` against ``null_recovery``."""
    reason: str | None
    """Why ``recovery`` is undefined, else None."""
    n_pairs: int
    """Pairs used."""
    dropped_replicates: int
    """Bootstrap replicates left out because their denominator was below ``tol``."""

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (NaN becomes ``None``); ``null_mean`` added."""
        out = {k: to_jsonable(v) for k, v in self.__dict__.items()}
        null = self.null_recovery[np.isfinite(self.null_recovery)]
        out["null_mean"] = float(null.mean()) if len(null) else None
        return out


def top_heads(scores: GroundingScores, k: int, query: str = "cls") -> list[tuple[int, int]]:
    """Returns the ``k`` best-ranked heads ``(layer, head)`` of ``scores`` for ``query``
    (``"cls"`` or ``"mean"``).

    Raises:
        InputError: an unknown ``query``, or ``k`` outside 1..(the image tower's heads).
    """
    if query not in ("cls", "mean"):
        raise InputError(f"query must be 'cls' or 'mean', got {query!r}")
    ranked = scores.cls.ranked if query == "cls" else scores.mean.ranked
    if not 1 <= k <= len(ranked):
        raise InputError(f"k must be in 1..{len(ranked)} (the image tower's heads), got {k}")
    return ranked[:k]


def matched_logits(
    pair: Any,
    images: torch.Tensor,
    text_embeds: torch.Tensor,
    interventions: Sequence[Any] = (),
) -> Array:
    """``[N]`` logit of image i with caption i (``text_embeds`` row i), under ``interventions``."""
    run = pair.run(images=images, interventions=list(interventions), all_rows=True)
    logits = pair.logits_from_embeds(run.image_embeds, text_embeds)
    return np.asarray(torch.diagonal(logits).double().cpu().numpy())


def _patches(heads: Sequence[tuple[int, int]], clean_run: Any) -> list[Any]:
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(int(layer), []).append(int(head))
    return [
        Patch(f"image.blocks.{layer}.attn.z", clean_run, heads=sorted(hs))
        for layer, hs in sorted(by_layer.items())
    ]


def _check_heads(heads: Sequence[tuple[int, int]], n_layers: int, n_heads: int) -> None:
    if not heads:
        raise InputError("grounding_patching needs at least one head to patch")
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InputError(
                f"head ({layer}, {head}) is not in the image tower ({n_layers} layers x "
                f"{n_heads} heads)"
            )


def grounding_patching(
    pair: Any,
    clean_images: torch.Tensor,
    corrupt_images: torch.Tensor,
    texts: Any,
    heads: Sequence[tuple[int, int]],
    *,
    n_null: int = 100,
    n_boot: int = 1000,
    tol: float = RECOVERY_TOL,
    seed: int = 0,
) -> GroundingPatching:
    """Recovered fraction of the matched logit when ``heads`` are patched (module docstring).

    ``texts``: token ids ``[N, T]`` or strings (caption i matches clean image i).

    Returns:
        The recovery (a :class:`GroundingPatching`), in units of the clean-minus-corrupt gap.

    Raises:
        InputError: the pair is in training mode, a head is outside the image tower, or
            no head is given.
        ShapeError: clean and corrupted images differ in shape.
    """
    check_eval_mode(pair, "grounding_patching")
    check_paired(clean_images, corrupt_images, "images")
    cfg = pair.config.image
    n_layers, n_heads = int(cfg.layers), int(cfg.heads)
    heads = [(int(a), int(b)) for a, b in heads]
    _check_heads(heads, n_layers, n_heads)
    rng = np.random.default_rng(seed)
    z_names = [f"image.blocks.{layer}.attn.z" for layer in range(n_layers)]
    with torch.no_grad():
        txt = pair.run(texts=texts).text_embeds
        clean_run = pair.run(images=clean_images, cache=z_names, all_rows=True)
        clean = pair.logits_from_embeds(clean_run.image_embeds, txt).diagonal().double().numpy()
        corrupt = matched_logits(pair, corrupt_images, txt)
        patched = matched_logits(pair, corrupt_images, txt, _patches(heads, clean_run))
        others = [(a, b) for a in range(n_layers) for b in range(n_heads) if (a, b) not in heads]
        null = np.full(n_null if len(others) >= len(heads) else 0, np.nan)
        for j in range(len(null)):
            pick = rng.choice(len(others), size=len(heads), replace=False)
            rand = matched_logits(
                pair, corrupt_images, txt, _patches([others[i] for i in pick], clean_run)
            )
            null[j] = _ratio(rand.mean(), clean.mean(), corrupt.mean(), tol)
    return _summarise(heads, clean, corrupt, patched, null, n_boot, tol, rng)


def _ratio(patched: float, clean: float, corrupt: float, tol: float) -> float:
    denom = clean - corrupt
    return float((patched - corrupt) / denom) if abs(denom) > tol else float("nan")


def _summarise(
    heads: list[tuple[int, int]],
    clean: Array,
    corrupt: Array,
    patched: Array,
    null: Array,
    n_boot: int,
    tol: float,
    rng: np.random.Generator,
) -> GroundingPatching:
    """Recovery, its bootstrap interval over pairs and its p-value against ``null``."""
    n = len(clean)
    c, k, p = float(clean.mean()), float(corrupt.mean()), float(patched.mean())
    rec = _ratio(p, c, k, tol)
    idx = rng.integers(0, n, size=(n_boot, n))
    den = clean[idx].mean(1) - corrupt[idx].mean(1)
    ok = np.abs(den) > tol
    boot = (patched[idx].mean(1)[ok] - corrupt[idx].mean(1)[ok]) / den[ok]
    if not np.isfinite(rec):
        reason = (
            f"clean and corrupted matched logits barely differ (clean {c:.6g}, corrupt "
            f"{k:.6g}, |difference| <= tol {tol:g}): recovery is undefined"
        )
        return GroundingPatching(
            heads, c, k, p, None, None, None, null, None, reason, n, int((~ok).sum())
        )
    lo: float | None = None
    hi: float | None = None
    if len(boot):
        lo, hi = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    finite = null[np.isfinite(null)]
    pval = float((1 + (finite >= rec - 1e-12).sum()) / (1 + len(finite))) if len(finite) else None
    return GroundingPatching(heads, c, k, p, rec, lo, hi, null, pval, None, n, int((~ok).sum()))
