"""One SAE recipe: ``vlmfast train-sae`` and the pipeline's ``train-sae`` stage train the
same weights on the same store, held in memory or streamed; the ``rows`` option; a run
that fails writes nothing that reads as a result."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlmfast.cli import main
from vlmfast.errors import InputError
from vlmfast.sae import ROWS, TopKSAE, load_sae
from vlmfast.sae import data as sae_data
from vlmfast.sae.data import iterate_batches, plan_batches
from vlmfast.sae.recipe import selected_rows
from vlmfast.store import ActivationStore

N_SAMPLES, STEPS, BATCH, K, N_LATENTS = 120, 15, 128, 4, 64


def _config(arch: str = "topk") -> Any:
    from vlmfast.pipeline import demo_config

    cfg = demo_config()
    cfg.run.progress = False
    cfg.run.seed = 0
    cfg.run.threads = None  # the test pins the threads of both front doors itself
    cfg.run.stages = ["cache", "train-sae"]
    cfg.data.spec = f"synthetic:n={N_SAMPLES},seed=11"
    cfg.quality.enabled = False
    cfg.sae.n_latents, cfg.sae.k, cfg.sae.steps, cfg.sae.batch_size = N_LATENTS, K, STEPS, BATCH
    cfg.sae.arch = arch
    if arch == "matryoshka":
        cfg.sae.groups = [16, 16, 32]
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline run whose cache stage wrote the store (synthetic:tiny, CLS + 16 patches)."""
    from vlmfast.pipeline import run_pipeline

    out = tmp_path_factory.mktemp("run")
    cfg = _config()
    cfg.run.stages = ["cache"]
    with _one_thread():
        run_pipeline(cfg, out, log=lambda _: None)
    return out


@pytest.fixture
def store(run_dir: Path) -> Any:
    return ActivationStore.open(run_dir / "cache" / "store.zarr")


class _one_thread:
    """Both front doors on one torch thread (float sums do not depend on the machine)."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.threads)


def _hooks(store: Any) -> dict[str, str]:
    return {
        mod: next(h for h in store.hooks if h.startswith(f"{mod}.") and "resid" in h)
        for mod in ("image", "text")
    }


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "sae_weights.safetensors"))


def _pipeline_saes(run_dir: Path, arch: str = "topk") -> dict[str, dict[str, torch.Tensor]]:
    from vlmfast.pipeline import run_pipeline

    shutil.rmtree(run_dir / "train-sae", ignore_errors=True)
    with _one_thread():
        res = run_pipeline(_config(arch), run_dir, log=lambda _: None)
    assert {s.name: s.status for s in res.stages}["train-sae"] == "ran"
    return {mod: _weights(run_dir / "train-sae" / mod) for mod in ("image", "text")}


def _cli_sae(run_dir: Path, hook: str, out: Path, arch: str = "topk") -> dict[str, torch.Tensor]:
    """``vlmfast train-sae`` with the stage's settings (its warm-up, dead-latent window and
    init seed differ from the CLI's defaults, so they are given)."""
    groups = ["--groups", "16", "16", "32"] if arch == "matryoshka" else []
    args = [
        "train-sae",
        "--arch",
        arch,
        *groups,
        "--store",
        str(run_dir / "cache" / "store.zarr"),
        "--hook",
        hook,
        "--k",
        str(K),
        "--n-latents",
        str(N_LATENTS),
        "--batch-size",
        str(BATCH),
        "--tokens",
        str(STEPS * BATCH),
        "--warmup-steps",
        "100",
        "--dead-tokens",
        "10000000",
        "--seed",
        "0",
        "--encoder-init-norm",  # demo.toml's [sae] encoder_init_norm (the tied init)
        "1.0",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    ]
    with _one_thread():
        assert main(args) == 0
    return _weights(out)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("arch", ["topk", "matryoshka", "jumprelu"])
def test_cli_and_pipeline_write_bit_identical_weights_in_memory_and_streamed(
    run_dir: Path, store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arch: str
) -> None:
    hooks = _hooks(store)
    width = store.width(hooks["image"])
    # several shuffling windows (the image hook has 2,040 rows), so streaming reads and
    # carries rows across windows; the same windows in memory
    monkeypatch.setattr(sae_data, "WINDOW_BYTES", 4 * width * 500)
    made: list[str] = []
    for kind in ("_InMemory", "_Streamed"):
        cls = getattr(sae_data, kind)
        monkeypatch.setattr(
            sae_data, kind, type(kind, (cls,), {"__init__": _spy(cls.__init__, made, kind)})
        )
    results = {}
    for mode, limit in (("memory", 1 << 40), ("streamed", 0)):
        monkeypatch.setattr(sae_data, "IN_MEMORY_BYTES", limit)
        made.clear()
        pipeline = _pipeline_saes(run_dir, arch)
        cli = {mod: _cli_sae(run_dir, h, tmp_path / mode / mod, arch) for mod, h in hooks.items()}
        assert set(made) == {"_InMemory" if mode == "memory" else "_Streamed"}
        for mod in hooks:
            assert _same(pipeline[mod], cli[mod]), f"{mode}: {mod} SAEs differ"
            cfg = json.loads((run_dir / "train-sae" / mod / "cfg.json").read_text())
            assert cfg["vlmfast"]["rows"] == "tokens" and cfg["vlmfast"]["arch"] == arch
        results[mode] = pipeline
    for mod in hooks:
        assert _same(results["memory"][mod], results["streamed"][mod])


def test_stage_trains_sae_hooks_beside_the_modality_saes_which_stay_as_they_were(
    run_dir: Path,
) -> None:
    """``[sae] hooks``: one that holds the image hook's rows (the last block's MLP, another
    width) trains in the image SAE's pass, the joint one in a pass of its own; the
    modality SAEs are bit-identical to a run without them."""
    from vlmfast.pipeline import run_pipeline

    alone = _pipeline_saes(run_dir)
    cfg = _config()
    cfg.sae.hooks = ["image.blocks.-1.mlp.post", "joint.embed"]
    with _one_thread():
        res = run_pipeline(cfg, run_dir, log=lambda _: None)
    assert {s.name: s.status for s in res.stages}["train-sae"] == "ran"
    stage = run_dir / "train-sae"
    result = json.loads((stage / "result.json").read_text())
    hooks = ["image.blocks.3.mlp.post", "joint.embed"]
    assert {h: r["checkpoint"] for h, r in result["hooks"].items()} == {
        h: f"hooks/{h}" for h in hooks
    }
    for hook in hooks:
        assert TopKSAE.load(stage / "hooks" / hook).cfg.hook == hook
    image = "image.blocks.3.resid_post"
    assert result["image"]["pass_hooks"] == result["hooks"][hooks[0]]["pass_hooks"]
    assert result["image"]["pass_hooks"] == [image, hooks[0]]
    assert result["hooks"]["joint.embed"]["pass_hooks"] == ["joint.embed"]
    assert not list(stage.rglob("INCOMPLETE"))
    for mod in ("image", "text"):
        assert _same(_weights(stage / mod), alone[mod]), mod


def _spy(init: Any, made: list[str], kind: str) -> Any:
    def wrapped(self: Any, *args: Any) -> None:
        made.append(kind)
        init(self, *args)

    return wrapped


def test_stage_trains_on_the_rows_and_batches_it_always_did(
    run_dir: Path, store: Any, tmp_path: Path
) -> None:
    """A store in one window and in memory: the stage's former recipe (patch rows, CLS left
    out, reshuffled every epoch), bit for bit, so existing runs and the demo reproduce."""
    from vlmfast.sae import SAETrainer, TrainConfig, train

    hook = _hooks(store)["image"]
    rows = store.read(hook).float()
    rows = rows[torch.from_numpy(np.asarray(store.index(hook).position) != 0)]

    def old_batches() -> Any:
        gen = torch.Generator().manual_seed(0)
        while True:
            order = torch.randperm(len(rows), generator=gen)
            for lo in range(0, len(order) - BATCH + 1, BATCH):
                yield rows[order[lo : lo + BATCH]]

    torch.manual_seed(0)
    sae = TopKSAE(
        d_in=int(store.width(hook)), n_latents=N_LATENTS, k=K, hook=hook, encoder_init_norm=1.0
    )
    with _one_thread():
        train(old_batches(), [SAETrainer(sae, TrainConfig(seed=0), total_steps=STEPS)])
        new = _pipeline_saes(run_dir)["image"]
    sae.save(tmp_path / "old")
    assert _same(_weights(tmp_path / "old"), new)


def test_rows_option_selects_the_documented_rows(store: Any) -> None:
    hooks = _hooks(store)
    image, text = hooks["image"], hooks["text"]
    assert store.n_rows(image) == N_SAMPLES * 17
    assert selected_rows(store, image, "all") == N_SAMPLES * 17
    assert selected_rows(store, image, "tokens") == N_SAMPLES * 16
    assert selected_rows(store, image, "patches") == N_SAMPLES * 16
    assert selected_rows(store, image, "cls") == N_SAMPLES
    assert selected_rows(store, text, "tokens") == selected_rows(store, text, "all")
    assert selected_rows(store, text, "all") == store.n_rows(text)
    assert selected_rows(store, text, "eot") == N_SAMPLES
    for hook, rows in ((image, "eot"), (text, "cls"), (text, "patches")):
        with pytest.raises(InputError, match=rows):
            plan_batches(store, hook, 8, rows=rows)
    with pytest.raises(InputError, match="rows must be one of"):
        plan_batches(store, image, 8, rows="patch")


@pytest.mark.parametrize("rows", ROWS)
def test_streamed_batches_equal_in_memory_ones_and_resume_exactly(
    store: Any, rows: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = _hooks(store)["text" if rows == "eot" else "image"]
    monkeypatch.setattr(sae_data, "WINDOW_BYTES", 4 * store.width(hook) * 300)
    batch = 16 if rows in ("cls", "eot") else 64
    plan = plan_batches(store, hook, batch, rows=rows)
    assert len(plan.parts[0].counts) > 1
    n = 3 * plan.n_selected // batch  # three epochs

    def take(in_memory: bool, start: int = 0) -> list[torch.Tensor]:
        stream = iterate_batches(plan, seed=3, start_batch=start, in_memory=in_memory)
        try:
            return [next(stream) for _ in range(n - start)]
        finally:
            stream.close()

    memory = take(in_memory=True)
    streamed = take(in_memory=False)
    assert all(torch.equal(a, b) for a, b in zip(memory, streamed, strict=True))
    for start in (5, n // 3 + 2):
        assert all(
            torch.equal(a, b) for a, b in zip(take(in_memory=False, start=start), memory[start:])
        )
    if rows == "cls":  # every CLS row, once per epoch
        per_epoch = plan.n_selected // batch
        first = torch.cat(memory[:per_epoch])
        assert torch.unique(first, dim=0).shape[0] == per_epoch * batch


def _small_store(path: Path, rows: int) -> Path:
    x = torch.randn(rows, 8, generator=torch.Generator().manual_seed(0))
    store = ActivationStore.create(path, {"image.embed": 8}, chunk_rows=64)
    store.append("image.embed", x.numpy())
    store.close()
    return path


def test_too_few_rows_fail_before_writing_anything(tmp_path: Path, capsys: Any) -> None:
    acts = _small_store(tmp_path / "acts.zarr", 100)
    out = tmp_path / "sae"
    code = main(
        ["train-sae", "--store", str(acts), "--hook", "image.embed", "--k", "2",
         "--n-latents", "16", "--batch-size", "128", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    for part in (str(acts), "image.embed", "100 rows", "rows='tokens'", "one batch of 128"):
        assert part in err, (part, err)
    assert not out.exists()


def test_a_failed_run_is_marked_incomplete_and_readers_say_so(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmfast.sae.trainer import SAETrainer

    acts = _small_store(tmp_path / "acts.zarr", 512)
    out = tmp_path / "sae"
    args = ["train-sae", "--store", str(acts), "--hook", "image.embed", "--k", "2",
            "--n-latents", "16", "--batch-size", "32", "--tokens", str(32 * 12),
            "--checkpoint-every", "2", "--out", str(out), "--no-progress"]  # fmt: skip
    step = SAETrainer.step

    def fails_at_step_5(self: SAETrainer, x: torch.Tensor) -> Any:
        if self.step_count == 5:
            raise OSError(28, "No space left on device")
        return step(self, x)

    monkeypatch.setattr(SAETrainer, "step", fails_at_step_5)
    assert main(args) == 1
    assert "No space left" in capsys.readouterr().err
    monkeypatch.undo()
    assert (out / "INCOMPLETE").is_file() and (out / "trainer_state.pt").is_file()
    for load in (TopKSAE.load, load_sae):
        with pytest.raises(InputError, match=r"incomplete run: .*training did not finish"):
            load(out)
    code = main(
        ["score", "--store", str(acts), "--hook", "image.embed", "--sae", str(out),
         "--out", str(tmp_path / "scores"), "--no-progress"]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "incomplete run" in err and "no cfg.json" not in err
    # --resume continues the run from its last checkpoint and finishes it
    assert main([*args, "--resume"]) == 0
    assert not (out / "INCOMPLETE").exists()
    sae = TopKSAE.load(out)
    assert sae.cfg.rows == "tokens" and sae.n_latents == 16
    assert "rows=tokens" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 12
