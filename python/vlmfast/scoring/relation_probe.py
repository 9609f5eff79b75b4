"""Bound relations read from a store: one row per sample of a hook (CLS, embedding, EOT or
a max / mean over token rows), probed per bound relation (:mod:`vlmfast.crossmodal.relations`)
beside the best single unit and, with an SAE, the best SAE feature.

    from vlmfast.scoring.relation_probe import relation_ground_truth
    gt = relation_ground_truth(store, {"image": "image.blocks.-1.resid_post"},
                               rows={"image": "cls"})
    gt["families"]      # per (attribute, relation) family: probe accuracy, null, best unit

Image rows are probed against what the image shows, text rows against what the caption
says (the store's caption labels).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.crossmodal.relations import RelationProbeConfig, RelationProbeResult, relation_probes
from vlmfast.data.concepts.bound_relations import BOUND_KIND, UNORDERED_MEANING
from vlmfast.data.concepts.labels import ConceptLabels
from vlmfast.errors import InputError
from vlmfast.scoring.store_rows import cls_rows, image_cls_token, row_labels, sample_runs
from vlmfast.stats.inputs import as_numpy
from vlmfast.stats.significance import benjamini_hochberg
from vlmfast.store.schema import hook_modality

RELATION_ROWS: dict[str, str] = {
    "cls": "CLS rows (one per image)",
    "pooled": "pooled rows (one per sample: the embedding of an embed hook)",
    "eot": "last token rows (one per caption: EOT)",
    "max": "max over token rows (an image's patches, CLS left out)",
    "mean": "mean over token rows (an image's patches, CLS left out)",
}
"""Which rows of a hook stand for a sample (``rows`` of :func:`relation_rows`)."""
_MOD = {"image": 0, "text": 1}


def _select(store: Any, hook: str, index: Any, rows: str, m: int) -> npt.NDArray[np.int64]:
    """Store rows of modality ``m`` that ``rows`` reads (several per sample for max / mean)."""
    position = np.asarray(index.position)
    mine = np.asarray(index.modality) == m
    if rows == "cls":
        return cls_rows(store, hook, index)
    if rows == "pooled":
        return np.flatnonzero(mine & (position < 0)).astype(np.int64)
    tokens = mine & (position >= 0)
    if m == 0 and image_cls_token(store):
        tokens &= position != 0
    keep = np.flatnonzero(tokens).astype(np.int64)
    if rows == "eot" and len(keep):
        sample = np.asarray(index.sample)[keep]
        last = np.r_[sample[1:] != sample[:-1], True]  # token rows of a sample are contiguous
        keep = keep[last]
    return keep


def relation_rows(
    store: Any,
    hook: str,
    rows: str,
    *,
    sae: Any = None,
    modality: str | None = None,
    batch_size: int = 8192,
    device: str = "cpu",
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """``(sample ids [n], x [n, d])``: one row per sample of ``hook`` (see
    :data:`RELATION_ROWS`): the hook's units, or with ``sae`` its codes (dense ``[n,
    n_latents]``: mind the memory of a large dictionary). ``modality`` (``image`` /
    ``text``) picks one tower's rows of a ``joint`` hook (e.g. ``joint.embed``).

    Raises ``InputError`` for an unknown ``rows``, a joint hook without ``modality``, or
    no rows selected."""
    if rows not in RELATION_ROWS:
        raise InputError(f"rows must be one of {', '.join(RELATION_ROWS)}, got {rows!r}")
    mod = modality or hook_modality(hook)
    if mod not in _MOD:
        raise InputError(f"relation rows: {hook} is a {mod} hook; pass modality='image' or 'text'")
    index = store.index(hook)
    keep = _select(store, hook, index, rows, _MOD[mod])
    if len(keep) == 0:
        raise InputError(f"relation rows: {hook} has no {RELATION_ROWS[rows]}; pick other rows")
    sample = np.asarray(index.sample, dtype=np.int64)[keep]
    runs = sample_runs(sample, hook, mod)
    slot = np.cumsum(np.r_[True, sample[1:] != sample[:-1]]) - 1  # each row's sample slot
    width = int(sae.n_latents) if sae is not None else None
    out = _aggregate(store, hook, keep, slot, len(runs), rows, sae, width, batch_size, device)
    return runs, out


def _aggregate(
    store: Any,
    hook: str,
    keep: npt.NDArray[np.int64],
    slot: npt.NDArray[np.int64],
    n: int,
    rows: str,
    sae: Any,
    width: int | None,
    batch_size: int,
    device: str,
) -> npt.NDArray[np.float32]:
    """Per-sample max / mean (or the one row) of the selected rows, read in batches."""
    from vlmfast.scoring.store_read import StoreReader

    reader = StoreReader(store, hook, int(store.n_rows(hook)), sae, batch_size, device, None)
    out: npt.NDArray[np.float32] | None = None
    counts = np.bincount(slot, minlength=n).astype(np.float32)
    for start in range(0, reader.n, batch_size):
        lo, hi = np.searchsorted(keep, [start, min(reader.n, start + batch_size)])
        if lo == hi:
            continue
        x = store.read(hook, start, min(reader.n, start + batch_size))
        pick, at = keep[lo:hi] - start, slot[lo:hi]
        if sae is not None:
            idx, val = reader.encode(x, pick)
            dense = np.zeros((len(pick), int(width or 0)), np.float32)
            np.put_along_axis(dense, idx.astype(np.int64), val, axis=1)
        else:
            dense = np.asarray(as_numpy(x, hook)[pick], dtype=np.float32)
        if out is None:
            fill = -np.inf if rows == "max" else 0.0
            out = np.full((n, dense.shape[1]), fill, dtype=np.float32)
        (np.maximum if rows == "max" else np.add).at(out, at, dense)
    assert out is not None
    return out / counts[:, None] if rows == "mean" else out


def _labels(store: Any, samples: npt.NDArray[np.int64], m: int) -> tuple[Any, Any]:
    """The labels of ``samples`` for modality ``m`` and which samples have labels."""
    lab, found, concepts = row_labels(store, samples, np.full(len(samples), m, np.uint8))
    return ConceptLabels(lab, list(concepts.names), list(concepts.kinds)), found


def _pairs_summary(res: RelationProbeResult, alpha: float) -> dict[str, Any]:
    """Per-pair probes in brief: how many were defined, significant (BH), median numbers."""
    pairs = [p for p in res.probes if p.scope == "pair"]
    ok = [p for p in pairs if p.pvalue is not None]
    pvals = [float(p.pvalue) for p in ok if p.pvalue is not None]
    sig = benjamini_hochberg(pvals, alpha) if pvals else np.zeros(0, bool)

    def med(key: str) -> float | None:
        vals = [getattr(p, key) for p in ok if getattr(p, key) is not None]
        return float(np.median(vals)) if vals else None

    return {
        "pairs": len(pairs),
        "probed": len(ok),
        "significant": int(np.sum(sig)),
        "alpha": alpha,
        "median_accuracy": med("accuracy"),
        "median_best_unit_auroc": med("best_unit_auroc"),
        "median_best_feature_auroc": med("best_feature_auroc"),
    }


def _unordered(labels: ConceptLabels) -> dict[str, float | None]:
    """Share of samples on which each unordered pair of relation columns is identical."""
    out: dict[str, float | None] = {}
    for a, b in (("left of", "right of"), ("above", "below")):
        if a in labels.names and b in labels.names and labels.n_samples:
            same = labels.column(a) == labels.column(b)
            out[f"{a} / {b}"] = float(same.mean())
    return out


def default_rows(store: Any, hook: str, modality: str) -> str:
    """The rows a sample is read from when none are named: an image hook's CLS rows (else
    its pooled rows, else the max over its patches), a text hook's EOT rows (else pooled)."""
    index = store.index(hook)
    position = np.asarray(index.position)
    mine = np.asarray(index.modality) == _MOD[modality]
    has_tokens, has_pooled = (
        bool((mine & (position >= 0)).any()),
        bool((mine & (position < 0)).any()),
    )
    if modality == "image" and has_tokens and image_cls_token(store):
        return "cls"
    if has_pooled:
        return "pooled"
    return "eot" if modality == "text" else "max"


def missing_bound_labels(store: Any) -> str | None:
    """Why the store's labels have no bound relation column, or None when they have some."""
    labels = getattr(store, "labels", None)
    if labels is not None and BOUND_KIND in list(labels.kinds):
        return None
    return (
        "the store has no bound relation labels (cached before vlmfast had them, or a source "
        "without them): re-cache it (vlmfast run --force cache) to add them"
    )


def _synthetic_values() -> dict[str, tuple[str, ...]]:
    from vlmfast.data.synthetic import spec

    return {"color": spec.COLORS, "shape": spec.SHAPES}


def _modality_probes(
    store: Any, mod: str, hook: str, rows: str, sae: Any, opts: dict[str, Any]
) -> tuple[RelationProbeResult, ConceptLabels]:
    """The probes of one modality's hook (SAE codes over ``opts["sae_rows"]`` as units)."""
    samples, x = relation_rows(store, hook, rows, modality=mod, device=opts["device"])
    units = None
    if sae is not None:
        s_units, u = relation_rows(
            store, hook, opts["sae_rows"], sae=sae, modality=mod, device=opts["device"]
        )
        common, ia, ib = np.intersect1d(samples, s_units, return_indices=True)
        samples, x, units = common, x[ia], u[ib]
    labels, found = _labels(store, samples, _MOD[mod])
    x = x[found]
    units = None if units is None else units[found]
    where = f"{hook} {RELATION_ROWS[rows]}"
    res = relation_probes(
        x, labels, values=opts["values"], rows=where, config=opts["config"], units=units
    )
    return res, labels


def relation_ground_truth(
    store: Any,
    hooks: Mapping[str, str],
    *,
    rows: Mapping[str, str] | None = None,
    saes: Mapping[str, Any] | None = None,
    sae_rows: str = "max",
    values: Mapping[str, Sequence[str]] | None = None,
    config: RelationProbeConfig | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Bound relations per modality (``hooks``: ``{"image": hook, "text": hook}``), JSON-ready:
    ``families`` (one entry per modality and (attribute, relation) family: probe accuracy
    and AUROC with intervals, label-shuffled null, best unit and, with ``saes``, best SAE
    feature over ``sae_rows``), ``pairs`` (per-pair probes in brief, BH at 0.05),
    ``unordered_identical`` (images: share of samples where ``left of`` == ``right of``
    and ``above`` == ``below``) and ``rows`` (which rows were probed). ``rows`` defaults to
    ``cls`` for image hooks and ``eot`` for text hooks (:func:`default_rows`); ``values``
    to the synthetic benchmark's colors and shapes.

    A store without bound relation labels gives ``{"unavailable": why}`` (no probes).

    Raises ``InputError`` (a bad modality or rows)."""
    cfg = config or RelationProbeConfig()
    why = missing_bound_labels(store)
    if why is not None:
        return {"unavailable": why}
    bad = [m for m in hooks if m not in _MOD]
    if bad:
        raise InputError(f"relation ground truth: modality {bad[0]!r}; expected image or text")
    picked = {m: (rows or {}).get(m) or default_rows(store, h, m) for m, h in hooks.items()}
    opts = {"device": device, "sae_rows": sae_rows, "config": cfg,
            "values": values if values is not None else _synthetic_values()}  # fmt: skip
    out: dict[str, Any] = {"rows": {}, "features": {}, "families": [], "pairs": {},
                           "unordered_identical": {}, "unordered_meaning": dict(UNORDERED_MEANING),
                           "config": asdict(cfg)}  # fmt: skip
    for mod, hook in hooks.items():
        sae = (saes or {}).get(mod)
        res, labels = _modality_probes(store, mod, hook, picked[mod], sae, opts)
        out["rows"][mod] = res.rows
        out["features"][mod] = (
            None if sae is None else f"SAE features of {hook}, {RELATION_ROWS[sae_rows]}"
        )
        out["families"] += [
            {"modality": mod, **asdict(p)} for p in res.probes if p.scope == "family"
        ]
        out["pairs"][mod] = _pairs_summary(res, 0.05)
        if mod == "image":  # a caption's unordered relation is not degenerate
            out["unordered_identical"][mod] = _unordered(labels)
    return out
