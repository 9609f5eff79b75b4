"""A published tracing finding, reproduced on a hand-built text tower (Basu et al., ICLR'24).

Basu et al. found that the CLIP text encoder of Stable Diffusion has one causal state for
a subject: the layer-0 self-attention output at the *last subject token*. This test plants
exactly that mechanism by hand and checks that tracing localises it:

    tokens   SOT  s1  s2  f1  f2  EOT          (subject = s1 s2, last subject token at 2)
    layer 0  the query at position 2 attends to 1 and 2 and writes the subject identity
             w_i into the residual there; every other query attends to SOT (writes 0)
    layer 1  the query at EOT attends to position 2 and copies w_i into o_i
    head     EOT pooling; the projection maps o_i to image i's embedding direction

All directions are orthonormal and orthogonal to the all-ones vector, so LayerNorm's
centring leaves them alone; positions carry a large norm so LayerNorm's scale barely
depends on the content. MLPs are zero.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from vlmfast.causal.tracing import trace
from vlmfast.models.config import PairConfig, TowerConfig
from vlmfast.models.pair import HookedPair

D, DH, T, B = 32, 16, 6, 3
A, BETA, G = 10.0, 40.0, 2.0
SOT, FILLERS, EOT = 1, (8, 9), 10
LAST_SUBJECT = 2


def _directions(n: int, seed: int) -> torch.Tensor:
    """``n`` orthonormal directions [n, D], each orthogonal to the all-ones vector."""
    m = torch.randn(D, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    m = m - m.mean(dim=0, keepdim=True)
    q, _ = torch.linalg.qr(m)
    return q.T.float()


def _planted_pair() -> tuple[HookedPair, torch.Tensor, torch.Tensor]:
    image = TowerConfig(
        modality="image", width=32, layers=1, heads=2, head_dim=16, mlp_width=32,
        pre_norm=True, pool="cls", embed_dim=16, image_size=16, patch_size=8,
    )  # fmt: skip
    text = TowerConfig(
        modality="text", width=D, layers=2, heads=1, head_dim=DH, mlp_width=4, pool="eot",
        embed_dim=16, vocab_size=EOT + 1, context_length=T, causal=True,
    )  # fmt: skip
    torch.manual_seed(0)
    pair = HookedPair(PairConfig(image=image, text=text, name="planted-basu")).eval()
    dirs = _directions(22, seed=1)
    pos = dirs[:T]  # p_t
    subj = dirs[T : T + 2 * B].view(B, 2, D)  # (a_i, b_i): the two subject tokens of row i
    filler, sot_c, eot_c = dirs[12:14], dirs[14], dirs[15]
    w, o = dirs[16:19], dirs[19:22]  # what layer 0 writes, what layer 1 writes
    e = torch.eye(DH)
    sqrt_d = math.sqrt(D)
    px = torch.randn(B, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        img = pair.encode_image(px)  # random image tower; text aligns to it by construction
        t = pair.text
        t.token_embed.zero_()
        t.token_embed[SOT] = sot_c
        t.token_embed[EOT] = eot_c
        for i in range(B):
            t.token_embed[2 + 2 * i] = subj[i, 0]
            t.token_embed[3 + 2 * i] = subj[i, 1]
        for k, f in enumerate(FILLERS):
            t.token_embed[f] = filler[k]
        t.pos_embed.copy_(A * pos)
        keys = sum(torch.outer(e[p], pos[p]) for p in range(T)) / sqrt_d

        def queries(target: dict[int, list[int]]) -> torch.Tensor:
            rows = [torch.outer(e[target.get(p, [0])].sum(0), pos[p]) for p in range(T)]
            return BETA * sum(rows) / sqrt_d

        gamma = A / sqrt_d  # undoes LayerNorm's 1/scale on the content directions
        for layer, block in enumerate(t.blocks):
            attn = block.attn
            if layer == 0:
                wq = queries({LAST_SUBJECT: [1, 2]})
                wv = gamma * sum(torch.outer(e[8 + i], subj[i, 0] + subj[i, 1]) for i in range(B))
                wo = G * sum(torch.outer(w[i], e[8 + i]) for i in range(B))
            else:
                wq = queries({T - 1: [LAST_SUBJECT]})
                wv = gamma * sum(torch.outer(e[8 + i], w[i]) for i in range(B))
                wo = 4.0 * sum(torch.outer(o[i], e[8 + i]) for i in range(B))
            attn.in_proj_weight.copy_(torch.cat([wq, keys, wv]))
            attn.in_proj_bias.zero_()
            attn.out_weight.copy_(wo)
            attn.out_bias.zero_()
            block.mlp.fc1_weight.zero_()
            block.mlp.fc2_weight.zero_()
        baseline = torch.randn(16, generator=torch.Generator().manual_seed(3))
        proj = sum(torch.outer(img[i] / img[i].norm(), o[i]) for i in range(B))
        t.proj_weight.copy_(proj + torch.outer(baseline / baseline.norm(), eot_c))
    tok = torch.zeros(B, T, dtype=torch.long)
    for i in range(B):
        tok[i] = torch.tensor([SOT, 2 + 2 * i, 3 + 2 * i, FILLERS[0], FILLERS[1], EOT])
    return pair, px, tok


@pytest.fixture(scope="module")
def planted() -> tuple[HookedPair, torch.Tensor, torch.Tensor]:
    return _planted_pair()


@pytest.mark.parametrize(("noise", "floor"), [("zero", 0.9), ("3x", 0.7)])
def test_tracing_finds_layer0_attention_at_last_subject_token(
    planted: Any, noise: str, floor: float
) -> None:
    """3x noise also inflates LayerNorm's scale at the restored token, so it recovers less."""
    pair, px, tok = planted
    res = trace(
        pair, px, tok, "text", noise=noise, samples=5, positions=[1, 2],
        kinds=("resid", "attn_out", "mlp_out"), null=200,
    )  # fmt: skip
    assert res.clean - res.corrupt > 1.0  # the corruption removes the subject
    attn0 = res.recovery["attn_out"][0]
    assert int(attn0.argmax()) == LAST_SUBJECT
    assert float(attn0[LAST_SUBJECT]) > floor
    others = [p for p in range(T) if p not in (LAST_SUBJECT,)]
    assert float(attn0[others].abs().max()) < 0.05
    # the residual stream after layer 0 carries it only at the last subject token
    resid0 = res.recovery["resid"][0]
    assert int(resid0.argmax()) == LAST_SUBJECT and float(resid0[LAST_SUBJECT]) > floor
    assert float(resid0[[0, 1, 3, 4]].abs().max()) < 0.05
    # MLPs are zero: restoring them does nothing anywhere
    assert float(res.recovery["mlp_out"].abs().max()) < 1e-4
    # and the null flags exactly that cell at layer 0 (6 positions: p >= 1/7 otherwise)
    assert res.null is not None
    p0 = res.null["attn_out"].p_value[0]
    assert float(p0[LAST_SUBJECT]) < 0.25
    assert float(p0[LAST_SUBJECT]) == float(p0.min())


def test_planted_pair_is_what_the_docstring_says(planted: Any) -> None:
    pair, px, tok = planted
    hooks = ["text.blocks.0.attn.pattern", "text.blocks.1.attn.pattern"]
    with torch.no_grad():
        out = pair.run(images=px, texts=tok, cache=hooks)
    p0, p1 = out.cache[hooks[0]][:, 0], out.cache[hooks[1]][:, 0]
    assert float(p0[:, LAST_SUBJECT, 1:3].sum(-1).min()) > 0.99
    assert float(p0[:, 4, 0].min()) > 0.99
    assert float(p1[:, T - 1, LAST_SUBJECT].min()) > 0.99
    logits = out.logits
    assert logits is not None
    assert bool((logits.argmax(-1) == torch.arange(B)).all())
