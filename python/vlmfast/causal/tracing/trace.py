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
(``vlmfast.causal.core.conventions``).

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

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmfast.causal.core.conventions import check_choice, recovery
from vlmfast.causal.core.vocabulary import TRACE_KINDS
from vlmfast.causal.tracing.config import TraceConfig
from vlmfast.causal.tracing.engine import Restoration, TraceSetup
from vlmfast.causal.tracing.positions import position_labels, text_labels
from vlmfast.causal.tracing.prepare import (
    noise_kind_label,
    nonneg_int,
    positive_int,
    prepare_trace,
)
from vlmfast.causal.tracing.result import TraceNull, TraceResult, null_tables
from vlmfast.errors import InputError


def trace(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt: str = "image",
    *,
    config: TraceConfig | None = None,
    **options: Any,
) -> TraceResult:
    """Causal tracing of the ``corrupt`` tower (see the module doc for the conventions).

    Args:
        pair: a HookedPair in eval mode.
        images, texts: the clean inputs, paired by index (pixels / token ids, or PIL
            images / strings).
        corrupt: ``"image"`` or ``"text"``: the tower that is corrupted and restored.
        config: a :class:`TraceConfig` (every option, documented per field).
        **options: the same options as keywords (``noise=``, ``samples=``, ``kinds=``,
            ``window=``, ``null=``, ``method=``, ...); they replace ``config``'s fields.

    Returns:
        The trace (a :class:`TraceResult`): per kind, the metric after each restoration
            (``effect``, metric units) and its recovery ``(m - m_corrupt) / (m_clean -
            m_corrupt)`` (a fraction of the clean-minus-corrupt gap) as ``[layers,
            positions or heads]`` tensors, with the null when ``null > 0``.

    Raises:
        InputError: an option out of range or inputs that do not pair up.
        TypeError: an unknown option.
    """
    cfg = TraceConfig.build(config, options)
    prep = prepare_trace(
        pair, images, texts, corrupt, noise=cfg.noise, samples=cfg.samples, seed=cfg.seed,
        positions=cfg.positions, kinds=cfg.kinds, window=cfg.window, metric=cfg.metric,
        layers=cfg.layers, corrupted=cfg.corrupted, max_rows=cfg.max_rows,
        progress=cfg.progress,
    )  # fmt: skip
    check_choice(cfg.method, ("batched", "serial"), "method")
    null = nonneg_int(cfg.null, "null")
    null_count = positive_int(cfg.null_count, "null_count")
    if not 0.0 < float(cfg.null_level) < 1.0:
        raise InputError(f"null_level must be in (0, 1), got {cfg.null_level!r}")
    setup, clean_value, corrupt_value = prep.setup, prep.clean, prep.corrupt
    n_heads = int(pair.config.tower(setup.tower).heads)
    with torch.no_grad():
        effect: dict[str, Tensor] = {}
        for kind in prep.kinds:
            units = list(range(n_heads)) if kind == "heads" else prep.traced
            table = torch.empty(len(prep.layers), len(units), dtype=torch.float64)
            for i, layer in enumerate(prep.layers):
                table[i] = setup.restore(kind, layer, [(u,) for u in units], cfg.method)
            effect[kind] = table
        rec = {k: recovery(v, clean_value, corrupt_value) for k, v in effect.items()}
        null_res = None
        if null:
            null_res = _null(
                setup, effect, prep.kinds, prep.layers, prep.traced, n_heads, null, null_count,
                cfg.null_level, cfg.seed, cfg.method, clean_value, corrupt_value,
            )  # fmt: skip
    noise, seed, metric, method = cfg.noise, cfg.seed, cfg.metric, cfg.method

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
            position_labels(pair, setup.tower, prep.traced)
            if setup.tokens is None
            else text_labels(pair, setup.tokens, prep.traced)
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
            rng = np.random.default_rng([int(seed), 7919, TRACE_KINDS.index(kind), int(layer)])
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


__all__ = ["TraceNull", "TraceResult", "restore_sets", "trace"]
