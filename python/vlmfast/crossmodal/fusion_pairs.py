"""Fusion pairs: each concept's most selective units of the image tower (on images) and
of the text tower (on captions), and the config of the fusion test.

Selection (:func:`select_fusion_pairs`): per-sample activations of every unit of
``image_hooks`` on the images and of ``text_hooks`` on the captions
(:func:`vlmfast.causal.core.activations.unit_activations`: neurons of MLP layers by
default, heads by output norm, SAE features for hooks given in ``saes``), each scored by
exact AUROC (:func:`vlmfast.stats.score_dense`) against *its own* modality's labels
(images: what they show; captions: what they say). A concept's pair is its ``n_units``
best image units and ``n_units`` best text units with AUROC >= ``min_auroc`` (ties broken
by column); a concept with none on one side is skipped, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.causal.core.units import UnitSet, model_id
from vlmfast.crossmodal.fusion_data import FusionData
from vlmfast.errors import InputError

Array = npt.NDArray[np.float64]


@dataclass
class FusionConfig:
    """What :func:`fusion_units` selects and how it tests it.

    Raises:
        InputError: (constructing) an unknown ``ablation`` or ``reduce``, a count out of
            range, or ``level`` / ``min_auroc`` out of range.
    """

    concepts: tuple[str, ...] | None = None
    """Concepts to pair (None: every concept of ``kinds`` with enough positives)."""
    kinds: tuple[str, ...] | None = ("object", "color")
    """Concept kinds to pair when ``concepts`` is None (None: every kind)."""
    image_hooks: str = "image.blocks.*.mlp.post"
    """Image-tower hooks (names or globs) whose units are candidates."""
    text_hooks: str = "text.blocks.*.mlp.post"
    """Text-tower hooks (names or globs) whose units are candidates."""
    n_units: int = 8
    """Units per tower per concept (at most; fewer pass ``min_auroc``)."""
    min_auroc: float = 0.7
    """A unit joins a pair only at this AUROC or more on its own modality."""
    reduce: str = "max"
    """Per-sample reduction of token activations: ``max`` or ``mean``."""
    ablation: str = "mean"
    """``mean`` (mean over the test inputs, per token position) or ``zero``."""
    select_fraction: float = 0.5
    """Share of ``data`` used to select units when no ``select_data`` is given."""
    min_positives: int = 3
    """A concept needs this many positives and negatives in each modality and each half."""
    n_null: int = 20
    """Random unit sets (same counts per hook) per pair and for retrieval."""
    n_boot: int = 500
    """Bootstrap resamples (pairs of the test set; fusion pairs for the means)."""
    level: float = 0.95
    """Interval level."""
    max_rows: int = 4096
    """Input rows per batched forward (variants are stacked along the batch)."""
    retrieval: bool = True
    """Measure retrieval clean vs with every pair's units ablated."""
    seed: int = 0
    """Seed of the split, the null draws and the bootstrap."""

    def __post_init__(self) -> None:
        if self.ablation not in ("mean", "zero"):
            raise InputError(
                f"FusionConfig.ablation must be 'mean' or 'zero', got {self.ablation!r}"
            )
        if self.reduce not in ("max", "mean"):
            raise InputError(f"FusionConfig.reduce must be 'max' or 'mean', got {self.reduce!r}")
        if self.n_units < 1 or self.n_null < 0 or self.n_boot < 1 or self.max_rows < 1:
            raise InputError(
                "FusionConfig: need n_units >= 1, n_null >= 0, n_boot >= 1, max_rows >= 1"
            )
        if not 0.0 < self.level < 1.0 or not 0.0 <= self.min_auroc <= 1.0:
            raise InputError("FusionConfig: need 0 < level < 1 and 0 <= min_auroc <= 1")

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a plain dict."""
        return asdict(self)


@dataclass
class FusionPair:
    """One concept's image units and text units (picked on the selection pairs)."""

    concept: str
    kind: str
    image_units: UnitSet
    """Image-tower units, best first, ``scores`` their image AUROCs."""
    text_units: UnitSet
    """Text-tower units, best first, ``scores`` their caption AUROCs."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the pair as a plain dict (its unit sets as :meth:`UnitSet.to_dict`)."""
        return {
            "concept": self.concept,
            "kind": self.kind,
            "image_units": self.image_units.to_dict(),
            "text_units": self.text_units.to_dict(),
        }


def _aurocs(
    pair: Any, data: FusionData, hooks: str, tower: str, cfg: FusionConfig, saes: Mapping[str, Any]
) -> tuple[Array, Any]:
    """``([U, C] AUROC of each unit on its modality's labels, layout)``."""
    from vlmfast.causal.core.activations import unit_activations
    from vlmfast.stats import score_dense

    own = {h: s for h, s in saes.items() if h.startswith(tower + ".")}
    kw: dict[str, Any] = {"images": data.images} if tower == "image" else {"texts": data.captions}
    acts = unit_activations(pair, hooks=hooks, reduce=cfg.reduce, saes=own, **kw)
    labels = data.image_labels if tower == "image" else data.caption_labels
    res = score_dense(acts.values.astype(np.float64), labels, with_se=False, stats=False, top_n=0)
    return np.asarray(res.auroc, dtype=np.float64), acts.layout


def _pick(
    auroc: Array, layout: Any, c: int, cfg: FusionConfig, concept: str, mod: str, model: str
) -> UnitSet:
    col = auroc[:, c]
    ok = np.flatnonzero(np.isfinite(col) & (col >= cfg.min_auroc))
    best = ok[np.lexsort((ok, -col[ok]))][: cfg.n_units]
    units = tuple(layout.unit(int(j)) for j in best)
    return UnitSet(units, concept, mod, model, tuple(float(col[j]) for j in best))


def _concepts(
    data: FusionData, parts: Sequence[FusionData], cfg: FusionConfig
) -> tuple[list[int], dict[str, str]]:
    """Columns to pair and the reasons others were left out."""
    if cfg.concepts is not None:
        bad = [c for c in cfg.concepts if c not in data.concepts]
        if bad:
            raise InputError(
                f"concepts {bad} are not in the fusion data; it has {list(data.concepts)}"
            )
        cols = [data.concepts.index(c) for c in cfg.concepts]
    else:
        cols = [j for j, k in enumerate(data.kinds) if cfg.kinds is None or k in cfg.kinds]
    keep, skipped = [], {}
    m = cfg.min_positives
    for j in cols:
        counts = [int(lab[:, j].sum()) for p in parts for lab in (p.image_labels, p.caption_labels)]
        sizes = [p.n for p in parts for _ in range(2)]
        if min(counts) < m or min(n - k for n, k in zip(sizes, counts)) < m:
            skipped[data.concepts[j]] = f"fewer than {m} positives or negatives in a modality/half"
        else:
            keep.append(j)
    return keep, skipped


def select_fusion_pairs(
    pair: Any,
    data: FusionData,
    config: FusionConfig | None = None,
    *,
    saes: Mapping[str, Any] | None = None,
    test_data: FusionData | None = None,
) -> tuple[list[FusionPair], dict[str, str]]:
    """Returns the fusion pairs picked on ``data`` (module docstring): ``(pairs, skipped
    concept -> why)``.

    ``saes``: ``{hook: TopKSAE}``; those hooks' units are SAE features. ``test_data``: the
    pairs the test will use (a concept needs enough positives there too).

    Raises:
        InputError: an unknown concept in ``config.concepts``, or no hook matches.
    """
    cfg = config or FusionConfig()
    saes = dict(saes or {})
    cols, skipped = _concepts(data, [data] + ([test_data] if test_data is not None else []), cfg)
    a_img, lay_img = _aurocs(pair, data, cfg.image_hooks, "image", cfg, saes)
    a_txt, lay_txt = _aurocs(pair, data, cfg.text_hooks, "text", cfg, saes)
    model = model_id(pair)
    out: list[FusionPair] = []
    for j in cols:
        name = data.concepts[j]
        img = _pick(a_img, lay_img, j, cfg, name, "image", model)
        txt = _pick(a_txt, lay_txt, j, cfg, name, "text", model)
        if not len(img) or not len(txt):
            side, a = ("image", a_img) if not len(img) else ("text", a_txt)
            best = np.nanmax(a[:, j]) if np.isfinite(a[:, j]).any() else float("nan")
            skipped[name] = f"no {side} unit reaches AUROC {cfg.min_auroc} (best {best:.3f})"
            continue
        out.append(FusionPair(name, data.kinds[j], img, txt))
    return out, skipped
