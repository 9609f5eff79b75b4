//! Concept labels as a sparse row index.
//!
//! The statistics walk every activation once and add it to the accumulators
//! of the concepts its row is *listed* for. A concept is listed where it is
//! positive, or, when more than half of the rows are positive for it
//! ("flipped"), where it is negative. Each row then lists at most half of the
//! concepts, so a pass costs `nnz × min(positives, negatives)` per row instead
//! of `nnz × C`; the other class follows from the totals.

use rayon::prelude::*;

use crate::error::{CoreError, CoreResult};

/// Row-major concept labels turned into a CSR list of listed concepts per row.
#[derive(Debug, Clone)]
pub struct LabelIndex {
    /// Number of rows (samples).
    pub n_rows: usize,
    /// Number of concepts.
    pub n_concepts: usize,
    /// Positives per concept.
    pub n_pos: Vec<u64>,
    /// Concepts whose negatives (not positives) are listed.
    pub flipped: Vec<bool>,
    /// Listed rows per concept (positives, or negatives where flipped).
    pub n_listed: Vec<u64>,
    offsets: Vec<u64>,
    concepts: Vec<u32>,
    /// Per row, up to 4 listed concept ids inline (16 bits each, `EMPTY` pads),
    /// or `OVERFLOW` in the low 16 bits when the row lists more (or C is too
    /// large): one 8-byte load per row instead of two dependent ones.
    slots: Vec<u64>,
}

const EMPTY: u64 = 0xFFFF;
const OVERFLOW: u64 = 0xFFFE;

impl LabelIndex {
    /// Builds the index from a row-major `[n_rows, n_concepts]` boolean matrix.
    pub fn from_dense(labels: &[bool], n_rows: usize, n_concepts: usize) -> CoreResult<Self> {
        if labels.len() != n_rows * n_concepts {
            return Err(CoreError::input(format!(
                "labels has {} elements, expected {n_rows} rows x {n_concepts} concepts",
                labels.len()
            )));
        }
        if n_concepts > u32::MAX as usize {
            return Err(CoreError::input(
                "labels has too many concepts (more than 2^32)",
            ));
        }
        let n_pos = count_positives(labels, n_rows, n_concepts);
        let half = n_rows as u64 / 2;
        let flipped: Vec<bool> = n_pos.iter().map(|&p| p > half).collect();
        let n_listed: Vec<u64> = n_pos
            .iter()
            .zip(&flipped)
            .map(|(&p, &f)| if f { n_rows as u64 - p } else { p })
            .collect();
        let (offsets, concepts) = list_concepts(labels, n_rows, &flipped);
        let slots = inline_slots(&offsets, &concepts, n_rows, n_concepts);
        Ok(Self {
            n_rows,
            n_concepts,
            n_pos,
            flipped,
            n_listed,
            offsets,
            concepts,
            slots,
        })
    }

    /// The concepts listed for `row`.
    #[inline]
    pub fn listed(&self, row: usize) -> &[u32] {
        let lo = self.offsets[row] as usize;
        let hi = self.offsets[row + 1] as usize;
        &self.concepts[lo..hi]
    }

    /// Calls `f` with each concept listed for `row`.
    #[inline(always)]
    pub fn for_each_listed(&self, row: usize, mut f: impl FnMut(usize)) {
        let mut slot = self.slots[row];
        if slot & 0xFFFF == OVERFLOW {
            for &c in self.listed(row) {
                f(c as usize);
            }
            return;
        }
        for _ in 0..4 {
            let c = slot & 0xFFFF;
            if c == EMPTY {
                break;
            }
            f(c as usize);
            slot >>= 16;
        }
    }

    /// Hints the CPU to fetch `row`'s labels (the walk visits rows in value order).
    #[inline(always)]
    pub fn prefetch(&self, row: usize) {
        #[cfg(target_arch = "x86_64")]
        if let Some(p) = self.slots.get(row) {
            // SAFETY: prefetching a valid address has no side effects.
            unsafe {
                core::arch::x86_64::_mm_prefetch(
                    (p as *const u64).cast::<i8>(),
                    core::arch::x86_64::_MM_HINT_T0,
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = row;
    }

    /// Bytes held by the index (for memory accounting).
    pub fn heap_bytes(&self) -> usize {
        self.offsets.len() * 8
            + self.concepts.len() * 4
            + self.slots.len() * 8
            + self.n_concepts * 17
    }
}

/// Rows per parallel task when the index is built.
const ROWS_PER_BLOCK: usize = 4096;

/// Positives per concept of a row-major `[n_rows, c]` boolean matrix.
fn count_positives(labels: &[bool], n_rows: usize, c: usize) -> Vec<u64> {
    if c == 0 || n_rows == 0 {
        return vec![0; c];
    }
    labels
        .par_chunks(ROWS_PER_BLOCK * c)
        .map(|block| {
            let mut counts = vec![0u64; c];
            for row in block.chunks_exact(c) {
                for (count, &y) in counts.iter_mut().zip(row) {
                    *count += u64::from(y);
                }
            }
            counts
        })
        .reduce(
            || vec![0u64; c],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

/// The CSR lists of listed concepts per row (`offsets[n_rows + 1]`,
/// `concepts`): built per block of rows in parallel, then concatenated.
fn list_concepts(labels: &[bool], n_rows: usize, flipped: &[bool]) -> (Vec<u64>, Vec<u32>) {
    let c = flipped.len();
    let blocks: Vec<(Vec<u32>, Vec<u32>)> = if c == 0 || n_rows == 0 {
        Vec::new()
    } else {
        labels
            .par_chunks(ROWS_PER_BLOCK * c)
            .map(|block| {
                let mut counts = Vec::with_capacity(block.len() / c);
                let mut list = Vec::new();
                for row in block.chunks_exact(c) {
                    let before = list.len();
                    for (j, (&y, &f)) in row.iter().zip(flipped).enumerate() {
                        if y != f {
                            list.push(j as u32);
                        }
                    }
                    counts.push((list.len() - before) as u32);
                }
                (counts, list)
            })
            .collect()
    };
    let mut offsets = Vec::with_capacity(n_rows + 1);
    offsets.push(0u64);
    let total: usize = blocks.iter().map(|(_, l)| l.len()).sum();
    let mut concepts = Vec::with_capacity(total);
    let mut acc = 0u64;
    for (counts, list) in blocks {
        for n in counts {
            acc += u64::from(n);
            offsets.push(acc);
        }
        concepts.extend_from_slice(&list);
    }
    if n_rows > 0 && c == 0 {
        offsets.resize(n_rows + 1, 0);
    }
    (offsets, concepts)
}

/// Per row, up to 4 listed concepts packed inline (see [`LabelIndex`]'s `slots`).
fn inline_slots(offsets: &[u64], concepts: &[u32], n_rows: usize, c: usize) -> Vec<u64> {
    let inline_ok = c < OVERFLOW as usize;
    (0..n_rows)
        .into_par_iter()
        .map(|r| {
            let (lo, hi) = (offsets[r] as usize, offsets[r + 1] as usize);
            if !inline_ok || hi - lo > 4 {
                return OVERFLOW;
            }
            let mut slot = u64::MAX;
            for (i, &cid) in concepts[lo..hi].iter().enumerate() {
                slot &= !(EMPTY << (16 * i));
                slot |= u64::from(cid) << (16 * i);
            }
            slot
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_positives_or_negatives_of_majority_concepts() {
        // 4 rows x 3 concepts; concept 2 is positive in 3 of 4 rows -> flipped.
        let labels = [
            true, false, true, //
            false, false, true, //
            false, true, true, //
            false, false, false,
        ];
        let idx = LabelIndex::from_dense(&labels, 4, 3).unwrap();
        assert_eq!(idx.n_pos, vec![1, 1, 3]);
        assert_eq!(idx.flipped, vec![false, false, true]);
        assert_eq!(idx.n_listed, vec![1, 1, 1]);
        assert_eq!(idx.listed(0), &[0]);
        assert_eq!(idx.listed(1), &[] as &[u32]);
        assert_eq!(idx.listed(2), &[1]);
        assert_eq!(idx.listed(3), &[2]);
        for r in 0..4 {
            let mut got = Vec::new();
            idx.for_each_listed(r, |c| got.push(c as u32));
            assert_eq!(got, idx.listed(r));
        }
    }

    #[test]
    fn rows_with_many_concepts_overflow_to_the_list() {
        let labels: Vec<bool> = (0..2 * 20).map(|i| i % 20 < 7 || i == 25).collect();
        let idx = LabelIndex::from_dense(&labels, 2, 20).unwrap();
        for r in 0..2 {
            let mut got = Vec::new();
            idx.for_each_listed(r, |c| got.push(c as u32));
            assert_eq!(got, idx.listed(r));
        }
    }

    #[test]
    fn rejects_wrong_size() {
        assert!(LabelIndex::from_dense(&[true; 5], 2, 3).is_err());
    }
}
