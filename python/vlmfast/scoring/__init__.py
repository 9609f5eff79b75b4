"""Concept scoring of SAE features and neurons: selectivity, polysemanticity, modality invariance.

    import vlmfast as vf
    res = vf.scoring.score_codes(indices, values, labels, n_features,
                                 concepts=vf.scoring.ConceptSet.make(names, kinds),
                                 modality=modality)       # 0 image rows, 1 text rows
    print(vf.scoring.format_summary(res.summary())); res.save("scores/")
    res = vf.scoring.score_store(store, hook, sae=sae, tokens="max")   # from a cache
    res = vf.scoring.score_store(store, hook, tokens="cls")   # image CLS rows; "pooled" on
                                                              # image.embed: the embedding
    from vlmfast.scoring.relation_probe import relation_ground_truth   # bound relations:
    gt = relation_ground_truth(store, {"image": hook})        # probe vs best single unit

Definitions (also in each module's docstring): a unit is *selective* for a
concept when AUROC >= 0.9 and BH-significant over all tests of its modality;
*polysemantic* when selective for two unrelated concepts; *modality-invariant*
when selective for the same concept on image rows and on text rows.
"""

from __future__ import annotations

from vlmfast.scoring.concepts import ConceptSet
from vlmfast.scoring.from_store import TOKEN_MODES, score_store
from vlmfast.scoring.labeling import (
    DEFAULT_TEMPLATES,
    BestConcepts,
    best_concepts,
    probe_imagenet,
    probe_texts,
    prompt_set,
)
from vlmfast.scoring.modality import CrossTowerPairs, cross_tower_pairs, invariant_features
from vlmfast.scoring.pipeline import (
    ModalityResult,
    ScoringConfig,
    ScoringResult,
    format_summary,
    result_from_scores,
    score_codes,
    score_units,
)
from vlmfast.scoring.polysemantic import polysemantic_summary, polysemantic_units
from vlmfast.scoring.selectivity import (
    Selectivity,
    SelectivityConfig,
    count_interval,
    select,
    wilson_interval,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "TOKEN_MODES",
    "BestConcepts",
    "ConceptSet",
    "CrossTowerPairs",
    "ModalityResult",
    "ScoringConfig",
    "ScoringResult",
    "Selectivity",
    "SelectivityConfig",
    "best_concepts",
    "count_interval",
    "cross_tower_pairs",
    "format_summary",
    "invariant_features",
    "polysemantic_summary",
    "polysemantic_units",
    "probe_imagenet",
    "probe_texts",
    "prompt_set",
    "result_from_scores",
    "score_codes",
    "score_store",
    "score_units",
    "select",
    "wilson_interval",
]
