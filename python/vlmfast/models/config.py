"""Configs of the hooked two-tower model: the internal format every loader produces.

A loader (open_clip, transformers, the bundled tiny model) converts its weights
to a ``PairConfig`` plus a flat state dict with the keys documented in
``vlmfast.models.weights`` (per tower prefix ``image.`` / ``text.``), and
``HookedPair.from_state_dict`` builds the model from the two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from vlmfast.errors import InputError

Modality = Literal["image", "text"]
Activation = Literal["gelu", "quick_gelu", "gelu_tanh"]
FinalLnPlacement = Literal["pre_pool", "post_pool", "none"]
Pooling = Literal["cls", "map", "eot", "eos", "last", "first", "mean"]

_ACTIVATIONS = ("gelu", "quick_gelu", "gelu_tanh")
_FINAL_LN = ("pre_pool", "post_pool", "none")
_IMAGE_POOLS = ("cls", "map", "mean")
_TEXT_POOLS = ("eot", "eos", "last", "first")


@dataclass
class TowerConfig:
    """Shape and wiring of one transformer tower (image or text)."""

    modality: Modality
    """``"image"`` (patch embedding) or ``"text"`` (token embedding)."""
    width: int
    """Residual stream width d."""
    layers: int
    """Number of transformer blocks."""
    heads: int
    """Attention heads per block."""
    head_dim: int
    """Width of one head (``heads * head_dim`` need not equal ``width``; SigLIP-SO400M has 72)."""
    mlp_width: int
    """Hidden width of each block's MLP (the neurons of ``mlp.post``)."""
    act: Activation = "gelu"
    """MLP nonlinearity: ``gelu`` (erf), ``quick_gelu`` (OpenAI CLIP), ``gelu_tanh`` (SigLIP in HF)."""
    ln_eps: float = 1e-5
    """Epsilon of every LayerNorm in the tower."""
    pre_norm: bool = False
    """Whether a LayerNorm (``ln_pre``) follows the embeddings (CLIP vision has one)."""
    final_ln: FinalLnPlacement = "pre_pool"
    """``pre_pool``: LayerNorm on all tokens, then pool (CLIP text, SigLIP, CLIP vision with a
    CLS token); ``post_pool``: pool, then LayerNorm; ``none``: no final LayerNorm."""
    pool: Pooling = "cls"
    """Pooling: ``cls`` (token 0), ``map`` (SigLIP attention-pooling head), ``mean`` (image
    tokens, CLS excluded), ``eot`` (argmax token id, CLIP text), ``eos`` (first occurrence of
    ``eos_token_id``), ``last``, ``first``."""
    embed_dim: int | None = None
    """Width of the projected embedding; ``None`` means no projection (embed = pooled)."""
    proj_bias: bool = False
    """Whether the output projection has a bias (SigLIP text)."""
    # image towers
    image_size: int = 224
    """Input side length in pixels (square images). Need not be a multiple of ``patch_size``:
    like the strided convolution it is, the patch grid drops the remainder (SO400M-14 at 384)."""
    patch_size: int = 16
    """Patch side length in pixels."""
    class_token: bool = True
    """Whether a learned CLS token is prepended (SigLIP has none)."""
    patch_bias: bool = False
    """Whether the patch embedding convolution has a bias (timm/HF SigLIP do)."""
    pool_heads: int | None = None
    """Heads of the MAP pooling head (defaults to ``heads``)."""
    pool_mlp_width: int | None = None
    """Hidden width of the MAP pooling head's MLP (defaults to ``mlp_width``)."""
    # text towers
    vocab_size: int = 49408
    """Token vocabulary size."""
    context_length: int = 77
    """Maximum number of tokens (rows of the position embedding)."""
    causal: bool = True
    """Causal attention mask (CLIP text); SigLIP text attends bidirectionally."""
    eos_token_id: int | None = None
    """Token id pooled by ``pool="eos"`` (its first occurrence in each row)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_tokens(self) -> int:
        """Sequence length T of the image tower (patches plus the CLS token, if any)."""
        grid = self.image_size // self.patch_size
        return grid * grid + (1 if self.class_token else 0)

    @property
    def map_heads(self) -> int:
        """Heads of the MAP pooling head."""
        return self.pool_heads if self.pool_heads is not None else self.heads

    @property
    def map_mlp_width(self) -> int:
        """MLP width of the MAP pooling head."""
        return self.pool_mlp_width if self.pool_mlp_width is not None else self.mlp_width

    def validate(self) -> None:
        """Raises ``InputError`` naming the first inconsistent field."""
        if self.modality not in ("image", "text"):
            raise InputError(
                f"TowerConfig.modality must be 'image' or 'text', got {self.modality!r}"
            )
        for name in ("width", "layers", "heads", "head_dim", "mlp_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise InputError(f"TowerConfig.{name} must be a positive int, got {value!r}")
        if self.act not in _ACTIVATIONS:
            raise InputError(f"TowerConfig.act must be one of {_ACTIVATIONS}, got {self.act!r}")
        if self.final_ln not in _FINAL_LN:
            raise InputError(
                f"TowerConfig.final_ln must be one of {_FINAL_LN}, got {self.final_ln!r}"
            )
        pools = _IMAGE_POOLS if self.modality == "image" else _TEXT_POOLS
        if self.pool not in pools:
            raise InputError(
                f"TowerConfig.pool for a {self.modality} tower must be one of {pools}, got {self.pool!r}"
            )
        if self.modality == "image":
            if self.image_size < self.patch_size:
                raise InputError(
                    f"TowerConfig.image_size {self.image_size} is smaller than "
                    f"patch_size {self.patch_size}"
                )
            if self.pool == "cls" and not self.class_token:
                raise InputError("TowerConfig.pool='cls' needs class_token=True")
        if self.pool == "eos" and self.eos_token_id is None:
            raise InputError("TowerConfig.pool='eos' needs eos_token_id")
        if self.pool == "map" and self.final_ln == "post_pool":
            raise InputError("TowerConfig.pool='map' needs final_ln 'pre_pool' or 'none'")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (round-trips through ``from_dict``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TowerConfig:
        """Builds a config from ``to_dict`` output; unknown keys raise ``InputError``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown TowerConfig fields: {unknown}")
        return cls(**data)


@dataclass
class PairConfig:
    """A CLIP-style pair: an image tower, a text tower and the logit head."""

    image: TowerConfig
    """The image tower."""
    text: TowerConfig
    """The text tower."""
    logit_bias: bool = False
    """Whether the logit has a learned bias (SigLIP: ``scale*cos + bias``)."""
    name: str = ""
    """A human-readable architecture name (e.g. ``ViT-B-32``)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form loader metadata (e.g. the open_clip config), kept in saved stores."""

    def __post_init__(self) -> None:
        if self.image.modality != "image":
            raise InputError("PairConfig.image must be a TowerConfig with modality='image'")
        if self.text.modality != "text":
            raise InputError("PairConfig.text must be a TowerConfig with modality='text'")
        if self.image.embed_dim != self.text.embed_dim and None not in (
            self.image.embed_dim,
            self.text.embed_dim,
        ):
            raise InputError(
                f"image embed_dim {self.image.embed_dim} != text embed_dim {self.text.embed_dim}"
            )

    def tower(self, modality: str) -> TowerConfig:
        """The tower config for ``"image"`` or ``"text"``."""
        if modality == "image":
            return self.image
        if modality == "text":
            return self.text
        raise InputError(f"unknown tower {modality!r}: expected 'image' or 'text'")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (round-trips through ``from_dict``)."""
        return {
            "image": self.image.to_dict(),
            "text": self.text.to_dict(),
            "logit_bias": self.logit_bias,
            "name": self.name,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairConfig:
        """Builds a config from ``to_dict`` output."""
        return cls(
            image=TowerConfig.from_dict(dict(data["image"])),
            text=TowerConfig.from_dict(dict(data["text"])),
            logit_bias=bool(data.get("logit_bias", False)),
            name=str(data.get("name", "")),
            extra=dict(data.get("extra", {})),
        )
