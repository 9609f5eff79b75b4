use std::sync::Arc;

use super::*;
use crate::store::durable::tests::tempdir;

fn layout(chunk_rows: u64, compression: Compression, inner: Option<u64>) -> ArrayLayout {
    ArrayLayout {
        dtype: ElemType::F32,
        width: Some(3),
        chunk_rows,
        compression,
        inner_rows: inner,
        dims: None,
    }
}

fn rows_bytes(start: u32, n: u32) -> Vec<u8> {
    (start * 3..(start + n) * 3)
        .flat_map(|v| (v as f32).to_le_bytes())
        .collect()
}

fn roundtrip(compression: Compression, inner: Option<u64>) {
    let dir = tempdir();
    let store = Arc::new(DurableStore::new(&dir).unwrap());
    let mut a = RowArray::create(store.clone(), "acts/x", layout(4, compression, inner)).unwrap();
    // ragged appends across chunk boundaries
    a.append(&rows_bytes(0, 3)).unwrap();
    a.append(&rows_bytes(3, 6)).unwrap();
    a.commit(9).unwrap();
    a.append(&rows_bytes(9, 1)).unwrap(); // uncommitted
    let mut out = vec![0u8; 9 * 12];
    a.read_into(0, 9, &mut out).unwrap();
    assert_eq!(out, rows_bytes(0, 9));
    assert!(a.read_into(0, 10, &mut [0u8; 120]).is_err());
    drop(a);
    // re-open at the committed count, continue the partial chunk
    let mut b = RowArray::open(store.clone(), "acts/x", 9, true).unwrap();
    b.append(&rows_bytes(9, 5)).unwrap();
    b.commit(14).unwrap();
    let mut out = vec![0u8; 12 * 12];
    b.read_into(2, 14, &mut out).unwrap();
    assert_eq!(out, rows_bytes(2, 12));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn roundtrip_plain_zstd_sharded() {
    roundtrip(Compression::None, None);
    roundtrip(Compression::Zstd(3), None);
    roundtrip(Compression::Zstd(1), Some(2));
}

#[test]
fn missing_and_corrupt_chunks_are_named() {
    let dir = tempdir();
    let store = Arc::new(DurableStore::new(&dir).unwrap());
    let mut a = RowArray::create(
        store.clone(),
        "acts/y",
        layout(2, Compression::Zstd(1), None),
    )
    .unwrap();
    a.append(&rows_bytes(0, 6)).unwrap();
    a.commit(6).unwrap();
    std::fs::write(dir.join("acts/y/c/1/0"), b"garbage").unwrap();
    std::fs::remove_file(dir.join("acts/y/c/2/0")).unwrap();
    let mut out = vec![0u8; 2 * 12];
    let e = a.read_into(2, 4, &mut out).unwrap_err().to_string();
    assert!(e.contains("acts/y") && e.contains("chunk 1"), "{e}");
    let e = a.read_into(4, 6, &mut out).unwrap_err().to_string();
    assert!(e.contains("chunk 2") && e.contains("missing"), "{e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn disjoint_chunk_ranges_then_commit() {
    // two "ranks" write disjoint chunk-aligned ranges, then one commit step
    let dir = tempdir();
    let store = Arc::new(DurableStore::new(&dir).unwrap());
    let mut a =
        RowArray::create(store.clone(), "acts/r", layout(4, Compression::None, None)).unwrap();
    let mut b = RowArray::open(store.clone(), "acts/r", 0, true).unwrap();
    b.write_at(8, &rows_bytes(8, 3), true).unwrap();
    a.write_at(0, &rows_bytes(0, 8), false).unwrap();
    assert!(
        a.write_at(2, &rows_bytes(2, 4), false).is_err(),
        "unaligned start"
    );
    assert!(
        a.write_at(0, &rows_bytes(0, 3), false).is_err(),
        "ends inside a chunk"
    );
    a.adopt_written(11).unwrap();
    assert!(
        a.read_into(0, 1, &mut [0u8; 12]).is_err(),
        "nothing committed yet"
    );
    a.commit(11).unwrap();
    let mut out = vec![0u8; 11 * 12];
    a.read_into(0, 11, &mut out).unwrap();
    assert_eq!(out, rows_bytes(0, 11));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn finds_nonfinite_rows() {
    let mut b = rows_bytes(0, 4);
    b[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
    b[44..48].copy_from_slice(&f32::INFINITY.to_le_bytes());
    assert_eq!(nonfinite_rows(&b, ElemType::F32, 3), vec![1, 3]);
    let h: Vec<u8> = [0x3c00u16, 0x7c00, 0x0001, 0xfe00]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(nonfinite_rows(&h, ElemType::F16, 1), vec![1, 3]);
    let bf: Vec<u8> = [0x3f80u16, 0x7f80, 0xffc1]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(nonfinite_rows(&bf, ElemType::BF16, 1), vec![1, 2]);
}
