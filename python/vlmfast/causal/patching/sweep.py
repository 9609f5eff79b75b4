"""Activation patching sweeps: every single component of a tower, batched.

For each layer L the clean ("base") run is identical below L for every patch at L,
so vlmfast runs the base forward once, keeps ``blocks.L.resid_pre`` of every layer,
and for layer L stacks many single-component patches along the batch dimension and
continues from ``tower.run_from(L, ...)``. TransformerLens' ``generic_activation_patch``
instead runs one full forward per (layer, component) in a Python loop;
``method="serial"`` does exactly that (with ``vf.Patch``) and is the reference the
batched path is tested against.

The result is the metric of each patched run (image ``i`` paired with caption ``i``),
optionally as the change from the base run (``normalize="delta"``) or as the fraction
of the base-to-source change it recovers (``normalize="recovery"``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from vlmfast.causal.core import backend
from vlmfast.causal.core.components import ComponentSpec, component_spec
from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.metrics import Metric, metric_space, resolve_metric, similarity
from vlmfast.causal.patching.config import PatchConfig
from vlmfast.errors import InputError, ShapeError


def patch_heads(
    pair: Any,
    images: torch.Tensor,
    texts: torch.Tensor,
    source: Any,
    metric: str | Metric = "score",
    *,
    tower: str = "image",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    normalize: str | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    method: str = "batched",
) -> torch.Tensor:
    """Patches each single attention head (``attn.z``) from ``source``, as :func:`patch_sweep`.

    Returns:
        The metric with each head patched, ``Tensor[layers, heads]`` (in the metric's
            units: logits for ``"score"``; a fraction with ``normalize="recovery"``).

    Raises:
        InputError: as :func:`patch_sweep`.
    """
    return patch_sweep(
        pair,
        images,
        texts,
        source,
        metric,
        component="heads",
        tower=tower,
        layers=layers,
        indices=heads,
        normalize=normalize,
        max_rows=max_rows,
        method=method,
    )


def patch_sweep(
    pair: Any,
    images: torch.Tensor,
    texts: torch.Tensor,
    source: Any,
    metric: str | Metric = "score",
    *,
    config: PatchConfig | None = None,
    **options: Any,
) -> torch.Tensor:
    """Patch every single component of one tower; returns ``Tensor[len(layers), len(indices)]``.

    Args:
        pair: a HookedPair.
        images: the base images (preprocessed pixels), paired with ``texts`` by index.
        texts: the base captions (token ids), paired with ``images`` by index.
        source: where patched values come from: ``{"images": px, "texts": tok}`` (run here),
            a RunOutput or a ``{hook: tensor}`` cache holding the patched hooks.
        metric: ``"score"`` (matched ``scale*cos + bias``), ``"logit_diff"`` (matched minus
            mismatched captions), ``"alignment"`` (matched cosine) or a callable on
            ``[..., n_img, n_txt]`` similarities (see ``vlmfast.causal.core.metrics``).
        config: a :class:`PatchConfig` (component, tower, point, layers, indices,
            normalize, max_rows, method); keyword ``options`` replace its fields.

    Returns:
        The metric with each component patched, ``Tensor[len(layers), len(indices)]``:
            in the metric's units (logits for ``"score"``), minus the base metric with
            ``normalize="delta"``, or the recovered fraction with ``"recovery"``.

    Raises:
        InputError: an unknown component, tower, normalize or method, an index out of
            range, ``max_rows < 1``, or a source without the patched hooks.
        TypeError: an unknown option.
    """
    cfg = PatchConfig.build(config, options)
    tower, component, normalize, method = cfg.tower, cfg.component, cfg.normalize, cfg.method
    max_rows = cfg.max_rows
    spec = component_spec(tower, component, cfg.point)
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    if normalize not in (None, "delta", "recovery"):
        raise InputError(f"normalize must be None, 'delta' or 'recovery', got {normalize!r}")
    if method not in ("batched", "serial"):
        raise InputError(f"method must be 'batched' or 'serial', got {method!r}")
    if max_rows < 1:
        raise InputError(f"max_rows must be >= 1, got {max_rows}")
    images, texts = backend.as_inputs(pair, images, texts)
    tower_in = images if tower == "image" else texts
    n_layers = backend.n_layers(pair, tower)
    layer_list = _check_indices("layers", cfg.layers, n_layers)
    n_comp = backend.n_components(pair, spec.tower, spec.kind, tower_in)
    comp_list = _check_indices(component, cfg.indices, n_comp)

    hooks = [spec.hook(layer) for layer in layer_list]
    scale, bias = backend.logit_scale_bias(pair)

    with torch.no_grad():
        src_cache = _source_cache(pair, spec, source, hooks, tower_in)
        run = _serial if method == "serial" else functools.partial(_batched, max_rows=max_rows)
        base_img, base_txt, results = run(
            pair,
            spec,
            images,
            texts,
            src_cache,
            layer_list,
            comp_list,
            metric_fn,
            space,
            scale,
            bias,
        )
        if normalize is None:
            return results
        base = metric_fn(similarity(base_img, base_txt, scale, bias, space)).float().cpu()
        if normalize == "delta":
            return results - base
        src_embeds = _source_embeds(pair, spec, source)
        if tower == "image":
            full = metric_fn(similarity(src_embeds, base_txt, scale, bias, space))
        else:
            full = metric_fn(similarity(base_img, src_embeds, scale, bias, space))
        return (results - base) / (full.float().cpu() - base)


def _check_indices(what: str, given: Sequence[int] | None, n: int) -> list[int]:
    if given is None:
        return list(range(n))
    out = [int(i) for i in given]
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise InputError(f"{what} {bad} out of range [0, {n})")
    if not out:
        raise InputError(f"{what} is empty")
    return out


def _source_cache(
    pair: Any, spec: ComponentSpec, source: Any, hooks: list[str], tower_in: torch.Tensor
) -> dict[str, torch.Tensor]:
    cache: Mapping[str, torch.Tensor]
    if isinstance(source, Mapping) and set(source) <= {"images", "texts"} and source:
        key = "images" if spec.tower == "image" else "texts"
        if source.get(key) is None:
            raise InputError(f"source needs {key!r} to patch the {spec.tower} tower")
        src_in = backend.as_inputs(pair, source.get("images"), source.get("texts"), need_both=False)
        cache = backend.run_cache(pair, spec.tower, src_in[0 if key == "images" else 1], hooks)
    elif hasattr(source, "cache") and isinstance(source.cache, Mapping):
        cache = source.cache
    elif isinstance(source, Mapping):
        cache = source
    else:
        raise InputError(
            "source must be {'images': px, 'texts': tok}, a RunOutput or a {hook: tensor} cache"
        )
    out: dict[str, torch.Tensor] = {}
    for hook in hooks:
        if hook not in cache:
            raise InputError(f"source cache has no {hook!r}; cache it or pass source inputs")
        out[hook] = cache[hook]
    return out


def _source_embeds(pair: Any, spec: ComponentSpec, source: Any) -> torch.Tensor:
    key = "images" if spec.tower == "image" else "texts"
    if (
        isinstance(source, Mapping)
        and source.get(key) is not None
        and set(source) <= {"images", "texts"}
    ):
        src_in = backend.as_inputs(pair, source.get("images"), source.get("texts"), need_both=False)
        return backend.embed(pair, spec.tower, src_in[0 if key == "images" else 1])
    attr = "image_embeds" if spec.tower == "image" else "text_embeds"
    embeds = getattr(source, attr, None)
    if embeds is None:
        raise InputError(
            f"normalize='recovery' needs the source {key} (or a RunOutput with {attr})"
        )
    out: torch.Tensor = embeds
    return out


def _patched_value(
    clean: torch.Tensor, src: torch.Tensor, axis: int, comps: Sequence[int], hook: str
) -> torch.Tensor:
    """``clean`` repeated once per component, with component ``c_j`` of copy ``j`` from ``src``."""
    if src.shape != clean.shape:
        raise ShapeError(
            f"source {hook} has shape {tuple(src.shape)}, base has {tuple(clean.shape)}"
        )
    out = clean.unsqueeze(0).repeat(len(comps), *([1] * clean.dim()))
    for j, c in enumerate(comps):
        out[j].select(axis, c).copy_(src.select(axis, c))
    return out.reshape(len(comps) * clean.shape[0], *clean.shape[1:])


def _other(
    spec: ComponentSpec, images: torch.Tensor, texts: torch.Tensor
) -> tuple[str, torch.Tensor]:
    return ("text", texts) if spec.tower == "image" else ("image", images)


def _score(
    tower: str,
    patched: torch.Tensor,
    other: torch.Tensor,
    metric: Metric,
    space: str,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    if tower == "image":
        return metric(similarity(patched, other, scale, bias, space))
    return metric(similarity(other, patched, scale, bias, space))


def _batched(
    pair: Any,
    spec: ComponentSpec,
    images: torch.Tensor,
    texts: torch.Tensor,
    src_cache: dict[str, torch.Tensor],
    layers: list[int],
    comps: list[int],
    metric: Metric,
    space: str,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    max_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One base forward, then per layer ceil(components * B / max_rows) suffix forwards."""
    other_tower, other_in = _other(spec, images, texts)
    tower_in = images if spec.tower == "image" else texts
    other_embeds = backend.embed(pair, other_tower, other_in)
    resid_hooks = [f"{spec.tower}.blocks.{layer}.resid_pre" for layer in layers]
    hooks = list(dict.fromkeys(resid_hooks + [spec.hook(layer) for layer in layers]))
    clean, tower_embeds = backend.run_cache_embed(pair, spec.tower, tower_in, hooks)
    n_rows = tower_in.shape[0]
    per_forward = max(1, max_rows // n_rows)
    results = torch.empty(len(layers), len(comps), dtype=torch.float32)
    for li, layer in enumerate(layers):
        hook = spec.hook(layer)
        resid = clean[resid_hooks[li]]
        for start in range(0, len(comps), per_forward):
            chunk = comps[start : start + per_forward]
            patched = _patched_value(clean[hook], src_cache[hook], spec.axis, chunk, hook)
            tokens = texts.repeat(len(chunk), 1) if spec.tower == "text" else None
            if spec.point == "resid_pre":
                embeds = backend.run_from(pair, spec.tower, layer, patched, None, tokens)
            else:
                stacked = resid.repeat(len(chunk), *([1] * (resid.dim() - 1)))
                embeds = backend.run_from(pair, spec.tower, layer, stacked, (hook, patched), tokens)
            embeds = embeds.reshape(len(chunk), n_rows, -1)
            values = _score(spec.tower, embeds, other_embeds, metric, space, scale, bias)
            results[li, start : start + len(chunk)] = values.float().cpu()
    if spec.tower == "image":
        return tower_embeds, other_embeds, results
    return other_embeds, tower_embeds, results


def _serial(
    pair: Any,
    spec: ComponentSpec,
    images: torch.Tensor,
    texts: torch.Tensor,
    src_cache: dict[str, torch.Tensor],
    layers: list[int],
    comps: list[int],
    metric: Metric,
    space: str,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One full forward of the pair per (layer, component) with ``vf.Patch``: the reference."""
    results = torch.empty(len(layers), len(comps), dtype=torch.float32)
    for li, layer in enumerate(layers):
        hook = spec.hook(layer)
        for ci, comp in enumerate(comps):
            img, txt = backend.run_full_patched(
                pair, images, texts, hook, src_cache[hook], spec.intervention_kwarg, comp
            )
            results[li, ci] = metric(similarity(img, txt, scale, bias, space)).float().cpu()
    base_img, base_txt = backend.run_full_patched(pair, images, texts, None, None, "", 0)
    return base_img, base_txt, results
