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
    let k = check_lengths(indices.len(), values.len(), rows, n_rows)?;
    let ranges = block_ranges(indices.len(), k);
    let counts: Vec<Vec<u32>> = ranges
        .par_iter()
        .map(|&(lo, hi)| count_block(indices, values, rows, (lo, hi), n_rows, n_features))
        .collect::<CoreResult<_>>()?;
    let (offsets, cursors) = feature_offsets(counts, n_features);
    let keys = scatter(indices, values, rows, &ranges, cursors, offsets[n_features]);
    Ok(Buckets { keys, offsets })
}

impl Rows<'_> {
    /// The row of entry `e`.
    #[inline]
    fn row_of(self, e: usize) -> i64 {
        match self {
            Rows::Dense(k) => (e / k) as i64,
            Rows::Explicit(r) => r[e],
        }
    }
}

/// Checks that the inputs agree in length and that the rows fit a scoring
/// pass; returns the entries per block unit (`k` for `[N, k]` codes, whose
/// blocks must hold whole rows for the duplicate check; 1 for COO).
fn check_lengths(len: usize, n_values: usize, rows: Rows<'_>, n_rows: usize) -> CoreResult<usize> {
    if len != n_values {
        return Err(CoreError::input(format!(
            "indices has {len} entries but values has {n_values}"
        )));
    }
    if n_rows > u32::MAX as usize {
        return Err(CoreError::input(format!(
            "{n_rows} rows is more than the 2^32 - 1 a scoring pass supports; score in row blocks"
        )));
    }
    match rows {
        Rows::Dense(k) => Ok(k.max(1)),
        Rows::Explicit(r) if r.len() != len => Err(CoreError::input(format!(
            "rows has {} entries but indices has {len}",
            r.len()
        ))),
        Rows::Explicit(_) => Ok(1),
    }
}

/// `[lo, hi)` entry ranges of about 4 blocks per thread, each a multiple of `k` entries.
fn block_ranges(len: usize, k: usize) -> Vec<(usize, usize)> {
    let target_blocks = (rayon::current_num_threads() * 4).max(1);
    let block_len = (len.div_ceil(target_blocks)).div_ceil(k).max(1) * k;
    (0..len)
        .step_by(block_len.max(1))
        .map(|lo| (lo, (lo + block_len).min(len)))
        .collect()
}

/// Checks the entries `lo..hi` (range, NaN, row; for `[N, k]` codes a
/// feature repeated in a row) and counts the nonzeros per feature.
fn count_block<I: FeatureIndex>(
    indices: &[I],
    values: &[f32],
    rows: Rows<'_>,
    (lo, hi): (usize, usize),
    n_rows: usize,
    n_features: usize,
) -> CoreResult<Vec<u32>> {
    let check_dups = matches!(rows, Rows::Dense(_));
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
        let row = rows.row_of(e);
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
}

/// Feature offsets into the key array (`offsets[n_features]` is the number
/// of nonzeros), then each block's write cursor per feature.
fn feature_offsets(counts: Vec<Vec<u32>>, n_features: usize) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut offsets = Vec::with_capacity(n_features + 1);
    offsets.push(0usize);
    let mut acc = 0usize;
    for f in 0..n_features {
        acc += counts.iter().map(|c| c[f] as usize).sum::<usize>();
        offsets.push(acc);
    }
    let mut cursors: Vec<Vec<usize>> = Vec::with_capacity(counts.len());
    let mut running: Vec<usize> = offsets[..n_features].to_vec();
    for c in &counts {
        cursors.push(running.clone());
        running
            .iter_mut()
            .zip(c)
            .for_each(|(r, &n)| *r += n as usize);
    }
    (offsets, cursors)
}

/// Writes each nonzero's `(value, row)` key at its block's cursor for its
/// feature, the blocks in parallel.
fn scatter<I: FeatureIndex>(
    indices: &[I],
    values: &[f32],
    rows: Rows<'_>,
    ranges: &[(usize, usize)],
    mut cursors: Vec<Vec<usize>>,
    nnz: usize,
) -> Vec<u64> {
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
                    unsafe { p.0.add(cursor[f]).write(pack(v, rows.row_of(e) as u32)) };
                    cursor[f] += 1;
                }
            }
        });
    // SAFETY: the scatter above initialised all nnz slots.
    unsafe { keys.set_len(nnz) };
    keys
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
