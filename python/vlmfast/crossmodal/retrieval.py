"""Image -> caption retrieval accuracy, clean and with units ablated.

**Accuracy** (:func:`retrieval_accuracy`, :func:`top1_correct`): image ``i`` is
retrieved correctly when its own caption ``i`` ranks first among the set's captions by
the pair's logit (``scale·cos + bias``); rank = 1 + captions scoring *strictly* higher,
so identical captions tie and count as found (as in :mod:`vlmfast.causal.core.evalset`).

**Drop** (:func:`retrieval_drop`): ``drop = acc(clean) − acc(ablated)`` in accuracy
points and ``relative = drop / acc(clean)`` (the paper's "-23%" reads as a relative
drop; both are shown). The relative drop is undefined (None) when the clean accuracy is
0. Interval: percentile bootstrap over images (clean and ablated resampled together).
Null: the same drop with random unit sets of the same counts per hook; one-sided
p-value ``(1 + #{null ≥ drop}) / (1 + n_null)``. The paper's figure is not in this
module: :attr:`RetrievalDrop.paper_claim` names the claim a report shows beside ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.crossmodal.checks import to_jsonable
from vlmfast.errors import InputError, ShapeError

PAPER_CLAIM = "ablate.retrieval"
"""Key of the paper's retrieval claim (``vlmfast.report.paper_claims``), shown beside ours."""


def top1_correct(logits: Any) -> npt.NDArray[np.bool_]:
    """Returns ``[N]`` whether row ``i`` of the ``[N, N]`` image x caption logits ranks caption ``i``
    first (no caption scores strictly higher).

    Raises:
        ShapeError: ``logits`` is not square.
    """
    lg = logits.detach().double().cpu().numpy() if isinstance(logits, torch.Tensor) else logits
    lg = np.asarray(lg, dtype=np.float64)
    if lg.ndim != 2 or lg.shape[0] != lg.shape[1]:
        raise ShapeError(f"retrieval logits must be [N, N] (image x caption), got {lg.shape}")
    diag = np.diagonal(lg)[:, None]
    return np.asarray((lg > diag).sum(1) == 0)


def retrieval_accuracy(
    pair: Any,
    images: torch.Tensor,
    captions: Any,
    *,
    image_interventions: Sequence[Any] = (),
    text_interventions: Sequence[Any] = (),
    batch_size: int = 256,
) -> float:
    """Returns the image -> caption top-1 accuracy (a fraction in [0, 1]) among the given captions.

    ``captions``: strings or token ids, caption ``i`` belongs to image ``i``; the
    interventions (e.g. ``vf.Ablate``) apply to the image / text forward.

    Raises:
        ShapeError: images and captions differ in count.
    """
    tok = captions if isinstance(captions, torch.Tensor) else pair.tokenize(list(captions))
    if int(tok.shape[0]) != int(images.shape[0]):
        raise ShapeError(f"{images.shape[0]} images but {tok.shape[0]} captions")
    with torch.no_grad():
        img = torch.cat(
            [
                pair.run(
                    images=images[s : s + batch_size], interventions=list(image_interventions)
                ).image_embeds
                for s in range(0, images.shape[0], batch_size)
            ]
        )
        txt = torch.cat(
            [
                pair.run(
                    texts=tok[s : s + batch_size], interventions=list(text_interventions)
                ).text_embeds
                for s in range(0, tok.shape[0], batch_size)
            ]
        )
    return float(top1_correct(pair.logits_from_embeds(img, txt)).mean())


@dataclass
class RetrievalDrop:
    """Retrieval accuracy clean and ablated, the drop with its interval and random-unit null."""

    clean: float
    """Top-1 accuracy without intervention (fraction)."""
    ablated: float
    """Top-1 accuracy with the units ablated."""
    drop: float
    """``clean − ablated`` (accuracy points, as a fraction)."""
    drop_ci: tuple[float, float]
    """Bootstrap interval of ``drop`` (images resampled)."""
    relative: float | None
    """``drop / clean``; None when ``clean`` is 0 (undefined)."""
    relative_ci: tuple[float, float] | None
    null_drop: npt.NDArray[np.float64]
    """``[n_null]`` drops with random unit sets of the same counts per hook."""
    pvalue: float | None
    """One-sided p-value of ``drop`` against ``null_drop`` (None without a null)."""
    n: int
    """Images (and captions) in the set."""
    n_units: int = 0
    """Units ablated."""
    paper_claim: str = PAPER_CLAIM
    """Key of the paper's claim to show beside these figures (never used as a number)."""

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (NaN as None), with the null's mean."""
        out = {k: to_jsonable(v) for k, v in self.__dict__.items() if k != "null_drop"}
        out["null_drop_mean"] = float(self.null_drop.mean()) if len(self.null_drop) else None
        out["n_null"] = len(self.null_drop)
        return out


def retrieval_drop(
    clean: npt.NDArray[np.bool_],
    ablated: npt.NDArray[np.bool_],
    null: npt.NDArray[np.bool_] | None = None,
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    n_units: int = 0,
) -> RetrievalDrop:
    """Returns the drop (a fraction of images) from per-image correctness ``clean[N]`` to
    ``ablated[N]`` (module docstring), with its interval and null;
    ``null[V, N]``: correctness under ``V`` random unit sets.

    Raises:
        ShapeError: the arrays' image counts differ.
        InputError: ``level`` outside (0, 1) or ``n_boot`` < 1.
    """
    c, a = np.asarray(clean, dtype=np.float64), np.asarray(ablated, dtype=np.float64)
    nul = np.zeros((0, len(c))) if null is None else np.asarray(null, dtype=np.float64)
    if a.shape != c.shape or c.ndim != 1 or nul.ndim != 2 or nul.shape[1] != len(c):
        raise ShapeError(
            f"clean {c.shape}, ablated {a.shape}, null {nul.shape}: need [N], [N], [V, N]"
        )
    if not 0.0 < level < 1.0 or n_boot < 1:
        raise InputError(f"need 0 < level < 1 and n_boot >= 1, got {level}, {n_boot}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(c), size=(n_boot, len(c)))
    bc, ba = c[idx].mean(1), a[idx].mean(1)
    q = [50 * (1 - level), 50 * (1 + level)]
    d_lo, d_hi = (float(v) for v in np.percentile(bc - ba, q))
    drop = float(c.mean() - a.mean())
    rel = drop / float(c.mean()) if c.mean() > 0 else None
    rel_ci = None
    ok = bc > 0
    if rel is not None and ok.any():
        lo, hi = np.percentile((bc[ok] - ba[ok]) / bc[ok], q)
        rel_ci = (float(lo), float(hi))
    null_drop = c.mean() - nul.mean(1)
    pval = (
        float((1 + (null_drop >= drop - 1e-12).sum()) / (1 + len(null_drop)))
        if len(null_drop)
        else None
    )
    return RetrievalDrop(
        float(c.mean()),
        float(a.mean()),
        drop,
        (d_lo, d_hi),
        rel,
        rel_ci,
        null_drop,
        pval,
        len(c),
        n_units,
    )
