//! Transports whose ends have node ids, for the tests of the node-id plumbing: [`Keys`] gives
//! each test host a transport presenting a node's key, over [`Claimed`] or real TLS
//! ([`TlsKeys`]), so each test runs on both.
//!
//! [`Claimed`] is a test-only transport that stands in for TLS: each end
//! *claims* a node id (proves nothing; real runs use the TLS transport), and
//! [`Connection::peer_node`] returns what the other end claimed.
//!
//! [`Claimed::connect`] writes the client's 32-byte id first; the accepted stream reads it on
//! its first read or write and writes its own id back, which the client reads on its first
//! read. An all-zero id is the anonymous claim: `peer_node` is `None` on the other side, as
//! on plain TCP, so plaintext paths can be tested against the same servers.
//!
//! Shared by the index, peer and cli tests (`#[path]`), one copy.
#![allow(dead_code)] // each test crate uses a part

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use shoal_proto::mem::{MemNetwork, MemTransport};
use shoal_proto::tls::{Identity, TlsConfig, TlsTransport};
use shoal_proto::{Closer, Connection, Listener, NodeId, PeerAddr, Transport};

/// Node keys for test hosts: `transport(net, host, who)` is host `host`'s transport on the
/// memory network, presenting node `who`'s key; `node(who)` is that key's id.
pub(crate) trait Keys {
    /// The transport.
    type T: Transport;
    /// Host `host`, presenting node `who`.
    fn transport(&self, net: &MemNetwork, host: &str, who: u8) -> Self::T;
    /// Node `who`'s id.
    fn node(&self, who: u8) -> NodeId;
    /// Host `host` proving no id, where the transport can (`None` for TLS, which always
    /// proves one).
    fn anonymous(&self, net: &MemNetwork, host: &str) -> Option<Self::T>;
}

/// [`Claimed`] ids: node `who` is `[who; 32]`.
pub(crate) struct ClaimedKeys;

impl Keys for ClaimedKeys {
    type T = Claimed<MemTransport>;

    fn transport(&self, net: &MemNetwork, host: &str, who: u8) -> Self::T {
        Claimed::new(net.host(host), node(who))
    }

    fn node(&self, who: u8) -> NodeId {
        node(who)
    }

    fn anonymous(&self, net: &MemNetwork, host: &str) -> Option<Self::T> {
        Some(Claimed::anonymous(net.host(host)))
    }
}

/// Real TLS (open mode): node `who` is a generated identity, the same for every call.
#[derive(Default)]
pub(crate) struct TlsKeys {
    identities: Mutex<HashMap<u8, Identity>>,
}

impl TlsKeys {
    fn identity(&self, who: u8) -> Identity {
        let mut ids = self.identities.lock().unwrap();
        ids.entry(who)
            .or_insert_with(|| Identity::generate().unwrap())
            .clone()
    }
}

impl Keys for TlsKeys {
    type T = TlsTransport<MemTransport>;

    fn transport(&self, net: &MemNetwork, host: &str, who: u8) -> Self::T {
        TlsTransport::new(net.host(host), TlsConfig::new(self.identity(who))).unwrap()
    }

    fn node(&self, who: u8) -> NodeId {
        self.identity(who).node_id()
    }

    fn anonymous(&self, _net: &MemNetwork, _host: &str) -> Option<Self::T> {
        None
    }
}

/// The claim of no id.
const ANONYMOUS: [u8; 32] = [0; 32];

/// `inner`, with every connection claiming `id`.
#[derive(Clone)]
pub(crate) struct Claimed<T> {
    inner: T,
    id: [u8; 32],
}

impl<T: Transport> Claimed<T> {
    /// Connections through `inner` claim `id`.
    pub(crate) fn new(inner: T, id: NodeId) -> Self {
        Claimed {
            inner,
            id: *id.as_bytes(),
        }
    }

    /// Connections through `inner` claim nothing (the other end sees `None`).
    pub(crate) fn anonymous(inner: T) -> Self {
        Claimed {
            inner,
            id: ANONYMOUS,
        }
    }
}

/// A test node id.
pub(crate) fn node(b: u8) -> NodeId {
    NodeId::from_bytes([b; 32])
}

impl<T: Transport> Transport for Claimed<T> {
    type Stream = ClaimedStream<T::Stream>;
    type Listener = ClaimedListener<T::Listener>;

    fn bind(&self, addr: &PeerAddr) -> io::Result<Self::Listener> {
        Ok(ClaimedListener {
            inner: self.inner.bind(addr)?,
            id: self.id,
        })
    }

    fn connect(&self, addr: &PeerAddr) -> io::Result<Self::Stream> {
        let mut inner = self.inner.connect(addr)?;
        inner.write_all(&self.id)?;
        Ok(ClaimedStream {
            inner,
            id: self.id,
            accepted: true,
            theirs: [0; 32],
            have: 0,
        })
    }

    fn wake(&self, addr: &PeerAddr) {
        self.inner.wake(addr);
    }
}

/// A listener whose streams claim `id`.
pub(crate) struct ClaimedListener<L> {
    inner: L,
    id: [u8; 32],
}

impl<L: Listener> Listener for ClaimedListener<L> {
    type Stream = ClaimedStream<L::Stream>;

    fn accept(&self) -> io::Result<(Self::Stream, PeerAddr)> {
        let (inner, from) = self.inner.accept()?;
        let stream = ClaimedStream {
            inner,
            id: self.id,
            accepted: false,
            theirs: [0; 32],
            have: 0,
        };
        Ok((stream, from))
    }

    fn local_addr(&self) -> io::Result<PeerAddr> {
        self.inner.local_addr()
    }

    fn set_accept_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_accept_timeout(timeout)
    }
}

/// One end of a connection with claims.
pub(crate) struct ClaimedStream<S> {
    inner: S,
    id: [u8; 32],
    /// Whether our claim went out already (a client's at connect; a server's after it read
    /// the client's).
    accepted: bool,
    theirs: [u8; 32],
    /// Bytes of the other end's claim read so far.
    have: usize,
}

impl<S: Connection> ClaimedStream<S> {
    /// Reads the other end's claim (and, accepting, answers ours) before any data.
    fn greet(&mut self) -> io::Result<()> {
        while self.have < 32 {
            match self.inner.read(&mut self.theirs[self.have..])? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the connection closed before its node id claim",
                    ));
                }
                n => self.have += n,
            }
        }
        if !self.accepted {
            self.inner.write_all(&self.id)?;
            self.accepted = true;
        }
        Ok(())
    }
}

impl<S: Connection> Read for ClaimedStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.greet()?;
        self.inner.read(buf)
    }
}

impl<S: Connection> Write for ClaimedStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.accepted {
            self.greet()?;
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S: Connection> Connection for ClaimedStream<S> {
    fn peer_addr(&self) -> io::Result<PeerAddr> {
        self.inner.peer_addr()
    }

    fn local_addr(&self) -> io::Result<PeerAddr> {
        self.inner.local_addr()
    }

    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }

    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_write_timeout(timeout)
    }

    fn closer(&self) -> Option<Closer> {
        self.inner.closer()
    }

    fn peer_node(&self) -> Option<NodeId> {
        (self.have == 32 && self.theirs != ANONYMOUS).then(|| NodeId::from_bytes(self.theirs))
    }
}

/// The refusal an index sends for a change from the wrong node.
pub(crate) fn refused_for_other_node<T>(
    result: Result<T, shoal_index::IndexError>,
    holder: &str,
    bound: NodeId,
    asker: NodeId,
) {
    match result {
        Err(shoal_index::IndexError::Refused(reply)) => {
            assert_eq!(reply.code, shoal_proto::message::ErrorCode::BadRequest);
            assert_eq!(
                reply.message,
                format!(
                    "holder {holder} is registered by node {bound}; this connection is node {asker}"
                )
            );
        }
        Err(other) => panic!("expected a refusal naming both nodes, got {other}"),
        Ok(_) => panic!("expected a refusal naming both nodes, got success"),
    }
}
