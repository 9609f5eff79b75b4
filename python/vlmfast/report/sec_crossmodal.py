"""The "Cross-modal binding" section, from the ``cross-modal`` stage's ``result.json``.

Tables: the invariant-feature fraction beside the paper's 14% (the curve point closest
to its wording, gap kept and gap removed), the whole curve with its feature-permutation
null, concept-level transfer, the modality-split classes, the top bimodal features,
fusion pairs beside the paper's -23% retrieval, grounding heads with the causal patching
test beside the paper's 62%, and the circuit stage's two-tower circuits (where they meet). Figures (:func:`crossmodal_blocks`): the modality-split
histograms, the bimodal features' exemplar images and the heads' attention maps. A
fraction with denominator 0 reads "undefined", never 0%.
"""

from __future__ import annotations

from typing import Any

from vlmfast.report.fmt import interval
from vlmfast.report.model import col, not_run, section, table
from vlmfast.report.paper_claims import claim
from vlmfast.report.run_dir import RunDir

TITLE = "Cross-modal binding"
STAGE = "cross-modal"
SETTINGS = (("gap_kept", "gap kept"), ("gap_removed", "gap removed (modality means subtracted)"))
SUBSETS = (("all", "all pairs"), ("single_object", "single-object pairs"))
UNDEFINED = "undefined"
DEFINITIONS = (
    "Ours: among the features of one top-k SAE trained on both towers' shared-space rows "
    "that are selective (AUROC >= t, one-sided Mann-Whitney, BH over both modalities) for "
    "some concept in either modality, the share selective for the same concept on images "
    "and on captions. The paper's 14% is 'polysemantic across modalities' among selective "
    "features of separate CLIP/SigLIP SAEs and is not defined further, so the two are "
    "beside each other, not equal quantities."
)


def _pct(x: Any) -> Any:
    return None if x is None else 100.0 * float(x)


def _fraction(q: dict[str, Any]) -> dict[str, Any]:
    """The point's fraction as a percent interval, or ``undefined`` (denominator 0)."""
    if q.get("fraction") is None:
        return interval(UNDEFINED)
    return interval(_pct(q["fraction"]), _pct(q.get("ci_low")), _pct(q.get("ci_high")))


def closest(points: list[dict[str, Any]], t: float) -> dict[str, Any] | None:
    """The point whose threshold is closest to ``t``."""
    return min(points, key=lambda q: abs(float(q["threshold"]) - t)) if points else None


def _entries(res: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(setting label, subset label, analysis)`` of every setting and subset."""
    out = []
    for key, label in SETTINGS:
        for sub, sub_label in SUBSETS:
            d = ((res.get("shared") or {}).get(key) or {}).get(sub)
            if d is not None:
                out.append((label, sub_label, d))
    return out


def _point_row(label: str, sub: str, d: dict[str, Any], q: dict[str, Any]) -> dict[str, Any]:
    return {
        "setting": label,
        "pairs": sub,
        "n_pairs": d.get("n_pairs"),
        "threshold": q["threshold"],
        "counts": f"{q['n_invariant']} of {q['n_selective_either']}",
        "fraction": _fraction(q),
        "null": _pct(q.get("null_mean")),
        "null_q95": _pct(q.get("null_q95")),
        "p": q.get("pvalue"),
        "reason": q.get("reason") or "",
    }


POINT_COLUMNS = [
    col("setting", "setting", "text"),
    col("pairs", "pairs", "text"),
    col("n_pairs", "n", "int"),
    col("threshold", "AUROC >=", "num"),
    col("counts", "invariant of selective", "text"),
    col("fraction", "invariant fraction [95% Wilson]", "pct"),
    col("null", "null mean", "pct"),
    col("null_q95", "null 95th pct", "pct"),
    col("p", "p", "p"),
]


def invariant_tables(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper comparison (one point per setting) and the whole curve."""
    t = float(res.get("paper_threshold", 0.9))
    paper, curve = [], []
    for label, sub, d in _entries(res):
        if "skipped" in d:
            paper.append({"setting": label, "pairs": sub, "fraction": interval(d["skipped"])})
            continue
        points = (d.get("invariant") or {}).get("points") or []
        q = closest(points, t)
        if q is not None:
            paper.append({**_point_row(label, sub, d, q), "paper": claim("polysemantic")})
        curve += [_point_row(label, sub, d, p) for p in points]
    return [
        table(
            "invariant_paper",
            f"Invariant concept features at AUROC >= {t:g}, beside the paper's 14%",
            [*POINT_COLUMNS, col("paper", "paper's claim", "text")],
            paper,
            DEFINITIONS,
        ),
        table(
            "invariant_curve",
            "Invariant-feature fraction over the AUROC threshold",
            [*POINT_COLUMNS, col("reason", "why undefined", "text")],
            curve,
            "Null: each feature's caption selectivity paired with a random feature's "
            "(feature permutation). A threshold where no feature is selective in either "
            "modality has no denominator: its fraction is undefined.",
        ),
    ]


def transfer_table(res: dict[str, Any]) -> dict[str, Any]:
    """Concept-level transfer of a linear probe across modalities, both directions."""
    tr = res.get("transfer") or {}
    kinds = res.get("kinds") or []
    rows = []
    for j, c in enumerate(tr.get("concepts") or []):
        row: dict[str, Any] = {"concept": c, "kind": kinds[j] if j < len(kinds) else ""}
        for key, d in (("i2t", "image_to_text"), ("t2i", "text_to_image")):
            e = tr[d]
            a = e["auroc"][j]
            row[key] = interval(a, e["ci_low"][j], e["ci_high"][j]) if a is not None else UNDEFINED
            row[f"{key}_null"] = e["null_q95"][j]
            row[f"{key}_p"] = e["pvalue"][j]
        rows.append(row)
    return table(
        "transfer",
        "Concept-level transfer: a probe trained on one modality, tested on the other",
        [
            col("concept", "concept", "text"),
            col("kind", "kind", "text"),
            col("i2t", "image -> text AUROC [95% CI]", "num"),
            col("i2t_null", "null 95th pct", "num"),
            col("i2t_p", "p", "p"),
            col("t2i", "text -> image AUROC [95% CI]", "num"),
            col("t2i_null", "null 95th pct", "num"),
            col("t2i_p", "p", "p"),
        ],
        rows,
        f"Ridge probes on {tr.get('n_train_pairs')} training pairs, tested on "
        f"{tr.get('n_test_pairs')} held-out pairs of the other modality. Null: "
        f"{tr.get('n_null')} probes fitted on shuffled labels.",
    )


def split_table(res: dict[str, Any]) -> dict[str, Any]:
    """Features per modality class (split with the within-pair swap null, BH)."""
    rows = []
    for key, label in SETTINGS:
        entry = (res.get("shared") or {}).get(key) or {}
        d, fit = entry.get("all") or {}, entry.get("fit") or {}
        counts = (d.get("split") or {}).get("counts") or {}
        if not counts:
            continue
        rows.append(
            {
                "setting": label,
                "features": d.get("n_features"),
                **counts,
                "fvu": f"{_num(fit.get('fvu_image'))} / {_num(fit.get('fvu_text'))}",
                "l0": fit.get("l0"),
                "gap": d.get("gap"),
            }
        )
    return table(
        "split",
        "Modality split of the shared dictionary's features",
        [
            col("setting", "setting", "text"),
            col("features", "features", "int"),
            col("image-only", "image-only", "int"),
            col("text-only", "text-only", "int"),
            col("bimodal", "bimodal", "int"),
            col("undecided", "undecided", "int"),
            col("inactive", "inactive", "int"),
            col("fvu", "FVU image / text", "text"),
            col("l0", "L0", "num"),
            col("gap", "gap subtracted (norm)", "num"),
        ],
        rows,
        "Split: a feature's share of activation mass on image rows. Image-/text-only: beyond "
        "the dominance cut and significant against swapping modality within pairs (BH).",
    )


def bimodal_table(res: dict[str, Any]) -> dict[str, Any]:
    """The bimodal features with the highest Bridge Score."""
    rows = []
    for label, _sub, d in _entries(res):
        for f in d.get("bimodal") or []:
            ib, tb = f["image_best"], f["text_best"]
            rows.append(
                {
                    "setting": label,
                    "feature": f["feature"],
                    "split": interval(*f["split"]),
                    "bridge": interval(*f["bridge"]),
                    "p": f.get("bridge_p"),
                    "image": f"{ib['concept']} ({_num(ib['auroc'])})",
                    "text": f"{tb['concept']} ({_num(tb['auroc'])})",
                    "captions": " | ".join(f.get("captions") or []),
                }
            )
    return table(
        "bimodal",
        "Top bimodal features by Bridge Score (exemplar images below)",
        [
            col("setting", "setting", "text"),
            col("feature", "feature", "int"),
            col("split", "image share [CI]", "num"),
            col("bridge", "Bridge Score [CI]", "num"),
            col("p", "p (re-pairing)", "p"),
            col("image", "best image concept (AUROC)", "text"),
            col("text", "best caption concept (AUROC)", "text"),
            col("captions", "top captions", "text"),
        ],
        rows,
        "Bridge Score: matched minus mismatched co-activation of the feature on an image and "
        "its caption (after Papadimitriou et al. 2025); null: captions re-paired at random.",
    )


def _num(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.3f}"


def crossmodal(run: RunDir) -> dict[str, Any]:
    """The section (``not run`` when the stage did not run)."""
    from vlmfast.report.sec_crossmodal_causal import (
        fusion_tables,
        grounding_tables,
        two_tower_table,
    )

    res = run.result(STAGE)
    if res is None:
        return not_run("crossmodal", TITLE, run.why_missing(STAGE))
    tables = [
        *invariant_tables(res),
        transfer_table(res),
        split_table(res),
        bimodal_table(res),
        *fusion_tables(res),
        *grounding_tables(res),
        two_tower_table(run.result("circuit") or {}, res.get("two_tower")),
    ]
    hooks = res.get("hooks") or {}
    note = (
        f"{res.get('n_pairs')} image-caption pairs of {hooks.get('image')} and "
        f"{hooks.get('text')} (one shared space). The concept-level table lists the "
        f"{len(res.get('concepts') or [])} concepts with at least {res.get('min_positives')} "
        "positives and negatives "
        f"in both modalities ({res.get('left_out', 0)} left out); the shared dictionaries are "
        "scored on every concept of the store."
    )
    return section("crossmodal", TITLE, tables, note)
