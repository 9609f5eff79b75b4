"""The torch reference ops (the CPU fast path) against naive dense autograd."""

from __future__ import annotations

import pytest
import torch

from tolerance import assert_close
from vlmfast.ops import reference as ref


def naive_encode(x, w_enc, b_enc, b_dec, k, dead_mask=None, k_aux=0):
    """Dense pre-activations, stable sort: the definition of the selection."""
    pre = (x - b_dec) @ w_enc.t() + b_enc
    order = torch.sort(pre.detach(), dim=1, descending=True, stable=True).indices[:, :k]
    values = torch.relu(pre.gather(1, order))
    aux = None
    if k_aux:
        masked = pre.detach().masked_fill(~dead_mask, float("-inf"))
        k_eff = min(k_aux, int(dead_mask.sum()))
        aux_idx = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k_eff]
        aux = (torch.relu(pre.gather(1, aux_idx)), aux_idx)
    return values, order, aux


def dense_decode(values, indices, w_dec):
    dense = torch.zeros(values.shape[0], w_dec.shape[0], dtype=values.dtype)
    dense = dense.scatter_add(1, indices, values)
    return dense @ w_dec


def _params(n, d, f, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(f, d, generator=g, dtype=torch.float64) / d**0.5
    b_enc = torch.randn(f, generator=g, dtype=torch.float64) * 0.1
    b_dec = torch.randn(d, generator=g, dtype=torch.float64) * 0.1
    return x, w, b_enc, b_dec


@pytest.mark.parametrize(
    ("n", "d", "f", "k"), [(1, 3, 5, 1), (7, 13, 37, 4), (16, 24, 64, 64), (33, 9, 50, 17)]
)
def test_topk_encode_matches_dense_with_grads(n, d, f, k):
    x, w, b_enc, b_dec = _params(n, d, f)
    dead = torch.zeros(f, dtype=torch.bool)
    dead[::3] = True
    k_aux = min(5, f)
    leaves = [t.clone().requires_grad_() for t in (x, w, b_enc, b_dec)]
    out = ref.topk_encode(*leaves, k, dead_mask=dead, k_aux=k_aux)
    leaves2 = [t.clone().requires_grad_() for t in (x, w, b_enc, b_dec)]
    v2, i2, (av2, ai2) = naive_encode(*leaves2, k, dead, k_aux)
    torch.testing.assert_close(out.indices, i2)
    torch.testing.assert_close(out.values, v2)
    torch.testing.assert_close(out.aux_indices, ai2)
    torch.testing.assert_close(out.aux_values, av2)
    g = torch.Generator().manual_seed(5)
    gv = torch.randn(v2.shape, generator=g, dtype=torch.float64)
    ga = torch.randn(av2.shape, generator=g, dtype=torch.float64)
    ((out.values * gv).sum() + (out.aux_values * ga).sum()).backward()
    ((v2 * gv).sum() + (av2 * ga).sum()).backward()
    for name, a, b in zip(("x", "W_enc", "b_enc", "b_dec"), leaves, leaves2):
        torch.testing.assert_close(a.grad, b.grad, msg=f"grad of {name}")


def test_ties_go_to_lowest_index():
    scores = torch.tensor(
        [[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0], [5.0, 1.0, 5.0, 1.0, 1.0]]
    )
    vals, idx = ref.topk_lowest_index(scores, 2)
    assert idx.tolist() == [[1, 2], [0, 1], [0, 2]]
    vals, idx = ref.topk_lowest_index(scores, 4)
    assert idx.tolist() == [[1, 2, 4, 3], [0, 1, 2, 3], [0, 2, 1, 3]]
    assert vals[2].tolist() == [5.0, 5.0, 1.0, 1.0]


def test_k_equal_width_and_errors():
    scores = torch.randn(4, 6)
    _vals, idx = ref.topk_lowest_index(scores, 6)
    assert sorted(idx[0].tolist()) == list(range(6))
    with pytest.raises(ValueError):
        ref.topk_lowest_index(scores, 7)


@pytest.mark.parametrize(("n", "k", "f", "d"), [(1, 1, 3, 2), (9, 4, 11, 7), (20, 16, 16, 5)])
def test_sparse_decode_and_helpers(n, k, f, d):
    g = torch.Generator().manual_seed(1)
    idx = torch.stack([torch.randperm(f, generator=g)[:k] for _ in range(n)])
    idx[0, :] = torch.arange(k)  # repeated latents across rows
    vals = torch.randn(n, k, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(f, d, generator=g, dtype=torch.float64, requires_grad=True)
    out = ref.sparse_decode(vals, idx, w)
    vals2, w2 = vals.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    out2 = dense_decode(vals2, idx, w2)
    torch.testing.assert_close(out, out2)
    go = torch.randn(n, d, generator=g, dtype=torch.float64)
    out.backward(go)
    out2.backward(go)
    torch.testing.assert_close(vals.grad, vals2.grad)
    torch.testing.assert_close(w.grad, w2.grad)
    # the helpers compute in float32 whatever the inputs: compared at float32's precision
    assert_close(ref.gather_dot(go, idx, w.detach()).double(), vals2.grad, dtype=torch.float32)
    assert_close(ref.scatter_rows(idx, vals.detach(), go, f).double(), w2.grad, dtype=torch.float32)


def test_bf16_compute_dtype_keeps_fp32_outputs():
    x, w, b_enc, b_dec = (t.float() for t in _params(8, 16, 32))
    out = ref.topk_encode(x, w, b_enc, b_dec, 4, compute_dtype=torch.bfloat16)
    assert out.values.dtype == torch.float32
    exact = ref.topk_encode(x, w, b_enc, b_dec, 4)
    overlap = (out.indices[:, :, None] == exact.indices[:, None, :]).any(-1).float().mean()
    assert overlap > 0.8
