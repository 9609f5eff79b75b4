"""Reading ViT-Prisma SAE checkpoints (a pickled config inside a ``.pt``) without ViT-Prisma.

ViT-Prisma's ``SparseAutoencoder.save_model`` writes ``torch.save({"cfg":
VisionModelSAERunnerConfig, "state_dict": ...})``; its Hugging Face uploads hold the
weights alone with a ``config.json`` beside them. Both are read here; the format is
described in :mod:`vlmfast.sae.peers`. The pickled config is read by a restricted
unpickler: tensors, containers and dtypes as usual, ViT-Prisma's own classes as plain
attribute bags, anything else refused.
"""

from __future__ import annotations

import pickle
import types
from pathlib import Path
from typing import Any

import torch

from vlmfast.errors import InputError
from vlmfast.sae.peers import PeerWeights, check_shapes, int_key, read_json, unsupported

_RUNTIME_NORMS = ("constant_norm_rescale", "layer_norm")


class _Attributes:
    """A pickled object of a class not importable here (ViT-Prisma's), kept as its attributes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


_SAFE_GLOBALS = {("collections", "OrderedDict"), ("torch", "Size"), ("torch", "device")}


class _PrismaUnpickler(pickle.Unpickler):
    """Tensors, containers and dtypes as usual; ViT-Prisma classes as :class:`_Attributes`."""

    source = ""

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "vit_prisma":
            return type(name, (_Attributes,), {"__module__": module})
        if module == "torch._utils" and name.startswith("_rebuild_"):
            return super().find_class(module, name)
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise InputError(
            f"{self.source}: refusing to unpickle {module}.{name} (not a tensor, container "
            "or ViT-Prisma config)"
        )


def _prisma_pickle_module(source: Path) -> types.ModuleType:
    module = types.ModuleType("vlmfast_prisma_pickle")
    unpickler = type("Unpickler", (_PrismaUnpickler,), {"source": str(source)})
    module.Unpickler = unpickler  # type: ignore[attr-defined]
    module.load = pickle.load  # type: ignore[attr-defined]
    return module


def _prisma_parts(path: Path) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(config fields, state dict, where the config came from)`` of a ViT-Prisma file."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    obj = torch.load(
        path, map_location="cpu", weights_only=False, pickle_module=_prisma_pickle_module(path)
    )
    if isinstance(obj, dict) and "cfg" in obj and "state_dict" in obj:
        cfg = obj["cfg"]
        fields = dict(vars(cfg)) if not isinstance(cfg, dict) else dict(cfg)
        return fields, dict(obj["state_dict"]), f"{path.name} cfg"
    sidecar = path.parent / "config.json"
    if not sidecar.is_file():
        raise InputError(f"{path}: holds no 'cfg' and has no config.json beside it")
    return read_json(sidecar), dict(obj), str(sidecar)


def read_prisma(path: Path) -> PeerWeights:
    """A ViT-Prisma SAE ``.pt`` (config pickled inside, or a ``config.json`` beside it)."""
    cfg, state, cfg_source = _prisma_parts(path)
    arch = cfg.get("architecture", "standard")
    act = cfg.get("activation_fn_str", "relu")
    if cfg.get("is_transcoder"):
        raise unsupported("prisma", path, "'transcoder' (is_transcoder=True)")
    if arch != "standard" or act != "topk":
        raise unsupported("prisma", path, f"{arch!r} with activation_fn_str={act!r}")
    norm = cfg.get("normalize_activations")
    if norm in _RUNTIME_NORMS:
        raise unsupported("prisma", path, f"'standard' topk with normalize_activations={norm!r}")
    d_in = int_key(cfg, "d_in", cfg_source)
    n = cfg.get("d_sae") or d_in * int_key(cfg, "expansion_factor", cfg_source)
    k = int_key(cfg.get("activation_fn_kwargs") or {}, "k", f"{cfg_source} activation_fn_kwargs")
    t = {key: value.float() for key, value in state.items() if isinstance(value, torch.Tensor)}
    expected = {"W_enc": (d_in, n), "W_dec": (n, d_in), "b_enc": (n,), "b_dec": (d_in,)}
    check_shapes(path, t, expected, f"{cfg_source}: d_in={d_in}, d_sae={n}")
    hook = cfg.get("_custom_hook_point") or ""
    if not hook and "hook_point_layer" in cfg:
        hook = f"blocks.{cfg['hook_point_layer']}.{cfg.get('layer_subtype', '')}"
    return PeerWeights(
        source=str(path),
        w_enc=t["W_enc"].t().contiguous(),
        b_enc=t["b_enc"],
        w_dec=t["W_dec"],
        b_dec=t["b_dec"],
        k=k,
        hook=str(hook),
        model=str(cfg.get("model_name") or ""),
    )
