"""The CPU training fast paths of the reference top-k encode against their twins.

Training never asks for the input's gradient, so the encode backward takes the
``b_dec`` gradient as one GEMV (``-grad_b_enc @ W_enc``) and the ``W_enc`` gradient
from the embedding-bag backward alone; the forward reuses its pre-activation buffer.
Each is checked against the path that gathers (x requires grad) and against dense
autograd, on ragged shapes, ties and repeated calls with changing batch sizes.
"""

from __future__ import annotations

import pytest
import torch

from tolerance import assert_close
from vlmfast.ops import reference as ref


def _params(n, d, f, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    w = torch.randn(f, d, generator=g, dtype=dtype) / d**0.5
    b_enc = torch.randn(f, generator=g, dtype=dtype) * 0.1
    b_dec = torch.randn(d, generator=g, dtype=dtype) * 0.1
    return x, w, b_enc, b_dec


def _grads(x, w, b_enc, b_dec, k, *, x_grad, dead=None, k_aux=0, seed=3):
    leaves = [
        w.clone().requires_grad_(),
        b_enc.clone().requires_grad_(),
        b_dec.clone().requires_grad_(),
    ]
    xin = x.clone().requires_grad_(x_grad)
    out = ref.topk_encode(xin, *leaves, k, dead_mask=dead, k_aux=k_aux)
    g = torch.Generator().manual_seed(seed)
    loss = (out.values * torch.randn(out.values.shape, generator=g, dtype=x.dtype)).sum()
    if out.aux_values is not None:
        loss = (
            loss
            + (out.aux_values * torch.randn(out.aux_values.shape, generator=g, dtype=x.dtype)).sum()
        )
    loss.backward()
    return out, [t.grad for t in leaves]


@pytest.mark.parametrize(
    ("n", "d", "f", "k"), [(1, 3, 5, 1), (7, 13, 37, 4), (33, 9, 50, 17), (5, 4, 6, 6)]
)
def test_no_input_grad_path_matches_gather_path(n, d, f, k):
    x, w, b_enc, b_dec = _params(n, d, f)
    dead = torch.zeros(f, dtype=torch.bool)
    dead[1::2] = True
    for dm, k_aux in ((None, 0), (dead, 3)):
        fast, g_fast = _grads(x, w, b_enc, b_dec, k, x_grad=False, dead=dm, k_aux=k_aux)
        slow, g_slow = _grads(x, w, b_enc, b_dec, k, x_grad=True, dead=dm, k_aux=k_aux)
        torch.testing.assert_close(fast.indices, slow.indices)
        for a, b in zip(g_fast, g_slow):
            assert_close(a, b)


def test_no_input_grad_path_matches_dense_autograd_with_ties():
    x, w, b_enc, b_dec = _params(6, 4, 12, dtype=torch.float64)
    w[6:] = w[:6]  # duplicated latents: tied pre-activations at the boundary
    b_enc[6:] = b_enc[:6]
    out, (gw, gbe, gbd) = _grads(x, w, b_enc, b_dec, 3, x_grad=False)
    leaves = [t.clone().requires_grad_() for t in (w, b_enc, b_dec)]
    pre = (x - leaves[2]) @ leaves[0].t() + leaves[1]
    dense = torch.zeros_like(pre).scatter(1, out.indices, 1.0)
    vals = torch.relu(pre.gather(1, out.indices))
    g = torch.Generator().manual_seed(3)
    (vals * torch.randn(vals.shape, generator=g, dtype=x.dtype)).sum().backward()
    assert dense.sum() == 6 * 3
    for a, b in zip((gw, gbe, gbd), leaves):
        assert_close(a, b.grad)


@pytest.mark.parametrize(("n", "k", "f", "d"), [(1, 1, 3, 2), (9, 4, 7, 5), (17, 6, 40, 3)])
def test_scatter_grad_matches_scatter_rows(n, k, f, d):
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, f, (n, k), generator=g)
    idx[0, :] = 0  # repeated index within a row
    coeffs = torch.randn(n, k, generator=g)
    dense = torch.randn(n, d, generator=g)
    got = ref._scatter_grad(idx, f, coeffs, dense)
    assert got.shape == (f, d)
    assert_close(got, ref.scatter_rows(idx, coeffs, dense, f))


def test_preact_buffer_reuse_keeps_results_exact():
    x, w, b_enc, b_dec = _params(8, 6, 20, dtype=torch.float32)
    first = ref.topk_encode(x, w, b_enc, b_dec, 3)
    other = ref.topk_encode(x[:5] * 2, w, b_enc, b_dec, 3)  # another batch size: new buffer
    again = ref.topk_encode(x, w, b_enc, b_dec, 3)
    torch.testing.assert_close(first.values, again.values, rtol=0, atol=0)
    torch.testing.assert_close(first.indices, again.indices, rtol=0, atol=0)
    plain = ref.encoder_preacts(x[:5] * 2, w, b_enc, b_dec)
    expected = ref.topk_lowest_index(plain, 3)
    torch.testing.assert_close(other.indices, expected[1])
    assert_close(other.values, torch.relu(expected[0]))
    buf = ref._PREACT_SCRATCH.get(w)
    assert buf is not None and buf.shape == (8, 20)


@pytest.mark.parametrize(
    ("n", "m", "k"), [(1, 1, 1), (9, 7, 3), (40, 33, 32), (17, 50, 50), (0, 5, 2)]
)
def test_topk_lowest_index_matches_a_stable_sort_with_many_ties(n, m, k):
    g = torch.Generator().manual_seed(n + m)
    for scores in (
        torch.randint(0, 4, (n, m), generator=g).float(),  # ties everywhere
        torch.randn(n, m, generator=g),  # no ties: the fast path
    ):
        vals, idx = ref.topk_lowest_index(scores, k)
        s_vals, s_idx = torch.sort(scores, dim=1, descending=True, stable=True)
        torch.testing.assert_close(idx, s_idx[:, :k], rtol=0, atol=0)
        torch.testing.assert_close(vals, s_vals[:, :k], rtol=0, atol=0)
