//! One zarr v3 array of rows (`[rows, d]`, or `[rows]` for index arrays),
//! appended chunk by chunk and read straight into caller-owned buffers.
//!
//! Rows live in chunks of `chunk_rows` full-width rows (a chunk is a shard when
//! sharding is on). Appends collect a partial last chunk in memory and write
//! complete chunks as soon as they fill; `flush` writes the partial one too
//! (rewritten, atomically, when more rows arrive). `commit` persists the array
//! shape. The store's group attributes hold the committed row count and are
//! the truth: rows past it do not exist, whatever the chunk files hold.
//!
//! I/O goes around zarrs' storage layer where that layer copies: whole chunks
//! are decoded by the array's zarrs codec chain straight from the memory-mapped
//! chunk file into the caller's buffer (one copy), and encoded chunks are
//! staged from the codec chain's output without the copy into a `Bytes`.

use std::borrow::Cow;
use std::sync::Arc;

use rayon::prelude::*;
use unsafe_cell_slice::UnsafeCellSlice;
use zarrs::array::codec::ZstdCodec;
use zarrs::array::{
    Array, ArrayBuilder, ArrayBytes, ArrayBytesFixedDisjointView, ArraySubset,
    ArrayToBytesCodecTraits, CodecOptions, FillValue,
};
use zarrs::storage::ReadableStorageTraits;

use super::dtype::ElemType;
use super::durable::{sync_staged, DurableStore, MappedFile};
use crate::error::{CoreError, CoreResult};

/// Chunks encoded together (in parallel) before they are written.
const ENCODE_GROUP_CHUNKS: usize = 16;

/// Chunk files written at once with direct I/O (4 in flight measured 1.7 GB/s on
/// the benchmark VM against 1.2 GB/s for one).
const DIRECT_WRITERS: usize = 4;

/// How chunks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Raw little-endian bytes.
    None,
    /// zstd at the given level.
    Zstd(i32),
}

/// Layout of a new array.
#[derive(Debug, Clone)]
pub struct ArrayLayout {
    /// Element type.
    pub dtype: ElemType,
    /// Row width `d`; `None` makes a 1-D array (index arrays).
    pub width: Option<u64>,
    /// Rows per chunk (per shard when `inner_rows` is set).
    pub chunk_rows: u64,
    /// Chunk compression.
    pub compression: Compression,
    /// With sharding: rows per inner chunk (must divide `chunk_rows`).
    pub inner_rows: Option<u64>,
    /// zarr `dimension_names` (one per dimension); `None` writes `row` (and `dim`).
    pub dims: Option<Vec<String>>,
}

/// An open store array (see the module docs).
pub struct RowArray {
    name: String,
    array: Array<DurableStore>,
    dtype: ElemType,
    width: Option<u64>,
    chunk_rows: u64,
    row_bytes: usize,
    committed: u64,
    written: u64,
    tail_start: u64,
    tail: Vec<u8>,
    tail_dirty: bool,
    persisted: Option<u64>,
}

/// The decoded bytes of one chunk: the mapped file itself when the codec chain
/// decodes it to its own bytes (no compression), or an owned decoded buffer.
#[derive(Debug)]
pub enum ChunkBytes {
    /// The chunk file, mapped: its bytes are the decoded chunk.
    Mapped(MappedFile),
    /// A buffer zarrs decoded the chunk into (compressed or sharded chunks).
    Owned(Vec<u8>),
}

impl std::ops::Deref for ChunkBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

fn codec_options() -> CodecOptions {
    CodecOptions::default()
        .with_store_empty_chunks(true)
        .with_concurrent_target(1)
}

impl RowArray {
    /// Creates an empty array `name` (e.g. `acts/image.embed`) in `store`.
    pub fn create(store: Arc<DurableStore>, name: &str, layout: ArrayLayout) -> CoreResult<Self> {
        if layout.chunk_rows == 0 {
            return Err(CoreError::input(format!("{name}: chunk_rows must be > 0")));
        }
        if layout.width == Some(0) {
            return Err(CoreError::input(format!("{name}: row width must be > 0")));
        }
        let elem = layout.dtype.size();
        let (shape, chunk): (Vec<u64>, Vec<u64>) = match layout.width {
            Some(d) => (vec![0, d], vec![layout.chunk_rows, d]),
            None => (vec![0], vec![layout.chunk_rows]),
        };
        let mut builder = ArrayBuilder::new(
            shape.clone(),
            chunk.clone(),
            layout.dtype.data_type(),
            FillValue::new(vec![0u8; elem]),
        );
        if let Some(inner) = layout.inner_rows {
            if inner == 0 || layout.chunk_rows % inner != 0 {
                return Err(CoreError::input(format!(
                    "{name}: inner chunk rows {inner} must divide the shard rows {}",
                    layout.chunk_rows
                )));
            }
            let mut sub = chunk;
            sub[0] = inner;
            builder.subchunk_shape(sub);
        }
        if let Compression::Zstd(level) = layout.compression {
            builder.bytes_to_bytes_codecs(vec![Arc::new(ZstdCodec::new(level, false))]);
        }
        let dims: Vec<String> = match (layout.dims, layout.width) {
            (Some(d), _) => d,
            (None, Some(_)) => vec!["row".into(), "dim".into()],
            (None, None) => vec!["row".into()],
        };
        if dims.len() != shape.len() {
            return Err(CoreError::input(format!(
                "{name}: {} dimension names for a {}-d array",
                dims.len(),
                shape.len()
            )));
        }
        builder.dimension_names(Some(dims.into_iter().map(Some).collect::<Vec<_>>()));
        let path = format!("/{name}");
        let array = builder
            .build(store, &path)
            .map_err(|e| CoreError::store(format!("creating array {name}: {e}")))?;
        array
            .store_metadata()
            .map_err(|e| CoreError::store(format!("writing metadata of {name}: {e}")))?;
        Self::from_array(name, array, 0, false)
    }

    /// Opens array `name` holding `committed` rows (from the group attributes).
    /// With `writable`, the persisted shape is reset to `committed` and the
    /// partial last chunk is loaded so that appends continue it.
    pub fn open(
        store: Arc<DurableStore>,
        name: &str,
        committed: u64,
        writable: bool,
    ) -> CoreResult<Self> {
        let path = format!("/{name}");
        let array = Array::open(store, &path)
            .map_err(|e| CoreError::store(format!("opening array {name}: {e}")))?;
        let mut me = Self::from_array(name, array, committed, true)?;
        if writable {
            me.persist_shape(committed)?;
            let tail_start = committed - committed % me.chunk_rows;
            if tail_start < committed {
                let mut tail = vec![0u8; me.bytes_of(committed - tail_start)?];
                me.read_into(tail_start, committed, &mut tail)?;
                me.tail = tail;
            }
            me.tail_start = tail_start;
        }
        Ok(me)
    }

    fn from_array(
        name: &str,
        mut array: Array<DurableStore>,
        committed: u64,
        opened: bool,
    ) -> CoreResult<Self> {
        let shape = array.shape().to_vec();
        let width = match shape.len() {
            1 => None,
            2 => Some(shape[1]),
            n => {
                return Err(CoreError::store(format!(
                    "array {name} has {n} dimensions; store arrays have 1 or 2"
                )))
            }
        };
        let dtype_full = array.data_type().to_string();
        let dtype_name = dtype_full.split(" /").next().unwrap_or_default().trim();
        let dtype = ElemType::parse(dtype_name)
            .map_err(|_| CoreError::store(format!("array {name} has dtype {dtype_name}")))?;
        let chunk_shape = array
            .chunk_shape(&vec![0; shape.len()])
            .map_err(|e| CoreError::store(format!("array {name}: chunk grid: {e}")))?;
        let chunk_rows = chunk_shape[0].get();
        if width.is_some_and(|d| chunk_shape[1].get() != d) {
            return Err(CoreError::store(format!(
                "array {name}: chunks must span full rows"
            )));
        }
        let row_bytes = usize::try_from(width.unwrap_or(1))
            .map_err(|_| CoreError::store(format!("array {name}: row too wide")))?
            * dtype.size();
        if opened {
            let mut s = shape.clone();
            s[0] = committed;
            array
                .set_shape(s)
                .map_err(|e| CoreError::store(format!("array {name}: {e}")))?;
        }
        Ok(Self {
            name: name.to_string(),
            array,
            dtype,
            width,
            chunk_rows,
            row_bytes,
            committed,
            written: committed,
            tail_start: committed - committed % chunk_rows,
            tail: Vec::new(),
            tail_dirty: false,
            persisted: Some(shape[0]),
        })
    }

    /// Array name inside the store (`acts/<hook>`, `index/<hook>/sample`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Element type.
    pub fn dtype(&self) -> ElemType {
        self.dtype
    }
    /// Row width (`None` for a 1-D array).
    pub fn width(&self) -> Option<u64> {
        self.width
    }
    /// Rows per chunk (shard).
    pub fn chunk_rows(&self) -> u64 {
        self.chunk_rows
    }
    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }
    /// Committed (visible) rows.
    pub fn committed(&self) -> u64 {
        self.committed
    }
    /// Rows appended so far (committed or not).
    pub fn written(&self) -> u64 {
        self.written
    }

    fn bytes_of(&self, rows: u64) -> CoreResult<usize> {
        usize::try_from(rows)
            .ok()
            .and_then(|r| r.checked_mul(self.row_bytes))
            .ok_or_else(|| CoreError::input(format!("{}: {rows} rows do not fit", self.name)))
    }

    fn subset(&self, start: u64, stop: u64) -> ArraySubset {
        match self.width {
            Some(d) => ArraySubset::new_with_ranges(&[start..stop, 0..d]),
            None => ArraySubset::new_with_start_shape(vec![start], vec![stop - start])
                .expect("same dimensionality"),
        }
    }

    fn grow_to(&mut self, rows: u64) -> CoreResult<()> {
        if self.array.shape()[0] < rows {
            let mut s = self.array.shape().to_vec();
            s[0] = rows;
            self.array
                .set_shape(s)
                .map_err(|e| CoreError::store(format!("array {}: {e}", self.name)))?;
        }
        Ok(())
    }

    /// Encodes and writes whole chunks starting at chunk-aligned row `start`.
    fn write_chunks(&mut self, start: u64, bytes: &[u8]) -> CoreResult<()> {
        // staged in the store; made durable by `flush` (sync_pending)
        let rows = (bytes.len() / self.row_bytes) as u64;
        debug_assert_eq!(start % self.chunk_rows, 0);
        debug_assert_eq!(rows % self.chunk_rows, 0);
        if rows == 0 {
            return Ok(());
        }
        self.grow_to(start + rows)?;
        let first = start / self.chunk_rows;
        let chunk_bytes = self.bytes_of(self.chunk_rows)?;
        let name = &self.name;
        let array = &self.array;
        let ndim = array.shape().len();
        let store = array.storage();
        let codecs = array.codecs();
        let (chunk_rows, committed) = (self.chunk_rows, self.committed);
        let options = codec_options();
        // rayon encodes the chunks in parallel (for an uncompressed chunk the
        // encoded bytes are the input itself); the files are then written by
        // DIRECT_WRITERS threads with direct I/O, or one after the other when
        // buffered (parallel writers into the page cache were measured 1.5x
        // slower on the benchmark VM: filesystem contention).
        let err = |i: usize, e: &dyn std::fmt::Display| {
            CoreError::store(format!(
                "array {name}: writing chunk {}: {e}",
                first + i as u64
            ))
        };
        let chunk_index = |i: usize| {
            let mut idx = vec![0u64; ndim];
            idx[0] = first + i as u64;
            idx
        };
        // (in groups, so that compressed chunks of a huge append are not all held at once)
        for (g, group) in bytes.chunks(chunk_bytes * ENCODE_GROUP_CHUNKS).enumerate() {
            let base = g * ENCODE_GROUP_CHUNKS;
            let encoded = group
                .par_chunks(chunk_bytes)
                .enumerate()
                .map(|(j, chunk)| {
                    let i = base + j;
                    let idx = chunk_index(i);
                    let shape = array.chunk_shape(&idx).map_err(|e| err(i, &e))?;
                    codecs
                        .encode(
                            ArrayBytes::new_flen(chunk),
                            &shape,
                            array.data_type(),
                            array.fill_value(),
                            &options,
                        )
                        .map_err(|e| err(i, &e))
                })
                .collect::<CoreResult<Vec<_>>>()?;
            let stage = |j: usize| -> CoreResult<()> {
                let i = base + j;
                let idx = chunk_index(i);
                // a chunk with no committed rows is written in place (see DurableStore::stage)
                let in_place = idx[0] * chunk_rows >= committed;
                store
                    .stage(&array.chunk_key(&idx), &encoded[j], in_place)
                    .map_err(|e| err(i, &e))
            };
            if store.writes_direct() && encoded.len() > 1 {
                // direct I/O: several files in flight keep the disk busy (I/O-bound
                // threads, so more of them than cores)
                let next = std::sync::atomic::AtomicUsize::new(0);
                let writers = DIRECT_WRITERS.min(encoded.len());
                std::thread::scope(|scope| {
                    let handles: Vec<_> = (0..writers)
                        .map(|_| {
                            scope.spawn(|| loop {
                                let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                if j >= encoded.len() {
                                    return Ok(());
                                }
                                stage(j)?;
                            })
                        })
                        .collect();
                    handles.into_iter().try_for_each(|h| {
                        h.join()
                            .map_err(|_| CoreError::Internal("chunk writer panicked".into()))?
                    })
                })?;
            } else {
                (0..encoded.len()).try_for_each(stage)?;
            }
        }
        Ok(())
    }

    /// Appends rows (`bytes` holds whole rows, C order).
    pub fn append(&mut self, bytes: &[u8]) -> CoreResult<()> {
        if bytes.len() % self.row_bytes != 0 {
            return Err(CoreError::input(format!(
                "{}: {} bytes is not a whole number of {}-byte rows",
                self.name,
                bytes.len(),
                self.row_bytes
            )));
        }
        let chunk_bytes = self.bytes_of(self.chunk_rows)?;
        let mut rest = bytes;
        // 1. complete the partial chunk held in memory
        if !self.tail.is_empty() {
            let take = (chunk_bytes - self.tail.len()).min(rest.len());
            self.tail.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            self.tail_dirty = true;
            if self.tail.len() == chunk_bytes {
                let tail = std::mem::take(&mut self.tail);
                self.write_chunks(self.tail_start, &tail)?;
                self.tail = tail;
                self.tail.clear();
                self.tail_start += self.chunk_rows;
                self.tail_dirty = false;
            }
        }
        // 2. whole chunks straight from the input
        let whole = rest.len() / chunk_bytes * chunk_bytes;
        if whole > 0 {
            self.write_chunks(self.tail_start, &rest[..whole])?;
            self.tail_start += (whole / chunk_bytes) as u64 * self.chunk_rows;
            rest = &rest[whole..];
        }
        // 3. the start of the next partial chunk
        if !rest.is_empty() {
            self.tail.extend_from_slice(rest);
            self.tail_dirty = true;
        }
        self.written += (bytes.len() / self.row_bytes) as u64;
        Ok(())
    }

    /// Stages the partial last chunk (zero-padded) without syncing it.
    fn stage_tail(&mut self) -> CoreResult<()> {
        if self.tail_dirty && !self.tail.is_empty() {
            let chunk_bytes = self.bytes_of(self.chunk_rows)?;
            let mut padded = self.tail.clone();
            padded.resize(chunk_bytes, 0);
            self.write_chunks(self.tail_start, &padded)?;
            self.tail_dirty = false;
        }
        Ok(())
    }

    /// Commits `rows` (≤ written) rows of this array alone: [`prepare_commit_all`]
    /// then [`RowArray::mark_committed`], with no commit point of its own.
    pub fn commit(&mut self, rows: u64) -> CoreResult<()> {
        prepare_commit_all(&mut [&mut *self], &[rows])?;
        self.mark_committed(rows)
    }

    /// Records `rows` as committed after [`prepare_commit_all`] and the commit point.
    pub fn mark_committed(&mut self, rows: u64) -> CoreResult<()> {
        if rows > self.written || self.persisted != Some(rows) {
            return Err(CoreError::input(format!(
                "{}: {rows} rows were not prepared for commit",
                self.name
            )));
        }
        self.committed = rows;
        Ok(())
    }

    fn persist_shape(&mut self, rows: u64) -> CoreResult<()> {
        if self.persisted == Some(rows) {
            return Ok(());
        }
        let in_memory = self.array.shape().to_vec();
        let mut s = in_memory.clone();
        s[0] = rows;
        let err = |e: &dyn std::fmt::Display| CoreError::store(format!("array {}: {e}", self.name));
        self.array.set_shape(s).map_err(|e| err(&e))?;
        self.array.store_metadata().map_err(|e| err(&e))?;
        if in_memory[0] > rows {
            self.array.set_shape(in_memory).map_err(|e| err(&e))?;
        }
        self.persisted = Some(rows);
        Ok(())
    }

    /// Writes rows at chunk-aligned `start` without touching the append state
    /// (multi-rank caching: each rank owns disjoint chunk ranges). `bytes` must
    /// cover whole chunks, except at `end_of_array`, the array's final row.
    pub fn write_at(&mut self, start: u64, bytes: &[u8], end_of_array: bool) -> CoreResult<()> {
        if start % self.chunk_rows != 0 || bytes.len() % self.row_bytes != 0 {
            return Err(CoreError::input(format!(
                "{}: write_at needs a chunk-aligned start ({start} with {}-row chunks) and whole rows",
                self.name, self.chunk_rows
            )));
        }
        let rows = (bytes.len() / self.row_bytes) as u64;
        let chunk_bytes = self.bytes_of(self.chunk_rows)?;
        let whole = bytes.len() / chunk_bytes * chunk_bytes;
        if whole < bytes.len() && !end_of_array {
            return Err(CoreError::input(format!(
                "{}: write_at of {rows} rows at {start} ends inside a chunk; only the last range may",
                self.name
            )));
        }
        self.write_chunks(start, &bytes[..whole])?;
        if whole < bytes.len() {
            let mut padded = bytes[whole..].to_vec();
            padded.resize(chunk_bytes, 0);
            self.write_chunks(start + (whole / self.row_bytes) as u64, &padded)?;
        }
        self.written = self.written.max(start + rows);
        self.array.storage().sync_pending()
    }

    /// Takes `rows` as written after a multi-rank write (every rank done): the
    /// rows other ranks wrote with [`RowArray::write_at`] become part of this
    /// array's append state. It commits nothing: commit with
    /// [`prepare_commit_all`], the commit point, then [`RowArray::mark_committed`].
    pub fn adopt_written(&mut self, rows: u64) -> CoreResult<()> {
        if rows < self.committed {
            return Err(CoreError::input(format!(
                "{}: cannot adopt {rows} written rows below the {} committed",
                self.name, self.committed
            )));
        }
        self.written = rows;
        self.tail.clear();
        self.tail_dirty = false;
        self.tail_start = rows - rows % self.chunk_rows;
        self.grow_to(rows)
    }

    /// Decodes committed rows `[start, stop)` into `out` (exactly their bytes).
    /// Chunks decode in parallel; a missing or corrupt chunk is an error naming it.
    pub fn read_into(&self, start: u64, stop: u64, out: &mut [u8]) -> CoreResult<()> {
        if start > stop || stop > self.committed {
            return Err(CoreError::input(format!(
                "{}: rows {start}..{stop} out of range (0..{} committed)",
                self.name, self.committed
            )));
        }
        if out.len() != self.bytes_of(stop - start)? {
            return Err(CoreError::input(format!(
                "{}: output buffer has {} bytes, rows {start}..{stop} need {}",
                self.name,
                out.len(),
                self.bytes_of(stop - start)?
            )));
        }
        // Split the output at chunk boundaries: disjoint pieces, one task each.
        let mut pieces: Vec<(u64, u64, &mut [u8])> = Vec::new();
        let mut rest = out;
        let mut row = start;
        while row < stop {
            let end = ((row / self.chunk_rows + 1) * self.chunk_rows).min(stop);
            let (head, tail) = rest.split_at_mut(self.bytes_of(end - row)?);
            pieces.push((row, end, head));
            rest = tail;
            row = end;
        }
        pieces
            .into_par_iter()
            .try_for_each(|(a, b, buf)| self.read_piece(a, b, buf))
    }

    fn chunk_key_of(&self, chunk: u64) -> (Vec<u64>, zarrs::storage::StoreKey) {
        let mut idx = vec![0u64; self.array.shape().len()];
        idx[0] = chunk;
        let key = self.array.chunk_key(&idx);
        (idx, key)
    }

    /// Maps the file of `chunk`; a missing file is an error naming the array and chunk.
    fn map_chunk(&self, chunk: u64, key: &zarrs::storage::StoreKey) -> CoreResult<MappedFile> {
        self.array
            .storage()
            .map_key(key)
            .map_err(|e| {
                CoreError::store(format!("array {}: chunk {chunk} ({key}): {e}", self.name))
            })?
            .ok_or_else(|| {
                CoreError::store(format!(
                    "array {}: chunk {chunk} ({key}) is missing: the store is damaged",
                    self.name
                ))
            })
    }

    fn corrupt(
        &self,
        chunk: u64,
        key: &zarrs::storage::StoreKey,
        e: &dyn std::fmt::Display,
    ) -> CoreError {
        CoreError::store(format!(
            "array {}: chunk {chunk} ({key}) is corrupt or unreadable: {e}",
            self.name
        ))
    }

    /// Decodes all of chunk `chunk` (every row of the chunk grid, committed or
    /// not) with the array's codec chain. Uncompressed chunks come back as the
    /// mapped file itself: zarrs decodes them to their own bytes, so nothing is copied.
    pub fn decode_chunk(&self, chunk: u64) -> CoreResult<ChunkBytes> {
        let (idx, key) = self.chunk_key_of(chunk);
        let map = self.map_chunk(chunk, &key)?;
        let shape = self
            .array
            .chunk_shape(&idx)
            .map_err(|e| self.corrupt(chunk, &key, &e))?;
        let decoded = self
            .array
            .codecs()
            .decode(
                Cow::Borrowed(&map[..]),
                &shape,
                self.array.data_type(),
                self.array.fill_value(),
                &codec_options(),
            )
            .and_then(|b| b.into_fixed().map_err(Into::into))
            .map_err(|e| self.corrupt(chunk, &key, &e))?;
        let expected = self.bytes_of(self.chunk_rows)?;
        if decoded.len() != expected {
            return Err(self.corrupt(
                chunk,
                &key,
                &format!("decoded to {} bytes, expected {expected}", decoded.len()),
            ));
        }
        let owned = match decoded {
            Cow::Borrowed(b) if std::ptr::eq(b.as_ptr(), map.as_ptr()) => None,
            other => Some(other.into_owned()),
        };
        Ok(match owned {
            None => ChunkBytes::Mapped(map),
            Some(v) => ChunkBytes::Owned(v),
        })
    }

    fn read_piece(&self, start: u64, stop: u64, buf: &mut [u8]) -> CoreResult<()> {
        let chunk = start / self.chunk_rows;
        let (idx, key) = self.chunk_key_of(chunk);
        let whole = start % self.chunk_rows == 0 && stop - start == self.chunk_rows;
        let shape: Vec<u64> = match self.width {
            Some(d) => vec![stop - start, d],
            None => vec![stop - start],
        };
        let subset_all = ArraySubset::new_with_shape(shape.clone());
        let cells = UnsafeCellSlice::new(buf);
        // SAFETY: one view covering all of `buf`, which this task owns exclusively.
        let mut view = unsafe {
            ArrayBytesFixedDisjointView::new(cells, self.dtype.size(), &shape, subset_all)
        }
        .map_err(|e| CoreError::Internal(format!("{}: {e}", self.name)))?;
        if whole {
            // The whole chunk: zarrs' codec chain decodes the mapped file
            // straight into `buf` (a single copy when uncompressed).
            let map = self.map_chunk(chunk, &key)?;
            let chunk_shape = self
                .array
                .chunk_shape(&idx)
                .map_err(|e| self.corrupt(chunk, &key, &e))?;
            return self
                .array
                .codecs()
                .decode_into(
                    Cow::Borrowed(&map[..]),
                    &chunk_shape,
                    self.array.data_type(),
                    self.array.fill_value(),
                    (&mut view).into(),
                    &codec_options(),
                )
                .map_err(|e| self.corrupt(chunk, &key, &e));
        }
        let missing = self
            .array
            .storage()
            .size_key(&key)
            .map_err(|e| {
                CoreError::store(format!("array {}: chunk {chunk} ({key}): {e}", self.name))
            })?
            .is_none();
        if missing {
            return Err(CoreError::store(format!(
                "array {}: chunk {chunk} ({key}) is missing: the store is damaged",
                self.name
            )));
        }
        self.array
            .retrieve_array_subset_into_opt(
                &self.subset(start, stop),
                (&mut view).into(),
                &codec_options(),
            )
            .map_err(|e| self.corrupt(chunk, &key, &e))
    }
}

/// The first half of a commit of `rows[i]` rows of `arrays[i]`: every array's
/// partial last chunk and its new shape (`zarr.json`) are staged, then all of
/// it is made durable in one pass ([`sync_staged`]: one parallel round of
/// fsyncs, the shapes renamed after the chunks). The caller then writes the
/// commit point (the committed counts in the group attributes) and calls
/// [`RowArray::mark_committed`]. A crash in between leaves shapes ahead of the
/// committed counts, which `open` truncates back.
pub fn prepare_commit_all(arrays: &mut [&mut RowArray], rows: &[u64]) -> CoreResult<()> {
    if rows.len() != arrays.len() {
        return Err(CoreError::input(format!(
            "{} row counts for {} arrays",
            rows.len(),
            arrays.len()
        )));
    }
    for (a, &n) in arrays.iter().zip(rows) {
        if n > a.written {
            return Err(CoreError::input(format!(
                "{}: cannot commit {n} rows, only {} written",
                a.name, a.written
            )));
        }
    }
    arrays.par_iter_mut().try_for_each(|a| a.stage_tail())?;
    let mut staged = Vec::new();
    for (a, &n) in arrays.iter_mut().zip(rows) {
        let store = a.array.storage().clone();
        store.set_stage_metadata(true);
        let shape = a.persist_shape(n);
        store.set_stage_metadata(false);
        shape?;
        staged.extend(store.take_staged()?);
    }
    sync_staged(staged)
}

/// Rows per task of [`nonfinite_rows`].
const SCAN_ROWS_PER_TASK: usize = 1024;

/// Whether `row` (elements of `dtype`) holds NaN or ±Inf. Branch-free over the
/// row (no early exit), so the compiler vectorises it.
fn row_is_nonfinite(row: &[u8], dtype: ElemType) -> bool {
    // float16 / bfloat16 / float32: exponent bits all ones means Inf or NaN
    fn any_exp_all_ones<const N: usize>(row: &[u8], mask: u32) -> bool {
        row.chunks_exact(N)
            .map(|b| {
                let v = if N == 2 {
                    u32::from(u16::from_le_bytes([b[0], b[1]]))
                } else {
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                };
                u8::from(v & mask == mask)
            })
            .fold(0u8, |acc, x| acc | x)
            != 0
    }
    match dtype {
        ElemType::F32 => any_exp_all_ones::<4>(row, 0x7f80_0000),
        ElemType::F16 => any_exp_all_ones::<2>(row, 0x7c00),
        ElemType::BF16 => any_exp_all_ones::<2>(row, 0x7f80),
        _ => false,
    }
}

/// Indices (within `bytes`, rows of `width` elements of `dtype`) of rows that hold NaN or ±Inf.
pub fn nonfinite_rows(bytes: &[u8], dtype: ElemType, width: usize) -> Vec<u64> {
    let row_bytes = width * dtype.size();
    if row_bytes == 0 || !dtype.is_float() {
        return Vec::new();
    }
    bytes
        .par_chunks(row_bytes * SCAN_ROWS_PER_TASK)
        .enumerate()
        .flat_map_iter(|(block, rows)| {
            rows.chunks(row_bytes)
                .enumerate()
                .filter(|(_, row)| row_is_nonfinite(row, dtype))
                .map(move |(i, _)| (block * SCAN_ROWS_PER_TASK + i) as u64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::durable::tests::tempdir;
    use super::*;

    fn layout(chunk_rows: u64, compression: Compression, inner: Option<u64>) -> ArrayLayout {
        ArrayLayout {
            dtype: ElemType::F32,
            width: Some(3),
            chunk_rows,
            compression,
            inner_rows: inner,
            dims: None,
        }
    }

    fn rows_bytes(start: u32, n: u32) -> Vec<u8> {
        (start * 3..(start + n) * 3)
            .flat_map(|v| (v as f32).to_le_bytes())
            .collect()
    }

    fn roundtrip(compression: Compression, inner: Option<u64>) {
        let dir = tempdir();
        let store = Arc::new(DurableStore::new(&dir).unwrap());
        let mut a =
            RowArray::create(store.clone(), "acts/x", layout(4, compression, inner)).unwrap();
        // ragged appends across chunk boundaries
        a.append(&rows_bytes(0, 3)).unwrap();
        a.append(&rows_bytes(3, 6)).unwrap();
        a.commit(9).unwrap();
        a.append(&rows_bytes(9, 1)).unwrap(); // uncommitted
        let mut out = vec![0u8; 9 * 12];
        a.read_into(0, 9, &mut out).unwrap();
        assert_eq!(out, rows_bytes(0, 9));
        assert!(a.read_into(0, 10, &mut [0u8; 120]).is_err());
        drop(a);
        // re-open at the committed count, continue the partial chunk
        let mut b = RowArray::open(store.clone(), "acts/x", 9, true).unwrap();
        b.append(&rows_bytes(9, 5)).unwrap();
        b.commit(14).unwrap();
        let mut out = vec![0u8; 12 * 12];
        b.read_into(2, 14, &mut out).unwrap();
        assert_eq!(out, rows_bytes(2, 12));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn roundtrip_plain_zstd_sharded() {
        roundtrip(Compression::None, None);
        roundtrip(Compression::Zstd(3), None);
        roundtrip(Compression::Zstd(1), Some(2));
    }

    #[test]
    fn missing_and_corrupt_chunks_are_named() {
        let dir = tempdir();
        let store = Arc::new(DurableStore::new(&dir).unwrap());
        let mut a = RowArray::create(
            store.clone(),
            "acts/y",
            layout(2, Compression::Zstd(1), None),
        )
        .unwrap();
        a.append(&rows_bytes(0, 6)).unwrap();
        a.commit(6).unwrap();
        std::fs::write(dir.join("acts/y/c/1/0"), b"garbage").unwrap();
        std::fs::remove_file(dir.join("acts/y/c/2/0")).unwrap();
        let mut out = vec![0u8; 2 * 12];
        let e = a.read_into(2, 4, &mut out).unwrap_err().to_string();
        assert!(e.contains("acts/y") && e.contains("chunk 1"), "{e}");
        let e = a.read_into(4, 6, &mut out).unwrap_err().to_string();
        assert!(e.contains("chunk 2") && e.contains("missing"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn disjoint_chunk_ranges_then_commit() {
        // two "ranks" write disjoint chunk-aligned ranges, then one commit step
        let dir = tempdir();
        let store = Arc::new(DurableStore::new(&dir).unwrap());
        let mut a =
            RowArray::create(store.clone(), "acts/r", layout(4, Compression::None, None)).unwrap();
        let mut b = RowArray::open(store.clone(), "acts/r", 0, true).unwrap();
        b.write_at(8, &rows_bytes(8, 3), true).unwrap();
        a.write_at(0, &rows_bytes(0, 8), false).unwrap();
        assert!(
            a.write_at(2, &rows_bytes(2, 4), false).is_err(),
            "unaligned start"
        );
        assert!(
            a.write_at(0, &rows_bytes(0, 3), false).is_err(),
            "ends inside a chunk"
        );
        a.adopt_written(11).unwrap();
        assert!(
            a.read_into(0, 1, &mut [0u8; 12]).is_err(),
            "nothing committed yet"
        );
        a.commit(11).unwrap();
        let mut out = vec![0u8; 11 * 12];
        a.read_into(0, 11, &mut out).unwrap();
        assert_eq!(out, rows_bytes(0, 11));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn finds_nonfinite_rows() {
        let mut b = rows_bytes(0, 4);
        b[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
        b[44..48].copy_from_slice(&f32::INFINITY.to_le_bytes());
        assert_eq!(nonfinite_rows(&b, ElemType::F32, 3), vec![1, 3]);
        let h: Vec<u8> = [0x3c00u16, 0x7c00, 0x0001, 0xfe00]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(nonfinite_rows(&h, ElemType::F16, 1), vec![1, 3]);
        let bf: Vec<u8> = [0x3f80u16, 0x7f80, 0xffc1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(nonfinite_rows(&bf, ElemType::BF16, 1), vec![1, 2]);
    }
}
