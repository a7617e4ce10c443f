// The whole-system cases, compiled twice by system.rs: over the plain in-memory transport
// and over TLS on it (`Net`, `on_host` and `TLS` come from the including module).

use std::collections::HashMap;
use std::path::Path;

use rand::SeedableRng;
use shoal_index::{IndexClient, IndexError, IndexServer, IndexServerConfig, MemoryStore};
use shoal_peer::{
    DownloadOutcome, Downloader, DownloaderConfig, Library, PeerError, PeerServer,
    PeerServerConfig, ServerHandle,
};
use shoal_proto::mem::MemNetwork;
use shoal_proto::{FileKey, PeerAddr};
use tempfile::TempDir;

/// Small chunks so that test files span many of them.
const CHUNK: u32 = 16 << 10;

struct Peer {
    name: String,
    dir: TempDir,
    library: Library,
    server: ServerHandle,
    transport: Net,
}

impl Peer {
    fn addr(&self) -> PeerAddr {
        self.server.addr().clone()
    }

    fn downloader(&self, index: &PeerAddr) -> Downloader<Net> {
        Downloader::for_peer(
            self.transport.clone(),
            vec![index.clone()],
            self.library.clone(),
            self.addr(),
            DownloaderConfig::default(),
        )
    }
}

struct System {
    /// Every peer folder lives in here, so a test can see anything written beside them.
    root: TempDir,
    net: MemNetwork,
    index: ServerHandle,
    peers: Vec<Peer>,
}

/// Deterministic content, different for every name.
fn content(name: &str, len: usize) -> Vec<u8> {
    let seed = name
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rng, &mut bytes);
    bytes
}

/// Starts an index (seeded) and one peer per entry of `holdings`, each with its files.
fn start(holdings: &[&[(&str, usize)]]) -> System {
    let net = MemNetwork::new();
    let index = IndexServer::new(
        on_host(&net, "index"),
        MemoryStore::with_seed(42),
        IndexServerConfig::default(),
    )
    .spawn(&PeerAddr::new("index:1024").unwrap())
    .unwrap();
    let root = TempDir::new().unwrap();
    let mut peers = Vec::new();
    for (n, files) in holdings.iter().enumerate() {
        let name = format!("peer{}", n + 1);
        let dir = TempDir::new_in(root.path()).unwrap();
        for (file, len) in *files {
            std::fs::write(dir.path().join(file), content(file, *len)).unwrap();
        }
        let transport = on_host(&net, &name);
        let library = Library::open(dir.path(), CHUNK).unwrap();
        let server = PeerServer::new(
            transport.clone(),
            library.clone(),
            PeerServerConfig::default(),
        )
        .spawn(&PeerAddr::new(format!("{name}:1025")).unwrap())
        .unwrap();
        IndexClient::new(transport.clone(), vec![index.addr().clone()])
            .register(server.addr(), &library.files())
            .unwrap();
        peers.push(Peer {
            name,
            dir,
            library,
            server,
            transport,
        });
    }
    System {
        root,
        net,
        index,
        peers,
    }
}

impl System {
    fn index_addr(&self) -> PeerAddr {
        self.index.addr().clone()
    }

    fn client(&self) -> IndexClient<Net> {
        IndexClient::new(on_host(&self.net, "observer"), vec![self.index_addr()])
    }
}

/// Names of everything in a folder, hidden files included.
fn folder_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Names of the non-hidden entries of a folder: what a user sees as files.
fn visible_entries(dir: &Path) -> Vec<String> {
    folder_entries(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.'))
        .collect()
}

#[test]
fn every_peer_fetches_every_file_it_lacks_and_becomes_a_holder() {
    let files: [&[(&str, usize)]; 3] = [
        &[("onekb.txt", 1024), ("tenkb.txt", 10 * 1024)],
        &[("hundredkb.bin", 100 * 1024), ("empty.bin", 0)],
        &[("big.bin", 1 << 20)],
    ];
    let system = start(&files);
    let all: Vec<(&str, usize)> = files.iter().flat_map(|f| f.iter().copied()).collect();
    let index = system.index_addr();
    for peer in &system.peers {
        let mut downloader = peer.downloader(&index);
        for (name, len) in &all {
            let outcome = downloader.fetch(&FileKey::Name((*name).into())).unwrap();
            let path = peer.dir.path().join(name);
            assert_eq!(
                std::fs::read(&path).unwrap(),
                content(name, *len),
                "{name} on {}",
                peer.name
            );
            match outcome {
                DownloadOutcome::Downloaded(report) => {
                    assert_eq!(report.bytes, *len as u64);
                    assert!(report.registered);
                    assert_ne!(
                        report.from,
                        peer.addr(),
                        "a peer never downloads from itself"
                    );
                }
                DownloadOutcome::AlreadyPresent(file) => {
                    assert_eq!(file.name, *name);
                    assert!(files.iter().any(|f| f.iter().any(|(n, _)| n == name)));
                }
            }
        }
    }
    // The index now lists every peer as a holder of every file.
    let mut client = system.client();
    for (name, _) in &all {
        let (_, holders) = client.holders(&FileKey::Name((*name).into())).unwrap();
        let expected: Vec<PeerAddr> = system.peers.iter().map(Peer::addr).collect();
        assert_eq!(holders, expected, "{name}");
    }
    let hits = client.search("", 100).unwrap();
    assert_eq!(hits.len(), all.len());
    assert!(hits.iter().all(|h| h.holders == 3));
    // And each peer serves what it downloaded: no part files left anywhere.
    for peer in &system.peers {
        assert!(
            folder_entries(peer.dir.path())
                .iter()
                .all(|n| !n.starts_with('.'))
        );
        assert_eq!(peer.library.files().len(), all.len());
    }
}

#[test]
fn lookups_spread_evenly_over_three_holders() {
    let file: &[(&str, usize)] = &[("shared.bin", 4096)];
    let system = start(&[file, file, file]);
    let mut client = system.client();
    let mut counts: HashMap<PeerAddr, u32> = HashMap::new();
    for _ in 0..3000 {
        let (_, holder) = client.locate(&FileKey::Name("shared.bin".into())).unwrap();
        *counts.entry(holder).or_default() += 1;
    }
    assert_eq!(counts.len(), 3);
    for (holder, count) in counts {
        let share = f64::from(count) / 3000.0;
        assert!((0.28..=0.39).contains(&share), "{holder} got {share:.3}");
    }
}

#[test]
fn a_holder_that_cuts_the_connection_leaves_no_file_behind() {
    let system = start(&[&[("movie.bin", 300_000)], &[]]);
    let holder = system.peers[0].addr();
    system.net.cut_after(&holder, 150_000);
    let fetcher = &system.peers[1];
    let err = fetcher
        .downloader(&system.index_addr())
        .fetch(&FileKey::Name("movie.bin".into()))
        .unwrap_err();
    match &err {
        PeerError::Incomplete { failures, .. } => {
            assert_eq!(failures.len(), 1);
            assert_eq!(failures[0].holder, holder);
            assert!(
                failures[0]
                    .dropped
                    .as_ref()
                    .unwrap()
                    .to_string()
                    .contains("stopped sending")
            );
        }
        other => panic!("expected an incomplete download, got {other:?}"),
    }
    assert!(err.to_string().contains("movie.bin"), "{err}");
    assert!(
        visible_entries(fetcher.dir.path()).is_empty(),
        "no final file (only the hidden part, kept for a resume)"
    );
    // Healed, the same download succeeds.
    system.net.heal(&holder);
    fetcher
        .downloader(&system.index_addr())
        .fetch(&FileKey::Name("movie.bin".into()))
        .unwrap();
    assert_eq!(
        std::fs::read(fetcher.dir.path().join("movie.bin")).unwrap(),
        content("movie.bin", 300_000)
    );
}

#[test]
fn a_corrupted_byte_is_caught_and_the_holder_named() {
    let system = start(&[&[("photo.raw", 300_000)], &[]]);
    let holder = system.peers[0].addr();
    // Well past the handshake and manifest: inside a chunk body.
    system.net.corrupt_at(&holder, 200_000);
    let fetcher = &system.peers[1];
    let err = fetcher
        .downloader(&system.index_addr())
        .fetch(&FileKey::Name("photo.raw".into()))
        .unwrap_err();
    if TLS {
        // TLS catches the altered byte first: that connection fails, no byte of it is used.
        assert!(err.corrupt_holders().is_empty(), "{err}");
        assert!(err.to_string().contains(&format!("TLS with {holder}")), "{err}");
        assert!(err.to_string().contains("altered on the wire"), "{err}");
    } else {
        assert_eq!(err.corrupt_holders(), [&holder], "{err}");
        assert!(
            err.to_string().contains(&format!("{holder} sent chunk")),
            "{err}"
        );
        assert!(err.to_string().contains("failed verification"), "{err}");
    }
    assert!(visible_entries(fetcher.dir.path()).is_empty());
    // The failed fetch registered nothing.
    let (_, holders) = system
        .client()
        .holders(&FileKey::Name("photo.raw".into()))
        .unwrap();
    assert_eq!(holders, vec![holder]);
}

#[test]
fn unknown_names_are_not_found() {
    let system = start(&[&[("a.txt", 10)], &[]]);
    let err = system.peers[1]
        .downloader(&system.index_addr())
        .fetch(&FileKey::Name("nosuch.txt".into()))
        .unwrap_err();
    assert!(matches!(err, PeerError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("nosuch.txt"), "{err}");
    assert!(matches!(
        system.client().locate(&FileKey::Name("nosuch.txt".into())),
        Err(IndexError::NotFound { .. })
    ));
}

#[test]
fn traversal_names_are_refused_everywhere_and_nothing_is_written_outside() {
    let system = start(&[&[("a.txt", 10)], &[]]);
    let fetcher = &system.peers[1];
    let outside = system.root.path().to_path_buf();
    let before = folder_entries(&outside);
    for name in ["../a.txt", "../../etc/passwd", "a/b", "..", ""] {
        // At the command-line boundary...
        assert!(FileKey::parse(name).is_err(), "{name:?}");
        // ...and on the wire: a downloader handed a raw bad key refuses it before sending...
        let err = fetcher
            .downloader(&system.index_addr())
            .fetch(&FileKey::Name(name.into()))
            .unwrap_err();
        assert!(matches!(err, PeerError::BadName(_)), "{name:?}: {err:?}");
        // ...and the index refuses it too, and keeps serving.
        let mut client = system.client();
        match client.locate(&FileKey::Name(name.into())) {
            Err(IndexError::Refused(reply)) => {
                assert_eq!(reply.code, shoal_proto::message::ErrorCode::BadName)
            }
            other => panic!("{name:?}: expected a refusal, got {other:?}"),
        }
        assert!(client.locate(&FileKey::Name("a.txt".into())).is_ok());
    }
    assert_eq!(folder_entries(&outside), before);
    assert!(folder_entries(fetcher.dir.path()).is_empty());
}

#[test]
fn a_file_already_here_is_not_fetched_again() {
    let system = start(&[&[("a.txt", 1000)], &[("a.txt", 500)]]);
    let fetcher = &system.peers[1];
    let outcome = fetcher
        .downloader(&system.index_addr())
        .fetch(&FileKey::Name("a.txt".into()))
        .unwrap();
    assert!(matches!(outcome, DownloadOutcome::AlreadyPresent(_)));
    // Its own, different content is untouched.
    assert_eq!(
        std::fs::read(fetcher.dir.path().join("a.txt")).unwrap(),
        content("a.txt", 500)
    );
    assert_eq!(system.net.stats(&system.peers[0].addr()).bytes_sent, 0);
}

// ---- Swarm download: several holders, failover, resume ----

/// A downloader that asks two chunks per request, so work spreads over holders.
fn swarm_downloader(peer: &Peer, index: &PeerAddr) -> Downloader<Net> {
    Downloader::for_peer(
        peer.transport.clone(),
        vec![index.clone()],
        peer.library.clone(),
        peer.addr(),
        DownloaderConfig {
            request_bytes: 2 * u64::from(CHUNK),
            seed: Some(7),
            ..DownloaderConfig::default()
        },
    )
}

const SWARM_FILE: (&str, usize) = ("swarm.bin", 4 << 20);

fn report_of(outcome: DownloadOutcome) -> shoal_peer::DownloadReport {
    match outcome {
        DownloadOutcome::Downloaded(report) => report,
        DownloadOutcome::AlreadyPresent(_) => panic!("the file was already there"),
    }
}

#[test]
fn three_holders_all_serve_one_download() {
    let file: &[(&str, usize)] = &[SWARM_FILE];
    let system = start(&[file, file, file, &[]]);
    let fetcher = &system.peers[3];
    let report = report_of(
        swarm_downloader(fetcher, &system.index_addr())
            .fetch(&FileKey::Name(SWARM_FILE.0.into()))
            .unwrap(),
    );
    assert_eq!(
        std::fs::read(fetcher.dir.path().join(SWARM_FILE.0)).unwrap(),
        content(SWARM_FILE.0, SWARM_FILE.1)
    );
    assert_eq!(report.holders.len(), 3);
    for holder in &report.holders {
        assert!(
            holder.bytes > 0,
            "{} served nothing: {report:?}",
            holder.holder
        );
        assert_eq!(holder.dropped, None);
    }
    let total: u64 = report.holders.iter().map(|h| h.bytes).sum();
    assert_eq!(total, SWARM_FILE.1 as u64);
}

#[test]
fn a_dead_and_a_lying_holder_do_not_stop_the_download() {
    let file: &[(&str, usize)] = &[SWARM_FILE];
    let system = start(&[file, file, file, &[]]);
    // With the downloader's seed the holder order is peer2, peer3, peer1: peer2 gives the
    // manifest and stays honest; peer1 lies (a flipped byte in its first chunk body) and
    // peer3 dies inside its first chunk body, whichever chunks they are asked for.
    let liar = system.peers[0].addr();
    let dead = system.peers[2].addr();
    let honest = system.peers[1].addr();
    system.net.corrupt_at(&liar, 8 + 20 + 100);
    system.net.cut_after(&dead, 8 + 20 + 1000);
    let fetcher = &system.peers[3];
    let report = report_of(
        swarm_downloader(fetcher, &system.index_addr())
            .fetch(&FileKey::Name(SWARM_FILE.0.into()))
            .unwrap(),
    );
    assert_eq!(
        std::fs::read(fetcher.dir.path().join(SWARM_FILE.0)).unwrap(),
        content(SWARM_FILE.0, SWARM_FILE.1)
    );
    let of = |addr: &PeerAddr| report.holders.iter().find(|h| &h.holder == addr).unwrap();
    let why = |addr: &PeerAddr| of(addr).dropped.as_ref().unwrap().to_string();
    if TLS {
        // The altered byte and the cut land in the TLS handshake: both connections fail
        // there, before any chunk.
        assert!(of(&liar).corrupt_chunk.is_none(), "{report:?}");
        assert!(why(&liar).contains("TLS"), "{report:?}");
        assert!(of(&dead).dropped.is_some(), "{report:?}");
    } else {
        assert!(of(&liar).corrupt_chunk.is_some(), "{report:?}");
        assert!(why(&liar).contains("failed verification"));
        assert!(why(&dead).contains("stopped sending"));
    }
    // The dead and lying holders' shares came from the honest one.
    assert_eq!(of(&dead).bytes, 0);
    assert_eq!(of(&liar).bytes, 0);
    assert_eq!(of(&honest).bytes, SWARM_FILE.1 as u64);
    // Only the honest, complete copies are registered: the fetcher is a new holder.
    let (_, holders) = system
        .client()
        .holders(&FileKey::Name(SWARM_FILE.0.into()))
        .unwrap();
    assert!(holders.contains(&fetcher.addr()));
}

#[test]
fn a_download_stopped_midway_resumes_with_only_the_missing_chunks() {
    let file: &[(&str, usize)] = &[SWARM_FILE];
    let system = start(&[file, file, &[]]);
    let holders = [system.peers[0].addr(), system.peers[1].addr()];
    // Both holders die after sending a fifth of the file each.
    for h in &holders {
        system.net.cut_after(h, SWARM_FILE.1 as u64 / 5);
    }
    let fetcher = &system.peers[2];
    let key = FileKey::Name(SWARM_FILE.0.into());
    let err = swarm_downloader(fetcher, &system.index_addr())
        .fetch(&key)
        .unwrap_err();
    let PeerError::Incomplete { missing_bytes, .. } = &err else {
        panic!("expected an incomplete download, got {err:?}");
    };
    let missing_bytes = *missing_bytes;
    assert!(
        missing_bytes > 0 && missing_bytes < SWARM_FILE.1 as u64,
        "{err}"
    );
    assert_eq!(
        folder_entries(fetcher.dir.path()),
        [".swarm.bin.shoal-part", ".swarm.bin.shoal-part.state"]
    );

    // One holder comes back: the same request fetches only what is missing.
    system.net.heal(&holders[0]);
    system.net.refuse(&holders[1]);
    let sent_before = system.net.stats(&holders[0]).bytes_sent;
    let report = report_of(
        swarm_downloader(fetcher, &system.index_addr())
            .fetch(&key)
            .unwrap(),
    );
    let sent = system.net.stats(&holders[0]).bytes_sent - sent_before;
    assert_eq!(report.bytes, missing_bytes);
    assert_eq!(report.resumed_bytes, SWARM_FILE.1 as u64 - missing_bytes);
    // What crossed the wire: the missing chunks plus framing and one manifest, nothing more.
    let framing = 64 << 10;
    assert!(
        sent >= missing_bytes && sent <= missing_bytes + framing,
        "sent {sent} for {missing_bytes} missing bytes"
    );
    assert_eq!(
        std::fs::read(fetcher.dir.path().join(SWARM_FILE.0)).unwrap(),
        content(SWARM_FILE.0, SWARM_FILE.1)
    );
    assert_eq!(folder_entries(fetcher.dir.path()), [SWARM_FILE.0]);
    system.net.heal(&holders[1]);
}

#[test]
fn a_stale_or_corrupt_sidecar_is_discarded_and_the_download_is_exact() {
    let file: &[(&str, usize)] = &[("doc.pdf", 200_000)];
    let system = start(&[file, &[]]);
    let fetcher = &system.peers[1];
    let dir = fetcher.dir.path();
    let key = FileKey::Name("doc.pdf".into());
    for sidecar in [b"garbage".to_vec(), vec![0u8; 200]] {
        // A part file full of junk and a sidecar that is not ours.
        std::fs::write(dir.join(".doc.pdf.shoal-part"), vec![0xaa; 200_000]).unwrap();
        std::fs::write(dir.join(".doc.pdf.shoal-part.state"), &sidecar).unwrap();
        let report = report_of(
            swarm_downloader(fetcher, &system.index_addr())
                .fetch(&key)
                .unwrap(),
        );
        assert_eq!(report.resumed_bytes, 0);
        assert_eq!(
            std::fs::read(dir.join("doc.pdf")).unwrap(),
            content("doc.pdf", 200_000)
        );
        assert_eq!(folder_entries(dir), ["doc.pdf"]);
        std::fs::remove_file(dir.join("doc.pdf")).unwrap();
        fetcher.library.rescan().unwrap();
    }
}

#[test]
fn verify_only_checks_every_chunk_and_stores_nothing() {
    let file: &[(&str, usize)] = &[SWARM_FILE];
    let system = start(&[file, &[]]);
    let fetcher = &system.peers[1];
    let report = swarm_downloader(fetcher, &system.index_addr())
        .verify_only(&FileKey::Name(SWARM_FILE.0.into()))
        .unwrap();
    assert_eq!(report.bytes, SWARM_FILE.1 as u64);
    assert_eq!(report.path, None);
    assert!(folder_entries(fetcher.dir.path()).is_empty());
}
