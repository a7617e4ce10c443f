//! Folder watching with the real OS watcher (inotify) on temporary folders, feeding an
//! announcer on the in-memory network: the index follows files added, changed and deleted
//! in a running peer's folder, never lists a partial download, and a finished download is
//! announced without being hashed again. Each wait is for the watcher's change event, with
//! a generous bound; nothing sleeps.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use shoal_index::{IndexClient, IndexError, IndexServer, IndexServerConfig, MemoryStore};
use shoal_peer::{
    Announcer, AnnouncerConfig, DownloadOutcome, Downloader, DownloaderConfig, FolderWatcher,
    Library, LibraryChange, PeerServer, PeerServerConfig, ServerHandle, WatchConfig,
};
use shoal_proto::mem::{MemNetwork, MemTransport};
use shoal_proto::{FileId, FileKey, PeerAddr, content};

/// Far longer than the watcher needs (about 0.3 s); only a broken watcher waits this long.
const BOUND: Duration = Duration::from_secs(20);

fn addr(s: &str) -> PeerAddr {
    PeerAddr::new(s).unwrap()
}

fn id_of(bytes: &[u8]) -> FileId {
    content::hash_reader(
        &mut &bytes[..],
        bytes.len() as u64,
        1 << 20,
        &mut Vec::new(),
    )
    .unwrap()
    .0
}

/// Waits for change events until one satisfies `done`; returns every change seen.
fn wait_for(
    changes: &Receiver<LibraryChange>,
    done: impl Fn(&LibraryChange) -> bool,
) -> Vec<LibraryChange> {
    let deadline = Instant::now() + BOUND;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let change = changes
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no such change within {BOUND:?}; saw {seen:?}"));
        let finished = done(&change);
        seen.push(change);
        if finished {
            return seen;
        }
    }
}

/// A peer whose folder is watched and announced to the index.
struct WatchedPeer {
    library: Library,
    changes: Receiver<LibraryChange>,
    watcher: FolderWatcher,
    _announcer: Announcer<MemTransport>,
    _server: ServerHandle,
    addr: PeerAddr,
}

fn watched_peer(net: &MemNetwork, host: &str, dir: &Path, index: &PeerAddr) -> WatchedPeer {
    let library = Library::open(dir, 16384).unwrap();
    let server = PeerServer::new(net.host(host), library.clone(), PeerServerConfig::default())
        .spawn(&addr(&format!("{host}:0")))
        .unwrap();
    let announcer = Announcer::start(
        net.host(host),
        vec![index.clone()],
        server.addr().clone(),
        &library,
        AnnouncerConfig::default(),
    )
    .unwrap();
    let sink = announcer.change_sink();
    let (tx, changes) = crossbeam_channel::unbounded();
    // The announcer first, so when the test hears of a change the index already has it.
    let watcher = FolderWatcher::start(library.clone(), WatchConfig::default(), move |change| {
        sink(change.clone());
        let _ = tx.send(change);
    })
    .unwrap();
    WatchedPeer {
        library,
        changes,
        watcher,
        _announcer: announcer,
        addr: server.addr().clone(),
        _server: server,
    }
}

fn index(net: &MemNetwork) -> ServerHandle {
    IndexServer::new(
        net.host("index"),
        MemoryStore::with_seed(1),
        IndexServerConfig::default(),
    )
    .spawn(&addr("index:0"))
    .unwrap()
}

fn holders(
    client: &mut IndexClient<MemTransport>,
    key: FileKey,
) -> Result<Vec<PeerAddr>, IndexError> {
    client.holders(&key).map(|(_, holders)| holders)
}

#[test]
fn the_index_follows_files_added_changed_and_deleted() {
    let net = MemNetwork::new();
    let index = index(&net);
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("old.txt"), b"there from the start").unwrap();
    let peer = watched_peer(&net, "alice", dir.path(), index.addr());
    let mut client = IndexClient::new(net.host("observer"), vec![index.addr().clone()]);
    let name = || FileKey::Name("song.ogg".into());
    assert_eq!(
        holders(&mut client, FileKey::Name("old.txt".into())).unwrap(),
        vec![peer.addr.clone()]
    );

    // Added.
    let first = vec![1u8; 100_000];
    fs::write(dir.path().join("song.ogg"), &first).unwrap();
    wait_for(&peer.changes, |c| {
        c.added.iter().any(|m| m.name == "song.ogg")
    });
    assert_eq!(
        holders(&mut client, name()).unwrap(),
        vec![peer.addr.clone()]
    );
    assert_eq!(client.holders(&name()).unwrap().0.id, id_of(&first));

    // Changed: the new content is listed, the old id is gone.
    let second = vec![2u8; 120_000];
    fs::write(dir.path().join("song.ogg"), &second).unwrap();
    wait_for(&peer.changes, |c| {
        c.changed.iter().any(|m| m.new.id == id_of(&second))
    });
    let (meta, listed) = client.holders(&name()).unwrap();
    assert_eq!(
        (meta.id, meta.size, listed),
        (id_of(&second), 120_000, vec![peer.addr.clone()])
    );
    assert!(matches!(
        client.holders(&FileKey::Id(id_of(&first))),
        Err(IndexError::NotFound { .. })
    ));

    // Deleted.
    fs::remove_file(dir.path().join("song.ogg")).unwrap();
    wait_for(&peer.changes, |c| {
        c.removed.iter().any(|m| m.name == "song.ogg")
    });
    assert!(matches!(
        holders(&mut client, name()),
        Err(IndexError::NotFound { .. })
    ));
    assert!(!peer.library.contains_name("song.ogg"));
    // The file that never changed is still there.
    assert_eq!(
        holders(&mut client, FileKey::Name("old.txt".into())).unwrap(),
        vec![peer.addr.clone()]
    );
}

#[test]
fn partial_downloads_are_never_listed_and_finished_ones_are_not_hashed_again() {
    let net = MemNetwork::new();
    let index = index(&net);

    // Alice shares a file (announced once, no watcher needed).
    let alice_dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(alice_dir.path().join("film.mkv"), &bytes).unwrap();
    let alice_lib = Library::open(alice_dir.path(), 16384).unwrap();
    let alice = PeerServer::new(
        net.host("alice"),
        alice_lib.clone(),
        PeerServerConfig::default(),
    )
    .spawn(&addr("alice:0"))
    .unwrap();
    let _alice_announcer = Announcer::start(
        net.host("alice"),
        vec![index.addr().clone()],
        alice.addr().clone(),
        &alice_lib,
        AnnouncerConfig::default(),
    )
    .unwrap();

    // Bob's folder is watched. Part files of a download in progress appear and grow in it.
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = watched_peer(&net, "bob", bob_dir.path(), index.addr());
    fs::write(
        bob_dir.path().join(".other.iso.shoal-part"),
        vec![0u8; 50_000],
    )
    .unwrap();
    fs::write(bob_dir.path().join(".other.iso.shoal-part.state"), b"state").unwrap();
    fs::write(
        bob_dir.path().join(".other.iso.shoal-part"),
        vec![1u8; 80_000],
    )
    .unwrap();

    // Bob downloads the film: it lands by hard link from its own part file.
    let mut downloader = Downloader::for_peer(
        net.host("bob"),
        vec![index.addr().clone()],
        bob.library.clone(),
        bob.addr.clone(),
        DownloaderConfig::default(),
    );
    let outcome = downloader.fetch(&FileKey::Name("film.mkv".into())).unwrap();
    assert!(matches!(outcome, DownloadOutcome::Downloaded(_)));

    // The watcher reports the film (a plain name appeared), and only the film.
    let seen = wait_for(&bob.changes, |c| {
        c.added.iter().any(|m| m.name == "film.mkv")
    });
    for change in &seen {
        let names = change
            .added
            .iter()
            .chain(&change.removed)
            .map(|m| m.name.as_str())
            .chain(change.changed.iter().map(|c| c.new.name.as_str()));
        for name in names {
            assert_eq!(name, "film.mkv", "{seen:?}");
        }
    }
    // The downloader's verified hashes were taken as they were: nothing was read again.
    assert_eq!(bob.watcher.files_hashed(), 0);
    let names: Vec<String> = bob.library.files().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["film.mkv"]);

    // The index lists the film with both holders, and nothing hidden at all.
    let mut client = IndexClient::new(net.host("observer"), vec![index.addr().clone()]);
    let (meta, mut listed) = client.holders(&FileKey::Name("film.mkv".into())).unwrap();
    listed.sort();
    let mut expected = vec![alice.addr().clone(), bob.addr.clone()];
    expected.sort();
    assert_eq!((meta.id, listed), (id_of(&bytes), expected));
    let all: Vec<String> = client
        .search("", 100)
        .unwrap()
        .into_iter()
        .map(|hit| hit.file.name)
        .collect();
    assert_eq!(all, ["film.mkv"]);
}

#[test]
fn the_periodic_rescan_finds_what_no_event_announced() {
    // The folder vanishes before the watcher starts, so the OS cannot watch it: the watcher
    // warns and relies on its periodic rescan, which finds the folder and its file later.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shared");
    let library = Library::open(&dir, 16384).unwrap();
    fs::remove_dir(&dir).unwrap();
    let (tx, changes) = crossbeam_channel::unbounded();
    let config = WatchConfig {
        rescan_interval: Duration::from_millis(50),
        ..WatchConfig::default()
    };
    let watcher = FolderWatcher::start(library.clone(), config, move |change| {
        let _ = tx.send(change);
    })
    .unwrap();
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("late.txt"), b"no event announced me").unwrap();
    wait_for(&changes, |c| c.added.iter().any(|m| m.name == "late.txt"));
    assert!(library.contains_name("late.txt"));
    watcher.stop();
}
