"""The architecture options of a training run (``TrainSAEConfig``, ``vlmfast train-sae``,
the pipeline's ``[sae]``), passed through to every :class:`~vlmfast.sae.config.SAEConfig`.

Each option is left ``None`` by default (the SAEConfig's own default applies) and belongs
to the architectures listed in :data:`ARCH_OPTIONS`; giving one to another architecture is
an error naming it (it would silently do nothing).
"""

from __future__ import annotations

from typing import Any

from vlmfast.errors import InputError

ARCH_OPTIONS: dict[str, tuple[str, ...]] = {
    "groups": ("matryoshka",),
    "threshold_ema": ("batchtopk", "matryoshka"),
    "threshold_init": ("jumprelu",),
    "bandwidth": ("jumprelu",),
    "l0_coef": ("jumprelu",),
    "l0_coef_adapt": ("jumprelu",),
}
"""SAEConfig field -> the architectures it applies to."""


def arch_fields(cfg: Any) -> dict[str, Any]:
    """The architecture options ``cfg`` sets (not None), as SAEConfig keyword arguments."""
    out = {}
    for name in ARCH_OPTIONS:
        value = getattr(cfg, name, None)
        if value is not None:
            out[name] = list(value) if name == "groups" else value
    return out


def check_arch_options(cfg: Any) -> None:
    """Raises ``InputError`` naming an option set for an architecture it does not apply to."""
    for name, value in arch_fields(cfg).items():
        archs = ARCH_OPTIONS[name]
        if cfg.arch not in archs:
            raise InputError(
                f"{name}={value!r} applies to arch {' or '.join(archs)}, not arch={cfg.arch!r}"
            )
