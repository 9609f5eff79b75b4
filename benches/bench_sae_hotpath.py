"""A/B of the CPU top-k SAE training step: the hot path before and after the 2026-12-07 work.

The old encode (kept here, and only here, for this comparison) sorted every row of
the selection twice to order ties, its backward gathered
``N * (k + k_aux)`` encoder rows to get the ``b_dec`` gradient and allocated a fresh
``[N, n_latents]`` pre-activation buffer and two ``[n_latents, d]`` temporaries in
``remove_parallel_grads_`` every step. The new one takes the ``b_dec`` gradient as one
GEMV, reorders only rows with tied values, reuses the buffer and projects the decoder
gradient in place.

Both arms train their own SAE (same seed) on the same planted batches, stepping in
turn, so background load hits both alike; the table shows the median wall and CPU
(user + system) time per step and the held-out FVU after the same steps.

    python benches/bench_sae_hotpath.py [--steps 30] [--threads 2] [--aux]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from typing import Any

import torch

from vlmfast.ops import reference
from vlmfast.sae import SAETrainer, TopKSAE, TrainConfig
from vlmfast.sae.planted import PlantedConfig, PlantedGenerator


class OldTopKEncode(reference._TopKEncode):
    """The encode as it was: backward always gathers (``_embedding_bag_grads``)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Any,
        w_enc: Any,
        b_enc: Any,
        b_dec: Any,
        k: int,
        dead_mask: Any,
        k_aux: int,
        compute_dtype: Any,
    ) -> Any:
        dtype = compute_dtype or x.dtype
        pre = reference.encoder_preacts(x.to(dtype), w_enc, b_enc, b_dec)
        vals, idx, aux_vals, aux_idx = reference.select_topk(pre, k, dead_mask, k_aux)
        del pre
        values = torch.relu(vals).to(w_enc.dtype)
        if aux_vals is None or aux_idx is None:
            aux_values = values.new_zeros((x.shape[0], 0))
            aux_idx = idx.new_zeros((x.shape[0], 0))
        else:
            aux_values = torch.relu(aux_vals).to(w_enc.dtype)
        ctx.save_for_backward(x, w_enc, b_dec, values, idx, aux_values, aux_idx)
        ctx.n_latents = w_enc.shape[0]
        ctx.mark_non_differentiable(idx, aux_idx)
        return values, idx, aux_values, aux_idx

    @staticmethod
    def backward(ctx: Any, g_values: Any, _g_idx: Any, g_aux: Any, _g_aux_idx: Any) -> Any:
        x, w_enc, b_dec, values, idx, aux_values, aux_idx = ctx.saved_tensors
        grads, idx_all = [g_values * (values > 0)], [idx]
        if aux_idx.shape[1] and g_aux is not None:
            grads.append(g_aux * (aux_values > 0))
            idx_all.append(aux_idx)
        dpre = torch.cat(grads, dim=1) if len(grads) > 1 else grads[0]
        cat_idx = torch.cat(idx_all, dim=1) if len(idx_all) > 1 else idx_all[0]
        xc = (x - b_dec.to(x.dtype)).to(w_enc.dtype)
        grad_xc, grad_w = reference._embedding_bag_grads(cat_idx, w_enc, dpre, xc)
        grad_b_enc = torch.zeros(ctx.n_latents, dtype=w_enc.dtype, device=w_enc.device)
        grad_b_enc.index_add_(0, cat_idx.flatten(), dpre.flatten().to(w_enc.dtype))
        need_x, _, _, need_bdec = ctx.needs_input_grad[:4]
        grad_x = grad_xc.to(x.dtype) if need_x else None
        grad_b_dec = -grad_xc.sum(0).to(b_dec.dtype) if need_bdec else None
        return grad_x, grad_w, grad_b_enc, grad_b_dec, None, None, None, None


def old_topk_lowest_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The old canonical order: two sorts and four gathers on every row."""
    vals, idx = scores.topk(min(k + 1, scores.shape[1]), dim=1, sorted=True)
    if vals.shape[1] > k:
        tie_rows = (vals[:, k - 1] == vals[:, k]).nonzero().flatten()
        vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
        if tie_rows.numel():
            s_vals, s_idx = torch.sort(scores[tie_rows], dim=1, descending=True, stable=True)
            vals[tie_rows], idx[tie_rows] = s_vals[:, :k], s_idx[:, :k]
    by_index = idx.argsort(dim=1)
    idx, vals = idx.gather(1, by_index), vals.gather(1, by_index)
    by_value = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return vals.gather(1, by_value), idx.gather(1, by_value)


def old_remove_parallel_grads_(sae: TopKSAE) -> None:
    """The old projection: two ``[n_latents, d]`` temporaries per step."""
    with torch.no_grad():
        g, w = sae.W_dec.grad, sae.W_dec
        if g is not None:
            g -= (g * w).sum(1, keepdim=True) * w


NEW_ENCODE = reference._TopKEncode
NEW_TOPK = reference.topk_lowest_index


def _arm(args: argparse.Namespace, *, old: bool) -> tuple[SAETrainer, Any]:
    sae = TopKSAE(args.d, args.latents, args.k, seed=0)
    if old:
        sae.remove_parallel_grads_ = lambda: old_remove_parallel_grads_(sae)  # type: ignore[method-assign]
    cfg = TrainConfig(lr=2e-4, warmup_steps=max(1, args.steps // 10), decay_start=1.0)
    return SAETrainer(sae, cfg, total_steps=args.steps), sae


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved steps of both arms; returns medians, ratios and held-out FVUs."""
    torch.set_num_threads(args.threads)
    gen = PlantedGenerator(PlantedConfig(d=args.d, n_features=args.n_features, seed=0))
    batches = [gen.sample(args.batch).rows for _ in range(min(args.steps, 8))]
    held = gen.sample(4096).rows
    arms = {"old": _arm(args, old=True), "new": _arm(args, old=False)}
    dead = torch.zeros(args.latents, dtype=torch.bool)
    dead[: args.latents // 4] = True
    timings: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in arms}
    for i in range(args.steps):
        for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
            trainer, sae = arms[name]
            reference._TopKEncode = OldTopKEncode if name == "old" else NEW_ENCODE  # type: ignore[misc]
            reference.topk_lowest_index = old_topk_lowest_index if name == "old" else NEW_TOPK
            if args.aux:
                trainer.tokens_since_fired[dead] = sae.cfg.dead_tokens  # AuxK runs every step
            c0, t0 = _cpu(), time.perf_counter()
            trainer.step(batches[i % len(batches)])
            timings[name]["wall"].append(time.perf_counter() - t0)
            timings[name]["cpu"].append(_cpu() - c0)
    reference._TopKEncode = NEW_ENCODE  # type: ignore[misc]
    reference.topk_lowest_index = NEW_TOPK
    out: dict[str, Any] = {"spec": vars(args)}
    for name, (_, sae) in arms.items():
        with torch.no_grad():
            err = float((sae(held) - held).pow(2).sum())
        var = float((held - held.mean(0)).pow(2).sum())
        skip = min(2, args.steps - 1)
        out[name] = {
            "wall_s": statistics.median(timings[name]["wall"][skip:]),
            "cpu_s": statistics.median(timings[name]["cpu"][skip:]),
            "fvu_held_out": err / var,
        }
    out["wall_ratio_old_over_new"] = out["old"]["wall_s"] / out["new"]["wall_s"]
    out["cpu_ratio_old_over_new"] = out["old"]["cpu_s"] / out["new"]["cpu_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--latents", type=int, default=16_384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--n-features", type=int, default=4096)
    p.add_argument("--aux", action="store_true", help="keep 1/4 of latents dead (AuxK every step)")
    res = run(p.parse_args())
    for name in ("old", "new"):
        r = res[name]
        print(
            f"{name}: wall {r['wall_s'] * 1e3:.0f} ms/step, cpu {r['cpu_s'] * 1e3:.0f} ms/step, FVU {r['fvu_held_out']:.4f}"
        )
    print(
        f"old/new: wall {res['wall_ratio_old_over_new']:.2f}x, cpu {res['cpu_ratio_old_over_new']:.2f}x"
    )


if __name__ == "__main__":
    main()
