"""Batched interventions continue from the clean prefix below the first edited block:
the same embeddings as a whole forward, and the blocks below run once."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlmfast as vf
from tolerance import assert_close
from vlmfast.causal import EvalSet, steering_sweep
from vlmfast.causal.core.units import Unit, UnitSet
from vlmfast.causal.interventions.edits import AddRows
from vlmfast.causal.interventions.prefix import clean_prefixes, run_chunk, start_layer


@pytest.fixture(scope="module")
def tiny() -> Any:
    return vf.load_pair("synthetic:tiny").eval()


def test_start_layer_is_the_earliest_edited_block(tiny: Any) -> None:
    d = torch.zeros(1, 1)
    assert start_layer(tiny, "image", [AddRows("image.blocks.3.mlp_out", d)]) == 3
    both = [AddRows("image.blocks.3.mlp_out", d), AddRows("image.blocks.1.resid_pre", d)]
    assert start_layer(tiny, "image", both) == 1
    assert start_layer(tiny, "image", [AddRows("image.blocks.*.mlp_out", d)]) == 0
    embed = tiny.image.hook_points()[0]
    assert ".blocks." not in embed
    assert start_layer(tiny, "image", [AddRows(embed, d), *both]) is None
    assert start_layer(tiny, "image", []) is None


@pytest.mark.parametrize("tower", ["image", "text"])
def test_a_chunk_from_the_prefix_equals_the_whole_forward(tiny: Any, tower: str) -> None:
    ev = EvalSet.synthetic(5, seed=3)
    inputs = ev.images if tower == "image" else tiny.tokenize(ev.captions)
    copies, width = 3, tiny.config.tower(tower).width
    gen = torch.Generator().manual_seed(0)
    ivs = [
        AddRows(f"{tower}.blocks.1.resid_pre", torch.randn(copies * 5, width, generator=gen)),
        AddRows(f"{tower}.blocks.2.mlp_out", torch.randn(copies * 5, width, generator=gen)),
    ]
    layer = start_layer(tiny, tower, ivs)
    assert layer == 1
    with torch.no_grad():
        prefixes = clean_prefixes(tiny, tower, inputs, {layer})
        fast = run_chunk(tiny, tower, inputs, copies, ivs, layer, prefixes)
        whole = run_chunk(tiny, tower, inputs, copies, ivs, None, {})
        clean = run_chunk(tiny, tower, inputs, copies, [], None, {})
    assert fast.shape == whole.shape == (copies * 5, tiny.config.tower(tower).embed_dim)
    assert_close(fast, whole, dtype=torch.float32)
    assert (whole - clean).abs().max() > 1e-2  # the edits matter


def test_blocks_below_the_first_edit_run_once(tiny: Any) -> None:
    """Steering units at blocks >= 2: blocks 0 and 1 see the images twice (the clean
    embeddings and the prefix's clean forward), block 2 also once per variant."""
    ev = EvalSet.synthetic(6, seed=4).select(["red", "blue"])
    units = {
        c: UnitSet((Unit("image.blocks.2.mlp.post", j), Unit("image.blocks.3.mlp.post", j)), c)
        for c, j in (("red", 5), ("blue", 9))
    }
    rows = {0: 0, 1: 0, 2: 0}

    def counter(layer: int) -> Any:
        def hook(_mod: Any, args: tuple[Any, ...], _out: Any) -> None:
            rows[layer] += int(args[0].shape[0])

        return hook

    handles = [tiny.image.blocks[i].register_forward_hook(counter(i)) for i in rows]
    try:
        sweep = steering_sweep(tiny, units, [-2.0, 2.0], eval_data=ev, max_rows=12)
    finally:
        for h in handles:
            h.remove()
    n, variants = len(ev.images), 1 + 2 * 2
    assert rows[0] == rows[1] == 2 * n
    assert rows[2] == 2 * n + variants * n
    serial = steering_sweep(tiny, units, [-2.0, 2.0], eval_data=ev, method="serial")
    assert_close(torch.tensor(sweep.delta), torch.tensor(serial.delta), dtype=torch.float32)
