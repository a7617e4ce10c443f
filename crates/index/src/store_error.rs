//! What a [`crate::Store`] can fail with: its own failures, apart from the client errors of
//! [`crate::IndexError`] (an unreachable index, a refusal), so the server can tell a
//! client "try again shortly" or "internal failure" without showing it the store's details.

use crate::LimitExceeded;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The shared registry cannot be reached or is not serving (Redis down, restarting,
    /// loading its data, out of memory). Nothing was changed that the caller was told of;
    /// the same request succeeds once the registry is back.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// A registration would take its holder, or the holders of its source address, past a
    /// cap; nothing was stored.
    #[error("{0}")]
    OverLimit(#[from] LimitExceeded),
    /// The store cannot be set up as configured (a malformed Redis URL, a bad key prefix).
    #[error("{0}")]
    Config(String),
    /// The store failed otherwise (an answer it cannot read, a failing disk, ...). The
    /// message is for the log, not for clients.
    #[error("the registration store failed: {0}")]
    Failed(String),
}

impl From<StoreError> for crate::IndexError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::OverLimit(limit) => crate::IndexError::OverLimit(limit),
            unavailable @ StoreError::Unavailable(_) => {
                crate::IndexError::RegistryUnavailable(unavailable.to_string())
            }
            other => crate::IndexError::Store(other.to_string()),
        }
    }
}
