"""Causal tracing: batched == ROME's serial loop, recovery endpoints, corruption, nulls, errors."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

import vlmfast as vf
from tolerance import assert_close
from vlmfast.causal.core.conventions import recovery
from vlmfast.causal.core.metrics import similarity
from vlmfast.causal.tracing import prepare_trace, restore_sets, trace
from vlmfast.errors import InputError, ShapeError
from vlmfast.models.testing import random_pair_tokens, random_pixels, tiny_pair

ALL_KINDS = ("resid", "attn_out", "mlp_out", "heads")


@pytest.fixture(scope="module")
def b32() -> Any:
    return tiny_pair("ViT-B-32").eval()


@pytest.fixture(scope="module")
def inputs(b32: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return random_pixels(b32, 3, seed=1), random_pair_tokens(b32, 3, seed=2)


@pytest.mark.parametrize("corrupt", ["image", "text"])
@pytest.mark.parametrize("noise", ["zero", "3x", 0.5])
def test_batched_equals_serial(b32: Any, inputs: Any, corrupt: str, noise: Any) -> None:
    px, tok = inputs[0][:2], inputs[1][:2]
    kw: dict[str, Any] = dict(
        corrupt=corrupt, noise=noise, samples=2, seed=4, kinds=ALL_KINDS, window=3, max_rows=12
    )
    fast = trace(b32, px, tok, **kw)
    ref = trace(b32, px, tok, method="serial", **kw)
    assert fast.kinds == list(ALL_KINDS)
    for kind in ALL_KINDS:
        assert_close(fast.effect[kind], ref.effect[kind])
    n_pos = len(fast.positions)
    assert fast.effect["resid"].shape == (2, n_pos)
    assert fast.effect["heads"].shape == (2, b32.config.tower(corrupt).heads)
    # the effect of some restoration differs from the corrupted metric (the test has power)
    assert float((fast.effect["resid"] - fast.corrupt).abs().max()) > 1e-3


@pytest.mark.parametrize("corrupt", ["image", "text"])
@pytest.mark.parametrize("method", ["batched", "serial"])
def test_restoring_everything_recovers_one_and_nothing_zero(
    b32: Any, inputs: Any, corrupt: str, method: str
) -> None:
    px, tok = inputs
    prep = prepare_trace(b32, px, tok, corrupt, noise="3x", samples=2, kinds=("resid",))
    every = tuple(prep.traced)
    for layer in range(b32.config.tower(corrupt).layers):
        clean, corrupt_m, values = restore_sets(
            b32, px, tok, "resid", layer, [every, ()], corrupt, method, noise="3x", samples=2
        )
        rec = recovery(values, clean, corrupt_m)
        assert_close(rec, torch.tensor([1.0, 0.0]))


def test_zero_image_noise_is_an_all_zero_pixel_input(b32: Any, inputs: Any) -> None:
    px, tok = inputs
    assert not b32.config.image.patch_bias
    prep = prepare_trace(b32, px, tok, "image", noise="zero", kinds=("resid",))
    with torch.no_grad():
        img = b32.encode_image(torch.zeros_like(px))
        txt = b32.encode_text(tok)
    scale, bias = b32.logit_scale.detach(), None
    want = float(similarity(img, txt, scale, bias, "logits").diagonal().mean())
    assert prep.corrupt == pytest.approx(want, abs=1e-5)
    assert (~prep.mask[:, 0]).all() and prep.mask[:, 1:].all()  # CLS untouched


def test_default_text_positions_are_between_sot_and_eot(b32: Any, inputs: Any) -> None:
    px, tok = inputs
    prep = prepare_trace(b32, px, tok, "text", noise="zero", kinds=("resid",))
    eot = tok.argmax(-1)
    for row in range(tok.shape[0]):
        assert torch.nonzero(prep.mask[row]).flatten().tolist() == list(range(1, int(eot[row])))
    assert prep.traced == list(range(int(eot.max()) + 1))


def test_noise_is_seeded_and_shared_by_restorations(b32: Any, inputs: Any) -> None:
    px, tok = inputs
    a = trace(b32, px, tok, noise="3x", samples=4, seed=3, kinds=("resid",))
    b = trace(b32, px, tok, noise="3x", samples=4, seed=3, kinds=("resid",))
    c = trace(b32, px, tok, noise="3x", samples=4, seed=9, kinds=("resid",))
    assert torch.equal(a.effect["resid"], b.effect["resid"])
    assert a.corrupt != c.corrupt
    assert a.sigma is not None and a.sigma > 0 and a.samples == 4
    # last layer, a patch position: CLS pooling ignores it, so it equals the corrupted run
    assert float(a.effect["resid"][-1, 5]) == pytest.approx(a.corrupt, abs=1e-5)


def test_null_is_deterministic_and_well_formed(b32: Any, inputs: Any) -> None:
    px, tok = inputs
    kw: dict[str, Any] = dict(noise="3x", samples=2, kinds=("resid", "heads"), null=30, seed=1)
    a = trace(b32, px, tok, **kw)
    b = trace(b32, px, tok, **kw)
    assert a.null is not None and b.null is not None
    for kind in ("resid", "heads"):
        na = a.null[kind]
        assert torch.equal(na.samples, b.null[kind].samples)
        assert na.samples.shape == (2, 30)
        assert na.p_value.shape == a.effect[kind].shape
        assert float(na.p_value.min()) >= 1 / 31 and float(na.p_value.max()) <= 1.0
        assert bool((na.low <= na.mean).all() and (na.mean <= na.high).all())
        # count 1: each null draw is a cell of the same row
        for layer in range(2):
            cells = set(a.effect[kind][layer].tolist())
            assert set(na.samples[layer].tolist()) <= cells
    best = int(a.recovery["resid"][0].argmax())
    worst = int(a.recovery["resid"][0].argmin())
    assert a.null["resid"].p_value[0, best] <= a.null["resid"].p_value[0, worst]


def test_null_of_larger_sets_runs_restorations(b32: Any, inputs: Any) -> None:
    px, tok = inputs
    kw: dict[str, Any] = dict(noise="3x", samples=2, kinds=("resid",), null=5, null_count=3)
    fast = trace(b32, px, tok, **kw)
    ref = trace(b32, px, tok, method="serial", **kw)
    assert fast.null is not None and ref.null is not None
    assert_close(fast.null["resid"].samples, ref.null["resid"].samples)
    assert fast.null["resid"].count == 3


def test_corrupted_inputs_replace_the_noise(b32: Any, inputs: Any) -> None:
    px, tok = inputs
    other = random_pixels(b32, 3, seed=8)
    fast = trace(b32, px, tok, corrupted=other, kinds=("resid", "mlp_out"))
    ref = trace(b32, px, tok, corrupted=other, kinds=("resid", "mlp_out"), method="serial")
    assert_close(fast.effect["resid"], ref.effect["resid"])
    assert fast.noise == "input" and fast.samples == 1
    with pytest.raises(ShapeError, match="clean and corrupted images"):
        trace(b32, px, tok, corrupted=other[:2])


def test_json_rows_and_plot(b32: Any, inputs: Any) -> None:
    px, tok = inputs
    res = trace(b32, px, tok, "text", kinds=("resid", "heads"), null=10)
    data = json.loads(res.to_json())
    assert data["tower"] == "text" and data["clean"] == res.clean
    assert len(data["effect"]["resid"]) == 2 and "p_value" in data["null"]["resid"]
    rows = res.rows()
    assert len(rows) == 2 * len(res.positions) + 2 * b32.config.text.heads
    assert {"p_value", "null_mean", "recovery"} <= set(rows[0])
    fig = res.plot()
    assert len(fig.axes) == 4  # two panels + two colour bars
    lo, hi = fig.axes[0].images[0].get_clim()
    assert lo == -hi and hi >= 1.0
    assert "max recovery" in res.summary()


def test_metric_callable_and_logit_diff(b32: Any, inputs: Any) -> None:
    px, tok = inputs
    a = trace(b32, px, tok, kinds=("resid",), metric="logit_diff")
    b = trace(b32, px, tok, kinds=("resid",), metric=vf.causal.LogitDiff())
    assert torch.equal(a.effect["resid"], b.effect["resid"])
    with pytest.raises(ShapeError, match="metric must map"):
        trace(b32, px, tok, kinds=("resid",), metric=lambda sim: sim.mean())


def test_bad_arguments(b32: Any, inputs: Any) -> None:
    px, tok = inputs
    with pytest.raises(InputError, match=r"corrupt must be one of \['image', 'text'\]"):
        trace(b32, px, tok, corrupt="audio")
    with pytest.raises(InputError, match="kinds entry must be one of"):
        trace(b32, px, tok, kinds=("resid", "neurons"))
    with pytest.raises(InputError, match="noise must be one of"):
        trace(b32, px, tok, noise="gaussian")
    with pytest.raises(InputError, match="noise must be one of"):
        trace(b32, px, tok, noise=-1.0)
    with pytest.raises(InputError, match=r"positions \[10\] outside the 10 image tokens"):
        trace(b32, px, tok, positions=[3, 10])
    eot = int(tok.argmax(-1).min())
    with pytest.raises(InputError, match="after the EOT token of row"):
        trace(b32, px, tok, "text", positions=[eot + 1])
    with pytest.raises(InputError, match="no corruption set"):
        trace(b32, px, tok, positions=[])
    with pytest.raises(InputError, match="window must be an integer >= 1"):
        trace(b32, px, tok, window=0)
    with pytest.raises(InputError, match="method must be one of"):
        trace(b32, px, tok, method="fast")
    with pytest.raises(InputError, match="null_count 99 exceeds"):
        trace(b32, px, tok, kinds=("heads",), null=3, null_count=99)
    with pytest.raises(InputError, match=r"recovery is undefined.*clean .*corrupt"):
        trace(b32, px, tok, corrupted=px)
    b32.train()
    try:
        with pytest.raises(InputError, match=r"pair\.training is True"):
            trace(b32, px, tok)
    finally:
        b32.eval()


def test_synthetic_tiny_both_towers() -> None:
    pair = vf.load_pair("synthetic:tiny")
    captions = ["a red cube left of a blue sphere", "a green cone above a yellow cylinder"]
    px = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    tok = pair.tokenize(captions)
    img = trace(pair, px, tok, "image", kinds=("resid",))
    txt = trace(pair, px, tok, "text", kinds=("resid", "attn_out"))
    assert img.effect["resid"].shape == (4, 17)
    assert txt.effect["resid"].shape == (3, int(tok.argmax(-1).max()) + 1)


@pytest.mark.parametrize("corrupt", ["image", "text"])
def test_deeper_towers_batched_equal_serial(corrupt: str) -> None:
    """Four image / three text blocks: ``resid`` restorations below the last two layers take
    the spliced first-block qkv, the next the last block's pooled-row shortcut, the last
    only the head; the serial reference runs every row of every block."""
    pair = vf.load_pair("synthetic:tiny").eval()
    captions = ["a red cube left of a blue sphere", "a green cone"]
    px = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    tok = pair.tokenize(captions)
    kw: dict[str, Any] = dict(corrupt=corrupt, noise="3x", samples=3, seed=1, kinds=("resid",))
    fast = trace(pair, px, tok, max_rows=20, **kw)
    ref = trace(pair, px, tok, method="serial", **kw)
    assert fast.effect["resid"].shape[0] == pair.config.tower(corrupt).layers >= 3
    assert_close(fast.effect["resid"], ref.effect["resid"])
    assert float((fast.effect["resid"][:2] - fast.corrupt).abs().max()) > 1e-3


@pytest.mark.slow
def test_full_b32_shape_batched_equals_serial() -> None:
    pair = vf.load_pair("open_clip:ViT-B-32")
    px = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tok = pair.tokenize(["a photo of a red cube"])
    kw: dict[str, Any] = dict(noise="3x", samples=2, kinds=("resid", "heads"), layers=(0, 6, 11))
    fast = trace(pair, px, tok, **kw)
    ref = trace(pair, px, tok, method="serial", **kw)
    assert fast.effect["resid"].shape == (3, 50)
    for kind in ("resid", "heads"):
        assert_close(fast.effect[kind], ref.effect[kind])


def test_cli_writes_tables_and_heatmaps(tmp_path: Any, capsys: Any) -> None:
    from vlmfast.cli import main

    out = tmp_path / "tr"
    argv = ["trace", "--model", "synthetic:tiny", "--data", "synthetic:n=2,seed=0", "--out"]
    argv += [str(out), "--kinds", "resid", "--null", "5", "--no-progress", "--format", "png"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "image tower: clean score" in printed and "text tower: clean score" in printed
    assert "p = " in printed and "null mean" in printed
    for tower in ("image", "text"):
        data = json.loads((out / f"trace_{tower}.json").read_text())
        assert set(data["effect"]) == {"resid"} and data["null"]["resid"]["k"] == 5
        assert (out / f"trace_{tower}.png").stat().st_size > 0
        assert (out / f"trace_{tower}.npz").exists()
        rows = pq.read_table(out / f"trace_{tower}.parquet").to_pylist()
        assert rows == json.loads(json.dumps(rows)) and len(rows) > 0
    assert main([*argv[:-3], "--no-progress", "--noise", "loud"]) == 1
    assert "--noise must be" in capsys.readouterr().err
