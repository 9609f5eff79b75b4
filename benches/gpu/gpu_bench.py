"""The GPU benchmarks of ``benches/gpu/run.sh``: one JSON section per benchmark.

- ``sae``: one training step (encode, decode, loss, backward, Adam) of every
  architecture in ``vlmfast.sae.config.ARCHS`` at B=4,096, d=768, 65,536 latents, k=32,
  against a plain-torch SAE of the same architecture (dense pre-activations, dense
  selection mask, dense decoder GEMM, autograd); plus ``topk_auxk``: the
  ``benches/bench_sae.py`` step (1/4 of the latents dead, AuxK on both sides).
- ``auroc``: ``vf.stats.auroc_sparse`` on 65,536 features x 200 concepts x 1M rows.
- ``patching``: all single-head patches of ViT-B/32 (random weights): the batched
  sweep against the serial loop, with the largest difference between them.

``--dry-run`` runs every section tiny on the CPU (the script's own test). A section
that fails records ``{"error": ...}`` and the others still run.

    python benches/gpu/gpu_bench.py OUT.json [--dry-run] [--sections sae,auroc,patching]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

BENCHES = Path(__file__).resolve().parents[1]
FULL = {"sae": (4096, 768, 65_536, 32), "auroc": (65_536, 200, 1_000_000), "pairs": 8}
TINY = {"sae": (64, 32, 256, 4), "auroc": (512, 8, 4000), "pairs": 2}


class DenseSAE(nn.Module):
    """Plain-torch SAE of one architecture: what a user writes without sparse kernels."""

    def __init__(self, d: int, f: int, k: int, arch: str, groups: list[int] | None) -> None:
        super().__init__()
        w = nn.functional.normalize(torch.randn(f, d), dim=1)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.clone())
        self.b_enc = nn.Parameter(torch.zeros(f))
        self.b_dec = nn.Parameter(torch.zeros(d))
        self.log_threshold = nn.Parameter(torch.zeros(f))
        self.k, self.arch = k, arch
        ends = torch.tensor(groups or [f]).cumsum(0).tolist()
        self.ends = ends if arch == "matryoshka" else [f]

    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense codes ``[B, F]`` and the extra loss term of the architecture."""
        pre = (x - self.b_dec) @ self.W_enc.t() + self.b_enc
        extra = pre.new_zeros(())
        if self.arch == "topk":
            top = pre.topk(self.k, dim=1)
            return torch.zeros_like(pre).scatter(1, top.indices, top.values.relu()), extra
        if self.arch == "jumprelu":
            thr = self.log_threshold.exp()
            extra = torch.sigmoid((pre - thr) / 1e-3).sum(1).mean() * 1e-3
            return pre.relu() * (pre > thr), extra
        acts = pre.relu().flatten()  # batchtopk / matryoshka: top k*B over the batch
        top = acts.topk(self.k * x.shape[0])
        return torch.zeros_like(acts).scatter(0, top.indices, top.values).view_as(pre), extra

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        z, loss = self.codes(x)
        var = (x - x.mean(0)).pow(2).sum()
        for end in self.ends:  # matryoshka: every nested prefix reconstructs
            recon = z[:, :end] @ self.W_dec[:end] + self.b_dec
            loss = loss + (recon - x).pow(2).sum() / var
        return loss


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(step: Callable[[], Any], device: str, rounds: int, warmup: int) -> float:
    """Median seconds of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _arch_steps(arch: str, shape: tuple[int, ...], device: str) -> tuple[Callable, Callable]:
    from vlmfast.sae import SAETrainer, TopKSAE, TrainConfig

    b, d, f, k = shape
    torch.manual_seed(0)
    x = torch.randn(b, d, device=device)
    sae = TopKSAE(d, f, k, arch=arch, b_dec_init="mean").to(device)
    trainer = SAETrainer(sae, TrainConfig(lr=1e-4), total_steps=10**6)
    dense = DenseSAE(d, f, k, arch, getattr(sae.cfg, "groups", None)).to(device)
    opt = torch.optim.Adam(dense.parameters(), lr=1e-4, fused=True)

    def plain() -> None:
        opt.zero_grad(set_to_none=True)
        dense.loss(x).backward()
        opt.step()

    return (lambda: trainer.step(x)), plain


def bench_sae(size: dict[str, Any], device: str, rounds: int) -> dict[str, Any]:
    """Per architecture: vlmfast and plain-torch step times (s), tokens/s, speed-up."""
    from vlmfast.sae.config import ARCHS

    shape = size["sae"]
    out: dict[str, Any] = {"shape": dict(zip(("batch", "d_in", "n_latents", "k"), shape))}
    for arch in (*ARCHS, "topk_auxk"):
        try:
            if arch == "topk_auxk":
                sys.path.insert(0, str(BENCHES))
                import bench_sae

                fast = bench_sae.make_vlmfast_step(shape, device)
                plain = bench_sae.make_dense_step(shape, device)
            else:
                fast, plain = _arch_steps(arch, shape, device)
            t_fast = _time(fast, device, rounds, 2)
            t_plain = _time(plain, device, rounds, 2)
            out[arch] = {
                "vlmfast_s": t_fast,
                "plain_torch_s": t_plain,
                "vlmfast_tokens_per_s": shape[0] / t_fast,
                "plain_torch_tokens_per_s": shape[0] / t_plain,
                "speedup": t_plain / t_fast,
            }
        except Exception as exc:  # one architecture failing must not hide the others
            out[arch] = {"error": f"{type(exc).__name__}: {exc}"}
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def bench_auroc(size: dict[str, Any]) -> dict[str, Any]:
    """Wall and CPU seconds of the sparse AUROC table (runs on the CPU cores)."""
    sys.path.insert(0, str(BENCHES))
    import bench_auroc
    import vlmfast as vf

    f, c, n = size["auroc"]
    idx, vals = bench_auroc.make_codes(n, f, 32 if f >= 64 else 4)
    labels = bench_auroc.make_labels(n, c)
    c0, t0 = time.process_time(), time.perf_counter()
    table = vf.stats.auroc_sparse(idx, vals, labels, f)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    shape = list(getattr(table, "shape", ()))
    return {
        "features": f,
        "concepts": c,
        "rows": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "table_shape": shape,
    }


def bench_patching(size: dict[str, Any], device: str, dry: bool) -> dict[str, Any]:
    """Batched head-patching sweep vs the serial loop: seconds, speed-up, max |diff|."""
    import vlmfast as vf
    from vlmfast.causal import patch_heads

    spec = "synthetic:tiny" if dry else "open_clip:ViT-B-32"
    pair = vf.load_pair(spec, device=device)
    n = size["pairs"]
    gen = torch.Generator().manual_seed(0)
    res = pair.config.image.image_size if hasattr(pair.config.image, "image_size") else 224
    px = torch.randn(n, 3, res, res, generator=gen).to(device)
    src_px = torch.randn(n, 3, res, res, generator=gen).to(device)
    caps = [f"a photo of object number {i}" for i in range(n)]
    tok, src_tok = pair.tokenize(caps).to(device), pair.tokenize(caps[::-1]).to(device)
    source = {"images": src_px, "texts": src_tok}
    timed: dict[str, Any] = {}
    for method in ("serial", "batched"):
        _sync(device)
        t0 = time.perf_counter()
        timed[method] = patch_heads(pair, px, tok, source, "score", method=method)
        _sync(device)
        timed[method + "_s"] = time.perf_counter() - t0
    diff = float((timed["batched"] - timed["serial"]).abs().max())
    return {
        "model": spec,
        "pairs": n,
        "serial_s": timed["serial_s"],
        "batched_s": timed["batched_s"],
        "speedup": timed["serial_s"] / timed["batched_s"],
        "max_abs_diff": diff,
        "heads": list(timed["batched"].shape),
    }


def device_info(device: str) -> dict[str, Any]:
    """The card (or "cpu"), torch and triton versions."""
    info: dict[str, Any] = {"device": device, "torch": torch.__version__}
    if device == "cuda":
        info["card"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--sections", default="sae,auroc,patching")
    args = p.parse_args(argv)
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device (use --dry-run for the CPU smoke run)")
    size, rounds = (TINY, 2) if args.dry_run else (FULL, 10)
    runners: dict[str, Callable[[], dict[str, Any]]] = {
        "sae": lambda: bench_sae(size, device, rounds),
        "auroc": lambda: bench_auroc(size),
        "patching": lambda: bench_patching(size, device, args.dry_run),
    }
    result: dict[str, Any] = {"dry_run": args.dry_run, **device_info(device)}
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            result[name] = runners[name]()
        except Exception as exc:
            result[name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-1500:],
            }
        result[name]["section_s"] = time.perf_counter() - t0
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
