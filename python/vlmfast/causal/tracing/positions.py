"""Which token positions a trace corrupts and traces, and their labels.

Image tower: every token is traced, every patch corrupted by default (CLS and position
embeddings untouched). Text tower: the corrupted default is every token strictly
between SOT and EOT; in a causal tower with EOT pooling, positions after the last EOT
cannot reach the pooled token and are not traced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vlmfast.errors import InputError


def eot_positions(pair: Any, tokens: Tensor) -> Tensor | None:
    """Per-row index of the pooled EOT/EOS token, or None when the tower pools otherwise."""
    cfg = pair.config.text
    if cfg.pool == "eot":
        return tokens.argmax(dim=-1)
    if cfg.pool == "eos":
        return torch.eq(tokens, int(cfg.eos_token_id or 0)).int().argmax(dim=-1)
    return None


def traced_positions(pair: Any, tower: str, inputs: Tensor) -> list[int]:
    if tower == "image":
        return list(range(int(pair.config.image.n_tokens)))
    n = int(inputs.shape[1])
    eot = eot_positions(pair, inputs)
    if eot is not None and pair.config.text.causal:
        n = int(eot.max()) + 1  # later positions cannot reach the pooled token
    return list(range(n))


def corruption_mask(
    pair: Any, tower: str, inputs: Tensor, positions: Sequence[int] | Tensor | None
) -> tuple[Tensor, list[int]]:
    """Bool [B, T] of the corrupted positions, and the traced positions."""
    traced = traced_positions(pair, tower, inputs)
    n_rows = int(inputs.shape[0])
    if tower == "image":
        cfg = pair.config.image
        n_tok = int(cfg.n_tokens)
        mask = torch.zeros(n_rows, n_tok, dtype=torch.bool, device=inputs.device)
        if positions is None:
            mask[:, 1 if cfg.class_token else 0 :] = True
        else:
            mask = _mask_from(positions, n_rows, n_tok, inputs.device, "image tokens")
    else:
        n_tok = int(inputs.shape[1])
        eot = eot_positions(pair, inputs)
        if positions is None:
            start = 1 if pair.config.text.causal else 0
            idx = torch.arange(n_tok, device=inputs.device).view(1, -1)
            end = eot.view(-1, 1) if eot is not None else torch.full_like(idx[:, :1], n_tok)
            mask = (idx >= start) & (idx < end)
        else:
            mask = _mask_from(positions, n_rows, n_tok, inputs.device, "text tokens")
            if eot is not None:
                after = mask & (
                    torch.arange(n_tok, device=inputs.device).view(1, -1) > eot.view(-1, 1)
                )
                if bool(after.any()):
                    row, pos = (int(x) for x in torch.nonzero(after)[0])
                    raise InputError(
                        f"positions {pos} is after the EOT token of row {row} (EOT at "
                        f"{int(eot[row])}); allowed: 0..{int(eot[row])} for that row"
                    )
    if not bool(mask.any(dim=1).all()):
        row = int((~mask.any(dim=1)).nonzero()[0])
        raise InputError(
            f"no corruption set: positions selects no position of row {row} of the {tower} "
            "tower (a caption with no token between SOT and EOT, or an empty positions=)"
        )
    return mask, traced


def _mask_from(
    positions: Sequence[int] | Tensor, n_rows: int, n_tok: int, device: torch.device, what: str
) -> Tensor:
    if isinstance(positions, Tensor) and positions.dtype == torch.bool:
        if tuple(positions.shape) != (n_rows, n_tok):
            raise InputError(
                f"positions as a bool mask must be [{n_rows}, {n_tok}], got {tuple(positions.shape)}"
            )
        return positions.to(device)
    idx = [int(p) for p in (positions.tolist() if isinstance(positions, Tensor) else positions)]
    bad = [p for p in idx if not 0 <= p < n_tok]
    if bad:
        raise InputError(f"positions {bad} outside the {n_tok} {what}; allowed: 0..{n_tok - 1}")
    mask = torch.zeros(n_rows, n_tok, dtype=torch.bool, device=device)
    mask[:, idx] = True
    return mask


def position_labels(pair: Any, tower: str, traced: list[int]) -> list[str]:
    if tower == "image":
        cls = bool(pair.config.image.class_token)
        return ["CLS" if (cls and p == 0) else f"p{p - 1 if cls else p}" for p in traced]
    return [f"t{p}" for p in traced]


def text_labels(pair: Any, tokens: Tensor, traced: list[int]) -> list[str]:
    """Token strings where every row has the same token at a position (else ``t{p}``)."""
    eot = eot_positions(pair, tokens)
    decode = getattr(getattr(pair, "_tokenizer", None), "decode", None)
    out = []
    for p in traced:
        ids = tokens[:, p].unique()
        label = f"t{p}"
        if ids.numel() == 1:
            if eot is not None and bool((eot == p).all()):
                label = "EOT"
            elif p == 0 and pair.config.text.causal:
                label = "SOT"
            elif decode is not None:
                try:
                    word = str(decode([int(ids[0])])).strip()
                except Exception:  # a tokenizer without single-id decoding
                    word = ""
                label = f"{word}@{p}" if word else label
        out.append(label)
    return out
