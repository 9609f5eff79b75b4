"""Units of a model (neurons, heads, SAE features), their layout in a score table, null sets.

A **unit** is ``(tower, hook, index)``: neuron ``i`` of ``image.blocks.3.mlp.post``, head
``h`` of ``image.blocks.2.attn.head_out`` (scored by its output norm), or feature ``f`` of
an SAE on a hook (``sae=`` names the SAE). A scoring result's columns are units laid out
hook after hook; :class:`UnitLayout` records that layout in ``ScoringResult.meta["units"]``
so that :func:`top_units` (``unit_ranking.py``) can map a column back to its unit::

    acts = vf.causal.unit_activations(pair, images=px, hooks="image.blocks.*.mlp.post")
    scores = vf.scoring.score_units(acts.values, labels, concepts=cs, meta=acts.meta())
    units = vf.causal.top_units(scores, "red", n=50)          # UnitSet of 50 neurons

Per-sample activations come from ``unit_activations`` (``activations.py``); picking
from scores is ``top_units`` (``unit_ranking.py``). A scoring result without a layout
(``vlmfast score`` of one store hook) is read as one segment: ``meta["hook"]``, SAE
features when ``meta["source"] == "sae"``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, ShapeError

UNIT_KINDS = ("neuron", "head", "feature", "dim")
"""What a :class:`Unit` is: an MLP neuron, a head, an SAE feature or a hook dimension."""
_HEAD_POINTS = ("attn.z", "attn.q", "attn.k", "attn.v", "attn.head_out")
_NEURON_POINTS = ("mlp.post", "mlp.pre")
_LAYER_RE = re.compile(r"\.blocks\.(\d+)\.")


def model_id(pair: Any) -> str:
    """The identity a unit set records: the pair's spec (or config name)."""
    return str(getattr(pair, "spec", "") or pair.config.name)


def hook_layer(hook: str) -> int | None:
    """The block index of a hook name (``image.blocks.2.mlp.post`` -> 2); None outside blocks."""
    m = _LAYER_RE.search(hook + ".")
    return int(m.group(1)) if m else None


def kind_of(hook: str, sae: str | None = None) -> str:
    """``feature`` (with an SAE), ``head`` (per-head hooks), ``neuron`` (MLP) or ``dim``."""
    if sae is not None:
        return "feature"
    if hook.endswith(_HEAD_POINTS):
        return "head"
    if hook.endswith(_NEURON_POINTS):
        return "neuron"
    return "dim"


@dataclass(frozen=True, order=True)
class Unit:
    """One unit: ``index`` along the unit axis of ``hook`` (or feature of SAE ``sae``)."""

    hook: str
    """Full hook name, e.g. ``"image.blocks.2.mlp.post"``."""
    index: int
    """Neuron, head, SAE feature or dimension index."""
    kind: str = "neuron"
    """``neuron``, ``head``, ``feature`` or ``dim``."""
    sae: str | None = None
    """Key of the SAE (in ``saes=``) for ``feature`` units."""

    @property
    def tower(self) -> str:
        return self.hook.split(".", 1)[0]

    @property
    def layer(self) -> int | None:
        return hook_layer(self.hook)

    @property
    def group(self) -> tuple[str, str, str | None]:
        """``(hook, kind, sae)``: units sharing it are edited by one intervention."""
        return (self.hook, self.kind, self.sae)


@dataclass(frozen=True)
class UnitSet:
    """An ordered set of units, with where it came from."""

    units: tuple[Unit, ...]
    concept: str | None = None
    """The concept they were picked for (``top_units``), if any."""
    modality: str | None = None
    """The modality whose scores picked them."""
    model: str | None = None
    """``model_id`` of the pair the scores came from (checked against the pair used)."""
    scores: tuple[float, ...] = ()
    """The selection score (AUROC) of each unit."""

    def __len__(self) -> int:
        return len(self.units)

    def __iter__(self) -> Iterator[Unit]:
        return iter(self.units)

    def groups(self) -> dict[tuple[str, str, str | None], list[int]]:
        """Returns the unit indices per ``(hook, kind, sae)``, in first-seen order."""
        out: dict[tuple[str, str, str | None], list[int]] = {}
        for u in self.units:
            out.setdefault(u.group, []).append(u.index)
        return out

    def mix(self) -> dict[str, int]:
        """Returns how many units per hook (the tower and layer mix a null must match)."""
        out: dict[str, int] = {}
        for u in self.units:
            out[u.hook] = out.get(u.hook, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """Returns the set as a JSON-ready dict (concept, modality, model, units, scores)."""
        return {
            "concept": self.concept,
            "modality": self.modality,
            "model": self.model,
            "units": [asdict(u) for u in self.units],
            "scores": list(self.scores),
        }

    @classmethod
    def of(cls, units: Sequence[Unit | tuple[str, int]], *, model: str | None = None) -> UnitSet:
        """Returns a set from ``Unit``s or ``(hook, index)`` pairs (kind from the hook name)."""
        out = []
        for u in units:
            if isinstance(u, Unit):
                out.append(u)
            else:
                hook, index = u
                out.append(Unit(str(hook), int(index), kind_of(str(hook))))
        return cls(tuple(out), model=model)


@dataclass(frozen=True)
class Segment:
    """A run of consecutive scoring columns: the units of one hook."""

    hook: str
    size: int
    kind: str = "neuron"
    sae: str | None = None


@dataclass(frozen=True)
class UnitLayout:
    """Which unit each column of an activation / score matrix is."""

    segments: tuple[Segment, ...]
    model: str | None = None

    @property
    def n_units(self) -> int:
        return sum(s.size for s in self.segments)

    def unit(self, column: int) -> Unit:
        """Returns the unit of column ``column``.

        Raises:
            InputError: ``column`` is out of range.
        """
        at = int(column)
        for s in self.segments:
            if at < s.size:
                return Unit(s.hook, at, s.kind, s.sae)
            at -= s.size
        raise InputError(f"column {column} out of range for a layout of {self.n_units} units")

    def columns(self, hooks: str | Sequence[str] | None) -> npt.NDArray[np.bool_]:
        """Returns the bool mask ``[n_units]`` of the columns whose hook matches ``hooks``
        (names or globs; None: all)."""
        if hooks is None:
            return np.ones(self.n_units, dtype=bool)
        pats = [hooks] if isinstance(hooks, str) else list(hooks)
        parts = [
            np.full(s.size, any(fnmatch.fnmatchcase(s.hook, p) for p in pats), dtype=bool)
            for s in self.segments
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def to_meta(self) -> dict[str, Any]:
        """Returns the layout as a JSON-ready dict (what :meth:`from_meta` reads)."""
        return {"model": self.model, "segments": [asdict(s) for s in self.segments]}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], n_units: int) -> UnitLayout:
        """Returns the layout in a scoring result's meta (``units``), else one segment from
        ``hook``.

        Raises:
            InputError: the meta has neither ``units`` nor ``hook``.
            ShapeError: the layout does not have ``n_units`` units.
        """
        units = meta.get("units")
        if isinstance(units, str):
            units = json.loads(units)
        if isinstance(units, Mapping):
            segs = tuple(
                Segment(str(s["hook"]), int(s["size"]), str(s["kind"]), s.get("sae"))
                for s in units["segments"]
            )
            model = units.get("model")
            layout = cls(segs, None if model is None else str(model))
        elif meta.get("hook"):
            hook = str(meta["hook"])
            sae = meta.get("sae") if meta.get("source") == "sae" else None
            if meta.get("source") == "sae" and sae is None:
                sae = "sae"
            layout = cls((Segment(hook, n_units, kind_of(hook, sae), sae),), None)
        else:
            raise InputError(
                "scores has no unit layout: its meta needs 'units' (UnitLayout.to_meta(), as "
                "unit_activations(...).meta() writes) or 'hook'; or pass layout="
            )
        if layout.n_units != n_units:
            raise ShapeError(
                f"the unit layout has {layout.n_units} units but scores has {n_units} units"
            )
        return layout


# ---------------------------------------------------------------- sizes and null sets


def hook_width(pair: Any, hook: str) -> int:
    """Last-axis width of a residual-like hook (what an SAE on it must take as d_in)."""
    tower = hook.split(".", 1)[0]
    cfg = pair.config.tower(tower)
    if hook.endswith(("mlp.post", "mlp.pre")):
        return int(cfg.mlp_width)
    if hook.endswith(".embed"):
        return int(cfg.embed_dim or cfg.width)
    return int(cfg.width)


def hook_size(pair: Any, unit: Unit, saes: Mapping[str, Any] | None = None) -> int:
    """How many units ``unit``'s hook has (mlp width, heads, SAE latents, width)."""
    if unit.tower not in ("image", "text"):
        raise InputError(f"units: hook {unit.hook!r} is not in the image or text tower")
    cfg = pair.config.tower(unit.tower)
    if unit.kind == "feature":
        sae = (saes or {}).get(unit.sae or "")
        if sae is None:
            raise InputError(
                f"units: feature {unit.index} of SAE {unit.sae!r} at {unit.hook!r} needs "
                f"saes={{{unit.sae!r}: TopKSAE}}"
            )
        return int(sae.n_latents)
    if unit.kind == "head":
        return int(cfg.heads)
    if unit.kind == "neuron" or unit.hook.endswith(("mlp.post", "mlp.pre")):
        return int(cfg.mlp_width)
    if unit.hook.endswith(".embed"):
        return int(cfg.embed_dim or cfg.width)
    return int(cfg.width)


def random_like(
    units: UnitSet,
    pair: Any,
    k: int,
    seed: int = 0,
    *,
    saes: Mapping[str, Any] | None = None,
    exclude_own: bool = True,
) -> list[UnitSet]:
    """``k`` random unit sets with the same count per ``(hook, kind, sae)`` as ``units``.

    Same size, tower and layer mix; indices drawn without replacement, avoiding the
    set's own units when the hook has room (``exclude_own``). Deterministic in ``seed``.
    """
    rng = np.random.default_rng(seed)
    groups = units.groups()
    sizes = {g: hook_size(pair, Unit(g[0], 0, g[1], g[2]), saes) for g in groups}
    out: list[UnitSet] = []
    for _ in range(k):
        drawn: list[Unit] = []
        for g, own in groups.items():
            pool = np.arange(sizes[g])
            if exclude_own and sizes[g] - len(set(own)) >= len(own):
                pool = np.setdiff1d(pool, np.asarray(own))
            pick = rng.choice(pool, size=len(own), replace=False)
            drawn.extend(Unit(g[0], int(i), g[1], g[2]) for i in np.sort(pick))
        out.append(UnitSet(tuple(drawn), None, units.modality, units.model))
    return out
