//! A few clients cannot shut everyone else out of a peer (issue 9, "Servers"): over the
//! in-memory network, a host holds idle connections past the connection limit, or reads its
//! uploads a trickle at a time in every upload slot, and an honest download must still
//! finish. Every wait here is bounded; no assertion depends on timing.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::fs;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use shoal_index::{IndexClient, IndexServer, IndexServerConfig, MemoryStore};
use shoal_peer::{
    DownloadOutcome, Downloader, DownloaderConfig, Library, PeerServer, PeerServerConfig,
    ServerHandle,
};
use shoal_proto::codec::{self, Service};
use shoal_proto::mem::{MemNetwork, MemStream};
use shoal_proto::message::{PeerRequest, PeerResponse};
use shoal_proto::{Connection, FileKey, FileMeta, PeerAddr, Transport};
use tempfile::TempDir;

const CHUNK: u32 = 16384;
/// 64 chunks: more than the in-memory pipe holds (64 messages, a chunk is two), so a
/// transfer to a reader that does not keep up blocks the server's writes.
const SIZE: usize = 64 * CHUNK as usize;
/// Longest any download here may take before the test calls it shut out.
const SHUT_OUT: Duration = Duration::from_secs(45);

fn addr(s: &str) -> PeerAddr {
    PeerAddr::new(s).unwrap()
}

fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 7919 + i / 251) as u8) ^ 0x5a)
        .collect()
}

/// An index and one seeder called `seed` sharing `a.bin`, registered.
struct World {
    net: MemNetwork,
    index: ServerHandle,
    seed: ServerHandle,
    meta: FileMeta,
    bytes: Vec<u8>,
    tmp: TempDir,
}

impl World {
    fn new(config: PeerServerConfig) -> World {
        let net = MemNetwork::new();
        let index = IndexServer::new(
            net.host("index"),
            MemoryStore::with_seed(1),
            IndexServerConfig::default(),
        )
        .spawn(&addr("index:0"))
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("seed");
        fs::create_dir(&dir).unwrap();
        let bytes = data(SIZE);
        fs::write(dir.join("a.bin"), &bytes).unwrap();
        let library = Library::open(&dir, CHUNK).unwrap();
        let meta = library.get(&FileKey::Name("a.bin".into())).unwrap().meta;
        let seed = PeerServer::new(net.host("seed"), library.clone(), config)
            .spawn(&addr("seed:0"))
            .unwrap();
        IndexClient::new(net.host("seed"), vec![index.addr().clone()])
            .register(seed.addr(), &library.files())
            .unwrap();
        World {
            net,
            index,
            seed,
            meta,
            bytes,
            tmp,
        }
    }

    /// A raw connection from `host` to the seeder, handshake done (or refused).
    fn connect(&self, host: &str) -> (MemStream, bool) {
        let mut stream = self.net.host(host).connect(self.seed.addr()).unwrap();
        let shook = codec::client_handshake(&mut stream, Service::Peer).is_ok();
        (stream, shook)
    }

    /// An honest download of `a.bin` from a host of its own, in the background: the test
    /// fails if it does not finish with the right bytes within [`SHUT_OUT`].
    fn download_gets_through(&self, host: &str) {
        let dir = self.tmp.path().join(host);
        fs::create_dir(&dir).unwrap();
        let mut downloader = Downloader::new(
            self.net.host(host),
            vec![self.index.addr().clone()],
            &dir,
            DownloaderConfig {
                seed: Some(7),
                ..DownloaderConfig::default()
            },
        );
        let (done_tx, done) = mpsc::channel();
        let fetching = thread::spawn(move || {
            let _ = done_tx.send(downloader.fetch(&FileKey::Name("a.bin".into())));
        });
        let outcome = done
            .recv_timeout(SHUT_OUT)
            .unwrap_or_else(|_| panic!("the download from {host} was shut out: no answer"));
        fetching.join().unwrap();
        match outcome {
            Ok(DownloadOutcome::Downloaded(report)) => {
                assert_eq!(report.file, self.meta);
                assert_eq!(fs::read(dir.join("a.bin")).unwrap(), self.bytes);
            }
            other => panic!("the download from {host} was shut out: {other:?}"),
        }
    }
}

#[test]
fn idle_connections_past_the_limit_give_way_to_a_download() {
    let world = World::new(PeerServerConfig {
        max_connections: 8,
        ..PeerServerConfig::default()
    });
    // Three times the limit, held open and silent.
    let flood: Vec<(MemStream, bool)> = (0..24).map(|_| world.connect("flood")).collect();
    world.download_gets_through("honest");
    drop(flood);
}

/// Reads about 2 KB a second from `stream` until `stop` is set or the server hangs up.
fn trickle(mut stream: MemStream, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut buf = [0u8; 100];
        while !stop.load(Ordering::SeqCst) {
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => thread::sleep(Duration::from_millis(50)),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
        }
    })
}

#[test]
fn slow_readers_in_every_upload_slot_give_way_to_a_download() {
    let world = World::new(PeerServerConfig {
        max_uploads: 2,
        ..PeerServerConfig::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (mut stream, shook) = world.connect("slow");
        assert!(shook);
        codec::write_frame(
            &mut stream,
            &PeerRequest::ReadChunks {
                id: world.meta.id,
                chunk_size: CHUNK,
                first: 0,
                count: 64,
            },
        )
        .unwrap();
        // The first chunk's header: this reader holds an upload slot now.
        let first: PeerResponse =
            codec::read_frame(&mut stream, codec::DEFAULT_RESPONSE_LIMIT, &mut Vec::new()).unwrap();
        assert!(
            matches!(first, PeerResponse::Chunk { index: 0, .. }),
            "{first:?}"
        );
        readers.push(trickle(stream, Arc::clone(&stop)));
    }
    world.download_gets_through("honest");
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.join().unwrap();
    }
}
