use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use zarrs::storage::{Bytes, ReadableStorageTraits, StoreKey, WritableStorageTraits};

use super::sync::{SYNCFS_MIN_FILES, TEMP_COUNTER};
use super::DurableStore;

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
