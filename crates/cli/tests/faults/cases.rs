// The cases of faults.rs, compiled twice: over the plain in-memory transport and over
// TLS on it (`Net` and `on_host` come from the including module).


use std::sync::mpsc::channel;
use std::thread;
use std::time::Duration;

use super::common::content;
use shoal_index::IndexClient;
use shoal_peer::{
    DownloadOutcome, DownloadReport, Downloader, DownloaderConfig, Library, PeerError, PeerServer,
    PeerServerConfig, ServerHandle,
};
use shoal_proto::mem::MemNetwork;
use shoal_proto::{FileKey, PeerAddr};
use tempfile::TempDir;

const CHUNK: u32 = 16 << 10;
/// Longest any download here may take before the test fails (a bounded wait, not a timing
/// assertion: the faulty holders would hold it for an hour).
const BOUND: Duration = Duration::from_secs(120);

struct World {
    net: MemNetwork,
    index: ServerHandle,
    root: TempDir,
    _servers: Vec<ServerHandle>,
}

impl World {
    fn new() -> World {
        let net = MemNetwork::new();
        let index = super::common::index(on_host(&net, "index"), 3);
        World {
            net,
            index,
            root: TempDir::new().unwrap(),
            _servers: Vec::new(),
        }
    }

    /// A complete holder of `file` as `name.bin` on host `host`.
    fn holder(&mut self, host: &str, file: &[u8]) -> PeerAddr {
        let dir = self.root.path().join(host);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("f.bin"), file).unwrap();
        let library = Library::open(&dir, CHUNK).unwrap();
        let server = PeerServer::new(
            on_host(&self.net, host),
            library.clone(),
            PeerServerConfig::default(),
        )
        .spawn(&PeerAddr::new(format!("{host}:7000")).unwrap())
        .unwrap();
        let addr = server.addr().clone();
        IndexClient::new(on_host(&self.net, host), vec![self.index.addr().clone()])
            .register(&addr, &library.files())
            .unwrap();
        self._servers.push(server);
        addr
    }

    /// Fetches `f.bin` in a thread, with an hour's I/O timeout; the result within `BOUND`.
    fn fetch(&self, config: DownloaderConfig) -> (Result<DownloadReport, PeerError>, TempDir) {
        let out = TempDir::new_in(self.root.path()).unwrap();
        let mut downloader = Downloader::new(
            on_host(&self.net, "bob"),
            vec![self.index.addr().clone()],
            out.path(),
            DownloaderConfig {
                io_timeout: Duration::from_secs(3600),
                seed: Some(5),
                ..config
            },
        );
        let (tx, rx) = channel();
        thread::spawn(move || {
            let result = downloader
                .fetch(&FileKey::Name("f.bin".into()))
                .map(|outcome| match outcome {
                    DownloadOutcome::Downloaded(report) => report,
                    other => panic!("expected a download, got {other:?}"),
                });
            let _ = tx.send(result);
        });
        let result = rx
            .recv_timeout(BOUND)
            .expect("the download waited on a faulty holder");
        (result, out)
    }
}

fn dropped_reason(report: &DownloadReport, holder: &PeerAddr) -> String {
    report
        .holders
        .iter()
        .find(|h| &h.holder == holder)
        .and_then(|h| h.dropped.as_ref().map(ToString::to_string))
        .unwrap_or_default()
}

#[test]
fn a_trickling_holder_loses_its_work_and_the_download_completes() {
    let mut world = World::new();
    let file = content(512 << 10, 1);
    let slow = world.holder("slow", &file);
    let _fast = world.holder("fast", &file);
    // Past the handshake and the manifest, a few bytes a second: never silent for long.
    world.net.trickle_after(&slow, 2 << 10, 64);
    let (result, out) = world.fetch(DownloaderConfig::default());
    let report = result.unwrap();
    assert!(std::fs::read(out.path().join("f.bin")).unwrap() == file);
    // Either it was dropped as too slow, or the others finished first and the download
    // ended without waiting for its chunk: both are an end, which the old reader (a whole
    // chunk at 64 B/s, four minutes) did not reach within the bound.
    let why = dropped_reason(&report, &slow);
    assert!(why.is_empty() || why.contains("too slow"), "{why:?}");
}

#[test]
fn a_holder_that_stops_mid_transfer_is_dropped_relative_to_the_others() {
    let mut world = World::new();
    let file = content(1 << 20, 2);
    let stopped = world.holder("stopped", &file);
    let fast = world.holder("fast", &file);
    // The honest holder is slow enough that the stopped one's chunks are needed.
    world.net.limit_upload(fast.host(), 512 << 10);
    // Stops dead 100 KB into the connection (SIGSTOP, a dead link): the connection stays
    // open and the I/O timeout is an hour.
    world.net.stall_after(&stopped, 100 << 10);
    let (result, out) = world.fetch(DownloaderConfig::default());
    let report = result.unwrap();
    assert!(std::fs::read(out.path().join("f.bin")).unwrap() == file);
    let why = dropped_reason(&report, &stopped);
    assert!(
        why.is_empty() || why.contains("stalled") || why.contains("too slow"),
        "{why:?}"
    );
}

#[test]
fn a_trickled_manifest_moves_on_to_the_next_holder() {
    let mut world = World::new();
    let file = content(256 << 10, 3);
    let drip = world.holder("drip", &file);
    let _good = world.holder("good", &file);
    // Drips from its first byte after the handshake: the manifest never arrives whole in time.
    world.net.trickle_after(&drip, 8, 16);
    let (result, out) = world.fetch(DownloaderConfig::default());
    let report = result.unwrap();
    assert!(std::fs::read(out.path().join("f.bin")).unwrap() == file);
    // Whether it was asked for the manifest or for chunks, it gave nothing.
    let drip_bytes: u64 = report
        .holders
        .iter()
        .filter(|h| h.holder == drip)
        .map(|h| h.bytes)
        .sum();
    assert_eq!(drip_bytes, 0);
}

#[test]
fn a_deadline_ends_the_download_and_names_the_holder_still_sending() {
    let mut world = World::new();
    let file = content(256 << 10, 4);
    let stuck = world.holder("stuck", &file);
    world.net.stall_after(&stuck, 40 << 10);
    let (result, out) = world.fetch(DownloaderConfig {
        deadline: Some(Duration::from_secs(3)),
        ..DownloaderConfig::default()
    });
    let err = result.unwrap_err();
    let PeerError::Incomplete { failures, .. } = &err else {
        panic!("expected an incomplete download, got {err}");
    };
    let named = failures
        .iter()
        .find(|f| f.holder == stuck)
        .and_then(|f| f.dropped.as_ref().map(ToString::to_string))
        .unwrap_or_default();
    assert!(
        named.contains("deadline") || named.contains("too slow"),
        "{named:?}"
    );
    // What verified stays for a resume; nothing sits under the final name.
    assert!(!out.path().join("f.bin").exists());
}
