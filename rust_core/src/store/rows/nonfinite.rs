//! The scan for rows holding NaN or ±Inf (checked before rows are committed).

use rayon::prelude::*;

use crate::store::dtype::ElemType;

/// Rows per task of [`nonfinite_rows`].
const SCAN_ROWS_PER_TASK: usize = 1024;

/// Whether `row` (elements of `dtype`) holds NaN or ±Inf. Branch-free over the
/// row (no early exit), so the compiler vectorises it.
fn row_is_nonfinite(row: &[u8], dtype: ElemType) -> bool {
    // float16 / bfloat16 / float32: exponent bits all ones means Inf or NaN
    fn any_exp_all_ones<const N: usize>(row: &[u8], mask: u32) -> bool {
        row.chunks_exact(N)
            .map(|b| {
                let v = if N == 2 {
                    u32::from(u16::from_le_bytes([b[0], b[1]]))
                } else {
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                };
                u8::from(v & mask == mask)
            })
            .fold(0u8, |acc, x| acc | x)
            != 0
    }
    match dtype {
        ElemType::F32 => any_exp_all_ones::<4>(row, 0x7f80_0000),
        ElemType::F16 => any_exp_all_ones::<2>(row, 0x7c00),
        ElemType::BF16 => any_exp_all_ones::<2>(row, 0x7f80),
        _ => false,
    }
}

/// Indices (within `bytes`, rows of `width` elements of `dtype`) of rows that hold NaN or ±Inf.
pub fn nonfinite_rows(bytes: &[u8], dtype: ElemType, width: usize) -> Vec<u64> {
    let row_bytes = width * dtype.size();
    if row_bytes == 0 || !dtype.is_float() {
        return Vec::new();
    }
    bytes
        .par_chunks(row_bytes * SCAN_ROWS_PER_TASK)
        .enumerate()
        .flat_map_iter(|(block, rows)| {
            rows.chunks(row_bytes)
                .enumerate()
                .filter(|(_, row)| row_is_nonfinite(row, dtype))
                .map(move |(i, _)| (block * SCAN_ROWS_PER_TASK + i) as u64)
        })
        .collect()
}
