"""The statistics of a fusion pair's ablations, from logit drops over image x caption cells.

For one concept ``c`` with image mask ``a`` (image ``i`` shows ``c``) and caption mask
``b`` (caption ``j`` names ``c``), an ablation's **drop** is ``D[i, j] = logit_clean[i, j]
− logit_ablated[i, j]`` (logit units: ``scale·cos + bias``) over every image x caption
cell of the set. Per condition:

* ``drop_match``: mean of ``D`` over the *matching* cells ``a_i ∧ b_j``;
* ``drop_other``: mean over the cells where only one side carries the concept: for the
  image ablation ``a_i ∧ ¬b_j`` (the same images with other captions), for the text
  ablation ``¬a_i ∧ b_j`` (the same captions with other images), for both together the
  union of the two;
* ``specificity = drop_match − drop_other``: "lowers the logit of matching captions and
  not of others". Interval: percentile bootstrap over the set's pairs (a resampled pair
  brings its image row and its caption column). Null: the same statistic with random
  unit sets of the same counts per hook; one-sided p-value ``(1 + #{null ≥ obs}) / (1 + V)``.

**Interaction** ``= drop_match(both) − drop_match(image) − drop_match(text)``: positive
when the two sides together remove more than the sum of what each removes alone
(super-additive), negative when they overlap (in a bilinear logit, removing the shared
concept direction on either side removes the same ``α·β`` term, so sub-additivity is
what plain fusion predicts). Interval as above; null from the random pairs of sets;
two-sided p-value about the null's mean. **Both gain** ``= drop_match(both) −
max(drop_match(image), drop_match(text))``: "both together more than either".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.crossmodal.checks import to_jsonable

Array = npt.NDArray[np.float64]
CONDITIONS = ("image", "text", "both")


@dataclass
class SideEffect:
    """One ablation condition of one fusion pair (module docstring)."""

    condition: str
    """``image``, ``text`` or ``both``: which tower's units were ablated."""
    drop_match: float
    """Mean logit drop on the matching cells (logit units)."""
    drop_other: float
    """Mean logit drop on the cells where one side only carries the concept."""
    specificity: float
    """``drop_match − drop_other``."""
    ci_low: float
    ci_high: float
    null_mean: float | None
    """Mean specificity of the random unit sets (None without a null)."""
    pvalue: float | None
    """One-sided p-value of ``specificity`` against the random sets."""

    def to_dict(self) -> dict[str, Any]:
        return {k: to_jsonable(v) for k, v in self.__dict__.items()}


@dataclass
class Interaction:
    """``both − image − text`` matched drops, and ``both − max(image, text)``."""

    value: float
    ci_low: float
    ci_high: float
    null_mean: float | None
    pvalue: float | None
    """Two-sided, about the random pairs' mean."""
    both_gain: float
    """``drop_match(both) − max(drop_match(image), drop_match(text))``."""
    both_gain_ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {k: to_jsonable(v) for k, v in self.__dict__.items()}


def _sums(d: Array, wr: Array, wc: Array) -> Array:
    """``Σ_ij wr[b, i] D[i, j] wc[b, j]`` per row ``b`` of the weights (``D`` is ``[N, N]``)."""
    return np.asarray(((wr @ d) * wc).sum(1))


def cell_means(
    d: Array, w: Array, a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_]
) -> dict[str, Array]:
    """``{match, other_image, other_text, other_both}``: ``[B]`` weighted cell means of
    ``D [N, N]`` under pair weights ``w [B, N]`` (bootstrap counts; ones for the observed)."""
    af, bf = a.astype(np.float64), b.astype(np.float64)
    wa, wna, wb, wnb = w * af, w * (1 - af), w * bf, w * (1 - bf)
    na, nna, nb, nnb = wa.sum(1), wna.sum(1), wb.sum(1), wnb.sum(1)
    s_img = _sums(d, wa, wnb)
    s_txt = _sums(d, wna, wb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "match": _sums(d, wa, wb) / (na * nb),
            "other_image": s_img / (na * nnb),
            "other_text": s_txt / (nna * nb),
            "other_both": (s_img + s_txt) / (na * nnb + nna * nb),
        }


def _specificity(m: dict[str, Array], cond: str) -> Array:
    return m["match"] - m[f"other_{cond}"]


def _pvalue(null: Array, obs: float) -> float | None:
    fin = null[np.isfinite(null)]
    return float((1 + (fin >= obs - 1e-12).sum()) / (1 + len(fin))) if len(fin) else None


def _two_sided(null: Array, obs: float) -> float | None:
    fin = null[np.isfinite(null)]
    if not len(fin):
        return None
    mu = fin.mean()
    return float((1 + (np.abs(fin - mu) >= abs(obs - mu) - 1e-12).sum()) / (1 + len(fin)))


def _ci(x: Array, level: float) -> tuple[float, float]:
    fin = x[np.isfinite(x)]
    if not len(fin):
        return float("nan"), float("nan")
    lo, hi = np.percentile(fin, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def pair_statistics(
    drops: dict[str, Array],
    null_drops: dict[str, Array],
    a: npt.NDArray[np.bool_],
    b: npt.NDArray[np.bool_],
    *,
    n_boot: int,
    level: float,
    seed: int,
) -> tuple[dict[str, SideEffect], Interaction]:
    """Side effects and the interaction of one pair (module docstring).

    ``drops[cond]``: ``[N, N]`` logit drops of the pair's ablation per condition;
    ``null_drops[cond]``: ``[V, N, N]`` the same for ``V`` random sets (V may be 0).
    """
    n = len(a)
    rng = np.random.default_rng(seed)
    boot_w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    one = np.ones((1, n))
    obs = {c: cell_means(drops[c], one, a, b) for c in CONDITIONS}
    boot = {c: cell_means(drops[c], boot_w, a, b) for c in CONDITIONS}
    n_null = len(null_drops["image"])
    null = {c: [cell_means(null_drops[c][v], one, a, b) for v in range(n_null)] for c in CONDITIONS}
    sides: dict[str, SideEffect] = {}
    for c in CONDITIONS:
        spec = float(_specificity(obs[c], c)[0])
        lo, hi = _ci(_specificity(boot[c], c), level)
        nul = np.array([_specificity(m, c)[0] for m in null[c]], dtype=np.float64)
        sides[c] = SideEffect(
            c,
            float(obs[c]["match"][0]),
            float(obs[c][f"other_{c}"][0]),
            spec,
            lo,
            hi,
            float(np.nanmean(nul)) if len(nul) else None,
            _pvalue(nul, spec),
        )
    return sides, _interaction(obs, boot, null, level)


def _interaction(
    obs: dict[str, dict[str, Array]],
    boot: dict[str, dict[str, Array]],
    null: dict[str, list[dict[str, Array]]],
    level: float,
) -> Interaction:
    def inter(m: dict[str, dict[str, Array]]) -> Array:
        return m["both"]["match"] - m["image"]["match"] - m["text"]["match"]

    def gain(m: dict[str, dict[str, Array]]) -> Array:
        return m["both"]["match"] - np.maximum(m["image"]["match"], m["text"]["match"])

    value = float(inter(obs)[0])
    lo, hi = _ci(inter(boot), level)
    nul = np.array(
        [
            null["both"][v]["match"][0] - null["image"][v]["match"][0] - null["text"][v]["match"][0]
            for v in range(len(null["both"]))
        ],
        dtype=np.float64,
    )
    return Interaction(
        value,
        lo,
        hi,
        float(np.nanmean(nul)) if len(nul) else None,
        _two_sided(nul, value),
        float(gain(obs)[0]),
        _ci(gain(boot), level),
    )


def mean_with_ci(
    values: Array, *, n_boot: int, level: float, seed: int
) -> tuple[float | None, tuple[float, float] | None]:
    """Mean of ``values`` (one per fusion pair) and its bootstrap interval over pairs;
    ``(None, None)`` when there is no finite value."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return None, None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    return float(v.mean()), _ci(means, level)
