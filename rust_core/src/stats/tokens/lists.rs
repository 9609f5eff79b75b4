//! Per-feature lists of `(value, sample)` keys, filled as aggregated samples
//! stream in, then scored like [`crate::stats::sparse`]'s buckets.
//!
//! 8 bytes per sample-level nonzero (plus at most half of that in growth
//! slack: lists grow by 1.5x), no intermediate triplets. Keys arrive in
//! sample order, so each list is already in the row order the stable radix
//! sort needs for results identical to [`crate::stats::sparse::score_sparse`].
//! [`FeatureLists::fit_budget`] drops the highest features of the block when
//! the lists, projected to the whole stream, would not fit a memory budget:
//! those features are scored by a later pass.

use rayon::prelude::*;

use super::SampleRows;
use crate::error::{CoreError, CoreResult};
use crate::stats::labels::LabelIndex;
use crate::stats::scores::Scores;
use crate::stats::sparse::score_slices;
use crate::stats::walk::{pack, ScoreOptions};

/// The keys of features `[lo, lo + lists.len())`.
pub struct FeatureLists {
    lo: usize,
    lists: Vec<Vec<u64>>,
    n_rows: u64,
    bytes: usize,
}

#[inline(always)]
fn push(list: &mut Vec<u64>, key: u64) {
    if list.len() == list.capacity() {
        list.reserve_exact((list.capacity() / 2).max(8));
    }
    list.push(key);
}

impl FeatureLists {
    /// Empty lists for features `[lo, hi)`.
    pub fn new(lo: usize, hi: usize) -> Self {
        Self {
            lo,
            lists: (lo..hi).map(|_| Vec::new()).collect(),
            n_rows: 0,
            bytes: 0,
        }
    }

    /// End of the feature block.
    pub fn hi(&self) -> usize {
        self.lo + self.lists.len()
    }

    /// Samples added so far.
    pub fn n_rows(&self) -> u64 {
        self.n_rows
    }

    /// Bytes held by the lists (capacity, not length).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds aggregated samples (numbered on from the samples already added).
    /// Entries of features outside the block are skipped.
    pub fn add(&mut self, parts: &[SampleRows]) -> CoreResult<()> {
        let n_new: usize = parts.iter().map(SampleRows::n_samples).sum();
        if self.n_rows + n_new as u64 > u64::from(u32::MAX) {
            return Err(CoreError::input(
                "more than 2^32 - 1 samples: score in sample blocks",
            ));
        }
        let base = self.n_rows as u32;
        let (lo, hi) = (self.lo, self.hi());
        let n_parts = rayon::current_num_threads().max(1);
        let per = self.lists.len().div_ceil(n_parts).max(1);
        self.lists
            .par_chunks_mut(per)
            .enumerate()
            .for_each(|(pi, lists)| {
                let flo = lo + pi * per;
                let fhi = (flo + lists.len()).min(hi);
                let mut row = base;
                for p in parts {
                    for s in 0..p.n_samples() {
                        let (a, b) = (p.indptr[s] as usize, p.indptr[s + 1] as usize);
                        for (&f, &v) in p.features[a..b].iter().zip(&p.values[a..b]) {
                            let f = f as usize;
                            if f >= flo && f < fhi {
                                push(&mut lists[f - flo], pack(v, row));
                            }
                        }
                        row += 1;
                    }
                }
            });
        self.n_rows += n_new as u64;
        self.bytes = self.lists.iter().map(|l| l.capacity() * 8).sum();
        Ok(())
    }

    /// If the lists, projected from the samples added so far to `n_total`
    /// samples, exceed `budget` bytes, keeps only the lowest features whose
    /// projection fits 80% of it (at least one) and returns the new end of
    /// the block. Projections wait for 1/64 of the samples or 1/8 of the budget.
    pub fn fit_budget(&mut self, budget: usize, n_total: u64) -> Option<usize> {
        if self.n_rows == 0 || self.lists.len() <= 1 {
            return None;
        }
        let factor = (n_total as f64 / self.n_rows as f64).max(1.0);
        let projected = self.bytes as f64 * factor;
        let early = self.n_rows * 64 < n_total && self.bytes < budget / 8;
        if projected <= budget as f64 || early {
            return None;
        }
        let target = 0.8 * budget as f64 / factor;
        let mut acc = 0f64;
        let mut keep = 0;
        for l in &self.lists {
            acc += (l.capacity() * 8) as f64;
            if acc > target && keep > 0 {
                break;
            }
            keep += 1;
        }
        if keep >= self.lists.len() {
            return None;
        }
        self.lists.truncate(keep);
        self.lists.shrink_to_fit();
        self.bytes = self.lists.iter().map(|l| l.capacity() * 8).sum();
        Some(self.hi())
    }

    /// Scores the block's features against `labels` (one row per sample added).
    pub fn score(mut self, labels: &LabelIndex, opts: &ScoreOptions) -> CoreResult<Scores> {
        if labels.n_rows as u64 != self.n_rows {
            return Err(CoreError::input(format!(
                "labels has {} rows but the chunks hold {} samples",
                labels.n_rows, self.n_rows
            )));
        }
        let slices: Vec<&mut [u64]> = self.lists.iter_mut().map(|l| l.as_mut_slice()).collect();
        Ok(score_slices(slices, labels, opts))
    }
}
