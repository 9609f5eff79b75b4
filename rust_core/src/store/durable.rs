//! A filesystem zarr store whose writes are atomic and durable.
//!
//! zarrs' `FilesystemStore` truncates and rewrites a key in place. Re-writing the
//! partial last chunk of an array (which holds committed rows) in place would lose
//! them if the process died mid-write, so every `set` here writes a sibling temp
//! file, `fsync`s it, renames it over the key and `fsync`s the directory. A key
//! therefore holds either its old or its new bytes, and is on disk when `set`
//! returns. Reads, listing and erasing are delegated to `FilesystemStore`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Filesystem store with atomic, durable key writes (see the module docs).
#[derive(Debug)]
pub struct DurableStore {
    inner: FilesystemStore,
    root: PathBuf,
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
        })
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

/// Writes `bytes` to `path` atomically (temp file, fsync, rename, fsync of the folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        "{}.{}.{}{TEMP_SUFFIX}",
        name.unwrap_or_default(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
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
        write_atomic(&self.key_path(key), &value)?;
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
        store.set(&key, Bytes::from_static(b"second")).unwrap();
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
