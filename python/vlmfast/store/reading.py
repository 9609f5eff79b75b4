"""The reading half of ``ActivationStore``: committed rows, their index, labels and
boxes, and shuffled batches streamed by the native core."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from vlmfast import _native
from vlmfast.errors import InputError
from vlmfast.store.box_arrays import box_array_specs
from vlmfast.store.convert import NUMPY_CARRIER, as_bytes, to_torch
from vlmfast.store.records import BoxRows, Labels, StoreIndex
from vlmfast.store.schema import (
    ATTR_BOXES,
    ATTR_COMMITTED_BOX_ROWS,
    ATTR_COMMITTED_LABEL_ROWS,
    ATTR_CONCEPTS,
    ATTR_DTYPE,
    CONCEPT_CAPTION_LABELS,
    CONCEPT_IMAGE_BASIS,
    CONCEPT_KINDS,
    CONCEPT_NAMES,
    DEFAULT_IMAGE_BASIS,
    INDEX_FIELDS,
    LABELS_ARRAY,
    LABELS_CAPTION_ARRAY,
    LABELS_SAMPLE_ARRAY,
    acts_array,
    index_array,
)
from vlmfast.store.state import StoreState

_POOL_SIZE = 4


class StoreReader(StoreState):
    """``read``, ``index``, ``labels``, ``boxes``, ``batches`` of ``ActivationStore``."""

    def read_raw(
        self, name: str, carrier: np.dtype[Any], width: int | None, start: int, stop: int
    ) -> np.ndarray:
        """Rows ``[start, stop)`` of the store's array ``name`` (e.g.
        ``acts/<hook>``, ``index/<hook>/sample``, ``labels/concepts``) as a numpy
        array of ``carrier`` (bf16 as uint16): the layer under :meth:`read`,
        :meth:`index` and :attr:`labels`, for copying arrays between stores.
        The rows must be committed."""
        shape = (stop - start,) if width is None else (stop - start, width)
        out = np.empty(shape, dtype=carrier)
        self._arrays[name].read_into(start, stop, as_bytes(out) if out.size else out.view(np.uint8))
        return out

    def _range(self, hook: str, start: int, stop: int | None) -> tuple[int, int]:
        n = self.n_rows(hook)
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise InputError(f"rows {start}:{stop} of {hook} out of range (0:{n} committed)")
        return start, stop

    def read(self, hook: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Committed rows ``[start, stop)`` of ``hook`` as a CPU tensor of the store dtype."""
        start, stop = self._range(hook, start, stop)
        name = self._attrs[ATTR_DTYPE]
        arr = self.read_raw(acts_array(hook), NUMPY_CARRIER[name], self.width(hook), start, stop)
        return to_torch(arr, name)

    def index(self, hook: str, start: int = 0, stop: int | None = None) -> StoreIndex:
        """Sample id, position and modality of the committed rows of ``hook``."""
        start, stop = self._range(hook, start, stop)
        cols = {
            f: self.read_raw(index_array(hook, f), np.dtype(t), None, start, stop)
            for f, t in INDEX_FIELDS.items()
        }
        return StoreIndex(**cols)

    @property
    def boxes(self) -> BoxRows | None:
        """The committed object boxes (model-input frame), or None when the store has none
        (see ``vlmfast.store.box_arrays``)."""
        attrs = self._attrs
        if not attrs.get(ATTR_BOXES):
            return None
        n = int(attrs.get(ATTR_COMMITTED_BOX_ROWS, 0))
        c_real = len(attrs[ATTR_CONCEPTS][CONCEPT_NAMES])
        specs = box_array_specs(c_real)
        cols = [self.read_raw(name, dt, w, 0, n) for name, (dt, w) in specs.items()]
        return BoxRows(cols[0], cols[1], cols[2][:, :c_real])

    @property
    def labels(self) -> Labels | None:
        """Concept labels of the cached samples, or None when the store has none."""
        concepts = self._attrs.get(ATTR_CONCEPTS)
        if concepts is None:
            return None
        n = int(self._attrs[ATTR_COMMITTED_LABEL_ROWS])
        names = concepts[CONCEPT_NAMES]
        c = max(len(names), 1)
        mat = self.read_raw(LABELS_ARRAY, np.dtype(np.bool_), c, 0, n)
        ids = self.read_raw(LABELS_SAMPLE_ARRAY, np.dtype(np.int64), None, 0, n)
        c_real = len(names)
        caption = None
        if concepts.get(CONCEPT_CAPTION_LABELS):
            caption = self.read_raw(LABELS_CAPTION_ARRAY, np.dtype(np.bool_), c, 0, n)[:, :c_real]
        return Labels(
            mat[:, :c_real],
            ids,
            list(names),
            list(concepts[CONCEPT_KINDS]),
            caption=caption,
            image_basis=str(concepts.get(CONCEPT_IMAGE_BASIS, DEFAULT_IMAGE_BASIS)),
        )

    def batches(
        self,
        hook: str,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        *,
        epoch: int = 0,
        start_batch: int = 0,
        drop_last: bool = False,
        buffer_rows: int = 65536,
        prefetch: int = 2,
    ) -> Iterator[torch.Tensor]:
        """Batches of ``hook``'s committed rows as tensors ``[batch_size, width]``.

        With ``shuffle`` the order is: chunks permuted per ``(seed, epoch)``,
        rows shuffled within windows of ``buffer_rows`` rows (rounded up to
        whole chunks), read ahead on a background thread (``prefetch`` windows).
        Every row appears once per epoch; ``start_batch`` resumes mid-epoch and
        yields exactly the batches an uninterrupted run would have yielded next.
        """
        if batch_size <= 0:
            raise InputError(f"batch_size must be > 0, got {batch_size}")
        if seed < 0 or epoch < 0 or start_batch < 0:
            raise InputError("seed, epoch and start_batch must be >= 0")
        width = self.width(hook)
        chunk_rows = int(self._arrays[acts_array(hook)].chunk_rows)
        window_chunks = max(1, -(-max(buffer_rows, batch_size) // chunk_rows))
        stream = _native.ShuffleStream(
            str(self._path),
            acts_array(hook),
            self.n_rows(hook),
            batch_size,
            shuffle,
            seed,
            epoch,
            start_batch,
            window_chunks,
            max(1, prefetch),
            drop_last,
        )
        name = self._attrs[ATTR_DTYPE]
        carrier = NUMPY_CARRIER[name]
        target = torch.device(device) if device is not None else None
        pin = target is not None and target.type == "cuda"
        return _iterate(stream, width, carrier, name, dtype, target, pin)


def _free_buffer(pool: list[np.ndarray], rows: int) -> np.ndarray | None:
    """A buffer of ``pool`` with ``rows`` rows that nothing else refers to."""
    for cand in pool:
        # referents: `pool`, `cand` and getrefcount's argument
        if cand.shape[0] == rows and sys.getrefcount(cand) == 3:
            return cand
    return None


def _iterate(
    stream: Any,
    width: int,
    carrier: np.dtype[Any],
    name: str,
    dtype: torch.dtype | None,
    device: torch.device | None,
    pin: bool,
) -> Iterator[torch.Tensor]:
    # Batch buffers are recycled once nothing outside this generator refers to
    # them (the consumer dropped the batch, or it was converted to another
    # dtype/device): fresh pages cost a page fault and a zeroing per 4 KiB.
    pool: list[np.ndarray] = []
    while True:
        n = stream.next_len()
        if n == 0:
            return
        buf = _free_buffer(pool, n)
        if buf is None:
            buf = np.empty((n, width), dtype=carrier)
            if len(pool) < _POOL_SIZE:
                pool.append(buf)
        stream.next_into(as_bytes(buf))
        t = to_torch(buf, name)
        del buf
        if pin:
            t = t.pin_memory()
        if device is not None or dtype is not None:
            t = t.to(device=device, dtype=dtype, non_blocking=pin)
        yield t
        del t
