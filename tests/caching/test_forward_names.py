"""One name per concept: the caching side's batch preprocessing is ``preprocess_batch``;
``prepare_inputs`` means the causal one (clean / corrupted inputs as base and source)."""

from __future__ import annotations

import pytest

import vlmfast.caching as caching
from vlmfast.caching import forward


def test_preprocess_batch_is_public_and_old_name_warns() -> None:
    assert "preprocess_batch" in caching.__all__
    assert "prepare_inputs" not in caching.__all__
    with pytest.warns(DeprecationWarning, match="renamed preprocess_batch"):
        old = forward.prepare_inputs
    assert old is forward.preprocess_batch


def test_unknown_attribute_still_raises() -> None:
    with pytest.raises(AttributeError):
        forward.no_such_name  # noqa: B018
