"""What ``vf.causal.trace`` returns: the tables, the null, JSON and heatmaps."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.core.conventions import recovery


@dataclass
class TraceNull:
    """The random-restoration null of one kind (see ``vlmfast.causal.tracing.trace`` for the choice).

    For each layer, ``samples[L]`` holds the metric of ``K`` restorations of a random set
    of ``count`` units (positions, or heads) drawn uniformly without replacement at that
    layer. ``p_value[L, i]`` is the one-sided permutation p-value of cell ``(L, i)``:
    ``(1 + #{k: recovery_k >= recovery(L, i)}) / (K + 1)``.
    """

    samples: Tensor
    """Tensor[layers, K]: the metric of each null restoration."""
    recovery: Tensor
    """Tensor[layers, K]: the same as recovery."""
    p_value: Tensor
    """Tensor[layers, units]: permutation p-value of each cell's recovery."""
    mean: Tensor
    """Tensor[layers]: mean recovery of the null."""
    low: Tensor
    """Tensor[layers]: lower end of the central ``level`` interval of the null's recovery."""
    high: Tensor
    """Tensor[layers]: upper end of that interval."""
    count: int
    """Units restored by each null draw (1: the count each cell restores)."""
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "k": int(self.samples.shape[1]),
            "level": self.level,
            "mean": self.mean.tolist(),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "p_value": self.p_value.tolist(),
            "samples": self.samples.tolist(),
        }


@dataclass
class TraceResult:
    """Causal tracing of one tower: clean/corrupt metric, restored-metric tables, null.

    ``effect[kind]`` and ``recovery[kind]`` are ``Tensor[layers, positions]`` (for
    ``"heads"``: ``Tensor[layers, heads]``); row ``i`` is layer ``layers[i]`` and column
    ``j`` is position ``positions[j]`` (or head ``j``).
    """

    tower: str
    clean: float
    corrupt: float
    effect: dict[str, Tensor]
    recovery: dict[str, Tensor]
    layers: list[int]
    positions: list[int]
    """The restored (traced) positions: the columns of the position tables."""
    corrupted: list[list[int]]
    """The corrupted positions of each row."""
    labels: list[str]
    """A label per traced position (``CLS``, ``p3``, a token...)."""
    noise: str | float
    sigma: float | None
    """Noise std actually used (None for zeroing or replacement inputs)."""
    samples: int
    seed: int
    window: int
    metric: str
    method: str
    null: dict[str, TraceNull] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        return list(self.effect)

    def to_dict(self) -> dict[str, Any]:
        """Returns everything as plain JSON types."""
        return {
            "tower": self.tower,
            "clean": self.clean,
            "corrupt": self.corrupt,
            "kinds": self.kinds,
            "layers": self.layers,
            "positions": self.positions,
            "labels": self.labels,
            "corrupted": self.corrupted,
            "noise": self.noise,
            "sigma": self.sigma,
            "samples": self.samples,
            "seed": self.seed,
            "window": self.window,
            "metric": self.metric,
            "method": self.method,
            "effect": {k: v.tolist() for k, v in self.effect.items()},
            "recovery": {k: v.tolist() for k, v in self.recovery.items()},
            "null": None if self.null is None else {k: v.to_dict() for k, v in self.null.items()},
            "meta": self.meta,
        }

    def to_json(self, indent: int | None = None) -> str:
        """Returns ``to_dict()`` as a JSON string."""
        return json.dumps(self.to_dict(), indent=indent)

    def rows(self) -> list[dict[str, Any]]:
        """Returns one record per (kind, layer, unit): the long table the CLI writes."""
        out: list[dict[str, Any]] = []
        for kind, eff in self.effect.items():
            rec = self.recovery[kind]
            null = self.null.get(kind) if self.null else None
            for i, layer in enumerate(self.layers):
                for j in range(eff.shape[1]):
                    unit = j if kind == "heads" else self.positions[j]
                    row: dict[str, Any] = {
                        "tower": self.tower,
                        "kind": kind,
                        "layer": layer,
                        "unit": unit,
                        "label": f"h{j}" if kind == "heads" else self.labels[j],
                        "effect": float(eff[i, j]),
                        "recovery": float(rec[i, j]),
                    }
                    if null is not None:
                        row["p_value"] = float(null.p_value[i, j])
                        row["null_mean"] = float(null.mean[i])
                        row["null_low"] = float(null.low[i])
                        row["null_high"] = float(null.high[i])
                    out.append(row)
        return out

    def summary(self) -> str:
        """Returns a few lines: clean/corrupt, the best cell of each kind and its p-value."""
        lines = [
            f"{self.tower} tower: clean {self.metric} {self.clean:.4f}, corrupt {self.corrupt:.4f} "
            f"(noise {self.noise}, sigma {self.sigma}, samples {self.samples})"
        ]
        for kind, rec in self.recovery.items():
            flat = int(rec.argmax())
            i, j = divmod(flat, rec.shape[1])
            unit = f"h{j}" if kind == "heads" else self.labels[j]
            line = (
                f"  {kind:8s} max recovery {float(rec[i, j]):.3f} at layer {self.layers[i]}, {unit}"
            )
            if self.null and kind in self.null:
                n = self.null[kind]
                line += (
                    f"; p = {float(n.p_value[i, j]):.3g} vs null mean {float(n.mean[i]):.3f} "
                    f"[{float(n.low[i]):.3f}, {float(n.high[i]):.3f}] (K={n.samples.shape[1]})"
                )
            lines.append(line)
        return "\n".join(lines)

    def plot(self, kinds: list[str] | None = None, value: str = "recovery") -> Any:
        """Returns heatmaps (one panel per kind) as a matplotlib Figure: positions/heads x
        layers, symmetric colour limits.

        ``value``: ``"recovery"`` (default) or ``"effect"`` (the metric minus corrupt, so
        that 0 is the corrupted run either way).
        """
        # a bare Figure: no pyplot state, no backend switch (a notebook keeps its inline plots)
        from matplotlib.figure import Figure

        kinds = kinds or self.kinds
        n = len(kinds)
        tall = max(len(self.positions), 4)
        fig = Figure(figsize=(3.2 * n + 1.0, 1.2 + 0.16 * min(tall, 60)))
        axes = fig.subplots(1, n, squeeze=False)
        for ax, kind in zip(axes[0], kinds):
            table = self.recovery[kind] if value == "recovery" else self.effect[kind] - self.corrupt
            data = table.T.float().numpy()
            lim = float(max(abs(data.min()), abs(data.max()), 1e-12))
            if value == "recovery":
                lim = max(lim, 1.0)
            im = ax.imshow(
                data, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest"
            )
            title = kind if kind == "resid" or kind == "heads" else f"{kind} (window {self.window})"
            ax.set_title(f"{self.tower}: {title}", fontsize=9)
            ax.set_xlabel("layer")
            ax.set_xticks(range(len(self.layers)))
            ax.set_xticklabels([str(x) for x in self.layers], fontsize=7)
            if kind == "heads":
                ax.set_ylabel("head")
            else:
                step = max(1, math.ceil(len(self.labels) / 25))
                ax.set_yticks(range(0, len(self.labels), step))
                ax.set_yticklabels(self.labels[::step], fontsize=6)
                ax.set_ylabel("restored position")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=value)
        fig.suptitle(
            f"causal trace, {self.tower} tower corrupted ({self.metric}: clean {self.clean:.3f}, "
            f"corrupt {self.corrupt:.3f})",
            fontsize=9,
        )
        fig.tight_layout()
        return fig


def null_tables(
    samples: Tensor, effect: Tensor, clean: float, corrupt: float, count: int, level: float
) -> TraceNull:
    """Returns a TraceNull from the null's metrics ``[layers, K]`` and the cells ``[layers, units]``."""
    rec_null = recovery(samples, clean, corrupt)
    rec_cells = recovery(effect, clean, corrupt)
    k = samples.shape[1]
    # >= with a small slack, so that ties (the same restoration) count against the cell
    exceed = (rec_null.unsqueeze(1) >= rec_cells.unsqueeze(2) - 1e-9).sum(-1)
    p_value = (1.0 + exceed.float()) / (k + 1.0)
    alpha = (1.0 - level) / 2.0
    qs = torch.quantile(
        rec_null.double(), torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64), dim=1
    )
    return TraceNull(
        samples=samples.float(),
        recovery=rec_null,
        p_value=p_value,
        mean=rec_null.mean(1),
        low=qs[0].float(),
        high=qs[1].float(),
        count=count,
        level=level,
    )
