//! An in-process network for deterministic tests, built on crossbeam-channel byte pipes.
//!
//! A [`MemNetwork`] is a set of named endpoints. [`MemNetwork::host`] gives a [`MemTransport`]
//! for one host name; it binds `name:port` endpoints (port 0 picks a free one) and connects to
//! any bound endpoint. Faults are injected per listening endpoint and apply to the bytes that
//! endpoint *sends* on connections opened after the call, counted per connection, so the same
//! test always sees the same bytes:
//!
//! - [`MemNetwork::refuse`]: connects from other hosts fail with `ConnectionRefused`;
//! - [`MemNetwork::cut_after`]: after N bytes the endpoint's side of the connection closes;
//! - [`MemNetwork::corrupt_at`]: byte N (from the start of the connection) is flipped;
//! - [`MemNetwork::stall_after`]: after N bytes nothing more arrives, the connection stays open
//!   (the reader's timeout fires);
//! - [`MemNetwork::trickle_after`]: after N bytes the rest dribbles out at a few bytes a
//!   second (a holder that sends just enough never to time out);
//! - [`MemNetwork::heal`]: removes all faults.
//!
//! Streams honour read and write timeouts (a write waits while the pipe is full) and
//! [`Connection::closer`], as TCP streams do.
//!
//! [`MemNetwork::limit_upload`] gives a host an upload rate shared by every connection it
//! writes to (a link of that speed), so a crowd test means something: writes wait for their
//! turn on the host's link. Nothing else in this network waits on time.
//!
//! ```
//! use std::io::{Read, Write};
//! use shoal_proto::mem::MemNetwork;
//! use shoal_proto::{Listener, PeerAddr, Transport};
//!
//! let net = MemNetwork::new();
//! let server = net.host("server").bind(&PeerAddr::new("server:0").unwrap()).unwrap();
//! let addr = server.local_addr().unwrap();
//! net.corrupt_at(&addr, 1);
//! let mut client = net.host("client").connect(&addr).unwrap();
//! let (mut conn, _) = server.accept().unwrap();
//! conn.write_all(b"abc").unwrap();
//! let mut got = [0u8; 3];
//! client.read_exact(&mut got).unwrap();
//! assert_eq!(got, [b'a', b'b' ^ 0xff, b'c']);
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Select, Sender, TryRecvError, bounded};

use crate::{Closer, Connection, Listener, PeerAddr, Transport};

/// Messages buffered per direction before a writer blocks (bounds memory like a socket buffer).
const PIPE_DEPTH: usize = 64;

/// The faults applied to the bytes an endpoint sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Faults {
    refuse: bool,
    cut_after: Option<u64>,
    corrupt_at: Option<u64>,
    stall_after: Option<u64>,
    /// After this many bytes, at most this many bytes a second.
    trickle_after: Option<(u64, u64)>,
}

/// Traffic counters of one listening endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Connections accepted (or refused by an injected fault).
    pub connections: u64,
    /// Bytes the endpoint sent, faults applied.
    pub bytes_sent: u64,
    /// Bytes the endpoint received.
    pub bytes_received: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
}

#[derive(Default)]
struct NetState {
    listeners: HashMap<PeerAddr, Sender<MemStream>>,
    faults: HashMap<PeerAddr, Faults>,
    counters: HashMap<PeerAddr, Arc<Counters>>,
    /// Upload links by host name.
    links: HashMap<String, Arc<Link>>,
    next_port: u32,
}

/// A host's upload link: every write of the host reserves its transmission time on it.
struct Link {
    bytes_per_sec: u64,
    /// When the link is free again.
    free_at: Mutex<Instant>,
}

impl Link {
    /// Waits until `n` bytes would have left at the link's rate after everything queued
    /// before them.
    fn send(&self, n: usize) {
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec.max(1) as f64);
        let done = {
            let mut free_at = self.free_at.lock().unwrap_or_else(PoisonError::into_inner);
            let start = (*free_at).max(Instant::now());
            *free_at = start + cost;
            *free_at
        };
        let wait = done.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// An in-process network of named endpoints. Cheap to clone; clones share the network.
#[derive(Clone, Default)]
pub struct MemNetwork {
    state: Arc<Mutex<NetState>>,
}

impl MemNetwork {
    /// An empty network.
    pub fn new() -> Self {
        Self::default()
    }

    /// A transport for the machine called `host`: its connections come from `host:<n>`.
    pub fn host(&self, host: &str) -> MemTransport {
        MemTransport {
            net: self.clone(),
            host: host.to_string(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        // A test thread that panicked while holding the lock leaves consistent data behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update_faults(&self, addr: &PeerAddr, change: impl FnOnce(&mut Faults)) {
        change(self.lock().faults.entry(addr.clone()).or_default());
    }

    /// Connections to `addr` are refused.
    pub fn refuse(&self, addr: &PeerAddr) {
        self.update_faults(addr, |f| f.refuse = true);
    }

    /// `addr` closes each new connection after sending `n` bytes on it.
    pub fn cut_after(&self, addr: &PeerAddr, n: u64) {
        self.update_faults(addr, |f| f.cut_after = Some(n));
    }

    /// `addr` flips the byte at offset `n` of what it sends on each new connection.
    pub fn corrupt_at(&self, addr: &PeerAddr, n: u64) {
        self.update_faults(addr, |f| f.corrupt_at = Some(n));
    }

    /// `addr` stops delivering after `n` bytes on each new connection, without closing it.
    pub fn stall_after(&self, addr: &PeerAddr, n: u64) {
        self.update_faults(addr, |f| f.stall_after = Some(n));
    }

    /// Limits what `host` sends, over all its connections together, to `bytes_per_sec`
    /// (its upload link); applies to connections opened after the call.
    pub fn limit_upload(&self, host: &str, bytes_per_sec: u64) {
        self.lock().links.insert(
            host.to_string(),
            Arc::new(Link {
                bytes_per_sec,
                free_at: Mutex::new(Instant::now()),
            }),
        );
    }

    /// `addr` sends at most `bytes_per_sec` (one write of at most that many bytes a second)
    /// after the first `n` bytes of each new connection.
    pub fn trickle_after(&self, addr: &PeerAddr, n: u64, bytes_per_sec: u64) {
        self.update_faults(addr, |f| f.trickle_after = Some((n, bytes_per_sec.max(1))));
    }

    /// Removes every fault of `addr`.
    pub fn heal(&self, addr: &PeerAddr) {
        self.lock().faults.remove(addr);
    }

    /// Traffic counters of the listening endpoint `addr` (zero if never bound).
    pub fn stats(&self, addr: &PeerAddr) -> EndpointStats {
        let state = self.lock();
        match state.counters.get(addr) {
            Some(c) => EndpointStats {
                connections: c.connections.load(Ordering::Relaxed),
                bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
                bytes_received: c.bytes_received.load(Ordering::Relaxed),
            },
            None => EndpointStats::default(),
        }
    }
}

/// One host's view of a [`MemNetwork`].
#[derive(Clone)]
pub struct MemTransport {
    net: MemNetwork,
    host: String,
}

impl MemTransport {
    /// The network this transport belongs to.
    pub fn network(&self) -> &MemNetwork {
        &self.net
    }
}

impl Transport for MemTransport {
    type Stream = MemStream;
    type Listener = MemListener;

    fn bind(&self, addr: &PeerAddr) -> io::Result<MemListener> {
        let mut state = self.net.lock();
        let addr = if addr.as_str().ends_with(":0") {
            state.next_port += 1;
            let port = 10_000 + state.next_port;
            PeerAddr::new(format!("{}:{port}", addr.host()))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
        } else {
            addr.clone()
        };
        if state.listeners.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is already bound"),
            ));
        }
        let (tx, rx) = bounded(1024);
        state.listeners.insert(addr.clone(), tx);
        state.counters.entry(addr.clone()).or_default();
        Ok(MemListener {
            net: self.net.clone(),
            addr,
            incoming: rx,
            accept_timeout: Mutex::new(None),
        })
    }

    fn connect(&self, addr: &PeerAddr) -> io::Result<MemStream> {
        let mut state = self.net.lock();
        let faults = state.faults.get(addr).copied().unwrap_or_default();
        let counters = state.counters.get(addr).cloned();
        if let Some(c) = &counters {
            c.connections.fetch_add(1, Ordering::Relaxed);
        }
        let refused = || {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{addr}: connection refused"),
            )
        };
        // A host reaching its own endpoint (a server waking its accept loop to stop) is not
        // subject to the faults injected between hosts.
        if faults.refuse && addr.host() != self.host {
            return Err(refused());
        }
        let listener = state.listeners.get(addr).cloned().ok_or_else(refused)?;
        let client_link = state.links.get(&self.host).cloned();
        let server_link = state.links.get(addr.host()).cloned();
        state.next_port += 1;
        let from = PeerAddr::new(format!("{}:{}", self.host, 40_000 + state.next_port))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        drop(state);

        let (to_server, server_rx) = bounded(PIPE_DEPTH);
        let (to_client, client_rx) = bounded(PIPE_DEPTH);
        let mut client = MemStream::new(from.clone(), addr.clone(), client_rx, to_server, None);
        client.link = client_link;
        let mut server = MemStream::new(addr.clone(), from, server_rx, to_client, counters);
        server.faults = faults;
        server.link = server_link;
        listener.send(server).map_err(|_| refused())?;
        Ok(client)
    }
}

/// A bound endpoint of a [`MemNetwork`]; dropping it unbinds the address.
pub struct MemListener {
    net: MemNetwork,
    addr: PeerAddr,
    incoming: Receiver<MemStream>,
    accept_timeout: Mutex<Option<Duration>>,
}

impl Listener for MemListener {
    type Stream = MemStream;

    fn accept(&self) -> io::Result<(MemStream, PeerAddr)> {
        let timeout = *self
            .accept_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let stream = match timeout {
            None => self
                .incoming
                .recv()
                .map_err(|_| io::Error::from(io::ErrorKind::NotConnected))?,
            // WouldBlock, as a TCP listener with SO_RCVTIMEO says.
            Some(t) => self.incoming.recv_timeout(t).map_err(|e| match e {
                RecvTimeoutError::Timeout => io::Error::from(io::ErrorKind::WouldBlock),
                RecvTimeoutError::Disconnected => io::Error::from(io::ErrorKind::NotConnected),
            })?,
        };
        let from = stream.peer.clone();
        Ok((stream, from))
    }

    fn local_addr(&self) -> io::Result<PeerAddr> {
        Ok(self.addr.clone())
    }

    fn set_accept_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        *self
            .accept_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = timeout;
        Ok(())
    }
}

impl Drop for MemListener {
    fn drop(&mut self) {
        self.net.lock().listeners.remove(&self.addr);
    }
}

/// The [`Connection::closer`] of one stream end: dropping `tx` wakes every wait on `rx`.
struct Shutdown {
    done: AtomicBool,
    tx: Mutex<Option<Sender<()>>>,
    rx: Receiver<()>,
}

impl Shutdown {
    fn new() -> Arc<Shutdown> {
        let (tx, rx) = bounded(0);
        Arc::new(Shutdown {
            done: AtomicBool::new(false),
            tx: Mutex::new(Some(tx)),
            rx,
        })
    }

    fn close(&self) {
        self.done.store(true, Ordering::SeqCst);
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
}

fn shut_down() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "connection shut down")
}

/// One end of an in-memory connection. Dropping it closes its sending direction: the other
/// end reads the bytes already sent, then end-of-stream.
pub struct MemStream {
    local: PeerAddr,
    peer: PeerAddr,
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    pending_pos: usize,
    tx: Option<Sender<Vec<u8>>>,
    read_timeout: Mutex<Option<Duration>>,
    write_timeout: Mutex<Option<Duration>>,
    shutdown: Arc<Shutdown>,
    faults: Faults,
    sent: u64,
    counters: Option<Arc<Counters>>,
    /// The sending host's upload link, if limited.
    link: Option<Arc<Link>>,
}

impl MemStream {
    fn new(
        local: PeerAddr,
        peer: PeerAddr,
        rx: Receiver<Vec<u8>>,
        tx: Sender<Vec<u8>>,
        counters: Option<Arc<Counters>>,
    ) -> Self {
        MemStream {
            local,
            peer,
            rx,
            pending: Vec::new(),
            pending_pos: 0,
            tx: Some(tx),
            read_timeout: Mutex::new(None),
            write_timeout: Mutex::new(None),
            shutdown: Shutdown::new(),
            faults: Faults::default(),
            sent: 0,
            counters,
            link: None,
        }
    }

    fn count(&self, pick: impl Fn(&Counters) -> &AtomicU64, n: usize) {
        if let Some(c) = &self.counters {
            pick(c).fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// The next message, waiting at most the read timeout; a shutdown ends the wait as
    /// the end of the stream does.
    fn next_message(&self) -> Result<Vec<u8>, RecvTimeoutError> {
        if self.shutdown.is_done() {
            return Err(RecvTimeoutError::Disconnected);
        }
        // The common case, without setting up a select.
        match self.rx.try_recv() {
            Ok(bytes) => return Ok(bytes),
            Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            Err(TryRecvError::Empty) => {}
        }
        let timeout = *self.read_timeout.lock().unwrap_or_else(|e| e.into_inner());
        let mut select = Select::new();
        let data = select.recv(&self.rx);
        select.recv(&self.shutdown.rx);
        let op = match timeout {
            Some(t) => select
                .select_timeout(t)
                .map_err(|_| RecvTimeoutError::Timeout)?,
            None => select.select(),
        };
        if op.index() == data {
            op.recv(&self.rx)
                .map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            let _ = op.recv(&self.shutdown.rx);
            Err(RecvTimeoutError::Disconnected)
        }
    }

    /// Queues `bytes` for the other end, waiting at most the write timeout while the pipe
    /// is full.
    fn send_message(&self, tx: &Sender<Vec<u8>>, bytes: Vec<u8>) -> io::Result<()> {
        if self.shutdown.is_done() {
            return Err(shut_down());
        }
        let closed = || {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the other side closed the connection",
            )
        };
        let bytes = match tx.try_send(bytes) {
            Ok(()) => return Ok(()),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Err(closed()),
            Err(crossbeam_channel::TrySendError::Full(bytes)) => bytes,
        };
        let timeout = *self.write_timeout.lock().unwrap_or_else(|e| e.into_inner());
        let mut select = Select::new();
        let data = select.send(tx);
        select.recv(&self.shutdown.rx);
        let op = match timeout {
            Some(t) => select
                .select_timeout(t)
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?,
            None => select.select(),
        };
        if op.index() == data {
            op.send(tx, bytes).map_err(|_| closed())
        } else {
            let _ = op.recv(&self.shutdown.rx);
            Err(shut_down())
        }
    }
}

impl Read for MemStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pending_pos >= self.pending.len() {
            match self.next_message() {
                Ok(bytes) => {
                    self.pending = bytes;
                    self.pending_pos = 0;
                }
                Err(RecvTimeoutError::Disconnected) => return Ok(0),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"));
                }
            }
        }
        let available = &self.pending[self.pending_pos..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.pending_pos += n;
        self.count(|c| &c.bytes_received, n);
        Ok(n)
    }
}

impl Write for MemStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tx) = &self.tx else {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "connection closed",
            ));
        };
        let start = self.sent;
        let mut n = buf.len();
        let mut close_after = false;
        if let Some((after, rate)) = self.faults.trickle_after {
            if start >= after {
                // One small write a second: short writes, so `write_all` keeps dribbling.
                std::thread::sleep(Duration::from_secs(1));
                n = n.min(usize::try_from(rate).unwrap_or(usize::MAX));
            } else {
                n = n.min(usize::try_from(after - start).unwrap_or(usize::MAX));
            }
        }
        if let Some(cut) = self.faults.cut_after {
            let room = cut.saturating_sub(start);
            if room == 0 {
                self.tx = None;
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "connection cut"));
            }
            if (n as u64) >= room {
                n = usize::try_from(room).unwrap_or(n);
                close_after = true;
            }
        }
        let mut bytes = buf[..n].to_vec();
        if let Some(at) = self.faults.corrupt_at
            && at >= start
            && at < start + n as u64
        {
            bytes[(at - start) as usize] ^= 0xff;
        }
        if let Some(stall) = self.faults.stall_after {
            // Bytes past the stall point are swallowed: the writer believes they left.
            let keep = usize::try_from(stall.saturating_sub(start)).unwrap_or(usize::MAX);
            bytes.truncate(keep.min(bytes.len()));
        }
        let delivered = bytes.len();
        if let Some(link) = &self.link {
            link.send(delivered);
        }
        if delivered > 0
            && let Err(e) = self.send_message(tx, bytes)
        {
            if e.kind() == io::ErrorKind::BrokenPipe {
                self.tx = None;
            }
            return Err(e);
        }
        self.sent += n as u64;
        self.count(|c| &c.bytes_sent, delivered);
        if close_after {
            self.tx = None;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Connection for MemStream {
    fn peer_addr(&self) -> io::Result<PeerAddr> {
        Ok(self.peer.clone())
    }
    fn local_addr(&self) -> io::Result<PeerAddr> {
        Ok(self.local.clone())
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        *self.read_timeout.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
        Ok(())
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        *self.write_timeout.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
        Ok(())
    }
    fn closer(&self) -> Option<Closer> {
        let shutdown = Arc::clone(&self.shutdown);
        Some(Box::new(move || shutdown.close()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(net: &MemNetwork) -> (MemStream, MemStream, PeerAddr) {
        let listener = net
            .host("srv")
            .bind(&PeerAddr::new("srv:0").unwrap())
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let client = net.host("cli").connect(&addr).unwrap();
        let (server, from) = listener.accept().unwrap();
        assert_eq!(from.host(), "cli");
        (client, server, addr)
    }

    #[test]
    fn bytes_flow_and_eof_on_drop() {
        let net = MemNetwork::new();
        let (mut client, mut server, addr) = pair(&net);
        server.write_all(b"hello").unwrap();
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(net.stats(&addr).bytes_sent, 5);
    }

    #[test]
    fn cut_after_delivers_exactly_n_bytes() {
        let net = MemNetwork::new();
        let listener = net
            .host("srv")
            .bind(&PeerAddr::new("srv:1").unwrap())
            .unwrap();
        let addr = listener.local_addr().unwrap();
        net.cut_after(&addr, 7);
        let mut client = net.host("cli").connect(&addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert!(server.write_all(b"0123456789").is_err());
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"0123456");
    }

    #[test]
    fn refuse_and_unbound() {
        let net = MemNetwork::new();
        let t = net.host("a");
        let addr = PeerAddr::new("nobody:1").unwrap();
        assert_eq!(
            t.connect(&addr).err().unwrap().kind(),
            io::ErrorKind::ConnectionRefused
        );
        let listener = t.bind(&addr).unwrap();
        net.refuse(&addr);
        assert!(t.connect(&addr).is_err());
        net.heal(&addr);
        assert!(t.connect(&addr).is_ok());
        assert_eq!(
            t.bind(&addr).err().unwrap().kind(),
            io::ErrorKind::AddrInUse
        );
        drop(listener);
        assert!(t.connect(&addr).is_err());
    }

    #[test]
    fn writes_time_out_on_a_full_pipe() {
        let net = MemNetwork::new();
        let (_client, mut server, _) = pair(&net);
        server
            .set_write_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut sent = 0;
        let err = loop {
            match server.write(b"x") {
                Ok(n) => sent += n,
                Err(e) => break e,
            }
        };
        assert_eq!(sent, PIPE_DEPTH);
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn the_closer_ends_a_blocked_read_and_a_blocked_write() {
        let net = MemNetwork::new();
        let (_client, mut server, _) = pair(&net);
        let close = server.closer().unwrap();
        let reading = std::thread::spawn(move || {
            let mut b = [0u8; 1];
            let n = server.read(&mut b).map_err(|e| e.kind());
            (n, server)
        });
        close();
        let (n, mut server) = reading.join().unwrap();
        assert_eq!(n, Ok(0));
        assert_eq!(
            server.write(b"x").unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );

        let (_client, mut server, _) = pair(&net);
        let close = server.closer().unwrap();
        let writing = std::thread::spawn(move || {
            loop {
                if let Err(e) = server.write(b"x") {
                    return e.kind();
                }
            }
        });
        close();
        assert_eq!(writing.join().unwrap(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn stall_times_out_the_reader() {
        let net = MemNetwork::new();
        let listener = net
            .host("srv")
            .bind(&PeerAddr::new("srv:2").unwrap())
            .unwrap();
        let addr = listener.local_addr().unwrap();
        net.stall_after(&addr, 2);
        let mut client = net.host("cli").connect(&addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        server.write_all(b"abcd").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut got = [0u8; 2];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ab");
        let err = client.read(&mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
