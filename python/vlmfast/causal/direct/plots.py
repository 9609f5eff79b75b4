"""Figures of direct effects and of the ablation ladder (matplotlib, no pyplot state).

The figures take the results duck-typed (``Any``): the result classes call them from their
``plot`` methods, so this module imports neither (that would be an import cycle).
``de`` is a ``DirectEffects`` (``.heads``, ``.mlps``, ``.null``...), ``ladder`` an
``AblationLadder``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _heatmap_axes(fig: Any, ax: Any, de: Any) -> None:
    grid = np.concatenate([de.heads.numpy(), de.mlps.numpy()[:, None]], axis=1)
    lim = float(np.abs(grid).max()) or 1.0
    im = ax.imshow(grid, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(de.n_heads + 1), [f"h{h}" for h in range(de.n_heads)] + ["MLP"])
    ax.set_yticks(range(de.n_layers), [str(L) for L in range(de.n_layers)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.axvline(de.n_heads - 0.5, color="k", lw=0.8)
    if de.null is not None:
        p = np.concatenate([de.null.heads_p.numpy(), de.null.mlps_p.numpy()[:, None]], axis=1)
        for (row, col), value in np.ndenumerate(p):
            if value <= 0.05:
                ax.text(col, row, "*", ha="center", va="center", fontsize=9)
    ax.set_title(f"{de.tower} tower: direct effects", fontsize=10)
    fig.colorbar(im, ax=ax, label="mean contribution to matched logit")
    if de.null is not None:
        ax.set_xlabel("head   (*: mismatched-pairs null p <= 0.05)")


def effects_heatmap(de: Any, path: str | Path | None = None) -> Any:
    """Layers x heads heatmap (+ MLP column); ``*``: null p <= 0.05."""
    fig = _figure(2.2 + 0.6 * (de.n_heads + 1), 1.6 + 0.45 * de.n_layers)
    _heatmap_axes(fig, fig.add_subplot(), de)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def effects_heatmap_both(de: Any, path: str | Path | None = None) -> Any:
    """Both towers side by side."""
    heads = max(de.image.n_heads, de.text.n_heads)
    layers = max(de.image.n_layers, de.text.n_layers)
    fig = _figure(2.4 + 1.1 * (heads + 1), 1.4 + 0.45 * layers)
    for k, part in enumerate((de.image, de.text)):
        _heatmap_axes(fig, fig.add_subplot(1, 2, k + 1), part)
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def ladder_plot(ladder: Any, path: str | Path | None = None) -> Any:
    """Zero-shot accuracy (with Wilson intervals) after each rung."""
    fig = _figure(1.5 + 0.6 * len(ladder.rungs), 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(ladder.rungs))
    acc = np.array([r.accuracy for r in ladder.rungs])
    lo = np.array([r.interval[0] for r in ladder.rungs])
    hi = np.array([r.interval[1] for r in ladder.rungs])
    ax.errorbar(x, acc, yerr=[acc - lo, hi - acc], marker="o", capsize=3)
    if ladder.chance is not None:
        ax.axhline(ladder.chance, color="gray", ls="--", lw=0.8, label="chance (1/classes)")
        ax.legend(loc="lower left")
    ax.set_xticks(x, [r.name for r in ladder.rungs], rotation=45, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("zero-shot accuracy")
    ax.set_title(f"{ladder.mode}-ablation ladder ({ladder.path} path, {ladder.tower} tower)")
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
