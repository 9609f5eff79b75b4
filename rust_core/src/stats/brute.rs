//! Brute-force references for the unit tests: pairwise Mann–Whitney and
//! explicit DeLong placement values, O(P·Q) per unit and concept.

use super::dense::score_dense;
use super::labels::LabelIndex;
use super::sparse::{score_sparse, score_sparse_coo};
use super::walk::ScoreOptions;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// (auroc, delong se) of one unit's full value vector against one concept.
fn brute(x: &[f32], y: &[bool]) -> (f64, f64) {
    let pos: Vec<f64> = x
        .iter()
        .zip(y)
        .filter(|p| *p.1)
        .map(|p| f64::from(*p.0))
        .collect();
    let neg: Vec<f64> = x
        .iter()
        .zip(y)
        .filter(|p| !*p.1)
        .map(|p| f64::from(*p.0))
        .collect();
    let (p, q) = (pos.len() as f64, neg.len() as f64);
    if pos.is_empty() || neg.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let psi = |a: f64, b: f64| {
        if a > b {
            1.0
        } else if a == b {
            0.5
        } else {
            0.0
        }
    };
    let v10: Vec<f64> = pos
        .iter()
        .map(|&a| neg.iter().map(|&b| psi(a, b)).sum::<f64>() / q)
        .collect();
    let v01: Vec<f64> = neg
        .iter()
        .map(|&b| pos.iter().map(|&a| psi(a, b)).sum::<f64>() / p)
        .collect();
    let auc = v10.iter().sum::<f64>() / p;
    let var = |v: &[f64]| {
        if v.len() < 2 {
            0.0
        } else {
            v.iter().map(|a| (a - auc) * (a - auc)).sum::<f64>() / (v.len() as f64 - 1.0)
        }
    };
    (auc, (var(&v10) / p + var(&v01) / q).sqrt())
}

fn random_labels(rng: &mut Rng, n: usize, c: usize) -> Vec<bool> {
    // per concept a different positive rate, including majority concepts
    let rates: Vec<u64> = (0..c).map(|j| [1, 5, 30, 50, 80, 97][j % 6]).collect();
    (0..n * c).map(|i| rng.below(100) < rates[i % c]).collect()
}

const OPTS: ScoreOptions = ScoreOptions {
    stats: true,
    with_se: true,
    top_n: 5,
};

#[test]
fn sparse_matches_brute_force() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..60 {
        let n = 1 + rng.below(40) as usize;
        let f = 1 + rng.below(9) as usize;
        let k = 1 + rng.below(f as u64) as usize;
        let c = 1 + rng.below(7) as usize;
        let labels = random_labels(&mut rng, n, c);
        let mut idx = vec![0i64; n * k];
        let mut val = vec![0f32; n * k];
        for r in 0..n {
            // k distinct features per row, values from a tiny set (heavy ties),
            // some explicit zeros and (every third case) negative values
            let mut feats: Vec<i64> = (0..f as i64).collect();
            for i in 0..k {
                let j = i + rng.below((f - i) as u64) as usize;
                feats.swap(i, j);
                idx[r * k + i] = feats[i];
                let level = rng.below(5) as f32;
                val[r * k + i] = if case % 3 == 0 {
                    level - 2.0
                } else {
                    level * 0.5
                };
            }
        }
        let li = LabelIndex::from_dense(&labels, n, c).unwrap();
        let got = score_sparse(&idx, &val, n, k, &li, f, &OPTS).unwrap();
        for j in 0..f {
            let mut x = vec![0f32; n];
            for e in 0..n * k {
                if idx[e] as usize == j {
                    x[e / k] = val[e];
                }
            }
            for cc in 0..c {
                let y: Vec<bool> = (0..n).map(|r| labels[r * c + cc]).collect();
                let (auc, se) = brute(&x, &y);
                let (ga, gs) = (got.auroc[j * c + cc], got.se[j * c + cc]);
                assert!(
                    auc.is_nan() && ga.is_nan() || (auc - ga).abs() < 1e-12,
                    "case {case} auroc {ga} vs {auc}"
                );
                assert!(
                    se.is_nan() && gs.is_nan() || (se - gs).abs() < 1e-9,
                    "case {case} se {gs} vs {se}"
                );
                let p = y.iter().filter(|b| **b).count();
                let fp = x.iter().zip(&y).filter(|(v, b)| **b && **v > 0.0).count();
                assert_eq!(got.pos_firing[j * c + cc] as usize, fp);
                if p > 0 {
                    let mp: f64 = x
                        .iter()
                        .zip(&y)
                        .filter(|p| *p.1)
                        .map(|p| f64::from(*p.0))
                        .sum::<f64>()
                        / p as f64;
                    assert!((f64::from(got.mean_pos[j * c + cc]) - mp).abs() < 1e-5);
                }
            }
            assert_eq!(
                got.firing[j] as usize,
                x.iter().filter(|v| **v > 0.0).count()
            );
            // the top values are the largest stored nonzeros, descending
            let mut nz: Vec<f32> = x.iter().copied().filter(|v| *v != 0.0).collect();
            nz.sort_by(|a, b| b.total_cmp(a));
            for t in 0..OPTS.top_n {
                let tv = got.top_values[j * OPTS.top_n + t];
                let tr = got.top_rows[j * OPTS.top_n + t];
                if t < nz.len() {
                    assert_eq!(tv, nz[t]);
                    assert_eq!(x[tr as usize], tv);
                } else {
                    assert!(tv.is_nan() && tr == -1);
                }
            }
        }
    }
}

#[test]
fn dense_matches_brute_force_and_sparse() {
    let mut rng = Rng(12345);
    for _ in 0..40 {
        let n = 1 + rng.below(50) as usize;
        let f = 1 + rng.below(20) as usize;
        let c = 1 + rng.below(5) as usize;
        let labels = random_labels(&mut rng, n, c);
        let scores: Vec<f32> = (0..n * f).map(|_| rng.below(4) as f32 - 1.0).collect();
        let li = LabelIndex::from_dense(&labels, n, c).unwrap();
        let got = score_dense(&scores, f, &li, &OPTS).unwrap();
        // the same matrix as COO triplets through the sparse path
        let (mut rows, mut feats, mut vals) = (vec![], vec![], vec![]);
        for r in 0..n {
            for j in 0..f {
                rows.push(r as i64);
                feats.push(j as i32);
                vals.push(scores[r * f + j]);
            }
        }
        let sp = score_sparse_coo(&rows, &feats, &vals, &li, f, &OPTS).unwrap();
        for j in 0..f {
            let x: Vec<f32> = (0..n).map(|r| scores[r * f + j]).collect();
            for cc in 0..c {
                let y: Vec<bool> = (0..n).map(|r| labels[r * c + cc]).collect();
                let (auc, se) = brute(&x, &y);
                for (ga, gs) in [
                    (got.auroc[j * c + cc], got.se[j * c + cc]),
                    (sp.auroc[j * c + cc], sp.se[j * c + cc]),
                ] {
                    assert!(auc.is_nan() && ga.is_nan() || (auc - ga).abs() < 1e-12);
                    assert!(se.is_nan() && gs.is_nan() || (se - gs).abs() < 1e-9);
                }
            }
        }
    }
}

#[test]
fn never_firing_feature_is_exactly_half() {
    let labels = [true, false, false, true, false];
    let li = LabelIndex::from_dense(&labels, 5, 1).unwrap();
    let idx = [0i32; 5];
    let val = [1.0f32, 2.0, 0.0, 3.0, 1.0];
    let s = score_sparse(&idx, &val, 5, 1, &li, 3, &OPTS).unwrap();
    assert_eq!(s.auroc[1], 0.5);
    assert_eq!(s.auroc[2], 0.5);
    assert_eq!(s.firing[1], 0);
}

#[test]
fn bad_inputs_are_errors() {
    let li = LabelIndex::from_dense(&[true, false], 2, 1).unwrap();
    let o = ScoreOptions::default();
    assert!(score_sparse(&[0i64, 5], &[1.0, 1.0], 2, 1, &li, 3, &o)
        .unwrap_err()
        .to_string()
        .contains("outside"));
    assert!(score_sparse(&[0i64, 1], &[f32::NAN, 1.0], 2, 1, &li, 3, &o)
        .unwrap_err()
        .to_string()
        .contains("NaN"));
    assert!(
        score_sparse(&[0i64, 0, 1, 1], &[1.0, 2.0, 1.0, 1.0], 2, 2, &li, 3, &o)
            .unwrap_err()
            .to_string()
            .contains("twice")
    );
    assert!(score_sparse(&[0i64, 1, 2], &[1.0; 3], 3, 1, &li, 3, &o)
        .unwrap_err()
        .to_string()
        .contains("rows"));
    assert!(score_dense(&[1.0, f32::NAN], 1, &li, &o)
        .unwrap_err()
        .to_string()
        .contains("NaN"));
    let empty = LabelIndex::from_dense(&[true, true], 2, 1).unwrap();
    assert!(score_dense(&[1.0, 2.0], 1, &empty, &o).unwrap().auroc[0].is_nan());
}
