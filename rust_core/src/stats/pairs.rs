//! Per-feature moments of matched image/caption codes, in one streaming pass.
//!
//! Row `i` of the image codes and row `i` of the text codes come from the same
//! image-caption pair (top-k codes of one SAE trained on both modalities). For
//! every feature `f`, with `a = image activation`, `b = text activation` of a
//! pair (0 where the feature is not among the row's codes), the pass sums the
//! monomials of [`MOMENTS`] over pairs. From them Python derives the modality
//! split, the Bridge Score, the sign-flip and re-pairing nulls and delta-method
//! intervals exactly (`vlmfast.crossmodal.streaming`); only the pairs where a
//! feature fires touch its sums, so the cost is `O(pairs * k)`.
//!
//! Determinism: each push splits its pairs into one contiguous range per worker
//! thread and adds the per-range sums in range order, so a result depends only on
//! the pushed chunks and the thread count (and differs across them by float
//! rounding only).

use rayon::prelude::*;

use super::sparse::FeatureIndex;
use crate::error::{CoreError, CoreResult};

/// The summed monomials, in storage order (`aab` is `sum a*a*b`).
pub const MOMENTS: [&str; 14] = [
    "a", "b", "aa", "bb", "ab", "aaa", "bbb", "aab", "abb", "aabb", "aaab", "abbb", "aaaa", "bbbb",
];
pub(super) const M: usize = MOMENTS.len();
/// The one-sided columns (`x, x², x³, x⁴`) of the image side and of the text side.
pub(super) const IMAGE_COLS: [usize; 4] = [0, 2, 5, 12];
pub(super) const TEXT_COLS: [usize; 4] = [1, 3, 6, 13];

/// One modality's top-k codes of a chunk of pairs: `idx[n*k]`, `val[n*k]`, row-major.
#[derive(Clone, Copy)]
pub struct Codes<'a, I> {
    pub idx: &'a [I],
    pub val: &'a [f32],
    pub k: usize,
    /// Named in error messages (`"image"`, `"text"`).
    pub what: &'a str,
}

/// The running sums of every feature's moments (`sums[f * 14 + m]`).
pub struct PairMoments {
    n_features: usize,
    sums: Vec<f64>,
    pairs: u64,
}

impl PairMoments {
    pub fn new(n_features: usize) -> Self {
        Self {
            n_features,
            sums: vec![0.0; n_features * M],
            pairs: 0,
        }
    }

    /// Pairs pushed so far.
    pub fn pairs(&self) -> u64 {
        self.pairs
    }

    /// The sums, `[n_features][14]` row-major.
    pub fn sums(&self) -> &[f64] {
        &self.sums
    }

    /// Adds `n` matched pairs; nothing is added when an input is invalid.
    pub fn push<I: FeatureIndex>(
        &mut self,
        img: Codes<I>,
        txt: Codes<I>,
        n: usize,
    ) -> CoreResult<()> {
        check_codes(img, n, self.n_features)?;
        check_codes(txt, n, self.n_features)?;
        let threads = rayon::current_num_threads().clamp(1, n.max(1));
        let per = n.div_ceil(threads).max(1);
        let nf = self.n_features;
        let parts = (0..threads)
            .into_par_iter()
            .map(|t| accumulate(img, txt, t * per..((t + 1) * per).min(n), nf))
            .collect::<CoreResult<Vec<Vec<f64>>>>()?;
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            for (s, p) in self.sums.iter_mut().zip(part) {
                *s += p;
            }
        }
        self.pairs += n as u64;
        Ok(())
    }
}

/// Entries per block of the parallel input check.
const CHECK_BLOCK: usize = 1 << 14;

/// Whether a code entry is a feature in `[0, nf)` with a finite value `>= 0`.
#[inline]
fn entry_ok<I: FeatureIndex>(f: I, v: f32, nf: u64) -> bool {
    ((f.as_i64() as u64) < nf) & (0.0..f32::INFINITY).contains(&v)
}

/// Checks one side's lengths, indices and values (finite, `>= 0`); the error names
/// the side and the first bad entry.
pub(super) fn check_codes<I: FeatureIndex>(
    c: Codes<I>,
    n: usize,
    n_features: usize,
) -> CoreResult<()> {
    if c.idx.len() != n * c.k || c.val.len() != n * c.k {
        return Err(CoreError::input(format!(
            "{} codes: indices has {} and values {} entries, expected {n} pairs x k={}",
            c.what,
            c.idx.len(),
            c.val.len(),
            c.k
        )));
    }
    let nf = n_features as u64;
    // branch-free per block (vectorised), so the check costs a fraction of a pass;
    // only a bad block is searched for the flat position the message names
    let first = c
        .idx
        .par_chunks(CHECK_BLOCK)
        .zip(c.val.par_chunks(CHECK_BLOCK))
        .enumerate()
        .filter_map(|(b, (ix, vx))| {
            let ok = ix
                .iter()
                .zip(vx)
                .fold(true, |ok, (&f, &v)| ok & entry_ok(f, v, nf));
            if ok {
                return None;
            }
            let p = ix.iter().zip(vx).position(|(&f, &v)| !entry_ok(f, v, nf));
            Some(b * CHECK_BLOCK + p.unwrap_or(0))
        })
        .min();
    if let Some(e) = first {
        let (f, v) = (c.idx[e].as_i64(), c.val[e]);
        if f < 0 || f as u64 >= n_features as u64 {
            return Err(CoreError::input(format!(
                "{} indices has value {f} at flat position {e}, outside [0, n_features={n_features})",
                c.what
            )));
        }
        return Err(CoreError::input(format!(
            "{} values has {v} at flat position {e}: activations must be finite and >= 0",
            c.what
        )));
    }
    Ok(())
}

/// Marks of the current pair in a feature-sized scratch table (no sort, no clear per pair).
struct Scratch {
    image_mark: Vec<u64>,
    text_mark: Vec<u64>,
    image_value: Vec<f64>,
}

/// Sums over the pairs in `range`, into a fresh `[n_features][14]` table. A feature
/// on one side only updates its 4 one-sided monomials; on both, all 14.
fn accumulate<I: FeatureIndex>(
    img: Codes<I>,
    txt: Codes<I>,
    range: std::ops::Range<usize>,
    n_features: usize,
) -> CoreResult<Vec<f64>> {
    if range.is_empty() {
        return Ok(Vec::new());
    }
    let mut acc = vec![0.0; n_features * M];
    let mut s = Scratch {
        image_mark: vec![u64::MAX; n_features],
        text_mark: vec![u64::MAX; n_features],
        image_value: vec![0.0; n_features],
    };
    for i in range {
        // 2i: the image entry of pair i is waiting for its text partner; 2i+1: paired
        let (waiting, paired) = (2 * i as u64, 2 * i as u64 + 1);
        for j in i * img.k..(i + 1) * img.k {
            let f = img.idx[j].as_i64() as usize;
            if s.image_mark[f] == waiting || s.image_mark[f] == paired {
                return Err(duplicate("image", f, i));
            }
            s.image_mark[f] = waiting;
            s.image_value[f] = f64::from(img.val[j]);
        }
        for j in i * txt.k..(i + 1) * txt.k {
            let f = txt.idx[j].as_i64() as usize;
            if s.text_mark[f] == waiting {
                return Err(duplicate("text", f, i));
            }
            s.text_mark[f] = waiting;
            let b = f64::from(txt.val[j]);
            let row = &mut acc[f * M..(f + 1) * M];
            if s.image_mark[f] == waiting {
                s.image_mark[f] = paired;
                add_moments(row, s.image_value[f], b);
            } else {
                add_one_side(row, b, TEXT_COLS);
            }
        }
        for j in i * img.k..(i + 1) * img.k {
            let f = img.idx[j].as_i64() as usize;
            if s.image_mark[f] == waiting {
                add_one_side(&mut acc[f * M..(f + 1) * M], s.image_value[f], IMAGE_COLS);
            }
        }
    }
    Ok(acc)
}

fn duplicate(side: &str, f: usize, pair: usize) -> CoreError {
    CoreError::input(format!(
        "{side} indices lists feature {f} twice in row {pair} of the chunk (top-k codes name a feature once per row)"
    ))
}

/// `x, x², x³, x⁴` into the given moment columns (the other side is 0).
#[inline]
pub(super) fn add_one_side(s: &mut [f64], x: f64, cols: [usize; 4]) {
    let xx = x * x;
    s[cols[0]] += x;
    s[cols[1]] += xx;
    s[cols[2]] += xx * x;
    s[cols[3]] += xx * xx;
}

#[inline]
pub(super) fn add_moments(s: &mut [f64], a: f64, b: f64) {
    let (aa, bb, ab) = (a * a, b * b, a * b);
    let terms = [
        a,
        b,
        aa,
        bb,
        ab,
        aa * a,
        bb * b,
        aa * b,
        ab * b,
        aa * bb,
        aa * ab,
        ab * bb,
        aa * aa,
        bb * bb,
    ];
    for (x, t) in s.iter_mut().zip(terms) {
        *x += t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes<'a>(idx: &'a [i64], val: &'a [f32], k: usize, what: &'a str) -> Codes<'a, i64> {
        Codes { idx, val, k, what }
    }

    #[test]
    fn sums_match_dense_reference() {
        // 3 pairs, k=2, 4 features; feature 1 fires on both sides of pair 0
        let (ii, iv) = ([1i64, 3, 0, 2, 1, 0], [2.0f32, 1.0, 0.5, 0.0, 3.0, 1.0]);
        let (ti, tv) = ([1i64, 0, 2, 3, 3, 2], [4.0f32, 1.0, 2.0, 0.5, 1.0, 1.0]);
        let mut pm = PairMoments::new(4);
        pm.push(codes(&ii, &iv, 2, "image"), codes(&ti, &tv, 2, "text"), 3)
            .unwrap();
        let mut dense_a = [[0.0f64; 4]; 3];
        let mut dense_b = [[0.0f64; 4]; 3];
        for i in 0..3 {
            for j in 0..2 {
                dense_a[i][ii[i * 2 + j] as usize] += f64::from(iv[i * 2 + j]);
                dense_b[i][ti[i * 2 + j] as usize] += f64::from(tv[i * 2 + j]);
            }
        }
        for f in 0..4 {
            let mut want = [0.0f64; M];
            for i in 0..3 {
                let mut row = [0.0f64; M];
                add_moments(&mut row, dense_a[i][f], dense_b[i][f]);
                for m in 0..M {
                    want[m] += row[m];
                }
            }
            assert_eq!(&pm.sums()[f * M..(f + 1) * M], &want[..], "feature {f}");
        }
        assert_eq!(pm.pairs(), 3);
    }

    #[test]
    fn bad_inputs_name_the_side_and_add_nothing() {
        let mut pm = PairMoments::new(2);
        let err = pm
            .push(
                codes(&[0, 5], &[1.0, 1.0], 2, "image"),
                codes(&[0, 1], &[1.0, 1.0], 2, "text"),
                1,
            )
            .unwrap_err();
        assert!(err.to_string().contains("image indices has value 5"));
        let err = pm
            .push(
                codes(&[0, 1], &[1.0, 1.0], 2, "image"),
                codes(&[0, 1], &[-1.0, 1.0], 2, "text"),
                1,
            )
            .unwrap_err();
        assert!(err.to_string().contains("text values has -1"));
        let err = pm
            .push(
                codes(&[1, 1], &[1.0, 1.0], 2, "image"),
                codes(&[0, 1], &[1.0, 1.0], 2, "text"),
                1,
            )
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("image indices lists feature 1 twice"));
        assert!(pm.sums().iter().all(|&s| s == 0.0) && pm.pairs() == 0);
    }
}
