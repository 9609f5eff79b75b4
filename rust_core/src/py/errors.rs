//! Maps [`CoreError`] to the exception classes defined in `vlmfast.errors`
//! (one hierarchy, defined once, in Python), and turns a panic into an
//! `InternalError` instead of letting it cross into Python.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use crate::error::{CoreError, ErrorKind};

/// Converts a core error into the matching `vlmfast.errors` exception.
pub fn to_pyerr(err: CoreError) -> PyErr {
    let class = match err.kind() {
        ErrorKind::Input => "InputError",
        ErrorKind::Store | ErrorKind::Io => "StoreError",
        ErrorKind::Internal => "InternalError",
    };
    let message = err.to_string();
    Python::attach(|py| {
        let class = py
            .import("vlmfast.errors")
            .and_then(|module| module.getattr(class));
        match class {
            Ok(class) => match class.call1((message.clone(),)) {
                Ok(instance) => PyErr::from_value(instance),
                Err(e) => e,
            },
            Err(_) => PyRuntimeError::new_err(message),
        }
    })
}

/// Runs `work` (typically inside `py.detach`), converting both its error and
/// any panic into a Python exception.
pub fn guard<T>(work: impl FnOnce() -> Result<T, CoreError>) -> PyResult<T> {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(result) => result.map_err(to_pyerr),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(to_pyerr(CoreError::Internal(what)))
        }
    }
}
