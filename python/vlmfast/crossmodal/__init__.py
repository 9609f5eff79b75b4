"""Cross-modal binding, measured: modality invariance at the concept and the feature level.

    from vlmfast import crossmodal as xm
    p = xm.planted_pairs(n=2000, d=32, n_concepts=8, shared_fraction=0.5, seed=0)
    t = xm.concept_transfer(p.image_rows, p.text_rows, p.image_labels, p.text_labels)
    t.image_to_text.auroc, t.image_to_text.pvalue          # per concept, vs shuffled labels
    r = xm.shared_dictionary_from_rows(p.image_rows, p.text_rows, p.image_labels,
                                       p.text_labels, encode=p.truth_features,
                                       remove_gap=True)
    r.split.label, r.bridge.bridge, r.invariant.at(0.9).fraction   # None when undefined

Grounding heads (``grounding``: :func:`grounding_scores`, attention of each image-tower
head on the named object's patches against other objects and random boxes;
``grounding_inputs``: :func:`grounding_inputs` from a source with boxes;
``grounding_causal``: :func:`grounding_patching`, the recovered fraction of the matched
logit when the top heads are patched from clean into corrupted images).

Modules: ``planted`` (the planted shared space: :func:`planted_pairs`),
``probe`` (concept level: :func:`concept_transfer`), ``feature_pairs``
(:func:`modality_split`, :func:`bridge_scores`), ``invariant``
(:func:`invariant_curve`), ``shared_dictionary`` (:func:`analyze_shared_dictionary`,
:func:`shared_dictionary_from_rows`, :func:`remove_modality_gap`), ``checks``
(paired-row validation). Each docstring defines its quantity, null and interval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlmfast.lazy_exports import lazy_exports

_LAZY_ATTRS: dict[str, str] = {
    "PlantedCrossModal": "vlmfast.crossmodal.planted",
    "planted_pairs": "vlmfast.crossmodal.planted",
    "ConceptTransfer": "vlmfast.crossmodal.probe",
    "ProbeDirection": "vlmfast.crossmodal.probe",
    "concept_transfer": "vlmfast.crossmodal.probe",
    "BridgeScores": "vlmfast.crossmodal.feature_pairs",
    "ModalitySplit": "vlmfast.crossmodal.feature_pairs",
    "bridge_scores": "vlmfast.crossmodal.feature_pairs",
    "modality_split": "vlmfast.crossmodal.feature_pairs",
    "DEFAULT_THRESHOLDS": "vlmfast.crossmodal.invariant",
    "InvariantCurve": "vlmfast.crossmodal.invariant",
    "InvariantPoint": "vlmfast.crossmodal.invariant",
    "invariant_curve": "vlmfast.crossmodal.invariant",
    "GroundingScores": "vlmfast.crossmodal.grounding",
    "NullComparison": "vlmfast.crossmodal.grounding",
    "QueryGrounding": "vlmfast.crossmodal.grounding",
    "grounding_scores": "vlmfast.crossmodal.grounding",
    "ranked_table": "vlmfast.crossmodal.grounding",
    "GroundingInputs": "vlmfast.crossmodal.grounding_inputs",
    "grounding_inputs": "vlmfast.crossmodal.grounding_inputs",
    "recolor_named": "vlmfast.crossmodal.grounding_inputs",
    "GroundingPatching": "vlmfast.crossmodal.grounding_causal",
    "grounding_patching": "vlmfast.crossmodal.grounding_causal",
    "top_heads": "vlmfast.crossmodal.grounding_causal",
    "GapMeans": "vlmfast.crossmodal.shared_dictionary",
    "SharedDictionaryResult": "vlmfast.crossmodal.shared_dictionary",
    "analyze_shared_dictionary": "vlmfast.crossmodal.shared_dictionary",
    "remove_modality_gap": "vlmfast.crossmodal.shared_dictionary",
    "shared_dictionary_from_rows": "vlmfast.crossmodal.shared_dictionary",
}

__all__ = sorted(_LAZY_ATTRS)

if TYPE_CHECKING:
    from vlmfast.crossmodal.feature_pairs import (
        BridgeScores as BridgeScores,
    )
    from vlmfast.crossmodal.feature_pairs import (
        ModalitySplit as ModalitySplit,
    )
    from vlmfast.crossmodal.feature_pairs import (
        bridge_scores as bridge_scores,
    )
    from vlmfast.crossmodal.feature_pairs import (
        modality_split as modality_split,
    )
    from vlmfast.crossmodal.grounding import (
        GroundingScores as GroundingScores,
    )
    from vlmfast.crossmodal.grounding import (
        NullComparison as NullComparison,
    )
    from vlmfast.crossmodal.grounding import (
        QueryGrounding as QueryGrounding,
    )
    from vlmfast.crossmodal.grounding import (
        grounding_scores as grounding_scores,
    )
    from vlmfast.crossmodal.grounding import (
        ranked_table as ranked_table,
    )
    from vlmfast.crossmodal.grounding_causal import (
        GroundingPatching as GroundingPatching,
    )
    from vlmfast.crossmodal.grounding_causal import (
        grounding_patching as grounding_patching,
    )
    from vlmfast.crossmodal.grounding_causal import (
        top_heads as top_heads,
    )
    from vlmfast.crossmodal.grounding_inputs import (
        GroundingInputs as GroundingInputs,
    )
    from vlmfast.crossmodal.grounding_inputs import (
        grounding_inputs as grounding_inputs,
    )
    from vlmfast.crossmodal.grounding_inputs import (
        recolor_named as recolor_named,
    )
    from vlmfast.crossmodal.invariant import (
        DEFAULT_THRESHOLDS as DEFAULT_THRESHOLDS,
    )
    from vlmfast.crossmodal.invariant import (
        InvariantCurve as InvariantCurve,
    )
    from vlmfast.crossmodal.invariant import (
        InvariantPoint as InvariantPoint,
    )
    from vlmfast.crossmodal.invariant import (
        invariant_curve as invariant_curve,
    )
    from vlmfast.crossmodal.planted import (
        PlantedCrossModal as PlantedCrossModal,
    )
    from vlmfast.crossmodal.planted import (
        planted_pairs as planted_pairs,
    )
    from vlmfast.crossmodal.probe import (
        ConceptTransfer as ConceptTransfer,
    )
    from vlmfast.crossmodal.probe import (
        ProbeDirection as ProbeDirection,
    )
    from vlmfast.crossmodal.probe import (
        concept_transfer as concept_transfer,
    )
    from vlmfast.crossmodal.shared_dictionary import (
        GapMeans as GapMeans,
    )
    from vlmfast.crossmodal.shared_dictionary import (
        SharedDictionaryResult as SharedDictionaryResult,
    )
    from vlmfast.crossmodal.shared_dictionary import (
        analyze_shared_dictionary as analyze_shared_dictionary,
    )
    from vlmfast.crossmodal.shared_dictionary import (
        remove_modality_gap as remove_modality_gap,
    )
    from vlmfast.crossmodal.shared_dictionary import (
        shared_dictionary_from_rows as shared_dictionary_from_rows,
    )


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRS, __all__)
