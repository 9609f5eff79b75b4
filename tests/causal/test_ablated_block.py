"""The sparse ablated block (heads / neurons never computed) equals the hooked ablation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlmfast as vf
from vlmfast.causal._circuit_engine import CircuitEvaluator, HeadFamily, NeuronFamily
from vlmfast.causal.circuit import _inputs
from vlmfast.causal.metrics import MatchedScore


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, torch.Tensor, torch.Tensor]:
    pair = vf.load_pair("synthetic:tiny").eval()
    s = pair.config.image.image_size
    gen = torch.Generator().manual_seed(0)
    px, px_c = torch.randn(2, 4, 3, s, s, generator=gen)
    tok = pair.tokenize(["a red cube", "a blue ball left of a cone", "two green cones", "a cat"])
    return pair, px, tok, px_c


def _families(pair: Any) -> list[Any]:
    out: list[Any] = []
    for t in ("image", "text"):
        cfg = pair.config.tower(t)
        out += [HeadFamily(t, cfg.layers, cfg.heads), NeuronFamily(t, cfg.layers, cfg.mlp_width)]
    return out


def _random_keeps(n_nodes: int, seed: int) -> torch.Tensor:
    """Nested-free random circuits of every density, plus the empty and the full one."""
    gen = torch.Generator().manual_seed(seed)
    dens = torch.tensor([0.0, 0.01, 0.05, 0.2, 0.5, 0.9, 0.99, 1.0]).repeat_interleave(2)
    keep = torch.rand(len(dens), n_nodes, generator=gen) < dens.unsqueeze(1)
    keep[-1] = True
    return keep


@pytest.mark.parametrize("ablation", ["mean", "zero", "resample"])
def test_sparse_equals_hooked_and_serial(tiny: Any, ablation: str) -> None:
    pair, px, tok, px_c = tiny
    clean, _, _ = _inputs(pair, px, tok, px_c, None, None)
    kw: dict[str, Any] = dict(ablation=ablation, max_rows=24)
    if ablation == "resample":
        kw["resample"] = {"image": px_c, "text": clean["text"].roll(1, 0)}
    evs = {
        sparse: CircuitEvaluator(
            pair, clean, _families(pair), MatchedScore(), "logits", sparse=sparse, **kw
        )
        for sparse in (True, False)
    }
    keep = _random_keeps(len(evs[True].nodes), seed=1)
    fast = evs[True].evaluate(keep).metric
    hooked = evs[False].evaluate(keep).metric
    serial = evs[True].evaluate(keep[::3], "serial").metric
    torch.testing.assert_close(fast, hooked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[::3], serial, atol=1e-5, rtol=1e-5)
    assert float(fast[-1]) == float(evs[True].evaluate(keep[-1:], "serial").metric[0])
    assert float((fast - fast[-1]).abs().max()) > 1e-2  # the ablations matter


def test_a_feature_family_at_a_layer_falls_back_to_hooks(tiny: Any) -> None:
    """Only heads and neurons take the sparse path; a plan is None for any other family."""
    pair, px, tok, px_c = tiny
    clean, _, _ = _inputs(pair, px, tok, px_c, None, None)

    class Other(HeadFamily):
        kind = "other-heads"

    fams = [
        Other("image", 4, pair.config.image.heads),
        HeadFamily("text", 3, pair.config.text.heads),
    ]
    ev = CircuitEvaluator(pair, clean, fams, MatchedScore(), "logits", ablation="mean")
    cols = ev.columns["image"]
    fam_cols = [(f, [cols.index(c) for c in fc]) for f, fc in ev._tower_families("image")]
    assert ev._sparse_plan(fam_cols, ev.layer_of[cols], 0) is None
    tcols = ev.columns["text"]
    text_fams = [(f, [tcols.index(c) for c in fc]) for f, fc in ev._tower_families("text")]
    plan = ev._sparse_plan(text_fams, ev.layer_of[tcols], 1)
    assert plan is not None and set(plan) == {"heads"}
    assert len(plan["heads"][0]) == pair.config.text.heads
