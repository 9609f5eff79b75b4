"""Sparse feature circuits: exact splice, error-node shares, a planted feature is found."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest
import torch

from vlmfast.causal.attribution import attribute
from vlmfast.causal.circuits.families import AblationSources
from vlmfast.causal.circuits.feature_circuit import (
    check_saes,
    feature_attribution,
    feature_families,
    find_feature_circuit,
)
from vlmfast.causal.circuits.feature_family import SAEAblate, SAEFamily, sae_codes
from vlmfast.causal.core.metrics import MatchedScore, similarity
from vlmfast.errors import InputError
from vlmfast.models.config import PairConfig, TowerConfig
from vlmfast.models.pair import HookedPair
from vlmfast.models.testing import random_pair_tokens, random_pixels
from vlmfast.sae.model import TopKSAE

HOOK = "text.blocks.0.resid_pre"
POS = 1


@pytest.fixture(scope="module")
def pair() -> Any:
    """A small random pair with real LayerNorms, GELUs and a causal EOT-pooled text tower."""
    common = dict(width=64, layers=2, heads=4, head_dim=16, mlp_width=96)
    cfg = PairConfig(
        image=TowerConfig("image", **common, image_size=32, patch_size=16, embed_dim=48),
        text=TowerConfig(
            "text", **common, vocab_size=300, context_length=12, pool="eot", causal=True,
            embed_dim=48,
        ),
    )  # fmt: skip
    torch.manual_seed(0)
    return HookedPair(cfg).eval()


def basis_sae(q: torch.Tensor) -> TopKSAE:
    """Latents ``[Q; -Q]`` with k = d: ``relu`` of both signs reconstructs ``x`` exactly."""
    d = q.shape[0]
    sae = TopKSAE(d, 2 * d, d)
    with torch.no_grad():
        w = torch.cat([q, -q])
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def garbage_sae(d: int) -> TopKSAE:
    sae = TopKSAE(d, 16, 1, seed=3)
    with torch.no_grad():
        sae.W_dec.mul_(1e-3)
    return sae


def _embedding_direction(pair: Any, a: int, b: int) -> torch.Tensor:
    emb = pair.text.token_embed
    return (emb[a] - emb[b]).detach().float()


@pytest.fixture(scope="module")
def planted(pair: Any) -> dict[str, Any]:
    """Clean and corrupt captions differ only in token ``a`` -> ``b`` at position POS, so the
    change at ``text.blocks.0.resid_pre`` is one direction ``w``; the SAE's feature 0 is ``w``."""
    tok = random_pair_tokens(pair, 3, seed=0)
    tok[:, -1] = 0
    tok[:, : POS + 2] = torch.tensor([5, 7, 299])[: POS + 2]  # EOT right after POS
    tok[:, POS + 2 :] = 0
    a, b = 11, 12
    tok_c = tok.clone()
    tok[:, POS], tok_c[:, POS] = a, b
    w = _embedding_direction(pair, a, b)
    q0 = w / w.norm()
    d = w.shape[0]
    rand = torch.randn(d, d, generator=torch.Generator().manual_seed(0))
    rand[:, 0] = q0
    q, _ = torch.linalg.qr(rand)
    q = q.T.contiguous()
    q[0] = q0
    sae = basis_sae(q)
    with torch.no_grad():  # shift so that q0 . (x - b_dec) > 0 in both runs: only latent 0 moves
        sae.b_dec.copy_(-0.5 * q0)
    return {"tok": tok, "tok_c": tok_c, "sae": sae, "feature": 0}


def test_bad_saes(pair: Any) -> None:
    with pytest.raises(InputError, match=r"text.blocks.0.resid_pre.*d_in=65.*width 64"):
        check_saes(pair, {HOOK: TopKSAE(65, 8, 2)})
    with pytest.raises(InputError, match="not a hook"):
        check_saes(pair, {"text.blocks.9.resid_pre": TopKSAE(64, 8, 2)})
    with pytest.raises(InputError, match="not a block hook"):
        check_saes(pair, {"text.embed": TopKSAE(48, 8, 2)})
    with pytest.raises(InputError, match="one SAE per block"):
        check_saes(pair, {HOOK: TopKSAE(64, 8, 2), "text.blocks.0.resid_post": TopKSAE(64, 8, 2)})


def test_splice_is_bitwise_exact_even_for_a_garbage_sae(pair: Any) -> None:
    tok = random_pair_tokens(pair, 2, seed=1)
    sae = garbage_sae(64)
    plain = pair.text.run(tok.repeat(2, 1)).embed[:2]  # same batch shape as below
    x = pair.text.run(tok, cache=[HOOK]).cache[HOOK]
    z, err = sae_codes(sae, x)
    assert float(err.norm()) > 0.5 * float(x.float().norm())  # the SAE explains nothing
    n_pos = tok.shape[1]
    keep_f = torch.tensor([[True] * 16, [True] * 15 + [False]]).repeat_interleave(2, 0)
    keep_e = torch.tensor([[True] * n_pos, [False] + [True] * (n_pos - 1)]).repeat_interleave(2, 0)
    iv = SAEAblate(HOOK, sae, torch.arange(16), keep_f, keep_e, z.mean(0, keepdim=True),
                   err.mean(0, keepdim=True))  # fmt: skip
    out = pair.text.run(tok.repeat(2, 1), interventions=[iv]).embed
    assert torch.equal(out[:2], plain)  # variant 0 keeps every node: bitwise the original
    assert not torch.allclose(out[2:], plain)  # variant 1 ablates: it changes something
    fam = SAEFamily(HOOK, sae, n_pos)
    fam.prepare(AblationSources("mean", 2, {HOOK: x}))
    assert fam.interventions(torch.ones(1, len(fam.nodes()), dtype=torch.bool), 2) == []


def test_error_share_and_completeness(pair: Any, planted: dict[str, Any]) -> None:
    px = random_pixels(pair, 3)
    tok, tok_c = planted["tok"], planted["tok_c"]
    good = feature_attribution(pair, px, tok, corrupt_texts=tok_c, saes={HOOK: planted["sae"]})
    bad = feature_attribution(pair, px, tok, corrupt_texts=tok_c, saes={HOOK: garbage_sae(64)})
    ref = attribute(pair, px, tok, corrupt_texts=tok_c, components=("resid",), towers=("text",))
    cut = float(ref.scores["text", "resid"][0].sum())
    for att in (good, bad):
        total, hook_atp = att.completeness(HOOK)
        assert total == pytest.approx(hook_atp, rel=1e-4, abs=1e-6)
        assert hook_atp == pytest.approx(cut, rel=1e-4, abs=1e-6)
    assert abs(cut) > 1e-4
    assert good.error_share(HOOK) < 1e-3
    assert bad.error_share(HOOK) > 0.99
    f = good.features[HOOK].abs()
    assert int(f.argmax()) == planted["feature"]
    assert float(f.max()) > 0.999 * float(f.sum())


def test_planted_feature_is_the_circuit(pair: Any, planted: dict[str, Any]) -> None:
    px = random_pixels(pair, 3)
    kw: dict[str, Any] = dict(ablation="resample", target=0.8, null=0, n_boot=20, grid=8)
    fc = find_feature_circuit(
        pair, px, planted["tok"], corrupt_texts=planted["tok_c"], saes={HOOK: planted["sae"]}, **kw
    )
    assert [(n.kind, n.index) for n in fc.nodes] == [("features", planted["feature"])]
    assert fc.faithfulness == pytest.approx(1.0, abs=1e-3)
    assert not fc.faithful_only_through_errors
    assert fc.circuit_error_share == 0.0
    assert fc.error_share[HOOK] < 1e-3
    # edges and drawing through the circuit result: the one feature's edge into the logit
    edges = fc.edges(pair, px, planted["tok"], corrupt_texts=planted["tok_c"],
                     saes={HOOK: planted["sae"]})  # fmt: skip
    assert [(e.src, e.dst) for e in edges] == [(fc.nodes[0].key, "logit")]
    want = float(fc.attribution.features[HOOK][planted["feature"]])
    assert edges[0].effect == pytest.approx(want, rel=1e-4)
    root = ET.fromstring(fc.to_svg(labels={fc.nodes[0].key: "planted <w>"}))
    assert "planted <w>" in [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    # a garbage SAE: only the error node at the changed position carries the effect
    junk = find_feature_circuit(
        pair, px, planted["tok"], corrupt_texts=planted["tok_c"], saes={HOOK: garbage_sae(64)},
        ranking="exact", **kw,
    )  # fmt: skip
    assert ("errors", POS) in [(n.kind, n.index) for n in junk.nodes]
    assert junk.faithfulness >= 0.8
    assert junk.faithfulness_without_errors < 0.8
    assert junk.faithful_only_through_errors
    assert junk.circuit_error_share > 0.99
    assert junk.to_dict()["faithful_only_through_errors"] is True
    back = json.loads(junk.to_json())
    assert back["faithful_only_through_errors"] is True
    assert back["error_share"][HOOK] == pytest.approx(junk.error_share[HOOK])
    assert len(back["error_attribution"][HOOK]) == planted["tok"].shape[1]


def test_families_restrict_latents(pair: Any, planted: dict[str, Any]) -> None:
    px = random_pixels(pair, 3)
    fams = feature_families(
        pair, px, planted["tok"], corrupt_texts=planted["tok_c"], saes={HOOK: planted["sae"]},
        latents={HOOK: [planted["feature"], 3]},
    )  # fmt: skip
    (fam,) = fams
    nodes = fam.nodes()
    assert [n.kind for n in nodes[:2]] == ["features", "features"]
    assert len(nodes) == 2 + planted["tok"].shape[1]
    scores = fam.scores("atp")
    assert scores.shape == (len(nodes),)
    assert abs(float(scores[0])) > 100 * abs(float(scores[1]))
    with pytest.raises(InputError, match="ranking='atp'"):
        fam.scores("atp+")
    with pytest.raises(InputError, match="prepare"):
        fam.scores("exact")
    # exact: ablate one node at a time to its corrupt value (resample from the corrupt run)
    src = pair.text.run(planted["tok_c"], cache=[HOOK]).cache[HOOK]
    fam.prepare(AblationSources("resample", 3, {}, {HOOK: src}))
    exact = fam.scores("exact")
    assert exact.shape == (len(nodes),)
    assert int(exact.abs().argmax()) == 0  # the planted feature
    # ablating the planted feature to its corrupt value is the corrupt run at this hook
    img = pair.image.run(px).embed
    m = [
        float(
            MatchedScore()(
                similarity(img, pair.text.run(t).embed, pair.logit_scale, None, "logits")
            )
        )
        for t in (planted["tok"], planted["tok_c"])
    ]
    assert float(exact[0]) == pytest.approx(m[1] - m[0], rel=1e-3)
    assert abs(float(exact[1])) < 1e-3 * abs(m[1] - m[0])


def test_find_circuit_takes_features_as_components(pair: Any, planted: dict[str, Any]) -> None:
    from vlmfast.causal import find_circuit

    px = random_pixels(pair, 3)
    kw: dict[str, Any] = dict(ablation="resample", target=0.8, null=0, n_boot=20, grid=8)
    c = find_circuit(
        pair, px, planted["tok"], corrupt_texts=planted["tok_c"], components=("features",),
        towers=("text",), saes={HOOK: planted["sae"]}, **kw,
    )  # fmt: skip
    assert [(n.kind, n.index, n.hook) for n in c.nodes] == [("features", planted["feature"], HOOK)]
    assert c.faithfulness == pytest.approx(1.0, abs=1e-3)
    mixed = find_circuit(
        pair, px, planted["tok"], corrupt_texts=planted["tok_c"],
        components=("heads", "features"), towers=("text",), saes={HOOK: planted["sae"]}, **kw,
    )  # fmt: skip
    assert {n.kind for n in mixed.nodes} <= {"heads", "features"}
    assert c.n_nodes < mixed.n_nodes
    with pytest.raises(InputError, match="needs saes="):
        find_circuit(pair, px, planted["tok"], corrupt_texts=planted["tok_c"],
                     components=("features",), **kw)  # fmt: skip
