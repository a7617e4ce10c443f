//! Writes seed inputs for every fuzz target into `fuzz/corpus/<target>/` (one valid encoding
//! per message variant, plus the examples of docs/PROTOCOL.md; for the durable store's
//! files, logs and snapshots of both format versions, whole and damaged). Run from `fuzz/`:
//! `cargo run --example seed_corpus`.

use std::fs;
use std::path::Path;

use serde::Serialize;
use shoal_proto::codec::{self, MAGIC, Service, VERSION};
use shoal_proto::content;
use shoal_proto::message::{
    ErrorCode, ErrorReply, HolderNode, IndexRequest, IndexResponse, Manifest, PeerRequest,
    PeerResponse, SearchHit,
};
use shoal_proto::{FileId, FileKey, FileMeta, NodeId, PeerAddr};

fn frame<M: Serialize>(m: &M) -> Vec<u8> {
    let mut buf = Vec::new();
    codec::encode_frame(m, &mut buf).expect("encode");
    buf
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join(name), bytes).expect("write");
}

fn hello(service: Service, last: u8) -> Vec<u8> {
    let v = VERSION.to_be_bytes();
    vec![
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

fn real_manifest(len: usize, chunk_size: u32) -> Manifest {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let size = len as u64;
    let (id, chunk_hashes) =
        content::hash_reader(&mut &bytes[..], size, chunk_size, &mut Vec::new()).expect("hash");
    Manifest {
        file: FileMeta {
            name: "f.bin".into(),
            size,
            chunk_size,
            id,
        },
        chunk_hashes,
    }
}

fn main() {
    // Certificates as a peer presents them: each alone, and the member with its authority
    // as an intermediate (length-prefixed, see the target's docs).
    let certs = shoal_proto::tls::fuzzing::sample_certificates();
    for (i, cert) in certs.iter().enumerate() {
        write("peer_certificate", &format!("cert-{i}"), cert);
    }
    if let [_, authority, member] = certs.as_slice() {
        let mut chain = u16::try_from(member.len()).expect("short").to_be_bytes().to_vec();
        chain.extend_from_slice(member);
        chain.extend_from_slice(authority);
        write("peer_certificate", "member-chain", &chain);
    }
    let addr = |s: &str| PeerAddr::new(s).expect("addr");
    let meta = FileMeta {
        name: "a.txt".into(),
        size: 300,
        chunk_size: 1 << 20,
        id: FileId([0xab; 32]),
    };
    let reply = ErrorReply::new(ErrorCode::NotFound, "x");

    let index_requests = [
        IndexRequest::Locate {
            key: FileKey::Name("a.txt".into()),
        },
        IndexRequest::Holders {
            key: FileKey::Id(FileId([7; 32])),
        },
        IndexRequest::Register {
            holder: addr("10.0.0.1:4000"),
            files: vec![meta.clone(), meta.clone()],
        },
        IndexRequest::Unregister {
            holder: addr("h:1"),
            ids: vec![FileId([1; 32])],
        },
        IndexRequest::Unregister {
            holder: addr("h:1"),
            ids: vec![],
        },
        IndexRequest::Search {
            query: "song".into(),
            limit: 100,
        },
        IndexRequest::Renew {
            holder: addr("h:1"),
        },
    ];
    let index_responses = [
        IndexResponse::Located {
            file: meta.clone(),
            holder: addr("h:1"),
            node: Some(NodeId::from_bytes([5; 32])),
        },
        IndexResponse::Holders {
            file: meta.clone(),
            holders: vec![addr("a:1"), addr("b:2")],
            nodes: vec![HolderNode {
                holder: addr("a:1"),
                node: NodeId::from_bytes([6; 32]),
            }],
        },
        IndexResponse::Registered { added: 1 },
        IndexResponse::Unregistered { removed: 70000 },
        IndexResponse::SearchResults {
            hits: vec![SearchHit {
                file: meta.clone(),
                holders: 3,
                downloading: 1,
                nodes: Vec::new(),
            }],
        },
        IndexResponse::Error(reply.clone()),
        IndexResponse::Renewed { files: 7 },
    ];
    let peer_requests = [
        PeerRequest::Manifest {
            key: FileKey::Name("a.txt".into()),
        },
        PeerRequest::Manifest {
            key: FileKey::Id(FileId([9; 32])),
        },
        PeerRequest::ReadChunks {
            id: FileId([9; 32]),
            chunk_size: 1 << 20,
            first: 0,
            count: 4,
        },
    ];
    let manifests = [
        real_manifest(0, 1024),
        real_manifest(100, 1024),
        real_manifest(5000, 1024),
        real_manifest(9000, 4096),
    ];
    let mut peer_responses: Vec<PeerResponse> = manifests
        .iter()
        .cloned()
        .map(PeerResponse::Manifest)
        .collect();
    peer_responses.push(PeerResponse::Chunk {
        index: 3,
        len: 1 << 20,
    });
    peer_responses.push(PeerResponse::Error(ErrorReply::new(
        ErrorCode::Busy,
        "at upload limit",
    )));

    let mut all_index = Vec::new();
    for (i, m) in index_requests.iter().enumerate() {
        write("index_request", &format!("seed-{i}"), &frame(m));
        all_index.extend(frame(m));
    }
    write("index_request", "seed-pipelined", &all_index);
    for (i, m) in index_responses.iter().enumerate() {
        write("index_response", &format!("seed-{i}"), &frame(m));
    }
    for (i, m) in peer_requests.iter().enumerate() {
        write("peer_request", &format!("seed-{i}"), &frame(m));
    }
    for (i, m) in peer_responses.iter().enumerate() {
        write("peer_response", &format!("seed-{i}"), &frame(m));
        // manifest target: bare bodies (decode_body), no length prefix.
        if let PeerResponse::Manifest(_) = m {
            write("manifest", &format!("seed-{i}"), &frame(m)[4..]);
        }
    }
    // Structured half of the manifest target: [shift, flip, content...].
    write("manifest", "content-small", b"\x00\x05hello");
    write(
        "manifest",
        "content-3chunks",
        &[&[0u8, 77][..], &[0x5a; 3000][..]].concat(),
    );

    // docs/PROTOCOL.md examples, byte for byte.
    write(
        "index_request",
        "doc-locate",
        b"\x00\x00\x00\x08\x00\x00\x05a.txt",
    );
    write("index_request", "doc-renew", b"\x00\x00\x00\x05\x05\x03h:1");
    write("index_response", "doc-renewed", b"\x00\x00\x00\x02\x06\x07");
    write(
        "index_response",
        "doc-error",
        b"\x00\x00\x00\x04\x05\x00\x01x",
    );

    for service in [Service::Index, Service::Peer] {
        let s = service as u8;
        for status in 0..=4 {
            write(
                "handshake",
                &format!("hello-{s}-{status}"),
                &hello(service, status),
            );
        }
    }
    write(
        "handshake",
        "index-then-locate",
        &[hello(Service::Index, 0), frame(&index_requests[0])].concat(),
    );
    write(
        "handshake",
        "peer-then-readchunks",
        &[hello(Service::Peer, 0), frame(&peer_requests[2])].concat(),
    );
    write("handshake", "http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    write("handshake", "old-version", b"SHOL\x00\x00\x01\x00");

    let values = [
        "a.txt",
        "song.ogg",
        "..",
        "a/b",
        "../etc/passwd",
        "x:1",
        "10.0.0.1:4000",
        "\u{e9}.bin",
    ];
    for (i, s) in values.iter().enumerate() {
        write("wire_values", &format!("v-{i}"), s.as_bytes());
    }
    write(
        "wire_values",
        "id-hex",
        FileId([0xab; 32]).to_hex().as_bytes(),
    );
    durable_seeds();
    eprintln!("seed corpora written under corpus/");
}

/// Logs and snapshots as the durable store writes them (after the target's mode byte: 0,
/// the file as it is), of both format versions, whole, torn and damaged; and inputs of the
/// structured modes.
fn durable_seeds() {
    use shoal_index::fuzzing::{self, FileKind};
    let pattern: Vec<u8> = (0..96u32).map(|i| (i * 37 % 251) as u8).collect();
    let records = fuzzing::records_from(&pattern);
    let log = fuzzing::encode_log(1, &records).expect("encode log");
    let as_file = |bytes: &[u8]| [&[0u8][..], bytes].concat();
    write("durable_log", "v2", &as_file(&log));
    let v1 = fuzzing::to_v1(FileKind::Log, &log).expect("v1 log");
    write("durable_log", "v1", &as_file(&v1));
    write(
        "durable_log",
        "v2-header-only",
        &as_file(&log[..fuzzing::HEADER_LEN as usize]),
    );
    write("durable_log", "v2-header-cut", &as_file(&log[..11]));
    write("durable_log", "v2-torn", &as_file(&log[..log.len() - 5]));
    let mut flipped = log.clone();
    flipped[log.len() / 2] ^= 0x10;
    write("durable_log", "v2-flipped", &as_file(&flipped));
    let mut zeroed = log.clone();
    zeroed[40..90].fill(0);
    write("durable_log", "v2-zeroed", &as_file(&zeroed));
    let mut garbage = log[..60].to_vec();
    garbage.extend_from_slice(&pattern);
    garbage.extend_from_slice(&log[60..]);
    write("durable_log", "v2-garbage-inside", &as_file(&garbage));
    let mut v1_torn = v1.clone();
    v1_torn.truncate(v1.len() - 3);
    write("durable_log", "v1-torn", &as_file(&v1_torn));
    write("durable_log", "http", b"\x00GET / HTTP/1.1\r\n\r\n");
    // Structured: a valid log of 4 records, garbage after it.
    write(
        "durable_log",
        "with-garbage",
        &[&[9u8][..], &pattern[..32], &pattern[40..]].concat(),
    );

    let registry = fuzzing::replay(&records);
    let snapshot = fuzzing::encode_snapshot(&registry, 1).expect("encode snapshot");
    write("durable_snapshot", "v2", &as_file(&snapshot));
    let v1 = fuzzing::to_v1(FileKind::Snapshot, &snapshot).expect("v1 snapshot");
    write("durable_snapshot", "v1", &as_file(&v1));
    let empty = fuzzing::encode_snapshot(&fuzzing::replay(&[]), 1).expect("encode snapshot");
    write("durable_snapshot", "v2-empty", &as_file(&empty));
    write(
        "durable_snapshot",
        "v2-cut",
        &as_file(&snapshot[..snapshot.len() - 9]),
    );
    let mut flipped = snapshot.clone();
    flipped[snapshot.len() / 2] ^= 1;
    write("durable_snapshot", "v2-flipped", &as_file(&flipped));
    // Structured: flip bit 77, cut 3 bytes, records from the pattern.
    write(
        "durable_snapshot",
        "structured",
        &[&[1u8, 77, 0, 0, 0, 3][..], &pattern].concat(),
    );
}
