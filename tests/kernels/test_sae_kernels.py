"""Triton SAE kernels against the torch reference: outputs and every gradient.

CPU runs use Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py) with
tiny fp32 shapes; the ``gpu`` tests run the full dtype matrix where CUDA exists.
"""

from __future__ import annotations

import pytest
import torch

from tolerance import assert_close
from vlmfast.ops import dispatch, reference

pytestmark = pytest.mark.skipif(
    not dispatch.triton_importable()
    or not (torch.cuda.is_available() or dispatch.interpret_mode()),
    reason="needs triton with CUDA or TRITON_INTERPRET=1",
)

# (rtol, atol) per dtype for values and gradients on GPU (tf32 off for fp32)
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.bfloat16: (2e-2, 2e-2)}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(n, d, f, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(f, d, generator=g) / d**0.5
    b_enc = torch.randn(f, generator=g) * 0.1
    b_dec = torch.randn(d, generator=g) * 0.1
    return [t.to(device=device, dtype=dtype) for t in (x, w, b_enc, b_dec)]


def _run(backend, tensors, k, dead, k_aux, seed=1):
    leaves = [t.clone().requires_grad_() for t in tensors]
    x, w, b_enc, b_dec = leaves
    from vlmfast import ops

    enc = ops.topk_encode(x, w, b_enc, b_dec, k, dead_mask=dead, k_aux=k_aux, backend=backend)
    w_dec = (w.detach().clone() * 1.3).requires_grad_()
    recon = ops.sparse_decode(enc.values, enc.indices, w_dec, backend=backend)
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(recon.shape, generator=g).to(recon.device)
    loss = (recon * target).sum()
    if enc.aux_values is not None:
        aux = ops.sparse_decode(enc.aux_values, enc.aux_indices, w_dec, backend=backend)
        loss = loss + (aux * target.flip(0)).sum()
    loss.backward()
    grads = {
        "x": x.grad,
        "W_enc": w.grad,
        "b_enc": b_enc.grad,
        "b_dec": b_dec.grad,
        "W_dec": w_dec.grad,
    }
    return enc, recon.detach(), grads


CASES = [
    # n, d, f, k, k_aux: ragged d and n, k = 1, k = n_latents, aux wider than k
    (5, 17, 70, 3, 6),
    (16, 33, 64, 1, 0),
    (9, 20, 40, 40, 0),
    (3, 48, 130, 16, 24),
]


@pytest.mark.parametrize(("n", "d", "f", "k", "k_aux"), CASES, ids=lambda v: str(v))
def test_encode_decode_parity_with_grads(n, d, f, k, k_aux):
    tensors = _inputs(n, d, f)
    dead = None
    if k_aux:
        dead = torch.zeros(f, dtype=torch.bool)
        dead[1::3] = True
    enc_t, rec_t, g_t = _run("triton", tensors, k, dead, k_aux)
    enc_r, rec_r, g_r = _run("reference", tensors, k, dead, k_aux)
    assert torch.equal(enc_t.indices, enc_r.indices)
    assert_close(enc_t.values, enc_r.values)
    if k_aux:
        assert torch.equal(enc_t.aux_indices, enc_r.aux_indices)
        assert_close(enc_t.aux_values, enc_r.aux_values)
    assert_close(rec_t, rec_r)
    for name in g_r:
        assert_close(g_t[name], g_r[name], msg=name)


def test_ties_resolve_to_lowest_index():
    d, f = 8, 40
    w = torch.randn(f, d)
    w[7] = w[3]
    w[30] = w[3]  # three identical latents: equal pre-activations
    w[12] = w[5]
    x = torch.randn(6, d)
    x[:, :] = w[3] * 5  # latent 3 (and its copies) wins every row
    zeros_b = torch.zeros(f)
    from vlmfast import ops

    for k in (1, 2, 3, 4):
        t = ops.topk_encode(x, w, zeros_b, torch.zeros(d), k, backend="triton")
        r = ops.topk_encode(x, w, zeros_b, torch.zeros(d), k, backend="reference")
        assert torch.equal(t.indices, r.indices)
        assert t.indices[0, : min(k, 3)].tolist() == [3, 7, 30][: min(k, 3)]


def test_ties_across_tiles_resolve_to_lowest_index():
    """Copies of one latent in different 64-wide latent tiles (the running merge's path)."""
    d, f = 24, 300
    g = torch.Generator().manual_seed(5)
    w = torch.nn.functional.normalize(torch.randn(f, d, generator=g), dim=1)
    copies = [3, 70, 71, 150, 299]
    for c in copies[1:]:
        w[c] = w[3]
    x = (w[3] * 4).repeat(5, 1) + 0.0
    from vlmfast import ops

    for k in (1, 2, 5, 8):
        t = ops.topk_encode(x, w, torch.zeros(f), torch.zeros(d), k, backend="triton")
        r = ops.topk_encode(x, w, torch.zeros(f), torch.zeros(d), k, backend="reference")
        assert torch.equal(t.indices, r.indices)
        assert t.indices[0, : min(k, 5)].tolist() == copies[: min(k, 5)]


_TIES_UNDER_BLAS_CORE = """
import torch
from vlmfast import ops
for seed in range(40):
    torch.manual_seed(seed)
    w = torch.nn.functional.normalize(torch.randn(40, 8), dim=1)  # unit rows: w[3] wins
    w[7] = w[3]; w[30] = w[3]
    x = (w[3] * 5).repeat(6, 1)
    t = ops.topk_encode(x, w, torch.zeros(40), torch.zeros(8), 3, backend="triton")
    assert t.indices[:, :3].tolist() == [[3, 7, 30]] * 6, (seed, t.indices[0].tolist())
print("ok")
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter-only: numpy's BLAS core")
@pytest.mark.parametrize("core", ["Haswell", "Zen", "SkylakeX"])
def test_ties_hold_under_every_openblas_core(core):
    """numpy.matmul rounds by column position on some OpenBLAS cores (the cause of the
    tie-order failure first blamed on triton 3.9); the kernel must not depend on it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    cpu = info.read_text() if info.exists() else ""
    if core in ("Haswell", "Zen") and " avx2" not in cpu:
        pytest.skip("the CPU has no AVX2 for this OpenBLAS core")
    if core == "SkylakeX" and " avx512f" not in cpu:
        pytest.skip("the CPU has no AVX-512 for this OpenBLAS core")
    env = dict(os.environ, OPENBLAS_CORETYPE=core, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-c", _TIES_UNDER_BLAS_CORE], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.slow
def test_large_k_and_deterministic_scatter():
    from vlmfast.ops import triton_ops

    tensors = _inputs(2, 16, 300, seed=3)
    x, w, b_enc, b_dec = tensors
    from vlmfast import ops

    t = ops.topk_encode(x, w, b_enc, b_dec, 256, backend="triton")
    r = ops.topk_encode(x, w, b_enc, b_dec, 256, backend="reference")
    assert torch.equal(t.indices, r.indices)
    g = torch.randn(2, 16)
    det1, _ = triton_ops.scatter_rows(t.indices, t.values, g, 300, deterministic=True)
    det2, _ = triton_ops.scatter_rows(t.indices, t.values, g, 300, deterministic=True)
    atomic, _ = triton_ops.scatter_rows(t.indices, t.values, g, 300, deterministic=False)
    assert torch.equal(det1, det2)
    torch.testing.assert_close(det1, reference.scatter_rows(t.indices, t.values, g, 300))
    torch.testing.assert_close(atomic, det1)


def test_strict_mode_and_disable(monkeypatch):
    monkeypatch.setenv("VLMFAST_DISABLE_TRITON", "1")
    x = torch.zeros(2, 3)
    assert dispatch.use_triton(x, "op") is False
    cuda_like = torch.empty(0, device="meta")
    monkeypatch.setattr(type(cuda_like), "is_cuda", property(lambda self: True))
    monkeypatch.setenv("VLMFAST_STRICT", "1")
    from vlmfast.errors import StrictModeError

    with pytest.raises(StrictModeError, match="VLMFAST_DISABLE_TRITON"):
        dispatch.use_triton(cuda_like, "topk_encode")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("n", "d", "f", "k"), [(1000, 768, 4096, 32), (257, 1152, 3000, 64), (64, 1024, 2048, 256)]
)
def test_gpu_parity_dtype_matrix(dtype, n, d, f, k):
    tensors = _inputs(n, d, f, device="cuda")
    dead = torch.zeros(f, dtype=torch.bool, device="cuda")
    dead[::5] = True
    from vlmfast import ops

    x, w, b_enc, b_dec = tensors
    comp = None if dtype == torch.float32 else dtype
    t = ops.topk_encode(
        x, w, b_enc, b_dec, k, dead_mask=dead, k_aux=k, compute_dtype=comp, backend="triton"
    )
    r = ops.topk_encode(
        x, w, b_enc, b_dec, k, dead_mask=dead, k_aux=k, compute_dtype=comp, backend="reference"
    )
    rtol, atol = TOLERANCE[dtype]
    agree = (t.indices == r.indices).float().mean()
    assert agree > (0.999 if dtype == torch.float32 else 0.95)
    torch.testing.assert_close(
        t.values.sort(1).values, r.values.sort(1).values, rtol=rtol, atol=atol * 10
    )
    _, rec_t, g_t = _run("triton", tensors, k, dead, k)
    _, rec_r, g_r = _run("reference", tensors, k, dead, k)
    torch.testing.assert_close(rec_t, rec_r, rtol=rtol, atol=atol)
    for name in g_r:
        torch.testing.assert_close(g_t[name], g_r[name], rtol=rtol, atol=atol * 10, msg=name)
