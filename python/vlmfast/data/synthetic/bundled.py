"""The tiny CLIP that ships inside vlmfast (``load_pair("synthetic:tiny")``).

``load_bundled()`` returns what an open_clip loader needs, with no network:
``(open_clip config dict, open_clip state_dict, tokenizer, preprocess)``:

- config: ``{"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}`` as in open_clip's
  model configs (``open_clip.CLIP(**config)`` rebuilds the model);
- state_dict: open_clip's own parameter names (``visual.conv1.weight``,
  ``transformer.resblocks.0.attn.in_proj_weight``, ``text_projection`` [width,
  embed_dim], ``logit_scale``, ...), float32 tensors;
- tokenizer: ``WordTokenizer`` (callable ``list[str] -> LongTensor[B, 18]``, EOT = max id);
- preprocess: ``SyntheticPreprocess`` (callable ``PIL.Image -> Tensor[3, 64, 64]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmfast.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    from vlmfast.data.synthetic.model import SyntheticPreprocess
    from vlmfast.data.synthetic.tokenizer import WordTokenizer

WEIGHTS_FILE = "model.safetensors"


def bundled_dir() -> Path:
    """The package folder holding the bundled weights, config, training record and card."""
    return Path(__file__).resolve().parent / "weights"


def _read_dir(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors.torch import load_file

    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(
            f"no {WEIGHTS_FILE} in {path} (expected the output of `vlmfast synth train`)"
        )
    try:
        config = json.loads((path / "config.json").read_text())
        info_file = path / "train.json"
        info = json.loads(info_file.read_text()) if info_file.is_file() else {}
        state = load_file(str(weights))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot read the tiny CLIP in {path}: {err}") from err
    return config, state, info


def load_bundled(
    path: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], WordTokenizer, SyntheticPreprocess]:
    """(open_clip config dict, state_dict, tokenizer, preprocess) of the bundled model
    (or of a ``vlmfast synth train`` output folder ``path``)."""
    from vlmfast.data.synthetic.model import SyntheticPreprocess
    from vlmfast.data.synthetic.tokenizer import WordTokenizer

    config, state, _ = _read_dir(Path(path) if path is not None else bundled_dir())
    tokenizer = WordTokenizer(config["text_cfg"]["context_length"])
    if tokenizer.vocab_size != config["text_cfg"]["vocab_size"]:
        raise ModelLoadError(
            f"tiny CLIP vocab_size {config['text_cfg']['vocab_size']} != tokenizer's {tokenizer.vocab_size}"
        )
    return config, state, tokenizer, SyntheticPreprocess(config["vision_cfg"]["image_size"])


def load_clip_dir(path: Path) -> tuple[torch.nn.Module, WordTokenizer, dict[str, Any]]:
    """An open_clip ``CLIP`` module (eval mode), its tokenizer and its training record."""
    from vlmfast.data.synthetic.model import build_clip
    from vlmfast.data.synthetic.tokenizer import WordTokenizer

    config, state, info = _read_dir(path)
    model = build_clip(config)
    model.load_state_dict(state)
    model.eval()
    return model, WordTokenizer(config["text_cfg"]["context_length"]), info


def load_bundled_clip() -> tuple[torch.nn.Module, WordTokenizer, dict[str, Any]]:
    """The bundled model as an open_clip ``CLIP`` module (eval mode)."""
    return load_clip_dir(bundled_dir())


BUNDLED_NAMES: tuple[str, ...] = ("tiny",)


def load_pair(
    name: str = "tiny",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Any:
    """``load_pair("synthetic:tiny")``: the bundled model as a ``HookedPair``, converted
    by the models layer's open_clip loader (``vlmfast.models.from_open_clip``).

    ``name`` may also be the folder of a ``vlmfast synth train`` run.
    """
    from vlmfast.models.loading.open_clip import from_open_clip

    if name in BUNDLED_NAMES:
        path, spec = bundled_dir(), f"synthetic:{name}"
    elif Path(name).is_dir():
        path, spec = Path(name), f"synthetic:{name}"
    else:
        raise ModelLoadError(
            f"unknown synthetic model {name!r}; expected one of {BUNDLED_NAMES} or a `vlmfast synth train` folder"
        )
    from vlmfast.data.synthetic.model import SyntheticPreprocess

    model, tokenizer, _ = load_clip_dir(path)
    config = json.loads((path / "config.json").read_text())
    preprocess = SyntheticPreprocess(int(config["vision_cfg"]["image_size"]))
    return from_open_clip(
        model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        spec=spec,
        name="synthetic-tiny",
        device=device,
        dtype=dtype,
    )
