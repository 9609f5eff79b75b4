"""vf.sae.evaluate: the reconstruction suite on held-out rows, streamed and split by type."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tolerance import assert_close
from vlmfast.errors import InputError, ShapeError
from vlmfast.sae import PlantedConfig, PlantedGenerator, RunningMetrics, TopKSAE, evaluate
from vlmfast.sae.evaluation import evaluate_batches


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _SignSplit:
    """A perfect "SAE": latents 2i / 2i+1 carry the positive / negative part of x_i."""

    def __init__(self, d: int, dense: bool = False) -> None:
        self.d_in, self.n_latents, self.dense = d, 2 * d, dense

    def encode(self, x: torch.Tensor):
        codes = torch.stack([x.clamp_min(0), (-x).clamp_min(0)], dim=2).reshape(x.shape[0], -1)
        if self.dense:
            return codes
        indices = torch.arange(self.n_latents).expand(x.shape[0], -1)
        return codes, indices

    def decode(self, values: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        dense = values if indices is None else torch.zeros_like(values).scatter(1, indices, values)
        pairs = dense.reshape(dense.shape[0], -1, 2)
        return pairs[..., 0] - pairs[..., 1]


class _Fixed:
    """Codes looked up by row id (x[:, 0]); reconstructs x[:, 1:] as 0."""

    def __init__(self, codes: torch.Tensor) -> None:
        self.codes, self.n_latents = codes, codes.shape[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.codes[x[:, 0].long()]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return torch.zeros(codes.shape[0], 2)


def _rows(n: int = 3000, seed: int = 0) -> torch.Tensor:
    gen = PlantedGenerator(PlantedConfig(d=16, n_features=24, offset_norm=1.0, seed=seed))
    return gen.sample(n).rows


@pytest.mark.parametrize("dense", [False, True])
def test_perfect_reconstruction_gives_fvu_0_ev_1_cosine_1(dense):
    x = _rows()
    res = evaluate(_SignSplit(16, dense=dense), x, batch_size=700).overall
    assert res.n_rows == 3000
    assert res.fvu == pytest.approx(0.0, abs=1e-10)
    assert res.explained_variance == pytest.approx(1.0)
    assert res.cosine_mean == pytest.approx(1.0)
    assert res.mse == pytest.approx(0.0, abs=1e-12)
    assert res.null_fvu == 1.0
    assert res.l0_mean == pytest.approx(float((x != 0).sum(1).double().mean()))


def test_zero_decoder_gives_fvu_one_and_matches_running_metrics():
    x = _rows()
    sae = TopKSAE(16, 64, 4)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(x.double().mean(0).float())  # every row reconstructed as the mean
    res = evaluate(sae, x, batch_size=512).overall
    assert res.fvu == pytest.approx(1.0, abs=1e-5)
    assert res.explained_variance == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        sae.b_dec.zero_()  # now x_hat = 0: FVU against the mean is above 1
        res = evaluate(sae, x, batch_size=512).overall
        values, indices = sae.encode(x)
        ref = RunningMetrics(16, 64)
        ref.update(x, sae.decode(values, indices), values, indices)
    assert res.fvu == pytest.approx(ref.fvu()) and res.fvu > 1.5
    assert res.l0_mean == pytest.approx(ref.l0())
    assert res.density_histogram == ref.firing_histogram()


def test_dead_dense_alive_fractions_and_l0_histogram_on_a_hand_built_case():
    n, m = 100, 10
    codes = torch.zeros(n, m)
    codes[:, 0] = 1.0  # every row: dense
    codes[:10, 1] = 1.0  # exactly 10%: not dense (dense is > 10%)
    codes[:11, 2] = 1.0  # 11%: dense
    codes[50, 3] = 2.0  # once: alive, not dense
    # latents 4..9 never fire: dead
    x = torch.stack([torch.arange(n).float(), torch.randn(n)], 1)
    res = evaluate(_Fixed(codes), x, batch_size=7).overall
    assert res.dead_fraction == pytest.approx(0.6)
    assert res.alive_fraction == pytest.approx(0.4)
    assert res.dense_fraction == pytest.approx(0.2)
    assert res.dead_ci[0] < 0.6 < res.dead_ci[1] and res.dead_ci[0] >= 0 and res.dead_ci[1] <= 1
    assert res.alive_ci == pytest.approx((1 - res.dead_ci[1], 1 - res.dead_ci[0]))
    # per-row L0: rows 0..9 fire 3, row 10 fires 2, row 50 fires 2, the rest 1
    assert res.l0_histogram == {"l0": [0, 1, 2, 3], "counts": [0, 88, 2, 10]}
    assert res.l0_mean == pytest.approx((88 + 4 + 30) / 100)
    assert res.l0_ci[0] < res.l0_mean < res.l0_ci[1]
    assert sum(res.density_histogram["counts"]) == m
    assert res.density_histogram["counts"][0] == 6  # the dead latents' lowest bin
    json.dumps(res.to_dict())


def test_split_by_token_type_sums_to_the_whole():
    x = _rows(4000)
    labels = np.array(["cls", "patch", "token", "eot"])[
        np.random.default_rng(0).integers(0, 4, 4000)
    ]
    sae = TopKSAE(16, 64, 4)
    whole = evaluate(sae, x, labels=labels, batch_size=333)
    parts = whole.by_type
    assert sorted(parts) == ["cls", "eot", "patch", "token"]
    assert sum(p.n_rows for p in parts.values()) == whole.overall.n_rows == 4000
    for name, part in parts.items():
        assert part.n_rows == int((labels == name).sum())
        alone = evaluate(sae, x[torch.from_numpy(labels == name)], batch_size=1000).overall
        assert part.fvu == pytest.approx(alone.fvu) and part.l0_mean == pytest.approx(alone.l0_mean)
    weights = {k: p.n_rows / 4000 for k, p in parts.items()}
    for key in ("l0_mean", "mse", "cosine_mean"):
        combined = sum(weights[k] * getattr(p, key) for k, p in parts.items())
        assert combined == pytest.approx(getattr(whole.overall, key))
    hist = np.zeros(len(whole.overall.l0_histogram["counts"]), dtype=np.int64)
    for p in parts.values():
        hist[: len(p.l0_histogram["counts"])] += p.l0_histogram["counts"]
    assert hist.tolist() == whole.overall.l0_histogram["counts"]
    assert whole.overall.alive_fraction >= max(p.alive_fraction for p in parts.values())
    # streaming: the batch size does not change the numbers
    again = evaluate(sae, x.numpy(), labels=list(labels), batch_size=4000)
    # row reductions are float32 (accumulated in float64): batch sizes agree to float32 rounding
    f64 = torch.float64
    assert_close(
        torch.tensor(again.overall.fvu, dtype=f64),
        torch.tensor(whole.overall.fvu, dtype=f64),
        dtype=torch.float32,
    )
    assert (
        json.loads(json.dumps(again.to_dict()))["by_type"]["eot"]["n_rows"] == parts["eot"].n_rows
    )


def test_bad_input_is_named():
    sae = TopKSAE(16, 64, 4)
    with pytest.raises(ShapeError, match=r"\[N, 16\].*\[5, 8\]"):
        evaluate(sae, torch.zeros(5, 8))
    with pytest.raises(ShapeError, match="labels"):
        evaluate(sae, torch.zeros(5, 16), labels=["cls"] * 4)
    with pytest.raises(InputError, match="dense_threshold"):
        evaluate(sae, torch.zeros(5, 16), dense_threshold=2.0)
    with pytest.raises(InputError, match="batch_size"):
        evaluate(sae, torch.zeros(5, 16), batch_size=0)
    empty = evaluate_batches(sae, []).overall
    assert empty.n_rows == 0 and math.isnan(empty.fvu) and math.isnan(empty.dead_fraction)


def test_fvu_denominator_survives_a_large_mean():
    """Rows with mean ~1000 and unit spread (as CLS rows can be): the variance is centred
    per batch and merged exactly, so the mean reconstruction still gives FVU 1."""
    g = torch.Generator().manual_seed(1)
    offset = 1000.0 * torch.randn(16, generator=g)
    x = torch.randn(5000, 16, generator=g) + offset
    sae = TopKSAE(16, 64, 4)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(x.double().mean(0).float())
    res = evaluate(sae, x, batch_size=777).overall
    exact = float((x.double() - x.double().mean(0)).pow(2).sum())
    recon_err = float((x.double() - sae.b_dec.detach().double()).pow(2).sum())
    f64 = torch.float64
    assert_close(
        torch.tensor(res.fvu, dtype=f64),
        torch.tensor(recon_err / exact, dtype=f64),
        dtype=torch.float32,  # uncentred float32 sums are off by ~2% here
    )
