//! One of two transports, chosen at run time: how a program offers TLS by default and plain
//! TCP behind an explicit flag without writing everything twice (the `shoal` binary uses
//! `Either<TlsTransport<TcpTransport>, TcpTransport>`).
//!
//! ```
//! use shoal_proto::either::Either;
//! use shoal_proto::mem::MemNetwork;
//! use shoal_proto::{Listener, PeerAddr, Transport};
//!
//! let net = MemNetwork::new();
//! // Both sides must pick the same variant to understand each other.
//! let server: Either<_, shoal_proto::tcp::TcpTransport> = Either::Left(net.host("a"));
//! let listener = server.bind(&PeerAddr::new("a:1").unwrap()).unwrap();
//! let client: Either<_, shoal_proto::tcp::TcpTransport> = Either::Left(net.host("b"));
//! let _stream = client.connect(&listener.local_addr().unwrap()).unwrap();
//! ```

use std::io::{self, Read, Write};
use std::time::Duration;

use crate::{Closer, Connection, Listener, NodeId, PeerAddr, Transport};

/// One of two values of different types: a transport, its streams and its listeners.
#[derive(Clone, Debug)]
pub enum Either<L, R> {
    /// The first kind.
    Left(L),
    /// The second kind.
    Right(R),
}

/// Runs the same expression on whichever variant is there.
macro_rules! both {
    ($value:expr, $inner:pat => $body:expr) => {
        match $value {
            Either::Left($inner) => $body,
            Either::Right($inner) => $body,
        }
    };
}

impl<L: Transport, R: Transport> Transport for Either<L, R> {
    type Stream = Either<L::Stream, R::Stream>;
    type Listener = Either<L::Listener, R::Listener>;

    fn bind(&self, addr: &PeerAddr) -> io::Result<Self::Listener> {
        Ok(match self {
            Either::Left(t) => Either::Left(t.bind(addr)?),
            Either::Right(t) => Either::Right(t.bind(addr)?),
        })
    }

    fn connect(&self, addr: &PeerAddr) -> io::Result<Self::Stream> {
        Ok(match self {
            Either::Left(t) => Either::Left(t.connect(addr)?),
            Either::Right(t) => Either::Right(t.connect(addr)?),
        })
    }
}

impl<L: Read, R: Read> Read for Either<L, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        both!(self, s => s.read(buf))
    }
}

impl<L: Write, R: Write> Write for Either<L, R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        both!(self, s => s.write(buf))
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        both!(self, s => s.write_all(buf))
    }
    fn flush(&mut self) -> io::Result<()> {
        both!(self, s => s.flush())
    }
}

impl<L: Connection, R: Connection> Connection for Either<L, R> {
    fn peer_addr(&self) -> io::Result<PeerAddr> {
        both!(self, s => s.peer_addr())
    }
    fn local_addr(&self) -> io::Result<PeerAddr> {
        both!(self, s => s.local_addr())
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        both!(self, s => s.set_read_timeout(timeout))
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        both!(self, s => s.set_write_timeout(timeout))
    }
    fn closer(&self) -> Option<Closer> {
        both!(self, s => s.closer())
    }
    fn peer_node(&self) -> Option<NodeId> {
        both!(self, s => s.peer_node())
    }
}

impl<L, R> Listener for Either<L, R>
where
    L: Listener,
    R: Listener,
{
    type Stream = Either<L::Stream, R::Stream>;

    fn accept(&self) -> io::Result<(Self::Stream, PeerAddr)> {
        Ok(match self {
            Either::Left(l) => {
                let (s, from) = l.accept()?;
                (Either::Left(s), from)
            }
            Either::Right(l) => {
                let (s, from) = l.accept()?;
                (Either::Right(s), from)
            }
        })
    }
    fn local_addr(&self) -> io::Result<PeerAddr> {
        both!(self, l => l.local_addr())
    }
    fn set_accept_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        both!(self, l => l.set_accept_timeout(timeout))
    }
}
