"""Fusion units across towers: concept-selective units of each tower, paired by concept,
tested by ablation on the logits of matching captions and on retrieval.

    from vlmfast import crossmodal as xm
    data = xm.FusionData.from_source(pair, "synthetic:n=512,seed=3", n=512)
    res = xm.fusion_units(pair, data, xm.FusionConfig(n_units=8, n_null=20))
    for p in res.pairs:
        p.pair.concept, p.image.specificity, p.text.pvalue, p.interaction.value
    res.retrieval.drop, res.retrieval.relative     # beside the paper's claim (paper_claim)

**Selection** (:func:`select_fusion_pairs`, on the *selection* pairs, disjoint from the
test pairs: ``select_data`` or a seeded ``select_fraction`` of ``data``): per-sample
activations of every unit of ``image_hooks`` on the images and of ``text_hooks`` on the
captions (:func:`vlmfast.causal.unit_activations`: neurons of MLP layers by default,
heads by output norm, SAE features for hooks given in ``saes``), each scored by exact
AUROC against *its own* modality's labels (images: what they show; captions: what they
say). A concept's **fusion pair** is its ``n_units`` best image units and its
``n_units`` best text units with AUROC ≥ ``min_auroc``; a concept with none on one side
is skipped, with the reason.

**Causal test** (on the test pairs; statistics in :mod:`vlmfast.crossmodal.fusion_stats`):
the pair's image units, its text units, and both, are ablated (``mean``: each unit set
to its mean over the test inputs at every token; ``zero``), and the drop of every image
x caption logit is read: the drop on matching cells minus the drop on cells where one
side only carries the concept (``specificity``), with a bootstrap interval over pairs
and a null of random unit sets with the same counts per hook (``n_null`` draws,
:func:`vlmfast.causal.core.units.random_like`); the interaction ``both − image − text``
with its interval and null.

**Retrieval** (:mod:`vlmfast.crossmodal.retrieval`): image -> caption top-1 among the
test set's captions, clean and with every fusion pair's units ablated at once (both
towers), the drop with its interval and a random-unit null. The paper's "-23%" is a
claim shown beside ours by the report (:attr:`FusionResult.paper_claim`), never used here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.causal.core.units import Unit, UnitSet, model_id, random_like
from vlmfast.crossmodal.checks import to_jsonable
from vlmfast.crossmodal.fusion_data import FusionData
from vlmfast.crossmodal.fusion_pairs import FusionConfig, FusionPair, select_fusion_pairs
from vlmfast.crossmodal.fusion_stats import (
    CONDITIONS,
    Interaction,
    SideEffect,
    mean_with_ci,
    pair_statistics,
)
from vlmfast.crossmodal.retrieval import PAPER_CLAIM, RetrievalDrop, retrieval_drop, top1_correct

Array = npt.NDArray[np.float64]


@dataclass
class PairEffects:
    """The ablations of one fusion pair on the test pairs."""

    pair: FusionPair
    image: SideEffect
    text: SideEffect
    both: SideEffect
    interaction: Interaction
    n_images: int
    """Test images showing the concept."""
    n_captions: int
    """Test captions naming it."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the pair and its ablation effects (logits) as a JSON-ready dict."""
        return {
            **self.pair.to_dict(),
            **{c: getattr(self, c).to_dict() for c in CONDITIONS},
            "interaction": self.interaction.to_dict(),
            "n_images": self.n_images,
            "n_captions": self.n_captions,
        }


@dataclass
class FusionResult:
    """Everything :func:`fusion_units` measured; JSON-ready via :meth:`to_dict`."""

    pairs: list[PairEffects]
    skipped: dict[str, str]
    """Concept -> why it has no tested pair."""
    retrieval: RetrievalDrop | None
    n_select: int
    n_eval: int
    config: dict[str, Any]
    mean_specificity: dict[str, Any] = field(default_factory=dict)
    """Per condition: mean specificity over pairs and its bootstrap interval (over pairs)."""
    mean_interaction: dict[str, Any] = field(default_factory=dict)
    """Mean interaction over pairs and its bootstrap interval (None: no pair)."""
    paper_claim: str = PAPER_CLAIM
    """Key of the paper's fusion claim for the report to show beside ours."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the result as a JSON-ready dict (effects in logits, shares in [0, 1])."""
        return {
            "pairs": [p.to_dict() for p in self.pairs],
            "skipped": dict(self.skipped),
            "retrieval": None if self.retrieval is None else self.retrieval.to_dict(),
            "n_select": self.n_select,
            "n_eval": self.n_eval,
            "config": to_jsonable(self.config),
            "mean_specificity": to_jsonable(self.mean_specificity),
            "mean_interaction": to_jsonable(self.mean_interaction),
            "paper_claim": self.paper_claim,
        }


def _variant_embeds(
    pair: Any,
    tower: str,
    inputs: torch.Tensor,
    variants: Sequence[UnitSet],
    prep: Any,
    cfg: FusionConfig,
    saes: Mapping[str, Any],
) -> torch.Tensor:
    """``[V, N, D]`` embeddings of ``inputs`` with each unit set ablated (batched, each
    chunk from its clean prefix: ``variant_embeds``)."""
    from vlmfast.causal.interventions.prefix import variant_embeds

    clean = prep.clean_img if tower == "image" else prep.clean_txt[: inputs.shape[0]]
    with torch.no_grad():
        return variant_embeds(
            pair, tower, inputs, [(u, 0.0) for u in variants], clean, max_rows=cfg.max_rows,
            mode="ablate", ablation=cfg.ablation, means=prep.means,
            feature_means=prep.feature_means, saes=saes, head_means=prep.head_means,
            positions=None,
        )  # fmt: skip


def _logits(pair: Any, img: torch.Tensor, txt: torch.Tensor) -> Array:
    with torch.no_grad():
        return np.asarray(pair.logits_from_embeds(img, txt).double().cpu().numpy())


class _Runner:
    """The test pairs' clean embeddings, ablation means and batched ablated forwards."""

    def __init__(
        self,
        pair: Any,
        test: FusionData,
        sets: Sequence[UnitSet],
        cfg: FusionConfig,
        saes: Mapping[str, Any],
    ) -> None:
        from vlmfast.causal.interventions.variants import prepare_eval

        self.pair, self.cfg, self.saes, self.n = pair, cfg, saes, test.n
        self.prep = prepare_eval(pair, test.eval_set(), list(sets), saes, "ablate", cfg.ablation)
        self.images = test.images
        self.tokens = self.prep.caption_tok
        self.img0 = self.prep.clean_img
        self.txt0 = self.prep.clean_txt[: test.n]
        self.clean = _logits(pair, self.img0, self.txt0)

    def embeds(self, tower: str, sets: Sequence[UnitSet]) -> torch.Tensor:
        inputs = self.images if tower == "image" else self.tokens
        return _variant_embeds(self.pair, tower, inputs, sets, self.prep, self.cfg, self.saes)

    def nulls(self, units: UnitSet, salt: int) -> list[UnitSet]:
        if self.cfg.n_null == 0:
            return []
        return random_like(units, self.pair, self.cfg.n_null, self.cfg.seed + salt, saes=self.saes)

    def drops(self, e_img: torch.Tensor, e_txt: torch.Tensor) -> dict[str, Array]:
        """``{image, text, both}`` ``[N, N]`` logit drops of one variant."""
        return {
            "image": self.clean - _logits(self.pair, e_img, self.txt0),
            "text": self.clean - _logits(self.pair, self.img0, e_txt),
            "both": self.clean - _logits(self.pair, e_img, e_txt),
        }


def _test_pair(run: _Runner, fp: FusionPair, test: FusionData, salt: int) -> PairEffects:
    cfg = run.cfg
    img_sets = [fp.image_units, *run.nulls(fp.image_units, 7919 * salt + 1)]
    txt_sets = [fp.text_units, *run.nulls(fp.text_units, 7919 * salt + 2)]
    e_img, e_txt = run.embeds("image", img_sets), run.embeds("text", txt_sets)
    drops = run.drops(e_img[0], e_txt[0])
    per_null = [run.drops(e_img[v], e_txt[v]) for v in range(1, len(img_sets))]
    n = test.n
    null = {
        c: np.stack([d[c] for d in per_null]) if per_null else np.zeros((0, n, n))
        for c in CONDITIONS
    }
    j = test.concepts.index(fp.concept)
    a, b = test.image_labels[:, j], test.caption_labels[:, j]
    sides, inter = pair_statistics(
        drops, null, a, b, n_boot=cfg.n_boot, level=cfg.level, seed=cfg.seed + salt
    )
    return PairEffects(
        fp, sides["image"], sides["text"], sides["both"], inter, int(a.sum()), int(b.sum())
    )


def _union(pairs: Sequence[FusionPair], tower: str, model: str) -> UnitSet:
    seen: dict[Unit, None] = {}
    for p in pairs:
        for u in p.image_units if tower == "image" else p.text_units:
            seen[u] = None
    return UnitSet(tuple(seen), None, tower, model)


def _retrieval(run: _Runner, pairs: Sequence[FusionPair]) -> RetrievalDrop:
    model = model_id(run.pair)
    u_img, u_txt = _union(pairs, "image", model), _union(pairs, "text", model)
    e_img = run.embeds("image", [u_img, *run.nulls(u_img, 104729)])
    e_txt = run.embeds("text", [u_txt, *run.nulls(u_txt, 104730)])
    ablated = top1_correct(_logits(run.pair, e_img[0], e_txt[0]))
    null = (
        np.stack(
            [top1_correct(_logits(run.pair, e_img[v], e_txt[v])) for v in range(1, len(e_img))]
        )
        if len(e_img) > 1
        else None
    )
    cfg = run.cfg
    return retrieval_drop(
        top1_correct(run.clean), ablated, null, n_boot=cfg.n_boot, level=cfg.level,
        seed=cfg.seed, n_units=len(u_img) + len(u_txt),
    )  # fmt: skip


def _summaries(
    effects: Sequence[PairEffects], cfg: FusionConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    kw = dict(n_boot=cfg.n_boot, level=cfg.level, seed=cfg.seed)
    spec = {}
    for c in CONDITIONS:
        m, ci = mean_with_ci(np.array([getattr(e, c).specificity for e in effects]), **kw)  # type: ignore[arg-type]
        spec[c] = {"mean": m, "ci": ci}
    m, ci = mean_with_ci(np.array([e.interaction.value for e in effects]), **kw)  # type: ignore[arg-type]
    return spec, {"mean": m, "ci": ci, "n_pairs": len(effects)}


def fusion_units(
    pair: Any,
    data: FusionData,
    config: FusionConfig | None = None,
    *,
    saes: Mapping[str, Any] | None = None,
    select_data: FusionData | None = None,
) -> FusionResult:
    """Select fusion pairs, test each by ablation, and measure retrieval (module docstring).

    ``data``: the test pairs (and, without ``select_data``, the pool a seeded
    ``config.select_fraction`` of is set aside to select units on). ``saes``:
    ``{hook: TopKSAE}`` whose features are candidate units of that hook.

    Returns:
        The result (a :class:`FusionResult`): per pair the specificity of image / text /
            both ablations (logit units) with intervals and random-unit nulls, the
            interaction, and the retrieval drop (None when no pair was found or
            ``retrieval=False``).

    Raises:
        InputError: the pair is in training mode, a concept is unknown, a hook matches
            nothing, or the data are too few to split.
    """
    from vlmfast.causal.core.conventions import check_eval_mode

    cfg = config or FusionConfig()
    check_eval_mode(pair, "fusion_units")
    saes = dict(saes or {})
    if select_data is None:
        select_data, data = data.split(cfg.select_fraction, cfg.seed)
    pairs, skipped = select_fusion_pairs(pair, select_data, cfg, saes=saes, test_data=data)
    result = FusionResult([], skipped, None, select_data.n, data.n, cfg.to_dict())
    if not pairs:
        return result
    sets = [u for p in pairs for u in (p.image_units, p.text_units)]
    run = _Runner(pair, data, sets, cfg, saes)
    result.pairs = [_test_pair(run, p, data, k + 1) for k, p in enumerate(pairs)]
    result.mean_specificity, result.mean_interaction = _summaries(result.pairs, cfg)
    if cfg.retrieval:
        result.retrieval = _retrieval(run, pairs)
    return result
