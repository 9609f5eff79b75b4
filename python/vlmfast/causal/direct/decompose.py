"""Exact linear decomposition of one tower's embedding into direct contributions.

TextSpan's decomposition (Gandelsman et al., ICLR'24), for any pooling vlmfast models.
The residual stream entering the final LayerNorm is a sum of parts::

    x = blocks.0.resid_pre                     ("embed": token/patch + position (+ ln_pre))
      + sum_L sum_h z_L[..., h, :] @ W_O[L, h]  (each head's write, "blocks.L.attn.h<h>")
      + sum_L out_bias[L]                       ("blocks.L.attn.bias")
      + sum_L mlp_out[L]                        ("blocks.L.mlp")

With the final LayerNorm's per-token scale (1/std) frozen from the clean run, the LN is
linear in ``x`` plus its bias (centering is linear, so each part is centred on its own:
nothing needs spreading across summands). Pooling is linear: a token (CLS, EOT, last,
first, EOS), a mean over tokens, or, for SigLIP's MAP head, the MAP attention with its
pattern frozen from the clean run, which is linear in the per-token values. The MAP
head's MLP is nonlinear: its clean output is reported as one term of its own
(``"pool.mlp"``), not spread over the parts; the MAP value and output biases form
``"pool.attn.bias"``. The projection is linear (its bias: ``"proj.bias"``).

So ``embed = sum of parts`` exactly (to float rounding), each part projected to the
embedding space. Per token weights ``w[b, g, t]`` (the pooling weight divided by the
frozen LN scale; ``g`` = MAP head, or a single route) make this cheap: a head's part is
``LNlin(sum_t w[b,g,t] z[b,t,h] @ W_O[h]) @ M_g`` with ``M_g = W_V[g]^T W_O[g]`` of the
MAP head (identity without one), so no ``[B, T, H, d]`` tensor is ever built.
``reference_parts`` is the plain per-token version the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlmfast.errors import HookNameError, InputError


@dataclass
class TowerParts:
    """Direct contributions of every component of one tower to its projected embedding."""

    tower: str
    """``"image"`` or ``"text"``."""
    names: list[str]
    """Name of each part (``embed``, ``blocks.L.attn.h<h>``, ``blocks.L.attn.bias``,
    ``blocks.L.mlp``, ``ln_final.bias``, ``pool.attn.bias``, ``pool.mlp``, ``proj.bias``)."""
    parts: Tensor
    """[P, B, E] each part's contribution to the projected embedding (sum = ``embed``)."""
    embed: Tensor
    """[B, E] the clean run's embedding (the ``embed`` hook)."""
    layers: int
    """Blocks of the tower."""
    heads: int
    """Heads per block."""
    source_parts: Tensor | None = None
    """[layers, B, E] with ``source_token=s``: the part of each layer's heads (summed) that
    reads from token ``s`` (its value, bias included, times the attention paid to it);
    TextSpan's "CLS" rung with ``s = 0``. Already contained in the head parts."""

    @property
    def head_slice(self) -> slice:
        """Rows of ``parts`` holding the heads, (layer, head) row-major."""
        return slice(1, 1 + self.layers * self.heads)

    @property
    def attn_bias_slice(self) -> slice:
        """Rows of ``parts`` holding each layer's attention out-projection bias."""
        start = 1 + self.layers * self.heads
        return slice(start, start + self.layers)

    @property
    def mlp_slice(self) -> slice:
        """Rows of ``parts`` holding each layer's MLP."""
        start = 1 + self.layers * self.heads + self.layers
        return slice(start, start + self.layers)

    @property
    def extra_slice(self) -> slice:
        """Rows after the MLPs: LN bias, MAP head terms, projection bias (those that exist)."""
        return slice(1 + self.layers * (self.heads + 2), len(self.names))


def part_names(layers: int, heads: int, extras: list[str]) -> list[str]:
    """The row names of ``TowerParts.parts`` in order."""
    names = ["embed"]
    names += [f"blocks.{L}.attn.h{h}" for L in range(layers) for h in range(heads)]
    names += [f"blocks.{L}.attn.bias" for L in range(layers)]
    names += [f"blocks.{L}.mlp" for L in range(layers)]
    return names + extras


def required_hooks(pair: Any, tower: str) -> list[str]:
    """Hooks the decomposition caches; HookNameError if the model lacks one."""
    cfg = pair.config.tower(tower)
    hooks = [f"{tower}.blocks.0.resid_pre"]
    for layer in range(cfg.layers):
        hooks += [f"{tower}.blocks.{layer}.attn.z", f"{tower}.blocks.{layer}.mlp_out"]
    if cfg.final_ln != "none":
        hooks.append(f"{tower}.ln_final.scale")
    if cfg.pool == "map":
        hooks += [f"{tower}.pool.attn.pattern", f"{tower}.pool.mlp_out"]
    hooks += [f"{tower}.pooled", f"{tower}.embed"]
    points = set(pair.hook_points())
    missing = [h for h in hooks if h not in points]
    if missing:
        raise HookNameError(
            f"direct effects need the hooks {missing} (per-head attn.z, mlp_out, the final "
            f"LayerNorm scale and the MAP pattern), which this {tower} tower does not have"
        )
    return hooks


def _pool_weights(cfg: Any, x: Tensor, tokens: Tensor | None, pattern: Tensor | None) -> Tensor:
    """Pooling weights ``[B, G, T]`` (before the LN scale): a token, a mean or the MAP pattern."""
    bsz, t = x.shape[0], x.shape[1]
    pool = cfg.pool
    if pool == "map":
        assert pattern is not None
        return pattern[:, :, 0, :].to(x.dtype)  # [B, H', 1, T] -> [B, H', T]
    w = torch.zeros(bsz, 1, t, dtype=x.dtype, device=x.device)
    if pool == "mean":
        start = 1 if cfg.class_token and cfg.modality == "image" else 0
        w[:, 0, start:] = 1.0 / (t - start)
        return w
    rows = torch.arange(bsz, device=x.device)
    if pool in ("cls", "first"):
        idx = torch.zeros(bsz, dtype=torch.long, device=x.device)
    elif pool == "last":
        idx = torch.full((bsz,), t - 1, dtype=torch.long, device=x.device)
    elif pool == "eos":
        assert tokens is not None
        idx = torch.eq(tokens, int(cfg.eos_token_id or 0)).int().argmax(dim=-1)
    elif pool == "eot":
        assert tokens is not None
        idx = tokens.argmax(dim=-1)
    else:  # pragma: no cover - TowerConfig.validate rejects other pools
        raise InputError(f"unsupported pooling {pool!r}")
    w[rows, 0, idx] = 1.0
    return w


def _fast_hooks(pair: Any, tower: str, inputs: Tensor, source_token: int | None) -> list[str]:
    cfg = pair.config.tower(tower)
    hooks = required_hooks(pair, tower)
    if source_token is not None:
        if not 0 <= source_token < int(inputs.shape[1] if tower == "text" else cfg.n_tokens):
            raise InputError(f"source_token {source_token} is not a token of the {tower} tower")
        for layer in range(cfg.layers):
            hooks += [f"{tower}.blocks.{layer}.attn.pattern", f"{tower}.blocks.{layer}.attn.v"]
    return hooks


def _frozen_weights(cfg: Any, c: dict[str, Tensor], pool_w: Tensor) -> Tensor:
    """Pooling weights divided by the frozen final-LN scale: ``[B, G, T]``."""
    name = f"{cfg.modality}.ln_final.scale"
    if cfg.final_ln == "pre_pool":
        return pool_w / c[name][..., 0][:, None, :]  # scale [B, T]
    if cfg.final_ln == "post_pool":
        return pool_w / c[name].reshape(pool_w.shape[0])[:, None, None]  # scale [B]
    return pool_w


def _fast_extras(
    module: Any,
    cfg: Any,
    c: dict[str, Tensor],
    pool_w: Tensor,
    readout: Any,
    out: list[Tensor],
    dtype: torch.dtype,
) -> list[str]:
    """Appends the LN-bias and MAP-head pooled parts ([B, 1, d]) to ``out``; their names."""
    x0 = c[f"{cfg.modality}.blocks.0.resid_pre"]
    bsz, width = x0.shape[0], x0.shape[-1]
    extras: list[str] = []
    if cfg.final_ln != "none":
        b = module.ln_final.bias.detach().to(dtype)
        if cfg.final_ln == "pre_pool":
            bias_v = pool_w.sum(-1)[..., None] * b  # [B, G, d]
            out.append(readout(bias_v[:, :, None], lnlin=False))
        else:
            out.append(b.expand(bsz, 1, width))
        extras.append("ln_final.bias")
    if cfg.pool == "map":
        attn = module.pool_head.attn
        inner = attn.heads * attn.head_dim
        b_v = attn.in_proj_bias.detach().to(dtype)[2 * inner :].view(attn.heads, attn.head_dim)
        const = torch.einsum("he,hew->w", b_v, attn.W_O.detach().to(dtype))
        const = const + attn.out_bias.detach().to(dtype)
        out.append(const.expand(bsz, 1, width))
        out.append(c[f"{cfg.modality}.pool.mlp_out"].reshape(bsz, 1, width))
        extras += ["pool.attn.bias", "pool.mlp"]
    return extras


def _project(module: Any, pooled: Tensor, dtype: torch.dtype) -> tuple[Tensor, list[str]]:
    """[P, B, d] pooled parts -> [P(+1), B, E] embedding parts (+ ``proj.bias``)."""
    if module.proj_weight is None:
        return pooled, []
    parts = pooled @ module.proj_weight.detach().to(dtype).T
    if module.proj_bias is None:
        return parts, []
    pb = module.proj_bias.detach().to(dtype)
    return torch.cat([parts, pb.expand(1, parts.shape[1], pb.shape[0])], dim=0), ["proj.bias"]


def tower_parts(
    pair: Any,
    tower: str,
    inputs: Tensor,
    dtype: torch.dtype = torch.float64,
    *,
    source_token: int | None = None,
) -> TowerParts:
    """Decomposes ``tower``'s embedding of ``inputs`` (one clean forward, hooks cached).

    ``source_token=s`` also fills ``source_parts`` (what each layer's heads read from
    token ``s``; caches ``attn.pattern`` and ``attn.v``).
    """
    cfg = pair.config.tower(tower)
    module = pair.tower(tower)
    hooks = _fast_hooks(pair, tower, inputs, source_token)
    with torch.no_grad():
        cache = module.run(inputs, cache=hooks).cache
    c = {k: v.detach().to(dtype) for k, v in cache.items()}
    tokens = inputs if tower == "text" else None
    x0 = c[f"{tower}.blocks.0.resid_pre"]
    pool_w = _pool_weights(cfg, x0, tokens, c.get(f"{tower}.pool.attn.pattern"))  # [B, G, T]
    w = _frozen_weights(cfg, c, pool_w)
    ln_w = module.ln_final.weight.detach().to(dtype) if cfg.final_ln != "none" else None

    route: Tensor | None = None  # [G, d, d]: MAP value path per MAP head
    if cfg.pool == "map":
        attn = module.pool_head.attn
        route = attn.W_V.detach().to(dtype).transpose(1, 2) @ attn.W_O.detach().to(dtype)

    def readout(v: Tensor, lnlin: bool = True) -> Tensor:
        """[B, G, K, d] token-weighted sums -> [B, K, d] pooled parts."""
        if lnlin and ln_w is not None:
            v = (v - v.mean(dim=-1, keepdim=True)) * ln_w
        if route is not None:
            return torch.einsum("bgkd,gde->bke", v, route)
        return v[:, 0]

    pooled_parts: list[Tensor] = [readout(torch.einsum("bgt,btd->bgd", w, x0)[:, :, None])]
    head_parts, bias_parts, mlp_parts, src_parts = [], [], [], []
    for layer in range(cfg.layers):
        attn = module.blocks[layer].attn
        w_o = attn.W_O.detach().to(dtype)
        z = c[f"{tower}.blocks.{layer}.attn.z"]  # [B, T, H, dh]
        zbar = torch.einsum("bgt,bthe->bghe", w, z)
        hv = torch.einsum("bghe,hew->bghw", zbar, w_o)
        head_parts.append(readout(hv))  # [B, H, d]
        if source_token is not None:
            pat = c[f"{tower}.blocks.{layer}.attn.pattern"][..., source_token]  # [B, H, Tq]
            v_s = c[f"{tower}.blocks.{layer}.attn.v"][:, source_token]  # [B, H, dh]
            zsrc = torch.einsum("bgt,bht,bhe->bghe", w, pat, v_s)
            src_parts.append(readout(torch.einsum("bghe,hew->bghw", zsrc, w_o)).sum(1))
        ob = attn.out_bias.detach().to(dtype)
        bias_parts.append(readout((w.sum(-1)[..., None] * ob)[:, :, None]))
        mlp = c[f"{tower}.blocks.{layer}.mlp_out"]
        mlp_parts.append(readout(torch.einsum("bgt,btd->bgd", w, mlp)[:, :, None]))
    pooled_parts.append(torch.cat(head_parts, dim=1))
    pooled_parts += bias_parts + mlp_parts

    extras = _fast_extras(module, cfg, c, pool_w, readout, pooled_parts, dtype)
    pooled = torch.cat(pooled_parts, dim=1).transpose(0, 1)  # [P, B, d]
    parts, proj_extras = _project(module, pooled, dtype)
    extras += proj_extras
    names = part_names(cfg.layers, cfg.heads, extras)
    assert len(names) == parts.shape[0]
    src: Tensor | None = None
    if source_token is not None:
        src = torch.stack(src_parts)  # [L, B, d]
        if module.proj_weight is not None:
            src = src @ module.proj_weight.detach().to(dtype).T
    return TowerParts(tower, names, parts, c[f"{tower}.embed"], cfg.layers, cfg.heads, src)


def reference_parts(
    pair: Any, tower: str, inputs: Tensor, dtype: torch.dtype = torch.float64
) -> TowerParts:
    """The same decomposition computed the plain way (per token, from ``attn.head_out``).

    Every part is a ``[B, T, d]`` residual tensor pushed through the frozen LN token by
    token, then pooled (index / mean / MAP attention with the frozen pattern), then
    projected. Slow and memory-hungry; the reference for ``tower_parts``.
    """
    cfg = pair.config.tower(tower)
    module = pair.tower(tower)
    hooks = required_hooks(pair, tower)
    hooks += [f"{tower}.blocks.{L}.attn.head_out" for L in range(cfg.layers)]
    with torch.no_grad():
        cache = module.run(inputs, cache=hooks).cache
    c = {k: v.detach().to(dtype) for k, v in cache.items()}
    x0 = c[f"{tower}.blocks.0.resid_pre"]
    bsz, t, width = x0.shape
    ln = module.ln_final

    def ln_lin(v: Tensor) -> Tensor:  # v [B, T, d] or [B, d], LN with frozen scale, no bias
        s = c[f"{tower}.ln_final.scale"].reshape(*v.shape[:-1], 1)
        return (v - v.mean(-1, keepdim=True)) / s * ln.weight.detach().to(dtype)

    def pool(v: Tensor) -> Tensor:  # [B, T, d] -> [B, d]
        if cfg.pool == "map":
            attn = module.pool_head.attn
            pat = c[f"{tower}.pool.attn.pattern"][:, :, 0, :]  # [B, H', T]
            out = torch.zeros(bsz, width, dtype=dtype)
            for g in range(attn.heads):
                val = v @ attn.W_V[g].detach().to(dtype).T  # [B, T, dh]
                mixed = (pat[:, g, :, None] * val).sum(1)  # [B, dh]
                out = out + mixed @ attn.W_O[g].detach().to(dtype)
            return out
        if cfg.pool == "mean":
            start = 1 if cfg.class_token and cfg.modality == "image" else 0
            return v[:, start:].mean(1)
        tokens = inputs if tower == "text" else None
        w = _pool_weights(cfg, v, tokens, None)[:, 0]  # one-hot [B, T]
        return (w[..., None] * v).sum(1)

    def through(v: Tensor) -> Tensor:
        if cfg.final_ln == "pre_pool":
            return pool(ln_lin(v))
        if cfg.final_ln == "post_pool":
            return ln_lin(pool(v))
        return pool(v)

    rows: list[Tensor] = [through(x0)]
    for layer in range(cfg.layers):
        ho = c[f"{tower}.blocks.{layer}.attn.head_out"]
        rows += [through(ho[:, :, h]) for h in range(cfg.heads)]
    for layer in range(cfg.layers):
        ob = module.blocks[layer].attn.out_bias.detach().to(dtype)
        rows.append(through(ob.expand(bsz, t, width).clone()))
    for layer in range(cfg.layers):
        rows.append(through(c[f"{tower}.blocks.{layer}.mlp_out"]))
    extras = _reference_extras(module, cfg, c, pool, rows, dtype)
    pooled = torch.stack(rows)
    if module.proj_weight is not None:
        parts = pooled @ module.proj_weight.detach().to(dtype).T
        if module.proj_bias is not None:
            pb = module.proj_bias.detach().to(dtype)
            parts = torch.cat([parts, pb.expand(1, bsz, pb.shape[0])])
            extras.append("proj.bias")
    else:
        parts = pooled
    names = part_names(cfg.layers, cfg.heads, extras)
    return TowerParts(tower, names, parts, c[f"{tower}.embed"], cfg.layers, cfg.heads)


def _reference_extras(
    module: Any, cfg: Any, c: dict[str, Tensor], pool: Any, rows: list[Tensor], dtype: torch.dtype
) -> list[str]:
    """Appends the LN-bias and MAP-head rows of ``reference_parts``; returns their names."""
    x0 = c[f"{cfg.modality}.blocks.0.resid_pre"]
    bsz, t, width = x0.shape
    extras: list[str] = []
    if cfg.final_ln != "none":
        b = module.ln_final.bias.detach().to(dtype).expand(bsz, t, width)
        rows.append(pool(b) if cfg.final_ln == "pre_pool" else b[:, 0])
        extras.append("ln_final.bias")
    if cfg.pool == "map":
        attn = module.pool_head.attn
        inner = attn.heads * attn.head_dim
        b_v = attn.in_proj_bias.detach().to(dtype)[2 * inner :].view(attn.heads, attn.head_dim)
        val_out = sum(b_v[g] @ attn.W_O[g].detach().to(dtype) for g in range(attn.heads))
        rows.append((val_out + attn.out_bias.detach().to(dtype)).expand(bsz, width))
        rows.append(c[f"{cfg.modality}.pool.mlp_out"][:, 0])
        extras += ["pool.attn.bias", "pool.mlp"]
    return extras
