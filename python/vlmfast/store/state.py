"""What an open ``ActivationStore`` holds, and its read-only properties (the base its
writing and reading halves share)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vlmfast.errors import HookNameError, StoreError
from vlmfast.store.convert import TORCH_DTYPE
from vlmfast.store.schema import ATTR_COMMITTED_ROWS, ATTR_DTYPE, ATTR_HOOKS, HOOK_WIDTH


class StoreState:
    """The state of an open store: its folder, root attributes and array handles."""

    _path: Path
    _attrs: dict[str, Any]
    """The committed root attributes (plus the counts of rows appended since)."""
    _writable: bool
    _arrays: dict[str, Any]
    """Array name -> native ``StoreArray`` handle."""
    _lock_fd: int | None
    _pending: bool
    """Rows were appended since the last commit."""
    _crash_hook: Callable[[str], None] | None
    """Tests: crash at a commit stage."""

    @property
    def path(self) -> Path:
        """Folder of the store."""
        return self._path

    @property
    def hooks(self) -> list[str]:
        """Hook names held by the store."""
        return list(self._attrs[ATTR_HOOKS])

    @property
    def dtype(self) -> torch.dtype:
        """torch dtype of the activation rows."""
        return TORCH_DTYPE[self._attrs[ATTR_DTYPE]]

    @property
    def attrs(self) -> dict[str, Any]:
        """A copy of the root group attributes (provenance, committed counts, progress)."""
        return copy.deepcopy(self._attrs)

    def width(self, hook: str) -> int:
        """Row width of a hook."""
        return int(self._hook(hook)[HOOK_WIDTH])

    def n_rows(self, hook: str) -> int:
        """Committed rows of a hook."""
        self._hook(hook)
        return int(self._attrs[ATTR_COMMITTED_ROWS][hook])

    def _hook(self, hook: str) -> dict[str, Any]:
        spec = self._attrs[ATTR_HOOKS].get(hook)
        if spec is None:
            raise HookNameError(f"hook {hook!r} is not in the store; it holds {self.hooks}")
        return spec

    def _need_writable(self) -> None:
        if not self._writable:
            raise StoreError(f"{self._path} is open read-only; open it with mode='a' to append")
