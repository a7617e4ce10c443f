//! Property tests: every message survives a round trip through the codec, and arbitrary
//! bytes fed to any decoder produce an error or a message, never a panic.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::Cursor;

use proptest::prelude::*;
use shoal_proto::codec::{self, Service};
use shoal_proto::message::{
    ErrorCode, ErrorReply, HolderNode, IndexRequest, IndexResponse, Manifest, PeerRequest,
    PeerResponse, SearchHit,
};
use shoal_proto::{FileId, FileKey, FileMeta, NodeId, PeerAddr, ProtoError};

fn file_id() -> impl Strategy<Value = FileId> {
    any::<[u8; 32]>().prop_map(FileId)
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._-]{1,40}"
}

fn addr() -> impl Strategy<Value = PeerAddr> {
    ("[a-z0-9.]{1,20}", any::<u16>()).prop_map(|(h, p)| PeerAddr::new(format!("{h}:{p}")).unwrap())
}

fn meta() -> impl Strategy<Value = FileMeta> {
    (name(), any::<u64>(), any::<u32>(), file_id()).prop_map(|(name, size, chunk_size, id)| {
        FileMeta {
            name,
            size,
            chunk_size,
            id,
        }
    })
}

fn key() -> impl Strategy<Value = FileKey> {
    prop_oneof![
        name().prop_map(FileKey::Name),
        file_id().prop_map(FileKey::Id)
    ]
}

fn reply() -> impl Strategy<Value = ErrorReply> {
    (
        prop_oneof![
            Just(ErrorCode::NotFound),
            Just(ErrorCode::BadName),
            Just(ErrorCode::BadRequest),
            Just(ErrorCode::Busy),
            Just(ErrorCode::Internal)
        ],
        ".{0,60}",
    )
        .prop_map(|(code, message)| ErrorReply::new(code, message))
}

fn index_request() -> impl Strategy<Value = IndexRequest> {
    prop_oneof![
        key().prop_map(|key| IndexRequest::Locate { key }),
        key().prop_map(|key| IndexRequest::Holders { key }),
        (addr(), prop::collection::vec(meta(), 0..8))
            .prop_map(|(holder, files)| IndexRequest::Register { holder, files }),
        (addr(), prop::collection::vec(file_id(), 0..8))
            .prop_map(|(holder, ids)| IndexRequest::Unregister { holder, ids }),
        (".{0,30}", any::<u32>()).prop_map(|(query, limit)| IndexRequest::Search { query, limit }),
        addr().prop_map(|holder| IndexRequest::Renew { holder }),
    ]
}

fn node() -> impl Strategy<Value = NodeId> {
    any::<[u8; 32]>().prop_map(NodeId::from_bytes)
}

fn nodes() -> impl Strategy<Value = Vec<HolderNode>> {
    prop::collection::vec(
        (addr(), node()).prop_map(|(holder, node)| HolderNode { holder, node }),
        0..4,
    )
}

fn index_response() -> impl Strategy<Value = IndexResponse> {
    prop_oneof![
        (meta(), addr(), prop::option::of(node()))
            .prop_map(|(file, holder, node)| IndexResponse::Located { file, holder, node }),
        (meta(), prop::collection::vec(addr(), 0..8), nodes()).prop_map(
            |(file, holders, nodes)| IndexResponse::Holders {
                file,
                holders,
                nodes
            }
        ),
        (
            meta(),
            prop::collection::vec(addr(), 0..8),
            prop::collection::vec(addr(), 0..8),
            nodes()
        )
            .prop_map(|(file, complete, partial, nodes)| IndexResponse::Sources {
                file,
                complete,
                partial,
                nodes
            }),
        any::<u32>().prop_map(|added| IndexResponse::Registered { added }),
        any::<u32>().prop_map(|removed| IndexResponse::Unregistered { removed }),
        prop::collection::vec((meta(), any::<u32>(), nodes()), 0..8).prop_map(|hits| {
            IndexResponse::SearchResults {
                hits: hits
                    .into_iter()
                    .map(|(file, holders, nodes)| SearchHit {
                        file,
                        holders,
                        downloading: holders / 2,
                        nodes,
                    })
                    .collect(),
            }
        }),
        reply().prop_map(IndexResponse::Error),
        any::<u32>().prop_map(|files| IndexResponse::Renewed { files }),
    ]
}

fn peer_request() -> impl Strategy<Value = PeerRequest> {
    prop_oneof![
        key().prop_map(|key| PeerRequest::Manifest { key }),
        (file_id(), any::<u32>(), any::<u32>(), any::<u32>()).prop_map(
            |(id, chunk_size, first, count)| PeerRequest::ReadChunks {
                id,
                chunk_size,
                first,
                count
            }
        ),
    ]
}

fn peer_response() -> impl Strategy<Value = PeerResponse> {
    prop_oneof![
        (meta(), prop::collection::vec(any::<[u8; 32]>(), 0..16)).prop_map(
            |(file, chunk_hashes)| { PeerResponse::Manifest(Manifest { file, chunk_hashes }) }
        ),
        (any::<u32>(), any::<u32>()).prop_map(|(index, len)| PeerResponse::Chunk { index, len }),
        reply().prop_map(PeerResponse::Error),
    ]
}

fn round_trip<M>(msg: &M) -> M
where
    M: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut frame = Vec::new();
    codec::encode_frame(msg, &mut frame).unwrap();
    let mut scratch = Vec::new();
    codec::read_frame(
        &mut Cursor::new(frame),
        codec::DEFAULT_RESPONSE_LIMIT,
        &mut scratch,
    )
    .unwrap()
}

/// Feeds `bytes` to the frame decoder as `M`; any outcome but a panic is fine.
fn decode_garbage<M: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<M, ProtoError> {
    let mut scratch = Vec::new();
    codec::read_frame::<_, M>(&mut Cursor::new(bytes), 4096, &mut scratch)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn index_requests_round_trip(msg in index_request()) {
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn index_responses_round_trip(msg in index_response()) {
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn peer_requests_round_trip(msg in peer_request()) {
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn peer_responses_round_trip(msg in peer_response()) {
        prop_assert_eq!(round_trip(&msg), msg);
    }

    #[test]
    fn random_bytes_never_panic_any_decoder(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_garbage::<IndexRequest>(&bytes);
        let _ = decode_garbage::<IndexResponse>(&bytes);
        let _ = decode_garbage::<PeerRequest>(&bytes);
        let _ = decode_garbage::<PeerResponse>(&bytes);
        // With a valid length prefix, the body itself is garbage.
        let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let _ = decode_garbage::<IndexRequest>(&framed);
        let _ = decode_garbage::<IndexResponse>(&framed);
        let _ = decode_garbage::<PeerRequest>(&framed);
        let _ = decode_garbage::<PeerResponse>(&framed);
        let _ = codec::decode_body::<IndexRequest>(&bytes);
        let _ = codec::decode_body::<PeerResponse>(&bytes);
    }

    #[test]
    fn random_handshakes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..16)) {
        struct Pipe(Cursor<Vec<u8>>);
        impl std::io::Read for Pipe {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> { self.0.read(b) }
        }
        impl std::io::Write for Pipe {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> { Ok(b.len()) }
            fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
        }
        let _ = codec::server_handshake(&mut Pipe(Cursor::new(bytes.clone())), Service::Index);
        let _ = codec::client_handshake(&mut Pipe(Cursor::new(bytes)), Service::Peer);
    }
}

/// The heartbeat was appended to both enums, so every older variant keeps its number.
#[test]
fn renew_variants_are_appended_last() {
    let holder = PeerAddr::new("h:1").unwrap();
    let mut buf = Vec::new();
    codec::encode_frame(&IndexRequest::Renew { holder }, &mut buf).unwrap();
    assert_eq!(buf[4..], [5, 3, b'h', b':', b'1']);
    buf.clear();
    codec::encode_frame(&IndexResponse::Renewed { files: 7 }, &mut buf).unwrap();
    assert_eq!(buf, [0, 0, 0, 2, 6, 7]);
    buf.clear();
    let error = IndexResponse::Error(ErrorReply::new(ErrorCode::NotFound, "x"));
    codec::encode_frame(&error, &mut buf).unwrap();
    assert_eq!(buf, [0, 0, 0, 4, 5, 0, 1, b'x']);
}

/// The `Located` example of docs/PROTOCOL.md, byte for byte (version 4: with its node).
#[test]
fn the_protocol_docs_located_example_is_exact() {
    let located = IndexResponse::Located {
        file: FileMeta {
            name: "a.txt".into(),
            size: 300,
            chunk_size: 1 << 20,
            id: FileId([0xab; 32]),
        },
        holder: PeerAddr::new("h:1").unwrap(),
        node: None,
    };
    let mut buf = Vec::new();
    codec::encode_frame(&located, &mut buf).unwrap();
    let mut expected = vec![0, 0, 0, 0x34, 0x00, 5, b'a', b'.', b't', b'x', b't'];
    expected.extend([0xfb, 0x2c, 0x01, 0xfc, 0x00, 0x00, 0x10, 0x00]);
    expected.extend([0xab; 32]);
    expected.extend([3, b'h', b':', b'1', 0x00]);
    assert_eq!(buf, expected);
    // Some(node) is 01 and the key's 32 bytes.
    let IndexResponse::Located { file, holder, .. } = located else {
        unreachable!()
    };
    let with_node = IndexResponse::Located {
        file,
        holder,
        node: Some(NodeId::from_bytes([7; 32])),
    };
    let mut buf = Vec::new();
    codec::encode_frame(&with_node, &mut buf).unwrap();
    assert_eq!(buf.len(), 4 + 0x34 + 32);
    assert_eq!(
        &buf[buf.len() - 33..],
        &[[1u8].as_slice(), &[7; 32]].concat()[..]
    );
}
