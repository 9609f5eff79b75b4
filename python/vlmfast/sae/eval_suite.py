"""The SAE evaluation suite in one call: reconstruction on stored rows + downstream splice.

from vlmfast.sae import evaluate_suite, SuiteConfig
report = evaluate_suite(sae, store=store, pair=pair, images=images, texts=captions,
                        config=SuiteConfig(held_out=0.2))
report.reconstruction.by_type["patch"].fvu, report.downstream.loss_recovered.value
report.save("eval.json")                          # report.to_dict(): JSON-serialisable

Reconstruction (:func:`vlmfast.sae.evaluate`): FVU / explained variance, L0 mean and
histogram, cosine, dead / dense / alive fractions and the log10 firing-density histogram,
over all rows and per token type (:mod:`vlmfast.sae.eval_rows`). Downstream
(:mod:`vlmfast.sae.downstream`): KL, zero-shot accuracy and loss recovered with the SAE
spliced at its hook, with the model's logit scale and bias. Either half is skipped when
its inputs are not given (no store; no model).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmfast.errors import InputError, ShapeError
from vlmfast.sae.downstream import DownstreamConfig, DownstreamMetrics, downstream_metrics
from vlmfast.sae.eval_rows import EvalRows, eval_batches, plan_eval_rows
from vlmfast.sae.evaluation import SAEEvaluation, evaluate_batches, n_latents_of
from vlmfast.sae.rows import ROWS

SCHEMA = 1
"""Version of :meth:`SuiteReport.to_dict`'s layout (``schema`` key)."""


@dataclass
class SuiteConfig:
    """Options of :func:`evaluate_suite`."""

    hook: str | None = None
    """Hook of the SAE (None: the SAE's ``cfg.hook``)."""
    rows: str | None = None
    """Stored token rows evaluated (``vlmfast.sae.rows.ROWS``); None: the rows the SAE
    trained on (its ``cfg.rows``), ``all`` when unknown."""
    held_out: float = 1.0
    """Fraction of each store hook's rows, at its end (cut at a sample boundary), that is
    evaluated; 1.0: every row (a store cached for evaluation)."""
    max_rows: int | None = None
    """At most this many rows (None: all)."""
    batch_size: int = 8192
    """Rows per SAE encode."""
    dense_threshold: float = 0.1
    """Firing frequency above which a latent is dense."""
    bins: int = 20
    """Bins of the log10 firing-density histogram."""
    level: float = 0.95
    """Confidence level of every interval."""
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    """Options of the downstream (spliced) metrics."""


@dataclass
class SuiteReport:
    """:func:`evaluate_suite`'s result."""

    hook: str
    sae: dict[str, Any]
    """``d_in``, ``n_latents``, ``k``, ``arch`` and ``rows`` of the SAE (what is known)."""
    rows: dict[str, Any] | None = None
    """The rows evaluated: store, rows option, held-out fraction, raw row ranges."""
    reconstruction: SAEEvaluation | None = None
    """Reconstruction suite (None without a store)."""
    downstream: DownstreamMetrics | None = None
    """Downstream suite (None without a model)."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the report as a JSON-serialisable dict (NaN -> None)."""
        out = {
            "schema": SCHEMA,
            "hook": self.hook,
            "sae": self.sae,
            "rows": self.rows,
            "reconstruction": None
            if self.reconstruction is None
            else self.reconstruction.to_dict(),
            "downstream": None if self.downstream is None else self.downstream.to_dict(),
        }
        return _finite(out)

    def save(self, path: str | Path) -> Path:
        """Writes :meth:`to_dict` as JSON to ``path``.

        Returns:
            The file written, ``path``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path


def _finite(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def sae_facts(sae: Any) -> dict[str, Any]:
    """What the SAE's config says: ``d_in``, ``n_latents``, ``k``, ``arch``, ``rows``, ``hook``."""
    cfg = getattr(sae, "cfg", None)
    facts = {"n_latents": n_latents_of(sae)}
    for key in ("d_in", "k", "arch", "rows", "hook"):
        value = getattr(cfg, key, None) if cfg is not None else getattr(sae, key, None)
        if value not in (None, ""):
            facts[key] = value
    return facts


def _hook_of(sae: Any, config: SuiteConfig) -> str:
    hook = config.hook or getattr(getattr(sae, "cfg", None), "hook", "") or ""
    if not hook:
        raise InputError("the SAE records no hook: pass the hook (SuiteConfig.hook, --hook)")
    return hook


def _rows_of(sae: Any, config: SuiteConfig) -> str:
    rows = config.rows or getattr(getattr(sae, "cfg", None), "rows", "") or "all"
    if rows not in ROWS:
        raise InputError(f"rows must be one of {', '.join(ROWS)}, got {rows!r}")
    return rows


def check_store_width(store: Any, plan: EvalRows, sae: Any) -> None:
    """Raises ``ShapeError`` naming the store and hook when a width is not the SAE's d_in."""
    d_in = sae_facts(sae).get("d_in")
    for part in plan.ranges:
        width = int(store.width(part))
        if d_in is not None and width != d_in:
            raise ShapeError(
                f"store {store.path}: hook {part} has width {width}, the SAE's d_in is {d_in}"
                " (an SAE of another hook or model?)"
            )


def reconstruction_suite(
    sae: Any, store: Any, config: SuiteConfig
) -> tuple[SAEEvaluation, dict[str, Any]]:
    """The reconstruction suite on ``store``'s rows of the SAE's hook, and those rows."""
    hook, rows = _hook_of(sae, config), _rows_of(sae, config)
    plan = plan_eval_rows(store, hook, rows, config.held_out, config.max_rows)
    check_store_width(store, plan, sae)
    device = next(iter(sae.parameters())).device if hasattr(sae, "parameters") else None
    batches = (
        (x.to(device) if device is not None else x, labels)
        for x, labels in eval_batches(store, plan, config.batch_size)
    )
    result = evaluate_batches(
        sae, batches, dense_threshold=config.dense_threshold, bins=config.bins, level=config.level
    )
    where = {
        "store": str(store.path),
        "rows": rows,
        "held_out": config.held_out,
        "max_rows": config.max_rows,
        "ranges": {p: list(r) for p, r in plan.ranges.items()},
    }
    return result, where


def evaluate_suite(
    sae: Any,
    *,
    store: Any = None,
    pair: Any = None,
    images: Any = None,
    texts: Any = None,
    config: SuiteConfig | None = None,
) -> SuiteReport:
    """Reconstruction on ``store`` (if given) and downstream on ``pair`` (if given).

    Returns:
        Both suites' results (either None when not run), as a :class:`SuiteReport`.

    Raises:
        InputError: neither a store nor a model, no hook recorded or passed, or a model
            without matched ``images`` / ``texts``.
        HookNameError: a hook the store or model lacks.
        ShapeError: a hook whose width is not the SAE's ``d_in``.
    """
    cfg = config or SuiteConfig()
    if store is None and pair is None:
        raise InputError("evaluate_suite needs a store (reconstruction) or a model (downstream)")
    hook = _hook_of(sae, cfg)
    report = SuiteReport(hook=hook, sae=sae_facts(sae))
    if store is not None:
        report.reconstruction, report.rows = reconstruction_suite(sae, store, cfg)
    if pair is not None:
        if images is None or texts is None:
            raise InputError("downstream metrics need matched images and texts with the model")
        report.downstream = downstream_metrics(
            pair, sae, hook, images, texts, config=cfg.downstream
        )
    return report
