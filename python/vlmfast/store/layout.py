"""Names and small records of the store schema (see README "Activation store").

One store is one zarr v3 group:

- ``acts/<hook>``: ``[rows, d]`` float32 / float16 / bfloat16 activation rows;
- ``index/<hook>/{sample,position,modality}``: per-row int64 sample id, int32
  token position (-1 for pooled rows) and uint8 modality (0 image, 1 text).
  The index is per hook because hooks of the two towers have different row
  counts (an image hook has one row per patch token, a text hook one per text
  token, ``joint.embed`` one per image *and* one per caption);
- ``labels/concepts``: ``[samples, C]`` bool, what each *image* shows (names and kinds
  in the root attrs ``concepts``), with ``labels/sample`` int64 ids of its rows, and
  ``labels/caption``: ``[samples, C]`` bool over the same rows and columns, what each
  *caption* says (stores written before it have only ``labels/concepts``, used for both);
  ``concepts.image_basis`` in the attrs says where the image labels come from
  (``scene``: exact ground truth, ``instances+caption``, ``caption``);
- root group attributes: ``format_version``, ``model``, ``dataset``, ``hooks``,
  ``dtype``, ``committed_rows`` (per hook), ``committed_label_rows``, ``progress``.
  The committed counts are the commit point: rows past them do not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1
"""Store format version written by this vlmfast; newer stores are refused."""

INDEX_FIELDS: dict[str, str] = {"sample": "int64", "position": "int32", "modality": "uint8"}
MODALITY_CODES: dict[str, int] = {"image": 0, "text": 1}
MODALITIES = ("image", "text", "joint")
LABELS_ARRAY = "labels/concepts"
LABELS_SAMPLE_ARRAY = "labels/sample"
LABELS_CAPTION_ARRAY = "labels/caption"


def acts_array(hook: str) -> str:
    """zarr path of a hook's activation rows."""
    return f"acts/{hook}"


def index_array(hook: str, field: str) -> str:
    """zarr path of one index field of a hook."""
    return f"index/{hook}/{field}"


def acts_dims(hook: str) -> list[str]:
    """zarr ``dimension_names`` of ``acts/<hook>``: ``<hook>.row``, ``<hook>.dim``.

    Per hook, because hooks differ in row count and width: with one shared
    ``row``/``dim``, ``xarray.open_zarr(store, group="acts")`` refuses the group
    ("conflicting sizes for dimension"). A hook's index arrays share its row dimension.
    """
    return [f"{hook}.row", f"{hook}.dim"]


def index_dims(hook: str) -> list[str]:
    """zarr ``dimension_names`` of ``index/<hook>/<field>`` (the rows of ``acts/<hook>``)."""
    return [f"{hook}.row"]


LABELS_DIMS = ["label.row", "concept"]
"""zarr ``dimension_names`` of ``labels/concepts`` (``labels/sample``: the first)."""


def hook_modality(hook: str) -> str:
    """``image``, ``text`` or ``joint`` from a hook name's tower prefix."""
    tower = hook.split(".", 1)[0]
    return tower if tower in MODALITIES else "joint"


@dataclass(frozen=True)
class StoreIndex:
    """Per-row index of one hook (committed rows only)."""

    sample: np.ndarray
    """int64 sample id of each row."""
    position: np.ndarray
    """int32 token position of each row (-1 for pooled / embedding rows)."""
    modality: np.ndarray
    """uint8 modality of each row: 0 image, 1 text."""


@dataclass(frozen=True)
class Labels:
    """Concept labels of the cached samples."""

    matrix: np.ndarray
    """bool ``[samples, C]``, one row per cached sample (in cache order)."""
    sample: np.ndarray
    """int64 sample id of each row of ``matrix``."""
    names: list[str]
    """Concept names, one per column."""
    kinds: list[str]
    """Concept kinds (object, color, relation, ...), one per column."""
    caption: np.ndarray | None = None
    """bool ``[samples, C]``: what each sample's caption says (same rows and columns as
    ``matrix``); None for stores written before captions had their own labels."""
    image_basis: str = "caption"
    """Where ``matrix`` comes from: ``scene`` (exact), ``instances+caption``, ``caption``."""

    def for_modality(self, modality: int) -> np.ndarray:
        """The label matrix rows of ``modality`` are scored against: image rows (0) against
        what the image shows, text rows (1) against what the caption says. A store
        without caption labels gives ``matrix`` for both (with a warning for text)."""
        if modality == 0 or self.caption is None:
            if modality != 0:
                import warnings

                warnings.warn(
                    "this store has no caption labels (written before labels/caption): text "
                    "rows are scored against the image labels; re-cache for caption labels",
                    stacklevel=2,
                )
            return self.matrix
        return self.caption
