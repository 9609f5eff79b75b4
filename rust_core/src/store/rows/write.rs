//! Writing rows: appends through the in-memory partial chunk, the encoding
//! and staging of whole chunks, and multi-rank writes at chunk-aligned starts.
//! Staged chunks become durable at the next sync of the store.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use zarrs::array::{ArrayBytes, ArrayToBytesCodecTraits};

use super::{codec_options, RowArray};
use crate::error::{CoreError, CoreResult};

/// Chunks encoded together (in parallel) before they are written.
const ENCODE_GROUP_CHUNKS: usize = 16;

/// Chunk files written at once with direct I/O (4 in flight measured 1.7 GB/s on
/// the benchmark VM against 1.2 GB/s for one).
const DIRECT_WRITERS: usize = 4;

impl RowArray {
    /// Encodes and writes whole chunks starting at chunk-aligned row `start`.
    pub(super) fn write_chunks(&mut self, start: u64, bytes: &[u8]) -> CoreResult<()> {
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
        // (in groups, so that compressed chunks of a huge append are not all held at once)
        for (g, group) in bytes.chunks(chunk_bytes * ENCODE_GROUP_CHUNKS).enumerate() {
            let base = first + (g * ENCODE_GROUP_CHUNKS) as u64;
            let encoded = self.encode_chunks(base, group, chunk_bytes)?;
            self.stage_chunks(base, &encoded)?;
        }
        Ok(())
    }

    /// Encodes the whole chunks in `bytes` (chunk `first` on) in parallel with
    /// rayon; for an uncompressed chunk the encoded bytes are the input itself.
    fn encode_chunks<'a>(
        &self,
        first: u64,
        bytes: &'a [u8],
        chunk_bytes: usize,
    ) -> CoreResult<Vec<Cow<'a, [u8]>>> {
        let array = &self.array;
        let codecs = array.codecs();
        let options = codec_options();
        bytes
            .par_chunks(chunk_bytes)
            .enumerate()
            .map(|(j, chunk)| {
                let index = first + j as u64;
                let err = |e: &dyn std::fmt::Display| self.write_error(index, e);
                let shape = array
                    .chunk_shape(&self.chunk_indices(index))
                    .map_err(|e| err(&e))?;
                codecs
                    .encode(
                        ArrayBytes::new_flen(chunk),
                        &shape,
                        array.data_type(),
                        array.fill_value(),
                        &options,
                    )
                    .map_err(|e| err(&e))
            })
            .collect()
    }

    /// Stages encoded chunks `first..` in the store: written by
    /// [`DIRECT_WRITERS`] threads with direct I/O, or one after the other when
    /// buffered (parallel writers into the page cache were measured 1.5x
    /// slower on the benchmark VM: filesystem contention).
    fn stage_chunks(&self, first: u64, encoded: &[Cow<'_, [u8]>]) -> CoreResult<()> {
        let store = self.array.storage();
        let stage = |j: usize| -> CoreResult<()> {
            let index = first + j as u64;
            // a chunk with no committed rows is written in place (see DurableStore::stage)
            let in_place = index * self.chunk_rows >= self.committed;
            store
                .stage(
                    &self.array.chunk_key(&self.chunk_indices(index)),
                    &encoded[j],
                    in_place,
                )
                .map_err(|e| self.write_error(index, &e))
        };
        if store.writes_direct() && encoded.len() > 1 {
            // direct I/O: several files in flight keep the disk busy (I/O-bound
            // threads, so more of them than cores)
            run_writers(DIRECT_WRITERS.min(encoded.len()), encoded.len(), stage)
        } else {
            (0..encoded.len()).try_for_each(stage)
        }
    }

    fn write_error(&self, chunk: u64, e: &dyn std::fmt::Display) -> CoreError {
        CoreError::store(format!("array {}: writing chunk {chunk}: {e}", self.name))
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
    pub(super) fn stage_tail(&mut self) -> CoreResult<()> {
        if self.tail_dirty && !self.tail.is_empty() {
            let chunk_bytes = self.bytes_of(self.chunk_rows)?;
            let mut padded = self.tail.clone();
            padded.resize(chunk_bytes, 0);
            self.write_chunks(self.tail_start, &padded)?;
            self.tail_dirty = false;
        }
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
    /// [`prepare_commit_all`](super::prepare_commit_all), the commit point,
    /// then [`RowArray::mark_committed`].
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
}

/// Runs `job(0..n)` on `writers` scoped threads, each taking the next job
/// until none is left; the first error (or a panic) is returned.
fn run_writers(
    writers: usize,
    n: usize,
    job: impl Fn(usize) -> CoreResult<()> + Sync,
) -> CoreResult<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|_| {
                scope.spawn(|| loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    if j >= n {
                        return Ok(());
                    }
                    job(j)?;
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| CoreError::Internal("chunk writer panicked".into()))?
        })
    })
}
