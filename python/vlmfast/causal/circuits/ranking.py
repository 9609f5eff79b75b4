"""Ranking the candidate nodes of a circuit search: by attribution, exactly or as given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.attribution.attribute import attribute
from vlmfast.causal.circuits.engine import CircuitEvaluator
from vlmfast.causal.circuits.families import HeadFamily, NeuronFamily
from vlmfast.causal.circuits.types import CircuitNode
from vlmfast.causal.patching.sweep import patch_sweep
from vlmfast.errors import InputError


def rank_nodes(
    pair: Any,
    evaluator: CircuitEvaluator,
    ranking: Any,
    clean: dict[str, Tensor],
    corrupt: dict[str, Tensor | None],
    kinds: list[str],
    towers: list[str],
    metric: Any,
    max_rows: int,
) -> tuple[Tensor, Tensor | None]:
    """``(order [N] best first, score per node or None)``."""
    nodes = evaluator.nodes
    if not isinstance(ranking, str):
        return _given_order(nodes, ranking), None
    builtin = {
        (f.tower, f.kind) for f in evaluator.families if isinstance(f, HeadFamily | NeuronFamily)
    }
    tables: dict[tuple[str, str], Tensor] = {}
    if builtin and ranking in ("atp", "atp*"):
        if corrupt["image"] is None and corrupt["text"] is None:
            raise InputError(
                f"ranking={ranking!r} needs corrupt_images= or corrupt_texts= (the "
                "attribution's counterfactual); or use ranking='exact' or a given order"
            )
        att = attribute(
            pair,
            clean["image"],
            clean["text"],
            corrupt["image"],
            corrupt["text"],
            components=[k for k in kinds if k != "features"],
            towers=towers,
            method=ranking,
            metric=metric,
            max_rows=max_rows,
        )
        tables = {key: att.ranking(key) for key in builtin}
    elif builtin:
        tables = _exact_tables(pair, evaluator, clean, metric, max_rows)
    scores = torch.zeros(len(nodes), dtype=torch.float64)
    col = 0
    for fam in evaluator.families:
        fam_nodes = fam.nodes()
        if (fam.tower, fam.kind) in tables and isinstance(fam, HeadFamily | NeuronFamily):
            t = tables[fam.tower, fam.kind]
            vals = torch.stack([t[nd.layer, nd.index] for nd in fam_nodes]).double()
        elif hasattr(fam, "scores"):
            vals = torch.as_tensor(fam.scores(ranking), dtype=torch.float64).flatten()
            if vals.numel() != len(fam_nodes):
                raise InputError(
                    f"family {fam.tower}/{fam.kind}: scores() gave {vals.numel()} values "
                    f"for {len(fam_nodes)} nodes"
                )
        else:
            raise InputError(
                f"family {fam.tower}/{fam.kind} has no scores(); rank it with an explicit "
                "order (ranking=[nodes...])"
            )
        scores[col : col + len(fam_nodes)] = vals.abs()
        col += len(fam_nodes)
    scores = torch.nan_to_num(scores, nan=0.0)
    return torch.argsort(-scores, stable=True), scores


def _exact_tables(
    pair: Any, evaluator: CircuitEvaluator, clean: dict[str, Tensor], metric: Any, max_rows: int
) -> dict[tuple[str, str], Tensor]:
    """``|m(model with one component ablated) - m(model)|`` per (tower, kind) via patch_sweep."""
    out: dict[tuple[str, str], Tensor] = {}
    for fam in evaluator.families:
        if not isinstance(fam, HeadFamily | NeuronFamily):
            continue
        n = int(clean["image"].shape[0])
        src = {h: v.expand(n, *v.shape[1:]).contiguous() for h, v in fam.values.items()}
        delta = patch_sweep(
            pair,
            clean["image"],
            clean["text"],
            src,
            metric,
            component=fam.kind,
            tower=fam.tower,
            normalize="delta",
            max_rows=max_rows,
        )
        out[fam.tower, fam.kind] = delta.abs()
    return out


def _given_order(nodes: list[CircuitNode], given: Sequence[Any]) -> Tensor:
    index = {n.as_tuple(): i for i, n in enumerate(nodes)}
    first: list[int] = []
    for item in given:
        key = item.as_tuple() if isinstance(item, CircuitNode) else tuple(item)
        if len(key) != 4 or key not in index:
            raise InputError(
                f"ranking lists {item!r}, which is not a candidate (tower, kind, layer, index); "
                f"candidates look like {nodes[0].as_tuple() if nodes else None}"
            )
        if index[key] in first:
            raise InputError(f"ranking lists {item!r} twice")
        first.append(index[key])
    chosen = set(first)
    rest = [i for i in range(len(nodes)) if i not in chosen]
    return torch.tensor(first + rest, dtype=torch.long)
