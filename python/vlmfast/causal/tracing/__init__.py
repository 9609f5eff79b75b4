"""Causal tracing (ROME's corrupt-then-restore) of either tower of a pair.

Public API: ``trace`` (``trace.py``: the conventions) with ``TraceConfig`` (``config.py``), ``TraceResult`` / ``TraceNull``
(``result.py``), ``prepare_trace`` / ``PreparedTrace`` / ``prepare_counts``
(``prepare.py``), ``restore_sets``; ``save_trace_arrays`` (``arrays.py``: the ``.npz``
both front doors write); the batched and serial engines are ``engine.py``
(``TRACE_KINDS``, ``TraceSetup``).
"""

from __future__ import annotations

from vlmfast.causal.core.vocabulary import TRACE_KINDS
from vlmfast.causal.tracing.arrays import save_trace_arrays, trace_arrays
from vlmfast.causal.tracing.config import TraceConfig
from vlmfast.causal.tracing.prepare import PreparedTrace, prepare_counts, prepare_trace
from vlmfast.causal.tracing.result import TraceNull, TraceResult
from vlmfast.causal.tracing.trace import restore_sets, trace

__all__ = [
    "TRACE_KINDS",
    "PreparedTrace",
    "TraceConfig",
    "TraceNull",
    "TraceResult",
    "prepare_counts",
    "prepare_trace",
    "restore_sets",
    "save_trace_arrays",
    "trace",
    "trace_arrays",
]
