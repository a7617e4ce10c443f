//! What a [`crate::Store`] can fail with: its own failures, apart from the client errors of
//! [`crate::IndexError`] (an unreachable index, a refusal), so the server can tell a
//! client "try again shortly", "over a cap" or "internal failure" without showing it the
//! store's details (paths, Redis's words), which go to the log.

use crate::{IndexError, LimitExceeded};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The shared registry cannot be reached or is not serving (Redis down, restarting,
    /// loading its data, out of memory). The same request succeeds once it is back; a
    /// change refused this way was not made.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// A registration would take its holder, or the holders of its source address, past a
    /// cap; nothing was stored. The client's doing, so the client is told.
    #[error("{0}")]
    OverLimit(#[from] LimitExceeded),
    /// The durable store could not write its log (a full disk, a failing one): the change
    /// is refused and leaves no trace (whatever was not on disk is undone). Changes are
    /// refused until the data folder takes writes again; then the store goes on by itself.
    #[error("the index's data log failed ({0}); the change was refused and undone")]
    LogFailed(String),
    /// The store cannot be set up as configured (a malformed Redis URL, a bad key prefix).
    #[error("{0}")]
    Config(String),
    /// The store failed otherwise (an answer it cannot read, a record it cannot encode).
    #[error("the registration store failed: {0}")]
    Failed(String),
}

/// The durable store's layers fail with [`IndexError`] (its files, its log); at the
/// [`crate::Store`] boundary that becomes the store's own error.
impl From<IndexError> for StoreError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::LogFailed(reason) => StoreError::LogFailed(reason),
            IndexError::OverLimit(limit) => StoreError::OverLimit(limit),
            IndexError::Store(inner) => inner,
            other => StoreError::Failed(other.to_string()),
        }
    }
}
