"""AtP*'s exact softmax for query and key patches of one attention layer (Kramar et al. 2024).

Patching the residual stream ``blocks.L.resid_pre`` at position ``p`` changes block L's
query, key and value at ``p`` (exactly: they depend on that position alone, so their
patched values are the source run's). Plain AtP differentiates through ``ln1``, the
projections and the softmax. AtP* keeps the skip path (``dm/d resid_mid``) linear and
replaces the attention path by three parts computed with the base run's gradients:

* values: ``sum_h (v_src[p] - v_base[p]) . dm/dv[p]`` (z is linear in v);
* query: ``sum_h (softmax(q_src[p] K_base^T) - A[p]) . dm/dA[p]``: the softmax is
  recomputed exactly with query ``p`` patched;
* key: ``sum_h sum_t (A'[t] - A[t]) . dm/dA[t]`` where ``A'`` is the pattern with only
  key ``p`` patched, for each key on its own. Patching one logit ``l[t, s] -> l'[t, s]``
  gives the closed form (no loop over keys, O(T^2) per head)::

      A'[t, s] = sigmoid(l'[t, s] - log sum_{j != s} exp l[t, j])
      A'[t, j] = A[t, j] * (1 - A'[t, s]) / (1 - A[t, s])          (j != s)
      (A'[t] - A[t]) . g[t] = A'[t, s] g[t, s] + (1 - A'[t, s]) G[t, s] - S[t]

  with ``S[t] = A[t] . g[t]`` and ``G[t, s]`` the pattern-weighted mean of ``g`` over the
  other keys. The sums over the other keys come from prefix/suffix sums shifted by the
  largest other logit (``_others``), never as ``1 - A[t, s]``, which cancels to 0 exactly
  when attention saturates.

The linearisation through the softmax is what fails when attention is saturated; here
no derivative of the softmax is taken. What remains approximate is everything downstream
of block L's attention, and the interaction of the query, key and value patches (each is
patched on its own). Everything runs in float64.

Heads (``attn.z``) need no fix: AtP on z uses the exact ``z_src - z_base``, so the head's
own softmax is never linearised.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _logits(q: Tensor, k: Tensor, causal: bool) -> Tensor:
    """``[B, H, Tq, Tk]`` scaled dot products from ``[B, T, H, dh]`` queries and keys."""
    out = torch.einsum("bthe,bshe->bhts", q, k) / math.sqrt(q.shape[-1])
    if causal:
        t_q, t_k = out.shape[-2:]
        future = torch.ones(t_q, t_k, dtype=torch.bool, device=out.device).triu(1)
        out = out.masked_fill(future, float("-inf"))
    return out


def _exclusive_sum(x: Tensor) -> Tensor:
    """``out[..., s] = sum_{j != s} x[..., j]`` from prefix and suffix sums (no subtraction,
    so no cancellation when ``x[..., s]`` dominates)."""
    zero = torch.zeros_like(x[..., :1])
    prefix = torch.cat([zero, x.cumsum(-1)[..., :-1]], dim=-1)
    suffix = torch.cat([x.flip(-1).cumsum(-1).flip(-1)[..., 1:], zero], dim=-1)
    return prefix + suffix


def _others(logits: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For each key ``s`` of each query ``t``: ``(R, RG, c)`` with
    ``sum_{j != s} exp(l[t, j]) = exp(c) * R`` and ``sum_{j != s} exp(l[t, j]) g[t, j] =
    exp(c) * RG``, where ``c`` is the largest *other* logit, so ``R >= 1`` whenever another
    key is visible: saturated rows (``A[t, s]`` within 1e-300 of 1) stay exact."""
    t_k = logits.shape[-1]
    if t_k >= 2:
        top = logits.topk(2, dim=-1)
        m1, m2, arg = top.values[..., :1], top.values[..., 1:2], top.indices[..., :1]
    else:
        m1, arg = logits, torch.zeros_like(logits, dtype=torch.long)
        m2 = torch.full_like(logits, float("-inf"))
    is_max = torch.arange(t_k, device=logits.device) == arg
    sums = []
    for m in (m1, m2):
        c = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        e = torch.exp(logits - c)  # masked keys: exp(-inf) = 0
        sums.append((_exclusive_sum(e), _exclusive_sum(e * g), c.expand_as(logits)))
    (r1, rg1, c1), (r2, rg2, c2) = sums
    return (
        torch.where(is_max, r2, r1),
        torch.where(is_max, rg2, rg1),
        torch.where(is_max, c2, c1),
    )


def qk_fixed_position_scores(
    q_base: Tensor,
    k_base: Tensor,
    v_base: Tensor,
    q_src: Tensor,
    k_src: Tensor,
    v_src: Tensor,
    grad_pattern: Tensor,
    grad_v: Tensor,
    causal: bool,
) -> Tensor:
    """The attention part of the AtP* score of patching each position of one layer, ``[T]``.

    Summed over batch rows and heads: values (linear) + the query at ``t`` patched with the
    softmax recomputed exactly + the key at ``t`` patched on its own (closed form above).
    ``q/k/v_*``: ``[B, T, H, dh]``; ``grad_pattern``: dm/dA ``[B, H, T, T]``; ``grad_v``:
    dm/dv ``[B, T, H, dh]``, all at the base run.
    """
    f = torch.float64
    qb, kb, qs, ks = (x.to(f) for x in (q_base, k_base, q_src, k_src))
    g = grad_pattern.to(f)
    values = ((v_src.to(f) - v_base.to(f)) * grad_v.to(f)).sum(dim=(0, 2, 3))

    logits = _logits(qb, kb, causal)
    attn = logits.softmax(dim=-1)
    s_row = (attn * g).sum(dim=-1, keepdim=True)  # S[t]

    # every query row's softmax is independent: patch all queries in one pass
    query_attn = _logits(qs, kb, causal).softmax(dim=-1)
    queries = ((query_attn - attn) * g).sum(dim=(0, 1, 3))

    key_logits = torch.einsum("bthe,bshe->bhts", qb, ks) / math.sqrt(qb.shape[-1])
    rest, rest_g, shift = _others(logits, g)
    x = key_logits - (shift + torch.log(rest))  # +inf where no other key is visible
    a_new, a_rest = torch.sigmoid(x), torch.sigmoid(-x)
    other_mean = torch.where(rest > 0, rest_g / rest.clamp_min(1e-300), 0.0)
    delta = a_new * g + a_rest * other_mean - s_row
    visible = torch.isfinite(logits)  # masked (future) keys stay masked
    keys = torch.where(visible, delta, 0.0).sum(dim=(0, 1, 2))
    return (values + queries + keys).to(torch.float32)
