"""The store schema: every array path, attribute key and format version (see README
"Activation store"). No other module spells these names.

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
- ``labels/box_sample``, ``labels/boxes``, ``labels/box_concepts``: object boxes
  (optional; see ``vlmfast.store.box_arrays``);
- root group attributes: ``format_version``, ``model``, ``dataset``, ``hooks``,
  ``dtype``, ``committed_rows`` (per hook), ``committed_label_rows``, ``progress``, ...
  The committed counts are the commit point: rows past them do not exist.
"""

from __future__ import annotations

FORMAT_VERSION = 1
"""Store format version written by this vlmfast; older ones are read, newer ones refused."""
WRITER = "vlmfast"
"""Value of the ``writer`` attribute of every vlmfast store."""

# ---------------------------------------------------------------- root attribute keys

ATTR_FORMAT_VERSION = "format_version"
ATTR_WRITER = "writer"
ATTR_MODEL = "model"
"""Provenance of the model: ``{MODEL_SPEC, MODEL_PRETRAINED, MODEL_WEIGHTS_HASH}``."""
ATTR_DATASET = "dataset"
"""Provenance of the data: ``{DATASET_SPEC, DATASET_HASH, DATASET_LIMIT}``."""
ATTR_HOOKS = "hooks"
"""hook -> ``{HOOK_WIDTH, HOOK_MODALITY}``."""
ATTR_DTYPE = "dtype"
ATTR_POSITIONS = "positions"
ATTR_CHUNK_ROWS = "chunk_rows"
ATTR_COMPRESSION = "compression"
ATTR_SHARD_INNER_ROWS = "shard_inner_rows"
ATTR_CONCEPTS = "concepts"
"""``{CONCEPT_NAMES, CONCEPT_KINDS, CONCEPT_CAPTION_LABELS, CONCEPT_IMAGE_BASIS}`` or None."""
ATTR_COMMITTED_ROWS = "committed_rows"
"""hook -> committed rows (the commit point)."""
ATTR_COMMITTED_LABEL_ROWS = "committed_label_rows"
ATTR_COMMITTED_BOX_ROWS = "committed_box_rows"
ATTR_SKIPPED_NONFINITE = "skipped_nonfinite"
"""hook -> rows skipped for holding NaN/Inf."""
ATTR_PROGRESS = "progress"
"""What the writer records with each commit (``PROGRESS_*`` for ``vlmfast cache``)."""
ATTR_TOWERS = "towers"
"""``{TOWER_IMAGE: {TOWER_CLS_TOKEN, TOWER_IMAGE_SIZE, TOWER_PATCH_SIZE}}``."""
ATTR_BOXES = "boxes"
"""``{BOXES_FRAME, BOXES_GEOMETRY, BOXES_KINDS}`` when the store has object boxes."""
ATTR_USER = "user"
"""Free-form attributes of the writer."""

REQUIRED_ATTRS = (ATTR_HOOKS, ATTR_COMMITTED_ROWS, ATTR_DTYPE)
"""Attributes every readable store has."""

# ---------------------------------------------------------------- nested attribute keys

MODEL_SPEC = "spec"
MODEL_PRETRAINED = "pretrained"
MODEL_WEIGHTS_HASH = "weights_hash"
DATASET_SPEC = "spec"
DATASET_HASH = "hash"
DATASET_LIMIT = "limit"
HOOK_WIDTH = "width"
HOOK_MODALITY = "modality"
CONCEPT_NAMES = "names"
CONCEPT_KINDS = "kinds"
CONCEPT_CAPTION_LABELS = "caption_labels"
CONCEPT_IMAGE_BASIS = "image_basis"
DEFAULT_IMAGE_BASIS = "caption"
PROGRESS_SAMPLES_DONE = "samples_done"
PROGRESS_LAST_SAMPLE = "last_sample"
PROGRESS_FINISHED = "finished"
TOWER_IMAGE = "image"
TOWER_CLS_TOKEN = "cls_token"
TOWER_IMAGE_SIZE = "image_size"
TOWER_PATCH_SIZE = "patch_size"
BOXES_FRAME = "frame"
BOXES_GEOMETRY = "geometry"
BOXES_KINDS = "kinds"

# ---------------------------------------------------------------- arrays

ACTS_GROUP = "acts"
INDEX_GROUP = "index"
LABELS_GROUP = "labels"
INDEX_SAMPLE = "sample"
INDEX_POSITION = "position"
INDEX_MODALITY = "modality"
INDEX_FIELDS: dict[str, str] = {
    INDEX_SAMPLE: "int64",
    INDEX_POSITION: "int32",
    INDEX_MODALITY: "uint8",
}
"""The index arrays of a hook (``index/<hook>/<field>``) and their dtypes."""
MODALITY_CODES: dict[str, int] = {"image": 0, "text": 1}
MODALITIES = ("image", "text", "joint")
LABELS_ARRAY = f"{LABELS_GROUP}/concepts"
LABELS_SAMPLE_ARRAY = f"{LABELS_GROUP}/sample"
LABELS_CAPTION_ARRAY = f"{LABELS_GROUP}/caption"
BOX_SAMPLE_ARRAY = f"{LABELS_GROUP}/box_sample"
BOXES_ARRAY = f"{LABELS_GROUP}/boxes"
BOX_CONCEPTS_ARRAY = f"{LABELS_GROUP}/box_concepts"
BOX_ARRAYS = (BOX_SAMPLE_ARRAY, BOXES_ARRAY, BOX_CONCEPTS_ARRAY)
"""The box arrays (rows aligned: one per box)."""


def acts_array(hook: str) -> str:
    """zarr path of a hook's activation rows."""
    return f"{ACTS_GROUP}/{hook}"


def index_group(hook: str) -> str:
    """zarr path of the group of a hook's index arrays."""
    return f"{INDEX_GROUP}/{hook}"


def index_array(hook: str, field: str) -> str:
    """zarr path of one index field of a hook."""
    return f"{index_group(hook)}/{field}"


def hook_arrays(hook: str) -> list[str]:
    """Every array of a hook: its rows, then its index fields (rows aligned)."""
    return [acts_array(hook), *(index_array(hook, f) for f in INDEX_FIELDS)]


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
BOX_DIMS = ["box.row", "box.coord"]
BOX_CONCEPT_DIMS = ["box.row", "concept"]


def hook_modality(hook: str) -> str:
    """``image``, ``text`` or ``joint`` from a hook name's tower prefix."""
    tower = hook.split(".", 1)[0]
    return tower if tower in MODALITIES else "joint"
