"""Splice an SAE's reconstruction back into a model and measure what the model loses.

``SpliceSAE`` is an intervention (for ``pair.run(interventions=[...])``) that replaces a
hook's activations by the SAE reconstruction. ``evaluate_splice`` runs a probe set of
matched image/caption pairs clean and spliced and reports the cosine between clean and
spliced embeddings and the change in image->text and text->image retrieval accuracy
(from ``pair.logits``, i.e. ``exp(logit_scale) * cos`` (+ bias for SigLIP)) and in
the mean logit of the matched pair.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from vlmfast.errors import InputError, ShapeError
from vlmfast.models.interventions import Intervention
from vlmfast.sae.model import TopKSAE


class SpliceSAE(Intervention):
    """Replace ``hook``'s activations (any ``[..., d_in]`` shape) by ``sae(x)``."""

    def __init__(self, hook: str, sae: TopKSAE, **selectors: Any) -> None:
        super().__init__(hook, **selectors)
        self.sae = sae

    def apply(self, name: str, x: Tensor) -> Tensor:
        if x.shape[-1] != self.sae.d_in:
            raise ShapeError(
                f"SpliceSAE: hook {name} has width {x.shape[-1]}, the SAE d_in={self.sae.d_in}"
            )
        flat = x.reshape(-1, x.shape[-1])
        recon = self.sae(flat.to(self.sae.W_dec.dtype)).to(x.dtype).reshape(x.shape)
        return self._blend(name, x, recon)


@dataclass
class SpliceReport:
    """Clean vs spliced behaviour of a model on a probe set of matched pairs."""

    hook: str
    n_pairs: int
    image_embed_cos: float
    """Mean cosine between clean and spliced image embeddings (1.0 if the hook is text-side)."""
    text_embed_cos: float
    """Mean cosine between clean and spliced text embeddings (1.0 if the hook is image-side)."""
    i2t_acc_clean: float
    i2t_acc_spliced: float
    t2i_acc_clean: float
    t2i_acc_spliced: float
    matched_logit_clean: float
    """Mean logit (scale included) of the matched image/caption pairs."""
    matched_logit_spliced: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _accuracies(logits: Tensor) -> tuple[float, float]:
    target = torch.arange(logits.shape[0], device=logits.device)
    i2t = float((logits.argmax(1) == target).float().mean())
    t2i = float((logits.argmax(0) == target).float().mean())
    return i2t, t2i


@torch.no_grad()
def evaluate_splice(pair: Any, sae: TopKSAE, hook: str, images: Any, texts: Any) -> SpliceReport:
    """Run ``pair`` on matched ``images[i]`` / ``texts[i]`` with and without the SAE at ``hook``.

    ``hook`` is a model hook name, or ``joint.<point>`` to splice both towers' ``<point>``.
    """
    hooks = [f"image.{hook[6:]}", f"text.{hook[6:]}"] if hook.startswith("joint.") else [hook]
    clean = pair.run(images=images, texts=texts)
    if clean.logits is None or clean.logits.shape[0] != clean.logits.shape[1]:
        raise InputError("evaluate_splice needs as many images as texts (matched pairs)")
    spliced = pair.run(images=images, texts=texts, interventions=[SpliceSAE(h, sae) for h in hooks])
    cos = torch.nn.functional.cosine_similarity
    i2t_c, t2i_c = _accuracies(clean.logits)
    i2t_s, t2i_s = _accuracies(spliced.logits)
    return SpliceReport(
        hook=hook,
        n_pairs=int(clean.logits.shape[0]),
        image_embed_cos=float(cos(clean.image_embeds, spliced.image_embeds, dim=-1).mean()),
        text_embed_cos=float(cos(clean.text_embeds, spliced.text_embeds, dim=-1).mean()),
        i2t_acc_clean=i2t_c,
        i2t_acc_spliced=i2t_s,
        t2i_acc_clean=t2i_c,
        t2i_acc_spliced=t2i_s,
        matched_logit_clean=float(clean.logits.diagonal().mean()),
        matched_logit_spliced=float(spliced.logits.diagonal().mean()),
    )
