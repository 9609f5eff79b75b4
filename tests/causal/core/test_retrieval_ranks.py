"""Retrieval ranks in concept_metrics: duplicates of the matched caption or image tie."""

from __future__ import annotations

import numpy as np
import torch

from vlmfast.causal.core.evalset import METRICS, EvalSet, concept_metrics


def _eval_set(captions: list[str], images: torch.Tensor) -> EvalSet:
    labels = np.ones((len(captions), 1), dtype=bool)
    return EvalSet(images, captions, labels, ("red",), ("color",))


def _i2t_t2i(ev: EvalSet, img: torch.Tensor, cap: torch.Tensor) -> tuple[float, float]:
    prompts = torch.randn(1, 1, img.shape[-1], dtype=torch.float64)
    owner = np.zeros(1, dtype=np.int64)
    table = concept_metrics(img[None], cap[None], prompts, ev, owner, torch.tensor(0.0), None)
    return (
        float(table.overall[0, METRICS.index("i2t@1")]),
        float(table.overall[0, METRICS.index("t2i@1")]),
    )


def test_a_duplicate_caption_a_hair_closer_still_counts_as_found() -> None:
    e = torch.eye(4, dtype=torch.float64)
    img = e[:3].clone()
    img[0] = e[0] + 0.1 * e[3]
    cap = e[:3].clone()
    # caption 1 repeats caption 0's text, yet its embedding scores above caption 0's for
    # image 0 (in practice by last-bit noise that differs with batch layout and CPU)
    cap[1] = img[0]
    images = torch.arange(3, dtype=torch.float32).reshape(3, 1, 1, 1).expand(3, 3, 2, 2)
    ev = _eval_set(["a red circle", "a red circle", "a blue square"], images.clone())
    i2t, _ = _i2t_t2i(ev, img, cap)
    assert i2t == 1.0
    # negative control: the same scores with distinct texts rank the impostor first
    ev2 = _eval_set(["a red circle", "a big red circle", "a blue square"], images.clone())
    i2t2, _ = _i2t_t2i(ev2, img, cap)
    assert abs(i2t2 - 2 / 3) < 1e-12


def test_identical_pixels_tie_for_text_to_image() -> None:
    e = torch.eye(4, dtype=torch.float64)
    cap = e[:3].clone()
    img = e[:3].clone()
    img[0] = e[0] + 0.1 * e[3]
    img[1] = e[0]  # image 1 shows the same pixels as image 0 and scores above it
    same = torch.zeros(3, 3, 2, 2)
    same[2] = 1.0
    ev = _eval_set(["a red circle", "a red square", "a blue square"], same)
    _, t2i = _i2t_t2i(ev, img, cap)
    assert t2i == 1.0
    # negative control: distinct pixels, so caption 0 ranks image 1 first and misses
    distinct = same.clone()
    distinct[1] = 0.5
    ev2 = _eval_set(["a red circle", "a red square", "a blue square"], distinct)
    _, t2i2 = _i2t_t2i(ev2, img, cap)
    assert abs(t2i2 - 2 / 3) < 1e-12
