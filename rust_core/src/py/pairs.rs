//! Binding of the matched-pair moments (`crate::stats::pairs`): a streaming
//! accumulator object, pushed chunk by chunk, the GIL released around the work.

use std::sync::Mutex;

use numpy::{IntoPyArray, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::guard;
use super::stats::slice;
use crate::error::CoreError;
use crate::stats::pairs::{Codes, PairMoments, MOMENTS};

/// Registers the pair-moment accumulator on the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPairMoments>()?;
    m.add("PAIR_MOMENTS", MOMENTS.to_vec())?;
    Ok(())
}

/// Per-feature moments of matched image/caption top-k codes, streamed.
#[pyclass(module = "vlmfast._native", name = "PairMoments")]
pub struct PyPairMoments {
    inner: Mutex<PairMoments>,
}

fn input_err(msg: String) -> PyErr {
    super::to_pyerr(CoreError::input(msg))
}

#[pymethods]
impl PyPairMoments {
    #[new]
    fn new(n_features: usize) -> PyResult<Self> {
        if n_features == 0 {
            return Err(input_err("n_features must be >= 1".into()));
        }
        Ok(Self {
            inner: Mutex::new(PairMoments::new(n_features)),
        })
    }

    /// Adds one chunk of matched pairs: image and text codes (int64 indices, float32
    /// values, `[n, k]` each, row i of both from the same pair).
    fn push<'py>(
        &self,
        py: Python<'py>,
        image_indices: PyReadonlyArray2<'py, i64>,
        image_values: PyReadonlyArray2<'py, f32>,
        text_indices: PyReadonlyArray2<'py, i64>,
        text_values: PyReadonlyArray2<'py, f32>,
    ) -> PyResult<()> {
        let n = image_indices.shape()[0];
        if text_indices.shape()[0] != n {
            return Err(input_err(format!(
                "image codes have {n} rows and text codes {}: rows must be matched pairs",
                text_indices.shape()[0]
            )));
        }
        let img = Codes {
            idx: slice(&image_indices, "image_indices")?,
            val: slice(&image_values, "image_values")?,
            k: image_indices.shape()[1],
            what: "image",
        };
        let txt = Codes {
            idx: slice(&text_indices, "text_indices")?,
            val: slice(&text_values, "text_values")?,
            k: text_indices.shape()[1],
            what: "text",
        };
        let mut state = self
            .inner
            .try_lock()
            .map_err(|_| input_err("this PairMoments is in use by another thread".into()))?;
        let pm: &mut PairMoments = &mut state;
        py.detach(|| guard(|| pm.push(img, txt, n)))
    }

    /// Pairs pushed so far.
    #[getter]
    fn pairs(&self) -> PyResult<u64> {
        Ok(self
            .inner
            .try_lock()
            .map_err(|_| input_err("in use".into()))?
            .pairs())
    }

    /// The sums, `float64[n_features, 14]` in the order of `PAIR_MOMENTS`.
    fn sums<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f64>>> {
        let state = self
            .inner
            .try_lock()
            .map_err(|_| input_err("in use".into()))?;
        let nf = state.sums().len() / MOMENTS.len();
        state
            .sums()
            .to_vec()
            .into_pyarray(py)
            .reshape([nf, MOMENTS.len()])
    }
}
