//! A TLS connection over any [`Connection`], blocking, with shoal's timeouts and errors.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::AlertDescription;

use super::TlsError;
use super::verify::PeerCheck;
use crate::{Closer, Connection, NodeId, PeerAddr};

/// Ciphertext read from the socket at once: it starts small (a connection that carries
/// small requests keeps little memory) and grows to `MAX_READ_BUFFER` at the first read
/// that fills half of it (a bulk transfer). rustls alone would read 4 KiB per call, four
/// system calls a record; measured on loopback, 128 KiB reads more than double the
/// throughput of 32 KiB ones.
const MIN_READ_BUFFER: usize = 8 << 10;
const MAX_READ_BUFFER: usize = 128 << 10;
/// Plaintext a write may encrypt before the records are sent (one `writev`).
const WRITE_BUFFER: usize = 256 << 10;
/// The first byte of a TLS handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;
/// The first byte of a TLS alert record.
const ALERT_RECORD: u8 = 0x15;
/// A fatal `unexpected_message` alert, sent to a client that spoke plaintext.
const PLAINTEXT_ALERT: [u8; 7] = [ALERT_RECORD, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a];

/// Ciphertext read ahead from the socket.
struct ReadBuf {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl ReadBuf {
    fn is_empty(&self) -> bool {
        self.pos >= self.end
    }

    /// One read from `sock` into the (empty) buffer.
    fn fill(&mut self, sock: &mut impl Read) -> io::Result<usize> {
        if self.buf.is_empty() {
            self.buf = vec![0; MIN_READ_BUFFER];
        }
        let n = sock.read(&mut self.buf)?;
        if n * 2 >= self.buf.len() && self.buf.len() < MAX_READ_BUFFER {
            // Half full or more at once: a bulk transfer. Keep what was read.
            let mut bigger = vec![0; MAX_READ_BUFFER];
            bigger[..n].copy_from_slice(&self.buf[..n]);
            self.buf = bigger;
        }
        self.pos = 0;
        self.end = n;
        Ok(n)
    }

    fn first(&self) -> Option<u8> {
        self.buf[self.pos..self.end].first().copied()
    }
}

impl Read for ReadBuf {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

enum State {
    Handshaking,
    Open,
    /// A fatal error: every later call fails with this message.
    Failed(String),
}

/// A TLS 1.3 connection over `S`, from [`TlsTransport`](super::TlsTransport)`::connect` (handshake done)
/// or [`super::TlsListener`]'s accept (the handshake runs on the first read or write,
/// bounded by the stream's timeouts and the transport's handshake timeout).
///
/// Reads return end-of-stream when the peer closes, with or without a TLS close_notify
/// (shoal's framing detects a truncated message). Any TLS error (an altered byte, an
/// alert) is fatal for the connection: never a wrong byte.
pub struct TlsStream<S> {
    sock: S,
    rbuf: ReadBuf,
    conn: rustls::Connection,
    check: Arc<PeerCheck>,
    addr: PeerAddr,
    server: bool,
    state: State,
    handshake_timeout: Duration,
    started: Option<Instant>,
    received_any: bool,
    eof: bool,
}

impl<S> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Handshaking => "handshaking",
            State::Open => "open",
            State::Failed(_) => "failed",
        };
        f.debug_struct("TlsStream")
            .field("peer", &self.addr)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S: Connection> TlsStream<S> {
    pub(crate) fn new(
        sock: S,
        conn: rustls::Connection,
        check: Arc<PeerCheck>,
        addr: PeerAddr,
        handshake_timeout: Duration,
    ) -> Self {
        let server = matches!(conn, rustls::Connection::Server(_));
        let mut conn = conn;
        conn.set_buffer_limit(Some(WRITE_BUFFER));
        TlsStream {
            sock,
            rbuf: ReadBuf {
                buf: Vec::new(),
                pos: 0,
                end: 0,
            },
            conn,
            check,
            addr,
            server,
            state: State::Handshaking,
            handshake_timeout,
            started: None,
            received_any: false,
            eof: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.sock
    }

    /// The address the peer is known by in messages (dialled, or accepted from).
    pub fn addr(&self) -> &PeerAddr {
        &self.addr
    }

    /// Whether the handshake has completed.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// Ends the TLS session cleanly (a close_notify alert), flushing what is pending.
    pub fn close(&mut self) -> io::Result<()> {
        if matches!(self.state, State::Open) {
            self.conn.send_close_notify();
            self.write_pending()?;
        }
        Ok(())
    }

    /// Client side of [`TlsTransport`](super::TlsTransport)`::connect`: the whole handshake now, until the
    /// server has accepted our certificate; a timeout is fatal.
    pub(crate) fn connect_handshake(&mut self) -> io::Result<()> {
        match self.handshake() {
            Ok(()) => Ok(()),
            Err(e) if is_timeout(&e) && !matches!(self.state, State::Failed(_)) => {
                Err(self.fail(TlsError::HandshakeTimeout {
                    addr: self.addr.clone(),
                    limit: limit_words(self.handshake_timeout),
                }))
            }
            Err(e) => Err(e),
        }
    }

    /// Records a fatal error and returns it as an I/O error.
    fn fail(&mut self, error: TlsError) -> io::Error {
        if self.server {
            match &error {
                TlsError::HandshakeClosed { .. } | TlsError::HandshakeTimeout { .. } => {
                    log::debug!("{error}")
                }
                _ => log::warn!("{error}"),
            }
        } else {
            log::debug!("{error}");
        }
        self.state = State::Failed(error.to_string());
        error.into_io()
    }

    fn failed(message: &str) -> io::Error {
        TlsError::Failed {
            detail: message.to_string(),
        }
        .into_io()
    }

    /// The handshake still to do: rustls's, and on the client the server's word that it
    /// accepted us.
    fn handshake_pending(&self) -> bool {
        self.conn.is_handshaking() || (!self.server && !self.check.accepted())
    }

    /// Runs the handshake to its end (or to an error; timeouts of the underlying stream
    /// are returned as they are, and the handshake goes on at the next call).
    fn handshake(&mut self) -> io::Result<()> {
        match &self.state {
            State::Open => return Ok(()),
            State::Failed(message) => return Err(Self::failed(message)),
            State::Handshaking => {}
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        loop {
            if let Err(e) = self.write_pending() {
                if matches!(self.state, State::Failed(_)) {
                    return Err(e);
                }
                if is_timeout(&e) {
                    return Err(e);
                }
                // The peer may have refused us and closed: what it sent says why.
                match self.read_more() {
                    Ok(n) if n > 0 => continue,
                    Err(e) if matches!(self.state, State::Failed(_)) => return Err(e),
                    _ => return Err(self.closed_during_handshake()),
                }
            }
            if !self.handshake_pending() {
                self.state = State::Open;
                return Ok(());
            }
            if started.elapsed() > self.handshake_timeout {
                return Err(self.fail(TlsError::HandshakeTimeout {
                    addr: self.addr.clone(),
                    limit: limit_words(self.handshake_timeout),
                }));
            }
            match self.read_more() {
                Ok(0) => return Err(self.closed_during_handshake()),
                Ok(_) => {}
                Err(e) if matches!(self.state, State::Failed(_)) => return Err(e),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Err(self.closed_during_handshake());
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn closed_during_handshake(&mut self) -> io::Error {
        let hint = if !self.server && !self.received_any {
            " before answering: does it speak TLS? (a server run with --insecure-plaintext?)"
        } else {
            ""
        };
        self.fail(TlsError::HandshakeClosed {
            addr: self.addr.clone(),
            hint,
        })
    }

    /// Feeds rustls more ciphertext (one socket read when none is buffered) and processes
    /// it. `Ok(0)` is the end of the stream.
    fn read_more(&mut self) -> io::Result<usize> {
        if self.rbuf.is_empty() {
            let n = loop {
                match self.rbuf.fill(&mut self.sock) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            if n == 0 {
                return Ok(0);
            }
        }
        if !self.received_any {
            self.received_any = true;
            let first = self.rbuf.first();
            if self.server && first != Some(HANDSHAKE_RECORD) {
                let _ = self.sock.write_all(&PLAINTEXT_ALERT);
                let _ = self.sock.flush();
                return Err(self.fail(TlsError::PlaintextClient {
                    addr: self.addr.clone(),
                }));
            }
            if !self.server && !matches!(first, Some(HANDSHAKE_RECORD | ALERT_RECORD)) {
                return Err(self.fail(TlsError::NotTls {
                    addr: self.addr.clone(),
                }));
            }
        }
        let n = match self.conn.read_tls(&mut self.rbuf) {
            Ok(n) => n,
            Err(e) => {
                return Err(self.fail(TlsError::Protocol {
                    addr: self.addr.clone(),
                    detail: e.to_string(),
                }));
            }
        };
        if let Err(e) = self.conn.process_new_packets() {
            // The alert rustls queued tells the peer why (best effort).
            let _ = self.conn.write_tls(&mut self.sock);
            let error = self.map_error(e);
            return Err(self.fail(error));
        }
        Ok(n.max(1))
    }

    /// Sends every pending TLS record.
    fn write_pending(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A rustls error in words naming the peer.
    fn map_error(&self, e: rustls::Error) -> TlsError {
        let addr = self.addr.clone();
        match e {
            rustls::Error::InvalidCertificate(_) => match self.check.refusal() {
                Some(refusal) => refusal.to_error(&addr),
                None => TlsError::BadPeerCertificate {
                    addr,
                    reason: e.to_string(),
                },
            },
            rustls::Error::NoCertificatesPresented if self.check.in_swarm() => {
                TlsError::NotMember {
                    addr,
                    reason: "it presented no certificate",
                }
            }
            rustls::Error::NoCertificatesPresented => TlsError::BadPeerCertificate {
                addr,
                reason: "it presented no certificate".into(),
            },
            rustls::Error::AlertReceived(alert) => alert_error(addr, alert),
            rustls::Error::DecryptError => TlsError::Protocol {
                addr,
                detail: "data was altered on the wire (bad record MAC)".into(),
            },
            other => TlsError::Protocol {
                addr,
                detail: other.to_string(),
            },
        }
    }
}

/// The alert a peer sent, in words.
fn alert_error(addr: PeerAddr, alert: AlertDescription) -> TlsError {
    let refused = |reason: &str| TlsError::RefusedUs {
        addr: addr.clone(),
        reason: reason.into(),
    };
    match alert {
        AlertDescription::UnknownCA => refused("this node is not a member of its swarm"),
        AlertDescription::CertificateRevoked => refused("this node is revoked"),
        AlertDescription::CertificateExpired => {
            refused("our member certificate has expired or is not valid yet (or a clock is wrong)")
        }
        AlertDescription::BadCertificate
        | AlertDescription::UnsupportedCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::DecryptError => refused("it found our certificate unusable"),
        AlertDescription::AccessDenied => refused("access denied"),
        AlertDescription::BadRecordMac => TlsError::Protocol {
            addr,
            detail: "it received altered data from us (bad record MAC)".into(),
        },
        AlertDescription::ProtocolVersion => TlsError::Protocol {
            addr,
            detail: "it does not speak TLS 1.3".into(),
        },
        AlertDescription::HandshakeFailure => TlsError::Protocol {
            addr,
            detail: "no TLS parameters in common".into(),
        },
        other => TlsError::Protocol {
            addr,
            detail: format!("it sent the TLS alert {other:?}"),
        },
    }
}

/// "10 s", or "100 ms" under a second.
fn limit_words(limit: Duration) -> String {
    if limit < Duration::from_secs(1) {
        format!("{} ms", limit.as_millis())
    } else {
        format!("{} s", limit.as_secs())
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl<S: Connection> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.handshake()?;
        // Whatever an earlier write left must leave before we wait for the answer.
        if let Err(e) = self.write_pending()
            && !matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            )
        {
            return Err(e);
        }
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed without a close_notify: an end of stream like any other.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            if self.read_more()? == 0 {
                self.eof = true;
                return Ok(0);
            }
            // A key update wants an answer (best effort; a real failure shows on writes).
            if self.conn.wants_write() {
                let _ = self.write_pending();
            }
        }
    }
}

impl<S: Connection> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.handshake()?;
        self.write_pending()?;
        let n = self.conn.writer().write(buf)?;
        // Sent now in one vectored write; a failure here shows at the next call (the
        // bytes were accepted, and stay queued).
        let _ = self.write_pending();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if let State::Failed(message) = &self.state {
            return Err(Self::failed(message));
        }
        self.write_pending()?;
        self.sock.flush()
    }
}

impl<S: Connection> Connection for TlsStream<S> {
    fn peer_addr(&self) -> io::Result<PeerAddr> {
        self.sock.peer_addr()
    }
    fn local_addr(&self) -> io::Result<PeerAddr> {
        self.sock.local_addr()
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.sock.set_write_timeout(timeout)
    }
    fn closer(&self) -> Option<Closer> {
        self.sock.closer()
    }
    /// The peer's verified key, once the handshake is done.
    fn peer_node(&self) -> Option<NodeId> {
        match self.state {
            State::Open => self.check.verified(),
            _ => None,
        }
    }
}
