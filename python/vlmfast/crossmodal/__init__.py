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

A shared dictionary from a store (``shared_rows``: :func:`store_pairs`, matched rows of
two hooks of equal width; ``shared_training``: :func:`train_shared_sae` with
:class:`SharedSAEConfig`, gap means saved with the SAE, :func:`load_shared_sae`,
:func:`analyze_shared_store`). Fusion units across towers (``fusion_data``:
:class:`FusionData`; ``fusion``: :func:`fusion_units` with :class:`FusionConfig` ->
:class:`FusionResult`; ``fusion_stats``; ``retrieval``: :func:`retrieval_accuracy`,
:func:`retrieval_drop`).

Bound relations (``relations``: :func:`relation_probes`, a linear probe per bound relation
such as ``red left of blue`` on its contrast rows, against a label-shuffled null, beside
the best single unit; ``vlmfast.scoring.relation_probe`` reads the rows from a store).

Over a whole store: ``pair_moments`` (:func:`stream_pair_moments`, per-feature moments
of matched pairs' top-k codes in one Rust pass) and ``streaming``
(:func:`shared_dictionary_stats`: split, Bridge Score, both modalities' AUROCs from that
pass, with delta-method intervals and moment nulls).

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
    "PairMomentSums": "vlmfast.crossmodal.pair_moments",
    "stream_pair_moments": "vlmfast.crossmodal.pair_moments",
    "SharedStats": "vlmfast.crossmodal.streaming",
    "shared_dictionary_stats": "vlmfast.crossmodal.streaming",
    "split_from_moments": "vlmfast.crossmodal.streaming",
    "bridge_from_moments": "vlmfast.crossmodal.streaming",
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
    "GroundingInputs": "vlmfast.crossmodal.grounding_source",
    "grounding_inputs": "vlmfast.crossmodal.grounding_source",
    "recolor_named": "vlmfast.crossmodal.grounding_source",
    "GroundingPatching": "vlmfast.crossmodal.grounding_causal",
    "grounding_patching": "vlmfast.crossmodal.grounding_causal",
    "top_heads": "vlmfast.crossmodal.grounding_causal",
    "GapMeans": "vlmfast.crossmodal.shared_dictionary",
    "SharedDictionaryResult": "vlmfast.crossmodal.shared_dictionary",
    "analyze_shared_dictionary": "vlmfast.crossmodal.shared_dictionary",
    "remove_modality_gap": "vlmfast.crossmodal.shared_dictionary",
    "shared_dictionary_from_rows": "vlmfast.crossmodal.shared_dictionary",
    "StorePairs": "vlmfast.crossmodal.shared_rows",
    "store_pairs": "vlmfast.crossmodal.shared_rows",
    "SharedSAE": "vlmfast.crossmodal.shared_sae",
    "SharedSAEConfig": "vlmfast.crossmodal.shared_training",
    "SharedSAEResult": "vlmfast.crossmodal.shared_training",
    "analyze_shared_store": "vlmfast.crossmodal.shared_training",
    "load_shared_sae": "vlmfast.crossmodal.shared_sae",
    "train_shared_sae": "vlmfast.crossmodal.shared_training",
    "FusionData": "vlmfast.crossmodal.fusion_data",
    "FusionConfig": "vlmfast.crossmodal.fusion_pairs",
    "FusionPair": "vlmfast.crossmodal.fusion_pairs",
    "FusionResult": "vlmfast.crossmodal.fusion",
    "PairEffects": "vlmfast.crossmodal.fusion",
    "fusion_units": "vlmfast.crossmodal.fusion",
    "select_fusion_pairs": "vlmfast.crossmodal.fusion_pairs",
    "RetrievalDrop": "vlmfast.crossmodal.retrieval",
    "retrieval_accuracy": "vlmfast.crossmodal.retrieval",
    "retrieval_drop": "vlmfast.crossmodal.retrieval",
    "top1_correct": "vlmfast.crossmodal.retrieval",
    "RelationProbe": "vlmfast.crossmodal.relations",
    "RelationProbeConfig": "vlmfast.crossmodal.relations",
    "RelationProbeResult": "vlmfast.crossmodal.relations",
    "probe_relation": "vlmfast.crossmodal.relations",
    "relation_probes": "vlmfast.crossmodal.relations",
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
    from vlmfast.crossmodal.fusion import FusionResult as FusionResult
    from vlmfast.crossmodal.fusion import PairEffects as PairEffects
    from vlmfast.crossmodal.fusion import fusion_units as fusion_units
    from vlmfast.crossmodal.fusion_data import FusionData as FusionData
    from vlmfast.crossmodal.fusion_pairs import FusionConfig as FusionConfig
    from vlmfast.crossmodal.fusion_pairs import FusionPair as FusionPair
    from vlmfast.crossmodal.fusion_pairs import select_fusion_pairs as select_fusion_pairs
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
    from vlmfast.crossmodal.grounding_source import (
        GroundingInputs as GroundingInputs,
    )
    from vlmfast.crossmodal.grounding_source import (
        grounding_inputs as grounding_inputs,
    )
    from vlmfast.crossmodal.grounding_source import (
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
    from vlmfast.crossmodal.pair_moments import PairMomentSums as PairMomentSums
    from vlmfast.crossmodal.pair_moments import stream_pair_moments as stream_pair_moments
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
    from vlmfast.crossmodal.relations import RelationProbe as RelationProbe
    from vlmfast.crossmodal.relations import RelationProbeConfig as RelationProbeConfig
    from vlmfast.crossmodal.relations import RelationProbeResult as RelationProbeResult
    from vlmfast.crossmodal.relations import probe_relation as probe_relation
    from vlmfast.crossmodal.relations import relation_probes as relation_probes
    from vlmfast.crossmodal.retrieval import RetrievalDrop as RetrievalDrop
    from vlmfast.crossmodal.retrieval import retrieval_accuracy as retrieval_accuracy
    from vlmfast.crossmodal.retrieval import retrieval_drop as retrieval_drop
    from vlmfast.crossmodal.retrieval import top1_correct as top1_correct
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
    from vlmfast.crossmodal.shared_rows import StorePairs as StorePairs
    from vlmfast.crossmodal.shared_rows import store_pairs as store_pairs
    from vlmfast.crossmodal.shared_sae import SharedSAE as SharedSAE
    from vlmfast.crossmodal.shared_sae import load_shared_sae as load_shared_sae
    from vlmfast.crossmodal.shared_training import SharedSAEConfig as SharedSAEConfig
    from vlmfast.crossmodal.shared_training import SharedSAEResult as SharedSAEResult
    from vlmfast.crossmodal.shared_training import analyze_shared_store as analyze_shared_store
    from vlmfast.crossmodal.shared_training import train_shared_sae as train_shared_sae
    from vlmfast.crossmodal.streaming import SharedStats as SharedStats
    from vlmfast.crossmodal.streaming import bridge_from_moments as bridge_from_moments
    from vlmfast.crossmodal.streaming import shared_dictionary_stats as shared_dictionary_stats
    from vlmfast.crossmodal.streaming import split_from_moments as split_from_moments


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRS, __all__)
