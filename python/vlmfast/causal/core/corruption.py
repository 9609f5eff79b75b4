"""Counterfactual inputs of image-caption records: the corruption of a causal run.

The ``vlmfast attribute`` command and the pipeline's ``attribute`` stage build their
corrupted batch here, so the two front doors corrupt the same way.

``image-shift``   each image replaced by the previous record's (the batch rolled by one)
``image-noise``   Gaussian pixel noise of std ``noise_std`` (seeded)
``text-shift``    each caption replaced by the previous record's
``text-negative`` the record's first hard negative caption (synthetic data's meta)

Concept corruptions (:func:`concept_corruption`, :data:`SWAPS`; they need the concept):

``text-swap``     the concept's word in each caption replaced by the next of its kind
                  (``red`` -> ``green``, ``left of`` -> ``right of``; :func:`swap_word`)
``image-swap``    the same scene re-rendered with the concept changed (the red object
                  turns another colour, the circle another shape, the relation's two
                  objects swap cells; ``vlmfast.data.synthetic.counterfactual``)
``both-swap``     both at once, the caption swapped to the word the image took, so the
                  corrupt pair still agrees with itself and each tower's attribution
                  (the other tower at corrupt) reads the concept against its swap
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlmfast.errors import InputError

CORRUPTIONS = ("image-shift", "image-noise", "text-shift", "text-negative")
SWAPS = ("text-swap", "image-swap", "both-swap")
"""Corruptions of one concept (:func:`concept_corruption`)."""
SIDES = {"text-swap": "text", "image-swap": "image", "both-swap": "both"}
"""Which side each swap corrupts (``CircuitConfig.corrupt``'s values)."""


def corrupt_inputs(
    pair: Any, records: Sequence[Any], corrupt: str, *, seed: int = 0, noise_std: float = 1.0
) -> dict[str, Any]:
    """Clean pixels / tokens of ``records`` and their ``corrupt`` counterpart (one of
    :data:`CORRUPTIONS`): ``{images, texts, corrupt_images, corrupt_texts}``."""
    import torch  # here: the CLI imports this module while building its parser

    px = pair.preprocess([r.image for r in records])
    captions = [r.caption for r in records]
    tok = pair.tokenize(captions)
    out: dict[str, Any] = {"images": px, "texts": tok, "corrupt_images": None}
    out["corrupt_texts"] = None
    if corrupt == "image-shift":
        out["corrupt_images"] = px.roll(1, 0)
    elif corrupt == "image-noise":
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(px.shape, generator=gen).to(device=px.device, dtype=px.dtype)
        out["corrupt_images"] = px + noise_std * noise
    elif corrupt == "text-shift":
        out["corrupt_texts"] = tok.roll(1, 0)
    elif corrupt == "text-negative":
        out["corrupt_texts"] = pair.tokenize(_negatives(records))
    else:
        raise InputError(f"corrupt must be one of {list(CORRUPTIONS)}, got {corrupt!r}")
    return out


def _negatives(records: Sequence[Any]) -> list[str]:
    negatives = []
    for r in records:
        neg = r.meta.get("negatives") or {}
        if not neg:
            raise InputError(
                f"--corrupt text-negative needs hard negatives in the records' meta "
                f"(synthetic data); record {r.sample_id} has none"
            )
        negatives.append(neg[sorted(neg)[0]])
    return negatives


def _word_groups() -> list[list[str]]:
    """Kinds a concept word is swapped within: the synthetic shapes, colours and
    relations, then the bundled colour vocabulary."""
    import json
    from importlib import resources

    from vlmfast.data.synthetic import spec

    groups = [list(spec.SHAPES), list(spec.COLORS)]
    try:
        text = resources.files("vlmfast.data.concepts").joinpath("vocab/colors.json").read_text()
        groups.append([c["name"] for c in json.loads(text)["concepts"]])
    except (FileNotFoundError, KeyError, ValueError):
        pass
    return groups


def swap_word(concept: str) -> str:
    """The word ``text-swap`` puts in place of ``concept``: the next of its kind (cyclic),
    a relation's inverse (``left of`` -> ``right of``).

    Raises:
        InputError: ``concept`` is of no known kind.
    """
    from vlmfast.data.synthetic import spec

    if concept in spec.INVERSE_RELATION:
        return spec.INVERSE_RELATION[concept]
    for group in _word_groups():
        if concept in group:
            return group[(group.index(concept) + 1) % len(group)]
    raise InputError(
        f"corrupt = 'text-swap' needs a concept of a known kind (synthetic shapes, colors and "
        f"relations, or the bundled colors); {concept!r} is neither: use image-noise or "
        "image-shift"
    )


def concept_corruption(
    pair: Any, records: Sequence[Any], concept: str, corrupt: str
) -> dict[str, Any]:
    """Clean pixels / tokens of ``records`` and their ``corrupt`` counterpart (one of
    :data:`SWAPS`): ``{images, texts, corrupt_images, corrupt_texts, swap}``; ``swap`` is
    the word the caption took (``text-swap``), else the value per record the image took.

    Raises:
        InputError: an unknown ``corrupt``; ``image-swap`` / ``both-swap`` on records
            without the synthetic ground truth, or whose scene lacks ``concept``.
    """
    from vlmfast.data.pairs import caption_pattern
    from vlmfast.data.synthetic.counterfactual import (
        concept_kind,
        counterfactual_images,
        scene_of,
        swap_target,
    )

    if corrupt not in SWAPS:
        raise InputError(f"corrupt must be one of {list(SWAPS)}, got {corrupt!r}")
    captions = [str(r.caption) for r in records]
    out: dict[str, Any] = {
        "images": pair.preprocess([r.image for r in records]),
        "texts": pair.tokenize(captions),
        "corrupt_images": None,
        "corrupt_texts": None,
    }
    pat = caption_pattern(concept)
    if corrupt == "text-swap":
        out["swap"] = swap_word(concept)
        out["corrupt_texts"] = pair.tokenize([pat.sub(out["swap"], c) for c in captions])
        return out
    relation = concept_kind(concept) == "relation"
    targets = [
        None if relation else swap_target(concept, scene_of(r.meta)) for r in records
    ]  # relations: the objects swap cells
    out["corrupt_images"] = pair.preprocess(
        [im for r, to in zip(records, targets, strict=True)
         for im in counterfactual_images([r], concept, to=to)]
    )  # fmt: skip
    words = [swap_word(concept) if to is None else to for to in targets]
    out["swap"] = words[0] if len(set(words)) == 1 else words
    if corrupt == "both-swap":
        out["corrupt_texts"] = pair.tokenize(
            [pat.sub(w, c) for w, c in zip(words, captions, strict=True)]
        )
    return out


__all__ = ["CORRUPTIONS", "SIDES", "SWAPS", "concept_corruption", "corrupt_inputs", "swap_word"]
