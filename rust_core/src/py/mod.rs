//! The PyO3 binding layer: the only code that imports pyo3. Each submodule
//! binds one area of the core and registers its functions here.

use pyo3::prelude::*;

mod errors;
mod pairs;
mod stats;
mod store;
mod tokens;

pub use errors::{guard, to_pyerr};

/// The `vlmfast._native` extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", crate::VERSION)?;
    m.add_function(wrap_pyfunction!(worker_threads, m)?)?;
    store::register(m)?;
    stats::register(m)?;
    tokens::register(m)?;
    pairs::register(m)?;
    Ok(())
}

/// Number of worker threads the native core uses for parallel work.
#[pyfunction]
fn worker_threads() -> usize {
    crate::worker_threads()
}
