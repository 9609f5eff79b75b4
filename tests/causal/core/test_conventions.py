"""The shared causal conventions: recovery, eval mode, paired inputs, metric shape."""

from __future__ import annotations

import pytest
import torch

from vlmfast.causal.core.conventions import (
    check_eval_mode,
    check_metric_output,
    check_paired,
    check_tower,
    recovery,
)
from vlmfast.errors import InputError, ShapeError


def test_recovery_is_zero_at_corrupt_and_one_at_clean() -> None:
    out = recovery(torch.tensor([2.0, 5.0, 3.5]), clean=5.0, corrupt=2.0)
    assert torch.allclose(out, torch.tensor([0.0, 1.0, 0.5]))


def test_recovery_sign_when_corruption_raises_the_metric() -> None:
    out = recovery(torch.tensor([4.0, 1.0]), clean=1.0, corrupt=4.0)
    assert torch.allclose(out, torch.tensor([0.0, 1.0]))


def test_recovery_small_denominator_names_both_values() -> None:
    with pytest.raises(InputError, match=r"clean 1\.5.*corrupt 1\.5"):
        recovery(torch.tensor([1.0]), clean=1.5, corrupt=1.5 + 1e-9)
    with pytest.raises(InputError, match="recovery is undefined"):
        recovery(torch.tensor([1.0]), clean=float("nan"), corrupt=0.0)


def test_eval_mode_required() -> None:
    model = torch.nn.Linear(2, 2)
    check_eval_mode(model.eval())
    with pytest.raises(InputError, match=r"pair\.training"):
        check_eval_mode(model.train())


def test_paired_shapes_and_tower_and_metric_shape() -> None:
    check_paired(torch.zeros(2, 5), torch.ones(2, 5))
    with pytest.raises(ShapeError, match=r"clean \(2, 5\) and corrupted \(2, 6\)"):
        check_paired(torch.zeros(2, 5), torch.zeros(2, 6))
    with pytest.raises(InputError, match=r"image.*text"):
        check_tower("audio")
    check_metric_output(torch.zeros(3), 3)
    with pytest.raises(ShapeError, match=r"\(shape \(3,\)\), got \(3, 2\)"):
        check_metric_output(torch.zeros(3, 2), 3)


def test_load_pair_returns_eval_mode() -> None:
    import vlmfast as vf

    pair = vf.load_pair("synthetic:tiny")
    assert pair.training is False
    check_eval_mode(pair)
