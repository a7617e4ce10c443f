use std::io;
use std::path::PathBuf;

use shoal_proto::message::ErrorReply;
use shoal_proto::{PeerAddr, ProtoError};

/// Everything that can go wrong in the index crate, each a readable sentence.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Framing, handshake, decoding or the stream underneath failed.
    #[error("index protocol error: {0}")]
    Proto(#[from] ProtoError),
    /// The index knows no peer holding the file.
    #[error("no peer holds {key}")]
    NotFound {
        /// The name or id asked for.
        key: String,
    },
    /// The index answered with a refusal (bad name, over a limit, internal failure, ...).
    #[error("index refused the request: {0}")]
    Refused(ErrorReply),
    /// None of the configured index addresses accepted a connection and handshake.
    #[error("no index reachable at {addrs}: {reason}")]
    Unreachable {
        /// The addresses tried, comma-separated.
        addrs: String,
        /// Why each one failed.
        reason: String,
    },
    /// The index answered with a message that does not fit the request.
    #[error("the index sent an unexpected response: {0}")]
    UnexpectedResponse(String),
    /// The server could not start listening.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: PeerAddr,
        /// Why it failed.
        source: io::Error,
    },
    /// The operating system would not start a thread the server needs.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// Which thread.
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// The index's shared registry (Redis) cannot be reached right now: nothing changed; the
    /// same request succeeds once it is back. From a client: the index answered
    /// "registry unavailable".
    #[error("{0}")]
    RegistryUnavailable(String),
    /// The registration store failed (durable and remote stores can).
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    /// A heartbeat named a holder the index does not know: its lease lapsed, or the index
    /// restarted without its data. The holder must register again.
    #[error(
        "the index does not know {holder} (its lease lapsed or the index restarted); register again"
    )]
    UnknownHolder {
        /// The holder that tried to renew.
        holder: PeerAddr,
    },
    /// Reading or writing the durable store's files failed.
    #[error("{what} {}: {source}", path.display())]
    Data {
        /// What the store was doing ("cannot write the log", ...).
        what: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// Another process (or another store in this one) has the data folder open: two
    /// writers would interleave their logs.
    #[error(
        "{} is in use by another index (its lock file is held); stop that one first",
        path.display()
    )]
    DataInUse {
        /// The lock file.
        path: PathBuf,
    },
    /// A data file is not what the durable store wrote (wrong magic, bad checksum in a
    /// snapshot, unknown version).
    #[error("{} is not usable index data: {reason}", path.display())]
    DataFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A data file that others depend on is missing (a log continues a snapshot that is not
    /// there, or a log in between is gone): starting would silently serve a fraction of the
    /// registry.
    #[error("{} is missing: {reason}", path.display())]
    DataMissing {
        /// The missing file.
        path: PathBuf,
        /// What depends on it and how to proceed.
        reason: String,
    },
    /// A registration would take its holder, or the holders of its source address, past
    /// a cap ([`crate::IndexServerConfig::max_registrations_per_holder`] and
    /// [`crate::IndexServerConfig::max_registrations_per_address`]); nothing was stored.
    #[error("{0}")]
    OverLimit(#[from] crate::LimitExceeded),
    /// The durable store could not write its log (a full disk, a failing one): the change
    /// is refused and leaves no trace (whatever was not on disk is undone). Changes are
    /// refused until the data folder takes writes again; then the store goes on by itself.
    #[error("the index's data log failed ({0}); the change was refused and undone")]
    LogFailed(String),
}
