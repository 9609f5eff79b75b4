"""One transformer block with some heads and MLP neurons replaced by fixed values, computed sparsely.

A circuit evaluation ablates every component outside the circuit: an ablated head's
``attn.z`` and an ablated neuron's ``mlp.post`` take a value that does not depend on the
row (zero or a mean) or is given per clean row (resample). The hooked forward still
computes them and overwrites the result; here they are never computed:

- attention: q/k/v, scores and z only for the kept heads; the ablated heads' share of the
  output projection, ``value_z[ablated] @ W_O[ablated]``, is one ``[1 or n, T, d]`` term;
- MLP: ``fc1``/activation only for the kept neurons; the ablated neurons' share of
  ``fc2`` is likewise one term.

So a block that keeps few heads costs its MLP alone, and one that also keeps few neurons
little more than its LayerNorms. The result equals the hooked forward up to float
summation order (tested against ``SetAblated`` interventions).

Two more modes serve the blocks after a variant's last position-mixing layer (the engine
decides which): with ``rows`` [B] (one position per batch row: the pooled CLS/EOT token)
the output is ``[B, 1, d]`` at those positions, keys/values of the kept heads still from
every position; with ``pooled=True`` as well, ``x`` is already ``[B, 1, d]`` at those
positions and the block keeps no head (its attention is the ablated heads' fixed share
there, so nothing crosses positions).

``sparse_layer`` runs one such block for groups of variants (groups with equal keeps
batched together) and ``last_mixing_layer`` finds, per variant, the last block whose
output at one position still depends on other positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmfast.models.layers import Block, causal_row_mask


def _rows(term: Tensor, rows: int) -> Tensor:
    """``[1 or n, T, d]`` -> ``[rows, T, d]`` (a per-row term is tiled over the n-row copies)."""
    if term.shape[0] == rows:
        return term
    if term.shape[0] == 1:
        return term.expand(rows, -1, -1)
    return term.repeat(rows // term.shape[0], 1, 1)


def _at(term: Tensor, rows: Tensor | None) -> Tensor:
    """A ``[1 or n, T, d]`` term at each batch row's position ``rows`` [B] -> ``[B, 1, d]``.

    Batch row ``b`` is clean row ``b % n`` (the batch is copies of the n clean rows). A
    position-free term (``T == 1``: a bias) and ``rows=None`` pass through.
    """
    if rows is None or term.shape[1] == 1:
        return term
    which = torch.arange(rows.shape[0], device=term.device) % term.shape[0]
    return term[which, rows].unsqueeze(1)


def _attention(
    block: Block,
    h: Tensor | None,
    keep: Tensor,
    value: Tensor,
    causal: bool,
    rows: Tensor | None,
    bsz: int,
) -> Tensor:
    """Attention output with heads ``~keep`` fixed to ``value`` [1|n, T, H, dh].

    ``[B, T, d]``, or ``[B, 1, d]`` at ``rows`` when given (``h``: ``ln1`` of the full
    input; None when no head is kept).
    """
    attn = block.attn
    heads, dh = attn.heads, attn.head_dim
    kept = torch.nonzero(keep).flatten()
    dropped = torch.nonzero(~keep).flatten()
    width = attn.out_weight.shape[0]
    w_out = attn.out_weight.view(width, heads, dh)
    out = attn.out_bias.view(1, 1, -1)
    if dropped.numel():
        v = value[:, :, dropped].flatten(2)  # [1|n, T, a*dh]
        out = out + F.linear(v.to(attn.out_weight.dtype), w_out[:, dropped].flatten(1))
    out = _at(out, rows)
    if not kept.numel():
        return _rows(out, bsz)
    assert h is not None
    a = kept.numel()
    w_in = attn.in_proj_weight.view(3, heads, dh, -1)[:, kept]
    b_in = attn.in_proj_bias.view(3, heads, dh)[:, kept]
    t = h.shape[1]
    mask = None
    if rows is None:
        qkv = F.linear(h, w_in.flatten(0, 2), b_in.flatten()).view(bsz, t, 3, a, dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    else:  # queries at the pooled positions only, keys and values everywhere
        batch = torch.arange(bsz, device=h.device)
        q = F.linear(h[batch, rows], w_in[0].flatten(0, 1), b_in[0].flatten())
        q = q.view(bsz, 1, a, dh).transpose(1, 2)
        kv = F.linear(h, w_in[1:].flatten(0, 2), b_in[1:].flatten()).view(bsz, t, 2, a, dh)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        mask = causal_row_mask(rows, t) if causal else None
    z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and rows is None)
    z = z.transpose(1, 2).reshape(bsz, q.shape[2], a * dh)
    return F.linear(z, w_out[:, kept].flatten(1)) + _rows(out, bsz)


def _mlp(block: Block, h: Tensor, keep: Tensor, value: Tensor, rows: Tensor | None) -> Tensor:
    """MLP output ``[B, T', d]`` with neurons ``~keep`` fixed to ``value`` [1|n, T, mlp].

    ``h`` is ``ln2`` of the block's mid residual, ``[B, 1, d]`` at ``rows`` when given.
    """
    mlp = block.mlp
    kept = torch.nonzero(keep).flatten()
    dropped = torch.nonzero(~keep).flatten()
    out = mlp.fc2_bias.view(1, 1, -1)
    if dropped.numel():
        out = out + F.linear(value[:, :, dropped].to(h.dtype), mlp.fc2_weight[:, dropped])
    out = _at(out, rows)
    if kept.numel():
        post = mlp.act(F.linear(h, mlp.fc1_weight[kept], mlp.fc1_bias[kept]))
        return F.linear(post, mlp.fc2_weight[:, kept]) + _rows(out, h.shape[0])
    return _rows(out, h.shape[0])


def ablated_block(
    block: Block,
    x: Tensor,
    *,
    head_keep: Tensor | None,
    head_value: Tensor | None,
    neuron_keep: Tensor | None,
    neuron_value: Tensor | None,
    causal: bool,
    rows: Tensor | None = None,
    pooled: bool = False,
) -> Tensor:
    """``block(x)`` with heads ``~head_keep`` and neurons ``~neuron_keep`` ablated.

    ``head_keep`` [H] / ``neuron_keep`` [mlp] are bool (None: keep every one); values are
    ``[1, T, H, dh]`` / ``[1, T, mlp]`` (the same for every row) or ``[n, T, ...]`` with
    ``x.shape[0]`` a multiple of n (row ``i`` of each n-row copy takes row ``i``).
    ``rows`` [B]: return ``[B, 1, d]`` at those positions only; ``pooled``: ``x`` is
    already ``[B, 1, d]`` there (then every head must be ablated).
    """
    bsz = x.shape[0]
    all_heads = head_keep is None or bool(head_keep.all())
    no_head = head_keep is not None and not bool(head_keep.any())
    if pooled and (rows is None or not no_head):
        raise ValueError("a block on pooled rows needs rows= and must ablate every head")
    if rows is None or pooled:
        resid = x
    else:
        resid = x[torch.arange(bsz, device=x.device), rows].unsqueeze(1)
    if all_heads:
        h = block.ln1(x)
        a = (
            block.attn(h, causal=causal)
            if rows is None
            else block.attend_rows(h, rows, causal=causal)
        )
    else:
        assert head_keep is not None and head_value is not None
        h_in = None if no_head else block.ln1(x)
        a = _attention(block, h_in, head_keep, head_value, causal, rows, bsz)
    x = resid + a
    if neuron_keep is None or bool(neuron_keep.all()):
        return x + block.mlp(block.ln2(x))
    assert neuron_value is not None
    return x + _mlp(block, block.ln2(x), neuron_keep, neuron_value, rows)


# ---------------------------------------------------------------- groups of variants


def last_mixing_layer(
    patterns: Tensor,
    plans: Sequence[dict[str, tuple[list[int], Tensor]] | None],
    mod: Any,
    every: int | None,
) -> Tensor:
    """Per pattern, the last block whose output at one position depends on other positions.

    That is a block with a kept head: a hooked block (``plan`` None), one without a head
    family, one whose head family misses some heads, or one keeping any of them; -1 when
    none does. ``every`` (not None) forces that value for every pattern.
    """
    count = patterns.shape[0]
    if every is not None:
        return torch.full((count,), every, dtype=torch.long)
    last = torch.full((count,), -1, dtype=torch.long)
    for layer, plan in enumerate(plans):
        heads = None if plan is None else plan.get("heads")
        if heads is None or len(set(heads[0])) < mod.blocks[layer].attn.heads:
            last[:] = layer
        else:
            last[patterns[:, heads[0]].any(1)] = layer
    return last


def sparse_layer(
    block: Any,
    x: Tensor,
    rep_patterns: Tensor,
    plan: dict[str, tuple[list[int], Tensor]],
    n: int,
    causal: bool,
    rows: Tensor | None = None,
    pooled: bool = False,
) -> Tensor:
    """Block output for ``G`` groups of ``n`` rows each, groups with equal keeps batched.

    ``rows`` [G * n]: the output at those positions only, ``[G * n, 1, d]`` (``pooled``:
    ``x`` is already there); see ``ablated_block``.
    """
    if not plan:  # no ablatable node at this block: every group runs it plainly
        if rows is None:
            return block(x, causal=causal)
        return block.forward_rows(x, rows, causal=causal)  # never pooled: its heads mix
    n_groups = rep_patterns.shape[0]
    heads = plan.get("heads")
    neurons = plan.get("neurons")
    parts = []
    if heads is not None:
        parts.append(rep_patterns[:, heads[0]])
    if neurons is not None:
        parts.append(rep_patterns[:, neurons[0]])
    key = torch.cat(parts, 1)
    buckets, which = torch.unique(key, dim=0, return_inverse=True)
    xs = x.view(n_groups, n, *x.shape[1:])
    t_out = x.shape[1] if rows is None else 1
    out = torch.empty(n_groups, n, t_out, x.shape[2], dtype=x.dtype)
    for b in range(buckets.shape[0]):
        idx = torch.nonzero(which == b).flatten()
        g0 = int(idx[0])
        yb = ablated_block(
            block,
            xs[idx].flatten(0, 1),
            head_keep=None if heads is None else rep_patterns[g0, heads[0]],
            head_value=None if heads is None else heads[1],
            neuron_keep=None if neurons is None else rep_patterns[g0, neurons[0]],
            neuron_value=None if neurons is None else neurons[1],
            causal=causal,
            rows=None if rows is None else rows[: idx.numel() * n],
            pooled=pooled,
        )
        out[idx] = yb.view(idx.numel(), n, t_out, x.shape[2])
    return out.flatten(0, 1)
