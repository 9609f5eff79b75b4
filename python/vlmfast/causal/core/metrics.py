"""Metrics of a patched run, computed on the pair's real score.

CLIP and SigLIP meet only in the logit ``scale * cos(img, txt) (+ bias)``; a patching
metric must be that score (SigLIP's bias and the logit scale are
part of it), not a raw dot product.

A metric maps a similarity tensor ``[..., n_img, n_txt]`` to ``[...]`` (one number per
patched variant; the leading dims are the variants stacked by the sweep). Each metric
says which similarity it reads: ``"logits"`` (``scale*cos + bias``) or ``"cosine"``;
``"dot"`` (``scale * img . txt + bias``, unnormalised) is not a CLIP score: it exists
for linear analyses and tests (attribution is exact on a linear pair only under it).
Images and texts are paired by index: caption ``i`` describes image ``i``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from vlmfast.errors import InputError, ShapeError


def _diag(sim: torch.Tensor, what: str) -> torch.Tensor:
    n_img, n_txt = sim.shape[-2], sim.shape[-1]
    if n_txt < n_img:
        raise ShapeError(
            f"{what} pairs image i with caption i, so it needs at least as many captions as "
            f"images; got {n_img} images and {n_txt} captions"
        )
    return sim.diagonal(dim1=-2, dim2=-1)[..., :n_img]


@dataclass(frozen=True)
class MatchedScore:
    """Mean over images of the matched score ``logit(i, caption i)``."""

    space: str = "logits"
    """``"logits"`` (scale*cos + bias) or ``"cosine"``."""

    def __call__(self, sim: torch.Tensor) -> torch.Tensor:
        return _diag(sim, "MatchedScore").mean(-1)


@dataclass(frozen=True)
class LogitDiff:
    """Mean over images of ``logit(i, caption i) - logit(i, foil)``.

    The foil of image ``i`` is caption ``foils[i]`` when given (a hard negative, e.g.
    the caption with its colors swapped, placed after the matched captions), else the
    mean of all other captions.
    """

    foils: tuple[int, ...] | None = None
    """Index of the mismatched caption of each image; None = mean of all other captions."""
    space: str = "logits"
    """``"logits"`` (scale*cos + bias) or ``"cosine"``."""

    def __call__(self, sim: torch.Tensor) -> torch.Tensor:
        n_img, n_txt = sim.shape[-2], sim.shape[-1]
        matched = _diag(sim, "LogitDiff")
        if self.foils is not None:
            if len(self.foils) != n_img:
                raise ShapeError(
                    f"LogitDiff.foils has {len(self.foils)} entries for {n_img} images"
                )
            idx = torch.tensor(self.foils, device=sim.device)
            if bool(((idx < 0) | (idx >= n_txt)).any()):
                raise InputError(
                    f"LogitDiff.foils must index the {n_txt} captions; got {self.foils}"
                )
            rows = torch.arange(n_img, device=sim.device)
            if bool((idx == rows).any()):
                raise InputError("LogitDiff.foils[i] must differ from i (the matched caption)")
            foil = sim[..., rows, idx]
        else:
            if n_txt < 2:
                raise ShapeError("LogitDiff needs at least two captions")
            foil = (sim[..., :n_img, :].sum(-1) - matched) / (n_txt - 1)
        return (matched - foil).mean(-1)


def Alignment() -> MatchedScore:
    """Returns the metric "mean matched cosine ``cos(image i, caption i)``" (in [-1, 1]);
    with ``normalize="delta"`` this is the alignment delta of a patch."""
    return MatchedScore(space="cosine")


Metric = Callable[[torch.Tensor], torch.Tensor]

_NAMED: dict[str, Callable[[], Metric]] = {
    "score": MatchedScore,
    "logit_diff": LogitDiff,
    "alignment": Alignment,
}


def resolve_metric(metric: str | Metric) -> Metric:
    """Returns a metric object from a name (``score``, ``logit_diff``, ``alignment``) or a
    callable (returned as it is).

    Raises:
        InputError: an unknown name, or neither a name nor a callable.
    """
    if isinstance(metric, str):
        try:
            return _NAMED[metric]()
        except KeyError:
            raise InputError(
                f"unknown metric {metric!r}; expected one of {sorted(_NAMED)} or a callable"
            ) from None
    if not callable(metric):
        raise InputError(f"metric must be a name or a callable, got {type(metric).__name__}")
    return metric


def metric_space(metric: Metric) -> str:
    """Which similarity the metric reads (``"logits"`` unless it says ``space="cosine"``)."""
    space = getattr(metric, "space", "logits")
    if space not in ("logits", "cosine", "dot"):
        raise InputError(f"metric.space must be 'logits', 'cosine' or 'dot', got {space!r}")
    return str(space)


def similarity(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    space: str,
) -> torch.Tensor:
    """Returns the similarity ``[..., n_img, n_txt]``: cosine (in [-1, 1]) or the logits
    ``scale*cos + bias`` (scale = exp(logit_scale)).

    ``space="dot"``: ``scale * img . txt + bias`` on the unnormalised embeddings.
    """
    if space == "dot":
        out = (image_embeds @ text_embeds.transpose(-1, -2)) * logit_scale.exp()
        return out + logit_bias if logit_bias is not None else out
    img = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    txt = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    cos = img @ txt.transpose(-1, -2)
    if space == "cosine":
        return cos
    out = cos * logit_scale.exp()
    if logit_bias is not None:
        out = out + logit_bias
    return out
