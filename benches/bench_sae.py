"""Top-k SAE training step: vlmfast (sparse backward / fused kernels) vs a plain-torch SAE.

CPU (any machine): B=1024, d=768, n_latents=16,384, k=32. GPU (skipped without CUDA):
B=4096, d=768, n_latents=65,536, k=32. A "step" is encode, decode, AuxK over dead
latents, backward and Adam, for both sides; both use the same fused Adam, so the
ratio isolates the sparse encode/decode/backward. Run ``python benches/bench_sae.py``
for a tokens/s table, or ``make bench`` for pytest-benchmark timings.

Per architecture (CPU shape): ``batchtopk``, ``matryoshka`` and ``jumprelu`` steps through
the one trainer against plain-torch versions of the same maths (:class:`DenseArchSAE`:
dense pre-activations, dense codes, dense decoder GEMMs, autograd backward), and each
against vlmfast's top-k step (Matryoshka's target: at most 1.3x top-k's step).
"""

from __future__ import annotations

import platform
import time

import pytest
import torch
from torch import nn

from vlmfast.sae import SAETrainer, TrainConfig
from vlmfast.sae.archs import build_sae
from vlmfast.sae.config import SAEConfig

CPU_SHAPE = (1024, 768, 16_384, 32)
GPU_SHAPE = (4096, 768, 65_536, 32)


class DenseTopKSAE(nn.Module):
    """The usual public implementation: dense pre-acts, topk, dense decode, autograd backward."""

    def __init__(self, d: int, f: int, k: int) -> None:
        super().__init__()
        w = torch.nn.functional.normalize(torch.randn(f, d), dim=1)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.clone().t().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(f))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.k = k

    def loss(self, x: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
        pre = torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)
        top = pre.topk(self.k, dim=1)
        z = torch.zeros_like(pre).scatter(1, top.indices, top.values)
        recon = z @ self.W_dec + self.b_dec
        err = recon - x
        var = (x - x.mean(0)).pow(2).sum()
        aux_top = pre.masked_fill(~dead, 0.0).topk(k_aux, dim=1)
        z_aux = torch.zeros_like(pre).scatter(1, aux_top.indices, aux_top.values)
        residual = err.detach()
        aux = (z_aux @ self.W_dec + residual).pow(2).sum() / residual.pow(2).sum()
        return err.pow(2).sum() / var + aux / 32


class _DenseJump(torch.autograd.Function):
    """JumpReLU (``mode='act'``) or its step (``mode='step'``) with rectangle-kernel STEs."""

    @staticmethod
    def forward(ctx, pre, theta, eps, step):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(pre, theta)
        ctx.eps, ctx.step = eps, step
        on = (pre > theta).to(pre.dtype)
        return on if step else pre * on

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        pre, theta = ctx.saved_tensors
        rect = (((pre - theta) / ctx.eps).abs() <= 0.5).to(pre.dtype)
        if ctx.step:
            return None, (-grad / ctx.eps * rect).sum(0), None, None
        g_theta = (-grad * theta / ctx.eps * rect).sum(0)
        return grad * (pre > theta).to(pre.dtype), g_theta, None, None


class DenseArchSAE(DenseTopKSAE):
    """Plain-torch BatchTopK / Matryoshka / JumpReLU losses (dense codes and GEMMs)."""

    def __init__(self, d: int, f: int, k: int, arch: str, groups: list[int]) -> None:
        super().__init__(d, f, k)
        self.arch, self.ends = arch, torch.tensor(groups).cumsum(0).tolist()
        self.log_threshold = nn.Parameter(torch.full((f,), -1.0))

    def loss(self, x: torch.Tensor, dead: torch.Tensor, k_aux: int) -> torch.Tensor:
        pre = (x - self.b_dec) @ self.W_enc + self.b_enc
        var = (x - x.mean(0)).pow(2).sum()
        if self.arch == "jumprelu":
            theta = self.log_threshold.exp()
            z = _DenseJump.apply(pre, theta, 0.05, 0)
            l0 = _DenseJump.apply(pre, theta, 0.05, 1).sum(1).mean()
            return ((z @ self.W_dec + self.b_dec) - x).pow(2).sum() / var + 0.1 * l0 / self.k
        acts = torch.relu(pre)
        top = acts.flatten().topk(self.k * x.shape[0])
        z = torch.zeros_like(acts).flatten().scatter(0, top.indices, top.values).view_as(acts)
        recon = z @ self.W_dec + self.b_dec  # once: the full prefix, the FVU and the residual
        inner = self.ends[:-1] if self.arch == "matryoshka" else []
        loss = (recon - x).pow(2).sum() / var
        for e in inner:
            loss = loss + ((z[:, :e] @ self.W_dec[:e] + self.b_dec) - x).pow(2).sum() / var
        aux_top = acts.masked_fill(~dead, 0.0).topk(k_aux, dim=1)
        z_aux = torch.zeros_like(acts).scatter(1, aux_top.indices, aux_top.values)
        residual = (recon - x).detach()
        aux = (z_aux @ self.W_dec + residual).pow(2).sum() / residual.pow(2).sum()
        return loss + aux / 32


def _dead_mask(f: int, device: str) -> torch.Tensor:
    dead = torch.zeros(f, dtype=torch.bool, device=device)
    dead[: f // 4] = True
    return dead


def make_vlmfast_step(shape: tuple[int, int, int, int], device: str, arch: str = "topk"):
    b, d, f, k = shape
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(d, f, k, b_dec_init="mean", arch=arch)).to(device)
    trainer = SAETrainer(sae, TrainConfig(lr=1e-4), total_steps=10**6)
    x = torch.randn(b, d, device=device)
    dead = _dead_mask(f, device)

    def step() -> None:
        trainer.tokens_since_fired[dead] = sae.cfg.dead_tokens  # keep 1/4 dead: AuxK runs
        trainer.step(x)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def make_dense_step(shape: tuple[int, int, int, int], device: str, arch: str = "topk"):
    b, d, f, k = shape
    torch.manual_seed(0)
    if arch == "topk":
        model = DenseTopKSAE(d, f, k).to(device)
    else:
        groups = SAEConfig(d, f, k, arch="matryoshka").groups or [f]
        model = DenseArchSAE(d, f, k, arch, groups).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(b, d, device=device)
    dead = _dead_mask(f, device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(x, dead, d // 2).backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def test_sae_step_cpu_vlmfast(benchmark) -> None:
    benchmark.pedantic(make_vlmfast_step(CPU_SHAPE, "cpu"), rounds=5, warmup_rounds=1)


def test_sae_step_cpu_dense_baseline(benchmark) -> None:
    benchmark.pedantic(make_dense_step(CPU_SHAPE, "cpu"), rounds=5, warmup_rounds=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sae_step_gpu_vlmfast(benchmark) -> None:
    benchmark.pedantic(make_vlmfast_step(GPU_SHAPE, "cuda"), rounds=20, warmup_rounds=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sae_step_gpu_dense_baseline(benchmark) -> None:
    benchmark.pedantic(make_dense_step(GPU_SHAPE, "cuda"), rounds=20, warmup_rounds=3)


def _time(step, rounds: int) -> float:
    step()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    rows = [("cpu", CPU_SHAPE, 5)]
    if torch.cuda.is_available():
        rows.append(("cuda", GPU_SHAPE, 20))
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}"
    )
    for device, shape, rounds in rows:
        b = shape[0]
        # interleave so background load hits both sides alike
        dense = _time(make_dense_step(shape, device), rounds)
        fast = _time(make_vlmfast_step(shape, device), rounds)
        print(
            f"{device} B={b} d={shape[1]} F={shape[2]} k={shape[3]}: "
            f"plain torch {b / dense:,.0f} tok/s, vlmfast {b / fast:,.0f} tok/s, ratio {dense / fast:.2f}x"
        )
    arch_table(CPU_SHAPE, "cpu", 5)


def arch_table(shape: tuple[int, int, int, int], device: str, rounds: int) -> None:
    """Prints each architecture's step against plain torch and against vlmfast's top-k."""
    b = shape[0]
    topk = _time(make_vlmfast_step(shape, device), rounds)
    for arch in ("batchtopk", "matryoshka", "jumprelu"):
        dense = _time(make_dense_step(shape, device, arch), rounds)
        fast = _time(make_vlmfast_step(shape, device, arch), rounds)
        print(
            f"{device} {arch:<10} B={b}: plain torch {b / dense:,.0f} tok/s, vlmfast"
            f" {b / fast:,.0f} tok/s, ratio {dense / fast:.2f}x, step vs top-k {fast / topk:.2f}x"
        )


if __name__ == "__main__":
    main()
