//! Per-sample reduction of a feature block's top-k entries (max or mean),
//! scattered into a dense scratch with a touched list: O(entries) per sample.

use super::SampleRows;

/// One sample's reduction state over the features of a block.
pub(super) trait Reducer: Send {
    fn with_width(width: usize) -> Self;
    /// Adds value `v` of block feature `j` at the sample's token row `r`;
    /// `false` if `j` was already added at row `r`.
    fn add(&mut self, j: usize, r: u32, v: f32) -> bool;
    /// Emits the sample's nonzeros (features `lo + j`) and resets the state.
    fn emit(&mut self, n_rows: u32, lo: u32, sort: bool, out: &mut SampleRows);
}

const EMPTY_STAMP: u32 = u32::MAX;
const GAP: u32 = 1 << 31;

/// Max: one `u64` slot per feature, `f32` bits of the running max above the
/// last row that touched it; bit 31 of the row records a row that skipped it
/// (the feature was 0 there, so the max is at least 0).
pub(super) struct MaxReducer {
    slots: Vec<u64>,
    touched: Vec<u32>,
}

impl Reducer for MaxReducer {
    fn with_width(width: usize) -> Self {
        Self {
            slots: vec![u64::MAX; width],
            touched: Vec::new(),
        }
    }

    #[inline(always)]
    fn add(&mut self, j: usize, r: u32, v: f32) -> bool {
        let s = self.slots[j];
        let st = s as u32;
        let (acc, gap) = if st == EMPTY_STAMP {
            self.touched.push(j as u32);
            (v, r > 0)
        } else {
            let prev = st & !GAP;
            if prev == r {
                return false;
            }
            let acc = f32::from_bits((s >> 32) as u32);
            (if v > acc { v } else { acc }, st & GAP != 0 || r > prev + 1)
        };
        let stamp = r | if gap { GAP } else { 0 };
        self.slots[j] = (u64::from(acc.to_bits()) << 32) | u64::from(stamp);
        true
    }

    fn emit(&mut self, n_rows: u32, lo: u32, sort: bool, out: &mut SampleRows) {
        if sort {
            self.touched.sort_unstable();
        }
        for &j in &self.touched {
            let s = self.slots[j as usize];
            let st = s as u32;
            let acc = f32::from_bits((s >> 32) as u32);
            let gap = st & GAP != 0 || (st & !GAP) + 1 < n_rows;
            let v = if gap && acc < 0.0 { 0.0 } else { acc };
            if v != 0.0 {
                out.features.push(lo + j);
                out.values.push(v);
            }
            self.slots[j as usize] = u64::MAX;
        }
        self.touched.clear();
        out.close_sample();
    }
}

/// Mean: a `f64` sum per feature and the last row that touched it.
pub(super) struct MeanReducer {
    acc: Vec<f64>,
    stamp: Vec<u32>,
    touched: Vec<u32>,
}

impl Reducer for MeanReducer {
    fn with_width(width: usize) -> Self {
        Self {
            acc: vec![0.0; width],
            stamp: vec![EMPTY_STAMP; width],
            touched: Vec::new(),
        }
    }

    #[inline(always)]
    fn add(&mut self, j: usize, r: u32, v: f32) -> bool {
        let st = self.stamp[j];
        if st == EMPTY_STAMP {
            self.touched.push(j as u32);
            self.acc[j] = f64::from(v);
        } else {
            if st == r {
                return false;
            }
            self.acc[j] += f64::from(v);
        }
        self.stamp[j] = r;
        true
    }

    fn emit(&mut self, n_rows: u32, lo: u32, sort: bool, out: &mut SampleRows) {
        if sort {
            self.touched.sort_unstable();
        }
        let n = f64::from(n_rows.max(1));
        for &j in &self.touched {
            let v = (self.acc[j as usize] / n) as f32;
            if v != 0.0 {
                out.features.push(lo + j);
                out.values.push(v);
            }
            self.stamp[j as usize] = EMPTY_STAMP;
        }
        self.touched.clear();
        out.close_sample();
    }
}
