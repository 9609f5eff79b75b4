"""``vf.causal.direct_effects``: each head's and MLP's direct contribution to the logit.

    de = vf.causal.direct_effects(pair, images=px, texts=tok, tower="image", null=200)
    de.heads              # [layers, heads] mean direct contribution to the matched logit
    de.mlps               # [layers]
    de.check()            # max |sum of parts + logit bias - logit| (<= 1e-4)
    de.null.heads_p       # [layers, heads] two-sided permutation p-values (mismatched pairs)

The embedding of the decomposed tower is split exactly into parts (``decompose``:
frozen final-LN scale, frozen MAP pattern, the MAP MLP as its own term). The matched
logit ``scale * <img_i, txt_i> / (|img_i| |txt_i|) + bias`` is linear in those parts
once both norms are frozen at their clean values, so part ``k`` contributes
``scale * <part_k(i), other_i> / (|emb_i| |other_i|)`` and the contributions plus the
logit bias sum to the logit.

**Null** (every effect has one): the same contributions with image/caption pairs
mismatched, ``null`` seeded random derangements (no example keeps its own partner), the
norms of each tower still frozen at its own clean value. A head whose direct
contribution only tracks, say, the image's overall norm or a constant direction
contributes as much to a mismatched caption as to the matched one; its p-value is
large. P-values are two-sided around the null mean, ``(1 + #{|null - m| >= |obs - m|}) /
(1 + K)``, and the null interval is the central ``level`` range of the K draw means.
Mismatched captions can still be true of the image (two one-object scenes with the same
caption): the null is then conservative.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal import _backend as backend
from vlmfast.causal.conventions import check_choice, check_eval_mode
from vlmfast.causal.decompose import TowerParts, required_hooks, tower_parts
from vlmfast.errors import InputError, ShapeError

TOWER_CHOICES = ("image", "text", "both")


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
    """Name of each row of ``embed_parts`` / ``parts_logit`` (see ``vlmfast.causal.decompose``)."""
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
        """Each part's contribution to ``logit(i, j)``: ``[P, B, N]`` against ``other`` [N, E].

        Norms are frozen at the clean run (``|embed_i|`` and ``|other_j|``), so the
        contributions plus the logit bias sum to the logit against any ``other``; default:
        this result's other-tower embeddings (all pairs).
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
        return _matched(self.embed_parts, self.embed, self.other, self.logit_scale)

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
        """``max_i |sum_k parts_logit[k, i] + logit_bias - logit[i]|`` (should be <= 1e-4)."""
        total = self.parts_logit.sum(0) + (self.logit_bias or 0.0)
        return float((total - self.logit).abs().max())

    def check_embed(self) -> float:
        """``max |sum of embed_parts - embed|`` (float rounding of the model's dtype)."""
        return float((self.embed_parts.sum(0) - self.embed).abs().max())

    # ---- output ------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """Summary as plain data: mean effects, other terms, the checks and the null."""
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
        """Long table: one row per (part, example) with its matched-logit contribution."""
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
        """Heatmap of ``heads`` (layers x heads, plus the MLP column); saved if ``path``
        is given (``.png``/``.svg``...). Returns the matplotlib Figure."""
        from vlmfast.causal._direct_plots import effects_heatmap

        return effects_heatmap(self, path)


@dataclass
class DirectEffectsBoth:
    """``direct_effects(tower="both")``: each tower decomposed against the other's clean embedding."""

    image: DirectEffects
    text: DirectEffects

    def check(self) -> float:
        return max(self.image.check(), self.text.check())

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image.to_json(), "text": self.text.to_json()}

    def table(self) -> list[dict[str, Any]]:
        return self.image.table() + self.text.table()

    def plot(self, path: str | Path | None = None) -> Any:
        from vlmfast.causal._direct_plots import effects_heatmap_both

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


def _matched(parts: Tensor, embed: Tensor, other: Tensor, scale: float) -> Tensor:
    """[P, B] contributions to ``logit(i, i)`` with frozen norms."""
    o = other / other.norm(dim=-1, keepdim=True)
    return scale * torch.einsum("pbe,be->pb", parts, o) / embed.norm(dim=-1)


def _derangement(n: int, gen: torch.Generator) -> Tensor:
    """A uniformly random permutation of ``n`` with no fixed point (rejection sampling)."""
    ar = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=gen)
        if not bool((perm == ar).any()):
            return perm


def _null(
    tp: TowerParts,
    other: Tensor,
    scale: float,
    draws: int,
    seed: int,
    level: float,
    model_dtype: torch.dtype,
) -> DirectEffectsNull:
    n = tp.embed.shape[0]
    if n < 2:
        raise InputError(f"the mismatched-pairs null needs at least 2 examples, got {n}")
    gen = torch.Generator().manual_seed(seed)
    layers, heads = tp.layers, tp.heads
    idx = list(range(*tp.head_slice.indices(len(tp.names))))
    idx += list(range(*tp.mlp_slice.indices(len(tp.names))))
    sub = tp.parts[idx]  # [LH + L, B, E]
    obs = _matched(sub, tp.embed, other, scale).mean(-1)
    null = torch.empty(draws, len(idx), dtype=obs.dtype)
    for k in range(draws):
        perm = _derangement(n, gen)
        null[k] = _matched(sub, tp.embed, other[perm], scale).mean(-1)
    center = null.mean(0)
    # differences below the model's float rounding are ties (identical captions embedded
    # in one batch differ in the last bits)
    tol = 16 * torch.finfo(model_dtype).eps * (obs.abs() + center.abs()) + 1e-12
    p = (1 + ((null - center).abs() >= (obs - center).abs() - tol).sum(0)) / (1 + draws)
    alpha = (1 - level) / 2
    q = torch.quantile(null, torch.tensor([alpha, 1 - alpha], dtype=null.dtype), dim=0)
    lh = layers * heads
    return DirectEffectsNull(
        draws=draws,
        seed=seed,
        level=level,
        heads_draws=null[:, :lh].reshape(draws, layers, heads),
        mlps_draws=null[:, lh:],
        heads_p=p[:lh].reshape(layers, heads),
        mlps_p=p[lh:],
        heads_interval=q[:, :lh].reshape(2, layers, heads),
        mlps_interval=q[:, lh:],
    )


def _check_pair(pair: Any) -> None:
    for attr in ("config", "tower", "hook_points", "logit_scale"):
        if not hasattr(pair, attr):
            raise InputError(
                f"direct_effects needs a vlmfast HookedPair (vf.load_pair(...)); "
                f"got {type(pair).__name__} without .{attr}"
            )
    check_eval_mode(pair, "direct_effects")


def _to_cpu(tp: TowerParts) -> TowerParts:
    """Results live on the CPU (the parts of a large batch would crowd a GPU)."""
    src = tp.source_parts.cpu() if tp.source_parts is not None else None
    return TowerParts(tp.tower, tp.names, tp.parts.cpu(), tp.embed.cpu(), tp.layers, tp.heads, src)


def _run_parts(
    pair: Any,
    tower: str,
    inputs: Tensor,
    batch_size: int,
    dtype: torch.dtype,
    source_token: int | None = None,
) -> TowerParts:
    chunks = [
        _to_cpu(
            tower_parts(pair, tower, inputs[s : s + batch_size], dtype, source_token=source_token)
        )
        for s in range(0, inputs.shape[0], batch_size)
    ]
    first = chunks[0]
    if len(chunks) == 1:
        return first
    return TowerParts(
        tower,
        first.names,
        torch.cat([c.parts for c in chunks], dim=1),
        torch.cat([c.embed for c in chunks]),
        first.layers,
        first.heads,
        None
        if first.source_parts is None
        else torch.cat([c.source_parts for c in chunks if c.source_parts is not None], dim=1),
    )


def _embeds(pair: Any, tower: str, inputs: Tensor, batch_size: int, dtype: torch.dtype) -> Tensor:
    with torch.no_grad():
        out = [
            backend.embed(pair, tower, inputs[s : s + batch_size]).to("cpu", dtype)
            for s in range(0, inputs.shape[0], batch_size)
        ]
    return torch.cat(out)


def prepare_inputs(pair: Any, images: Any, texts: Any) -> tuple[Tensor, Tensor]:
    """Pixels and token ids on the pair's device; ShapeError unless paired by index."""
    if images is None or texts is None:
        raise InputError("direct_effects needs images= and texts= (caption i describes image i)")
    px, tok = backend.as_inputs(pair, images, texts)
    if px.shape[0] != tok.shape[0]:
        raise ShapeError(
            f"images and texts are paired by index, so they need the same length; got "
            f"{px.shape[0]} images and {tok.shape[0]} texts"
        )
    if px.shape[0] == 0:
        raise InputError("direct_effects got no examples")
    return px, tok


def direct_effects(
    pair: Any,
    images: Any = None,
    texts: Any = None,
    *,
    tower: str = "image",
    null: int = 0,
    seed: int = 0,
    level: float = 0.95,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float64,
) -> DirectEffects | DirectEffectsBoth:
    """Direct contribution of every head and MLP of ``tower`` to the matched logit.

    Args:
        pair: a HookedPair (eval mode).
        images, texts: pixels / token ids (or PIL images / strings), caption i for image i.
        tower: ``"image"``, ``"text"`` or ``"both"`` (each tower against the other's clean
            embedding; a ``DirectEffectsBoth``).
        null: number of mismatched-pair draws for the null (0: no null).
        seed: seed of the null's derangements.
        level: coverage of the null interval.
        batch_size: rows per forward (memory bound).
        dtype: dtype of the decomposition arithmetic (the model runs in its own dtype).
    """
    _check_pair(pair)
    check_choice(tower, TOWER_CHOICES, "tower")
    if not isinstance(null, int) or null < 0:
        raise InputError(f"null must be a number of draws >= 0, got {null!r}")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    towers = ["image", "text"] if tower == "both" else [tower]
    for t in towers:
        required_hooks(pair, t)
    px, tok = prepare_inputs(pair, images, texts)
    scale_t, bias_t = backend.logit_scale_bias(pair)
    scale = float(scale_t.double().exp())
    bias = float(bias_t) if bias_t is not None else None
    inputs = {"image": px, "text": tok}
    results: dict[str, DirectEffects] = {}
    for t in towers:
        o = "text" if t == "image" else "image"
        tp = _run_parts(pair, t, inputs[t], batch_size, dtype)
        other = _embeds(pair, o, inputs[o], batch_size, dtype)
        cos = (tp.embed * other).sum(-1) / (tp.embed.norm(dim=-1) * other.norm(dim=-1))
        logit = scale * cos + (bias or 0.0)
        results[t] = DirectEffects(
            tower=t,
            part_names=tp.names,
            embed_parts=tp.parts,
            embed=tp.embed,
            other=other,
            logit=logit,
            logit_scale=scale,
            logit_bias=bias,
            n_layers=tp.layers,
            n_heads=tp.heads,
            null=_null(tp, other, scale, null, seed, level, pair.dtype) if null else None,
        )
    if tower == "both":
        return DirectEffectsBoth(results["image"], results["text"])
    return results[tower]


def save_json(result: DirectEffects | DirectEffectsBoth, path: str | Path) -> Path:
    """Writes ``result.to_json()`` to ``path``."""
    out = Path(path)
    out.write_text(json.dumps(result.to_json(), indent=2))
    return out
