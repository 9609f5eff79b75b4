"""The ``bfloat16`` zarr v3 data type for zarr-python, so ``zarr.open_group``
reads bf16 activation stores.

zarr-python (3.1.6) ships no bfloat16 data type; vlmfast's stores write the
``bfloat16`` data type of the zarr v3 extension registry (what the ``zarrs``
crate writes). :class:`BFloat16` maps it to ``ml_dtypes.bfloat16`` (the numpy
dtype JAX and TensorFlow use); :func:`register` adds it to zarr-python's
registry. Opening or creating an ``ActivationStore`` registers it, so in a
process that uses vlmfast plain zarr-python reads bf16 stores too.

Why not an entry point: zarr-python 3.1.6 collects ``zarr.data_type`` entry
points but never loads them (``DataTypeRegistry._lazy_load`` has no caller), so
a reader that does not import vlmfast needs the one-line :func:`register`.
This module imports only numpy, ml_dtypes and zarr (no torch).
Only zarr v3 metadata is supported (v2 has no bfloat16).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import ml_dtypes
import numpy as np
from zarr.core.dtype.npy.float import BaseFloat

_BF16 = np.dtype(ml_dtypes.bfloat16)


@dataclass(frozen=True, kw_only=True)
class BFloat16(BaseFloat):
    """zarr v3 ``bfloat16`` <-> numpy ``ml_dtypes.bfloat16``."""

    dtype_cls = type(_BF16)
    _zarr_v3_name: ClassVar[Literal["bfloat16"]] = "bfloat16"
    _zarr_v2_names: ClassVar[tuple[str, ...]] = ()

    @property
    def item_size(self) -> int:
        """Bytes per element (2)."""
        return 2


def register() -> None:
    """Registers :class:`BFloat16` with zarr-python (idempotent)."""
    from zarr.core.dtype import data_type_registry

    data_type_registry.register(BFloat16._zarr_v3_name, BFloat16)
