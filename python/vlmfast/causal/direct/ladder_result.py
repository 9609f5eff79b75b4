"""What ``vf.causal.ablation_ladder`` returns: the rungs, their zero-shot figures, a plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmfast.causal.direct.plots import ladder_plot


@dataclass
class LadderRung:
    """One rung of the ladder: what is ablated and the zero-shot figures after it."""

    name: str
    """``clean``, ``mlps``, ``mlps+attn0``, ``mlps+attn0-1``, ..."""
    ablated: list[str]
    """Ablated components (``blocks.L.mlp`` / ``blocks.L.attn``)."""
    correct: int
    """Examples whose true class has the highest cosine (ties count as wrong)."""
    n: int
    """Examples."""
    interval: tuple[float, float]
    """Wilson score interval of the accuracy at the ladder's ``level``."""
    score: float
    """Mean matched score ``scale*cos (+bias)`` (caption i, or the true class prompt)."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    def to_json(self) -> dict[str, Any]:
        """Returns the rung as plain data (accuracy a fraction in [0, 1], score in logits)."""
        return {
            "name": self.name,
            "ablated": list(self.ablated),
            "accuracy": self.accuracy,
            "correct": self.correct,
            "n": self.n,
            "interval": list(self.interval),
            "score": self.score,
        }


@dataclass
class AblationLadder:
    """The ladder's rungs and how they were made."""

    rungs: list[LadderRung]
    tower: str
    mode: str
    """``"mean"`` or ``"zero"``."""
    path: str
    """``"direct"`` (TextSpan: direct contributions only) or ``"total"`` (forward ablation)."""
    means_from: str
    """``"batch"`` (the given examples) or ``"reference"`` (the ``reference=`` batch)."""
    level: float
    n_classes: int
    score_against: str
    """``"texts"`` (caption i of image i) or ``"true class prompt"``."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def chance(self) -> float | None:
        return 1.0 / self.n_classes if self.n_classes else None

    @property
    def accuracies(self) -> list[float]:
        return [r.accuracy for r in self.rungs]

    def to_json(self) -> dict[str, Any]:
        """Returns the ladder as plain data: its settings and every rung's figures."""
        return {
            "tower": self.tower,
            "mode": self.mode,
            "path": self.path,
            "means_from": self.means_from,
            "level": self.level,
            "n_classes": self.n_classes,
            "score_against": self.score_against,
            "rungs": [r.to_json() for r in self.rungs],
            **({"meta": self.meta} if self.meta else {}),
        }

    def table(self) -> list[dict[str, Any]]:
        """Returns one row per rung (for CSV / parquet): accuracy as a fraction in [0, 1]
        with its interval, the matched score in logits."""
        return [
            {
                "rung": k,
                "name": r.name,
                "accuracy": r.accuracy,
                "low": r.interval[0],
                "high": r.interval[1],
                "correct": r.correct,
                "n": r.n,
                "score": r.score,
            }
            for k, r in enumerate(self.rungs)
        ]

    def plot(self, path: str | Path | None = None) -> Any:
        """Returns the ladder's accuracy per rung as a matplotlib Figure; saved if ``path``
        is given."""
        return ladder_plot(self, path)
