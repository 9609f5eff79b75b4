//! The one error type of the native core. The binding layer maps each variant
//! to a class of `vlmfast.errors`, so no Rust panic or opaque error string
//! reaches Python.

use std::fmt;

/// Which Python exception class (in `vlmfast.errors`) a [`CoreError`] becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Bad arguments: wrong shape, dtype, range. Python: `InputError` (a `ValueError`).
    Input,
    /// A store that is missing, corrupt, of a newer format, or fails I/O. Python: `StoreError`.
    Store,
    /// Operating-system I/O failure. Python: `StoreError` as well (it is also an `OSError`).
    Io,
    /// A bug or an invariant broken inside the core. Python: `VlmfastError`.
    Internal,
}

/// Error returned by every fallible function of the core.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// An argument is wrong; the message names it.
    #[error("{0}")]
    Input(String),
    /// A store problem; the message names the array (and chunk, where there is one).
    #[error("{0}")]
    Store(String),
    /// An I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A broken invariant, including a panic caught at the binding boundary.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CoreError {
    /// Shorthand for [`CoreError::Input`].
    pub fn input(msg: impl fmt::Display) -> Self {
        Self::Input(msg.to_string())
    }

    /// Shorthand for [`CoreError::Store`].
    pub fn store(msg: impl fmt::Display) -> Self {
        Self::Store(msg.to_string())
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Self::Io {
            context: context.to_string(),
            source,
        }
    }

    /// The Python class this error maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Input(_) => ErrorKind::Input,
            Self::Store(_) => ErrorKind::Store,
            Self::Io { .. } => ErrorKind::Io,
            Self::Internal(_) => ErrorKind::Internal,
        }
    }
}

/// Result alias of the core.
pub type CoreResult<T> = Result<T, CoreError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let e = CoreError::input("labels has 3 rows but codes has 4");
        assert_eq!(e.kind(), ErrorKind::Input);
        assert_eq!(e.to_string(), "labels has 3 rows but codes has 4");
        let io = CoreError::io(
            "reading acts/x chunk 3",
            std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        );
        assert_eq!(io.kind(), ErrorKind::Io);
        assert!(io.to_string().starts_with("reading acts/x chunk 3: "));
    }
}
