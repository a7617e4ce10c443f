//! Durability end to end: the real `shoal index --data DIR` binary, several clients
//! registering (and unregistering) files as fast as they can, `kill -9` in the middle of it,
//! a restart on the same folder: every acknowledged change is there.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;
use std::time::Duration;

use shoal_index::{IndexClient, IndexError};
use shoal_proto::tcp::TcpTransport;
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};
use tempfile::TempDir;

mod process;
use process::{WAIT, line_channel};

const CLIENTS: usize = 6;
/// Acknowledged registrations before the kill: well into the load.
const KILL_AFTER: usize = 3000;
/// A client stops by itself after this many requests, should the kill never come.
const MAX_REQUESTS: usize = 200_000;
const FILES_PER_REQUEST: usize = 2;

/// A running `shoal index`, killed (SIGKILL) when dropped.
struct Index {
    child: Child,
    addr: PeerAddr,
    /// Keeps stdout drained.
    _lines: Receiver<String>,
}

impl Index {
    fn start(dir: &Path) -> Index {
        let mut child = process::shoal()
            .args(["index", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = line_channel(child.stdout.take().unwrap());
        let first = lines
            .recv_timeout(WAIT)
            .expect("the index printed nothing in time");
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        Index {
            child,
            addr: PeerAddr::new(addr).unwrap(),
            _lines: lines,
        }
    }

    fn client(&self) -> IndexClient<shoal_proto::tls::TlsTransport<TcpTransport>> {
        IndexClient::new(process::tls_client(), vec![self.addr.clone()])
            .with_timeout(Duration::from_secs(10))
    }

    /// `kill -9`: no chance to flush or say goodbye.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn holder(c: usize) -> PeerAddr {
    PeerAddr::new(format!("127.0.0.1:{}", 20_000 + c)).unwrap()
}

fn file(c: usize, n: usize) -> FileMeta {
    let mut id = [0u8; 32];
    id[0] = c as u8;
    id[1..9].copy_from_slice(&(n as u64).to_le_bytes());
    id[31] = 0x5a;
    FileMeta {
        name: format!("c{c}-{n}.bin"),
        size: 1000 + n as u64,
        chunk_size: 1 << 20,
        id: FileId(id),
    }
}

/// What a client was told: these changes are durable.
enum Ack {
    Registered(usize, usize),
    /// Sent before the request: if the kill comes before the answer, either state is right.
    Unregistering(usize, usize),
    Unregistered(usize, usize),
}

/// Everything the clients were told, and the unregistrations they started.
#[derive(Default)]
struct Seen {
    registered: BTreeSet<(usize, usize)>,
    unregistering: BTreeSet<(usize, usize)>,
    unregistered: BTreeSet<(usize, usize)>,
}

impl Seen {
    fn record(&mut self, ack: Ack) {
        let (set, key) = match ack {
            Ack::Registered(c, n) => (&mut self.registered, (c, n)),
            Ack::Unregistering(c, n) => (&mut self.unregistering, (c, n)),
            Ack::Unregistered(c, n) => (&mut self.unregistered, (c, n)),
        };
        set.insert(key);
    }
}

/// Registers files two per request as fast as the index answers; client 0 also unregisters
/// every 7th file it registered. Stops at the first error (the kill).
fn load(index_addr: PeerAddr, c: usize, acks: Sender<Ack>) {
    let mut client = IndexClient::new(process::tls_client(), vec![index_addr])
        .with_timeout(Duration::from_secs(10));
    let me = holder(c);
    for request in 0..MAX_REQUESTS {
        let first = request * FILES_PER_REQUEST;
        let files: Vec<FileMeta> = (first..first + FILES_PER_REQUEST)
            .map(|n| file(c, n))
            .collect();
        match client.register(&me, &files) {
            Ok(added) => assert_eq!(added as usize, FILES_PER_REQUEST),
            Err(_) => return,
        }
        for n in first..first + FILES_PER_REQUEST {
            if acks.send(Ack::Registered(c, n)).is_err() {
                return;
            }
        }
        if c == 0 && request % 7 == 3 {
            if acks.send(Ack::Unregistering(c, first)).is_err() {
                return;
            }
            match client.unregister(&me, &[file(c, first).id]) {
                Ok(removed) => assert_eq!(removed, 1),
                Err(_) => return,
            }
            if acks.send(Ack::Unregistered(c, first)).is_err() {
                return;
            }
        }
    }
}

#[test]
fn every_acknowledged_registration_survives_kill_9() {
    let data = TempDir::new().unwrap();
    let index = Index::start(data.path());

    let (tx, acks) = channel();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let addr = index.addr.clone();
            let tx = tx.clone();
            thread::spawn(move || load(addr, c, tx))
        })
        .collect();
    drop(tx);

    let mut seen = Seen::default();
    while seen.registered.len() < KILL_AFTER {
        seen.record(acks.recv_timeout(WAIT).expect("the clients stalled"));
    }
    // Mid-load: every client is still sending.
    index.kill();
    for client in clients {
        client.join().unwrap();
    }
    // The clients ended (their channel closed): everything acknowledged is in the channel.
    for ack in acks.iter() {
        seen.record(ack);
    }
    let Seen {
        registered,
        unregistering,
        unregistered,
    } = seen;
    assert!(!unregistered.is_empty());

    let index = Index::start(data.path());
    let mut client = index.client();
    for &(c, n) in &registered {
        let key = FileKey::Id(file(c, n).id);
        let found = client.holders(&key);
        if unregistering.contains(&(c, n)) && !unregistered.contains(&(c, n)) {
            // Cut off mid-request: registered or not, both are right.
            continue;
        }
        if unregistered.contains(&(c, n)) {
            assert!(
                matches!(found, Err(IndexError::NotFound { .. })),
                "c{c}-{n} was unregistered (acknowledged) but is listed after the restart"
            );
        } else {
            let (meta, holders) = found.unwrap_or_else(|e| {
                panic!("c{c}-{n} was acknowledged but is gone after kill -9: {e}")
            });
            assert_eq!(meta, file(c, n));
            assert_eq!(holders, vec![holder(c)]);
        }
    }
    // And the restarted index takes new registrations.
    assert_eq!(client.register(&holder(99), &[file(99, 0)]).unwrap(), 1);
    index.kill();
}
