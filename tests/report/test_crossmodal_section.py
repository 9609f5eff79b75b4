"""The "Cross-modal binding" section from hand-written stage results: undefined fractions,
the paper's claims beside ours, fusion and retrieval, two-tower circuits, and "not run"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmfast.report import build_report
from vlmfast.report.fmt import cell


def _point(t: float, k: int, n: int) -> dict[str, Any]:
    frac = None if n == 0 else k / n
    return {
        "threshold": t,
        "n_invariant": k,
        "n_selective_either": n,
        "n_selective_image": n,
        "n_selective_text": n,
        "fraction": frac,
        "ci_low": None if frac is None else 0.0,
        "ci_high": None if frac is None else 1.0,
        "null_mean": None if frac is None else 0.01,
        "null_q95": None if frac is None else 0.05,
        "pvalue": None if frac is None else 0.02,
        "reason": "no feature is selective in either modality" if n == 0 else "",
    }


def _analysis(points: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "n_pairs": 50,
        "n_features": 3,
        "split": {
            "split": [0.05, 0.5, None],
            "dominance": 0.9,
            "counts": {"image-only": 0, "text-only": 1, "bimodal": 1, "inactive": 1},
        },
        "invariant": {"points": points},
        "bimodal": [
            {
                "feature": 1,
                "split": [0.5, 0.4, 0.6],
                "bridge": [0.3, 0.1, 0.5],
                "bridge_p": 0.01,
                "image_best": {"concept": "red", "auroc": 0.8},
                "text_best": {"concept": "red", "auroc": 0.9},
                "captions": ["a red circle"],
                "image_strip": None,
            }
        ],
    }


def _side(s: float) -> dict[str, Any]:
    return {"specificity": s, "ci_low": s - 0.1, "ci_high": s + 0.1, "pvalue": 0.04}


def _result() -> dict[str, Any]:
    direction = {
        "auroc": [0.9, None],
        "ci_low": [0.8, None],
        "ci_high": [1.0, None],
        "null_q95": [0.6, None],
        "pvalue": [0.01, None],
    }
    units = {"units": [{"hook": "image.blocks.3.mlp.post", "index": 7}]}
    return {
        "hooks": {"image": "image.embed", "text": "text.embed"},
        "n_pairs": 50,
        "concepts": ["red", "left of"],
        "kinds": ["color", "relation"],
        "left_out": 0,
        "paper_threshold": 0.9,
        "transfer": {
            "concepts": ["red", "left of"],
            "image_to_text": direction,
            "text_to_image": direction,
        },
        "shared": {
            "gap_kept": {
                "all": _analysis([_point(0.6, 1, 4), _point(0.9, 0, 0)]),
                "single_object": {"skipped": "single-object pairs: 1 pair"},
            },
            "gap_removed": {"all": _analysis([_point(0.6, 2, 4), _point(0.9, 1, 2)])},
        },
        "fusion": {
            "pairs": [
                {
                    "concept": "red",
                    "image_units": units,
                    "text_units": units,
                    "image": _side(0.2),
                    "text": _side(0.3),
                    "both": _side(0.6),
                    "interaction": {"value": 0.1, "ci_low": 0.0, "ci_high": 0.2, "pvalue": 0.3},
                }
            ],
            "skipped": {"blue": "no unit reaches min_auroc"},
            "retrieval": {
                "clean": 0.5,
                "ablated": 0.4,
                "drop": 0.1,
                "drop_ci": [0.05, 0.15],
                "relative": 0.2,
                "relative_ci": [0.1, 0.3],
                "null_drop_mean": 0.01,
                "pvalue": 0.05,
                "n_units": 2,
            },
            "n_select": 20,
            "n_eval": 20,
        },
        "grounding": {"skipped": "the source 'x' has no object boxes"},
        "two_tower": {"circuits": {"red": _own_circuit()}},
    }


def _own_circuit() -> dict[str, Any]:
    """The stage's own two-tower circuit: not sparse (26 of 28 heads, p = 0.37)."""
    nodes = [{"tower": "image", "kind": "heads", "layer": 0, "index": i} for i in range(14)]
    nodes += [{"tower": "text", "kind": "heads", "layer": 0, "index": i} for i in range(12)]
    return {
        "nodes": nodes,
        "n_nodes": 28,
        "sparsity": 26 / 28,
        "faithfulness": 0.95,
        "faithfulness_interval": [0.9, 1.1],
        "null": {
            "pvalue": 0.37,
            "size": 20,
            "observed_sparsity": 1.0,
            "sparsity_mean": 0.9,
            "sparsity_low": 0.7,
            "sparsity_high": 1.0,
        },
        "meta": {
            "per_tower": {
                "image": {"circuit": 14, "candidates": 16},
                "text": {"circuit": 12, "candidates": 12},
            },
            "run": {
                "towers": ["image", "text"],
                "corrupt": "both-swap",
                "drawing": "two_tower/red.svg",
            },
            "meeting": {"exact": {"image": -8.5, "text": -9.1}, "interaction": 18.4, "total": 0.8},
        },
    }


def _circuit() -> dict[str, Any]:
    return {
        "red": {
            "nodes": [
                {"tower": t, "kind": "heads", "layer": 1, "index": i, "hook": None}
                for i, t in enumerate(("image", "text", "text"))
            ],
            "n_nodes": 40,
            "faithfulness": 0.85,
            "faithfulness_interval": [0.8, 0.9],
            "null": {"pvalue": 0.01},
            "meta": {
                "run": {"towers": ["image", "text"], "corrupt": "both-swap", "drawing": "red.svg"},
                "meeting": {"exact": {"image": 0.5, "text": 0.4}, "interaction": 0.1, "total": 1},
            },
        }
    }


def _write(run: Path, stage: str, result: dict[str, Any]) -> None:
    (run / stage).mkdir(parents=True)
    (run / stage / "result.json").write_text(json.dumps(result))
    (run / stage / "manifest.json").write_text(json.dumps({"stage": stage}))


def test_section_tables_claims_and_figures(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _write(run, "cross-modal", _result())
    _write(run, "circuit", _circuit())
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><title>two</title></svg>'
    (run / "circuit" / "red.svg").write_text(svg)
    (run / "cross-modal" / "two_tower").mkdir()
    (run / "cross-modal" / "two_tower" / "red.svg").write_text(svg.replace("two", "own"))
    paths = build_report(run)
    results = json.loads(paths["results"].read_text())
    sec = next(s for s in results["sections"] if s["id"] == "crossmodal")
    assert sec["status"] == "ran"
    tabs = {t["id"]: t for t in sec["tables"]}
    paper = tabs["invariant_paper"]["rows"]
    # the point at 0.9 has no denominator in "gap kept": undefined, never 0%
    assert cell(paper[0]["fraction"], "pct") == "undefined"
    assert cell(paper[2]["fraction"], "pct") == "50.0% [0.0%, 100.0%]"
    assert "14%" in paper[0]["paper"] and "skipped" not in paper[0]["setting"]
    assert "1 pair" in cell(paper[1]["fraction"], "pct")  # single-object: skipped, why
    assert cell(tabs["transfer"]["rows"][1]["i2t"], "num") == "undefined"
    assert cell(tabs["fusion_retrieval"]["rows"][0]["relative"], "pct") == "-20.0% [-30.0%, -10.0%]"
    assert "23%" in tabs["fusion_retrieval"]["rows"][0]["paper"]
    assert tabs["fusion"]["rows"][0]["image_units"] == "L3#7"
    assert "62%" in tabs["grounding_patching"]["rows"][0]["paper"]
    own, two = tabs["two_tower"]["rows"]  # the stage's own circuit first, then the circuit stage's
    assert (own["stage"], own["image"], own["text"], own["p"]) == ("cross-modal", 14, 12, 0.37)
    assert (own["interaction"], cell(own["faithfulness"], "num")) == (18.4, "0.950 [0.900, 1.100]")
    assert (two["stage"], two["image"], two["text"], two["interaction"]) == ("circuit", 1, 2, 0.1)
    html = paths["html"].read_text()
    assert "<title>two</title>" in html and 'xmlns="http' not in html  # the drawing, inline
    assert "<title>own</title>" in html and "(cross-modal stage)" in html  # the stage's own
    assert "modality split, gap kept" in html  # the histogram


def test_section_not_run_without_the_stage(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    results = json.loads(build_report(tmp_path / "run")["results"].read_text())
    sec = next(s for s in results["sections"] if s["id"] == "crossmodal")
    assert sec["status"] == "not run" and sec["note"].startswith("not run")
