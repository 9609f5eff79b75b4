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
//!
//! The parts: `write` (appends, chunk encoding and staging, multi-rank
//! writes), `read` (chunk decoding into caller buffers), `commit` (the
//! two-step commit of several arrays) and `nonfinite` (the NaN/Inf row scan).

use std::sync::Arc;

use zarrs::array::codec::ZstdCodec;
use zarrs::array::{Array, ArrayBuilder, ArraySubset, CodecOptions, FillValue};

use super::dtype::ElemType;
use super::durable::{DurableStore, MappedFile};
use crate::error::{CoreError, CoreResult};

mod commit;
mod nonfinite;
mod read;
mod write;

#[cfg(test)]
mod tests;

pub use commit::prepare_commit_all;
pub use nonfinite::nonfinite_rows;

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

    /// The chunk grid index of chunk `chunk` (chunks span full rows).
    fn chunk_indices(&self, chunk: u64) -> Vec<u64> {
        let mut idx = vec![0u64; self.array.shape().len()];
        idx[0] = chunk;
        idx
    }
}
