//! Bindings of the activation store (`crate::store`). Arrays cross as
//! C-contiguous `uint8` views of their rows (so bfloat16 needs no numpy
//! support); all I/O runs with the GIL released.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use numpy::{PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::errors::guard;
use crate::error::{CoreError, CoreResult};
use crate::store::{
    group, nonfinite_rows, prepare_commit_all, ArrayLayout, Compression, DurableStore, ElemType,
    RowArray, ShuffleConfig, ShuffleStream,
};

fn open_store(root: &str) -> CoreResult<Arc<DurableStore>> {
    Ok(Arc::new(DurableStore::new(Path::new(root))?))
}

fn bytes_of<'a>(data: &'a PyReadonlyArrayDyn<'_, u8>, what: &str) -> CoreResult<&'a [u8]> {
    data.as_slice()
        .map_err(|_| CoreError::input(format!("{what} must be a C-contiguous array")))
}

/// One store array (`acts/<hook>`, `index/<hook>/sample`, ...), open for reading or appending.
#[pyclass(module = "vlmfast._native", name = "StoreArray")]
pub struct PyStoreArray {
    inner: Mutex<RowArray>,
    root: String,
}

impl PyStoreArray {
    fn lock(&self) -> CoreResult<MutexGuard<'_, RowArray>> {
        self.inner
            .lock()
            .map_err(|_| CoreError::Internal("store array lock poisoned".into()))
    }
}

#[pymethods]
impl PyStoreArray {
    /// Appends rows given as a C-contiguous uint8 view (whole rows).
    fn append(&self, py: Python<'_>, data: PyReadonlyArrayDyn<'_, u8>) -> PyResult<()> {
        let bytes = guard(|| bytes_of(&data, "data"))?;
        py.detach(|| guard(|| self.lock()?.append(bytes)))
    }

    /// Writes rows at a chunk-aligned start (multi-rank caching).
    fn write_at(
        &self,
        py: Python<'_>,
        start: u64,
        data: PyReadonlyArrayDyn<'_, u8>,
        end_of_array: bool,
    ) -> PyResult<()> {
        let bytes = guard(|| bytes_of(&data, "data"))?;
        py.detach(|| guard(|| self.lock()?.write_at(start, bytes, end_of_array)))
    }

    /// Takes `rows` rows as written after `write_at`s by every rank (commits nothing).
    fn adopt_written(&self, py: Python<'_>, rows: u64) -> PyResult<()> {
        py.detach(|| guard(|| self.lock()?.adopt_written(rows)))
    }

    /// Decodes committed rows `[start, stop)` into `out` (a C-contiguous uint8 view).
    fn read_into(
        &self,
        py: Python<'_>,
        start: u64,
        stop: u64,
        mut out: PyReadwriteArrayDyn<'_, u8>,
    ) -> PyResult<()> {
        let buf = guard(|| {
            out.as_slice_mut()
                .map_err(|_| CoreError::input("out must be a C-contiguous array"))
        })?;
        py.detach(|| guard(|| self.lock()?.read_into(start, stop, buf)))
    }

    /// Array name inside the store.
    #[getter]
    fn name(&self) -> PyResult<String> {
        guard(|| Ok(self.lock()?.name().to_string()))
    }

    /// Folder of the store.
    #[getter]
    fn root(&self) -> String {
        self.root.clone()
    }

    /// zarr data type name.
    #[getter]
    fn dtype(&self) -> PyResult<&'static str> {
        guard(|| Ok(self.lock()?.dtype().name()))
    }

    /// Row width, or None for a 1-D array.
    #[getter]
    fn width(&self) -> PyResult<Option<u64>> {
        guard(|| Ok(self.lock()?.width()))
    }

    /// Rows per chunk (per shard when sharded).
    #[getter]
    fn chunk_rows(&self) -> PyResult<u64> {
        guard(|| Ok(self.lock()?.chunk_rows()))
    }

    /// Committed rows.
    #[getter]
    fn committed(&self) -> PyResult<u64> {
        guard(|| Ok(self.lock()?.committed()))
    }

    /// Rows appended so far (committed or not).
    #[getter]
    fn written(&self) -> PyResult<u64> {
        guard(|| Ok(self.lock()?.written()))
    }
}

/// Creates an empty array `name` in the store at `root` (`dims`: its zarr dimension names).
#[pyfunction]
#[pyo3(signature = (root, name, dtype, width, chunk_rows, compression="none", level=3, inner_rows=None, dims=None))]
#[allow(clippy::too_many_arguments)]
fn store_create_array(
    py: Python<'_>,
    root: &str,
    name: &str,
    dtype: &str,
    width: Option<u64>,
    chunk_rows: u64,
    compression: &str,
    level: i32,
    inner_rows: Option<u64>,
    dims: Option<Vec<String>>,
) -> PyResult<PyStoreArray> {
    let array = py.detach(|| {
        guard(|| {
            let compression = match compression {
                "none" => Compression::None,
                "zstd" => Compression::Zstd(level),
                other => {
                    return Err(CoreError::input(format!(
                        "compression {other:?} is not supported (none, zstd)"
                    )))
                }
            };
            let layout = ArrayLayout {
                dtype: ElemType::parse(dtype)?,
                width,
                chunk_rows,
                compression,
                inner_rows,
                dims,
            };
            RowArray::create(open_store(root)?, name, layout)
        })
    })?;
    Ok(PyStoreArray {
        inner: Mutex::new(array),
        root: root.to_string(),
    })
}

/// Opens array `name` with `committed` rows; `writable` prepares appends.
#[pyfunction]
fn store_open_array(
    py: Python<'_>,
    root: &str,
    name: &str,
    committed: u64,
    writable: bool,
) -> PyResult<PyStoreArray> {
    let array =
        py.detach(|| guard(|| RowArray::open(open_store(root)?, name, committed, writable)))?;
    Ok(PyStoreArray {
        inner: Mutex::new(array),
        root: root.to_string(),
    })
}

/// Locks every array of `arrays` (each at most once) and runs `f` on them.
fn with_all<T>(
    arrays: &[&PyStoreArray],
    f: impl FnOnce(&mut [&mut RowArray]) -> CoreResult<T>,
) -> CoreResult<T> {
    let mut guards = Vec::with_capacity(arrays.len());
    for a in arrays {
        guards.push(a.inner.try_lock().map_err(|_| {
            CoreError::input("an array is given twice or is in use by another thread")
        })?);
    }
    let mut refs: Vec<&mut RowArray> = guards.iter_mut().map(|g| &mut **g).collect();
    f(&mut refs)
}

/// First half of a commit: stages every array's partial chunk and new shape
/// (`rows[i]` rows), then makes all of it durable in one parallel fsync pass.
#[pyfunction]
fn store_prepare_commit(
    py: Python<'_>,
    arrays: Vec<PyRef<'_, PyStoreArray>>,
    rows: Vec<u64>,
) -> PyResult<()> {
    let arrays: Vec<&PyStoreArray> = arrays.iter().map(|a| &**a).collect();
    py.detach(|| guard(|| with_all(&arrays, |a| prepare_commit_all(a, &rows))))
}

/// Second half of a commit, after the commit point: `rows[i]` rows of `arrays[i]` are committed.
#[pyfunction]
fn store_mark_committed(arrays: Vec<PyRef<'_, PyStoreArray>>, rows: Vec<u64>) -> PyResult<()> {
    let arrays: Vec<&PyStoreArray> = arrays.iter().map(|a| &**a).collect();
    guard(|| {
        if rows.len() != arrays.len() {
            return Err(CoreError::input("one row count per array"));
        }
        with_all(&arrays, |a| {
            a.iter_mut()
                .zip(&rows)
                .try_for_each(|(a, &n)| a.mark_committed(n))
        })
    })
}

/// Writes (atomically, durably) the group node `path` with attributes `attrs_json`.
#[pyfunction]
fn store_write_group(py: Python<'_>, root: &str, path: &str, attrs_json: &str) -> PyResult<()> {
    py.detach(|| guard(|| group::write_group(&open_store(root)?, path, attrs_json)))
}

/// The attributes (JSON text) of the group at `path`.
#[pyfunction]
fn store_read_group_attrs(py: Python<'_>, root: &str, path: &str) -> PyResult<String> {
    py.detach(|| guard(|| group::read_group_attrs(&open_store(root)?, path)))
}

/// Whether a zarr node exists at `path`.
#[pyfunction]
fn store_node_exists(py: Python<'_>, root: &str, path: &str) -> PyResult<bool> {
    py.detach(|| guard(|| group::node_exists(&open_store(root)?, path)))
}

/// Row indices (in `data`, rows of `width` elements of `dtype`) holding NaN or Inf.
#[pyfunction]
fn store_nonfinite_rows(
    py: Python<'_>,
    data: PyReadonlyArrayDyn<'_, u8>,
    dtype: &str,
    width: usize,
) -> PyResult<Vec<u64>> {
    let bytes = guard(|| bytes_of(&data, "data"))?;
    let dtype = guard(|| ElemType::parse(dtype))?;
    Ok(py.detach(|| nonfinite_rows(bytes, dtype, width)))
}

/// Shuffled (or ordered) fixed-size batches of one array's committed rows.
#[pyclass(module = "vlmfast._native", name = "ShuffleStream")]
pub struct PyShuffleStream {
    inner: Mutex<ShuffleStream>,
    row_bytes: usize,
}

#[pymethods]
impl PyShuffleStream {
    #[new]
    #[pyo3(signature = (root, name, committed, batch_size, shuffle, seed, epoch, start_batch, window_chunks, prefetch, drop_last))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        root: &str,
        name: &str,
        committed: u64,
        batch_size: u64,
        shuffle: bool,
        seed: u64,
        epoch: u64,
        start_batch: u64,
        window_chunks: u64,
        prefetch: usize,
        drop_last: bool,
    ) -> PyResult<Self> {
        let cfg = ShuffleConfig {
            batch_size,
            shuffle,
            seed,
            epoch,
            start_batch,
            window_chunks,
            prefetch,
            drop_last,
        };
        let (stream, row_bytes) = py.detach(|| {
            guard(|| {
                let array = Arc::new(RowArray::open(open_store(root)?, name, committed, false)?);
                let row_bytes = array.row_bytes();
                Ok((ShuffleStream::start(array, cfg)?, row_bytes))
            })
        })?;
        Ok(Self {
            inner: Mutex::new(stream),
            row_bytes,
        })
    }

    /// Rows of the next batch (0 at the end of the epoch).
    fn next_len(&self) -> PyResult<u64> {
        guard(|| {
            Ok(self
                .inner
                .lock()
                .map_err(|_| CoreError::Internal("stream lock poisoned".into()))?
                .next_len())
        })
    }

    /// Bytes per row.
    #[getter]
    fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Fills `out` (C-contiguous uint8, exactly the next batch) and returns its rows.
    fn next_into(&self, py: Python<'_>, mut out: PyReadwriteArrayDyn<'_, u8>) -> PyResult<u64> {
        let n = out.len();
        let buf = guard(|| {
            out.as_slice_mut()
                .map_err(|_| CoreError::input("out must be a C-contiguous array"))
        })?;
        debug_assert_eq!(buf.len(), n);
        py.detach(|| {
            guard(|| {
                self.inner
                    .lock()
                    .map_err(|_| CoreError::Internal("stream lock poisoned".into()))?
                    .next_into(buf)
            })
        })
    }
}

/// Registers the store bindings on the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStoreArray>()?;
    m.add_class::<PyShuffleStream>()?;
    m.add_function(wrap_pyfunction!(store_create_array, m)?)?;
    m.add_function(wrap_pyfunction!(store_open_array, m)?)?;
    m.add_function(wrap_pyfunction!(store_write_group, m)?)?;
    m.add_function(wrap_pyfunction!(store_read_group_attrs, m)?)?;
    m.add_function(wrap_pyfunction!(store_node_exists, m)?)?;
    m.add_function(wrap_pyfunction!(store_nonfinite_rows, m)?)?;
    m.add_function(wrap_pyfunction!(store_prepare_commit, m)?)?;
    m.add_function(wrap_pyfunction!(store_mark_committed, m)?)?;
    Ok(())
}
