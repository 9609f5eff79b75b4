"""Circuit edges: AtP equals exact patching on a linear pair; outgoing edges sum to AtP."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlmfast as vf
from vlmfast.causal.attribution import attribute
from vlmfast.causal.circuits.graph import circuit_edges
from vlmfast.causal.circuits.types import LOGIT, CircuitEdge, CircuitNode
from vlmfast.causal.core.metrics import MatchedScore
from vlmfast.errors import InputError
from vlmfast.models import testing
from vlmfast.models.config import PairConfig, TowerConfig
from vlmfast.models.pair import HookedPair
from vlmfast.sae.model import TopKSAE

DOT = MatchedScore(space="dot")


def linear_pair(seed: int = 0) -> HookedPair:
    """The affine toy of ``vlmfast.models.testing`` (3 blocks, so that edges have intermediates to freeze)."""
    pair: HookedPair = testing.linear_pair(seed, layers=3, mlp_width=6)
    return pair


def _text(seed: int, n: int = 3) -> torch.Tensor:
    return testing.linear_pair_inputs(seed, n)[1]


def _images(seed: int, n: int = 3) -> torch.Tensor:
    return testing.linear_pair_inputs(seed, n)[0]


def _nodes() -> list[CircuitNode]:
    out = []
    for tower in ("image", "text"):
        out += [
            CircuitNode(tower, "heads", 0, 1),
            CircuitNode(tower, "neurons", 0, 3),
            CircuitNode(tower, "heads", 1, 0),
            CircuitNode(tower, "neurons", 1, 2),
            CircuitNode(tower, "heads", 2, 1),
            CircuitNode(tower, "neurons", 2, 5),
        ]
    return out


@pytest.fixture(scope="module")
def toy() -> HookedPair:
    return linear_pair()


def _table(edges: list[CircuitEdge]) -> dict[tuple[str, str], float]:
    return {(e.src, e.dst): e.effect for e in edges}


@pytest.mark.parametrize("max_rows", [3, 512])
def test_linear_pair_atp_edges_equal_exact(toy: HookedPair, max_rows: int) -> None:
    args = (toy, _images(0), _text(1))
    kw: dict[str, Any] = dict(corrupt_images=_images(2), corrupt_texts=_text(3), nodes=_nodes())
    atp = _table(circuit_edges(*args, **kw, metric=DOT, method="atp", max_rows=max_rows))
    exact = _table(circuit_edges(*args, **kw, metric=DOT, method="exact", max_rows=max_rows))
    assert atp.keys() == exact.keys()
    scale = max(abs(v) for v in exact.values())
    assert scale > 1e-3
    for key, value in exact.items():
        assert atp[key] == pytest.approx(value, abs=1e-4 * scale), key
    # a head feeds its own block's neurons; a block's own heads never feed each other
    assert ("image.L0.H1", "image.L0.N3") in atp
    assert ("image.L0.N3", "image.L0.H1") not in atp
    assert not any(k[0].startswith("image") and k[1].startswith("text") for k in atp)
    # freezing matters: L0.H1 -> L2.N5 with L1 frozen differs from the unfrozen effect
    assert abs(atp["image.L0.H1", "image.L2.N5"]) > 1e-6


def small_pair() -> HookedPair:
    """A small random pair with real LayerNorms, GELUs, attention and a causal text tower."""
    common = dict(width=32, layers=3, heads=2, head_dim=16, mlp_width=24)
    cfg = PairConfig(
        image=TowerConfig("image", **common, image_size=32, patch_size=16, embed_dim=16),
        text=TowerConfig(
            "text", **common, vocab_size=50, context_length=7, pool="eot", causal=True,
            embed_dim=16,
        ),
    )  # fmt: skip
    torch.manual_seed(1)
    return HookedPair(cfg).eval()


def shifted_sae(d: int, m: int, seed: int = 0, shift: float = 20.0) -> TopKSAE:
    """``m < d`` orthonormal latents, k = m, ``b_dec`` shifted so every code stays on: the
    codes are affine in ``x`` and the error is the projection off their span."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))
    q = q.T[:m].contiguous()
    sae = TopKSAE(d, m, m)
    with torch.no_grad():
        sae.W_dec.copy_(q)
        sae.W_enc.copy_(q)
        sae.b_enc.zero_()
        sae.b_dec.copy_(-shift * q.sum(0))
    return sae


SAE_HOOK = "image.blocks.1.resid_pre"


def _sae_nodes(tower: str = "image") -> list[CircuitNode]:
    hook = SAE_HOOK.replace("image", tower)
    return [
        CircuitNode(tower, "heads", 0, 1),
        CircuitNode(tower, "features", 1, 0, hook),
        CircuitNode(tower, "features", 1, 3, hook),
        CircuitNode(tower, "errors", 1, 0, hook),
        CircuitNode(tower, "errors", 1, 2, hook),
        CircuitNode(tower, "neurons", 1, 2),
        CircuitNode(tower, "heads", 2, 1),
    ]


def test_linear_pair_sae_edges_equal_exact(toy: HookedPair) -> None:
    """Affine codes on a linear pair: feature and error edges are exact too."""
    saes = {SAE_HOOK: shifted_sae(16, 10)}
    args = (toy, _images(0), _text(1), _images(2))
    atp = _table(circuit_edges(*args, nodes=_sae_nodes(), metric=DOT, saes=saes))
    exact = _table(circuit_edges(*args, nodes=_sae_nodes(), metric=DOT, saes=saes, method="exact"))
    assert atp.keys() == exact.keys()
    scale = max(abs(v) for v in exact.values())
    for key, value in exact.items():
        assert atp[key] == pytest.approx(value, abs=1e-4 * scale), key
    assert abs(atp["image.L0.H1", "image.L1.F3"]) > 1e-4 * scale  # a head feeds a feature
    assert abs(atp["image.L1.E2", "image.L2.H1"]) > 1e-4 * scale  # an error node feeds a head
    assert ("image.L1.F0", "image.L1.E0") not in atp  # one hook: parallel


def test_outgoing_edges_sum_to_the_node_attribution() -> None:
    """Holds for any model (the first-hit chain rule), so check it on a nonlinear pair,
    against ``attribute`` (heads, neurons) and ``feature_attribution`` (SAE nodes)."""
    from vlmfast.causal.circuits.features import feature_attribution
    from vlmfast.models.testing import random_tokens

    pair = small_pair()
    gen = torch.Generator().manual_seed(0)
    px, px_c = torch.randn(2, 3, 32, 32, generator=gen), torch.randn(2, 3, 32, 32, generator=gen)
    tok = random_tokens(2, 7, 50, seed=0)
    tok[:, 5], tok[:, 6] = 49, 0  # same EOT position
    tok[:, :5] = tok[:, :5].clamp(1, 40)
    tok_c = tok.clone()
    tok_c[:, 1] = tok[:, 1] % 40 + 1
    saes = {SAE_HOOK: TopKSAE(32, 12, 3, seed=2)}  # an ordinary (lossy, nonlinear) SAE
    nodes = [
        *_sae_nodes(),
        CircuitNode("text", "heads", 0, 1),
        CircuitNode("text", "neurons", 1, 7),
    ]
    edges = circuit_edges(pair, px, tok, px_c, tok_c, nodes=nodes, saes=saes, max_rows=4)
    att = attribute(pair, px, tok, px_c, tok_c, components=("heads", "neurons"))
    fatt = feature_attribution(pair, px, tok, px_c, tok_c, saes=saes)
    out: dict[str, float] = {}
    for e in edges:
        out[e.src] = out.get(e.src, 0.0) + e.effect
    scale = max(abs(v) for v in out.values())
    for n in nodes:
        if n.kind == "features":
            want = float(fatt.features[SAE_HOOK][n.index])
        elif n.kind == "errors":
            want = float(fatt.errors[SAE_HOOK][n.index])
        else:
            want = float(att.scores[n.tower, n.kind][n.layer, n.index])
        assert out[n.key] == pytest.approx(want, rel=1e-3, abs=1e-5 * scale), n.key
    assert sum(1 for e in edges if e.dst == LOGIT) == len(nodes)
    assert scale > 0


def test_bad_nodes(toy: HookedPair) -> None:
    args = (toy, _images(0), _text(1))
    with pytest.raises(InputError, match="pass saes="):
        circuit_edges(*args, _images(2), nodes=[CircuitNode("image", "features", 0, 1, "h")])
    with pytest.raises(InputError, match="not in its tower and layer"):
        circuit_edges(
            *args, _images(2), nodes=[CircuitNode("image", "features", 0, 1, SAE_HOOK)],
            saes={SAE_HOOK: shifted_sae(16, 4)},
        )  # fmt: skip
    with pytest.raises(InputError, match="layer 7"):
        circuit_edges(*args, _images(2), nodes=[CircuitNode("image", "heads", 7, 0)])
    with pytest.raises(InputError, match="index 9"):
        circuit_edges(*args, _images(2), nodes=[CircuitNode("text", "heads", 0, 9)])
    with pytest.raises(InputError, match="non-empty"):
        circuit_edges(*args, _images(2), nodes=[])
    with pytest.raises(InputError, match="method"):
        circuit_edges(*args, _images(2), nodes=_nodes(), method="ig")


def test_logit_edge_matches_an_independent_frozen_patch(toy: HookedPair) -> None:
    """``u -> logit`` = m(u from clean, the other nodes patched from corrupt) - m(corrupt),
    built here from plain ``vf.Patch``; without the freeze the number differs."""
    px, tok, px_c = _images(0), _text(1), _images(2)
    nodes = [n for n in _nodes() if n.tower == "image"]
    edges = _table(circuit_edges(toy, px, tok, px_c, nodes=nodes, metric=DOT))
    u = nodes[0]
    names = sorted(
        {f"image.blocks.{n.layer}.{'attn.z' if n.kind == 'heads' else 'mlp.post'}" for n in nodes}
    )
    clean = toy.run(images=px, texts=tok, cache=names).cache
    corrupt = toy.run(images=px_c, texts=tok, cache=names).cache

    def m(interventions: list[Any]) -> float:
        out = toy.run(images=px_c, texts=tok, interventions=interventions)
        return float(DOT(out.image_embeds @ out.text_embeds.T * toy.logit_scale.exp()))

    def patch(n: CircuitNode, src: Any) -> Any:
        name = f"image.blocks.{n.layer}.{'attn.z' if n.kind == 'heads' else 'mlp.post'}"
        sel = {"heads": [n.index]} if n.kind == "heads" else {"neurons": [n.index]}
        return vf.Patch(name, src, **sel)

    base = m([])
    frozen = m([patch(u, clean)] + [patch(n, corrupt) for n in nodes[1:]])
    unfrozen = m([patch(u, clean)])
    assert edges[u.key, LOGIT] == pytest.approx(frozen - base, rel=1e-4, abs=1e-5)
    assert abs(unfrozen - frozen) > 1e-3 * abs(frozen - base)
