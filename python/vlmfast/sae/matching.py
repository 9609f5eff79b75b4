"""Scoring a learned dictionary against a known (planted) one.

from vlmfast.sae.matching import score_dictionary
score = score_dictionary(sae, gen.dictionary, [(batch.rows, batch.activations)])
score.mean_max_cosine, score.mcc, score.to_dict()

Two scores, as in the SAE literature on planted dictionaries:

- **mean max cosine**: for each true atom, the best cosine with any learned decoder row,
  averaged over true atoms (and the reverse direction, over learned rows);
- **MCC** (mean correlation coefficient): the Pearson correlation between each true
  feature's activations and a learned latent's activations on the same rows, with the
  best one-to-one matching of true features to latents, averaged over true features.

The matching is an exact linear assignment (the Hungarian method in its shortest
augmenting path form, :func:`linear_assignment`): scipy is not a runtime dependency of
vlmfast, so it is implemented here (tested against scipy where scipy is installed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.errors import InputError, ShapeError
from vlmfast.sae.evaluation import dense_codes, n_latents_of

_NULL_SEED_OFFSET = 0x5EED
"""Added to ``seed`` for the random null dictionary, so it differs from a planted
dictionary drawn with the same seed."""


def _unit_rows(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 2 or x.shape[0] == 0:
        raise ShapeError(f"{name} must be a dictionary [n_atoms >= 1, d], got {list(x.shape)}")
    x64 = x.detach().double().cpu()
    return x64 / x64.norm(dim=1, keepdim=True).clamp_min(1e-12)


def cosine_matrix(true_dictionary: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
    """``[F, M]`` float64 cosines between true atoms ``[F, d]`` and learned rows ``[M, d]``.

    Raises :class:`ShapeError` when either is not 2-D or their ``d`` differ.
    """
    t = _unit_rows(true_dictionary, "true dictionary")
    ll = _unit_rows(learned, "learned dictionary")
    if t.shape[1] != ll.shape[1]:
        raise ShapeError(
            f"true dictionary {list(true_dictionary.shape)} and learned dictionary"
            f" {list(learned.shape)} must have the same d (last dimension)"
        )
    return t @ ll.T


def mean_max_cosine(true_dictionary: torch.Tensor, learned: torch.Tensor) -> tuple[float, float]:
    """Returns the ``(true -> learned, learned -> true)`` mean max cosine, each in [-1, 1].

    The first averages, over true atoms, the best cosine with any learned row; the second
    averages, over learned rows, the best cosine with any true atom.
    """
    cos = cosine_matrix(true_dictionary, learned)
    return float(cos.max(1).values.mean()), float(cos.max(0).values.mean())


def linear_assignment(cost: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Returns the exact minimum-cost one-to-one assignment of a ``[n, m]`` cost matrix.

    Returns ``(rows, cols)`` (int64, sorted by row) of ``min(n, m)`` pairs minimising the
    summed cost, like ``scipy.optimize.linear_sum_assignment``. O(min^2 * max) numpy steps.
    Raises :class:`InputError` for a non-2-D or non-finite cost.
    """
    a = np.asarray(cost, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(f"linear_assignment: cost must be 2-D, got shape {list(a.shape)}")
    if not np.isfinite(a).all():
        raise InputError("linear_assignment: cost has NaN or infinite entries")
    if a.shape[0] > a.shape[1]:
        cols, rows = linear_assignment(a.T)
        order = np.argsort(rows)
        return rows[order], cols[order]
    n, m = a.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    p = np.zeros(m + 1, dtype=np.int64)  # p[j]: row (1-based) matched to column j
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0], j0 = i, 0
        minv = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            cur = a[i0 - 1] - u[i0] - v[1:]
            better = ~used[1:] & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            free = np.where(used[1:], np.inf, minv[1:])
            j1 = int(np.argmin(free)) + 1
            delta = free[j1 - 1]
            u[p[used]] += delta
            v[used] -= delta
            minv[~used] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    cols = np.flatnonzero(p[1:])
    rows = p[1:][cols] - 1
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


class CorrelationAccumulator:
    """Streams the Pearson correlations between true ``[N, F]`` and learned ``[N, M]``
    activations from float64 sums (memory ``O(F * M)``, not ``O(N)``)."""

    def __init__(self, n_true: int, n_learned: int) -> None:
        self.n_true, self.n_learned, self.n_rows = n_true, n_learned, 0
        self.sum_t = torch.zeros(n_true, dtype=torch.float64)
        self.sum_l = torch.zeros(n_learned, dtype=torch.float64)
        self.sum_tt = torch.zeros(n_true, dtype=torch.float64)
        self.sum_ll = torch.zeros(n_learned, dtype=torch.float64)
        self.sum_tl = torch.zeros(n_true, n_learned, dtype=torch.float64)

    def update(self, true_acts: torch.Tensor, learned_acts: torch.Tensor) -> None:
        """Adds rows; raises :class:`ShapeError` naming both shapes when they disagree."""
        want_t, want_l = (true_acts.shape[0], self.n_true), (true_acts.shape[0], self.n_learned)
        if tuple(true_acts.shape) != want_t or tuple(learned_acts.shape) != want_l:
            raise ShapeError(
                f"true activations {list(true_acts.shape)} and learned activations"
                f" {list(learned_acts.shape)} must be [N, {self.n_true}] and [N, {self.n_learned}]"
                " on the same N rows"
            )
        t, ll = true_acts.detach().double().cpu(), learned_acts.detach().double().cpu()
        self.n_rows += t.shape[0]
        self.sum_t += t.sum(0)
        self.sum_l += ll.sum(0)
        self.sum_tt += t.pow(2).sum(0)
        self.sum_ll += ll.pow(2).sum(0)
        self.sum_tl += t.T @ ll

    def constant_true(self) -> torch.Tensor:
        """``[F]`` bool: true features with no variance on the rows seen."""
        n = max(self.n_rows, 1)
        return (self.sum_tt / n - (self.sum_t / n).pow(2)) <= 0

    def correlation(self) -> torch.Tensor:
        """``[F, M]`` float64 Pearson correlations; NaN where either side is constant."""
        n = max(self.n_rows, 1)
        mt, ml = self.sum_t / n, self.sum_l / n
        var_t = (self.sum_tt / n - mt.pow(2)).clamp_min(0)
        var_l = (self.sum_ll / n - ml.pow(2)).clamp_min(0)
        cov = self.sum_tl / n - mt[:, None] * ml[None, :]
        den = (var_t[:, None] * var_l[None, :]).sqrt()
        tiny = 1e-12 * (var_t.max() * var_l.max()).sqrt().clamp_min(1e-300)
        return torch.where(den > tiny, cov / den.clamp_min(1e-300), torch.nan)


def matched_correlation(corr: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Returns ``(mcc, per_true [F], match [F])`` from a ``[F, M]`` correlation matrix
    (correlations in [-1, 1]).

    The best one-to-one matching maximises the summed correlation (undefined entries count
    0); ``mcc`` averages the matched correlations over all F true features, an unmatched
    one (when M < F) or one whose correlation is undefined counting 0. ``match`` holds the
    matched latent per true feature, -1 for none.
    """
    c = torch.nan_to_num(corr.double(), nan=0.0).numpy()
    rows, cols = linear_assignment(-c)
    per_true = torch.zeros(corr.shape[0], dtype=torch.float64)
    match = torch.full((corr.shape[0],), -1, dtype=torch.int64)
    per_true[torch.from_numpy(rows)] = torch.from_numpy(c[rows, cols])
    match[torch.from_numpy(rows)] = torch.from_numpy(cols)
    return float(per_true.mean()) if corr.shape[0] else math.nan, per_true, match


def _bootstrap_mean(x: torch.Tensor, n_boot: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean of ``x``, resampling its entries (NaNs if none)."""
    if n_boot <= 0 or x.numel() == 0:
        return (math.nan, math.nan)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, x.numel(), (n_boot, x.numel()), generator=gen)
    means = x.double()[idx].mean(1)
    q = torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(means, q).tolist()
    return (lo, hi)


@dataclass
class DictionaryScore:
    """:func:`score_dictionary`'s result (cosines and correlations in [-1, 1])."""

    mean_max_cosine: float
    """Mean over true atoms of the best cosine with a learned decoder row."""
    mean_max_cosine_ci: tuple[float, float]
    """Bootstrap interval of ``mean_max_cosine`` (resampling true atoms)."""
    reverse_max_cosine: float
    """Mean over learned rows of the best cosine with a true atom."""
    null_mean_max_cosine: float
    """The same score for a random Gaussian dictionary of the learned one's size
    (seeded by ``seed + 0x5EED``)."""
    mcc: float
    """Mean matched Pearson correlation over true features (NaN without rows)."""
    mcc_ci: tuple[float, float]
    """Bootstrap interval of ``mcc`` (resampling true features)."""
    null_mcc: float
    """MCC with the learned activations shuffled over rows within each batch."""
    per_true_cosine: list[float]
    """Per true atom: its best cosine."""
    per_true_correlation: list[float]
    """Per true feature: its matched correlation (0 when unmatched or undefined)."""
    match: list[int]
    """Per true feature: the matched latent, -1 for none."""
    n_rows: int
    """Rows the correlations were computed on."""
    n_undefined: int
    """True features whose activations were constant on these rows (correlation undefined)."""
    level: float = 0.95
    """Confidence level of the intervals."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as a plain dict."""
        return dict(self.__dict__)


def _decoder_of(sae: Any) -> torch.Tensor:
    w_dec = getattr(sae, "W_dec", None)
    if w_dec is None:
        raise InputError("score_dictionary: the SAE has no W_dec; pass decoder=[n_latents, d]")
    return w_dec.detach()


def _correlations(
    sae: Any, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n_true: int, seed: int
) -> tuple[CorrelationAccumulator, CorrelationAccumulator]:
    n_lat = n_latents_of(sae)
    real, null = CorrelationAccumulator(n_true, n_lat), CorrelationAccumulator(n_true, n_lat)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for rows, true_acts in batches:
            if rows.ndim != 2 or rows.shape[0] != true_acts.shape[0]:
                raise ShapeError(
                    f"score_dictionary: rows {list(rows.shape)} and true activations"
                    f" {list(true_acts.shape)} must be [N, d] and [N, F] on the same N rows"
                )
            codes = dense_codes(sae, rows, n_lat).cpu()
            real.update(true_acts, codes)
            null.update(true_acts, codes[torch.randperm(codes.shape[0], generator=gen)])
    return real, null


def score_dictionary(
    sae: Any,
    true_dictionary: torch.Tensor,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    decoder: torch.Tensor | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> DictionaryScore:
    """Returns the score (a :class:`DictionaryScore`) of ``sae``'s dictionary against the
    planted truth.

    ``batches`` yields ``(rows [N, d], true_activations [N, F])`` pairs (e.g.
    ``[(batch.rows, batch.activations)]`` from :class:`~vlmfast.sae.planted.PlantedGenerator`);
    the SAE encodes the rows. ``decoder`` (default ``sae.W_dec``) is the learned dictionary
    ``[n_latents, d]``. Returns :class:`DictionaryScore`. Raises :class:`ShapeError` when
    dictionaries, rows and activations disagree in shape (naming them), and
    :class:`InputError` when there is no decoder.
    """
    learned = decoder if decoder is not None else _decoder_of(sae)
    cos = cosine_matrix(true_dictionary, learned)
    per_cos = cos.max(1).values
    gen = torch.Generator().manual_seed(seed + _NULL_SEED_OFFSET)
    rand = torch.randn(learned.shape[0], learned.shape[1], generator=gen, dtype=torch.float64)
    null_cos, _ = mean_max_cosine(true_dictionary, rand)
    real, null = _correlations(sae, batches, true_dictionary.shape[0], seed)
    corr = real.correlation()
    mcc, per_corr, match = matched_correlation(corr)
    nan2 = (math.nan, math.nan)
    return DictionaryScore(
        mean_max_cosine=float(per_cos.mean()),
        mean_max_cosine_ci=_bootstrap_mean(per_cos, n_boot, level, seed),
        reverse_max_cosine=float(cos.max(0).values.mean()),
        null_mean_max_cosine=null_cos,
        mcc=mcc if real.n_rows else math.nan,
        mcc_ci=_bootstrap_mean(per_corr, n_boot, level, seed) if real.n_rows else nan2,
        null_mcc=matched_correlation(null.correlation())[0] if real.n_rows else math.nan,
        per_true_cosine=per_cos.tolist(),
        per_true_correlation=per_corr.tolist(),
        match=match.tolist(),
        n_rows=real.n_rows,
        n_undefined=int(real.constant_true().sum()),
        level=level,
    )
