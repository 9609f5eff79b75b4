//! Exact AUROC and selectivity statistics from sparse (top-k) codes.
//!
//! Two passes over the codes bucket the nonzeros by feature (a counting sort:
//! per-block counts, then a parallel scatter into one `u64` key array of
//! `(value, row)`), then each feature's bucket is sorted and walked
//! ([`super::walk::score_unit`]) with the `N − nnz` zeros as one tie group.
//! Extra memory: 8 bytes per nonzero plus the output tables.

use rayon::prelude::*;

use super::labels::LabelIndex;
use super::radix::sort_by_value;
use super::scores::Scores;
use super::walk::{pack, score_unit, ScoreOptions, Scratch};
use crate::error::{CoreError, CoreResult};

/// Integer types accepted as feature indices.
pub trait FeatureIndex: Copy + Send + Sync {
    /// The index as `i64` (for range checks).
    fn as_i64(self) -> i64;
}

macro_rules! feature_index {
    ($($t:ty),*) => {$(
        impl FeatureIndex for $t {
            #[inline]
            fn as_i64(self) -> i64 {
                self as i64
            }
        }
    )*};
}
feature_index!(i16, i32, i64, u16, u32);

/// Where the row of each stored entry comes from.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    /// Entries are `[N, k]` row-major: entry `e` is in row `e / k`.
    Dense(usize),
    /// Entry `e` is in row `rows[e]` (COO triplets; one row's entries need not be adjacent).
    Explicit(&'a [i64]),
}

struct SendPtr(*mut u64);
// SAFETY: the scatter writes each key slot from exactly one block.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// The nonzeros of every feature, as sorted-per-feature-ready keys.
pub struct Buckets {
    /// `(value, row)` keys, grouped by feature.
    pub keys: Vec<u64>,
    /// `offsets[f]..offsets[f+1]` is feature `f`'s range in `keys`.
    pub offsets: Vec<usize>,
}

fn check_entry<I: FeatureIndex>(idx: I, v: f32, e: usize, n_features: usize) -> CoreResult<()> {
    let f = idx.as_i64();
    if f < 0 || f as u64 >= n_features as u64 {
        return Err(CoreError::input(format!(
            "indices has value {f} at flat position {e}, outside [0, n_features={n_features})"
        )));
    }
    if v.is_nan() {
        return Err(CoreError::input(format!(
            "values has NaN at flat position {e}"
        )));
    }
    Ok(())
}

/// Buckets the nonzero entries by feature. Entries with value 0 are dropped
/// (they belong to the zero tie group).
pub fn bucket<I: FeatureIndex>(
    indices: &[I],
    values: &[f32],
    rows: Rows<'_>,
    n_rows: usize,
    n_features: usize,
) -> CoreResult<Buckets> {
    if indices.len() != values.len() {
        return Err(CoreError::input(format!(
            "indices has {} entries but values has {}",
            indices.len(),
            values.len()
        )));
    }
    if n_rows > u32::MAX as usize {
        return Err(CoreError::input(format!(
            "{n_rows} rows is more than the 2^32 - 1 a scoring pass supports; score in row blocks"
        )));
    }
    let len = indices.len();
    let row_of = |e: usize| -> i64 {
        match rows {
            Rows::Dense(k) => (e / k) as i64,
            Rows::Explicit(r) => r[e],
        }
    };
    // blocks of whole rows for [N, k] codes (the duplicate check needs them)
    let k = match rows {
        Rows::Dense(k) => k.max(1),
        Rows::Explicit(r) => {
            if r.len() != len {
                return Err(CoreError::input(format!(
                    "rows has {} entries but indices has {len}",
                    r.len()
                )));
            }
            1
        }
    };
    let target_blocks = (rayon::current_num_threads() * 4).max(1);
    let block_len = (len.div_ceil(target_blocks)).div_ceil(k).max(1) * k;
    let ranges: Vec<(usize, usize)> = (0..len)
        .step_by(block_len.max(1))
        .map(|lo| (lo, (lo + block_len).min(len)))
        .collect();
    let check_dups = matches!(rows, Rows::Dense(_));
    let counts: Vec<Vec<u32>> = ranges
        .par_iter()
        .map(|&(lo, hi)| -> CoreResult<Vec<u32>> {
            let mut counts = vec![0u32; n_features];
            let mut stamp: Vec<u32> = if check_dups {
                vec![u32::MAX; n_features]
            } else {
                Vec::new()
            };
            for e in lo..hi {
                let (idx, v) = (indices[e], values[e]);
                check_entry(idx, v, e, n_features)?;
                let f = idx.as_i64() as usize;
                let row = row_of(e);
                if row < 0 || row as u64 >= n_rows as u64 {
                    return Err(CoreError::input(format!(
                        "rows has value {row} at position {e}, outside [0, {n_rows})"
                    )));
                }
                if check_dups {
                    if stamp[f] == row as u32 {
                        return Err(CoreError::input(format!(
                            "indices lists feature {f} twice in row {row}"
                        )));
                    }
                    stamp[f] = row as u32;
                }
                if v != 0.0 {
                    counts[f] += 1;
                }
            }
            Ok(counts)
        })
        .collect::<CoreResult<_>>()?;
    // feature offsets, then each block's write cursor per feature
    let mut offsets = Vec::with_capacity(n_features + 1);
    offsets.push(0usize);
    let mut acc = 0usize;
    for f in 0..n_features {
        acc += counts.iter().map(|c| c[f] as usize).sum::<usize>();
        offsets.push(acc);
    }
    let nnz = acc;
    let mut cursors: Vec<Vec<usize>> = Vec::with_capacity(counts.len());
    let mut running: Vec<usize> = offsets[..n_features].to_vec();
    for c in &counts {
        cursors.push(running.clone());
        running
            .iter_mut()
            .zip(c)
            .for_each(|(r, &n)| *r += n as usize);
    }
    drop(counts);
    let mut keys: Vec<u64> = Vec::with_capacity(nnz);
    let ptr = SendPtr(keys.as_mut_ptr());
    ranges
        .par_iter()
        .zip(cursors.par_iter_mut())
        .for_each(|(&(lo, hi), cursor)| {
            let p = &ptr;
            for e in lo..hi {
                let v = values[e];
                if v != 0.0 {
                    let f = indices[e].as_i64() as usize;
                    // SAFETY: cursor[f] stays within this block's disjoint slots of
                    // feature f, all < nnz = capacity; every slot is written once.
                    unsafe { p.0.add(cursor[f]).write(pack(v, row_of(e) as u32)) };
                    cursor[f] += 1;
                }
            }
        });
    // SAFETY: the scatter above initialised all nnz slots.
    unsafe { keys.set_len(nnz) };
    Ok(Buckets { keys, offsets })
}

/// Scores already-bucketed features: sorts each bucket and walks it.
pub fn score_buckets(
    mut buckets: Buckets,
    labels: &LabelIndex,
    n_features: usize,
    opts: &ScoreOptions,
) -> Scores {
    let mut slices: Vec<&mut [u64]> = Vec::with_capacity(n_features);
    let mut rest: &mut [u64] = &mut buckets.keys;
    for f in 0..n_features {
        let (a, b) = rest.split_at_mut(buckets.offsets[f + 1] - buckets.offsets[f]);
        slices.push(a);
        rest = b;
    }
    score_slices(slices, labels, opts)
}

/// Scores one unit per slice of `(value, row)` keys (each in row order, not
/// yet sorted by value; the rows not listed are zeros): sorts and walks each.
pub fn score_slices(slices: Vec<&mut [u64]>, labels: &LabelIndex, opts: &ScoreOptions) -> Scores {
    let n = labels.n_rows;
    let c = labels.n_concepts;
    let mut scores = Scores::alloc(slices.len(), c, n, opts);
    {
        let rows = scores.rows_mut();
        slices
            .into_par_iter()
            .zip(rows)
            .with_min_len(64)
            .for_each_init(
                || (Scratch::new(c, opts), Vec::<u64>::new()),
                |(scratch, tmp), (keys, out)| {
                    sort_by_value(keys, tmp);
                    let n_zero = (n - keys.len()) as u64;
                    score_unit(keys, n_zero, labels, opts, scratch, out);
                },
            );
    }
    scores.n_pos = labels.n_pos.clone();
    scores
}

fn check_labels(labels: &LabelIndex, n_rows: usize) -> CoreResult<()> {
    if labels.n_rows != n_rows {
        return Err(CoreError::input(format!(
            "labels has {} rows but the codes have {n_rows}",
            labels.n_rows
        )));
    }
    Ok(())
}

/// Scores `[n_rows, k]` top-k codes against `labels` (n_rows rows).
#[allow(clippy::too_many_arguments)]
pub fn score_sparse<I: FeatureIndex>(
    indices: &[I],
    values: &[f32],
    n_rows: usize,
    k: usize,
    labels: &LabelIndex,
    n_features: usize,
    opts: &ScoreOptions,
) -> CoreResult<Scores> {
    if indices.len() != n_rows * k {
        return Err(CoreError::input(format!(
            "indices has {} entries, expected {n_rows} rows x k={k}",
            indices.len()
        )));
    }
    check_labels(labels, n_rows)?;
    let buckets = bucket(indices, values, Rows::Dense(k), n_rows, n_features)?;
    Ok(score_buckets(buckets, labels, n_features, opts))
}

/// Scores COO triplets `(rows[e], indices[e], values[e])` over `labels.n_rows` rows.
/// A `(row, feature)` pair must not repeat.
pub fn score_sparse_coo<I: FeatureIndex>(
    rows: &[i64],
    indices: &[I],
    values: &[f32],
    labels: &LabelIndex,
    n_features: usize,
    opts: &ScoreOptions,
) -> CoreResult<Scores> {
    let buckets = bucket(
        indices,
        values,
        Rows::Explicit(rows),
        labels.n_rows,
        n_features,
    )?;
    Ok(score_buckets(buckets, labels, n_features, opts))
}
