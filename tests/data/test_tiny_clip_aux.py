"""The tiny-CLIP training's symmetry breakers: auxiliary probe targets and the
position-embedding init scale."""

from __future__ import annotations

from dataclasses import replace

import torch

from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.captions import Caption, Mention
from vlmfast.data.synthetic.dataset import SyntheticSample, make_samples
from vlmfast.data.synthetic.model import tiny_config
from vlmfast.data.synthetic.train import AuxProbes, TrainConfig, _build


def _relation_samples(n: int = 60) -> list[SyntheticSample]:
    return [s for s in make_samples(0, "train", range(n)) if s.caption.kind == "relation"]


def test_image_targets_follow_the_scene() -> None:
    samples = make_samples(0, "train", range(20))
    probes = AuxProbes(64)
    color, shape = probes.image_targets(samples)
    target, present = probes.coord_targets(samples)
    for i, s in enumerate(samples):
        cells = {o.row * spec.GRID + o.col: o for o in s.scene.objects}
        for cell in range(spec.GRID * spec.GRID):
            o = cells.get(cell)
            assert int(color[i, cell]) == (0 if o is None else 1 + spec.COLORS.index(o.color))
            assert int(shape[i, cell]) == (0 if o is None else 1 + spec.SHAPES.index(o.shape))
        assert int(present[i].sum()) == 2 * len(s.scene.objects)
        for o in s.scene.objects:
            j = spec.COLORS.index(o.color)
            half = (spec.GRID - 1) / 2
            torch.testing.assert_close(
                target[i, j], torch.tensor([(o.row - half) / half, (o.col - half) / half])
            )


def test_text_targets_keep_the_subject_first() -> None:
    probes = AuxProbes(64)
    s = _relation_samples()[0]
    a, b = s.caption.mentions[:2]
    swapped = Caption("relation", (b, a), s.caption.relation)
    t = probes.text_targets([s, replace(s, caption=swapped)])
    assert t[0, 4] == t[1, 4] == 1 + spec.RELATIONS.index(s.caption.relation)
    assert torch.equal(t[0, :2], t[1, 2:4]) and torch.equal(t[0, 2:4], t[1, :2])
    assert not torch.equal(t[0], t[1])
    # an object caption: no second mention (0 = absent), no relation; unsaid color = 1
    obj = replace(s, caption=Caption("object", (Mention(None, "circle"),)))
    o = probes.text_targets([obj])[0]
    assert o.tolist() == [1, 2 + spec.SHAPES.index("circle"), 0, 0, 0]


def test_probe_loss_is_finite_and_reaches_both_towers() -> None:
    samples = make_samples(0, "train", range(8))
    probes = AuxProbes(64)
    img = torch.randn(8, 64, requires_grad=True)
    txt = torch.randn(8, 64, requires_grad=True)
    loss = probes.loss(img, txt, samples)
    loss.backward()
    assert torch.isfinite(loss)
    assert img.grad is not None and img.grad.abs().sum() > 0
    assert txt.grad is not None and txt.grad.abs().sum() > 0


def test_position_init_scale_scales_only_the_image_position_embedding() -> None:
    torch.manual_seed(0)
    base, _, _ = _build(TrainConfig(position_init_scale=1.0, aux_weight=0.0), tiny_config())
    torch.manual_seed(0)
    big, probes, opt = _build(TrainConfig(position_init_scale=20.0), tiny_config())
    torch.testing.assert_close(
        big.visual.positional_embedding, 20.0 * base.visual.positional_embedding
    )
    torch.testing.assert_close(big.visual.conv1.weight, base.visual.conv1.weight)
    torch.testing.assert_close(big.positional_embedding, base.positional_embedding)
    assert probes is not None
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in probes.parameters())
