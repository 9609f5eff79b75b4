"""The one commit protocol of a store, for single-process and multi-rank writers.

Order: every array's chunk data and new shape on disk (one parallel fsync pass
over all arrays, ``store_prepare_commit``) -> the root attributes with the new
committed counts, written atomically (the commit point) -> the arrays' handles told
their rows are committed. A crash before the commit point leaves shapes ahead of the
committed counts, which readers ignore and a writer truncates back; a crash after it
leaves the commit complete. ``ActivationStore.commit`` commits what it appended;
the multi-rank merge (``vlmfast.caching.merge``) commits what the ranks wrote.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping
from typing import Any

from vlmfast import _native
from vlmfast.store.attrs import write_attrs
from vlmfast.store.schema import (
    ATTR_COMMITTED_BOX_ROWS,
    ATTR_COMMITTED_LABEL_ROWS,
    ATTR_COMMITTED_ROWS,
    ATTR_HOOKS,
    ATTR_PROGRESS,
    BOX_SAMPLE_ARRAY,
    LABELS_ARRAY,
    acts_array,
)

CrashHook = Callable[[str], None]
"""Tests: called at the stages ``flushed`` (before the commit point) and
``attrs_written`` (after it) to simulate a crash there."""


def committed_attrs(
    attrs: Mapping[str, Any], rows: Mapping[str, int], progress: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``attrs`` with the committed counts of ``rows`` (array name -> rows) and, when
    given, ``progress``."""
    out = copy.deepcopy(dict(attrs))
    for hook in out[ATTR_HOOKS]:
        out[ATTR_COMMITTED_ROWS][hook] = int(rows[acts_array(hook)])
    if LABELS_ARRAY in rows:
        out[ATTR_COMMITTED_LABEL_ROWS] = int(rows[LABELS_ARRAY])
    if BOX_SAMPLE_ARRAY in rows:
        out[ATTR_COMMITTED_BOX_ROWS] = int(rows[BOX_SAMPLE_ARRAY])
    if progress is not None:
        out[ATTR_PROGRESS] = dict(progress)
    return out


def commit_rows(
    root: str | os.PathLike[str],
    arrays: Mapping[str, Any],
    rows: Mapping[str, int],
    attrs: Mapping[str, Any],
    *,
    progress: Mapping[str, Any] | None = None,
    crash_hook: CrashHook | None = None,
) -> dict[str, Any]:
    """Commits ``rows[name]`` rows of every array handle ``arrays[name]`` of the store at
    ``root`` (see the module doc); returns the root attributes now committed: ``attrs``
    with the new counts and ``progress``."""
    handles = list(arrays.values())
    counts = [int(rows[name]) for name in arrays]
    _native.store_prepare_commit(handles, counts)
    if crash_hook is not None:
        crash_hook("flushed")
    new = committed_attrs(attrs, rows, progress)
    write_attrs(root, new)  # the commit point
    if crash_hook is not None:
        crash_hook("attrs_written")
    _native.store_mark_committed(handles, counts)
    return new
