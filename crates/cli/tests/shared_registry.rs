//! Index servers sharing one registry in Redis (issue 11), whole system: a private
//! redis-server, real `shoal index --store redis://...` processes (or, for the Redis outage,
//! an index server in this process on the in-memory network), real clients and peers.
//!
//! - two servers on one Redis are interchangeable: a peer announces through one, search and
//!   lookups through the other agree, and when its server dies the peer carries on through
//!   the other;
//! - one server killed under load: no acknowledged registration is lost;
//! - Redis killed and restarted under load: only typed "registry unavailable" answers
//!   meanwhile (one log line per outage), full service after, refilled by the next heartbeat.
//!
//! Without redis-server installed every test here is skipped with a loud message (`.ci/run`
//! installs it, so CI never skips).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod process;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use process::line_channel;
use shoal_index::{
    IndexClient, IndexError, IndexServer, IndexServerConfig, LocalRedis, RedisOptions, RedisStore,
    Store,
};
use shoal_peer::{Announcer, AnnouncerConfig, IndexStatus, Library};
use shoal_proto::mem::MemNetwork;
use shoal_proto::server::ServerHandle;
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};

/// Bound on any single wait; generous for a loaded 2-core CI machine.
const WAIT: Duration = Duration::from_secs(60);

fn redis(test: &str) -> Option<LocalRedis> {
    if !LocalRedis::available() {
        // Straight to the terminal: the test harness captures `eprintln!` of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED {test}: redis-server is not installed \
             (apt-get install redis-server; .ci/run installs it) ***\n"
        );
        return None;
    }
    Some(LocalRedis::start().unwrap())
}

fn addr(s: &str) -> PeerAddr {
    PeerAddr::new(s).unwrap()
}

fn store(redis: &LocalRedis, prefix: &str) -> RedisStore {
    let options = RedisOptions {
        prefix: prefix.into(),
        timeout: Duration::from_millis(500),
        ..RedisOptions::default()
    };
    RedisStore::open(&redis.url(), options).unwrap()
}

fn serve<S: Store>(net: &MemNetwork, host: &str, store: S) -> ServerHandle {
    IndexServer::new(net.host(host), store, IndexServerConfig::default())
        .spawn(&addr(&format!("{host}:1024")))
        .unwrap()
}

fn file(n: u32) -> FileMeta {
    let mut id = [7u8; 32];
    id[..4].copy_from_slice(&n.to_le_bytes());
    FileMeta {
        name: format!("file-{n}.bin"),
        size: u64::from(n) + 1,
        chunk_size: 1024,
        id: FileId(id),
    }
}

fn library(files: &[(&str, usize)]) -> (tempfile::TempDir, Library) {
    let dir = tempfile::tempdir().unwrap();
    for (name, len) in files {
        std::fs::write(dir.path().join(name), vec![b'x'; *len]).unwrap();
    }
    let library = Library::open(dir.path(), 1024).unwrap();
    (dir, library)
}

/// A running `shoal` server process, killed (SIGKILL) when dropped; stderr lines arrive on
/// a channel.
struct Process {
    child: Child,
    addr: String,
    log: Receiver<String>,
}

impl Process {
    fn start(args: &[&str], rust_log: &str) -> Process {
        let mut child = process::shoal()
            .args(args)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = line_channel(child.stdout.take().unwrap());
        let log = line_channel(child.stderr.take().unwrap());
        let first = stdout
            .recv_timeout(WAIT)
            .expect("the server printed nothing in time");
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_string();
        // Keep stdout drained.
        thread::spawn(move || while stdout.recv().is_ok() {});
        Process { child, addr, log }
    }

    /// `shoal index` on the shared registry at `redis` under `prefix`.
    fn index(redis: &LocalRedis, prefix: &str) -> Process {
        let url = redis.url();
        Process::start(
            &[
                "index",
                "--listen",
                "127.0.0.1:0",
                "--store",
                &url,
                "--redis-prefix",
                prefix,
            ],
            "shoal_index=debug",
        )
    }

    fn peer_addr(&self) -> PeerAddr {
        addr(&self.addr)
    }

    /// Log lines so far.
    fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// Waits (bounded, [`WAIT`] in all, however many other lines come) for a log line
    /// containing `text`; returns the lines up to it.
    fn wait_for_log(&self, text: &str) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let line = self
                .log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no log line with {text:?} in time: {seen:#?}"));
            let found = line.contains(text);
            seen.push(line);
            if found {
                return seen;
            }
        }
    }

    /// `kill -9`.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn shoal(args: &[&str]) -> std::process::Output {
    process::shoal()
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_peer_announces_once_to_two_servers_on_one_redis_and_moves_on_when_its_server_dies() {
    let Some(redis) = redis("a_peer_announces_once_to_two_servers_on_one_redis...") else {
        return;
    };
    let mut a = Process::index(&redis, "swarm");
    let b = Process::index(&redis, "swarm");
    let shared = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(shared.path().join("Song.ogg"), &bytes).unwrap();
    let both = format!("{},{}", a.addr, b.addr);
    // A lease of 3 s: the peer renews every second.
    let _peer = Process::start(
        &[
            "peer",
            "--dir",
            shared.path().to_str().unwrap(),
            "--index",
            &both,
            "--lease",
            "3",
            "--no-console",
            "--listen",
            "127.0.0.1:0",
        ],
        "warn",
    );
    // Announced once, through a (given first); b has taken no registration.
    a.wait_for_log("registered 1 files");
    // search and get through b find what went in through a.
    let found = shoal(&["search", "song", "--index", &b.addr, "--json"]);
    assert!(found.status.success());
    let found = String::from_utf8(found.stdout).unwrap();
    assert!(
        found.contains("\"holders\":1") && found.contains("Song.ogg"),
        "{found}"
    );
    let out = tempfile::tempdir().unwrap();
    let got = shoal(&[
        "get",
        "Song.ogg",
        "--index",
        &b.addr,
        "--no-share",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert_eq!(std::fs::read(out.path().join("Song.ogg")).unwrap(), bytes);
    // a dies: the peer's heartbeat moves to b and renews there, without registering again.
    a.kill();
    let before = b.wait_for_log("renewed its lease");
    assert!(
        !before.iter().any(|l| l.contains("registered")),
        "b took a registration: {before:#?}"
    );
    let got = shoal(&[
        "get",
        "Song.ogg",
        "--index",
        &both,
        "--no-share",
        "--out",
        out.path().join("again").to_str().unwrap(),
    ]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    assert!(!b.log_lines().iter().any(|l| l.contains(" registered ")));
}

#[test]
fn killing_one_of_two_servers_under_load_loses_no_acknowledged_registration() {
    let Some(redis) = redis("killing_one_of_two_servers_under_load...") else {
        return;
    };
    const CLIENTS: u32 = 4;
    const KILL_AFTER: usize = 300;
    const AFTER_KILL: usize = 300;
    let mut a = Process::index(&redis, "load");
    let b = Process::index(&redis, "load");
    let both = vec![a.peer_addr(), b.peer_addr()];
    let acked = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let after_kill = Arc::new(AtomicUsize::new(0));
    let (done_tx, done) = channel();
    for c in 0..CLIENTS {
        let mut client = IndexClient::new(process::tls_client(), both.clone())
            .with_timeout(Duration::from_secs(10));
        let (acked, killed, after_kill, done_tx) = (
            Arc::clone(&acked),
            Arc::clone(&killed),
            Arc::clone(&after_kill),
            done_tx.clone(),
        );
        thread::spawn(move || {
            let holder = addr(&format!("127.0.0.1:{}", 7000 + c));
            let mut mine = Vec::new();
            let mut failures = 0;
            for i in 0..100_000u32 {
                let f = file(c * 1_000_000 + i);
                match client.register(&holder, std::slice::from_ref(&f)) {
                    Ok(1) => {
                        mine.push(f);
                        acked.fetch_add(1, Ordering::SeqCst);
                        if killed.load(Ordering::SeqCst)
                            && after_kill.fetch_add(1, Ordering::SeqCst) >= AFTER_KILL
                        {
                            break;
                        }
                    }
                    // A request in flight when its server died, retried through b: the
                    // first attempt had already been stored.
                    Ok(0) => mine.push(f),
                    Ok(n) => panic!("one new file counted {n} registrations"),
                    // Not acknowledged.
                    Err(e) => {
                        failures += 1;
                        assert!(failures < 10, "client {c} keeps failing: {e}");
                    }
                }
            }
            done_tx.send((holder, mine)).unwrap();
        });
    }
    drop(done_tx);
    let deadline = Instant::now() + WAIT;
    while acked.load(Ordering::SeqCst) < KILL_AFTER {
        assert!(Instant::now() < deadline, "no load");
        thread::yield_now();
    }
    a.kill();
    killed.store(true, Ordering::SeqCst);
    let mut through_b = IndexClient::new(process::tls_client(), vec![b.peer_addr()]);
    let mut total = 0;
    for _ in 0..CLIENTS {
        let (holder, mine) = done.recv_timeout(WAIT).unwrap();
        for f in &mine {
            let (meta, holders) = through_b.holders(&FileKey::Id(f.id)).unwrap();
            assert_eq!((&meta, holders), (f, vec![holder.clone()]));
        }
        total += mine.len();
    }
    assert!(total >= KILL_AFTER + AFTER_KILL, "{total}");
}

/// Warnings logged by this test binary, for counting outage lines.
fn warnings() -> &'static Mutex<Vec<String>> {
    static LOG: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    LOG.get_or_init(|| Mutex::new(Vec::new()))
}

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            warnings().lock().unwrap().push(record.args().to_string());
        }
    }
    fn flush(&self) {}
}

#[test]
fn redis_killed_and_restarted_under_load_answers_unavailable_then_serves_again() {
    let Some(mut redis) = redis("redis_killed_and_restarted_under_load...") else {
        return;
    };
    let _ = log::set_logger(&Capture);
    log::set_max_level(log::LevelFilter::Warn);
    let net = MemNetwork::new();
    let index = serve(&net, "index", store(&redis, "outage"));
    let (_dir, library) = library(&[("kept.bin", 100)]);
    let peer = addr("peer:7000");
    let announcer = Announcer::start(
        net.host("peer"),
        vec![index.addr().clone()],
        peer.clone(),
        &library,
        AnnouncerConfig::default(),
    )
    .unwrap();

    // Phase: 0 before the kill, 2 while Redis is down, 4 after the restart; 1 and 3 are
    // the kill and the restart themselves (a request then may see either side).
    let phase = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<[BTreeSet<&'static str>; 5]>> = Arc::default();
    let counts: Arc<[AtomicUsize; 5]> = Arc::new(Default::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..3u32 {
        let mut client = IndexClient::new(net.host(&format!("c{c}")), vec![index.addr().clone()])
            .with_timeout(Duration::from_secs(5));
        let (phase, seen, counts, stop) = (
            Arc::clone(&phase),
            Arc::clone(&seen),
            Arc::clone(&counts),
            Arc::clone(&stop),
        );
        clients.push(thread::spawn(move || {
            let holder = addr(&format!("c{c}:7000"));
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let f = file(c * 1_000_000 + i);
                let p = phase.load(Ordering::SeqCst);
                let outcome = client
                    .register(&holder, std::slice::from_ref(&f))
                    .and_then(|_| client.locate(&FileKey::Id(f.id)));
                let what = match outcome {
                    // Nothing wrong served: a lookup finds what was just registered.
                    Ok((meta, found)) => {
                        assert_eq!((meta, found), (f, holder.clone()));
                        "ok"
                    }
                    Err(IndexError::RegistryUnavailable(_)) => "unavailable",
                    // Registered just before Redis came back empty.
                    Err(IndexError::NotFound { .. }) if p > 0 => "not found",
                    Err(e) => panic!("client {c}: {e}"),
                };
                // A request that spanned a kill or a restart belongs to neither phase.
                if phase.load(Ordering::SeqCst) == p {
                    seen.lock().unwrap()[p].insert(what);
                    counts[p].fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    let wait_for = |p: usize, n: usize| {
        let deadline = Instant::now() + WAIT;
        while counts[p].load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "phase {p} stalled");
            thread::yield_now();
        }
    };
    wait_for(0, 100);
    phase.store(1, Ordering::SeqCst);
    redis.kill();
    phase.store(2, Ordering::SeqCst);
    wait_for(2, 100);
    // The announcer's heartbeat meanwhile fails, typed.
    let round = announcer.tick();
    assert!(
        matches!(&round[..], [(_, IndexStatus::Failed { reason })] if reason.contains("registry is unavailable")),
        "{round:?}"
    );
    phase.store(3, Ordering::SeqCst);
    redis.restart().unwrap();
    phase.store(4, Ordering::SeqCst);
    let deadline = Instant::now() + WAIT;
    while !seen.lock().unwrap()[4].contains("ok") {
        assert!(Instant::now() < deadline, "no service after the restart");
        thread::yield_now();
    }
    // Redis came back empty: the next heartbeat registers the peer again.
    let mut client = IndexClient::new(net.host("checker"), vec![index.addr().clone()]);
    let key = FileKey::Name("kept.bin".into());
    assert!(matches!(
        client.locate(&key),
        Err(IndexError::NotFound { .. })
    ));
    let round = announcer.tick();
    assert!(
        matches!(&round[..], [(_, IndexStatus::Registered { files: 1 })]),
        "{round:?}"
    );
    assert_eq!(client.locate(&key).unwrap().1, peer);
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], BTreeSet::from(["ok"]));
    assert!(seen[2].contains("unavailable"), "{:?}", seen[2]);
    assert!(!seen[2].contains("ok"), "{:?}", seen[2]);
    // One line when the outage began and one when it ended, however many requests failed.
    let target = format!("redis {}/0", redis.addr());
    let lines: Vec<String> = warnings()
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(&target))
        .cloned()
        .collect();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[0].starts_with("registry unavailable"), "{lines:#?}");
    assert!(
        lines[1].starts_with("registry available again"),
        "{lines:#?}"
    );
}

/// Holders are keys across the shared registry: a holder announced through one index is
/// bound to its node id at both, so an impostor that takes its port after it died is
/// refused at the other index, and a download through that other index names it.
#[test]
fn an_impostor_on_a_holders_port_is_refused_and_named_through_the_other_index() {
    let Some(redis) = redis("an_impostor_on_a_holders_port_is_refused_and_named...") else {
        return;
    };
    let a = Process::index(&redis, "keys");
    let b = Process::index(&redis, "keys");
    let keys = tempfile::tempdir().unwrap();
    let (real_dir, fake_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(real_dir.path().join("song.ogg"), &bytes).unwrap();
    std::fs::write(fake_dir.path().join("song.ogg"), &bytes).unwrap();
    let id = |name: &str| {
        let path = keys.path().join(name);
        let (identity, _) = shoal_proto::tls::Identity::load_or_create(&path).unwrap();
        (path, identity.node_id())
    };
    let ((real_key, real), (fake_key, fake)) = (id("real.pem"), id("fake.pem"));
    let peer = |dir: &tempfile::TempDir, key: &std::path::Path, index: &str, listen: &str| {
        Process::start(
            &[
                "peer",
                "--dir",
                dir.path().to_str().unwrap(),
                "--index",
                index,
                "--identity",
                key.to_str().unwrap(),
                "--no-console",
                "--listen",
                listen,
            ],
            "warn",
        )
    };
    let mut holder = peer(&real_dir, &real_key, &a.addr, "127.0.0.1:0");
    a.wait_for_log("registered 1 files");
    // The real holder dies without a word (its registration stays until its lease lapses);
    // another key takes its port and announces through the other index.
    holder.kill();
    let impostor = peer(&fake_dir, &fake_key, &b.addr, &holder.addr);
    assert_eq!(impostor.addr, holder.addr);
    let refused = b.wait_for_log("it is registered by node");
    assert!(
        refused
            .last()
            .is_some_and(|l| l.contains(&format!("registered by node {real}"))),
        "{refused:#?}"
    );

    let out = tempfile::tempdir().unwrap();
    let got = shoal(&[
        "get",
        "song.ogg",
        "--index",
        &b.addr,
        "--no-share",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(!got.status.success());
    let stderr = String::from_utf8(got.stderr).unwrap();
    assert!(
        stderr.contains(&format!("presented node id {fake}, index said {real}")),
        "{stderr}"
    );
}
