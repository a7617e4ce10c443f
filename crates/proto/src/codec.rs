//! Handshake and framing: the only place that knows the wire encoding.
//!
//! A connection opens with an 8-byte hello from the client, `SHOL`, a big-endian u16 protocol
//! version, the [`Service`] byte and a zero byte; the server answers the same 8 bytes with a
//! status instead of the zero. Then each message is a frame: a big-endian u32 body length and
//! a bincode 2 body (standard config: little-endian, varint integers). The length is checked
//! against a limit before anything is read, the body buffer grows only as bytes arrive, and
//! the body is decoded from the buffer with a bincode byte limit. bincode stays inside this
//! module so it can be swapped.
//!
//! Over [`crate::tls`] all of this runs inside TLS, unchanged. A plaintext client that gets
//! a TLS record where the server's answer should be reports [`ProtoError::TlsServer`].

use std::io::{self, Read, Write};

use bincode::config::{Configuration, LittleEndian, Varint};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::ProtoError;

/// Handshake magic: the first four bytes of every shoal connection.
pub const MAGIC: [u8; 4] = *b"SHOL";
/// The protocol version this build speaks (4: index answers carry holders' node ids).
pub const VERSION: u16 = 4;
/// Hard ceiling on any frame body (16 MiB); [`read_frame`] callers pass a lower limit.
pub const MAX_FRAME_LEN: usize = 16 << 20;
/// Default limit for frames a server accepts from clients (64 KiB is plenty for a request).
pub const DEFAULT_REQUEST_LIMIT: u32 = 64 << 10;
/// Default limit for frames a client accepts from servers (manifests and search results).
pub const DEFAULT_RESPONSE_LIMIT: u32 = MAX_FRAME_LEN as u32;

const HELLO_LEN: usize = 8;
const STATUS_OK: u8 = 0;
const STATUS_BAD_VERSION: u8 = 1;
const STATUS_WRONG_SERVICE: u8 = 2;
const STATUS_BUSY: u8 = 3;

type Config = Configuration<LittleEndian, Varint, bincode::config::Limit<MAX_FRAME_LEN>>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Which of shoal's two protocols a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// peer/client <-> index server.
    Index = 1,
    /// peer <-> peer (manifests and chunks).
    Peer = 2,
}

impl Service {
    fn name(byte: u8) -> String {
        match byte {
            1 => "index".into(),
            2 => "peer".into(),
            other => format!("unknown ({other})"),
        }
    }
}

fn hello(service: Service, last: u8) -> [u8; HELLO_LEN] {
    let v = VERSION.to_be_bytes();
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        v[0],
        v[1],
        service as u8,
        last,
    ]
}

fn check_magic(buf: &[u8; HELLO_LEN]) -> Result<(), ProtoError> {
    let magic = [buf[0], buf[1], buf[2], buf[3]];
    if magic != MAGIC {
        return Err(ProtoError::BadMagic(magic));
    }
    Ok(())
}

fn read_hello<S: Read>(stream: &mut S) -> Result<[u8; HELLO_LEN], ProtoError> {
    let mut buf = [0u8; HELLO_LEN];
    stream.read_exact(&mut buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ProtoError::Closed
        } else {
            ProtoError::Io(e)
        }
    })?;
    Ok(buf)
}

/// Whether the first bytes of an answer are a TLS record (an alert or a handshake), as a
/// TLS server sends to a plaintext client.
fn looks_like_tls(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && matches!(bytes[0], 0x15 | 0x16) && bytes[1] == 0x03
}

/// Reads the server's 8-byte answer to our hello, recognizing a TLS server's answer even
/// when it is shorter (an alert is 7 bytes, then the server closes).
fn read_reply<S: Read>(stream: &mut S) -> Result<[u8; HELLO_LEN], ProtoError> {
    let mut buf = [0u8; HELLO_LEN];
    let mut got = 0;
    while got < HELLO_LEN {
        match stream.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if looks_like_tls(&buf[..got]) => return Err(ProtoError::TlsServer),
            Err(e) => return Err(ProtoError::Io(e)),
        }
    }
    if looks_like_tls(&buf[..got]) {
        return Err(ProtoError::TlsServer);
    }
    if got < HELLO_LEN {
        return Err(ProtoError::Closed);
    }
    Ok(buf)
}

/// Client side of the handshake: announce `service`, check the server's answer.
pub fn client_handshake<S: Read + Write>(
    stream: &mut S,
    service: Service,
) -> Result<(), ProtoError> {
    let sent = stream
        .write_all(&hello(service, 0))
        .and_then(|()| stream.flush());
    check_reply(stream, service, sent)
}

/// [`client_handshake`] with the first request sent in the same write as the hello, so a
/// fresh connection costs one round trip instead of two: afterwards read `first`'s response
/// frame as usual. A refusal (busy, version, service) is reported as by [`client_handshake`];
/// a refused request was not processed.
pub fn client_handshake_with<S: Read + Write, M: Serialize>(
    stream: &mut S,
    service: Service,
    first: &M,
) -> Result<(), ProtoError> {
    let mut frame = Vec::with_capacity(128);
    encode_frame(first, &mut frame)?;
    client_handshake_with_frame(stream, service, &frame)
}

/// [`client_handshake_with`] for a request already encoded by [`encode_frame`] (a client
/// that reuses its buffer, or retries the same request).
pub fn client_handshake_with_frame<S: Read + Write>(
    stream: &mut S,
    service: Service,
    frame: &[u8],
) -> Result<(), ProtoError> {
    let mut out = Vec::with_capacity(HELLO_LEN + frame.len());
    out.extend_from_slice(&hello(service, 0));
    out.extend_from_slice(frame);
    // One write: the hello and the request leave in one segment. The server reads exactly
    // the 8 hello bytes before answering, so the request waits in its socket buffer.
    let sent = stream.write_all(&out).and_then(|()| stream.flush());
    check_reply(stream, service, sent)
}

/// Reads and checks the server's answer to our hello.
fn check_reply<S: Read>(
    stream: &mut S,
    service: Service,
    sent: io::Result<()>,
) -> Result<(), ProtoError> {
    // A server at its limit may answer and close before reading our hello; its answer can
    // still be read after a failed write, and it says more than "broken pipe".
    let reply = match (read_reply(stream), sent) {
        (Ok(reply), _) => reply,
        (Err(_), Err(write_error)) => return Err(write_error.into()),
        (Err(read_error), Ok(())) => return Err(read_error),
    };
    check_magic(&reply)?;
    let theirs = u16::from_be_bytes([reply[4], reply[5]]);
    match reply[7] {
        STATUS_OK if reply[6] == service as u8 => Ok(()),
        STATUS_BUSY => Err(ProtoError::Busy),
        STATUS_BAD_VERSION => Err(ProtoError::VersionMismatch {
            ours: VERSION,
            theirs,
        }),
        _ => Err(ProtoError::WrongProtocol {
            expected: Service::name(service as u8),
            got: Service::name(reply[6]),
        }),
    }
}

/// Server side of the handshake: read the client's hello and accept or refuse it. A refusal
/// the client can understand (version, service) is answered before the error is returned; a
/// client with the wrong magic gets no answer.
pub fn server_handshake<S: Read + Write>(
    stream: &mut S,
    service: Service,
) -> Result<(), ProtoError> {
    let hello_in = read_hello(stream)?;
    check_magic(&hello_in)?;
    let theirs = u16::from_be_bytes([hello_in[4], hello_in[5]]);
    let (status, result) = if theirs != VERSION {
        (
            STATUS_BAD_VERSION,
            Err(ProtoError::VersionMismatch {
                ours: VERSION,
                theirs,
            }),
        )
    } else if hello_in[6] != service as u8 {
        (
            STATUS_WRONG_SERVICE,
            Err(ProtoError::WrongProtocol {
                expected: Service::name(service as u8),
                got: Service::name(hello_in[6]),
            }),
        )
    } else {
        (STATUS_OK, Ok(()))
    };
    stream.write_all(&hello(service, status))?;
    stream.flush()?;
    result
}

/// Tells a freshly accepted client that the server is at its connection limit. Sent without
/// reading the client's hello, so it costs the server nothing but one small write.
pub fn refuse_busy<S: Write>(stream: &mut S, service: Service) -> Result<(), ProtoError> {
    stream.write_all(&hello(service, STATUS_BUSY))?;
    stream.flush()?;
    Ok(())
}

/// Appends one frame (length prefix + body) for `msg` to `buf`.
pub fn encode_frame<M: Serialize>(msg: &M, buf: &mut Vec<u8>) -> Result<(), ProtoError> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    bincode::serde::encode_into_std_write(msg, buf, config())
        .map_err(|e| ProtoError::Malformed(format!("cannot encode: {e}")))?;
    let body_len = buf.len() - start - 4;
    let len = u32::try_from(body_len)
        .ok()
        .filter(|&l| l as usize <= MAX_FRAME_LEN)
        .ok_or(ProtoError::FrameTooLarge {
            len: body_len as u64,
            limit: MAX_FRAME_LEN as u64,
        })?;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Writes one frame with a single `write_all` (one syscall for small messages).
pub fn write_frame<W: Write, M: Serialize>(w: &mut W, msg: &M) -> Result<(), ProtoError> {
    let mut buf = Vec::with_capacity(128);
    encode_frame(msg, &mut buf)?;
    w.write_all(&buf)?;
    Ok(())
}

/// Reads one frame and decodes it. `limit` caps the body length; `buf` is scratch space
/// reused between calls. A clean end of stream before the first byte is [`ProtoError::Closed`].
pub fn read_frame<R: Read, M: DeserializeOwned>(
    r: &mut R,
    limit: u32,
    buf: &mut Vec<u8>,
) -> Result<M, ProtoError> {
    let mut len_bytes = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len_bytes[got..]) {
            Ok(0) if got == 0 => return Err(ProtoError::Closed),
            Err(e)
                if got == 0
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                return Err(ProtoError::Idle);
            }
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len_bytes);
    let limit = limit.min(MAX_FRAME_LEN as u32);
    if len > limit {
        return Err(ProtoError::FrameTooLarge {
            len: u64::from(len),
            limit: u64::from(limit),
        });
    }
    buf.clear();
    // `take` + `read_to_end` grows the buffer only as bytes really arrive: a peer that
    // announces 16 MiB and sends 10 bytes costs us 10 bytes, not 16 MiB.
    let read = r.take(u64::from(len)).read_to_end(buf)?;
    if read < len as usize {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame truncated: got {read} of {len} bytes"),
        )
        .into());
    }
    decode_body(buf)
}

/// Decodes one frame body; the whole body must be consumed.
pub fn decode_body<M: DeserializeOwned>(body: &[u8]) -> Result<M, ProtoError> {
    let (msg, used) = bincode::serde::decode_from_slice(body, config()).map_err(|e| {
        log::debug!("decoding a {}-byte body failed: {e:?}", body.len());
        ProtoError::Malformed(format!(
            "not a valid {} ({} bytes): {}",
            short_type_name::<M>(),
            body.len(),
            describe_decode_error(&e)
        ))
    })?;
    if used != body.len() {
        return Err(ProtoError::Malformed(format!(
            "{} trailing bytes after the message",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// `shoal_proto::message::IndexRequest` -> `IndexRequest`: what a person reading the error
/// knows the message by.
fn short_type_name<M>() -> &'static str {
    let full = std::any::type_name::<M>();
    full.rsplit("::").next().unwrap_or(full)
}

/// bincode 2 prints its errors with `Debug`; this says the same in words.
fn describe_decode_error(e: &bincode::error::DecodeError) -> String {
    use bincode::error::DecodeError as E;
    match e {
        E::UnexpectedEnd { additional } => {
            format!("it ends early ({additional} more bytes were needed)")
        }
        E::LimitExceeded => "it claims more data than the frame limit allows".into(),
        E::InvalidIntegerType { .. } | E::OutsideUsizeRange(_) => {
            "it holds an integer out of range".into()
        }
        E::NonZeroTypeIsZero { .. } => "it holds a zero where zero is not allowed".into(),
        E::UnexpectedVariant { found, .. } => format!("unknown variant tag {found}"),
        E::Utf8 { .. } | E::InvalidCharEncoding(_) => "it holds text that is not UTF-8".into(),
        E::InvalidBooleanValue(v) => format!("{v} is not a boolean"),
        E::ArrayLengthMismatch { required, found } => {
            format!("an array of {found} items where {required} are required")
        }
        E::OtherString(text) => text.clone(),
        E::Other(text) => (*text).to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{IndexRequest, IndexResponse};
    use crate::{FileKey, PeerAddr};
    use std::io::Cursor;

    #[test]
    fn lease_frames_are_the_documented_bytes() {
        let mut buf = Vec::new();
        encode_frame(&IndexRequest::Lease, &mut buf).unwrap();
        assert_eq!(buf, [0, 0, 0, 1, 10], "docs/PROTOCOL.md");
        buf.clear();
        encode_frame(&IndexResponse::Lease { lease_ms: 60_000 }, &mut buf).unwrap();
        assert_eq!(buf, [0, 0, 0, 4, 9, 0xfb, 0x60, 0xea], "docs/PROTOCOL.md");
    }

    #[test]
    fn frame_round_trip() {
        let msg = IndexRequest::Locate {
            key: FileKey::Name("a.txt".into()),
        };
        let mut buf = Vec::new();
        encode_frame(&msg, &mut buf).unwrap();
        let mut scratch = Vec::new();
        let back: IndexRequest =
            read_frame(&mut Cursor::new(&buf), DEFAULT_REQUEST_LIMIT, &mut scratch).unwrap();
        assert_eq!(back, msg);
    }

    #[test]
    fn oversized_prefix_is_refused_before_reading() {
        let mut data = u32::MAX.to_be_bytes().to_vec();
        data.extend_from_slice(&[0; 8]);
        let mut scratch = Vec::new();
        let err =
            read_frame::<_, IndexRequest>(&mut Cursor::new(data), 1024, &mut scratch).unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooLarge { .. }), "{err}");
        assert_eq!(scratch.capacity(), 0);
    }

    #[test]
    fn truncated_and_empty_streams() {
        let mut scratch = Vec::new();
        let err = read_frame::<_, IndexRequest>(&mut Cursor::new(vec![]), 1024, &mut scratch)
            .unwrap_err();
        assert!(matches!(err, ProtoError::Closed));
        let err = read_frame::<_, IndexRequest>(
            &mut Cursor::new(vec![0, 0, 0, 9, 1]),
            1024,
            &mut scratch,
        )
        .unwrap_err();
        assert!(err.is_disconnect(), "{err}");
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut buf = Vec::new();
        encode_frame(&IndexResponse::Registered { added: 1 }, &mut buf).unwrap();
        let body = [&buf[4..], &[0u8][..]].concat();
        assert!(matches!(
            decode_body::<IndexResponse>(&body),
            Err(ProtoError::Malformed(_))
        ));
    }

    /// A stream that replays a script of bytes to read and records what was written.
    struct Scripted {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }
    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.output.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn handshakes() {
        let mut server = Scripted {
            input: Cursor::new(hello(Service::Index, 0).to_vec()),
            output: vec![],
        };
        server_handshake(&mut server, Service::Index).unwrap();
        let mut client = Scripted {
            input: Cursor::new(server.output.clone()),
            output: vec![],
        };
        client_handshake(&mut client, Service::Index).unwrap();

        let mut wrong = Scripted {
            input: Cursor::new(hello(Service::Peer, 0).to_vec()),
            output: vec![],
        };
        assert!(matches!(
            server_handshake(&mut wrong, Service::Index),
            Err(ProtoError::WrongProtocol { .. })
        ));
        let mut client = Scripted {
            input: Cursor::new(wrong.output),
            output: vec![],
        };
        assert!(matches!(
            client_handshake(&mut client, Service::Peer),
            Err(ProtoError::WrongProtocol { .. })
        ));

        let mut http = Scripted {
            input: Cursor::new(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            output: vec![],
        };
        assert!(matches!(
            server_handshake(&mut http, Service::Index),
            Err(ProtoError::BadMagic(_))
        ));
        assert!(http.output.is_empty());

        let mut busy = Scripted {
            input: Cursor::new(vec![]),
            output: vec![],
        };
        refuse_busy(&mut busy, Service::Index).unwrap();
        let mut client = Scripted {
            input: Cursor::new(busy.output),
            output: vec![],
        };
        assert!(matches!(
            client_handshake(&mut client, Service::Index),
            Err(ProtoError::Busy)
        ));
        let _ = PeerAddr::new("x:1").unwrap();
    }

    #[test]
    fn a_tls_answer_is_named_not_called_a_closed_connection() {
        // What a TLS server sends a plaintext client: an alert record, then it closes.
        let alert = vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a];
        let mut client = Scripted {
            input: Cursor::new(alert),
            output: vec![],
        };
        let err = client_handshake(&mut client, Service::Index).unwrap_err();
        assert!(matches!(err, ProtoError::TlsServer), "{err}");
        assert!(err.to_string().contains("speaks TLS"), "{err}");
        // A short answer that is not TLS is still a closed connection.
        let mut client = Scripted {
            input: Cursor::new(b"SHO".to_vec()),
            output: vec![],
        };
        let err = client_handshake(&mut client, Service::Index).unwrap_err();
        assert!(matches!(err, ProtoError::Closed), "{err}");
    }

    #[test]
    fn hello_and_first_request_in_one_write() {
        let request = IndexRequest::Locate {
            key: FileKey::Name("a.txt".into()),
        };
        // The server's answer and the response, as the client will read them.
        let mut input = hello(Service::Index, STATUS_OK).to_vec();
        encode_frame(&IndexResponse::Registered { added: 1 }, &mut input).unwrap();
        let mut client = Scripted {
            input: Cursor::new(input),
            output: vec![],
        };
        client_handshake_with(&mut client, Service::Index, &request).unwrap();
        let mut scratch = Vec::new();
        let response: IndexResponse =
            read_frame(&mut client, DEFAULT_RESPONSE_LIMIT, &mut scratch).unwrap();
        assert_eq!(response, IndexResponse::Registered { added: 1 });

        // The server side reads exactly the hello, and the request follows intact.
        let mut server = Scripted {
            input: Cursor::new(client.output),
            output: vec![],
        };
        server_handshake(&mut server, Service::Index).unwrap();
        let back: IndexRequest =
            read_frame(&mut server, DEFAULT_REQUEST_LIMIT, &mut scratch).unwrap();
        assert_eq!(back, request);

        for (status, busy) in [(STATUS_BUSY, true), (STATUS_WRONG_SERVICE, false)] {
            let mut refused = Scripted {
                input: Cursor::new(hello(Service::Index, status).to_vec()),
                output: vec![],
            };
            let err = client_handshake_with(&mut refused, Service::Index, &request).unwrap_err();
            assert_eq!(matches!(err, ProtoError::Busy), busy, "{err}");
        }
    }

    #[test]
    fn decode_errors_read_as_sentences_not_debug_dumps() {
        // Variant tag 200 does not exist; a body cut short ends early.
        for (body, expect) in [
            (&[200u8][..], "not a valid IndexRequest (1 bytes)"),
            (&[][..], "ends early"),
        ] {
            let err = decode_body::<IndexRequest>(body).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(expect), "{text}");
            assert!(!text.contains('{'), "Debug dump leaked: {text}");
        }
    }
}
