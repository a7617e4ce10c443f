//! Inputs found by the `cargo fuzz` targets in `fuzz/` (see docs/SECURITY.md, "Fuzzing"),
//! replayed through every decoder in the normal test suite. None of them ever crashed a
//! decoder; they are the smallest corpus entries that reach each distinct outcome (every
//! message variant that decodes, and every kind of refusal), so a change that makes one of
//! these paths panic, hang or accept something it should not fails here, without a fuzzer.
//!
//! The oracles are the fuzz targets' own: nothing panics; whatever decodes re-encodes and
//! decodes back to an equal message; reading a frame in one piece and one byte at a time
//! gives the same result; the server side of the handshake answers only shoal clients.
#![allow(clippy::unwrap_used)]

use std::fmt::Debug;
use std::io::{self, Cursor, Read, Write};

use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::codec::{self, DEFAULT_REQUEST_LIMIT, DEFAULT_RESPONSE_LIMIT, Service};
use shoal_proto::content;
use shoal_proto::message::{IndexRequest, IndexResponse, Manifest, PeerRequest, PeerResponse};
use shoal_proto::{FileKey, PeerAddr, ProtoError, validate_name};

/// From `fuzz/corpus/handshake`: one input per distinct (server, client) x (index, peer)
/// verdict.
const HANDSHAKES: &[&[u8]] = &[
    b"\x04",
    b"SHOL\x00\x01\x02\x01",
    b"SHOL\x00\x01\x02\x00",
    b"SHOL\x00\x00\x01\x00",
    b"SHOL\x00\x01\x01\x01",
    b"SHOL\x00\x01\x01\x00",
    b"SHOL\x00\x01\x01\x00\x00\x00\x00\x05\x05\x03h:1",
    b"GET / HTTP/1.1\r\n\r\n",
];

/// From `fuzz/corpus/{index,peer}_{request,response}`: frames (length prefix + body), the
/// smallest entry per distinct `read_frame` outcome.
const FRAMES: &[&[u8]] = &[
    // Decode to a message (of at least one of the four types).
    b"\x00\x00\x00\x22\x01\x01\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07\x07",
    b"\x00\x00\x00\x03\x01\x00\x00",
    b"\x00\x00\x00\x03\x00\x00\x00",
    b"\x00\x00\x00\x08\x02\x01\x3b\xfc\x00\x00\x00\x00",
    b"\x00\x00\x00\x05\x05\x03\x68\x3a\x31",
    b"\x00\x00\x00\x03\x04\x00\x05",
    b"\x00\x00\x00\x06\x03\x03\x68\x3a\x31\x00",
    b"\x00\x00\x00\x03\x05\x00\x00",
    b"\x00\x00\x00\x02\x02\x01",
    b"\x00\x00\x00\x02\x06\x07",
    b"\x00\x00\x00\x02\x04\x00",
    b"\x00\x00\x00\x06\x03\xfc\x70\x11\x01\x00",
    b"\x00\x00\x00\x22\x00\x01\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09\x09",
    b"\x00\x00\x00\x03\x01\x03\x01",
    b"\x00\x00\x00\x03\x02\x00\x00",
    // Length prefix over the limit.
    b"\x00\x01\x0f\x47",
    b"\x01\xfb\x01\x01",
    b"\x01\x00\x00\x1b",
    // Truncated frame, truncated prefix.
    b"\x00\x00\x01\x0f",
    b"\x00\x00\x00\xff",
    b"\x00",
    // Trailing bytes after the message.
    b"\x00\x00\x00\x05\x05\x01\x68\x3a\x31",
    b"\x00\x00\x00\x03\x06\x00\x06",
    b"\x00\x00\x00\x08\x00\x00\x00\x05\x61\x2e\x74\x78",
    b"\x00\x00\x00\x07\x01\xc5\x07\xc5\x00\x00\x00",
    // Bad varints: reserved markers, markers for a wider type than the field.
    b"\x00\x00\x00\x02\xff\x00",
    b"\x00\x00\x00\x01\xfd",
    b"\x00\x00\x00\x06\x03\x03\x68\x3a\x30\xff",
    b"\x00\x00\x00\x06\x03\x03\x68\x3a\x31\xfe",
    b"\x00\x00\x00\x05\x04\xff\x00\x00\x00",
    // Lengths beyond the decode limit, unknown variants, invalid peer addresses.
    b"\x00\x00\x00\x06\x00\xfc\x70\x38\x01\x05",
    b"\x00\x00\x00\x08\x00\x00\xfc\xff\xff\xff\x00\x00",
    b"\x00\x00\x00\x01\x31",
    b"\x00\x00\x00\x01\x07",
    b"\x00\x00\x00\x02\x0a\x5d",
    // Empty body; body cut short.
    b"\x00\x00\x00\x00",
    b"\x00\x00\x00\x00\x00",
    // Invalid UTF-8 in strings.
    b"\x00\x00\x00\x07\x04\x03\xff\xff\xff\xff\x64",
    b"\x00\x00\x00\x08\x00\x00\x05\x72\x78\xff\xff\xff",
    b"\x00\x00\x00\x10\x04\x01\x05\x00\x01\x00\x00\xef\x02\x00\x00\x00\xf9\xff\x00\x00",
];

/// From `fuzz/corpus/manifest`: `PeerResponse` bodies (no length prefix). The first is the
/// smallest manifest that verifies (the empty file's).
const MANIFESTS: &[&[u8]] = &[
    b"\x00\x05\x66\x2e\x62\x69\x6e\x00\xfb\x00\x04\xaf\x13\x49\xb9\xf5\xf9\xa1\xa6\xa0\x40\x4d\xea\x36\xdc\xc9\x49\x9b\xcb\x25\xc9\xad\xc1\x12\xb7\xcc\x9a\x93\xca\xe4\x1f\x32\x62\x01\xaf\x13\x49\xb9\xf5\xf9\xa1\xa6\xa0\x40\x4d\xea\x36\xdc\xc9\x49\x9b\xcb\x25\xc9\xad\xc1\x12\xb7\xcc\x9a\x93\xca\xe4\x1f\x32\x62",
    b"\x00\x00\x00\x00\x0b\xff\xff\x05\x68\x6c\x6f",
    b"\x01\x00\x00\x9b",
    b"\x00\xfb\x97\x9a",
];

/// From `fuzz/corpus/wire_values`: names, keys and addresses.
const VALUES: &[&[u8]] = &[
    b"..",
    b"...",
    b"\\",
    b"/\x00\x00",
    b"\x1a..",
    b"a\x01/\x00\x00\x00\x007",
    b"\xc2\xa0",
    b"\xe2\x80\xae",
    b"x:1",
    b"+",
    b"10.0.0.1:4000",
];

/// A stream that reads at most `step` bytes per call and swallows writes.
struct Scripted<'a> {
    input: Cursor<&'a [u8]>,
    step: usize,
    output: Vec<u8>,
}

impl<'a> Scripted<'a> {
    fn new(input: &'a [u8], step: usize) -> Self {
        Scripted {
            input: Cursor::new(input),
            step,
            output: Vec::new(),
        }
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

fn round_trip<M: Serialize + DeserializeOwned + PartialEq + Debug>(msg: &M) {
    let mut frame = Vec::new();
    codec::encode_frame(msg, &mut frame).unwrap();
    let back: M = codec::decode_body(&frame[4..]).unwrap();
    assert_eq!(&back, msg);
}

/// Decodes `bytes` as a body and as a stream of frames (whole and byte by byte); returns how
/// many frames decoded.
fn frames<M: Serialize + DeserializeOwned + PartialEq + Debug>(bytes: &[u8], limit: u32) -> usize {
    if let Ok(msg) = codec::decode_body::<M>(bytes) {
        round_trip(&msg);
    }
    let mut whole = Scripted::new(bytes, usize::MAX);
    let mut trickle = Scripted::new(bytes, 1);
    let (mut a_buf, mut b_buf) = (Vec::new(), Vec::new());
    let mut decoded = 0;
    loop {
        let a = codec::read_frame::<_, M>(&mut whole, limit, &mut a_buf);
        let b = codec::read_frame::<_, M>(&mut trickle, limit, &mut b_buf);
        match (a, b) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b);
                round_trip(&a);
                decoded += 1;
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string());
                return decoded;
            }
            (a, b) => panic!("whole and piecewise reads disagree: {a:?} vs {b:?}"),
        }
    }
}

fn handshakes(bytes: &[u8]) {
    for service in [Service::Index, Service::Peer] {
        let mut server = Scripted::new(bytes, usize::MAX);
        let result = codec::server_handshake(&mut server, service);
        assert!(server.input.position() <= 8, "read past the hello");
        if matches!(result, Err(ProtoError::BadMagic(_) | ProtoError::Closed)) {
            assert!(server.output.is_empty(), "answered a non-shoal client");
        }
        if result.is_ok() {
            let rest = &bytes[8..];
            frames::<IndexRequest>(rest, DEFAULT_REQUEST_LIMIT);
            frames::<PeerRequest>(rest, DEFAULT_REQUEST_LIMIT);
        }
        let mut client = Scripted::new(bytes, 1);
        let _ = codec::client_handshake(&mut client, service);
        assert_eq!(client.output.len(), 8, "the client sends exactly its hello");
    }
}

fn manifest(m: &Manifest) {
    let own = content::verify_manifest(m, &m.file);
    let mut other = m.file.clone();
    other.id.0[0] ^= 1;
    assert!(content::verify_manifest(m, &other).is_err());
    other = m.file.clone();
    other.size = other.size.wrapping_add(1);
    assert!(content::verify_manifest(m, &other).is_err());
    if own.is_ok() {
        assert_eq!(
            content::root_from_chunk_hashes(&m.chunk_hashes),
            Some(m.file.id)
        );
    }
}

fn values(bytes: &[u8]) {
    let Ok(s) = std::str::from_utf8(bytes) else {
        return;
    };
    if validate_name(s).is_ok() {
        let mut parts = std::path::Path::new(s).components();
        assert!(matches!(
            parts.next(),
            Some(std::path::Component::Normal(_))
        ));
        assert!(
            parts.next().is_none(),
            "{s:?} is more than one path component"
        );
    }
    if let Ok(key) = FileKey::parse(s) {
        assert_eq!(FileKey::parse(&key.to_string()).unwrap(), key);
    }
    if let Ok(addr) = PeerAddr::new(s) {
        let _ = addr.host();
    }
}

/// Every input through every decoder: none panics, and the oracles hold.
fn every_decoder(bytes: &[u8]) {
    handshakes(bytes);
    for limit in [DEFAULT_REQUEST_LIMIT, DEFAULT_RESPONSE_LIMIT] {
        frames::<IndexRequest>(bytes, limit);
        frames::<IndexResponse>(bytes, limit);
        frames::<PeerRequest>(bytes, limit);
        frames::<PeerResponse>(bytes, limit);
    }
    if let Ok(PeerResponse::Manifest(m)) = codec::decode_body::<PeerResponse>(bytes) {
        manifest(&m);
    }
    if let Ok(m) = codec::decode_body::<Manifest>(bytes) {
        manifest(&m);
    }
    values(bytes);
}

#[test]
fn fuzz_corpus_entries_pass_every_decoder() {
    for input in [HANDSHAKES, FRAMES, MANIFESTS, VALUES].concat() {
        every_decoder(input);
    }
}

#[test]
fn fuzz_corpus_entries_decode_as_recorded() {
    // Messages the fuzzer reached, spot-checked.
    let renew: IndexRequest = codec::decode_body(&FRAMES[4][4..]).unwrap();
    assert_eq!(
        renew,
        IndexRequest::Renew {
            holder: PeerAddr::new("h:1").unwrap()
        }
    );
    // A length over the request limit is refused before any body byte is read.
    let mut scratch = Vec::new();
    let err = codec::read_frame::<_, IndexRequest>(
        &mut Cursor::new(FRAMES[15]),
        DEFAULT_REQUEST_LIMIT,
        &mut scratch,
    )
    .unwrap_err();
    assert!(matches!(err, ProtoError::FrameTooLarge { .. }), "{err}");
    assert_eq!(scratch.capacity(), 0);
    // Truncated frames are disconnects, bad bodies are malformed.
    let err = codec::read_frame::<_, IndexRequest>(
        &mut Cursor::new(FRAMES[18]),
        DEFAULT_REQUEST_LIMIT,
        &mut scratch,
    )
    .unwrap_err();
    assert!(err.is_disconnect(), "{err}");
    for malformed in [FRAMES[21], FRAMES[25], FRAMES[32], FRAMES[35], FRAMES[37]] {
        let err = codec::read_frame::<_, IndexRequest>(
            &mut Cursor::new(malformed),
            DEFAULT_REQUEST_LIMIT,
            &mut scratch,
        )
        .unwrap_err();
        assert!(matches!(err, ProtoError::Malformed(_)), "{err}");
    }
    // An HTTP request gets no answer.
    let mut http = Scripted::new(HANDSHAKES[7], usize::MAX);
    assert!(matches!(
        codec::server_handshake(&mut http, Service::Index),
        Err(ProtoError::BadMagic(_))
    ));
    assert!(http.output.is_empty());
    // The empty file's manifest verifies against itself; a flipped bit anywhere does not.
    let Ok(PeerResponse::Manifest(m)) = codec::decode_body::<PeerResponse>(MANIFESTS[0]) else {
        panic!("MANIFESTS[0] is a manifest");
    };
    content::verify_manifest(&m, &m.file).unwrap();
    for bit in [0, 7, 100, 255] {
        let mut bad = m.clone();
        bad.chunk_hashes[0][bit / 8] ^= 1 << (bit % 8);
        assert!(content::verify_manifest(&bad, &m.file).is_err());
    }
    // Names that could leave a folder never validate.
    for name in ["..", "...", "\\", "/\0\0", "\u{1a}.."] {
        assert!(validate_name(name).is_err(), "{name:?}");
    }
}

/// From `fuzz/artifacts/peer_certificate`: a member certificate whose validity time has a
/// multi-byte character where digits belong; the certificate reader sliced the text at a
/// byte offset inside it and panicked (in the TLS verifier, on a stranger's input).
const CERT_WITH_NON_ASCII_TIME: &[u8] = b"\x01\xb7\x30\x82\x01\xb3\x30\x82\x01\x65\xa0\x03\x02\x01\x02\x02\x10\x60\x0e\xd4\x1e\x5c\x2b\x0f\x13\xda\xe3\x82\x8b\x35\x68\x0f\x3b\x30\x05\x06\x03\x2b\x65\x70\x30\x2f\x31\x0d\x30\x0b\x06\x03\x55\x04\x03\x0c\x04\x66\x75\x7a\x7a\x31\x1e\x30\x1c\x06\x03\x55\x04\x0a\x0c\x15\x73\x68\x6f\x61\x6c\x20\x73\x77\x61\x72\x6d\x20\x61\x75\x74\x68\x6f\x72\x69\x74\x79\x30\x1e\x17\x0d\x32\x36\x31\x32\x30\xe3\x82\x8b\x35\x38\x31\x34\x5a\x17\x0d\x32\x36\x31\x32\x30\x32\x31\x36\x31\x33\x31\x34\x5a\x30\x68\x31\x49\x30\x47\x06\x03\x55\x04\x03\x0c\x40\x56\x44\x43\x54\x2d\x48\x4a\x49\x47\x2d\x4e\x36\x52\x36\x2d\x5a\x49\x44\x55\x2d\x34\x49\x56\x47\x2d\x46\x34\x4a\x4a\x2d\x41\x50\x4f\x4b\x2d\x58\x57\x36\x4a\x2d\x56\x44\x53\x55\x2d\x54\x53\x4f\x4d\x2d\x51\x44\x52\x4d\x2d\x32\x44\x53\x33\x2d\x34\x5a\x58\x41\x31\x1b\x30\x19\x06\x03\x55\x04\x0a\x0c\x12\x73\x68\x6f\x61\x6c\x20\x73\x77\x61\x72\x6d\x20\x6d\x65\x6d\x62\x65\x72\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00\xa8\xc5\x33\xa5\x06\x6f\xa3\xec\xa0\x74\xe2\x2a\x62\xf1\x29\x03\xdc\xab\xdb\xc9\xa8\xe5\x49\xc9\xcc\x80\xe2\xcd\x0e\x5e\xe6\x6e\xa3\x5e\x30\x5c\x30\x0e\x06\x03\x55\x1d\x0f\x01\x01\xff\x04\x04\x03\x02\x07\x80\x30\x1d\x06\x2c\x55\x1d\x25\x04\x16\x30\x14\x06\x08\x2b\x06\x01\x05\x05\x07\x03\x01\x06\x08\x2b\x06\x01\x05\x05\x07\x03\x02\x30\x1d\x06\x03\x55\x1d\x0e\x04\x16\x04\x14\x41\x34\xd8\xba\xb0\x3b\xeb\x54\x51\xbd\xc8\xe7\x04\x70\x1f\x80\xb2\xdf\x69\x0b\x30\x0c\x06\xf4\xaa\xe2\xec\xfe\xfe\x00\xfb\x02\x30\x00\x30\x05\x06\x03\x2b\x65\x70\x03\x41\x00\x95\x68\xa7\xa2\xe3\xce\x46\x7e\x1f\xbe\x58\x01\xbb\xcc\xb8\xda\x8e\x2d\x46\x05\xfd\x7a\x33\xcb\xa4\xd9\xec\x00\x13\x41\x51\xfd\x4d\x0d\x32\x36\x31\x32\x30\x32\xb3\x30\x03\x01\x65\x82\x02\xa0\x01\x02\x02\x10\x60\x0e\xd4\x1e\x5c\x2b\x0f\x13\xda\xe3\x82\x8b\x32\x7c\x8b\xcc\x68\x0f\x3b\x30";

#[test]
fn a_certificate_with_a_non_ascii_time_is_refused_not_panicked_on() {
    let verifiers = shoal_proto::tls::fuzzing::verifiers().unwrap();
    let input = CERT_WITH_NON_ASCII_TIME;
    let len = usize::from(u16::from_be_bytes([input[0], input[1]])).min(input.len() - 2);
    let (end_entity, intermediate) = input[2..].split_at(len);
    let (open, swarm) =
        shoal_proto::tls::fuzzing::peer_certificate(&verifiers, end_entity, Some(intermediate));
    assert_eq!((open, swarm), (None, None));
}
