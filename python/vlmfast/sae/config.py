"""Configuration dataclasses of a top-k SAE, of its optimisation, and of a training run."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vlmfast.errors import InputError
from vlmfast.sae.arch_config import check_arch_fields
from vlmfast.sae.arch_options import check_arch_options
from vlmfast.sae.rows import DEFAULT_ROWS, ROWS

B_DEC_INITS = ("geometric_median", "mean", "zeros")
ARCHS = ("topk", "batchtopk", "matryoshka", "jumprelu")
"""SAE architectures one trainer trains (``SAEConfig.arch``, ``vlmfast train-sae --arch``)."""
ENCODER_INIT_NORM = 3.0**-0.5
"""Default initial norm of every encoder row (``SAEConfig.encoder_init_norm``): 1/sqrt(3),
the row norm ``nn.Linear``'s default init gives (entries uniform in ``+-1/sqrt(d_in)``),
which sparsify's encoder starts with."""
LEGACY_ENCODER_INIT_NORM = 1.0
"""What checkpoints written before ``encoder_init_norm`` existed used (W_enc = W_dec)."""


@dataclass
class SAEConfig:
    """Architecture of a top-k sparse autoencoder (what a checkpoint needs to rebuild it).

    Raises:
        InputError: (constructing) an unknown ``arch``, a size that is not a positive
            integer, ``k > n_latents`` or another field out of range.
    """

    d_in: int
    """Width of the activations it reconstructs (768 for CLIP ViT-B, 1152 for SigLIP so400m)."""
    n_latents: int
    """Number of latents (dictionary size, SAELens' ``d_sae``)."""
    k: int
    """Active latents per row (the L0 the top-k enforces)."""
    k_aux: int | None = None
    """Latents the AuxK loss picks among the dead ones; None means ``d_in // 2`` (OpenAI)."""
    auxk_coef: float = 1.0 / 32.0
    """Weight of the AuxK loss (0 disables it)."""
    dead_tokens: int = 10_000_000
    """A latent is dead when it has not fired in this many training tokens."""
    b_dec_init: str = "geometric_median"
    """How b_dec starts: 'geometric_median' or 'mean' of the first batch, or 'zeros'."""
    input_scaling: bool = False
    """Scale inputs to unit mean squared norm while training; folded into the weights at save."""
    hook: str = ""
    """Hook the SAE was trained on (e.g. ``image.blocks.8.resid_post``, ``joint.embed``)."""
    model: str = ""
    """Model spec the activations came from (informational)."""
    seed: int = 0
    """Seed of the weight initialisation."""
    encoder_init_norm: float = ENCODER_INIT_NORM
    """Norm of every encoder row at initialisation: ``W_enc`` starts as the (unit-norm)
    decoder directions times this. Default 1/sqrt(3), sparsify's encoder row norm: at
    equal steps it trains to a lower FVU than ``1.0`` (the encoder tied to the decoder,
    vlmfast's earlier init, recorded as such for checkpoints saved without this key);
    see docs/performance.md."""
    rows: str = ""
    """Token rows of the hook the SAE was trained on (``vlmfast.sae.rows.ROWS``: tokens,
    all, patches, cls, eot); ``""`` when unknown (an SAE built in code, an older or
    imported checkpoint). Informational, like ``hook``."""
    arch: str = "topk"
    """Architecture (:data:`ARCHS`): ``topk`` (per-row top-k with AuxK), ``batchtopk``
    (top ``k * batch`` over the whole batch, a learned threshold at inference),
    ``matryoshka`` (nested prefixes, BatchTopK inside) or ``jumprelu`` (per-latent
    thresholds, straight-through L0 penalty)."""
    groups: list[int] | None = None
    """Matryoshka only: sizes of the nested groups of latents (they must sum to
    ``n_latents``; prefix ``i`` is the first ``sum(groups[:i+1])`` latents). None: the
    prefixes end at n/8, n/4, n/2 and n (see :func:`vlmfast.sae.arch_config.default_groups`)."""
    threshold_ema: float = 0.01
    """BatchTopK / Matryoshka: weight of each batch's smallest selected activation in the
    running estimate of the inference threshold."""
    threshold_init: float | None = None
    """JumpReLU: initial per-latent threshold (in the units of the training inputs); None:
    the ``k * batch``-th largest pre-activation of the first batch (so L0 starts near k)."""
    bandwidth: float | None = None
    """JumpReLU: width of the rectangle kernel of the straight-through estimators; None:
    0.2 x the initial threshold."""
    l0_coef: float = 0.1
    """JumpReLU: starting weight of the L0 penalty ``l0_coef * L0 / k`` (beside the FVU)."""
    l0_coef_adapt: float = 0.02
    """JumpReLU: after each step the L0 weight is multiplied by ``exp(l0_coef_adapt *
    (L0 / k - 1))`` so the L0 settles near ``k`` (0: a fixed weight, as in the paper)."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise InputError(f"SAEConfig.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        check_arch_fields(self)
        for name in ("d_in", "n_latents", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"SAEConfig.{name} must be a positive integer, got {value!r}")
        if self.k > self.n_latents:
            raise InputError(f"SAEConfig.k={self.k} exceeds n_latents={self.n_latents}")
        if self.k_aux is not None and self.k_aux < 0:
            raise InputError(f"SAEConfig.k_aux must be >= 0, got {self.k_aux}")
        if self.b_dec_init not in B_DEC_INITS:
            raise InputError(
                f"SAEConfig.b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}"
            )
        if self.dead_tokens < 1:
            raise InputError(f"SAEConfig.dead_tokens must be >= 1, got {self.dead_tokens}")
        norm = self.encoder_init_norm
        if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not 0 < norm < math.inf:
            raise InputError(
                f"SAEConfig.encoder_init_norm must be a positive number (default 1/sqrt(3)),"
                f" got {norm!r}"
            )

    @property
    def aux_k(self) -> int:
        """The effective AuxK width (before clamping to the number of dead latents)."""
        base = self.d_in // 2 if self.k_aux is None else self.k_aux
        return min(base, self.n_latents)

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a plain dict (what ``cfg.json`` records)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        """Returns the config saved as ``data`` (unknown keys ignored). A config saved before
        ``encoder_init_norm`` existed gets :data:`LEGACY_ENCODER_INIT_NORM` (its init)."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        values.setdefault("encoder_init_norm", LEGACY_ENCODER_INIT_NORM)
        return cls(**values)


@dataclass
class TrainConfig:
    """Optimisation settings of one SAE in a training run.

    Raises:
        InputError: (constructing) an unknown ``nan_policy``, a non-positive ``lr`` or
            ``decay_start`` outside [0, 1].
    """

    lr: float | None = None
    """Adam learning rate; None means ``2e-4 / sqrt(n_latents / 2**14)`` (sparsify's scaling)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    eps: float = 6.25e-10
    """Adam epsilon (OpenAI's value: the gradients of a FVU loss are small)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up from 0 over this many steps."""
    decay_start: float = 0.8
    """Fraction of the run after which the rate decays linearly to 0 (1.0: no decay)."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""
    autocast_bf16: bool = False
    """Run the encoder GEMM and the top-k in bfloat16 (master weights stay float32)."""
    nan_policy: str = "error"
    """Rows with NaN/Inf: 'error' (raise, naming the rows) or 'skip' (drop them, count them)."""
    seed: int = 0
    """Seed of everything random in the run (weight init uses SAEConfig.seed)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes saved with the checkpoint."""

    def __post_init__(self) -> None:
        if self.nan_policy not in ("error", "skip"):
            raise InputError(
                f"TrainConfig.nan_policy must be 'error' or 'skip', got {self.nan_policy!r}"
            )
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"TrainConfig.lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.decay_start <= 1.0:
            raise InputError(f"TrainConfig.decay_start must be in [0, 1], got {self.decay_start}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def learning_rate(self, n_latents: int) -> float:
        """Returns ``lr``, or the default ``2e-4 / sqrt(n_latents / 2**14)`` when it is None."""
        if self.lr is not None:
            return self.lr
        return 2e-4 / math.sqrt(n_latents / 2**14)

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as a plain dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Returns the settings saved as ``data`` (unknown keys ignored)."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)


@dataclass
class TrainSAEConfig:
    """One SAE training run on a stored hook: ``vlmfast train-sae`` and the pipeline's
    ``train-sae`` stage both fill one in and call :func:`vlmfast.sae.train_sae`.

    ``k``, ``n_latents`` and ``lr`` may list several values: every combination is trained
    on the same batches (a sweep). A ``None`` default is worked out from the store
    (:mod:`vlmfast.sae.schedule`).

    Raises:
        InputError: (constructing) no hook, a bad or repeated hook name, an empty sweep
            list, an unknown ``arch`` or ``rows``, a count below 1, or both ``tokens``
            and ``steps``.
    """

    hook: str | list[str]
    """Store hook, or ``joint.<point>`` (image and text rows mixed in every batch); or a
    list of them: one SAE per hook (x each sweep combination), the hooks that hold the
    same rows trained in one pass that reads each batch's rows once for all of them
    (:mod:`vlmfast.sae.passes`)."""
    k: list[int] = field(default_factory=lambda: [32])
    """Active latents (several: a sweep)."""
    n_latents: list[int] = field(default_factory=lambda: [65536])
    """Dictionary sizes (several: a sweep)."""
    lr: list[float | None] = field(default_factory=lambda: [None])
    """Learning rates; None: ``2e-4 / sqrt(n_latents / 2**14)``."""
    arch: str = "topk"
    """SAE architecture (``vlmfast.sae.config.ARCHS``); see :class:`SAEConfig`."""
    groups: list[int] | None = None
    """Matryoshka: nested group sizes, summing to ``n_latents``; None: SAEConfig's default."""
    threshold_ema: float | None = None
    """BatchTopK / Matryoshka: threshold running-estimate weight; None: SAEConfig's default."""
    threshold_init: float | None = None
    """JumpReLU: initial threshold; None: from the first batch (SAEConfig's default)."""
    bandwidth: float | None = None
    """JumpReLU: straight-through kernel width; None: SAEConfig's default."""
    l0_coef: float | None = None
    """JumpReLU: starting L0 penalty weight; None: SAEConfig's default."""
    l0_coef_adapt: float | None = None
    """JumpReLU: L0 weight adaptation rate (0: fixed); None: SAEConfig's default."""
    rows: str = DEFAULT_ROWS
    """Token rows trained on: ``tokens`` (default: an image hook's CLS rows left out),
    ``all``, ``patches``, ``cls`` or ``eot`` (see :mod:`vlmfast.sae.rows`)."""
    batch_size: int | None = None
    """Rows per step; None: 4,096, or less for a small store (``schedule.default_batch_size``)."""
    tokens: int | None = None
    """Rows to train on (``steps = tokens // batch_size``); None: the default length."""
    steps: int | None = None
    """Optimizer steps (instead of ``tokens``); None: from ``tokens`` or the default length."""
    warmup_steps: int | None = None
    """Learning-rate warm-up; None: 5% of the steps."""
    dead_tokens: int | None = None
    """Rows without firing before a latent is dead; None: ``max(batch, min(10M, rows/20))``."""
    k_aux: int | None = None
    """AuxK latents; None: ``d_in // 2``."""
    auxk_coef: float = 1.0 / 32.0
    b_dec_init: str = "geometric_median"
    input_scaling: bool = False
    encoder_init_norm: float = ENCODER_INIT_NORM
    """Initial row norm of the encoder (its rows: the unit decoder rows scaled by it);
    1/sqrt(3) by default, 1.0 for the encoder tied to the decoder (before 2026-12-07)."""
    autocast_bf16: bool = False
    grad_clip: float | None = 1.0
    nan_policy: str = "error"
    """Rows with NaN/Inf: ``error`` or ``skip``."""
    seed: int = 0
    """Seed of the batches (and of the weights unless ``init_seed``)."""
    init_seed: int | None = None
    """Seed of the weight initialisation; None: ``seed``."""
    device: str | None = None
    """``cpu`` or ``cuda``; None: cuda when available."""
    log_every: int = 50
    """Steps between metric lines (``metrics.jsonl``)."""
    checkpoint_every: int | None = 1000
    """Steps between training checkpoints; None: only the final one."""
    trainer_state: bool = True
    """Save ``trainer_state.pt`` (optimizer state, for ``resume``) with the weights."""
    resume: bool = False
    """Continue from the training checkpoints in the output folder."""

    @property
    def hooks(self) -> list[str]:
        """The run's hooks, in order (``hook`` as a list)."""
        return [self.hook] if isinstance(self.hook, str) else list(self.hook)

    def __post_init__(self) -> None:
        hooks = self.hooks
        if not hooks:
            raise InputError("TrainSAEConfig.hook is an empty list: name at least one hook")
        for hook in hooks:
            if not isinstance(hook, str) or not hook:
                raise InputError(f"TrainSAEConfig.hook: {hook!r} is not a hook name")
            if hooks.count(hook) > 1:
                raise InputError(f"TrainSAEConfig.hook names {hook} twice")
        for name in ("k", "n_latents", "lr"):
            value = getattr(self, name)
            if not isinstance(value, list):
                setattr(self, name, [value])  # one value for a single SAE
            if not getattr(self, name):
                raise InputError(f"TrainSAEConfig.{name} is empty")
        if self.arch not in ARCHS:
            raise InputError(f"arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        check_arch_options(self)
        if self.rows not in ROWS:
            raise InputError(f"rows must be one of {', '.join(ROWS)}, got {self.rows!r}")
        for name in ("batch_size", "tokens", "steps", "dead_tokens", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"{name} must be >= 1, got {value}")
        if self.tokens is not None and self.steps is not None:
            raise InputError("give the training length as tokens or as steps, not both")
        if self.log_every < 1:
            raise InputError(f"log_every must be >= 1, got {self.log_every}")
