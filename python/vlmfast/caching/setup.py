"""What every process of a cache run builds before the first batch: the model, its
resolved hooks, the source, and the identity a resumed store must match."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vlmfast.caching.config import JOINT_HOOK, CacheConfig, check_config
from vlmfast.errors import InputError, StoreError
from vlmfast.store.convert import TORCH_DTYPE, dtype_name
from vlmfast.store.schema import (
    ATTR_DATASET,
    ATTR_DTYPE,
    ATTR_HOOKS,
    ATTR_MODEL,
    ATTR_POSITIONS,
    DATASET_HASH,
    DATASET_LIMIT,
    DATASET_SPEC,
    MODEL_PRETRAINED,
    MODEL_SPEC,
    MODEL_WEIGHTS_HASH,
    TOWER_CLS_TOKEN,
    TOWER_IMAGE,
    TOWER_IMAGE_SIZE,
    TOWER_PATCH_SIZE,
)


def weights_hash(model: torch.nn.Module) -> str:
    """Returns the hex sha256 of every parameter and buffer (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def tower_geometry(pair: Any) -> dict[str, Any]:
    """Returns what the store records about the model's towers: the image tower's CLS
    token and patch grid (image and patch size in pixels: which image token rows are
    patches, where each patch lies)."""
    image = pair.config.image
    return {
        TOWER_IMAGE: {
            TOWER_CLS_TOKEN: bool(getattr(image, "class_token", True)),
            TOWER_IMAGE_SIZE: int(getattr(image, "image_size", 0)),
            TOWER_PATCH_SIZE: int(getattr(image, "patch_size", 0)),
        }
    }


IDENTITY_KEYS = (ATTR_MODEL, ATTR_DATASET, ATTR_HOOKS, ATTR_POSITIONS, ATTR_DTYPE)
"""The store attributes a resumed cache must match."""


def cache_identity(cfg: CacheConfig, hooks: list[str], whash: str, dhash: str) -> dict[str, Any]:
    """Model, dataset, hooks, positions and dtype of a run (``IDENTITY_KEYS``)."""
    return {
        ATTR_MODEL: {
            MODEL_SPEC: cfg.model,
            MODEL_PRETRAINED: cfg.pretrained,
            MODEL_WEIGHTS_HASH: whash,
        },
        ATTR_DATASET: {DATASET_SPEC: cfg.data, DATASET_HASH: dhash, DATASET_LIMIT: cfg.limit},
        ATTR_HOOKS: hooks,
        ATTR_POSITIONS: cfg.positions,
        ATTR_DTYPE: cfg.dtype,
    }


def check_same(existing: dict[str, Any], want: dict[str, Any], out: Path) -> None:
    """A ``StoreError`` unless the store attributes ``existing`` were cached like ``want``."""
    got = {key: existing.get(key) for key in IDENTITY_KEYS}
    got[ATTR_HOOKS] = list(existing.get(ATTR_HOOKS, {}))
    for key in want:
        if got[key] != want[key]:
            raise StoreError(
                f"{out} was cached with a different {key} ({got[key]!r}, now {want[key]!r}); "
                "pass --overwrite to replace it, or choose another --out"
            )


@dataclass
class CacheSetup:
    """What every process of a cache run builds before the first batch."""

    pair: Any
    """The hooked model pair, in eval mode."""
    hooks: list[str]
    """Store hooks, resolved from the config's names/globs (model order, then joint.embed)."""
    source: Any
    """The ``PairSource``."""
    identity: dict[str, Any]
    """Model, dataset, hooks, positions and dtype: what a resumed store must match."""
    store_dtype: torch.dtype
    """torch dtype of the stored rows."""
    records: Callable[[int, int], Iterator[Any]] | None = None
    """``records(after, counted)``: the records past sample id ``after`` (``counted`` before
    it) when a multi-rank run knows the bad ones (``caching.scan.known_records``); None:
    ``source.records_after``."""


def setup_cache(cfg: CacheConfig) -> CacheSetup:
    """Loads the model and opens the source (every rank does this).

    Returns:
        The model in eval mode, the resolved hooks, the source and the run's identity,
            as a :class:`CacheSetup`.

    Raises:
        InputError: a bad config (the flag named), or ``--hooks`` names no hook.
        ModelLoadError: the model cannot be loaded.
    """
    import vlmfast as vf
    from vlmfast.data import open_source

    check_config(cfg)
    store_dtype = TORCH_DTYPE[dtype_name(cfg.dtype)]
    pair = (
        vf.load_pair(cfg.model, pretrained=cfg.pretrained, device=cfg.device)
        if cfg.pretrained
        else vf.load_pair(cfg.model, device=cfg.device)
    )
    pair.eval()
    hooks = _resolve(cfg.hooks, pair.hook_points())
    src = open_source(
        cfg.data, limit=cfg.limit, decode_workers=cfg.decode_workers, concepts=cfg.concepts
    )
    ident = cache_identity(cfg, hooks, weights_hash(pair), src.fingerprint())
    return CacheSetup(pair, hooks, src, ident, store_dtype)


def _resolve(patterns: list[str], hook_points: list[str]) -> list[str]:
    """Model hooks from names/globs (model order), then ``joint.embed`` if asked for."""
    from vlmfast.models.hooks import resolve_hooks

    model_patterns = [h for h in patterns if h != JOINT_HOOK]
    hooks = resolve_hooks(model_patterns, hook_points) if model_patterns else []
    if JOINT_HOOK in patterns:
        hooks.append(JOINT_HOOK)
    if not hooks:
        raise InputError("--hooks names no hook")
    return hooks
