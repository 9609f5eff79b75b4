"""Causal tracing (ROME's corrupt-then-restore) of either tower of a CLIP/SigLIP pair.

    res = vf.causal.trace(pair, images=px, texts=tok, corrupt="image", noise="zero",
                          kinds=("resid", "attn_out", "mlp_out"), window=1, null=100)
    res.recovery["resid"]    # Tensor[layers, positions]

**Corruption** of the ``corrupt`` tower, at ``{tower}.token_embed`` (before position
embeddings; for the image tower that is the patch-conv output with CLS prepended):
``noise="zero"`` zeroes the embeddings at the corrupted positions (image default: every
patch, CLS and position embeddings untouched -- for a bias-free patch conv that is an
all-zero pixel input; text default: every token strictly between SOT and EOT);
``"3x"`` adds Gaussian noise with std 3x the scalar std of the clean embeddings at the
corrupted positions over the batch (ROME's ``s3``); a float is that std. ``samples``
noise draws (seeded by ``seed``) are made once and shared by every restoration (common
random numbers), and the metric is averaged over them. ``corrupted=`` instead runs the
corrupted tower on other inputs of the same shape (a counterfactual image/caption).

**Restoration** (denoising): ``resid`` restores ``blocks.L.resid_post`` at one position;
``attn_out`` / ``mlp_out`` restore that sublayer's output at one position over ROME's
window of ``window`` layers centred on L; ``heads`` restores one head's ``attn.z`` at
every position. The restored tower is scored against the *clean* other tower with the
pair's real metric. ``recovery = (m(restored) - m(corrupt)) / (m(clean) - m(corrupt))``
(``vlmfast.causal.conventions``).

**Null** (``null=K``): is a cell larger than restoring a random unit would give? For each
kind and layer, ``K`` restorations of a random set of ``null_count`` units (default 1,
the count every cell restores) drawn uniformly without replacement from that layer's
traced positions (or heads), seeded by ``seed``. Matching kind, layer and count is what
makes it a fair comparison: early-layer residual restorations recover more than late
ones wherever they are, so a null pooled over layers would flag whole early rows. With
``null_count=1`` the draws are cells of the same row, so no extra forward runs; larger
counts run their restorations. Each cell gets the one-sided permutation p-value
``(1 + #{null recovery >= cell recovery}) / (K + 1)``; the null's mean and central
``null_level`` interval per layer are reported too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmfast.causal import _backend as backend
from vlmfast.causal._trace_engine import KINDS, Restoration, TraceSetup
from vlmfast.causal.conventions import (
    check_choice,
    check_eval_mode,
    check_metric_output,
    check_paired,
    check_tower,
    recovery,
    recovery_denominator,
)
from vlmfast.causal.metrics import Metric, metric_space, resolve_metric
from vlmfast.causal.trace_result import TraceNull, TraceResult, null_tables
from vlmfast.errors import InputError

DEFAULT_MAX_ROWS = 512
NOISE_CHOICES = ("zero", "3x", "<float std>")


def trace(
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
    null: int = 0,
    null_count: int = 1,
    null_level: float = 0.95,
    method: str = "batched",
    max_rows: int = DEFAULT_MAX_ROWS,
    progress: Callable[[int], None] | None = None,
) -> TraceResult:
    """Causal tracing of the ``corrupt`` tower (see the module doc for the conventions).

    Args:
        pair: a HookedPair in eval mode.
        images, texts: the clean inputs, paired by index (pixels / token ids, or PIL
            images / strings).
        corrupt: ``"image"`` or ``"text"``: the tower that is corrupted and restored.
        noise: ``"zero"``, ``"3x"`` or a float std (ignored with ``corrupted=``).
        samples: noise draws (ignored for ``"zero"`` and ``corrupted=``).
        seed: seeds the noise and the null.
        positions: the corrupted positions, shared by every row (a sequence of ints), or
            a bool Tensor [B, T] per row; default every patch / every token between SOT
            and EOT.
        kinds: any of ``"resid"``, ``"attn_out"``, ``"mlp_out"``, ``"heads"``.
        window: layers restored together for ``attn_out``/``mlp_out`` (ROME: 10).
        metric: ``"score"``, ``"logit_diff"``, ``"alignment"`` or a callable on
            ``[..., n_img, n_txt]`` similarities returning ``[...]``.
        layers: the layers traced (default all).
        corrupted: inputs of the corrupted run (same shape as the clean ones) instead of
            embedding noise.
        null: K random restorations per kind and layer (0: no null).
        null_count: units restored by each null draw.
        null_level: central interval of the null reported.
        method: ``"batched"`` (prefix reuse) or ``"serial"`` (ROME's loop, the reference).
        max_rows: the most batch rows per batched forward (restorations x samples x rows).
        progress: called with the number of restorations done after each forward.
    """
    prep = prepare_trace(
        pair, images, texts, corrupt, noise=noise, samples=samples, seed=seed,
        positions=positions, kinds=kinds, window=window, metric=metric, layers=layers,
        corrupted=corrupted, max_rows=max_rows, progress=progress,
    )  # fmt: skip
    check_choice(method, ("batched", "serial"), "method")
    null = _nonneg_int(null, "null")
    null_count = _positive_int(null_count, "null_count")
    if not 0.0 < float(null_level) < 1.0:
        raise InputError(f"null_level must be in (0, 1), got {null_level!r}")
    setup, clean_value, corrupt_value = prep.setup, prep.clean, prep.corrupt
    n_heads = int(pair.config.tower(setup.tower).heads)
    with torch.no_grad():
        effect: dict[str, Tensor] = {}
        for kind in prep.kinds:
            units = list(range(n_heads)) if kind == "heads" else prep.traced
            table = torch.empty(len(prep.layers), len(units), dtype=torch.float64)
            for i, layer in enumerate(prep.layers):
                table[i] = setup.restore(kind, layer, [(u,) for u in units], method)
            effect[kind] = table
        rec = {k: recovery(v, clean_value, corrupt_value) for k, v in effect.items()}
        null_res = None
        if null:
            null_res = _null(
                setup, effect, prep.kinds, prep.layers, prep.traced, n_heads, null, null_count,
                null_level, seed, method, clean_value, corrupt_value,
            )  # fmt: skip

    return TraceResult(
        tower=setup.tower,
        clean=clean_value,
        corrupt=corrupt_value,
        effect={k: v.float() for k, v in effect.items()},
        recovery=rec,
        layers=prep.layers,
        positions=prep.traced,
        corrupted=[torch.nonzero(row).flatten().tolist() for row in prep.mask.cpu()],
        labels=(
            _labels(pair, setup.tower, prep.traced)
            if setup.tokens is None
            else _text_labels(pair, setup.tokens, prep.traced)
        ),
        noise="input" if setup.corrupted_inputs is not None else noise_kind_label(noise),
        sigma=prep.sigma,
        samples=setup.n_samples,
        seed=int(seed),
        window=setup.window,
        metric=metric if isinstance(metric, str) else type(setup.metric).__name__,
        method=method,
        null=null_res,
    )


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
    window = _positive_int(window, "window")
    max_rows = _positive_int(max_rows, "max_rows")
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    images, texts = backend.as_inputs(pair, images, texts)
    tower_in = images if tower == "image" else texts
    other = "text" if tower == "image" else "image"
    other_in = texts if tower == "image" else images
    n_layers = int(pair.config.tower(tower).layers)
    layer_list = _check_layers(layers, n_layers)
    with torch.no_grad():
        mask, traced = _corruption_mask(pair, tower, tower_in, positions)
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
    n_pos = len(_traced_positions(pair, tower, inputs))
    return {k: int(cfg.heads) if k == "heads" else n_pos for k in kinds}


def noise_kind_label(noise: str | float) -> str | float:
    return noise if isinstance(noise, str) else float(noise)


# ---- validation ----------------------------------------------------------------------------
def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 1:
        raise InputError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)


def _nonneg_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < 0:
        raise InputError(f"{what} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_kinds(kinds: Sequence[str]) -> list[str]:
    if isinstance(kinds, str):
        kinds = [kinds]
    out = list(dict.fromkeys(kinds))
    if not out:
        raise InputError(f"kinds is empty; expected some of {list(KINDS)}")
    for k in out:
        check_choice(k, KINDS, "kinds entry")
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
    samples = _positive_int(samples, "samples")
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


# ---- positions -----------------------------------------------------------------------------
def _eot_positions(pair: Any, tokens: Tensor) -> Tensor | None:
    """Per-row index of the pooled EOT/EOS token, or None when the tower pools otherwise."""
    cfg = pair.config.text
    if cfg.pool == "eot":
        return tokens.argmax(dim=-1)
    if cfg.pool == "eos":
        return torch.eq(tokens, int(cfg.eos_token_id or 0)).int().argmax(dim=-1)
    return None


def _traced_positions(pair: Any, tower: str, inputs: Tensor) -> list[int]:
    if tower == "image":
        return list(range(int(pair.config.image.n_tokens)))
    n = int(inputs.shape[1])
    eot = _eot_positions(pair, inputs)
    if eot is not None and pair.config.text.causal:
        n = int(eot.max()) + 1  # later positions cannot reach the pooled token
    return list(range(n))


def _corruption_mask(
    pair: Any, tower: str, inputs: Tensor, positions: Sequence[int] | Tensor | None
) -> tuple[Tensor, list[int]]:
    """Bool [B, T] of the corrupted positions, and the traced positions."""
    traced = _traced_positions(pair, tower, inputs)
    n_rows = int(inputs.shape[0])
    if tower == "image":
        cfg = pair.config.image
        n_tok = int(cfg.n_tokens)
        mask = torch.zeros(n_rows, n_tok, dtype=torch.bool, device=inputs.device)
        if positions is None:
            mask[:, 1 if cfg.class_token else 0 :] = True
        else:
            mask = _mask_from(positions, n_rows, n_tok, inputs.device, "image tokens")
    else:
        n_tok = int(inputs.shape[1])
        eot = _eot_positions(pair, inputs)
        if positions is None:
            start = 1 if pair.config.text.causal else 0
            idx = torch.arange(n_tok, device=inputs.device).view(1, -1)
            end = eot.view(-1, 1) if eot is not None else torch.full_like(idx[:, :1], n_tok)
            mask = (idx >= start) & (idx < end)
        else:
            mask = _mask_from(positions, n_rows, n_tok, inputs.device, "text tokens")
            if eot is not None:
                after = mask & (
                    torch.arange(n_tok, device=inputs.device).view(1, -1) > eot.view(-1, 1)
                )
                if bool(after.any()):
                    row, pos = (int(x) for x in torch.nonzero(after)[0])
                    raise InputError(
                        f"positions {pos} is after the EOT token of row {row} (EOT at "
                        f"{int(eot[row])}); allowed: 0..{int(eot[row])} for that row"
                    )
    if not bool(mask.any(dim=1).all()):
        row = int((~mask.any(dim=1)).nonzero()[0])
        raise InputError(
            f"no corruption set: positions selects no position of row {row} of the {tower} "
            "tower (a caption with no token between SOT and EOT, or an empty positions=)"
        )
    return mask, traced


def _mask_from(
    positions: Sequence[int] | Tensor, n_rows: int, n_tok: int, device: torch.device, what: str
) -> Tensor:
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        if tuple(positions.shape) != (n_rows, n_tok):
            raise InputError(
                f"positions as a bool mask must be [{n_rows}, {n_tok}], got {tuple(positions.shape)}"
            )
        return positions.to(device)
    idx = [int(p) for p in (positions.tolist() if isinstance(positions, Tensor) else positions)]
    bad = [p for p in idx if not 0 <= p < n_tok]
    if bad:
        raise InputError(f"positions {bad} outside the {n_tok} {what}; allowed: 0..{n_tok - 1}")
    mask = torch.zeros(n_rows, n_tok, dtype=torch.bool, device=device)
    mask[:, idx] = True
    return mask


def _corrupted_inputs(pair: Any, tower: str, clean: Tensor, corrupted: Any) -> Tensor | None:
    if corrupted is None:
        return None
    if tower == "image":
        imgs, _ = backend.as_inputs(pair, corrupted, None, need_both=False)
        check_paired(clean, imgs, "images")
        return imgs
    _, tok = backend.as_inputs(pair, None, corrupted, need_both=False)
    check_paired(clean, tok, "texts")
    eot_c, eot_x = _eot_positions(pair, clean), _eot_positions(pair, tok)
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


def _labels(pair: Any, tower: str, traced: list[int]) -> list[str]:
    if tower == "image":
        cls = bool(pair.config.image.class_token)
        return ["CLS" if (cls and p == 0) else f"p{p - 1 if cls else p}" for p in traced]
    return [f"t{p}" for p in traced]


def _text_labels(pair: Any, tokens: Tensor, traced: list[int]) -> list[str]:
    """Token strings where every row has the same token at a position (else ``t{p}``)."""
    eot = _eot_positions(pair, tokens)
    decode = getattr(getattr(pair, "_tokenizer", None), "decode", None)
    out = []
    for p in traced:
        ids = tokens[:, p].unique()
        label = f"t{p}"
        if ids.numel() == 1:
            if eot is not None and bool((eot == p).all()):
                label = "EOT"
            elif p == 0 and pair.config.text.causal:
                label = "SOT"
            elif decode is not None:
                try:
                    word = str(decode([int(ids[0])])).strip()
                except Exception:  # a tokenizer without single-id decoding
                    word = ""
                label = f"{word}@{p}" if word else label
        out.append(label)
    return out


# ---- runs ----------------------------------------------------------------------------------
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


def _null(
    setup: TraceSetup,
    effect: dict[str, Tensor],
    kinds: Sequence[str],
    layers: list[int],
    traced: list[int],
    n_heads: int,
    k: int,
    count: int,
    level: float,
    seed: int,
    method: str,
    clean: float,
    corrupt: float,
) -> dict[str, TraceNull]:
    out: dict[str, TraceNull] = {}
    for kind in kinds:
        units = list(range(n_heads)) if kind == "heads" else traced
        if count > len(units):
            raise InputError(f"null_count {count} exceeds the {len(units)} units of kind {kind!r}")
        samples = torch.empty(len(layers), k, dtype=torch.float64)
        for i, layer in enumerate(layers):
            rng = np.random.default_rng([int(seed), 7919, KINDS.index(kind), int(layer)])
            draws = [
                tuple(sorted(rng.choice(len(units), size=count, replace=False).tolist()))
                for _ in range(k)
            ]
            if count == 1:  # the cell of the same row restores exactly that set
                samples[i] = effect[kind][i, [d[0] for d in draws]]
            else:
                sets: list[Restoration] = [tuple(units[j] for j in d) for d in draws]
                samples[i] = setup.restore(kind, layer, sets, method)
        out[kind] = null_tables(samples, effect[kind], clean, corrupt, count, level)
    return out


def restore_sets(
    pair: Any,
    images: Any,
    texts: Any,
    kind: str,
    layer: int,
    sets: Sequence[Sequence[int]],
    corrupt: str = "image",
    method: str = "batched",
    **kwargs: Any,
) -> tuple[float, float, Tensor]:
    """``(clean, corrupt, metric of each restoration set)`` for arbitrary unit sets at one layer.

    The same engine as ``trace`` (``kwargs`` as ``prepare_trace``'s); e.g. restoring every
    position of ``resid`` gives the clean metric and the empty set the corrupted one.
    """
    check_choice(method, ("batched", "serial"), "method")
    prep = prepare_trace(pair, images, texts, corrupt, kinds=(kind,), **kwargs)
    with torch.no_grad():
        values = prep.setup.restore(kind, layer, [tuple(int(u) for u in s) for s in sets], method)
    return prep.clean, prep.corrupt, values


__all__ = ["PreparedTrace", "TraceNull", "TraceResult", "prepare_trace", "restore_sets", "trace"]
