"""A shared dictionary trained from a store: one top-k SAE on the rows of both towers.

    from vlmfast import crossmodal as xm
    res = xm.train_shared_sae(store, xm.SharedSAEConfig(remove_gap=True), "out/shared")
    res.analysis.invariant.at(0.9).fraction      # None when no feature is selective
    shared = xm.load_shared_sae("out/shared")    # SAE + the means it subtracts
    codes = shared.encode(rows, "image")         # [n, n_latents], gap removed as trained

**Training.** The rows are the matched pairs of two hooks of equal width
(:func:`vlmfast.crossmodal.shared_rows.store_pairs`: ``image.embed`` and ``text.embed``
by default, one row per sample and tower). Every batch holds ``batch_size // 2`` image
rows and as many text rows, each modality drawn without replacement epoch by epoch
(one ``numpy`` generator seeded with ``seed``), so the dictionary sees both modalities
equally whatever their counts. The optimisation is the project's
(:class:`vlmfast.sae.SAETrainer` / :func:`vlmfast.sae.train`: FVU + AuxK, Adam,
warm-up and decay).

**Modality gap.** With ``remove_gap=True`` each modality's mean row (over the pairs) is
subtracted before training, and the two means are saved with the SAE
(``gap_means.safetensors``; ``cfg.json`` key ``crossmodal``), so that
:meth:`SharedSAE.encode` subtracts the *same* means at analysis time (not means
recomputed on other rows).

**Analysis.** :func:`analyze_shared_store` encodes the store's pairs with the SAE and runs
:func:`vlmfast.crossmodal.analyze_shared_dictionary` (modality split, Bridge Score,
image and caption AUROCs, the invariant curve), on every pair and, where the labels can
say, on the single-object pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.crossmodal.shared_dictionary import (
    GapMeans,
    SharedDictionaryResult,
    analyze_shared_dictionary,
)
from vlmfast.crossmodal.shared_rows import POOLS, StorePairs, single_object_mask, store_pairs
from vlmfast.crossmodal.shared_sae import SharedSAE, save_shared_sae
from vlmfast.errors import InputError

Array = npt.NDArray[np.float64]


@dataclass
class SharedSAEConfig:
    """How :func:`train_shared_sae` trains and analyses one dictionary over both towers.

    Raises:
        InputError: (constructing) an unknown ``pool``, a count below 1, ``batch_size < 2``
            or ``k > n_latents``.
    """

    image_hook: str = "image.embed"
    """Image-side hook (its rows and ``text_hook``'s must have equal width)."""
    text_hook: str = "text.embed"
    """Text-side hook, matched to ``image_hook`` sample by sample."""
    pool: str = "mean"
    """How a hook with several rows per sample gives one: ``mean``, ``first``, ``last``."""
    n_latents: int = 256
    """Dictionary size."""
    k: int = 8
    """Active latents per row (top-k)."""
    steps: int = 2000
    """Optimisation steps."""
    batch_size: int = 256
    """Rows per step, half image rows and half text rows."""
    remove_gap: bool = False
    """Subtract each modality's mean row before training (the means are saved and reused)."""
    lr: float | None = None
    """Adam learning rate; None: the project's default for ``n_latents``."""
    dead_tokens: int = 50_000
    """A latent that has not fired in this many rows is dead (AuxK revives it)."""
    seed: int = 0
    """Seed of the initialisation, the batches and the analysis' resampling."""
    device: str = "cpu"
    """Where the SAE trains."""
    analyze: bool = True
    """Run :func:`analyze_shared_store` on the pairs after training."""
    single_object: bool = True
    """Also analyse the single-object pairs, where the labels can say which those are."""
    n_boot: int = 200
    """Bootstrap resamples of the analysis (split, Bridge Score)."""
    n_null: int = 200
    """Null draws of the analysis (Bridge re-pairing, invariant feature permutation)."""
    alpha: float = 0.05
    """FDR of every BH family of the analysis."""
    thresholds: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9, 0.95)
    """AUROC cuts of the invariant-feature curve."""

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise InputError(f"SharedSAEConfig.pool must be one of {POOLS}, got {self.pool!r}")
        for name in ("n_latents", "k", "steps", "batch_size", "dead_tokens"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"SharedSAEConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise InputError("SharedSAEConfig.batch_size must be >= 2 (one row per modality)")
        if self.k > self.n_latents:
            raise InputError(f"SharedSAEConfig.k={self.k} exceeds n_latents={self.n_latents}")

    def to_dict(self) -> dict[str, Any]:
        """Returns the config as a plain dict."""
        return asdict(self)


@dataclass
class SharedSAEResult:
    """What :func:`train_shared_sae` trained and measured; JSON-ready via :meth:`to_dict`."""

    shared: SharedSAE
    path: str | None
    """Folder the SAE was saved to (None: not saved)."""
    n_pairs: int
    """Matched pairs trained on (each gives one image and one text row)."""
    steps: int
    fvu_image: float
    """Fraction of variance of the (gap-removed, if so) image rows the SAE leaves unexplained."""
    fvu_text: float
    """The same on the text rows."""
    l0: float
    """Mean active latents per row (both modalities)."""
    dead_fraction: float
    """Share of latents that fire on no pair row."""
    config: dict[str, Any]
    analysis: SharedDictionaryResult | None = None
    """Every pair (None when ``analyze=False``)."""
    single_object: SharedDictionaryResult | None = None
    """The single-object pairs (None: see ``single_object_reason``)."""
    single_object_reason: str | None = None
    log: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, tables: bool = False) -> dict[str, Any]:
        """Returns a JSON-ready dict; ``tables=True`` keeps the ``[F, C]`` AUROC tables of the analyses."""
        gm = self.shared.gap_means
        return {
            "path": self.path,
            "image_hook": self.shared.image_hook,
            "text_hook": self.shared.text_hook,
            "pool": self.shared.pool,
            "remove_gap": gm is not None,
            "gap": None if gm is None else gm.gap,
            "n_pairs": self.n_pairs,
            "steps": self.steps,
            "fvu_image": self.fvu_image,
            "fvu_text": self.fvu_text,
            "l0": self.l0,
            "dead_fraction": self.dead_fraction,
            "config": self.config,
            "analysis": None if self.analysis is None else self.analysis.to_dict(tables),
            "single_object": None
            if self.single_object is None
            else self.single_object.to_dict(tables),
            "single_object_reason": self.single_object_reason,
        }


def mixed_batches(
    image_rows: Array, text_rows: Array, batch_size: int, seed: int
) -> Iterator[torch.Tensor]:
    """Endless float32 batches: ``batch_size // 2`` image rows then as many text rows, each
    modality drawn without replacement, epoch after epoch (one generator, ``seed``)."""
    rng = np.random.default_rng(seed)
    half = batch_size // 2
    src = (image_rows.astype(np.float32), text_rows.astype(np.float32))
    order = [rng.permutation(len(s)) for s in src]
    at = [0, 0]
    while True:
        parts = []
        for m, rows in enumerate(src):
            take: list[npt.NDArray[np.int64]] = []
            need = half
            while need:
                if at[m] >= len(rows):
                    order[m], at[m] = rng.permutation(len(rows)), 0
                got = order[m][at[m] : at[m] + need]
                take.append(got)
                at[m] += len(got)
                need -= len(got)
            parts.append(rows[np.concatenate(take)])
        yield torch.from_numpy(np.concatenate(parts))


def _fvu(sae: Any, rows: Array) -> float:
    """Unexplained variance share of ``rows`` by ``sae`` (rows' own mean as the baseline)."""
    x = torch.as_tensor(rows, dtype=torch.float32, device=sae.W_dec.device)
    with torch.no_grad():
        err = float((sae(x).double() - x.double()).pow(2).sum())
    tot = float(((rows - rows.mean(0)) ** 2).sum())
    return err / tot if tot > 0 else float("nan")


def _train(
    pairs: StorePairs, cfg: SharedSAEConfig, log: Callable[[str], None] | None
) -> tuple[SharedSAE, Array, Array, list[dict[str, Any]]]:
    """Trains the SAE; returns it and the rows it was trained on (gap removed, if so)."""
    from vlmfast.sae import SAETrainer, TopKSAE, TrainConfig, train

    img, txt, means = pairs.image_rows, pairs.text_rows, None
    if cfg.remove_gap:
        means = GapMeans(img.mean(0), txt.mean(0))
        img, txt = img - means.image_mean, txt - means.text_mean
    a, b = pairs.image_hook, pairs.text_hook
    hook = f"joint.{a[6:]}" if a[6:] == b[5:] and a[:6] == "image." else f"{a}+{b}"
    torch.manual_seed(cfg.seed)
    sae = TopKSAE(
        img.shape[1], cfg.n_latents, cfg.k, hook=hook, seed=cfg.seed, dead_tokens=cfg.dead_tokens
    ).to(cfg.device)
    warm = min(100, max(1, cfg.steps // 10))
    trainer = SAETrainer(
        sae, TrainConfig(lr=cfg.lr, seed=cfg.seed, warmup_steps=warm), total_steps=cfg.steps
    )
    lines: list[dict[str, Any]] = []

    def on_log(logs: list[Any]) -> None:
        lines.extend(entry.to_json() for entry in logs)
        if log is not None:
            last = logs[-1]
            log(f"  shared SAE step {last.step}: fvu {last.last.fvu:.4f}, l0 {last.last.l0:.1f}")

    batches = mixed_batches(img, txt, cfg.batch_size, cfg.seed)
    train(batches, [trainer], log_every=max(1, cfg.steps // 10), on_log=on_log)
    sae.fold_input_scale()
    shared = SharedSAE(sae, a, b, means, pairs.pool)
    return shared, img, txt, lines


def analyze_shared_store(
    store: Any, shared: SharedSAE, config: SharedSAEConfig | None = None
) -> tuple[SharedDictionaryResult, SharedDictionaryResult | None, str | None]:
    """Returns ``(all pairs, single-object pairs or None, why None)``: the shared-dictionary
    analysis of the store's pairs of ``shared``'s hooks, encoded with :meth:`SharedSAE.encode`
    (the recorded means subtracted when the gap was removed in training).

    Raises:
        InputError: the store lacks a hook (cache both towers) or its labels.
    """
    cfg = config or SharedSAEConfig()
    pairs = store_pairs(store, shared.image_hook, shared.text_hook, pool=shared.pool)
    img = shared.encode(pairs.image_rows, "image")
    txt = shared.encode(pairs.text_rows, "text")
    opts: dict[str, Any] = dict(
        concepts=pairs.concepts,
        thresholds=cfg.thresholds,
        alpha=cfg.alpha,
        n_boot=cfg.n_boot,
        n_null=cfg.n_null,
        seed=cfg.seed,
    )
    res = analyze_shared_dictionary(img, txt, pairs.image_labels, pairs.text_labels, **opts)
    res.gap_removed, res.gap_means = shared.gap_means is not None, shared.gap_means
    if not cfg.single_object:
        return res, None, "not asked for (single_object=False)"
    mask = single_object_mask(pairs)
    if mask is None:
        return res, None, "the labels have no 'object' kind: single-object pairs are unknown"
    if mask.sum() < 2:
        return res, None, f"{int(mask.sum())} single-object pairs (need at least 2)"
    one = analyze_shared_dictionary(
        img, txt, pairs.image_labels, pairs.text_labels, subset=mask, **opts
    )
    one.gap_removed, one.gap_means = res.gap_removed, res.gap_means
    return res, one, None


def train_shared_sae(
    store: Any,
    config: SharedSAEConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    log: Callable[[str], None] | None = None,
) -> SharedSAEResult:
    """Trains one top-k SAE on both towers' matched rows of ``store`` and analyses it.

    ``store``: an :class:`vlmfast.store.ActivationStore` holding both hooks (or
    ``joint.embed``). ``out_dir``: where the SAE (and, with ``remove_gap``, its means) is
    saved; None keeps it in memory only. ``log``: a line per tenth of the run.

    Returns:
        The result (a :class:`SharedSAEResult`): the SAE, its fit (FVU per modality, L0,
            dead share) and the analysis of :func:`analyze_shared_store` (all pairs,
            single-object pairs).

    Raises:
        InputError: a hook is missing (the message names it and says to cache both towers:
            ``vlmfast cache --hooks image.embed,text.embed``), the two hooks differ in width
            (both hooks and widths named), the store has no labels, or a config field is bad.
    """
    cfg = config or SharedSAEConfig()
    pairs = store_pairs(store, cfg.image_hook, cfg.text_hook, pool=cfg.pool)
    shared, img, txt, lines = _train(pairs, cfg, log)
    path = None if out_dir is None else str(save_shared_sae(shared, out_dir))
    codes = np.concatenate(
        [shared.encode(pairs.image_rows, "image"), shared.encode(pairs.text_rows, "text")]
    )
    res = SharedSAEResult(
        shared,
        path,
        pairs.n,
        cfg.steps,
        _fvu(shared.sae, img),
        _fvu(shared.sae, txt),
        float((codes > 0).sum(1).mean()),
        float((codes.max(0) <= 0).mean()),
        cfg.to_dict(),
        log=lines,
    )
    if cfg.analyze:
        res.analysis, res.single_object, res.single_object_reason = analyze_shared_store(
            store, shared, cfg
        )
    return res
