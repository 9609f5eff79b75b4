//! The output tables of a scoring run: one row per unit, one column per concept.

use super::walk::{RowOut, ScoreOptions};

/// Every table a scoring run produces. Tables that were not requested
/// (see [`ScoreOptions`]) are empty.
#[derive(Debug, Clone)]
pub struct Scores {
    /// Number of units (features or neurons): the rows of every table.
    pub n_units: usize,
    /// Number of concepts: the columns of every `[units, concepts]` table.
    pub n_concepts: usize,
    /// Number of samples scored.
    pub n_rows: usize,
    /// Kept activations per unit in `top_rows` / `top_values`.
    pub top_n: usize,
    /// Exact AUROC `[units, concepts]`; NaN where a class is empty.
    pub auroc: Vec<f64>,
    /// DeLong standard error `[units, concepts]` (`with_se`).
    pub se: Vec<f64>,
    /// Positives with activation > 0 `[units, concepts]` (`stats`).
    pub pos_firing: Vec<u32>,
    /// Mean activation over positives, zeros included `[units, concepts]` (`stats`).
    pub mean_pos: Vec<f32>,
    /// Mean activation over negatives, zeros included `[units, concepts]` (`stats`).
    pub mean_neg: Vec<f32>,
    /// Fraction of positives among the unit's top `top_n` activations (`stats`, `top_n > 0`).
    pub precision: Vec<f32>,
    /// Rows with activation > 0 per unit `[units]`.
    pub firing: Vec<u64>,
    /// Tie term `Σ (t³ − t)` over the unit's tie groups (zeros included) `[units]`,
    /// for the tie-corrected variance of U under the null.
    pub ties: Vec<f64>,
    /// Rows of the top activations `[units, top_n]`, -1 past the stored ones.
    pub top_rows: Vec<i64>,
    /// Values of the top activations `[units, top_n]`, NaN past the stored ones.
    pub top_values: Vec<f32>,
    /// Positives per concept `[concepts]`.
    pub n_pos: Vec<u64>,
}

fn split<T>(v: &mut [T], width: usize, n: usize) -> Vec<&mut [T]> {
    if v.is_empty() || width == 0 {
        (0..n).map(|_| <&mut [T]>::default()).collect()
    } else {
        v.chunks_mut(width).collect()
    }
}

impl Scores {
    /// Allocates the tables requested by `opts`.
    pub fn alloc(n_units: usize, n_concepts: usize, n_rows: usize, opts: &ScoreOptions) -> Self {
        let uc = n_units * n_concepts;
        let s = if opts.stats { uc } else { 0 };
        let p = if opts.stats && opts.top_n > 0 { uc } else { 0 };
        Self {
            n_units,
            n_concepts,
            n_rows,
            top_n: opts.top_n,
            auroc: vec![f64::NAN; uc],
            se: vec![f64::NAN; if opts.with_se { uc } else { 0 }],
            pos_firing: vec![0; s],
            mean_pos: vec![f32::NAN; s],
            mean_neg: vec![f32::NAN; s],
            precision: vec![f32::NAN; p],
            firing: vec![0; n_units],
            ties: vec![0.0; n_units],
            top_rows: vec![-1; n_units * opts.top_n],
            top_values: vec![f32::NAN; n_units * opts.top_n],
            n_pos: Vec::new(),
        }
    }

    /// One [`RowOut`] per unit, borrowing disjoint rows of every table.
    pub fn rows_mut(&mut self) -> Vec<RowOut<'_>> {
        let (n, c, t) = (self.n_units, self.n_concepts, self.top_n);
        let auroc = split(&mut self.auroc, c, n);
        let se = split(&mut self.se, c, n);
        let pos_firing = split(&mut self.pos_firing, c, n);
        let mean_pos = split(&mut self.mean_pos, c, n);
        let mean_neg = split(&mut self.mean_neg, c, n);
        let precision = split(&mut self.precision, c, n);
        let top_rows = split(&mut self.top_rows, t, n);
        let top_values = split(&mut self.top_values, t, n);
        auroc
            .into_iter()
            .zip(se)
            .zip(pos_firing)
            .zip(mean_pos)
            .zip(mean_neg)
            .zip(precision)
            .zip(top_rows)
            .zip(top_values)
            .zip(self.firing.iter_mut())
            .zip(self.ties.iter_mut())
            .map(
                |(
                    (
                        (
                            (
                                (((((auroc, se), pos_firing), mean_pos), mean_neg), precision),
                                top_rows,
                            ),
                            top_values,
                        ),
                        firing,
                    ),
                    ties,
                )| RowOut {
                    auroc,
                    se,
                    pos_firing,
                    mean_pos,
                    mean_neg,
                    precision,
                    top_rows,
                    top_values,
                    firing,
                    ties,
                },
            )
            .collect()
    }
}
