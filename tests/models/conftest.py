"""Fixtures for the model-layer tests: tiny random open_clip models and their hooked pairs."""

from __future__ import annotations

from typing import Any

import pytest

from vlmfast.models.testing import tiny_open_clip


@pytest.fixture(scope="session")
def b32_pair() -> Any:
    from vlmfast.models import from_open_clip

    return from_open_clip(tiny_open_clip("ViT-B-32"), spec="tiny:ViT-B-32")


@pytest.fixture(scope="session")
def siglip_pair() -> Any:
    from vlmfast.models import from_open_clip

    return from_open_clip(tiny_open_clip("ViT-SO400M-14-SigLIP-384"), spec="tiny:siglip")
