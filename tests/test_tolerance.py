"""The shared tolerance helper passes rounding-order differences and fails real bugs."""

from __future__ import annotations

import pytest
import torch

from tolerance import assert_close, ratio_scale, tolerance


def _sum_two_orders(n: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, n, generator=gen)
    forward = x.sum(dim=1)
    blocked = x.view(64, -1, 16).sum(dim=2).flip(1).sum(dim=1)  # another summation order
    return forward, blocked


def test_summation_order_passes() -> None:
    forward, blocked = _sum_two_orders()
    assert not torch.equal(forward, blocked)  # the two orders really differ
    assert_close(blocked, forward)


def test_a_swapped_row_fails() -> None:
    forward, _ = _sum_two_orders()
    wrong = forward.clone()
    wrong[[3, 5]] = wrong[[5, 3]]  # "a wrong head patched"
    with pytest.raises(AssertionError):
        assert_close(wrong, forward)


def test_ratio_scale_covers_cancellation_and_nothing_more() -> None:
    # A recovery (m - m0) / (m1 - m0) with m1 - m0 small amplifies m's rounding.
    m = torch.tensor([1.1777, 1.1600, 1.1702])
    m0, m1 = torch.tensor(1.1597), torch.tensor(1.1640)
    eps = torch.finfo(torch.float32).eps
    rec = (m - m0) / (m1 - m0)
    rec_rounded = (m + eps * 4 - m0) / (m1 - m0)  # a few ulps of m, amplified
    scale = ratio_scale(torch.stack([m, m0.expand(3), m1.expand(3)]), m1 - m0)
    with pytest.raises(AssertionError):
        assert_close(rec_rounded, rec)  # the reference's own magnitude is too strict here
    assert_close(rec_rounded, rec, scale=scale)
    with pytest.raises(AssertionError):
        assert_close(rec + 0.05, rec, scale=scale)  # a real shift still fails


def test_tolerance_follows_dtype() -> None:
    ref = torch.ones(3)
    r32, a32 = tolerance(ref)
    r16, a16 = tolerance(ref.to(torch.bfloat16))
    assert r16 > 100 * r32 and a16 > 100 * a32
    _, a_big = tolerance(ref * 1000)
    assert a_big == pytest.approx(1000 * a32)
    with pytest.raises(ValueError, match="denominator"):
        ratio_scale(ref, torch.zeros(1))
