//! The TCP transport, over `std::net`.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::{Connection, Listener, PeerAddr, Transport};

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
        TcpListener::bind(&resolve(addr)?[..])
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
}
