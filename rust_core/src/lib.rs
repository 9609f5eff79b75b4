//! vlmfast's native core.
//!
//! Pure Rust modules (no pyo3) hold the logic and its unit tests; the binding
//! layer in [`py`] (behind the `python` feature) is the only code that touches
//! Python, converts numpy arrays, releases the GIL and maps [`CoreError`] to
//! the exception classes of `vlmfast.errors`.

pub mod error;
pub mod store;
pub mod stats;

#[cfg(feature = "python")]
pub mod py;

pub use error::{CoreError, CoreResult};

/// Version of the native core, reported as `vlmfast._native.__version__`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Number of worker threads rayon uses for parallel work.
pub fn worker_threads() -> usize {
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_at_least_one_worker() {
        assert!(worker_threads() >= 1);
        assert!(!VERSION.is_empty());
    }
}
