"""Token selection of ``vlmfast cache`` (``vlmfast.caching.rows.hook_rows``)."""

from __future__ import annotations

import pytest
import torch

from vlmfast.caching.rows import hook_rows
from vlmfast.errors import InputError

IDS = torch.tensor([10, 11])


def test_image_positions() -> None:
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    kw = {"text_lengths": None, "has_cls": True}
    r = hook_rows("image.blocks.0.resid_post", x, IDS, "all", **kw)
    assert r.rows.shape == (6, 2) and r.sample.tolist() == [10] * 3 + [11] * 3
    assert r.position.tolist() == [0, 1, 2] * 2
    r = hook_rows("image.blocks.0.resid_post", x, IDS, "cls", **kw)
    assert torch.equal(r.rows, x[:, 0]) and r.position.tolist() == [0, 0]
    r = hook_rows("image.blocks.0.resid_post", x, IDS, "mean", **kw)
    assert torch.allclose(r.rows, x.mean(1)) and r.position.tolist() == [-1, -1]
    no_cls = {"text_lengths": None, "has_cls": False}
    r = hook_rows("image.blocks.0.resid_post", x, IDS, "pooled", **no_cls)
    assert torch.allclose(r.rows, x.mean(1))
    with pytest.raises(InputError, match="CLS"):
        hook_rows("image.blocks.0.resid_post", x, IDS, "cls", **no_cls)


def test_text_stops_at_eot_and_heads_flatten() -> None:
    x = torch.randn(2, 4, 3, 5)  # [B, T, H, d] per-head hook
    lengths = torch.tensor([2, 4])
    kw = {"text_lengths": lengths, "has_cls": True}
    r = hook_rows("text.blocks.0.attn.z", x, IDS, "all", **kw)
    assert r.rows.shape == (6, 15) and r.position.tolist() == [0, 1, 0, 1, 2, 3]
    r = hook_rows("text.blocks.0.attn.z", x, IDS, "eot", **kw)
    assert torch.equal(r.rows, torch.stack([x[0, 1].flatten(), x[1, 3].flatten()]))
    assert r.position.tolist() == [1, 3]
    r = hook_rows("text.blocks.0.attn.z", x, IDS, "mean", **kw)
    assert torch.allclose(r.rows[0], x[0, :2].reshape(2, -1).mean(0))


def test_pooled_hooks_and_patterns() -> None:
    e = torch.randn(2, 7)
    r = hook_rows("text.embed", e, IDS, "all", text_lengths=None, has_cls=True)
    assert torch.equal(r.rows, e) and r.position.tolist() == [-1, -1]
    with pytest.raises(InputError, match="pattern"):
        hook_rows(
            "image.blocks.0.attn.pattern",
            torch.randn(2, 2, 3, 3),
            IDS,
            "all",
            text_lengths=None,
            has_cls=True,
        )
    with pytest.raises(InputError, match="positions"):
        hook_rows("text.embed", e, IDS, "first", text_lengths=None, has_cls=True)
