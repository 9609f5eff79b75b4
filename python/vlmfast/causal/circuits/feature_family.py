"""SAE features and error nodes as a component family of the circuit engine.

At a hook ``h`` with a TopK SAE the activation splits exactly as

    x = decode(z) + err,    z = encode(x) (dense [B, T, n_latents]),  err = x - decode(z)

Nodes: one per SAE latent (``CircuitNode(tower, "features", L, latent, hook)``, all
positions together, like a head) and one error node per position
(``CircuitNode(tower, "errors", L, position, hook)``). Ablating a set of them sets those
codes / error vectors to their ablated values (zero, the mean over the reference batch
per position, or the same row of the resample source) and writes

    x' = x + (z' - z)[:, :, latents] @ W_dec[latents] + (err' - err)

so a variant that keeps every node returns ``x`` **bitwise** (both differences are exact
zeros): the spliced model with nothing ablated is the original model (the engine's
``f(full) = 1`` contract), whatever the SAE's reconstruction error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.circuits.types import CircuitNode
from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.errors import InputError
from vlmfast.models.interventions import Intervention


def block_of(hook: str) -> tuple[str, int]:
    """``(tower, layer)`` of a block hook ``{tower}.blocks.{L}.<point>``, else InputError."""
    parts = hook.split(".")
    if len(parts) < 4 or parts[0] not in ("image", "text") or parts[1] != "blocks":
        raise InputError(
            f"saes: hook {hook!r} is not a block hook; SAE circuits need hooks like "
            "'image.blocks.3.resid_post' (the engine ablates one block at a time)"
        )
    try:
        return parts[0], int(parts[2])
    except ValueError:
        raise InputError(f"saes: hook {hook!r} has no block index") from None


@torch.no_grad()
def sae_codes(sae: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(dense codes [..., n_latents], error [..., d_in])`` in float32; ``x`` is ``[..., d]``."""
    flat = x.reshape(-1, x.shape[-1]).to(sae.W_dec.dtype)
    values, indices = sae.encode(flat)
    recon = sae.decode(values, indices).float()
    z = torch.zeros(flat.shape[0], int(sae.n_latents), device=x.device, dtype=torch.float32)
    z.scatter_(1, indices.long(), values.float())
    err = flat.float() - recon
    return z.view(*x.shape[:-1], -1), err.view(*x.shape[:-1], -1)


@dataclass
class ExactContext:
    """What a family's exact single-node ablation scores run on."""

    pair: Any
    inputs: dict[str, Tensor]
    """Clean pixels and token ids."""
    score: Callable[[Tensor, Tensor], Tensor]
    """``metric(similarity(img, txt))``; leading dims of the embeddings are variants."""
    max_rows: int = DEFAULT_MAX_ROWS


def _tile(v: Tensor, rows: int) -> Tensor:
    if v.shape[0] in (1, rows):
        return v
    if rows % v.shape[0]:
        raise InputError(f"ablated value has {v.shape[0]} rows; the batch has {rows}")
    return v.repeat(rows // v.shape[0], *([1] * (v.dim() - 1)))


class SAEAblate(Intervention):
    """Sets the unkept features / error positions of each row to their ablated values."""

    def __init__(
        self,
        hook: str,
        sae: Any,
        latents: Tensor,
        keep_features: Tensor,
        keep_errors: Tensor,
        z_ablated: Tensor,
        err_ablated: Tensor,
    ) -> None:
        super().__init__(hook)
        self.sae = sae
        self.latents = latents
        self.keep_features = keep_features
        self.keep_errors = keep_errors
        self.z_ablated = z_ablated
        self.err_ablated = err_ablated

    def apply(self, name: str, x: Tensor) -> Tensor:
        rows, t = x.shape[0], x.shape[1]
        z, err = sae_codes(self.sae, x)
        lat = self.latents.to(x.device)
        z_sel = z[..., lat]
        z_abl = _tile(self.z_ablated.to(x.device), rows)[:, :t][..., lat]
        keep_f = self.keep_features.to(x.device).unsqueeze(1)  # [B, 1, n_sel]
        dz = torch.where(keep_f, torch.zeros_like(z_sel), z_abl.expand_as(z_sel) - z_sel)
        e_abl = _tile(self.err_ablated.to(x.device), rows)[:, :t]
        keep_e = self.keep_errors.to(x.device)[:, :t].unsqueeze(-1)  # [B, T, 1]
        de = torch.where(keep_e, torch.zeros_like(err), e_abl.expand_as(err) - err)
        w = self.sae.W_dec.detach().float()[lat]
        return x + (dz @ w).to(x.dtype) + de.to(x.dtype)


class SAEFamily:
    """The features (a chosen subset of latents, default all) and error nodes of one SAE.

    Implements the component-family protocol (``families.py``). ``n_positions`` is the
    token count of the hook (error nodes ``0..n_positions-1``; positions a run does not
    have, e.g. text cut after EOT, are ignored). ``attribution`` holds a signed score per
    node in ``nodes()`` order (what ``scores()`` returns), or None.
    """

    kind = "features"

    def __init__(
        self,
        hook: str,
        sae: Any,
        n_positions: int,
        latents: Sequence[int] | None = None,
        attribution: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.tower, self.layer = block_of(hook)
        self.hook = hook
        self.sae = sae
        n_lat = int(sae.n_latents)
        chosen = list(range(n_lat)) if latents is None else [int(i) for i in latents]
        if any(not 0 <= i < n_lat for i in chosen) or len(set(chosen)) != len(chosen):
            raise InputError(f"latents for {hook!r} must be distinct indices in [0, {n_lat})")
        self.latents = torch.tensor(chosen, dtype=torch.long)
        self.n_positions = int(n_positions)
        self.attribution = dict(attribution) if attribution is not None else None
        self.exact_context: ExactContext | None = None
        """Set by ``feature_families``: what ``scores("exact")`` runs on."""
        self.z_ablated: Tensor | None = None
        self.err_ablated: Tensor | None = None

    def __repr__(self) -> str:
        return f"SAEFamily({self.hook!r}, {len(self.latents)} features, {self.n_positions} errors)"

    def nodes(self) -> list[CircuitNode]:
        feats = [
            CircuitNode(self.tower, "features", self.layer, int(i), self.hook)
            for i in self.latents.tolist()
        ]
        errs = [
            CircuitNode(self.tower, "errors", self.layer, p, self.hook)
            for p in range(self.n_positions)
        ]
        return feats + errs

    def hooks(self) -> list[str]:
        return [self.hook]

    def prepare(self, sources: Any) -> None:
        if sources.mode == "resample":
            z, err = sae_codes(self.sae, sources.resample[self.hook])
        else:
            z, err = sae_codes(self.sae, sources.reference[self.hook])
            if sources.mode == "mean":
                z, err = z.mean(0, keepdim=True), err.mean(0, keepdim=True)
            else:
                z, err = torch.zeros_like(z[:1]), torch.zeros_like(err[:1])
        self.z_ablated, self.err_ablated = z, err

    def interventions(self, keep: Tensor, n_rows: int) -> list[Intervention]:
        if self.z_ablated is None or self.err_ablated is None:
            raise InputError("SAEFamily.prepare() must run before interventions()")
        n_feat = len(self.latents)
        if bool(keep.all()):
            return []
        keep_f = keep[:, :n_feat].repeat_interleave(n_rows, 0)
        keep_e = keep[:, n_feat:].repeat_interleave(n_rows, 0)
        return [
            SAEAblate(
                self.hook, self.sae, self.latents, keep_f, keep_e, self.z_ablated, self.err_ablated
            )
        ]

    def scores(self, ranking: str) -> Tensor:
        """Score per node: signed AtP (``"atp"``; ``"atp*"`` = the same, see ``feature_circuit.py``),
        or ``"exact"``: ``m(clean with only that node ablated) - m(clean)`` under the
        ablation ``prepare`` was given (one batched forward per ``max_rows`` rows)."""
        if ranking == "exact" and self.exact_context is not None:
            return self._exact_scores(self.exact_context)
        if self.attribution is None:
            raise InputError(
                f"SAEFamily {self.hook!r} has no attribution; build it with "
                "vf.causal.feature_families(...) or rank with an explicit order"
            )
        if ranking not in self.attribution:
            raise InputError(
                f"SAE features rank by {sorted(self.attribution)}, not {ranking!r} "
                "(use ranking='atp')"
            )
        return self.attribution[ranking]

    @torch.no_grad()
    def _exact_scores(self, ctx: ExactContext) -> Tensor:
        if self.z_ablated is None:
            raise InputError("SAEFamily.prepare() must run before scores('exact')")
        n_nodes = len(self.nodes())
        inputs = dict(ctx.inputs)
        if self.tower == "text" and inputs["text"].shape[1] > self.z_ablated.shape[1]:
            # find_circuit cuts a causal EOT-pooled text after the last EOT (exact)
            inputs["text"] = inputs["text"][:, : self.z_ablated.shape[1]]
        rows = int(inputs[self.tower].shape[0])
        other = "text" if self.tower == "image" else "image"
        tower = ctx.pair.tower(self.tower)
        fixed = ctx.pair.tower(other).run(inputs[other]).embed
        base = tower.run(inputs[self.tower]).embed

        def metric(embed: Tensor) -> Tensor:
            img, txt = (embed, fixed) if self.tower == "image" else (fixed, embed)
            return ctx.score(img, txt)

        m_model = float(metric(base))
        per = max(1, ctx.max_rows // rows)
        out = torch.zeros(n_nodes, dtype=torch.float64)
        for start in range(0, n_nodes, per):
            cols = torch.arange(start, min(start + per, n_nodes))
            keep = torch.ones(len(cols), n_nodes, dtype=torch.bool)
            keep[torch.arange(len(cols)), cols] = False
            x = inputs[self.tower]
            x = x.repeat(len(cols), *([1] * (x.dim() - 1)))
            embed = tower.run(x, interventions=self.interventions(keep, rows)).embed
            m = metric(embed.view(len(cols), rows, -1))
            out[cols] = m.double().cpu() - m_model
        return out


def sae_codes_with_grad(sae: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """Like :func:`sae_codes` but differentiable in ``x`` (float32).

    The top-k selection is taken from ``sae.encode`` (no gradient); on it the code is the
    encoder's affine pre-activation (``relu`` is the identity on active latents), so
    ``dz/dx`` is the encoder Jacobian of the selected latents, and ``err = x - decode(z)``.
    """
    flat = x.reshape(-1, x.shape[-1])
    scale = float(sae.input_scale)
    with torch.no_grad():
        values, indices = sae.encode(flat.detach().to(sae.W_dec.dtype))
    idx = indices.long()
    w_enc = sae.W_enc.detach().float()
    pre = (flat.float() * scale - sae.b_dec.detach().float()) @ w_enc.T + sae.b_enc.detach().float()
    sel = torch.where(values > 0, pre.gather(1, idx) / scale, torch.zeros_like(values.float()))
    z = torch.zeros(flat.shape[0], int(sae.n_latents), device=x.device, dtype=torch.float32)
    z = z.scatter(1, idx, sel)
    recon = z @ sae.W_dec.detach().float() + sae.b_dec.detach().float() / scale
    err = flat.float() - recon
    return z.view(*x.shape[:-1], -1), err.view(*x.shape[:-1], -1)
