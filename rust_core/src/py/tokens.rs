//! Bindings of the token aggregation (`crate::stats::tokens`): per-sample max /
//! mean of token rows, streamed chunk by chunk through a scorer object, or in
//! one call; the GIL released around the work.

use std::sync::{Mutex, MutexGuard};

use numpy::{
    IntoPyArray, PyArray1, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::guard;
use super::stats::{labels_index, slice, slice1, to_dict};
use crate::error::CoreError;
use crate::stats::dense::score_dense;
use crate::stats::tokens::{
    DenseAggregator, FeatureLists, SampleRows, SparseAggregator, TokenMode,
};
use crate::stats::ScoreOptions;

/// Registers the token aggregation functions and scorers on the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(aggregate_sparse_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(aggregate_dense_tokens, m)?)?;
    m.add_class::<PySparseTokenScorer>()?;
    m.add_class::<PyDenseTokenScorer>()?;
    Ok(())
}

/// The scorer's state; a scorer is not for concurrent use (a second thread gets an error,
/// never a wait that could hold the GIL against the first).
fn lock<T>(m: &Mutex<T>) -> PyResult<MutexGuard<'_, T>> {
    m.try_lock().map_err(|e| {
        super::to_pyerr(match e {
            std::sync::TryLockError::WouldBlock => {
                CoreError::input("this token scorer is in use by another thread")
            }
            std::sync::TryLockError::Poisoned(_) => {
                CoreError::Internal("token scorer lock poisoned".into())
            }
        })
    })
}

/// Pushes one chunk of top-k token codes, dispatching on the index dtype.
fn push_codes<'py>(
    py: Python<'py>,
    agg: &mut SparseAggregator,
    sample_ids: &PyReadonlyArray1<'py, i64>,
    indices: &Bound<'py, PyAny>,
    values: &PyReadonlyArray2<'py, f32>,
) -> PyResult<Vec<SampleRows>> {
    let ids = slice1(sample_ids, "sample_ids")?;
    let vals = slice(values, "values")?;
    let k = values.shape()[1];
    macro_rules! go {
        ($t:ty) => {
            if let Ok(a) = indices.extract::<PyReadonlyArray2<'py, $t>>() {
                if a.shape() != values.shape() {
                    return Err(super::to_pyerr(CoreError::input(format!(
                        "indices has shape {:?} but values has shape {:?}",
                        a.shape(),
                        values.shape()
                    ))));
                }
                let idx = slice(&a, "indices")?;
                return py.detach(|| guard(|| agg.push(ids, idx, vals, k)));
            }
        };
    }
    go!(i64);
    go!(i32);
    go!(u32);
    go!(u16);
    go!(i16);
    Err(super::to_pyerr(CoreError::input(
        "indices must be a 2-D int64, int32, uint32, int16 or uint16 array",
    )))
}

fn too_many(n_seen: usize, n_samples: u64) -> PyResult<()> {
    if n_seen as u64 > n_samples {
        return Err(super::to_pyerr(CoreError::input(format!(
            "the chunks hold more than the {n_samples} samples labels has rows for"
        ))));
    }
    Ok(())
}

struct SparseTokenState {
    agg: SparseAggregator,
    lists: Option<FeatureLists>,
    n_samples: u64,
    budget: Option<usize>,
    finished: bool,
}

/// One streaming pass of token-aggregated scoring of top-k codes over the
/// features `[lo, hi)`; `memory_budget` (bytes) may narrow `hi` during the pass.
#[pyclass(module = "vlmfast._native", name = "SparseTokenScorer")]
pub struct PySparseTokenScorer {
    inner: Mutex<SparseTokenState>,
}

#[pymethods]
impl PySparseTokenScorer {
    #[new]
    #[pyo3(signature = (n_features, lo, hi, mode, n_samples, memory_budget=None))]
    fn new(
        n_features: usize,
        lo: usize,
        hi: usize,
        mode: &str,
        n_samples: u64,
        memory_budget: Option<usize>,
    ) -> PyResult<Self> {
        let agg =
            guard(|| SparseAggregator::new(n_features, lo, hi, TokenMode::parse(mode)?, false))?;
        Ok(Self {
            inner: Mutex::new(SparseTokenState {
                agg,
                lists: Some(FeatureLists::new(lo, hi)),
                n_samples,
                budget: memory_budget,
                finished: false,
            }),
        })
    }

    /// Adds a chunk of consecutive token rows `(sample_ids[n], indices[n, k], values[n, k])`.
    fn push<'py>(
        &self,
        py: Python<'py>,
        sample_ids: PyReadonlyArray1<'py, i64>,
        indices: &Bound<'py, PyAny>,
        values: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<()> {
        let mut st = lock(&self.inner)?;
        let st = &mut *st;
        if st.finished {
            return Err(super::to_pyerr(CoreError::input("push after finish")));
        }
        let parts = push_codes(py, &mut st.agg, &sample_ids, indices, &values)?;
        too_many(st.agg.order.ids.len(), st.n_samples)?;
        let lists = st
            .lists
            .as_mut()
            .ok_or_else(|| super::to_pyerr(CoreError::input("this pass was already scored")))?;
        let (n_total, budget) = (st.n_samples, st.budget);
        let new_hi = py.detach(|| {
            guard(|| {
                lists.add(&parts)?;
                Ok(budget.and_then(|b| lists.fit_budget(b, n_total)))
            })
        })?;
        if let Some(hi) = new_hi {
            st.agg.set_hi(hi);
        }
        Ok(())
    }

    /// Closes the stream's last sample.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let mut st = lock(&self.inner)?;
        let st = &mut *st;
        if st.finished {
            return Ok(());
        }
        let last = py.detach(|| guard(|| st.agg.finish()))?;
        if let Some(lists) = st.lists.as_mut() {
            py.detach(|| guard(|| lists.add(&[last])))?;
        }
        st.finished = true;
        Ok(())
    }

    /// End of the feature block (narrowed by the memory budget).
    #[getter]
    fn hi(&self) -> PyResult<usize> {
        let st = lock(&self.inner)?;
        Ok(st.lists.as_ref().map_or(st.agg.hi(), FeatureLists::hi))
    }

    /// Bytes held by the block's lists.
    #[getter]
    fn nbytes(&self) -> PyResult<usize> {
        Ok(lock(&self.inner)?
            .lists
            .as_ref()
            .map_or(0, FeatureLists::bytes))
    }

    /// Sample ids in order of first appearance (the scored rows).
    fn samples<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        Ok(lock(&self.inner)?.agg.order.ids.clone().into_pyarray(py))
    }

    /// Scores the block (after [`finish`]); the lists are freed.
    #[pyo3(signature = (labels, *, stats=false, with_se=false, top_n=0))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        labels: PyReadonlyArray2<'py, bool>,
        stats: bool,
        with_se: bool,
        top_n: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.finish(py)?;
        let lists = lock(&self.inner)?
            .lists
            .take()
            .ok_or_else(|| super::to_pyerr(CoreError::input("this pass was already scored")))?;
        let opts = ScoreOptions {
            stats,
            with_se,
            top_n,
        };
        let li = labels_index(py, &labels)?;
        let scores = py.detach(|| guard(|| lists.score(&li, &opts)))?;
        to_dict(py, scores)
    }
}

struct DenseTokenState {
    agg: DenseAggregator,
    rows: Vec<f32>,
    n_samples: u64,
    finished: bool,
}

/// One streaming pass of token-aggregated scoring of dense units over the
/// columns `[lo, hi)` (`hi` clipped to the rows' width).
#[pyclass(module = "vlmfast._native", name = "DenseTokenScorer")]
pub struct PyDenseTokenScorer {
    inner: Mutex<DenseTokenState>,
}

#[pymethods]
impl PyDenseTokenScorer {
    #[new]
    #[pyo3(signature = (lo, hi, mode, n_samples))]
    fn new(lo: usize, hi: usize, mode: &str, n_samples: u64) -> PyResult<Self> {
        let mode = guard(|| TokenMode::parse(mode))?;
        Ok(Self {
            inner: Mutex::new(DenseTokenState {
                agg: DenseAggregator::new(lo, hi, mode),
                rows: Vec::new(),
                n_samples,
                finished: false,
            }),
        })
    }

    /// Adds a chunk of consecutive token rows `(sample_ids[n], x[n, d])`.
    fn push<'py>(
        &self,
        py: Python<'py>,
        sample_ids: PyReadonlyArray1<'py, i64>,
        x: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<()> {
        let mut st = lock(&self.inner)?;
        let st = &mut *st;
        if st.finished {
            return Err(super::to_pyerr(CoreError::input("push after finish")));
        }
        let ids = slice1(&sample_ids, "sample_ids")?;
        let xs = slice(&x, "x")?;
        let d = x.shape()[1];
        let out = py.detach(|| guard(|| st.agg.push(ids, xs, d)))?;
        too_many(st.agg.order.ids.len(), st.n_samples)?;
        if st.rows.capacity() == 0 && st.n_samples != u64::MAX {
            // the aggregated [samples, width] block, without growth slack
            let want = (st.n_samples as usize).saturating_mul(st.agg.width());
            st.rows.reserve_exact(want);
        }
        st.rows.extend_from_slice(&out);
        Ok(())
    }

    /// Closes the stream's last sample.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let mut st = lock(&self.inner)?;
        let st = &mut *st;
        if !st.finished {
            let last = py.detach(|| guard(|| st.agg.finish()))?;
            st.rows.extend_from_slice(&last);
            st.finished = true;
        }
        Ok(())
    }

    /// Width of the token rows (None before the first nonempty chunk).
    #[getter]
    fn d(&self) -> PyResult<Option<usize>> {
        Ok(lock(&self.inner)?.agg.d())
    }

    /// Sample ids in order of first appearance (the scored rows).
    fn samples<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray1<i64>>> {
        Ok(lock(&self.inner)?.agg.order.ids.clone().into_pyarray(py))
    }

    /// The aggregated `float32[samples, hi - lo]` (after [`finish`]); the buffer is handed over.
    fn take_rows<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.finish(py)?;
        let mut st = lock(&self.inner)?;
        let w = st.agg.width();
        let n = st.agg.order.ids.len();
        let rows = std::mem::take(&mut st.rows);
        Ok(rows.into_pyarray(py).reshape([n, w])?.into_any())
    }

    /// Scores the aggregated columns (after [`finish`]); the buffer is freed.
    #[pyo3(signature = (labels, *, stats=false, with_se=false, top_n=0))]
    fn score<'py>(
        &self,
        py: Python<'py>,
        labels: PyReadonlyArray2<'py, bool>,
        stats: bool,
        with_se: bool,
        top_n: usize,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.finish(py)?;
        let (rows, w) = {
            let mut st = lock(&self.inner)?;
            (std::mem::take(&mut st.rows), st.agg.width())
        };
        let opts = ScoreOptions {
            stats,
            with_se,
            top_n,
        };
        let li = labels_index(py, &labels)?;
        if rows.len() != li.n_rows * w {
            return Err(super::to_pyerr(CoreError::input(format!(
                "labels has {} rows but the chunks hold {} samples",
                li.n_rows,
                rows.len() / w.max(1)
            ))));
        }
        let out = py.detach(|| guard(|| score_dense(&rows, w, &li, &opts)))?;
        to_dict(py, out)
    }
}

/// Per-sample max / mean of top-k token codes: `(samples, indptr, indices, values)` (CSR).
#[pyfunction]
#[pyo3(signature = (sample_ids, indices, values, n_features, mode))]
pub fn aggregate_sparse_tokens<'py>(
    py: Python<'py>,
    sample_ids: PyReadonlyArray1<'py, i64>,
    indices: &Bound<'py, PyAny>,
    values: PyReadonlyArray2<'py, f32>,
    n_features: usize,
    mode: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let mut agg =
        guard(|| SparseAggregator::new(n_features, 0, n_features, TokenMode::parse(mode)?, true))?;
    let mut parts = push_codes(py, &mut agg, &sample_ids, indices, &values)?;
    let rows = py.detach(|| {
        guard(|| {
            parts.push(agg.finish()?);
            Ok(SampleRows::concat(parts))
        })
    })?;
    let indptr: Vec<i64> = rows.indptr.iter().map(|&x| x as i64).collect();
    let feats: Vec<i32> = rows.features.iter().map(|&f| f as i32).collect();
    let out = (
        agg.order.ids.into_pyarray(py),
        indptr.into_pyarray(py),
        feats.into_pyarray(py),
        rows.values.into_pyarray(py),
    );
    Ok(out.into_pyobject(py)?.into_any())
}

/// Per-sample max / mean of dense token rows: `(samples, float32[samples, d])`.
#[pyfunction]
#[pyo3(signature = (sample_ids, x, mode))]
pub fn aggregate_dense_tokens<'py>(
    py: Python<'py>,
    sample_ids: PyReadonlyArray1<'py, i64>,
    x: PyReadonlyArray2<'py, f32>,
    mode: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let scorer = PyDenseTokenScorer::new(0, usize::MAX, mode, u64::MAX)?;
    let d = x.shape()[1];
    scorer.push(py, sample_ids, x)?;
    let samples = scorer.samples(py)?;
    let rows = scorer.take_rows(py)?;
    // no chunk width is known for an empty input
    let rows = if lock(&scorer.inner)?.agg.d().is_none() {
        numpy::PyArray2::<f32>::zeros(py, [0, d], false).into_any()
    } else {
        rows
    };
    Ok((samples, rows).into_pyobject(py)?.into_any())
}
