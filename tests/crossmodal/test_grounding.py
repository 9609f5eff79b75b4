"""Grounding heads on planted truth: a head built to attend to a marker painted on the
named object is ranked first; painted elsewhere, nothing is significant."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from vlmfast.crossmodal.grounding import grounding_scores, ranked_table
from vlmfast.crossmodal.grounding_causal import grounding_patching, top_heads
from vlmfast.crossmodal.grounding_source import grounding_inputs, recolor_named
from vlmfast.errors import InputError
from vlmfast.models.config import PairConfig, TowerConfig
from vlmfast.models.pair import HookedPair

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")
PLANTED = (0, 2)  # (layer, head) built to attend to the marker
MARKER = torch.tensor([2.0, -2.0, 2.0])
PALETTE = torch.tensor([[1.5, 1.5, -1.5], [-1.5, 1.5, 1.5], [1.5, -1.5, -1.5], [-1.5, -1.5, 1.5]])


def small_pair(seed: int, preprocess: Any = None) -> HookedPair:
    """A random two-layer, four-head image tower on a 3x3 grid of 32-pixel patches
    (built from a config: no open_clip import, milliseconds)."""
    torch.manual_seed(seed)
    image = TowerConfig(
        modality="image",
        width=64,
        layers=2,
        heads=4,
        head_dim=16,
        mlp_width=128,
        image_size=96,
        patch_size=32,
        pre_norm=True,
        embed_dim=32,
    )
    text = TowerConfig(
        modality="text",
        width=32,
        layers=1,
        heads=2,
        head_dim=16,
        mlp_width=64,
        vocab_size=50,
        context_length=8,
        pool="eot",
        embed_dim=32,
    )
    return HookedPair(PairConfig(image, text), preprocess=preprocess).eval()


def scenes(n: int, seed: int, marker_on_named: bool) -> tuple[torch.Tensor, list, list[str]]:
    """``n`` 96x96 scenes on the 3x3 patch grid: 2-3 objects in distinct cells, object 0
    named. With ``marker_on_named`` the named object is painted with the marker color and
    the others from the palette; else every object is from the palette and the marker
    sits on an empty cell."""
    gen = np.random.default_rng(seed)
    px = torch.zeros(n, 3, 96, 96)
    boxes, names = [], []
    for i in range(n):
        k = int(gen.integers(2, 4))
        cells = gen.permutation(9)[: k + 1]  # the last one is the decoy cell
        objs = []
        for j, cell in enumerate(cells):
            r, c = divmod(int(cell), 3)
            color = PALETTE[int(gen.integers(0, len(PALETTE)))]
            if (j == 0 and marker_on_named) or (j == k and not marker_on_named):
                color = MARKER
            if j < k or not marker_on_named:
                px[i, :, r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] = color[:, None, None]
            if j < k:
                objs.append((f"o{j}", (c / 3, r / 3, (c + 1) / 3, (r + 1) / 3)))
        boxes.append(objs)
        names.append("o0")
    return px, boxes, names


def plant_marker_head(pair, layer: int, head: int) -> None:
    """Overwrites ``(layer, head)``'s query/key weights so every query attends to the
    patches whose LayerNorm-ed input points along the marker direction."""
    px, boxes, _ = scenes(32, seed=99, marker_on_named=True)
    block = pair.image.blocks[layer]
    name = f"image.blocks.{layer}.resid_pre"
    with torch.no_grad():
        x = block.ln1(pair.run(images=px, cache=[name]).cache[name])  # [B, T, d]
        marked = torch.zeros(x.shape[:2], dtype=torch.bool)
        for i, objs in enumerate(boxes):
            x0, y0 = objs[0][1][:2]
            marked[i, 1 + round(y0 * 3) * 3 + round(x0 * 3)] = True
        patches = torch.zeros_like(marked)
        patches[:, 1:] = True
        d = x[marked].mean(0) - x[patches & ~marked].mean(0)
        attn = block.attn
        dh, inner = attn.head_dim, attn.heads * attn.head_dim
        q_rows = slice(head * dh, (head + 1) * dh)
        k_rows = slice(inner + head * dh, inner + (head + 1) * dh)
        e1 = torch.zeros(dh)
        e1[0] = 1.0
        scale = 8.0 * math.sqrt(dh) / float(d @ d)
        attn.in_proj_weight[q_rows] = 0.0
        attn.in_proj_bias[q_rows] = e1
        attn.in_proj_weight[k_rows] = scale * torch.outer(e1, d)
        attn.in_proj_bias[k_rows] = 0.0


@pytest.fixture(scope="module")
def planted_pair():
    pair = small_pair(seed=3)
    plant_marker_head(pair, *PLANTED)
    return pair


KW = dict(n_boot=400, n_perm=400, n_random=8, seed=0)


def test_planted_head_ranked_first(planted_pair) -> None:
    px, boxes, names = scenes(40, seed=1, marker_on_named=True)
    r = grounding_scores(planted_pair, px, boxes, names, **KW)
    for q in (r.cls, r.mean):
        assert q.ranked[0] == PLANTED
        cmp = q.other_objects
        assert cmp is not None and cmp.ci_low[PLANTED] > 0.3
        assert q.significant[PLANTED]
        assert cmp.pvalue[PLANTED] <= 2 / (1 + KW["n_perm"])
        assert q.random_boxes.ci_low[PLANTED] > 0.3
        # the planted head's interval lies above every other head's
        others = np.delete(cmp.ci_high.ravel(), PLANTED[0] * cmp.diff.shape[1] + PLANTED[1])
        assert cmp.ci_low[PLANTED] > others.max()
    assert r.cls.named[PLANTED] > 0.8
    table = ranked_table(r, top=3)
    assert (table[0]["layer"], table[0]["head"]) == PLANTED and table[0]["significant"]
    json.dumps(r.to_dict())


def test_marker_elsewhere_nothing_significant(planted_pair) -> None:
    px, boxes, names = scenes(40, seed=2, marker_on_named=False)
    r = grounding_scores(planted_pair, px, boxes, names, **KW)
    for q in (r.cls, r.mean):
        assert not q.significant.any()
        cmp = q.other_objects
        assert cmp is not None and abs(cmp.diff[PLANTED]) < 0.02
        assert q.ranked[0] != PLANTED
    # against random boxes the planted head now looks *away* from the named object
    assert r.cls.random_boxes.diff[PLANTED] < 0


def test_random_model_has_no_grounding_head() -> None:
    """Negative control without planting: named and other objects look alike, so no
    head of a random model is significant (the other-objects null holds exactly)."""
    px, boxes, names = scenes(40, seed=3, marker_on_named=False)
    for seed in (3, 4):
        r = grounding_scores(small_pair(seed=seed), px, boxes, names, **KW)
        assert not r.cls.significant.any() and not r.mean.significant.any()
        assert r.cls.random_boxes is not None


def test_inputs_from_synthetic_source() -> None:
    """Boxes and the named object (the caption's first mention) from a synthetic source,
    mapped into a 96-pixel model input; the scores run on them."""
    from vlmfast.data import open_source
    from vlmfast.data.synthetic.model import SyntheticPreprocess

    pair = small_pair(seed=3, preprocess=SyntheticPreprocess(96))
    source = open_source("synthetic:n=16,seed=1")
    gi = grounding_inputs(pair, source, n=12)
    assert gi.pixels.shape == (12, 3, 96, 96) and len(gi.names) == 12
    for caption, name, objs in zip(gi.captions, gi.names, gi.boxes):
        shape, color = name.split()[:2]
        words = caption.split()
        assert next(w for w in words if w in COLORS) == color  # the first mention: the subject
        assert shape in words
        assert sum(n == name for n, _ in objs) == 1
        assert all(0 <= v <= 1 for _, b in objs for v in b)
    r = grounding_scores(pair, gi.pixels, gi.boxes, gi.names, **KW)
    assert r.n_images == 12 and len(r.cls.ranked) == 8


def test_no_boxes_error(planted_pair) -> None:
    px, boxes, names = scenes(2, seed=1, marker_on_named=True)
    with pytest.raises(InputError, match="grounding needs object boxes; image 1 has none"):
        grounding_scores(planted_pair, px, [boxes[0], []], names)

    class NoBoxes:
        spec = "hf:some/captions"
        has_boxes = False

    with pytest.raises(InputError, match=r"hf:some/captions has none: use a source with boxes"):
        grounding_inputs(planted_pair, NoBoxes())


def test_box_outside_image_error(planted_pair) -> None:
    px, boxes, names = scenes(2, seed=1, marker_on_named=True)
    boxes[1] = [boxes[1][0], ("o1", (0.5, 0.5, 1.4, 0.9))]
    with pytest.raises(InputError, match=r"image 1: box .* of object 'o1' is outside"):
        grounding_scores(planted_pair, px, boxes, names)


def test_name_matching_no_object_error(planted_pair) -> None:
    px, boxes, _ = scenes(2, seed=1, marker_on_named=True)
    with pytest.raises(InputError, match=r"image 0: the caption's name 'red circle' matches no"):
        grounding_scores(planted_pair, px, boxes, ["red circle", "o0"])


def test_rank_by_other_objects_needs_two_objects(planted_pair) -> None:
    px, boxes, names = scenes(4, seed=1, marker_on_named=True)
    single = [objs[:1] for objs in boxes]
    with pytest.raises(InputError, match="random_boxes"):
        grounding_scores(planted_pair, px, single, names)
    r = grounding_scores(planted_pair, px, single, names, rank_by="random_boxes", **KW)
    assert r.cls.other_objects is None and r.cls.ranked[0] == PLANTED


# ---- the causal test: patching heads from clean into corrupted images ----------------


def causal_inputs(n: int = 12):
    from vlmfast.models.testing import random_tokens

    clean, _, _ = scenes(n, seed=5, marker_on_named=True)
    corrupt = clean.clone()
    marked = (clean == MARKER[None, :, None, None]).all(1, keepdim=True)
    corrupt = torch.where(marked, PALETTE[0][None, :, None, None], corrupt)
    return clean, corrupt, random_tokens(n, context_length=8, vocab=50, seed=0)


def test_patching_every_head_recovers_everything() -> None:
    pair = small_pair(seed=3)
    clean, corrupt, tok = causal_inputs()
    heads = [(a, b) for a in range(2) for b in range(4)]
    r = grounding_patching(pair, clean, corrupt, tok, heads, n_null=5, n_boot=200)
    assert r.recovery is not None and abs(r.recovery - 1) < 1e-4
    assert abs(r.patched - r.clean) < 1e-4 and abs(r.clean - r.corrupt) > 1e-3
    assert r.pvalue is None and len(r.null_recovery) == 0  # no other heads to draw


def test_planted_path_head_recovers_all_and_beats_null() -> None:
    """Only the planted head writes across tokens (every other head's output zeroed), so
    patching it alone restores the clean logit; other heads restore nothing."""
    pair = small_pair(seed=3)
    plant_marker_head(pair, *PLANTED)
    with torch.no_grad():
        for layer, block in enumerate(pair.image.blocks):
            for h in range(4):
                if (layer, h) != PLANTED:
                    block.attn.out_weight[:, h * 16 : (h + 1) * 16] = 0.0
    clean, corrupt, tok = causal_inputs()
    px, boxes, names = scenes(40, seed=1, marker_on_named=True)
    scores = grounding_scores(pair, px, boxes, names, **KW)
    top = top_heads(scores, 1)
    assert top == [PLANTED]
    r = grounding_patching(pair, clean, corrupt, tok, top, n_null=20, n_boot=200)
    assert r.recovery is not None and abs(r.recovery - 1) < 1e-4
    assert r.ci_low is not None and r.ci_low > 0.99
    assert np.abs(r.null_recovery).max() < 1e-4
    assert r.pvalue is not None and r.pvalue <= 1 / 21 + 1e-12
    json.dumps(r.to_dict())


def test_patching_undefined_when_corruption_changes_nothing() -> None:
    pair = small_pair(seed=3)
    clean, _, tok = causal_inputs()
    r = grounding_patching(pair, clean, clean.clone(), tok, [PLANTED], n_null=3, n_boot=50)
    assert r.recovery is None and r.pvalue is None and "undefined" in (r.reason or "")


def test_patching_bad_head() -> None:
    pair = small_pair(seed=3)
    clean, corrupt, tok = causal_inputs(4)
    with pytest.raises(InputError, match=r"head \(2, 0\) is not in the image tower"):
        grounding_patching(pair, clean, corrupt, tok, [(2, 0)])


def test_recolor_named_changes_only_the_named_object() -> None:
    px = torch.zeros(2, 3, 96, 96)
    px[:, :, 8:24, 8:24] = MARKER[:, None, None]  # object 0 inside its cell (0, 0)
    px[:, :, 40:56, 40:56] = PALETTE[0][:, None, None]  # object 1 inside cell (1, 1)
    boxes = [[("o0", (0, 0, 1 / 3, 1 / 3)), ("o1", (1 / 3, 1 / 3, 2 / 3, 2 / 3))]] * 2
    out = recolor_named(px, boxes, ["o0", "o1"])
    changed = (out != px).any(1)
    assert changed[0].sum() == 16 * 16 and changed[0, 8:24, 8:24].all()
    assert changed[1].sum() == 16 * 16 and changed[1, 40:56, 40:56].all()
    assert torch.equal(out[0, :, 10, 10], MARKER.roll(-1))
    with pytest.raises(InputError, match="'o9' matches 0 objects"):
        recolor_named(px, boxes, ["o9", "o1"])
