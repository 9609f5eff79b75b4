"""Helpers the stages share: hook names with negative layers, image-caption pairs."""

from __future__ import annotations

import re
from typing import Any

from vlmfast.errors import InputError

_BLOCK = re.compile(r"^(image|text)\.blocks\.(-?\d+)\.")


def resolve_hook(hook: str, pair: Any) -> str:
    """``hook`` with a negative block index counted from the tower's last layer."""
    m = _BLOCK.match(hook)
    if not m:
        return hook
    tower, layer = m.group(1), int(m.group(2))
    n = int(pair.config.tower(tower).layers)
    if not -n <= layer < n:
        raise InputError(f"hook {hook!r}: block {layer} is out of range for {n} {tower} layers")
    return f"{tower}.blocks.{layer % n}." + hook[m.end() :]


def sae_hooks(config: Any, pair: Any) -> dict[str, str]:
    """``{modality: hook}`` of the SAEs the config trains (``[hooks].image`` / ``.text``)."""
    out: dict[str, str] = {}
    for mod in ("image", "text"):
        hook = getattr(config.hooks, mod)
        if hook:
            out[mod] = resolve_hook(hook, pair)
    return out


def neuron_hooks(config: Any, pair: Any) -> list[str]:
    """The hooks scored as raw units."""
    return [resolve_hook(h, pair) for h in config.hooks.neurons]


def is_synthetic(spec: str) -> bool:
    return spec.split(":", 1)[0] == "synthetic"


def read_pairs(ctx: Any, spec: str, n: int, what: str, **kw: Any) -> Any:
    """``vlmfast.data.pairs.read_pairs`` of ``spec`` (the stage's ``what`` in errors), its
    skip report logged when the source skipped records."""
    from vlmfast.data.pairs import read_pairs as read

    pairs = read(spec, n, what=f"{what} data", **kw)
    if pairs.report.n_bad:
        ctx.log("  " + pairs.report.summary().replace("\n", "\n  "))
    return pairs


def skipped(pairs: Any) -> dict[str, Any]:
    """``{"skipped_records": ...}`` for a stage result when the source skipped records."""
    return {"skipped_records": pairs.report.as_dict()} if pairs.report.n_bad else {}
