"""BatchTopK's batch selection and the flat-code backward without an input gradient,
against their twins: the stable-sort specification (ragged shapes, ties everywhere, the
sampled path and its fallback) and the gathering backward / dense autograd."""

from __future__ import annotations

import pytest
import torch

from tolerance import assert_close
from vlmfast.ops import batch_select as bs
from vlmfast.ops import flat_codes as fc
from vlmfast.ops import reference as ref


def _check(pre: torch.Tensor, k_total: int) -> None:
    got = bs.batch_topk_positions(pre, k_total)
    want = bs.batch_topk_positions_reference(pre, k_total)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("n", "m", "k"), [(1, 1, 1), (3, 7, 2), (13, 29, 29), (5, 16, 1), (0, 4, 2)]
)
def test_small_matrices_match_the_stable_sort(n, m, k):
    g = torch.Generator().manual_seed(n * m + k)
    _check(torch.randn(n, m, generator=g), k * n)
    _check(torch.randint(0, 3, (n, m), generator=g).float(), k * n)  # ties everywhere


@pytest.mark.parametrize(("n", "m", "k"), [(300, 1024, 4), (257, 1000, 3), (97, 2048, 16)])
def test_sampled_path_matches_the_stable_sort_with_and_without_ties(n, m, k):
    g = torch.Generator().manual_seed(n + m)
    pre = torch.randn(n, m, generator=g)
    pre[0] += 3.0  # one row takes a large share
    _check(pre, k * n)
    _check(torch.randint(-2, 6, (n, m), generator=g).float(), k * n)
    _check(pre.clamp(max=1.0), k * n)  # many entries tied at the top


def test_a_misleading_sample_falls_back_to_the_exact_selection():
    n, m, k = 400, 1000, 4  # 400k entries: stride 3
    pre = torch.rand(n, m, generator=torch.Generator().manual_seed(0))
    pre.view(-1)[::3] += 10.0  # the sample sees only large values: too few clear its cut
    _check(pre, k * n)


@pytest.mark.parametrize("parts", [1, 2])
@pytest.mark.parametrize(("n", "d", "f"), [(1, 3, 5), (7, 5, 13), (33, 9, 40)])
def test_sparse_preacts_without_input_grad_match_the_gather_path(parts, n, d, f):
    g = torch.Generator().manual_seed(n + f)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(f, d, generator=g, dtype=torch.float64)
    b_enc = torch.randn(f, generator=g, dtype=torch.float64)
    b_dec = torch.randn(d, generator=g, dtype=torch.float64)
    pre = ((x - b_dec) @ w.t() + b_enc).detach()
    mask = torch.rand(n, f, generator=g) < 0.3
    mask[0] = False  # an empty row
    sel = fc.mask_select(pre, mask)
    sels = [(sel.values, sel.indices, sel.offsets)]
    if parts == 2:
        idx = torch.randint(0, f, (n, 2), generator=g)
        sels.append((pre.gather(1, idx).flatten(), idx.flatten(), torch.arange(n) * 2))
    coeff = [torch.randn(p[0].shape, generator=g, dtype=torch.float64) for p in sels]
    grads = []
    for x_grad in (False, True):
        leaves = [t.clone().requires_grad_() for t in (w, b_enc, b_dec)]
        outs = fc.sparse_preacts(x.clone().requires_grad_(x_grad), *leaves, sels)
        sum((o * c).sum() for o, c in zip(outs, coeff)).backward()
        grads.append([t.grad for t in leaves])
    dense = [t.clone().requires_grad_() for t in (w, b_enc, b_dec)]
    dense_pre = (x - dense[2]) @ dense[0].t() + dense[1]
    loss = (dense_pre[sel.rows, sel.indices] * coeff[0]).sum()
    if parts == 2:
        loss = loss + (dense_pre.gather(1, idx).flatten() * coeff[1]).sum()
    loss.backward()
    for fast, slow, leaf in zip(*grads, dense):
        assert_close(fast, slow)
        assert_close(fast, leaf.grad)


def test_scatter_entries_matches_scatter_rows():
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 6, (5, 3), generator=g)
    idx[0] = 2  # a repeated latent within a row
    coeffs, dense = torch.randn(5, 3, generator=g), torch.randn(5, 4, generator=g)
    rows = torch.arange(5).repeat_interleave(3)
    got = ref.scatter_entries(idx.flatten(), rows, coeffs.flatten(), dense, 6)
    assert_close(got, ref.scatter_rows(idx, coeffs, dense, 6))


def test_reused_preacts_match_a_fresh_gemm_across_batch_sizes():
    g = torch.Generator().manual_seed(2)
    w, b_enc, b_dec = torch.randn(20, 6, generator=g), torch.randn(20, generator=g), torch.zeros(6)
    for n in (8, 5, 8):
        x = torch.randn(n, 6, generator=g)
        got = ref.reused_preacts(x, w, b_enc, b_dec).clone()
        assert_close(got, ref.encoder_preacts(x, w, b_enc, b_dec))
