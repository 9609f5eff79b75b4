"""The options of ``find_circuit``, one dataclass, and their checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vlmfast.causal.circuits.families import ABLATIONS
from vlmfast.causal.circuits.null import MIN_NULL_FOR_PVALUE
from vlmfast.causal.core.conventions import (
    RECOVERY_TOL,
    TOWERS,
    check_choice,
    check_eval_mode,
)
from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.metrics import Metric
from vlmfast.causal.core.options import with_options
from vlmfast.errors import InputError

COMPONENTS = ("heads", "neurons", "features")
DEFAULT_COMPONENTS = ("heads", "neurons")  # features need saes=
RANKINGS = ("atp", "atp*", "exact")
CORRUPT_SIDES = ("given", "image", "text", "both")
DEFAULT_GRID = 32
DEFAULT_BOOT = 1000


@dataclass(frozen=True)
class CircuitConfig:
    """Everything ``vf.causal.find_circuit`` can be told, with its defaults.

    ``find_circuit(pair, px, tok, px_c, config=CircuitConfig(target=0.9))`` and
    ``find_circuit(pair, px, tok, px_c, target=0.9)`` are the same call; keywords given
    with a config replace its fields.
    """

    components: Sequence[str] = DEFAULT_COMPONENTS
    """``"heads"`` (``attn.z``), ``"neurons"`` (``mlp.post``) and/or ``"features"`` (the
    latents of ``saes`` plus one error node per hook and position; see
    ``vf.causal.find_feature_circuit``); may be empty when ``families`` are given."""
    towers: Sequence[str] = TOWERS
    """The towers whose components are candidates (both: one search over the image and
    text towers' units at once; ``Circuit.meta["per_tower"]`` counts each tower's nodes)."""
    corrupt: str = "given"
    """Which side's corrupt inputs the search uses: ``"given"`` (whichever of
    ``corrupt_images`` / ``corrupt_texts`` are passed), ``"image"``, ``"text"`` or
    ``"both"`` (those must be passed; the other side's are dropped). With the default
    ``"atp"`` ranking a tower without corruption scores 0 everywhere, so a two-tower
    search wants ``"both"`` (``vlmfast.causal.core.corruption.concept_corruption``'s
    ``both-swap``: the image re-rendered and the caption swapped to the same word)."""
    ranking: str | Sequence[Any] = "atp"
    """``"atp"``, ``"atp*"``, ``"exact"`` or an explicit order of nodes (see ``search.py``)."""
    ablation: str = "mean"
    """``"mean"``, ``"resample"`` or ``"zero"``: what a component outside the circuit gets."""
    target: float = 0.8
    """Faithfulness the circuit must keep, in ``(0, 1]``."""
    null: int = 100
    """Random orderings for the null (0 = none; 1..19 only with ``pvalue=False``)."""
    seed: int = 0
    """Seed of the null orderings and the bootstrap."""
    metric: str | Metric = "score"
    """``"score"``, ``"logit_diff"``, ``"alignment"`` or a callable on
    ``[..., n_img, n_txt]`` similarities."""
    reference: dict[str, Any] | None = None
    """Inputs the ``"mean"`` ablation averages over, ``{"images": px, "texts": tok}``
    (default: the clean batch)."""
    families: Sequence[Any] = ()
    """Extra component families (``families.py``'s protocol), e.g. SAE features; their
    nodes join the candidates."""
    saes: dict[str, Any] | None = None
    """``{hook: TopKSAE}`` spliced for ``"features"`` (one SAE per block)."""
    grid: int = DEFAULT_GRID
    """How many sizes the log-spaced grid has (0 and N included)."""
    null_grid: int | None = None
    """How many of those sizes the null orderings are evaluated at (None: all; fewer is an
    evenly thinned subset, 0 and N included, and the observed sparsity of the p-value is
    read on the same subset). Random orderings share little computation, so the null
    costs ~``null`` curves: the knob for big node sets."""
    pvalue: bool = True
    """Whether the null reports a p-value (needs ``null >= 20``)."""
    n_boot: int = DEFAULT_BOOT
    """Bootstrap resamples of the examples for the faithfulness interval."""
    level: float = 0.95
    """Central level of the bootstrap and null intervals."""
    tol: float = RECOVERY_TOL
    """The smallest ``|m(model) - m(empty)|`` faithfulness may divide by."""
    method: str = "batched"
    """``"batched"`` or ``"serial"`` (one forward per size: the reference)."""
    max_rows: int = DEFAULT_MAX_ROWS
    """The most batch rows per forward (variants x pairs)."""
    progress: bool = False
    """tqdm progress bars for the stages."""

    @classmethod
    def build(cls, config: CircuitConfig | None, options: dict[str, Any]) -> CircuitConfig:
        """Returns ``config`` (default: the defaults) with ``options`` replacing its fields.

        Raises:
            TypeError: an option that is not a field.
        """
        return with_options(cls, config, options, "find_circuit")


def check_config(pair: Any, cfg: CircuitConfig) -> tuple[list[str], list[str]]:
    """Validates ``cfg``; returns the distinct ``(component kinds, towers)``."""
    kinds, towers = _check_choices(pair, cfg)
    check_choice(cfg.method, ("batched", "serial"), "method")
    grid, null_grid = cfg.grid, cfg.null_grid
    if not isinstance(grid, int) or grid < 2:
        raise InputError(f"grid must be an int >= 2 (sizes on the curve), got {grid!r}")
    if null_grid is not None and (
        not isinstance(null_grid, int) or isinstance(null_grid, bool) or null_grid < 2
    ):
        raise InputError(
            f"null_grid must be None or an int >= 2 (sizes per null curve), got {null_grid!r}"
        )
    if cfg.max_rows < 1:
        raise InputError(f"max_rows must be >= 1, got {cfg.max_rows}")
    if not 0 < cfg.level < 1:
        raise InputError(f"level must be in (0, 1), got {cfg.level!r}")
    return kinds, towers


def _check_choices(pair: Any, cfg: CircuitConfig) -> tuple[list[str], list[str]]:
    components, towers, ranking = cfg.components, cfg.towers, cfg.ranking
    ablation, target, null, pvalue, families = (
        cfg.ablation, cfg.target, cfg.null, cfg.pvalue, cfg.families
    )  # fmt: skip
    check_eval_mode(pair, "vf.causal.find_circuit")
    comps = [components] if isinstance(components, str) else list(components)
    for c in comps:
        check_choice(c, COMPONENTS, "components")
    if not comps and not families:
        raise InputError(f"components is empty; expected some of {list(COMPONENTS)}")
    tw = [towers] if isinstance(towers, str) else list(towers)
    if not tw:
        raise InputError(f"towers is empty; expected some of {list(TOWERS)}")
    for t in tw:
        check_choice(t, TOWERS, "towers")
    if isinstance(ranking, str):
        check_choice(ranking, RANKINGS, "ranking")
    elif not isinstance(ranking, Sequence):
        raise InputError(
            f"ranking must be one of {list(RANKINGS)} or a list of nodes, got {ranking!r}"
        )
    check_choice(ablation, ABLATIONS, "ablation")
    check_choice(cfg.corrupt, CORRUPT_SIDES, "corrupt")
    if not isinstance(target, int | float) or not 0 < float(target) <= 1:
        raise InputError(f"target must be in (0, 1], got {target!r}")
    if not isinstance(null, int) or null < 0:
        raise InputError(f"null must be an int >= 0 (random orderings), got {null!r}")
    if pvalue and 0 < null < MIN_NULL_FOR_PVALUE:
        raise InputError(
            f"null={null} random orderings cannot give a p-value (the smallest possible is "
            f"1/{null + 1}); use null >= {MIN_NULL_FOR_PVALUE}, null=0, or pvalue=False"
        )
    return list(dict.fromkeys(comps)), list(dict.fromkeys(tw))


def corrupt_sides(corrupt: dict[str, Any], side: str) -> dict[str, Any]:
    """``corrupt`` (``{tower: inputs or None}``) with only ``side``'s inputs kept
    (:data:`CORRUPT_SIDES`), or InputError when ``side`` names inputs not given."""
    if side == "given":
        return corrupt
    want = TOWERS if side == "both" else (side,)
    missing = [t for t in want if corrupt.get(t) is None]
    if missing:
        names = " and ".join(f"corrupt_{t}s=" for t in missing)
        raise InputError(f"corrupt={side!r} needs {names} (or use corrupt='given')")
    return {t: (corrupt[t] if t in want else None) for t in TOWERS}


__all__ = [
    "COMPONENTS",
    "CORRUPT_SIDES",
    "RANKINGS",
    "CircuitConfig",
    "check_config",
    "corrupt_sides",
]
