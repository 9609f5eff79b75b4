"""Caching activations of both towers over an image-text source into a store, resumably.

The source is read in a fixed order and cut into batches of ``batch_size``
records (batch ``g`` holds records ``g*batch_size ...``); after each committed
batch the store's ``progress.samples_done`` records how many source records
are in it. A re-run with the same model, data, hooks and positions skips that
many records and continues, so a run killed at any moment and re-run yields the
same store as an uninterrupted one. Writing overlaps the next forward (one
writer thread; the Rust writer releases the GIL).

Under ``torchrun`` (``WORLD_SIZE`` > 1) or inside an initialised
``torch.distributed`` group, the batches are split across ranks: see
``vlmfast.store.cache_ranks``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmfast.data.sources.pending import resolve_decode_workers
from vlmfast.errors import InputError, StoreError
from vlmfast.store._convert import TORCH_DTYPE, dtype_name
from vlmfast.store.activation_store import ActivationStore, read_attrs
from vlmfast.store.rows import POSITIONS, hook_rows

JOINT_HOOK = "joint.embed"


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
    """Token selection: cls | eot | pooled | all | mean (see ``vlmfast.store.rows``)."""
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


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 of every parameter and buffer (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def tower_geometry(pair: Any) -> dict[str, Any]:
    """What the store records about the model's towers: the image tower's CLS token and
    patch grid (which image token rows are patches, where each patch lies)."""
    image = pair.config.image
    return {
        "image": {
            "cls_token": bool(getattr(image, "class_token", True)),
            "image_size": int(getattr(image, "image_size", 0)),
            "patch_size": int(getattr(image, "patch_size", 0)),
        }
    }


def _identity(cfg: CacheConfig, hooks: list[str], whash: str, dhash: str) -> dict[str, Any]:
    return {
        "model": {"spec": cfg.model, "pretrained": cfg.pretrained, "weights_hash": whash},
        "dataset": {"spec": cfg.data, "hash": dhash, "limit": cfg.limit},
        "hooks": hooks,
        "positions": cfg.positions,
        "dtype": cfg.dtype,
    }


def _check_same(existing: dict[str, Any], want: dict[str, Any], out: Path) -> None:
    got = {
        "model": existing.get("model"),
        "dataset": existing.get("dataset"),
        "hooks": list(existing.get("hooks", {})),
        "positions": existing.get("positions"),
        "dtype": existing.get("dtype"),
    }
    for key in want:
        if got[key] != want[key]:
            raise StoreError(
                f"{out} was cached with a different {key} ({got[key]!r}, now {want[key]!r}); "
                "pass --overwrite to replace it, or choose another --out"
            )


def _batches(records: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for rec in records:
        batch.append(rec)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Crash:
    """Test-only crash injection: SIGKILL at ``<batch>:<stage>`` (``merge:<stage>`` too).

    ``<batch>`` counts the batches this process writes (0 = its first), so that
    in a multi-rank run it means the same on every rank.
    """

    def __init__(self, spec: str | None) -> None:
        self.batch, self.stage = "", ""
        if spec:
            self.batch, _, self.stage = spec.partition(":")
        self.current = ""

    def __call__(self, stage: str) -> None:
        if self.batch and self.current == self.batch and stage == self.stage:
            os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class BatchInputs:
    """A batch's model inputs: pixels of its records with an image, tokens of those with a caption."""

    pixels: torch.Tensor | None
    tokens: torch.Tensor | None


def _tower_hooks(hooks: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(hooks to cache, image hooks, text hooks); ``joint.embed`` needs both embeddings."""
    want = [h for h in hooks if h != JOINT_HOOK]
    if JOINT_HOOK in hooks:
        want += [h for h in ("image.embed", "text.embed") if h not in want]
    return (
        want,
        [h for h in want if h.startswith("image.")],
        [h for h in want if h.startswith("text.")],
    )


def prepare_inputs(
    pair: Any, batch: Sequence[Any], hooks: list[str], pool: Executor | None = None
) -> BatchInputs:
    """Preprocesses the images (on ``pool``'s threads when given) and tokenizes the captions."""
    _, img_hooks, txt_hooks = _tower_hooks(hooks)
    images = [r.image for r in batch if r.image is not None]
    texts = [r.caption for r in batch if r.caption is not None]
    return BatchInputs(
        pair.preprocess(images, pool=pool) if images and img_hooks else None,
        pair.tokenize(texts) if texts and txt_hooks else None,
    )


def forward_rows(
    pair: Any,
    batch: Sequence[Any],
    hooks: list[str],
    positions: str,
    store_dtype: torch.dtype,
    inputs: BatchInputs | None = None,
) -> dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """One forward of both towers; rows and index per store hook.

    ``inputs``: the batch's ``prepare_inputs`` when it was prepared ahead.
    """
    with_img = [r for r in batch if r.image is not None]
    with_txt = [r for r in batch if r.caption is not None]
    want, img_hooks, txt_hooks = _tower_hooks(hooks)
    if inputs is None:
        inputs = prepare_inputs(pair, batch, hooks)
    cache: dict[str, torch.Tensor] = {}
    lengths = None
    # all_rows: a store must not depend on where batches start (a resumed cache is bitwise
    # the uninterrupted one), and the pooled-row shortcut's one-row-per-sample matmuls are
    # not batch-size invariant on CPU BLAS; full-sequence blocks are, in practice
    with torch.inference_mode():
        if inputs.pixels is not None:
            cache.update(pair.run(images=inputs.pixels, cache=img_hooks, all_rows=True).cache)
        if inputs.tokens is not None:
            tok = inputs.tokens
            cache.update(pair.run(texts=tok, cache=txt_hooks, all_rows=True).cache)
            t = tok.shape[1]
            pool = pair.config.text.pool
            lengths = tok.argmax(-1).cpu() + 1 if pool == "eot" else torch.full((len(with_txt),), t)
    ids = {
        "image": torch.tensor([r.sample_id for r in with_img], dtype=torch.int64),
        "text": torch.tensor([r.sample_id for r in with_txt], dtype=torch.int64),
    }
    has_cls = bool(getattr(pair.config.image, "class_token", True))
    out: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
    for hook in want:
        tower = hook.split(".", 1)[0]
        if hook not in cache:
            continue
        r = hook_rows(
            hook,
            cache[hook].float().cpu(),
            ids[tower],
            positions,
            text_lengths=lengths,
            has_cls=has_cls,
        )
        mod = torch.full((len(r.sample),), 0 if tower == "image" else 1, dtype=torch.uint8)
        out[hook] = (
            r.rows.to(store_dtype),
            {"sample": r.sample, "position": r.position, "modality": mod},
        )
    if JOINT_HOOK in hooks:
        parts = [out[h] for h in ("image.embed", "text.embed") if h in out]
        if parts:
            rows = torch.cat([p[0] for p in parts])
            idx = {
                k: torch.cat([p[1][k] for p in parts]) for k in ("sample", "position", "modality")
            }
            out[JOINT_HOOK] = (rows, idx)
    return {h: out[h] for h in hooks if h in out}


def _progress_bar(cfg: CacheConfig, total: int | None, initial: int, show: bool = True) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="sample",
        disable=not (cfg.progress and show),
        desc=f"cache {cfg.out.name}",
        dynamic_ncols=True,
    )


def _check_args(cfg: CacheConfig) -> None:
    if cfg.positions not in POSITIONS:
        raise InputError(
            f"--positions must be one of {', '.join(POSITIONS)}, got {cfg.positions!r}"
        )
    if cfg.batch_size <= 0:
        raise InputError(f"--batch-size must be > 0, got {cfg.batch_size}")


def _resolve(patterns: list[str], hook_points: list[str]) -> list[str]:
    """Model hooks from names/globs (model order), then ``joint.embed`` if asked for."""
    from vlmfast.models.hooks import resolve_hooks

    model_patterns = [h for h in patterns if h != JOINT_HOOK]
    hooks = resolve_hooks(model_patterns, hook_points) if model_patterns else []
    if JOINT_HOOK in patterns:
        hooks.append(JOINT_HOOK)
    if not hooks:
        raise InputError("--hooks names no hook")
    return hooks


@dataclass
class CacheSetup:
    """What every process of a cache run builds before the first batch."""

    pair: Any
    """The hooked model pair, in eval mode."""
    hooks: list[str]
    """Store hooks, resolved from the config's names/globs (model order, then joint.embed)."""
    source: Any
    """The ``PairSource``."""
    identity: dict[str, Any]
    """Model, dataset, hooks, positions and dtype: what a resumed store must match."""
    store_dtype: torch.dtype
    """torch dtype of the stored rows."""
    records: Callable[[int, int], Iterator[Any]] | None = None
    """``records(after, counted)``: the records past sample id ``after`` (``counted`` before
    it) when a multi-rank run knows the bad ones (``cache_scan.known_records``); None:
    ``source.records_after``."""


def setup_cache(cfg: CacheConfig) -> CacheSetup:
    """Loads the model and opens the source (every rank does this)."""
    import vlmfast as vf
    from vlmfast.data import open_source

    _check_args(cfg)
    store_dtype = TORCH_DTYPE[dtype_name(cfg.dtype)]
    pair = (
        vf.load_pair(cfg.model, pretrained=cfg.pretrained, device=cfg.device)
        if cfg.pretrained
        else vf.load_pair(cfg.model, device=cfg.device)
    )
    pair.eval()
    hooks = _resolve(cfg.hooks, pair.hook_points())
    src = open_source(
        cfg.data, limit=cfg.limit, decode_workers=cfg.decode_workers, concepts=cfg.concepts
    )
    ident = _identity(cfg, hooks, weights_hash(pair), src.fingerprint())
    return CacheSetup(pair, hooks, src, ident, store_dtype)


def iter_forward(
    setup: CacheSetup,
    cfg: CacheConfig,
    *,
    skip: int = 0,
    select: Callable[[int], bool] | None = None,
    after: int | None = None,
) -> Iterator[tuple[int, list[Any], dict[str, Any] | None, int]]:
    """``(batch number, records, rows per hook or None, records consumed after it)``.

    Reads the source in its fixed order from record ``skip`` (a multiple of the
    batch size), cuts it into batches and runs the forward on the batches
    ``select`` picks (all by default); the others are read but not run. ``after``:
    the sample id of record ``skip - 1`` when known (a resume), so the records
    before it are passed over without decoding their images. With
    more than one decode worker, the next selected batch is preprocessed and
    tokenized on background threads while the forward runs on this one (the
    source decodes images ahead on its own pool); the rows are the same.
    """
    read = setup.source.records_after if setup.records is None else setup.records
    if after is not None:
        records = iter(read(after, skip))
    else:
        records = iter(read(-1, 0))
        for _ in range(skip):  # the source order is fixed: skip what the store holds
            next(records, None)
    first = skip // cfg.batch_size
    batches = enumerate(_batches(records, cfg.batch_size), start=first)
    workers = resolve_decode_workers(cfg.decode_workers)
    if workers <= 1:
        yield from _forward_batches(setup, cfg, batches, skip, select, None, None)
        return
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="vlmfast-preprocess") as pool,
        ThreadPoolExecutor(1, thread_name_prefix="vlmfast-prepare") as ahead,
    ):
        yield from _forward_batches(setup, cfg, batches, skip, select, pool, ahead)


def _forward_batches(
    setup: CacheSetup,
    cfg: CacheConfig,
    batches: Iterator[tuple[int, list[Any]]],
    consumed: int,
    select: Callable[[int], bool] | None,
    pool: ThreadPoolExecutor | None,
    ahead: ThreadPoolExecutor | None,
) -> Iterator[tuple[int, list[Any], dict[str, Any] | None, int]]:
    """``iter_forward``'s loop; with ``ahead``, one selected batch is prepared in advance."""

    def start(item: tuple[int, list[Any]] | None) -> tuple[int, list[Any], bool, Any] | None:
        """(batch number, records, selected, its inputs being prepared or None)."""
        if item is None:
            return None
        g, batch = item
        if select is not None and not select(g):
            return g, batch, False, None
        if ahead is None:
            return g, batch, True, None
        return g, batch, True, ahead.submit(prepare_inputs, setup.pair, batch, setup.hooks, pool)

    nxt = start(next(batches, None))
    while nxt is not None:
        g, batch, selected, prep = nxt
        nxt = start(next(batches, None))  # read (and start preparing) the next batch first
        consumed += len(batch)
        if not selected:
            yield g, batch, None, consumed
            continue
        inputs = None if prep is None else prep.result()
        rows = forward_rows(
            setup.pair, batch, setup.hooks, cfg.positions, setup.store_dtype, inputs
        )
        yield g, batch, rows, consumed


def cache_loop(
    cfg: CacheConfig,
    setup: CacheSetup,
    path: Path,
    store: ActivationStore | None,
    done: int,
    *,
    select: Callable[[int], bool] | None = None,
    user_attrs: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> tuple[ActivationStore | None, int]:
    """Caches the (selected) batches after record ``done`` into ``path``; returns the
    store (None when no batch was selected) and the records read.

    ``store`` is the store at ``path`` opened for appending (None: create it at the
    first written batch). Commits every ``commit_seconds`` and once at the end,
    with ``progress = {"samples_done": records through the last written batch}``
    (``finished`` at the end). One writer thread writes the batches in order while
    the forward goes on (up to ``write_queue_bytes`` of rows ahead of it), so a
    commit's fsyncs never stall the forward.
    """
    crash = _Crash(cfg.crash_at)
    if store is not None:
        store._crash_hook = crash
    bar = _progress_bar(cfg, cfg.limit, done, show_progress)
    started = time.perf_counter()
    rows_written = 0
    bytes_written = 0
    last_commit = time.perf_counter()
    pending: deque[tuple[Future[Any], int]] = deque()  # writes in flight, with their bytes
    in_flight = 0
    failed: list[BaseException] = []
    consumed = done
    # the sample id of the last record done: a resume passes over the records up
    # to it without decoding them (stores cached before it was kept lack it)
    after = store.attrs["progress"].get("last_sample") if store is not None and done else None
    last_sample = after
    local = 0
    labels_of = _labels_of(setup.source, setup.pair)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmfast-cache-writer") as pool:
        for _g, batch, rows, consumed in iter_forward(
            setup, cfg, skip=done, select=select, after=after
        ):
            bar.update(len(batch))
            last_sample = batch[-1].sample_id
            if rows is None:
                continue
            labels = labels_of(batch)
            if store is None:
                store = _create(
                    cfg, path, setup.identity, rows, labels, user_attrs, tower_geometry(setup.pair)
                )
                store._crash_hook = crash
            size = sum(r.numel() * r.element_size() for r, _ in rows.values())
            while pending and (pending[0][0].done() or in_flight + size > cfg.write_queue_bytes):
                done_write, done_size = pending.popleft()
                done_write.result()  # the writer is behind: wait for the oldest write
                in_flight -= done_size
            now = time.perf_counter()
            commit = cfg.commit_seconds <= 0 or now - last_commit >= cfg.commit_seconds
            if commit:
                last_commit = now
            write = pool.submit(
                _write_in_order,
                failed,
                store,
                rows,
                labels,
                batch,
                {"samples_done": consumed, "last_sample": last_sample},
                commit,
                cfg.skip_nonfinite,
                crash,
                str(local),
            )
            pending.append((write, size))
            in_flight += size
            local += 1
            rows_written += sum(int(r.shape[0]) for r, _ in rows.values())
            bytes_written += size
            dt = max(time.perf_counter() - started, 1e-9)
            bar.set_postfix_str(
                f"{rows_written / dt:,.0f} rows/s {bytes_written / dt / 1e6:,.1f} MB/s"
            )
        for write, _ in pending:
            write.result()
    bar.close()
    if store is not None:
        store.commit({"samples_done": consumed, "last_sample": last_sample, "finished": True})
    return store, consumed


@dataclass
class BatchLabels:
    """A batch's concept labels: what each image shows and what each caption says."""

    image: Any
    """ConceptLabels of the images (``source.labels``)."""
    caption: Any
    """ConceptLabels of the captions (``source.caption_labels``), same columns."""
    image_basis: str
    """``source.image_label_basis``."""
    boxes: Any = None
    """The batch's object boxes in the model-input frame (``vlmfast.store.boxes.BoxRows``),
    None when the source has none."""
    box_attrs: dict[str, Any] | None = None
    """The store's ``boxes`` attrs (geometry, kinds), with ``boxes``."""

    @property
    def names(self) -> list[str]:
        return list(self.image.names)

    @property
    def kinds(self) -> list[str]:
        return list(self.image.kinds)


def _labels_of(source: Any, pair: Any = None) -> Callable[[Sequence[Any]], BatchLabels]:
    from vlmfast.store.boxes import batch_boxes

    basis = str(getattr(source, "image_label_basis", "caption"))
    with_boxes = batch_boxes(source, pair) if pair is not None else None

    def labels(batch: Sequence[Any]) -> BatchLabels:
        image = source.labels(batch)
        caption = source.caption_labels(batch)
        if list(caption.names) != list(image.names):
            raise InputError(
                "the source's caption labels have other concepts than its image labels"
            )
        if with_boxes is None:
            return BatchLabels(image, caption, basis)
        return BatchLabels(image, caption, basis, with_boxes[0](batch), with_boxes[1])

    return labels


def _distributed(cfg: CacheConfig) -> tuple[int, int, bool]:
    """(rank, world size, whether this call joined the group) of a torchrun launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, False
    from vlmfast.process_group import join_process_group

    rank, world = join_process_group(cfg.device)
    return rank, world, True


def run_cache(cfg: CacheConfig, *, log: Callable[[str], None] = print) -> ActivationStore:
    """Caches (or resumes caching) activations; returns the store, open read-only.

    Under ``torchrun`` (or in an initialised ``torch.distributed`` group) every rank
    calls this with the same config; the ranks split the batches and every rank
    returns the finished store.
    """
    rank, world, joined = _distributed(cfg)
    if world <= 1:
        return _run_single(cfg, log)
    from vlmfast.process_group import leave_process_group
    from vlmfast.store.cache_ranks import run_ranks

    ok = False
    try:
        run_ranks(cfg, rank, world, log if rank == 0 else (lambda _: None))
        ok = True
    finally:
        if joined:
            leave_process_group(ok)
    return ActivationStore.open(cfg.out)


def _run_single(cfg: CacheConfig, log: Callable[[str], None]) -> ActivationStore:
    from vlmfast.store.cache_ranks import parts_dir

    setup = setup_cache(cfg)
    store: ActivationStore | None = None
    done = 0
    if cfg.overwrite:
        shutil.rmtree(parts_dir(cfg.out), ignore_errors=True)
    elif cfg.out.exists():
        attrs = read_attrs(cfg.out)
        _check_same(attrs, setup.identity, cfg.out)
        if attrs["progress"].get("finished"):
            # opening for appending persists the committed array shapes, in case the
            # run was killed between its final commit point and writing them
            ActivationStore.open(cfg.out, mode="a").close()
            log(f"{cfg.out}: already complete ({attrs['progress']['samples_done']} samples)")
            return ActivationStore.open(cfg.out)
        store = ActivationStore.open(cfg.out, mode="a")
        done = int(store.attrs["progress"].get("samples_done", 0))
        log(f"{cfg.out}: resuming after {done} samples")
    elif parts_dir(cfg.out).exists():
        raise StoreError(
            f"{parts_dir(cfg.out)} holds the parts of an unfinished multi-rank cache of "
            f"{cfg.out}: re-run it with torchrun and the same number of ranks to finish it, "
            "or pass --overwrite"
        )
    store, consumed = cache_loop(cfg, setup, cfg.out, store, done)
    if store is None:
        raise InputError(f"{cfg.data}: no records to cache (after skipping {done})")
    store.close()
    log(f"{cfg.out}: {consumed} samples, hooks {', '.join(setup.hooks)}")
    return ActivationStore.open(cfg.out)


def _create(
    cfg: CacheConfig,
    path: Path,
    ident: dict[str, Any],
    rows: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]],
    labels: Any,
    user_attrs: dict[str, Any] | None = None,
    towers: dict[str, Any] | None = None,
) -> ActivationStore:
    missing = [h for h in ident["hooks"] if h not in rows]
    if missing:
        raise InputError(f"the first batch produced no rows for {missing} (no images or captions?)")
    widths = {h: int(rows[h][0].shape[1]) for h in ident["hooks"]}
    concepts = (list(labels.names), list(labels.kinds)) if labels is not None else None
    return ActivationStore.create(
        path,
        widths,
        dtype=cfg.dtype,
        chunk_rows=cfg.chunk_rows,
        compression=cfg.compression,
        model=ident["model"],
        dataset=ident["dataset"],
        positions=cfg.positions,
        concepts=concepts,
        attrs=user_attrs,
        overwrite=cfg.overwrite or path != cfg.out,
        image_basis=labels.image_basis if labels is not None else "caption",
        towers=towers,
        boxes=getattr(labels, "box_attrs", None),
    )


def _write_in_order(failed: list[BaseException], *args: Any) -> None:
    """``_write``, unless an earlier write failed: batches are never written past a gap."""
    if failed:
        raise StoreError("an earlier write of this run failed") from failed[0]
    try:
        _write(*args)
    except BaseException as err:
        failed.append(err)
        raise


def _write(
    store: ActivationStore,
    rows: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]],
    labels: Any,
    batch: Sequence[Any],
    progress: dict[str, Any],
    commit: bool,
    skip_nonfinite: bool,
    crash: _Crash,
    batch_no: str,
) -> None:
    crash.current = batch_no
    kw: dict[str, Any] = {}
    if labels is not None and store.attrs.get("concepts") is not None:
        names = store.attrs["concepts"]["names"]
        if list(labels.names) != names:
            raise InputError("the source's concept names changed between batches")
        kw = {
            "labels": np.asarray(labels.image.matrix, dtype=bool),
            "label_samples": np.array([r.sample_id for r in batch], dtype=np.int64),
        }
        if store.attrs["concepts"].get("caption_labels"):
            kw["caption_labels"] = np.asarray(labels.caption.matrix, dtype=bool)
        if store.attrs.get("boxes") and getattr(labels, "boxes", None) is not None:
            kw["boxes"] = labels.boxes
    store.append_many(
        {h: r for h, (r, _) in rows.items()},
        {h: idx for h, (_, idx) in rows.items()},
        skip_nonfinite=skip_nonfinite,
        commit=False,
        **kw,
    )
    crash("appended")
    if commit:
        store.commit(progress)
        crash("committed")
