"""Relations, bound and where they live: a linear probe per bound relation beside the best
single unit.

A relation may be read from a direction that no single unit holds, so a unit-level AUROC
(the selectivity tables) can miss it. For each bound relation (``red left of blue``,
:mod:`vlmfast.data.concepts.bound_relations`) this module asks the binding question on
its *contrast rows*: the samples where the relation or its reverse holds (``red left of
blue`` or ``blue left of red``, not both), i.e. both objects are there and only their
order differs. Pooled *families* (``values`` given) ask it over all pairs of one attribute
at once: the samples where exactly one pair of that attribute stands in the relation (in
the synthetic benchmark: two-object scenes whose objects are in different columns / rows),
label "the value listed first in ``values`` is the subject" (``color left of``: the
object whose color comes first is left of the other).

Per relation or family, on held-out rows (``test_fraction`` of the contrast rows, seeded):

* ``accuracy`` of a ridge probe (least squares on ±1 targets, features standardised on the
  training rows, :func:`vlmfast.crossmodal.probe.fit_ridge`), with its Wilson interval, and
  ``majority`` (always the training majority class: the floor);
* ``auroc`` of the probe's scores (DeLong interval);
* a **label-shuffled null**: the training labels permuted ``n_null`` times, probe refitted
  and tested the same way: null accuracy / AUROC mean and 95th percentile, and the p-value
  ``(1 + #{null AUROC >= observed}) / (1 + n_null)``;
* ``best_unit_auroc``: the single unit (feature or neuron) with the largest ``|AUROC - 0.5|``
  on the training rows, oriented there, measured on the held-out rows (not an optimistic
  best-of-many on the same rows).

A relation with too few contrast rows (``min_rows``) or a class missing from the training
or held-out rows is undefined: its numbers are ``None``, never 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.crossmodal.probe import fit_ridge
from vlmfast.data.concepts.bound_relations import BOUND_KIND, BOUND_RELATIONS, reverse_name
from vlmfast.errors import InputError, ShapeError
from vlmfast.scoring.selectivity import wilson_interval
from vlmfast.stats import auroc, score_dense
from vlmfast.stats.significance import z_for_level

Contrast = tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]
"""(row numbers, label on those rows)."""


@dataclass(frozen=True)
class RelationProbeConfig:
    """How the relation probes are fitted and tested."""

    test_fraction: float = 0.3
    """Share of each relation's contrast rows held out (seeded)."""
    ridge: float = 1e-2
    """Ridge penalty per training row (λ = ridge x n_train, on standardised features)."""
    n_null: int = 100
    """Label shuffles of the null."""
    level: float = 0.95
    """Confidence level of the intervals."""
    seed: int = 0
    """Seed of the split and of the shuffles."""
    min_rows: int = 40
    """Fewest contrast rows for a relation to be probed (fewer: undefined)."""
    pairs: bool = True
    """Also probe every bound relation pair on its own (else the families only)."""


@dataclass
class RelationProbe:
    """Probe and best single unit for one bound relation (or family) on its contrast rows."""

    name: str
    """Bound relation (``red left of blue``) or family (``color left of``)."""
    scope: str
    """``family`` or ``pair``."""
    n_rows: int
    """Contrast rows (train + held-out)."""
    n_positive: int
    """Contrast rows where ``name`` holds."""
    accuracy: float | None = None
    """Held-out accuracy of the probe; None when undefined."""
    accuracy_ci: list[float] | None = None
    """Wilson interval of ``accuracy``."""
    majority: float | None = None
    """Held-out accuracy of always answering the training majority class."""
    auroc: float | None = None
    """Held-out AUROC of the probe's scores."""
    auroc_ci: list[float] | None = None
    """DeLong Wald interval of ``auroc``."""
    null_accuracy_mean: float | None = None
    null_accuracy_q95: float | None = None
    null_auroc_mean: float | None = None
    null_auroc_q95: float | None = None
    pvalue: float | None = None
    """One-sided permutation p-value of ``auroc`` against the label-shuffled null."""
    best_unit: int | None = None
    """Unit chosen (and oriented) on the training rows."""
    best_unit_auroc: float | None = None
    """That unit's held-out AUROC."""
    best_feature: int | None = None
    """Like ``best_unit``, over the ``units`` matrix when one is given (e.g. SAE features)."""
    best_feature_auroc: float | None = None
    """That feature's held-out AUROC."""


@dataclass
class RelationProbeResult:
    """Relation probes of one set of rows (e.g. the last block's CLS rows)."""

    rows: str
    """Which rows were probed (e.g. ``image.blocks.-1.resid_post CLS rows``)."""
    probes: list[RelationProbe]
    """Families first, then pairs."""
    config: RelationProbeConfig = field(default_factory=RelationProbeConfig)

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict."""
        return {"rows": self.rows, "config": asdict(self.config),
                "probes": [asdict(p) for p in self.probes]}  # fmt: skip


def pair_contrasts(names: Sequence[str], matrix: npt.NDArray[np.bool_]) -> dict[str, Contrast]:
    """Per unordered bound pair (once, under its first name in ``names``): the rows where it
    or its reverse holds (not both) and whether it holds there."""
    col = {n: i for i, n in enumerate(names)}
    out: dict[str, Contrast] = {}
    for name in names:
        rev = _reverse(name)
        if rev is None or rev not in col or rev in out:
            continue
        a, b = matrix[:, col[name]], matrix[:, col[rev]]
        rows = np.flatnonzero(a ^ b).astype(np.int64)
        out[name] = (rows, a[rows])
    return out


def family_contrasts(
    names: Sequence[str], matrix: npt.NDArray[np.bool_], values: Mapping[str, Sequence[str]]
) -> dict[str, Contrast]:
    """Per (attribute, relation) family: the rows where exactly one bound name of the family
    holds, labelled "the subject's value comes first in ``values[attribute]``"."""
    col = {n: i for i, n in enumerate(names)}
    out: dict[str, Contrast] = {}
    for attr, vals in values.items():
        order = {v: k for k, v in enumerate(vals)}
        for rel in BOUND_RELATIONS:
            members = [
                (f"{a} {rel} {b}", order[a] < order[b]) for a in vals for b in vals if a != b
            ]
            members = [(n, first) for n, first in members if n in col]
            if not members:
                continue
            sub = matrix[:, [col[n] for n, _ in members]]
            rows = np.flatnonzero(sub.sum(1) == 1).astype(np.int64)
            firsts = np.array([first for _, first in members], dtype=bool)
            out[f"{attr} {rel}"] = (rows, firsts[sub[rows].argmax(1)])
    return out


def _reverse(name: str) -> str | None:
    try:
        return reverse_name(name)
    except InputError:
        return None


def _standardise(x_tr: np.ndarray, x_te: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (x_tr - mu) / sd, (x_te - mu) / sd


def _scores(x_tr: np.ndarray, t_tr: np.ndarray, x_te: np.ndarray, ridge: float) -> np.ndarray:
    """Held-out probe scores ``[n_test, C]`` (> 0: positive) of ridge fits to each column."""
    w = fit_ridge(x_tr, t_tr, ridge * len(x_tr))
    target = np.where(t_tr, 1.0, -1.0)
    return (x_te - x_tr.mean(0)) @ w + target.mean(0)


def _split(n: int, cfg: RelationProbeConfig, rng: np.random.Generator) -> tuple[Any, Any]:
    order = rng.permutation(n)
    n_test = max(1, round(cfg.test_fraction * n))
    return order[n_test:], order[:n_test]


def probe_relation(
    x: Any,
    y: Any,
    name: str,
    scope: str = "pair",
    config: RelationProbeConfig | None = None,
    units: Any = None,
) -> RelationProbe:
    """Returns the probe and best unit for label ``y[n]`` on rows ``x[n, d]`` (the contrast rows); see
    the module docstring. ``units[n, F]`` (optional, same rows: e.g. SAE codes) gives
    ``best_feature`` on the same split. Undefined (``None`` numbers) with too few rows or a
    missing class."""
    cfg = config or RelationProbeConfig()
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=bool).reshape(-1)
    out = RelationProbe(name, scope, len(ys), int(ys.sum()))
    if len(ys) < cfg.min_rows:
        return out
    rng = np.random.default_rng(cfg.seed)
    tr, te = _split(len(ys), cfg, rng)
    y_tr, y_te = ys[tr], ys[te]
    if len(set(y_tr.tolist())) < 2 or len(set(y_te.tolist())) < 2:
        return out
    x_tr, x_te = _standardise(xs[tr], xs[te])
    shuffled = np.stack([y_tr[rng.permutation(len(y_tr))] for _ in range(cfg.n_null)], 1)
    s = _scores(x_tr, np.concatenate([y_tr[:, None], shuffled], 1), x_te, cfg.ridge)
    res = score_dense(
        s, np.repeat(y_te[:, None], s.shape[1], 1), with_se=True, stats=False, top_n=0
    )
    aucs = np.diag(res.auroc)
    se = float(np.diag(res.se)[0]) if res.se is not None else float("nan")
    accs = ((s > 0) == y_te[:, None]).mean(0)
    z = z_for_level(cfg.level)
    _fill(out, aucs, accs, se, z, cfg)
    out.majority = float((y_te == (y_tr.mean() >= 0.5)).mean())
    out.best_unit, out.best_unit_auroc = _best_unit(x_tr, y_tr, x_te, y_te)
    if units is not None:
        u = np.asarray(units, dtype=np.float64)
        out.best_feature, out.best_feature_auroc = _best_unit(u[tr], y_tr, u[te], y_te)
    return out


def _fill(
    out: RelationProbe,
    aucs: np.ndarray,
    accs: np.ndarray,
    se: float,
    z: float,
    cfg: RelationProbeConfig,
) -> None:
    """Observed (column 0) and null (the rest) accuracy and AUROC into ``out``."""
    n_test = max(1, round(cfg.test_fraction * out.n_rows))
    a, null_a, null_acc = float(aucs[0]), aucs[1:], accs[1:]
    out.accuracy = float(accs[0])
    out.accuracy_ci = list(wilson_interval(round(out.accuracy * n_test), n_test, cfg.level))
    out.auroc = a
    out.auroc_ci = [max(0.0, a - z * se), min(1.0, a + z * se)]
    out.null_accuracy_mean = float(null_acc.mean())
    out.null_accuracy_q95 = float(np.quantile(null_acc, 0.95))
    out.null_auroc_mean = float(np.nanmean(null_a))
    out.null_auroc_q95 = float(np.nanquantile(null_a, 0.95))
    out.pvalue = float((1 + (null_a >= a - 1e-12).sum()) / (1 + len(null_a)))


def _best_unit(
    x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray
) -> tuple[int, float]:
    """The unit with the largest |AUROC - 0.5| on training rows, oriented there, and its
    held-out AUROC."""
    train = np.nan_to_num(auroc(x_tr, y_tr[:, None])[:, 0], nan=0.5)
    unit = int(np.argmax(np.abs(train - 0.5)))
    sign = 1.0 if train[unit] >= 0.5 else -1.0
    return unit, float(auroc(sign * x_te[:, [unit]], y_te[:, None])[0, 0])


def relation_probes(
    x: Any,
    labels: Any,
    *,
    values: Mapping[str, Sequence[str]] | None = None,
    rows: str = "rows",
    config: RelationProbeConfig | None = None,
    units: Any = None,
) -> RelationProbeResult:
    """Returns the probes of every bound relation of ``labels`` (``ConceptLabels``: kind ``bound
    relation``) on ``x[n, d]`` (one row per labelled sample): the families of ``values``
    (e.g. ``{"color": COLORS, "shape": SHAPES}``) and, with ``config.pairs``, each pair.
    ``rows`` says which rows ``x`` holds (recorded); ``units[n, F]`` (optional, the same
    samples: e.g. SAE codes) adds the best feature beside the best unit of ``x``.

    Raises:
        ShapeError: ``x`` is not 2-D or its row count differs from the labels'.
        InputError: the labels have no bound relation column, or a bad config value.
    """
    cfg = config or RelationProbeConfig()
    if not 0.0 < cfg.test_fraction < 1.0 or cfg.n_null < 1 or cfg.ridge < 0:
        raise InputError(
            f"relation probes: need 0 < test_fraction < 1, n_null >= 1, ridge >= 0; got {cfg}"
        )
    xs = np.asarray(x, dtype=np.float64)
    matrix = np.asarray(labels.matrix, dtype=bool)
    if xs.ndim != 2 or xs.shape[0] != matrix.shape[0]:
        raise ShapeError(
            f"relation probes: x has shape {xs.shape}; labels have {matrix.shape[0]} rows"
        )
    if units is not None and np.shape(units)[0] != xs.shape[0]:
        raise ShapeError(f"relation probes: units has {np.shape(units)[0]} rows, x {xs.shape[0]}")
    keep = [i for i, k in enumerate(labels.kinds) if k == BOUND_KIND]
    if not keep:
        raise InputError(
            "relation probes: the labels have no bound relation column (kind "
            f"{BOUND_KIND!r}); label with a source that binds relations (synthetic:...)"
        )
    names = [labels.names[i] for i in keep]
    sub = matrix[:, keep]
    probes = []
    contrasts = [("family", family_contrasts(names, sub, values or {}))]
    if cfg.pairs:
        contrasts.append(("pair", pair_contrasts(names, sub)))
    for scope, found in contrasts:
        for name, (r, y) in found.items():
            u = None if units is None else np.asarray(units)[r]
            probes.append(probe_relation(xs[r], y, name, scope, cfg, u))
    return RelationProbeResult(rows, probes, cfg)
