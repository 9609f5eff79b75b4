"""Circuit discovery on a hand-built pair with a planted two-head circuit.

Image tower (CLS + 4 patches, 2 layers, 4 heads of width 8, MLP width 32, no ln_pre):

    patch 1   carries the image's colour c (its pixels are constant = an RGB one-hot)
    layer 0   head 1 (the *relay*): the query at patch 2 attends to patch 1 and writes the
              colour into a relay subspace at patch 2; every other query attends to CLS
              (which holds no colour) and writes nothing
    layer 1   head 2 (the *mover*): the CLS query attends to patch 2 and copies the relay
              subspace into a read-out subspace at CLS
    head      CLS pooling; the projection maps read-out ``c`` to caption ``c``'s direction

Every other head and every MLP neuron writes only into "junk" directions that nothing
reads (they move the metric only through LayerNorm scales: small, non-zero effects).
The text tower is one token through one block whose heads and neurons also write junk.
Directions are orthonormal and orthogonal to the all-ones vector (LayerNorm centring
leaves them alone); positions carry a large norm, so LayerNorm scales barely depend on
content. Ablating either planted head (mean over the batch) removes the colour from CLS:
the circuit is exactly {image L0 H1, image L1 H2} among 90 candidate components.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import vlmfast as vf
from vlmfast.causal.circuits.engine import CircuitEvaluator
from vlmfast.causal.circuits.families import HeadFamily, NeuronFamily
from vlmfast.causal.circuits.types import CircuitNode
from vlmfast.causal.core.metrics import MatchedScore
from vlmfast.errors import InputError, ShapeError
from vlmfast.models.config import PairConfig, TowerConfig
from vlmfast.models.pair import HookedPair

D, DH, H, T, E = 32, 8, 4, 5, 16
DT = 16  # text width
A, BETA, S, G = 10.0, 40.0, 3.0, 3.0
RELAY, MOVER = (0, 1), (1, 2)  # (layer, head)
COLORS = [0, 1, 2, 0, 1, 2]
PLANTED = [("image", "heads", 0, 1), ("image", "heads", 1, 2)]


def _orthonormal(n: int, dim: int, seed: int) -> torch.Tensor:
    m = torch.randn(dim, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    m = m - m.mean(dim=0, keepdim=True)
    q, _ = torch.linalg.qr(m)
    return q.T.float()


def _planted_pair() -> tuple[HookedPair, torch.Tensor, torch.Tensor, torch.Tensor]:
    image = TowerConfig(
        modality="image", width=D, layers=2, heads=H, head_dim=DH, mlp_width=32,
        pool="cls", embed_dim=E, image_size=16, patch_size=8,
    )  # fmt: skip
    text = TowerConfig(
        modality="text", width=DT, layers=1, heads=2, head_dim=8, mlp_width=16, pool="first",
        embed_dim=E, vocab_size=3, context_length=1, causal=True,
    )  # fmt: skip
    torch.manual_seed(0)
    pair = HookedPair(PairConfig(image=image, text=text, name="planted-circuit")).eval()
    d = _orthonormal(24, D, seed=1)
    pos, color, cls_c = d[:T], d[T : T + 3], d[8]
    relay, readout, junk = d[9:12], d[12:15], d[15:24]
    t_dirs = _orthonormal(4, E, seed=2)  # caption directions t_c and a baseline
    e = torch.eye(DH)
    gen = torch.Generator().manual_seed(3)
    sqrt_d = math.sqrt(D)
    gamma = A / sqrt_d  # undoes LayerNorm's 1/scale on content directions
    with torch.no_grad():
        im = pair.image
        # patch embedding: a patch's mean RGB (x S) along the colour directions
        w = torch.zeros(D, 3, 8, 8)
        for ch in range(3):
            w[:, ch] = S * color[ch].view(D, 1, 1) / 64.0
        im.patch_weight.copy_(w)
        assert im.cls_token is not None
        im.cls_token.copy_(cls_c)
        im.pos_embed.copy_(A * pos)
        keys = sum(torch.outer(e[p], pos[p]) for p in range(T)) / sqrt_d

        def queries(target: dict[int, int]) -> torch.Tensor:
            rows = [torch.outer(e[target.get(p, 0)], pos[p]) for p in range(T)]
            return BETA * sum(rows) / sqrt_d

        for layer, block in enumerate(im.blocks):
            wq = torch.zeros(H * DH, D)
            wk = torch.zeros(H * DH, D)
            wv = torch.zeros(H * DH, D)
            wo = torch.zeros(D, H * DH)
            for h in range(H):
                rows = slice(h * DH, (h + 1) * DH)
                wk[rows] = keys
                if (layer, h) == RELAY:
                    wq[rows] = queries({2: 1})
                    wv[rows] = gamma * sum(torch.outer(e[5 + c], color[c]) for c in range(3))
                    wo[:, rows] = G * sum(torch.outer(relay[c], e[5 + c]) for c in range(3))
                elif (layer, h) == MOVER:
                    wq[rows] = queries({0: 2})
                    wv[rows] = gamma * sum(torch.outer(e[5 + c], relay[c]) for c in range(3))
                    wo[:, rows] = G * sum(torch.outer(readout[c], e[5 + c]) for c in range(3))
                else:  # distractor: uniform attention, random values, writes junk
                    wv[rows] = torch.randn(DH, D, generator=gen) / sqrt_d
                    j = junk[torch.randint(0, 9, (2,), generator=gen)]
                    wo[:, rows] = 0.3 * (j.T @ torch.randn(2, DH, generator=gen))
            block.attn.in_proj_weight.copy_(torch.cat([wq, wk, wv]))
            block.attn.in_proj_bias.zero_()
            block.attn.out_weight.copy_(wo)
            block.attn.out_bias.zero_()
            block.mlp.fc1_weight.copy_(torch.randn(32, D, generator=gen) / sqrt_d)
            block.mlp.fc1_bias.zero_()
            block.mlp.fc2_weight.copy_(0.1 * junk.T @ torch.randn(9, 32, generator=gen))
            block.mlp.fc2_bias.zero_()
        assert im.proj_weight is not None
        im.proj_weight.copy_(
            sum(torch.outer(t_dirs[c], readout[c]) for c in range(3))
            + torch.outer(t_dirs[3], cls_c)
        )
        tx = pair.text
        dt = _orthonormal(6, DT, seed=4)
        tx.token_embed.copy_(4.0 * dt[:3])
        tx.pos_embed.zero_()
        for block in tx.blocks:
            block.attn.in_proj_weight.copy_(torch.randn(48, DT, generator=gen) / 4.0)
            block.attn.in_proj_bias.zero_()
            block.attn.out_weight.copy_(0.3 * dt[3:].T @ torch.randn(3, 16, generator=gen))
            block.attn.out_bias.zero_()
            block.mlp.fc1_weight.copy_(torch.randn(16, DT, generator=gen) / 4.0)
            block.mlp.fc1_bias.zero_()
            block.mlp.fc2_weight.copy_(0.1 * dt[3:].T @ torch.randn(3, 16, generator=gen))
            block.mlp.fc2_bias.zero_()
        assert tx.proj_weight is not None
        tx.proj_weight.copy_(
            sum(torch.outer(t_dirs[c], dt[c]) for c in range(3)) * 0.9
            + 0.2 * t_dirs[3].unsqueeze(1) * dt[:3].sum(0).unsqueeze(0)
        )
        pair.logit_scale.fill_(math.log(10.0))
    px = torch.zeros(len(COLORS), 3, 16, 16)
    for i, c in enumerate(COLORS):
        px[i, c, :8, :8] = 1.0  # patch 1 (token 1) = the top-left 8x8 block
    tok = torch.tensor(COLORS).view(-1, 1)
    return pair, px, tok, px.roll(1, 0)


@pytest.fixture(scope="module")
def planted() -> tuple[HookedPair, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _planted_pair()


def test_planted_pair_is_what_the_docstring_says(planted: Any) -> None:
    pair, px, tok, _ = planted
    hooks = ["image.blocks.0.attn.pattern", "image.blocks.1.attn.pattern"]
    with torch.no_grad():
        out = pair.run(images=px, texts=tok, cache=hooks)
    p0 = out.cache[hooks[0]][:, RELAY[1]]
    p1 = out.cache[hooks[1]][:, MOVER[1]]
    assert float(p0[:, 2, 1].min()) > 0.99  # relay: patch 2 reads patch 1
    assert float(p1[:, 0, 2].min()) > 0.99  # mover: CLS reads patch 2
    assert out.logits is not None
    best = torch.tensor(COLORS)[out.logits.argmax(-1)]  # captions of one colour tie
    assert bool((best == torch.tensor(COLORS)).all())
    assert float(out.logits.diagonal().mean() - out.logits.mean()) > 2.0


def test_find_circuit_recovers_the_planted_heads(planted: Any) -> None:
    pair, px, tok, px_c = planted
    c = vf.causal.find_circuit(
        pair, px, tok, corrupt_images=px_c, components=("heads", "neurons"),
        towers=("image", "text"), ranking="atp", ablation="mean", target=0.8, null=100,
        seed=0,
    )  # fmt: skip
    assert c.n_nodes == 2 * 4 + 2 * 32 + 2 + 16
    assert sorted(c.components) == sorted(PLANTED)
    assert c.size == 2 and c.sparsity == pytest.approx(2 / c.n_nodes)
    assert c.faithfulness > 0.95
    lo, hi = c.faithfulness_interval
    assert lo <= c.faithfulness <= hi and lo > 0.8
    assert c.completeness < 0.2  # ablating only the two heads removes the colour
    assert c.pvalue is not None and c.pvalue < 0.01
    assert c.null is not None and min(c.null.sparsity) > c.sparsity
    # one planted head alone is far from faithful
    f_by_k = dict(zip(c.k, c.curve, strict=True))
    assert f_by_k[1] < 0.5
    assert f_by_k[0] == 0.0 and f_by_k[c.n_nodes] == 1.0
    assert c.ablation == "mean" and c.ranking == "atp"


@pytest.mark.parametrize("ranking", ["exact"])
def test_other_rankings_find_it_too(planted: Any, ranking: str) -> None:
    pair, px, tok, px_c = planted
    c = vf.causal.find_circuit(
        pair, px, tok, corrupt_images=px_c, components=("heads",), towers=("image",),
        ranking=ranking, null=0,
    )  # fmt: skip
    assert sorted(c.components) == sorted(PLANTED)
    assert c.null is None and c.pvalue is None


def test_given_order_and_serial_agree(planted: Any) -> None:
    pair, px, tok, px_c = planted
    order = [("image", "neurons", 0, 3), *PLANTED]
    kw: dict[str, Any] = dict(
        corrupt_images=px_c, components=("heads", "neurons"), towers=("image",),
        ranking=order, null=0, grid=8,
    )  # fmt: skip
    b = vf.causal.find_circuit(pair, px, tok, **kw)
    s = vf.causal.find_circuit(pair, px, tok, method="serial", **kw)
    assert b.components == [("image", "neurons", 0, 3), *PLANTED]
    assert b.k == s.k
    assert max(abs(x - y) for x, y in zip(b.metric, s.metric, strict=True)) < 1e-5
    assert b.ranking == "given" and b.scores is None


# ---------------------------------------------------------------------- engine


def _evaluator(planted: Any, ablation: str, max_rows: int = 64) -> CircuitEvaluator:
    pair, px, tok, px_c = planted
    fams: list[Any] = [HeadFamily("image", 2, H), NeuronFamily("image", 2, 32)]
    fams += [HeadFamily("text", 1, 2), NeuronFamily("text", 1, 16)]
    return CircuitEvaluator(
        pair, {"image": px, "text": tok}, fams, MatchedScore(), "logits", ablation=ablation,
        resample={"image": px_c, "text": tok.roll(1, 0)}, max_rows=max_rows,
    )  # fmt: skip


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_batched_equals_serial(planted: Any, ablation: str) -> None:
    ev = _evaluator(planted, ablation, max_rows=20)  # ragged chunks of 3 variants
    n = len(ev.nodes)
    gen = torch.Generator().manual_seed(5)
    keep = torch.rand(9, n, generator=gen) < 0.5
    keep[0] = True
    keep[1] = False
    keep[2, : n // 2] = True  # image part all kept, text part random
    a, b = ev.evaluate(keep), ev.evaluate(keep, "serial")
    assert float((a.metric - b.metric).abs().max()) < 1e-5
    assert float((a.sim - b.sim).abs().max()) < 1e-5


def test_full_circuit_is_the_model_and_empty_ablates_everything(planted: Any) -> None:
    pair, px, tok, _ = planted
    ev = _evaluator(planted, "mean")
    n = len(ev.nodes)
    got = ev.evaluate(
        torch.stack([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    )
    with torch.no_grad():
        model = pair.run(images=px, texts=tok).logits
        # an independent all-ablated run: vf.Ablate(mode="mean") over the clean batch
        means = pair.run(images=px, texts=tok, cache=["*.attn.z", "*.mlp.post"]).cache
        ivs = [vf.Ablate(h, mode="mean", means=v.mean(0)) for h, v in means.items()]
        empty = pair.run(images=px, texts=tok, interventions=ivs).logits
    assert model is not None and empty is not None
    assert abs(float(got.metric[0]) - float(model.diagonal().mean())) < 1e-5
    assert abs(float(got.metric[1]) - float(empty.diagonal().mean())) < 1e-5


def test_ablation_modes_differ_as_expected(planted: Any) -> None:
    """Ablating the mover: mean -> every image the same (the average read-out); zero -> no
    read-out at all; resample -> the corrupt (rolled) image's colour, i.e. mismatched."""
    pair, px, tok, px_c = planted
    ev = {a: _evaluator(planted, a) for a in ("zero", "mean", "resample")}
    n = len(ev["mean"].nodes)
    keep = torch.ones(1, n, dtype=torch.bool)
    mover = ev["mean"].nodes.index(CircuitNode("image", "heads", *MOVER))
    keep[0, mover] = False
    got = {a: e.evaluate(keep) for a, e in ev.items()}
    m = {a: float(g.metric[0]) for a, g in got.items()}
    with torch.no_grad():
        logits = pair.run(images=px, texts=tok).logits
        rolled = pair.run(images=px_c, texts=tok).logits
    assert logits is not None and rolled is not None
    full = float(logits.diagonal().mean())
    # mean: all images get one embedding, so every row of the similarity is the same
    sim = got["mean"].sim[0]
    assert float((sim - sim[:1]).abs().max()) < 1e-4
    # resample from the corrupt inputs: exactly the model on the corrupt images here
    assert float((got["resample"].sim[0] - rolled.double()).abs().max()) < 1e-3
    # zero: no colour left, every image-caption logit the same
    assert float(got["zero"].sim[0].std()) < 1e-3
    assert m["resample"] < m["zero"] < m["mean"] < full - 1.0


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"components": ("heads", "resid")}, "components"),
        ({"towers": ("vision",)}, "towers"),
        ({"ranking": "greedy"}, "ranking"),
        ({"ablation": "noise"}, "ablation"),
        ({"target": 0.0}, "target"),
        ({"target": 1.5}, "target"),
        ({"null": 10}, "null"),
        ({"ranking": [("image", "heads", 9, 0)]}, "ranking"),
    ],
)
def test_bad_arguments_name_themselves(planted: Any, kw: dict[str, Any], match: str) -> None:
    pair, px, tok, px_c = planted
    with pytest.raises(InputError, match=match):
        vf.causal.find_circuit(pair, px, tok, corrupt_images=px_c, **kw)


def test_small_null_without_pvalue_and_other_errors(planted: Any) -> None:
    pair, px, tok, px_c = planted
    c = vf.causal.find_circuit(
        pair, px, tok, corrupt_images=px_c, towers=("image",), null=5, pvalue=False, grid=8
    )
    assert c.null is not None and c.null.pvalue is None and len(c.null.sparsity) == 5
    with pytest.raises(ShapeError, match="same shape"):
        vf.causal.find_circuit(pair, px, tok, corrupt_images=px_c[:3], null=0)
    with pytest.raises(InputError, match="corrupt"):
        vf.causal.find_circuit(pair, px, tok, ranking="atp", null=0)
    with pytest.raises(InputError, match=r"m\(model\).*m\(empty\)"):
        # the text tower's components barely move the score: no faithfulness denominator
        vf.causal.find_circuit(
            pair, px, tok, towers=("text",), ranking="exact", ablation="zero", null=0,
            tol=10.0,
        )  # fmt: skip
    pair.train()
    try:
        with pytest.raises(InputError, match="eval mode"):
            vf.causal.find_circuit(pair, px, tok, corrupt_images=px_c, null=0)
    finally:
        pair.eval()


def test_deterministic_under_seed(planted: Any) -> None:
    pair, px, tok, px_c = planted
    kw: dict[str, Any] = dict(corrupt_images=px_c, towers=("image",), null=20, grid=8)
    a = vf.causal.find_circuit(pair, px, tok, seed=3, **kw)
    b = vf.causal.find_circuit(pair, px, tok, seed=3, **kw)
    assert a.null is not None and b.null is not None
    assert a.null.curves == b.null.curves and a.faithfulness_interval == b.faithfulness_interval
    assert a.to_json() == b.to_json()
