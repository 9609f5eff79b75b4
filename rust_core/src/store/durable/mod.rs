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

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use zarrs::filesystem::{FilesystemStore, FilesystemStoreOptions};
use zarrs::storage::byte_range::ByteRangeIterator;
use zarrs::storage::{
    Bytes, ListableStorageTraits, MaybeBytes, MaybeBytesIterator, OffsetBytesIterator,
    ReadableStorageTraits, StorageError, StoreKey, StoreKeys, StoreKeysPrefixes, StorePrefix,
    WritableStorageTraits,
};

use crate::error::{CoreError, CoreResult};
use crate::store::direct::{self, AlignedPool};

mod mapped;
mod sync;

#[cfg(test)]
pub(crate) mod tests;

pub use mapped::MappedFile;
pub use sync::{sync_dir, sync_staged, write_atomic, Staged, StagedWrite, TEMP_SUFFIX};

use mapped::map_huge_populated;
use sync::temp_path;

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
