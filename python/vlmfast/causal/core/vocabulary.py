"""The names the causal tools accept, in one torch-free place.

The front doors validate arguments against these (argparse choices, pipeline config
checks) before any model loads, so importing this module must not import torch.
"""

from __future__ import annotations

TOWERS = ("image", "text")

DIRECTIONS = ("denoising", "noising")
"""``denoising`` (the project's convention): base = corrupt, source = clean; ``noising``:
base = clean, source = corrupt."""

TRACE_KINDS = ("resid", "attn_out", "mlp_out", "heads")
"""What a restoration restores: ``blocks.L.resid_post`` at positions, the attention or MLP
output at positions over a window of layers, or ``attn.z`` of heads at every position."""

ATTRIBUTION_KINDS = ("resid", "heads", "neurons")
"""Component kinds attribution scores (``attribution.capture.KIND_POINT`` maps each to its hook)."""

ATTRIBUTION_METHODS = ("atp", "atp*", "ig")
"""Attribution estimators: attribution patching, AtP* and integrated gradients."""

__all__ = ["ATTRIBUTION_KINDS", "ATTRIBUTION_METHODS", "DIRECTIONS", "TOWERS", "TRACE_KINDS"]
