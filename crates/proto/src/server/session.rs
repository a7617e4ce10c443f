//! One connection's life, the same for every shoal server: timeouts, the handshake, then
//! requests read one frame at a time and handed to the server's [`Handler`] until the
//! client leaves, idles out, sends something unreadable, or its place is taken by another
//! client (see [`LiveConnection`]).
//!
//! What the loop does, so no server writes it again:
//! - the read timeout is one frame budget ([`SessionConfig::frame_timeout`]) and a
//!   [`FrameDeadline`] bounds how long a frame (or the hello) may trickle in, so a client
//!   that connects and says nothing, or one byte a second, never pins a thread;
//! - quiet time between requests adds up against [`SessionConfig::idle_timeout`];
//! - a connection closed for another client while it idled ends at its next read;
//! - a frame too large or malformed is answered once with a `BadRequest` error (the
//!   framing may be out of step) and the connection closes.
//!
//! How it ends is returned as a [`SessionEnd`], plain data a server may count.

use std::io::{BufReader, Write};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::LiveConnection;
use crate::codec::{self, Service};
use crate::deadline::FrameDeadline;
use crate::message::{ErrorCode, ErrorReply};
use crate::{Connection, PeerAddr, ProtoError};

/// The stream a [`Handler`] answers on: writes go straight to the connection, and
/// [`FrameDeadline::get_ref`] reaches the connection itself (to change its write timeout,
/// say). Requests are read by the session loop alone.
pub type SessionStream<C> = FrameDeadline<C>;

/// How the sessions of one server are timed and bounded.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Which protocol the hello must name.
    pub service: Service,
    /// Log prefix ("index", "peer").
    pub label: &'static str,
    /// Largest request frame accepted, in bytes.
    pub request_limit: u32,
    /// A request (or the handshake) must arrive whole within this long of its first byte;
    /// also the longest silence in the middle of one.
    pub frame_timeout: Duration,
    /// How long a connection may sit quiet between requests; `None` waits forever.
    pub idle_timeout: Option<Duration>,
    /// A write that makes no progress this long fails (a client that stops reading).
    pub write_timeout: Option<Duration>,
    /// Read buffer for requests, in bytes.
    pub read_buffer: usize,
}

/// A server's answer to each request of one connection.
pub trait Handler<C: Connection> {
    /// What clients send.
    type Request: DeserializeOwned;
    /// What this server answers (for the refusals the loop sends itself).
    type Response: Serialize;

    /// The response carrying `reply`, for the refusals the loop sends itself.
    fn error_response(reply: ErrorReply) -> Self::Response;

    /// Answers one request, writing whatever the answer is to `stream`. An error ends the
    /// connection (the stream may be mid-frame); a refusal the client can act on is an
    /// answer, not an error.
    fn handle(
        &mut self,
        request: Self::Request,
        stream: &mut SessionStream<C>,
    ) -> Result<(), ProtoError>;
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The connection could not be set up (timeouts) or the handshake failed.
    Handshake(String),
    /// The client closed the connection between requests.
    Closed,
    /// Quiet longer than the idle timeout.
    Idle,
    /// Closed to make room for another client.
    Taken,
    /// A frame too large or malformed; the client was told.
    BadRequest(String),
    /// The stream failed, or a handler ended the connection.
    Failed(String),
}

/// Runs one connection to its end: timeouts, the handshake, then every request through
/// `handler` (see the module docs). `from` is the client's address, for logs.
pub fn serve_session<C: Connection, H: Handler<C>>(
    stream: C,
    from: &PeerAddr,
    live: &LiveConnection,
    config: &SessionConfig,
    handler: &mut H,
) -> SessionEnd {
    let label = config.label;
    let end = run(stream, from, live, config, handler);
    match &end {
        SessionEnd::BadRequest(e) => {
            log::warn!("{label}: bad request from {from}, closing the connection: {e}")
        }
        SessionEnd::Handshake(e) => log::debug!("{label}: handshake with {from} failed: {e}"),
        SessionEnd::Closed => log::debug!("{label}: {from} closed the connection"),
        SessionEnd::Idle => log::debug!("{label}: closing {from}: idle"),
        SessionEnd::Taken => {
            log::debug!("{label}: {from}'s connection was closed for another client")
        }
        SessionEnd::Failed(e) => log::debug!("{label}: connection from {from} ended: {e}"),
    }
    end
}

fn run<C: Connection, H: Handler<C>>(
    stream: C,
    from: &PeerAddr,
    live: &LiveConnection,
    config: &SessionConfig,
    handler: &mut H,
) -> SessionEnd {
    // Set before the handshake: a client that connects and says nothing must not pin a
    // thread. Reads wait at most one frame budget; quiet time between requests is added up
    // against the idle timeout below.
    let setup = stream
        .set_read_timeout(Some(config.frame_timeout))
        .and_then(|()| stream.set_write_timeout(config.write_timeout));
    if let Err(e) = setup {
        return SessionEnd::Handshake(format!("cannot set timeouts for {from}: {e}"));
    }
    let mut stream = FrameDeadline::new(stream, config.frame_timeout);
    // The hello is read straight from the stream (exactly 8 bytes), so nothing the client
    // pipelines after it is lost to the buffered reader below.
    if let Err(e) = codec::server_handshake(&mut stream, config.service) {
        return SessionEnd::Handshake(e.to_string());
    }
    stream.frame_done();
    let mut reader = BufReader::with_capacity(config.read_buffer, stream);
    let mut body = Vec::new();
    let mut quiet = Duration::ZERO;
    loop {
        let request = match codec::read_frame(&mut reader, config.request_limit, &mut body) {
            Ok(request) => request,
            Err(ProtoError::Idle) => {
                if live.is_taken() {
                    return SessionEnd::Taken;
                }
                quiet += config.frame_timeout;
                if config.idle_timeout.is_some_and(|idle| quiet >= idle) {
                    return SessionEnd::Idle;
                }
                continue;
            }
            Err(ProtoError::Closed) => return SessionEnd::Closed,
            Err(e @ (ProtoError::FrameTooLarge { .. } | ProtoError::Malformed(_))) => {
                // The framing may be out of step: answer once, then close.
                let reply =
                    H::error_response(ErrorReply::new(ErrorCode::BadRequest, e.to_string()));
                let _ = write_frame(reader.get_mut(), &mut Vec::new(), &reply);
                return SessionEnd::BadRequest(e.to_string());
            }
            Err(e) => return SessionEnd::Failed(e.to_string()),
        };
        if !live.busy() {
            return SessionEnd::Taken;
        }
        quiet = Duration::ZERO;
        reader.get_mut().frame_done();
        if let Err(e) = handler.handle(request, reader.get_mut()) {
            return SessionEnd::Failed(e.to_string());
        }
        live.idle();
    }
}

/// Encodes `response` into the reused buffer `out` and writes the frame with one
/// `write_all`.
pub fn write_frame<W: Write, R: Serialize>(
    w: &mut W,
    out: &mut Vec<u8>,
    response: &R,
) -> Result<(), ProtoError> {
    out.clear();
    codec::encode_frame(response, out)?;
    w.write_all(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::mem::MemNetwork;
    use crate::message::{IndexRequest, IndexResponse};
    use crate::server::{AcceptConfig, spawn_accept_loop};
    use crate::{FileKey, Transport};
    use crossbeam_channel::{Sender, unbounded};

    /// Answers every `Locate` with a refusal naming the key; ends on `Search`.
    struct Echo;

    impl<C: Connection> Handler<C> for Echo {
        type Request = IndexRequest;
        type Response = IndexResponse;

        fn error_response(reply: ErrorReply) -> IndexResponse {
            IndexResponse::Error(reply)
        }

        fn handle(
            &mut self,
            request: IndexRequest,
            stream: &mut SessionStream<C>,
        ) -> Result<(), ProtoError> {
            match request {
                IndexRequest::Locate { key } => {
                    let reply = ErrorReply::new(ErrorCode::NotFound, key.to_string());
                    write_frame(stream, &mut Vec::new(), &IndexResponse::Error(reply))
                }
                _ => Err(ProtoError::Malformed("the handler gave up".into())),
            }
        }
    }

    fn server(net: &MemNetwork, ends: Sender<SessionEnd>) -> crate::server::ServerHandle {
        let t = net.host("srv");
        let listener = t.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
        let config = SessionConfig {
            service: Service::Index,
            label: "test",
            request_limit: 64,
            frame_timeout: Duration::from_secs(5),
            idle_timeout: None,
            write_timeout: None,
            read_buffer: 256,
        };
        let accept = AcceptConfig::new(Service::Index, "test");
        spawn_accept_loop(&t, listener, accept, move |s, from, live| {
            let _ = ends.send(serve_session(s, &from, live, &config, &mut Echo));
        })
        .unwrap()
    }

    fn answer<C: Connection>(c: &mut C) -> IndexResponse {
        codec::read_frame(c, codec::DEFAULT_RESPONSE_LIMIT, &mut Vec::new()).unwrap()
    }

    #[test]
    fn requests_reach_the_handler_and_every_end_is_told() {
        let net = MemNetwork::new();
        let (tx, ends) = unbounded();
        let handle = server(&net, tx);
        let client = net.host("c");
        let timeout = Duration::from_secs(10);

        // Served, many requests on one connection, then a clean close.
        let mut c = client.connect(handle.addr()).unwrap();
        codec::client_handshake(&mut c, Service::Index).unwrap();
        for name in ["a", "b"] {
            let key = FileKey::Name(name.into());
            codec::write_frame(&mut c, &IndexRequest::Locate { key }).unwrap();
            match answer(&mut c) {
                IndexResponse::Error(reply) => assert_eq!(reply.message, name),
                other => panic!("{other:?}"),
            }
        }
        drop(c);
        assert_eq!(ends.recv_timeout(timeout).unwrap(), SessionEnd::Closed);

        // A frame over the limit is answered with BadRequest, then the connection closes.
        let mut c = client.connect(handle.addr()).unwrap();
        codec::client_handshake(&mut c, Service::Index).unwrap();
        c.write_all(&1000u32.to_be_bytes()).unwrap();
        match answer(&mut c) {
            IndexResponse::Error(reply) => assert_eq!(reply.code, ErrorCode::BadRequest),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ends.recv_timeout(timeout).unwrap(),
            SessionEnd::BadRequest(_)
        ));

        // A handler's error ends the connection.
        let mut c = client.connect(handle.addr()).unwrap();
        codec::client_handshake(&mut c, Service::Index).unwrap();
        let search = IndexRequest::Search {
            query: String::new(),
            limit: 1,
        };
        codec::write_frame(&mut c, &search).unwrap();
        match ends.recv_timeout(timeout).unwrap() {
            SessionEnd::Failed(e) => assert!(e.contains("gave up"), "{e}"),
            other => panic!("{other:?}"),
        }

        // Not a shoal client: the handshake fails and the handler never runs.
        let mut c = client.connect(handle.addr()).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(matches!(
            ends.recv_timeout(timeout).unwrap(),
            SessionEnd::Handshake(_)
        ));
    }
}
