"""The files of a saved SAE: SAELens layout, sparsify import, and the incomplete-run marker.

A saved SAE is a directory with

- ``sae_weights.safetensors``: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
  ``b_enc [d_sae]``, ``b_dec [d_in]`` (SAELens names and shapes, float32), with any
  input scaling folded in (the weights act on raw activations);
- ``cfg.json``: SAELens fields (``architecture: "topk"``, ``d_in``, ``d_sae``, ``k``,
  ``hook_name``, ...) plus the full vlmfast config under ``"vlmfast"`` (its ``rows``:
  the token rows the SAE was trained on, see :mod:`vlmfast.sae.rows`);
- while training runs, ``INCOMPLETE``: written before anything else and removed when the
  run finished, so a run that failed or was stopped is never read as a result
  (:func:`check_complete`; ``--resume`` reads it on purpose).

This module reads and writes plain tensors and :class:`SAEConfig`; it knows nothing of
the ``TopKSAE`` module (``TopKSAE.save`` / ``TopKSAE.load`` build on it), which keeps
the package's imports one-way: ``config <- files <- model <- trainer <- checkpoint``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vlmfast.errors import InputError, ShapeError
from vlmfast.sae.config import SAEConfig

WEIGHTS_FILE = "sae_weights.safetensors"
SPARSIFY_WEIGHTS_FILE = "sae.safetensors"
CFG_FILE = "cfg.json"
TRAINER_STATE_FILE = "trainer_state.pt"
INCOMPLETE_FILE = "INCOMPLETE"
"""Marker of a training run that has not finished (removed at success)."""


@dataclass
class SAEFiles:
    """What a saved SAE holds, in the module's orientation (one row per latent)."""

    cfg: SAEConfig
    w_enc: torch.Tensor
    """``[n_latents, d_in]``."""
    w_dec: torch.Tensor
    """``[n_latents, d_in]``."""
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None = None
    """``[n_latents]`` inference thresholds (SAELens ``threshold``; threshold archs only)."""


# ---------------------------------------------------------------- incomplete runs


def mark_incomplete(path: str | Path, what: str = "vlmfast train-sae") -> None:
    """Creates ``path`` and marks it as the output of a run that has not finished."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE_FILE).write_text(
        f"{what} has not finished writing this folder; rerun it (or resume it).\n"
    )


def mark_complete(path: str | Path) -> None:
    """Removes the marker of :func:`mark_incomplete` (the run finished)."""
    (Path(path) / INCOMPLETE_FILE).unlink(missing_ok=True)


def is_incomplete(path: str | Path) -> bool:
    return (Path(path) / INCOMPLETE_FILE).exists()


def check_complete(path: str | Path) -> None:
    """Raises ``InputError('incomplete run: ...')`` for the folder of an unfinished run."""
    if is_incomplete(path):
        raise InputError(
            f"incomplete run: {path} (training did not finish; rerun train-sae, or continue "
            f"it with train-sae --resume; its {INCOMPLETE_FILE} file marks it)"
        )


# ---------------------------------------------------------------- writing


def write_sae_files(
    path: str | Path,
    cfg: SAEConfig,
    tensors: dict[str, torch.Tensor],
    *,
    input_scale: float,
    **extra_cfg: Any,
) -> Path:
    """Writes ``sae_weights.safetensors`` (``tensors`` in SAELens layout) and ``cfg.json``."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    # threshold archs infer as SAELens' jumprelu: relu(pre) * (pre > threshold)
    saelens_arch = "topk" if cfg.arch == "topk" else "jumprelu"
    payload: dict[str, Any] = {
        "architecture": saelens_arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.n_latents,
        "k": cfg.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "activation_fn_str": "topk" if saelens_arch == "topk" else "relu",
        "activation_fn_kwargs": {"k": cfg.k},
        "hook_name": cfg.hook,
        "model_name": cfg.model,
        "metadata": {"hook_name": cfg.hook, "model_name": cfg.model},
        "vlmfast": {**cfg.to_dict(), "input_scale_folded": input_scale},
        **extra_cfg,
    }
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS_FILE)
    (out / CFG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    return out


# ---------------------------------------------------------------- reading


def _read_cfg(path: Path) -> dict[str, Any]:
    cfg_path = path / CFG_FILE
    if not cfg_path.exists():
        raise InputError(f"{path}: no {CFG_FILE} next to the weights")
    data = json.loads(cfg_path.read_text())
    if not isinstance(data, dict):
        raise InputError(f"{cfg_path}: expected a JSON object")
    return data


def _k_from(cfg: dict[str, Any], path: Path) -> int:
    if isinstance(cfg.get("k"), int):
        return int(cfg["k"])
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if isinstance(kwargs, dict) and isinstance(kwargs.get("k"), int):
        return int(kwargs["k"])
    raise InputError(f"{path}/{CFG_FILE}: no 'k' (is this a top-k SAE?)")


def _read_tensors(
    root: Path, cfg: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(W_enc [n, d], W_dec [n, d], b_enc, b_dec, threshold or None)`` of either format."""
    if (root / WEIGHTS_FILE).exists():
        tensors = load_file(str(root / WEIGHTS_FILE))
        arch = cfg.get("architecture", "topk")
        if arch not in ("topk", "batchtopk", "jumprelu") and "vlmfast" not in cfg:
            raise InputError(f"{root}: architecture {arch!r} is not a top-k or jumprelu SAE")
        if "vlmfast" not in cfg and (
            arch == "batchtopk"
            or (arch == "jumprelu" and not cfg.get("apply_b_dec_to_input", True))
        ):
            # SAELens' BatchTopK training save (unfolded decoder norms, a scalar threshold)
            # and a JumpReLU that keeps b_dec off its input need the peer reader
            raise InputError(
                f"{root}: a SAELens {arch!r} checkpoint; load it with "
                f"vlmfast.sae.load('saelens:{root}'), which encodes exactly as SAELens does"
            )
        missing = {"W_enc", "W_dec", "b_enc", "b_dec"} - set(tensors)
        if missing:
            raise InputError(f"{root}/{WEIGHTS_FILE}: missing tensors {sorted(missing)}")
        w_enc, w_dec = tensors["W_enc"].t(), tensors["W_dec"]
        return w_enc, w_dec, tensors["b_enc"], tensors["b_dec"], tensors.get("threshold")
    if (root / SPARSIFY_WEIGHTS_FILE).exists():
        tensors = load_file(str(root / SPARSIFY_WEIGHTS_FILE))
        missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(tensors)
        if missing:
            raise InputError(f"{root}/{SPARSIFY_WEIGHTS_FILE}: missing {sorted(missing)}")
        return (
            tensors["encoder.weight"],
            tensors["W_dec"],
            tensors["encoder.bias"],
            tensors["b_dec"],
            None,
        )
    raise InputError(f"{root}: neither {WEIGHTS_FILE} nor {SPARSIFY_WEIGHTS_FILE} found")


def read_sae_files(path: str | Path, *, allow_incomplete: bool = False) -> SAEFiles:
    """Reads a SAELens/vlmfast (``sae_weights.safetensors``) or sparsify SAE folder.

    A folder marked :data:`INCOMPLETE_FILE` is refused ("incomplete run") unless
    ``allow_incomplete`` (resuming the run that wrote it).
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"SAE checkpoint {root} is not a directory")
    if not allow_incomplete:
        check_complete(root)
    cfg = _read_cfg(root)
    w_enc, w_dec, b_enc, b_dec, threshold = _read_tensors(root, cfg)
    n_latents, d_in = w_dec.shape
    if w_enc.shape != (n_latents, d_in) or b_enc.shape != (n_latents,) or b_dec.shape != (d_in,):
        raise ShapeError(
            f"{root}: inconsistent shapes W_enc^T {list(w_enc.shape)}, W_dec {list(w_dec.shape)},"
            f" b_enc {list(b_enc.shape)}, b_dec {list(b_dec.shape)}"
        )
    sae_cfg = _sae_config(root, cfg, d_in, n_latents)
    declared = cfg.get("d_in")
    if isinstance(declared, int) and declared != d_in:
        raise ShapeError(f"{root}: cfg.json says d_in={declared} but the weights have {d_in}")
    check_threshold(root / WEIGHTS_FILE, sae_cfg, threshold)
    return SAEFiles(sae_cfg, w_enc, w_dec, b_enc, b_dec, threshold)


def _sae_config(root: Path, cfg: dict[str, Any], d_in: int, n_latents: int) -> SAEConfig:
    """The SAEConfig of a folder: the saved vlmfast one, else built from SAELens fields."""
    saved = cfg.get("vlmfast")
    try:
        if isinstance(saved, dict):
            return SAEConfig.from_dict({**saved, "d_in": d_in, "n_latents": n_latents})
        raw_meta = cfg.get("metadata")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        hook = str(cfg.get("hook_name") or meta.get("hook_name") or cfg.get("hookpoint") or "")
        if cfg.get("architecture") == "jumprelu":  # no k in SAELens' jumprelu: informational
            k = _k_from(cfg, root) if "k" in cfg else 1
            return SAEConfig(d_in=d_in, n_latents=n_latents, k=k, hook=hook, arch="jumprelu")
        return SAEConfig(d_in=d_in, n_latents=n_latents, k=_k_from(cfg, root), hook=hook)
    except InputError as err:
        raise InputError(f"{root}/{CFG_FILE}: {err}") from err


def check_threshold(path: Path, cfg: SAEConfig, threshold: torch.Tensor | None) -> None:
    """Raises InputError/ShapeError (naming ``path`` and the key) when the ``threshold``
    tensor disagrees with ``cfg.arch``: missing for a threshold arch, present for topk,
    not ``[n_latents]``, or not one value for BatchTopK / Matryoshka."""
    if cfg.arch == "topk":
        if threshold is not None:
            raise InputError(
                f"{path}: has a 'threshold' tensor but cfg.json says arch 'topk'"
                " (a jumprelu/batchtopk checkpoint with the wrong cfg.json?)"
            )
        return
    if threshold is None:
        raise InputError(
            f"{path}: cfg.json says arch {cfg.arch!r} but there is no 'threshold' tensor"
        )
    if threshold.shape != (cfg.n_latents,):
        raise ShapeError(
            f"{path}: 'threshold' is {list(threshold.shape)}, expected [{cfg.n_latents}] (d_sae)"
        )
    if cfg.arch != "jumprelu" and threshold.numel() and bool((threshold != threshold[0]).any()):
        raise InputError(
            f"{path}: arch {cfg.arch!r} has one global threshold but 'threshold' holds several values"
        )
