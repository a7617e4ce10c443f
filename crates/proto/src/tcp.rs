//! The TCP transport, over `std::net`.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::{Closer, Connection, Listener, PeerAddr, Transport};

/// Pending connections the kernel queues for a listener before `accept` takes them (capped
/// by `net.core.somaxconn` on Linux). std's 128 overflowed when hundreds of clients connect
/// at once, and each dropped SYN costs that client a 1 s retransmit.
pub const LISTEN_BACKLOG: i32 = 1024;

/// TCP over `std::net`, with `TCP_NODELAY` on every stream (shoal's requests are small and
/// latency-bound) and a connect timeout.
#[derive(Clone, Debug)]
pub struct TcpTransport {
    connect_timeout: Duration,
}

impl Default for TcpTransport {
    fn default() -> Self {
        TcpTransport {
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl TcpTransport {
    /// A transport whose connects give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        TcpTransport { connect_timeout }
    }
}

fn resolve(addr: &PeerAddr) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = addr.as_str().to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        ));
    }
    Ok(addrs)
}

fn to_peer_addr(addr: SocketAddr) -> io::Result<PeerAddr> {
    PeerAddr::new(addr.to_string()).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

impl Transport for TcpTransport {
    type Stream = TcpStream;
    type Listener = TcpListener;

    fn bind(&self, addr: &PeerAddr) -> io::Result<TcpListener> {
        let mut last = None;
        for candidate in resolve(addr)? {
            match listen_on(candidate) {
                Ok(listener) => return Ok(listener),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable)))
    }

    fn connect(&self, addr: &PeerAddr) -> io::Result<TcpStream> {
        let mut last = None;
        for candidate in resolve(addr)? {
            match TcpStream::connect_timeout(&candidate, self.connect_timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable)))
    }
}

/// What `TcpListener::bind` does, with [`LISTEN_BACKLOG`] instead of std's 128.
fn listen_on(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std does on Unix: a restarted server can bind its port while connections of the old
    // one linger in TIME_WAIT. Not on Windows, where it would let two servers share a port.
    #[cfg(not(windows))]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

impl Connection for TcpStream {
    fn peer_addr(&self) -> io::Result<PeerAddr> {
        to_peer_addr(TcpStream::peer_addr(self)?)
    }
    fn local_addr(&self) -> io::Result<PeerAddr> {
        to_peer_addr(TcpStream::local_addr(self)?)
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, timeout)
    }
    /// `shutdown(Both)` on a duplicate of the socket (one `dup` per connection): the
    /// duplicate keeps the socket alive, so the shutdown can never hit a reused descriptor.
    fn closer(&self) -> Option<Closer> {
        let twin = self.try_clone().ok()?;
        Some(Box::new(move || {
            let _ = twin.shutdown(std::net::Shutdown::Both);
        }))
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;

    fn accept(&self) -> io::Result<(TcpStream, PeerAddr)> {
        let (stream, from) = TcpListener::accept(self)?;
        stream.set_nodelay(true)?;
        Ok((stream, to_peer_addr(from)?))
    }

    fn local_addr(&self) -> io::Result<PeerAddr> {
        to_peer_addr(TcpListener::local_addr(self)?)
    }

    /// SO_RCVTIMEO on the listening socket, which bounds `accept` on Linux and the BSDs.
    fn set_accept_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        socket2::SockRef::from(self).set_read_timeout(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn port_zero_reports_the_real_port() {
        let t = TcpTransport::default();
        let listener = t.bind(&PeerAddr::new("127.0.0.1:0").unwrap()).unwrap();
        let addr = Listener::local_addr(&listener).unwrap();
        assert!(!addr.as_str().ends_with(":0"));
        let mut client = t.connect(&addr).unwrap();
        let (mut server, from) = Listener::accept(&listener).unwrap();
        assert_eq!(from, Connection::local_addr(&client).unwrap());
        client.write_all(b"hi").unwrap();
        let mut buf = [0; 2];
        server.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn accept_times_out() {
        let t = TcpTransport::default();
        let listener = t.bind(&PeerAddr::new("127.0.0.1:0").unwrap()).unwrap();
        listener
            .set_accept_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let err = Listener::accept(&listener).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{err}"
        );
        // A connection waiting is still accepted at once.
        let addr = Listener::local_addr(&listener).unwrap();
        let _client = t.connect(&addr).unwrap();
        let (server, _) = Listener::accept(&listener).unwrap();
        // The kernel copies the timeout to accepted streams (documented on the trait).
        assert_eq!(
            server.read_timeout().unwrap(),
            Some(Duration::from_millis(20))
        );
    }

    #[test]
    fn ipv6_and_rebinding_a_used_port() {
        let t = TcpTransport::default();
        // Not every machine has IPv6 loopback (some containers): skip rather than fail.
        if let Ok(listener) = t.bind(&PeerAddr::new("[::1]:0").unwrap()) {
            let addr = Listener::local_addr(&listener).unwrap();
            assert!(addr.as_str().starts_with("[::1]:"), "{addr}");
            assert!(!addr.as_str().ends_with(":0"));
            let mut client = t.connect(&addr).unwrap();
            let (mut server, _) = Listener::accept(&listener).unwrap();
            client.write_all(b"v6").unwrap();
            let mut buf = [0; 2];
            server.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"v6");
        }
        // SO_REUSEADDR: the port can be bound again while a closed connection of the old
        // listener is in TIME_WAIT (the server side closed first).
        let listener = t.bind(&PeerAddr::new("127.0.0.1:0").unwrap()).unwrap();
        let addr = Listener::local_addr(&listener).unwrap();
        let mut client = t.connect(&addr).unwrap();
        let (server, _) = Listener::accept(&listener).unwrap();
        drop(server);
        let mut buf = [0; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0);
        drop(client);
        drop(listener);
        let again = t.bind(&addr).unwrap();
        assert_eq!(Listener::local_addr(&again).unwrap(), addr);
        // Two live listeners on one port are still refused.
        assert!(t.bind(&addr).is_err());
    }
}
