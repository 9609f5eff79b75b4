"""``vf.causal.ablation_ladder``: TextSpan's mean-ablation ladder with zero-shot accuracy.

Rungs, cumulative: ``clean``; ``mlps`` (every MLP of the tower ablated); then
``mlps+attn0``, ``mlps+attn0-1``, ... (attention layers ablated one more at a time from
the first) up to every attention layer. After each rung: zero-shot accuracy over the
class prompts (with a Wilson interval) and the mean matched score ``scale*cos (+bias)``.

Two paths:

- ``path="direct"`` (TextSpan, ``compute_ablations.py``): only the component's *direct*
  contribution to the embedding is replaced, from the decomposition with the final-LN
  scale frozen; later layers still see the component (indirect effects are kept). No
  extra forward: the ablated embedding is the sum of the parts with the ablated ones
  replaced by their mean (``mode="mean"``) or dropped (``"zero"``), then re-normalised.
- ``path="total"``: ``vf.Ablate`` at ``blocks.L.mlp_out`` / ``blocks.L.attn_out`` in a
  real forward, so every later layer sees the ablated value (LayerNorms recomputed).

**Means** are over the given batch, per part (direct) or per hook position (total),
from the *clean* run; pass ``reference=`` (images, or texts for ``tower="text"``) to take
them from another batch instead. The result says which (``means_from``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import check_choice, check_tower
from vlmfast.causal.direct.decompose import TowerParts, required_hooks
from vlmfast.causal.direct.ladder_result import AblationLadder, LadderRung
from vlmfast.causal.direct.parts import check_pair, embeds, run_parts
from vlmfast.errors import InputError, ShapeError


def rung_plan(layers: int, cls: bool = False) -> list[tuple[str, list[str]]]:
    """(name, ablated components) of each rung for a tower with ``layers`` blocks.

    ``cls=True`` adds TextSpan's rung after the MLPs: every layer's heads' reads from the
    CLS token (``blocks.L.attn.from_cls``), kept ablated on the later rungs.
    """
    mlps = [f"blocks.{L}.mlp" for L in range(layers)]
    if cls:
        mlps = mlps + [f"blocks.{L}.attn.from_cls" for L in range(layers)]
    plan: list[tuple[str, list[str]]] = [("clean", []), ("mlps", mlps[:layers])]
    if cls:
        plan.append(("mlps+cls", mlps))
    prefix = "mlps+cls+attn0" if cls else "mlps+attn0"
    for k in range(layers):
        name = f"{prefix}-{k}" if k else prefix
        plan.append((name, mlps + [f"blocks.{L}.attn" for L in range(k + 1)]))
    return plan


def _rows_of_component(tp: TowerParts, component: str) -> list[int]:
    """Rows of ``tp.parts`` that make up ``blocks.L.mlp`` or ``blocks.L.attn`` (heads + bias)."""
    if component.endswith(".mlp"):
        return [tp.names.index(component)]
    prefix = component + "."
    return [k for k, n in enumerate(tp.names) if n.startswith(prefix)]


def _zero_shot(
    embeds: Tensor,
    classes: Tensor,
    labels: Tensor,
    matched: Tensor,
    scale: float,
    bias: float | None,
    level: float,
) -> tuple[int, tuple[float, float], float]:
    from vlmfast.scoring.selectivity import wilson_interval

    e = embeds / embeds.norm(dim=-1, keepdim=True)
    c = classes / classes.norm(dim=-1, keepdim=True)
    sims = e @ c.T  # [B, C] (or [C, C]-shaped per-row classes when the text tower is ablated)
    rows = torch.arange(e.shape[0])
    true = sims[rows, labels]
    others = sims.clone()
    others[rows, labels] = -torch.inf
    correct = int((true > others.max(dim=1).values).sum())
    m = matched / matched.norm(dim=-1, keepdim=True)
    score = float((scale * (e * m).sum(-1) + (bias or 0.0)).mean())
    lo, hi = wilson_interval(correct, e.shape[0], level)
    acc = correct / e.shape[0]
    # the Wilson interval contains k/n; clamp the last-bit rounding at k = 0 or k = n
    return correct, (min(lo, acc), max(hi, acc)), score


def _labels(labels: Any, n: int, n_classes: int) -> Tensor:
    lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1).cpu()
    if lab.shape[0] != n:
        raise ShapeError(f"labels has {lab.shape[0]} entries for {n} images (one per image)")
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= n_classes):
        raise InputError(
            f"labels must index the {n_classes} prompts: got values in "
            f"[{int(lab.min())}, {int(lab.max())}]"
        )
    return lab


def ablation_ladder(
    pair: Any,
    images: Any,
    prompts: Sequence[str] | Tensor,
    labels: Sequence[int] | Tensor,
    texts: Any = None,
    *,
    tower: str = "image",
    mode: str = "mean",
    path: str = "direct",
    reference: Any = None,
    level: float = 0.95,
    batch_size: int = 64,
    cls: bool = False,
) -> AblationLadder:
    """Zero-shot accuracy and matched score after each rung of the ablation ladder.

    Args:
        pair: a HookedPair (eval mode).
        images: the images (pixels or PIL), one per label.
        prompts: one prompt per class (strings or token ids [C, T]).
        labels: the true class of each image, indices into ``prompts``.
        texts: optional captions (caption i for image i) for the matched score; default
            the true class prompt. Only with ``tower="image"``.
        tower: the ablated tower: ``"image"`` (TextSpan) or ``"text"`` (the prompts'
            embeddings are ablated, means over the prompts or ``reference`` texts).
        mode: ``"mean"`` or ``"zero"``.
        path: ``"direct"`` (TextSpan: direct contributions only) or ``"total"``.
        reference: inputs of the ablated tower the means come from (default: the batch).
        level: coverage of the Wilson intervals.
        cls: add TextSpan's CLS rung after the MLPs (the heads' reads from the CLS token,
            every layer); direct path, image towers with a class token only.

    Returns:
        Per rung, what is ablated, the zero-shot accuracy (a fraction in [0, 1], with a
            Wilson interval) and the mean matched score (logits), as an
            :class:`AblationLadder`.

    Raises:
        InputError: a pair in training mode, an unknown tower / mode / path, ``level``
            outside (0, 1), ``texts`` with ``tower="text"``, ``cls`` where it does not
            apply, or fewer than 2 classes.
        ShapeError: labels or captions do not match the images.
    """
    _check_args(pair, tower, mode, path, level, texts, cls)
    px, cls_tok, lab, cap_tok, ref = _ladder_inputs(
        pair, tower, images, prompts, labels, texts, reference
    )
    n, n_classes = px.shape[0], cls_tok.shape[0]
    dtype = torch.float64
    scale_t, bias_t = backend.logit_scale_bias(pair)
    scale = float(scale_t.double().exp())
    bias = float(bias_t) if bias_t is not None else None
    ablated_in = px if tower == "image" else cls_tok
    layers = int(pair.config.tower(tower).layers)
    plan = rung_plan(layers, cls=cls)

    if path == "direct":
        variants = _direct_variants(
            pair, tower, ablated_in, ref, plan, mode, batch_size, dtype, cls
        )
    else:
        variants = _total_variants(pair, tower, ablated_in, ref, plan, mode, batch_size, dtype)

    fixed = embeds(pair, "text" if tower == "image" else "image",
                    cls_tok if tower == "image" else px, batch_size, dtype)  # fmt: skip
    cap = embeds(pair, "text", cap_tok, batch_size, dtype) if cap_tok is not None else None
    rungs = []
    for (name, ablated), emb in zip(plan, variants, strict=True):
        if tower == "image":
            img, classes = emb, fixed
            matched = cap if cap is not None else fixed[lab]
        else:
            img, classes = fixed, emb
            matched = emb[lab]
        correct, interval, score = _zero_shot(img, classes, lab, matched, scale, bias, level)
        rungs.append(LadderRung(name, ablated, correct, n, interval, score))
    return AblationLadder(
        rungs=rungs,
        tower=tower,
        mode=mode,
        path=path,
        means_from="reference" if reference is not None else "batch",
        level=level,
        n_classes=n_classes,
        score_against="texts" if cap is not None else "true class prompt",
    )


def _check_args(
    pair: Any, tower: str, mode: str, path: str, level: float, texts: Any, cls: bool
) -> None:
    check_pair(pair)
    check_tower(tower)
    check_choice(mode, ("mean", "zero"), "mode")
    check_choice(path, ("direct", "total"), "path")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level!r}")
    if tower == "text" and texts is not None:
        raise InputError(
            "texts= (captions for the matched score) works with tower='image' only; with "
            "tower='text' the score is against the (ablated) true class prompt"
        )
    if cls and (path != "direct" or tower != "image" or not pair.config.image.class_token):
        raise InputError(
            "cls=True (TextSpan's CLS rung) needs path='direct', tower='image' and an image "
            "tower with a class token"
        )
    required_hooks(pair, tower)


def _ladder_inputs(
    pair: Any, tower: str, images: Any, prompts: Any, labels: Any, texts: Any, reference: Any
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(pixels, class prompt tokens, labels, caption tokens or None, reference or None)``."""
    px, _ = backend.as_inputs(pair, images, None, need_both=False)
    _, cls_tok = backend.as_inputs(pair, None, prompts, need_both=False)
    n, n_classes = px.shape[0], cls_tok.shape[0]
    if n_classes < 2:
        raise InputError(f"prompts needs at least 2 classes, got {n_classes}")
    lab = _labels(labels, n, n_classes)
    cap_tok = None
    if texts is not None:
        _, cap_tok = backend.as_inputs(pair, None, texts, need_both=False)
        if cap_tok.shape[0] != n:
            raise ShapeError(f"texts has {cap_tok.shape[0]} captions for {n} images")
    ref = None
    if reference is not None:
        if tower == "image":
            ref = backend.as_inputs(pair, reference, None, need_both=False)[0]
        else:
            ref = backend.as_inputs(pair, None, reference, need_both=False)[1]
    return px, cls_tok, lab, cap_tok, ref


def _direct_variants(
    pair: Any,
    tower: str,
    inputs: Tensor,
    reference: Tensor | None,
    plan: list[tuple[str, list[str]]],
    mode: str,
    batch_size: int,
    dtype: torch.dtype,
    cls: bool = False,
) -> list[Tensor]:
    """The ablated tower's embedding after each rung, from the decomposition."""
    src = 0 if cls else None
    tp = run_parts(pair, tower, inputs, batch_size, dtype, src)
    ref = tp if reference is None else run_parts(pair, tower, reference, batch_size, dtype, src)
    means = ref.parts.mean(dim=1, keepdim=True)  # [P, 1, E]
    out = []
    for name, ablated in plan:
        if name == "clean":
            out.append(tp.embed)
            continue
        whole = [c for c in ablated if not c.endswith(".from_cls")]
        rows = sorted({r for comp in whole for r in _rows_of_component(tp, comp)})
        parts = tp.parts.clone()
        parts[rows] = means[rows].expand(-1, parts.shape[1], -1) if mode == "mean" else 0.0
        embed = parts.sum(0)
        for comp in ablated:
            # the CLS reads of a layer whose attention is not wholly ablated yet
            if comp.endswith(".from_cls") and comp.removesuffix(".from_cls") not in whole:
                assert tp.source_parts is not None and ref.source_parts is not None
                layer = int(comp.split(".")[1])
                embed = embed - tp.source_parts[layer]
                if mode == "mean":
                    embed = embed + ref.source_parts[layer].mean(0, keepdim=True)
        out.append(embed)
    return out


def _total_variants(
    pair: Any,
    tower: str,
    inputs: Tensor,
    reference: Tensor | None,
    plan: list[tuple[str, list[str]]],
    mode: str,
    batch_size: int,
    dtype: torch.dtype,
) -> list[Tensor]:
    """The ablated tower's embedding after each rung, from forwards with ``vf.Ablate``."""
    from vlmfast.models.interventions import Ablate

    layers = int(pair.config.tower(tower).layers)
    hook_of = {f"blocks.{L}.mlp": f"{tower}.blocks.{L}.mlp_out" for L in range(layers)}
    hook_of |= {f"blocks.{L}.attn": f"{tower}.blocks.{L}.attn_out" for L in range(layers)}
    module = pair.tower(tower)
    means: dict[str, Tensor] = {}
    if mode == "mean":
        ref = inputs if reference is None else reference
        sums: dict[str, Tensor] = {}
        with torch.no_grad():
            for s in range(0, ref.shape[0], batch_size):
                cache = module.run(ref[s : s + batch_size], cache=list(hook_of.values())).cache
                for h, v in cache.items():
                    sums[h] = sums.get(h, 0) + v.double().sum(0, keepdim=True)
        means = {h: (v / ref.shape[0]).to(pair.dtype) for h, v in sums.items()}
        if reference is not None and tower == "text" and reference.shape[1] != inputs.shape[1]:
            raise ShapeError(
                f"reference texts have {reference.shape[1]} tokens, the prompts {inputs.shape[1]}"
            )
    out = []
    for name, ablated in plan:
        if name == "clean":
            out.append(embeds(pair, tower, inputs, batch_size, dtype))
            continue
        hooks = [hook_of[c] for c in ablated]
        if mode == "mean":
            ivs = [Ablate(h, mode="mean", means={h: means[h]}) for h in hooks]
        else:
            ivs = [Ablate(h, mode="zero") for h in hooks]
        with torch.no_grad():
            emb = [
                module.run(inputs[s : s + batch_size], interventions=ivs).embed.to("cpu", dtype)
                for s in range(0, inputs.shape[0], batch_size)
            ]
        out.append(torch.cat(emb))
    return out
