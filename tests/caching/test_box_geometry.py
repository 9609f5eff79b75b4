"""The preprocessing geometry boxes are mapped through: open_clip, HF and the fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlmfast.caching.geometry import InputGeometry, input_geometry


def _rect_image(w, h, rect):
    arr = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = rect
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr)


def _bright_box(px: torch.Tensor):
    """(x0, y0, x1, y1) normalised of the pixels above mid grey of a [3, S, S] tensor."""
    m = px.float().mean(0).numpy() > 0.5
    ys, xs = np.nonzero(m)
    s = m.shape[0]
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / s


@pytest.mark.parametrize("mode", ["shortest", "squash"])
@pytest.mark.parametrize("wh", [(96, 64), (50, 90)])
def test_geometry_matches_open_clip_transform(mode, wh):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    t = image_transform_v2(
        PreprocessCfg(size=32, mean=(0, 0, 0), std=(1, 1, 1), resize_mode=mode), is_train=False
    )
    geom = input_geometry(type("P", (), {"_preprocess": t})())
    assert geom is not None and geom.mode == ("shortest_crop" if mode == "shortest" else "squash")
    w, h = wh
    rect = (w // 3, h // 4, w // 3 + 24, h // 4 + 30)
    got = _bright_box(t(_rect_image(w, h, rect)))
    norm = np.array([rect[0] / w, rect[1] / h, rect[2] / w, rect[3] / h], np.float32)
    mapped, keep = geom.map(norm[None], np.array([[w, h]]))
    assert keep[0]
    assert np.allclose(mapped[0], got, atol=1.5 / 32)  # resampling blurs an edge by <= 1 px


def test_geometry_drops_boxes_outside_the_crop():
    geom = InputGeometry("shortest_crop", 32, 32)
    # a 128 x 32 image: the crop keeps x in [48, 80); a box in x [0, 20) is cut away
    boxes = np.array([[0, 0, 20 / 128, 1], [40 / 128, 0, 60 / 128, 0.5]], np.float32)
    mapped, keep = geom.map(boxes, np.array([[128, 32], [128, 32]]))
    assert keep.tolist() == [False, True]
    assert np.allclose(mapped[1], [0, 0, 12 / 32, 0.5])


def test_geometry_hf_fallback_and_squash():
    from vlmfast.models.loading.hf_processing import fallback_transform

    class _Pre:
        family, image_size = "clip", 32

        def _processor(self):
            return False

    _Pre.__name__ = "HFPreprocess"
    geom = input_geometry(type("P", (), {"_preprocess": _Pre()})())
    assert geom == InputGeometry("shortest_crop", 32, 32, "hf_fallback")
    rect = (10, 30, 40, 60)
    img = _rect_image(60, 100, rect)
    got = _bright_box(fallback_transform(img, "clip", 32) * 0.26 + 0.45)
    norm = np.array([[10 / 60, 30 / 100, 40 / 60, 60 / 100]], np.float32)
    mapped, _ = geom.map(norm, np.array([[60, 100]]))
    assert np.allclose(mapped[0], got, atol=1.5 / 32)
    assert input_geometry(type("P", (), {"_preprocess": object()})()) is None


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_geometry_matches_hf_image_processor(family):
    transformers = pytest.importorskip("transformers")
    if family == "clip":
        proc = transformers.CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
    else:
        proc = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})

    class _Pre:
        def _processor(self):
            return proc

    _Pre.__name__ = "HFPreprocess"
    geom = input_geometry(type("P", (), {"_preprocess": _Pre()})())
    assert geom is not None and geom.mode == ("shortest_crop" if family == "clip" else "squash")
    for w, h in ((96, 64), (50, 90)):
        rect = (w // 3, h // 4, w // 3 + 24, h // 4 + 30)
        px = torch.as_tensor(
            proc(images=[_rect_image(w, h, rect)], return_tensors="np")["pixel_values"][0]
        )
        got = _bright_box(px - px.min() - 0.5 * (px.max() - px.min()) + 0.5)
        norm = np.array([[rect[0] / w, rect[1] / h, rect[2] / w, rect[3] / h]], np.float32)
        mapped, _ = geom.map(norm, np.array([[w, h]]))
        assert np.allclose(mapped[0], got, atol=1.5 / 32)
