"""A shared dictionary on disk: the SAE, the hooks it reads and the means it subtracts.

:func:`save_shared_sae` writes the SAE in the project's layout (``sae_weights.safetensors``
+ ``cfg.json``) with a ``crossmodal`` record in ``cfg.json`` (hooks, pooling, whether the
modality gap was removed) and, when it was, ``gap_means.safetensors`` (the image and text
mean rows subtracted before training); :func:`load_shared_sae` reads all of it back, so
:meth:`SharedSAE.encode` subtracts the same means at analysis time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.crossmodal.shared_dictionary import GapMeans
from vlmfast.errors import InputError

GAP_FILE = "gap_means.safetensors"
"""The per-modality means a gap-removed shared SAE subtracts (next to its weights)."""
CFG_KEY = "crossmodal"
"""Key of the shared-dictionary record in the SAE's ``cfg.json``."""

Array = npt.NDArray[np.float64]


@dataclass
class SharedSAE:
    """A shared SAE with the hooks it was trained on and the means it subtracts."""

    sae: Any
    """The :class:`vlmfast.sae.TopKSAE`."""
    image_hook: str
    text_hook: str
    gap_means: GapMeans | None = None
    """Means subtracted before encoding (None: the gap was kept)."""
    pool: str = "mean"

    def encode(self, rows: Any, modality: str) -> Array:
        """Returns the dense nonnegative codes ``[n, n_latents]`` (float64) of ``rows`` of ``modality``
        (``"image"`` / ``"text"``), the recorded mean subtracted first when the gap was removed.

        Raises:
            InputError: ``modality`` is neither ``image`` nor ``text``.
        """
        if modality not in ("image", "text"):
            raise InputError(f"modality must be 'image' or 'text', got {modality!r}")
        x = np.asarray(rows, dtype=np.float64)
        if self.gap_means is not None:
            x = x - (self.gap_means.image_mean if modality == "image" else self.gap_means.text_mean)
        dev = self.sae.W_dec.device
        out = np.zeros((x.shape[0], int(self.sae.n_latents)), dtype=np.float64)
        with torch.no_grad():
            for start in range(0, x.shape[0], 8192):
                xt = torch.as_tensor(x[start : start + 8192], dtype=torch.float32, device=dev)
                val, idx = self.sae.encode(xt)
                block = np.zeros((xt.shape[0], out.shape[1]), dtype=np.float64)
                np.put_along_axis(block, idx.long().cpu().numpy(), val.double().cpu().numpy(), 1)
                out[start : start + xt.shape[0]] = block
        return np.maximum(out, 0.0)


def save_shared_sae(shared: SharedSAE, path: str | Path) -> Path:
    """Writes the SAE (``sae_weights.safetensors`` + ``cfg.json`` with a ``crossmodal``
    record) and, when the gap was removed, ``gap_means.safetensors``; returns the folder."""
    from safetensors.numpy import save_file

    from vlmfast.sae.files import mark_complete, mark_incomplete

    out = Path(path)
    mark_incomplete(out, "vlmfast train_shared_sae")
    gm = shared.gap_means
    record = {
        "image_hook": shared.image_hook,
        "text_hook": shared.text_hook,
        "pool": shared.pool,
        "remove_gap": gm is not None,
        "gap_means": GAP_FILE if gm is not None else None,
    }
    shared.sae.save(out, **{CFG_KEY: record})
    if gm is not None:
        save_file({"image_mean": gm.image_mean, "text_mean": gm.text_mean}, str(out / GAP_FILE))
    mark_complete(out)
    return out


def load_shared_sae(path: str | Path, *, device: str = "cpu") -> SharedSAE:
    """Returns the shared SAE saved by :func:`train_shared_sae`, with its hooks and recorded means.

    Raises:
        InputError: the folder holds no SAE, or an SAE without the ``crossmodal`` record
            (not a shared dictionary), or the record names a means file that is missing.
    """
    from safetensors.numpy import load_file

    from vlmfast.sae import TopKSAE

    root = Path(path)
    sae = TopKSAE.load(root, device=device)
    cfg = json.loads((root / "cfg.json").read_text())
    record = cfg.get(CFG_KEY)
    if not isinstance(record, dict):
        raise InputError(
            f"{root} is an SAE but not a shared dictionary (no {CFG_KEY!r} record in "
            "cfg.json); train one with vlmfast.crossmodal.train_shared_sae"
        )
    means = None
    if record.get("remove_gap"):
        f = root / str(record.get("gap_means") or GAP_FILE)
        if not f.exists():
            raise InputError(f"{root}: the gap was removed in training but {f.name} is missing")
        t = load_file(str(f))
        means = GapMeans(t["image_mean"].astype(np.float64), t["text_mean"].astype(np.float64))
    return SharedSAE(
        sae, str(record["image_hook"]), str(record["text_hook"]), means, str(record["pool"])
    )
