"""The tiny CLIP: open_clip config/build, training step maths, evaluation logic
(with a pixel-level oracle), the bundled weights and the ``vlmfast synth`` CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from tolerance import assert_close
from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.bundled import bundled_dir, load_bundled, load_clip_dir
from vlmfast.data.synthetic.captions import caption_true, parse_caption
from vlmfast.data.synthetic.dataset import make_samples, render_batch
from vlmfast.data.synthetic.evaluate import FLOORS, evaluate, format_table
from vlmfast.data.synthetic.model import SyntheticPreprocess, build_clip, tiny_config
from vlmfast.data.synthetic.parse_image import parse_image
from vlmfast.data.synthetic.tokenizer import WordTokenizer
from vlmfast.data.synthetic.train import (
    TrainConfig,
    contrastive_loss,
    encode_text_trimmed,
    train,
)
from vlmfast.errors import ModelLoadError


def test_parse_caption_roundtrip() -> None:
    for s in make_samples(2, "test", range(200)) + make_samples(2, "compositional", range(50)):
        for cap in [s.caption, *s.negatives.values()]:
            assert parse_caption(cap.text) == cap
    with pytest.raises(ValueError, match="shape word"):
        parse_caption("a red dog")


def test_parse_image_recovers_scene() -> None:
    for s in make_samples(5, "test", range(150)):
        parsed = parse_image(s.image())
        key = sorted((o.shape, o.color, o.size, o.row, o.col) for o in s.scene.objects)
        assert sorted((o.shape, o.color, o.size, o.row, o.col) for o in parsed.objects) == key


def _oracle(images: np.ndarray, texts: Sequence[str]) -> np.ndarray:
    scenes = [parse_image(im) for im in images]
    caps = [parse_caption(t) for t in texts]
    return np.array([[float(caption_true(sc, c)) for c in caps] for sc in scenes])


def test_evaluation_is_perfect_with_the_pixel_oracle_and_chance_when_blind() -> None:
    res = evaluate(_oracle, seed=11, n=60)
    assert all(v == 1.0 for v in res["summary"].values()), res["summary"]
    assert res["counts"]["zero_shot_shape"] > 0 and res["counts"]["compositional"] == 60
    blind = evaluate(lambda im, t: np.zeros((len(im), len(t))), seed=11, n=60)
    assert all(v == 0.0 for v in blind["summary"].values())  # ties count as wrong
    table = format_table(res)
    assert "hard_negatives" in table and "100.00%" in table


def test_contrastive_loss_matches_clip_loss_without_extras() -> None:
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(2.0)
    pos = torch.eye(5, dtype=torch.bool)
    got = contrastive_loss(img, txt, txt[:0], torch.zeros(0, dtype=torch.long), pos, scale)
    logits = scale.exp() * img @ txt.T
    target = torch.arange(5)
    ref = 0.5 * (
        torch.nn.functional.cross_entropy(logits, target)
        + torch.nn.functional.cross_entropy(logits.T, target)
    )
    torch.testing.assert_close(got, ref)
    # a hard negative owned by image 0 only raises image 0's loss
    neg = txt[1:2]
    with_neg = contrastive_loss(img, txt, neg, torch.tensor([0]), pos, scale)
    assert with_neg > got


def test_contrastive_loss_targets_each_images_own_caption() -> None:
    """Another caption true of an image is neither its target nor a negative, so it
    cannot hide a hard negative that beats the image's own caption (the failure of
    the first bundled model: relations at chance under a multi-positive target)."""
    torch.manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    scale = torch.tensor(2.0)
    pos = torch.eye(3, dtype=torch.bool)
    pos[0, 1] = True  # caption 1 is also true of image 0
    base = contrastive_loss(img, txt, txt[:0], torch.zeros(0, dtype=torch.long), pos, scale)
    # caption 1 scoring very high for image 0 changes nothing on image 0's side ...
    txt_hi = txt.clone()
    txt_hi[1] = img[0]
    moved = contrastive_loss(img, txt_hi, txt[:0], torch.zeros(0, dtype=torch.long), pos, scale)
    logits = scale.exp() * img @ txt_hi.T
    ref_t = torch.nn.functional.cross_entropy(
        logits.T.masked_fill((pos & ~torch.eye(3, dtype=torch.bool)).T, float("-inf")),
        torch.arange(3),
    )
    ref_i = torch.nn.functional.cross_entropy(
        logits.masked_fill(pos & ~torch.eye(3, dtype=torch.bool), float("-inf")), torch.arange(3)
    )
    torch.testing.assert_close(moved, 0.5 * (ref_i + ref_t))
    assert torch.isfinite(base)
    # ... and a hard negative equal to image 0 costs about log(2)+ even so
    neg = img[0:1]
    own_cap = txt_hi.clone()
    own_cap[0] = img[0]
    with_neg = contrastive_loss(img, own_cap, neg, torch.tensor([0]), pos, scale)
    without = contrastive_loss(img, own_cap, neg[:0], torch.zeros(0, dtype=torch.long), pos, scale)
    # own term: log 2 / (2 sides * 3 images) = 0.116; a multi-positive target gave 0.068
    assert float(with_neg - without) > 0.1


def test_trimmed_text_encoding_is_exact() -> None:
    model = build_clip()
    tok = WordTokenizer(tiny_config()["text_cfg"]["context_length"])
    texts = [s.caption.text for s in make_samples(0, "train", range(40))]
    ids = tok(texts)
    with torch.no_grad():
        assert_close(encode_text_trimmed(model, ids), model.encode_text(ids))


def test_config_is_open_clip_and_eot_pooling() -> None:
    import open_clip

    cfg = tiny_config()
    assert cfg["text_cfg"]["vocab_size"] == WordTokenizer().vocab_size
    model = open_clip.model.CLIP(**cfg)
    assert model.text_pool_type == "argmax"
    assert cfg["vision_cfg"]["patch_size"] == spec.CELL


def test_training_is_reproducible_and_loadable(tmp_path: Path) -> None:
    cfg = TrainConfig(seed=3, steps=2, batch_size=8, warmup=1, threads=1)
    _, s1, info = train(cfg, out_dir=tmp_path / "a", log=lambda _: None)
    _, s2, _ = train(cfg, log=lambda _: None)
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k])
    assert info["steps_done"] == 2
    config, _state, tok, pre = load_bundled(tmp_path / "a")
    assert (
        config == tiny_config()
        and isinstance(tok, WordTokenizer)
        and isinstance(pre, SyntheticPreprocess)
    )
    _model, _, info2 = load_clip_dir(tmp_path / "a")
    assert info2["train_config"]["seed"] == 3
    with pytest.raises(ModelLoadError, match=r"no model\.safetensors"):
        load_bundled(tmp_path / "missing")


def test_preprocess_matches_training_pixels() -> None:
    from PIL import Image

    s = make_samples(0, "test", range(3))
    imgs = render_batch(s)
    pre = SyntheticPreprocess()
    from vlmfast.data.synthetic.model import pixels_from_uint8

    torch.testing.assert_close(
        pre.batch([Image.fromarray(a) for a in imgs]), pixels_from_uint8(imgs)
    )
    big = Image.fromarray(imgs[0]).resize((128, 128))
    assert pre(big).shape == (3, 64, 64)


BUNDLED = (bundled_dir() / "model.safetensors").is_file()


@pytest.mark.skipif(not BUNDLED, reason="bundled weights not trained yet")
def test_bundled_model_loads_and_matches_its_card() -> None:
    import open_clip

    from vlmfast.data.synthetic.evaluate import evaluate_model

    config, state, tok, _ = load_bundled()
    model = open_clip.model.CLIP(**config)
    model.load_state_dict(state, strict=True)
    size = sum(p.stat().st_size for p in bundled_dir().iterdir())
    assert size < 20 * 2**20
    recorded = json.loads((bundled_dir() / "eval.json").read_text())["summary"]
    fresh = evaluate_model(model, tok, seed=4321, n=200)["summary"]
    for key in FLOORS:  # the card's figures hold on another fresh seed (binomial noise)
        assert abs(fresh[key] - recorded[key]) <= 0.08, (key, fresh[key], recorded[key])
    assert fresh["zero_shot_color"] >= 0.95 and fresh["zero_shot_shape"] >= 0.9
    # relations are learned (a bag-of-objects model sits at 50% here)
    assert fresh["vs_swapped_relation"] >= 0.9 and fresh["compositional_relation"] >= 0.9
    card = (bundled_dir() / "MODEL_CARD.md").read_text()
    assert "vlmfast synth train" in card and "Held-out evaluation" in card


@pytest.mark.skipif(not BUNDLED, reason="bundled weights not trained yet")
def test_cli_eval_json(capsys: pytest.CaptureFixture[str]) -> None:
    from vlmfast.cli import main

    assert main(["synth", "eval", "--seed", "99", "--n", "40", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(FLOORS) <= set(out["summary"]) and out["seed"] == 99
    assert main(["synth", "eval", "--seed", "0", "--n", "10"]) == 1  # the training seed


def test_cli_generate(tmp_path: Path) -> None:
    from vlmfast.cli import main
    from vlmfast.data import open_source

    assert main(["synth", "generate", "--n", "6", "--seed", "2", "--out", str(tmp_path / "g")]) == 0
    recs = list(open_source(str(tmp_path / "g")))
    direct = make_samples(2, "test", range(6))
    assert [r.caption for r in recs] == [s.caption.text for s in direct]
    assert np.array_equal(np.asarray(recs[0].image), direct[0].image())
    assert recs[0].meta["meta"]["objects"][0]["shape"] == direct[0].scene.objects[0].shape


def test_load_pair_matches_open_clip(tmp_path: Path) -> None:
    pytest.importorskip("vlmfast.models.loading.open_clip")
    from PIL import Image

    import vlmfast as vf

    train(TrainConfig(steps=1, batch_size=4, threads=1), out_dir=tmp_path / "m", log=lambda _: None)
    pair = vf.load_pair(f"synthetic:{tmp_path / 'm'}")
    model, _, _ = load_clip_dir(tmp_path / "m")
    s = make_samples(1, "test", range(4))
    px = pair.preprocess([Image.fromarray(a) for a in render_batch(s)])
    ids = pair.tokenize([x.caption.text for x in s])
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(px), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
        torch.testing.assert_close(pair.logits(px, ids), model.logit_scale.exp() * img @ txt.T)
    assert "text.blocks.2.attn.pattern" in pair.hook_points()
    with pytest.raises(ModelLoadError, match="unknown synthetic model"):
        vf.load_pair("synthetic:nope")


@pytest.mark.skipif(not BUNDLED, reason="bundled weights not trained yet")
def test_load_pair_synthetic_tiny() -> None:
    pytest.importorskip("vlmfast.models.loading.open_clip")
    from PIL import Image

    import vlmfast as vf
    from vlmfast.data.synthetic.bundled import load_bundled_clip

    pair = vf.load_pair("synthetic:tiny")
    model, tok, _ = load_bundled_clip()
    s = [x for x in make_samples(77, "test", range(80)) if "swapped_attributes" in x.negatives][:20]
    px = pair.preprocess([Image.fromarray(x.image()) for x in s])
    texts = [x.caption.text for x in s] + [x.negatives["swapped_attributes"].text for x in s]
    ids = pair.tokenize(texts)
    torch.testing.assert_close(ids, tok(texts))
    logits = pair.logits(px, ids)
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(px), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(ids), dim=-1)
        torch.testing.assert_close(logits, model.logit_scale.exp() * img @ txt.T)
    n = len(s)
    diag = torch.arange(n)
    assert (logits[diag, diag] > logits[diag, diag + n]).float().mean() >= 0.85  # binds
    out = pair.run(images=px, cache=["image.blocks.0.attn.z"])
    assert out.cache["image.blocks.0.attn.z"].shape[:2] == (n, 17)


def test_training_extras_are_true_false_and_never_held_out() -> None:
    """The re-captioned relations and flipped-relation negatives that training adds:
    exact truth and no text with a held-out combination (the compositional split
    stays unseen)."""
    from vlmfast.data.synthetic.captions import flipped_relation, heldout_combinations
    from vlmfast.data.synthetic.train import pick_negatives, relation_recaption

    rng = np.random.default_rng(0)
    n_recap = 0
    for s in make_samples(0, "train", range(300)):
        flip = flipped_relation(s.caption)
        if s.caption.kind == "relation":
            assert flip is not None and not caption_true(s.scene, flip)
        else:
            assert flip is None
        for text in pick_negatives(rng, s, 2, flipped=True):
            cap = parse_caption(text)
            assert not caption_true(s.scene, cap) and not heldout_combinations(cap)
        r = relation_recaption(rng, s)
        if r is not s:
            n_recap += 1
            assert r.caption.kind == "relation" and r.scene == s.scene
            assert caption_true(r.scene, r.caption) and not heldout_combinations(r.caption)
            assert all(not caption_true(r.scene, c) for c in r.negatives.values())
            assert not any(heldout_combinations(c) for c in r.negatives.values())
    assert n_recap > 30
