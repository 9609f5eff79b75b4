"""The mean-ablation ladder on the bundled tiny CLIP and its synthetic zero-shot task."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import vlmfast as vf
from vlmfast.causal.direct.ladder import AblationLadder, ablation_ladder, rung_plan
from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.dataset import make_samples, render_batch
from vlmfast.data.synthetic.model import pixels_from_uint8
from vlmfast.errors import InputError, ShapeError


@pytest.fixture(scope="module")
def bundled() -> Any:
    return vf.load_pair("synthetic:tiny")


@pytest.fixture(scope="module")
def shapes_task() -> tuple[torch.Tensor, list[str], list[int], list[str]]:
    """One-object test images, "a {shape}" prompts, true shapes and the captions."""
    samples = [s for s in make_samples(7, "test", range(160)) if len(s.scene.objects) == 1]
    samples = samples[:32]
    px = pixels_from_uint8(render_batch(samples))
    prompts = [f"a {c}" for c in spec.SHAPES]
    labels = [spec.SHAPES.index(s.scene.objects[0].shape) for s in samples]
    return px, prompts, labels, [s.caption.text for s in samples]


def _clean_accuracy(pair: Any, px: torch.Tensor, prompts: list[str], labels: list[int]) -> float:
    with torch.no_grad():
        sims = pair.logits(px, prompts)
    lab = torch.tensor(labels)
    rows = torch.arange(len(labels))
    true = sims[rows, lab]
    sims[rows, lab] = -torch.inf
    return float((true > sims.max(1).values).float().mean())


def test_rung_plan() -> None:
    names = [n for n, _ in rung_plan(3)]
    assert names == ["clean", "mlps", "mlps+attn0", "mlps+attn0-1", "mlps+attn0-2"]
    cls = [n for n, _ in rung_plan(2, cls=True)]
    assert cls == ["clean", "mlps", "mlps+cls", "mlps+cls+attn0", "mlps+cls+attn0-1"]
    assert "blocks.1.attn.from_cls" in rung_plan(2, cls=True)[2][1]
    assert rung_plan(3)[-1][1] == [
        "blocks.0.mlp",
        "blocks.1.mlp",
        "blocks.2.mlp",
        "blocks.0.attn",
        "blocks.1.attn",
        "blocks.2.attn",
    ]


@pytest.mark.parametrize("path", ["direct", "total"])
@pytest.mark.parametrize("mode", ["mean", "zero"])
def test_ladder_first_rung_is_clean_and_last_rung_is_blind(
    bundled: Any, shapes_task: Any, path: str, mode: str
) -> None:
    """Rung 0 is the clean zero-shot accuracy. With every MLP and attention layer ablated,
    the CLS token's embedding no longer depends on the image (CLS + position embedding and
    constants), so every image gets the same class: accuracy = that class's share."""
    px, prompts, labels, _ = shapes_task
    ladder = ablation_ladder(bundled, px, prompts, labels, path=path, mode=mode)
    assert isinstance(ladder, AblationLadder)
    layers = bundled.config.image.layers
    assert [r.name for r in ladder.rungs] == [n for n, _ in rung_plan(layers)]
    clean = _clean_accuracy(bundled, px, prompts, labels)
    assert ladder.rungs[0].accuracy == clean
    assert clean >= 0.95  # the bundled model's zero-shot shape floor (model card: 100%)
    shares = {labels.count(c) / len(labels) for c in range(len(prompts))} | {0.0}
    assert ladder.rungs[-1].accuracy in shares
    assert ladder.rungs[-1].accuracy < clean
    for r in ladder.rungs:
        lo, hi = r.interval
        assert 0 <= lo <= r.accuracy <= hi <= 1
    assert ladder.means_from == "batch"
    assert ladder.to_json()["rungs"][0]["name"] == "clean"


def test_cls_rung(bundled: Any, shapes_task: Any) -> None:
    """TextSpan's CLS rung sits after the MLPs; rungs before it and the last one are as
    without it (every attention layer ablated includes its CLS reads)."""
    px, prompts, labels, _ = shapes_task
    plain = ablation_ladder(bundled, px, prompts, labels)
    with_cls = ablation_ladder(bundled, px, prompts, labels, cls=True)
    names = [r.name for r in with_cls.rungs]
    assert names[:3] == ["clean", "mlps", "mlps+cls"]
    assert len(names) == len(plain.rungs) + 1
    assert with_cls.accuracies[:2] == plain.accuracies[:2]
    # the same embedding; the CLS run caches attn.pattern (another float32 path)
    assert abs(with_cls.rungs[-1].score - plain.rungs[-1].score) < 1e-5
    with pytest.raises(InputError, match="cls=True"):
        ablation_ladder(bundled, px, prompts, labels, cls=True, path="total")


def test_direct_ladder_clean_score_is_the_matched_logit(bundled: Any, shapes_task: Any) -> None:
    px, prompts, labels, captions = shapes_task
    ladder = ablation_ladder(bundled, px, prompts, labels, texts=captions)
    with torch.no_grad():
        logits = bundled.logits(px, captions).diagonal()
    assert abs(ladder.rungs[0].score - float(logits.mean())) < 1e-4
    assert ladder.score_against == "texts"


def test_reference_batch(bundled: Any, shapes_task: Any) -> None:
    px, prompts, labels, _ = shapes_task
    own = ablation_ladder(bundled, px, prompts, labels)
    same = ablation_ladder(bundled, px, prompts, labels, reference=px)
    assert same.means_from == "reference"
    assert own.accuracies == same.accuracies
    other = ablation_ladder(bundled, px[:8], prompts, labels[:8], reference=px)
    assert other.rungs[0].n == 8


def test_text_tower_ladder(bundled: Any, shapes_task: Any) -> None:
    px, prompts, labels, _ = shapes_task
    ladder = ablation_ladder(bundled, px, prompts, labels, tower="text")
    assert ladder.rungs[0].accuracy == _clean_accuracy(bundled, px, prompts, labels)
    assert len(ladder.rungs) == bundled.config.text.layers + 2


def test_ladder_bad_input(bundled: Any, shapes_task: Any) -> None:
    px, prompts, labels, captions = shapes_task
    with pytest.raises(ShapeError, match="labels"):
        ablation_ladder(bundled, px, prompts, labels[:-1])
    with pytest.raises(InputError, match="labels must index"):
        ablation_ladder(bundled, px, prompts, [len(prompts)] * len(labels))
    with pytest.raises(InputError, match="mode"):
        ablation_ladder(bundled, px, prompts, labels, mode="resample")
    with pytest.raises(InputError, match="path"):
        ablation_ladder(bundled, px, prompts, labels, path="indirect")
    with pytest.raises(InputError, match="tower"):
        ablation_ladder(bundled, px, prompts, labels, tower="joint")
    with pytest.raises(InputError, match="tower='image' only"):
        ablation_ladder(bundled, px, prompts, labels, texts=captions, tower="text")
    with pytest.raises(InputError, match="at least 2 classes"):
        ablation_ladder(bundled, px, prompts[:1], [0] * len(labels))
    with pytest.raises(ShapeError, match="captions"):
        ablation_ladder(bundled, px, prompts, labels, texts=captions[:3])


@pytest.mark.parametrize("path", ["direct", "total"])
def test_siglip_ladder_runs_through_the_map_head(path: str) -> None:
    """SigLIP: the MAP head (and its MLP) is not ablated; rung 0 is still the clean run."""
    from vlmfast.models.testing import random_pair_tokens, random_pixels, tiny_pair

    pair = tiny_pair("ViT-SO400M-14-SigLIP-384").eval()
    px = random_pixels(pair, 6, seed=2)
    prompts = random_pair_tokens(pair, 3, seed=4)
    labels = [0, 1, 2, 0, 1, 2]
    with torch.no_grad():
        sims = pair.logits(px, prompts)
    want = int(sum(int(sims[i].argmax()) == labels[i] for i in range(6)))
    ladder = ablation_ladder(pair, px, prompts, labels, path=path)
    assert ladder.rungs[0].correct == want
    assert len(ladder.rungs) == pair.config.image.layers + 2
    scores = torch.tensor([r.score for r in ladder.rungs])
    assert bool(torch.isfinite(scores).all())
