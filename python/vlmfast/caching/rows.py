"""Turning hook outputs of a batch into store rows (token selection, flattening).

``positions`` picks which tokens of a token-level hook ([B, T, ...]) become rows:

- ``all``: every token (text: only real tokens, up to and including EOT; padding is dropped);
- ``cls`` / ``eot`` / ``pooled``: each tower's summary token: the image CLS token
  (position 0) and the text EOT token (argmax token id). ``pooled`` falls back to the
  token mean (position -1) for an image tower without a CLS token (SigLIP); ``cls`` and
  ``eot`` refuse such a tower;
- ``mean``: the mean over tokens (text: over real tokens), position -1.

Hooks without a token dimension (``pooled``, ``embed``) give one row per sample at
position -1 whatever ``positions`` says. Per-head hooks ([B, T, H, d]) are flattened
to width H*d. ``attn.pattern`` is not a row activation and is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmfast.errors import InputError

POSITIONS = ("cls", "eot", "pooled", "all", "mean")


@dataclass
class TowerRows:
    """Rows of one hook for one batch."""

    rows: torch.Tensor
    """[n, width] activations."""
    sample: torch.Tensor
    """int64 sample id per row."""
    position: torch.Tensor
    """int32 token position per row (-1: pooled / mean / embedding)."""


def is_token_hook(hook: str) -> bool:
    """Whether a hook's output has a token dimension (dimension 1)."""
    point = hook.split(".", 1)[1] if "." in hook else hook
    return point not in ("pooled", "embed") and not point.startswith("pool.")


def hook_rows(
    hook: str,
    value: torch.Tensor,
    sample_ids: torch.Tensor,
    positions: str,
    *,
    text_lengths: torch.Tensor | None,
    has_cls: bool,
) -> TowerRows:
    """Returns the rows ``hook`` contributes for a batch (see the module docs), with their
    sample ids and token positions (-1: a pooled or mean row), as :class:`TowerRows`.

    ``text_lengths``: per text sample, the number of real tokens (EOT index + 1).

    Raises:
        InputError: an unknown ``positions``, an attention-pattern hook, a text hook
            without ``text_lengths``, or ``positions="cls"`` on a tower without a CLS token.
    """
    if positions not in POSITIONS:
        raise InputError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    if hook.endswith("attn.pattern"):
        raise InputError(f"{hook}: attention patterns are not row activations; cache another hook")
    b = value.shape[0]
    x = value.detach()
    if not is_token_hook(hook) or x.ndim == 2:
        return TowerRows(x.reshape(b, -1), sample_ids, torch.full((b,), -1, dtype=torch.int32))
    x = x.reshape(b, x.shape[1], -1)  # flatten heads
    t = x.shape[1]
    is_text = hook.startswith("text.")
    if is_text:
        if text_lengths is None:
            raise InputError(f"{hook}: text hook without token ids")
        lengths = text_lengths.to(torch.long)
    else:
        lengths = torch.full((b,), t, dtype=torch.long)
    if positions == "all":
        pos = torch.arange(t)
        mask = pos[None, :] < lengths[:, None]
        return TowerRows(
            x[mask],
            sample_ids[:, None].expand(b, t)[mask],
            pos[None, :].expand(b, t)[mask].to(torch.int32),
        )
    summary_pos: torch.Tensor | None
    if is_text:
        summary_pos = lengths - 1
    elif has_cls:
        summary_pos = torch.zeros(b, dtype=torch.long)
    elif positions == "pooled":
        summary_pos = None
    else:
        raise InputError(
            f"{hook}: positions={positions!r} needs a CLS token, which this image tower lacks; "
            "use pooled, mean or all"
        )
    if positions == "mean" or summary_pos is None:
        mask = (torch.arange(t)[None, :] < lengths[:, None]).to(x.dtype)
        mean = (x * mask[..., None]).sum(1) / lengths[:, None].to(x.dtype)
        return TowerRows(mean, sample_ids, torch.full((b,), -1, dtype=torch.int32))
    picked = x[torch.arange(b), summary_pos]
    return TowerRows(picked, sample_ids, summary_pos.to(torch.int32))
