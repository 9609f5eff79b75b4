"""A step's reported loss is the objective it minimised, for every architecture (FVU,
weighted AuxK, Matryoshka's prefix FVUs, JumpReLU's L0 penalty), and the trainer rescales
gradients only above the clipping limit."""

from __future__ import annotations

import pytest
import torch

from tolerance import assert_close
from vlmfast.sae import SAETrainer, TrainConfig
from vlmfast.sae.archs import build_sae
from vlmfast.sae.config import SAEConfig


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batch(seed: int = 0) -> torch.Tensor:
    return torch.randn(128, 16, generator=torch.Generator().manual_seed(seed)) + 0.3


def _trainer(arch: str, clip: float | None = 1.0) -> SAETrainer:
    # dead_tokens below one batch: latents that miss the first batch feed AuxK on the second
    sae = build_sae(SAEConfig(16, 256, 2, arch=arch, dead_tokens=64))
    return SAETrainer(sae, TrainConfig(lr=1e-3, warmup_steps=1, grad_clip=clip), total_steps=10)


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka", "jumprelu"])
def test_step_loss_is_the_minimised_objective_and_the_sum_of_its_terms(arch):
    trainer = _trainer(arch)
    seen: list[float] = []
    optimise = trainer._optimise

    def spy(loss: torch.Tensor) -> tuple[float, float]:
        seen.append(float(loss.detach()))
        return optimise(loss)

    trainer._optimise = spy  # type: ignore[method-assign]
    trainer.step(_batch(0))
    res = trainer.step(_batch(1))
    assert_close(res.loss, seen[-1])
    terms = res.fvu + trainer.sae.cfg.auxk_coef * res.auxk + res.prefix_fvu + res.l0_loss
    assert res.loss == pytest.approx(terms, rel=1e-12)
    assert (res.prefix_fvu > 0) == (arch == "matryoshka")
    assert (res.l0_loss > 0) == (arch == "jumprelu")
    assert (res.auxk > 0) == (arch != "jumprelu")  # JumpReLU has no AuxK


def _grads_at_optimiser(clip: float | None):
    trainer = _trainer("batchtopk", clip)
    grads: dict[str, torch.Tensor] = {}
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        grads.update({n: p.grad.clone() for n, p in trainer.sae.named_parameters()})
        return step(*args, **kwargs)

    trainer.optimizer.step = spy  # type: ignore[method-assign]
    return trainer.step(_batch(0)), grads


def test_grads_under_the_limit_are_untouched_and_over_it_scaled(monkeypatch):
    free, g_free = _grads_at_optimiser(None)
    calls: list[float] = []
    clip_fn = torch.nn.utils.clip_grads_with_norm_

    def counting(params, max_norm, total_norm, *args, **kwargs):
        calls.append(max_norm)
        return clip_fn(params, max_norm, total_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", counting)
    under, g_under = _grads_at_optimiser(1e9)
    assert not calls  # no rescaling pass at all
    for name, grad in g_free.items():
        assert torch.equal(g_under[name], grad), name
    limit = free.grad_norm / 10
    over, g_over = _grads_at_optimiser(limit)
    assert calls == [limit]
    assert under.grad_norm == over.grad_norm == free.grad_norm  # reported before clipping
    coef = limit / (free.grad_norm + 1e-6)
    for name, grad in g_free.items():
        assert_close(g_over[name], grad * coef)
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in g_over.values()]))
    assert_close(total, torch.tensor(limit))
