use std::io;
use std::path::PathBuf;

use crate::{NodeId, PeerAddr};

/// What went wrong with a key, a certificate file, a TLS configuration or a TLS
/// connection. Connection failures reach callers as an [`io::Error`] whose inner error is
/// one of these (see [`TlsError::from_io`]); its kind says what class of failure it is
/// (`PermissionDenied`: refused identity or membership; `InvalidData`: not TLS, or data
/// altered on the wire; `TimedOut`: handshake too slow).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Refusing to overwrite a file (a swarm authority is never replaced by accident).
    #[error("{} already exists; refusing to overwrite it", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A file that is not the kind of shoal file expected.
    #[error("{} is not a shoal {expected} file: {reason}", path.display())]
    WrongFile {
        /// The file.
        path: PathBuf,
        /// What it should have been ("node identity", "swarm membership", "swarm authority").
        expected: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The member certificate names another node than the identity it is used with.
    #[error("the member certificate is for node {cert}, this identity is node {identity}")]
    WrongNode {
        /// The node the certificate was issued for.
        cert: NodeId,
        /// This process's node.
        identity: NodeId,
    },
    /// The member certificate is past its end date.
    #[error("the member certificate for node {node} in swarm {swarm:?} expired at {at}")]
    MembershipExpired {
        /// Its node.
        node: NodeId,
        /// Its swarm.
        swarm: String,
        /// When it expired.
        at: String,
    },
    /// A swarm name that cannot be used.
    #[error("invalid swarm name {name:?}: {reason}")]
    BadSwarmName {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A line of a revocation list that is not a node id.
    #[error("{}, line {line}: {text:?} is not a node id", path.display())]
    BadRevocationLine {
        /// The list.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line (shortened).
        text: String,
    },
    /// Key or certificate generation failed.
    #[error("cannot generate a key or certificate: {0}")]
    Generate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),

    /// The peer at `addr` does not belong to this node's swarm.
    #[error("{addr} is not a member of this swarm ({reason})")]
    NotMember {
        /// The peer's address.
        addr: PeerAddr,
        /// What it presented instead.
        reason: &'static str,
    },
    /// The peer's member certificate is past its end date (or not yet valid).
    #[error("{addr}'s member certificate is {what}")]
    PeerCertificateDate {
        /// The peer's address.
        addr: PeerAddr,
        /// "expired" or "not valid yet", with the date.
        what: String,
    },
    /// The peer is on this node's revocation list.
    #[error("{addr}: node {node} is revoked (listed in {})", file.display())]
    Revoked {
        /// The peer's address.
        addr: PeerAddr,
        /// Its node id.
        node: NodeId,
        /// The list naming it.
        file: PathBuf,
    },
    /// The peer's certificate cannot be used (not Ed25519, malformed, forged).
    #[error("{addr} presented an unusable certificate: {reason}")]
    BadPeerCertificate {
        /// The peer's address.
        addr: PeerAddr,
        /// Why.
        reason: String,
    },
    /// The peer refused this node (it sent an alert saying why).
    #[error("{addr} refused us: {reason}")]
    RefusedUs {
        /// The peer's address.
        addr: PeerAddr,
        /// The alert, in words.
        reason: String,
    },
    /// The server does not speak TLS.
    #[error("{addr} does not speak TLS (a server run with --insecure-plaintext?)")]
    NotTls {
        /// The server's address.
        addr: PeerAddr,
    },
    /// A client sent plaintext to this TLS server.
    #[error("{addr} spoke plaintext to a TLS server (--insecure-plaintext on one side only?)")]
    PlaintextClient {
        /// The client's address.
        addr: PeerAddr,
    },
    /// The connection ended before the handshake did.
    #[error("{addr} closed the connection during the TLS handshake{hint}")]
    HandshakeClosed {
        /// The peer's address.
        addr: PeerAddr,
        /// A guess at why, or empty.
        hint: &'static str,
    },
    /// The handshake took longer than allowed.
    #[error("the TLS handshake with {addr} took longer than {limit}")]
    HandshakeTimeout {
        /// The peer's address.
        addr: PeerAddr,
        /// The limit, in words ("10 s", "100 ms").
        limit: String,
    },
    /// A call on a connection that already failed (the first error said why).
    #[error("connection unusable after an earlier TLS error: {detail}")]
    Failed {
        /// The first error.
        detail: String,
    },
    /// Any other TLS failure on a connection (altered bytes, protocol violations).
    #[error("TLS with {addr} failed: {detail}")]
    Protocol {
        /// The peer's address.
        addr: PeerAddr,
        /// What happened.
        detail: String,
    },
}

impl TlsError {
    /// The [`TlsError`] inside an I/O error from a [`super::TlsStream`] or
    /// [`TlsTransport`](super::TlsTransport)`::connect`, if it is one.
    pub fn from_io(e: &io::Error) -> Option<&TlsError> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<TlsError>())
    }

    /// The I/O error kind a connection failure is reported with.
    pub(crate) fn kind(&self) -> io::ErrorKind {
        match self {
            TlsError::NotMember { .. }
            | TlsError::PeerCertificateDate { .. }
            | TlsError::Revoked { .. }
            | TlsError::BadPeerCertificate { .. }
            | TlsError::RefusedUs { .. }
            | TlsError::WrongNode { .. }
            | TlsError::MembershipExpired { .. } => io::ErrorKind::PermissionDenied,
            TlsError::HandshakeTimeout { .. } => io::ErrorKind::TimedOut,
            TlsError::HandshakeClosed { .. } | TlsError::Failed { .. } => {
                io::ErrorKind::ConnectionAborted
            }
            TlsError::Read { source, .. } | TlsError::Write { source, .. } => source.kind(),
            _ => io::ErrorKind::InvalidData,
        }
    }

    /// As an I/O error of the matching kind.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::new(self.kind(), self)
    }
}

impl From<rcgen::Error> for TlsError {
    fn from(e: rcgen::Error) -> Self {
        TlsError::Generate(e.to_string())
    }
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Config(e.to_string())
    }
}
