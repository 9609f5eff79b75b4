"""The forward of a cache run: the source read in its fixed order, cut into batches,
both towers run with hooks, and each hook's output cut into store rows.

Batch ``g`` holds records ``g*batch_size ...`` whatever the process or rank, so the
same batches give the same forward, bit for bit. With more than one decode worker the
next batch is preprocessed on background threads while the forward runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from vlmfast.caching.config import JOINT_HOOK, CacheConfig
from vlmfast.caching.rows import hook_rows
from vlmfast.caching.setup import CacheSetup
from vlmfast.data.sources.pending import resolve_decode_workers
from vlmfast.store.schema import INDEX_FIELDS, INDEX_MODALITY, INDEX_POSITION, INDEX_SAMPLE


def _batches(records: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for rec in records:
        batch.append(rec)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@dataclass
class BatchInputs:
    """A batch's model inputs: pixels of its records with an image, tokens of those with a caption."""

    pixels: torch.Tensor | None
    tokens: torch.Tensor | None


def tower_hooks(hooks: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(hooks to cache, image hooks, text hooks); ``joint.embed`` needs both embeddings."""
    want = [h for h in hooks if h != JOINT_HOOK]
    if JOINT_HOOK in hooks:
        want += [h for h in ("image.embed", "text.embed") if h not in want]
    return (
        want,
        [h for h in want if h.startswith("image.")],
        [h for h in want if h.startswith("text.")],
    )


def preprocess_batch(
    pair: Any, batch: Sequence[Any], hooks: list[str], pool: Executor | None = None
) -> BatchInputs:
    """Preprocesses the images (on ``pool``'s threads when given) and tokenizes the captions.

    Called ``prepare_inputs`` before 0.x; that name now means one thing only,
    :func:`vlmfast.causal.core.prepare_inputs` (clean / corrupted inputs as base and source).

    Returns:
        The batch's pixels (records with an image) and tokens (records with a caption),
            as :class:`BatchInputs`; either is None when no hook of that tower is cached.
    """
    _, img_hooks, txt_hooks = tower_hooks(hooks)
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
    """Runs one forward of both towers.

    ``inputs``: the batch's ``preprocess_batch`` when it was prepared ahead.

    Returns:
        Per store hook, its rows ``[n, width]`` (in ``store_dtype``) and their index
            columns (sample id, position, modality, ...).
    """
    with_img = [r for r in batch if r.image is not None]
    with_txt = [r for r in batch if r.caption is not None]
    want, img_hooks, txt_hooks = tower_hooks(hooks)
    if inputs is None:
        inputs = preprocess_batch(pair, batch, hooks)
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
            {INDEX_SAMPLE: r.sample, INDEX_POSITION: r.position, INDEX_MODALITY: mod},
        )
    if JOINT_HOOK in hooks:
        parts = [out[h] for h in ("image.embed", "text.embed") if h in out]
        if parts:
            rows = torch.cat([p[0] for p in parts])
            idx = {k: torch.cat([p[1][k] for p in parts]) for k in INDEX_FIELDS}
            out[JOINT_HOOK] = (rows, idx)
    return {h: out[h] for h in hooks if h in out}


def iter_forward(
    setup: CacheSetup,
    cfg: CacheConfig,
    *,
    skip: int = 0,
    select: Callable[[int], bool] | None = None,
    after: int | None = None,
) -> Iterator[tuple[int, list[Any], dict[str, Any] | None, int]]:
    """Yields ``(batch number, records, rows per hook or None, records consumed after it)``.

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
        return g, batch, True, ahead.submit(preprocess_batch, setup.pair, batch, setup.hooks, pool)

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


def __getattr__(name: str) -> Any:
    # The caching side's ``prepare_inputs`` was renamed (one name per concept: the causal
    # ``prepare_inputs`` orients clean/corrupt inputs); the old name warns for one release.
    if name == "prepare_inputs":
        warnings.warn(
            "vlmfast.caching.prepare_inputs was renamed preprocess_batch; "
            "the old name goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return preprocess_batch
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
