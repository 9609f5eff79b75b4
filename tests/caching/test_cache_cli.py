"""``vlmfast cache``: both towers, labels, refusal of other settings, and resume after SIGKILL."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmfast.caching import CacheConfig, run_cache
from vlmfast.errors import StoreError
from vlmfast.store import ActivationStore

DATA = "synthetic:n=40,seed=1"
HOOKS = "image.blocks.1.resid_post,text.blocks.0.mlp_out,joint.embed"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-init tiny CLIP in the `vlmfast synth train` folder format (synthetic:<dir>)."""
    from vlmfast.data.synthetic.model import build_clip, tiny_config
    from vlmfast.data.synthetic.train import save_model

    torch.manual_seed(0)
    cfg = tiny_config()
    out = tmp_path_factory.mktemp("tinyclip")
    save_model(out, cfg, build_clip(cfg).state_dict(), {})
    return out


def _argv(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return [
        "cache",
        "--model",
        f"synthetic:{model_dir}",
        "--data",
        DATA,
        "--hooks",
        HOOKS,
        "--positions",
        "all",
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--dtype",
        "float16",
        "--chunk-rows",
        "64",
        "--commit-seconds",
        "0",
        "--no-progress",
        *extra,
    ]


def _cfg(model_dir: Path, out: Path, **kw: object) -> CacheConfig:
    base: dict[str, object] = dict(
        model=f"synthetic:{model_dir}",
        data=DATA,
        hooks=HOOKS.split(","),
        out=out,
        positions="all",
        batch_size=8,
        dtype="float16",
        chunk_rows=64,
        commit_seconds=0,
        progress=False,
    )
    base.update(kw)
    return CacheConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_cache(_cfg(model_dir, out), log=lambda _: None)
    return out


def _assert_same_store(a: Path, b: Path) -> None:
    sa, sb = ActivationStore.open(a), ActivationStore.open(b)
    assert sa.hooks == sb.hooks
    for hook in sa.hooks:
        assert sa.n_rows(hook) == sb.n_rows(hook), hook
        assert torch.equal(sa.read(hook), sb.read(hook)), hook
        ia, ib = sa.index(hook), sb.index(hook)
        for f in ("sample", "position", "modality"):
            np.testing.assert_array_equal(getattr(ia, f), getattr(ib, f))
    la, lb = sa.labels, sb.labels
    assert la is not None and lb is not None
    np.testing.assert_array_equal(la.matrix, lb.matrix)
    np.testing.assert_array_equal(la.sample, lb.sample)
    ba, bb = sa.boxes, sb.boxes  # object boxes (synthetic sources have them)
    assert (ba is None) == (bb is None)
    if ba is not None and bb is not None:
        for f in ("sample", "boxes", "concepts"):
            np.testing.assert_array_equal(getattr(ba, f), getattr(bb, f))
    assert sa.attrs["progress"] == sb.attrs["progress"]
    import zarr

    for hook in sa.hooks:  # the array shapes other zarr readers see are the committed ones
        assert zarr.open_group(b, mode="r")[f"acts/{hook}"].shape[0] == sb.n_rows(hook)


def test_cache_both_towers_with_index_and_labels(reference: Path) -> None:
    s = ActivationStore.open(reference)
    assert s.hooks == ["image.blocks.1.resid_post", "text.blocks.0.mlp_out", "joint.embed"]
    img = s.index("image.blocks.1.resid_post")
    assert (img.modality == 0).all()
    assert np.bincount(img.sample).tolist() == [17] * 40  # 16 patches + CLS per image
    assert img.position[:17].tolist() == list(range(17))
    txt = s.index("text.blocks.0.mlp_out")
    assert (txt.modality == 1).all() and set(txt.sample.tolist()) == set(range(40))
    joint = s.index("joint.embed")
    assert s.n_rows("joint.embed") == 80 and sorted(joint.modality.tolist()) == [0] * 40 + [1] * 40
    assert (joint.position == -1).all()
    labels = s.labels
    assert labels is not None and labels.matrix.shape[0] == 40 and labels.matrix.any()
    assert s.attrs["model"]["weights_hash"] and s.attrs["dataset"]["hash"]
    assert s.attrs["progress"] == {"samples_done": 40, "last_sample": 39, "finished": True}
    assert s.dtype == torch.float16


def test_other_settings_are_refused_unless_overwrite(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    run_cache(_cfg(model_dir, out, data="synthetic:n=8,seed=1"), log=lambda _: None)
    with pytest.raises(StoreError, match="different hooks"):
        run_cache(_cfg(model_dir, out, data="synthetic:n=8,seed=1", hooks=["joint.embed"]))
    with pytest.raises(StoreError, match="different dataset"):
        run_cache(_cfg(model_dir, out, data="synthetic:n=8,seed=2"))
    s = run_cache(
        _cfg(model_dir, out, data="synthetic:n=8,seed=2", hooks=["joint.embed"], overwrite=True),
        log=lambda _: None,
    )
    assert s.hooks == ["joint.embed"] and s.n_rows("joint.embed") == 16


def _cli_child(argv: list[str], crash_at: str) -> None:
    os.environ["VLMFAST_TEST_CRASH_AT"] = crash_at
    from vlmfast.cli import main

    sys.exit(main(argv))


def test_resume_after_sigkill_at_every_commit_stage(
    model_dir: Path, reference: Path, tmp_path: Path
) -> None:
    """Kill `vlmfast cache` (SIGKILL) at each stage of a batch's write/commit, re-run, compare."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "vlmfast.caching.cache", "vlmfast.cli"])
    out = tmp_path / "s.zarr"
    # each re-run resumes and is killed again, at another batch and stage
    for crash_at in ("1:appended", "0:flushed", "1:attrs_written", "0:committed"):
        p = ctx.Process(target=_cli_child, args=(_argv(model_dir, out), crash_at))
        p.start()
        p.join(600)
        assert p.exitcode == -signal.SIGKILL, (crash_at, p.exitcode)
    p = ctx.Process(target=_cli_child, args=(_argv(model_dir, out), ""))
    p.start()
    p.join(600)
    assert p.exitcode == 0
    _assert_same_store(reference, out)


@pytest.mark.slow
def test_resume_after_external_sigkill(model_dir: Path, reference: Path, tmp_path: Path) -> None:
    """A real `vlmfast cache` process killed from outside mid-run, then re-run."""
    out = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "vlmfast", *_argv(model_dir, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if ActivationStore.open(out).attrs["progress"].get("samples_done", 0) >= 8:
                break
        except (StoreError, OSError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _assert_same_store(reference, out)


def test_cache_with_coco_concepts_from_a_folder(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--concepts coco` labels "dog"/"person" (ImageNet-R names neither); another
    vocabulary against the store is a different dataset."""
    import json

    from PIL import Image

    from vlmfast.cli import main

    data = tmp_path / "pairs"
    data.mkdir()
    caps = ["A dog on a red couch", "two men riding horses", "a plate of oranges"]
    for i in range(len(caps)):
        Image.new("RGB", (40, 30), (40 * i, 90, 200)).save(data / f"{i}.jpg")
    (data / "captions.jsonl").write_text(
        "\n".join(json.dumps({"image": f"{i}.jpg", "caption": c}) for i, c in enumerate(caps))
    )
    out = tmp_path / "s.zarr"
    argv = ["cache", "--model", f"synthetic:{model_dir}", "--data", str(data)]
    argv += ["--hooks", "joint.embed", "--out", str(out), "--no-progress"]
    assert main([*argv, "--concepts", "coco", "--decode-workers", "2"]) == 0
    labels = ActivationStore.open(out).labels
    assert labels is not None
    got = [{n for n, v in zip(labels.names, row) if v} for row in labels.matrix]
    assert got == [
        {"dog", "on", "red", "couch"},
        {"person", "horse"},
        {"orange fruit"},
    ]
    capsys.readouterr()
    assert main([*argv, "--concepts", "default"]) == 1
    assert "different dataset" in capsys.readouterr().err
