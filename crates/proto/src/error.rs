use std::io;

/// Everything that can go wrong below the application: framing, handshakes, decoding and the
/// validation of wire values.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The underlying stream failed.
    #[error("{}", describe_io(.0))]
    Io(#[from] io::Error),
    /// The other side closed the connection cleanly between two frames.
    #[error("connection closed by the other side")]
    Closed,
    /// No byte of a new frame arrived within the stream's read timeout (the connection is
    /// quiet between frames; nothing was consumed, so reading can go on).
    #[error("no request within the read timeout")]
    Idle,
    /// A length prefix announced a frame larger than this side accepts.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// Accepted maximum.
        limit: u64,
    },
    /// A frame body could not be decoded into the expected message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The other side does not speak shoal at all.
    #[error("not a shoal endpoint (bad handshake magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// The other side speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, the other side {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// Their version.
        theirs: u16,
    },
    /// The other side serves the other shoal protocol (index vs peer).
    #[error("wrong service: expected a {expected} endpoint, reached a {got} endpoint")]
    WrongProtocol {
        /// What we wanted to talk to.
        expected: String,
        /// What answered.
        got: String,
    },
    /// The other side read our answer slower than the minimum rate while others waited
    /// for its place: a peer server ends such an upload (and the connection, which is out
    /// of step mid-frame) and gives the upload slot to the next in line.
    #[error("the other side read slower than {min_rate} bytes/s while others waited for its place")]
    TooSlow {
        /// The minimum rate, in bytes per second.
        min_rate: u64,
    },
    /// The server answered with TLS records: it speaks TLS and this client does not.
    #[error(
        "the server speaks TLS; this client is plaintext (--insecure-plaintext on one side only?)"
    )]
    TlsServer,
    /// The server is at its connection limit and refused us.
    #[error("server busy: connection limit reached, try again later")]
    Busy,
    /// A file name that is not a plain name inside one folder.
    #[error("invalid file name {name:?}: {reason}")]
    BadName {
        /// The offending name (possibly truncated for display).
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A peer address that cannot be used.
    #[error("invalid peer address {addr:?}: {reason}")]
    BadAddr {
        /// The offending address.
        addr: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A file id that is not 64 hex digits.
    #[error("invalid file id {0:?}: expected 64 hex digits")]
    BadId(String),
    /// A node id that is not 52 base32 characters (dashes and case aside).
    #[error("invalid node id {0:?}: expected 52 base32 letters and digits, as `shoal id` prints")]
    BadNodeId(String),
    /// A manifest that does not describe its file consistently.
    #[error("invalid manifest: {0}")]
    BadManifest(String),
}

/// An I/O error in words a user can act on; the OS text where it already is one.
fn describe_io(e: &io::Error) -> String {
    // A TLS failure already says what happened, and to whom.
    if crate::tls::TlsError::from_io(e).is_some() {
        return e.to_string();
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused (nothing listens there)".into(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            "timed out (the other side went quiet)".into()
        }
        io::ErrorKind::UnexpectedEof => "the connection closed in the middle of a message".into(),
        io::ErrorKind::ConnectionReset => "the connection was reset by the other side".into(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
            "the other side closed the connection".into()
        }
        _ => e.to_string(),
    }
}

impl ProtoError {
    /// True when the error means the connection is gone (as opposed to a bad message on a
    /// live connection).
    pub fn is_disconnect(&self) -> bool {
        match self {
            ProtoError::Closed => true,
            ProtoError::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}
