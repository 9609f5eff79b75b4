//! Reading rows: committed rows decoded chunk by chunk, in parallel, straight
//! into the caller's buffer; a missing or corrupt chunk is an error naming it.

use std::borrow::Cow;

use rayon::prelude::*;
use unsafe_cell_slice::UnsafeCellSlice;
use zarrs::array::{ArrayBytesFixedDisjointView, ArraySubset, ArrayToBytesCodecTraits};
use zarrs::storage::ReadableStorageTraits;

use super::{codec_options, ChunkBytes, MappedFile, RowArray};
use crate::error::{CoreError, CoreResult};

impl RowArray {
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
        let idx = self.chunk_indices(chunk);
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
