"""Batch-size limits shared by every causal tool, in one place.

A batched causal tool stacks many variants (patches, restorations, ablated circuits,
IG steps) along the batch dimension; ``max_rows`` caps the rows of one forward.
"""

from __future__ import annotations

DEFAULT_MAX_ROWS = 512
"""The most batch rows per forward of patching, tracing, attribution and circuits."""

INTERVENTION_MAX_ROWS = 2048
"""The default of ``concept_intervention`` / ``steering_sweep``: larger, because each
variant there is a whole eval set (256 images by default), so 512 rows would run only two
variants per forward and a null of 100 sets would take 50 forwards."""

CPU_CHUNK_ROWS = 256
"""Off a GPU, intervention variants are stacked into forwards of at most this many rows
(below ``max_rows``): a CPU gains nothing from wide batches and loses its caches to them
(``bench_steering.py``, 16 alphas x 8 colors of 32 images: 0.87 s at 256 rows per
forward, 1.26 s at 2,048)."""

__all__ = ["CPU_CHUNK_ROWS", "DEFAULT_MAX_ROWS", "INTERVENTION_MAX_ROWS"]
