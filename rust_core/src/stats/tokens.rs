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
//!
//! Max is exact in `f32`. Mean is a `f64` sum in token-row order divided by the
//! sample's row count, rounded to `f32` (what `np.add.reduceat` of the float64
//! rows, divided by the counts, gives).

use std::collections::HashSet;

use rayon::prelude::*;

use super::sparse::FeatureIndex;
use crate::error::{CoreError, CoreResult};

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

/// One sample's reduction state over the features of a block.
trait Reducer: Send {
    fn with_width(width: usize) -> Self;
    /// Adds value `v` of block feature `j` at the sample's token row `r`;
    /// `false` if `j` was already added at row `r`.
    fn add(&mut self, j: usize, r: u32, v: f32) -> bool;
    /// Emits the sample's nonzeros (features `lo + j`) and resets the state.
    fn emit(&mut self, n_rows: u32, lo: u32, sort: bool, out: &mut SampleRows);
}

const EMPTY_STAMP: u32 = u32::MAX;
const GAP: u32 = 1 << 31;

/// Max: one `u64` slot per feature, `f32` bits of the running max above the
/// last row that touched it; bit 31 of the row records a row that skipped it
/// (the feature was 0 there, so the max is at least 0).
struct MaxReducer {
    slots: Vec<u64>,
    touched: Vec<u32>,
}

impl Reducer for MaxReducer {
    fn with_width(width: usize) -> Self {
        Self {
            slots: vec![u64::MAX; width],
            touched: Vec::new(),
        }
    }

    #[inline(always)]
    fn add(&mut self, j: usize, r: u32, v: f32) -> bool {
        let s = self.slots[j];
        let st = s as u32;
        let (acc, gap) = if st == EMPTY_STAMP {
            self.touched.push(j as u32);
            (v, r > 0)
        } else {
            let prev = st & !GAP;
            if prev == r {
                return false;
            }
            let acc = f32::from_bits((s >> 32) as u32);
            (if v > acc { v } else { acc }, st & GAP != 0 || r > prev + 1)
        };
        let stamp = r | if gap { GAP } else { 0 };
        self.slots[j] = (u64::from(acc.to_bits()) << 32) | u64::from(stamp);
        true
    }

    fn emit(&mut self, n_rows: u32, lo: u32, sort: bool, out: &mut SampleRows) {
        if sort {
            self.touched.sort_unstable();
        }
        for &j in &self.touched {
            let s = self.slots[j as usize];
            let st = s as u32;
            let acc = f32::from_bits((s >> 32) as u32);
            let gap = st & GAP != 0 || (st & !GAP) + 1 < n_rows;
            let v = if gap && acc < 0.0 { 0.0 } else { acc };
            if v != 0.0 {
                out.features.push(lo + j);
                out.values.push(v);
            }
            self.slots[j as usize] = u64::MAX;
        }
        self.touched.clear();
        out.close_sample();
    }
}

/// Mean: a `f64` sum per feature and the last row that touched it.
struct MeanReducer {
    acc: Vec<f64>,
    stamp: Vec<u32>,
    touched: Vec<u32>,
}

impl Reducer for MeanReducer {
    fn with_width(width: usize) -> Self {
        Self {
            acc: vec![0.0; width],
            stamp: vec![EMPTY_STAMP; width],
            touched: Vec::new(),
        }
    }

    #[inline(always)]
    fn add(&mut self, j: usize, r: u32, v: f32) -> bool {
        let st = self.stamp[j];
        if st == EMPTY_STAMP {
            self.touched.push(j as u32);
            self.acc[j] = f64::from(v);
        } else {
            if st == r {
                return false;
            }
            self.acc[j] += f64::from(v);
        }
        self.stamp[j] = r;
        true
    }

    fn emit(&mut self, n_rows: u32, lo: u32, sort: bool, out: &mut SampleRows) {
        if sort {
            self.touched.sort_unstable();
        }
        let n = f64::from(n_rows.max(1));
        for &j in &self.touched {
            let v = (self.acc[j as usize] / n) as f32;
            if v != 0.0 {
                out.features.push(lo + j);
                out.values.push(v);
            }
            self.stamp[j as usize] = EMPTY_STAMP;
        }
        self.touched.clear();
        out.close_sample();
    }
}

/// Range and NaN check of one top-k entry (`e` is its flat position in the chunk).
#[inline(always)]
fn check_code<I: FeatureIndex>(
    idx: I,
    v: f32,
    e: usize,
    k: usize,
    n_features: usize,
) -> CoreResult<usize> {
    let f = idx.as_i64();
    if f < 0 || f as u64 >= n_features as u64 {
        return Err(CoreError::input(format!(
            "indices has value {f} at token row {}, column {} of the chunk, outside [0, n_features={n_features})",
            e / k.max(1),
            e % k.max(1)
        )));
    }
    if v.is_nan() {
        return Err(CoreError::input(format!(
            "values has NaN at token row {}, column {} of the chunk",
            e / k.max(1),
            e % k.max(1)
        )));
    }
    Ok(f as usize)
}

/// Token rows of a top-k chunk (`k` entries per row), one segment of a sample.
struct CodeRows<'a, I> {
    indices: &'a [I],
    values: &'a [f32],
    k: usize,
}

/// Rows carried over from earlier chunks: `(k, rows, indices, values)` pieces.
type CarryPiece = (usize, usize, Vec<u32>, Vec<f32>);

/// Streams top-k token rows and emits each sample's aggregated nonzeros for
/// the features in `[lo, hi)`.
pub struct SparseAggregator {
    mode: TokenMode,
    n_features: usize,
    lo: usize,
    hi: usize,
    sort: bool,
    /// Sample order and contiguity check.
    pub order: SampleOrder,
    /// The open sample's rows so far.
    carry: Vec<CarryPiece>,
    carry_rows: usize,
    carry_id: Option<i64>,
}

impl SparseAggregator {
    /// Aggregates features `[lo, hi)` of `n_features`; `sort` orders each
    /// sample's emitted features ascending.
    pub fn new(
        n_features: usize,
        lo: usize,
        hi: usize,
        mode: TokenMode,
        sort: bool,
    ) -> CoreResult<Self> {
        if lo > hi || hi > n_features || n_features > u32::MAX as usize {
            return Err(CoreError::input(format!(
                "feature block [{lo}, {hi}) is not inside [0, n_features={n_features})"
            )));
        }
        Ok(Self {
            mode,
            n_features,
            lo,
            hi,
            sort,
            order: SampleOrder::default(),
            carry: Vec::new(),
            carry_rows: 0,
            carry_id: None,
        })
    }

    /// Start of the feature block.
    pub fn lo(&self) -> usize {
        self.lo
    }

    /// End of the feature block.
    pub fn hi(&self) -> usize {
        self.hi
    }

    /// Narrows the feature block to `[lo, hi)` (from the next chunk on).
    pub fn set_hi(&mut self, hi: usize) {
        self.hi = hi.clamp(self.lo, self.hi);
    }

    /// Adds a chunk of token rows; returns the aggregated rows of the samples
    /// it completes (in order, as parts to concatenate). The chunk's last
    /// sample stays open until the next chunk (or [`Self::finish`]).
    pub fn push<I: FeatureIndex>(
        &mut self,
        sample_ids: &[i64],
        indices: &[I],
        values: &[f32],
        k: usize,
    ) -> CoreResult<Vec<SampleRows>> {
        let n = sample_ids.len();
        if indices.len() != n * k || values.len() != n * k {
            return Err(CoreError::input(format!(
                "a chunk has {n} sample_ids but indices has {} and values {} entries (expected {n} x k={k})",
                indices.len(),
                values.len()
            )));
        }
        let runs = self.order.split(sample_ids)?;
        let mut parts = Vec::new();
        if n == 0 {
            return Ok(parts);
        }
        let chunk = CodeRows { indices, values, k };
        let mut rest: &[(usize, usize)] = &runs.runs;
        if self.carry_id.is_some() {
            let mut first = SampleRows::new();
            if runs.continues {
                let (s, e) = rest[0];
                if rest.len() == 1 {
                    return self.append_carry(&chunk, s, e).map(|()| parts);
                }
                self.reduce_carry(Some((&chunk, s, e)), &mut first)?;
                rest = &rest[1..];
            } else {
                self.reduce_carry::<u32>(None, &mut first)?;
            }
            parts.push(first);
        }
        let (&(ls, le), mid) = rest.split_last().expect("a nonempty chunk has a run");
        if !mid.is_empty() {
            // ids of the new samples: the complete runs, then the open last one
            let ids = &self.order.ids[self.order.ids.len() - mid.len() - 1..];
            parts.extend(self.reduce_runs(mid, &ids[..mid.len()], &chunk)?);
        }
        self.carry_id = Some(sample_ids[ls]);
        self.append_carry(&chunk, ls, le)?;
        Ok(parts)
    }

    /// Closes the open sample (end of the stream).
    pub fn finish(&mut self) -> CoreResult<SampleRows> {
        let mut out = SampleRows::new();
        if self.carry_id.is_some() {
            self.reduce_carry::<u32>(None, &mut out)?;
        }
        Ok(out)
    }

    fn append_carry<I: FeatureIndex>(
        &mut self,
        chunk: &CodeRows<'_, I>,
        s: usize,
        e: usize,
    ) -> CoreResult<()> {
        let k = chunk.k;
        let (a, b) = (s * k, e * k);
        let mut idx = Vec::with_capacity(b - a);
        for p in a..b {
            idx.push(check_code(chunk.indices[p], chunk.values[p], p, k, self.n_features)? as u32);
        }
        self.carry
            .push((k, e - s, idx, chunk.values[a..b].to_vec()));
        self.carry_rows += e - s;
        if self.carry_rows > MAX_SAMPLE_ROWS {
            return Err(CoreError::input(format!(
                "a sample has more than {MAX_SAMPLE_ROWS} token rows"
            )));
        }
        Ok(())
    }

    /// Reduces the open sample: its carried rows, then rows `s..e` of `tail`.
    fn reduce_carry<I: FeatureIndex>(
        &mut self,
        tail: Option<(&CodeRows<'_, I>, usize, usize)>,
        out: &mut SampleRows,
    ) -> CoreResult<()> {
        let carry = std::mem::take(&mut self.carry);
        let id = self.carry_id.take().expect("an open sample");
        self.carry_rows = 0;
        match self.mode {
            TokenMode::Max => {
                let mut r = MaxReducer::with_width(self.hi - self.lo);
                self.reduce_segments(&mut r, id, &carry, tail, out)
            }
            TokenMode::Mean => {
                let mut r = MeanReducer::with_width(self.hi - self.lo);
                self.reduce_segments(&mut r, id, &carry, tail, out)
            }
        }
    }

    fn reduce_segments<R: Reducer, I: FeatureIndex>(
        &self,
        red: &mut R,
        id: i64,
        carry: &[CarryPiece],
        tail: Option<(&CodeRows<'_, I>, usize, usize)>,
        out: &mut SampleRows,
    ) -> CoreResult<()> {
        let mut row = 0u32;
        for (k, rows, idx, vals) in carry {
            let seg = CodeRows {
                indices: idx.as_slice(),
                values: vals.as_slice(),
                k: *k,
            };
            row = self.add_rows(red, id, &seg, 0, *rows, row)?;
        }
        if let Some((seg, s, e)) = tail {
            if row as usize + (e - s) > MAX_SAMPLE_ROWS {
                return Err(CoreError::input(format!(
                    "sample {id} has more than {MAX_SAMPLE_ROWS} token rows"
                )));
            }
            row = self.add_rows(red, id, seg, s, e, row)?;
        }
        red.emit(row, self.lo as u32, self.sort, out);
        Ok(())
    }

    /// Adds rows `s..e` of a segment as the sample's rows `row0..`; returns the next row.
    #[inline(always)]
    fn add_rows<R: Reducer, I: FeatureIndex>(
        &self,
        red: &mut R,
        id: i64,
        seg: &CodeRows<'_, I>,
        s: usize,
        e: usize,
        row0: u32,
    ) -> CoreResult<u32> {
        let (lo, hi, k) = (self.lo, self.hi, seg.k);
        let mut row = row0;
        for t in s..e {
            for p in t * k..(t + 1) * k {
                let (idx, v) = (seg.indices[p], seg.values[p]);
                let f = check_code(idx, v, p, k, self.n_features)?;
                if f >= lo && f < hi && !red.add(f - lo, row, v) {
                    return Err(CoreError::input(format!(
                        "indices lists feature {f} twice in one token row of sample {id}"
                    )));
                }
            }
            row += 1;
        }
        Ok(row)
    }

    /// Reduces complete runs in parallel (groups of runs per task, in order).
    fn reduce_runs<I: FeatureIndex>(
        &self,
        runs: &[(usize, usize)],
        ids: &[i64],
        chunk: &CodeRows<'_, I>,
    ) -> CoreResult<Vec<SampleRows>> {
        let groups = (rayon::current_num_threads() * 8).max(1);
        let per = runs.len().div_ceil(groups).max(1);
        let width = self.hi - self.lo;
        macro_rules! run_with {
            ($R:ty) => {
                runs.par_chunks(per)
                    .zip(ids.par_chunks(per))
                    .map_init(
                        || <$R>::with_width(width),
                        |red, (group, gids)| -> CoreResult<SampleRows> {
                            let mut out = SampleRows::new();
                            out.indptr.reserve(group.len());
                            for (&(s, e), &id) in group.iter().zip(gids) {
                                if e - s > MAX_SAMPLE_ROWS {
                                    return Err(CoreError::input(format!(
                                        "sample {id} has more than {MAX_SAMPLE_ROWS} token rows"
                                    )));
                                }
                                let rows = self.add_rows(red, id, chunk, s, e, 0)?;
                                red.emit(rows, self.lo as u32, self.sort, &mut out);
                            }
                            Ok(out)
                        },
                    )
                    .collect::<CoreResult<Vec<_>>>()
            };
        }
        match self.mode {
            TokenMode::Max => run_with!(MaxReducer),
            TokenMode::Mean => run_with!(MeanReducer),
        }
    }
}
