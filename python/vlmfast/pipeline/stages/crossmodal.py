"""Stage ``cross-modal``: cross-modal binding on the store's shared-space rows (``vlmfast.crossmodal``).

Reads the matched image and text rows of ``[crossmodal].image_hook`` / ``.text_hook``
(default ``image.embed`` / ``text.embed``: cache them with ``[hooks].extra``) and the
store's image and caption labels, and measures modality invariance at three levels:

* **concept level**: :func:`vlmfast.crossmodal.concept_transfer` (a probe trained on one
  modality, tested on the other, against a label-shuffled null), per concept with
  positives in both modalities;
* **feature level**: one top-k SAE trained on both modalities' rows per setting (``gap
  kept``; ``gap removed``: each modality's mean row subtracted first and saved with the
  SAE in ``sae_<setting>/``) by :func:`vlmfast.crossmodal.train_shared_sae`, analysed on
  all pairs and on the single-object pairs (where the labels say which): modality split,
  Bridge Score and the invariant-feature curve with its feature-permutation null;
* **grounding heads** (:mod:`vlmfast.pipeline.stages.crossmodal_grounding`);
* **two-tower circuits** (:mod:`vlmfast.pipeline.stages.crossmodal_circuit`): heads of
  both towers in one search, ``two_tower/<concept>.svg`` drawn meeting in the embedding.

``RUN/cross-modal/result.json`` holds every number with its null and interval;
``exemplars/`` and ``grounding/`` hold the PNGs the report shows. A store without one of
the two hooks is an error naming the hook and what to add.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError
from vlmfast.pipeline.context import StageContext

MIN_POSITIVES = 5
"""A concept enters the concept-level table when each modality has this many positives
and negatives (``left_out`` in the result counts the others)."""
TOP_BIMODAL = 5
"""Bimodal features listed with exemplars (highest Bridge Score first)."""
EXEMPLARS = 3
"""Exemplar images and captions per listed feature."""


def check_store(store: Any, image_hook: str, text_hook: str) -> None:
    """Both hooks are in the store (or ``joint.<point>`` serves them).

    Raises:
        InputError: a hook is missing: the message names it and says what to add to the
            run's config (``[hooks].extra``) before rerunning the cache stage.
    """
    for hook, tower in ((image_hook, "image"), (text_hook, "text")):
        joint = "joint." + hook.partition(".")[2]
        if hook not in store.hooks and joint not in store.hooks:
            raise InputError(
                f"the cross-modal stage needs the {tower} hook {hook!r}, but the store cached "
                f"only {store.hooks}: add {hook!r} to [hooks].extra (both image.embed and "
                "text.embed for the shared space) and rerun the cache stage"
            )


def unit_rows(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each row divided by its Euclidean norm (a zero row stays zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.asarray(x / np.where(norm > 0, norm, 1.0))


def usable_concepts(p: Any) -> list[int]:
    """Columns with at least :data:`MIN_POSITIVES` positives and negatives in both modalities."""
    keep = []
    for y in (p.image_labels, p.text_labels):
        pos = y.sum(0)
        keep.append((pos >= MIN_POSITIVES) & (len(y) - pos >= MIN_POSITIVES))
    return [int(c) for c in np.flatnonzero(keep[0] & keep[1])]


def _best(auroc: npt.NDArray[np.float64], f: int, names: list[str]) -> dict[str, Any]:
    row = np.nan_to_num(auroc[f], nan=-1.0)
    c = int(np.argmax(row))
    return {"concept": names[c], "auroc": float(auroc[f, c])}


def _bimodal(res: Any, names: list[str], img: Any, txt: Any) -> list[dict[str, Any]]:
    """The bimodal features with the highest Bridge Score, their best concepts and the
    pairs (store positions) where they fire most on each side."""
    labels = res.split.label
    bridge = np.nan_to_num(res.bridge.bridge, nan=-np.inf)
    order = [int(f) for f in np.argsort(-bridge, kind="stable") if labels[f] == "bimodal"]
    out = []
    for f in order[:TOP_BIMODAL]:
        if not np.isfinite(res.bridge.bridge[f]):
            continue
        out.append(
            {
                "feature": f,
                "split": [res.split.split[f], res.split.ci_low[f], res.split.ci_high[f]],
                "bridge": [res.bridge.bridge[f], res.bridge.ci_low[f], res.bridge.ci_high[f]],
                "bridge_p": res.bridge.pvalue[f],
                "image_best": _best(res.image_auroc, f, names),
                "text_best": _best(res.text_auroc, f, names),
                "image_top": [int(i) for i in np.argsort(-img[:, f])[:EXEMPLARS]],
                "text_top": [int(i) for i in np.argsort(-txt[:, f])[:EXEMPLARS]],
            }
        )
    return out


def _analysis(res: Any) -> dict[str, Any]:
    d: dict[str, Any] = res.to_dict(tables=False)
    d.pop("gap_means", None)
    d["gap"] = None if res.gap_means is None else res.gap_means.gap
    return d


def shared_dictionary(ctx: StageContext, store: Any, p: Any) -> dict[str, Any]:
    """Per setting (gap kept / removed): one shared SAE (saved to ``sae_<setting>/`` with
    the means it subtracts), its fit, and its analysis on all and single-object pairs."""
    from vlmfast.crossmodal import SharedSAEConfig, train_shared_sae

    cm, seed = ctx.config.crossmodal, ctx.config.run.seed
    out: dict[str, Any] = {}
    for setting, remove in (("gap_kept", False), ("gap_removed", True)):
        scfg = SharedSAEConfig(
            image_hook=cm.image_hook, text_hook=cm.text_hook, n_latents=cm.n_latents, k=cm.k,
            steps=cm.steps, remove_gap=remove, seed=seed, n_boot=cm.n_boot, n_null=cm.n_null,
            thresholds=tuple(float(t) for t in cm.thresholds),
        )  # fmt: skip
        r = train_shared_sae(store, scfg, ctx.dir / f"sae_{setting}")
        fit = {k: v for k, v in r.to_dict().items() if k in FIT_KEYS}
        fit["path"] = f"sae_{setting}"  # relative to the stage folder
        entry: dict[str, Any] = {"fit": fit}
        if r.analysis is not None:
            entry["all"] = _analysis(r.analysis)
            img = r.shared.encode(p.image_rows, "image")
            txt = r.shared.encode(p.text_rows, "text")
            entry["all"]["bimodal"] = _bimodal(r.analysis, r.analysis.concepts, img, txt)
        entry["single_object"] = (
            _analysis(r.single_object)
            if r.single_object is not None
            else {"skipped": f"single-object pairs: {r.single_object_reason}"}
        )
        for subset in ("all", "single_object"):
            if subset in entry:
                _log_curve(ctx, setting, subset, entry[subset], cm.paper_threshold)
        out[setting] = entry
    return out


FIT_KEYS = ("path", "n_pairs", "steps", "fvu_image", "fvu_text", "l0", "dead_fraction", "gap")
"""What the result keeps of each shared SAE's fit."""


def _log_curve(ctx: StageContext, setting: str, subset: str, d: dict[str, Any], t: float) -> None:
    from vlmfast.pipeline.stages.crossmodal_text import invariant_line

    ctx.log(
        f"  {setting.replace('_', ' ')}, {subset.replace('_', '-')} pairs: " + invariant_line(d, t)
    )


def run(ctx: StageContext) -> dict[str, Any]:
    from vlmfast.crossmodal import concept_transfer, store_pairs
    from vlmfast.pipeline.stages.crossmodal_circuit import two_tower_circuits
    from vlmfast.pipeline.stages.crossmodal_exemplars import write_exemplars
    from vlmfast.pipeline.stages.crossmodal_fusion import fusion
    from vlmfast.pipeline.stages.crossmodal_grounding import grounding
    from vlmfast.store import ActivationStore

    cfg = ctx.config
    cm = cfg.crossmodal
    if cm.k > cm.n_latents:
        raise InputError(f"crossmodal.k ({cm.k}) exceeds crossmodal.n_latents ({cm.n_latents})")
    store = ActivationStore.open(ctx.upstream("cache") / "store.zarr")
    check_store(store, cm.image_hook, cm.text_hook)
    p = store_pairs(store, cm.image_hook, cm.text_hook)
    cols = usable_concepts(p)
    if not cols:
        raise InputError(
            f"no concept has {MIN_POSITIVES} positives and negatives among {p.n} pairs in "
            "both modalities: cache more samples"
        )
    names = [p.concepts[c] for c in cols]
    ctx.log(f"  {p.n} pairs of {cm.image_hook} / {cm.text_hook}; {len(cols)} concepts")
    img, txt = (unit_rows(p.image_rows), unit_rows(p.text_rows)) if cm.normalize else (
        p.image_rows, p.text_rows)  # fmt: skip
    clock = _Clock()
    transfer = concept_transfer(
        img, txt, p.image_labels[:, cols], p.text_labels[:, cols],
        concepts=names, n_null=cm.n_null, seed=cfg.run.seed,
    )  # fmt: skip
    out: dict[str, Any] = {
        "hooks": {"image": cm.image_hook, "text": cm.text_hook},
        "normalized": cm.normalize,
        "n_pairs": p.n,
        "concepts": names,
        "kinds": [p.kinds[c] for c in cols],
        "left_out": len(p.concepts) - len(cols),
        "min_positives": MIN_POSITIVES,
        "paper_threshold": cm.paper_threshold,
        "transfer": transfer.to_dict(),
    }
    clock.lap("transfer")
    out["shared"] = shared_dictionary(ctx, store, p)
    write_exemplars(ctx, out["shared"], p.sample)
    clock.lap("shared")
    out["fusion"] = fusion(ctx)
    clock.lap("fusion")
    out["grounding"] = grounding(ctx)
    clock.lap("grounding")
    out["two_tower"] = two_tower_circuits(ctx)
    clock.lap("two_tower")
    out["seconds"] = clock.laps
    ctx.log("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in clock.laps.items()))
    return out


class _Clock:
    """Wall-clock seconds of each part of the stage (``result["seconds"]``)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.start, 2)
        self.start = now
