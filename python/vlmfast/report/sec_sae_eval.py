"""The SAE evaluation section: each trained SAE's suite (``RUN/train-sae/<mod>/eval.json``).

Two tables: reconstruction per SAE and token type (FVU, explained variance, L0, cosine,
dead / dense / alive fractions, each fraction with its interval), and downstream per SAE
(the SAE spliced at its hook: loss clean / spliced / mean-ablated, loss recovered, KL,
zero-shot accuracy, with bootstrap intervals; the model's logit scale). The SAE's
dashboards show the same numbers (:func:`suite_line`).
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from vlmfast.report.fmt import cell, interval
from vlmfast.report.model import col, not_run, section, table
from vlmfast.report.run_dir import RunDir

TITLE = "SAE evaluation (reconstruction and spliced-in downstream)"
EVAL_FILE = "eval.json"
"""Each SAE folder's suite JSON (``vlmfast.pipeline.stages.sae_eval.EVAL_FILE``)."""


def suites(run: RunDir) -> dict[str, dict[str, Any]]:
    """``{modality: suite JSON}`` of the run's SAEs that have an ``eval.json``."""
    root = run.stage_dir("train-sae")
    out = {}
    for mod in ("image", "text"):
        f = Path(root) / mod / EVAL_FILE
        if f.is_file():
            out[mod] = json.loads(f.read_text())
    return out


def _ci(value: Any, ci: Any, scale: float = 1.0) -> dict[str, Any]:
    lo, hi = ci if ci else (None, None)
    s = lambda v: None if v is None else scale * v  # noqa: E731
    return interval(s(value), s(lo), s(hi))


def _recon_rows(mod: str, suite: dict[str, Any]) -> list[dict[str, Any]]:
    rec = suite.get("reconstruction") or {}
    parts = [("all", rec.get("overall")), *sorted((rec.get("by_type") or {}).items())]
    rows = []
    for name, m in parts:
        if not m:
            continue
        rows.append(
            {
                "sae": f"{mod} ({suite.get('hook')})",
                "tokens": name,
                "rows": m["n_rows"],
                "fvu": m["fvu"],
                "ev": None if m["explained_variance"] is None else 100 * m["explained_variance"],
                "l0": _ci(m["l0_mean"], m["l0_ci"]),
                "cos": _ci(m["cosine_mean"], m["cosine_ci"]),
                "dead": _ci(m["dead_fraction"], m["dead_ci"], 100),
                "dense": _ci(m["dense_fraction"], m["dense_ci"], 100),
                "alive": _ci(m["alive_fraction"], m["alive_ci"], 100),
            }
        )
    return rows


def _down_row(mod: str, suite: dict[str, Any]) -> dict[str, Any] | None:
    d = suite.get("downstream")
    if not d:
        return None

    def e(key: str, scale: float = 1.0) -> dict[str, Any]:
        return _ci(d[key]["value"], d[key]["ci"], scale)

    return {
        "sae": f"{mod} ({d['hook']})",
        "pairs": d["n_pairs"],
        "scale": d["logit_scale"],
        "recovered": e("loss_recovered", 100),
        "kl": e("kl_spliced"),
        "kl_null": e("kl_mean_ablated"),
        "loss": e("loss_spliced"),
        "loss_clean": e("loss_clean"),
        "loss_null": e("loss_mean_ablated"),
        "acc": e("accuracy_spliced", 100),
        "acc_clean": e("accuracy_clean", 100),
        "acc_null": e("accuracy_mean_ablated", 100),
    }


_RECON_COLS = [
    col("sae", "SAE (hook)", "text"),
    col("tokens", "tokens", "text"),
    col("rows", "rows", "int"),
    col("fvu", "FVU", "num"),
    col("ev", "explained var.", "pct"),
    col("l0", "L0 [95% CI]", "num"),
    col("cos", "cosine [95% CI]", "num"),
    col("dead", "dead [Wilson]", "pct"),
    col("dense", "dense [Wilson]", "pct"),
    col("alive", "alive [Wilson]", "pct"),
]
_DOWN_COLS = [
    col("sae", "SAE (hook)", "text"),
    col("pairs", "pairs", "int"),
    col("scale", "logit scale", "num"),
    col("recovered", "loss recovered [95% boot.]", "pct"),
    col("kl", "KL spliced", "num"),
    col("kl_null", "KL mean-abl.", "num"),
    col("loss_clean", "loss clean", "num"),
    col("loss", "loss spliced", "num"),
    col("loss_null", "loss mean-abl.", "num"),
    col("acc_clean", "top-1 clean", "pct"),
    col("acc", "top-1 spliced", "pct"),
    col("acc_null", "top-1 mean-abl.", "pct"),
]


def sae_eval(run: RunDir) -> dict[str, Any]:
    """The section (``not run`` when no SAE has an ``eval.json``)."""
    found = suites(run)
    if not found:
        reason = (
            run.why_missing("train-sae")
            if not run.done("train-sae")
            else "not run: the train-sae stage wrote no eval.json (vlmfast eval-sae writes one)"
        )
        return not_run("sae_eval", TITLE, reason)
    recon = [r for mod, s in found.items() for r in _recon_rows(mod, s)]
    down = [r for mod, s in found.items() if (r := _down_row(mod, s)) is not None]
    split = {s.get("split") for s in found.values()}
    where = "the SAE's training rows" if split == {"train"} else "the stored rows evaluated"
    tables = [
        table(
            "sae_recon",
            "Reconstruction by token type",
            _RECON_COLS,
            recon,
            f"On {where}. FVU = residual / total variance (mean ablation: FVU 1); dead: never "
            "fires on these rows; dense: fires on more than 10% of them.",
        )
    ]
    if down:
        tables.append(
            table(
                "sae_downstream",
                "Downstream, the SAE spliced in at its hook",
                _DOWN_COLS,
                down,
                "Pair logits with the model's logit scale (and SigLIP's bias). Loss recovered "
                "= (L_mean-ablated - L_spliced) / (L_mean-ablated - L_clean); n/a: mean "
                "ablation does not change the loss (undefined). KL: mean over images of the "
                "caption distribution's divergence from the clean model's (nats).",
            )
        )
    return section("sae_eval", TITLE, tables)


def suite_line(run: RunDir, modality: str) -> str:
    """One HTML paragraph of the ``modality`` SAE's headline suite numbers ("" if none),
    formatted as in the section's tables (for the SAE's dashboards)."""
    suite = suites(run).get(modality)
    if not suite:
        return ""
    recon = _recon_rows(modality, suite)
    bits = []
    if recon:
        all_row = recon[0]
        bits += [
            f"FVU {cell(all_row['fvu'], 'num')}",
            f"L0 {cell(all_row['l0'], 'num')}",
            f"cosine {cell(all_row['cos'], 'num')}",
            f"dead {cell(all_row['dead'], 'pct')}",
        ]
    down = _down_row(modality, suite)
    if down is not None:
        bits += [
            f"loss recovered {cell(down['recovered'], 'pct')}",
            f"KL {cell(down['kl'], 'num')}",
        ]
    return f'<p class="meta">SAE suite: {escape(" · ".join(bits))}</p>'


def with_suite(card_html: str, line: str) -> str:
    """A dashboard card with the SAE's suite line after its first paragraph."""
    return card_html.replace("</p>", "</p>\n" + line, 1) if line else card_html
