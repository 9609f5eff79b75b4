"""vlmfast: trace and test how CLIP-style vision-language models bind concepts to words.

The top-level names are imported lazily (PEP 562), so ``import vlmfast`` stays
cheap and has no side effects; ``vlmfast.load_pair`` pulls in torch on first use.

    import vlmfast as vf
    pair = vf.load_pair("synthetic:tiny")
    out = pair.run(images=px, texts=tok, cache=["image.blocks.*.attn.z"])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY_ATTRS: dict[str, str] = {
    "load_pair": "vlmfast.models",
    "HookedPair": "vlmfast.models",
    "RunOutput": "vlmfast.models",
    "Ablate": "vlmfast.models.interventions",
    "Patch": "vlmfast.models.interventions",
    "Steer": "vlmfast.models.interventions",
    "Noise": "vlmfast.models.interventions",
    "FreezeLayerNorm": "vlmfast.models.interventions",
}
_LAZY_MODULES = (
    "caching",
    "causal",
    "cli",
    "data",
    "errors",
    "models",
    "ops",
    "sae",
    "scoring",
    "stats",
    "store",
)

__all__ = sorted([*_LAZY_ATTRS, *_LAZY_MODULES, "__version__"])

if TYPE_CHECKING:
    from vlmfast import errors as errors


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRS:
        value = getattr(importlib.import_module(_LAZY_ATTRS[name]), name)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"vlmfast.{name}")
    else:
        raise AttributeError(f"module 'vlmfast' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
