"""Caching: a model's activations over an image-text source, into an activation store.

    from vlmfast.caching import CacheConfig, run_cache
    store = run_cache(CacheConfig(model="synthetic:tiny", data="synthetic:n=64",
                                  hooks=["image.blocks.*.resid_post"], out=Path("acts.zarr")))

The application over the storage engine (``vlmfast.store``), in the order data flows:
sources (``labels``, ``boxes``, ``geometry``: labels and object boxes of a batch) ->
models (``setup``: the model, its hooks, the run's identity; ``forward``: batches run
with hooks) -> rows (``rows``: which tokens become store rows) -> the store (``loop``:
resumable, crash-safe writing) -> ranks (``ranks``, ``scan``, ``merge``: ``torchrun``).
``store`` knows nothing of models or data; this package is where they meet it.

Public API: ``CacheConfig``, ``run_cache``, ``CacheSetup``, ``setup_cache``,
``iter_forward``, ``forward_rows``, ``preprocess_batch``, ``weights_hash``,
``tower_geometry``, ``hook_rows``, ``POSITIONS``, ``JOINT_HOOK``, ``InputGeometry``,
``input_geometry``, ``box_attrs``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlmfast.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from vlmfast.caching.boxes import box_attrs
    from vlmfast.caching.cache import run_cache
    from vlmfast.caching.config import JOINT_HOOK, CacheConfig
    from vlmfast.caching.forward import forward_rows, iter_forward, preprocess_batch
    from vlmfast.caching.geometry import InputGeometry, input_geometry
    from vlmfast.caching.rows import POSITIONS, hook_rows
    from vlmfast.caching.setup import CacheSetup, setup_cache, tower_geometry, weights_hash
    from vlmfast.caching.skip_report import read_skip_report

# Imported lazily (PEP 562), so that ``import vlmfast.caching`` stays cheap.
_LAZY_ATTRS: dict[str, str] = {
    "CacheConfig": "vlmfast.caching.config",
    "JOINT_HOOK": "vlmfast.caching.config",
    "run_cache": "vlmfast.caching.cache",
    "read_skip_report": "vlmfast.caching.skip_report",
    "CacheSetup": "vlmfast.caching.setup",
    "setup_cache": "vlmfast.caching.setup",
    "weights_hash": "vlmfast.caching.setup",
    "tower_geometry": "vlmfast.caching.setup",
    "iter_forward": "vlmfast.caching.forward",
    "forward_rows": "vlmfast.caching.forward",
    "preprocess_batch": "vlmfast.caching.forward",
    "prepare_inputs": "vlmfast.caching.forward",  # deprecated name of preprocess_batch
    "hook_rows": "vlmfast.caching.rows",
    "POSITIONS": "vlmfast.caching.rows",
    "InputGeometry": "vlmfast.caching.geometry",
    "input_geometry": "vlmfast.caching.geometry",
    "box_attrs": "vlmfast.caching.boxes",
}

__all__ = [
    "JOINT_HOOK",
    "POSITIONS",
    "CacheConfig",
    "CacheSetup",
    "InputGeometry",
    "box_attrs",
    "forward_rows",
    "hook_rows",
    "input_geometry",
    "iter_forward",
    "preprocess_batch",
    "read_skip_report",
    "run_cache",
    "setup_cache",
    "tower_geometry",
    "weights_hash",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRS, __all__)
