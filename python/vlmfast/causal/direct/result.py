"""What ``vf.causal.direct_effects`` returns: parts, contributions, checks, the null."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.direct.plots import effects_heatmap, effects_heatmap_both
from vlmfast.errors import ShapeError


@dataclass
class DirectEffectsNull:
    """The mismatched-pairs null of the head and MLP direct effects."""

    draws: int
    """Number of random derangements K."""
    seed: int
    """Seed of the derangements (``torch.Generator``)."""
    level: float
    """Coverage of the null interval."""
    heads_draws: Tensor
    """[K, layers, heads] mean contribution to the mismatched logit, per draw."""
    mlps_draws: Tensor
    """[K, layers]."""
    heads_p: Tensor
    """[layers, heads] two-sided permutation p-values."""
    mlps_p: Tensor
    """[layers]."""
    heads_interval: Tensor
    """[2, layers, heads] (low, high) central ``level`` interval of the null draw means."""
    mlps_interval: Tensor
    """[2, layers]."""
    kind: str = "mismatched pairs (random derangements of the other tower)"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "draws": self.draws,
            "seed": self.seed,
            "level": self.level,
            "heads_p": self.heads_p.tolist(),
            "mlps_p": self.mlps_p.tolist(),
            "heads_interval": self.heads_interval.tolist(),
            "mlps_interval": self.mlps_interval.tolist(),
        }


@dataclass
class DirectEffects:
    """Direct contributions of one tower's components to the matched logit (and embedding)."""

    tower: str
    """The decomposed tower (``"image"`` or ``"text"``)."""
    part_names: list[str]
    """Name of each row of ``embed_parts`` / ``parts_logit`` (see ``vlmfast.causal.direct.decompose``)."""
    embed_parts: Tensor
    """[P, B, E] float64: each part's contribution to the projected embedding."""
    embed: Tensor
    """[B, E] the clean embedding of this tower (sum of ``embed_parts``)."""
    other: Tensor
    """[B, E] the clean embedding of the other tower (caption i for image i)."""
    logit: Tensor
    """[B] the clean matched logit ``scale * cos + bias`` (float64)."""
    logit_scale: float
    """``exp(logit_scale)``: the multiplier of the cosine."""
    logit_bias: float | None
    """SigLIP's logit bias (``None`` for CLIP)."""
    n_layers: int
    """Blocks of the decomposed tower."""
    n_heads: int
    """Heads per block."""
    null: DirectEffectsNull | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # ---- contributions -----------------------------------------------------------------
    def contributions(self, other: Tensor | None = None) -> Tensor:
        """Returns each part's contribution to ``logit(i, j)`` (logit units): ``[P, B, N]``
        against ``other`` [N, E].

        Norms are frozen at the clean run (``|embed_i|`` and ``|other_j|``), so the
        contributions plus the logit bias sum to the logit against any ``other``; default:
        this result's other-tower embeddings (all pairs).

        Raises:
            ShapeError: ``other`` is not ``[N, E]`` with this tower's embedding width.
        """
        o = (self.other if other is None else other).to(self.embed_parts)
        if o.dim() != 2 or o.shape[1] != self.embed.shape[1]:
            raise ShapeError(
                f"other must be [N, {self.embed.shape[1]}] embeddings, got {tuple(o.shape)}"
            )
        o = o / o.norm(dim=-1, keepdim=True)
        inv = 1.0 / self.embed.norm(dim=-1)
        return self.logit_scale * torch.einsum("pbe,ne->pbn", self.embed_parts, o) * inv[:, None]

    @property
    def parts_logit(self) -> Tensor:
        """[P, B] each part's contribution to the matched logit ``logit(i, i)``."""
        return matched_contributions(self.embed_parts, self.embed, self.other, self.logit_scale)

    def _rows(self, sl: slice) -> Tensor:
        return self.parts_logit[sl]

    @property
    def heads_per_example(self) -> Tensor:
        """[layers, heads, B] each head's direct contribution to each matched logit."""
        return self._rows(_head_slice(self)).reshape(self.n_layers, self.n_heads, -1)

    @property
    def heads(self) -> Tensor:
        """[layers, heads] mean over examples of each head's direct contribution."""
        return self.heads_per_example.mean(-1)

    @property
    def mlps_per_example(self) -> Tensor:
        """[layers, B] each MLP's direct contribution to each matched logit."""
        return self._rows(_mlp_slice(self))

    @property
    def mlps(self) -> Tensor:
        """[layers] mean over examples."""
        return self.mlps_per_example.mean(-1)

    @property
    def terms(self) -> dict[str, Tensor]:
        """[B] contributions of everything that is not a head or an MLP (embeddings,
        attention biases, LN bias, MAP terms, projection bias) and ``logit_bias``."""
        pl = self.parts_logit
        skip = set(range(self.n_layers * self.n_heads + 1)) - {0}
        skip |= set(range(*_mlp_slice(self).indices(len(self.part_names))))
        out = {n: pl[k] for k, n in enumerate(self.part_names) if k not in skip}
        if self.logit_bias is not None:
            out["logit_bias"] = torch.full_like(self.logit, self.logit_bias)
        return out

    # ---- checks ------------------------------------------------------------------------
    def check(self) -> float:
        """Returns ``max_i |sum_k parts_logit[k, i] + logit_bias - logit[i]|`` in logits
        (should be <= 1e-4)."""
        total = self.parts_logit.sum(0) + (self.logit_bias or 0.0)
        return float((total - self.logit).abs().max())

    def check_embed(self) -> float:
        """Returns ``max |sum of embed_parts - embed|`` (float rounding of the model's dtype)."""
        return float((self.embed_parts.sum(0) - self.embed).abs().max())

    # ---- output ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Returns the summary as plain data: mean effects (logits), other terms, the checks
        and the null."""
        return {
            "tower": self.tower,
            "n_examples": int(self.embed.shape[0]),
            "layers": self.n_layers,
            "heads_per_layer": self.n_heads,
            "logit_scale": self.logit_scale,
            "logit_bias": self.logit_bias,
            "mean_logit": float(self.logit.mean()),
            "heads": self.heads.tolist(),
            "mlps": self.mlps.tolist(),
            "terms": {k: float(v.mean()) for k, v in self.terms.items()},
            "check_logit_max_abs": self.check(),
            "check_embed_max_abs": self.check_embed(),
            "frozen": _FROZEN,
            "null": self.null.to_json() if self.null is not None else None,
            **({"meta": self.meta} if self.meta else {}),
        }

    def table(self) -> list[dict[str, Any]]:
        """Returns the long table: one row per (part, example) with its matched-logit
        contribution (logits)."""
        pl = self.parts_logit
        rows = []
        for k, name in enumerate(self.part_names):
            kind, layer, head = _parse_name(name)
            for i in range(pl.shape[1]):
                rows.append(
                    {
                        "tower": self.tower,
                        "part": name,
                        "kind": kind,
                        "layer": layer,
                        "head": head,
                        "example": i,
                        "contribution": float(pl[k, i]),
                    }
                )
        return rows

    def plot(self, path: str | Path | None = None) -> Any:
        """Returns the heatmap of ``heads`` (layers x heads, plus the MLP column) as a
        matplotlib Figure; saved if ``path`` is given (``.png``/``.svg``...)."""
        return effects_heatmap(self, path)


@dataclass
class DirectEffectsBoth:
    """``direct_effects(tower="both")``: each tower decomposed against the other's clean embedding."""

    image: DirectEffects
    text: DirectEffects

    def check(self) -> float:
        """Returns the larger of the two towers' :meth:`DirectEffects.check` (logits)."""
        return max(self.image.check(), self.text.check())

    def to_json(self) -> dict[str, Any]:
        """Returns both towers' summaries, ``{"image": ..., "text": ...}``."""
        return {"image": self.image.to_json(), "text": self.text.to_json()}

    def table(self) -> list[dict[str, Any]]:
        """Returns both towers' long tables, image rows first."""
        return self.image.table() + self.text.table()

    def plot(self, path: str | Path | None = None) -> Any:
        """Returns both towers' heatmaps as one matplotlib Figure; saved if ``path`` is given."""
        return effects_heatmap_both(self, path)


_FROZEN = (
    "final LayerNorm scale (1/std per token) and, for a MAP head, its attention pattern, "
    "from the clean run; MAP MLP output reported as its own term (pool.mlp); both "
    "embedding norms in the cosine from the clean run"
)


def _head_slice(de: DirectEffects) -> slice:
    return slice(1, 1 + de.n_layers * de.n_heads)


def _mlp_slice(de: DirectEffects) -> slice:
    start = 1 + de.n_layers * de.n_heads + de.n_layers
    return slice(start, start + de.n_layers)


def _parse_name(name: str) -> tuple[str, int | None, int | None]:
    bits = name.split(".")
    if bits[0] == "blocks":
        layer = int(bits[1])
        if bits[2] == "mlp":
            return "mlp", layer, None
        if bits[3] == "bias":
            return "attn_bias", layer, None
        return "head", layer, int(bits[3][1:])
    return name, None, None


def matched_contributions(parts: Tensor, embed: Tensor, other: Tensor, scale: float) -> Tensor:
    """[P, B] contributions to ``logit(i, i)`` with frozen norms."""
    o = other / other.norm(dim=-1, keepdim=True)
    return scale * torch.einsum("pbe,be->pb", parts, o) / embed.norm(dim=-1)
