"""The causal tables of the "Cross-modal binding" section: fusion pairs beside the paper's
-23% retrieval, grounding heads and their patching test beside the paper's 62%."""

from __future__ import annotations

from typing import Any

from vlmfast.report.fmt import interval
from vlmfast.report.model import col, table
from vlmfast.report.paper_claims import claim


def _pct(x: Any) -> Any:
    return None if x is None else 100.0 * float(x)


def _head(layer: Any, head: Any) -> str:
    return f"L{layer}H{head}"


def _skipped(key: str, title: str, why: str, claim_key: str) -> dict[str, Any]:
    """One row saying why a part was not measured, beside the paper's claim."""
    return table(
        key,
        title,
        [col("status", "status", "text"), col("paper", "paper's claim", "text")],
        [{"status": f"skipped: {why}", "paper": claim(claim_key)}],
    )


def grounding_tables(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The top heads and the patching test (one row: a skipped run says why)."""
    g = res.get("grounding") or {}
    if not g or "skipped" in g:
        why = g.get("skipped", "not measured in this run")
        return [
            _skipped("grounding_patching", "Grounding heads: patching test", why, "heads.patching")
        ]
    return [_heads_table(g), _patching_table(g)]


def _heads_table(g: dict[str, Any]) -> dict[str, Any]:
    """The top heads by attention on the named object, against the ranking null."""
    rows = [
        {
            "head": _head(r["layer"], r["head"]),
            "named": r["named"],
            "diff": interval(r["diff"], *r["ci"]),
            "p": r["pvalue"],
            "significant": r["significant"],
        }
        for r in g.get("table") or []
    ]
    return table(
        "grounding_heads",
        f"Grounding heads: CLS attention on the named object ({g.get('n_images')} images)",
        [
            col("head", "head", "text"),
            col("named", "mass on named object", "num"),
            col("diff", f"minus {g.get('rank_by', '').replace('_', ' ')} [95% CI]", "delta"),
            col("p", "p (permutation)", "p"),
            col("significant", "BH significant", "text"),
        ],
        rows,
        "Mass: attention probability from the CLS token summed over the named object's "
        "patches. Null: the other objects' boxes of the same image (or random boxes of the "
        "named set's shape); p: the named object re-drawn among the image's objects.",
    )


def _patching_table(g: dict[str, Any]) -> dict[str, Any]:
    """The causal test: the top heads patched from clean into recolored images."""
    pt = g.get("patching") or {}
    rec: Any = (
        interval(_pct(pt["recovery"]), _pct(pt.get("ci_low")), _pct(pt.get("ci_high")))
        if pt.get("recovery") is not None
        else f"undefined: {pt.get('reason')}"
    )
    patch_row = {
        "heads": ", ".join(_head(a, b) for a, b in pt.get("heads") or []),
        "clean": pt.get("clean"),
        "corrupt": pt.get("corrupt"),
        "patched": pt.get("patched"),
        "recovery": rec,
        "null": _pct(pt.get("null_mean")),
        "p": pt.get("pvalue"),
        "paper": claim("heads.patching"),
    }
    return table(
        "grounding_patching",
        "Grounding heads: patching the top heads from clean into recolored images",
        [
            col("heads", "heads patched", "text"),
            col("clean", "matched logit, clean", "num"),
            col("corrupt", "recolored", "num"),
            col("patched", "recolored + heads", "num"),
            col("recovery", "recovered [95% CI]", "pct"),
            col("null", "random heads", "pct"),
            col("p", "p", "p"),
            col("paper", "paper's claim", "text"),
        ],
        [patch_row],
        "Recovered = (patched - recolored) / (clean - recolored) of the mean matched logit; "
        "the named object is recolored in the corrupted image. Null: as many random other "
        "image-tower heads patched the same way.",
    )


def _units(units: dict[str, Any]) -> str:
    """``L<layer>#<index>`` of each unit of a ``UnitSet.to_dict``."""
    out = []
    for u in units.get("units") or []:
        parts = str(u["hook"]).split(".")
        layer = parts[2] if len(parts) > 2 and parts[1] == "blocks" else "?"
        out.append(f"L{layer}#{u['index']}")
    return ", ".join(out)


def _side(e: dict[str, Any]) -> dict[str, Any]:
    return interval(e.get("specificity"), e.get("ci_low"), e.get("ci_high"))


def _fusion_pairs(fu: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for p in fu.get("pairs") or []:
        it = p["interaction"]
        rows.append(
            {
                "concept": p["concept"],
                "image_units": _units(p["image_units"]),
                "text_units": _units(p["text_units"]),
                **{c: _side(p[c]) for c in ("image", "text", "both")},
                **{f"{c}_p": p[c].get("pvalue") for c in ("image", "text", "both")},
                "interaction": interval(it["value"], it["ci_low"], it["ci_high"]),
                "interaction_p": it.get("pvalue"),
            }
        )
    cols = [
        col("concept", "concept", "text"),
        col("image_units", "image units (MLP neurons)", "text"),
        col("text_units", "text units", "text"),
    ]
    for c in ("image", "text", "both"):
        cols += [col(c, f"{c} ablated [CI]", "delta"), col(f"{c}_p", "p", "p")]
    cols += [col("interaction", "interaction [CI]", "delta"), col("interaction_p", "p", "p")]
    skipped = fu.get("skipped") or {}
    return table(
        "fusion",
        f"Fusion pairs: ablating each tower's concept units, and both ({fu.get('n_eval')} "
        "test pairs)",
        cols,
        rows,
        "Specificity: the mean logit drop on image-caption cells where both sides carry the "
        "concept minus cells where one side only does (logit units); p: against random unit "
        "sets of the same counts per hook. Interaction: both - image - text (matched drops). "
        f"Units selected on {fu.get('n_select')} other pairs. "
        + (f"{len(skipped)} concepts without a pair." if skipped else ""),
    )


def _retrieval(fu: dict[str, Any]) -> dict[str, Any]:
    r = fu.get("retrieval") or {}
    rel: Any = "undefined (clean accuracy 0)"
    if r.get("relative") is not None:
        lo, hi = r.get("relative_ci") or (None, None)
        rel = interval(-_pct(r["relative"]), _neg(_pct(hi)), _neg(_pct(lo)))
    lo, hi = r.get("drop_ci") or (None, None)
    row = {
        "clean": _pct(r.get("clean")),
        "ablated": _pct(r.get("ablated")),
        "change": interval(_neg(_pct(r.get("drop"))), _neg(_pct(hi)), _neg(_pct(lo))),
        "relative": rel,
        "null": _neg(_pct(r.get("null_drop_mean"))),
        "p": r.get("pvalue"),
        "units": r.get("n_units"),
        "paper": claim("ablate.retrieval"),
    }
    return table(
        "fusion_retrieval",
        "Retrieval (image -> caption top-1) with every fusion pair's units ablated",
        [
            col("clean", "clean", "pct"),
            col("ablated", "ablated", "pct"),
            col("change", "change, points [CI]", "pct"),
            col("relative", "relative change [CI]", "pct"),
            col("null", "random units: change", "pct"),
            col("p", "p", "p"),
            col("units", "units ablated", "int"),
            col("paper", "paper's claim", "text"),
        ],
        [row] if r else [],
        "Among the test set's captions; null: as many random units per hook.",
    )


def _neg(x: Any) -> Any:
    return None if x is None else -float(x)


def fusion_tables(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Fusion pairs per concept with their ablation effects, and the retrieval change."""
    fu = res.get("fusion")
    if not fu or (isinstance(fu.get("skipped"), str)):
        why = (fu or {}).get("skipped", "not measured in this run")
        return [_skipped("fusion", "Fusion units across towers", why, "ablate.retrieval")]
    return [_fusion_pairs(fu), _retrieval(fu)]


def two_tower(circuits: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The circuit stage's circuits whose candidates span both towers, by concept."""
    out = {}
    for concept, e in sorted(circuits.items()):
        towers = ((e.get("meta") or {}).get("run") or {}).get("towers") or []
        if {"image", "text"} <= set(towers):
            out[concept] = e
    return out


def two_tower_table(circuits: dict[str, Any], own: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per concept: each tower's share of the two-tower circuit and where the towers meet,
    for the cross-modal stage's own circuits (``own``: its ``two_tower`` result) and the
    circuit stage's two-tower circuits."""
    rows = [_two_tower_row(c, e, "cross-modal") for c, e in _own(own).items()]
    rows += [_two_tower_row(c, e, "circuit") for c, e in two_tower(circuits).items()]
    skipped = (own or {}).get("skipped")
    return table(
        "two_tower",
        "Two-tower circuits: image and text components meeting in the shared embedding",
        [
            col("concept", "concept", "text"),
            col("stage", "stage", "text"),
            col("corrupt", "corruption", "text"),
            col("image", "image nodes", "int"),
            col("text", "text nodes", "int"),
            col("candidates", "candidates", "int"),
            col("faithfulness", "faithfulness [CI]", "num"),
            col("sparsity", "sparsity", "num"),
            col("grid", "sparsity on the null's grid", "num"),
            col("null", "random orderings [CI]", "num"),
            col("p", "sparsity p", "p"),
            col("image_embed", "image.embed alone: effect", "delta"),
            col("text_embed", "text.embed alone", "delta"),
            col("interaction", "both towers' interaction", "delta"),
        ],
        rows,
        "One search over both towers' units (the cross-modal stage: attention heads, "
        "both-swap, mean ablation). Sparsity: circuit size / candidates, against random "
        "orderings of the same candidates (p compares the sparsity on the null's grid). Effects: the metric with one tower's embedding "
        "clean and the other corrupt, minus fully corrupt; interaction: the total minus both. "
        + (f"Cross-modal stage: skipped ({skipped}). " if skipped else "")
        + ("" if rows else "None in this run: set [crossmodal] two_tower_concepts."),
    )


def _own(own: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return dict(sorted(((own or {}).get("circuits") or {}).items()))


def _two_tower_row(concept: str, e: dict[str, Any], stage: str) -> dict[str, Any]:
    meta = e.get("meta") or {}
    meet = meta.get("meeting") or {}
    exact = meet.get("exact") or {}
    fi = e.get("faithfulness_interval") or [None, None]
    null = e.get("null") or {}
    towers = [str(n.get("tower")) for n in e.get("nodes") or []]
    return {
        "concept": concept,
        "stage": stage,
        "corrupt": (meta.get("run") or {}).get("corrupt"),
        "image": towers.count("image"),
        "text": towers.count("text"),
        "candidates": e.get("n_nodes"),
        "faithfulness": interval(e.get("faithfulness"), fi[0], fi[1]),
        "sparsity": e.get("sparsity"),
        "grid": null.get("observed_sparsity"),
        "null": interval(
            null.get("sparsity_mean"), null.get("sparsity_low"), null.get("sparsity_high")
        ),
        "p": null.get("pvalue"),
        "image_embed": exact.get("image"),
        "text_embed": exact.get("text"),
        "interaction": meet.get("interaction"),
    }
