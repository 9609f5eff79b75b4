"""Grounding heads: image-tower heads whose attention lands on the object a caption names.

For each image-tower head ``(layer, head)`` and each image ``i``, the **named-object
mass** is the attention probability, summed over the patches of the object that the
caption names, from the CLS query (``query="cls"``) or averaged over every query token
(``query="mean"``): ``m_i = Σ_{p ∈ named} pattern[i, h, q, 1 + p]`` (the image tower has
CLS at token 0, then the patch grid row by row). Units: attention probability, in [0, 1].
An object's patches follow the store's patch rule (:func:`vlmfast.store.patch_grid.patch_hits`:
the patch holds the box centre or the box covers a quarter of it).

Two nulls, each per image, then averaged over images:

* **other objects**: the mean mass on the other objects' boxes of the same image (images
  with one object have none and are left out of this comparison). Permutation p-value:
  in each image the "named" object is re-drawn uniformly among its objects.
* **random boxes**: the mass on ``n_random`` random translations of the named object's
  patch set inside the grid (same patch count and shape). Permutation p-value: in each
  image the named set is exchanged with one of its translations.

The **difference** (named − null, mean over images) has a percentile bootstrap interval
over images; p-values are one-sided (more mass on the named object), ``(1 + #{null ≥
observed}) / (1 + n_perm)``; ``significant`` is Benjamini–Hochberg over all heads at
``alpha`` on the ranking null's p-values. Heads are ranked by the ranking null's
difference (``rank_by``: ``"other_objects"``, the specific test that the head follows
the *named* object and not any object, or ``"random_boxes"``).

A two-tower model's image tower never sees the caption, so its heads can prefer the
named object over the others only through what the image itself shows (the named
object's salience, size or position, whatever made the caption name it); the
random-boxes comparison measures attention on an object's patches at all. On the
bundled ``synthetic:tiny`` (128 images of ``synthetic:n=400,seed=3``) no head passes the
other-objects test, while every top head puts about 0.3 more CLS attention on the named
object's patches than on random boxes of its shape.

Inputs: ``images`` (model-input pixels ``[N, 3, S, S]`` or images ``pair.preprocess``
takes), ``boxes`` (per image, ``(object name, (x0, y0, x1, y1))`` normalised to [0, 1]
in the model-input frame) and ``names`` (per image, the name of the object its caption
names). :func:`vlmfast.crossmodal.grounding_source.grounding_inputs` builds them from a
source with boxes.

The causal test (patching the top heads from clean into corrupted images) is
:func:`vlmfast.crossmodal.grounding_causal.grounding_patching`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.crossmodal.checks import to_jsonable
from vlmfast.errors import InputError
from vlmfast.stats import benjamini_hochberg
from vlmfast.store.patch_grid import PatchGrid, patch_hits

Array = npt.NDArray[np.float64]
Box = Sequence[float]
QUERIES = ("cls", "mean")
RANK_BY = ("other_objects", "random_boxes")
NO_BOXES = "use a source with boxes (synthetic, COCO instances)"


@dataclass
class NullComparison:
    """Named-object mass against one null, per head (arrays ``[layers, heads]``)."""

    null: Array
    """Mean null mass over the images used (attention probability)."""
    diff: Array
    """Mean over images of named − null mass."""
    ci_low: Array
    """Bootstrap lower end of ``diff`` (percentile, resampling images)."""
    ci_high: Array
    """Bootstrap upper end of ``diff``."""
    pvalue: Array
    """One-sided permutation p-value of ``diff`` (see the module docstring)."""
    n_images: int
    """Images in this comparison."""


@dataclass
class QueryGrounding:
    """Grounding scores of every head for one query kind (``cls`` or ``mean``)."""

    query: str
    named: Array
    """``[layers, heads]`` mean named-object mass over images."""
    other_objects: NullComparison | None
    """Against the other objects' boxes; None when no image has two objects."""
    random_boxes: NullComparison
    """Against random translations of the named patch set."""
    significant: npt.NDArray[np.bool_]
    """``[layers, heads]`` BH rejections (at ``alpha``) of the ranking null's p-values."""
    ranked: list[tuple[int, int]]
    """Heads ``(layer, head)`` by the ranking null's ``diff``, largest first."""


@dataclass
class GroundingScores:
    """Per-head grounding scores from the CLS query and from all queries averaged."""

    cls: QueryGrounding
    mean: QueryGrounding
    rank_by: str
    alpha: float
    n_images: int
    n_random: int
    grid_side: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ranked(self) -> list[tuple[int, int]]:
        """Heads ranked by the CLS-query score (largest first)."""
        return self.cls.ranked

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (NaN becomes ``None``)."""
        out: dict[str, Any] = {}
        for k, v in self.__dict__.items():
            out[k] = to_jsonable(_plain(v))
        return out


def _plain(v: Any) -> Any:
    if isinstance(v, (QueryGrounding, NullComparison)):
        return {k: _plain(x) for k, x in v.__dict__.items()}
    return v


def grounding_scores(
    pair: Any,
    images: Any,
    boxes: Sequence[Sequence[tuple[str, Box]]],
    names: Sequence[str],
    *,
    n_random: int = 16,
    n_boot: int = 1000,
    n_perm: int = 1000,
    alpha: float = 0.05,
    rank_by: str = "other_objects",
    batch_size: int = 16,
    seed: int = 0,
) -> GroundingScores:
    """Rank image-tower heads by attention on the named object's patches (module docstring).

    ``batch_size`` images run per forward; every layer's pattern of a batch is held at
    once (``batch_size · layers · heads · T²`` floats).

    Returns:
        The scores (a :class:`GroundingScores`): per query kind, the named-object mass (a
            fraction of attention in [0, 1]), both nulls with bootstrap intervals and
            permutation p-values, BH significance and the ranking.

    Raises:
        InputError: an image has no boxes, a box lies outside [0, 1] or is empty, a name
            matches no object (or several) of its image, the lengths differ, ``rank_by``
            is unknown, or ``rank_by="other_objects"`` and no image has two objects.
    """
    if rank_by not in RANK_BY:
        raise InputError(f"rank_by must be one of {list(RANK_BY)}, got {rank_by!r}")
    cfg = pair.config.image
    grid = PatchGrid(int(cfg.image_size), int(cfg.patch_size), bool(cfg.class_token))
    sets, named_at = object_patch_sets(boxes, names, grid)
    if rank_by == "other_objects" and not any(len(s) > 1 for s in sets):
        raise InputError(
            "rank_by='other_objects' needs images with at least two objects; every image "
            "has one: use rank_by='random_boxes'"
        )
    rng = np.random.default_rng(seed)
    rand = [random_translations(s[k], grid.side, n_random, rng) for s, k in zip(sets, named_at)]
    rows = head_patch_attention(pair, images, grid, batch_size)
    if rows["cls"].shape[0] != len(sets):
        raise InputError(f"{rows['cls'].shape[0]} images but {len(sets)} box lists")
    per_query = {
        q: _query_scores(q, rows[q], sets, named_at, rand, n_boot, n_perm, alpha, rank_by, rng)
        for q in QUERIES
    }
    return GroundingScores(
        per_query["cls"], per_query["mean"], rank_by, alpha, len(sets), n_random, grid.side
    )


def object_patch_sets(
    boxes: Sequence[Sequence[tuple[str, Box]]], names: Sequence[str], grid: PatchGrid
) -> tuple[list[list[npt.NDArray[np.int64]]], list[int]]:
    """Per image, each object's patch indices (row-major), and the named object's index.

    Raises:
        InputError: see :func:`grounding_scores`.
    """
    if boxes is None:
        raise InputError(f"grounding needs object boxes; the input has none: {NO_BOXES}")
    if len(boxes) != len(names):
        raise InputError(f"{len(boxes)} box lists but {len(names)} names (one per image)")
    sets: list[list[npt.NDArray[np.int64]]] = []
    named_at: list[int] = []
    for i, (objs, name) in enumerate(zip(boxes, names)):
        if not objs:
            raise InputError(f"grounding needs object boxes; image {i} has none: {NO_BOXES}")
        arr = np.asarray([_check_box(i, n, b) for n, b in objs], dtype=np.float64)
        bi, pi = patch_hits(arr, grid)
        sets.append([np.unique(pi[bi == j]) for j in range(len(objs))])
        hits = [j for j, (n, _) in enumerate(objs) if n == name]
        if len(hits) != 1:
            have = [n for n, _ in objs]
            what = "matches no object" if not hits else f"matches {len(hits)} objects"
            raise InputError(f"image {i}: the caption's name {name!r} {what} of {have}")
        if not len(sets[-1][hits[0]]):
            raise InputError(f"image {i}: object {name!r} covers no patch of the grid")
        named_at.append(hits[0])
    return sets, named_at


def _check_box(i: int, name: str, box: Box) -> list[float]:
    b = [float(v) for v in box]
    ok = len(b) == 4 and all(np.isfinite(b)) and min(b) >= -1e-6 and max(b) <= 1 + 1e-6
    if not ok or b[2] <= b[0] or b[3] <= b[1]:
        raise InputError(
            f"image {i}: box {b} of object {name!r} is outside the image or empty; boxes are "
            "(x0, y0, x1, y1) normalised to [0, 1] in the model-input frame, x0 < x1, y0 < y1"
        )
    return b


def random_translations(
    patches: npt.NDArray[np.int64], side: int, n: int, rng: np.random.Generator
) -> npt.NDArray[np.int64]:
    """``[n, len(patches)]`` random translations of a patch set that stay inside the grid
    (the same set repeated when no other translation fits)."""
    r, c = np.divmod(patches, side)
    dr = np.arange(-r.min(), side - r.max())
    dc = np.arange(-c.min(), side - c.max())
    shifts = [(a, b) for a in dr for b in dc if (a, b) != (0, 0)] or [(0, 0)]
    pick = rng.integers(0, len(shifts), size=n)
    return np.stack([(r + shifts[k][0]) * side + c + shifts[k][1] for k in pick])


def head_patch_attention(
    pair: Any, images: Any, grid: PatchGrid, batch_size: int = 32
) -> dict[str, Array]:
    """Attention onto each patch, ``{"cls": [N, L, H, P], "mean": [N, L, H, P]}``: from
    the CLS query, and averaged over all query tokens (probabilities)."""
    if not grid.class_token:
        raise InputError("grounding scores from CLS need an image tower with a CLS token")
    px = images if isinstance(images, torch.Tensor) else pair.preprocess(images)
    n_layers = int(pair.config.image.layers)
    names = [f"image.blocks.{layer}.attn.pattern" for layer in range(n_layers)]
    out: dict[str, list[Array]] = {"cls": [], "mean": []}
    with torch.no_grad():
        for lo in range(0, px.shape[0], batch_size):
            run = pair.run(images=px[lo : lo + batch_size], cache=names, all_rows=True)
            pat = torch.stack([run.cache[n].float() for n in names], 1)  # [B, L, H, T, T]
            out["cls"].append(pat[:, :, :, 0, 1:].cpu().double().numpy())
            out["mean"].append(pat[:, :, :, :, 1:].mean(3).cpu().double().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def _query_scores(
    query: str,
    att: Array,
    sets: list[list[npt.NDArray[np.int64]]],
    named_at: list[int],
    rand: list[npt.NDArray[np.int64]],
    n_boot: int,
    n_perm: int,
    alpha: float,
    rank_by: str,
    rng: np.random.Generator,
) -> QueryGrounding:
    """Scores of one query kind from ``att`` ``[N, L, H, P]``."""
    objs = [np.stack([att[i][..., s].sum(-1) for s in ss]) for i, ss in enumerate(sets)]
    named = np.stack([o[k] for o, k in zip(objs, named_at)])  # [N, L, H]
    rnd = np.stack([np.moveaxis(att[i][..., r].sum(-1), -1, 0) for i, r in enumerate(rand)], 1)
    cand_r = np.concatenate([named[None], rnd])  # candidate 0 is the named set
    random_cmp = _compare(cand_r, np.zeros(len(sets), np.int64), n_boot, n_perm, rng)
    multi = [i for i, o in enumerate(objs) if len(o) > 1]
    other_cmp = None
    if multi:
        m_max = max(len(objs[i]) for i in multi)
        pad = np.full((m_max, len(multi), *named.shape[1:]), np.nan)
        for j, i in enumerate(multi):
            pad[: len(objs[i]), j] = objs[i]
        at = np.asarray([named_at[i] for i in multi])
        other_cmp = _compare(pad, at, n_boot, n_perm, rng)
    ranking = other_cmp if rank_by == "other_objects" and other_cmp is not None else random_cmp
    sig = benjamini_hochberg(ranking.pvalue, alpha)
    order = np.argsort(-np.nan_to_num(ranking.diff, nan=-np.inf), axis=None, kind="stable")
    heads = ranking.diff.shape[1]
    ranked = [(int(k // heads), int(k % heads)) for k in order]
    return QueryGrounding(query, named.mean(0), other_cmp, random_cmp, sig, ranked)


def _diffs(cand: Array, pick: npt.NDArray[np.int64]) -> Array:
    """Per image, candidate ``pick`` minus the mean of the other candidates (NaN padding
    ignored): ``cand`` ``[M, N, ...]``, ``pick`` ``[..., N]`` -> ``[..., N, L, H]``."""
    count = np.isfinite(cand).sum(0)  # [N, L, H]
    total = np.nansum(cand, 0)
    idx = np.arange(cand.shape[1])
    chosen = cand[pick, idx]  # pick broadcasts over leading permutation axes
    return np.asarray(chosen - (total - chosen) / (count - 1))


def _compare(
    cand: Array,
    named_at: npt.NDArray[np.int64],
    n_boot: int,
    n_perm: int,
    rng: np.random.Generator,
) -> NullComparison:
    """Named (candidate ``named_at``) vs the other candidates of each image: mean
    difference, bootstrap interval over images, one-sided permutation p-value."""
    n = cand.shape[1]
    d = _diffs(cand, named_at)  # [N, L, H]
    obs = d.mean(0)
    boot = np.stack([d[rng.integers(0, n, n)].mean(0) for _ in range(n_boot)])
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    n_cand = np.isfinite(cand[:, :, 0, 0]).sum(0)  # [N] candidates per image
    exceed = np.zeros_like(obs)
    for start in range(0, n_perm, 64):
        k = min(64, n_perm - start)
        pick = np.floor(rng.random((k, n)) * n_cand).astype(np.int64)
        null = _diffs(cand, pick).mean(1)  # [k, L, H]
        exceed += (null >= obs - 1e-12).sum(0)
    named = np.take_along_axis(cand, named_at[None, :, None, None], 0)[0]
    return NullComparison((named - d).mean(0), obs, lo, hi, (1 + exceed) / (1 + n_perm), n)


def ranked_table(scores: GroundingScores, top: int = 10) -> list[Mapping[str, Any]]:
    """Returns the ``top`` heads by the CLS score as rows (layer, head, named mass, diff,
    interval, p)."""
    q = scores.cls
    cmp = (
        q.other_objects if scores.rank_by == "other_objects" and q.other_objects else q.random_boxes
    )
    return [
        {
            "layer": layer,
            "head": head,
            "named": float(q.named[layer, head]),
            "diff": float(cmp.diff[layer, head]),
            "ci": (float(cmp.ci_low[layer, head]), float(cmp.ci_high[layer, head])),
            "pvalue": float(cmp.pvalue[layer, head]),
            "significant": bool(q.significant[layer, head]),
        }
        for layer, head in q.ranked[:top]
    ]
