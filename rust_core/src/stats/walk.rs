//! Scoring one unit (an SAE feature or a dense neuron) against every concept
//! in one walk over its sorted activations.
//!
//! Activations are packed as `u64` keys, `(order-preserving bits of the f32
//! value) << 32 | row`, so one `sort_unstable` orders them by value (ties by
//! row). The walk goes from the largest value down, one tie group at a time,
//! and adds each group's doubled midrank `2·r = 2N − 2S − t + 1` (S rows
//! above, t rows tied) to the concepts listed for each row: integer sums of
//! 2× midranks, so the Mann–Whitney U is exact. Rows that are not stored
//! (the zeros of a sparse code) form one virtual tie group, placed between
//! the positive and the negative values: only the stored nonzeros are sorted.
//!
//! With `with_se`, the same walk accumulates the DeLong placement values
//! `h = 2·(other class above) + (other class tied)` and their squares
//! (exact `u128` sums) for both classes; the class that is not listed is
//! accumulated lazily, only when a listed row of that concept appears.

use super::labels::LabelIndex;

/// Turns an `f32` into a `u32` with the same order (NaN excluded by callers).
#[inline]
pub fn order_bits(v: f32) -> u32 {
    let v = if v == 0.0 { 0.0 } else { v }; // -0.0 ties with 0.0
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Inverse of [`order_bits`].
#[inline]
pub fn from_order_bits(b: u32) -> f32 {
    if b & 0x8000_0000 != 0 {
        f32::from_bits(b & 0x7fff_ffff)
    } else {
        f32::from_bits(!b)
    }
}

/// Packs a value and its row into a sort key.
#[inline]
pub fn pack(v: f32, row: u32) -> u64 {
    (u64::from(order_bits(v)) << 32) | u64::from(row)
}

/// How many records ahead the walk prefetches label slots.
const PREFETCH: usize = 12;

/// `order_bits(0.0)`.
pub const ZERO_BITS: u32 = 0x8000_0000;

/// What to compute besides the AUROC.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScoreOptions {
    /// Also compute firing counts, mean activation on/off concept and top-n precision.
    pub stats: bool,
    /// Also compute DeLong standard errors of the AUROC.
    pub with_se: bool,
    /// Number of top activations kept per unit (exemplars, precision); 0 for none.
    pub top_n: usize,
}

/// One unit's row of every output table.
pub struct RowOut<'a> {
    pub auroc: &'a mut [f64],
    pub se: &'a mut [f64],
    pub pos_firing: &'a mut [u32],
    pub mean_pos: &'a mut [f32],
    pub mean_neg: &'a mut [f32],
    pub precision: &'a mut [f32],
    pub top_rows: &'a mut [i64],
    pub top_values: &'a mut [f32],
    pub firing: &'a mut u64,
    pub ties: &'a mut f64,
}

/// Per-thread scratch of per-concept accumulators, reused across units.
pub struct Scratch {
    sum2r: Vec<u64>,
    nl: Vec<u64>,
    nfire: Vec<u64>,
    sumv: Vec<f64>,
    topl: Vec<u32>,
    gl: Vec<u64>,
    negl: Vec<u64>,
    touched: Vec<u32>,
    ls: Vec<u64>,
    mark: Vec<u64>,
    h2l: Vec<u128>,
    h2u: Vec<u128>,
}

impl Scratch {
    pub fn new(n_concepts: usize, opts: &ScoreOptions) -> Self {
        let c = n_concepts;
        let s = if opts.stats { c } else { 0 };
        let e = if opts.with_se { c } else { 0 };
        Self {
            sum2r: vec![0; c],
            nl: vec![0; c],
            nfire: vec![0; s],
            sumv: vec![0.0; s],
            topl: vec![0; if opts.stats && opts.top_n > 0 { c } else { 0 }],
            gl: vec![0; c],
            negl: vec![0; c],
            touched: Vec::with_capacity(c),
            ls: vec![0; e],
            mark: vec![0; e],
            h2l: vec![0; e],
            h2u: vec![0; e],
        }
    }

    fn reset(&mut self) {
        self.sum2r.fill(0);
        self.nl.fill(0);
        self.nfire.fill(0);
        self.sumv.fill(0.0);
        self.topl.fill(0);
        self.gl.fill(0);
        self.negl.fill(0);
        self.touched.clear();
        self.ls.fill(0);
        self.mark.fill(0);
        self.h2l.fill(0);
        self.h2u.fill(0);
    }
}

/// `t³ − t` of a tie group of `t` rows (0 for a singleton).
#[inline]
fn tie_term(t: u64) -> f64 {
    let t = t as f64;
    t * t * t - t
}

#[inline]
fn sq(x: u64) -> u128 {
    u128::from(x) * u128::from(x)
}

/// Ends a tie group starting `s` rows from the top with `t` rows: DeLong sums
/// for every concept with listed rows in it (counted in `gl`).
#[inline]
fn close_group_se(sc: &mut Scratch, s: u64, t: u64) {
    for &c in &sc.touched {
        let c = c as usize;
        let gl = sc.gl[c];
        let ls = sc.ls[c];
        // unlisted rows since the last flush, all with `2·ls` listed rows above
        let gap = s - sc.mark[c];
        sc.h2u[c] += u128::from(gap) * sq(2 * ls);
        // unlisted rows tied in this group
        sc.h2u[c] += u128::from(t - gl) * sq(2 * ls + gl);
        // listed rows of this group: other class above = s - ls, tied = t - gl
        sc.h2l[c] += u128::from(gl) * sq(2 * (s - ls) + (t - gl));
        sc.ls[c] = ls + gl;
        sc.mark[c] = s + t;
        sc.gl[c] = 0;
    }
    sc.touched.clear();
}

/// Running totals of one unit's walk, over all rows (not per concept).
#[derive(Default)]
struct WalkTotals {
    /// Rows above the current tie group.
    s: u64,
    /// Sum of all values.
    total_v: f64,
    /// Rows with a value above 0.
    fire_total: u64,
    /// Top activations recorded so far.
    n_top: usize,
    /// Sum of `t³ − t` over the tie groups.
    ties: f64,
}

impl WalkTotals {
    /// Ends a tie group of `t` rows (the DeLong sums first, with `se`).
    #[inline(always)]
    fn close_group(&mut self, sc: &mut Scratch, se: bool, t: u64) {
        if se {
            close_group_se(sc, self.s, t);
        }
        self.ties += tie_term(t);
        self.s += t;
    }
}

/// Scores one unit. `keys` are its stored activations, sorted ascending;
/// `n_zero` rows are not stored and have value 0 (sparse codes; 0 for dense).
pub fn score_unit(
    keys: &[u64],
    n_zero: u64,
    labels: &LabelIndex,
    opts: &ScoreOptions,
    sc: &mut Scratch,
    mut out: RowOut<'_>,
) {
    sc.reset();
    let n = labels.n_rows as u64;
    // stored values below zero come after the virtual zero group in the walk
    let n_below = keys.partition_point(|&k| ((k >> 32) as u32) < ZERO_BITS);
    if n_zero > 0 {
        // listed rows among the negative values, needed to size the zero group
        for &k in &keys[..n_below] {
            labels.for_each_listed(k as u32 as usize, |c| sc.negl[c] += 1);
        }
    }
    // read once, before the loop (measured: read inside it, the compiler
    // duplicated the group loop)
    let flags = (opts.with_se, opts.stats, opts.top_n);
    let mut w = WalkTotals::default();
    let mut zero_done = n_zero == 0;
    let mut i = keys.len();
    while i > 0 || !zero_done {
        let next_is_zero = !zero_done && (i == 0 || i <= n_below);
        if next_is_zero {
            zero_done = true;
            walk_zero_group(n_zero, n, labels, opts.with_se, sc, &mut w);
        } else {
            i = walk_value_group(keys, i, n, labels, flags, sc, &mut out, &mut w);
        }
    }
    debug_assert_eq!(w.s, n);
    for k in w.n_top..opts.top_n {
        out.top_rows[k] = -1;
        out.top_values[k] = f32::NAN;
    }
    *out.firing = w.fire_total;
    *out.ties = w.ties;
    for c in 0..labels.n_concepts {
        finish_concept(c, n, labels, opts, sc, &w, &mut out);
    }
}

/// Walks the virtual group of the `t` unstored zero rows: the listed rows
/// not yet seen above and not among the negative values are in it.
#[inline(always)]
fn walk_zero_group(
    t: u64,
    n: u64,
    labels: &LabelIndex,
    se: bool,
    sc: &mut Scratch,
    w: &mut WalkTotals,
) {
    let twomr = 2 * n - 2 * w.s - t + 1;
    for c in 0..labels.n_concepts {
        let zl = labels.n_listed[c] - sc.nl[c] - sc.negl[c];
        if zl == 0 {
            continue;
        }
        sc.sum2r[c] += zl * twomr;
        sc.nl[c] += zl;
        if se {
            sc.gl[c] = zl;
            sc.touched.push(c as u32);
        }
    }
    w.close_group(sc, se, t);
}

/// Walks the tie group of stored values ending at `keys[i - 1]` (walking
/// down); returns where it starts (the next `i`). `flags` are
/// `(with_se, stats, top_n)` of the [`ScoreOptions`].
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn walk_value_group(
    keys: &[u64],
    i: usize,
    n: u64,
    labels: &LabelIndex,
    (se, stats, top_n): (bool, bool, usize),
    sc: &mut Scratch,
    out: &mut RowOut<'_>,
    w: &mut WalkTotals,
) -> usize {
    let bits = (keys[i - 1] >> 32) as u32;
    let mut j = i - 1;
    while j > 0 && (keys[j - 1] >> 32) as u32 == bits {
        j -= 1;
    }
    let t = (i - j) as u64;
    let twomr = 2 * n - 2 * w.s - t + 1;
    let v = from_order_bits(bits);
    let fires = v > 0.0;
    for idx in (j..i).rev() {
        if idx >= PREFETCH {
            labels.prefetch(keys[idx - PREFETCH] as u32 as usize);
        }
        let row = keys[idx] as u32 as usize;
        let in_top = w.n_top < top_n;
        if in_top {
            out.top_rows[w.n_top] = row as i64;
            out.top_values[w.n_top] = v;
        }
        labels.for_each_listed(row, |c| {
            sc.sum2r[c] += twomr;
            sc.nl[c] += 1;
            if stats {
                sc.sumv[c] += f64::from(v);
                sc.nfire[c] += u64::from(fires);
                if in_top {
                    sc.topl[c] += 1;
                }
            }
            if se {
                if sc.gl[c] == 0 {
                    sc.touched.push(c as u32);
                }
                sc.gl[c] += 1;
            }
        });
        if in_top {
            w.n_top += 1;
        }
    }
    w.total_v += f64::from(v) * t as f64;
    w.fire_total += if fires { t } else { 0 };
    w.close_group(sc, se, t);
    j
}

/// Writes concept `c`'s outputs from the walk's sums (undoing the flip
/// where the concept's negatives were listed).
#[inline(always)]
fn finish_concept(
    c: usize,
    n: u64,
    labels: &LabelIndex,
    opts: &ScoreOptions,
    sc: &mut Scratch,
    w: &WalkTotals,
    out: &mut RowOut<'_>,
) {
    let p = labels.n_pos[c];
    let q = n - p;
    let flipped = labels.flipped[c];
    let all_2r = n * (n + 1);
    let r2_pos = if flipped {
        all_2r - sc.sum2r[c]
    } else {
        sc.sum2r[c]
    };
    let two_u = i128::from(r2_pos) - i128::from(p) * i128::from(p + 1);
    out.auroc[c] = if p == 0 || q == 0 {
        f64::NAN
    } else {
        two_u as f64 / (2.0 * p as f64 * q as f64)
    };
    if opts.stats {
        finish_concept_stats(c, p, q, flipped, opts.top_n, sc, w, out);
    }
    if opts.with_se {
        // flush the unlisted rows below the last listed one
        let gap = n - sc.mark[c];
        sc.h2u[c] += u128::from(gap) * sq(2 * sc.ls[c]);
        let (h2_pos, h2_neg) = if flipped {
            (sc.h2u[c], sc.h2l[c])
        } else {
            (sc.h2l[c], sc.h2u[c])
        };
        out.se[c] = delong_se(p, q, two_u, h2_pos, h2_neg);
    }
}

/// Firing count, mean activation on/off concept and top-n precision of concept `c`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn finish_concept_stats(
    c: usize,
    p: u64,
    q: u64,
    flipped: bool,
    top_n: usize,
    sc: &Scratch,
    w: &WalkTotals,
    out: &mut RowOut<'_>,
) {
    let fire_pos = if flipped {
        w.fire_total - sc.nfire[c]
    } else {
        sc.nfire[c]
    };
    out.pos_firing[c] = fire_pos.min(u64::from(u32::MAX)) as u32;
    let sum_pos = if flipped {
        w.total_v - sc.sumv[c]
    } else {
        sc.sumv[c]
    };
    out.mean_pos[c] = if p == 0 {
        f32::NAN
    } else {
        (sum_pos / p as f64) as f32
    };
    out.mean_neg[c] = if q == 0 {
        f32::NAN
    } else {
        ((w.total_v - sum_pos) / q as f64) as f32
    };
    if top_n > 0 {
        let n_top = w.n_top;
        let pos_top = if flipped {
            n_top as u64 - u64::from(sc.topl[c])
        } else {
            u64::from(sc.topl[c])
        };
        out.precision[c] = if n_top == 0 {
            f32::NAN
        } else {
            (pos_top as f64 / n_top as f64) as f32
        };
    }
}

/// DeLong standard error from the doubled placement sums. For positives,
/// `h = 2·(negatives above) + (negatives tied)` sums to `2PQ − 2U`; for
/// negatives, `h = 2·(positives above) + (positives tied)` sums to `2U`.
/// A class with one member contributes no variance term; an empty class
/// gives NaN.
fn delong_se(p: u64, q: u64, two_u: i128, h2_pos: u128, h2_neg: u128) -> f64 {
    if p == 0 || q == 0 {
        return f64::NAN;
    }
    let (pi, qi) = (i128::from(p), i128::from(q));
    let sum_pos = 2 * pi * qi - two_u;
    let sum_neg = two_u;
    // variance of V10 = h / (2Q) over positives, sample (P − 1) denominator
    let term = |count: i128, other: i128, sum_h: i128, sum_h2: u128| -> f64 {
        if count < 2 {
            return 0.0;
        }
        // count·Σh² − (Σh)² ≥ 0, exact in i128 for any realistic N
        let num = count * (sum_h2 as i128) - sum_h * sum_h;
        let s =
            num.max(0) as f64 / (count as f64 * (count - 1) as f64 * 4.0 * (other * other) as f64);
        s / count as f64
    };
    let var = term(pi, qi, sum_pos, h2_pos) + term(qi, pi, sum_neg, h2_neg);
    var.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_bits_is_monotone_and_invertible() {
        let vals = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-30,
            1.0,
            2.5,
            f32::INFINITY,
        ];
        for w in vals.windows(2) {
            assert!(order_bits(w[0]) <= order_bits(w[1]));
        }
        assert_eq!(order_bits(-0.0), order_bits(0.0));
        assert_eq!(order_bits(0.0), ZERO_BITS);
        for &v in &vals {
            let back = from_order_bits(order_bits(v));
            assert!(back == v || (v == 0.0 && back == 0.0));
        }
    }
}
