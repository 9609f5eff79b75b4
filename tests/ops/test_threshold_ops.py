"""Threshold-shaped SAE encodes (``vlmfast.ops.threshold``) against dense torch maths:
masks and compaction, ties at the threshold, all-below rows, BatchTopK's batch selection
and the sparse backward."""

from __future__ import annotations

import pytest
import torch

from tolerance import assert_close
from vlmfast.errors import InputError, ShapeError
from vlmfast.ops import flat_codes as fc
from vlmfast.ops import sparse_decode
from vlmfast.ops import threshold as th


def _inputs(n, d, f, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(f, d, generator=g) / d**0.5
    return x, w, torch.randn(f, generator=g) * 0.1, torch.randn(d, generator=g) * 0.1


def _dense(x, w, b_enc, b_dec, thr):
    pre = (x - b_dec) @ w.t() + b_enc
    return torch.where(pre > thr, torch.relu(pre), torch.zeros(()))


def _densify(values, indices, f):
    return torch.zeros(values.shape[0], f).scatter_add_(1, indices, values.float())


@pytest.mark.parametrize(("n", "d", "f"), [(1, 3, 5), (7, 13, 29), (33, 8, 64)])
@pytest.mark.parametrize("per_latent", [False, True])
def test_threshold_encode_matches_dense_on_ragged_shapes(n, d, f, per_latent):
    x, w, b_enc, b_dec = _inputs(n, d, f)
    thr = torch.rand(f) * 0.5 if per_latent else torch.tensor(0.3)
    out = th.threshold_encode(x, w, b_enc, b_dec, thr, backend="reference")
    assert out.values.shape == out.indices.shape and out.values.shape[0] == n
    assert_close(_densify(out.values, out.indices, f), _dense(x, w, b_enc, b_dec, thr))
    for row in out.indices:  # padding indices are distinct inactive latents
        assert row.unique().numel() == row.numel()
    active = out.values > 0
    # active slots come first, by value descending
    assert bool((active[:, :-1] | ~active[:, 1:]).all())
    v = out.values.masked_fill(~active, float("-inf"))
    assert bool((v[:, :-1] >= v[:, 1:]).all())


def test_ties_at_the_threshold_are_off_and_equal_values_order_by_index():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 1.0]])
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    b = torch.zeros(4)
    thr = torch.tensor([1.0, 0.5, 0.5, 0.5])
    out = th.threshold_encode(x, w, b, torch.zeros(2), thr, backend="reference")
    # row 0: pre [1, 1, 0, 1]: latent 0 sits on its threshold (off); 1 and 3 tie -> 1 first
    assert out.indices[0, :2].tolist() == [1, 3] and out.values[0, :2].tolist() == [1.0, 1.0]
    assert out.values[1].eq(0).all()  # row 1: all below -> only padding
    assert out.indices[2, :3].tolist() == [0, 1, 3] and out.indices[2, 3].item() == 2
    assert out.values.shape[1] == 4


def test_all_rows_below_threshold_give_one_zero_slot_and_decode_to_zero():
    x, w, b_enc, b_dec = _inputs(5, 4, 9)
    out = th.threshold_encode(x, w, b_enc, b_dec, torch.tensor(1e9), backend="reference")
    assert out.values.shape == (5, 1) and out.values.eq(0).all()
    assert sparse_decode(out.values, out.indices, w).eq(0).all()
    empty = th.threshold_encode(x[:0], w, b_enc, b_dec, torch.tensor(0.0), backend="reference")
    assert empty.values.shape == (0, 1)


def test_threshold_shape_is_checked():
    x, w, b_enc, b_dec = _inputs(3, 4, 6)
    with pytest.raises(ShapeError, match=r"threshold must be 0-dim or \[6\]"):
        th.threshold_encode(x, w, b_enc, b_dec, torch.zeros(5), backend="reference")


def test_sparse_backward_matches_dense_autograd():
    x, w, b_enc, b_dec = _inputs(6, 5, 11, seed=3)
    thr = torch.rand(11) * 0.3
    w_dec = torch.randn(11, 5)
    target = torch.randn(6, 5)
    leaves = [t.clone().requires_grad_() for t in (x, w, b_enc, b_dec)]
    out = th.threshold_encode(*leaves, thr, backend="reference")
    (sparse_decode(out.values, out.indices, w_dec) * target).sum().backward()
    dense_leaves = [t.clone().requires_grad_() for t in (x, w, b_enc, b_dec)]
    ((_dense(*dense_leaves, thr) @ w_dec) * target).sum().backward()
    for a, b in zip(leaves, dense_leaves):
        assert_close(a.grad, b.grad)


@pytest.mark.parametrize(("n", "f", "k"), [(9, 17, 3), (4, 40, 10), (1, 6, 6), (16, 8, 1)])
def test_batch_topk_select_takes_the_k_n_largest(n, f, k):
    g = torch.Generator().manual_seed(n * f + k)
    pre = torch.randn(n, f, generator=g)
    if n > 1:
        pre[0] += 10.0  # one row wins everything: the per-row candidates fall short
    codes = fc.batch_topk_select(pre, k)
    assert codes.values.numel() == k * n
    expected = torch.zeros(n, f, dtype=torch.bool)
    expected.view(-1)[pre.flatten().topk(k * n).indices] = True
    got = torch.zeros(n, f, dtype=torch.bool)
    got[codes.rows, codes.indices] = True
    assert torch.equal(got, expected)
    assert torch.equal(codes.values, pre[codes.rows, codes.indices])
    # row-major, latents ascending in a row; offsets point at each row's first entry
    key = codes.rows * f + codes.indices
    assert bool((key[1:] > key[:-1]).all())
    counts = torch.bincount(codes.rows, minlength=n)
    assert torch.equal(codes.offsets, torch.cumsum(counts, 0) - counts)


def test_batch_topk_select_rejects_bad_k():
    with pytest.raises(InputError, match="k=5"):
        fc.batch_topk_select(torch.zeros(2, 4), 5)


def test_flat_codes_backward_and_decode_match_dense_autograd():
    x, w, b_enc, b_dec = _inputs(7, 5, 13, seed=5)
    mask = torch.rand(7, 13, generator=torch.Generator().manual_seed(2)) < 0.3
    mask[2] = False  # an empty row
    w_dec = torch.randn(13, 5)
    target = torch.randn(7, 5)
    leaves = [t.clone().requires_grad_() for t in (x, w, b_enc, b_dec)]
    with torch.no_grad():
        pre = (x - b_dec) @ w.t() + b_enc
    sel = fc.mask_select(pre, mask)
    aux_idx = torch.randint(0, 13, (7, 2), generator=torch.Generator().manual_seed(4))
    aux_pre = pre.gather(1, aux_idx)
    parts = [(sel.values, sel.indices, sel.offsets),
             (aux_pre.flatten(), aux_idx.flatten(), torch.arange(7) * 2)]  # fmt: skip
    main, aux = fc.sparse_preacts(*leaves, parts)
    recon, aux_recon = fc.flat_decode_many(
        [(main, sel.indices, sel.offsets), (aux, aux_idx.flatten(), torch.arange(7) * 2)], w_dec
    )
    ((recon * target).sum() + (aux_recon * target.flip(0)).sum()).backward()
    dense_leaves = [t.clone().requires_grad_() for t in (x, w, b_enc, b_dec)]
    xd, wd, bed, bdd = dense_leaves
    dense_pre = (xd - bdd) @ wd.t() + bed
    z = dense_pre * mask
    z_aux = torch.zeros(7, 13).scatter_add(1, aux_idx, dense_pre.gather(1, aux_idx))
    ((z @ w_dec * target).sum() + (z_aux @ w_dec * target.flip(0)).sum()).backward()
    assert_close(recon.detach(), (z @ w_dec).detach())
    for a, b in zip(leaves, dense_leaves):
        assert_close(a.grad, b.grad)
