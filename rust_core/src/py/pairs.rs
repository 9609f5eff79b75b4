//! Binding of the matched-pair moments (`crate::stats::pairs`): a streaming
//! accumulator object, pushed chunk by chunk, and the one-call shared-dictionary
//! statistics (`crate::stats::shared`), the GIL released around the work.

use std::sync::Mutex;

use numpy::{IntoPyArray, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::guard;
use super::stats::{labels_index, slice, to_dict};
use crate::error::CoreError;
use crate::stats::pairs::{Codes, PairMoments, MOMENTS};
use crate::stats::shared::{score_shared, PairLabels};
use crate::stats::ScoreOptions;

/// Registers the pair-moment accumulator on the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPairMoments>()?;
    m.add_function(wrap_pyfunction!(score_shared_codes, m)?)?;
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

/// One side's `[n, k]` codes as borrowed slices.
fn codes<'a>(
    indices: &'a PyReadonlyArray2<'_, i64>,
    values: &'a PyReadonlyArray2<'_, f32>,
    what: &'static str,
) -> PyResult<Codes<'a, i64>> {
    Ok(Codes {
        idx: slice(indices, &format!("{what}_indices"))?,
        val: slice(values, &format!("{what}_values"))?,
        k: indices.shape()[1],
        what,
    })
}

/// The rows of both sides' codes, which must agree (row i of both is pair i).
fn matched_rows(
    image: &PyReadonlyArray2<'_, i64>,
    text: &PyReadonlyArray2<'_, i64>,
) -> PyResult<usize> {
    let n = image.shape()[0];
    if text.shape()[0] != n {
        return Err(input_err(format!(
            "image codes have {n} rows and text codes {}: rows must be matched pairs",
            text.shape()[0]
        )));
    }
    Ok(n)
}

/// Both modalities' exact AUROC tables (optionally DeLong SEs) and the pairs'
/// moment sums in one call: `(image scores, text scores, sums[F, 14], pairs)`.
#[pyfunction]
#[pyo3(signature = (image_indices, image_values, text_indices, text_values, image_labels, text_labels, n_features, *, with_se=false))]
#[allow(clippy::too_many_arguments)]
#[allow(clippy::type_complexity)]
pub fn score_shared_codes<'py>(
    py: Python<'py>,
    image_indices: PyReadonlyArray2<'py, i64>,
    image_values: PyReadonlyArray2<'py, f32>,
    text_indices: PyReadonlyArray2<'py, i64>,
    text_values: PyReadonlyArray2<'py, f32>,
    image_labels: PyReadonlyArray2<'py, bool>,
    text_labels: PyReadonlyArray2<'py, bool>,
    n_features: usize,
    with_se: bool,
) -> PyResult<(
    Bound<'py, PyDict>,
    Bound<'py, PyDict>,
    Bound<'py, PyArray2<f64>>,
    u64,
)> {
    let n = matched_rows(&image_indices, &text_indices)?;
    let img = codes(&image_indices, &image_values, "image")?;
    let txt = codes(&text_indices, &text_values, "text")?;
    let (li, lt) = (
        labels_index(py, &image_labels)?,
        labels_index(py, &text_labels)?,
    );
    let labels = PairLabels {
        image: &li,
        text: &lt,
    };
    let opts = ScoreOptions {
        stats: false,
        with_se,
        top_n: 0,
    };
    let out = py.detach(|| guard(|| score_shared(img, txt, n, labels, n_features, &opts)))?;
    let sums = out
        .moments
        .into_pyarray(py)
        .reshape([n_features, MOMENTS.len()])?;
    Ok((
        to_dict(py, out.image)?,
        to_dict(py, out.text)?,
        sums,
        out.pairs,
    ))
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
        let n = matched_rows(&image_indices, &text_indices)?;
        let img = codes(&image_indices, &image_values, "image")?;
        let txt = codes(&text_indices, &text_values, "text")?;
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
