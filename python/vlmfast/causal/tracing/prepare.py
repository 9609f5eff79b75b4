"""Validating a trace's arguments and running its clean and corrupted forwards.

``prepare_trace`` is the first half of ``vf.causal.trace`` (see ``trace.py`` for the
conventions): it checks every argument, builds the corruption (zeroed or noised token
embeddings, or other inputs), runs the clean and the corrupted forward and returns a
:class:`PreparedTrace` whose ``setup.restore`` evaluates restorations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import (
    check_choice,
    check_eval_mode,
    check_metric_output,
    check_paired,
    check_tower,
    recovery_denominator,
)
from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.metrics import Metric, metric_space, resolve_metric
from vlmfast.causal.core.vocabulary import TRACE_KINDS
from vlmfast.causal.tracing.engine import TraceSetup
from vlmfast.causal.tracing.positions import corruption_mask, eot_positions, traced_positions
from vlmfast.errors import InputError

NOISE_CHOICES = ("zero", "3x", "<float std>")


@dataclass
class PreparedTrace:
    """The clean and corrupted runs of a trace, ready for restorations (``setup.restore``)."""

    setup: TraceSetup
    clean: float
    corrupt: float
    kinds: list[str]
    layers: list[int]
    traced: list[int]
    mask: Tensor
    sigma: float | None


def prepare_trace(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt: str = "image",
    *,
    noise: str | float = "zero",
    samples: int = 10,
    seed: int = 0,
    positions: Sequence[int] | Tensor | None = None,
    kinds: Sequence[str] = ("resid", "attn_out", "mlp_out"),
    window: int = 1,
    metric: str | Metric = "score",
    layers: Sequence[int] | None = None,
    corrupted: Any = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    progress: Callable[[int], None] | None = None,
) -> PreparedTrace:
    """Validates the arguments and runs the clean and the corrupted forward (see ``trace``)."""
    check_eval_mode(pair, "vf.causal.trace")
    tower = check_tower(corrupt, "corrupt")
    kinds = _check_kinds(kinds)
    window = positive_int(window, "window")
    max_rows = positive_int(max_rows, "max_rows")
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    images, texts = backend.as_inputs(pair, images, texts)
    tower_in = images if tower == "image" else texts
    other = "text" if tower == "image" else "image"
    other_in = texts if tower == "image" else images
    n_layers = int(pair.config.tower(tower).layers)
    layer_list = _check_layers(layers, n_layers)
    with torch.no_grad():
        mask, traced = corruption_mask(pair, tower, tower_in, positions)
        corrupted_in = _corrupted_inputs(pair, tower, tower_in, corrupted)
        noise_kind, n_samples = _noise_kind(noise, samples, corrupted_in is not None)
        embed_hook = f"{tower}.token_embed"
        clean_run = pair.tower(tower).run(
            tower_in, cache=[*_clean_hooks(tower, kinds, n_layers), embed_hook]
        )
        keep, noise_t, sigma = _noise_tensors(
            clean_run.cache[embed_hook], mask, noise_kind, noise, n_samples, seed
        )
        scale, bias = backend.logit_scale_bias(pair)
        setup = TraceSetup(
            pair=pair,
            tower=tower,
            inputs=tower_in,
            tokens=texts if tower == "text" else None,
            corrupted_inputs=corrupted_in,
            keep=keep,
            noise=noise_t,
            n_samples=n_samples,
            other_embeds=backend.embed(pair, other, other_in),
            metric=metric_fn,
            space=space,
            scale=scale,
            bias=bias,
            n_layers=n_layers,
            window=window,
            max_rows=max_rows,
            clean_cache=clean_run.cache,
            corrupt_cache={},
            progress=progress,
        )
        clean_m = setup.score(clean_run.embed.unsqueeze(0))
        check_metric_output(clean_m, 1, "metric")
        setup.corrupt_cache, corrupt_embeds = _corrupted_forward(setup)
        corrupt_value = float(setup.score(corrupt_embeds).mean())
    clean_value = float(clean_m[0])
    recovery_denominator(clean_value, corrupt_value)  # fail before any sweep
    return PreparedTrace(setup, clean_value, corrupt_value, kinds, layer_list, traced, mask, sigma)


def prepare_counts(pair: Any, tower: str, inputs: Tensor, kinds: Sequence[str]) -> dict[str, int]:
    """Restorations per layer of each kind (for progress totals)."""
    cfg = pair.config.tower(tower)
    n_pos = len(traced_positions(pair, tower, inputs))
    return {k: int(cfg.heads) if k == "heads" else n_pos for k in kinds}


def noise_kind_label(noise: str | float) -> str | float:
    return noise if isinstance(noise, str) else float(noise)


# ---- validation ----------------------------------------------------------------------------
def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise InputError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


def nonneg_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 0:
        raise InputError(f"{what} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_kinds(kinds: Sequence[str]) -> list[str]:
    if isinstance(kinds, str):
        kinds = [kinds]
    out = list(dict.fromkeys(kinds))
    if not out:
        raise InputError(f"kinds is empty; expected some of {list(TRACE_KINDS)}")
    for k in out:
        check_choice(k, TRACE_KINDS, "kinds entry")
    return out


def _check_layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    if layers is None:
        return list(range(n_layers))
    out = [int(x) for x in layers]
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad or not out:
        raise InputError(f"layers must be a non-empty subset of range({n_layers}), got {out}")
    return out


def _noise_kind(noise: Any, samples: Any, has_inputs: bool) -> tuple[str, int]:
    samples = positive_int(samples, "samples")
    if has_inputs:
        return "input", 1
    if isinstance(noise, str):
        check_choice(noise, NOISE_CHOICES[:2], "noise")
        return noise, (1 if noise == "zero" else samples)
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not float(noise) > 0:
        raise InputError(
            f"noise must be one of {list(NOISE_CHOICES)} (a float std > 0), got {noise!r}"
        )
    return "std", samples


# ---- corruption and runs -------------------------------------------------------------------
def _corrupted_inputs(pair: Any, tower: str, clean: Tensor, corrupted: Any) -> Tensor | None:
    if corrupted is None:
        return None
    if tower == "image":
        imgs, _ = backend.as_inputs(pair, corrupted, None, need_both=False)
        check_paired(clean, imgs, "images")
        return imgs
    _, tok = backend.as_inputs(pair, None, corrupted, need_both=False)
    check_paired(clean, tok, "texts")
    eot_c, eot_x = eot_positions(pair, clean), eot_positions(pair, tok)
    if eot_c is not None and eot_x is not None and not torch.equal(eot_c, eot_x):
        raise InputError(
            f"corrupted texts must keep each row's EOT position: clean {eot_c.tolist()}, "
            f"corrupted {eot_x.tolist()}"
        )
    return tok


def _noise_tensors(
    emb: Tensor, mask: Tensor, kind: str, noise: Any, n_samples: int, seed: int
) -> tuple[Tensor | None, Tensor | None, float | None]:
    """(keep [B,T,1] or None, noise [S,B,T,d] or None, sigma or None)."""
    if kind == "input":
        return None, None, None
    m = mask.unsqueeze(-1)
    if kind == "zero":
        return (~m).to(emb.dtype), None, None
    sigma = 3.0 * float(emb[mask].float().std()) if kind == "3x" else float(noise)
    gen = torch.Generator().manual_seed(int(seed))
    draws = torch.randn((n_samples, *emb.shape), generator=gen, dtype=torch.float32)
    draws = draws.to(device=emb.device, dtype=emb.dtype) * sigma * m.to(emb.dtype)
    return None, draws, sigma


def _clean_hooks(tower: str, kinds: Sequence[str], n_layers: int) -> list[str]:
    point = {"resid": "resid_post", "attn_out": "attn_out", "mlp_out": "mlp_out", "heads": "attn.z"}
    return [f"{tower}.blocks.{layer}.{point[k]}" for k in kinds for layer in range(n_layers)]


def _corrupted_forward(setup: TraceSetup) -> tuple[dict[str, Tensor], Tensor]:
    """The corrupted run, ``S x B`` rows, keeping every layer's residual; embeds [S, B, E]."""
    t = setup.pair.tower(setup.tower)
    hooks = [setup.hook(f"blocks.{layer}.resid_pre") for layer in range(setup.n_layers)]
    hooks.append(setup.hook(f"blocks.{setup.n_layers - 1}.resid_post"))
    if setup.corrupted_inputs is not None:
        run = t.run(setup.corrupted_inputs, cache=hooks)
    else:
        reps = (setup.n_samples,) + (1,) * (setup.inputs.dim() - 1)
        corrupt = setup.corruption("batched")
        run = t.run(
            setup.inputs.repeat(*reps), cache=hooks, interventions=[corrupt] if corrupt else None
        )
    return run.cache, run.embed.view(setup.n_samples, setup.n_rows, -1)
