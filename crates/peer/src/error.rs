use std::io;
use std::path::PathBuf;

use shoal_index::IndexError;
use shoal_proto::{PeerAddr, ProtoError};

use crate::HolderReport;

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
    /// Some chunks could not be fetched from any holder. The verified part stays on disk
    /// (hidden part file + resume sidecar): the same download run again fetches only what is
    /// missing.
    #[error(
        "{name}: {missing_bytes} of {size} bytes ({missing_chunks} chunks) could not be fetched \
         from any holder ({}); the verified part is kept, run the same download again to resume",
        describe_failures(failures)
    )]
    Incomplete {
        /// The file.
        name: String,
        /// Bytes still missing.
        missing_bytes: u64,
        /// Chunks still missing.
        missing_chunks: u32,
        /// File size.
        size: u64,
        /// Every holder that was tried, with why it stopped.
        failures: Vec<HolderReport>,
    },
    /// The folder's file system lacks the space a download needs; nothing was written.
    #[error(
        "not enough space for {name} in {}: it needs {needed} more bytes, {available} are free",
        dir.display()
    )]
    NoSpace {
        /// The file.
        name: String,
        /// The folder.
        dir: PathBuf,
        /// Bytes the download still has to write.
        needed: u64,
        /// Bytes free for this user on that file system.
        available: u64,
    },
    /// The local disk failed while a download stored its chunks (full, or an I/O error):
    /// not the holders' fault. What verified before is kept for a resume.
    #[error(
        "cannot store {name} in {}: {reason}; the {verified_bytes} bytes verified so far are \
         kept, run the same download again once there is room",
        dir.display()
    )]
    LocalDisk {
        /// The file.
        name: String,
        /// The folder.
        dir: PathBuf,
        /// What failed.
        reason: String,
        /// Bytes verified and kept.
        verified_bytes: u64,
    },
    /// The folder already has a file of that name with other content than the index lists
    /// under the name; shoal never overwrites it.
    #[error(
        "{} is already here with other content (id {}) than the index lists under that name \
         (id {}); move it aside to fetch the other, or ask by id",
        path.display(), here.short(), listed.short()
    )]
    DifferentContent {
        /// The file in the folder.
        path: PathBuf,
        /// Its id.
        here: shoal_proto::FileId,
        /// The id the index lists under its name.
        listed: shoal_proto::FileId,
    },
    /// Something already exists at a download's final path; shoal never overwrites it.
    #[error("{} already exists (with other content or not a regular file); not overwriting it", path.display())]
    AlreadyExists {
        /// The final path.
        path: PathBuf,
    },
    /// Another download of the same file into the same folder is running (its part file is
    /// locked): two writers would trip over each other.
    #[error("{name} is already being downloaded into {} by another download; wait for it or stop it", dir.display())]
    InProgress {
        /// The file.
        name: String,
        /// The folder.
        dir: PathBuf,
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
    /// The peer was given no index to register with (an index that is down is not an
    /// error: it is retried at every heartbeat while the peer serves).
    #[error("no index to register {holder} with: {reasons}")]
    NoIndexAccepted {
        /// The address the peer registers as.
        holder: PeerAddr,
        /// Each index with why it failed.
        reasons: String,
    },
    /// The folder cannot be watched for changes.
    #[error("cannot watch {} for changes: {reason}", dir.display())]
    Watch {
        /// The folder.
        dir: PathBuf,
        /// Why (from the operating system's watcher).
        reason: String,
    },
    /// A background thread could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        /// Which thread ("folder watcher", "heartbeat").
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// Listening on a wildcard address, and the index's view of this host is not an IP
    /// address to advertise.
    #[error("cannot tell this machine's address from {seen_as}; pass an advertise address")]
    NoAdvertiseAddr {
        /// How the index saw this host.
        seen_as: PeerAddr,
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

fn describe_failures(failures: &[HolderReport]) -> String {
    if failures.is_empty() {
        return "no holder was reachable".into();
    }
    failures
        .iter()
        .map(|f| match &f.dropped {
            Some(reason) => format!("{} {reason}", f.holder),
            None => format!("{} had nothing more to send", f.holder),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl PeerError {
    /// Holders that sent bytes failing verification (for a failed swarm download).
    pub fn corrupt_holders(&self) -> Vec<&PeerAddr> {
        match self {
            PeerError::Incomplete { failures, .. } => failures
                .iter()
                .filter(|f| f.corrupt_chunk.is_some())
                .map(|f| &f.holder)
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// An I/O error as a user reads it ("connection refused (nothing listens there)"), the same
/// words the protocol layer uses.
pub(crate) fn io_text(e: std::io::Error) -> String {
    shoal_proto::ProtoError::from(e).to_string()
}
