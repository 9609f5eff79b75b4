"""One concept's intervention from a scoring result: its top units, the vocabulary of its
kind, ``concept_intervention``. ``vlmfast intervene`` and the pipeline's ``intervene``
stage both call :func:`intervene_on_concept`, so they pick units and candidates alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlmfast.causal.core.unit_ranking import top_units
from vlmfast.causal.interventions.concept import concept_intervention


def shared_concepts(scores: Any, eval_set: Any) -> list[str]:
    """The scored concepts the evaluation set also labels, in the scores' order."""
    return [c for c in scores.concepts if c in eval_set.concepts]


def kind_vocabulary(eval_set: Any, candidates: Sequence[str], concept: str) -> list[str]:
    """The ``candidates`` of the same kind as ``concept`` (colors compete with colors),
    ``concept`` included."""
    kind = eval_set.kinds[eval_set.concepts.index(concept)]
    vocab = [c for c in candidates if eval_set.kinds[eval_set.concepts.index(c)] == kind]
    if concept not in vocab:
        vocab.append(concept)
    return vocab


def intervene_on_concept(
    pair: Any,
    scores: Any,
    eval_set: Any,
    concept: str,
    *,
    n: int,
    modality: str | None = None,
    hooks: Sequence[str] | None = None,
    candidates: Sequence[str] | None = None,
    **options: Any,
) -> tuple[Any, Any]:
    """The ``n`` most selective units of ``concept`` in ``scores`` (``top_units``) and
    ``concept_intervention`` of them on ``eval_set`` with the vocabulary of its kind among
    ``candidates`` (default: :func:`shared_concepts`); ``options`` go to
    ``concept_intervention``. Returns ``(units, result)``."""
    units = top_units(scores, concept, n=n, modality=modality, hooks=hooks)
    shared = shared_concepts(scores, eval_set) if candidates is None else list(candidates)
    vocab = kind_vocabulary(eval_set, shared, concept)
    result = concept_intervention(pair, units, eval_data=eval_set, concepts=vocab, **options)
    return units, result


__all__ = ["intervene_on_concept", "kind_vocabulary", "shared_concepts"]
