"""Validation: training recovers a planted dictionary from sparse combinations of its atoms."""

from __future__ import annotations

import torch

from vlmfast.sae import RunningMetrics, SAETrainer, TopKSAE, TrainConfig, train


def _planted(d: int, n_atoms: int, k: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=gen)
    atoms /= atoms.norm(dim=1, keepdim=True)

    def sample(rows: int) -> torch.Tensor:
        chosen = torch.rand(rows, n_atoms, generator=gen).argsort(1)[:, :k]
        coeffs = torch.rand(rows, k, generator=gen) + 0.5
        noise = 0.01 * torch.randn(rows, d, generator=gen)
        return (coeffs[:, :, None] * atoms[chosen]).sum(1) + noise + 0.5  # offset: b_dec matters

    return atoms, sample


def test_planted_dictionary_is_recovered():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead on a shared machine
    try:
        d, n_atoms, k, steps = 64, 64, 4, 400
        atoms, sample = _planted(d, n_atoms, k)
        sae = TopKSAE(d, 128, k, dead_tokens=256 * 20)
        trainer = SAETrainer(
            sae, TrainConfig(lr=5e-3, warmup_steps=20, decay_start=0.7), total_steps=steps
        )
        train((sample(256) for _ in range(steps)), [trainer])
        with torch.no_grad():
            held_out = sample(4096)
            values, indices = sae.encode(held_out)
            metrics = RunningMetrics(d, sae.n_latents)
            metrics.update(held_out, sae.decode(values, indices), values, indices)
            best_cos = (sae.W_dec @ atoms.t()).max(0).values
    finally:
        torch.set_num_threads(threads)
    recovered = float((best_cos >= 0.9).float().mean())
    assert recovered >= 0.9, f"only {recovered:.0%} of atoms recovered"
    assert metrics.fvu() <= 0.05, f"FVU {metrics.fvu():.3f}"
    assert metrics.l0() <= k
