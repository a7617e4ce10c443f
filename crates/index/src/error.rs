use std::io;

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
    /// The registration store failed (durable and remote stores can).
    #[error("the registration store failed: {0}")]
    Store(String),
}
