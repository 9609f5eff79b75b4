//! Per-sample aggregation of token rows (max or mean over a sample's rows),
//! streamed chunk by chunk.
//!
//! A token-level hook stores many rows per sample (one per patch). The unit
//! activation of a sample is the max (or mean) over its token rows, where a
//! feature absent from a top-k row counts as 0 in that row: exactly what
//! densifying every row and reducing over the sample's rows gives.
//!
//! * Samples are runs of equal `sample_ids`; a sample's rows must be
//!   contiguous, and a run may span chunk boundaries: the open (last) sample of
//!   a chunk is carried into the next one ([`SampleOrder`] checks both).
//! * Top-k codes ([`SparseAggregator`]): per sample, each entry is scattered
//!   into a per-thread dense scratch of the feature block with a touched list,
//!   so the work is O(entries) and only the sample's distinct features are
//!   emitted. Samples of one chunk are reduced in parallel (rayon).
//! * Dense rows ([`DenseAggregator`]): an elementwise max or mean per sample.
//! * [`FeatureLists`] collect the aggregated top-k samples per feature and
//!   score them like the sparse codes' buckets.
//!
//! Max is exact in `f32`. Mean is a `f64` sum in token-row order divided by the
//! sample's row count, rounded to `f32` (what `np.add.reduceat` of the float64
//! rows, divided by the counts, gives).

use std::collections::HashSet;

use crate::error::{CoreError, CoreResult};

mod dense;
mod lists;
mod reduce;
mod sparse;

#[cfg(test)]
mod tests;

pub use dense::DenseAggregator;
pub use lists::FeatureLists;
pub use sparse::SparseAggregator;

/// How the token rows of a sample are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenMode {
    /// Largest value over the sample's rows (an absent feature counts as 0).
    Max,
    /// Sum over the sample's rows divided by its number of rows.
    Mean,
}

impl TokenMode {
    /// Parses `"max"` or `"mean"`.
    pub fn parse(s: &str) -> CoreResult<Self> {
        match s {
            "max" => Ok(Self::Max),
            "mean" => Ok(Self::Mean),
            _ => Err(CoreError::input(format!(
                "mode must be \"max\" or \"mean\", got {s:?}"
            ))),
        }
    }
}

/// Most token rows one sample may have (row numbers keep a flag bit free).
pub(crate) const MAX_SAMPLE_ROWS: usize = (1 << 31) - 2;

/// The distinct samples of a token stream, in order of first appearance, and
/// the check that every sample's rows are contiguous.
#[derive(Debug, Default)]
pub struct SampleOrder {
    seen: HashSet<i64>,
    last: Option<i64>,
    rows_seen: u64,
    /// Sample ids in order of first appearance (the scored rows).
    pub ids: Vec<i64>,
}

/// A chunk cut into runs of one sample each.
pub(crate) struct Runs {
    /// Whether the first run continues the previous chunk's last sample.
    pub(crate) continues: bool,
    /// `(start, end)` token rows of each run, in order.
    pub(crate) runs: Vec<(usize, usize)>,
}

impl SampleOrder {
    pub(crate) fn split(&mut self, sample_ids: &[i64]) -> CoreResult<Runs> {
        let n = sample_ids.len();
        let mut runs = Vec::new();
        let mut start = 0;
        for i in 1..=n {
            if i == n || sample_ids[i] != sample_ids[start] {
                runs.push((start, i));
                start = i;
            }
        }
        let continues = n > 0 && self.last == Some(sample_ids[0]);
        for (ri, &(s, _)) in runs.iter().enumerate() {
            if ri == 0 && continues {
                continue;
            }
            let id = sample_ids[s];
            if !self.seen.insert(id) {
                return Err(CoreError::input(format!(
                    "sample_ids: sample {id} reappears at token row {} after rows of other \
                     samples; token rows must be contiguous per sample (sort the index by sample)",
                    self.rows_seen + s as u64
                )));
            }
            self.ids.push(id);
        }
        if n > 0 {
            self.last = Some(sample_ids[n - 1]);
        }
        self.rows_seen += n as u64;
        Ok(Runs { continues, runs })
    }
}

/// Aggregated sparse rows of consecutive samples (CSR; only nonzeros stored).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SampleRows {
    /// `indptr[s]..indptr[s+1]` are sample `s`'s entries; `indptr[0] == 0`.
    pub indptr: Vec<u64>,
    /// Feature ids (absolute, not relative to the block).
    pub features: Vec<u32>,
    /// Aggregated values (never 0).
    pub values: Vec<f32>,
}

impl SampleRows {
    fn new() -> Self {
        Self {
            indptr: vec![0],
            ..Self::default()
        }
    }

    /// Number of samples.
    pub fn n_samples(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.features.len()
    }

    fn close_sample(&mut self) {
        self.indptr.push(self.features.len() as u64);
    }

    /// Concatenates parts (samples in order).
    pub fn concat(parts: Vec<SampleRows>) -> SampleRows {
        let mut out = SampleRows::new();
        let nnz: usize = parts.iter().map(|p| p.nnz()).sum();
        out.features.reserve(nnz);
        out.values.reserve(nnz);
        for p in parts {
            let base = out.features.len() as u64;
            out.indptr.extend(p.indptr[1..].iter().map(|&x| x + base));
            out.features.extend_from_slice(&p.features);
            out.values.extend_from_slice(&p.values);
        }
        out
    }
}
