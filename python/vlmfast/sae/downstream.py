"""Downstream metrics of an SAE spliced into a two-tower model at its hook.

from vlmfast.sae.downstream import downstream_metrics
result = downstream_metrics(pair, sae, "image.blocks.8.resid_post", images, captions)
result.loss_recovered.value, result.kl_spliced.ci, result.to_dict()

On ``n`` matched image-caption pairs the model runs three ways: clean, with the hook's
activations replaced by the SAE's reconstruction (*spliced*), and replaced by their mean
over the eval pairs (*mean-ablated*, the null). Each run gives the ``[n, n]`` pair logits
*as the model computes them*, ``exp(logit_scale) * cos`` (+ ``logit_bias`` for SigLIP);
from them (:mod:`vlmfast.sae.pair_metrics`):

- ``kl_spliced`` / ``kl_mean_ablated``: mean over images of the KL divergence of the
  image's caption distribution from the clean model's (nats);
- ``accuracy_*``: zero-shot top-1, image -> its caption, clean / spliced / mean-ablated;
- ``loss_*``: the model's contrastive loss (CLIP: symmetric cross-entropy; SigLIP: the
  sigmoid loss), and ``loss_recovered = (L_mean - L_spliced) / (L_mean - L_clean)``: 1
  for a perfect SAE, 0 for one no better than the mean; undefined (None) when mean
  ablation does not change the loss (``min_effect``).

Every statistic has a percentile bootstrap interval over pairs. ``temperature_free=True``
uses the plain cosine instead (no scale, no bias): what a peer toolkit computes, kept only
to show the difference; its "recovered" can exceed 100%.

The SAE replaces the positions it was trained on (``positions="auto"``, from the SAE's
``rows``: an image hook's patch rows when its CLS row was left out, the CLS row for
``cls``, each caption's EOT row for ``eot``, a caption's tokens up to its EOT (padding
left alone, as the store leaves it out) for an EOT-pooled text tower, every row
otherwise); ``joint.<point>`` splices ``image.<point>`` and ``text.<point>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmfast.errors import InputError, ShapeError
from vlmfast.models.interventions import Intervention
from vlmfast.sae.evaluation import encode_codes
from vlmfast.sae.pair_metrics import (
    Estimate,
    bootstrap_means,
    bootstrap_recovered,
    caption_kl,
    pair_losses,
    resample_indices,
    top1_hits,
)

POSITIONS = ("auto", "all")
"""``DownstreamConfig.positions``: the SAE's training rows (``auto``) or every row."""


@dataclass
class DownstreamConfig:
    """Options of :func:`downstream_metrics`."""

    positions: str = "auto"
    """Which rows of the hook are replaced: ``auto`` (the rows the SAE trained on, from
    its ``rows``) or ``all``."""
    rows: str | None = None
    """The SAE's training rows for ``auto`` (None: the SAE's ``cfg.rows``; unknown: all)."""
    temperature_free: bool = False
    """Use the plain cosine (no logit scale or bias): a peer's mistake, for comparison."""
    n_boot: int = 1000
    """Bootstrap resamples of the pairs."""
    level: float = 0.95
    """Confidence level of the intervals."""
    seed: int = 0
    """Seed of the bootstrap."""
    batch_size: int = 64
    """Pairs per forward."""
    min_effect: float = 1e-6
    """Mean-ablation loss changes at most this large (nats) count as 0: recovered undefined."""


@dataclass
class DownstreamMetrics:
    """Clean vs SAE-spliced vs mean-ablated model on matched pairs (see module docstring)."""

    hook: str
    """The SAE's hook (``joint.<point>``: both towers)."""
    n_pairs: int
    """Matched image-caption pairs."""
    loss: str
    """``softmax`` (CLIP) or ``sigmoid`` (SigLIP): the contrastive loss of ``loss_*``."""
    logit_scale: float
    """The multiplier of the cosine used (``exp(logit_scale)``; 1.0 temperature-free)."""
    logit_bias: float | None
    """The bias added (SigLIP), None when there is none or temperature-free."""
    temperature_free: bool
    """Whether the plain cosine was used instead of the model's logits."""
    positions: dict[str, str]
    """Hook -> rows replaced (``all``, ``patches``, ``cls``, ``eot``, ``tokens``)."""
    loss_clean: Estimate
    loss_spliced: Estimate
    loss_mean_ablated: Estimate
    loss_recovered: Estimate
    """``(L_mean - L_spliced) / (L_mean - L_clean)``; None when undefined."""
    kl_spliced: Estimate
    """Mean KL of the spliced model's caption distribution from the clean one (nats)."""
    kl_mean_ablated: Estimate
    accuracy_clean: Estimate
    """Zero-shot top-1 accuracy, image -> its caption."""
    accuracy_spliced: Estimate
    accuracy_mean_ablated: Estimate
    level: float = 0.95
    n_boot: int = 1000

    def to_dict(self) -> dict[str, Any]:
        """Returns the metrics as a plain dict (each estimate with its interval; losses
        and KL in nats, accuracies as fractions in [0, 1])."""
        out = asdict(self)
        for key, value in vars(self).items():
            if isinstance(value, Estimate):
                out[key] = value.to_dict()
        return out


class ReplaceRows(Intervention):
    """Replace the selected rows of a hook ``[B, d]`` or ``[B, T, d]`` by ``fn(rows)``.

    ``mode``: ``all``, ``patches`` (positions 1..), ``cls`` (position 0), ``eot`` (one
    position per batch row, ``self.pooled`` [B], set before each run) or ``tokens`` (each
    row's positions up to and including ``self.pooled``).
    """

    def __init__(self, hook: str, fn: Callable[[Tensor], Tensor], mode: str, width: int) -> None:
        super().__init__(hook)
        self.fn, self.mode, self.width = fn, mode, width
        self.pooled: Tensor | None = None

    def mask(self, name: str, x: Tensor) -> Tensor | None:
        """Bool ``[B, T]`` of the replaced rows of ``x`` (None: every row)."""
        if x.shape[-1] != self.width:
            raise ShapeError(f"hook {name} has width {x.shape[-1]}, the SAE's d_in is {self.width}")
        if self.mode == "all" or x.ndim == 2:
            return None
        if x.ndim != 3:
            raise ShapeError(f"hook {name} is {list(x.shape)}: rows={self.mode} needs [B, T, d]")
        m = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        if self.mode == "patches":
            m[:, 1:] = True
        elif self.mode == "cls":
            m[:, 0] = True
        else:
            assert self.pooled is not None
            at = self.pooled.to(x.device)
            if self.mode == "eot":
                m[torch.arange(x.shape[0], device=x.device), at] = True
            else:
                m = torch.arange(x.shape[1], device=x.device)[None, :] <= at[:, None]
        return m

    def apply(self, name: str, x: Tensor) -> Tensor:
        mask = self.mask(name, x)
        if mask is None:
            flat = x.reshape(-1, x.shape[-1])
            return self.fn(flat).to(x.dtype).reshape(x.shape)
        out = x.clone()
        out[mask] = self.fn(x[mask]).to(x.dtype)
        return out


def splice_parts(hook: str) -> list[str]:
    """The model hooks an SAE hook name splices (``joint.<p>``: image and text)."""
    if hook.startswith("joint."):
        point = hook[len("joint.") :]
        return [f"image.{point}", f"text.{point}"]
    return [hook]


def rows_mode(pair: Any, part: str, rows: str | None, positions: str = "auto") -> str:
    """The :class:`ReplaceRows` mode of ``part`` for an SAE trained on ``rows``."""
    if positions not in POSITIONS:
        raise InputError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    tower = part.split(".", 1)[0]
    if positions == "all" or not rows or rows == "all":
        return "all"
    if tower == "image" and rows in ("tokens", "patches"):
        return "patches" if pair.config.image.class_token else "all"
    if tower == "image" and rows == "cls":
        return "cls"
    if tower == "text" and rows == "eot":
        return "eot"
    if tower == "text" and rows == "tokens" and pair.config.text.pool in ("eot", "eos"):
        return "tokens"
    return "all"


def reconstruct(sae: Any) -> Callable[[Tensor], Tensor]:
    """``x [N, d] -> x_hat [N, d]`` of any SAE with ``encode`` / ``decode``, in float32."""

    def fn(x: Tensor) -> Tensor:
        xf = x.float()
        values, indices, sparse = encode_codes(sae, xf)
        return sae.decode(values, indices) if sparse else sae.decode(values)

    return fn


def _sae_width(sae: Any) -> int:
    d = getattr(sae, "d_in", None)
    if d is None:
        w_dec = getattr(sae, "W_dec", None)
        if w_dec is None:
            raise InputError("the SAE has neither d_in nor W_dec: cannot check the hook width")
        d = w_dec.shape[1]
    return int(d)


def check_pairs(images: Any, texts: Any) -> int:
    """The number of matched pairs; raises ``InputError`` unless as many images as texts."""
    n_img, n_txt = len(images), len(texts)
    if n_img != n_txt:
        raise InputError(f"downstream metrics need matched pairs: {n_img} images, {n_txt} texts")
    if n_img < 2:
        raise InputError(f"downstream metrics need at least 2 pairs, got {n_img}")
    return n_img


def _pixels(pair: Any, images: Any) -> Tensor:
    if isinstance(images, Tensor):
        return images.to(device=pair.device, dtype=pair.dtype)
    return pair.preprocess(list(images))


def _tokens(pair: Any, texts: Any) -> Tensor:
    if isinstance(texts, Tensor):
        return texts.to(pair.device)
    return pair.tokenize(list(texts))


class _Runs:
    """The eval pairs in batches, their inputs prepared once, and the tower runs."""

    def __init__(self, pair: Any, images: Any, texts: Any, batch_size: int) -> None:
        n = check_pairs(images, texts)
        self.pair = pair
        spans = [(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
        self.pixels = [_pixels(pair, images[a:b]) for a, b in spans]
        self.tokens = [_tokens(pair, texts[a:b]) for a, b in spans]

    def embeds(self, tower: str, interventions: Sequence[ReplaceRows] = ()) -> Tensor:
        """Embeddings of every eval input of ``tower``, with ``interventions`` on it."""
        mine = [iv for iv in interventions if iv.hook.startswith(tower + ".")]
        out = []
        for px, tok in zip(self.pixels, self.tokens):
            for iv in mine:
                if iv.mode in ("eot", "tokens"):
                    iv.pooled = self.pair.text.pooled_positions(tok.unsqueeze(-1), tok)
            run = self.pair.run(
                images=px if tower == "image" else None,
                texts=tok if tower == "text" else None,
                interventions=mine,
            )
            out.append(run.image_embeds if tower == "image" else run.text_embeds)
        return torch.cat(out)


class _MeanCapture:
    """An identity at the hook that sums the rows it sees (float64): their mean."""

    def __init__(self, width: int) -> None:
        self.total = torch.zeros(width, dtype=torch.float64)
        self.count = 0

    def __call__(self, x: Tensor) -> Tensor:
        self.total.add_(x.detach().double().sum(0).cpu())
        self.count += x.shape[0]
        return x

    def mean(self) -> Tensor:
        return self.total / max(self.count, 1)


def _constant(mean: Tensor) -> Callable[[Tensor], Tensor]:
    """``x [N, d] -> mean`` repeated (mean ablation)."""

    def fn(x: Tensor) -> Tensor:
        return mean.to(device=x.device, dtype=x.dtype).expand_as(x)

    return fn


def _logits(pair: Any, img: Tensor, txt: Tensor, temperature_free: bool) -> Tensor:
    if temperature_free:
        nrm = torch.nn.functional.normalize
        return nrm(img.double(), dim=-1) @ nrm(txt.double(), dim=-1).T
    return pair.logits_from_embeds(img, txt)


def _three_logits(
    pair: Any, runs: _Runs, sae: Any, hook: str, cfg: DownstreamConfig
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Clean, spliced and mean-ablated pair logits, and the rows replaced per hook part."""
    rows = cfg.rows if cfg.rows is not None else getattr(getattr(sae, "cfg", None), "rows", "")
    width = _sae_width(sae)
    parts = splice_parts(hook)
    modes = {p: rows_mode(pair, p, rows, cfg.positions) for p in parts}
    captures = {p: _MeanCapture(width) for p in parts}
    ident = [ReplaceRows(p, captures[p], modes[p], width) for p in parts]
    # the clean runs pass through an identity at the hook (the same code path as the
    # edited runs) that takes the mean of the replaced rows for the mean ablation
    clean = {t: runs.embeds(t, ident) for t in ("image", "text")}
    means = {p: c.mean() for p, c in captures.items()}
    spliced_iv = [ReplaceRows(p, reconstruct(sae), modes[p], width) for p in parts]
    mean_iv = [ReplaceRows(p, _constant(means[p]), modes[p], width) for p in parts]
    out = {"clean": _logits(pair, clean["image"], clean["text"], cfg.temperature_free)}
    for name, ivs in (("spliced", spliced_iv), ("mean_ablated", mean_iv)):
        emb = {
            t: runs.embeds(t, ivs) if any(p.startswith(t) for p in parts) else clean[t]
            for t in ("image", "text")
        }
        out[name] = _logits(pair, emb["image"], emb["text"], cfg.temperature_free)
    return out, modes


@torch.no_grad()
def downstream_metrics(
    pair: Any,
    sae: Any,
    hook: str,
    images: Any,
    texts: Any,
    *,
    config: DownstreamConfig | None = None,
) -> DownstreamMetrics:
    """KL, zero-shot accuracy and loss recovered of ``sae`` spliced at ``hook`` of ``pair``.

    ``images`` / ``texts``: matched pairs (pixel / token tensors, PIL images / strings).

    Returns:
        The clean, spliced and mean-ablated losses and KL (nats), zero-shot accuracies
            (fractions in [0, 1]) and the loss recovered (a fraction; None when
            undefined), each with a bootstrap interval, as :class:`DownstreamMetrics`.

    Raises:
        InputError: a bad config, unmatched pairs or fewer than 2.
        HookNameError: a hook the model lacks.
        ShapeError: the hook's width is not the SAE's ``d_in``.
    """
    cfg = config or DownstreamConfig()
    if not 0 < cfg.level < 1 or cfg.n_boot < 1 or cfg.batch_size < 1:
        raise InputError("DownstreamConfig: level must be in (0, 1), n_boot and batch_size >= 1")
    runs = _Runs(pair, images, texts, cfg.batch_size)
    logits, modes = _three_logits(pair, runs, sae, hook, cfg)
    sigmoid = pair.logit_bias is not None and not cfg.temperature_free
    loss = "sigmoid" if sigmoid else "softmax"
    n = logits["clean"].shape[0]
    draws = resample_indices(n, cfg.n_boot, cfg.seed)
    losses = {k: pair_losses(v, loss) for k, v in logits.items()}
    hits = {k: top1_hits(v) for k, v in logits.items()}
    kl = {k: caption_kl(logits["clean"], logits[k]) for k in ("spliced", "mean_ablated")}

    def est(values: np.ndarray) -> Estimate:
        return bootstrap_means(values, draws, cfg.level)

    return DownstreamMetrics(
        hook=hook,
        n_pairs=n,
        loss=loss,
        logit_scale=1.0 if cfg.temperature_free else float(pair.logit_scale.exp()),
        logit_bias=float(pair.logit_bias) if sigmoid else None,
        temperature_free=cfg.temperature_free,
        positions=dict(modes),
        loss_clean=est(losses["clean"]),
        loss_spliced=est(losses["spliced"]),
        loss_mean_ablated=est(losses["mean_ablated"]),
        loss_recovered=bootstrap_recovered(
            losses["clean"],
            losses["spliced"],
            losses["mean_ablated"],
            draws,
            cfg.level,
            cfg.min_effect,
        ),
        kl_spliced=est(kl["spliced"]),
        kl_mean_ablated=est(kl["mean_ablated"]),
        accuracy_clean=est(hits["clean"]),
        accuracy_spliced=est(hits["spliced"]),
        accuracy_mean_ablated=est(hits["mean_ablated"]),
        level=cfg.level,
        n_boot=cfg.n_boot,
    )
