"""Several hooks in one run (``TrainSAEConfig.hook`` as a list, ``train-sae --hook a,b``):
one pass reads each window of rows once for the hooks that hold the same rows, and each
hook's SAE is bit-identical to training it alone; other hooks get passes of their own."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from vlmfast.cli import main
from vlmfast.errors import HookNameError, InputError
from vlmfast.sae import TopKSAE, TrainSAEConfig, train_sae
from vlmfast.sae import data as sae_data
from vlmfast.store import ActivationStore

A, B = "image.blocks.0.resid_post", "image.blocks.1.resid_post"
WIDTH, ROWS = 8, 600
SETTINGS: dict[str, Any] = dict(
    k=[2], n_latents=[16], batch_size=32, steps=24, device="cpu", log_every=6, checkpoint_every=8
)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two image blocks (600 rows each), a pooled image hook (300) and a text hook (300)."""
    path = tmp_path_factory.mktemp("multi") / "acts.zarr"
    g = torch.Generator().manual_seed(0)
    sizes = {A: ROWS, B: ROWS, "image.embed": ROWS // 2, "text.embed": ROWS // 2}
    store = ActivationStore.create(path, dict.fromkeys(sizes, WIDTH), chunk_rows=64)
    for hook, n in sizes.items():
        store.append(hook, torch.randn(n, WIDTH, generator=g).numpy())
    store.close()
    return path


@pytest.fixture
def store(store_path: Path) -> Any:
    return ActivationStore.open(store_path)


def _state(sae: TopKSAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sae.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _ReadSpy:
    """Records ``(hook, start, stop)`` of every ``store.read``."""

    def __init__(self, store: Any) -> None:
        self.calls: list[tuple[str, int, int]] = []
        read = store.read

        def spy(hook: str, start: int = 0, stop: int | None = None) -> Any:
            self.calls.append((hook, start, -1 if stop is None else stop))
            return read(hook, start, stop)

        store.read = spy


def _train(store: Any, hook: Any, out: Path, **kw: Any) -> Any:
    with _one_thread():
        return train_sae(
            store, TrainSAEConfig(hook=hook, **{**SETTINGS, **kw}), out, progress=False
        )


class _one_thread:
    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.threads)


@pytest.mark.parametrize("streamed", [False, True])
def test_two_hooks_in_one_pass_equal_each_alone_and_read_each_window_once(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    # several shuffling windows (600 rows, 130 per window), carried across
    monkeypatch.setattr(sae_data, "WINDOW_BYTES", 4 * WIDTH * 130)
    monkeypatch.setattr(sae_data, "IN_MEMORY_BYTES", 0 if streamed else 1 << 40)
    spy = _ReadSpy(store)
    both = _train(store, [A, B], tmp_path / "both")
    pass_reads = list(spy.calls)
    assert [p.hooks for p in both.passes] == [[A, B]]
    assert both.in_memory is not streamed
    alone = {}
    for hook in (A, B):
        spy.calls.clear()
        alone[hook] = _train(store, hook, tmp_path / hook)
        mine = [c for c in pass_reads if c[0] == hook]
        # the pass read every window of each hook exactly as often as a run of that hook alone
        assert mine == spy.calls, hook
    # each window is read for both hooks at once: A then B, the same raw rows
    assert [c[0] for c in pass_reads] == [A, B] * (len(pass_reads) // 2)
    assert all(a[1:] == b[1:] for a, b in zip(pass_reads[::2], pass_reads[1::2]))
    windows = [c[1:] for c in pass_reads if c[0] == A]
    assert len(windows) == len(set(windows)) or streamed  # in memory: each window once
    # the same rows in the same order: the same weights, bit for bit
    for hook in (A, B):
        (trained,) = [s for s in both.saes if s.hook == hook]
        assert trained.path == tmp_path / "both" / hook and trained.name == hook
        assert _same(_state(trained.sae), _state(alone[hook].saes[0].sae)), hook
        assert TopKSAE.load(trained.path).cfg.hook == hook


def test_row_selection_is_computed_once_per_window_for_all_hooks(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, int, int]] = []
    mask = sae_data.row_mask

    def spy(store: Any, part: str, rows: str, lo: int, hi: int) -> Any:
        calls.append((part, lo, hi))
        return mask(store, part, rows, lo, hi)

    monkeypatch.setattr(sae_data, "WINDOW_BYTES", 4 * WIDTH * 130)
    monkeypatch.setattr(sae_data, "row_mask", spy)
    _train(store, [A, B], tmp_path / "both", steps=4)
    assert calls and {part for part, *_ in calls} == {A}


def test_a_sweep_of_two_hooks_writes_one_folder_per_hook_and_point(
    store: Any, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    result = _train(store, [A, B], out, k=[2, 4])
    names = {s.name for s in result.saes}
    assert names == {f"{h}/k{k}_n16" for h in (A, B) for k in (2, 4)}
    for s in result.saes:
        assert s.path == out / s.name and (s.path / "cfg.json").is_file()
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {line["sae"] for line in lines} == names
    assert not list(out.rglob("INCOMPLETE"))


def test_hooks_of_different_rows_train_in_separate_passes_each_as_alone(
    store: Any, tmp_path: Path
) -> None:
    hooks = [A, "text.embed", "image.embed", B]
    result = _train(store, hooks, tmp_path / "all")
    assert [p.hooks for p in result.passes] == [[A, B], ["text.embed"], ["image.embed"]]
    assert [p.n_rows for p in result.passes] == [ROWS, ROWS // 2, ROWS // 2]
    for hook in ("text.embed", "image.embed"):
        alone = _train(store, hook, tmp_path / hook).saes[0].sae
        (trained,) = [s for s in result.saes if s.hook == hook]
        assert _same(_state(trained.sae), _state(alone)), hook


def test_bad_hook_lists_fail_naming_the_hook_and_write_nothing(store: Any, tmp_path: Path) -> None:
    out = tmp_path / "bad"
    with pytest.raises(HookNameError, match=re.escape("image.blocks.7.resid_post")):
        _train(store, [A, "image.blocks.7.resid_post"], out)
    assert not out.exists()
    with pytest.raises(InputError, match="empty list"):
        TrainSAEConfig(hook=[])
    with pytest.raises(InputError, match=re.escape(f"names {A} twice")):
        TrainSAEConfig(hook=[A, B, A])
    with pytest.raises(InputError, match="do not hold the same rows"):
        sae_data.plan_batches(store, [A, "image.embed"], 32)


def test_cli_takes_repeated_and_comma_separated_hooks(
    store_path: Path, tmp_path: Path, capsys: Any
) -> None:
    def run(*hook_args: str, out: Path) -> int:
        return main(
            ["train-sae", "--store", str(store_path), *hook_args, "--k", "2", "--n-latents",
             "16", "--batch-size", "32", "--tokens", str(32 * 6), "--device", "cpu",
             "--out", str(out), "--no-progress"]
        )  # fmt: skip

    assert run("--hook", f"{A},{B}", out=tmp_path / "comma") == 0
    assert run("--hook", A, "--hook", B, out=tmp_path / "repeat") == 0
    for hook in (A, B):
        w1 = TopKSAE.load(tmp_path / "comma" / hook).state_dict()
        w2 = TopKSAE.load(tmp_path / "repeat" / hook).state_dict()
        assert _same(w1, w2)
    assert "2 topk SAE(s)" in capsys.readouterr().out
    assert run("--hook", f"{A},image.nope", out=tmp_path / "bad") == 1
    err = capsys.readouterr().err.strip()
    assert "image.nope" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def test_an_interrupted_two_hook_run_resumes_to_the_same_weights(
    store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmfast.sae.trainer import SAETrainer

    whole = _train(store, [A, B], tmp_path / "whole")
    step = SAETrainer.step

    def fails_at_step_10(self: SAETrainer, x: torch.Tensor) -> Any:
        if self.step_count == 10:
            raise OSError(28, "No space left on device")
        return step(self, x)

    monkeypatch.setattr(SAETrainer, "step", fails_at_step_10)
    with pytest.raises(OSError):
        _train(store, [A, B], tmp_path / "cut")
    monkeypatch.undo()
    assert (tmp_path / "cut" / A / "INCOMPLETE").is_file()
    resumed = _train(store, [A, B], tmp_path / "cut", resume=True)
    for a, b in zip(whole.saes, resumed.saes, strict=True):
        assert a.name == b.name and _same(_state(a.sae), _state(b.sae)), a.name
    assert not list((tmp_path / "cut").rglob("INCOMPLETE"))
