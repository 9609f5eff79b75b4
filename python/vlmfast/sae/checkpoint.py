"""SAE checkpoints: SAELens layout on disk, sparsify import, and resumable training state.

A saved SAE is a directory with

- ``sae_weights.safetensors``: ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
  ``b_enc [d_sae]``, ``b_dec [d_in]`` (SAELens names and shapes, float32), with any
  input scaling folded in (the weights act on raw activations);
- ``cfg.json``: SAELens fields (``architecture: "topk"``, ``d_in``, ``d_sae``, ``k``,
  ``hook_name``, ...) plus the full vlmfast config under ``"vlmfast"``;
- for training checkpoints also ``trainer_state.pt`` (optimizer moments, step, dead-latent
  counters, RNG, the unfolded biases) so a run resumes exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from vlmfast.errors import InputError, ShapeError
from vlmfast.sae.config import SAEConfig
from vlmfast.sae.model import TopKSAE

if TYPE_CHECKING:
    from vlmfast.sae.trainer import SAETrainer

WEIGHTS_FILE = "sae_weights.safetensors"
SPARSIFY_WEIGHTS_FILE = "sae.safetensors"
CFG_FILE = "cfg.json"
TRAINER_STATE_FILE = "trainer_state.pt"


def save_sae(sae: TopKSAE, path: str | Path, **extra_cfg: Any) -> Path:
    """Write ``sae`` (input scale folded in) to directory ``path``; returns it."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    scale = float(sae.input_scale)
    tensors = {
        "W_enc": sae.W_enc.detach().float().t().contiguous().cpu(),
        "W_dec": sae.W_dec.detach().float().contiguous().cpu(),
        "b_enc": (sae.b_enc.detach().double() / scale).float().cpu(),
        "b_dec": (sae.b_dec.detach().double() / scale).float().cpu(),
    }
    cfg = sae.cfg
    payload: dict[str, Any] = {
        "architecture": "topk",
        "d_in": cfg.d_in,
        "d_sae": cfg.n_latents,
        "k": cfg.k,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "rescale_acts_by_decoder_norm": False,
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": cfg.k},
        "hook_name": cfg.hook,
        "model_name": cfg.model,
        "metadata": {"hook_name": cfg.hook, "model_name": cfg.model},
        "vlmfast": {**cfg.to_dict(), "input_scale_folded": scale},
        **extra_cfg,
    }
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS_FILE)
    (out / CFG_FILE).write_text(json.dumps(payload, indent=2) + "\n")
    return out


def _read_cfg(path: Path) -> dict[str, Any]:
    cfg_path = path / CFG_FILE
    if not cfg_path.exists():
        raise InputError(f"{path}: no {CFG_FILE} next to the weights")
    data = json.loads(cfg_path.read_text())
    if not isinstance(data, dict):
        raise InputError(f"{cfg_path}: expected a JSON object")
    return data


def _k_from(cfg: dict[str, Any], path: Path) -> int:
    for key in ("k",):
        if isinstance(cfg.get(key), int):
            return int(cfg[key])
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if isinstance(kwargs, dict) and isinstance(kwargs.get("k"), int):
        return int(kwargs["k"])
    raise InputError(f"{path}/{CFG_FILE}: no 'k' (is this a top-k SAE?)")


def load_sae(path: str | Path, *, device: str | torch.device = "cpu") -> TopKSAE:
    """Load a SAELens/vlmfast (``sae_weights.safetensors``) or sparsify (``sae.safetensors``) SAE."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"SAE checkpoint {root} is not a directory")
    cfg = _read_cfg(root)
    if (root / WEIGHTS_FILE).exists():
        tensors = load_file(str(root / WEIGHTS_FILE))
        arch = cfg.get("architecture", "topk")
        if arch not in ("topk", "batchtopk") and "vlmfast" not in cfg:
            raise InputError(f"{root}: architecture {arch!r} is not a top-k SAE")
        w_enc = tensors["W_enc"].t()
        w_dec = tensors["W_dec"]
        b_enc, b_dec = tensors["b_enc"], tensors["b_dec"]
    elif (root / SPARSIFY_WEIGHTS_FILE).exists():
        tensors = load_file(str(root / SPARSIFY_WEIGHTS_FILE))
        missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(tensors)
        if missing:
            raise InputError(f"{root}/{SPARSIFY_WEIGHTS_FILE}: missing {sorted(missing)}")
        w_enc, b_enc = tensors["encoder.weight"], tensors["encoder.bias"]
        w_dec, b_dec = tensors["W_dec"], tensors["b_dec"]
    else:
        raise InputError(f"{root}: neither {WEIGHTS_FILE} nor {SPARSIFY_WEIGHTS_FILE} found")
    n_latents, d_in = w_dec.shape
    if w_enc.shape != (n_latents, d_in) or b_enc.shape != (n_latents,) or b_dec.shape != (d_in,):
        raise ShapeError(
            f"{root}: inconsistent shapes W_enc^T {list(w_enc.shape)}, W_dec {list(w_dec.shape)},"
            f" b_enc {list(b_enc.shape)}, b_dec {list(b_dec.shape)}"
        )
    saved = cfg.get("vlmfast")
    if isinstance(saved, dict):
        sae_cfg = SAEConfig.from_dict({**saved, "d_in": d_in, "n_latents": n_latents})
    else:
        hook = cfg.get("hook_name") or cfg.get("hookpoint") or ""
        sae_cfg = SAEConfig(d_in=d_in, n_latents=n_latents, k=_k_from(cfg, root), hook=str(hook))
    declared = cfg.get("d_in")
    if isinstance(declared, int) and declared != d_in:
        raise ShapeError(f"{root}: cfg.json says d_in={declared} but the weights have {d_in}")
    sae = TopKSAE.from_config(sae_cfg)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.W_dec.copy_(w_dec)
        sae.b_enc.copy_(b_enc)
        sae.b_dec.copy_(b_dec)
    sae.b_dec_initialised = True
    return sae.to(device)


def save_training_checkpoint(trainer: SAETrainer, path: str | Path) -> Path:
    """The SAE (folded) plus ``trainer_state.pt``; written so a crash mid-save keeps the old one."""
    out = save_sae(trainer.sae, path)
    tmp = out / (TRAINER_STATE_FILE + ".tmp")
    torch.save(trainer.state_dict(), tmp)
    tmp.replace(out / TRAINER_STATE_FILE)
    return out


def resume_trainer(
    path: str | Path, *, total_steps: int | None = None, expect_d_in: int | None = None
) -> SAETrainer:
    """Rebuild an :class:`SAETrainer` from a training checkpoint, optimizer state included."""
    from vlmfast.sae.config import TrainConfig
    from vlmfast.sae.trainer import SAETrainer

    root = Path(path)
    state_path = root / TRAINER_STATE_FILE
    if not state_path.exists():
        raise InputError(f"cannot resume from {root}: no {TRAINER_STATE_FILE}")
    sae = load_sae(root)
    if expect_d_in is not None and expect_d_in != sae.d_in:
        raise ShapeError(
            f"cannot resume {root}: the SAE has d_in={sae.d_in} but the data has d_in={expect_d_in}"
        )
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    trainer = SAETrainer(
        sae,
        TrainConfig.from_dict(state["train_cfg"]),
        total_steps=total_steps or int(state["total_steps"]),
        name=root.name,
    )
    trainer.load_state_dict(state)
    return trainer
