"""Direct-effect decomposition of ViT-B/32: pooling-weight fast path vs per-token reference.

Model: ``open_clip:ViT-B-32`` with random weights (offline), 16 image-text pairs.
Baseline, measured in the same run: ``decompose.reference_parts`` (caches every layer's
``attn.head_out`` [B, T, H, d] and pushes each part through the frozen LayerNorm token by
token). The fast path (``tower_parts``) weights ``attn.z`` by the pooling weights over
the frozen LN scale, so it never builds a ``[B, T, H, d]`` tensor. Both must agree
(<= 1e-5 in float32 weights), and the parts plus biases must give the logit (<= 1e-4)
at the real model size.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

import vlmfast as vf
from vlmfast.causal.direct import DirectEffects
from vlmfast.causal.direct.decompose import reference_parts, tower_parts

N_PAIRS = 16


@pytest.fixture(scope="module")
def setup() -> tuple[Any, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    pair = vf.load_pair("open_clip:ViT-B-32")
    gen = torch.Generator().manual_seed(0)
    px = torch.randn(N_PAIRS, 3, 224, 224, generator=gen)
    tok = pair.tokenize([f"a photo of object number {k}" for k in range(N_PAIRS)])
    return pair, px, tok


def test_fast_vs_reference_image_tower(benchmark: Any, setup: Any) -> None:
    pair, px, tok = setup
    t0 = time.perf_counter()
    ref = reference_parts(pair, "image", px)
    t_ref = time.perf_counter() - t0
    fast = benchmark.pedantic(lambda: tower_parts(pair, "image", px), rounds=3, iterations=1)
    t_fast = benchmark.stats.stats.min
    diff = float((fast.parts - ref.parts).abs().max())
    assert diff <= 1e-5
    de = vf.causal.direct_effects(pair, px, tok, tower="image")
    assert isinstance(de, DirectEffects)
    check = de.check()
    assert check <= 1e-4
    benchmark.extra_info.update(
        reference_s=t_ref, fast_s=t_fast, speedup=t_ref / t_fast, max_abs_diff=diff, check=check
    )
    print(
        f"\nViT-B/32 image tower, {N_PAIRS} images, {len(fast.names)} parts: reference "
        f"{t_ref:.2f} s, fast {t_fast:.2f} s -> {t_ref / t_fast:.2f}x; max |diff| {diff:.2e}; "
        f"parts + biases - logit {check:.2e}"
    )
