//! Whole transfers over the in-memory network: an index, peers serving tempdir folders, and
//! downloaders, with faults injected at the holders. Each test checks what a user would:
//! the bytes, the folder's contents, the index's listing, the error message.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use shoal_index::{IndexClient, IndexServer, IndexServerConfig, MemoryStore};
use shoal_peer::{
    DownloadOutcome, DownloadReport, Downloader, DownloaderConfig, Library, PeerError, PeerServer,
    PeerServerConfig, ServerHandle,
};
use shoal_proto::codec::{self, Service};
use shoal_proto::mem::{MemNetwork, MemStream, MemTransport};
use shoal_proto::message::{ErrorCode, Manifest, PeerRequest, PeerResponse};
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr, Transport, content};
use tempfile::TempDir;

const CHUNK: u32 = 16384;
const SIZE: usize = 300_000; // 19 chunks of 16 KiB, the last one short

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7919 + i / 251) as u8) ^ seed)
        .collect()
}

fn key(name: &str) -> FileKey {
    FileKey::Name(name.into())
}

fn addr(s: &str) -> PeerAddr {
    PeerAddr::new(s).unwrap()
}

struct World {
    net: MemNetwork,
    index: ServerHandle,
    tmp: TempDir,
}

impl World {
    fn new() -> World {
        let net = MemNetwork::new();
        let index = IndexServer::new(
            net.host("index"),
            MemoryStore::with_seed(1),
            // These tests register holders on other peers' behalf (a stale or planted
            // listing); the index must take announced hosts at their word for that.
            IndexServerConfig {
                trust_announced_host: true,
                ..IndexServerConfig::default()
            },
        )
        .spawn(&addr("index:0"))
        .unwrap();
        World {
            net,
            index,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn index_addrs(&self) -> Vec<PeerAddr> {
        vec![self.index.addr().clone()]
    }

    fn index_client(&self) -> IndexClient<MemTransport> {
        IndexClient::new(self.net.host("inspector"), self.index_addrs())
    }

    fn folder(&self, name: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A peer called `host` sharing `files`, registered with the index.
    fn peer(&self, host: &str, files: &[(&str, &[u8])]) -> Peer {
        let dir = self.folder(host);
        for (name, bytes) in files {
            fs::write(dir.join(name), bytes).unwrap();
        }
        let library = Library::open(&dir, CHUNK).unwrap();
        let server = PeerServer::new(
            self.net.host(host),
            library.clone(),
            PeerServerConfig::default(),
        )
        .spawn(&addr(&format!("{host}:0")))
        .unwrap();
        let addr = server.addr().clone();
        self.index_client()
            .register(&addr, &library.files())
            .unwrap();
        Peer {
            library,
            addr,
            dir,
            _server: server,
        }
    }

    fn downloader(&self, host: &str, dir: &Path, seed: u64) -> Downloader<MemTransport> {
        Downloader::new(
            self.net.host(host),
            self.index_addrs(),
            dir,
            DownloaderConfig {
                seed: Some(seed),
                ..DownloaderConfig::default()
            },
        )
    }
}

struct Peer {
    library: Library,
    addr: PeerAddr,
    dir: PathBuf,
    _server: ServerHandle,
}

impl Peer {
    fn downloader(&self, world: &World, seed: u64) -> Downloader<MemTransport> {
        Downloader::for_peer(
            world.net.host(self.addr.host()),
            world.index_addrs(),
            self.library.clone(),
            self.addr.clone(),
            DownloaderConfig {
                seed: Some(seed),
                ..DownloaderConfig::default()
            },
        )
    }

    fn meta(&self, name: &str) -> FileMeta {
        self.library.get(&key(name)).unwrap().meta
    }
}

/// Servers are stopped by a connection to themselves, which a `refuse` fault would block.
fn heal(world: &World, peers: &[&Peer]) {
    for peer in peers {
        world.net.heal(&peer.addr);
    }
}

fn downloaded(outcome: DownloadOutcome) -> DownloadReport {
    match outcome {
        DownloadOutcome::Downloaded(report) => report,
        other => panic!("expected a download, got {other:?}"),
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// A raw peer-protocol client, to see exactly what the server sends.
fn raw_client(world: &World, to: &PeerAddr) -> MemStream {
    let mut stream = world.net.host("raw").connect(to).unwrap();
    codec::client_handshake(&mut stream, Service::Peer).unwrap();
    stream
}

fn ask(stream: &mut MemStream, request: &PeerRequest) -> PeerResponse {
    codec::write_frame(stream, request).unwrap();
    codec::read_frame(stream, codec::DEFAULT_RESPONSE_LIMIT, &mut Vec::new()).unwrap()
}

fn refusal(response: PeerResponse) -> ErrorCode {
    match response {
        PeerResponse::Error(reply) => reply.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn server_serves_manifests_and_chunks_and_refuses_bad_requests() {
    let world = World::new();
    let bytes = data(SIZE, 1);
    fs::write(world.tmp.path().join("passwd"), b"secret").unwrap();
    let alice = world.peer("alice", &[("a.bin", &bytes), (".hidden", b"h")]);
    let meta = alice.meta("a.bin");
    let mut s = raw_client(&world, &alice.addr);

    let PeerResponse::Manifest(manifest) =
        ask(&mut s, &PeerRequest::Manifest { key: key("a.bin") })
    else {
        panic!("no manifest");
    };
    content::verify_manifest(&manifest, &meta).unwrap();
    assert_eq!(manifest.chunk_hashes.len(), 19);

    // The whole file in one request, then a range from the middle.
    let mut got = Vec::new();
    for (first, count) in [(0u32, 19u32), (5, 3)] {
        codec::write_frame(
            &mut s,
            &PeerRequest::ReadChunks {
                id: meta.id,
                chunk_size: CHUNK,
                first,
                count,
            },
        )
        .unwrap();
        got.clear();
        for index in first..first + count {
            let header: PeerResponse = codec::read_frame(&mut s, 1024, &mut Vec::new()).unwrap();
            let len = content::chunk_len(meta.size, CHUNK, index).unwrap();
            assert_eq!(header, PeerResponse::Chunk { index, len });
            let mut body = vec![0; len as usize];
            s.read_exact(&mut body).unwrap();
            got.extend_from_slice(&body);
        }
        let start = first as usize * CHUNK as usize;
        assert_eq!(got, bytes[start..start + got.len()]);
    }

    // Refusals leave the connection usable.
    let manifest_of = |name: &str| PeerRequest::Manifest { key: key(name) };
    assert_eq!(
        refusal(ask(&mut s, &manifest_of("../passwd"))),
        ErrorCode::BadName
    );
    assert_eq!(
        refusal(ask(&mut s, &manifest_of("../etc/passwd"))),
        ErrorCode::BadName
    );
    assert_eq!(
        refusal(ask(&mut s, &manifest_of("nope.bin"))),
        ErrorCode::NotFound
    );
    assert_eq!(
        refusal(ask(&mut s, &manifest_of(".hidden"))),
        ErrorCode::NotFound
    );
    let past_end = PeerRequest::ReadChunks {
        id: meta.id,
        chunk_size: CHUNK,
        first: 18,
        count: 2,
    };
    assert_eq!(refusal(ask(&mut s, &past_end)), ErrorCode::BadRequest);
    let unknown = PeerRequest::ReadChunks {
        id: FileId([9; 32]),
        chunk_size: CHUNK,
        first: 0,
        count: 1,
    };
    let PeerResponse::Error(reply) = ask(&mut s, &unknown) else {
        panic!("served an unknown id");
    };
    assert_eq!(reply.code, ErrorCode::NotFound);
    assert!(reply.message.contains("no file"), "{}", reply.message);
    let by_id = PeerRequest::Manifest {
        key: FileKey::Id(meta.id),
    };
    assert!(matches!(ask(&mut s, &by_id), PeerResponse::Manifest(m) if m == manifest));
}

#[test]
fn server_stops_an_answer_when_the_file_shrinks() {
    let world = World::new();
    let alice = world.peer("alice", &[("a.bin", &data(SIZE, 2))]);
    let meta = alice.meta("a.bin");
    fs::write(alice.dir.join("a.bin"), b"short now").unwrap();
    let mut s = raw_client(&world, &alice.addr);
    let request = PeerRequest::ReadChunks {
        id: meta.id,
        chunk_size: CHUNK,
        first: 0,
        count: 19,
    };
    assert_eq!(refusal(ask(&mut s, &request)), ErrorCode::Internal);
}

#[test]
fn download_verifies_places_records_and_registers_the_file() {
    let world = World::new();
    let bytes = data(SIZE, 3);
    let alice = world.peer("alice", &[("a.bin", &bytes), ("empty", b"")]);
    let bob = world.peer("bob", &[]);
    let mut downloader = bob.downloader(&world, 7);

    let report = downloaded(downloader.fetch(&key("a.bin")).unwrap());
    assert_eq!(report.from, alice.addr);
    assert_eq!(report.path, Some(bob.dir.join("a.bin")));
    assert_eq!(report.bytes, SIZE as u64);
    assert_eq!(report.file, alice.meta("a.bin"));
    assert!(report.registered);
    assert_eq!(fs::read(report.path.as_ref().unwrap()).unwrap(), bytes);
    assert_eq!(listing(&bob.dir), ["a.bin"]);

    // Bob's library serves it and the index lists Bob as a holder.
    assert_eq!(bob.meta("a.bin"), report.file);
    let (_, holders) = world.index_client().holders(&key("a.bin")).unwrap();
    assert_eq!(holders.len(), 2);
    assert!(holders.contains(&bob.addr));

    // By id, and an empty file (one empty chunk).
    let empty_id = alice.meta("empty").id;
    let report = downloaded(downloader.fetch(&FileKey::Id(empty_id)).unwrap());
    assert_eq!(report.file.name, "empty");
    assert_eq!(fs::read(report.path.as_ref().unwrap()).unwrap(), b"");
    assert_eq!(listing(&bob.dir), ["a.bin", "empty"]);

    // Carol can now get it from Bob alone.
    world.net.refuse(&alice.addr);
    let carol_dir = world.folder("carol");
    let mut carol = world.downloader("carol", &carol_dir, 1);
    let report = downloaded(carol.fetch(&key("a.bin")).unwrap());
    assert_eq!(report.from, bob.addr);
    assert!(!report.registered);
    assert_eq!(fs::read(report.path.as_ref().unwrap()).unwrap(), bytes);
    heal(&world, &[&alice]);
}

#[test]
fn a_cut_connection_leaves_no_file_behind() {
    let world = World::new();
    let alice = world.peer("alice", &[("a.bin", &data(SIZE, 4))]);
    world.net.cut_after(&alice.addr, 100_000);
    let out = world.folder("out");
    let err = world
        .downloader("bob", &out, 1)
        .fetch(&key("a.bin"))
        .unwrap_err();
    match &err {
        PeerError::Incomplete {
            name,
            missing_bytes,
            size,
            failures,
            ..
        } => {
            assert_eq!(name, "a.bin");
            assert!(
                *missing_bytes > 0 && *missing_bytes < SIZE as u64,
                "{missing_bytes}"
            );
            assert_eq!(*size, SIZE as u64);
            assert_eq!(failures.len(), 1);
            assert_eq!(failures[0].holder, alice.addr);
            assert!(
                failures[0]
                    .dropped
                    .as_ref()
                    .unwrap()
                    .to_string()
                    .contains("stopped sending")
            );
        }
        other => panic!("expected an incomplete download, got {other}"),
    }
    assert!(
        err.to_string()
            .contains("run the same download again to resume"),
        "{err}"
    );
    // No final file; the verified part waits, hidden, for a resume.
    assert_eq!(
        listing(&out),
        [".a.bin.shoal-part", ".a.bin.shoal-part.state"]
    );
}

/// Offset, in the bytes a holder sends on the chunk connection of a download (the manifest
/// comes on its own connection), of the first body byte of chunk `chunk`.
fn body_offset(manifest: Manifest, chunk: u32) -> u64 {
    let meta = manifest.file.clone();
    let mut buf = Vec::new();
    let mut offset = 8; // handshake answer
    for index in 0..=chunk {
        let len = content::chunk_len(meta.size, meta.chunk_size, index).unwrap();
        buf.clear();
        codec::encode_frame(&PeerResponse::Chunk { index, len }, &mut buf).unwrap();
        offset += buf.len() as u64;
        if index < chunk {
            offset += u64::from(len);
        }
    }
    offset
}

#[test]
fn a_corrupt_chunk_is_caught_and_blamed_on_its_holder() {
    let world = World::new();
    let alice = world.peer("alice", &[("a.bin", &data(SIZE, 5))]);
    let shared = alice.library.get(&key("a.bin")).unwrap();
    let manifest = Manifest {
        file: shared.meta.clone(),
        chunk_hashes: shared.chunk_hashes.to_vec(),
    };
    world
        .net
        .corrupt_at(&alice.addr, body_offset(manifest, 3) + 100);
    let out = world.folder("out");
    let err = world
        .downloader("bob", &out, 1)
        .fetch(&key("a.bin"))
        .unwrap_err();
    assert_eq!(err.corrupt_holders(), [&alice.addr]);
    let PeerError::Incomplete { failures, .. } = &err else {
        panic!("expected an incomplete download, got {err}");
    };
    assert_eq!(failures[0].corrupt_chunk, Some(3));
    assert!(
        err.to_string().contains(&format!(
            "{} sent chunk 3 that failed verification",
            alice.addr
        )),
        "{err}"
    );
    // Nothing unverified reached a final name.
    assert!(!out.join("a.bin").exists());
}

#[test]
fn unknown_and_hostile_names_are_refused() {
    let world = World::new();
    let _alice = world.peer("alice", &[("a.bin", &data(1000, 6))]);
    let out = world.folder("out");
    let mut downloader = world.downloader("bob", &out, 1);

    let err = downloader.fetch(&key("missing.bin")).unwrap_err();
    assert!(
        matches!(&err, PeerError::NotFound { key } if key == "missing.bin"),
        "{err}"
    );
    assert_eq!(err.to_string(), "no peer holds missing.bin");

    for hostile in ["../a.bin", "../../escape", "a/../../b", ".a.bin.shoal-part"] {
        let err = downloader.fetch(&key(hostile)).unwrap_err();
        assert!(matches!(err, PeerError::BadName(_)), "{hostile}: {err}");
    }
    assert!(listing(&out).is_empty());
    assert_eq!(listing(world.tmp.path()), ["alice", "out"]);
}

#[test]
fn a_file_already_present_is_not_fetched_and_no_holder_is_asked() {
    let world = World::new();
    let bytes = data(50_000, 7);
    let alice = world.peer("alice", &[("a.bin", &bytes)]);
    let before = world.net.stats(world.index.addr()).connections;

    // A plain folder: the file on disk is hashed to report its id.
    let out = world.folder("out");
    fs::write(out.join("a.bin"), &bytes).unwrap();
    let outcome = world
        .downloader("bob", &out, 1)
        .fetch(&key("a.bin"))
        .unwrap();
    assert!(
        matches!(&outcome, DownloadOutcome::AlreadyPresent(m) if m.id == alice.meta("a.bin").id)
    );

    // A peer's library, by name and by id.
    let mut own = alice.downloader(&world, 1);
    assert!(matches!(
        own.fetch(&key("a.bin")).unwrap(),
        DownloadOutcome::AlreadyPresent(_)
    ));
    let by_id = FileKey::Id(alice.meta("a.bin").id);
    assert!(matches!(
        own.fetch(&by_id).unwrap(),
        DownloadOutcome::AlreadyPresent(_)
    ));

    // The index is asked which content the name stands for (by id: not at all); no holder
    // is contacted.
    assert!(world.net.stats(world.index.addr()).connections <= before + 2);
    assert_eq!(world.net.stats(&alice.addr).connections, 0);
}

#[test]
fn a_different_file_under_the_same_name_is_never_overwritten() {
    let world = World::new();
    let alice = world.peer("alice", &[("a.bin", &data(40_000, 8))]);
    let out = world.folder("out");
    fs::write(out.join("a.bin"), b"my own a.bin").unwrap();
    let err = world
        .downloader("bob", &out, 1)
        .fetch(&FileKey::Id(alice.meta("a.bin").id))
        .unwrap_err();
    assert!(matches!(err, PeerError::AlreadyExists { .. }), "{err}");
    assert_eq!(fs::read(out.join("a.bin")).unwrap(), b"my own a.bin");
    assert_eq!(listing(&out), ["a.bin"]);
}

#[test]
fn refusing_holders_are_skipped_for_the_next_one() {
    let world = World::new();
    let bytes = data(SIZE, 9);
    let refuses = world.peer("refuses", &[("a.bin", &bytes)]);
    let lacks = world.peer("lacks", &[]);
    let good = world.peer("good", &[("a.bin", &bytes)]);
    world.net.refuse(&refuses.addr);
    // `lacks` claims the file but does not have it: it answers "not found".
    world
        .index_client()
        .register(&lacks.addr, &[good.meta("a.bin")])
        .unwrap();

    for seed in 0..8 {
        let out = world.folder(&format!("out{seed}"));
        let report = downloaded(
            world
                .downloader("bob", &out, seed)
                .fetch(&key("a.bin"))
                .unwrap(),
        );
        assert_eq!(report.from, good.addr);
        assert_eq!(fs::read(report.path.as_ref().unwrap()).unwrap(), bytes);
        assert_eq!(listing(&out), ["a.bin"]);
    }
    // With these seeds each bad holder came first at least once.
    assert!(world.net.stats(&refuses.addr).connections > 0);
    assert!(world.net.stats(&lacks.addr).connections > 0);

    world.net.refuse(&good.addr);
    let out = world.folder("none");
    let err = world
        .downloader("bob", &out, 1)
        .fetch(&key("a.bin"))
        .unwrap_err();
    assert!(
        matches!(&err, PeerError::NoReachableHolder { name, tried: 3, .. } if name == "a.bin"),
        "{err}"
    );
    assert!(listing(&out).is_empty());
    heal(&world, &[&refuses, &good]);
}

#[test]
fn a_manifest_that_does_not_match_the_index_is_refused() {
    let world = World::new();
    let alice = world.peer("alice", &[("a.bin", &data(20_000, 10))]);
    world.index_client().unregister(&alice.addr, &[]).unwrap();
    let mut lie = alice.meta("a.bin");
    lie.size += 1;
    world.index_client().register(&alice.addr, &[lie]).unwrap();
    let out = world.folder("out");
    let err = world
        .downloader("bob", &out, 1)
        .fetch(&key("a.bin"))
        .unwrap_err();
    let PeerError::NoReachableHolder { last_error, .. } = &err else {
        panic!("expected no reachable holder, got {err}");
    };
    assert!(last_error.contains("bad manifest"), "{last_error}");
    assert!(listing(&out).is_empty());
}

#[test]
fn a_different_file_under_the_same_name_is_refused_naming_both_ids() {
    let world = World::new();
    let theirs = data(50_000, 8);
    let alice = world.peer("alice", &[("a.bin", &theirs)]);
    let out = world.folder("out");
    let mine = data(40_000, 9);
    fs::write(out.join("a.bin"), &mine).unwrap();
    let err = world
        .downloader("bob", &out, 1)
        .fetch(&key("a.bin"))
        .unwrap_err();
    let PeerError::DifferentContent { here, listed, .. } = &err else {
        panic!("expected DifferentContent, got {err}");
    };
    assert_eq!(*listed, alice.meta("a.bin").id);
    assert_ne!(here, listed);
    let text = err.to_string();
    assert!(
        text.contains(&here.short()) && text.contains(&listed.short()),
        "{text}"
    );
    // Nothing was fetched or overwritten.
    assert_eq!(fs::read(out.join("a.bin")).unwrap(), mine);
    assert_eq!(world.net.stats(&alice.addr).connections, 0);
}
