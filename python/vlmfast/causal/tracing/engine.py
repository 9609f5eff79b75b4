"""The two tracing engines: batched prefix reuse (fast) and ROME's serial loop (reference).

A *restoration* is (kind, layer, set of units): the corrupted tower's run with those
units taken from the clean run. Both engines evaluate a list of restorations at one
layer and return the metric of each, averaged over the noise samples.

Batched: the corrupted forward ran once (``S`` noise samples x ``B`` rows) and kept
every layer's ``resid_pre``; the restorations of one layer are stacked along the batch
(``V`` restorations x ``S`` x ``B`` rows, restoration-major) and continued from the
first layer they touch with ``tower.run_from``, at most ``max_rows`` rows per forward.

Serial (``kmeng01/rome`` ``trace_with_patch``): for each example and restoration, one
full forward of ``1 + S`` rows, row 0 clean and rows 1..S corrupted, the restored units
copied from row 0 into the other rows inside that same forward. Being the reference, it
runs every position of every block (``all_rows=True``), so the batched engine's
pooled-row shortcut in the last block is checked against the plain forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.core.conventions import check_metric_output
from vlmfast.causal.core.metrics import Metric, similarity
from vlmfast.models.interventions import Intervention

Restoration = tuple[int, ...]
"""The units (positions, or heads for ``"heads"``) one restoration restores."""


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """ROME's window centred on ``layer``: ``[max(0, L - w//2), min(n, L - (-w//2)))``."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


class CorruptEmbed(Intervention):
    """``x * keep + add`` at ``{tower}.token_embed``: zeroes and/or noises embeddings."""

    def __init__(self, hook: str, keep: Tensor | None, add: Tensor | None) -> None:
        super().__init__(hook)
        self.keep = keep
        self.add = add

    def apply(self, name: str, x: Tensor) -> Tensor:
        if self.keep is not None:
            x = x * self.keep.to(dtype=x.dtype, device=x.device)
        if self.add is not None:
            x = x + self.add.to(dtype=x.dtype, device=x.device)
        return x


class RestoreStacked(Intervention):
    """Rows ``[V, S, B]`` (restoration-major): where ``mask[v]`` holds, the clean value of row b.

    ``clean`` is ``[B, ...]`` (the hook without its batch dim after B); ``mask`` is a
    bool tensor broadcastable to ``[V, 1, 1, ...]``.
    """

    def __init__(self, hook: str, clean: Tensor, mask: Tensor, n_samples: int) -> None:
        super().__init__(hook)
        self.clean = clean
        self.mask = mask
        self.n_samples = n_samples

    def apply(self, name: str, x: Tensor) -> Tensor:
        n_rows = self.clean.shape[0]
        n_var = x.shape[0] // (self.n_samples * n_rows)
        xv = x.view(n_var, self.n_samples, n_rows, *x.shape[1:])
        clean = self.clean.to(dtype=x.dtype).unsqueeze(0).unsqueeze(0)
        return torch.where(self.mask, clean, xv).reshape(x.shape)


class CopyFromRow0(Intervention):
    """ROME's restore: ``h[1:, units] = h[0, units]`` along ``axis`` (1 positions, 2 heads)."""

    def __init__(self, hook: str, axis: int, units: Sequence[int]) -> None:
        super().__init__(hook)
        self.axis = axis
        self.units = list(units)

    def apply(self, name: str, x: Tensor) -> Tensor:
        sel = torch.zeros(x.shape[self.axis], dtype=torch.bool, device=x.device)
        sel[self.units] = True
        shape = [1] * x.dim()
        shape[self.axis] = x.shape[self.axis]
        rows = torch.arange(x.shape[0], device=x.device) >= 1
        mask = sel.view(shape) & rows.view([-1] + [1] * (x.dim() - 1))
        return torch.where(mask, x[0:1], x)


@dataclass
class TraceSetup:
    """Everything both engines need, prepared once by ``vlmfast.causal.tracing.prepare``."""

    pair: Any
    tower: str
    inputs: Tensor
    """The corrupted tower's clean inputs [B, ...] (pixels or token ids)."""
    tokens: Tensor | None
    """Token ids [B, T] when the corrupted tower is the text tower (EOT pooling)."""
    corrupted_inputs: Tensor | None
    """Replacement inputs of the corrupted run (instead of embedding noise), or None."""
    keep: Tensor | None
    """[B, T, 1] multiplier of the token embeddings (0 where zeroed), or None."""
    noise: Tensor | None
    """[S, B, T, d] additive embedding noise (0 outside the corrupted positions), or None."""
    n_samples: int
    other_embeds: Tensor
    metric: Metric
    space: str
    scale: Tensor
    bias: Tensor | None
    n_layers: int
    window: int
    max_rows: int
    clean_cache: dict[str, Tensor]
    corrupt_cache: dict[str, Tensor]
    progress: Callable[[int], None] | None = None

    # ---- shared helpers ------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return int(self.inputs.shape[0])

    def hook(self, name: str) -> str:
        return f"{self.tower}.{name}"

    def score(self, embeds: Tensor) -> Tensor:
        """Metric of embeddings ``[V, B, E]`` of the corrupted tower vs the clean other tower."""
        if self.tower == "image":
            sim = similarity(embeds, self.other_embeds, self.scale, self.bias, self.space)
        else:
            sim = similarity(self.other_embeds, embeds, self.scale, self.bias, self.space)
        out = self.metric(sim)
        check_metric_output(out, embeds.shape[0], "metric")
        return out.double()

    def corruption(self, rows: str) -> CorruptEmbed | None:
        """The embedding corruption for the batched ``[S, B]`` rows or serial rows of one example."""
        if self.keep is None and self.noise is None:
            return None
        hook = self.hook("token_embed")
        if rows == "batched":
            keep = None if self.keep is None else self.keep.repeat(self.n_samples, 1, 1)
            add = None if self.noise is None else self.noise.flatten(0, 1)
            return CorruptEmbed(hook, keep, add)
        b = int(rows)
        keep_b = add_b = None
        if self.keep is not None:
            ones = torch.ones_like(self.keep[b : b + 1])
            keep_b = torch.cat([ones, self.keep[b : b + 1].expand(self.n_samples, -1, -1)])
        if self.noise is not None:
            zeros = torch.zeros_like(self.noise[0, b : b + 1])
            add_b = torch.cat([zeros, self.noise[:, b]])
        return CorruptEmbed(hook, keep_b, add_b)

    def _tick(self, n: int) -> None:
        if self.progress is not None:
            self.progress(n)

    # ---- batched ---------------------------------------------------------------------------
    def start_layer(self, kind: str, layer: int) -> int:
        if kind == "resid":
            return layer + 1
        if kind == "heads":
            return layer
        return window_layers(layer, self.window, self.n_layers)[0]

    def _start_resid(self, start: int) -> Tensor:
        if start == self.n_layers:
            return self.corrupt_cache[self.hook(f"blocks.{start - 1}.resid_post")]
        return self.corrupt_cache[self.hook(f"blocks.{start}.resid_pre")]

    def _unit_mask(self, kind: str, sets: Sequence[Restoration], size: int) -> Tensor:
        mask = torch.zeros(len(sets), size, dtype=torch.bool, device=self.inputs.device)
        for v, units in enumerate(sets):
            mask[v, list(units)] = True
        return mask

    def _first_block_qkv(self, layer: int, start: int) -> tuple[Tensor, Tensor] | None:
        """Corrupted ``[S*B, T, 3hd]`` and clean ``[B, T, 3hd]`` qkv of block ``start``.

        A ``resid`` restoration at ``layer`` changes block ``start = layer + 1``'s input at
        the restored positions only, so its qkv there is the clean run's and elsewhere the
        corrupted run's: both are projected once per layer and spliced per restoration.
        None when block ``start`` is the last one (its pooled-row shortcut is cheaper).
        """
        if start >= self.n_layers - 1:
            return None
        block = self.pair.tower(self.tower).blocks[start]
        corrupt = self._start_resid(start)
        clean = self.clean_cache[self.hook(f"blocks.{layer}.resid_post")]
        return block.attn.qkv(block.ln1(corrupt)), block.attn.qkv(block.ln1(clean))

    def _splice_first_block(
        self, start: int, resid: Tensor, qkv: tuple[Tensor, Tensor], mask: Tensor
    ) -> Tensor:
        """Block ``start`` on the restored rows from the spliced qkv (see ``_first_block_qkv``)."""
        corrupt, clean = qkv
        n_var = mask.shape[0]
        shaped = corrupt.view(1, self.n_samples, *clean.shape).expand(n_var, -1, -1, -1, -1)
        rows = torch.where(mask, clean.unsqueeze(0).unsqueeze(0), shaped)
        block = self.pair.tower(self.tower).blocks[start]
        causal = self.pair.tower(self.tower)._causal()
        return block.forward_qkv(
            resid, rows.reshape(resid.shape[0], *clean.shape[1:]), causal=causal
        )

    def restore_batched(self, kind: str, layer: int, sets: Sequence[Restoration]) -> Tensor:
        """Metric of each restoration in ``sets`` at ``layer``: float64 Tensor[len(sets)]."""
        s_b = self.n_samples * self.n_rows
        per_forward = max(1, self.max_rows // s_b)
        start = self.start_layer(kind, layer)
        base = self._start_resid(start)
        out = torch.empty(len(sets), dtype=torch.float64)
        spliced = self._first_block_qkv(layer, start) if kind == "resid" else None
        for lo in range(0, len(sets), per_forward):
            chunk = sets[lo : lo + per_forward]
            n_var = len(chunk)
            resid = base.repeat(n_var, 1, 1)
            interventions: list[Intervention] = []
            if kind == "resid":
                clean = self.clean_cache[self.hook(f"blocks.{layer}.resid_post")]
                mask = self._unit_mask(kind, chunk, clean.shape[1]).view(n_var, 1, 1, -1, 1)
                shaped = resid.view(n_var, self.n_samples, *clean.shape)
                resid = torch.where(mask, clean.unsqueeze(0).unsqueeze(0), shaped)
                resid = resid.reshape(n_var * s_b, *clean.shape[1:])
            elif kind == "heads":
                hook = self.hook(f"blocks.{layer}.attn.z")
                clean = self.clean_cache[hook]
                mask = self._unit_mask(kind, chunk, clean.shape[2]).view(n_var, 1, 1, 1, -1, 1)
                interventions.append(RestoreStacked(hook, clean, mask, self.n_samples))
            else:
                for wl in window_layers(layer, self.window, self.n_layers):
                    hook = self.hook(f"blocks.{wl}.{kind}")
                    clean = self.clean_cache[hook]
                    mask = self._unit_mask(kind, chunk, clean.shape[1]).view(n_var, 1, 1, -1, 1)
                    interventions.append(RestoreStacked(hook, clean, mask, self.n_samples))
            tokens = None if self.tokens is None else self.tokens.repeat(n_var * self.n_samples, 1)
            from_layer = start
            if spliced is not None:
                resid = self._splice_first_block(start, resid, spliced, mask)
                from_layer = start + 1
            embeds = (
                self.pair.tower(self.tower)
                .run_from(from_layer, resid, tokens=tokens, interventions=interventions or None)
                .embed
            )
            values = self.score(embeds.view(n_var * self.n_samples, self.n_rows, -1))
            out[lo : lo + n_var] = values.view(n_var, self.n_samples).mean(1).cpu()
            self._tick(n_var)
        return out

    # ---- serial (ROME) ---------------------------------------------------------------------
    def _restore_hooks(self, kind: str, layer: int, units: Restoration) -> list[Intervention]:
        if kind == "resid":
            return [CopyFromRow0(self.hook(f"blocks.{layer}.resid_post"), 1, units)]
        if kind == "heads":
            return [CopyFromRow0(self.hook(f"blocks.{layer}.attn.z"), 2, units)]
        return [
            CopyFromRow0(self.hook(f"blocks.{wl}.{kind}"), 1, units)
            for wl in window_layers(layer, self.window, self.n_layers)
        ]

    def _example_inputs(self, b: int) -> Tensor:
        clean = self.inputs[b : b + 1]
        if self.corrupted_inputs is not None:
            return torch.cat([clean, self.corrupted_inputs[b : b + 1]])
        return clean.expand(1 + self.n_samples, *clean.shape[1:]).contiguous()

    def restore_serial(
        self, kind: str, layer: int, sets: Sequence[Restoration], *, all_rows: bool = True
    ) -> Tensor:
        """Same as ``restore_batched``, one ``1 + S``-row full forward per example and set.

        ``all_rows=False`` lets those forwards take the last block's pooled-row shortcut
        when the restoration does not hook the last block (benchmarks only).
        """
        tower = self.pair.tower(self.tower)
        out = torch.empty(len(sets), dtype=torch.float64)
        for v, units in enumerate(sets):
            embeds = []
            for b in range(self.n_rows):
                interventions = self._restore_hooks(kind, layer, units)
                corrupt = self.corruption(str(b))
                if corrupt is not None:
                    interventions.insert(0, corrupt)
                run = tower.run(
                    self._example_inputs(b), interventions=interventions, all_rows=all_rows
                )
                embeds.append(run.embed[1:])  # [S, E]
            stacked = torch.stack(embeds, dim=1)  # [S, B, E]
            out[v] = self.score(stacked).mean().cpu()
            self._tick(1)
        return out

    def restore(
        self, kind: str, layer: int, sets: Sequence[Restoration], method: str = "batched"
    ) -> Tensor:
        """Metric of each restoration (float64 Tensor[len(sets)]), by either engine."""
        if not sets:
            return torch.empty(0, dtype=torch.float64)
        if method == "serial":
            return self.restore_serial(kind, layer, sets)
        return self.restore_batched(kind, layer, sets)
