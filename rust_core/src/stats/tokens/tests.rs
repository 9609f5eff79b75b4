//! Unit tests of the token aggregation: against a dense brute-force reference
//! (densify every token row, reduce over the sample's rows), with random
//! ragged samples cut into random chunks.

use super::{DenseAggregator, FeatureLists, SampleRows, SparseAggregator, TokenMode};
use crate::stats::labels::LabelIndex;
use crate::stats::sparse::score_sparse_coo;
use crate::stats::walk::ScoreOptions;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Random ragged token codes: (sample_ids, indices [n, k], values [n, k]).
fn make(
    rng: &mut Rng,
    n_samples: usize,
    f: usize,
    k: usize,
    neg: bool,
) -> (Vec<i64>, Vec<u32>, Vec<f32>) {
    let (mut ids, mut idx, mut vals) = (Vec::new(), Vec::new(), Vec::new());
    for s in 0..n_samples {
        let rows = 1 + rng.below(7) as usize;
        let id = (s as i64) * 7919 % 100_003 - 50; // distinct, not sorted
        for _ in 0..rows {
            ids.push(id);
            let start = rng.below(f as u64) as usize;
            let step = 1 + rng.below((f / k.max(1)).max(1) as u64) as usize;
            for j in 0..k {
                idx.push(((start + j * step) % f) as u32);
                let lvl = rng.below(4) as f32 * 0.5; // zeros and ties
                vals.push(if neg && rng.below(3) == 0 { -lvl } else { lvl });
            }
        }
    }
    (ids, idx, vals)
}

/// Dense reference: `[samples, f]` aggregated, samples in order of first appearance.
fn reference(
    ids: &[i64],
    idx: &[u32],
    vals: &[f32],
    k: usize,
    f: usize,
    mode: TokenMode,
) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let mut t = 0;
    while t < ids.len() {
        let mut e = t;
        while e < ids.len() && ids[e] == ids[t] {
            e += 1;
        }
        let mut dense = vec![vec![0f64; f]; e - t];
        for (r, row) in dense.iter_mut().enumerate() {
            for j in 0..k {
                let p = (t + r) * k + j;
                row[idx[p] as usize] = f64::from(vals[p]);
            }
        }
        let agg: Vec<f32> = (0..f)
            .map(|c| match mode {
                TokenMode::Max => {
                    dense.iter().map(|r| r[c]).fold(f64::NEG_INFINITY, f64::max) as f32
                }
                TokenMode::Mean => {
                    (dense.iter().map(|r| r[c]).sum::<f64>() / (e - t) as f64) as f32
                }
            })
            .collect();
        out.push(agg);
        t = e;
    }
    out
}

fn to_dense(rows: &SampleRows, f: usize, lo: usize) -> Vec<Vec<f32>> {
    (0..rows.n_samples())
        .map(|s| {
            let mut d = vec![0f32; f];
            for e in rows.indptr[s] as usize..rows.indptr[s + 1] as usize {
                assert!(rows.values[e] != 0.0);
                d[rows.features[e] as usize - lo] = rows.values[e];
            }
            d
        })
        .collect()
}

/// Pushes the stream in chunks cut at `cuts` (token rows); returns all rows.
fn run_sparse(
    agg: &mut SparseAggregator,
    ids: &[i64],
    idx: &[u32],
    vals: &[f32],
    k: usize,
    cuts: &[usize],
) -> SampleRows {
    let mut parts = Vec::new();
    let mut lo = 0;
    for &hi in cuts.iter().chain(std::iter::once(&ids.len())) {
        parts.extend(
            agg.push(&ids[lo..hi], &idx[lo * k..hi * k], &vals[lo * k..hi * k], k)
                .unwrap(),
        );
        lo = hi;
    }
    parts.push(agg.finish().unwrap());
    SampleRows::concat(parts)
}

fn cuts(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut c: Vec<usize> = (0..rng.below(6))
        .map(|_| rng.below(n as u64 + 1) as usize)
        .collect();
    c.sort_unstable();
    c
}

#[test]
fn sparse_aggregation_matches_dense_reference() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for case in 0..60 {
        let f = 1 + rng.below(40) as usize;
        let k = rng.below(f.min(6) as u64 + 1) as usize;
        let neg = case % 3 == 0;
        let ns = 1 + rng.below(30) as usize;
        let (ids, idx, vals) = make(&mut rng, ns, f, k, neg);
        for mode in [TokenMode::Max, TokenMode::Mean] {
            let want = reference(&ids, &idx, &vals, k, f, mode);
            let c = cuts(&mut rng, ids.len());
            let mut agg = SparseAggregator::new(f, 0, f, mode, true).unwrap();
            let got = run_sparse(&mut agg, &ids, &idx, &vals, k, &c);
            assert_eq!(
                to_dense(&got, f, 0),
                want,
                "case {case} {mode:?} cuts {c:?}"
            );
            // sorted features per sample
            for s in 0..got.n_samples() {
                let r = &got.features[got.indptr[s] as usize..got.indptr[s + 1] as usize];
                assert!(r.windows(2).all(|w| w[0] < w[1]));
            }
            // a feature block sees only its features, with the same values
            let (blo, bhi) = (f / 3, f - f / 4);
            let mut agg = SparseAggregator::new(f, blo, bhi, mode, true).unwrap();
            let got = run_sparse(&mut agg, &ids, &idx, &vals, k, &c);
            let want_block: Vec<Vec<f32>> = want.iter().map(|r| r[blo..bhi].to_vec()).collect();
            assert_eq!(to_dense(&got, bhi - blo, blo), want_block);
            let mut first: Vec<i64> = Vec::new();
            for &i in &ids {
                if first.last() != Some(&i) {
                    first.push(i);
                }
            }
            assert_eq!(agg.order.ids, first);
        }
    }
}

#[test]
fn a_sample_spanning_many_chunks_and_empty_chunks() {
    let mut rng = Rng(7);
    let (ids, idx, vals) = make(&mut rng, 5, 10, 3, true);
    let every: Vec<usize> = (0..=ids.len()).collect(); // one row per chunk, plus empty chunks
    for mode in [TokenMode::Max, TokenMode::Mean] {
        let mut agg = SparseAggregator::new(10, 0, 10, mode, true).unwrap();
        let got = run_sparse(&mut agg, &ids, &idx, &vals, 3, &every);
        assert_eq!(
            to_dense(&got, 10, 0),
            reference(&ids, &idx, &vals, 3, 10, mode)
        );
    }
}

#[test]
fn errors_name_the_problem() {
    let mut agg = SparseAggregator::new(4, 0, 4, TokenMode::Max, false).unwrap();
    agg.push(&[1, 1, 2], &[0u32, 1, 2], &[1.0, 1.0, 1.0], 1)
        .unwrap();
    let err = agg
        .push(&[2, 1], &[0u32, 1], &[1.0, 1.0], 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sample 1") && err.contains("contiguous"),
        "{err}"
    );
    let mut agg = SparseAggregator::new(4, 0, 4, TokenMode::Max, false).unwrap();
    let err = agg
        .push(&[1, 2, 1], &[0u32, 1, 2], &[1.0; 3], 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sample 1") && err.contains("token row 2"),
        "{err}"
    );
    let mut agg = SparseAggregator::new(4, 0, 4, TokenMode::Mean, false).unwrap();
    let err = agg
        .push(&[1, 2, 3], &[0u32, 1, 1, 1, 2, 3], &[1.0; 6], 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("feature 1 twice"), "{err}");
    let mut agg = SparseAggregator::new(4, 0, 4, TokenMode::Max, false).unwrap();
    let err = agg
        .push(&[1, 2], &[0i64, 9], &[1.0; 2], 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("value 9") && err.contains("n_features=4"),
        "{err}"
    );
    let mut agg = SparseAggregator::new(4, 0, 4, TokenMode::Max, false).unwrap();
    let err = agg
        .push(&[1, 2], &[0u32, 1], &[1.0, f32::NAN], 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("NaN"), "{err}");
    let mut agg = SparseAggregator::new(4, 0, 4, TokenMode::Max, false).unwrap();
    assert!(agg.push(&[1, 2], &[0u32], &[1.0, 1.0], 1).is_err());
    assert!(SparseAggregator::new(4, 3, 5, TokenMode::Max, false).is_err());
    assert!(TokenMode::parse("median")
        .unwrap_err()
        .to_string()
        .contains("\"max\" or \"mean\""));
}

#[test]
fn dense_aggregation_matches_reference() {
    let mut rng = Rng(0x1234_5678);
    for case in 0..40 {
        let d = 1 + rng.below(9) as usize;
        let n_samples = 1 + rng.below(20) as usize;
        let (mut ids, mut x) = (Vec::new(), Vec::new());
        for s in 0..n_samples {
            for _ in 0..1 + rng.below(6) {
                ids.push(100 - s as i64);
                for _ in 0..d {
                    x.push(rng.below(5) as f32 - 2.0);
                }
            }
        }
        let idx: Vec<u32> = (0..ids.len() * d).map(|p| (p % d) as u32).collect();
        for mode in [TokenMode::Max, TokenMode::Mean] {
            let want = reference(&ids, &idx, &x, d, d, mode);
            let (clo, chi) = if case % 2 == 0 {
                (0, usize::MAX)
            } else {
                (d / 2, d)
            };
            let mut agg = DenseAggregator::new(clo, chi, mode);
            let c = cuts(&mut rng, ids.len());
            let mut got = Vec::new();
            let mut lo = 0;
            for &hi in c.iter().chain(std::iter::once(&ids.len())) {
                got.extend(agg.push(&ids[lo..hi], &x[lo * d..hi * d], d).unwrap());
                lo = hi;
            }
            got.extend(agg.finish().unwrap());
            let w = agg.width();
            let want: Vec<f32> = want.iter().flat_map(|r| r[clo..clo + w].to_vec()).collect();
            assert_eq!(got, want, "case {case} {mode:?}");
            assert_eq!(agg.order.ids.len(), n_samples);
        }
    }
    let mut agg = DenseAggregator::new(0, usize::MAX, TokenMode::Max);
    agg.push(&[1], &[1.0, 2.0], 2).unwrap();
    assert!(agg
        .push(&[1], &[1.0, 2.0, 3.0], 3)
        .unwrap_err()
        .to_string()
        .contains("d=2"));
    let mut agg = DenseAggregator::new(0, usize::MAX, TokenMode::Mean);
    assert!(agg
        .push(&[1, 1, 2], &[1.0, f32::NAN, 0.0], 1)
        .unwrap_err()
        .to_string()
        .contains("NaN"));
}

#[test]
fn feature_lists_score_like_triplets() {
    let mut rng = Rng(99);
    let f = 23;
    let (ids, idx, vals) = make(&mut rng, 60, f, 4, false);
    let mut agg = SparseAggregator::new(f, 0, f, TokenMode::Max, false).unwrap();
    let rows = run_sparse(&mut agg, &ids, &idx, &vals, 4, &[5, 50, 51, 100]);
    let n = rows.n_samples();
    let labels: Vec<bool> = (0..n * 3).map(|_| rng.below(3) == 0).collect();
    let li = LabelIndex::from_dense(&labels, n, 3).unwrap();
    let opts = ScoreOptions {
        stats: true,
        with_se: true,
        top_n: 5,
    };
    let mut r = Vec::new();
    for s in 0..n {
        r.extend(std::iter::repeat_n(
            s as i64,
            (rows.indptr[s + 1] - rows.indptr[s]) as usize,
        ));
    }
    let want = score_sparse_coo(&r, &rows.features, &rows.values, &li, f, &opts).unwrap();
    for (lo, hi) in [(0, f), (0, 7), (7, 20), (20, f)] {
        let mut lists = FeatureLists::new(lo, hi);
        // in two halves, to number samples across calls
        let half = SampleRows::concat(vec![rows.clone()]);
        let (a, b) = split_rows(&half, n / 2);
        lists.add(&[a]).unwrap();
        lists.add(&[b]).unwrap();
        let got = lists.score(&li, &opts).unwrap();
        assert_eq!(got.auroc, want.auroc[lo * 3..hi * 3]);
        assert_eq!(got.se, want.se[lo * 3..hi * 3]);
        assert_eq!(got.top_rows, want.top_rows[lo * 5..hi * 5]);
        assert_eq!(got.mean_pos, want.mean_pos[lo * 3..hi * 3]);
    }
    let mut lists = FeatureLists::new(0, f);
    lists.add(std::slice::from_ref(&rows)).unwrap();
    assert!(lists
        .score(&LabelIndex::from_dense(&[true], 1, 1).unwrap(), &opts)
        .is_err());
}

fn split_rows(r: &SampleRows, at: usize) -> (SampleRows, SampleRows) {
    let m = r.indptr[at] as usize;
    let a = SampleRows {
        indptr: r.indptr[..=at].to_vec(),
        features: r.features[..m].to_vec(),
        values: r.values[..m].to_vec(),
    };
    let b = SampleRows {
        indptr: r.indptr[at..].iter().map(|&x| x - m as u64).collect(),
        features: r.features[m..].to_vec(),
        values: r.values[m..].to_vec(),
    };
    (a, b)
}

#[test]
fn fit_budget_drops_the_highest_features() {
    let mut lists = FeatureLists::new(10, 20);
    let rows = SampleRows {
        indptr: vec![0, 10, 20],
        features: (10..20).chain(10..20).collect(),
        values: vec![1.0; 20],
    };
    lists.add(&[rows]).unwrap();
    let per = lists.bytes() / 10;
    assert_eq!(lists.fit_budget(usize::MAX, 2), None);
    // 2 of 100 samples seen: the lists project to 50x; 4 features' worth of budget
    let hi = lists.fit_budget(per * 50 * 4, 100).unwrap();
    assert!((11..=13).contains(&hi), "{hi}");
    assert_eq!(lists.hi(), hi);
    assert!(lists.bytes() <= per * 4);
}
