"""The inputs of a circuit search: clean, corrupt, the mean's reference, the resample source."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import TOWERS, check_paired
from vlmfast.errors import InputError


def circuit_inputs(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any,
    corrupt_texts: Any,
    reference: dict[str, Any] | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor | None], dict[str, Tensor] | None]:
    """``(clean, corrupt or None per tower, reference or None)``; a causal EOT-pooled text
    tower's tokens cut after the last EOT (later positions cannot reach it; exact)."""
    img, txt = backend.as_inputs(pair, images, texts)
    c_img, c_txt = backend.as_inputs(pair, corrupt_images, corrupt_texts, need_both=False)
    if c_img is not None:
        check_paired(img, c_img, "images")
    if c_txt is not None:
        check_paired(txt, c_txt, "texts")
    ref: dict[str, Tensor] | None = None
    if reference is not None:
        if not isinstance(reference, dict) or not set(reference) <= {"images", "texts"}:
            raise InputError("reference must be {'images': px_ref, 'texts': tok_ref} (either)")
        r_img, r_txt = backend.as_inputs(
            pair, reference.get("images"), reference.get("texts"), need_both=False
        )
        if r_txt is not None and r_txt.shape[1] != txt.shape[1]:
            raise InputError(
                f"reference texts have {r_txt.shape[1]} tokens, the clean texts {txt.shape[1]}"
            )
        ref = {k: v for k, v in (("image", r_img), ("text", r_txt)) if v is not None}
    # a causal EOT-pooled text tower never reads positions after the last EOT
    cfg = pair.config.text
    if bool(cfg.causal) and cfg.pool == "eot":
        toks = [t for t in (txt, c_txt, ref.get("text") if ref else None) if t is not None]
        cut = max(int(t.argmax(-1).max()) for t in toks) + 1
        txt = txt[:, :cut]
        c_txt = c_txt[:, :cut] if c_txt is not None else None
        if ref and "text" in ref:
            ref["text"] = ref["text"][:, :cut]
    return {"image": img, "text": txt}, {"image": c_img, "text": c_txt}, ref


def resample_inputs(
    clean: dict[str, Tensor], corrupt: dict[str, Tensor | None], ablation: str
) -> tuple[dict[str, Tensor] | None, dict[str, str]]:
    """The ``"resample"`` ablation's source per tower and where it came from."""
    if ablation != "resample":
        return None, {}
    out: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    for t in TOWERS:
        c = corrupt[t]
        if c is not None:
            out[t], source[t] = c, "corrupt"
        else:
            if clean[t].shape[0] < 2:
                raise InputError(
                    f"ablation='resample' of the {t} tower needs corrupt {t} inputs or at "
                    "least 2 clean rows (it permutes the batch)"
                )
            out[t], source[t] = clean[t].roll(1, 0), "clean rolled by one row"
    return out, source


def ablation_detail(ablation: str, has_reference: bool) -> str:
    if ablation == "mean":
        where = "the reference= batch" if has_reference else "the clean batch"
        return f"mean activation over {where}, per position"
    if ablation == "resample":
        return "activation of the same row of the corrupt inputs (or the clean batch rolled)"
    return "zero"
