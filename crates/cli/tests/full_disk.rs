//! A download into a folder that fills up: refused up front when the space is plainly
//! missing; blamed on the local disk, kept resumable and free of temporary files when the
//! disk fills midway; and resumed once there is room. Needs a small tmpfs, so it runs as root
//! (CI does) and says it skipped otherwise. Its own test binary: `mount` forks, and a fork
//! must not copy other tests' open files.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::content;
use shoal_index::IndexClient;
use shoal_peer::{
    DownloadOutcome, DownloaderConfig, Library, PeerConfig, PeerError, PeerServer, PeerServerConfig,
};
use shoal_proto::mem::MemNetwork;
use shoal_proto::{FileKey, PeerAddr};

const CHUNK: u32 = 64 << 10;

/// A tmpfs of `size` mounted at a fresh folder, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(SmallDisk {
                path,
                _parent: parent,
            }),
            other => {
                println!("skipped: cannot mount a tmpfs (needs root, as in CI): {other:?}");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Fills the file system of `dir` until a write fails; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 16 << 10];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_full_disk_is_refused_or_blamed_kept_resumable_and_resumed() {
    let Some(disk) = SmallDisk::mount("3m") else {
        return;
    };
    let net = MemNetwork::new();
    let index = common::index(net.host("index"), 1);
    let seed_dir = tempfile::tempdir().unwrap();
    let big = content(4 << 20, 1);
    let file = content(2 << 20, 2);
    std::fs::write(seed_dir.path().join("big.bin"), &big).unwrap();
    std::fs::write(seed_dir.path().join("f.bin"), &file).unwrap();
    let library = Library::open(seed_dir.path(), CHUNK).unwrap();
    // A slow seeder, so the disk can fill while the download runs.
    net.limit_upload("seeder", 1 << 20);
    let server = PeerServer::new(
        net.host("seeder"),
        library.clone(),
        PeerServerConfig::default(),
    )
    .spawn(&PeerAddr::new("seeder:7000").unwrap())
    .unwrap();
    IndexClient::new(net.host("seeder"), vec![index.addr().clone()])
        .register(server.addr(), &library.files())
        .unwrap();

    let mut config = PeerConfig::new(
        vec![index.addr().clone()],
        PeerAddr::new("bob:7000").unwrap(),
    );
    config.watch = None;
    config.downloader = DownloaderConfig {
        seed: Some(1),
        ..DownloaderConfig::default()
    };
    let bob = shoal_peer::Peer::start(net.host("bob"), Library::empty(&disk.path, CHUNK), config)
        .unwrap();

    // 4 MiB into a 3 MiB disk: refused before anything is written.
    let err = bob
        .downloader()
        .fetch(&FileKey::Name("big.bin".into()))
        .unwrap_err();
    assert!(matches!(err, PeerError::NoSpace { .. }), "{err}");
    assert!(names(&disk.path).is_empty(), "{:?}", names(&disk.path));

    // 2 MiB fits, until the disk fills once the first chunks are in.
    let mut downloader = bob.downloader();
    let library = bob.library().clone();
    let (result, filler) = std::thread::scope(|scope| {
        let download = scope.spawn(|| downloader.fetch(&FileKey::Name("f.bin".into())));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !library.downloads().iter().any(|d| d.verified_chunks() >= 2) {
            assert!(Instant::now() < deadline, "the download never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        let filler = fill(&disk.path);
        (download.join().unwrap(), filler)
    });
    let err = result.unwrap_err();
    assert!(matches!(err, PeerError::LocalDisk { .. }), "{err}");
    assert!(err.to_string().contains("cannot store f.bin"), "{err}");
    // The part file and its sidecar stay for a resume; no temporary file is left.
    let left = names(&disk.path);
    assert!(
        left.iter().any(|n| n.ends_with(".shoal-part"))
            && left.iter().any(|n| n.ends_with(".shoal-part.state")),
        "{left:?}"
    );
    assert!(!left.iter().any(|n| n.ends_with(".tmp")), "{left:?}");

    // Room again: the same download resumes and completes.
    std::fs::remove_file(filler).unwrap();
    let DownloadOutcome::Downloaded(report) = bob
        .downloader()
        .fetch(&FileKey::Name("f.bin".into()))
        .unwrap()
    else {
        panic!("expected a download");
    };
    assert!(report.resumed_bytes > 0, "{report:?}");
    assert!(std::fs::read(disk.path.join("f.bin")).unwrap() == file);
    bob.shutdown();
}
