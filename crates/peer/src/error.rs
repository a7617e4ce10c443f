use std::io;
use std::path::PathBuf;

use shoal_index::IndexError;
use shoal_proto::message::ErrorReply;
use shoal_proto::{PeerAddr, ProtoError};

/// Everything that can go wrong in a peer, each a sentence naming what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The name or id asked for is not a plain file name.
    #[error("{0}")]
    BadName(ProtoError),
    /// The index knows no peer holding the file.
    #[error("no peer holds {key}")]
    NotFound {
        /// The name or id asked for.
        key: String,
    },
    /// Talking to the index failed.
    #[error("{0}")]
    Index(IndexError),
    /// The index answered, but with something a downloader cannot use (the index is not
    /// trusted more than any peer).
    #[error("the index's answer for {key} is unusable: {reason}")]
    BadIndexAnswer {
        /// The name or id asked for.
        key: String,
        /// What is wrong with the answer.
        reason: String,
    },
    /// Every holder the index named failed before sending any of the file.
    #[error("no holder of {name} could serve it ({tried} tried); last error: {last_error}")]
    NoReachableHolder {
        /// The file.
        name: String,
        /// How many holders were tried.
        tried: usize,
        /// Why the last one failed.
        last_error: String,
    },
    /// A holder could not be connected to, refused the handshake, or dropped the connection
    /// before sending any of the file.
    #[error("cannot fetch {name} from {holder}: {source}")]
    HolderFailed {
        /// The file.
        name: String,
        /// The holder.
        holder: PeerAddr,
        /// Why.
        source: ProtoError,
    },
    /// A holder sent a manifest that does not describe the file the index named.
    #[error("{holder} sent a bad manifest for {name}: {reason}")]
    BadManifest {
        /// The file.
        name: String,
        /// The holder.
        holder: PeerAddr,
        /// What is wrong with it.
        reason: String,
    },
    /// A holder answered a request with a refusal.
    #[error("{holder} refused to send {name}: {reply}")]
    Refused {
        /// The file.
        name: String,
        /// The holder.
        holder: PeerAddr,
        /// Its answer.
        reply: ErrorReply,
    },
    /// A holder sent something the peer protocol does not allow at that point.
    #[error("{holder} broke the peer protocol while sending {name}: {reason}")]
    Protocol {
        /// The file.
        name: String,
        /// The holder.
        holder: PeerAddr,
        /// What it did.
        reason: String,
    },
    /// A chunk's bytes do not hash to the manifest's chunk hash.
    #[error("chunk {chunk} of {name} from {holder} failed verification")]
    Integrity {
        /// The file.
        name: String,
        /// The holder that sent it.
        holder: PeerAddr,
        /// The chunk index.
        chunk: u32,
    },
    /// The connection to a holder ended (or went silent) before the whole file arrived.
    #[error("{holder} stopped sending {name} after {received} of {size} bytes: {source}")]
    Transfer {
        /// The file.
        name: String,
        /// The holder.
        holder: PeerAddr,
        /// Verified bytes received.
        received: u64,
        /// File size.
        size: u64,
        /// What ended it.
        source: ProtoError,
    },
    /// Something already exists at a download's final path; shoal never overwrites it.
    #[error("{} already exists (with other content or not a regular file); not overwriting it", path.display())]
    AlreadyExists {
        /// The final path.
        path: PathBuf,
    },
    /// A local file-system operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "create the part file", ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// The peer server could not start listening.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: PeerAddr,
        /// Why it failed.
        source: io::Error,
    },
}

impl From<IndexError> for PeerError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::NotFound { key } => PeerError::NotFound { key },
            other => PeerError::Index(other),
        }
    }
}

impl PeerError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        PeerError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
