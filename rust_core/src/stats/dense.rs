//! Exact AUROC and selectivity statistics for dense units (`scores[N, F]`,
//! e.g. MLP neurons or head norms): one sort per unit, all concepts in the
//! same walk. Units are processed in blocks of 16 columns so that reading
//! the row-major matrix stays cache friendly.

use rayon::prelude::*;

use super::labels::LabelIndex;
use super::radix::sort_by_value;
use super::scores::Scores;
use super::walk::{pack, score_unit, ScoreOptions, Scratch};
use crate::error::{CoreError, CoreResult};

const BLOCK: usize = 16;

/// Scores every column of the row-major `scores[n_rows, n_units]` against `labels`.
pub fn score_dense(
    scores: &[f32],
    n_units: usize,
    labels: &LabelIndex,
    opts: &ScoreOptions,
) -> CoreResult<Scores> {
    let n = labels.n_rows;
    if scores.len() != n * n_units {
        return Err(CoreError::input(format!(
            "scores has {} elements, expected labels' {n} rows x {n_units} units",
            scores.len()
        )));
    }
    if n > u32::MAX as usize {
        return Err(CoreError::input(format!(
            "{n} rows is more than the 2^32 - 1 a scoring pass supports"
        )));
    }
    // a branch-free fold per chunk vectorises; the position is only searched on failure
    let has_nan = scores
        .par_chunks(1 << 16)
        .any(|c| c.iter().fold(false, |acc, v| acc | v.is_nan()));
    if let Some(pos) = has_nan
        .then(|| scores.iter().position(|v| v.is_nan()))
        .flatten()
    {
        return Err(CoreError::input(format!(
            "scores has NaN at row {}, column {}",
            pos / n_units.max(1),
            pos % n_units.max(1)
        )));
    }
    let c = labels.n_concepts;
    let mut out = Scores::alloc(n_units, c, n, opts);
    {
        let mut rows = out.rows_mut();
        let mut blocks: Vec<(usize, Vec<_>)> = Vec::new();
        let mut start = 0;
        while !rows.is_empty() {
            let take = BLOCK.min(rows.len());
            let rest = rows.split_off(take);
            blocks.push((start, rows));
            rows = rest;
            start += take;
        }
        blocks.into_par_iter().for_each_init(
            || {
                (
                    Scratch::new(c, opts),
                    (0..BLOCK)
                        .map(|_| Vec::<u64>::with_capacity(n))
                        .collect::<Vec<_>>(),
                    Vec::<u64>::new(),
                )
            },
            |(scratch, bufs, tmp), (j0, outs)| {
                let w = outs.len();
                for b in bufs.iter_mut().take(w) {
                    b.clear();
                }
                for r in 0..n {
                    let row = &scores[r * n_units + j0..r * n_units + j0 + w];
                    for (b, &v) in bufs.iter_mut().zip(row) {
                        b.push(pack(v, r as u32));
                    }
                }
                for (b, o) in bufs.iter_mut().zip(outs) {
                    sort_by_value(b, tmp);
                    score_unit(b, 0, labels, opts, scratch, o);
                }
            },
        );
    }
    out.n_pos = labels.n_pos.clone();
    Ok(out)
}
