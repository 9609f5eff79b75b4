//! A shared dictionary's per-feature statistics over matched pairs in one call:
//! both modalities' exact AUROC tables (the scorer of [`super::sparse`]) and the
//! matched-pair moments of [`super::pairs`], read off the scorer's own buckets.
//!
//! The scorer buckets each modality's nonzeros by feature, and the scatter leaves
//! every bucket in row (pair) order. Before the buckets are sorted by value, one
//! merge of feature f's image bucket with its text bucket finds the pairs where f
//! fires on both sides; the moment sums need nothing else (a pair where f is silent
//! on both sides adds 0 to every sum, a pair where it fires on one side adds only
//! that side's 4 one-sided monomials). So the moments cost one sequential read of
//! the keys, not a second pass over the codes with feature-sized scratch tables,
//! and each feature's sums are added in pair order: the result depends neither on
//! the thread count nor on how the pairs were chunked.

use std::cmp::Ordering;

use rayon::prelude::*;

use super::labels::LabelIndex;
use super::pairs::{add_moments, add_one_side, check_codes, Codes, IMAGE_COLS, M, TEXT_COLS};
use super::scores::Scores;
use super::sparse::{bucket, score_buckets, Buckets, FeatureIndex, Rows};
use super::walk::{from_order_bits, ScoreOptions};
use crate::error::{CoreError, CoreResult};

/// Both modalities' scores and the pairs' moments.
pub struct SharedScores {
    /// Image codes against the image labels.
    pub image: Scores,
    /// Text codes against the text labels.
    pub text: Scores,
    /// Moment sums `[n_features][14]`, columns in [`super::pairs::MOMENTS`] order.
    pub moments: Vec<f64>,
    /// Pairs scored.
    pub pairs: u64,
}

/// The concept labels of both modalities (rows are the pairs).
#[derive(Clone, Copy)]
pub struct PairLabels<'a> {
    /// What each image shows.
    pub image: &'a LabelIndex,
    /// What each caption says.
    pub text: &'a LabelIndex,
}

/// Scores `n` matched pairs' image and text codes against their labels and sums
/// the pairs' moments. Values must be finite and `>= 0` (errors name the side).
pub fn score_shared<I: FeatureIndex>(
    img: Codes<I>,
    txt: Codes<I>,
    n: usize,
    labels: PairLabels<'_>,
    n_features: usize,
    opts: &ScoreOptions,
) -> CoreResult<SharedScores> {
    check_codes(img, n, n_features)?;
    check_codes(txt, n, n_features)?;
    for (l, what) in [(labels.image, "image"), (labels.text, "text")] {
        if l.n_rows != n {
            return Err(CoreError::input(format!(
                "{what} labels has {} rows but the codes have {n} pairs",
                l.n_rows
            )));
        }
    }
    let image_buckets = side_buckets(img, n, n_features)?;
    let text_buckets = side_buckets(txt, n, n_features)?;
    let moments = bucket_moments(&image_buckets, &text_buckets, n_features);
    let image = score_buckets(image_buckets, labels.image, n_features, opts);
    let text = score_buckets(text_buckets, labels.text, n_features, opts);
    Ok(SharedScores {
        image,
        text,
        moments,
        pairs: n as u64,
    })
}

/// One side's buckets; an input error names the side.
fn side_buckets<I: FeatureIndex>(c: Codes<I>, n: usize, n_features: usize) -> CoreResult<Buckets> {
    bucket(c.idx, c.val, Rows::Dense(c.k), n, n_features).map_err(|e| match e {
        CoreError::Input(msg) => CoreError::input(format!("{} codes: {msg}", c.what)),
        other => other,
    })
}

/// Moment sums `[n_features][14]` from both sides' buckets (each in row order).
pub fn bucket_moments(img: &Buckets, txt: &Buckets, n_features: usize) -> Vec<f64> {
    let mut sums = vec![0.0; n_features * M];
    sums.par_chunks_mut(M)
        .enumerate()
        .with_min_len(64)
        .for_each(|(f, out)| {
            let a = &img.keys[img.offsets[f]..img.offsets[f + 1]];
            let b = &txt.keys[txt.offsets[f]..txt.offsets[f + 1]];
            merge_pairs(a, b, out);
        });
    sums
}

/// The value of a packed `(value, row)` key.
#[inline]
fn value(key: u64) -> f64 {
    f64::from(from_order_bits((key >> 32) as u32))
}

/// The row of a packed key.
#[inline]
fn row(key: u64) -> u32 {
    key as u32
}

/// One feature's moments into `out`: `a` and `b` are its image and text keys,
/// each in increasing row order; equal rows are one pair.
fn merge_pairs(a: &[u64], b: &[u64], out: &mut [f64]) {
    debug_assert!(a.windows(2).all(|w| row(w[0]) < row(w[1])));
    debug_assert!(b.windows(2).all(|w| row(w[0]) < row(w[1])));
    let mut s = [0.0f64; M];
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match row(a[i]).cmp(&row(b[j])) {
            Ordering::Equal => {
                add_moments(&mut s, value(a[i]), value(b[j]));
                i += 1;
                j += 1;
            }
            Ordering::Less => {
                add_one_side(&mut s, value(a[i]), IMAGE_COLS);
                i += 1;
            }
            Ordering::Greater => {
                add_one_side(&mut s, value(b[j]), TEXT_COLS);
                j += 1;
            }
        }
    }
    for &k in &a[i..] {
        add_one_side(&mut s, value(k), IMAGE_COLS);
    }
    for &k in &b[j..] {
        add_one_side(&mut s, value(k), TEXT_COLS);
    }
    out.copy_from_slice(&s);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::pairs::PairMoments;
    use crate::stats::sparse::score_sparse;

    /// `n` rows of `k` distinct features in `[0, nf)` (feature `nf - 1` never fires),
    /// values in `{0, 0.5, .., 3}` (ties and exact zeros) or continuous.
    fn codes(n: usize, k: usize, nf: usize, seed: u64, ties: bool) -> (Vec<i64>, Vec<f32>) {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (mut idx, mut val) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let start = (next() % (nf as u64 - 1)) as usize;
            for j in 0..k {
                idx.push(((start + j * 2) % (nf - 1)) as i64);
                let u = (next() % 1000) as f32 / 1000.0;
                val.push(if ties {
                    (u * 7.0).floor() * 0.5
                } else {
                    u * 3.0
                });
            }
        }
        (idx, val)
    }

    fn labels(n: usize, c: usize, seed: u64) -> LabelIndex {
        let dense: Vec<bool> = (0..n * c)
            .map(|i| (i as u64 * 2_654_435_761 + seed) % 7 < 2)
            .collect();
        LabelIndex::from_dense(&dense, n, c).unwrap()
    }

    fn close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= 1e-9 * w.abs().max(1.0), "{g} vs {w}");
        }
    }

    fn same(x: &[f64], y: &[f64]) -> bool {
        x.len() == y.len()
            && x.iter()
                .zip(y)
                .all(|(a, b)| a == b || (a.is_nan() && b.is_nan()))
    }

    #[test]
    fn equals_the_moment_pass_and_the_one_side_scorer() {
        let nf = 11;
        for (n, ties) in [(0usize, false), (1, true), (97, false), (300, true)] {
            let (ii, iv) = codes(n, 3, nf, 1, ties);
            let (ti, tv) = codes(n, 5, nf, 2, ties); // ragged: k differs per side
            let img = Codes {
                idx: &ii[..],
                val: &iv[..],
                k: 3,
                what: "image",
            };
            let txt = Codes {
                idx: &ti[..],
                val: &tv[..],
                k: 5,
                what: "text",
            };
            let (li, lt) = (labels(n, 4, 3), labels(n, 4, 5));
            let opts = ScoreOptions {
                stats: false,
                with_se: true,
                top_n: 0,
            };
            let pl = PairLabels {
                image: &li,
                text: &lt,
            };
            let got = score_shared(img, txt, n, pl, nf, &opts).unwrap();
            let mut pm = PairMoments::new(nf);
            pm.push(img, txt, n).unwrap();
            close(&got.moments, pm.sums());
            assert!(got.moments[(nf - 1) * M..].iter().all(|&x| x == 0.0));
            let want_i = score_sparse(&ii[..], &iv[..], n, 3, &li, nf, &opts).unwrap();
            let want_t = score_sparse(&ti[..], &tv[..], n, 5, &lt, nf, &opts).unwrap();
            for (g, w) in [(&got.image, &want_i), (&got.text, &want_t)] {
                assert!(same(&g.auroc, &w.auroc) && same(&g.se, &w.se) && same(&g.ties, &w.ties));
            }
            assert_eq!(got.pairs, n as u64);
        }
    }

    /// The error message of scoring one pair with these codes (k = 2, 3 features).
    fn error_of(ii: &[i64], iv: &[f32], ti: &[i64], tv: &[f32], text_rows: usize) -> String {
        let (li, lt) = (labels(1, 2, 0), labels(text_rows, 2, 0));
        let pl = PairLabels {
            image: &li,
            text: &lt,
        };
        let img = Codes {
            idx: ii,
            val: iv,
            k: 2,
            what: "image",
        };
        let txt = Codes {
            idx: ti,
            val: tv,
            k: 2,
            what: "text",
        };
        match score_shared(img, txt, 1, pl, 3, &ScoreOptions::default()) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_inputs_name_the_side() {
        let e = error_of(&[1, 1], &[1.0, 2.0], &[0, 1], &[1.0, 1.0], 1);
        assert!(
            e.contains("image codes: indices lists feature 1 twice"),
            "{e}"
        );
        let e = error_of(&[0, 1], &[1.0, 2.0], &[0, 1], &[-1.0, 1.0], 1);
        assert!(e.contains("text values has -1"), "{e}");
        let e = error_of(&[0, 1], &[1.0, 2.0], &[0, 3], &[1.0, 1.0], 1);
        assert!(e.contains("text indices has value 3"), "{e}");
        let e = error_of(&[0, 1], &[1.0, 2.0], &[0, 1], &[1.0, 1.0], 2);
        assert!(e.contains("text labels has 2 rows"), "{e}");
        assert!(error_of(&[0, 1], &[1.0, 2.0], &[0, 1], &[1.0, 1.0], 1).is_empty());
    }
}
