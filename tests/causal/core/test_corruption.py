"""``corrupt_inputs`` (the counterfactual batch of ``vlmfast attribute`` / ``circuit`` and
their pipeline stages) and ``prepare_inputs`` (clean / corrupt as base and source)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from PIL import Image

import vlmfast as vf
from vlmfast.causal.core.corruption import CORRUPTIONS, corrupt_inputs
from vlmfast.causal.core.inputs import prepare_inputs
from vlmfast.errors import InputError


@pytest.fixture(scope="module")
def pair() -> Any:
    return vf.load_pair("synthetic:tiny").eval()


def _records(negatives: bool = True) -> list[Any]:
    shapes = ("circle", "square", "triangle")
    return [
        SimpleNamespace(
            image=Image.new("RGB", (64, 64), (40 * i, 200 - 40 * i, 90)),
            caption=f"a red {s}",
            meta={"negatives": {"color": f"a blue {s}"}} if negatives else {},
            sample_id=str(i),
        )
        for i, s in enumerate(shapes)
    ]


def test_each_corruption_changes_one_tower(pair: Any) -> None:
    recs = _records()
    shift = corrupt_inputs(pair, recs, "image-shift")
    assert torch.equal(shift["corrupt_images"], shift["images"].roll(1, 0))
    assert shift["corrupt_texts"] is None
    a = corrupt_inputs(pair, recs, "image-noise", seed=3, noise_std=0.5)
    b = corrupt_inputs(pair, recs, "image-noise", seed=3, noise_std=0.5)
    assert torch.equal(a["corrupt_images"], b["corrupt_images"])
    assert not torch.equal(a["corrupt_images"], a["images"])
    text = corrupt_inputs(pair, recs, "text-shift")
    assert torch.equal(text["corrupt_texts"], text["texts"].roll(1, 0))
    neg = corrupt_inputs(pair, recs, "text-negative")
    want = pair.tokenize([f"a blue {s}" for s in ("circle", "square", "triangle")])
    assert torch.equal(neg["corrupt_texts"], want) and neg["corrupt_images"] is None
    assert set(CORRUPTIONS) == {"image-shift", "image-noise", "text-shift", "text-negative"}


def test_bad_corruptions_name_the_problem(pair: Any) -> None:
    with pytest.raises(InputError, match="hard negatives"):
        corrupt_inputs(pair, _records(negatives=False), "text-negative")
    with pytest.raises(InputError, match="corrupt must be one of"):
        corrupt_inputs(pair, _records(), "pixel-swap")


def test_prepare_inputs_orients_base_and_source(pair: Any) -> None:
    batch = corrupt_inputs(pair, _records(), "image-shift")
    px, tok, px_c = batch["images"], batch["texts"], batch["corrupt_images"]
    inputs, changed = prepare_inputs(pair, px, tok, px_c)
    assert torch.equal(inputs["image"][0], px_c) and torch.equal(inputs["image"][1], px)
    assert changed == {"image": True, "text": False}
    noising, _ = prepare_inputs(pair, px, tok, px_c, direction="noising")
    assert torch.equal(noising["image"][0], px)
    with pytest.raises(InputError, match="corrupt_images=, corrupt_texts= or both"):
        prepare_inputs(pair, px, tok)
    with pytest.raises(InputError, match="direction"):
        prepare_inputs(pair, px, tok, px_c, direction="sideways")
