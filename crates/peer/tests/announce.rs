//! The announcer over the in-memory network: a peer registered with several indexes keeps
//! its registrations alive on each, through outages, restarts, lapsed leases and folder
//! changes, and leaves every index at once when it stops. Heartbeats are driven by
//! `tick()`, and leases by a manual clock: nothing here waits for time to pass.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use shoal_index::{
    IndexClient, IndexError, IndexServer, IndexServerConfig, ManualClock, MemoryStore,
};
use shoal_peer::{
    Announcer, AnnouncerConfig, ChangedFile, IndexStatus, Library, LibraryChange, PeerError,
    ServerHandle,
};
use shoal_proto::mem::{MemListener, MemNetwork, MemStream, MemTransport};
use shoal_proto::{Connection, FileId, FileKey, FileMeta, Listener, PeerAddr, Transport};
use tempfile::TempDir;

const LEASE: Duration = Duration::from_secs(60);

fn addr(s: &str) -> PeerAddr {
    PeerAddr::new(s).unwrap()
}

fn meta(name: &str, seed: u8) -> FileMeta {
    FileMeta {
        name: name.into(),
        size: 100,
        chunk_size: 1024,
        id: FileId([seed; 32]),
    }
}

/// A connection to an address, and the switch that severs it.
type Cut = (PeerAddr, Arc<AtomicBool>);

/// A transport whose client connections to an address can all be severed at once, as a
/// killed index process would sever them (an in-process server that stops accepting keeps
/// serving the connections it already has). Every write is also reported, so a test can
/// wait for traffic without sleeping.
#[derive(Clone)]
struct Severable {
    inner: MemTransport,
    streams: Arc<Mutex<Vec<Cut>>>,
    writes: Sender<PeerAddr>,
}

impl Severable {
    fn new(inner: MemTransport) -> (Severable, Receiver<PeerAddr>) {
        let (writes, seen) = crossbeam_channel::unbounded();
        let transport = Severable {
            inner,
            streams: Arc::default(),
            writes,
        };
        (transport, seen)
    }

    fn sever(&self, to: &PeerAddr) {
        for (addr, cut) in self.streams.lock().unwrap().iter() {
            if addr == to {
                cut.store(true, Ordering::SeqCst);
            }
        }
    }
}

struct SeverableStream {
    inner: MemStream,
    to: PeerAddr,
    cut: Arc<AtomicBool>,
    writes: Sender<PeerAddr>,
}

impl SeverableStream {
    fn check(&self) -> io::Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "severed"));
        }
        Ok(())
    }
}

impl Read for SeverableStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.check()?;
        self.inner.read(buf)
    }
}

impl Write for SeverableStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        let _ = self.writes.send(self.to.clone());
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.inner.flush()
    }
}

impl Connection for SeverableStream {
    fn peer_addr(&self) -> io::Result<PeerAddr> {
        self.inner.peer_addr()
    }
    fn local_addr(&self) -> io::Result<PeerAddr> {
        self.inner.local_addr()
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_read_timeout(timeout)
    }
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_write_timeout(timeout)
    }
}

struct SeverableListener {
    inner: MemListener,
    transport: Severable,
}

impl Listener for SeverableListener {
    type Stream = SeverableStream;
    fn accept(&self) -> io::Result<(SeverableStream, PeerAddr)> {
        let (stream, from) = self.inner.accept()?;
        Ok((self.transport.wrap(stream, from.clone()), from))
    }
    fn local_addr(&self) -> io::Result<PeerAddr> {
        self.inner.local_addr()
    }
    fn set_accept_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_accept_timeout(timeout)
    }
}

impl Severable {
    fn wrap(&self, inner: MemStream, to: PeerAddr) -> SeverableStream {
        let cut = Arc::new(AtomicBool::new(false));
        self.streams
            .lock()
            .unwrap()
            .push((to.clone(), Arc::clone(&cut)));
        SeverableStream {
            inner,
            to,
            cut,
            writes: self.writes.clone(),
        }
    }
}

impl Transport for Severable {
    type Stream = SeverableStream;
    type Listener = SeverableListener;
    fn bind(&self, addr: &PeerAddr) -> io::Result<SeverableListener> {
        Ok(SeverableListener {
            inner: self.inner.bind(addr)?,
            transport: self.clone(),
        })
    }
    fn connect(&self, addr: &PeerAddr) -> io::Result<SeverableStream> {
        let stream = self.inner.connect(addr)?;
        Ok(self.wrap(stream, addr.clone()))
    }
}

/// Indexes at fixed addresses (so one can restart where it was), a folder, and the peer's
/// transport.
struct World {
    net: MemNetwork,
    clock: ManualClock,
    indexes: Vec<(PeerAddr, Option<ServerHandle>)>,
    peer: Severable,
    writes: Receiver<PeerAddr>,
    dir: TempDir,
    alice: PeerAddr,
}

impl World {
    fn new(indexes: &[&str]) -> World {
        let net = MemNetwork::new();
        let (peer, writes) = Severable::new(net.host("alice"));
        let mut world = World {
            clock: ManualClock::new(),
            indexes: Vec::new(),
            peer,
            writes,
            dir: tempfile::tempdir().unwrap(),
            alice: addr("alice:7000"),
            net,
        };
        for name in indexes {
            let at = addr(&format!("{name}:1024"));
            world.indexes.push((at, None));
            world.start_index(world.indexes.len() - 1);
        }
        world
    }

    /// Starts index `i` with an empty registry.
    fn start_index(&mut self, i: usize) {
        let at = self.indexes[i].0.clone();
        let store = MemoryStore::with_seed(1)
            .with_lease(LEASE)
            .with_clock(self.clock.clone());
        let handle = IndexServer::new(
            self.net.host(at.host()),
            store,
            // These tests register holders on other peers' behalf (a stale or planted
            // listing); the index must take announced hosts at their word for that.
            IndexServerConfig {
                trust_announced_host: true,
                ..IndexServerConfig::default()
            },
        )
        .spawn(&at)
        .unwrap();
        self.indexes[i].1 = Some(handle);
    }

    /// Index `i` goes away as a killed process would: no new connections, open ones cut.
    fn kill_index(&mut self, i: usize) {
        let at = self.indexes[i].0.clone();
        if let Some(handle) = self.indexes[i].1.take() {
            handle.shutdown();
        }
        self.peer.sever(&at);
    }

    /// Index `i` stops answering for a while (its registry stays).
    fn outage(&self, i: usize) {
        let at = &self.indexes[i].0;
        self.net.refuse(at);
        self.peer.sever(at);
    }

    fn addrs(&self) -> Vec<PeerAddr> {
        self.indexes.iter().map(|(a, _)| a.clone()).collect()
    }

    /// A client of index `i` alone.
    fn client(&self, i: usize) -> IndexClient<MemTransport> {
        IndexClient::new(self.net.host("observer"), vec![self.indexes[i].0.clone()])
    }

    /// The (name, id) pairs index `i` lists for alice.
    fn listed(&self, i: usize) -> BTreeSet<(String, FileId)> {
        let mut client = self.client(i);
        client
            .search("", 1000)
            .unwrap()
            .into_iter()
            .filter(|hit| {
                let (_, holders) = client.holders(&FileKey::Id(hit.file.id)).unwrap();
                holders.contains(&self.alice)
            })
            .map(|hit| (hit.file.name, hit.file.id))
            .collect()
    }

    fn write(&self, name: &str, bytes: &[u8]) {
        fs::write(self.dir.path().join(name), bytes).unwrap();
    }

    fn library(&self) -> Library {
        Library::open(self.dir.path(), 1024).unwrap()
    }

    fn announcer(&self, library: &Library) -> Announcer<Severable> {
        Announcer::start(
            self.peer.clone(),
            self.addrs(),
            self.alice.clone(),
            library,
            AnnouncerConfig {
                lease: LEASE,
                request_timeout: Duration::from_secs(10),
            },
        )
        .unwrap()
    }
}

fn pairs(library: &Library) -> BTreeSet<(String, FileId)> {
    library
        .files()
        .into_iter()
        .map(|m| (m.name, m.id))
        .collect()
}

fn statuses(round: Vec<(PeerAddr, IndexStatus)>) -> Vec<IndexStatus> {
    round.into_iter().map(|(_, s)| s).collect()
}

#[test]
fn announces_to_every_index_and_survives_losing_one() {
    let mut world = World::new(&["index-a", "index-b"]);
    world.write("song.ogg", &[1; 5000]);
    world.write("notes.txt", b"hello");
    let library = world.library();
    let announcer = world.announcer(&library);
    assert_eq!(
        statuses(announcer.status()),
        [
            IndexStatus::Registered { files: 2 },
            IndexStatus::Registered { files: 2 }
        ]
    );
    assert_eq!(world.listed(0), pairs(&library));
    assert_eq!(world.listed(1), pairs(&library));

    // Index A dies. A lookup over [A, B] fails over to B, which lists alice too.
    world.kill_index(0);
    let mut lookup = IndexClient::new(world.net.host("bob"), world.addrs());
    let (file, holder) = lookup.locate(&FileKey::Name("song.ogg".into())).unwrap();
    assert_eq!(
        (file.name.as_str(), holder),
        ("song.ogg", world.alice.clone())
    );
    assert_eq!(lookup.connected_index(), Some(&world.addrs()[1]));
    let round = statuses(announcer.tick());
    assert!(matches!(round[0], IndexStatus::Failed { .. }), "{round:?}");
    assert_eq!(round[1], IndexStatus::Renewed { files: 2 });

    // A comes back without its data: its answer to the next renewal is "who?", and alice
    // registers everything again.
    world.start_index(0);
    assert!(world.listed(0).is_empty());
    let round = statuses(announcer.tick());
    assert_eq!(
        round,
        [
            IndexStatus::Registered { files: 2 },
            IndexStatus::Renewed { files: 2 }
        ]
    );
    assert_eq!(world.listed(0), pairs(&library));
    assert_eq!(
        statuses(announcer.tick()),
        [
            IndexStatus::Renewed { files: 2 },
            IndexStatus::Renewed { files: 2 }
        ]
    );
}

#[test]
fn starting_retries_every_index_that_is_down_even_all_of_them() {
    let world = World::new(&["index-a", "index-b"]);
    world.write("a.bin", &[7; 100]);
    let library = world.library();

    world.net.refuse(&world.addrs()[0]);
    let announcer = world.announcer(&library);
    let status = statuses(announcer.status());
    assert!(
        matches!(status[0], IndexStatus::Failed { .. }),
        "{status:?}"
    );
    assert_eq!(status[1], IndexStatus::Registered { files: 1 });
    // Still down at the next heartbeat: nothing changes.
    assert!(matches!(announcer.tick()[0].1, IndexStatus::Failed { .. }));

    world.net.heal(&world.addrs()[0]);
    assert_eq!(
        statuses(announcer.tick()),
        [
            IndexStatus::Registered { files: 1 },
            IndexStatus::Renewed { files: 1 }
        ]
    );
    assert_eq!(world.listed(0), pairs(&library));
    drop(announcer);

    // No index at all: it starts anyway (the peer serves), and registers once one is back.
    for at in world.addrs() {
        world.net.refuse(&at);
    }
    let announcer = Announcer::start(
        world.peer.clone(),
        world.addrs(),
        world.alice.clone(),
        &library,
        AnnouncerConfig::default(),
    )
    .unwrap();
    let status = statuses(announcer.status());
    assert!(
        status
            .iter()
            .all(|s| matches!(s, IndexStatus::Failed { .. })),
        "{status:?}"
    );
    world.net.heal(&world.addrs()[1]);
    assert_eq!(
        statuses(announcer.tick())[1],
        IndexStatus::Registered { files: 1 }
    );
    // Only an empty list is refused at start.
    let err = Announcer::start(
        world.peer.clone(),
        Vec::new(),
        world.alice.clone(),
        &library,
        AnnouncerConfig::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, PeerError::NoIndexAccepted { .. }), "{err}");
}

#[test]
fn heartbeats_keep_the_lease_and_a_lapsed_one_is_registered_again() {
    let world = World::new(&["index"]);
    world.write("a.bin", &[7; 100]);
    let library = world.library();
    let announcer = world.announcer(&library);
    let key = FileKey::Name("a.bin".into());
    // A heartbeat every third of the lease: listed long after the first lease ended.
    for _ in 0..10 {
        world.clock.advance(LEASE / 3);
        assert_eq!(
            statuses(announcer.tick()),
            [IndexStatus::Renewed { files: 1 }]
        );
    }
    assert_eq!(
        world.client(0).holders(&key).unwrap().1,
        vec![world.alice.clone()]
    );

    // Heartbeats lost for a whole lease (a long pause): lookups drop alice at once, and
    // the next heartbeat puts her back.
    world.clock.advance(LEASE);
    assert!(matches!(
        world.client(0).holders(&key),
        Err(IndexError::NotFound { .. })
    ));
    assert_eq!(
        statuses(announcer.tick()),
        [IndexStatus::Registered { files: 1 }]
    );
    assert_eq!(
        world.client(0).holders(&key).unwrap().1,
        vec![world.alice.clone()]
    );
}

#[test]
fn folder_changes_reach_every_index() {
    let world = World::new(&["index-a", "index-b"]);
    let library = world.library();
    let announcer = world.announcer(&library);
    let listed = || [world.listed(0), world.listed(1)];
    let expect = |files: &[&FileMeta]| {
        let set: BTreeSet<_> = files.iter().map(|m| (m.name.clone(), m.id)).collect();
        [set.clone(), set]
    };

    let (a, b, c) = (meta("a", 1), meta("b", 2), meta("c", 3));
    announcer.apply(&LibraryChange {
        added: vec![a.clone(), b.clone(), c.clone()],
        ..LibraryChange::default()
    });
    assert_eq!(listed(), expect(&[&a, &b, &c]));

    // b's content changes; c is renamed to d; a second name shares a's content.
    let b2 = meta("b", 4);
    let d = meta("d", 3);
    let a_copy = meta("a-copy", 1);
    announcer.apply(&LibraryChange {
        added: vec![d.clone(), a_copy.clone()],
        changed: vec![ChangedFile {
            old: b.clone(),
            new: b2.clone(),
        }],
        removed: vec![c.clone()],
    });
    assert_eq!(listed(), expect(&[&a, &a_copy, &b2, &d]));

    // Removing one of two names with one content keeps the other listed (unregistering
    // goes by id).
    announcer.apply(&LibraryChange {
        removed: vec![a.clone()],
        ..LibraryChange::default()
    });
    assert_eq!(listed(), expect(&[&a_copy, &b2, &d]));
    assert_eq!(
        statuses(announcer.tick()),
        [
            IndexStatus::Renewed { files: 3 },
            IndexStatus::Renewed { files: 3 }
        ]
    );
}

#[test]
fn an_index_that_missed_a_change_is_brought_back_in_step() {
    let world = World::new(&["index-a", "index-b"]);
    world.write("old.bin", &[1; 100]);
    let library = world.library();
    let announcer = world.announcer(&library);
    let old = library.files()[0].clone();

    // A is unreachable while old.bin is replaced by new.bin: A still lists old.bin, and
    // renewing would keep that stale listing alive forever.
    world.outage(0);
    let new = meta("new.bin", 9);
    announcer.apply(&LibraryChange {
        added: vec![new.clone()],
        removed: vec![old.clone()],
        ..LibraryChange::default()
    });
    assert_eq!(
        world.listed(1),
        BTreeSet::from([(new.name.clone(), new.id)])
    );
    world.net.heal(&world.addrs()[0]);
    assert_eq!(
        world.listed(0),
        BTreeSet::from([(old.name.clone(), old.id)])
    );
    assert_eq!(
        statuses(announcer.tick()),
        [
            IndexStatus::Registered { files: 1 },
            IndexStatus::Renewed { files: 1 }
        ]
    );
    assert_eq!(
        world.listed(0),
        BTreeSet::from([(new.name.clone(), new.id)])
    );
}

#[test]
fn an_index_listing_other_files_is_repaired_on_the_second_mismatch() {
    let world = World::new(&["index"]);
    world.write("a.bin", &[1; 100]);
    let library = world.library();
    let announcer = world.announcer(&library);
    // Someone (a download registered a moment before the watcher reports it, or a stale
    // registration) adds a listing the announcer does not know.
    let stray = meta("stray", 5);
    world.client(0).register(&world.alice, &[stray]).unwrap();
    // Once may be a race: left alone.
    assert_eq!(
        statuses(announcer.tick()),
        [IndexStatus::Renewed { files: 2 }]
    );
    // Twice is not: everything is registered afresh.
    assert_eq!(
        statuses(announcer.tick()),
        [IndexStatus::Registered { files: 1 }]
    );
    assert_eq!(world.listed(0), pairs(&library));
}

#[test]
fn stopping_unregisters_from_every_index_at_once() {
    let world = World::new(&["index-a", "index-b"]);
    world.write("a.bin", &[1; 100]);
    world.write("b.bin", &[2; 100]);
    let library = world.library();
    let announcer = world.announcer(&library);
    let sink = announcer.change_sink();
    assert_eq!(
        statuses(announcer.shutdown()),
        [
            IndexStatus::Unregistered { removed: 2 },
            IndexStatus::Unregistered { removed: 2 }
        ]
    );
    assert!(world.listed(0).is_empty() && world.listed(1).is_empty());
    // A change arriving late (the watcher stops after) registers nothing.
    sink(LibraryChange {
        added: vec![meta("late", 3)],
        ..LibraryChange::default()
    });
    assert!(world.listed(0).is_empty() && world.listed(1).is_empty());

    // Dropping does the same.
    let announcer = world.announcer(&library);
    assert_eq!(world.listed(0).len(), 2);
    drop(announcer);
    assert!(world.listed(0).is_empty() && world.listed(1).is_empty());
}

#[test]
fn the_heartbeat_thread_renews_until_stopped() {
    let world = World::new(&["index"]);
    world.write("a.bin", &[1; 100]);
    let library = world.library();
    let mut announcer = Announcer::start(
        world.peer.clone(),
        world.addrs(),
        world.alice.clone(),
        &library,
        AnnouncerConfig {
            // A heartbeat every 10 ms.
            lease: Duration::from_millis(30),
            request_timeout: Duration::from_secs(10),
        },
    )
    .unwrap();
    while world.writes.try_recv().is_ok() {}
    announcer.spawn_heartbeat().unwrap();
    // Three heartbeats (one write each), each waited for as an event, with a bound.
    for _ in 0..3 {
        let to = world.writes.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(to, world.addrs()[0]);
    }
    assert!(matches!(
        announcer.status()[0].1,
        IndexStatus::Renewed { files: 1 }
    ));
    // Shutdown stops the thread (the join returns) and unregisters.
    announcer.shutdown();
    assert!(world.listed(0).is_empty());
}

#[test]
fn a_peer_adapts_to_an_index_lease_shorter_than_its_own() {
    let net = MemNetwork::new();
    let spawn = |host: &str, lease: Duration| {
        let store = MemoryStore::with_seed(1).with_lease(lease);
        IndexServer::new(net.host(host), store, IndexServerConfig::default())
            .spawn(&addr(&format!("{host}:1024")))
            .unwrap()
    };
    let short = spawn("short", Duration::from_secs(3));
    let long = spawn("long", Duration::from_secs(600));
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("a.bin"), [7; 100]).unwrap();
    let library = Library::open(dir.path(), 1024).unwrap();
    let config = AnnouncerConfig {
        lease: LEASE,
        ..AnnouncerConfig::default()
    };
    assert_eq!(config.heartbeat_interval(), Duration::from_secs(20));
    let announcer = Announcer::start(
        net.host("alice"),
        vec![short.addr().clone(), long.addr().clone()],
        addr("alice:7000"),
        &library,
        config,
    )
    .unwrap();
    // The shortest lease told wins: a third of 3 s, not of the peer's own 60 s.
    assert_eq!(announcer.heartbeat_interval(), Duration::from_secs(1));
    // A longer lease than the peer's own changes nothing.
    drop(announcer);
    let announcer = Announcer::start(
        net.host("alice"),
        vec![long.addr().clone()],
        addr("alice:7000"),
        &library,
        AnnouncerConfig {
            lease: LEASE,
            ..AnnouncerConfig::default()
        },
    )
    .unwrap();
    assert_eq!(announcer.heartbeat_interval(), Duration::from_secs(20));
}
