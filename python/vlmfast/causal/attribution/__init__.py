"""Attribution patching (AtP, AtP*, integrated gradients) and its exact reference.

Public API: ``attribute`` (``attribute.py``: components, sign, completeness, methods),
``exact_effects`` (``exact.py``: the single-component patches it estimates, and the
false-negative null), ``AttributionResult`` / ``NullEstimate`` (``result.py``),
``AttributionConfig``, ``ATTRIBUTION_KINDS``, ``METHODS``, ``DIRECTIONS`` (``options.py``). ``capture.py`` is the
forward/backward plumbing (``Capture``, ``run_tower``) the circuit tools reuse.
"""

from __future__ import annotations

from vlmfast.causal.attribution.attribute import attribute
from vlmfast.causal.attribution.exact import exact_effects
from vlmfast.causal.attribution.options import (
    ATTRIBUTION_KINDS,
    DIRECTIONS,
    METHODS,
    AttributionConfig,
)
from vlmfast.causal.attribution.result import AttributionResult, NullEstimate

__all__ = [
    "ATTRIBUTION_KINDS",
    "DIRECTIONS",
    "METHODS",
    "AttributionConfig",
    "AttributionResult",
    "NullEstimate",
    "attribute",
    "exact_effects",
]
