"""``load_pair("hf:<hub id or local dir>")``: transformers' CLIPModel and SiglipModel.

The checkpoint is read with transformers from a local directory only (a hub id must
already be in the local Hugging Face cache): vlmfast never downloads. Weights are
converted to the internal format (``hf_convert``) and loaded into vlmfast's own hooked
towers, which match the transformers forward within 1e-4 in fp32 (tests/models/
test_hf_parity.py).
"""

from __future__ import annotations

from typing import Any

import torch

from vlmfast.errors import ModelLoadError
from vlmfast.models.loading.hf_convert import ConvertedPair, convert
from vlmfast.models.loading.hf_processing import HFPreprocess, HFTokenizer
from vlmfast.models.loading.hf_resolve import resolve_local_dir

PREFIX = "hf:"

#: model_type -> what loads (shown by ``vlmfast models``)
FAMILIES = {
    "clip": "CLIPModel, e.g. hf:openai/clip-vit-base-patch32",
    "siglip": "SiglipModel (+ fixed-res SigLIP2), e.g. hf:google/siglip-so400m-patch14-384",
}


def _read_hf(path: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    from transformers import AutoConfig, CLIPModel, SiglipModel

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as err:
        raise ModelLoadError(f"cannot read the hf config in {str(path)!r}: {err}") from err
    model_type = str(getattr(config, "model_type", ""))
    classes: dict[str, Any] = {"clip": CLIPModel, "siglip": SiglipModel}
    if model_type not in classes:
        convert(config, {})  # raises the unsupported-model ModelLoadError
    try:
        model = classes[model_type].from_pretrained(
            str(path), config=config, local_files_only=True, dtype=torch.float32
        )
    except Exception as err:
        raise ModelLoadError(
            f"cannot load the {model_type} weights in {str(path)!r}: {err}"
        ) from err
    return config, dict(model.state_dict())


def build_pair_config(converted: ConvertedPair, name: str) -> Any:
    """The PairConfig of a converted checkpoint."""
    from vlmfast.models.config import PairConfig, TowerConfig

    return PairConfig(
        image=TowerConfig(**converted.image),
        text=TowerConfig(**converted.text),
        logit_bias=bool(converted.pair["logit_bias"]),
        name=name,
        extra={"source": "transformers", "family": converted.family},
    )


def load_hf(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Any:
    """Loads ``hf:<name>`` (``name`` = a local directory or a cached hub id) as a HookedPair.

    ``pretrained`` must be None: the weights are the checkpoint's own.
    """
    from vlmfast.models.pair import HookedPair

    if name.startswith(PREFIX):
        name = name[len(PREFIX) :]
    if pretrained is not None:
        raise ModelLoadError(
            f"hf:{name}: pretrained={pretrained!r} is not used for hf: specs (the directory "
            "holds the weights); pass pretrained=None"
        )
    path = resolve_local_dir(name)
    config, state = _read_hf(path)
    converted = convert(config, state)
    pair_config = build_pair_config(converted, name)
    tokenizer = HFTokenizer(path, converted.family, pair_config.text.context_length)
    preprocess = HFPreprocess(path, converted.family, pair_config.image.image_size)
    pair: Any = HookedPair.from_state_dict(
        pair_config,
        converted.state,
        tokenizer=tokenizer,
        preprocess=preprocess,
        spec=f"{PREFIX}{name}",
        device=device,
        dtype=dtype,
    )
    return pair
