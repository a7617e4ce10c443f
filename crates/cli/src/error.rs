use std::io;

/// Everything a `shoal` command can fail with; printed as one line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// A bad argument clap could not catch.
    #[error("{0}")]
    Usage(String),
    /// A bad name, address or id, or a protocol failure.
    #[error(transparent)]
    Proto(#[from] shoal_proto::ProtoError),
    /// The index failed or refused.
    #[error(transparent)]
    Index(#[from] shoal_index::IndexError),
    /// The registration store cannot be set up (a bad Redis URL or key prefix).
    #[error(transparent)]
    Store(#[from] shoal_index::StoreError),
    /// A peer-side failure (download, folder, server).
    #[error(transparent)]
    Peer(#[from] shoal_peer::PeerError),
    /// No single content of a name could be chosen (`get --id`).
    #[error(transparent)]
    Choose(#[from] crate::choose::ChooseError),
    /// An identity, membership or swarm file could not be used, or TLS not set up.
    #[error(transparent)]
    Tls(#[from] shoal_proto::tls::TlsError),
    /// The status page could not start.
    #[error(transparent)]
    Status(#[from] shoal_status::StatusError),
    /// A local I/O failure.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// Some of several downloads failed (each was reported on its own line).
    #[error("{failed} of {total} downloads failed")]
    SomeFailed {
        /// Failed downloads.
        failed: usize,
        /// All downloads asked for.
        total: usize,
    },
    /// A benchmark could not run.
    #[error("benchmark failed: {0}")]
    Bench(#[from] shoal_bench::BenchError),
}
