//! Whole-system tests: an index and three peers in one process over the in-memory transport,
//! seeded randomness, injected faults. Each test asserts what a user would check.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::Path;

use rand::SeedableRng;
use shoal_index::{IndexClient, IndexError, IndexServer, IndexServerConfig, MemoryStore};
use shoal_peer::{
    DownloadOutcome, Downloader, DownloaderConfig, Library, PeerError, PeerServer,
    PeerServerConfig, ServerHandle,
};
use shoal_proto::mem::{MemNetwork, MemTransport};
use shoal_proto::{FileKey, PeerAddr};
use tempfile::TempDir;

/// Small chunks so that test files span many of them.
const CHUNK: u32 = 16 << 10;

struct Peer {
    name: String,
    dir: TempDir,
    library: Library,
    server: ServerHandle,
    transport: MemTransport,
}

impl Peer {
    fn addr(&self) -> PeerAddr {
        self.server.addr().clone()
    }

    fn downloader(&self, index: &PeerAddr) -> Downloader<MemTransport> {
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
        net.host("index"),
        MemoryStore::with_seed(42),
        IndexServerConfig::default(),
    )
    .spawn(&PeerAddr::new("index:1024").unwrap())
    .unwrap();
    let mut peers = Vec::new();
    for (n, files) in holdings.iter().enumerate() {
        let name = format!("peer{}", n + 1);
        let dir = TempDir::new().unwrap();
        for (file, len) in *files {
            std::fs::write(dir.path().join(file), content(file, *len)).unwrap();
        }
        let transport = net.host(&name);
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
    System { net, index, peers }
}

impl System {
    fn index_addr(&self) -> PeerAddr {
        self.index.addr().clone()
    }

    fn client(&self) -> IndexClient<MemTransport> {
        IndexClient::new(self.net.host("observer"), vec![self.index_addr()])
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
        PeerError::Transfer { holder: from, .. } => assert_eq!(from, &holder),
        other => panic!("expected a transfer error, got {other:?}"),
    }
    assert!(err.to_string().contains("movie.bin"), "{err}");
    assert!(
        folder_entries(fetcher.dir.path()).is_empty(),
        "no final file, no part file"
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
    match &err {
        PeerError::Integrity { holder: from, .. } => assert_eq!(from, &holder),
        other => panic!("expected an integrity error, got {other:?}"),
    }
    assert!(err.to_string().contains(holder.as_str()), "{err}");
    assert!(folder_entries(fetcher.dir.path()).is_empty());
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
    let outside = fetcher.dir.path().parent().unwrap().to_path_buf();
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
