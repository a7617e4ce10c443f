//! Shared oracles for shoal's fuzz targets (see `docs/SECURITY.md`, "Fuzzing").
//!
//! Every target feeds untrusted bytes to a decoder from `shoal-proto` and checks, beyond
//! "does not panic", a few properties that must hold for anything the decoder accepts.

pub mod disk;

use std::fmt::Debug;
use std::io::{self, Cursor, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::ProtoError;
use shoal_proto::codec;

/// A stream that reads from a script of bytes, at most `step` bytes per `read` call (to
/// exercise partial reads of the length prefix and body), and records what is written.
pub struct Scripted<'a> {
    input: Cursor<&'a [u8]>,
    step: usize,
    /// Everything written to the stream.
    pub output: Vec<u8>,
}

impl<'a> Scripted<'a> {
    /// Reads `input` in pieces of at most `step` bytes (`step` >= 1).
    pub fn new(input: &'a [u8], step: usize) -> Self {
        Scripted {
            input: Cursor::new(input),
            step: step.max(1),
            output: Vec::new(),
        }
    }

    /// How many input bytes have been consumed.
    pub fn consumed(&self) -> usize {
        self.input.position() as usize
    }
}

impl Read for Scripted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.step);
        self.input.read(&mut buf[..n])
    }
}

impl Write for Scripted<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Outcome of one decode, comparable across the two read paths.
fn summary<M: Debug>(r: &Result<M, ProtoError>) -> String {
    match r {
        Ok(m) => format!("ok {m:?}"),
        Err(e) => format!("err {}", kind(e)),
    }
}

fn kind(e: &ProtoError) -> &'static str {
    match e {
        ProtoError::Io(_) => "io",
        ProtoError::Closed => "closed",
        ProtoError::FrameTooLarge { .. } => "too-large",
        ProtoError::Malformed(_) => "malformed",
        _ => "other",
    }
}

/// The round-trip oracle: `msg` re-encodes into a frame that decodes back to an equal
/// message, and re-encoding is stable (encode . decode . encode == encode).
pub fn round_trip<M>(msg: &M)
where
    M: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut frame = Vec::new();
    codec::encode_frame(msg, &mut frame).expect("a decoded message must re-encode");
    assert!(frame.len() >= 4);
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - 4, "length prefix matches the body");
    let back: M = codec::decode_body(&frame[4..]).expect("a re-encoded body must decode");
    assert_eq!(&back, msg, "decode(encode(m)) == m");
    let mut scratch = Vec::new();
    let again: M = codec::read_frame(&mut Cursor::new(&frame), u32::MAX, &mut scratch)
        .expect("a re-encoded frame must read");
    assert_eq!(&again, msg);
    let mut frame2 = Vec::new();
    codec::encode_frame(&back, &mut frame2).expect("re-encode");
    assert_eq!(frame, frame2, "encoding is deterministic");
}

/// Feeds `data` to the decoders of message type `M`:
/// 1. the whole input as one body through `decode_body`;
/// 2. the input as a stream of frames through `read_frame` (as a connection would deliver
///    them), once in one piece and once one byte per `read`, which must agree frame by frame;
///    every accepted frame's body must also decode alone through `decode_body` to the same
///    message.
///
/// Every accepted message goes through [`round_trip`].
pub fn frames<M>(data: &[u8], limit: u32)
where
    M: Serialize + DeserializeOwned + PartialEq + Debug,
{
    if let Ok(msg) = codec::decode_body::<M>(data) {
        round_trip(&msg);
    }

    let mut whole = Scripted::new(data, usize::MAX);
    let mut trickle = Scripted::new(data, 1);
    let (mut buf_a, mut buf_b) = (Vec::new(), Vec::new());
    // A frame is at least 5 bytes (prefix + a 1-byte body), so this bounds the loop.
    for _ in 0..=data.len() / 4 + 1 {
        let start = whole.consumed();
        let a = codec::read_frame::<_, M>(&mut whole, limit, &mut buf_a);
        let b = codec::read_frame::<_, M>(&mut trickle, limit, &mut buf_b);
        assert_eq!(
            summary(&a),
            summary(&b),
            "piecewise reads change the result"
        );
        let Ok(msg) = a else { break };
        assert_eq!(whole.consumed(), trickle.consumed());
        let body = &data[start + 4..whole.consumed()];
        assert!(
            body.len() <= limit as usize,
            "a frame over the limit was accepted"
        );
        assert_eq!(
            body,
            &buf_a[..],
            "read_frame decoded exactly the announced body"
        );
        let alone: M = codec::decode_body(body).expect("the same body decodes alone");
        assert_eq!(alone, msg);
        round_trip(&msg);
    }
}

/// Limit a server applies to request frames.
pub const REQUEST_LIMIT: u32 = codec::DEFAULT_REQUEST_LIMIT;
/// Limit a client applies to response frames.
pub const RESPONSE_LIMIT: u32 = codec::DEFAULT_RESPONSE_LIMIT;
