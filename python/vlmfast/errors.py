"""The exception hierarchy of vlmfast, shared by Python and the Rust core.

The native module raises these classes (looked up by name from
``rust_core/src/py/errors.rs``), so user code catches one family whatever
layer failed. Each class also derives from the closest builtin, so
``except ValueError`` keeps working for bad arguments.
"""

from __future__ import annotations


class VlmfastError(Exception):
    """Base class of every error vlmfast raises on purpose."""


class InputError(VlmfastError, ValueError):
    """An argument is wrong (shape, dtype, range, unknown name); the message names it."""


class ShapeError(InputError):
    """A tensor has the wrong shape; the message names the tensor (or hook) and both shapes."""


class HookNameError(InputError):
    """An unknown hook name; the message lists the closest valid names."""


class ModelLoadError(VlmfastError):
    """A model spec cannot be loaded (unknown spec, missing local files, offline hub)."""


class StoreError(VlmfastError, OSError):
    """An activation store is missing, corrupt, incompatible or failed I/O."""


class StoreFormatError(StoreError):
    """A store was written by an incompatible (e.g. newer) format version, or is not a store."""


class StrictModeError(VlmfastError, RuntimeError):
    """``VLMFAST_STRICT=1`` and a fast path would have fallen back to its reference."""


class InternalError(VlmfastError, RuntimeError):
    """A broken invariant inside vlmfast (a bug): please report it."""


__all__ = [
    "HookNameError",
    "InputError",
    "InternalError",
    "ModelLoadError",
    "ShapeError",
    "StoreError",
    "StoreFormatError",
    "StrictModeError",
    "VlmfastError",
]
