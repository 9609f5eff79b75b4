"""Units of a model (neurons, heads, SAE features) and picking the most selective ones.

A **unit** is ``(tower, hook, index)``: neuron ``i`` of ``image.blocks.3.mlp.post``, head
``h`` of ``image.blocks.2.attn.head_out`` (scored by its output norm), or feature ``f`` of
an SAE on a hook (``sae=`` names the SAE). A scoring result's columns are units laid out
hook after hook; :class:`UnitLayout` records that layout in ``ScoringResult.meta["units"]``
so that :func:`top_units` can map a column back to its unit::

    acts = vf.causal.unit_activations(pair, images=px, hooks="image.blocks.*.mlp.post")
    scores = vf.scoring.score_units(acts.values, labels, concepts=cs, meta=acts.meta())
    units = vf.causal.top_units(scores, "red", n=50)          # UnitSet of 50 neurons

``unit_activations`` scores per *sample*, never per token row: a unit's activation on an
image is its maximum (or mean) over that image's patch tokens (CLS excluded), on a text
its maximum over the tokens up to EOT (DESIGN: a token row carrying its sample's label
measures nothing the paper means). A scoring result without a layout (``vlmfast score``
of one store hook) is read as one segment: ``meta["hook"]``, SAE features when
``meta["source"] == "sae"``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.errors import InputError, ShapeError

KINDS = ("neuron", "head", "feature", "dim")
_HEAD_POINTS = ("attn.z", "attn.q", "attn.k", "attn.v", "attn.head_out")
_NEURON_POINTS = ("mlp.post", "mlp.pre")
_LAYER_RE = re.compile(r"\.blocks\.(\d+)\.")


def model_id(pair: Any) -> str:
    """The identity a unit set records: the pair's spec (or config name)."""
    return str(getattr(pair, "spec", "") or pair.config.name)


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
        m = _LAYER_RE.search(self.hook + ".")
        return int(m.group(1)) if m else None

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
        """Indices per ``(hook, kind, sae)``, in first-seen order."""
        out: dict[tuple[str, str, str | None], list[int]] = {}
        for u in self.units:
            out.setdefault(u.group, []).append(u.index)
        return out

    def mix(self) -> dict[str, int]:
        """How many units per hook (the tower and layer mix a null must match)."""
        out: dict[str, int] = {}
        for u in self.units:
            out[u.hook] = out.get(u.hook, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "modality": self.modality,
            "model": self.model,
            "units": [asdict(u) for u in self.units],
            "scores": list(self.scores),
        }

    @classmethod
    def of(cls, units: Sequence[Unit | tuple[str, int]], *, model: str | None = None) -> UnitSet:
        """A set from ``Unit``s or ``(hook, index)`` pairs (kind from the hook name)."""
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
        at = int(column)
        for s in self.segments:
            if at < s.size:
                return Unit(s.hook, at, s.kind, s.sae)
            at -= s.size
        raise InputError(f"column {column} out of range for a layout of {self.n_units} units")

    def columns(self, hooks: str | Sequence[str] | None) -> npt.NDArray[np.bool_]:
        """Bool mask of the columns whose hook matches ``hooks`` (names or globs)."""
        if hooks is None:
            return np.ones(self.n_units, dtype=bool)
        pats = [hooks] if isinstance(hooks, str) else list(hooks)
        parts = [
            np.full(s.size, any(fnmatch.fnmatchcase(s.hook, p) for p in pats), dtype=bool)
            for s in self.segments
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)

    def to_meta(self) -> dict[str, Any]:
        return {"model": self.model, "segments": [asdict(s) for s in self.segments]}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], n_units: int) -> UnitLayout:
        """The layout in a scoring result's meta (``units``), else one segment from ``hook``."""
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


@dataclass
class UnitActivations:
    """Per-sample unit activations ``values[N, U]`` and the layout of their columns."""

    values: npt.NDArray[np.float32]
    layout: UnitLayout
    reduce: str = "max"

    def meta(self) -> dict[str, Any]:
        """``{"units": layout, "reduce": ...}`` for ``score_units(..., meta=)``."""
        return {"units": self.layout.to_meta(), "reduce": self.reduce}


def _text_valid(tokens: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: positions up to and including EOT (the row's largest id)."""
    eot = tokens.argmax(dim=-1, keepdim=True)
    pos = torch.arange(tokens.shape[1], device=tokens.device).view(1, -1)
    return pos <= eot


def _reduce(x: torch.Tensor, valid: torch.Tensor | None, reduce: str) -> torch.Tensor:
    """[B, T, U] -> [B, U] over the valid positions."""
    if valid is None:
        return x.amax(1) if reduce == "max" else x.mean(1)
    v = valid.view(*valid.shape, 1).to(x.device)
    if reduce == "max":
        return x.masked_fill(~v, float("-inf")).amax(1)
    return (x * v).sum(1) / v.sum(1).clamp_min(1)


def unit_activations(
    pair: Any,
    *,
    images: Any = None,
    texts: Any = None,
    hooks: str | Sequence[str] = "image.blocks.*.mlp.post",
    reduce: str = "max",
    saes: Mapping[str, Any] | None = None,
    batch_size: int = 256,
) -> UnitActivations:
    """Per-sample activations of every unit of ``hooks`` (one tower: images or texts).

    Neurons (``mlp.post``/``mlp.pre``) and dimensions are reduced over tokens; heads
    (``attn.z``, ``attn.head_out``, ...) by the norm of their output at each token, then
    reduced; with ``saes={hook: TopKSAE}`` the units of those hooks are the SAE's
    features (dense codes, then reduced). ``reduce``: ``max`` or ``mean`` over the image's
    patch tokens (CLS excluded) or the text's tokens up to EOT.
    """
    if reduce not in ("max", "mean"):
        raise InputError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    if (images is None) == (texts is None):
        raise InputError("unit_activations needs exactly one of images= or texts=")
    from vlmfast.models.hooks import resolve_hooks

    tower = "image" if images is not None else "text"
    names = resolve_hooks(hooks, [p for p in pair.hook_points() if p.startswith(tower + ".")])
    saes = dict(saes or {})
    for key in saes:
        if key not in names:
            raise InputError(f"saes has an SAE for {key!r}, which is not among hooks {names}")
    if tower == "image":
        inputs = images if isinstance(images, torch.Tensor) else pair.preprocess(images)
    else:
        inputs = texts if isinstance(texts, torch.Tensor) else pair.tokenize(texts)
    skip_cls = tower == "image" and bool(pair.config.image.class_token)
    chunks: list[list[torch.Tensor]] = [[] for _ in names]
    with torch.no_grad():
        for start in range(0, inputs.shape[0], batch_size):
            x = inputs[start : start + batch_size]
            run = (
                pair.run(images=x, cache=names)
                if tower == "image"
                else pair.run(texts=x, cache=names)
            )
            valid = _text_valid(x) if tower == "text" else None
            for k, name in enumerate(names):
                a = run.cache[name]
                if name in saes:
                    sae = saes[name]
                    if a.shape[-1] != sae.d_in:
                        raise ShapeError(
                            f"saes[{name!r}] has d_in={sae.d_in}, the hook has width {a.shape[-1]}"
                        )
                    flat = a.reshape(-1, a.shape[-1]).float()
                    val, idx = sae.encode(flat)
                    dense = torch.zeros(flat.shape[0], sae.n_latents, dtype=torch.float32)
                    dense.scatter_(1, idx.long().cpu(), val.float().cpu())
                    a = dense.view(*a.shape[:-1], sae.n_latents)
                elif kind_of(name) == "head":
                    a = a.float().norm(dim=-1)  # [B, T, H]
                if a.dim() == 2:  # pooled hooks: no token axis
                    chunks[k].append(a.float().cpu())
                    continue
                if skip_cls:
                    a = a[:, 1:]
                chunks[k].append(_reduce(a.float(), valid, reduce).cpu())
    cols = [torch.cat(c).numpy().astype(np.float32) for c in chunks]
    segs = tuple(
        Segment(n, int(c.shape[1]), kind_of(n, n if n in saes else None), n if n in saes else None)
        for n, c in zip(names, cols)
    )
    return UnitActivations(np.concatenate(cols, axis=1), UnitLayout(segs, model_id(pair)), reduce)


# ---------------------------------------------------------------- scores -> top units


@dataclass
class SavedScores:
    """A scoring result read back from a ``ScoringResult.save`` directory."""

    concepts: tuple[str, ...]
    kinds: tuple[str, ...]
    meta: dict[str, Any]
    tables: dict[str, dict[str, npt.NDArray[Any]]] = field(default_factory=dict)
    """Per modality: ``auroc``, ``mean_pos``, ``mean_neg`` (``[units, concepts]``)."""


def load_scores(path: str | Path) -> SavedScores:
    """Reads ``DIR/scores.zarr`` (what ``vlmfast score`` / ``ScoringResult.save`` writes)."""
    import zarr

    root_path = Path(path) / "scores.zarr"
    if not root_path.exists():
        raise InputError(f"--scores {path}: no scores.zarr inside (a vlmfast score output dir)")
    root: Any = zarr.open_group(str(root_path), mode="r")
    attrs: Any = root.attrs
    meta = dict(attrs.get("meta", {}) or {})
    out = SavedScores(tuple(attrs["concepts"]), tuple(attrs.get("kinds", ())), meta, {})
    for name in ("image", "text", "all"):
        if name in root:
            g: Any = root[name]
            out.tables[name] = {
                key: np.asarray(g[key][...])
                for key in ("auroc", "mean_pos", "mean_neg")
                if key in g
            }
    return out


def _score_view(
    scores: Any, modality: str | None
) -> tuple[str, dict[str, Any], tuple[str, ...], dict[str, Any]]:
    """``(modality, {auroc, mean_pos, mean_neg}, concept names, meta)`` of a result."""
    if isinstance(scores, SavedScores):
        tables = scores.tables
        names = scores.concepts
        meta = scores.meta
    elif hasattr(scores, "per_modality") and hasattr(scores, "concepts"):
        tables = {
            k: {
                "auroc": r.scores.auroc,
                "mean_pos": r.scores.mean_pos,
                "mean_neg": r.scores.mean_neg,
            }
            for k, r in scores.per_modality.items()
        }
        names = tuple(scores.concepts.names)
        meta = dict(scores.meta)
    else:
        raise InputError(
            f"scores must be a ScoringResult or vf.causal.load_scores(DIR), got {type(scores).__name__}"
        )
    if modality is None:
        modality = "image" if "image" in tables else next(iter(tables), None)
    if modality not in tables:
        raise InputError(f"modality {modality!r} is not in the scores; it has {sorted(tables)}")
    return str(modality), tables[modality], names, meta


def top_units(
    scores: Any,
    concept: str,
    n: int = 50,
    *,
    modality: str | None = None,
    hooks: str | Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    layout: UnitLayout | None = None,
) -> UnitSet:
    """The ``n`` units most selective for ``concept`` (highest AUROC) in one modality.

    ``scores``: a ``ScoringResult`` or ``load_scores(DIR)``; its columns map to units by
    ``layout`` (default: the one in ``scores.meta``). ``modality``: ``image`` (default when
    present) or ``text``. ``hooks`` (names or globs) and ``kinds`` restrict the candidates.
    Ties in AUROC are broken by the larger difference of means (positives minus negatives),
    then by column; units with no AUROC (a constant unit) are never picked.
    """
    mod, table, names, meta = _score_view(scores, modality)
    if concept not in names:
        raise InputError(f"concept {concept!r} is not in the scoring result; it has {list(names)}")
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    c = names.index(concept)
    auroc = np.asarray(table["auroc"], dtype=np.float64)[:, c]
    lay = layout or UnitLayout.from_meta(meta, auroc.shape[0])
    if lay.n_units != auroc.shape[0]:
        raise ShapeError(f"layout has {lay.n_units} units but scores has {auroc.shape[0]}")
    ok = np.isfinite(auroc) & lay.columns(hooks)
    if kinds is not None:
        bad = sorted(set(kinds) - set(KINDS))
        if bad:
            raise InputError(f"kinds {bad} unknown; expected some of {list(KINDS)}")
        kind_col = np.concatenate([np.full(s.size, s.kind in kinds) for s in lay.segments])
        ok &= kind_col
    if not ok.any():
        raise InputError(f"no scored units match hooks={hooks!r} kinds={kinds!r} in {mod!r}")
    diff = np.zeros_like(auroc)
    if table.get("mean_pos") is not None and table.get("mean_neg") is not None:
        diff = np.nan_to_num(
            np.asarray(table["mean_pos"], np.float64)[:, c]
            - np.asarray(table["mean_neg"], np.float64)[:, c]
        )
    cols = np.flatnonzero(ok)
    order = np.lexsort((cols, -diff[cols], -auroc[cols]))
    pick = cols[order[:n]]
    units = tuple(lay.unit(int(j)) for j in pick)
    return UnitSet(units, concept, mod, lay.model, tuple(float(auroc[j]) for j in pick))


# ---------------------------------------------------------------- sizes and null sets


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
