"""What a cache run is asked to do (``CacheConfig``), and the checks of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vlmfast.caching.rows import POSITIONS
from vlmfast.errors import InputError

JOINT_HOOK = "joint.embed"
"""The store hook holding the image and the text embeddings in one array."""


@dataclass
class CacheConfig:
    """What ``vlmfast cache`` does."""

    model: str
    """Model spec for ``vf.load_pair`` (``open_clip:ViT-B-32``, ``synthetic:tiny``, ...)."""
    data: str
    """Data spec for ``vlmfast.data.open_source`` (folder, COCO json, shards, ``synthetic:n=...``)."""
    hooks: list[str]
    """Hook names or globs; ``joint.embed`` = image and text embeddings in one array."""
    out: Path
    """Store folder."""
    pretrained: str | None = None
    """Weights tag or checkpoint path for the model."""
    positions: str = "all"
    """Token selection: cls | eot | pooled | all | mean (see ``vlmfast.caching.rows``)."""
    batch_size: int = 64
    """Samples per forward."""
    device: str = "cpu"
    """Device of the model."""
    dtype: str = "float32"
    """Store dtype: float32 | float16 | bfloat16 (the model runs in float32 on CPU)."""
    limit: int | None = None
    """At most this many source records."""
    concepts: str | list[str] | None = None
    """Concept vocabularies of the labels (``"coco"``, bundled names, JSON paths; default:
    ImageNet-R 200 + attributes + relations). Part of the dataset's fingerprint."""
    decode_workers: int | None = None
    """Threads decoding images ahead of the forward (default: one per CPU, <= 8; 0: in
    the forward's thread). The store is the same whatever the number."""
    overwrite: bool = False
    """Replace an existing store that was made with other settings."""
    skip_nonfinite: bool = False
    """Skip (and count) rows holding NaN/Inf instead of failing."""
    chunk_rows: int = 8192
    """Rows per chunk of a new store."""
    compression: str = "none"
    """Chunk compression of a new store: none | zstd."""
    commit_seconds: float = 10.0
    """Commit at most this often (seconds); 0 commits after every batch."""
    write_queue_bytes: int = 512 << 20
    """Rows computed but not yet written may hold this many bytes (at least one batch):
    the forward runs ahead while a commit's fsyncs are in flight."""
    progress: bool = True
    """Show a progress bar on stderr."""
    crash_at: str | None = field(default=None, repr=False)
    """Testing only: ``"<batch>:<stage>"`` makes the process SIGKILL itself there."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)  # a str path works too


def check_config(cfg: CacheConfig) -> None:
    """An ``InputError`` naming the flag when ``cfg`` asks for something impossible."""
    if cfg.positions not in POSITIONS:
        raise InputError(
            f"--positions must be one of {', '.join(POSITIONS)}, got {cfg.positions!r}"
        )
    if cfg.batch_size <= 0:
        raise InputError(f"--batch-size must be > 0, got {cfg.batch_size}")


def parts_dir(out: Path) -> Path:
    """Folder of the per-rank part stores of a multi-rank cache into ``out``."""
    return out.with_name(out.name + ".parts")


def part_path(out: Path, rank: int, world: int) -> Path:
    """Part store of ``rank`` of ``world``."""
    return parts_dir(out) / f"rank{rank:05d}-of-{world:05d}.zarr"
