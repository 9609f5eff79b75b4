"""Runs the stages of a pipeline config in order, each skipped when it is up to date.

A stage's *key* is a hash of its config slice (the dotted config paths it reads), its
upstream stages' keys and its schema version (bumped when what it writes changes; source
code is not hashed). A stage is up to date when ``RUN/<stage>/manifest.json`` exists,
carries that key and lists outputs that all exist. The manifest is written last, so it is
the stage's commit point: a stage killed part-way leaves a directory without a manifest,
which the next run deletes and reruns from scratch. ``force`` reruns the named stages and
everything downstream of them; ``dry_run`` only reports what would run and why.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmfast.errors import InputError
from vlmfast.pipeline.config import STAGE_NAMES, PipelineConfig, stable_hash
from vlmfast.pipeline.context import StageContext, StageDef, StageFn  # noqa: F401 (re-exported)

MANIFEST = "manifest.json"
RESULT = "result.json"
RUN_JSON = "run.json"


@dataclass
class Decision:
    """Whether a stage runs, and why."""

    name: str
    key: str
    run: bool
    reason: str


@dataclass
class StageRecord:
    """One entry of ``run.json``'s ``stages``."""

    name: str
    key: str
    status: str
    reason: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key": self.key,
            "status": self.status,
            "reason": self.reason,
            "seconds": self.seconds,
        }


def stage_key(stage: StageDef, config: PipelineConfig, upstream_keys: Mapping[str, str]) -> str:
    """The stage's key: hash of its config slice, its upstream keys and its schema."""
    return stable_hash(
        {
            "stage": stage.name,
            "schema": stage.schema,
            "config": {path: config.get(path) for path in stage.slice},
            "inputs": {u: upstream_keys[u] for u in stage.upstream},
        }
    )


def all_keys(config: PipelineConfig, registry: Mapping[str, StageDef]) -> dict[str, str]:
    """Every stage's key, in order."""
    keys: dict[str, str] = {}
    for name, stage in registry.items():
        keys[name] = stage_key(stage, config, keys)
    return keys


def downstream(names: Iterable[str], registry: Mapping[str, StageDef]) -> set[str]:
    """``names`` and every stage that depends on them, transitively."""
    out = set(names)
    for name, stage in registry.items():  # registry is in topological order
        if any(u in out for u in stage.upstream):
            out.add(name)
    return out


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's manifest, or None when it has none (never ran, or was interrupted)."""
    path = stage_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def decide(
    config: PipelineConfig,
    run_dir: Path,
    registry: Mapping[str, StageDef],
    force: Sequence[str] = (),
) -> list[Decision]:
    """Returns what each stage would do now: run or skip, and the reason (one
    :class:`Decision` per stage of ``registry``, in order).

    Raises:
        InputError: ``force`` names an unknown stage or one not in ``run.stages``, or a
            selected stage's upstream is neither selected nor done.
    """
    bad = [f for f in force if f not in registry]
    if bad:
        raise InputError(f"--force {bad[0]!r} is not a stage; stages: {', '.join(registry)}")
    selected = set(config.run.stages)
    off = [f for f in force if f not in selected]
    if off:
        raise InputError(f"--force {off[0]!r}: that stage is not in run.stages {config.run.stages}")
    keys = all_keys(config, registry)
    forced = downstream(force, registry)
    rerun: set[str] = set()
    out: list[Decision] = []
    for name, stage in registry.items():
        key = keys[name]
        if name not in selected:
            out.append(Decision(name, key, run=False, reason="not in run.stages"))
            continue
        missing_up = (
            []
            if not stage.strict_upstream
            else [u for u in stage.upstream if u not in selected and not _done(run_dir, u, keys[u])]
        )
        if missing_up:
            raise InputError(
                f"run.stages includes {name!r} but not its upstream {missing_up[0]!r}, whose "
                f"outputs are not in {run_dir}: add {missing_up[0]!r} to run.stages"
            )
        manifest = read_manifest(run_dir / name)
        reason = ""
        if name in forced:
            why = [f for f in force if f == name]
            reason = "forced (--force)" if why else "downstream of a forced stage"
        elif manifest is None:
            reason = (
                "interrupted before (no manifest): rerun from scratch"
                if (run_dir / name).exists()
                else "no outputs yet"
            )
        elif manifest.get("key") != key:
            changed = [
                u for u in stage.upstream if (manifest.get("inputs") or {}).get(u) != keys[u]
            ]
            reason = (
                f"upstream {', '.join(changed)} changed"
                if changed
                else f"config slice ({', '.join(stage.slice)}) or schema changed"
            ) + f" (key {manifest.get('key')} -> {key})"
        else:
            gone = [p for p in manifest.get("outputs", []) if not (run_dir / name / p).exists()]
            if gone:
                reason = f"outputs missing: {', '.join(gone[:3])}"
            elif any(u in rerun for u in stage.upstream):
                reason = "upstream reruns"
        if reason:
            rerun.add(name)
            out.append(Decision(name, key, run=True, reason=reason))
        else:
            out.append(Decision(name, key, run=False, reason=f"up to date (key {key})"))
    return out


def _done(run_dir: Path, name: str, key: str) -> bool:
    manifest = read_manifest(run_dir / name)
    return manifest is not None and manifest.get("key") == key


def versions() -> dict[str, str]:
    """The versions ``run.json`` records."""
    import numpy
    import torch

    from vlmfast import __version__

    return {
        "vlmfast": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def json_ready(obj: Any) -> Any:
    """``obj`` with numpy values as Python ones and NaN / Inf as None (strict JSON)."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_json(path: Path, data: Any) -> None:
    """Writes ``data`` to ``path`` via a temporary file and a rename (never half a file)."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    text = json.dumps(json_ready(data), indent=2, allow_nan=False, default=_default)
    tmp.write_text(text)
    os.replace(tmp, path)


def _default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _outputs(stage_dir: Path) -> list[str]:
    return sorted(p.name for p in stage_dir.iterdir() if p.name != MANIFEST)


@dataclass
class RunResult:
    """What :func:`run_pipeline` did."""

    run_dir: Path
    stages: list[StageRecord]
    decisions: list[Decision]

    def status(self, name: str) -> str:
        """Returns the status of stage ``name`` in this run (as ``run.json`` records it)."""
        return next(s.status for s in self.stages if s.name == name)


def run_pipeline(
    config: PipelineConfig,
    run_dir: str | Path | None = None,
    *,
    force: Sequence[str] = (),
    dry_run: bool = False,
    log: Callable[[str], None] = print,
    registry: Mapping[str, StageDef] | None = None,
) -> RunResult:
    """Runs (or, with ``dry_run``, plans) every stage of ``config`` into ``run_dir``.

    Writes ``RUN/run.json`` after every stage.

    Returns:
        The run's :class:`RunResult`: its folder, one record per stage that ran (status,
            seconds) and every stage's decision.

    Raises:
        InputError: as :func:`decide` (a bad ``force`` or a missing upstream stage).
    """
    if registry is None:
        from vlmfast.pipeline.stages import STAGES

        registry = STAGES
    run_path = Path(run_dir if run_dir is not None else config.run.out)
    decisions = decide(config, run_path, registry, force)
    if dry_run:
        for d in decisions:
            log(f"{'run ' if d.run else 'skip'}  {d.name:<10} {d.reason}")
        return RunResult(run_path, [], decisions)
    run_path.mkdir(parents=True, exist_ok=True)
    import torch

    threads = torch.get_num_threads()
    if config.run.threads is not None:
        torch.set_num_threads(config.run.threads)
    try:
        return _run_all(config, run_path, decisions, registry, log)
    finally:
        torch.set_num_threads(threads)


def _run_all(
    config: PipelineConfig,
    run_path: Path,
    decisions: list[Decision],
    registry: Mapping[str, StageDef],
    log: Callable[[str], None],
) -> RunResult:
    records: list[StageRecord] = []
    info: dict[str, Any] = {
        "config": config.to_dict(),
        "config_hash": config.hash(),
        "versions": versions(),
        "stages": [],
    }
    keys = {d.name: d.key for d in decisions}
    shared: dict[str, Any] = {}
    total = sum(d.run for d in decisions)
    done = 0
    for d in decisions:
        stage = registry[d.name]
        if not d.run:
            records.append(StageRecord(d.name, d.key, "skipped", d.reason, 0.0))
            log(f"[skip] {d.name}: {d.reason}")
        else:
            done += 1
            log(f"[run {done}/{total}] {d.name}: {d.reason}")
            seconds = _run_stage(stage, d, config, run_path, keys, shared, log)
            records.append(StageRecord(d.name, d.key, "ran", d.reason, seconds))
            log(f"[done] {d.name} in {seconds:.1f} s")
        info["stages"] = [r.to_dict() for r in records]
        _write_json(run_path / RUN_JSON, info)
    return RunResult(run_path, records, decisions)


def _run_stage(
    stage: StageDef,
    decision: Decision,
    config: PipelineConfig,
    run_dir: Path,
    keys: Mapping[str, str],
    shared: dict[str, Any],
    log: Callable[[str], None],
) -> float:
    stage_dir = run_dir / stage.name
    if stage_dir.exists():  # from scratch: an old or interrupted stage leaves nothing behind
        (stage_dir / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)
    ctx = StageContext(
        stage.name, config, run_dir, stage_dir, log, bool(config.run.progress), shared
    )
    started = time.perf_counter()
    result = stage.fn(ctx)
    _write_json(stage_dir / RESULT, result)
    seconds = time.perf_counter() - started
    manifest = {
        "stage": stage.name,
        "key": decision.key,
        "schema": stage.schema,
        "inputs": {u: keys[u] for u in stage.upstream},
        "outputs": _outputs(stage_dir),
        "seconds": seconds,
    }
    _write_json(stage_dir / MANIFEST, manifest)  # last: the commit point
    return seconds


def stage_names() -> tuple[str, ...]:
    """The pipeline's stages, in order."""
    return STAGE_NAMES
