"""The ground-truth section (synthetic benchmark): planted concepts recovered, the best
unit per planted concept, and what each circuit is made of."""

from __future__ import annotations

from typing import Any

from vlmfast.report.fmt import interval
from vlmfast.report.model import col, not_run, section, table
from vlmfast.report.run_dir import RunDir

GT_TITLE = "Ground truth (synthetic benchmark)"


def circuit_composition(run: RunDir) -> dict[str, Any] | None:
    """What each circuit is made of (towers, kinds, layers), for the ground-truth section."""
    res = run.result("circuit")
    if not res:
        return None
    rows = []
    for concept in sorted(res):
        nodes = res[concept].get("nodes") or []
        for tower in ("image", "text"):
            mine = [n for n in nodes if n.get("tower") == tower]
            layers = sorted({int(n["layer"]) for n in mine})
            rows.append(
                {
                    "concept": concept,
                    "tower": tower,
                    "nodes": len(mine),
                    "kinds": ", ".join(sorted({str(n["kind"]) for n in mine})),
                    "layers": ", ".join(str(x) for x in layers),
                }
            )
    return table(
        "gt_circuits",
        "Components of each circuit, per tower",
        [
            col("concept", "concept", "text"),
            col("tower", "tower", "text"),
            col("nodes", "nodes", "int"),
            col("kinds", "kinds", "text"),
            col("layers", "layers", "text"),
        ],
        rows,
        "The bundled model was trained, not wired by hand: the renderer's ground truth is "
        "which shapes and colors each image shows, not a circuit. These are the components "
        "the circuits used, to read against the planted concepts above.",
    )


def ground_truth(run: RunDir) -> dict[str, Any]:
    res = run.result("score")
    gt = (res or {}).get("ground_truth")
    if not gt:
        reason = (
            run.why_missing("score")
            if res is None
            else ("not run: the score stage recorded no planted ground truth (non-synthetic data)")
        )
        return not_run("ground_truth", GT_TITLE, reason)
    return section(
        "ground_truth",
        GT_TITLE,
        [
            _summary_table(gt),
            _units_table(gt),
            *([bound_table(gt["bound_relations"])] if gt.get("bound_relations") else []),
            *([comp] if (comp := circuit_composition(run)) is not None else []),
        ],
        note="The synthetic renderer's planted shapes and colors are exact ground truth.",
    )


def _kind_of() -> dict[str, str]:
    """Each planted name's concept kind (shape, color, relation)."""
    from vlmfast.data.synthetic import spec as sspec

    kind_of = {**{s: "shape" for s in sspec.SHAPES}, **{c: "color" for c in sspec.COLORS}}
    rel = getattr(sspec, "RELATIONS", ())
    kind_of.update({r: "relation" for r in rel})
    return kind_of


def _units_table(gt: dict[str, Any]) -> dict[str, Any]:
    """The best unit of each planted concept per modality, with its AUROC."""
    kind_of = _kind_of()
    rows = []
    concepts = gt.get("concepts") or {}
    for name in sorted(concepts):
        for mod in sorted(concepts[name]):
            e = concepts[name][mod]
            ci = e.get("ci") or [None, None]
            rows.append(
                {
                    "concept": name,
                    "kind": kind_of.get(name, ""),
                    "modality": mod,
                    "unit": e.get("feature", e.get("unit")),
                    "auroc": interval(e.get("auroc"), ci[0], ci[1]),
                    "recovered": bool(e.get("recovered")),
                }
            )
    return table(
        "gt_units",
        "Best unit per planted concept",
        [
            col("concept", "concept", "text"),
            col("kind", "kind", "text"),
            col("modality", "modality", "text"),
            col("unit", "unit", "int"),
            col("auroc", "AUROC [95% CI]", "num"),
            col("recovered", "recovered", "text"),
        ],
        rows,
    )


def _summary_table(gt: dict[str, Any]) -> dict[str, Any]:
    """Planted concepts recovered per modality."""
    summary = []
    for mod in sorted(k for k in gt if isinstance(gt[k], dict) and "recovered" in gt[k]):
        s = gt[mod]
        summary.append(
            {
                "modality": mod,
                "recovered": s["recovered"],
                "of": s["of"],
                "percent": 100.0 * float(s.get("fraction", 0.0)),
                "target": gt.get("target_auroc"),
            }
        )
    return table(
        "gt_summary",
        "Planted concepts recovered",
        [
            col("modality", "modality", "text"),
            col("recovered", "recovered", "int"),
            col("of", "planted", "int"),
            col("percent", "share", "pct"),
            col("target", "AUROC target", "num"),
        ],
        summary,
        "A planted concept counts as recovered when its best unit reaches the target "
        "AUROC (the best of many units: an optimistic pick).",
    )


def _ci(entry: dict[str, Any], key: str) -> dict[str, Any]:
    lo, hi = (entry.get(f"{key}_ci") or [None, None])[:2]
    return interval(entry.get(key), lo, hi)


def _bound_note(bound: dict[str, Any]) -> str:
    """What the bound-relation table measures, what the unordered labels say, the pairs."""
    if bound.get("unavailable"):
        return f"Bound relations not measured: {bound['unavailable']}."
    parts = [
        "Which object stands where (a bound relation, e.g. red left of blue), asked on the "
        "samples where the relation or its reverse holds: a linear probe (held-out accuracy "
        "and AUROC, against a label-shuffled null) beside the best single unit and the best "
        "SAE feature (each chosen on the training rows, measured on the held-out rows). "
        "A family pools one attribute's pairs: label = the object whose value comes first "
        "is the subject."
    ]
    for mod, same in sorted((bound.get("unordered_identical") or {}).items()):
        for pair_name, share in same.items():
            parts.append(
                f"{mod}: the unordered labels {pair_name} are identical on "
                f"{100.0 * float(share):.1f}% of samples (they say only: two objects in "
                "different columns / rows)."
            )
    for mod, p in sorted((bound.get("pairs") or {}).items()):
        acc = p.get("median_accuracy")
        parts.append(
            f"{mod}, single pairs: {p.get('significant')} of {p.get('probed')} probed pairs "
            f"(of {p.get('pairs')}) beat the null at BH {p.get('alpha')}"
            + ("" if acc is None else f"; median held-out accuracy {acc:.3f}")
            + "."
        )
    return " ".join(parts)


def bound_table(bound: dict[str, Any]) -> dict[str, Any]:
    """Bound relations per modality and family: probe, null, best unit, best SAE feature."""
    rows = [
        {
            "modality": f["modality"],
            "family": f["name"],
            "rows": (bound.get("rows") or {}).get(f["modality"], ""),
            "n": f.get("n_rows"),
            "accuracy": _ci(f, "accuracy"),
            "majority": f.get("majority"),
            "null": f.get("null_accuracy_q95"),
            "auroc": _ci(f, "auroc"),
            "p": f.get("pvalue"),
            "unit": f.get("best_unit_auroc"),
            "feature": f.get("best_feature_auroc"),
        }
        for f in bound.get("families") or []
    ]
    return table(
        "gt_bound",
        "Bound relations: probe vs best single unit",
        [
            col("modality", "modality", "text"),
            col("family", "relation family", "text"),
            col("rows", "rows probed", "text"),
            col("n", "samples", "int"),
            col("accuracy", "probe accuracy [95% CI]", "num"),
            col("majority", "majority class", "num"),
            col("null", "null accuracy q95", "num"),
            col("auroc", "probe AUROC [95% CI]", "num"),
            col("p", "p (shuffled labels)", "p"),
            col("unit", "best unit AUROC", "num"),
            col("feature", "best SAE feature AUROC", "num"),
        ],
        rows,
        _bound_note(bound),
    )
