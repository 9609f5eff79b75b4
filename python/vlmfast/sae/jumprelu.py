"""JumpReLU training forward (Rajamanoharan et al. 2024, arXiv 2407.14435).

``z = pre * H(pre - theta)`` with one threshold ``theta = exp(log_threshold)`` per latent.
H has no useful gradient, so the thresholds learn through straight-through estimators
with a rectangle kernel of width ``bandwidth`` (eps): ``dz/dtheta = -(theta/eps) *
rect((pre - theta)/eps)`` for the reconstruction and ``dH/dtheta = -(1/eps) *
rect((pre - theta)/eps)`` for the L0 penalty ``l0_weight * L0 / k``. Only the latents
with ``pre > theta - eps/2`` (firing, or inside the kernel's window) can have a gradient,
so the training forward keeps those as flat codes (:mod:`vlmfast.ops.flat_codes`) and
never backpropagates through the dense ``N x n_latents`` pre-activations. After each step the L0 weight is
nudged towards the target L0 ``k`` (:func:`adapt_l0_weight`).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vlmfast.ops.flat_codes import flat_decode_many, mask_select, sparse_preacts
from vlmfast.ops.reference import encoder_preacts, reused_preacts
from vlmfast.sae import distributed as ddp
from vlmfast.sae.model import ForwardOutput, TopKSAE

BANDWIDTH_OF_THRESHOLD = 0.2
"""Default kernel width as a fraction of the initial threshold (``SAEConfig.bandwidth``)."""


def _rect(pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
    u = (pre - theta) / eps
    return ((u > -0.5) & (u <= 0.5)).to(pre.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return pre * (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        pre, theta = ctx.saved_tensors
        grad_pre = grad * (pre > theta).to(pre.dtype)
        grad_theta = -grad * (theta / ctx.eps) * _rect(pre, theta, ctx.eps)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, theta: torch.Tensor, eps: float) -> torch.Tensor:
        ctx.save_for_backward(pre, theta)
        ctx.eps = eps
        return (pre > theta).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        pre, theta = ctx.saved_tensors
        return None, -grad / ctx.eps * _rect(pre, theta, ctx.eps), None


@torch.no_grad()
def init_thresholds(sae: TopKSAE, xs: torch.Tensor) -> None:
    """First-batch initialisation of a fresh SAE: thresholds at ``threshold_init`` or else
    at the ``k * N``-th largest pre-activation of ``xs``; a missing kernel width becomes
    ``0.2 x`` the (median) threshold. A loaded SAE keeps its thresholds."""
    cfg = sae.cfg
    if sae.threshold_updates == 0:
        if cfg.threshold_init is None:
            pre = encoder_preacts(xs, sae.W_enc, sae.b_enc, sae.b_dec).flatten()
            kth = float(pre.topk(min(pre.numel(), sae.k * xs.shape[0])).values.min())
            cfg.threshold_init = max(kth, 1e-3 * float(pre.abs().mean()) + 1e-12)
        sae.log_threshold.fill_(math.log(cfg.threshold_init))
        sae.threshold_updates = 1
    if cfg.bandwidth is None:
        cfg.bandwidth = BANDWIDTH_OF_THRESHOLD * float(sae.log_threshold.exp().median())


def forward_train(
    sae: TopKSAE,
    xs: torch.Tensor,
    dead_mask: torch.Tensor | None = None,
    *,
    compute_dtype: torch.dtype | None = None,
) -> ForwardOutput:
    """Training forward on scaled inputs; ``l0_penalty`` is this rank's share of the global
    batch's mean L0 (its sum over ranks is the mean) with the STE
    gradient. ``dead_mask`` is unused (no AuxK: dead latents recover through thresholds)."""
    if sae.threshold_updates == 0 or sae.cfg.bandwidth is None:
        # from the global batch, so every rank (and one process) starts alike
        init_thresholds(sae, ddp.all_gather_rows(xs) if sae.threshold_updates == 0 else xs)
    eps = float(sae.cfg.bandwidth or 0.0)
    theta = sae.log_threshold.exp()
    with torch.no_grad():
        pre = reused_preacts(xs.to(compute_dtype or xs.dtype), sae.W_enc, sae.b_enc, sae.b_dec)
        sel = mask_select(pre, pre > (theta.detach() - eps / 2).to(pre.dtype))
        del pre
    part = (sel.values, sel.indices, sel.offsets)
    (pre_g,) = sparse_preacts(xs, sae.W_enc, sae.b_enc, sae.b_dec, [part])
    theta_sel = theta[sel.indices]
    values = _JumpReLU.apply(pre_g, theta_sel, eps)
    n_total = ddp.total_rows(xs.shape[0])  # ranks' gradients are summed
    l0 = _Step.apply(pre_g, theta_sel, eps).sum() / max(1, n_total)
    (decoded,) = flat_decode_many([(values, sel.indices, sel.offsets)], sae.W_dec)
    return ForwardOutput(decoded + sae.b_dec, values, sel.indices, rows=sel.rows, l0_penalty=l0)


def l0_loss(sae: TopKSAE, out: ForwardOutput) -> torch.Tensor | None:
    """``l0_weight * L0 / k`` (None without an L0 penalty)."""
    if out.l0_penalty is None:
        return None
    return sae.l0_weight * out.l0_penalty / sae.k


@torch.no_grad()
def adapt_l0_weight(sae: TopKSAE, l0: float) -> None:
    """Multiplies the L0 weight by ``exp(l0_coef_adapt * (l0 / k - 1))`` (clamped), ``l0``
    being the step's mean active latents per row."""
    rate = sae.cfg.l0_coef_adapt
    if rate <= 0:
        return
    ratio = l0 / sae.k
    sae.l0_weight.mul_(math.exp(rate * max(-5.0, min(5.0, ratio - 1.0)))).clamp_(1e-6, 1e4)
