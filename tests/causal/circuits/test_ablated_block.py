"""The sparse circuit engine equals the hooked ablation and the serial reference.

Two exact savings are pinned here: ablated heads / neurons are never computed
(``_ablated_block``), and the blocks after a circuit's last kept head run at the pooled
token (CLS / EOT / last) alone.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlmfast as vf
from tolerance import assert_close
from vlmfast.causal.circuits.engine import CircuitEvaluator
from vlmfast.causal.circuits.families import HeadFamily, NeuronFamily
from vlmfast.causal.circuits.inputs import circuit_inputs as _inputs
from vlmfast.causal.core.metrics import MatchedScore
from vlmfast.errors import InputError, ShapeError
from vlmfast.models.testing import random_pair_tokens, random_pixels, tiny_pair


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, torch.Tensor, torch.Tensor]:
    pair = vf.load_pair("synthetic:tiny").eval()
    s = pair.config.image.image_size
    gen = torch.Generator().manual_seed(0)
    px, px_c = torch.randn(2, 4, 3, s, s, generator=gen)
    tok = pair.tokenize(["a red cube", "a blue ball left of a cone", "two green cones", "a cat"])
    return pair, px, tok, px_c


def _families(pair: Any, heads_only: bool = False) -> list[Any]:
    out: list[Any] = []
    for t in ("image", "text"):
        cfg = pair.config.tower(t)
        out.append(HeadFamily(t, cfg.layers, cfg.heads))
        if not heads_only:
            out.append(NeuronFamily(t, cfg.layers, cfg.mlp_width))
    return out


def _random_keeps(n_nodes: int, seed: int) -> torch.Tensor:
    """Nested-free random circuits of every density, plus the empty and the full one."""
    gen = torch.Generator().manual_seed(seed)
    dens = torch.tensor([0.0, 0.01, 0.05, 0.2, 0.5, 0.9, 0.99, 1.0]).repeat_interleave(2)
    keep = torch.rand(len(dens), n_nodes, generator=gen) < dens.unsqueeze(1)
    keep[-1] = True
    return keep


def _engines(
    pair: Any, clean: dict[str, torch.Tensor], px_c: torch.Tensor, ablation: str, max_rows: int
) -> dict[bool, CircuitEvaluator]:
    """The sparse engine (True) and the hooked one (False) on heads + neurons of both towers."""
    kw: dict[str, Any] = dict(ablation=ablation, max_rows=max_rows)
    if ablation == "resample":
        kw["resample"] = {"image": px_c, "text": clean["text"].roll(1, 0)}
    return {
        sparse: CircuitEvaluator(
            pair, clean, _families(pair), MatchedScore(), "logits", sparse=sparse, **kw
        )
        for sparse in (True, False)
    }


@pytest.mark.parametrize("ablation", ["mean", "zero", "resample"])
def test_sparse_equals_hooked_and_serial(tiny: Any, ablation: str) -> None:
    pair, px, tok, px_c = tiny
    clean, _, _ = _inputs(pair, px, tok, px_c, None, None)
    evs = _engines(pair, clean, px_c, ablation, max_rows=24)
    keep = _random_keeps(len(evs[True].nodes), seed=1)
    fast = evs[True].evaluate(keep).metric
    hooked = evs[False].evaluate(keep).metric
    serial = evs[True].evaluate(keep[::3], "serial").metric
    assert_close(fast, hooked, dtype=torch.float32)
    assert_close(fast[::3], serial, dtype=torch.float32)
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


# ------------------------------------------------- the pooled-token suffix


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
def tiny_ragged() -> tuple[Any, dict[str, torch.Tensor], torch.Tensor]:
    pair = vf.load_pair("synthetic:tiny").eval()
    s = pair.config.image.image_size
    gen = torch.Generator().manual_seed(0)
    px, px_c = torch.randn(2, 4, 3, s, s, generator=gen)
    # captions of different lengths: EOT at different positions, cut after the last
    tok = pair.tokenize(["a red cube", "a blue ball left of a green cone", "two cones", "a"])
    clean, _, _ = _inputs(pair, px, tok, px_c, None, None)
    return pair, clean, px_c


@pytest.mark.parametrize("ablation", ["mean", "zero", "resample"])
def test_pooled_suffix_equals_every_position(tiny_ragged: Any, ablation: str) -> None:
    """Blocks after a circuit's last kept head run at the pooled token only (an ablated
    head's output does not depend on the row, so nothing crosses positions there)."""
    pair, clean, px_c = tiny_ragged
    eot = clean["text"].argmax(-1)
    assert len(set(eot.tolist())) > 2  # the text rows pool at different positions
    evs = _engines(pair, clean, px_c, ablation, max_rows=40)
    keep = _suffix_keeps(evs[True], seed=3)
    fast = evs[True].evaluate(keep)
    hooked = evs[False].evaluate(keep)
    serial = evs[True].evaluate(keep[::5], "serial")
    st = evs[True].stats
    assert st["image_pooled_rows"] > 0 and st["text_pooled_rows"] > 0
    assert evs[False].stats["image_pooled_rows"] == 0  # the hooked engine runs every position
    assert_close(fast.sim, hooked.sim, dtype=torch.float32)
    assert_close(fast.sim[::5], serial.sim, dtype=torch.float32)
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
    assert_close(ev.evaluate(keep).sim, ref.evaluate(keep).sim, dtype=torch.float32)
    assert ev.stats["image_pooled_rows"] == 0
    assert ev.stats["text_pooled_rows"] > 0


def test_embed_pooled_rows_refuses_a_map_tower() -> None:
    pair = tiny_pair("ViT-SO400M-14-SigLIP-384").eval()
    with pytest.raises(InputError, match="pools with 'map'"):
        pair.image.embed_pooled_rows(torch.zeros(2, 1, pair.config.image.width))
    clip = vf.load_pair("synthetic:tiny")
    with pytest.raises(ShapeError, match=r"\[B, 1, "):
        clip.image.embed_pooled_rows(torch.zeros(2, 3, clip.config.image.width))
