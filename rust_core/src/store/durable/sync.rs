//! The durability protocol: staged key writes made durable and visible
//! together ([`sync_staged`]), atomic whole-file writes ([`write_atomic`]) and
//! the temp files both go through.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;

use crate::error::{CoreError, CoreResult};

/// Suffix of the temp files a `set` writes before renaming them into place.
pub const TEMP_SUFFIX: &str = ".vlmfast-tmp";

pub(super) static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A staged key write awaiting [`sync_staged`].
#[derive(Debug)]
pub struct StagedWrite {
    /// The temp file to rename over `path`, or `None` when the bytes were
    /// written to `path` itself (a key that holds no committed data).
    pub(super) tmp: Option<PathBuf>,
    /// The key's file.
    pub(super) path: PathBuf,
}

/// Staged key writes.
pub type Staged = Vec<StagedWrite>;

/// From this many staged files on, one `syncfs` makes them durable instead of
/// one `fsync` per file and folder.
pub(super) const SYNCFS_MIN_FILES: usize = 8;

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

/// `fsync`s a directory so that a rename or a new entry in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(super) fn temp_path(path: &Path) -> PathBuf {
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
