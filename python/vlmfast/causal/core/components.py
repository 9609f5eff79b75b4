"""What a patch sweep patches: a hook point per layer and an axis of it to index.

``heads``     -> ``blocks.L.attn.z`` ([B,T,H,d_head]), axis 2 (also q, k, v, head_out)
``neurons``   -> ``blocks.L.mlp.post`` ([B,T,mlp]), axis 2 (also mlp.pre)
``positions`` -> ``blocks.L.resid_pre`` ([B,T,d]), axis 1 (any token-level hook)
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmfast.errors import InputError

_HEAD_POINTS = ("attn.z", "attn.q", "attn.k", "attn.v", "attn.head_out")
_NEURON_POINTS = ("mlp.post", "mlp.pre")
_TOKEN_POINTS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", *_NEURON_POINTS)

_DEFAULT_POINT = {"heads": "attn.z", "neurons": "mlp.post", "positions": "resid_pre"}
_ALLOWED_POINTS = {"heads": _HEAD_POINTS, "neurons": _NEURON_POINTS, "positions": _TOKEN_POINTS}
_AXIS = {"heads": 2, "neurons": 2, "positions": 1}
_INTERVENTION_KWARG = {"heads": "heads", "neurons": "neurons", "positions": "positions"}


@dataclass(frozen=True)
class ComponentSpec:
    """One kind of component of one tower: the hook point in each block and the axis indexed."""

    tower: str
    """``"image"`` or ``"text"``."""
    kind: str
    """``"heads"``, ``"neurons"`` or ``"positions"``."""
    point: str
    """Hook point inside block L, e.g. ``"attn.z"`` (full name ``{tower}.blocks.{L}.{point}``)."""

    @property
    def axis(self) -> int:
        """The axis of the hook tensor that the component index selects."""
        return _AXIS[self.kind]

    @property
    def intervention_kwarg(self) -> str:
        """The keyword of ``vf.Patch`` that selects these components (``heads=[h]``…)."""
        return _INTERVENTION_KWARG[self.kind]

    def hook(self, layer: int) -> str:
        """Returns the full hook name at ``layer``."""
        return f"{self.tower}.blocks.{layer}.{self.point}"


def component_spec(tower: str, kind: str, point: str | None = None) -> ComponentSpec:
    """Returns the validated :class:`ComponentSpec`.

    Raises:
        InputError: an unknown ``tower`` or ``kind``, or a ``point`` that kind cannot patch
            (the message names the bad argument).
    """
    if tower not in ("image", "text"):
        raise InputError(f"tower must be 'image' or 'text', got {tower!r}")
    if kind not in _DEFAULT_POINT:
        raise InputError(f"component must be one of {sorted(_DEFAULT_POINT)}, got {kind!r}")
    point = point or _DEFAULT_POINT[kind]
    if point not in _ALLOWED_POINTS[kind]:
        raise InputError(
            f"hook point {point!r} cannot be patched by {kind}; expected one of {list(_ALLOWED_POINTS[kind])}"
        )
    return ComponentSpec(tower, kind, point)
