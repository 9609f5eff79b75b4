"""SAELens threshold SAEs as vlmfast ones: ``jumprelu`` folders, BatchTopK checkpoints.

SAELens (v6 ``save_model``) writes a JumpReLU SAE as ``cfg.json`` (``architecture:
"jumprelu"``, ``d_in``, ``d_sae``, ``apply_b_dec_to_input``, ``normalize_activations``)
+ ``sae_weights.safetensors`` with SAELens' four tensors and ``threshold [d_sae]``; its
encode is ``relu(pre) * (pre > threshold)``, ``pre = (x - b_dec?) @ W_enc + b_enc``.
SAELens' BatchTopK SAEs come in two forms. Its inference save (``save_inference_model``,
what its training runner writes at the end) is this same ``jumprelu`` layout, every
latent's threshold the learned global one; vlmfast loads it as SAELens does, as a
``jumprelu`` SAE (same encode). Its training checkpoint (``save_model`` of a
``BatchTopKTrainingSAE``: ``architecture: "batchtopk"``, ``k``, ``topk_threshold`` a
scalar, usually ``rescale_acts_by_decoder_norm``) loads as a vlmfast ``batchtopk`` SAE
whose inference encode is SAELens' inference form of it (decoder norms folded in,
threshold ``topk_threshold``): :func:`load_saelens_batchtopk`. vlmfast itself writes
``batchtopk``, ``matryoshka`` and ``jumprelu`` in the ``jumprelu`` layout: a vlmfast
directory keeps its own architecture (:meth:`TopKSAE.load`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from vlmfast.errors import InputError
from vlmfast.sae.config import SAEConfig
from vlmfast.sae.files import CFG_FILE, WEIGHTS_FILE
from vlmfast.sae.model import TopKSAE
from vlmfast.sae.peers import check_shapes, int_key, read_json, unsupported


def load_saelens_jumprelu(root: Path, *, device: str | torch.device = "cpu") -> TopKSAE:
    """A JumpReLU :class:`TopKSAE` encoding as the SAELens ``jumprelu`` folder ``root`` does.

    ``b_dec`` is folded into ``b_enc`` when SAELens' encoder does not subtract it. Raises
    UnsupportedSAEError for runtime input normalisation or ``rescale_acts_by_decoder_norm``,
    ShapeError / InputError (naming the file and the key) for tensors the config does not
    imply.
    """
    cfg_path = root / CFG_FILE
    cfg = read_json(cfg_path)
    if "vlmfast" in cfg:
        return TopKSAE.load(root, device=device)
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise unsupported("saelens", cfg_path, f"'jumprelu' with normalize_activations={norm!r}")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise unsupported("saelens", cfg_path, "'jumprelu' with rescale_acts_by_decoder_norm")
    d_in, d_sae = int_key(cfg, "d_in", cfg_path), int_key(cfg, "d_sae", cfg_path)
    weights = root / WEIGHTS_FILE
    t = {name: value.float() for name, value in load_file(str(weights)).items()}
    expected = {
        "W_enc": (d_in, d_sae),
        "W_dec": (d_sae, d_in),
        "b_enc": (d_sae,),
        "b_dec": (d_in,),
        "threshold": (d_sae,),
    }
    check_shapes(weights, t, expected, f"{cfg_path.name}: d_in={d_in}, d_sae={d_sae}")
    w_enc = t["W_enc"].t().contiguous()
    b_enc = t["b_enc"].double()
    if not cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc + w_enc.double() @ t["b_dec"].double()
    raw_meta = cfg.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    hook = str(meta.get("hook_name") or cfg.get("hook_name") or "")
    k = cfg["k"] if isinstance(cfg.get("k"), int) and 1 <= cfg["k"] <= d_sae else 1
    sae_cfg = SAEConfig(d_in, d_sae, k, hook=hook, arch="jumprelu", b_dec_init="zeros")
    sae = TopKSAE.from_config(sae_cfg)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.b_enc.copy_(b_enc.float())
        sae.W_dec.copy_(t["W_dec"])
        sae.b_dec.copy_(t["b_dec"])
        sae.set_threshold_(t["threshold"])
    return sae.to(device)


def _batchtopk_k(cfg: dict[str, Any], cfg_path: Path, d_sae: int) -> int:
    """SAELens' ``k`` (a float there: the mean active latents) as vlmfast's whole ``k``."""
    k = cfg.get("k")
    whole = isinstance(k, (int, float)) and not isinstance(k, bool) and float(k).is_integer()
    if whole and isinstance(k, (int, float)) and 1 <= int(k) <= d_sae:
        return int(k)
    raise InputError(
        f"{cfg_path}: config key 'k'={k!r}: vlmfast's batchtopk needs a whole number of"
        f" active latents per row in [1, {d_sae}]"
    )


def load_saelens_batchtopk(root: Path, *, device: str | torch.device = "cpu") -> TopKSAE:
    """A ``batchtopk`` :class:`TopKSAE` encoding as SAELens' inference form of the BatchTopK
    training checkpoint ``root``: ``relu(pre) * (pre > topk_threshold)`` with the decoder
    norms folded into the encoder (``rescale_acts_by_decoder_norm``), as its
    ``save_inference_model`` does.

    Raises UnsupportedSAEError for runtime input normalisation, InputError for a ``k``
    that is not a whole number, ShapeError / InputError (naming the file and the key) for
    tensors the config does not imply.
    """
    cfg_path = root / CFG_FILE
    cfg = read_json(cfg_path)
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise unsupported("saelens", cfg_path, f"'batchtopk' with normalize_activations={norm!r}")
    d_in, d_sae = int_key(cfg, "d_in", cfg_path), int_key(cfg, "d_sae", cfg_path)
    k = _batchtopk_k(cfg, cfg_path, d_sae)
    weights = root / WEIGHTS_FILE
    t = {name: value.double() for name, value in load_file(str(weights)).items()}
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,)}
    expected.update(b_dec=(d_in,), topk_threshold=())
    check_shapes(weights, t, expected, f"{cfg_path.name}: d_in={d_in}, d_sae={d_sae}")
    w_enc, b_enc, w_dec = t["W_enc"].t(), t["b_enc"], t["W_dec"]
    if cfg.get("rescale_acts_by_decoder_norm"):
        norms = w_dec.norm(dim=1).clamp_min(1e-8)  # SAELens' get_W_dec_norm
        w_enc, b_enc, w_dec = w_enc * norms[:, None], b_enc * norms, w_dec / norms[:, None]
    if not cfg.get("apply_b_dec_to_input", True):
        b_enc = b_enc + w_enc @ t["b_dec"]
    raw_meta = cfg.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    hook = str(meta.get("hook_name") or cfg.get("hook_name") or "")
    sae_cfg = SAEConfig(d_in, d_sae, k, hook=hook, arch="batchtopk", b_dec_init="zeros")
    lr = cfg.get("topk_threshold_lr")  # SAELens' name for the threshold's EMA weight
    if isinstance(lr, (int, float)) and 0 < lr <= 1:
        sae_cfg = replace(sae_cfg, threshold_ema=float(lr))
    sae = TopKSAE.from_config(sae_cfg)
    with torch.no_grad():
        sae.W_enc.copy_(w_enc.float())
        sae.b_enc.copy_(b_enc.float())
        sae.W_dec.copy_(w_dec.float())
        sae.b_dec.copy_(t["b_dec"].float())
        sae.set_threshold_(t["topk_threshold"].float())
    return sae.to(device)
