// The cases of swarm.rs, compiled twice: over the plain in-memory transport and over
// TLS on it (`Net` and `on_host` come from the including module).


use std::io::{BufReader, Write};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use super::common::content;
use shoal_index::IndexClient;
use shoal_peer::{
    DownloadOutcome, DownloadReport, DownloaderConfig, Library, Peer, PeerConfig, ServerHandle,
};
use shoal_proto::codec::{self, Service};
use shoal_proto::mem::MemNetwork;
use shoal_proto::message::{ErrorCode, ErrorReply, Have, Manifest, PeerRequest, PeerResponse};
use shoal_proto::{FileKey, Listener, PeerAddr, Transport};
use tempfile::TempDir;

/// Small chunks so that a test file spans many.
const CHUNK: u32 = 16 << 10;
/// Every host's upload link.
const RATE: u64 = 1 << 20;

struct Swarm {
    net: MemNetwork,
    index: ServerHandle,
    root: TempDir,
}

impl Swarm {
    fn new() -> Swarm {
        let net = MemNetwork::new();
        let index = super::common::index(on_host(&net, "index"), 7);
        Swarm {
            net,
            index,
            root: TempDir::new().unwrap(),
        }
    }

    /// A peer on host `name` (upload limited to `rate`) sharing `files`.
    fn peer(&self, name: &str, files: &[(&str, &[u8])], rate: u64) -> Peer<Net> {
        let dir = self.root.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, bytes) in files {
            std::fs::write(dir.join(file), bytes).unwrap();
        }
        self.net.limit_upload(name, rate);
        let library = Library::open(&dir, CHUNK).unwrap();
        let mut config = PeerConfig::new(
            vec![self.index.addr().clone()],
            PeerAddr::new(format!("{name}:7000")).unwrap(),
        );
        config.watch = None;
        config.downloader = DownloaderConfig {
            refresh: Duration::from_millis(50),
            seed: Some(name.len() as u64 * 31 + u64::from(name.as_bytes()[name.len() - 1])),
            ..DownloaderConfig::default()
        };
        Peer::start(on_host(&self.net, name), library, config).unwrap()
    }

    fn sent_by(&self, peer: &Peer<Net>) -> u64 {
        self.net.stats(peer.listen_addr().unwrap()).bytes_sent
    }
}

/// Every peer of `crowd` fetches `name` at the same moment; their reports.
fn fetch_at_once(crowd: &[Peer<Net>], name: &str) -> Vec<DownloadReport> {
    let start = Arc::new(Barrier::new(crowd.len()));
    thread::scope(|scope| {
        let handles: Vec<_> = crowd
            .iter()
            .map(|peer| {
                let start = Arc::clone(&start);
                let mut downloader = peer.downloader();
                scope.spawn(move || {
                    start.wait();
                    match downloader.fetch(&FileKey::Name(name.into())) {
                        Ok(DownloadOutcome::Downloaded(report)) => report,
                        other => panic!("{}: {other:?}", peer.advertise()),
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn assert_exact(crowd: &[Peer<Net>], name: &str, bytes: &[u8]) {
    for peer in crowd {
        let got = std::fs::read(peer.library().dir().join(name)).unwrap();
        assert!(got == bytes, "{} holds a wrong copy", peer.advertise());
    }
}

#[test]
fn a_crowd_of_eight_swarms_and_the_seeder_uploads_at_most_two_copies() {
    let swarm = Swarm::new();
    let file = content(1 << 20, 1);
    let seeder = swarm.peer("seeder", &[("release.bin", &file)], RATE);
    let crowd: Vec<_> = (0..8)
        .map(|n| swarm.peer(&format!("peer{n}"), &[], RATE))
        .collect();
    let reports = fetch_at_once(&crowd, "release.bin");
    assert_exact(&crowd, "release.bin", &file);
    let copies = swarm.sent_by(&seeder) as f64 / file.len() as f64;
    assert!(copies <= 2.0, "the seeder uploaded {copies:.2} copies");
    for (peer, report) in crowd.iter().zip(&reports) {
        assert!(
            swarm.sent_by(peer) > 0 && report.uploaded > 0,
            "{} uploaded nothing ({} B in its report)",
            peer.advertise(),
            report.uploaded
        );
        assert!(
            report.holders.iter().any(|h| h.partial && h.bytes > 0),
            "{} got nothing from partial holders: {:?}",
            peer.advertise(),
            report.holders
        );
    }
    // Every copy is registered complete now, and nobody is left downloading.
    let hits = IndexClient::new(on_host(&swarm.net, "observer"), vec![swarm.index.addr().clone()])
        .search("release", 10)
        .unwrap();
    assert_eq!((hits[0].holders, hits[0].downloading), (9, 0));
}

#[test]
fn the_crowd_completes_after_the_seeder_leaves() {
    let swarm = Swarm::new();
    let file = content(512 << 10, 2);
    // A slow seeder and fast peers: the crowd spreads each chunk as soon as it has it.
    let seeder = swarm.peer("seeder", &[("data.bin", &file)], RATE / 4);
    let crowd: Vec<_> = (0..5)
        .map(|n| swarm.peer(&format!("peer{n}"), &[], RATE * 4))
        .collect();
    let chunks = file.len().div_ceil(CHUNK as usize) as u32;
    thread::scope(|scope| {
        let downloads = scope.spawn(|| fetch_at_once(&crowd, "data.bin"));
        // The seeder leaves once the crowd together holds every chunk: one copy's worth of
        // distinct chunks is out.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let covered = (0..chunks).all(|i| {
                crowd.iter().any(|p| {
                    p.library().get(&FileKey::Name("data.bin".into())).is_some()
                        || p.library().downloads().iter().any(|d| d.has(i))
                })
            });
            if covered {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the crowd never covered the file"
            );
            thread::sleep(Duration::from_millis(1));
        }
        let sent = swarm.sent_by(&seeder);
        seeder.shutdown();
        assert!(
            sent < 2 * file.len() as u64,
            "the seeder sent {sent} B before it left"
        );
        downloads.join().unwrap();
    });
    assert_exact(&crowd, "data.bin", &file);
}

/// How a hand-made partial holder misbehaves.
#[derive(Clone, Copy)]
enum Liar {
    /// Claims every chunk and sends garbage for each.
    Corrupt,
    /// Claims every chunk, then says it lacks each one asked for.
    Lacks,
}

/// A partial holder that speaks the protocol but lies, registered as downloading `manifest`.
fn liar(swarm: &Swarm, name: &str, manifest: Manifest, how: Liar) -> PeerAddr {
    let transport = on_host(&swarm.net, name);
    let listener = transport
        .bind(&PeerAddr::new(format!("{name}:7000")).unwrap())
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let meta = manifest.file.clone();
    thread::spawn(move || {
        while let Ok((mut stream, _)) = listener.accept() {
            let manifest = manifest.clone();
            thread::spawn(move || {
                if codec::server_handshake(&mut stream, Service::Peer).is_err() {
                    return;
                }
                let mut conn = BufReader::new(stream);
                let mut frame = Vec::new();
                while let Ok(request) = codec::read_frame::<_, PeerRequest>(
                    &mut conn,
                    codec::DEFAULT_REQUEST_LIMIT,
                    &mut frame,
                ) {
                    let mut out = Vec::new();
                    match request {
                        PeerRequest::Manifest { .. } => {
                            codec::encode_frame(&PeerResponse::Manifest(manifest.clone()), &mut out)
                        }
                        PeerRequest::Availability { .. } => {
                            // Every chunk claimed: all bits of the bitmap up to the count.
                            let chunks = manifest.chunk_hashes.len();
                            let mut bitmap = vec![0u8; chunks.div_ceil(8)];
                            for i in 0..chunks {
                                bitmap[i / 8] |= 1 << (i % 8);
                            }
                            codec::encode_frame(
                                &PeerResponse::Availability {
                                    seq: 1,
                                    have: Have::Bitmap(bitmap),
                                },
                                &mut out,
                            )
                        }
                        PeerRequest::ReadChunks { first, .. } => match how {
                            Liar::Lacks => codec::encode_frame(
                                &PeerResponse::Error(ErrorReply::new(
                                    ErrorCode::Unavailable,
                                    "not yet",
                                )),
                                &mut out,
                            ),
                            Liar::Corrupt => {
                                let len = shoal_proto::content::chunk_len(
                                    manifest.file.size,
                                    manifest.file.chunk_size,
                                    first,
                                )
                                .unwrap();
                                codec::encode_frame(
                                    &PeerResponse::Chunk { index: first, len },
                                    &mut out,
                                )
                                .map(|()| out.extend(vec![0x5a; len as usize]))
                            }
                        },
                    }
                    .unwrap();
                    if conn.get_mut().write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    IndexClient::new(on_host(&swarm.net, name), vec![swarm.index.addr().clone()])
        .register_partial(&addr, std::slice::from_ref(&meta))
        .unwrap();
    addr
}

fn manifest_of(peer: &Peer<Net>, name: &str) -> Manifest {
    let file = peer.library().get(&FileKey::Name(name.into())).unwrap();
    Manifest {
        file: file.meta,
        chunk_hashes: file.chunk_hashes.to_vec(),
    }
}

#[test]
fn a_partial_holder_that_sends_a_corrupt_chunk_is_dropped_and_named() {
    let swarm = Swarm::new();
    let file = content(256 << 10, 3);
    let seeder = swarm.peer("seeder", &[("f.bin", &file)], RATE / 4);
    let bad = liar(
        &swarm,
        "mallory",
        manifest_of(&seeder, "f.bin"),
        Liar::Corrupt,
    );
    let downloader = swarm.peer("bob", &[], RATE);
    let reports = fetch_at_once(std::slice::from_ref(&downloader), "f.bin");
    assert_exact(std::slice::from_ref(&downloader), "f.bin", &file);
    let mallory = reports[0].holders.iter().find(|h| h.holder == bad).unwrap();
    assert!(mallory.partial);
    assert!(mallory.corrupt_chunk.is_some(), "{mallory:?}");
    assert!(
        matches!(
            mallory.dropped,
            Some(shoal_peer::DropReason::Corrupt { .. })
        ),
        "{mallory:?}"
    );
    assert_eq!(mallory.bytes, 0);
}

#[test]
fn a_holder_asked_for_a_chunk_it_lacks_says_so_and_the_chunk_comes_from_elsewhere() {
    let swarm = Swarm::new();
    let file = content(256 << 10, 4);
    let seeder = swarm.peer("seeder", &[("f.bin", &file)], RATE);
    let lacking = liar(&swarm, "empty", manifest_of(&seeder, "f.bin"), Liar::Lacks);
    let downloader = swarm.peer("bob", &[], RATE);
    let reports = fetch_at_once(std::slice::from_ref(&downloader), "f.bin");
    assert_exact(std::slice::from_ref(&downloader), "f.bin", &file);
    let report = reports[0]
        .holders
        .iter()
        .find(|h| h.holder == lacking)
        .unwrap();
    // Asked, refused with a typed answer, and kept: the connection stayed usable.
    assert!(report.requests > 0, "{report:?}");
    assert_eq!((report.bytes, report.dropped.as_ref()), (0, None));
}

#[test]
fn a_partial_holder_that_vanishes_mid_crowd_leaves_the_others_exact() {
    let swarm = Swarm::new();
    let file = content(512 << 10, 5);
    let _seeder = swarm.peer("seeder", &[("v.bin", &file)], RATE / 2);
    let mut crowd: Vec<_> = (0..4)
        .map(|n| swarm.peer(&format!("peer{n}"), &[], RATE * 2))
        .collect();
    let leaver = crowd.pop().unwrap();
    let leaver_addr = leaver.listen_addr().unwrap().clone();
    thread::scope(|scope| {
        let downloads = scope.spawn(|| fetch_at_once(&crowd, "v.bin"));
        // The leaver starts the same download and vanishes once it has served something.
        let mut downloader = leaver.downloader();
        let leaving = scope.spawn(move || {
            let _ = downloader.fetch(&FileKey::Name("v.bin".into()));
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        while swarm.net.stats(&leaver_addr).bytes_sent < u64::from(CHUNK) {
            if Instant::now() > deadline {
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        swarm.net.refuse(&leaver_addr);
        swarm.net.cut_after(&leaver_addr, 0);
        drop(leaver);
        downloads.join().unwrap();
        leaving.join().unwrap();
    });
    assert_exact(&crowd, "v.bin", &file);
}
