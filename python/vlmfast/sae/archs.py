"""One trainer, four architectures: what differs per ``SAEConfig.arch`` in a training step.

``topk`` is :class:`~vlmfast.sae.model.TopKSAE`'s own forward; ``batchtopk``
(:mod:`~vlmfast.sae.batchtopk`), ``matryoshka`` (:mod:`~vlmfast.sae.matryoshka`) and
``jumprelu`` (:mod:`~vlmfast.sae.jumprelu`) bring their forward, their extra loss terms
and their after-step updates (thresholds, L0 weight). All four share one module class,
one checkpoint layout and the encode/decode interface (threshold archs encode to padded
codes, see :mod:`vlmfast.ops.threshold`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from vlmfast.sae import batchtopk, jumprelu, matryoshka
from vlmfast.sae import distributed as ddp
from vlmfast.sae.arch_config import BATCH_ARCHS
from vlmfast.sae.config import SAEConfig
from vlmfast.sae.model import ForwardOutput, TopKSAE

FvuFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_sae(cfg: SAEConfig) -> TopKSAE:
    """Returns the SAE module of ``cfg`` (any arch; threshold state included)."""
    return TopKSAE.from_config(cfg)


def forward_train(
    sae: TopKSAE,
    xs: torch.Tensor,
    dead_mask: torch.Tensor | None,
    *,
    compute_dtype: torch.dtype | None = None,
) -> ForwardOutput:
    """The training forward of ``sae.cfg.arch`` on scaled inputs ``xs``."""
    arch = sae.cfg.arch
    if arch == "batchtopk":
        return batchtopk.forward_train(sae, xs, dead_mask, compute_dtype=compute_dtype)
    if arch == "matryoshka":
        return matryoshka.forward_train(sae, xs, dead_mask, compute_dtype=compute_dtype)
    if arch == "jumprelu":
        return jumprelu.forward_train(sae, xs, dead_mask, compute_dtype=compute_dtype)
    return sae.forward_train(xs, dead_mask, compute_dtype=compute_dtype)


def extra_loss(
    sae: TopKSAE, xs: torch.Tensor, out: ForwardOutput, fvu: FvuFn
) -> tuple[torch.Tensor | None, dict[str, float]]:
    """``(loss terms beyond FVU + AuxK or None, their values by name)``: Matryoshka's
    prefix FVUs, JumpReLU's L0 penalty."""
    if sae.cfg.arch == "matryoshka":
        term = matryoshka.prefix_losses(xs, out, fvu)
        return term, {} if term is None else {"prefix_fvu": float(term.detach())}
    if sae.cfg.arch == "jumprelu":
        term = jumprelu.l0_loss(sae, out)
        return term, {} if term is None else {"l0_loss": float(term.detach())}
    return None, {}


def after_step(sae: TopKSAE, out: ForwardOutput) -> None:
    """Post-optimiser updates: the BatchTopK threshold estimate, JumpReLU's L0 weight.

    Data-parallel: both see the global batch (its smallest selected activation, its mean
    L0), so every rank keeps the state one process would.
    """
    if sae.cfg.arch in BATCH_ARCHS:
        local = out.min_selected
        smallest = torch.tensor([math.inf if local is None else local], dtype=torch.float64)
        ddp.all_reduce_min_(smallest)
        low = float(smallest[0])
        batchtopk.update_threshold(sae, None if math.isinf(low) else low)
    elif sae.cfg.arch == "jumprelu" and out.l0_penalty is not None:
        l0 = torch.tensor([float(out.l0_penalty.detach())], dtype=torch.float64)
        ddp.all_reduce_sum_(l0)  # ranks' shares of the global mean
        jumprelu.adapt_l0_weight(sae, float(l0[0]))


def arch_state(sae: TopKSAE) -> dict[str, Any]:
    """Unfolded threshold state for ``trainer_state.pt`` (exact resume)."""
    state: dict[str, Any] = {"threshold_updates": sae.threshold_updates}
    if sae.cfg.arch in BATCH_ARCHS:
        state["threshold"] = sae.threshold.detach().cpu().clone()
    elif sae.cfg.arch == "jumprelu":
        state["log_threshold"] = sae.log_threshold.detach().cpu().clone()
        state["l0_weight"] = sae.l0_weight.detach().cpu().clone()
    return state


@torch.no_grad()
def load_arch_state(sae: TopKSAE, state: dict[str, Any]) -> None:
    """Restores :func:`arch_state` (missing keys: left as they are)."""
    sae.threshold_updates = int(state.get("threshold_updates", sae.threshold_updates))
    for name in ("threshold", "log_threshold", "l0_weight"):
        if name in state and hasattr(sae, name):
            getattr(sae, name).copy_(state[name])
