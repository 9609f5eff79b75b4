"""Running many intervention variants: prepared means, batched or serial forwards.

Variant ``v`` (the clean run, the target set, each random set, each steering strength)
is a block of batch rows of the same forwards, ``max_rows`` rows per forward (at most
``CPU_CHUNK_ROWS`` off a GPU), each chunk continued from the clean prefix below its first
edited block (``prefix``): ``batched``. ``serial`` runs one forward per variant with the
plain interventions (the reference). A tower with no edited unit runs once.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.causal.core.evalset import EvalSet, MetricTable, concept_metrics
from vlmfast.causal.core.units import UnitSet
from vlmfast.causal.interventions.edits import head_hook_of, single_variant_interventions
from vlmfast.causal.interventions.prefix import variant_embeds
from vlmfast.errors import InputError
from vlmfast.models.interventions import Selector

MIN_NULL_FOR_PVALUES = 20
METHODS = ("batched", "serial")


def serial_name(method: str, stacklevel: int = 3) -> str:
    """``method`` with the old name ``"loop"`` mapped to ``"serial"`` (DeprecationWarning)."""
    if method == "loop":
        warnings.warn(
            "method='loop' is now called method='serial' (the same reference path); "
            "'loop' will be removed in a later release",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        return "serial"
    return method


@dataclass
class PreparedEval:
    """The clean runs and the means an intervention edits towards, computed once."""

    ev: EvalSet
    caption_tok: torch.Tensor
    prompt_tok: torch.Tensor
    owner: npt.NDArray[np.int64]
    clean_img: torch.Tensor
    clean_txt: torch.Tensor
    means: dict[str, torch.Tensor]
    feature_means: dict[tuple[str, str], torch.Tensor]
    head_means: dict[str, torch.Tensor]


def prepare_eval(
    pair: Any,
    ev: EvalSet,
    unit_sets: Sequence[UnitSet],
    saes: Mapping[str, Any],
    mode: str,
    ablation: str,
) -> PreparedEval:
    prompts, owner = ev.prompt_texts()
    cap_tok = pair.tokenize(ev.captions)
    prm_tok = pair.tokenize(prompts)
    txt_all = torch.cat([cap_tok, prm_tok])
    hooks: dict[str, set[str]] = {"image": set(), "text": set()}
    for us in unit_sets:
        for u in us:
            if mode == "steer" and u.kind == "head":
                hooks[u.tower].add(head_hook_of(u))
            elif mode == "ablate" and (ablation == "mean" or u.kind == "feature"):
                hooks[u.tower].add(u.hook)
    with torch.no_grad():
        img = pair.run(images=ev.images, cache=sorted(hooks["image"]) or None)
        txt = pair.run(texts=txt_all, cache=sorted(hooks["text"]) or None)
    cache = {**img.cache, **txt.cache}
    means: dict[str, torch.Tensor] = {}
    feature_means: dict[tuple[str, str], torch.Tensor] = {}
    head_means: dict[str, torch.Tensor] = {}
    for us in unit_sets:
        for u in us:
            if mode == "steer" and u.kind == "head":
                h = head_hook_of(u)
                if h not in head_means:
                    x = cache[h].float()  # [B, T, H, d]
                    head_means[h] = x.mean(dim=(0, 1))
                    head_means[u.hook] = head_means[h]
            elif mode != "ablate":
                continue
            elif u.kind == "feature" and (u.hook, u.sae or "") not in feature_means:
                sae = saes[u.sae or ""]
                x = cache[u.hook].reshape(-1, cache[u.hook].shape[-1]).float()
                with torch.no_grad():
                    val, idx = sae.encode(x)
                tot = torch.zeros(int(sae.n_latents), dtype=torch.float64)
                tot.index_add_(0, idx.reshape(-1).long().cpu(), val.reshape(-1).double().cpu())
                feature_means[(u.hook, u.sae or "")] = (tot / x.shape[0]).float()
            elif u.kind != "feature" and u.hook not in means and u.hook in cache:
                means[u.hook] = cache[u.hook].mean(dim=0, keepdim=True)
    return PreparedEval(
        ev,
        cap_tok,
        prm_tok,
        owner,
        img.image_embeds,
        txt.text_embeds,
        means,
        feature_means,
        head_means,
    )


def run_variants(
    pair: Any,
    prep: PreparedEval,
    variants: Sequence[tuple[UnitSet | None, float]],
    *,
    mode: str,
    ablation: str,
    saes: Mapping[str, Any],
    positions: Selector,
    max_rows: int,
    method: str,
    progress: Any = None,
) -> MetricTable:
    """METRICS of every variant (``(units or None, alpha)``), batched or in a loop."""
    ev = prep.ev
    n_cap = prep.caption_tok.shape[0]
    txt_in = torch.cat([prep.caption_tok, prep.prompt_tok])
    towers = {u.tower for us, _ in variants if us is not None for u in us}
    kw = dict(
        mode=mode,
        ablation=ablation,
        means=prep.means,
        feature_means=prep.feature_means,
        saes=saes,
        head_means=prep.head_means,
        positions=positions,
    )
    n_var = len(variants)
    clean = {"image": prep.clean_img, "text": prep.clean_txt}
    out = {t: e.unsqueeze(0).expand(n_var, -1, -1).clone() for t, e in clean.items()}
    with torch.no_grad():
        for tower in ("image", "text"):
            if tower not in towers:
                continue
            inputs = ev.images if tower == "image" else txt_in
            if method == "serial":
                for v, (units, alpha) in enumerate(variants):
                    if units is None:
                        continue
                    ivs = single_variant_interventions(pair, tower, units, alpha, **kw)  # type: ignore[arg-type]
                    run = pair.run(
                        **{"images" if tower == "image" else "texts": inputs}, interventions=ivs
                    )
                    out[tower][v] = run.image_embeds if tower == "image" else run.text_embeds
                    if progress is not None:
                        progress(1)
                continue
            out[tower] = variant_embeds(
                pair,
                tower,
                inputs,
                variants,
                clean[tower],
                max_rows=max_rows,
                progress=progress,
                **kw,
            )
    scale = pair.logit_scale.detach()
    bias = pair.logit_bias.detach() if pair.logit_bias is not None else None
    return concept_metrics(
        out["image"], out["text"][:, :n_cap], out["text"][:, n_cap:], ev, prep.owner, scale, bias
    )


def check_common(
    mode: str, ablation: str, alpha: Any, null: int, pvalues: bool, method: str, max_rows: int
) -> None:
    if mode not in ("ablate", "steer"):
        raise InputError(f"mode must be 'ablate' or 'steer', got {mode!r}")
    if ablation not in ("mean", "zero"):
        raise InputError(f"ablation must be 'mean' or 'zero', got {ablation!r}")
    if mode == "steer" and alpha is None:
        raise InputError("mode='steer' needs alpha= (the steering strength)")
    if not isinstance(null, int) or null < 0:
        raise InputError(f"null must be an int >= 0 (random unit sets), got {null!r}")
    if pvalues and null < MIN_NULL_FOR_PVALUES:
        raise InputError(
            f"null={null} random sets cannot give a permutation p-value (the smallest possible "
            f"is 1/(1+null)); use null >= {MIN_NULL_FOR_PVALUES}, or pvalues=False"
        )
    if method not in METHODS:
        raise InputError(f"method must be 'batched' or 'serial', got {method!r}")
    if max_rows < 1:
        raise InputError(f"max_rows must be >= 1, got {max_rows}")
