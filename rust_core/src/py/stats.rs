//! Bindings of the statistics core (`crate::stats`): numpy in, a dict of
//! numpy tables out, the GIL released around the work. The numpy helpers
//! here serve the token scorers too (`super::tokens`).

use numpy::{
    IntoPyArray, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::guard;
use crate::error::CoreError;
use crate::stats::sparse::{score_sparse, score_sparse_coo, FeatureIndex};
use crate::stats::{dense::score_dense, LabelIndex, ScoreOptions, Scores};

pub(super) fn slice<'a, T: numpy::Element>(
    a: &'a PyReadonlyArray2<'_, T>,
    name: &str,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| super::to_pyerr(CoreError::input(format!("{name} must be C-contiguous"))))
}

pub(super) fn slice1<'a, T: numpy::Element>(
    a: &'a PyReadonlyArray1<'_, T>,
    name: &str,
) -> PyResult<&'a [T]> {
    a.as_slice()
        .map_err(|_| super::to_pyerr(CoreError::input(format!("{name} must be C-contiguous"))))
}

pub(super) fn to_dict<'py>(py: Python<'py>, s: Scores) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    let (u, c, t) = (s.n_units, s.n_concepts, s.top_n);
    d.set_item("auroc", s.auroc.into_pyarray(py).reshape([u, c])?)?;
    if !s.se.is_empty() || u * c == 0 {
        d.set_item(
            "se",
            s.se.into_pyarray(py)
                .reshape([if u * c == 0 { 0 } else { u }, c])?,
        )?;
    }
    if !s.pos_firing.is_empty() {
        d.set_item("pos_firing", s.pos_firing.into_pyarray(py).reshape([u, c])?)?;
        d.set_item("mean_pos", s.mean_pos.into_pyarray(py).reshape([u, c])?)?;
        d.set_item("mean_neg", s.mean_neg.into_pyarray(py).reshape([u, c])?)?;
    }
    if !s.precision.is_empty() {
        d.set_item("precision", s.precision.into_pyarray(py).reshape([u, c])?)?;
    }
    d.set_item("firing", s.firing.into_pyarray(py))?;
    d.set_item("ties", s.ties.into_pyarray(py))?;
    d.set_item("top_rows", s.top_rows.into_pyarray(py).reshape([u, t])?)?;
    d.set_item("top_values", s.top_values.into_pyarray(py).reshape([u, t])?)?;
    d.set_item("n_pos", s.n_pos.into_pyarray(py))?;
    d.set_item("n_rows", s.n_rows)?;
    Ok(d)
}

pub(super) fn labels_index(
    py: Python<'_>,
    labels: &PyReadonlyArray2<'_, bool>,
) -> PyResult<LabelIndex> {
    let (rows, cols) = (labels.shape()[0], labels.shape()[1]);
    let data = slice(labels, "labels")?;
    py.detach(|| guard(|| LabelIndex::from_dense(data, rows, cols)))
}

fn run_sparse<I: FeatureIndex + numpy::Element>(
    py: Python<'_>,
    indices: &PyReadonlyArray2<'_, I>,
    values: &[f32],
    shape: (usize, usize),
    labels: &LabelIndex,
    n_features: usize,
    opts: ScoreOptions,
) -> PyResult<Scores> {
    let idx = slice(indices, "indices")?;
    py.detach(|| guard(|| score_sparse(idx, values, shape.0, shape.1, labels, n_features, &opts)))
}

/// Exact AUROC (and optional statistics) of top-k codes against concept labels.
#[pyfunction]
#[pyo3(signature = (indices, values, labels, n_features, *, stats=false, with_se=false, top_n=0))]
#[allow(clippy::too_many_arguments)]
pub fn score_sparse_codes<'py>(
    py: Python<'py>,
    indices: &Bound<'py, PyAny>,
    values: PyReadonlyArray2<'py, f32>,
    labels: PyReadonlyArray2<'py, bool>,
    n_features: usize,
    stats: bool,
    with_se: bool,
    top_n: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = ScoreOptions {
        stats,
        with_se,
        top_n,
    };
    let li = labels_index(py, &labels)?;
    let vals = slice(&values, "values")?;
    let k = (values.shape()[0], values.shape()[1]);
    let scores = if let Ok(a) = indices.extract::<PyReadonlyArray2<'py, i64>>() {
        run_sparse(py, &a, vals, k, &li, n_features, opts)?
    } else if let Ok(a) = indices.extract::<PyReadonlyArray2<'py, i32>>() {
        run_sparse(py, &a, vals, k, &li, n_features, opts)?
    } else if let Ok(a) = indices.extract::<PyReadonlyArray2<'py, u32>>() {
        run_sparse(py, &a, vals, k, &li, n_features, opts)?
    } else if let Ok(a) = indices.extract::<PyReadonlyArray2<'py, u16>>() {
        run_sparse(py, &a, vals, k, &li, n_features, opts)?
    } else if let Ok(a) = indices.extract::<PyReadonlyArray2<'py, i16>>() {
        run_sparse(py, &a, vals, k, &li, n_features, opts)?
    } else {
        return Err(super::to_pyerr(CoreError::input(
            "indices must be a 2-D int64, int32, uint32, int16 or uint16 array",
        )));
    };
    to_dict(py, scores)
}

/// Exact AUROC (and optional statistics) of COO triplets `(rows, indices, values)`.
#[pyfunction]
#[pyo3(signature = (rows, indices, values, labels, n_features, *, stats=false, with_se=false, top_n=0))]
#[allow(clippy::too_many_arguments)]
pub fn score_sparse_triplets<'py>(
    py: Python<'py>,
    rows: PyReadonlyArray1<'py, i64>,
    indices: PyReadonlyArray1<'py, i64>,
    values: PyReadonlyArray1<'py, f32>,
    labels: PyReadonlyArray2<'py, bool>,
    n_features: usize,
    stats: bool,
    with_se: bool,
    top_n: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = ScoreOptions {
        stats,
        with_se,
        top_n,
    };
    let li = labels_index(py, &labels)?;
    let (r, i, v) = (
        slice1(&rows, "rows")?,
        slice1(&indices, "indices")?,
        slice1(&values, "values")?,
    );
    let scores = py.detach(|| guard(|| score_sparse_coo(r, i, v, &li, n_features, &opts)))?;
    to_dict(py, scores)
}

/// Exact AUROC (and optional statistics) of every column of `scores[N, F]`.
#[pyfunction]
#[pyo3(signature = (scores, labels, *, stats=false, with_se=false, top_n=0))]
pub fn score_dense_units<'py>(
    py: Python<'py>,
    scores: PyReadonlyArray2<'py, f32>,
    labels: PyReadonlyArray2<'py, bool>,
    stats: bool,
    with_se: bool,
    top_n: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = ScoreOptions {
        stats,
        with_se,
        top_n,
    };
    let li = labels_index(py, &labels)?;
    let n_units = scores.shape()[1];
    let s = slice(&scores, "scores")?;
    let out = py.detach(|| guard(|| score_dense(s, n_units, &li, &opts)))?;
    to_dict(py, out)
}

/// Registers the statistics functions on the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(score_sparse_codes, m)?)?;
    m.add_function(wrap_pyfunction!(score_sparse_triplets, m)?)?;
    m.add_function(wrap_pyfunction!(score_dense_units, m)?)?;
    Ok(())
}
