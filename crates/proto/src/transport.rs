use std::io::{self, Read, Write};
use std::time::Duration;

use crate::{NodeId, PeerAddr};

/// A way to open byte streams between endpoints: TCP for real runs ([`crate::tcp`]), an
/// in-process network for tests ([`crate::mem`]). The index and peer logic is generic over
/// it and never touches sockets.
///
/// `Stream` stays a concrete associated type (not a boxed trait object) so that a
/// transport-specific fast path for file bodies remains possible.
pub trait Transport: Clone + Send + Sync + 'static {
    /// A connected byte stream.
    type Stream: Connection;
    /// A bound listener that accepts streams.
    type Listener: Listener<Stream = Self::Stream>;

    /// Starts listening on `addr`. Port 0 picks a free port; see [`Listener::local_addr`].
    fn bind(&self, addr: &PeerAddr) -> io::Result<Self::Listener>;

    /// Connects to `addr` (with the transport's own connect timeout).
    fn connect(&self, addr: &PeerAddr) -> io::Result<Self::Stream>;

    /// Opens a connection to `addr` and drops it at once, to wake a thread blocked in
    /// accept there (an accept loop stopping). No handshake: a transport whose `connect`
    /// authenticates (TLS) connects its inner transport only, so a wake-up nobody accepts
    /// costs nothing.
    fn wake(&self, addr: &PeerAddr) {
        let _ = self.connect(addr);
    }
}

/// Closes a connection from another thread; see [`Connection::closer`].
pub type Closer = Box<dyn FnOnce() + Send>;

/// A connected, bidirectional byte stream.
pub trait Connection: Read + Write + Send + 'static {
    /// The remote end's address.
    fn peer_addr(&self) -> io::Result<PeerAddr>;
    /// This end's address (which the remote sees as our `peer_addr`).
    fn local_addr(&self) -> io::Result<PeerAddr>;
    /// A read that waits longer than this fails with `TimedOut`/`WouldBlock`.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// A write that waits longer than this fails with `TimedOut`/`WouldBlock`.
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;

    /// A way to close this connection from another thread: once called, a read blocked on
    /// the stream returns end-of-stream at once, a blocked write fails, and the other side
    /// sees the connection close. The accept loop uses it to take an idle connection back
    /// for a new client. `None` (the default) when the transport has no such way; a handler
    /// then notices at its next read timeout.
    fn closer(&self) -> Option<Closer> {
        None
    }

    /// Who is at the other end, as its authenticated transport proved it (a TLS peer's
    /// certificate key); `None` when the transport proves nothing (plain TCP, `mem`) or,
    /// on the accepting side, before the handshake finished (it finishes with the first
    /// read). Compared by clients against the node id the index gave for an address, and
    /// recorded by the index with each registration.
    fn peer_node(&self) -> Option<NodeId> {
        None
    }
}

/// A bound endpoint that hands out incoming connections.
pub trait Listener: Send + Sync + 'static {
    /// The stream type it accepts.
    type Stream: Connection;
    /// Blocks until a client connects.
    fn accept(&self) -> io::Result<(Self::Stream, PeerAddr)>;
    /// The real bound address (with the real port when port 0 was asked for).
    fn local_addr(&self) -> io::Result<PeerAddr>;

    /// Makes [`Listener::accept`] give up after waiting `timeout` (`None`: wait forever) with
    /// a `WouldBlock` or `TimedOut` error; the accept loop uses it to let idle threads go.
    /// A listener that cannot time out says `Unsupported` (the default), and its accept
    /// keeps waiting. On Linux, TCP streams accepted afterwards start with this read timeout
    /// too (the kernel copies it); servers set their own.
    fn set_accept_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let _ = timeout;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this listener's accept cannot time out",
        ))
    }
}
