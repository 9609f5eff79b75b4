"""All 144 single-head patches of ViT-B/32: batched prefix-reusing sweep vs serial loops.

Model: ``open_clip:ViT-B-32`` with random weights (offline), a base batch of 8
image-text pairs and a source batch of 8 more. Baselines, measured in the same run:

- serial (TransformerLens style): one full ``pair.run`` (both towers) per (layer, head)
  with ``vf.Patch(..., heads=[h])`` — ``patch_heads(method="serial")``;
- serial, image tower only: one full image-tower forward per (layer, head), text
  embeddings computed once (the cheapest serial loop a careful user would write).

The batched sweep runs the base forward once and, per layer, all 12 head patches as
one 96-row forward from ``blocks.L.resid_pre``. Results must be identical (<= 1e-5).
Run with ``make bench``; the figures go into README's performance table. Each test
measures its serial baseline and the batched sweep back to back in the same process.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

import vlmfast as vf
from vlmfast.causal import MatchedScore, patch_heads
from vlmfast.causal.core.metrics import similarity

N_PAIRS = 8
CAPTIONS = [
    "a red cube left of a blue sphere",
    "a green cone on a yellow box",
    "two purple cylinders",
    "a small white ball",
    "an orange cube above a gray cone",
    "a blue sphere right of a red cube",
    "three black boxes",
    "a pink torus near a cyan cube",
]


@pytest.fixture(scope="module")
def setup() -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    pair = vf.load_pair("open_clip:ViT-B-32")
    gen = torch.Generator().manual_seed(0)
    px = torch.randn(N_PAIRS, 3, 224, 224, generator=gen)
    src_px = torch.randn(N_PAIRS, 3, 224, 224, generator=gen)
    tok = pair.tokenize(CAPTIONS)
    src_tok = pair.tokenize(CAPTIONS[::-1])
    return pair, px, tok, src_px, src_tok


def _serial_image_tower_only(
    pair: Any, px: torch.Tensor, tok: torch.Tensor, src_px: torch.Tensor
) -> torch.Tensor:
    cfg = pair.config.image
    hooks = [f"image.blocks.{layer}.attn.z" for layer in range(cfg.layers)]
    with torch.no_grad():
        src = pair.image.run(src_px, cache=hooks).cache
        txt = pair.text.run(tok).embed
        scale, bias = pair.logit_scale, (pair.logit_bias if pair.config.logit_bias else None)
        out = torch.empty(cfg.layers, cfg.heads)
        for layer, hook in enumerate(hooks):
            for head in range(cfg.heads):
                img = pair.image.run(
                    px, interventions=[vf.Patch(hook, source=src[hook], heads=[head])]
                ).embed
                out[layer, head] = MatchedScore()(similarity(img, txt, scale, bias, "logits"))
    return out


def _report(
    benchmark: Any, label: str, t_serial: float, batched: torch.Tensor, serial: torch.Tensor
) -> None:
    t_batched = benchmark.stats.stats.min
    diff = float((batched - serial).abs().max())
    benchmark.extra_info.update(
        baseline=label,
        serial_s=t_serial,
        batched_s=t_batched,
        speedup=t_serial / t_batched,
        max_abs_diff=diff,
        threads=torch.get_num_threads(),
    )
    print(
        f"\n144 head patches, ViT-B/32, batch {N_PAIRS}: {label} {t_serial:.1f} s, "
        f"batched {t_batched:.1f} s -> {t_serial / t_batched:.2f}x; max |diff| {diff:.2e}"
    )


def test_vs_serial_full_forwards(benchmark: Any, setup: Any) -> None:
    """The issue's baseline: 144 full pair forwards (TransformerLens' loop)."""
    pair, px, tok, src_px, src_tok = setup
    source = {"images": src_px, "texts": src_tok}
    t0 = time.perf_counter()
    serial = patch_heads(pair, px, tok, source, "score", method="serial")
    t_serial = time.perf_counter() - t0
    batched = benchmark.pedantic(
        lambda: patch_heads(pair, px, tok, source, "score", method="batched"),
        rounds=1,
        iterations=1,
    )
    torch.testing.assert_close(batched, serial, atol=1e-5, rtol=0)
    assert batched.shape == (12, 12)
    _report(benchmark, "serial full pair", t_serial, batched, serial)


def test_vs_serial_image_tower_only(benchmark: Any, setup: Any) -> None:
    """A stronger baseline: 144 image-tower forwards, text embeddings computed once."""
    pair, px, tok, src_px, src_tok = setup
    source = {"images": src_px, "texts": src_tok}
    t0 = time.perf_counter()
    serial = _serial_image_tower_only(pair, px, tok, src_px)
    t_serial = time.perf_counter() - t0
    batched = benchmark.pedantic(
        lambda: patch_heads(pair, px, tok, source, "score", method="batched"),
        rounds=1,
        iterations=1,
    )
    torch.testing.assert_close(batched, serial, atol=1e-5, rtol=0)
    _report(benchmark, "serial image tower", t_serial, batched, serial)
