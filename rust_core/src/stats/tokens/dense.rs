//! Per-sample max / mean of dense token rows (`x[n, d]`, e.g. a block's
//! residual at every patch), streamed chunk by chunk; see [`super`]
//! for the sample order and the carry of a sample across chunks.

use rayon::prelude::*;

use super::{SampleOrder, TokenMode, MAX_SAMPLE_ROWS};
use crate::error::{CoreError, CoreResult};

/// Streams dense token rows and emits each sample's aggregate of columns `[lo, hi)`.
pub struct DenseAggregator {
    mode: TokenMode,
    lo: usize,
    hi: usize,
    d: Option<usize>,
    /// Sample order and contiguity check.
    pub order: SampleOrder,
    /// The open sample's rows so far (columns `lo..hi` only).
    carry: Vec<f32>,
    carry_id: Option<i64>,
}

/// Reduces `rows` (each `w` wide) of sample `id` into `out`; `acc` is scratch.
fn reduce_rows<'a>(
    mode: TokenMode,
    id: i64,
    mut rows: impl Iterator<Item = &'a [f32]>,
    n_rows: usize,
    acc: &mut Vec<f64>,
    out: &mut [f32],
) -> CoreResult<()> {
    let nan = || CoreError::input(format!("x has NaN in a token row of sample {id}"));
    let first = rows.next().expect("a sample has a row");
    let mut has_nan = first.iter().fold(false, |a, v| a | v.is_nan());
    match mode {
        TokenMode::Max => {
            out.copy_from_slice(first);
            for r in rows {
                for (o, &v) in out.iter_mut().zip(r) {
                    has_nan |= v.is_nan();
                    *o = if v > *o { v } else { *o };
                }
            }
        }
        TokenMode::Mean => {
            acc.clear();
            acc.extend(first.iter().map(|&v| f64::from(v)));
            for r in rows {
                for (a, &v) in acc.iter_mut().zip(r) {
                    has_nan |= v.is_nan();
                    *a += f64::from(v);
                }
            }
            let n = n_rows as f64;
            for (o, &a) in out.iter_mut().zip(acc.iter()) {
                *o = (a / n) as f32;
            }
        }
    }
    if has_nan {
        return Err(nan());
    }
    Ok(())
}

/// The aggregated columns `lo..lo + w` of rows `d` wide.
#[derive(Clone, Copy)]
struct Columns {
    lo: usize,
    w: usize,
    d: usize,
}

impl Columns {
    /// The aggregated columns of token rows `s..e` of `x`.
    #[inline]
    fn rows(self, x: &[f32], s: usize, e: usize) -> impl Iterator<Item = &[f32]> + '_ {
        (s..e).map(move |t| &x[t * self.d + self.lo..t * self.d + self.lo + self.w])
    }
}

impl DenseAggregator {
    /// Aggregates columns `[lo, hi)` (`hi` is clipped to the width of the rows).
    pub fn new(lo: usize, hi: usize, mode: TokenMode) -> Self {
        Self {
            mode,
            lo,
            hi,
            d: None,
            order: SampleOrder::default(),
            carry: Vec::new(),
            carry_id: None,
        }
    }

    /// Width of the rows (known after the first nonempty chunk).
    pub fn d(&self) -> Option<usize> {
        self.d
    }

    /// Number of aggregated columns, `hi - lo` (0 before the first chunk).
    pub fn width(&self) -> usize {
        self.d.map_or(0, |_| self.hi - self.lo)
    }

    /// Adds a chunk `x[n, d]`; returns the aggregated `[samples, hi - lo]`
    /// rows of the samples it completes, in order.
    pub fn push(&mut self, sample_ids: &[i64], x: &[f32], d: usize) -> CoreResult<Vec<f32>> {
        let n = sample_ids.len();
        if x.len() != n * d {
            return Err(CoreError::input(format!(
                "a chunk has {n} sample_ids but x has {} elements (expected {n} x d={d})",
                x.len()
            )));
        }
        self.set_width(d)?;
        let runs = self.order.split(sample_ids)?;
        let mut out = Vec::new();
        if n == 0 {
            return Ok(out);
        }
        let cols = Columns {
            lo: self.lo,
            w: self.hi - self.lo,
            d,
        };
        let mut rest: &[(usize, usize)] = &runs.runs;
        if let Some(id) = self.carry_id {
            out.resize(cols.w, 0.0);
            if !self.close_carry(id, x, cols, runs.continues, rest, &mut out)? {
                return Ok(Vec::new());
            }
            if runs.continues {
                rest = &rest[1..];
            }
        }
        let (&(ls, le), mid) = rest.split_last().expect("a nonempty chunk has a run");
        if !mid.is_empty() && cols.w > 0 {
            self.reduce_runs(x, cols, mid, &mut out)?;
        }
        self.carry_id = Some(sample_ids[ls]);
        self.append_carry(sample_ids[ls], cols.rows(x, ls, le), le - ls)?;
        Ok(out)
    }

    /// Fixes the row width at the first chunk (clipping `hi` to it); later
    /// chunks must have the same width.
    fn set_width(&mut self, d: usize) -> CoreResult<()> {
        match self.d {
            None => {
                if self.lo > d {
                    return Err(CoreError::input(format!(
                        "column block starts at {} but x has d={d} columns",
                        self.lo
                    )));
                }
                self.hi = self.hi.min(d);
                self.d = Some(d);
            }
            Some(d0) if d0 != d => {
                return Err(CoreError::input(format!(
                    "x has d={d} columns in this chunk but d={d0} in earlier chunks"
                )));
            }
            Some(_) => {}
        }
        Ok(())
    }

    /// Closes the open sample `id` carried from earlier chunks into `out`
    /// (its first row): its carried rows, then the chunk's first run where
    /// it `continues` there. Returns `false`, closing nothing, when the chunk
    /// is that one run (the sample stays open, its rows carried).
    fn close_carry(
        &mut self,
        id: i64,
        x: &[f32],
        cols: Columns,
        continues: bool,
        runs: &[(usize, usize)],
        out: &mut [f32],
    ) -> CoreResult<bool> {
        let w = cols.w;
        let mut carry = std::mem::take(&mut self.carry);
        let carried = carry.len() / w.max(1);
        let mut acc = Vec::new();
        if continues {
            let (s, e) = runs[0];
            if runs.len() == 1 {
                self.carry = carry;
                self.append_carry(id, cols.rows(x, s, e), e - s)?;
                return Ok(false);
            }
            let rows = carry
                .chunks_exact(w.max(1))
                .take(carried)
                .chain(cols.rows(x, s, e));
            let n_rows = if w == 0 { 0 } else { carried } + e - s;
            self.check_rows(id, n_rows)?;
            if w > 0 {
                reduce_rows(self.mode, id, rows, n_rows, &mut acc, out)?;
            }
        } else if w > 0 {
            let rows = carry.chunks_exact(w);
            reduce_rows(self.mode, id, rows, carried, &mut acc, out)?;
        }
        carry.clear();
        self.carry = carry;
        self.carry_id = None;
        Ok(true)
    }

    /// Reduces the complete runs `mid` (the chunk's new samples but the
    /// last) in parallel, appending their rows to `out`.
    fn reduce_runs(
        &self,
        x: &[f32],
        cols: Columns,
        mid: &[(usize, usize)],
        out: &mut Vec<f32>,
    ) -> CoreResult<()> {
        let w = cols.w;
        let ids = &self.order.ids[self.order.ids.len() - mid.len() - 1..];
        let base = out.len();
        out.resize(base + mid.len() * w, 0.0);
        let mode = self.mode;
        out[base..]
            .par_chunks_mut(w)
            .zip(mid.par_iter().zip(ids.par_iter()))
            .try_for_each_init(Vec::new, |acc, (o, (&(s, e), &id))| {
                reduce_rows(mode, id, cols.rows(x, s, e), e - s, acc, o)
            })
    }

    fn check_rows(&self, id: i64, n_rows: usize) -> CoreResult<()> {
        if n_rows > MAX_SAMPLE_ROWS {
            return Err(CoreError::input(format!(
                "sample {id} has more than {MAX_SAMPLE_ROWS} token rows"
            )));
        }
        Ok(())
    }

    fn append_carry<'a>(
        &mut self,
        id: i64,
        rows: impl Iterator<Item = &'a [f32]>,
        n_rows: usize,
    ) -> CoreResult<()> {
        let w = self.hi - self.lo;
        self.check_rows(id, self.carry.len() / w.max(1) + n_rows)?;
        for r in rows {
            self.carry.extend_from_slice(r);
        }
        Ok(())
    }

    /// Closes the open sample (end of the stream): its aggregated row (empty if none).
    pub fn finish(&mut self) -> CoreResult<Vec<f32>> {
        let w = self.hi - self.lo;
        let mut out = Vec::new();
        if let Some(id) = self.carry_id.take() {
            out.resize(w, 0.0);
            if let Some(carried) = self.carry.len().checked_div(w) {
                let mut acc = Vec::new();
                reduce_rows(
                    self.mode,
                    id,
                    self.carry.chunks_exact(w),
                    carried,
                    &mut acc,
                    &mut out,
                )?;
            }
            self.carry.clear();
        }
        Ok(out)
    }
}
