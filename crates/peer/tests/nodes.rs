//! Holders are keys: a downloader checks that each holder it reaches presents the node id
//! the index gave for its address, and drops an impostor (another key on the address, or a
//! lying index). Each test runs over real TLS and over the `Claimed` stand-in (see
//! `index/tests/support/keys.rs`), on the in-memory network.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "../../index/tests/support/keys.rs"]
mod keys;

use std::fs;
use std::path::PathBuf;

use keys::{ClaimedKeys, Keys, TlsKeys};
use shoal_index::{IndexClient, IndexServer, IndexServerConfig, MemoryStore, ServerHandle};
use shoal_peer::{
    DownloadOutcome, DownloadReport, Downloader, DownloaderConfig, DropReason, Library, PeerError,
    PeerServer, PeerServerConfig, WrongNode,
};
use shoal_proto::mem::MemNetwork;
use shoal_proto::{FileKey, PeerAddr};
use tempfile::TempDir;

const CHUNK: u32 = 16384;
const SIZE: usize = 200_000;

fn addr(s: &str) -> PeerAddr {
    PeerAddr::new(s).unwrap()
}

fn data() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 31 + i / 97) as u8).collect()
}

struct World<K: Keys> {
    keys: K,
    net: MemNetwork,
    index: ServerHandle,
    tmp: TempDir,
}

struct Holder {
    addr: PeerAddr,
    _server: ServerHandle,
}

impl<K: Keys> World<K> {
    fn new(keys: K) -> World<K> {
        let net = MemNetwork::new();
        let index = IndexServer::new(
            keys.transport(&net, "index", 99),
            MemoryStore::with_seed(1),
            IndexServerConfig::default(),
        )
        .spawn(&addr("index:0"))
        .unwrap();
        World {
            keys,
            net,
            index,
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    fn folder(&self, name: &str) -> PathBuf {
        let dir = self.tmp.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A holder on `host` sharing `a.bin`, serving as node `serves` and registered with the
    /// index as node `registers` (`None`: without an id).
    fn holder(&self, host: &str, serves: u8, registers: Option<u8>) -> Holder {
        let dir = self.folder(host);
        fs::write(dir.join("a.bin"), data()).unwrap();
        let library = Library::open(&dir, CHUNK).unwrap();
        let server = PeerServer::new(
            self.keys.transport(&self.net, host, serves),
            library.clone(),
            PeerServerConfig::default(),
        )
        .spawn(&addr(&format!("{host}:0")))
        .unwrap();
        let addr = server.addr().clone();
        let transport = match registers {
            Some(who) => self.keys.transport(&self.net, host, who),
            None => self
                .keys
                .anonymous(&self.net, host)
                .expect("a transport that can prove no id"),
        };
        IndexClient::new(transport, vec![self.index.addr().clone()])
            .register(&addr, &library.files())
            .unwrap();
        Holder {
            addr,
            _server: server,
        }
    }

    fn downloader(&self, seed: u64) -> Downloader<K::T> {
        Downloader::new(
            self.keys.transport(&self.net, "bob", 50),
            vec![self.index.addr().clone()],
            &self.folder(&format!("out{seed}")),
            DownloaderConfig {
                seed: Some(seed),
                share: false,
                ..DownloaderConfig::default()
            },
        )
    }
}

fn downloaded(outcome: DownloadOutcome) -> DownloadReport {
    match outcome {
        DownloadOutcome::Downloaded(report) => report,
        other => panic!("expected a download, got {other:?}"),
    }
}

fn key() -> FileKey {
    FileKey::Name("a.bin".into())
}

#[test]
fn an_impostor_on_a_holders_address_is_dropped_and_the_others_finish() {
    an_impostor_is_dropped(World::new(TlsKeys::default()));
    an_impostor_is_dropped(World::new(ClaimedKeys));
}

fn an_impostor_is_dropped<K: Keys>(world: World<K>) {
    let node = |who| world.keys.node(who);
    let a = world.holder("a", 1, Some(1));
    let b = world.holder("b", 2, Some(2));
    // Registered as node 3, but whoever answers on its address presents node 66.
    let c = world.holder("c", 66, Some(3));
    let wrong = WrongNode {
        addr: c.addr.clone(),
        presented: node(66),
        expected: node(3),
    };
    assert_eq!(
        wrong.to_string(),
        format!(
            "holder {} presented node id {}, index said {}",
            c.addr,
            node(66),
            node(3)
        )
    );
    for seed in 0..6 {
        let before = world.net.stats(&c.addr).connections;
        let report = downloaded(world.downloader(seed).fetch(&key()).unwrap());
        assert_eq!(fs::read(report.path.as_ref().unwrap()).unwrap(), data());
        let impostor = report
            .holders
            .iter()
            .find(|h| h.holder == c.addr)
            .expect("the impostor is reported");
        assert_eq!(impostor.bytes, 0, "seed {seed}");
        assert_eq!(impostor.node, Some(node(3)));
        assert_eq!(
            impostor.dropped,
            Some(DropReason::WrongNode(wrong.clone())),
            "seed {seed}"
        );
        let reason = impostor.dropped.as_ref().unwrap().to_string();
        assert_eq!(
            reason,
            format!("presented node id {}, index said {}", node(66), node(3))
        );
        // Asked once, and never again for this download (its manifest or its chunks).
        assert_eq!(
            world.net.stats(&c.addr).connections,
            before + 1,
            "seed {seed}"
        );
        for honest in [&a, &b] {
            let h = report.holders.iter().find(|h| h.holder == honest.addr);
            assert!(h.is_none_or(|h| h.dropped.is_none()), "{h:?}");
        }
        assert!(report.bytes == SIZE as u64);
    }
}

#[test]
fn an_impostor_is_not_asked_for_the_manifest_either() {
    not_asked_for_the_manifest(World::new(TlsKeys::default()));
    not_asked_for_the_manifest(World::new(ClaimedKeys));
}

fn not_asked_for_the_manifest<K: Keys>(world: World<K>) {
    let node = |who| world.keys.node(who);
    let c = world.holder("c", 66, Some(3));
    let err = world.downloader(1).fetch(&key()).unwrap_err();
    match &err {
        PeerError::NoReachableHolder {
            tried, last_error, ..
        } => {
            assert_eq!(*tried, 1);
            assert!(
                last_error.contains(&format!(
                    "presented node id {}, index said {}",
                    node(66),
                    node(3)
                )),
                "{err}"
            );
        }
        other => panic!("expected no reachable holder, got {other}"),
    }
    // The one connection was the manifest's: no chunk was asked for.
    assert_eq!(world.net.stats(&c.addr).connections, 1);
}

#[test]
fn without_ids_from_the_index_nothing_is_checked() {
    let world = World::new(ClaimedKeys);
    // Registered over a transport that proves nothing: the index knows no ids, and the
    // downloader has nothing to compare with, as before.
    let c = world.holder("c", 66, None);
    let report = downloaded(world.downloader(1).fetch(&key()).unwrap());
    assert_eq!(fs::read(report.path.as_ref().unwrap()).unwrap(), data());
    assert_eq!(report.from, c.addr);
    assert!(
        report
            .holders
            .iter()
            .all(|h| h.dropped.is_none() && h.node.is_none())
    );
}
