"""The few calls patching makes into the hooked model, in one place."""

from __future__ import annotations

from typing import Any

import torch

from vlmfast.errors import InputError, ShapeError
from vlmfast.models.interventions import Intervention


def as_inputs(pair: Any, images: Any, texts: Any, need_both: bool = True) -> tuple[Any, Any]:
    """Pixels and token ids on the pair's device (PIL images / strings are preprocessed)."""
    if need_both and (images is None or texts is None):
        raise InputError("patching needs both images= and texts= (paired by index)")
    if images is not None:
        if isinstance(images, torch.Tensor):
            images = images.to(device=pair.device, dtype=pair.dtype)
        else:
            images = pair.preprocess(images)
    if texts is not None:
        texts = texts.to(pair.device) if isinstance(texts, torch.Tensor) else pair.tokenize(texts)
    return images, texts


def tower(pair: Any, name: str) -> Any:
    """The hooked tower module (``pair.image`` / ``pair.text``)."""
    return pair.tower(name)


def n_layers(pair: Any, name: str) -> int:
    return int(pair.config.tower(name).layers)


def n_heads(pair: Any, name: str) -> int:
    return int(pair.config.tower(name).heads)


def mlp_width(pair: Any, name: str) -> int:
    return int(pair.config.tower(name).mlp_width)


def n_tokens(pair: Any, name: str, inputs: torch.Tensor) -> int:
    if name == "image":
        return int(pair.config.image.n_tokens)
    return int(inputs.shape[1])


def n_components(pair: Any, name: str, kind: str, inputs: torch.Tensor) -> int:
    """Components of one kind per layer: heads, MLP neurons, else token positions."""
    if kind == "heads":
        return n_heads(pair, name)
    if kind == "neurons":
        return mlp_width(pair, name)
    return n_tokens(pair, name, inputs)


def logit_scale_bias(pair: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(log scale, bias or None)`` as detached tensors."""
    scale = pair.logit_scale.detach()
    bias = pair.logit_bias.detach() if pair.logit_bias is not None else None
    return scale, bias


def embed(pair: Any, name: str, inputs: torch.Tensor) -> torch.Tensor:
    """Projected embeddings of one tower."""
    out: torch.Tensor = tower(pair, name).run(inputs).embed
    return out


def run_cache(
    pair: Any, name: str, inputs: torch.Tensor, hooks: list[str]
) -> dict[str, torch.Tensor]:
    """Full forward of one tower with ``hooks`` cached."""
    cache: dict[str, torch.Tensor] = tower(pair, name).run(inputs, cache=hooks).cache
    return cache


def run_cache_embed(
    pair: Any, name: str, inputs: torch.Tensor, hooks: list[str]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Full forward of one tower: ``(cache of hooks, embeddings)``."""
    out = tower(pair, name).run(inputs, cache=hooks)
    return out.cache, out.embed


class ReplaceRows(Intervention):
    """Replaces a hook's value by a precomputed tensor of the same shape.

    The batched sweep builds that tensor (the base value, with component ``c_j`` of row
    block ``j`` taken from the source), so one forward carries many different patches.
    """

    def __init__(self, hook: str, value: torch.Tensor) -> None:
        super().__init__(hook)
        self.value = value

    def apply(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.value.shape:
            raise ShapeError(
                f"patch for {name} has shape {tuple(self.value.shape)}, hook has {tuple(x.shape)}"
            )
        return self.value.to(dtype=x.dtype, device=x.device)


def run_from(
    pair: Any,
    name: str,
    layer: int,
    resid: torch.Tensor,
    replace: tuple[str, torch.Tensor] | None,
    tokens: torch.Tensor | None,
) -> torch.Tensor:
    """Embeddings of a tower continued from ``blocks.{layer}.resid_pre`` = ``resid``."""
    interventions = [ReplaceRows(*replace)] if replace is not None else None
    out = tower(pair, name).run_from(layer, resid, tokens=tokens, interventions=interventions)
    embeds: torch.Tensor = out.embed
    return embeds


def run_full_patched(
    pair: Any,
    images: torch.Tensor,
    texts: torch.Tensor,
    hook: str | None,
    source: torch.Tensor | None,
    kwarg: str,
    index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One full forward of the pair with ``vf.Patch(hook, source, <kwarg>=[index])``."""
    from vlmfast.models.interventions import Patch

    interventions = None
    if hook is not None:
        interventions = [Patch(hook, source=source, **{kwarg: [index]})]
    out = pair.run(images=images, texts=texts, interventions=interventions)
    return out.image_embeds, out.text_embeds
