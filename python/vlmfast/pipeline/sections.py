"""The sections of a ``vlmfast run`` config: one dataclass per TOML table.

Every field has a docstring (the README's reference is generated from them) and a
default; ``vlmfast.pipeline.config`` reads a TOML file into these strictly and validates
the values. ``STAGE_NAMES`` is the one list of the pipeline's stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmfast.sae.rows import DEFAULT_ROWS

STAGE_NAMES: tuple[str, ...] = (
    "cache",
    "train-sae",
    "score",
    "trace",
    "attribute",
    "circuit",
    "intervene",
    "cross-modal",
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
    intervene, cross-modal, report``; a stage left out is skipped (its upstream must be listed)."""
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
    rows: str = DEFAULT_ROWS
    """Token rows each SAE trains on: ``tokens`` (default: an image hook's patch rows,
    its CLS row left out, and a text hook's token rows), ``all`` (every cached row, CLS
    included), ``patches``, ``cls`` (image only) or ``eot`` (text only); the same option
    and default as ``vlmfast train-sae --rows`` (see ``vlmfast.sae.rows``)."""
    arch: str = "topk"
    """SAE architecture: ``topk``, ``batchtopk``, ``matryoshka`` or ``jumprelu`` (as
    ``vlmfast train-sae --arch``; recorded in each SAE's ``cfg.json``)."""
    groups: list[int] | None = None
    """Matryoshka: nested group sizes summing to ``n_latents`` (none: n/8, n/8, n/4, n/2)."""
    encoder_init_norm: float | None = None
    """Initial encoder row norm (none: the SAEConfig default, 1/sqrt(3); 1.0: the encoder
    tied to the decoder, as before 2026-12-07)."""
    threshold_ema: float | None = None
    """BatchTopK / Matryoshka: weight of a batch in the inference-threshold estimate
    (none: the SAEConfig default)."""
    threshold_init: float | None = None
    """JumpReLU: initial threshold (none: from the first batch)."""
    bandwidth: float | None = None
    """JumpReLU: width of the straight-through kernel (none: the SAEConfig default)."""
    l0_coef: float | None = None
    """JumpReLU: starting weight of the L0 penalty (none: the SAEConfig default)."""
    l0_coef_adapt: float | None = None
    """JumpReLU: L0 weight adaptation toward L0 = k, 0 for a fixed weight (none: default)."""
    hooks: list[str] = field(default_factory=list)
    """More hooks to train an SAE on (cache them with ``[hooks] extra``), into
    ``RUN/train-sae/hooks/<hook>/`` (not scored); one that holds the same rows as a
    modality hook of ``[hooks]`` trains in that SAE's pass (each batch read once for both)."""


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
    caption replaced by another of its kind), ``image-swap`` (synthetic data: the same
    scene re-rendered with the concept changed: another colour or shape, or the
    relation's two objects swapping cells), ``both-swap`` (both, the caption taking the
    word the image took: one search over both towers' units, drawn as two lanes meeting
    in the shared embedding), ``image-noise`` (pixel noise) or ``image-shift`` (another
    pair's image)."""
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
    ``text-swap``, both for ``both-swap`` and ``image`` otherwise: attribution scores an
    unchanged tower 0)."""
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
class CrossModalSection:
    """``[crossmodal]``: cross-modal binding (the ``cross-modal`` stage, ``vlmfast.crossmodal``)."""

    image_hook: str = "image.embed"
    """Image-side hook of the shared space: one row per sample (cache it: ``[hooks].extra``)."""
    text_hook: str = "text.embed"
    """Text-side hook, the same width as ``image_hook``."""
    normalize: bool = True
    """Unit-normalise the rows of the concept-level probes: the space the model's logits
    compare in (cosine); raw rows carry per-modality norms a probe trained on one side
    misreads on the other. The shared SAEs train on the stored rows."""
    n_latents: int = 128
    """Latents of the shared SAE (one per setting: gap kept, gap removed)."""
    k: int = 8
    """Active latents per row of the shared SAE."""
    steps: int = 400
    """Training steps of each shared SAE."""
    thresholds: list[float] = field(default_factory=lambda: [0.6, 0.7, 0.8, 0.9])
    """AUROC thresholds of the invariant-feature curve."""
    paper_threshold: float = 0.9
    """The curve point set beside the paper's 14% (the selectivity threshold of ``[score]``)."""
    n_null: int = 50
    """Null draws: label shuffles, re-pairings, feature permutations, random head sets."""
    n_boot: int = 100
    """Bootstrap resamples of every interval."""
    grounding_data: str | None = None
    """Source of the grounding heads (none: ``[data]``; a source without boxes is then
    skipped with the reason recorded; named here, it is an error)."""
    grounding_images: int = 32
    """Images scored and patched for grounding (0: no grounding)."""
    grounding_heads: int = 2
    """Top grounding heads patched together in the causal test."""
    fusion_data: str | None = None
    """Pairs of the fusion-unit test (none: ``[data]``); half select units, half test them."""
    fusion_pairs: int = 128
    """Pairs read for the fusion test (0: no fusion test)."""
    fusion_units: int = 4
    """MLP neurons per tower per concept in a fusion pair (object and color concepts)."""
    fusion_null: int = 10
    """Random unit sets per fusion pair and for retrieval (each a forward of the test pairs)."""
    two_tower_concepts: list[str] | None = None
    """Concepts whose two-tower circuit the stage finds: one search over the attention heads
    of both towers, ``both-swap`` corruption (synthetic ``[data]``), mean ablation (none:
    the first of ``[concepts].circuit``; empty: none)."""
    two_tower_pairs: int = 8
    """Clean pairs per two-tower circuit (records whose caption names the concept)."""
    two_tower_null: int = 20
    """Random orderings of the two-tower circuit's sparsity null (p-value from 20 on)."""
    two_tower_grid: int = 16
    """Sizes on the two-tower circuit's log-spaced faithfulness grid."""


@dataclass
class ReportSection:
    """``[report]``: the HTML / Markdown report (``vlmfast.report.build_report``)."""

    title: str = "vlmfast run"
    """Title of the report."""
