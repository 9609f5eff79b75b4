"""SAELens ``jumprelu`` directories as vlmfast JumpReLU SAEs.

SAELens (v6 ``save_model``) writes a JumpReLU SAE as ``cfg.json`` (``architecture:
"jumprelu"``, ``d_in``, ``d_sae``, ``apply_b_dec_to_input``, ``normalize_activations``)
+ ``sae_weights.safetensors`` with SAELens' four tensors and ``threshold [d_sae]``; its
encode is ``relu(pre) * (pre > threshold)``, ``pre = (x - b_dec?) @ W_enc + b_enc``.
SAELens saves its BatchTopK SAEs in the same layout (the learned threshold per latent),
and so does vlmfast for ``batchtopk``, ``matryoshka`` and ``jumprelu``: a vlmfast
directory keeps its own architecture (:meth:`TopKSAE.load`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

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
