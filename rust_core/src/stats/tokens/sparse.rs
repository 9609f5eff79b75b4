//! Per-sample max / mean of top-k token codes (`indices[n, k]`,
//! `values[n, k]`), streamed chunk by chunk; see [`super`] for the sample
//! order and the carry of a sample across chunks.

use rayon::prelude::*;

use super::reduce::{MaxReducer, MeanReducer, Reducer};
use super::{SampleOrder, SampleRows, TokenMode, MAX_SAMPLE_ROWS};
use crate::error::{CoreError, CoreResult};
use crate::stats::sparse::FeatureIndex;

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
