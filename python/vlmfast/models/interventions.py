"""Interventions: edits applied to hook values during a forward, composable and batched.

Protocol (write your own, e.g. an SAE splice, by subclassing ``Intervention``)::

    class Splice(Intervention):
        def __init__(self, hook, sae):
            super().__init__(hook)
            self.sae = sae

        def apply(self, name, x):          # x: the hook's value, e.g. [B, T, d]
            return self.sae.decode(*self.sae.encode(x))   # same shape as x

- ``hook`` is a hook name or a glob; ``targets(hook_points)`` resolves it (unknown names
  raise ``HookNameError`` with close matches).
- ``apply(name, x)`` gets the current value at one hook and returns a tensor of the same
  shape (a different shape raises ``ShapeError``). Interventions at the same hook run in
  the order given; the cache records the value after all of them.
- Batching: every built-in intervention takes ``rows=`` (target batch rows, default all)
  and selectors ``positions=``, ``heads=``, ``neurons=`` (the last dimension: neurons of
  ``mlp.post``, residual dimensions, ``d_head`` dimensions). A selector is ``None`` (all),
  an int, a sequence of ints (same for every row) or ``PerRow(...)`` (a different choice
  per row), so one forward can run many different edits, one per batch row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from vlmfast.errors import InputError, ShapeError
from vlmfast.models.hooks import HookLayout, layout_for, resolve_hooks


class PerRow:
    """A per-row selector: row ``b`` of the batch uses ``choices[b]``.

    ``choices`` is a 1-D int tensor/list with one index per row (``-1``: nothing in that
    row), a list of lists of ints (ragged, several per row), or a bool tensor [B, n].
    """

    def __init__(self, choices: Tensor | Sequence[int] | Sequence[Sequence[int]]) -> None:
        self.choices = choices

    def __repr__(self) -> str:
        c = self.choices
        n = c.shape[0] if isinstance(c, Tensor) else len(c)
        return f"PerRow(<{n} rows>)"

    def mask(self, bsz: int, size: int, device: torch.device, what: str) -> Tensor:
        """Bool mask [B, size]."""
        c = self.choices
        if isinstance(c, Tensor) and c.dtype == torch.bool:
            if tuple(c.shape) != (bsz, size):
                raise ShapeError(
                    f"PerRow bool mask for {what} must be [{bsz}, {size}], got {tuple(c.shape)}"
                )
            return c.to(device)
        if isinstance(c, Tensor) or (len(c) > 0 and not isinstance(c[0], Sequence | Tensor)):
            idx = torch.as_tensor(c, dtype=torch.long, device=device).reshape(-1)
            if idx.shape[0] != bsz:
                raise ShapeError(
                    f"PerRow for {what} has {idx.shape[0]} entries, the batch has {bsz} rows"
                )
            if idx.numel() and (int(idx.max()) >= size or int(idx.min()) < -1):
                raise InputError(f"PerRow index for {what} out of range [-1, {size})")
            out = torch.zeros(bsz, size + 1, dtype=torch.bool, device=device)
            out[torch.arange(bsz, device=device), torch.where(idx < 0, size, idx)] = True
            return out[:, :size]
        if len(c) != bsz:
            raise ShapeError(f"PerRow for {what} has {len(c)} entries, the batch has {bsz} rows")
        out = torch.zeros(bsz, size, dtype=torch.bool)
        for b, row in enumerate(c):
            for i in torch.as_tensor(row, dtype=torch.long).reshape(-1).tolist():
                if not 0 <= int(i) < size:
                    raise InputError(f"PerRow index {int(i)} for {what} out of range [0, {size})")
                out[b, int(i)] = True
        return out.to(device)


Selector = int | Sequence[int] | Tensor | PerRow | None


def _axis_mask(
    sel: Selector, bsz: int, size: int, device: torch.device, what: str
) -> Tensor | None:
    """Bool mask [B or 1, size] for one selector; ``None`` selects everything."""
    if sel is None:
        return None
    if isinstance(sel, PerRow):
        return sel.mask(bsz, size, device, what)
    if isinstance(sel, Tensor) and sel.dtype == torch.bool:
        if sel.dim() != 1 or sel.shape[0] != size:
            raise ShapeError(f"bool selector for {what} must be [{size}], got {tuple(sel.shape)}")
        return sel.to(device).view(1, size)
    idx = torch.as_tensor([sel] if isinstance(sel, int) else sel, dtype=torch.long).reshape(-1)
    if idx.numel() and (int(idx.max()) >= size or int(idx.min()) < -size):
        raise InputError(f"{what} index out of range for size {size}: {idx.tolist()}")
    out = torch.zeros(size, dtype=torch.bool)
    out[idx] = True
    return out.to(device).view(1, size)


def _place(mask: Tensor, dim: int, ndim: int) -> Tensor:
    """Reshapes a [B', n] axis mask so that n sits at ``dim`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[0] = mask.shape[0]
    shape[dim] = mask.shape[1]
    return mask.view(shape)


class Intervention:
    """Base class: a hook (name or glob) and row/position/head/unit selectors.

    Subclasses implement ``apply(name, x) -> Tensor`` (same shape as ``x``); ``select``
    gives the bool mask of the selected elements (``None`` = everything).
    """

    def __init__(
        self,
        hook: str,
        *,
        rows: Selector = None,
        positions: Selector = None,
        heads: Selector = None,
        neurons: Selector = None,
    ) -> None:
        if not isinstance(hook, str):
            raise InputError(f"hook must be a hook name or glob string, got {hook!r}")
        self.hook = hook
        self.rows = rows
        self.positions = positions
        self.heads = heads
        self.neurons = neurons
        self._order: dict[str, int] = {}

    def targets(self, hook_points: Sequence[str]) -> list[str]:
        """Concrete hook names this intervention applies to."""
        names = resolve_hooks(self.hook, hook_points)
        self._order = {n: i for i, n in enumerate(names)}
        return names

    def apply(self, name: str, x: Tensor) -> Tensor:
        """The new value of hook ``name`` given its current value ``x``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hook!r})"

    def select(self, name: str, x: Tensor) -> Tensor | None:
        """Bool mask broadcastable to ``x`` of the elements selected by rows/positions/heads/neurons."""
        layout: HookLayout = layout_for(name, x)
        bsz, ndim = x.shape[0], x.dim()
        mask: Tensor | None = None
        axes: list[tuple[Selector, int | None, str]] = [
            (self.positions, layout.position, "positions"),
            (self.heads, layout.head, "heads"),
            (self.neurons, layout.unit, "neurons"),
        ]
        row_mask = _axis_mask(self.rows, bsz, bsz, x.device, f"rows of {name}")
        if row_mask is not None:
            mask = row_mask.view([bsz] + [1] * (ndim - 1))
        for sel, dim, what in axes:
            if sel is None:
                continue
            if dim is None:
                raise InputError(
                    f"{what}= does not apply to hook {name!r} (shape {tuple(x.shape)})"
                )
            m = _axis_mask(sel, bsz, x.shape[dim], x.device, f"{what} of {name}")
            assert m is not None
            placed = _place(m, dim, ndim)
            mask = placed if mask is None else mask & placed
        return mask

    def _blend(self, name: str, x: Tensor, new: Tensor) -> Tensor:
        mask = self.select(name, x)
        if mask is None:
            return new.expand_as(x) if new.shape != x.shape else new
        return torch.where(mask, new, x)


def _lookup(source: Any, name: str, what: str) -> Tensor:
    """A tensor for hook ``name`` from a tensor, a cache dict or a ``RunOutput``."""
    if isinstance(source, Tensor):
        return source
    cache = getattr(source, "cache", source)
    if isinstance(cache, Mapping):
        if name not in cache:
            raise InputError(
                f"{what} has no value for hook {name!r}: cache it in the source run "
                f"(pair.run(..., cache=[{name!r}]))"
            )
        value = cache[name]
        if not isinstance(value, Tensor):
            raise InputError(f"{what}[{name!r}] is not a tensor")
        return value
    raise InputError(
        f"{what} must be a Tensor, a cache dict or a RunOutput, got {type(source).__name__}"
    )


def _rows_of(
    src: Tensor, source_rows: Tensor | Sequence[int] | None, name: str, what: str
) -> Tensor:
    if source_rows is None:
        return src
    idx = torch.as_tensor(source_rows, dtype=torch.long, device=src.device).reshape(-1)
    if idx.numel() and (int(idx.max()) >= src.shape[0] or int(idx.min()) < -src.shape[0]):
        raise InputError(
            f"{what} source_rows for hook {name!r} out of range for {src.shape[0]} source rows"
        )
    return src[idx]


def _check_like(new: Tensor, x: Tensor, name: str, what: str) -> Tensor:
    """``new`` must have x's shape, or x's shape with a batch of 1 (broadcast to all rows)."""
    if new.shape != x.shape and not (
        new.dim() == x.dim() and new.shape[0] == 1 and new.shape[1:] == x.shape[1:]
    ):
        raise ShapeError(
            f"{what} for hook {name!r} has shape {tuple(new.shape)}, the hook has {tuple(x.shape)}"
        )
    return new.to(device=x.device, dtype=x.dtype)


class Patch(Intervention):
    """Replaces selected elements with values from a source run (activation patching).

    ``source`` is a tensor shaped like the hook, a cache dict or a ``RunOutput`` (looked up
    by hook name). ``source_rows[b]`` is the source row patched into target row ``b``
    (default: the same row); combined with ``PerRow`` selectors, each row of one forward
    can patch a different component from a different source row. A source with one row
    is broadcast to all rows.
    """

    def __init__(
        self,
        hook: str,
        source: Any,
        *,
        heads: Selector = None,
        neurons: Selector = None,
        positions: Selector = None,
        rows: Selector = None,
        source_rows: Tensor | Sequence[int] | None = None,
    ) -> None:
        super().__init__(hook, rows=rows, positions=positions, heads=heads, neurons=neurons)
        self.source = source
        self.source_rows = source_rows

    def apply(self, name: str, x: Tensor) -> Tensor:
        src = _rows_of(_lookup(self.source, name, "Patch source"), self.source_rows, name, "Patch")
        return self._blend(name, x, _check_like(src, x, name, "Patch source"))


class Ablate(Intervention):
    """Knocks out selected elements: ``mode="zero"``, ``"mean"`` or ``"resample"``.

    ``mean``: replaced by the mean over the rows of ``reference`` (a tensor, cache dict or
    ``RunOutput``), or by precomputed ``means`` (broadcastable to the hook without its batch
    dimension, or a dict by hook name); with neither, the mean of the current batch.
    ``resample``: each row takes the value of a random row of ``reference`` (default: the
    current batch), drawn with ``seed``.
    """

    def __init__(
        self,
        hook: str,
        *,
        heads: Selector = None,
        neurons: Selector = None,
        positions: Selector = None,
        rows: Selector = None,
        mode: Literal["zero", "mean", "resample"] = "zero",
        reference: Any = None,
        means: Any = None,
        seed: int = 0,
    ) -> None:
        super().__init__(hook, rows=rows, positions=positions, heads=heads, neurons=neurons)
        if mode not in ("zero", "mean", "resample"):
            raise InputError(f"Ablate mode must be 'zero', 'mean' or 'resample', got {mode!r}")
        self.mode = mode
        self.reference = reference
        self.means = means
        self.seed = seed

    def __repr__(self) -> str:
        return f"Ablate({self.hook!r}, mode={self.mode!r})"

    def apply(self, name: str, x: Tensor) -> Tensor:
        if self.mode == "zero":
            mask = self.select(name, x)
            return torch.zeros_like(x) if mask is None else x.masked_fill(mask, 0.0)
        if self.mode == "mean":
            if self.means is not None:
                mean = _lookup(self.means, name, "Ablate means").to(device=x.device, dtype=x.dtype)
                try:
                    shape = torch.broadcast_shapes(mean.shape, x.shape)
                except RuntimeError:
                    shape = None
                if shape != x.shape:
                    raise ShapeError(
                        f"Ablate means for hook {name!r} has shape {tuple(mean.shape)}, not "
                        f"broadcastable to the hook's {tuple(x.shape)}"
                    )
            else:
                ref = (
                    x
                    if self.reference is None
                    else _lookup(self.reference, name, "Ablate reference")
                )
                if ref.shape[1:] != x.shape[1:]:
                    raise ShapeError(
                        f"Ablate reference for hook {name!r} has shape {tuple(ref.shape)}, "
                        f"the hook has {tuple(x.shape)}"
                    )
                mean = ref.mean(dim=0, keepdim=True).to(device=x.device, dtype=x.dtype)
            return self._blend(name, x, mean.expand_as(x))
        ref = x if self.reference is None else _lookup(self.reference, name, "Ablate reference")
        if ref.shape[1:] != x.shape[1:]:
            raise ShapeError(
                f"Ablate reference for hook {name!r} has shape {tuple(ref.shape)}, "
                f"the hook has {tuple(x.shape)}"
            )
        gen = torch.Generator().manual_seed(self.seed + self._order.get(name, 0))
        idx = torch.randint(0, ref.shape[0], (x.shape[0],), generator=gen)
        new = ref[idx.to(ref.device)].to(device=x.device, dtype=x.dtype)
        return self._blend(name, x, new)


class Steer(Intervention):
    """Adds ``alpha * direction`` to the selected elements.

    ``direction`` broadcasts against the hook's trailing dimensions (e.g. [d] for a
    residual hook, [d_head] or [H, d_head] for ``attn.z``); ``alpha`` is a float or a
    tensor [B] (one strength per row, for a sweep in one forward).
    """

    def __init__(
        self,
        hook: str,
        direction: Tensor,
        alpha: float | Tensor = 1.0,
        *,
        positions: Selector = None,
        rows: Selector = None,
        heads: Selector = None,
        neurons: Selector = None,
    ) -> None:
        super().__init__(hook, rows=rows, positions=positions, heads=heads, neurons=neurons)
        self.direction = torch.as_tensor(direction)
        self.alpha = alpha

    def apply(self, name: str, x: Tensor) -> Tensor:
        direction = self.direction.to(device=x.device, dtype=x.dtype)
        try:
            ok = torch.broadcast_shapes(direction.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ShapeError(
                f"Steer direction for hook {name!r} has shape {tuple(direction.shape)}, not "
                f"broadcastable to the hook's {tuple(x.shape)}"
            )
        alpha = self.alpha
        if isinstance(alpha, Tensor) and alpha.dim() > 0:
            if alpha.shape[0] != x.shape[0] or alpha.dim() != 1:
                raise ShapeError(
                    f"Steer alpha for hook {name!r} must be a scalar or [B={x.shape[0]}], "
                    f"got {tuple(alpha.shape)}"
                )
            alpha = alpha.to(device=x.device, dtype=x.dtype).view([-1] + [1] * (x.dim() - 1))
        return self._blend(name, x, x + alpha * direction)


class Noise(Intervention):
    """Adds Gaussian noise (ROME-style corruption) to the selected elements.

    ``std`` is a float, or ``"3x_embed_std"``: three times the standard deviation of the
    hook's value over the whole batch (ROME's 3 sigma; apply it at ``*.embed_tokens`` or
    ``*.token_embed``). Noise comes from a ``torch.Generator`` seeded with ``seed`` (plus
    the hook's index when a glob matches several hooks), so runs are reproducible;
    ``same_noise_per_row=True`` draws one noise sample shared by all rows.
    """

    def __init__(
        self,
        hook: str,
        std: float | str = "3x_embed_std",
        *,
        seed: int = 0,
        positions: Selector = None,
        rows: Selector = None,
        same_noise_per_row: bool = False,
    ) -> None:
        super().__init__(hook, rows=rows, positions=positions)
        if isinstance(std, str) and std != "3x_embed_std":
            raise InputError(f"Noise std must be a float or '3x_embed_std', got {std!r}")
        if not isinstance(std, str) and float(std) < 0:
            raise InputError(f"Noise std must be >= 0, got {std!r}")
        self.std = std
        self.seed = seed
        self.same_noise_per_row = same_noise_per_row

    def __repr__(self) -> str:
        return f"Noise({self.hook!r}, std={self.std!r}, seed={self.seed})"

    def scale(self, x: Tensor) -> float:
        """The noise standard deviation used for hook value ``x``."""
        if isinstance(self.std, str):
            return 3.0 * float(x.detach().float().std())
        return float(self.std)

    def apply(self, name: str, x: Tensor) -> Tensor:
        seed = self.seed + self._order.get(name, 0)
        gen = torch.Generator().manual_seed(seed)
        shape = (1, *x.shape[1:]) if self.same_noise_per_row else tuple(x.shape)
        noise = torch.randn(shape, generator=gen, dtype=torch.float32).to(
            device=x.device, dtype=x.dtype
        )
        return self._blend(name, x, x + self.scale(x) * noise)


class FreezeLayerNorm(Patch):
    """Freezes LayerNorm scales (per-token std) at their values in a clean run.

    The clean run must cache the ``.scale`` hooks (``FreezeLayerNorm.cache_patterns(norms)``
    gives the globs). ``norms``: ``"ln_final"`` (default: the final LayerNorm of each
    tower, what direct-effect decompositions need), ``"all"`` (every LayerNorm, which makes
    each tower linear in its residual stream given attention patterns), or globs of
    LayerNorm names such as ``"image.blocks.*.ln2"``.
    """

    def __init__(
        self,
        source: Any,
        norms: str | Sequence[str] = "ln_final",
        *,
        rows: Selector = None,
        source_rows: Tensor | Sequence[int] | None = None,
    ) -> None:
        patterns = self.cache_patterns(norms)
        super().__init__(patterns[0], source, rows=rows, source_rows=source_rows)
        self.patterns = patterns

    @staticmethod
    def cache_patterns(norms: str | Sequence[str] = "ln_final") -> list[str]:
        """Globs of the ``.scale`` hooks a clean run must cache for these ``norms``."""
        items = [norms] if isinstance(norms, str) else list(norms)
        out: list[str] = []
        for item in items:
            if item == "ln_final":
                out.append("*.ln_final.scale")
            elif item == "all":
                out.append("*.scale")
            else:
                out.append(item if item.endswith(".scale") else f"{item}.scale")
        return out

    def __repr__(self) -> str:
        return f"FreezeLayerNorm({self.patterns!r})"

    def targets(self, hook_points: Sequence[str]) -> list[str]:
        names = resolve_hooks(self.patterns, hook_points)
        self._order = {n: i for i, n in enumerate(names)}
        return names


@runtime_checkable
class SupportsIntervention(Protocol):
    """Structural type of an intervention (for type hints in user code)."""

    def targets(self, hook_points: Sequence[str]) -> list[str]: ...

    def apply(self, name: str, x: Tensor) -> Tensor: ...


class CaptureGrad(Intervention):
    """Records d(metric)/d(hook value) for attribution patching, without changing the forward.

    Adds a zero tensor that requires grad at each target hook; after
    ``metric.backward()`` (run with grad enabled, not under ``torch.no_grad``),
    ``grads[name]`` is the gradient with respect to that hook's value (the total
    derivative: paths through later hooks are kept) and ``values[name]`` the value.
    """

    def __init__(self, hook: str) -> None:
        super().__init__(hook)
        self.deltas: dict[str, Tensor] = {}
        self.values: dict[str, Tensor] = {}

    def apply(self, name: str, x: Tensor) -> Tensor:
        delta = torch.zeros_like(x, requires_grad=True)
        self.deltas[name] = delta
        self.values[name] = x.detach()
        return x + delta

    @property
    def grads(self) -> dict[str, Tensor]:
        """Gradients by hook name (after ``backward``); raises if backward has not run."""
        out: dict[str, Tensor] = {}
        for name, delta in self.deltas.items():
            if delta.grad is None:
                raise InputError(
                    f"no gradient at hook {name!r}: call backward() on a metric of this run "
                    "(with grad enabled)"
                )
            out[name] = delta.grad
        return out


__all__ = [
    "Ablate",
    "CaptureGrad",
    "FreezeLayerNorm",
    "Intervention",
    "Noise",
    "Patch",
    "PerRow",
    "Steer",
    "SupportsIntervention",
]
