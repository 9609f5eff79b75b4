"""Reading other toolkits' SAE checkpoints into plain tensors (vlmfast's orientation).

Each reader returns a :class:`PeerWeights`: the four tensors of a top-k SAE, one row per
latent, plus where the encoder applies the decoder bias. The formats, as each package
writes them (read from their sources; the test fixtures were written by the packages):

- **SAELens** (v6 ``SAE.save_model``, and pre-6 directories): ``cfg.json`` (``architecture``,
  ``d_in``, ``d_sae``, ``k``, ``apply_b_dec_to_input``, ``normalize_activations``,
  ``rescale_acts_by_decoder_norm``) + ``sae_weights.safetensors`` with ``W_enc
  [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]``. Top-k
  encode: ``relu(topk((x - b_dec?) @ W_enc + b_enc))`` (times ``|W_dec_i|`` before the
  top-k when ``rescale_acts_by_decoder_norm``, divided back out in the decode).
- **sparsify** (EleutherAI, ``SparseCoder.save_to_disk``, one folder per hook):
  ``cfg.json`` (``activation``, ``k``, ``num_latents`` or ``expansion_factor``, ``d_in``,
  ``transcode``, ``skip_connection``) + ``sae.safetensors`` with ``encoder.weight
  [n, d_in]``, ``encoder.bias``, ``W_dec [n, d_in]``, ``b_dec``. Encode
  ``topk(relu((x - b_dec) @ encoder.weight.T + encoder.bias))``.
- **saev** (``saev.nn.modeling.dump``): one file, a JSON header line (``schema``, ``cfg``
  with ``d_model``, ``d_sae``, ``activation`` = ``{"cls": "TopK", "params": {"top_k":
  ...}}``) followed by ``torch.save(state_dict)`` with ``W_enc [d_model, d_sae]``,
  ``b_enc``, ``W_dec [d_sae, d_model]``, ``b_dec``. Encode ``x @ W_enc + b_enc`` (no
  ``b_dec`` subtracted), then the top-k keeps the k largest pre-activations *without* a
  ReLU (vlmfast's top-k zeroes negative ones; they differ only on a row with fewer than
  k positive pre-activations).
- **ViT-Prisma** (``SparseAutoencoder.save_model``): a ``.pt`` holding ``{"cfg":
  VisionModelSAERunnerConfig, "state_dict": ...}`` (or weights alone with a
  ``config.json`` beside them); config ``d_in``, ``expansion_factor`` (``d_sae = d_in *
  expansion_factor``), ``architecture``, ``activation_fn_str``, ``activation_fn_kwargs``,
  ``normalize_activations``, ``is_transcoder``; tensors as SAELens'. Encode
  ``relu(topk((x - b_dec) @ W_enc + b_enc))``. The pickled config is read by a restricted
  unpickler (tensors, containers, and ViT-Prisma's own classes as plain attribute bags);
  ViT-Prisma need not be installed (:mod:`vlmfast.sae.peers_prisma`).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from vlmfast.errors import InputError, ShapeError

SUPPORTED = {
    "saelens": "architecture 'topk', 'jumprelu' or 'batchtopk'",
    "sparsify": "activation 'topk' (not a transcoder, no skip connection)",
    "saev": "activation TopK",
    "prisma": "architecture 'standard' with activation_fn_str 'topk', not a transcoder",
}
"""What each loader accepts (vlmfast has top-k SAEs and threshold SAEs in jumprelu form)."""

_RUNTIME_NORMS = ("constant_norm_rescale", "layer_norm")


class UnsupportedSAEError(InputError):
    """A checkpoint of an architecture vlmfast does not have (the message names it)."""


@dataclass
class PeerWeights:
    """A top-k SAE read from a checkpoint, one row per latent, float32 on the CPU."""

    source: str
    """The file the weights came from (named in errors)."""
    w_enc: torch.Tensor
    """``[n_latents, d_in]`` encoder rows."""
    b_enc: torch.Tensor
    """``[n_latents]``."""
    w_dec: torch.Tensor
    """``[n_latents, d_in]`` decoder rows."""
    b_dec: torch.Tensor
    """``[d_in]``."""
    k: int
    """Active latents per row."""
    b_dec_in_encoder: bool = True
    """Whether the encoder subtracts ``b_dec`` from its input first (vlmfast's form)."""
    hook: str = ""
    model: str = ""


def unsupported(package: str, source: Path | str, found: str) -> UnsupportedSAEError:
    """The error for a ``package`` checkpoint at ``source`` whose architecture is ``found``."""
    return UnsupportedSAEError(
        f"{source}: {package} checkpoint of architecture {found}, which vlmfast does not "
        f"have; vlmfast loads top-k and JumpReLU-form SAEs ({package}: {SUPPORTED[package]})"
    )


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``InputError`` naming the file when absent or not an object."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def int_key(cfg: dict[str, Any], key: str, source: Path | str) -> int:
    """``cfg[key]`` as a positive int; ``InputError`` naming ``source`` and ``key`` otherwise."""
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{source}: config key {key!r} must be a positive integer, got {value!r}")
    return value


def check_shapes(
    source: Path | str,
    tensors: dict[str, torch.Tensor],
    expected: dict[str, tuple[int, ...]],
    config_says: str,
) -> None:
    """Raise ``ShapeError`` (naming ``source`` and the key) for a missing or misshapen tensor."""
    for key, shape in expected.items():
        if key not in tensors:
            raise InputError(f"{source}: tensor {key!r} is missing (have {sorted(tensors)})")
        if tuple(tensors[key].shape) != shape:
            raise ShapeError(
                f"{source}: tensor {key!r} has shape {list(tensors[key].shape)} but the "
                f"config ({config_says}) implies {list(shape)}"
            )


# ------------------------------------------------------------------ SAELens


def saelens_architecture(cfg: dict[str, Any]) -> str:
    """The architecture SAELens itself would read from ``cfg`` (pre-6 configs included)."""
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    try:
        major = int(str(version).split(".")[0]) if version else 0
    except ValueError:
        major = 0
    if major >= 6:
        return str(cfg.get("architecture", "standard"))
    act = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if act == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        return "topk"
    return str(cfg.get("architecture", "standard"))


def _saelens_k(cfg: dict[str, Any], source: Path) -> int:
    if "k" in cfg:
        return int_key(cfg, "k", source)
    return int_key(cfg.get("activation_fn_kwargs") or {}, "k", f"{source} activation_fn_kwargs")


def read_saelens(root: Path) -> PeerWeights:
    """A SAELens top-k SAE directory (``cfg.json`` + ``sae_weights.safetensors``)."""
    cfg_path = root / "cfg.json"
    cfg = read_json(cfg_path)
    arch = saelens_architecture(cfg)
    if arch != "topk":
        raise unsupported("saelens", cfg_path, repr(arch))
    norm = cfg.get("normalize_activations", "none")
    if norm in _RUNTIME_NORMS:
        raise unsupported("saelens", cfg_path, f"'topk' with normalize_activations={norm!r}")
    if norm == "expected_average_only_in":
        warnings.warn(
            f"{cfg_path}: normalize_activations='expected_average_only_in': like SAELens' "
            "load_from_disk, the loaded SAE expects inputs already scaled by the training "
            "scaling factor (not stored in this directory)",
            stacklevel=3,
        )
    d_in, d_sae = int_key(cfg, "d_in", cfg_path), int_key(cfg, "d_sae", cfg_path)
    weights = root / "sae_weights.safetensors"
    if not weights.is_file():
        raise InputError(f"{root}: no sae_weights.safetensors (is this a SAELens directory?)")
    t = {name: value.float() for name, value in load_file(str(weights)).items()}
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    check_shapes(weights, t, expected, f"{cfg_path.name}: d_in={d_in}, d_sae={d_sae}")
    w_enc, b_enc, w_dec = t["W_enc"].t().contiguous(), t["b_enc"], t["W_dec"]
    if cfg.get("rescale_acts_by_decoder_norm"):
        norms = w_dec.double().norm(dim=1)
        w_enc = (w_enc.double() * norms[:, None]).float()
        b_enc = (b_enc.double() * norms).float()
        w_dec = (w_dec.double() / norms[:, None]).float()
    raw_meta = cfg.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    return PeerWeights(
        source=str(weights),
        w_enc=w_enc,
        b_enc=b_enc,
        w_dec=w_dec,
        b_dec=t["b_dec"],
        k=_saelens_k(cfg, cfg_path),
        b_dec_in_encoder=bool(cfg.get("apply_b_dec_to_input", True)),
        hook=str(meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or ""),
        model=str(meta.get("model_name") or cfg.get("model_name") or ""),
    )


# ------------------------------------------------------------------ sparsify


def _sparsify_hooks(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "cfg.json").is_file())


def read_sparsify(root: Path, hook: str | None = None) -> PeerWeights:
    """A sparsify SAE folder (``cfg.json`` + ``sae.safetensors``), or ``root/hook``."""
    folder = root / hook if hook else root
    cfg_path = folder / "cfg.json"
    if not cfg_path.is_file():
        hooks = _sparsify_hooks(folder)
        if hooks:
            raise InputError(
                f"{folder}: a sparsify run with one SAE per hook; name one as "
                f"'sparsify:{folder}:HOOK' (hooks: {', '.join(hooks)})"
            )
        raise InputError(f"{folder}: no cfg.json (not an SAE folder, nor a run of them)")
    cfg = read_json(cfg_path)
    if cfg.get("transcode"):
        raise unsupported("sparsify", cfg_path, "'transcoder' (transcode=true)")
    if cfg.get("skip_connection"):
        raise unsupported("sparsify", cfg_path, "with a skip connection (skip_connection=true)")
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise unsupported("sparsify", cfg_path, f"activation={activation!r}")
    d_in = int_key(cfg, "d_in", cfg_path)
    n = cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32))
    weights = folder / "sae.safetensors"
    if not weights.is_file():
        raise InputError(f"{folder}: no sae.safetensors next to cfg.json")
    t = {name: value.float() for name, value in load_file(str(weights)).items()}
    expected = {"encoder.weight": (n, d_in), "encoder.bias": (n,), "W_dec": (n, d_in)}
    expected["b_dec"] = (d_in,)
    check_shapes(weights, t, expected, f"{cfg_path.name}: d_in={d_in}, num_latents={n}")
    return PeerWeights(
        source=str(weights),
        w_enc=t["encoder.weight"],
        b_enc=t["encoder.bias"],
        w_dec=t["W_dec"],
        b_dec=t["b_dec"],
        k=int_key(cfg, "k", cfg_path),
        hook=hook or folder.name,
    )


# ------------------------------------------------------------------ saev


def _saev_activation(header: dict[str, Any], source: Path) -> tuple[str, dict[str, Any]]:
    """``(activation class name, its parameters)`` of any saev header schema."""
    if "schema" not in header:
        return "Relu (pre-schema checkpoint)", {}
    cfg = header.get("cfg")
    if not isinstance(cfg, dict):
        raise InputError(f"{source}: saev header has no 'cfg' object")
    cls = header.get("cls")
    if cls in ("Relu", "TopK", "BatchTopK"):  # schema 1, first form
        return str(cls), {"top_k": cfg.get("top_k", 32)}
    act = cfg.get("activation")
    if not isinstance(act, dict) or "cls" not in act:
        raise InputError(f"{source}: saev header cfg has no 'activation' {{cls, params}}")
    return str(act["cls"]), dict(act.get("params") or {})


def read_saev(path: Path) -> PeerWeights:
    """A saev checkpoint: a JSON header line, then ``torch.save(state_dict)``."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with path.open("rb") as fd:
        first, rest = fd.readline(), fd.read()
    try:
        header = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not a saev checkpoint (no JSON header line)") from exc
    schema = header.get("schema")
    if schema is not None and (not isinstance(schema, int) or not 1 <= schema <= 5):
        raise InputError(f"{path}: saev header schema {schema!r} is not one of 1..5")
    name, params = _saev_activation(header, path)
    if name != "TopK":
        raise unsupported("saev", path, repr(name))
    cfg = dict(header["cfg"])
    d_key = "d_model" if "d_model" in cfg else "d_vit"
    d_in = int_key(cfg, d_key, path)
    n = cfg.get("d_sae") or d_in * int_key(cfg, "exp_factor", path)
    k = int_key(params, "top_k", f"{path} activation params")
    state = torch.load(io.BytesIO(rest), map_location="cpu", weights_only=True)
    t = {key: value.float() for key, value in state.items()}
    expected = {"W_enc": (d_in, n), "W_dec": (n, d_in), "b_enc": (n,), "b_dec": (d_in,)}
    check_shapes(path, t, expected, f"header: {d_key}={d_in}, d_sae={n}")
    return PeerWeights(
        source=str(path),
        w_enc=t["W_enc"].t().contiguous(),
        b_enc=t["b_enc"],
        w_dec=t["W_dec"],
        b_dec=t["b_dec"],
        k=min(k, n),
        b_dec_in_encoder=False,
    )
