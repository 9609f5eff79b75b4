"""Interventions: edits applied to hook values during a forward, composable and batched.

Protocol (write your own, e.g. an SAE splice, by subclassing ``Intervention``)::

    class Splice(Intervention):
        def __init__(self, hook, sae):
            super().__init__(hook)
            self.sae = sae

        def apply(self, name, x):          # x: the hook's value, e.g. [B, T, d]
            return self.sae.decode(*self.sae.encode(x))   # same shape as x

- ``hook`` is a hook name or a glob; ``targets(hook_points)`` resolves it (unknown names
  raise ``HookNameError`` with close matches).
- ``apply(name, x)`` gets the current value at one hook and returns a tensor of the same
  shape (a different shape raises ``ShapeError``). Interventions at the same hook run in
  the order given; the cache records the value after all of them.
- Batching: every built-in intervention takes ``rows=`` (target batch rows, default all)
  and selectors ``positions=``, ``heads=``, ``neurons=`` (the last dimension: neurons of
  ``mlp.post``, residual dimensions, ``d_head`` dimensions). A selector is ``None`` (all),
  an int, a sequence of ints (same for every row) or ``PerRow(...)`` (a different choice
  per row), so one forward can run many different edits, one per batch row.

Modules: ``base`` (``Intervention``, ``SupportsIntervention``), ``selectors`` (``PerRow``,
``Selector``), ``sources`` (where patched values come from), ``patch`` (``Patch``,
``FreezeLayerNorm``), ``ablate`` (``Ablate``), ``additive`` (``Steer``, ``Noise``),
``capture`` (``CaptureGrad``).
"""

from __future__ import annotations

from vlmfast.models.interventions.ablate import Ablate
from vlmfast.models.interventions.additive import Noise, Steer
from vlmfast.models.interventions.base import Intervention, SupportsIntervention
from vlmfast.models.interventions.capture import CaptureGrad
from vlmfast.models.interventions.patch import FreezeLayerNorm, Patch
from vlmfast.models.interventions.selectors import PerRow, Selector

__all__ = [
    "Ablate",
    "CaptureGrad",
    "FreezeLayerNorm",
    "Intervention",
    "Noise",
    "Patch",
    "PerRow",
    "Selector",
    "Steer",
    "SupportsIntervention",
]
