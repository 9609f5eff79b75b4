"""The configuration of ``vlmfast run``: one TOML file, read into strict dataclasses.

Every section is a dataclass of :mod:`vlmfast.pipeline.sections` (re-exported here) and
every field has a docstring (the reference in the README is generated from them). A key the dataclass does not have is an error naming
the key, its section and the allowed keys: a typo never silently falls back to a default.
TOML has no null: an optional field (default none) is left out to keep its default.
Negative layer indices in hook names (``image.blocks.-1.resid_post``) are resolved
against the model when a stage runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmfast.causal.core.corruption import CORRUPTIONS
from vlmfast.causal.core.vocabulary import (
    ATTRIBUTION_KINDS,
    ATTRIBUTION_METHODS,
    TOWERS,
    TRACE_KINDS,
)
from vlmfast.errors import InputError
from vlmfast.pipeline.sections import (
    STAGE_NAMES,
    AttributeSection,
    CacheSection,
    CircuitSection,
    ConceptsSection,
    CrossModalSection,
    DataSection,
    HooksSection,
    InterveneSection,
    ModelSection,
    QualitySection,
    ReportSection,
    RunSection,
    SAESection,
    ScoreSection,
    TraceSection,
)
from vlmfast.sae.config import ARCHS as SAE_ARCHS
from vlmfast.sae.rows import ROWS as SAE_ROWS


@dataclass
class PipelineConfig:
    """A whole ``vlmfast run`` config: one attribute per TOML section."""

    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    hooks: HooksSection = field(default_factory=HooksSection)
    cache: CacheSection = field(default_factory=CacheSection)
    quality: QualitySection = field(default_factory=QualitySection)
    sae: SAESection = field(default_factory=SAESection)
    concepts: ConceptsSection = field(default_factory=ConceptsSection)
    score: ScoreSection = field(default_factory=ScoreSection)
    trace: TraceSection = field(default_factory=TraceSection)
    attribute: AttributeSection = field(default_factory=AttributeSection)
    circuit: CircuitSection = field(default_factory=CircuitSection)
    intervene: InterveneSection = field(default_factory=InterveneSection)
    crossmodal: CrossModalSection = field(default_factory=CrossModalSection)
    report: ReportSection = field(default_factory=ReportSection)

    def to_dict(self) -> dict[str, Any]:
        """Returns the resolved config (every default filled in), JSON-ready."""
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Returns a hash of the resolved config (``run.json``'s ``config_hash``): 16 hex digits."""
        return stable_hash(self.to_dict())

    def get(self, path: str) -> Any:
        """Returns the value at ``section.field`` (or a whole ``section``, as a dict)."""
        obj: Any = self
        for part in path.split("."):
            obj = getattr(obj, part)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        return obj


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), first 16 hex digits."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- strict loading

CONFIG_DOCS = "docs/reference/config.md"
"""The generated page of every config key (errors about keys cite it)."""


_CHOICES: dict[str, tuple[str, ...]] = {
    "hooks.positions": ("all", "cls", "eot", "pooled", "mean"),
    "cache.dtype": ("float32", "float16", "bfloat16"),
    "cache.compression": ("none", "zstd"),
    "score.tokens": ("max", "mean", "pooled", "auto", "patch", "all", "cls"),
    "score.ground_truth": ("auto", "synthetic", "none"),
    "attribute.corrupt": CORRUPTIONS,
    "attribute.method": ATTRIBUTION_METHODS,
    "circuit.corrupt": ("text-swap", "image-swap", "both-swap", "image-noise", "image-shift"),
    "intervene.units": ("image", "text", "neurons"),
    "circuit.ranking": ("atp", "atp*", "exact"),
    "circuit.ablation": ("mean", "resample", "zero"),
    "intervene.ablation": ("mean", "zero"),
    "trace.metric": ("score", "logit_diff", "alignment"),
    "sae.rows": SAE_ROWS,
    "sae.arch": SAE_ARCHS,
}
_LIST_CHOICES: dict[str, tuple[str, ...]] = {
    "run.stages": STAGE_NAMES,
    "trace.towers": TOWERS,
    "trace.kinds": TRACE_KINDS,
    "attribute.components": ATTRIBUTION_KINDS,
    "attribute.towers": TOWERS,
    "intervene.modes": ("ablate", "steer"),
    "circuit.components": ("heads", "neurons"),
    "circuit.towers": TOWERS,
}
_POSITIVE: tuple[str, ...] = (
    "cache.batch_size",
    "cache.chunk_rows",
    "quality.eval_samples",
    "sae.n_latents",
    "sae.k",
    "sae.steps",
    "sae.batch_size",
    "score.top_n",
    "trace.pairs",
    "trace.samples",
    "trace.window",
    "attribute.pairs",
    "circuit.pairs",
    "circuit.grid",
    "intervene.n",
    "crossmodal.n_latents",
    "crossmodal.k",
    "crossmodal.steps",
    "crossmodal.n_null",
    "crossmodal.n_boot",
    "crossmodal.grounding_heads",
    "crossmodal.fusion_units",
)


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        (arg,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, arg) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, tp)


def _wants_float(tp: Any) -> bool:
    args = (
        typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    )
    return float in args and int not in args


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _section(cls: type, data: Any, name: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{where}: [{name}] must be a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    allowed = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in allowed:
            raise InputError(
                f"{where}: unknown key {key!r} in [{name}]; allowed keys: {', '.join(allowed)} "
                f"(every key is explained in {CONFIG_DOCS})"
            )
        tp = hints[key]
        if not _type_ok(value, tp):
            raise InputError(f"{where}: [{name}] {key} must be {_type_name(tp)}, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and _wants_float(tp):
            value = float(value)  # TOML writes 4 for 4.0
        kwargs[key] = value
    return cls(**kwargs)


def _validate(cfg: PipelineConfig, where: str) -> None:
    for path, choices in _CHOICES.items():
        value = cfg.get(path)
        if value not in choices:
            raise InputError(f"{where}: {path} must be one of {list(choices)}, got {value!r}")
    for path, choices in _LIST_CHOICES.items():
        bad = [v for v in cfg.get(path) if v not in choices]
        if bad:
            raise InputError(f"{where}: {path} entries must be among {list(choices)}, got {bad}")
    for path in _POSITIVE:
        if cfg.get(path) < 1:
            raise InputError(f"{where}: {path} must be >= 1, got {cfg.get(path)}")
    _check_model(cfg.model.spec, where)
    if cfg.run.threads is not None and cfg.run.threads < 1:
        raise InputError(f"{where}: run.threads must be >= 1, got {cfg.run.threads}")
    if cfg.sae.k > cfg.sae.n_latents:
        raise InputError(
            f"{where}: sae.k ({cfg.sae.k}) exceeds sae.n_latents ({cfg.sae.n_latents})"
        )
    if cfg.attribute.pairs < 2:
        raise InputError(f"{where}: attribute.pairs must be >= 2, got {cfg.attribute.pairs}")
    if not 0.0 < cfg.circuit.target <= 1.0:
        raise InputError(f"{where}: circuit.target must be in (0, 1], got {cfg.circuit.target}")
    noise = cfg.trace.noise
    if isinstance(noise, str) and noise not in ("zero", "3x"):
        raise InputError(f"{where}: trace.noise must be 'zero', '3x' or a float, got {noise!r}")
    order = {s: i for i, s in enumerate(STAGE_NAMES)}
    cfg.run.stages = sorted(dict.fromkeys(cfg.run.stages), key=order.__getitem__)


def _check_model(spec: str, where: str) -> None:
    """A model spec names a known source (the weights are looked for when a stage loads)."""
    from vlmfast.models.registry import SCHEMES

    scheme, colon, rest = spec.partition(":")
    if not colon or scheme not in SCHEMES or not rest:
        raise InputError(
            f"{where}: model.spec must be {' or '.join(f'{s}:...' for s in SCHEMES)} "
            f"(e.g. synthetic:tiny), got {spec!r}"
        )


def config_from_dict(data: dict[str, Any], where: str = "config") -> PipelineConfig:
    """Returns a validated :class:`PipelineConfig` from a parsed TOML document.

    Raises:
        InputError: an unknown section or key, a value of the wrong type or out of range
            (the message names it and ``where``).
    """
    sections = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    hints = typing.get_type_hints(PipelineConfig)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in sections:
            raise InputError(
                f"{where}: unknown section [{name}]; allowed sections: {', '.join(sections)} "
                f"(see {CONFIG_DOCS})"
            )
        kwargs[name] = _section(hints[name], value, name, where)
    cfg = PipelineConfig(**kwargs)
    _validate(cfg, where)
    return cfg


def load_config(path: str | Path) -> PipelineConfig:
    """Returns the validated :class:`PipelineConfig` of a ``vlmfast run`` TOML file.

    Raises:
        InputError: no such file, not valid TOML, or an invalid config.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"--config {p}: no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"--config {p}: not valid TOML: {err}") from None
    return config_from_dict(data, where=str(p))


def parse_config(text: str, where: str = "config") -> PipelineConfig:
    """Returns a validated :class:`PipelineConfig` from TOML text.

    Raises:
        InputError: not valid TOML, or an invalid config.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{where}: not valid TOML: {err}") from None
    return config_from_dict(data, where=where)


def demo_config_text() -> str:
    """Returns the TOML text of the bundled demo config (``vlmfast/pipeline/demo.toml``)."""
    from importlib import resources

    return resources.files("vlmfast.pipeline").joinpath("demo.toml").read_text()


def demo_config() -> PipelineConfig:
    """Returns the bundled demo config, parsed."""
    return parse_config(demo_config_text(), where="vlmfast/pipeline/demo.toml")


__all__ = [
    "STAGE_NAMES",
    "AttributeSection",
    "CacheSection",
    "CircuitSection",
    "ConceptsSection",
    "CrossModalSection",
    "DataSection",
    "HooksSection",
    "InterveneSection",
    "ModelSection",
    "PipelineConfig",
    "QualitySection",
    "ReportSection",
    "RunSection",
    "SAESection",
    "ScoreSection",
    "TraceSection",
    "config_from_dict",
    "demo_config",
    "demo_config_text",
    "load_config",
    "parse_config",
    "stable_hash",
]
