"""The record type every pair source yields, and the bad-record report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

MAX_EXAMPLES_PER_REASON = 5


@dataclass
class PairRecord:
    """One image-text pair."""

    sample_id: int
    """Position of the record in the source's deterministic order, counting bad
    records too and before sampling/limit: stable across runs (it keys store rows)."""
    image: Image.Image | None
    """The decoded RGB image (``None`` for a text-only record)."""
    caption: str | None
    """The caption (``None`` for an image-only record)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Source details: file name / key, COCO ids, object labels, synthetic ground truth."""


@dataclass
class BadRecordReport:
    """Bad records skipped while reading: a count per reason and a few examples each."""

    counts: Counter[str] = field(default_factory=Counter)
    """Skipped records per reason (``corrupt_image``, ``missing_file``, ``empty_caption``,
    ``unreadable_member``, ``bad_line``, ...)."""
    examples: dict[str, list[str]] = field(default_factory=dict)
    """Up to ``MAX_EXAMPLES_PER_REASON`` examples per reason: where, and the error."""
    n_ok: int = 0
    """Records yielded so far."""

    def add(self, reason: str, where: str, detail: str = "") -> None:
        """Counts one skipped record."""
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < MAX_EXAMPLES_PER_REASON:
            ex.append(f"{where}: {detail}" if detail else where)

    @property
    def n_bad(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """Returns one paragraph for the end of a run: counts and examples per reason."""
        if not self.n_bad:
            return f"{self.n_ok} records read, none skipped"
        lines = [f"{self.n_ok} records read, {self.n_bad} bad records skipped:"]
        for reason, count in sorted(self.counts.items()):
            lines.append(f"  {reason}: {count}")
            lines.extend(f"    e.g. {ex}" for ex in self.examples.get(reason, []))
        return "\n".join(lines)

    def brief(self) -> str:
        """Returns one line: the skipped count per reason and the first example."""
        if not self.n_bad:
            return "none skipped"
        parts = []
        for reason, count in sorted(self.counts.items()):
            ex = self.examples.get(reason) or []
            parts.append(f"{reason} {count}" + (f", e.g. {ex[0]}" if ex else ""))
        return f"{self.n_bad} bad records skipped: " + "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        """Returns the report as a JSON-ready dict (records read, skipped, per reason)."""
        return {
            "n_ok": self.n_ok,
            "n_bad": self.n_bad,
            "counts": dict(self.counts),
            "examples": self.examples,
        }
