"""Multi-rank `vlmfast cache` (2 CPU processes, gloo): identical to one process, resumable
after SIGKILL of a rank (while caching, merging or committing), refusals of mixed runs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cache_cli import _argv, _assert_same_store, _cfg, model_dir, reference

from vlmfast.caching import read_skip_report, run_cache
from vlmfast.caching.config import part_path, parts_dir
from vlmfast.caching.ranks import _prepare_out
from vlmfast.errors import StoreError
from vlmfast.store import ActivationStore

__all__ = ["model_dir", "reference"]  # fixtures shared with test_cache_cli

WORLD = 2
TIMEOUT = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(argv: list[str], crash: dict[int, str] | None = None) -> list[subprocess.Popen[str]]:
    """``WORLD`` ranks of ``vlmfast <argv>`` as torchrun would start them (env rendezvous)."""
    port = str(_free_port())
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "OMP_NUM_THREADS": "1",
        }
        env.pop("VLMFAST_TEST_CRASH_AT", None)
        if crash and rank in crash:
            env["VLMFAST_TEST_CRASH_AT"] = crash[rank]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "vlmfast", *argv],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def _run_ok(argv: list[str]) -> list[str]:
    """Each rank's output (after checking every rank succeeded)."""
    procs = _launch(argv)
    outs = []
    for rank, p in enumerate(procs):
        out, _ = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, f"rank {rank} failed:\n{out[-4000:]}"
        outs.append(out)
    return outs


def _run_killed(argv: list[str], rank: int, crash_at: str) -> None:
    """Rank ``rank`` SIGKILLs itself at ``crash_at``; the others are then killed too (as
    torchrun tears the group down when a worker dies)."""
    procs = _launch(argv, {rank: crash_at})
    victim = procs[rank]
    try:
        victim.wait(timeout=TIMEOUT)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.communicate()
    assert victim.returncode == -signal.SIGKILL, (crash_at, victim.returncode)


def test_two_ranks_give_the_single_process_store(
    model_dir: Path, reference: Path, tmp_path: Path
) -> None:
    out = tmp_path / "m.zarr"
    _run_ok(_argv(model_dir, out))
    _assert_same_store(reference, out)
    assert ActivationStore.open(out).attrs == ActivationStore.open(reference).attrs
    assert not parts_dir(out).exists()


@pytest.mark.slow
def test_resume_after_sigkill_of_a_rank_at_every_phase(
    model_dir: Path, reference: Path, tmp_path: Path
) -> None:
    """Kill one rank while caching its part, while merging, after the commit point; re-run."""
    out = tmp_path / "m.zarr"
    argv = _argv(model_dir, out)
    _run_killed(argv, 1, "1:appended")  # rank 1's second batch appended, not committed
    assert part_path(out, 1, WORLD).exists() and not out.exists()
    # rank 1 resumes (its batch 3 is now its first) and dies right after committing it,
    # before its part is marked finished; rank 0 may or may not have finished its part
    _run_killed(argv, 1, "0:committed")
    _run_killed(argv, 1, "merge:written")  # parts finished, rank 1's merge range written
    assert ActivationStore.open(out).n_rows("joint.embed") == 0  # nothing visible yet
    _run_killed(argv, 0, "merge:committed")  # commit point passed, parts not yet removed
    assert parts_dir(out).exists()
    _run_ok(argv)
    assert not parts_dir(out).exists()
    _assert_same_store(reference, out)
    _run_ok(argv)  # a finished store: nothing to do, still identical
    _assert_same_store(reference, out)


def test_mixed_runs_are_refused(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.zarr"
    cfg = _cfg(model_dir, out)
    part = part_path(out, 0, 3)
    part.mkdir(parents=True)
    with pytest.raises(StoreError, match="another number of ranks"):
        _prepare_out(cfg, {}, WORLD)
    with pytest.raises(StoreError, match="unfinished multi-rank cache"):
        run_cache(cfg, log=lambda _: None)
    run_cache(_cfg(model_dir, out, overwrite=True, limit=8), log=lambda _: None)
    assert not parts_dir(out).exists()  # --overwrite removed the stale parts


@pytest.mark.slow
def test_torchrun_standalone_and_external_sigkill(
    model_dir: Path, reference: Path, tmp_path: Path
) -> None:
    """The real launcher: `torchrun --standalone --nproc-per-node 2 -m vlmfast cache ...`,
    killed from outside (SIGKILL to the whole process group) mid-run, then re-run."""
    out = tmp_path / "m.zarr"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(WORLD),
        "-m",
        "vlmfast",
        *_argv(model_dir, out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("VLMFAST_TEST_CRASH_AT", None)
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    part = part_path(out, 1, WORLD)
    deadline = time.time() + TIMEOUT
    while time.time() < deadline and proc.poll() is None:
        try:
            if ActivationStore.open(part).attrs["progress"].get("samples_done", 0) >= 16:
                break
        except (StoreError, OSError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-4000:]
    _assert_same_store(reference, out)


def _messy_folder(root: Path) -> Path:
    """41 rows: good images, missing files, truncated ones and empty captions."""
    import json

    from PIL import Image

    root.mkdir()
    lines = []
    for i in range(41):
        name = f"{i}.png"
        if i % 6 == 1:
            lines.append({"image": f"missing{i}.png", "caption": f"a red cube {i}"})
            continue
        Image.new("RGB", (24, 24), (5 * i, 100, 200)).save(root / name)
        if i % 6 == 3:
            (root / name).write_bytes((root / name).read_bytes()[:40])
        cap = "" if i % 6 == 4 else f"a blue dog number {i}"
        lines.append({"image": name, "caption": cap})
    (root / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return root


def test_two_ranks_scan_bad_records_and_match_one_process(model_dir: Path, tmp_path: Path) -> None:
    """With bad records, batch boundaries depend on which images decode: the ranks'
    shared scan must reproduce one process's store exactly."""
    data = _messy_folder(tmp_path / "pairs")
    one = tmp_path / "one.zarr"
    run_cache(_cfg(model_dir, one, data=str(data)), log=lambda _: None)
    out = tmp_path / "m.zarr"
    argv = _argv(model_dir, out)
    argv[argv.index("--data") + 1] = str(data)
    _run_killed(argv, 1, "0:appended")  # the scan is saved before any part is written
    assert (parts_dir(out) / "scan-of-00002.json").exists()
    _run_ok(argv)  # resumes with the saved scan
    _assert_same_store(one, out)
    assert ActivationStore.open(out).attrs == ActivationStore.open(one).attrs
    # an uninterrupted run prints and saves the same skip report as one process
    fresh = tmp_path / "fresh.zarr"
    argv[argv.index(str(out))] = str(fresh)
    outs = _run_ok(argv)
    expected = read_skip_report(one)
    assert expected is not None and expected["counts"]
    assert read_skip_report(fresh) == expected
    assert "bad records skipped" in outs[0]


def test_known_records_decode_only_selected_batches(tmp_path: Path) -> None:
    from vlmfast.caching.scan import known_records, scan_share
    from vlmfast.data import open_source
    from vlmfast.data.sources import folder as folder_mod
    from vlmfast.data.sources.images import decode_image

    data = _messy_folder(tmp_path / "pairs")
    serial = open_source(data, decode_workers=0)
    full = list(serial)
    src = open_source(data, decode_workers=2)
    bad = {**scan_share(src, 0, 2, 2), **scan_share(src, 1, 2, 2)}
    decoded: list[int] = []

    def counting(path: Path):  # type: ignore[no-untyped-def]
        decoded.append(int(path.stem.replace("missing", "")))
        return decode_image(path)

    mp = pytest.MonkeyPatch()
    mp.setattr(folder_mod, "decode_image", counting)
    try:
        got = list(known_records(src, bad, lambda g: g % 2 == 1, 4, -1, 0))
    finally:
        mp.undo()
    assert [r.sample_id for r in got] == [r.sample_id for r in full]
    mine = [r.sample_id for k, r in enumerate(full) if (k // 4) % 2 == 1]
    assert sorted(decoded) == mine, "only the selected batches' images are decoded"
    assert all((r.image is None) == ((k // 4) % 2 == 0) for k, r in enumerate(got))
    assert src.report.counts == serial.report.counts  # bad records reported from the scan
    assert set(serial.report.counts) == {"missing_file", "corrupt_image", "empty_caption"}
