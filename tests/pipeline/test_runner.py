"""The runner: stage keys, skipping, --force, --dry-run and killed runs, on stub stages.

The stubs have the real stages' names and upstream graph but do almost nothing, so these
tests check the bookkeeping only (tests/pipeline/test_end_to_end.py runs the real stages).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vlmfast.errors import InputError
from vlmfast.pipeline import PipelineConfig, StageContext, StageDef, decide, run_pipeline
from vlmfast.pipeline.runner import all_keys, downstream, stage_key

CALLS: list[str] = []


def _stub(name: str, fail: set[str] | None = None) -> Any:
    def fn(ctx: StageContext) -> dict[str, Any]:
        CALLS.append(name)
        ups = {}
        for u in REAL.get(name, ()):  # read every upstream result (they must exist)
            ups[u] = json.loads((ctx.upstream(u) / "result.json").read_text())["value"]
        (ctx.dir / "data.txt").write_text(f"{name} {ctx.config.run.seed}")
        if fail is not None and name in fail:
            (ctx.dir / "half.bin").write_bytes(b"partial")
            raise RuntimeError(f"killed in {name}")
        value = sum(ups.values()) + len(name) + ctx.config.sae.k * (name == "train-sae")
        return {"value": value, "upstream": sorted(ups)}

    return fn


REAL = {
    "cache": (),
    "train-sae": ("cache",),
    "score": ("cache", "train-sae"),
    "trace": (),
    "intervene": ("train-sae", "score"),
    "report": ("score", "trace", "intervene"),
}
SLICES = {
    "cache": ("data", "run.seed"),
    "train-sae": ("sae",),
    "score": ("score",),
    "trace": ("trace",),
    "intervene": ("intervene",),
    "report": ("report",),
}


def registry(fail: set[str] | None = None) -> dict[str, StageDef]:
    return {n: StageDef(n, REAL[n], SLICES[n], 1, _stub(n, fail)) for n in REAL}


def config() -> PipelineConfig:
    cfg = PipelineConfig()
    cfg.run.stages = list(REAL)
    cfg.run.progress = False
    return cfg


def _run(cfg: PipelineConfig, out: Path, **kw: Any) -> Any:
    CALLS.clear()
    lines: list[str] = []
    res = run_pipeline(cfg, out, log=lines.append, registry=kw.pop("reg", registry()), **kw)
    res.lines = lines
    return res


def test_key_changes_with_the_slice_and_upstream_only() -> None:
    reg = registry()
    base = all_keys(config(), reg)
    cfg = config()
    cfg.trace.pairs += 1  # trace's slice: trace changes, nothing else
    changed = all_keys(cfg, reg)
    assert {n for n in base if base[n] != changed[n]} == {"trace", "report"}
    cfg = config()
    cfg.sae.k += 1  # train-sae's slice: it and its downstream change
    changed = all_keys(cfg, reg)
    assert {n for n in base if base[n] != changed[n]} == {
        "train-sae",
        "score",
        "intervene",
        "report",
    }
    cfg = config()
    cfg.run.progress = not cfg.run.progress  # in no slice
    cfg.run.out = "elsewhere"
    assert all_keys(cfg, reg) == base
    # the schema version is part of the key
    bumped = StageDef("score", REAL["score"], SLICES["score"], 2, reg["score"].fn)
    assert stage_key(bumped, config(), base) != base["score"]
    assert downstream(["score"], reg) == {"score", "intervene", "report"}


def test_rerun_skips_everything_and_recomputes_nothing(tmp_path: Path) -> None:
    first = _run(config(), tmp_path)
    assert [s.status for s in first.stages] == ["ran"] * 6
    assert list(REAL) == CALLS
    mtimes = {
        p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != "run.json"
    }
    second = _run(config(), tmp_path)
    assert CALLS == []
    assert [s.status for s in second.stages] == ["skipped"] * 6
    assert all(s.reason.startswith("up to date") for s in second.stages)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    run_json = json.loads((tmp_path / "run.json").read_text())
    assert set(run_json) == {"config", "config_hash", "versions", "stages"}
    assert set(run_json["versions"]) == {"vlmfast", "torch", "numpy", "python"}
    assert [s["status"] for s in run_json["stages"]] == ["skipped"] * 6
    manifest = json.loads((tmp_path / "score" / "manifest.json").read_text())
    assert set(manifest) == {"stage", "key", "schema", "inputs", "outputs", "seconds"}
    assert manifest["inputs"] == {
        "cache": first.stages[0].key,
        "train-sae": first.stages[1].key,
    }
    assert manifest["outputs"] == ["data.txt", "result.json"]


def test_a_changed_slice_reruns_that_stage_and_downstream(tmp_path: Path) -> None:
    _run(config(), tmp_path)
    cfg = config()
    cfg.sae.k = 8
    res = _run(cfg, tmp_path)
    assert CALLS == ["train-sae", "score", "intervene", "report"]
    reasons = {s.name: s.reason for s in res.stages}
    assert "config slice" in reasons["train-sae"]
    assert "upstream train-sae" in reasons["score"]
    assert (
        json.loads((tmp_path / "train-sae" / "result.json").read_text())["value"] == 5 + 9 + 8
    )  # cache + len + k


def test_force_score_reruns_score_and_downstream_only(tmp_path: Path) -> None:
    _run(config(), tmp_path)
    res = _run(config(), tmp_path, force=["score"])
    assert CALLS == ["score", "intervene", "report"]
    status = {s.name: s.status for s in res.stages}
    assert status == {
        "cache": "skipped",
        "train-sae": "skipped",
        "score": "ran",
        "trace": "skipped",
        "intervene": "ran",
        "report": "ran",
    }
    assert {s.name: s.reason for s in res.stages}["score"] == "forced (--force)"
    with pytest.raises(InputError, match="'plot' is not a stage"):
        _run(config(), tmp_path, force=["plot"])


def test_dry_run_prints_run_or_skip_and_why_and_writes_nothing(tmp_path: Path) -> None:
    res = _run(config(), tmp_path / "new", dry_run=True)
    assert CALLS == [] and not (tmp_path / "new").exists()
    assert len(res.lines) == 6 and all(line.startswith("run ") for line in res.lines)
    assert "no outputs yet" in res.lines[0]
    _run(config(), tmp_path)
    cfg = config()
    cfg.score.threshold = 0.8
    res = _run(cfg, tmp_path, dry_run=True)
    assert CALLS == []
    by_stage = {line.split()[1]: line for line in res.lines}
    assert by_stage["cache"].startswith("skip") and "up to date" in by_stage["cache"]
    assert by_stage["score"].startswith("run ") and "config slice (score)" in by_stage["score"]
    assert (
        by_stage["intervene"].startswith("run ")
        and "upstream score changed" in by_stage["intervene"]
    )
    assert [d.run for d in decide(cfg, tmp_path, registry())] == [
        False,
        False,
        True,
        False,
        True,
        True,
    ]


def test_a_killed_run_reruns_to_the_same_results(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    _run(config(), whole)
    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="killed in score"):
        _run(config(), killed, reg=registry(fail={"score"}))
    assert (killed / "score" / "half.bin").exists()
    assert not (killed / "score" / "manifest.json").exists()  # never committed
    res = _run(config(), killed)
    assert CALLS == ["score", "trace", "intervene", "report"]  # trace never ran before
    assert "interrupted" in {s.name: s.reason for s in res.stages}["score"]
    assert not (killed / "score" / "half.bin").exists()  # rerun from scratch
    for name in REAL:
        a = (whole / name / "result.json").read_text()
        assert (killed / name / "result.json").read_text() == a, name


def test_a_deselected_stage_needs_its_upstream_done(tmp_path: Path) -> None:
    cfg = config()
    cfg.run.stages = ["score"]
    with pytest.raises(InputError, match="upstream 'cache'"):
        _run(cfg, tmp_path)
    _run(config(), tmp_path)
    res = _run(cfg, tmp_path, force=["score"])
    assert CALLS == ["score"]
    with pytest.raises(InputError, match=r"'cache': that stage is not in run\.stages"):
        _run(cfg, tmp_path, force=["cache"])
    assert {s.name: s.status for s in res.stages}["intervene"] == "skipped"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: setattr(c.sae, "k", 8), {"train-sae", "score", "intervene", "report"}),
        (lambda c: setattr(c.score, "threshold", 0.8), {"score", "intervene", "report"}),
        (lambda c: setattr(c.trace, "samples", 3), {"trace", "report"}),
        (lambda c: setattr(c.concepts, "circuit", ["red"]), {"circuit", "cross-modal", "report"}),
        (lambda c: setattr(c.intervene, "n", 5), {"intervene", "report"}),
        (lambda c: setattr(c.data, "spec", "synthetic:n=10,seed=1"),
         set(REAL) | {"attribute", "circuit", "cross-modal"}),
        (lambda c: setattr(c.crossmodal, "k", 4), {"cross-modal", "report"}),
        (lambda c: setattr(c.run, "stages", ["cache"]), {"report"}),
        (lambda c: (setattr(c.run, "progress", False), setattr(c.run, "threads", 1),
                    setattr(c.model, "device", "cuda"), setattr(c.run, "out", "x")), set()),
    ],
)  # fmt: skip
def test_the_real_stages_keys_follow_their_slices(change: Any, expected: set[str]) -> None:
    from vlmfast.pipeline.stages import STAGES

    base = all_keys(PipelineConfig(), STAGES)
    cfg = PipelineConfig()
    change(cfg)
    got = all_keys(cfg, STAGES)
    assert {n for n in base if base[n] != got[n]} == expected
