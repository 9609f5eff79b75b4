"""Activation patching sweeps: every single component of a tower, batched.

Public API: ``patch_heads``, ``patch_sweep`` (``sweep.py``; ``method="serial"`` is the
one-forward-per-component reference) and ``PatchConfig`` (``config.py``: its options).
"""

from __future__ import annotations

from vlmfast.causal.patching.config import PatchConfig
from vlmfast.causal.patching.sweep import patch_heads, patch_sweep

__all__ = ["PatchConfig", "patch_heads", "patch_sweep"]
