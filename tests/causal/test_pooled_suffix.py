"""Blocks after a circuit's last kept head run at the pooled token only, and change nothing.

An ablated head's output does not depend on the row, so once a variant keeps no head in
any later block, nothing crosses positions and only the pooled token (CLS / EOT / last)
reaches the embedding. The engine runs those blocks at that token alone; these tests pin
the result to the hooked engine (every position) and to the serial reference.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlmfast as vf
from vlmfast.causal._circuit_engine import CircuitEvaluator, HeadFamily, NeuronFamily
from vlmfast.causal.circuit import _inputs
from vlmfast.causal.metrics import MatchedScore
from vlmfast.errors import InputError, ShapeError
from vlmfast.models.testing import random_pair_tokens, random_pixels, tiny_pair


def _families(pair: Any, heads_only: bool = False) -> list[Any]:
    out: list[Any] = []
    for t in ("image", "text"):
        cfg = pair.config.tower(t)
        out.append(HeadFamily(t, cfg.layers, cfg.heads))
        if not heads_only:
            out.append(NeuronFamily(t, cfg.layers, cfg.mlp_width))
    return out


def _suffix_keeps(ev: CircuitEvaluator, seed: int) -> torch.Tensor:
    """Circuits whose heads stop at some layer (per tower), neurons kept at random after it."""
    gen = torch.Generator().manual_seed(seed)
    nodes = ev.nodes
    rows = []
    depth = {t: len(ev.pair.tower(t).blocks) for t in ("image", "text")}
    for cut_img in range(depth["image"] + 1):
        for cut_txt in (0, 1, depth["text"]):
            for density in (0.0, 0.3, 1.0):
                cut = {"image": cut_img, "text": cut_txt}
                k = torch.rand(len(nodes), generator=gen) < density
                heads = torch.tensor(
                    [nd.kind == "heads" and nd.layer < cut[nd.tower] for nd in nodes]
                )
                is_head = torch.tensor([nd.kind == "heads" for nd in nodes])
                rows.append(torch.where(is_head, heads & k, k))
    return torch.stack(rows)


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, dict[str, torch.Tensor], torch.Tensor]:
    pair = vf.load_pair("synthetic:tiny").eval()
    s = pair.config.image.image_size
    gen = torch.Generator().manual_seed(0)
    px, px_c = torch.randn(2, 4, 3, s, s, generator=gen)
    # captions of different lengths: EOT at different positions, cut after the last
    tok = pair.tokenize(["a red cube", "a blue ball left of a green cone", "two cones", "a"])
    clean, _, _ = _inputs(pair, px, tok, px_c, None, None)
    return pair, clean, px_c


@pytest.mark.parametrize("ablation", ["mean", "zero", "resample"])
def test_pooled_suffix_equals_every_position(tiny: Any, ablation: str) -> None:
    pair, clean, px_c = tiny
    eot = clean["text"].argmax(-1)
    assert len(set(eot.tolist())) > 2  # the text rows pool at different positions
    kw: dict[str, Any] = dict(ablation=ablation, max_rows=40)
    if ablation == "resample":
        kw["resample"] = {"image": px_c, "text": clean["text"].roll(1, 0)}
    evs = {
        sparse: CircuitEvaluator(
            pair, clean, _families(pair), MatchedScore(), "logits", sparse=sparse, **kw
        )
        for sparse in (True, False)
    }
    keep = _suffix_keeps(evs[True], seed=3)
    fast = evs[True].evaluate(keep)
    hooked = evs[False].evaluate(keep)
    serial = evs[True].evaluate(keep[::5], "serial")
    st = evs[True].stats
    assert st["image_pooled_rows"] > 0 and st["text_pooled_rows"] > 0
    assert evs[False].stats["image_pooled_rows"] == 0  # the hooked engine runs every position
    torch.testing.assert_close(fast.sim, hooked.sim, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.sim[::5], serial.sim, atol=1e-5, rtol=1e-5)
    assert float((fast.metric - fast.metric[-1]).abs().max()) > 1e-2  # the ablations matter


def test_heads_only_circuits_on_a_siglip_pair() -> None:
    """MAP-pooled images never take the pooled path; the last-token text tower does."""
    pair = tiny_pair("ViT-SO400M-14-SigLIP-384").eval()
    assert pair.image.pooled_positions(torch.zeros(2, 3, 4)) is None
    px = random_pixels(pair, 3, seed=0)
    tok = random_pair_tokens(pair, 3, seed=2)
    ev = CircuitEvaluator(
        pair, {"image": px, "text": tok}, _families(pair, heads_only=True), MatchedScore(),
        "logits", ablation="mean",
    )  # fmt: skip
    ref = CircuitEvaluator(
        pair, {"image": px, "text": tok}, _families(pair, heads_only=True), MatchedScore(),
        "logits", ablation="mean", sparse=False,
    )  # fmt: skip
    keep = _suffix_keeps(ev, seed=4)
    torch.testing.assert_close(ev.evaluate(keep).sim, ref.evaluate(keep).sim, atol=1e-5, rtol=1e-5)
    assert ev.stats["image_pooled_rows"] == 0
    assert ev.stats["text_pooled_rows"] > 0


def test_embed_pooled_rows_refuses_a_map_tower() -> None:
    pair = tiny_pair("ViT-SO400M-14-SigLIP-384").eval()
    with pytest.raises(InputError, match="pools with 'map'"):
        pair.image.embed_pooled_rows(torch.zeros(2, 1, pair.config.image.width))
    clip = vf.load_pair("synthetic:tiny")
    with pytest.raises(ShapeError, match=r"\[B, 1, "):
        clip.image.embed_pooled_rows(torch.zeros(2, 3, clip.config.image.width))
