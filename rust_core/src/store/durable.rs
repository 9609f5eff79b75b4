//! A filesystem zarr store whose writes are atomic and durable.
//!
//! zarrs' `FilesystemStore` truncates and rewrites a key in place. Re-writing the
//! partial last chunk of an array (which holds committed rows) in place would lose
//! them if the process died mid-write, so every `set` here writes a sibling temp
//! file, `fsync`s it, renames it over the key and `fsync`s the directory. A key
//! therefore holds either its old or its new bytes. Metadata keys (`zarr.json`)
//! are durable when `set` returns; chunk keys are staged (temp file written,
//! not yet fsynced or renamed; a chunk that holds no committed rows is written
//! in place, since a torn write of it loses nothing) until
//! [`DurableStore::sync_pending`] (or [`sync_staged`] for the staged files of
//! several arrays together), which makes them durable with one `syncfs` (or
//! an `fsync` per file when there are few), renames the temp files into place
//! and fsyncs their folders, so a commit pays for its fsyncs once, not per
//! chunk. Large chunk files are written with direct I/O by several threads
//! (`store::direct`), so a commit's sync finds little dirty data. (Starting
//! each file's writeback early, with `sync_file_range` in the writer or
//! `fdatasync` on a background thread, was measured slower on the benchmark
//! VM.) Because a key holding committed data is only ever replaced by rename,
//! never rewritten in place, readers (who read committed rows only) may
//! map chunk files into memory ([`DurableStore::map_key`]). Reads, listing and
//! erasing are delegated to `FilesystemStore`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use memmap2::{Mmap, MmapOptions};
use rayon::prelude::*;

use zarrs::filesystem::{FilesystemStore, FilesystemStoreOptions};
use zarrs::storage::byte_range::ByteRangeIterator;
use zarrs::storage::{
    Bytes, ListableStorageTraits, MaybeBytes, MaybeBytesIterator, OffsetBytesIterator,
    ReadableStorageTraits, StorageError, StoreKey, StoreKeys, StoreKeysPrefixes, StorePrefix,
    WritableStorageTraits,
};

use crate::error::{CoreError, CoreResult};
use crate::store::direct::{self, AlignedPool};

/// Suffix of the temp files a `set` writes before renaming them into place.
pub const TEMP_SUFFIX: &str = ".vlmfast-tmp";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A staged key write awaiting [`sync_staged`].
#[derive(Debug)]
pub struct StagedWrite {
    /// The temp file to rename over `path`, or `None` when the bytes were
    /// written to `path` itself (a key that holds no committed data).
    tmp: Option<PathBuf>,
    /// The key's file.
    path: PathBuf,
}

/// Staged key writes.
pub type Staged = Vec<StagedWrite>;

/// From this many staged files on, one `syncfs` makes them durable instead of
/// one `fsync` per file and folder.
const SYNCFS_MIN_FILES: usize = 8;

/// A store key's file mapped read-only into memory: its pages are the page
/// cache's, so decoding from it copies the bytes once.
#[derive(Debug)]
pub enum MappedFile {
    /// A mapped, non-empty file.
    Map(Mmap),
    /// An empty file (which cannot be mapped).
    Empty,
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Map(m) => m,
            Self::Empty => &[],
        }
    }
}

/// Maps `file` read-only with every page mapped now (one call instead of a
/// page fault per 64 KiB).
///
/// On Linux the mapping is first advised `MADV_HUGEPAGE`, then populated with
/// `MADV_POPULATE_READ`: pages the populate reads in from disk then land in
/// 2 MiB page-cache folios mapped by one page-table entry each (ext4 and xfs
/// support such folios, and `mmap` aligns file mappings to 2 MiB), and later
/// mappings of those cached pages get the same. The shuffled stream's random
/// row reads then miss the TLB far less often: measured on the benchmark VM,
/// the stream ran 0.57x the sequential read with 4 KiB mappings of pages read
/// in by a plain populate. Pages cached as small folios (e.g. by a buffered
/// writer) are mapped as before. Kernels without `MADV_POPULATE_READ`
/// (before 5.14) fall back to `MAP_POPULATE`.
///
/// # Safety
/// As for [`Mmap::map`]: the file must not be truncated or written in place
/// while mapped.
unsafe fn map_huge_populated(file: &File) -> std::io::Result<Mmap> {
    #[cfg(target_os = "linux")]
    {
        use memmap2::Advice;
        // SAFETY: the caller's guarantee.
        let map = unsafe { MmapOptions::new().map(file)? };
        // Only a hint: a kernel without file THP ignores or refuses it.
        let _ = map.advise(Advice::HugePage);
        if map.advise(Advice::PopulateRead).is_ok() {
            return Ok(map);
        }
    }
    // SAFETY: the caller's guarantee.
    unsafe { MmapOptions::new().populate().map(file) }
}

/// Makes staged writes durable and visible: their bytes and new folder entries
/// made durable (one `syncfs` per filesystem for many files, else an `fsync`
/// per file and folder, in parallel), then the temp files renamed into place
/// (chunks before metadata) and the renames made durable (their folders fsynced).
pub fn sync_staged(mut staged: Staged) -> CoreResult<()> {
    if staged.is_empty() {
        return Ok(());
    }
    staged.sort_by_key(|w| w.path.ends_with("zarr.json"));
    if staged.len() >= SYNCFS_MIN_FILES && syncfs_all(&staged)? {
        // done: every staged byte and folder entry is durable
    } else {
        staged.par_iter().try_for_each(|w| {
            let file = w.tmp.as_ref().unwrap_or(&w.path);
            File::open(file)
                .and_then(|f| f.sync_all())
                .map_err(|e| CoreError::io(format!("fsync {}", file.display()), e))?;
            if w.tmp.is_none() {
                // a file written in place may be new, in a new folder
                for dir in w.path.ancestors().skip(1).take(2) {
                    sync_dir(dir)
                        .map_err(|e| CoreError::io(format!("fsync {}", dir.display()), e))?;
                }
            }
            Ok(())
        })?;
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    for w in &staged {
        let Some(tmp) = &w.tmp else { continue };
        fs::rename(tmp, &w.path)
            .map_err(|e| CoreError::io(format!("rename to {}", w.path.display()), e))?;
        if let Some(dir) = w.path.parent() {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    dirs.par_iter().try_for_each(|d| {
        sync_dir(d).map_err(|e| CoreError::io(format!("fsync {}", d.display()), e))
    })
}

/// `syncfs` on every filesystem holding a staged file; `false` where the
/// platform has no `syncfs` (the caller then fsyncs file by file).
fn syncfs_all(staged: &Staged) -> CoreResult<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let mut devices: Vec<u64> = Vec::new();
        for w in staged {
            let dir = w.path.parent().unwrap_or_else(|| Path::new("."));
            let handle =
                File::open(dir).map_err(|e| CoreError::io(format!("open {}", dir.display()), e))?;
            let dev = handle
                .metadata()
                .map_err(|e| CoreError::io(format!("stat {}", dir.display()), e))?
                .dev();
            if devices.contains(&dev) {
                continue;
            }
            devices.push(dev);
            // SAFETY: a plain syscall on a descriptor we own.
            if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
                return Err(CoreError::io(
                    format!("syncfs {}", dir.display()),
                    std::io::Error::last_os_error(),
                ));
            }
        }
        Ok(true)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = staged;
        Ok(false)
    }
}

/// Filesystem store with atomic, durable key writes (see the module docs).
#[derive(Debug)]
pub struct DurableStore {
    inner: FilesystemStore,
    root: PathBuf,
    staged: Mutex<Staged>,
    stage_metadata: AtomicBool,
    /// Chunk files are written with direct I/O (see `store::direct`) while set.
    direct: AtomicBool,
    pool: AlignedPool,
}

impl DurableStore {
    /// Opens (without creating anything) a store rooted at `root`.
    pub fn new(root: &Path) -> CoreResult<Self> {
        let mut options = FilesystemStoreOptions::default();
        // A cached read handle would keep pointing at a file replaced by rename.
        options.file_handle_cache_size(0);
        let inner = FilesystemStore::new_with_options(root, options)
            .map_err(|e| CoreError::store(format!("{}: {e}", root.display())))?;
        Ok(Self {
            inner,
            root: root.to_path_buf(),
            staged: Mutex::new(Vec::new()),
            stage_metadata: AtomicBool::new(false),
            direct: AtomicBool::new(direct::direct_enabled_by_env()),
            pool: AlignedPool::default(),
        })
    }

    /// Makes every staged chunk write durable and visible (see [`sync_staged`]).
    pub fn sync_pending(&self) -> CoreResult<()> {
        sync_staged(self.take_staged()?)
    }

    /// Removes and returns the staged writes (to sync them with other arrays').
    pub fn take_staged(&self) -> CoreResult<Staged> {
        Ok(std::mem::take(&mut *self.staged.lock().map_err(|_| {
            CoreError::Internal("staged-write lock poisoned".into())
        })?))
    }

    /// Stages `bytes` as the new value of chunk key `key`; the next sync makes
    /// it durable and visible. With `in_place` (the key holds no committed
    /// data, so a torn write loses nothing) the bytes go to the key's file
    /// itself; otherwise to a temp file that the sync renames over it, so the
    /// key holds its old or its new bytes whatever happens. A second stage of
    /// the same key replaces the first.
    pub fn stage(&self, key: &StoreKey, bytes: &[u8], in_place: bool) -> std::io::Result<()> {
        let path = self.key_path(key);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = (!in_place).then(|| temp_path(&path));
        let target = tmp.as_ref().unwrap_or(&path);
        let result = direct::write_file(target, bytes, &self.direct, &self.pool);
        if let Err(e) = result {
            if let Some(t) = &tmp {
                let _ = fs::remove_file(t);
            }
            return Err(e);
        }
        let mut staged = self
            .staged
            .lock()
            .map_err(|_| std::io::Error::other("staged-write lock poisoned"))?;
        staged.retain(|w| {
            let keep = w.path != path;
            if let (false, Some(old)) = (keep, &w.tmp) {
                if Some(old) != tmp.as_ref() {
                    let _ = fs::remove_file(old);
                }
            }
            keep
        });
        staged.push(StagedWrite { tmp, path });
        Ok(())
    }

    /// Whether chunk files are being written with direct I/O (several files in
    /// flight then keep the disk busy; buffered writers contend instead).
    pub fn writes_direct(&self) -> bool {
        self.direct.load(Ordering::Relaxed)
    }

    /// While `on`, metadata keys (`zarr.json`) are staged like chunk keys
    /// instead of being written durably at once (a commit syncs them with the chunks).
    pub fn set_stage_metadata(&self, on: bool) {
        self.stage_metadata.store(on, Ordering::SeqCst);
    }

    /// Maps the file of `key` read-only (`None` when it does not exist). Keys are
    /// replaced by rename and never rewritten in place, so the mapping stays valid.
    pub fn map_key(&self, key: &StoreKey) -> std::io::Result<Option<MappedFile>> {
        let file = match File::open(self.key_path(key)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() == 0 {
            return Ok(Some(MappedFile::Empty));
        }
        // SAFETY: a file holding committed rows is never truncated or written in
        // place (writers replace such keys by rename; see the module docs), and
        // readers map only chunks holding committed rows.
        let map = unsafe { map_huge_populated(&file)? };
        Ok(Some(MappedFile::Map(map)))
    }

    /// The root folder of the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The filesystem path of a key.
    pub fn key_path(&self, key: &StoreKey) -> PathBuf {
        self.inner.key_to_fspath(key)
    }
}

/// `fsync`s a directory so that a rename or a new entry in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn temp_path(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    dir.join(format!(
        "{}.{}.{}{TEMP_SUFFIX}",
        name.unwrap_or_default(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl ReadableStorageTraits for DurableStore {
    fn get_partial_many<'a>(
        &'a self,
        key: &StoreKey,
        byte_ranges: ByteRangeIterator<'a>,
    ) -> Result<MaybeBytesIterator<'a>, StorageError> {
        self.inner.get_partial_many(key, byte_ranges)
    }

    fn get(&self, key: &StoreKey) -> Result<MaybeBytes, StorageError> {
        match fs::read(self.key_path(key)) {
            Ok(bytes) => Ok(Some(Bytes::from(bytes))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn size_key(&self, key: &StoreKey) -> Result<Option<u64>, StorageError> {
        self.inner.size_key(key)
    }

    fn supports_get_partial(&self) -> bool {
        self.inner.supports_get_partial()
    }
}

impl WritableStorageTraits for DurableStore {
    fn set(&self, key: &StoreKey, value: Bytes) -> Result<(), StorageError> {
        let path = self.key_path(key);
        if key.as_str().ends_with("zarr.json") && !self.stage_metadata.load(Ordering::SeqCst) {
            write_atomic(&path, &value)?;
            return Ok(());
        }
        self.stage(key, &value, false)?;
        Ok(())
    }

    fn set_partial_many(
        &self,
        key: &StoreKey,
        offset_values: OffsetBytesIterator,
    ) -> Result<(), StorageError> {
        // Read-modify-write through `set`, so a partial update stays atomic too.
        let mut bytes = self.get(key)?.map(|b| b.to_vec()).unwrap_or_default();
        for (offset, value) in offset_values {
            let start = usize::try_from(offset).map_err(|_| {
                StorageError::Other(format!("offset {offset} does not fit in memory"))
            })?;
            let end = start + value.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(&value);
        }
        self.set(key, Bytes::from(bytes))
    }

    fn erase(&self, key: &StoreKey) -> Result<(), StorageError> {
        self.inner.erase(key)
    }

    fn erase_prefix(&self, prefix: &StorePrefix) -> Result<(), StorageError> {
        self.inner.erase_prefix(prefix)
    }

    fn supports_set_partial(&self) -> bool {
        false
    }
}

impl ListableStorageTraits for DurableStore {
    fn list(&self) -> Result<StoreKeys, StorageError> {
        self.inner.list()
    }

    fn list_prefix(&self, prefix: &StorePrefix) -> Result<StoreKeys, StorageError> {
        self.inner.list_prefix(prefix)
    }

    fn list_dir(&self, prefix: &StorePrefix) -> Result<StoreKeysPrefixes, StorageError> {
        self.inner.list_dir(prefix)
    }

    fn size_prefix(&self, prefix: &StorePrefix) -> Result<u64, StorageError> {
        self.inner.size_prefix(prefix)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn set_replaces_atomically_and_leaves_no_temp_files() {
        let dir = tempdir();
        let store = DurableStore::new(&dir).unwrap();
        let key = StoreKey::new("a/b/c").unwrap();
        store.set(&key, Bytes::from_static(b"first")).unwrap();
        assert!(
            store.get(&key).unwrap().is_none(),
            "staged until sync_pending"
        );
        store.set(&key, Bytes::from_static(b"second")).unwrap();
        store.sync_pending().unwrap();
        assert_eq!(store.get(&key).unwrap().unwrap().as_ref(), b"second");
        let names: Vec<_> = fs::read_dir(dir.join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["c".to_string()]);
        assert!(store
            .get(&StoreKey::new("a/missing").unwrap())
            .unwrap()
            .is_none());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn in_place_and_renamed_writes_sync_together_and_map() {
        let dir = tempdir();
        let store = DurableStore::new(&dir).unwrap();
        // enough files for the syncfs pass, in new folders, most in place
        for i in 0..(SYNCFS_MIN_FILES + 2) {
            let key = StoreKey::new(format!("x/c/{i}/0")).unwrap();
            store.stage(&key, &[i as u8; 5], i != 0).unwrap();
        }
        let replaced = StoreKey::new("x/c/0/0").unwrap();
        store.stage(&replaced, b"again", false).unwrap();
        store.sync_pending().unwrap();
        for i in 1..(SYNCFS_MIN_FILES + 2) {
            let key = StoreKey::new(format!("x/c/{i}/0")).unwrap();
            assert_eq!(&store.map_key(&key).unwrap().unwrap()[..], &[i as u8; 5]);
        }
        assert_eq!(&store.map_key(&replaced).unwrap().unwrap()[..], b"again");
        let names: Vec<_> = fs::read_dir(dir.join("x/c/0"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["0".to_string()], "no temp files left");
        assert!(store
            .map_key(&StoreKey::new("x/none").unwrap())
            .unwrap()
            .is_none());
        let empty = StoreKey::new("x/empty").unwrap();
        store.stage(&empty, b"", true).unwrap();
        store.sync_pending().unwrap();
        assert!(store.map_key(&empty).unwrap().unwrap().is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn large_mappings_match_the_file_cached_or_read_in() {
        let dir = tempdir();
        let store = DurableStore::new(&dir).unwrap();
        // 5 MiB + 3 bytes: two whole 2 MiB pages and a ragged tail
        let bytes: Vec<u8> = (0..(5u32 << 20) + 3)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let key = StoreKey::new("x/c/0/0").unwrap();
        store.stage(&key, &bytes, true).unwrap();
        store.sync_pending().unwrap();
        assert_eq!(&store.map_key(&key).unwrap().unwrap()[..], &bytes[..]);
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // drop the cached pages: the next map reads them in (as huge folios where supported)
            let f = File::open(dir.join("x/c/0/0")).unwrap();
            // SAFETY: a valid open descriptor; advice only.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        let first = store.map_key(&key).unwrap().unwrap();
        let second = store.map_key(&key).unwrap().unwrap();
        assert_eq!(&first[..], &bytes[..]);
        assert_eq!(&second[..], &bytes[..]);
        fs::remove_dir_all(dir).unwrap();
    }

    pub(crate) fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vlmfast-store-test-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
