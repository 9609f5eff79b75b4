"""Plain-text tables of a ``cross-modal`` stage result (the log and ``vlmfast demo``).

Every number comes from the result; the paper's figures are quoted from
:mod:`vlmfast.report.paper_claims`, as its claims, never used in a computation.
"""

from __future__ import annotations

from typing import Any

from vlmfast.report.paper_claims import claim

SETTINGS = (("gap_kept", "gap kept"), ("gap_removed", "gap removed"))


def closest_point(d: dict[str, Any], threshold: float) -> dict[str, Any] | None:
    """The invariant-curve point whose AUROC threshold is closest to ``threshold``."""
    points = ((d.get("invariant") or {}).get("points")) or []
    if not points:
        return None
    return min(points, key=lambda q: abs(float(q["threshold"]) - threshold))


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}%"


def point_text(q: dict[str, Any]) -> str:
    """``k/n = f% [lo, hi]; null m% (q95), p`` or ``undefined (reason)`` for one point."""
    head = f"{q['n_invariant']}/{q['n_selective_either']}"
    if q.get("fraction") is None:
        return f"{head}: undefined ({q.get('reason') or 'denominator 0'})"
    p = q.get("pvalue")
    return (
        f"{head} = {_pct(q['fraction'])} [{_pct(q['ci_low'])}, {_pct(q['ci_high'])}]; "
        f"feature-permutation null {_pct(q.get('null_mean'))} (95th pct "
        f"{_pct(q.get('null_q95'))}), p = {'n/a' if p is None else f'{p:.3g}'}"
    )


def invariant_line(d: dict[str, Any], threshold: float) -> str:
    """One line: the invariant fraction at the threshold closest to ``threshold``."""
    if "skipped" in d:
        return f"skipped ({d['skipped']})"
    q = closest_point(d, threshold)
    if q is None:
        return "no curve"
    return f"invariant features at AUROC >= {q['threshold']:g}: " + point_text(q)


def format_invariant(res: dict[str, Any]) -> str:
    """The invariant-feature fraction per setting and subset, beside the paper's 14%."""
    t = float(res.get("paper_threshold", 0.9))
    lines = ["  invariant concept features (selective for one concept on images and captions, BH)"]
    for key, label in SETTINGS:
        for subset, name in (("all", "all pairs"), ("single_object", "single-object")):
            d = ((res.get("shared") or {}).get(key) or {}).get(subset) or {}
            lines.append(f"    {label:<12} {name:<14} {invariant_line(d, t)}")
    lines.append(f"    paper (its claim): {claim('polysemantic')}")
    lines.append(
        "    the paper does not define its 14%; ours counts, among the features of one SAE "
        "over both towers' rows selective for some concept in either modality, those "
        "selective for the same concept in both"
    )
    return "\n".join(lines)


def format_transfer(res: dict[str, Any], folded: tuple[str, ...] = ("bound relation",)) -> str:
    """Concept-level transfer: probe AUROC across modalities vs the label-shuffled null;
    concepts of a ``folded`` kind are summarised in one line per kind."""
    tr = res.get("transfer") or {}
    kinds = res.get("kinds") or []
    head = (
        f"  {'concept':<10}{'image->text':>24}{'null q95':>10}{'text->image':>24}{'null q95':>10}"
    )
    lines = [head]
    hidden: dict[str, list[int]] = {}
    for j, c in enumerate(tr.get("concepts") or []):
        kind = kinds[j] if j < len(kinds) else ""
        if kind in folded:
            hidden.setdefault(kind, []).append(j)
            continue
        row = f"  {c:<10}"
        for d in ("image_to_text", "text_to_image"):
            e = tr[d]
            a = e["auroc"][j]
            cell = (
                "undefined"
                if a is None
                else f"{a:.3f} [{e['ci_low'][j]:.3f}, {e['ci_high'][j]:.3f}]"
            )
            q = e["null_q95"][j]
            row += f"{cell:>24}{'n/a' if q is None else f'{q:.3f}':>10}"
        lines.append(row)
    for kind, idx in hidden.items():
        parts = []
        for d, name in (("image_to_text", "image->text"), ("text_to_image", "text->image")):
            a = sorted(x for x in (tr[d]["auroc"][j] for j in idx) if x is not None)
            sig = sum(1 for j in idx if (tr[d]["pvalue"][j] or 1.0) < 0.05)
            med = f"{a[len(a) // 2]:.3f}" if a else "n/a"
            parts.append(f"{name} median AUROC {med}, p < 0.05 for {sig}")
        lines.append(f"  {len(idx)} {kind}s (the report lists each): " + "; ".join(parts))
    return "\n".join(lines)


def format_grounding(g: dict[str, Any]) -> str:
    """Top grounding heads and the recovered fraction of the matched logit, beside 62%."""
    if not g or "skipped" in g:
        return f"  grounding: skipped ({(g or {}).get('skipped', 'not run')})"
    lines = [f"  {'head':<8}{'named mass':>12}{'diff vs ' + g['rank_by']:>28}{'p':>8}"]
    for r in g["table"]:
        ci = f"{r['diff']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
        lines.append(
            f"  L{r['layer']}H{r['head']:<5}{r['named']:>12.3f}{ci:>28}{r['pvalue']:>8.3g}"
        )
    pt = g["patching"]
    heads = ", ".join(f"L{a}H{b}" for a, b in pt["heads"])
    if pt.get("recovery") is None:
        rec = f"undefined ({pt.get('reason')})"
    else:
        p = pt.get("pvalue")
        rec = (
            f"{_pct(pt['recovery'])} [{_pct(pt['ci_low'])}, {_pct(pt['ci_high'])}]; "
            f"random heads {_pct(pt.get('null_mean'))}, p = {'n/a' if p is None else f'{p:.3g}'}"
        )
    lines.append(f"  patching {heads} from clean into recolored images recovers {rec}")
    lines.append(f"  paper (its claim): {claim('heads.patching')}")
    return "\n".join(lines)


def format_crossmodal(res: dict[str, Any]) -> str:
    """Every table of the stage's result, for the demo's printout."""
    parts = [
        f"  {res.get('n_pairs')} pairs of {res['hooks']['image']} / {res['hooks']['text']}",
        format_invariant(res),
        "",
        "  concept-level transfer (probe trained on one modality, tested on the other)",
        format_transfer(res),
        "",
        format_fusion(res.get("fusion") or {}),
        "",
        "  grounding heads: CLS attention on the object the caption names",
        format_grounding(res.get("grounding") or {}),
        "",
        format_stage_two_tower(res),
    ]
    return "\n".join(parts)


def _effect(e: dict[str, Any]) -> str:
    p = e.get("pvalue")
    return (
        f"{e['specificity']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}] "
        f"p {'n/a' if p is None else f'{p:.2g}':<5}"
    )


def format_fusion(fu: dict[str, Any]) -> str:
    """Fusion pairs (specificity of each ablation) and the retrieval drop, beside -23%."""
    if not fu or isinstance(fu.get("skipped"), str):
        return f"  fusion units: skipped ({(fu or {}).get('skipped', 'not run')})"
    lines = [
        f"  fusion pairs ({fu.get('n_eval')} test pairs): logit drop on matching minus "
        "one-side-only cells when a tower's concept neurons are ablated [95% CI], p vs "
        "random neurons (the report lists the units)",
        f"  {'concept':<10}"
        + "".join(f"{c:>34}" for c in ("image ablated", "text ablated", "both ablated"))
        + f"{'interaction':>26}",
    ]
    for p in fu.get("pairs") or []:
        it = p["interaction"]
        inter = f"{it['value']:+.3f} [{it['ci_low']:+.3f}, {it['ci_high']:+.3f}]"
        lines.append(
            f"  {p['concept']:<10}"
            + "".join(f"{_effect(p[c]):>34}" for c in ("image", "text", "both"))
            + f"{inter:>26}"
        )
    if fu.get("skipped"):
        lines.append(f"  concepts without a pair: {', '.join(sorted(fu['skipped']))}")
    r = fu.get("retrieval")
    if r:
        rel = "undefined: clean accuracy 0" if r.get("relative") is None else _pct(r["relative"])
        p = r.get("pvalue")
        lines.append(
            f"  retrieval top-1: clean {_pct(r['clean'])}, all fusion units ablated "
            f"{_pct(r['ablated'])} (relative change -{rel}; random units drop "
            f"{_pct(r.get('null_drop_mean'))}, p = {'n/a' if p is None else f'{p:.3g}'})"
        )
    lines.append(f"  paper (its claim): {claim('ablate.retrieval')}")
    return "\n".join(lines)


def format_two_tower(circuits: dict[str, Any]) -> str:
    """The circuit stage's two-tower circuits: each tower's nodes, faithfulness, where the
    towers meet (each embedding's effect alone and their interaction)."""
    from vlmfast.report.sec_crossmodal_causal import two_tower

    found = two_tower(circuits or {})
    if not found:
        return "  two-tower circuits: none in this run ([circuit] corrupt = 'both-swap' finds them)"
    lines = ["  two-tower circuits (one search over both towers' units, from the circuit stage)"]
    for concept, e in found.items():
        lines.append(two_tower_line(concept, e, "circuit/"))
    return "\n".join(lines)


def format_stage_two_tower(res: dict[str, Any]) -> str:
    """The cross-modal stage's own two-tower circuits (heads of both towers, ``both-swap``)."""
    tt = res.get("two_tower") or {}
    if not tt.get("circuits"):
        return f"  two-tower circuit: skipped ({tt.get('skipped', 'not run')})"
    lines = [
        "  two-tower circuit (heads of both towers in one search, both-swap corruption, "
        "mean ablation; sparsity against random orderings)"
    ]
    for concept, e in tt["circuits"].items():
        lines.append(two_tower_line(concept, e, "cross-modal/"))
    if tt.get("skipped"):
        lines.append(f"    skipped: {tt['skipped']}")
    return "\n".join(lines)


def two_tower_line(concept: str, e: dict[str, Any], folder: str = "") -> str:
    """Lines for one two-tower circuit (``Circuit.to_json`` dict): each tower's nodes of its
    candidates, faithfulness [CI], sparsity vs the null with p, the meeting point."""
    per = (e.get("meta") or {}).get("per_tower") or {}
    towers = [str(n.get("tower")) for n in e.get("nodes") or []]
    fi = e.get("faithfulness_interval") or [None, None]
    null = e.get("null") or {}
    p = null.get("pvalue")
    run = (e.get("meta") or {}).get("run") or {}
    pairs = f"{run['pairs']} pairs, " if run.get("pairs") else ""
    lines = [
        f"    {concept} ({pairs}{e.get('n_nodes')} candidates): {towers.count('image')} of "
        f"{_cand(per, 'image')} image + {towers.count('text')} of {_cand(per, 'text')} text nodes; "
        f"faithfulness {_plain(e.get('faithfulness'))} [{_plain(fi[0])}, {_plain(fi[1])}]; "
        f"sparsity {_plain(e.get('sparsity'))} (on the null's grid "
        f"{_plain(null.get('observed_sparsity'))}) vs {null.get('size', '?')} random orderings "
        f"{_plain(null.get('sparsity_mean'))} [{_plain(null.get('sparsity_low'))}, "
        f"{_plain(null.get('sparsity_high'))}], p = {'n/a' if p is None else f'{p:.3g}'}"
    ]
    meet = (e.get("meta") or {}).get("meeting")
    if meet:
        ex = meet.get("exact") or {}
        lines.append(
            f"      meet in the shared embedding: image.embed alone {_num(ex.get('image'))}, "
            f"text.embed alone {_num(ex.get('text'))}, both towers' interaction "
            f"{_num(meet.get('interaction'))} (of the total {_num(meet.get('total'))})"
        )
    if run.get("drawing"):
        lines.append(f"      drawing: {folder}{run['drawing']}")
    return "\n".join(lines)


def _cand(per: dict[str, Any], tower: str) -> Any:
    return (per.get(tower) or {}).get("candidates", "?")


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):+.3f}"


def _plain(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.3f}"
