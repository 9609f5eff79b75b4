//! A filesystem zarr store whose writes are atomic and durable.
//!
//! zarrs' `FilesystemStore` truncates and rewrites a key in place. Re-writing the
//! partial last chunk of an array (which holds committed rows) in place would lose
//! them if the process died mid-write, so every `set` here writes a sibling temp
//! file, `fsync`s it, renames it over the key and `fsync`s the directory. A key
//! therefore holds either its old or its new bytes. Metadata keys (`zarr.json`)
//! are durable when `set` returns; chunk keys are staged (temp file written,
//! not yet fsynced or renamed) until
//! [`DurableStore::sync_pending`] (or [`sync_staged`] for the staged files of
//! several arrays together), which fsyncs the staged files in parallel, renames
//! them into place and fsyncs their folders, so a commit pays for its fsyncs
//! once, not per chunk. (Starting each file's writeback early, with
//! `sync_file_range` in the writer or `fdatasync` on a background thread, was
//! measured slower on the benchmark VM.) Because a
//! key is only ever replaced by rename, never rewritten in place, readers may
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

/// Suffix of the temp files a `set` writes before renaming them into place.
pub const TEMP_SUFFIX: &str = ".vlmfast-tmp";

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Staged chunk writes: (temp file, final path) pairs awaiting [`sync_staged`].
pub type Staged = Vec<(PathBuf, PathBuf)>;

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

/// Makes staged writes durable and visible: fsync the temp files (in parallel),
/// rename them into place (chunks before metadata), fsync their folders (in parallel).
pub fn sync_staged(mut staged: Staged) -> CoreResult<()> {
    if staged.is_empty() {
        return Ok(());
    }
    staged.sort_by_key(|(_, path)| path.ends_with("zarr.json"));
    staged.par_iter().try_for_each(|(tmp, _)| {
        File::open(tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| CoreError::io(format!("fsync {}", tmp.display()), e))
    })?;
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (tmp, path) in &staged {
        fs::rename(tmp, path)
            .map_err(|e| CoreError::io(format!("rename to {}", path.display()), e))?;
        if let Some(dir) = path.parent() {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    dirs.par_iter().try_for_each(|d| {
        sync_dir(d).map_err(|e| CoreError::io(format!("fsync {}", d.display()), e))
    })
}

/// Filesystem store with atomic, durable key writes (see the module docs).
#[derive(Debug)]
pub struct DurableStore {
    inner: FilesystemStore,
    root: PathBuf,
    staged: Mutex<Vec<(PathBuf, PathBuf)>>,
    stage_metadata: AtomicBool,
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

    /// Stages `bytes` as the new value of chunk key `key`: a temp file written,
    /// made durable and renamed into place by the next
    /// sync. A second stage of the same key replaces the first.
    pub fn stage(&self, key: &StoreKey, bytes: &[u8]) -> std::io::Result<()> {
        let path = self.key_path(key);
        let tmp = temp_path(&path);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let result = (|| {
            let mut file = File::create(&tmp)?;
            file.write_all(bytes)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let mut staged = self
            .staged
            .lock()
            .map_err(|_| std::io::Error::other("staged-write lock poisoned"))?;
        staged.retain(|(old_tmp, p)| {
            let keep = p != &path;
            if !keep {
                let _ = fs::remove_file(old_tmp);
            }
            keep
        });
        staged.push((tmp, path));
        Ok(())
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
        // SAFETY: the file is never truncated or written in place while mapped
        // (writers replace keys by rename; see the module docs). `populate` maps
        // every page now: one call instead of a page fault per 64 KiB.
        let map = unsafe { MmapOptions::new().populate().map(&file)? };
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
        self.stage(key, &value)?;
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
