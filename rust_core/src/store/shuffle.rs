//! Shuffled streaming of one array's rows in fixed-size batches.
//!
//! Per epoch the chunks are permuted (seeded by `(seed, epoch)`); consecutive
//! chunks of that order form windows of `window_chunks` chunks. A background
//! thread decodes each window's chunks (in parallel; an uncompressed chunk is
//! its memory-mapped file, not a copy), draws the permutation of the window's
//! rows (seeded by `(seed, epoch, window)`) and hands both over a bounded
//! channel (`prefetch` windows ahead). A batch is gathered row by row from the
//! decoded chunks straight into the caller's buffer: every byte is copied
//! once between the page cache and the batch. The epoch is the concatenation
//! of the shuffled windows; batch `b` is its rows `[b*B, (b+1)*B)`. So the
//! order depends only on (seed, epoch, chunk layout, window size), every row
//! appears exactly once per epoch, and a stream can start at any batch without
//! reading the windows before it.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rayon::prelude::*;

use super::rows::{ChunkBytes, RowArray};
use crate::error::{CoreError, CoreResult};

/// Options of a [`ShuffleStream`].
#[derive(Debug, Clone, Copy)]
pub struct ShuffleConfig {
    /// Rows per batch (the last batch of an epoch may be shorter unless `drop_last`).
    pub batch_size: u64,
    /// Permute chunks and rows; `false` streams rows in order.
    pub shuffle: bool,
    /// Seed of the permutations.
    pub seed: u64,
    /// Epoch number (part of the permutation seed).
    pub epoch: u64,
    /// First batch to hand out (resume).
    pub start_batch: u64,
    /// Chunks per in-memory shuffle window.
    pub window_chunks: u64,
    /// Windows read ahead by the background thread.
    pub prefetch: usize,
    /// Skip the final short batch.
    pub drop_last: bool,
}

/// SplitMix64: a tiny, fixed, well-mixed generator, so orders never change
/// with a dependency upgrade.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for a tuple of seeds.
    pub fn new(parts: &[u64]) -> Self {
        let mut s = Self(0x9e37_79b9_7f4a_7c15);
        for &p in parts {
            s.0 ^= p;
            s.0 = s.next_u64();
        }
        s
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the bias is below 2^-40 for our sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// A Fisher-Yates permutation of `0..n`.
    pub fn permutation(&mut self, n: usize) -> Vec<u64> {
        let mut p: Vec<u64> = (0..n as u64).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }
}

/// The windows of an epoch: each a list of `(start, stop)` row ranges (one per chunk).
pub fn epoch_plan(rows: u64, chunk_rows: u64, cfg: &ShuffleConfig) -> Vec<Vec<(u64, u64)>> {
    let n_chunks = rows.div_ceil(chunk_rows) as usize;
    let order: Vec<u64> = if cfg.shuffle {
        SplitMix64::new(&[cfg.seed, cfg.epoch, 1]).permutation(n_chunks)
    } else {
        (0..n_chunks as u64).collect()
    };
    let ranges: Vec<(u64, u64)> = order
        .iter()
        .map(|&c| (c * chunk_rows, ((c + 1) * chunk_rows).min(rows)))
        .collect();
    ranges
        .chunks(cfg.window_chunks.max(1) as usize)
        .map(<[(u64, u64)]>::to_vec)
        .collect()
}

/// One decoded window: its chunks and, in stream order, where each row lives.
struct Window {
    chunks: Vec<ChunkBytes>,
    /// `(chunk in window, row in chunk)` of the window's rows in stream order.
    order: Vec<(u32, u32)>,
}

/// A running batch stream over one array (see the module docs).
pub struct ShuffleStream {
    rx: Option<Receiver<CoreResult<Window>>>,
    worker: Option<JoinHandle<()>>,
    current: Option<Window>,
    pos: usize,
    row_bytes: usize,
    batch_size: u64,
    remaining: u64,
}

/// Rows gathered per rayon task when a batch is filled.
const GATHER_ROWS_PER_TASK: usize = 512;

fn read_window(
    array: &RowArray,
    ranges: &[(u64, u64)],
    cfg: &ShuffleConfig,
    window_index: usize,
) -> CoreResult<Window> {
    let chunk_rows = array.chunk_rows();
    let chunks = ranges
        .par_iter()
        .map(|&(a, _)| array.decode_chunk(a / chunk_rows))
        .collect::<CoreResult<Vec<_>>>()?;
    // window row w (chunks concatenated in plan order) -> (chunk, row in chunk)
    let mut rows: Vec<(u32, u32)> = Vec::new();
    for (k, &(a, b)) in ranges.iter().enumerate() {
        let k = u32::try_from(k).map_err(|_| CoreError::input("window has too many chunks"))?;
        let n = u32::try_from(b - a).map_err(|_| CoreError::input("chunk has too many rows"))?;
        rows.extend((0..n).map(|r| (k, r)));
    }
    let order = if cfg.shuffle {
        SplitMix64::new(&[cfg.seed, cfg.epoch, 2, window_index as u64])
            .permutation(rows.len())
            .into_iter()
            .map(|p| rows[p as usize])
            .collect()
    } else {
        rows
    };
    Ok(Window { chunks, order })
}

/// Rows ahead of the copy whose source lines are prefetched: the rows of a
/// window sit at random places in memory, so the loads of the next rows are
/// started while the current one is copied.
const PREFETCH_AHEAD: usize = 4;

/// Starts loading `row` into the cache.
#[inline(always)]
fn prefetch(row: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks(64) {
        // SAFETY: a prefetch hint on an address inside a live slice; it never faults.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast::<i8>(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// Copies the rows named by `order` from `chunks` into `out` (rows of `rb` bytes).
fn gather(chunks: &[ChunkBytes], order: &[(u32, u32)], rb: usize, out: &mut [u8]) {
    let srcs: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
    let row = |&(k, r): &(u32, u32)| {
        let o = r as usize * rb;
        &srcs[k as usize][o..o + rb]
    };
    let copy = |dst: &mut [u8], rows: &[(u32, u32)]| {
        rows.iter()
            .take(PREFETCH_AHEAD)
            .for_each(|r| prefetch(row(r)));
        for (i, (d, r)) in dst.chunks_exact_mut(rb).zip(rows).enumerate() {
            if let Some(next) = rows.get(i + PREFETCH_AHEAD) {
                prefetch(row(next));
            }
            d.copy_from_slice(row(r));
        }
    };
    if order.len() <= GATHER_ROWS_PER_TASK {
        copy(out, order);
    } else {
        out.par_chunks_mut(rb * GATHER_ROWS_PER_TASK)
            .zip(order.par_chunks(GATHER_ROWS_PER_TASK))
            .for_each(|(d, rows)| copy(d, rows));
    }
}

impl ShuffleStream {
    /// Starts streaming the committed rows of `array`.
    pub fn start(array: Arc<RowArray>, cfg: ShuffleConfig) -> CoreResult<Self> {
        if cfg.batch_size == 0 {
            return Err(CoreError::input("batch_size must be > 0"));
        }
        let rows = array.committed();
        let full = rows / cfg.batch_size;
        let total = if cfg.drop_last {
            full
        } else {
            rows.div_ceil(cfg.batch_size)
        };
        if cfg.start_batch > total {
            return Err(CoreError::input(format!(
                "start_batch {} is past the {total} batches of an epoch of {rows} rows",
                cfg.start_batch
            )));
        }
        let epoch_rows = if cfg.drop_last {
            full * cfg.batch_size
        } else {
            rows
        };
        let skip = (cfg.start_batch * cfg.batch_size).min(epoch_rows);
        let plan = epoch_plan(rows, array.chunk_rows(), &cfg);
        // windows wholly before `skip` are never read
        let mut first = 0usize;
        let mut before = 0u64;
        for w in &plan {
            let n: u64 = w.iter().map(|(a, b)| b - a).sum();
            if before + n > skip {
                break;
            }
            before += n;
            first += 1;
        }
        let offset_in_first = (skip - before) as usize;
        let (tx, rx) = sync_channel::<CoreResult<Window>>(cfg.prefetch.max(1));
        let worker_array = array.clone();
        let worker = std::thread::Builder::new()
            .name("vlmfast-shuffle".into())
            .spawn(move || {
                for (i, ranges) in plan.iter().enumerate().skip(first) {
                    let w = read_window(&worker_array, ranges, &cfg, i);
                    let failed = w.is_err();
                    if tx.send(w).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| CoreError::io("starting the shuffle thread", e))?;
        Ok(Self {
            rx: Some(rx),
            worker: Some(worker),
            current: None,
            pos: offset_in_first,
            row_bytes: array.row_bytes(),
            batch_size: cfg.batch_size,
            remaining: epoch_rows - skip,
        })
    }

    /// Rows the next batch will hold (0 at the end of the epoch).
    pub fn next_len(&self) -> u64 {
        self.remaining.min(self.batch_size)
    }

    /// Fills `out` (exactly `next_len()` rows) with the next batch; returns its rows.
    pub fn next_into(&mut self, out: &mut [u8]) -> CoreResult<u64> {
        let n = self.next_len();
        if out.len() != n as usize * self.row_bytes {
            return Err(CoreError::input(format!(
                "batch buffer has {} bytes, the next batch needs {}",
                out.len(),
                n as usize * self.row_bytes
            )));
        }
        let rb = self.row_bytes;
        let mut filled = 0usize;
        while filled < out.len() {
            let exhausted = self
                .current
                .as_ref()
                .is_none_or(|w| self.pos >= w.order.len());
            if exhausted {
                let rx = self
                    .rx
                    .as_ref()
                    .ok_or_else(|| CoreError::Internal("stream closed".into()))?;
                let window = rx
                    .recv()
                    .map_err(|_| CoreError::Internal("shuffle thread ended early".into()))??;
                if self.current.is_some() {
                    self.pos = 0;
                }
                self.current = Some(window);
                continue;
            }
            let w = self.current.as_ref().expect("checked above");
            let take = (w.order.len() - self.pos).min((out.len() - filled) / rb);
            gather(
                &w.chunks,
                &w.order[self.pos..self.pos + take],
                rb,
                &mut out[filled..filled + take * rb],
            );
            filled += take * rb;
            self.pos += take;
        }
        self.remaining -= n;
        Ok(n)
    }
}

impl Drop for ShuffleStream {
    fn drop(&mut self) {
        self.rx = None; // the worker's next send fails and it returns
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::dtype::ElemType;
    use super::super::durable::tests::tempdir;
    use super::super::durable::DurableStore;
    use super::super::rows::{ArrayLayout, Compression};
    use super::*;

    fn cfg(batch: u64, seed: u64, epoch: u64, start: u64) -> ShuffleConfig {
        ShuffleConfig {
            batch_size: batch,
            shuffle: true,
            seed,
            epoch,
            start_batch: start,
            window_chunks: 3,
            prefetch: 2,
            drop_last: false,
        }
    }

    fn collect(array: &Arc<RowArray>, c: ShuffleConfig) -> Vec<Vec<i64>> {
        let mut s = ShuffleStream::start(array.clone(), c).unwrap();
        let mut out = Vec::new();
        loop {
            let n = s.next_len() as usize;
            if n == 0 {
                return out;
            }
            let mut buf = vec![0u8; n * 8];
            s.next_into(&mut buf).unwrap();
            out.push(
                buf.chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
            );
        }
    }

    #[test]
    fn every_row_once_deterministic_resumable() {
        let dir = tempdir();
        let store = Arc::new(DurableStore::new(&dir).unwrap());
        let layout = ArrayLayout {
            dtype: ElemType::I64,
            width: None,
            chunk_rows: 7,
            compression: Compression::None,
            inner_rows: None,
            dims: Some(vec!["x.row".into()]),
        };
        let mut a = RowArray::create(store, "index/x/sample", layout).unwrap();
        let n = 100i64;
        let bytes: Vec<u8> = (0..n).flat_map(|v| v.to_le_bytes()).collect();
        a.append(&bytes).unwrap();
        a.commit(n as u64).unwrap();
        let a = Arc::new(a);
        let e0 = collect(&a, cfg(16, 5, 0, 0));
        assert_eq!(e0.len(), 7);
        assert_eq!(e0.last().unwrap().len(), 4);
        let mut all: Vec<i64> = e0.concat();
        assert_ne!(all, (0..n).collect::<Vec<_>>(), "shuffled");
        all.sort_unstable();
        assert_eq!(all, (0..n).collect::<Vec<_>>(), "every row exactly once");
        assert_eq!(collect(&a, cfg(16, 5, 0, 0)), e0, "deterministic");
        assert_ne!(collect(&a, cfg(16, 5, 1, 0)), e0, "epochs differ");
        assert_eq!(
            collect(&a, cfg(16, 5, 0, 3)),
            e0[3..].to_vec(),
            "resume at batch 3"
        );
        assert!(collect(&a, cfg(16, 5, 0, 7)).is_empty());
        let mut ordered = cfg(32, 0, 0, 0);
        ordered.shuffle = false;
        assert_eq!(collect(&a, ordered).concat(), (0..n).collect::<Vec<_>>());
        let mut dl = cfg(16, 5, 0, 0);
        dl.drop_last = true;
        assert_eq!(collect(&a, dl), e0[..6].to_vec());
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut r = SplitMix64::new(&[1, 2]);
        let mut p = r.permutation(1000);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }
}
