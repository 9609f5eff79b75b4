"""The image and text towers: embeddings, blocks, final LayerNorm, pooling, projection.

Each tower can run from any layer: ``run_from(layer, resid)`` continues the forward
from ``blocks.{layer}.resid_pre`` (``layer == layers`` skips all blocks), which is how
batched patching reuses a clean prefix computed once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmfast.errors import InputError, ShapeError
from vlmfast.models.config import TowerConfig
from vlmfast.models.hooks import HookContext
from vlmfast.models.layers import Block, LayerNorm, MapHead

if TYPE_CHECKING:
    from vlmfast.models.interventions import Intervention


@dataclass
class TowerOutput:
    """What a tower returns: the projected embedding, the pooled vector and the cache."""

    embed: Tensor
    """Projected, unnormalised embedding [B, embed_dim] (the ``embed`` hook)."""
    pooled: Tensor
    """Pooled vector before the projection [B, width] (the ``pooled`` hook)."""
    cache: dict[str, Tensor] = field(default_factory=dict)
    """Cached hook values, by full hook name."""


class Tower(nn.Module):
    """Common part of both towers: blocks, final LayerNorm, pooling and projection."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.prefix = config.modality
        p = self.prefix
        self.blocks = nn.ModuleList(
            Block(
                config.width,
                config.heads,
                config.head_dim,
                config.mlp_width,
                config.act,
                config.ln_eps,
                f"{p}.blocks.{i}",
            )
            for i in range(config.layers)
        )
        self.ln_final = (
            LayerNorm(config.width, config.ln_eps, f"{p}.ln_final.scale")
            if config.final_ln != "none"
            else None
        )
        self.pool_head = (
            MapHead(
                config.width,
                config.map_heads,
                config.map_mlp_width,
                config.act,
                config.ln_eps,
                f"{p}.pool",
            )
            if config.pool == "map"
            else None
        )
        if config.embed_dim is not None:
            self.proj_weight: nn.Parameter | None = nn.Parameter(
                torch.randn(config.embed_dim, config.width) * config.width**-0.5
            )
            self.proj_bias: nn.Parameter | None = (
                nn.Parameter(torch.zeros(config.embed_dim)) if config.proj_bias else None
            )
        else:
            self.proj_weight = None
            self.proj_bias = None
        self.n_token_embed = f"{p}.token_embed"
        self.n_embed_tokens = f"{p}.embed_tokens"
        self.n_ln_final = f"{p}.ln_final"
        self.n_pooled = f"{p}.pooled"
        self.n_embed = f"{p}.embed"
        self._hook_points = self._list_hook_points()

    # ---- hook points -------------------------------------------------------------------
    def _embedding_hook_points(self) -> list[str]:
        return [self.n_token_embed, self.n_embed_tokens]

    def _list_hook_points(self) -> list[str]:
        points = self._embedding_hook_points()
        for block in self.blocks:
            assert isinstance(block, Block)
            points.extend(block.hook_points)
        if self.ln_final is not None and self.config.final_ln == "pre_pool":
            points += [f"{self.prefix}.ln_final.scale", self.n_ln_final]
        if self.pool_head is not None:
            points.extend(self.pool_head.hook_points)
        if self.ln_final is not None and self.config.final_ln == "post_pool":
            points += [f"{self.prefix}.ln_final.scale", self.n_ln_final]
        points += [self.n_pooled, self.n_embed]
        return points

    def hook_points(self) -> list[str]:
        """Every hook name of this tower, in forward order."""
        return list(self._hook_points)

    # ---- forward -----------------------------------------------------------------------
    def embed_inputs(self, inputs: Tensor, ctx: HookContext | None = None) -> Tensor:
        """Embeddings up to ``blocks.0.resid_pre`` [B, T, d]."""
        raise NotImplementedError

    def _hook(self, ctx: HookContext | None, name: str, x: Tensor) -> Tensor:
        if ctx is not None and name in ctx.active:
            return ctx.apply(name, x)
        return x

    def _causal(self) -> bool:
        return False

    def _pool_rows(self, x: Tensor, tokens: Tensor | None) -> Tensor | None:
        """The one position each batch row's pooled vector reads [B], or None (mean, MAP)."""
        raise NotImplementedError

    def _pool_tokens(self, x: Tensor, tokens: Tensor | None) -> Tensor:
        rows = self._pool_rows(x, tokens)
        if rows is None:  # mean over image tokens, CLS excluded (open_clip/timm 'avg')
            return x[:, 1:].mean(dim=1) if self.config.class_token else x.mean(dim=1)
        return x[torch.arange(x.shape[0], device=x.device), rows]

    def _shortcut_rows(
        self, layer: int, x: Tensor, ctx: HookContext | None, tokens: Tensor | None
    ) -> Tensor | None:
        """Pooled positions when the last block may run on them alone, else None.

        It may when the tower pools one token (CLS, EOT, ...), at least one block runs,
        and no hook of the last block or of a pre-pool final LayerNorm is active (those
        hooks would see every position).
        """
        if layer >= self.config.layers or not self.pools_one_token:
            return None
        last = self.blocks[-1]
        assert isinstance(last, Block)
        if last.is_hooked(ctx):
            return None
        ln = self.ln_final if self.config.final_ln == "pre_pool" else None
        if ctx is not None and ln is not None and {self.n_ln_final, ln.scale_hook} & ctx.active:
            return None
        return self._pool_rows(x, tokens)

    def forward_from(
        self,
        layer: int,
        x: Tensor,
        ctx: HookContext | None = None,
        *,
        tokens: Tensor | None = None,
        all_rows: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Runs blocks ``layer..`` and the head from ``x`` = ``blocks.{layer}.resid_pre``.

        Returns ``(embed, pooled)``. Unless ``all_rows``, the last block runs only at the
        pooled position when nothing hooks it (``Block.forward_rows``): the same outputs,
        1/L fewer FLOPs. ``all_rows=True`` is the plain forward, for reference runs.
        """
        causal = self._causal()
        rows = None if all_rows else self._shortcut_rows(layer, x, ctx, tokens)
        blocks: list[Block] = list(self.blocks[layer:])  # type: ignore[arg-type]
        last = blocks.pop() if rows is not None else None
        for block in blocks:
            x = block(x, ctx, causal=causal)
        if last is not None and rows is not None:
            x = last.forward_rows(x, rows, causal=causal)
        return self._finish(x, ctx, tokens, at_rows=rows is not None)

    @property
    def pools_one_token(self) -> bool:
        """Whether the embedding reads one position of the last residual (not mean / MAP)."""
        return self.pool_head is None and self.config.pool not in ("mean", "map")

    def pooled_positions(self, x: Tensor, tokens: Tensor | None = None) -> Tensor | None:
        """The one position [B] each row's pooled vector reads, or None (mean or MAP pooling).

        With a position, only that row of the last residual matters to the embedding.
        """
        return self._pool_rows(x, tokens) if self.pools_one_token else None

    def embed_pooled_rows(self, x: Tensor) -> Tensor:
        """Embeddings [B, e] from the last block's output at ``pooled_positions`` [B, 1, d].

        For towers that pool one token; no hooks fire.
        """
        if not self.pools_one_token:
            raise InputError(
                f"the {self.prefix} tower pools with {self.config.pool!r}, not a single token"
            )
        if x.dim() != 3 or x.shape[1] != 1 or x.shape[2] != self.config.width:
            raise ShapeError(
                f"pooled rows of the {self.prefix} tower must be [B, 1, {self.config.width}], "
                f"got {tuple(x.shape)}"
            )
        return self._finish(x, None, None, at_rows=True)[0]

    def _finish(
        self, x: Tensor, ctx: HookContext | None, tokens: Tensor | None, *, at_rows: bool
    ) -> tuple[Tensor, Tensor]:
        """Final LayerNorm, pooling and projection of the last residual -> (embed, pooled).

        ``at_rows``: ``x`` [B, 1, d] is already the pooled position of each row.
        """
        cfg = self.config
        if self.ln_final is not None and cfg.final_ln == "pre_pool":
            x = self._hook(ctx, self.n_ln_final, self.ln_final(x, ctx))
        if self.pool_head is not None:
            pooled = self.pool_head(x, ctx)
        elif at_rows:
            pooled = x[:, 0]
        else:
            pooled = self._pool_tokens(x, tokens)
        if self.ln_final is not None and cfg.final_ln == "post_pool":
            pooled = self._hook(ctx, self.n_ln_final, self.ln_final(pooled, ctx))
        pooled = self._hook(ctx, self.n_pooled, pooled)
        if self.proj_weight is not None:
            embed = F.linear(pooled, self.proj_weight, self.proj_bias)
        else:
            embed = pooled
        embed = self._hook(ctx, self.n_embed, embed)
        return embed, pooled

    def forward(
        self, inputs: Tensor, ctx: HookContext | None = None, *, all_rows: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Full forward from pixels or token ids; returns ``(embed, pooled)``."""
        x = self.embed_inputs(inputs, ctx)
        tokens = inputs if self.config.modality == "text" else None
        return self.forward_from(0, x, ctx, tokens=tokens, all_rows=all_rows)

    def run(
        self,
        inputs: Tensor,
        *,
        cache: str | Iterable[str] | None = None,
        interventions: Sequence[Intervention] | None = None,
        all_rows: bool = False,
    ) -> TowerOutput:
        """Full forward of this tower alone with caching and interventions.

        ``all_rows=True`` turns off the pooled-row shortcut of the last block (reference runs).
        """
        ctx = HookContext.for_names(self._hook_points, cache, interventions)
        embed, pooled = self.forward(inputs, ctx, all_rows=all_rows)
        return TowerOutput(embed, pooled, ctx.cache if ctx is not None else {})

    def run_from(
        self,
        layer: int,
        resid: Tensor,
        *,
        tokens: Tensor | None = None,
        cache: str | Iterable[str] | None = None,
        interventions: Sequence[Intervention] | None = None,
        ctx: HookContext | None = None,
        all_rows: bool = False,
    ) -> TowerOutput:
        """Continues a forward from ``blocks.{layer}.resid_pre`` = ``resid`` [B, T, d].

        ``layer`` may equal ``config.layers`` (only the head runs). Hooks before
        ``blocks.{layer}.resid_pre`` never fire; ``blocks.{layer}.resid_pre`` itself does.
        The text tower needs ``tokens`` (the token ids of each row) for EOT pooling.
        Pass either ``cache``/``interventions`` or a prepared ``ctx``.
        """
        if not 0 <= layer <= self.config.layers:
            raise InputError(
                f"layer {layer} out of range for the {self.prefix} tower (0..{self.config.layers})"
            )
        if resid.dim() != 3 or resid.shape[-1] != self.config.width:
            raise ShapeError(
                f"resid for {self.prefix}.blocks.{layer}.resid_pre must be [B, T, "
                f"{self.config.width}], got {tuple(resid.shape)}"
            )
        if self.config.modality == "text" and self.config.pool in ("eot", "eos"):
            if tokens is None:
                raise InputError("text run_from with EOT pooling needs tokens= (the token ids)")
            if tokens.shape[0] != resid.shape[0]:
                raise ShapeError(
                    f"tokens has {tokens.shape[0]} rows but resid has {resid.shape[0]}"
                )
        if ctx is None:
            ctx = HookContext.for_names(self._hook_points, cache, interventions)
        elif cache or interventions:
            raise InputError("pass either ctx= or cache=/interventions=, not both")
        embed, pooled = self.forward_from(layer, resid, ctx, tokens=tokens, all_rows=all_rows)
        return TowerOutput(embed, pooled, ctx.cache if ctx is not None else {})


class ImageTower(Tower):
    """ViT image tower: patch embedding (+CLS), position embedding, optional ``ln_pre``."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__(config)
        c = config
        self.patch_weight = nn.Parameter(
            torch.randn(c.width, 3, c.patch_size, c.patch_size) * (3 * c.patch_size**2) ** -0.5
        )
        self.patch_bias = nn.Parameter(torch.zeros(c.width)) if c.patch_bias else None
        self.cls_token = (
            nn.Parameter(torch.randn(c.width) * c.width**-0.5) if c.class_token else None
        )
        self.pos_embed = nn.Parameter(torch.randn(c.n_tokens, c.width) * c.width**-0.5)
        self.ln_pre = LayerNorm(c.width, c.ln_eps, "image.ln_pre.scale") if c.pre_norm else None

    def _embedding_hook_points(self) -> list[str]:
        points = [self.n_token_embed, self.n_embed_tokens]
        if self.config.pre_norm:
            points.append("image.ln_pre.scale")
        return points

    def embed_inputs(self, inputs: Tensor, ctx: HookContext | None = None) -> Tensor:
        c = self.config
        if inputs.dim() != 4 or tuple(inputs.shape[1:]) != (3, c.image_size, c.image_size):
            raise ShapeError(
                f"images must be [B, 3, {c.image_size}, {c.image_size}] (use pair.preprocess), "
                f"got {tuple(inputs.shape)}"
            )
        inputs = inputs.to(self.pos_embed.dtype)
        x = F.conv2d(inputs, self.patch_weight, self.patch_bias, stride=c.patch_size)
        x = x.flatten(2).transpose(1, 2)  # [B, N, d]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.view(1, 1, -1).expand(x.shape[0], 1, -1), x], dim=1)
        x = self._hook(ctx, self.n_token_embed, x)
        x = self._hook(ctx, self.n_embed_tokens, x + self.pos_embed)
        if self.ln_pre is not None:
            x = self.ln_pre(x, ctx)
        return x

    def _pool_rows(self, x: Tensor, tokens: Tensor | None) -> Tensor | None:
        if self.config.pool == "cls":
            return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return None


class TextTower(Tower):
    """Text tower: token + position embedding, causal (CLIP) or bidirectional (SigLIP)."""

    def __init__(self, config: TowerConfig) -> None:
        super().__init__(config)
        c = config
        self.token_embed = nn.Parameter(torch.randn(c.vocab_size, c.width) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(c.context_length, c.width) * 0.01)

    def _causal(self) -> bool:
        return self.config.causal

    def embed_inputs(self, inputs: Tensor, ctx: HookContext | None = None) -> Tensor:
        c = self.config
        if inputs.dim() != 2 or inputs.shape[1] > c.context_length or inputs.shape[1] == 0:
            raise ShapeError(
                f"texts must be token ids [B, T] with 1 <= T <= {c.context_length} "
                f"(use pair.tokenize), got {tuple(inputs.shape)}"
            )
        if inputs.dtype not in (torch.int64, torch.int32):
            raise InputError(f"texts must be integer token ids, got dtype {inputs.dtype}")
        if inputs.numel() and (int(inputs.max()) >= c.vocab_size or int(inputs.min()) < 0):
            raise InputError(
                f"texts has token ids outside the vocabulary [0, {c.vocab_size}): "
                f"min {int(inputs.min())}, max {int(inputs.max())}"
            )
        x = F.embedding(inputs, self.token_embed)
        x = self._hook(ctx, self.n_token_embed, x)
        return self._hook(ctx, self.n_embed_tokens, x + self.pos_embed[: inputs.shape[1]])

    def _pool_rows(self, x: Tensor, tokens: Tensor | None) -> Tensor | None:
        pool = self.config.pool
        if pool in ("last", "first"):
            at = x.shape[1] - 1 if pool == "last" else 0
            return torch.full((x.shape[0],), at, dtype=torch.long, device=x.device)
        assert tokens is not None
        if pool == "eos":  # first occurrence of the EOS id (row 0 if absent, as open_clip)
            is_eos = torch.eq(tokens, int(self.config.eos_token_id or 0))
            return is_eos.int().argmax(dim=-1).to(x.device)
        # EOT pooling: the end-of-text token has the largest id in CLIP's vocabulary
        return tokens.argmax(dim=-1).to(x.device)


def build_tower(config: TowerConfig) -> Tower:
    """The tower class for ``config.modality``."""
    return ImageTower(config) if config.modality == "image" else TextTower(config)
