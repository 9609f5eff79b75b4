"""Concept corruptions: the caption's word, the re-rendered scene, or both."""

from __future__ import annotations

import pytest
import torch

import vlmfast as vf
from vlmfast.causal.core.corruption import SIDES, SWAPS, concept_corruption, swap_word
from vlmfast.data.pairs import read_pairs
from vlmfast.data.records import PairRecord
from vlmfast.errors import InputError


def test_swaps_corrupt_their_side_and_agree_on_the_word() -> None:
    pair = vf.load_pair("synthetic:tiny").eval()
    records = read_pairs("synthetic:n=80,seed=4", 3, naming="red").records
    assert set(SIDES) == set(SWAPS)
    assert swap_word("red") == "green" and swap_word("left of") == "right of"
    text = concept_corruption(pair, records, "red", "text-swap")
    assert text["corrupt_images"] is None and text["swap"] == "green"
    assert torch.equal(
        text["corrupt_texts"],
        pair.tokenize([str(r.caption).replace("red", "green") for r in records]),
    )
    image = concept_corruption(pair, records, "red", "image-swap")
    assert image["corrupt_texts"] is None
    assert image["corrupt_images"].shape == image["images"].shape
    assert not torch.equal(image["corrupt_images"], image["images"])
    both = concept_corruption(pair, records, "red", "both-swap")
    assert torch.equal(both["corrupt_images"], image["corrupt_images"])
    words = [both["swap"]] * len(records) if isinstance(both["swap"], str) else both["swap"]
    want = [str(r.caption).replace("red", w) for r, w in zip(records, words, strict=True)]
    assert torch.equal(both["corrupt_texts"], pair.tokenize(want))
    with pytest.raises(InputError, match="corrupt must be"):
        concept_corruption(pair, records, "red", "image-shift")
    bare = [PairRecord(0, records[0].image, records[0].caption), records[1]]
    with pytest.raises(InputError, match="synthetic"):
        concept_corruption(pair, bare, "red", "image-swap")
