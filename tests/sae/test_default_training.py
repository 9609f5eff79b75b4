"""Default SAE training length: enough optimizer steps for the store at hand, and warnings."""

from __future__ import annotations

import pytest
import torch

from vlmfast.errors import InputError
from vlmfast.sae import TopKSAE
from vlmfast.sae.schedule import (
    MIN_STEPS,
    convergence_warnings,
    default_batch_size,
    training_length,
)


def test_small_store_trains_for_several_epochs_with_a_smaller_batch():
    length = training_length(120_000, 512)
    assert length.batch_size == 1024  # 120000 / 64 = 1875 -> 1024
    assert length.steps >= MIN_STEPS
    assert length.epochs > 10
    big = training_length(100_000_000, 65536)
    assert big.batch_size == 4096
    assert big.steps == -(-100_000_000 // 4096)  # one epoch
    assert 1.0 <= big.epochs < 1.001
    assert default_batch_size(1000) == 256
    # what the user gives wins
    assert training_length(120_000, 512, batch_size=4096, tokens=40960).steps == 10
    with pytest.raises(InputError, match="no rows"):
        training_length(0, 512)
    with pytest.raises(InputError, match="batch_size"):
        training_length(100, 512, batch_size=0)


def test_convergence_warnings():
    flat = [0.05] * 100
    assert convergence_warnings(flat) == []
    high = [0.5] * 100
    assert any("above" in w for w in convergence_warnings(high))
    falling = [1.0 - i / 120 for i in range(100)]
    warnings = convergence_warnings(falling)
    assert any("still falling" in w for w in warnings)
    assert convergence_warnings([]) == []
    # a small absolute drop at a low FVU is converged enough
    assert convergence_warnings([0.0065] * 50 + [0.0061] * 50) == []


def _planted_store(path, rows=120_000, d=64, n_atoms=256, k=4, seed=0):
    from vlmfast.store import ActivationStore

    gen = torch.Generator().manual_seed(seed)
    atoms = torch.randn(n_atoms, d, generator=gen)
    atoms /= atoms.norm(dim=1, keepdim=True)
    chosen = torch.rand(rows, n_atoms, generator=gen).argsort(1)[:, :k]
    coeffs = torch.rand(rows, k, generator=gen) + 0.5
    x = (coeffs[:, :, None] * atoms[chosen]).sum(1) + 0.01 * torch.randn(rows, d, generator=gen)
    store = ActivationStore.create(path, {"image.embed": d}, chunk_rows=8192)
    store.append("image.embed", (x + 0.5).numpy())
    store.close()
    return atoms


@pytest.mark.slow
def test_defaults_recover_a_planted_dictionary(tmp_path, capsys):
    """The issue's case: d=64, 256 atoms, k=4, 120,000 rows, 512 latents, every other
    setting default. The old default ran 29 steps and recovered 0%."""
    from vlmfast.cli import main

    atoms = _planted_store(tmp_path / "acts.zarr")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        code = main(
            [
                "train-sae",
                "--store",
                str(tmp_path / "acts.zarr"),
                "--hook",
                "image.embed",
                "--k",
                "4",
                "--n-latents",
                "512",
                "--out",
                str(tmp_path / "sae"),
                "--no-progress",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    out = capsys.readouterr()
    assert "epochs" in out.out
    sae = TopKSAE.load(tmp_path / "sae")
    best = (torch.nn.functional.normalize(sae.W_dec, dim=1) @ atoms.t()).max(0).values
    recovered = float((best >= 0.9).float().mean())
    assert recovered >= 0.9, f"only {recovered:.0%} of planted atoms recovered"
