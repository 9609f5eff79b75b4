"""The synthetic benchmark as a pair source: ``synthetic:n=2000,seed=0[,split=test][,noise=0][,texture=0]``.

``meta`` carries the exact ground truth (objects with boxes, relations, the
structured caption, its hard negatives, held-out combinations); ``labels``
gives exact image-level concept labels (every shape, color, size and relation
present in the image), not caption guesses.

Relations come twice. The unordered ones (kind ``relation``) on an image only say
"two objects in different columns" (``left of``, ``right of``: the two columns are
identical on images) or "in different rows" (``above``, ``below``). The bound ones
(kind ``bound relation``, :mod:`vlmfast.data.concepts.bound_relations`) say which
object stands where: ``red left of blue``, ``circle above square`` (color-color and
shape-shape pairs, canonical ``left of`` / ``above`` only); a caption's are bound
from its subject and object the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from PIL import Image

from vlmfast.data.records import BadRecordReport, PairRecord
from vlmfast.data.sources.base import PairSource
from vlmfast.data.sources.pending import PendingRecord
from vlmfast.data.synthetic import spec as sspec
from vlmfast.data.synthetic.dataset import SyntheticSample, make_sample
from vlmfast.errors import InputError

if TYPE_CHECKING:
    from vlmfast.data.concepts.labeler import ConceptLabeler
    from vlmfast.data.concepts.labels import ConceptLabels
    from vlmfast.data.object_boxes import ObjectBoxes

_KEYS = {"n": int, "seed": int, "split": str, "noise": float, "texture": int, "start": int}


def parse_synthetic_spec(text: str) -> dict[str, Any]:
    """``"n=2000,seed=0"`` -> ``{"n": 2000, "seed": 0, ...defaults}``."""
    out: dict[str, Any] = {
        "n": 2000,
        "seed": 0,
        "split": "test",
        "noise": 0.0,
        "texture": 0,
        "start": 0,
    }
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in _KEYS:
            raise InputError(
                f"synthetic spec: bad item {part!r}; expected key=value with key in {sorted(_KEYS)}"
            )
        try:
            out[key] = _KEYS[key](value)
        except ValueError as err:
            raise InputError(
                f"synthetic spec: {key}={value!r} is not a {_KEYS[key].__name__}"
            ) from err
    if out["split"] not in sspec.SPLITS:
        raise InputError(f"synthetic spec: split={out['split']!r}; expected one of {sspec.SPLITS}")
    if out["n"] < 0:
        raise InputError(f"synthetic spec: n={out['n']} must be >= 0")
    return out


def synthetic_concepts(bound: bool = True) -> tuple[list[str], list[str]]:
    """Names and kinds of the synthetic benchmark's exact concepts: shapes, colors, sizes,
    the unordered relations (kind ``relation``) and, with ``bound``, the bound relations
    (kind ``bound relation``: ``red left of blue``, ``circle above square``)."""
    from vlmfast.data.concepts.bound_relations import BOUND_KIND, bound_vocabulary

    names = [*sspec.SHAPES, *sspec.COLORS, *sspec.SIZES, *sspec.RELATIONS]
    kinds = (
        ["object"] * len(sspec.SHAPES)
        + ["color"] * len(sspec.COLORS)
        + ["size"] * len(sspec.SIZES)
        + ["relation"] * len(sspec.RELATIONS)
    )
    if bound:
        extra = bound_vocabulary({"color": sspec.COLORS, "shape": sspec.SHAPES})
        names += extra
        kinds += [BOUND_KIND] * len(extra)
    return names, kinds


def _render(sample: SyntheticSample, texture: bool, noise: float) -> tuple[Image.Image, str, str]:
    return Image.fromarray(sample.image(texture=texture, noise_std=noise)), "", ""


class SyntheticSource(PairSource):
    """Rendered benchmark samples ``start .. start+n-1`` of a split and seed."""

    kind = "synthetic"

    def __init__(self, params: str, **kw: Any) -> None:
        super().__init__(f"synthetic:{params}", **kw)
        if self.concepts is not None:
            raise InputError(
                "synthetic source: concepts cannot be chosen; its labels are the benchmark's "
                "exact ground truth"
            )
        self.params = parse_synthetic_spec(params)

    @property
    def labeler(self) -> ConceptLabeler:
        """A caption labeler over the benchmark's own words (shapes are its objects)."""
        if self._labeler is None:
            from vlmfast.data.concepts.labeler import ConceptLabeler
            from vlmfast.data.concepts.vocabulary import Concept, Vocabulary

            names, kinds = synthetic_concepts()
            self._labeler = ConceptLabeler(
                Vocabulary([Concept(n, k, (n,)) for n, k in zip(names, kinds)])
            )
        return self._labeler

    def _records(self, report: BadRecordReport) -> Iterator[PendingRecord]:
        p = self.params
        for k in range(p["start"], p["start"] + p["n"]):
            s = make_sample(p["seed"], p["split"], k)
            render = partial(_render, s, bool(p["texture"]), p["noise"])
            yield PendingRecord(k, render, s.caption.text, s.meta(), where=f"sample {k}")

    def _content_key(self) -> dict[str, Any]:
        return {"benchmark_version": sspec.BENCHMARK_VERSION, **self.params}

    image_label_basis = "scene"

    def caption_labels(self, records: Sequence[PairRecord]) -> ConceptLabels:
        """Exact caption labels from the structured caption in ``meta``: the shape, color
        and size of each mention (where the caption names them), the relation and its
        bound names (from the subject and object mentions)."""
        import numpy as np

        from vlmfast.data.concepts.bound_relations import caption_bound_relations
        from vlmfast.data.concepts.labels import ConceptLabels

        names, kinds = synthetic_concepts()
        col = {n: i for i, n in enumerate(names)}
        mat = np.zeros((len(records), len(names)), dtype=bool)
        for r, rec in enumerate(records):
            caption = rec.meta.get("caption") or {}
            for mention in caption.get("mentions", []):
                for key in ("shape", "color", "size"):
                    if mention.get(key):
                        mat[r, col[mention[key]]] = True
            if caption.get("relation"):
                mat[r, col[caption["relation"]]] = True
                subj, obj = caption["mentions"][0], caption["mentions"][1]
                for name in caption_bound_relations(subj, caption["relation"], obj):
                    mat[r, col[name]] = True
        return ConceptLabels(mat, names, kinds)

    has_boxes = True
    box_kinds = ("object", "color", "size")

    def boxes(self, records: Sequence[PairRecord]) -> ObjectBoxes:
        """The exact pixel box of every object (``meta["objects"][i]["box"]`` = top, left,
        bottom, right, end-exclusive), normalised to the rendered image, with the object's
        shape, color and size."""
        import numpy as np

        from vlmfast.data.object_boxes import ObjectBoxes

        names, _ = synthetic_concepts()
        col = {n: i for i, n in enumerate(names)}
        rec_of: list[int] = []
        xy: list[list[float]] = []
        rows: list[np.ndarray] = []
        for r, rec in enumerate(records):
            for obj in rec.meta.get("objects", []):
                top, left, bottom, right = obj["box"]
                rec_of.append(r)
                xy.append([left, top, right, bottom])
                row = np.zeros(len(names), dtype=bool)
                for key in ("shape", "color", "size"):
                    row[col[obj[key]]] = True
                rows.append(row)
        concepts = np.stack(rows) if rows else np.zeros((0, len(names)), dtype=bool)
        boxes = np.asarray(xy, dtype=np.float32).reshape(-1, 4) / sspec.IMAGE_SIZE
        return ObjectBoxes(np.asarray(rec_of, dtype=np.int64), boxes, concepts)

    def labels(self, records: Sequence[PairRecord]) -> ConceptLabels:
        """Exact image-level labels from the ground truth in ``meta`` (an unordered relation:
        two objects in different columns / rows; a bound one: which object is where)."""
        import numpy as np

        from vlmfast.data.concepts.bound_relations import image_bound_relations
        from vlmfast.data.concepts.labels import ConceptLabels

        names, kinds = synthetic_concepts()
        col = {n: i for i, n in enumerate(names)}
        mat = np.zeros((len(records), len(names)), dtype=bool)
        for r, rec in enumerate(records):
            for obj in rec.meta.get("objects", []):
                for key in ("shape", "color", "size"):
                    mat[r, col[obj[key]]] = True
            for _, rel, _ in rec.meta.get("relations", []):
                mat[r, col[rel]] = True
            for name in image_bound_relations(rec.meta.get("objects", [])):
                mat[r, col[name]] = True
        return ConceptLabels(mat, names, kinds)
