"""The typed result of ``vf.causal.attribute``: scores, completeness, null, comparison, plots."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmfast.causal.core.jsonsafe import json_safe
from vlmfast.errors import InputError, ShapeError

Key = tuple[str, str]


@dataclass
class NullEstimate:
    """Random-subset false-negative estimate for one (tower, kind); see ``_attr_exact``."""

    false_negative_rate: float
    """Share of the sampled components with a large exact effect whose attribution is small
    (NaN when none has a large effect)."""
    n_large: int
    """Sampled components whose |exact effect| is at least ``large_threshold``."""
    n_false_negative: int
    """Of those, how many have |attribution| below ``small_threshold``."""
    large_threshold: float
    """The 75th percentile of the sampled |exact effects|."""
    small_threshold: float
    """The median |attribution| (ranking score) over all components of this tower and kind."""
    spearman: float
    """Rank correlation of attribution and exact effect over the sample."""
    layers: list[int]
    indices: list[int]
    exact: list[float]
    attribution: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {k: _finite(v) for k, v in self.__dict__.items()}


@dataclass
class AttributionResult:
    """Attribution scores of every component, with the conventions they were computed under."""

    scores: dict[Key, Tensor]
    """``(tower, kind) -> Tensor[layers, components]``: signed estimates of
    ``m(base with the component from source) - m(base)`` (see ``vf.causal.attribution``)."""
    method: str
    """``"atp"``, ``"atp*"`` or ``"ig"``."""
    direction: str
    """``"denoising"`` (base = corrupt, source = clean) or ``"noising"``."""
    steps: int | None
    """IG steps (midpoint rule); None for atp / atp*."""
    metric_base: float
    """The metric at the base run (corrupt when denoising)."""
    metric_source: float
    """The metric at the source run (clean when denoising)."""
    total_change: float
    """``m(source) - m(base)``."""
    tower_change: dict[str, float]
    """``m(source tower, base other tower) - m(base)`` per tower."""
    completeness_gap: dict[str, float]
    """Per tower: sum of the ``blocks.0.resid_pre`` scores minus ``tower_change``; ``"joint"``:
    the sum over the scored towers minus ``total_change``."""
    layer_gaps: dict[str, Tensor] = field(default_factory=dict)
    """Per tower (with ``resid``): ``Tensor[layers]``, each layer's cut minus ``tower_change``."""
    graddrop: dict[Key, Tensor] | None = None
    """AtP* only: GradDrop magnitudes ``sum_l |score_l| / (L - 1)``, the ranking AtP* uses."""
    null: dict[Key, NullEstimate] | None = None
    """With ``null=K``: the random-subset false-negative estimate per (tower, kind)."""
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- views ---------------------------------------------------------------------
    @property
    def metric_clean(self) -> float:
        return self.metric_source if self.direction == "denoising" else self.metric_base

    @property
    def metric_corrupt(self) -> float:
        return self.metric_base if self.direction == "denoising" else self.metric_source

    def ranking(self, key: Key) -> Tensor:
        """Returns the magnitude components are ranked by, ``[layers, components]``:
        GradDrop for atp*, else ``|scores|`` (metric units)."""
        if self.graddrop is not None and key in self.graddrop:
            return self.graddrop[key]
        return self.scores[key].abs()

    def _key(self, key: Any) -> Key:
        if isinstance(key, tuple) and len(key) == 2 and key in self.scores:
            return key
        raise InputError(f"no scores for {key!r}; this result has {sorted(self.scores)}")

    # ---- comparison ----------------------------------------------------------------
    def compare(
        self, exact: Mapping[Key, Tensor] | Tensor | Any, key: Key | None = None, k: int = 10
    ) -> dict[Key, dict[str, float]]:
        """Spearman and top-k overlap of these scores against exact patching effects.

        ``exact``: ``{(tower, kind): Tensor[layers, components]}`` (e.g. from
        ``vf.causal.exact_effects``), one tensor (then ``key`` says which scores; e.g.
        ``patch_sweep(..., normalize="delta")``), or a ``TraceResult`` traced over every
        layer and position with the same corrupt inputs (``corrupted=``; its tables minus
        its corrupt metric are the exact changes: ``heads`` as is, while its ``resid``
        restores ``resid_post`` of L = this ``resid_pre`` of L + 1, so rows are aligned by
        that shift and the last trace row is dropped). Per key: ``spearman`` (signed scores
        vs signed effects), ``spearman_abs`` (``ranking`` vs |effect|), ``topk_overlap``
        (share of the k largest |effects| among the k highest-ranked components).

        Returns:
            Per key, ``spearman`` and ``spearman_abs`` (in [-1, 1]; NaN if a side is
                constant), ``topk_overlap`` (a fraction in [0, 1]), ``k`` and ``n``
                (components).

        Raises:
            InputError: a key with no scores, one tensor without ``key``, or a trace not
                over every layer (and position for ``resid``).
            ShapeError: exact effects of another shape than the scores.
        """
        shift: dict[Key, int] = {}
        if hasattr(exact, "effect") and hasattr(exact, "tower"):
            exact, shift = self._from_trace(exact)
        if isinstance(exact, Tensor):
            if key is None:
                if len(self.scores) != 1:
                    raise InputError(
                        f"compare got one tensor: pass key= (one of {sorted(self.scores)})"
                    )
                key = next(iter(self.scores))
            exact = {self._key(key): exact}
        out: dict[Key, dict[str, float]] = {}
        for name, eff in exact.items():
            name = self._key(tuple(name))
            est, rank = self.scores[name], self.ranking(name)
            eff = torch.as_tensor(eff, dtype=torch.float32).cpu()
            if shift.get(name):
                est, rank, eff = est[1:], rank[1:], eff[:-1]
            if tuple(eff.shape) != tuple(est.shape):
                raise ShapeError(
                    f"exact effects for {name} have shape {tuple(eff.shape)}, the scores "
                    f"{tuple(est.shape)}"
                )
            kk = max(1, min(k, est.numel()))
            top_est = set(rank.flatten().topk(kk).indices.tolist())
            top_eff = set(eff.abs().flatten().topk(kk).indices.tolist())
            out[name] = {
                "spearman": spearman(est.flatten(), eff.flatten()),
                "spearman_abs": spearman(rank.flatten(), eff.abs().flatten()),
                "topk_overlap": len(top_est & top_eff) / kk,
                "k": float(kk),
                "n": float(est.numel()),
            }
        return out

    def _from_trace(self, trace: Any) -> tuple[dict[Key, Tensor], dict[Key, int]]:
        tower = trace.tower
        out: dict[Key, Tensor] = {}
        shift: dict[Key, int] = {}
        for kind in ("heads", "resid"):
            if kind not in trace.effect or (tower, kind) not in self.scores:
                continue
            n_layers, n_cols = self.scores[tower, kind].shape
            full = list(trace.layers) == list(range(n_layers))
            if kind == "resid":
                full = full and list(trace.positions) == list(range(n_cols))
            if not full:
                raise InputError(
                    f"compare needs the trace over every layer (and position for resid) of "
                    f"the {tower} tower; got layers {list(trace.layers)}"
                )
            # a trace's effect tables hold the restored metric: the change is minus corrupt
            out[tower, kind] = trace.effect[kind] - float(trace.corrupt)
            shift[tower, kind] = int(kind == "resid")
        if not out:
            raise InputError(
                f"the trace has no heads/resid table matching these scores ({sorted(self.scores)})"
            )
        return out, shift

    # ---- export --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Returns a plain JSON-able dict (scores as nested lists, keyed ``"tower/kind"``)."""
        return {
            "method": self.method,
            "direction": self.direction,
            "steps": self.steps,
            "metric_base": self.metric_base,
            "metric_source": self.metric_source,
            "metric_clean": self.metric_clean,
            "metric_corrupt": self.metric_corrupt,
            "total_change": self.total_change,
            "tower_change": self.tower_change,
            "completeness_gap": {k: _finite(v) for k, v in self.completeness_gap.items()},
            "layer_gaps": {t: g.tolist() for t, g in self.layer_gaps.items()},
            "scores": {f"{t}/{k}": v.tolist() for (t, k), v in self.scores.items()},
            "graddrop": (
                {f"{t}/{k}": v.tolist() for (t, k), v in self.graddrop.items()}
                if self.graddrop is not None
                else None
            ),
            "null": (
                {f"{t}/{k}": v.to_dict() for (t, k), v in self.null.items()}
                if self.null is not None
                else None
            ),
            "meta": self.meta,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Returns ``to_dict`` as a JSON string (NaN written as null)."""
        return json.dumps(json_safe(self.to_dict()), indent=indent, allow_nan=False)

    def table(self) -> list[dict[str, Any]]:
        """Returns one row per component: tower, kind, layer, index, score (and graddrop)."""
        rows: list[dict[str, Any]] = []
        for (tower, kind), s in self.scores.items():
            gd = self.graddrop.get((tower, kind)) if self.graddrop is not None else None
            for layer in range(s.shape[0]):
                for idx in range(s.shape[1]):
                    row: dict[str, Any] = {
                        "tower": tower,
                        "kind": kind,
                        "layer": layer,
                        "index": idx,
                        "score": float(s[layer, idx]),
                    }
                    if gd is not None:
                        row["graddrop"] = float(gd[layer, idx])
                    rows.append(row)
        return rows

    def plot(self, path: str | Path | None = None) -> Any:
        """Returns heatmaps (layers x components) of every (tower, kind) as a matplotlib
        Figure; saved as PNG + SVG at ``path`` (suffix replaced) when given.

        Raises:
            InputError: matplotlib is not installed.
        """
        try:
            # a bare Figure: no pyplot state, no backend switch (notebooks keep inline plots)
            from matplotlib.figure import Figure
        except ImportError as err:  # pragma: no cover - matplotlib is in the dev env
            raise InputError(
                "AttributionResult.plot needs matplotlib (pip install matplotlib)"
            ) from err
        keys = list(self.scores)
        fig = Figure(figsize=(9, 2.2 * len(keys) + 0.6))
        axes = fig.subplots(len(keys), 1, squeeze=False)
        for ax, key in zip(axes[:, 0], keys, strict=True):
            s = self.scores[key].numpy()
            lim = float(np.abs(s).max()) or 1.0
            im = ax.imshow(
                s, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest"
            )
            ax.set_title(f"{key[0]} {key[1]} ({self.method}, {self.direction})", fontsize=9)
            ax.set_ylabel("layer")
            ax.set_xlabel({"resid": "position", "heads": "head", "neurons": "neuron"}[key[1]])
            fig.colorbar(im, ax=ax, fraction=0.03)
        fig.tight_layout()
        if path is not None:
            base = Path(path).with_suffix("")
            fig.savefig(base.with_suffix(".png"), dpi=120)
            fig.savefig(base.with_suffix(".svg"))
        return fig


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), 0-based."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    """Returns the Spearman rank correlation in [-1, 1] (average ranks for ties); NaN if
    either side is constant."""
    x = _ranks(a.detach().double().cpu().numpy())
    y = _ranks(b.detach().double().cpu().numpy())
    x -= x.mean()
    y -= y.mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")
