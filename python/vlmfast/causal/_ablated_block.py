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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vlmfast.models.layers import Block


def _rows(term: Tensor, rows: int) -> Tensor:
    """``[1 or n, T, d]`` -> ``[rows, T, d]`` (a per-row term is tiled over the n-row copies)."""
    if term.shape[0] == rows:
        return term
    if term.shape[0] == 1:
        return term.expand(rows, -1, -1)
    return term.repeat(rows // term.shape[0], 1, 1)


def _attention(block: Block, h: Tensor, keep: Tensor, value: Tensor, causal: bool) -> Tensor:
    """Attention output ``[B, T, d]`` with heads ``~keep`` fixed to ``value`` [1|n, T, H, dh]."""
    attn = block.attn
    heads, dh = attn.heads, attn.head_dim
    kept = torch.nonzero(keep).flatten()
    dropped = torch.nonzero(~keep).flatten()
    width = attn.out_weight.shape[0]
    w_out = attn.out_weight.view(width, heads, dh)
    out = attn.out_bias.view(1, 1, -1)
    if dropped.numel():
        v = value[:, :, dropped].to(h.dtype).flatten(2)  # [1|n, T, a*dh]
        out = out + F.linear(v, w_out[:, dropped].flatten(1))
    if kept.numel():
        w_in = attn.in_proj_weight.view(3, heads, dh, -1)[:, kept].flatten(0, 2)
        b_in = attn.in_proj_bias.view(3, heads, dh)[:, kept].flatten()
        bsz, t, _ = h.shape
        qkv = F.linear(h, w_in, b_in).view(bsz, t, 3, kept.numel(), dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        z = z.transpose(1, 2).reshape(bsz, t, kept.numel() * dh)
        return F.linear(z, w_out[:, kept].flatten(1)) + _rows(out, bsz)
    return _rows(out, h.shape[0])


def _mlp(block: Block, h: Tensor, keep: Tensor, value: Tensor) -> Tensor:
    """MLP output ``[B, T, d]`` with neurons ``~keep`` fixed to ``value`` [1|n, T, mlp]."""
    mlp = block.mlp
    kept = torch.nonzero(keep).flatten()
    dropped = torch.nonzero(~keep).flatten()
    out = mlp.fc2_bias.view(1, 1, -1)
    if dropped.numel():
        out = out + F.linear(value[:, :, dropped].to(h.dtype), mlp.fc2_weight[:, dropped])
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
) -> Tensor:
    """``block(x)`` with heads ``~head_keep`` and neurons ``~neuron_keep`` ablated.

    ``head_keep`` [H] / ``neuron_keep`` [mlp] are bool (None: keep every one); values are
    ``[1, T, H, dh]`` / ``[1, T, mlp]`` (the same for every row) or ``[n, T, ...]`` with
    ``x.shape[0]`` a multiple of n (row ``i`` of each n-row copy takes row ``i``).
    """
    if head_keep is None or bool(head_keep.all()):
        x = x + block.attn(block.ln1(x), causal=causal)
    else:
        assert head_value is not None
        x = x + _attention(block, block.ln1(x), head_keep, head_value, causal)
    if neuron_keep is None or bool(neuron_keep.all()):
        return x + block.mlp(block.ln2(x))
    assert neuron_value is not None
    return x + _mlp(block, block.ln2(x), neuron_keep, neuron_value)
