#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use super::*;
use crate::mem::MemNetwork;
use crate::tcp::TcpTransport;
use crate::{Connection, Listener, PeerAddr, Transport};

fn open(identity: &Identity) -> TlsConfig {
    TlsConfig::new(identity.clone())
}

/// Accepts one connection on `listener` in a thread: reads 5 bytes, echoes them, returns
/// the result (or the server-side error) and the peer node it saw.
fn echo_once<L: Listener>(listener: L) -> thread::JoinHandle<Result<Option<NodeId>, String>>
where
    L::Stream: Connection,
{
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
        stream.write_all(&buf).map_err(|e| e.to_string())?;
        stream.flush().map_err(|e| e.to_string())?;
        Ok(stream.peer_node())
    })
}

fn handshake_and_echo<T: Transport>(
    server_t: TlsTransport<T>,
    client_t: TlsTransport<T>,
    bind: &str,
) {
    let listener = server_t.bind(&PeerAddr::new(bind).unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = echo_once(listener);
    let mut client = client_t.connect(&addr).unwrap();
    assert_eq!(client.peer_node(), Some(server_t.node_id()));
    client.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    assert_eq!(server.join().unwrap().unwrap(), Some(client_t.node_id()));
}

#[test]
fn open_mode_handshake_and_echo_on_mem() {
    let net = MemNetwork::new();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = TlsTransport::new(net.host("srv"), open(&a)).unwrap();
    let client = TlsTransport::new(net.host("cli"), open(&b)).unwrap();
    handshake_and_echo(server, client, "srv:0");
}

#[test]
fn open_mode_handshake_and_echo_on_tcp() {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = TlsTransport::new(TcpTransport::default(), open(&a)).unwrap();
    let client = TlsTransport::new(TcpTransport::default(), open(&b)).unwrap();
    handshake_and_echo(server, client, "127.0.0.1:0");
}
