"""Turning unit sets into interventions: ablation masks, SAE feature edits, steering deltas.

Many variants (the target set, its random nulls, a sweep of steering strengths) run in
one forward: variant ``v`` owns batch rows ``[v*n, (v+1)*n)``. Ablations use the
built-in ``vf.Ablate`` with ``PerRow`` bool masks (one unit choice per row); SAE
features and steering use the two interventions below, whose edits are per row too.
``single_variant_interventions`` builds the plain one-variant interventions (``vf.Ablate``
with index lists, ``vf.Steer``): the serial reference the batched path is tested against.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.core.units import Unit, UnitSet, hook_size, hook_width, model_id
from vlmfast.errors import InputError, ShapeError
from vlmfast.models.interventions import Ablate, Intervention, PerRow, Selector, Steer


class SAEFeatureEdit(Intervention):
    """Sets selected SAE features of each row to a value (mean or zero), keeping the SAE error.

    ``x' = x + sum_f mask[b, f] * (target_f - z_f(x)) * W_dec[f]``: only the features'
    share of the reconstruction changes; the residual ``x - sae(x)`` is untouched.
    ``mask`` is ``[B, n_latents]`` (or ``[1, n_latents]`` for every row).
    """

    def __init__(self, hook: str, sae: Any, mask: Tensor, target: Tensor, **sel: Any) -> None:
        super().__init__(hook, **sel)
        self.sae = sae
        self.mask = mask
        self.target = target

    def apply(self, name: str, x: Tensor) -> Tensor:
        sae = self.sae
        if x.shape[-1] != sae.d_in:
            raise ShapeError(f"SAE at {name} has d_in={sae.d_in}, the hook has width {x.shape[-1]}")
        bsz = x.shape[0]
        mask = self.mask.to(x.device)
        if mask.shape[0] not in (1, bsz):
            raise ShapeError(f"SAE edit mask has {mask.shape[0]} rows, the batch has {bsz}")
        mask = mask.expand(bsz, -1)
        w = sae.W_dec.detach().to(device=x.device, dtype=torch.float32)
        target = self.target.to(device=x.device, dtype=torch.float32)
        flat = x.reshape(bsz, -1, x.shape[-1]).float()
        t = flat.shape[1]
        values, indices = sae.encode(flat.reshape(-1, x.shape[-1]))
        values = values.float().view(bsz, t, -1)
        indices = indices.long().view(bsz, t, -1)
        sel = torch.gather(mask, 1, indices.view(bsz, -1)).view_as(indices).float()
        # constant part: every selected feature set to its target value
        const = (mask.float() * target) @ w  # [B, d]
        # minus the selected features' current contribution
        cur = torch.einsum("btk,btkd->btd", values * sel, w[indices])
        new = flat + const.unsqueeze(1) - cur
        return self._blend(name, x, new.view_as(x).to(x.dtype))


class AddRows(Intervention):
    """Adds ``delta[b]`` (``[B, d]``, one vector per row) at the selected positions."""

    def __init__(self, hook: str, delta: Tensor, *, positions: Selector = None) -> None:
        super().__init__(hook, positions=positions)
        self.delta = delta

    def apply(self, name: str, x: Tensor) -> Tensor:
        d = self.delta.to(device=x.device, dtype=x.dtype)
        if d.shape[0] != x.shape[0] or d.shape[-1] != x.shape[-1]:
            raise ShapeError(
                f"steering delta for {name} is {tuple(d.shape)}, the hook is {tuple(x.shape)}"
            )
        d = d.view(d.shape[0], *([1] * (x.dim() - 2)), d.shape[-1])
        return self._blend(name, x, x + d)


def check_units(pair: Any, units: UnitSet, saes: Mapping[str, Any]) -> None:
    """InputError naming ``units`` / ``saes`` for units that do not belong to ``pair``."""
    if not isinstance(units, UnitSet):
        raise InputError(
            f"units must be a vf.causal.UnitSet (top_units), got {type(units).__name__}"
        )
    if len(units) == 0:
        raise InputError("units is empty")
    if units.model is not None and units.model != model_id(pair):
        raise InputError(
            f"units were picked on model {units.model!r}, but the pair is {model_id(pair)!r}"
        )
    points = set(pair.hook_points())
    for u in units:
        if u.hook not in points:
            raise InputError(f"units: {u.hook!r} is not a hook of model {model_id(pair)!r}")
        if u.kind == "feature":
            sae = saes.get(u.sae or "")
            if sae is None:
                raise InputError(
                    f"units has features of SAE {u.sae!r}; pass saes={{{u.sae!r}: sae}}"
                )
            width = hook_width(pair, u.hook)
            if int(sae.d_in) != width:
                raise InputError(
                    f"saes[{u.sae!r}] has d_in={sae.d_in}, but hook {u.hook!r} has width {width}"
                )
        size = hook_size(pair, u, saes)
        if not 0 <= u.index < size:
            raise InputError(
                f"units: index {u.index} out of range for {u.hook!r} ({size} {u.kind}s)"
            )


def _write_hook(u: Unit) -> str:
    """Where a unit's direction is added: the residual write of its neuron / head."""
    prefix = u.hook.rsplit(".", 2)[0] if u.kind in ("neuron", "head") else u.hook
    if u.kind == "neuron":
        return f"{prefix}.mlp_out"
    if u.kind == "head":
        return f"{prefix}.attn_out"
    return u.hook


def unit_direction(
    pair: Any, u: Unit, saes: Mapping[str, Any], head_means: Mapping[str, Tensor]
) -> tuple[str, Tensor]:
    """``(write hook, unit-norm direction [d])`` of one unit.

    Neuron: its row of the MLP output weights (``fc2`` column); head: its mean output
    (``head_means[hook]`` [H, d]); SAE feature: its decoder row; dimension: a basis vector.
    """
    if u.kind == "neuron":
        if not u.hook.endswith("mlp.post"):
            raise InputError(f"steering neurons needs mlp.post units, got {u.hook!r}")
        block = pair.tower(u.tower).blocks[int(u.layer or 0)]
        vec = block.mlp.fc2_weight.detach()[:, u.index]
    elif u.kind == "head":
        vec = head_means[u.hook][u.index]
    elif u.kind == "feature":
        vec = saes[u.sae or ""].W_dec.detach()[u.index]
    else:
        vec = torch.zeros(hook_width(pair, u.hook), device=pair.device)
        vec[u.index] = 1.0
    vec = vec.float()
    return _write_hook(u), vec / vec.norm().clamp_min(1e-12)


def steer_deltas(
    pair: Any, units: UnitSet, saes: Mapping[str, Any], head_means: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """Sum of the units' unit-norm directions per write hook (multiply by alpha)."""
    out: dict[str, Tensor] = {}
    for u in units:
        hook, vec = unit_direction(pair, u, saes, head_means)
        out[hook] = out[hook] + vec if hook in out else vec.clone()
    return out


def head_hook_of(u: Unit) -> str:
    return u.hook.rsplit(".", 1)[0] + ".head_out"


def batched_interventions(
    pair: Any,
    tower: str,
    variants: Sequence[tuple[UnitSet | None, float]],
    n_rows: int,
    *,
    mode: str,
    ablation: str,
    means: Mapping[str, Tensor],
    feature_means: Mapping[tuple[str, str], Tensor],
    saes: Mapping[str, Any],
    head_means: Mapping[str, Tensor],
    positions: Selector,
) -> list[Intervention]:
    """Interventions for ``len(variants) * n_rows`` rows; variant v owns rows ``v*n_rows...``."""
    out: list[Intervention] = []
    if mode == "steer":
        deltas: dict[str, Tensor] = {}
        for v, (units, alpha) in enumerate(variants):
            if units is None:
                continue
            for hook, vec in steer_deltas(pair, _in_tower(units, tower), saes, head_means).items():
                if hook not in deltas:
                    deltas[hook] = torch.zeros(len(variants), vec.shape[0])
                deltas[hook][v] += alpha * vec.cpu()
        for hook, d in deltas.items():
            out.append(
                AddRows(hook, d.repeat_interleave(n_rows, 0).to(pair.device), positions=positions)
            )
        return out
    masks: dict[tuple[str, str, str | None], Tensor] = {}
    for v, (units, _) in enumerate(variants):
        if units is None:
            continue
        for group, idx in _in_tower(units, tower).groups().items():
            if group not in masks:
                size = hook_size(pair, Unit(group[0], 0, group[1], group[2]), saes)
                masks[group] = torch.zeros(len(variants), size, dtype=torch.bool)
            masks[group][v, idx] = True
    for (hook, kind, sae_key), m in masks.items():
        mask = m.repeat_interleave(n_rows, 0).to(pair.device)
        if kind == "feature":
            assert sae_key is not None
            target = (
                feature_means[(hook, sae_key)] if ablation == "mean" else torch.zeros(m.shape[1])
            )
            out.append(SAEFeatureEdit(hook, saes[sae_key], mask, target, positions=positions))
            continue
        sel = PerRow(mask)
        kw: dict[str, Any] = {"heads": sel} if kind == "head" else {"neurons": sel}
        out.append(
            Ablate(
                hook,
                mode="mean" if ablation == "mean" else "zero",
                means=means.get(hook) if ablation == "mean" else None,
                positions=positions,
                **kw,
            )
        )
    return out


def single_variant_interventions(
    pair: Any,
    tower: str,
    units: UnitSet,
    alpha: float,
    *,
    mode: str,
    ablation: str,
    means: Mapping[str, Tensor],
    feature_means: Mapping[tuple[str, str], Tensor],
    saes: Mapping[str, Any],
    head_means: Mapping[str, Tensor],
    positions: Selector,
) -> list[Intervention]:
    """The plain interventions of one variant (``vf.Ablate`` index lists, ``vf.Steer``)."""
    units = _in_tower(units, tower)
    out: list[Intervention] = []
    if mode == "steer":
        for hook, vec in steer_deltas(pair, units, saes, head_means).items():
            out.append(Steer(hook, vec.to(pair.device), alpha, positions=positions))
        return out
    for (hook, kind, sae_key), idx in units.groups().items():
        if kind == "feature":
            assert sae_key is not None
            sae = saes[sae_key]
            mask = torch.zeros(1, int(sae.n_latents), dtype=torch.bool)
            mask[0, idx] = True
            target = (
                feature_means[(hook, sae_key)] if ablation == "mean" else torch.zeros(mask.shape[1])
            )
            out.append(SAEFeatureEdit(hook, sae, mask, target, positions=positions))
            continue
        kw: dict[str, Any] = {"heads": idx} if kind == "head" else {"neurons": idx}
        out.append(
            Ablate(
                hook,
                mode="mean" if ablation == "mean" else "zero",
                means=means.get(hook) if ablation == "mean" else None,
                positions=positions,
                **kw,
            )
        )
    return out


def _in_tower(units: UnitSet, tower: str) -> UnitSet:
    return UnitSet(
        tuple(u for u in units if u.tower == tower), units.concept, units.modality, units.model
    )
