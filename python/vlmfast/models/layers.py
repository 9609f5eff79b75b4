"""The building blocks of the hooked towers: LayerNorm, attention, MLP, block, MAP head.

Every hook site follows one pattern::

    if ctx is not None and name in ctx.active:
        x = ctx.apply(name, x)

so a run with no hooks runs plain torch ops (``F.scaled_dot_product_attention`` for
attention) with no per-hook overhead. The attention pattern is materialised only when
``attn.pattern`` is cached or intervened on, and ``attn.head_out`` (each head's write to
the residual stream) only when it is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmfast.models.hooks import HookContext

_BLOCK_POINTS = (
    "resid_pre",
    "ln1.scale",
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.pattern",
    "attn.z",
    "attn.head_out",
    "attn_out",
    "resid_mid",
    "ln2.scale",
    "mlp.pre",
    "mlp.post",
    "mlp_out",
    "resid_post",
)
_ATTN_POINTS = ("q", "k", "v", "pattern", "z", "head_out")


def block_hook_points(prefix: str) -> list[str]:
    """Hook names of one block, in forward order (``prefix`` like ``image.blocks.3``)."""
    return [f"{prefix}.{p}" for p in _BLOCK_POINTS]


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's ``x * sigmoid(1.702 x)``."""
    return x * torch.sigmoid(1.702 * x)


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "quick_gelu": quick_gelu,
    "gelu_tanh": _gelu_tanh,
}


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The activation function for a ``TowerConfig.act`` name."""
    return _ACTIVATIONS[name]


class LayerNorm(nn.Module):
    """LayerNorm whose scale (the per-token std) is a hook point, ``<name>.scale`` [..., 1].

    Freezing the scale from a clean run (``vf.FreezeLayerNorm``) makes the norm linear,
    which decompositions into per-component contributions need.
    """

    def __init__(self, width: int, eps: float, scale_hook: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps
        self.scale_hook = scale_hook

    def forward(self, x: Tensor, ctx: HookContext | None = None) -> Tensor:
        if ctx is None or self.scale_hook not in ctx.active:
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        centered = x - x.mean(dim=-1, keepdim=True)
        scale = (centered.pow(2).mean(dim=-1, keepdim=True) + self.eps).sqrt()
        scale = ctx.apply(self.scale_hook, scale)
        return centered / scale * self.weight + self.bias


class Attention(nn.Module):
    """Multi-head attention with per-head hooks ``{prefix}.{q,k,v,pattern,z,head_out}``.

    Weights are stored fused: ``in_proj_weight`` [3*H*dh, d] (q, k, v stacked, as
    ``nn.MultiheadAttention`` does) and ``out_weight`` [d, H*dh]. ``W_Q``/``W_K``/``W_V``/
    ``W_O`` give per-head views. ``query`` and ``key_value`` may differ (MAP pooling head).
    """

    def __init__(self, width: int, heads: int, head_dim: int, prefix: str) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.head_dim = head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner))
        self.out_weight = nn.Parameter(torch.empty(width, inner))
        self.out_bias = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.in_proj_weight, std=width**-0.5)
        nn.init.normal_(self.out_weight, std=inner**-0.5)
        self.names = {p: f"{prefix}.{p}" for p in _ATTN_POINTS}
        self._hooked = frozenset(self.names.values())

    # per-head weight views, [H, dh, d] for q/k/v and [H, dh, d] (transposed) for the output
    @property
    def W_Q(self) -> Tensor:
        """Query weights per head, [H, dh, d]."""
        inner = self.heads * self.head_dim
        return self.in_proj_weight[:inner].view(self.heads, self.head_dim, -1)

    @property
    def W_K(self) -> Tensor:
        """Key weights per head, [H, dh, d]."""
        inner = self.heads * self.head_dim
        return self.in_proj_weight[inner : 2 * inner].view(self.heads, self.head_dim, -1)

    @property
    def W_V(self) -> Tensor:
        """Value weights per head, [H, dh, d]."""
        inner = self.heads * self.head_dim
        return self.in_proj_weight[2 * inner :].view(self.heads, self.head_dim, -1)

    @property
    def W_O(self) -> Tensor:
        """Output weights per head, [H, dh, d]: head h writes ``z[..., h, :] @ W_O[h]``."""
        width = self.out_weight.shape[0]
        return self.out_weight.view(width, self.heads, self.head_dim).permute(1, 2, 0)

    def forward(
        self,
        query: Tensor,
        ctx: HookContext | None = None,
        *,
        key_value: Tensor | None = None,
        causal: bool = False,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Attention output before the residual add, [B, Tq, d].

        ``attn_mask`` (bool, True = may attend, broadcastable to [B, H, Tq, Tk]) is for
        unhooked runs only (the pooled-row shortcut of ``Block.forward_rows``).
        """
        bsz, t_q, _ = query.shape
        heads, dh = self.heads, self.head_dim
        if key_value is None:
            q, k, v = self._split_qkv(self.qkv(query))
        else:
            inner = heads * dh
            t_kv = key_value.shape[1]
            q = F.linear(query, self.in_proj_weight[:inner], self.in_proj_bias[:inner])
            q = q.view(bsz, t_q, heads, dh).transpose(1, 2)
            kv = F.linear(key_value, self.in_proj_weight[inner:], self.in_proj_bias[inner:])
            k, v = kv.view(bsz, t_kv, 2, heads, dh).permute(2, 0, 3, 1, 4).unbind(0)
        # q, k, v: [B, H, T, dh]
        if ctx is None or not (self._hooked & ctx.active):
            return self._attend(q, k, v, causal=causal, attn_mask=attn_mask)
        if attn_mask is not None:
            raise ValueError("attn_mask is only supported on unhooked attention runs")
        return self._hooked_forward(q, k, v, ctx, causal)

    def qkv(self, x: Tensor) -> Tensor:
        """The fused query/key/value projection ``[B, T, 3*H*dh]`` of ``x`` (no hooks)."""
        return F.linear(x, self.in_proj_weight, self.in_proj_bias)

    def attend_qkv(self, qkv: Tensor, *, causal: bool = False) -> Tensor:
        """Attention output from a precomputed ``qkv(x)`` [B, T, 3*H*dh] (no hooks)."""
        return self._attend(*self._split_qkv(qkv), causal=causal)

    def _split_qkv(self, qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[B, T, 3*H*dh]`` -> q, k, v, each ``[B, H, T, dh]``."""
        bsz, t, _ = qkv.shape
        q, k, v = qkv.view(bsz, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, *, causal: bool, attn_mask: Tensor | None = None
    ) -> Tensor:
        """Unhooked attention and output projection from q [B, H, Tq, dh], k/v [B, H, Tk, dh]."""
        z = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=causal)
        bsz, heads, t_q, dh = z.shape
        return F.linear(
            z.transpose(1, 2).reshape(bsz, t_q, heads * dh), self.out_weight, self.out_bias
        )

    def _hooked_forward(
        self, q: Tensor, k: Tensor, v: Tensor, ctx: HookContext, causal: bool
    ) -> Tensor:
        names, active = self.names, ctx.active
        # per-head hooks see [B, T, H, dh]
        if names["q"] in active:
            q = ctx.apply(names["q"], q.transpose(1, 2)).transpose(1, 2)
        if names["k"] in active:
            k = ctx.apply(names["k"], k.transpose(1, 2)).transpose(1, 2)
        if names["v"] in active:
            v = ctx.apply(names["v"], v.transpose(1, 2)).transpose(1, 2)
        if names["pattern"] in active:
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
            if causal:
                t_q, t_k = scores.shape[-2:]
                future = torch.ones(t_q, t_k, dtype=torch.bool, device=scores.device).triu(1)
                scores = scores.masked_fill(future, float("-inf"))
            pattern = ctx.apply(names["pattern"], scores.softmax(dim=-1))
            z = pattern @ v
        else:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        z = z.transpose(1, 2)  # [B, T, H, dh]
        if names["z"] in active:
            z = ctx.apply(names["z"], z)
        if names["head_out"] in active:
            head_out = torch.einsum("bthe,hew->bthw", z, self.W_O)
            head_out = ctx.apply(names["head_out"], head_out)
            return head_out.sum(dim=2) + self.out_bias
        bsz, t_q = z.shape[:2]
        return F.linear(z.reshape(bsz, t_q, -1), self.out_weight, self.out_bias)


class MLP(nn.Module):
    """Two-layer MLP; ``mlp.pre`` is before and ``mlp.post`` (the neurons) after the nonlinearity."""

    def __init__(self, width: int, hidden: int, act: str, prefix: str) -> None:
        super().__init__()
        self.fc1_weight = nn.Parameter(torch.empty(hidden, width))
        self.fc1_bias = nn.Parameter(torch.zeros(hidden))
        self.fc2_weight = nn.Parameter(torch.empty(width, hidden))
        self.fc2_bias = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.fc1_weight, std=width**-0.5)
        nn.init.normal_(self.fc2_weight, std=hidden**-0.5)
        self.act = activation(act)
        self.pre_name = f"{prefix}.pre"
        self.post_name = f"{prefix}.post"

    def forward(self, x: Tensor, ctx: HookContext | None = None) -> Tensor:
        pre = F.linear(x, self.fc1_weight, self.fc1_bias)
        if ctx is not None and self.pre_name in ctx.active:
            pre = ctx.apply(self.pre_name, pre)
        post = self.act(pre)
        if ctx is not None and self.post_name in ctx.active:
            post = ctx.apply(self.post_name, post)
        return F.linear(post, self.fc2_weight, self.fc2_bias)


class Block(nn.Module):
    """A pre-LN transformer block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))``."""

    def __init__(
        self,
        width: int,
        heads: int,
        head_dim: int,
        mlp_width: int,
        act: str,
        eps: float,
        prefix: str,
    ) -> None:
        super().__init__()
        self.ln1 = LayerNorm(width, eps, f"{prefix}.ln1.scale")
        self.attn = Attention(width, heads, head_dim, f"{prefix}.attn")
        self.ln2 = LayerNorm(width, eps, f"{prefix}.ln2.scale")
        self.mlp = MLP(width, mlp_width, act, f"{prefix}.mlp")
        self.prefix = prefix
        self.hook_points = block_hook_points(prefix)
        self._hooked = frozenset(self.hook_points)
        self.n_resid_pre = f"{prefix}.resid_pre"
        self.n_attn_out = f"{prefix}.attn_out"
        self.n_resid_mid = f"{prefix}.resid_mid"
        self.n_mlp_out = f"{prefix}.mlp_out"
        self.n_resid_post = f"{prefix}.resid_post"

    def forward(self, x: Tensor, ctx: HookContext | None = None, *, causal: bool = False) -> Tensor:
        if ctx is None or not (self._hooked & ctx.active):
            x = x + self.attn(self.ln1(x), causal=causal)
            return x + self.mlp(self.ln2(x))
        active = ctx.active
        if self.n_resid_pre in active:
            x = ctx.apply(self.n_resid_pre, x)
        attn_out = self.attn(self.ln1(x, ctx), ctx, causal=causal)
        if self.n_attn_out in active:
            attn_out = ctx.apply(self.n_attn_out, attn_out)
        x = x + attn_out
        if self.n_resid_mid in active:
            x = ctx.apply(self.n_resid_mid, x)
        mlp_out = self.mlp(self.ln2(x, ctx), ctx)
        if self.n_mlp_out in active:
            mlp_out = ctx.apply(self.n_mlp_out, mlp_out)
        x = x + mlp_out
        if self.n_resid_post in active:
            x = ctx.apply(self.n_resid_post, x)
        return x

    def is_hooked(self, ctx: HookContext | None) -> bool:
        """Whether any of this block's hooks caches or intervenes in ``ctx``."""
        return ctx is not None and bool(self._hooked & ctx.active)

    def forward_qkv(self, x: Tensor, qkv: Tensor, *, causal: bool = False) -> Tensor:
        """The block's output given ``qkv = attn.qkv(ln1(x))`` computed elsewhere (no hooks).

        Causal tracing restores one position of a corrupted residual: every other
        position's projection is the corrupted run's, so it is computed once per layer
        and spliced instead of once per restoration.
        """
        x = x + self.attn.attend_qkv(qkv, causal=causal)
        return x + self.mlp(self.ln2(x))

    def forward_rows(self, x: Tensor, rows: Tensor, *, causal: bool = False) -> Tensor:
        """The block's output at one position per batch row, ``[B, 1, d]`` (no hooks).

        ``rows`` [B] is the position each batch row keeps (the pooled CLS/EOT token).
        Keys and values still come from every position (a causal tower masks those
        after ``rows``), but the query, the output projection and the MLP run on one
        position: the last block of a CLS- or EOT-pooled tower needs nothing more.
        """
        out = x[torch.arange(x.shape[0], device=x.device), rows].unsqueeze(1)
        out = out + self.attend_rows(self.ln1(x), rows, causal=causal)
        return out + self.mlp(self.ln2(out))

    def attend_rows(self, h: Tensor, rows: Tensor, *, causal: bool = False) -> Tensor:
        """Attention output ``[B, 1, d]`` of queries at ``rows`` [B] over ``h = ln1(x)`` (no hooks).

        Keys and values come from every position of ``h``; a causal tower masks those after
        ``rows``.
        """
        mask = causal_row_mask(rows, h.shape[1]) if causal else None
        query = h[torch.arange(h.shape[0], device=h.device), rows].unsqueeze(1)
        return self.attn(query, key_value=h, attn_mask=mask)


def causal_row_mask(rows: Tensor, length: int) -> Tensor:
    """Bool ``[B, 1, 1, length]``: which keys a causal query at position ``rows[b]`` sees."""
    positions = torch.arange(length, device=rows.device)
    return (positions.view(1, -1) <= rows.view(-1, 1)).view(rows.shape[0], 1, 1, length)


_MAP_POINTS = (
    "attn.q",
    "attn.k",
    "attn.v",
    "attn.pattern",
    "attn.z",
    "attn.head_out",
    "attn_out",
    "ln.scale",
    "mlp.pre",
    "mlp.post",
    "mlp_out",
)


class MapHead(nn.Module):
    """SigLIP's multihead attention pooling (MAP): a learned probe attends over all tokens.

    ``pooled = a + mlp(ln(a))`` with ``a = attn(probe, tokens)``; hooks live under
    ``{prefix}`` (``image.pool``): ``attn.{q,k,v,pattern,z,head_out}`` (query length 1),
    ``attn_out``, ``ln.scale``, ``mlp.{pre,post}``, ``mlp_out``.
    """

    def __init__(
        self, width: int, heads: int, mlp_width: int, act: str, eps: float, prefix: str
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"MAP head width {width} is not divisible by its {heads} heads")
        self.probe = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.attn = Attention(width, heads, width // heads, f"{prefix}.attn")
        self.ln = LayerNorm(width, eps, f"{prefix}.ln.scale")
        self.mlp = MLP(width, mlp_width, act, f"{prefix}.mlp")
        self.hook_points = [f"{prefix}.{p}" for p in _MAP_POINTS]
        self.n_attn_out = f"{prefix}.attn_out"
        self.n_mlp_out = f"{prefix}.mlp_out"

    def forward(self, tokens: Tensor, ctx: HookContext | None = None) -> Tensor:
        """Pooled vector [B, d] from tokens [B, T, d]."""
        probe = self.probe.expand(tokens.shape[0], -1, -1)
        a = self.attn(probe, ctx, key_value=tokens)
        if ctx is not None and self.n_attn_out in ctx.active:
            a = ctx.apply(self.n_attn_out, a)
        m = self.mlp(self.ln(a, ctx), ctx)
        if ctx is not None and self.n_mlp_out in ctx.active:
            m = ctx.apply(self.n_mlp_out, m)
        return (a + m)[:, 0]
