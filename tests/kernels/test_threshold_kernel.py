"""The fused threshold encode kernel (``vlmfast._kernels.sae_threshold_encode``) against
its torch reference: ragged shapes, ties at the threshold, all-below rows, and the
whole ``threshold_encode`` op (codes, decode, gradients) through both backends.

CPU runs use Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py) on
tiny fp32 shapes.
"""

from __future__ import annotations

import pytest
import torch

from tolerance import assert_close
from vlmfast.ops import dispatch, sparse_decode
from vlmfast.ops import threshold as th

pytestmark = pytest.mark.skipif(
    not dispatch.triton_importable()
    or not (torch.cuda.is_available() or dispatch.interpret_mode()),
    reason="needs triton with CUDA or TRITON_INTERPRET=1",
)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(n, d, f, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(f, d, generator=g) / d**0.5
    b_enc = torch.randn(f, generator=g) * 0.1
    b_dec = torch.randn(d, generator=g) * 0.1
    return [t.to(_device()) for t in (x, w, b_enc, b_dec)]


def _masked(tensors, thr, backend):
    return th.masked_preacts(*tensors, thr.to(_device()), backend=backend)


@pytest.mark.parametrize(("n", "d", "f"), [(1, 1, 1), (5, 7, 19), (17, 33, 40)])
def test_kernel_matches_reference_on_ragged_shapes(n, d, f):
    tensors = _inputs(n, d, f, seed=n + d)
    thr = torch.rand(f) * 0.4 - 0.1
    ref = _masked(tensors, thr, "reference")
    got = _masked(tensors, thr, "triton")
    mask = ref > float("-inf")
    # away from the threshold the masks agree exactly; values to rounding
    near = (ref - thr.to(ref.device)).abs() < 1e-5
    assert torch.equal(mask | near, (got > float("-inf")) | near)
    assert_close(got[mask & ~near], ref[mask & ~near])


def test_ties_at_the_threshold_and_all_below_rows_are_exact():
    # small integers: every pre-activation is exact in both backends
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-2, 3, (6, 5), generator=g).float()
    x[3] = 0.0  # row 3: pre = b_enc, all below the thresholds
    w = torch.randint(-1, 2, (12, 5), generator=g).float()
    w[7] = w[2]  # two latents with identical pre-activations
    b_enc = torch.randint(-1, 2, (12,), generator=g).float()
    b_enc[7] = b_enc[2]
    thr = b_enc + 1.0  # integer thresholds: pre == threshold happens, and row 3 is below
    tensors = [t.to(_device()) for t in (x, w, b_enc, torch.zeros(5))]
    ref = _masked(tensors, thr, "reference")
    got = _masked(tensors, thr, "triton")
    assert torch.equal(got, ref)
    pre = x @ w.t() + b_enc
    assert bool((pre == thr).any()), "the case must contain a tie"
    assert torch.equal(ref.cpu() > float("-inf"), pre > thr)
    assert got[3].eq(float("-inf")).all()


def test_op_codes_decode_and_gradients_agree_across_backends():
    base = _inputs(9, 6, 21, seed=4)
    thr = (torch.rand(21) * 0.3).to(_device())
    w_dec = torch.randn(21, 6).to(_device())
    target = torch.randn(9, 6).to(_device())
    results = []
    for backend in ("reference", "triton"):
        leaves = [t.clone().requires_grad_() for t in base]
        out = th.threshold_encode(*leaves, thr, backend=backend)
        recon = sparse_decode(out.values, out.indices, w_dec, backend="reference")
        (recon * target).sum().backward()
        results.append((out, recon.detach(), [t.grad for t in leaves]))
    (ref, ref_recon, ref_grads), (got, got_recon, got_grads) = results
    dense = [
        torch.zeros(9, 21, device=_device()).scatter_add_(1, o.indices, o.values.detach())
        for o in (ref, got)
    ]
    assert_close(dense[1], dense[0])
    assert_close(got_recon, ref_recon)
    for a, b in zip(got_grads, ref_grads):
        assert_close(a, b)
