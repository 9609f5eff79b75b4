"""Hooked two-tower models: every head, neuron and residual stream of CLIP and SigLIP.

import vlmfast as vf
pair = vf.load_pair("open_clip:ViT-B-32")
out = pair.run(images=px, texts=tok, cache=["image.blocks.*.attn.z"],
               interventions=[vf.Ablate("image.blocks.5.attn.z", heads=[3])])

Layers, bottom up: ``hook_names`` (hook names, globs, tensor layouts), ``interventions``
(edits at hooks), ``hooks`` (the per-run ``HookContext``), ``layers`` / ``towers``,
``weights`` (the internal weight format), ``pair`` (``HookedPair``), ``loading`` (open_clip
and transformers converters), ``registry`` (``load_pair``).
"""

from __future__ import annotations

from vlmfast.models.config import PairConfig, TowerConfig
from vlmfast.models.hooks import HookContext, resolve_hooks
from vlmfast.models.interventions import (
    Ablate,
    CaptureGrad,
    FreezeLayerNorm,
    Intervention,
    Noise,
    Patch,
    PerRow,
    Steer,
)
from vlmfast.models.loading.open_clip import convert_open_clip, from_open_clip
from vlmfast.models.pair import HookedPair, RunOutput
from vlmfast.models.registry import load_pair, supported_open_clip_archs
from vlmfast.models.towers import ImageTower, TextTower, Tower, TowerOutput

__all__ = [
    "Ablate",
    "CaptureGrad",
    "FreezeLayerNorm",
    "HookContext",
    "HookedPair",
    "ImageTower",
    "Intervention",
    "Noise",
    "PairConfig",
    "Patch",
    "PerRow",
    "RunOutput",
    "Steer",
    "TextTower",
    "Tower",
    "TowerConfig",
    "TowerOutput",
    "convert_open_clip",
    "from_open_clip",
    "load_pair",
    "resolve_hooks",
    "supported_open_clip_archs",
]
