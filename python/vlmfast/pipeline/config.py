"""The configuration of ``vlmfast run``: one TOML file, read into strict dataclasses.

Every section is a dataclass below and every field has a docstring (the reference in
the README is generated from them). A key the dataclass does not have is an error naming
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

from vlmfast.errors import InputError

STAGE_NAMES: tuple[str, ...] = (
    "cache",
    "train-sae",
    "score",
    "trace",
    "attribute",
    "circuit",
    "intervene",
    "report",
)
"""Every stage of ``vlmfast run``, in the order they run."""


@dataclass
class RunSection:
    """``[run]``: where the run lives and what runs."""

    out: str = "runs/pipeline"
    """Run directory (relative paths are relative to the working directory); ``--out``
    overrides it. Not part of any stage key."""
    seed: int = 0
    """Seed of every stage (SAE init and batches, noise, null draws); part of every key."""
    stages: list[str] = field(default_factory=lambda: list(STAGE_NAMES))
    """Stages to run, a subset of ``cache, train-sae, score, trace, attribute, circuit,
    intervene, report``; a stage left out is skipped (its upstream must be listed)."""
    progress: bool = True
    """Show progress bars; not part of any key."""
    threads: int | None = None
    """torch CPU threads for the run (none: torch's default); not part of any key. Small
    models gain nothing from more threads, and on a loaded machine extra threads spin:
    the demo's SAE steps ran 10x faster with 1 thread than with 2 at load 12 on 2 cores."""


@dataclass
class ModelSection:
    """``[model]``: the vision-language pair (``vf.load_pair``)."""

    spec: str = "synthetic:tiny"
    """Model spec: ``synthetic:tiny``, ``open_clip:ViT-B-32``, ``hf:google/siglip-so400m-patch14-384``."""
    pretrained: str | None = None
    """Weights tag (``openai``) or a local checkpoint path (open_clip specs)."""
    device: str = "cpu"
    """Device of the model: ``cpu`` or ``cuda``; not part of any key (results agree to
    float tolerance across devices)."""


@dataclass
class DataSection:
    """``[data]``: the image-caption source that is cached."""

    spec: str = "synthetic:n=2000,seed=0"
    """Data spec for ``vlmfast.data.open_source``: ``synthetic:n=...,seed=...``,
    ``coco:/path/captions_train2017.json``, a folder, webdataset shards."""
    limit: int | None = None
    """At most this many records (none: all)."""


@dataclass
class HooksSection:
    """``[hooks]``: what is cached and which hooks the SAEs read."""

    image: str | None = "image.blocks.-1.resid_post"
    """Hook of the image SAE (every patch row; CLS rows are left out of training);
    ``""``: no image SAE (TOML has no null)."""
    text: str | None = "text.blocks.-1.resid_post"
    """Hook of the text SAE (every caption token row); ``""``: no text SAE."""
    neurons: list[str] = field(default_factory=lambda: ["image.blocks.-1.mlp.post"])
    """Hooks cached and scored as raw units (MLP neurons), max over tokens."""
    extra: list[str] = field(default_factory=list)
    """More hooks (names or globs) cached but neither trained on nor scored."""
    positions: str = "all"
    """Token rows cached: ``all`` (needed for token-level SAEs), ``cls``, ``eot``, ``pooled``, ``mean``."""


@dataclass
class CacheSection:
    """``[cache]``: how the activation store is written (``vlmfast cache``)."""

    batch_size: int = 64
    """Samples per forward."""
    dtype: str = "float32"
    """Store dtype: ``float32``, ``float16`` or ``bfloat16``."""
    chunk_rows: int = 8192
    """Rows per zarr chunk."""
    compression: str = "none"
    """Chunk compression: ``none`` or ``zstd``."""
    decode_workers: int | None = None
    """Image-decoding threads (none: one per CPU, at most 8); not part of the key."""


@dataclass
class QualitySection:
    """``[quality]``: the held-out model-quality table (synthetic data only)."""

    enabled: bool = True
    """Evaluate the model on fresh synthetic samples (hard negatives, zero-shot,
    compositional split) as part of the cache stage; ignored for non-synthetic data."""
    eval_samples: int = 400
    """Held-out samples of the table."""


@dataclass
class SAESection:
    """``[sae]``: the top-k SAEs, one per modality hook of ``[hooks]``."""

    n_latents: int = 512
    """Dictionary size of each SAE (the paper: 65,536)."""
    k: int = 32
    """Active latents per row (the paper: 32)."""
    steps: int = 3000
    """Training steps of each SAE."""
    batch_size: int = 256
    """Rows per step."""
    lr: float | None = None
    """Learning rate (none: 2e-4 / sqrt(n_latents / 2^14))."""
    device: str | None = None
    """Training device (none: the model's); not part of the key."""


@dataclass
class ConceptsSection:
    """``[concepts]``: the concept sets: labels of the store and the experiments' targets."""

    labels: str | list[str] | None = None
    """Label vocabularies of the store: ``coco``, ``default`` (ImageNet-R 200 + colors,
    materials, sizes, relations), bundled names or JSON paths (none: the source's own,
    e.g. the synthetic benchmark's shapes, colors and relations)."""
    circuit: list[str] = field(default_factory=list)
    """Concepts whose circuit the circuit stage finds (empty: the stage records nothing)."""
    intervene: list[str] = field(default_factory=list)
    """Concepts whose top units the intervene stage ablates and steers."""


@dataclass
class ScoreSection:
    """``[score]``: concept selectivity of every SAE feature and neuron (``vlmfast score``)."""

    tokens: str = "max"
    """Per-sample reduction of token rows: ``max``, ``mean``, ``pooled``, ``auto``, ``patch``."""
    threshold: float = 0.9
    """AUROC a selective unit reaches (with BH-significant Mann-Whitney p)."""
    alpha: float = 0.05
    """Benjamini-Hochberg false discovery rate."""
    level: float = 0.95
    """Confidence level of the intervals."""
    top_n: int = 16
    """Exemplars kept per unit."""
    target_auroc: float = 0.95
    """A planted concept counts as recovered when its best feature reaches this AUROC."""
    ground_truth: str = "auto"
    """``auto`` (synthetic data: the planted shapes and colors), ``synthetic`` or ``none``."""
    paper_claims: dict[str, Any] = field(default_factory=dict)
    """The paper's counts, copied into the result beside ours and labelled as its claim
    (its models and data, not this run's); never used as a target."""


@dataclass
class TraceSection:
    """``[trace]``: causal tracing of each tower (``vlmfast trace``)."""

    data: str | None = None
    """Pairs traced (none: the first ``pairs`` records of ``[data]``)."""
    pairs: int = 4
    """Image-caption pairs traced together."""
    towers: list[str] = field(default_factory=lambda: ["image", "text"])
    """Towers traced: ``image`` and/or ``text``."""
    noise: str | float = "3x"
    """Corruption: ``zero``, ``3x`` (3x the embeddings' std) or a float std."""
    samples: int = 10
    """Noise draws."""
    kinds: list[str] = field(default_factory=lambda: ["resid", "attn_out", "mlp_out"])
    """Restored states: ``resid``, ``attn_out``, ``mlp_out``, ``heads``."""
    window: int = 1
    """Layers restored together for ``attn_out``/``mlp_out``."""
    metric: str = "score"
    """``score``, ``logit_diff`` or ``alignment``."""
    null: int = 0
    """Random restorations per kind and layer (0: no null)."""


@dataclass
class AttributeSection:
    """``[attribute]``: attribution patching (``vlmfast attribute``)."""

    data: str | None = None
    """Pairs attributed (none: the first ``pairs`` records of ``[data]``)."""
    pairs: int = 8
    """Image-caption pairs (>= 2: shift corruptions pair records)."""
    corrupt: str = "image-shift"
    """``image-shift``, ``image-noise``, ``text-shift`` or ``text-negative``."""
    noise_std: float = 1.0
    """Pixel noise std of ``image-noise``."""
    method: str = "atp"
    """``atp``, ``atp*`` or ``ig``."""
    components: list[str] = field(default_factory=lambda: ["resid", "heads", "neurons"])
    """Component kinds: ``resid``, ``heads``, ``neurons``."""
    towers: list[str] = field(default_factory=lambda: ["image", "text"])
    """Towers scored."""
    null: int = 0
    """Random components per layer patched exactly (false-negative estimate)."""
    exact: bool = True
    """Also run the exact head sweep (activation patching of every head) and compare."""


@dataclass
class CircuitSection:
    """``[circuit]``: circuit discovery per concept of ``[concepts].circuit``."""

    corrupt: str = "text-swap"
    """Corrupt input of each concept's pairs: ``text-swap`` (the concept's word in the
    caption replaced by another of its kind), ``image-noise`` (pixel noise) or
    ``image-shift`` (another pair's image)."""
    pairs: int = 8
    """Clean pairs per concept (records whose caption names it)."""
    data: str | None = None
    """Where the pairs are drawn from (none: ``[data]``)."""
    noise_std: float = 1.0
    """Pixel noise std of ``image-noise``."""
    components: list[str] = field(default_factory=lambda: ["heads", "neurons"])
    """Candidate components: ``heads`` (``attn.z``) and/or ``neurons`` (``mlp.post``)."""
    towers: list[str] = field(default_factory=list)
    """Towers whose components are candidates (empty: the corrupted tower, ``text`` for
    ``text-swap`` and ``image`` otherwise: attribution scores an unchanged tower 0)."""
    ranking: str = "atp"
    """Order the search adds components in: ``atp``, ``atp*`` or ``exact``."""
    ablation: str = "mean"
    """What a component outside the circuit is set to: ``mean``, ``resample`` or ``zero``."""
    target: float = 0.8
    """Faithfulness the circuit keeps, in (0, 1]."""
    null: int = 100
    """Random orderings of the same components (the sparsity null; >= 20 for a p-value)."""
    grid: int = 32
    """Sizes on the log-spaced faithfulness grid."""
    options: dict[str, Any] = field(default_factory=dict)
    """More keyword arguments for ``vf.causal.find_circuit``, passed as they are."""
    draw: bool = True
    """Compute the circuit's edges and write ``<concept>.svg`` (and ``.dot``)."""
    draw_nodes: int = 40
    """Edges and drawing cover the circuit's this many highest-ranked nodes (0: all; the
    edge computation grows with the square of the count)."""


@dataclass
class InterveneSection:
    """``[intervene]``: ablate and steer each concept's top units (``vlmfast intervene``)."""

    units: str = "image"
    """Whose scores pick the units: ``image`` or ``text`` (that SAE's features) or
    ``neurons`` (the first ``[hooks].neurons`` hook)."""
    n: int = 20
    """Units per concept."""
    modes: list[str] = field(default_factory=lambda: ["ablate", "steer"])
    """``ablate`` and/or ``steer``."""
    ablation: str = "mean"
    """``mean`` or ``zero``."""
    alpha: float = 4.0
    """Steering strength (``steer``)."""
    null: int = 50
    """Random unit sets of the same size and mix (>= 20 for p-values)."""
    eval_data: str = "synthetic:test:256"
    """Evaluation pairs: ``synthetic[:split[:n[:seed[:max_objects]]]]``."""


@dataclass
class ReportSection:
    """``[report]``: the HTML / Markdown report (``vlmfast.report.build_report``)."""

    title: str = "vlmfast run"
    """Title of the report."""


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
    report: ReportSection = field(default_factory=ReportSection)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (every default filled in), JSON-ready."""
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """A hash of the resolved config (``run.json``'s ``config_hash``)."""
        return stable_hash(self.to_dict())

    def get(self, path: str) -> Any:
        """The value at ``section.field`` (or a whole ``section``)."""
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


_CHOICES: dict[str, tuple[str, ...]] = {
    "hooks.positions": ("all", "cls", "eot", "pooled", "mean"),
    "cache.dtype": ("float32", "float16", "bfloat16"),
    "cache.compression": ("none", "zstd"),
    "score.tokens": ("max", "mean", "pooled", "auto", "patch", "all"),
    "score.ground_truth": ("auto", "synthetic", "none"),
    "attribute.corrupt": ("image-shift", "image-noise", "text-shift", "text-negative"),
    "attribute.method": ("atp", "atp*", "ig"),
    "circuit.corrupt": ("text-swap", "image-noise", "image-shift"),
    "intervene.units": ("image", "text", "neurons"),
    "circuit.ranking": ("atp", "atp*", "exact"),
    "circuit.ablation": ("mean", "resample", "zero"),
    "intervene.ablation": ("mean", "zero"),
    "trace.metric": ("score", "logit_diff", "alignment"),
}
_LIST_CHOICES: dict[str, tuple[str, ...]] = {
    "run.stages": STAGE_NAMES,
    "trace.towers": ("image", "text"),
    "trace.kinds": ("resid", "attn_out", "mlp_out", "heads"),
    "attribute.components": ("resid", "heads", "neurons"),
    "attribute.towers": ("image", "text"),
    "intervene.modes": ("ablate", "steer"),
    "circuit.components": ("heads", "neurons"),
    "circuit.towers": ("image", "text"),
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
                f"{where}: unknown key {key!r} in [{name}]; allowed keys: {', '.join(allowed)}"
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


def config_from_dict(data: dict[str, Any], where: str = "config") -> PipelineConfig:
    """A validated :class:`PipelineConfig` from a parsed TOML document."""
    sections = {f.name: f for f in dataclasses.fields(PipelineConfig)}
    hints = typing.get_type_hints(PipelineConfig)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in sections:
            raise InputError(
                f"{where}: unknown section [{name}]; allowed sections: {', '.join(sections)}"
            )
        kwargs[name] = _section(hints[name], value, name, where)
    cfg = PipelineConfig(**kwargs)
    _validate(cfg, where)
    return cfg


def load_config(path: str | Path) -> PipelineConfig:
    """Reads and validates a ``vlmfast run`` TOML config."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"--config {p}: no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"--config {p}: not valid TOML: {err}") from None
    return config_from_dict(data, where=str(p))


def parse_config(text: str, where: str = "config") -> PipelineConfig:
    """A validated config from TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{where}: not valid TOML: {err}") from None
    return config_from_dict(data, where=where)


def demo_config_text() -> str:
    """The TOML text of the bundled demo config (``vlmfast/pipeline/demo.toml``)."""
    from importlib import resources

    return resources.files("vlmfast.pipeline").joinpath("demo.toml").read_text()


def demo_config() -> PipelineConfig:
    """The bundled demo config, parsed."""
    return parse_config(demo_config_text(), where="vlmfast/pipeline/demo.toml")
