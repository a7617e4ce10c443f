//! A shoal peer: the folder it shares, the server that hands out its files, and the
//! downloader that fetches files from other peers.
//!
//! - [`Peer`]: one running peer, built from a [`PeerConfig`]: it owns the server of its
//!   library, the announcer and the folder watcher, starts and stops them in order, and
//!   hands out downloaders that share what they fetch. Start here to embed a peer.
//! - Swarming: a downloader of a [`Peer`] (or [`Downloader::for_peer`] beside a
//!   [`PeerServer`] of the same library) serves each chunk as soon as it verified (a
//!   [`PartialShare`], listed in [`Library::downloads`]) and registers itself with the index as
//!   a partial holder; downloaders learn what partial holders have on the open connection,
//!   pick the rarest chunks first, and ask the index for newcomers while they run. A seeder
//!   tells downloaders what it is already sending, so its upload goes out about once.
//! - [`Library`]: the shared folder. It lists the regular files directly in it (no hidden
//!   files, no symlinks, no subfolders) with each file's id (its BLAKE3 hash, what `b3sum`
//!   prints) and the hashes of its chunks. Only files in the library are ever served.
//! - [`PeerServer`]: answers other peers over any [`shoal_proto::Transport`]: a file's
//!   manifest (metadata + chunk hashes), then chunk ranges streamed as raw bytes.
//! - [`Downloader`]: asks the index for every holder of a file, takes the manifest from one
//!   and checks it against the file id, then pulls different chunks from up to eight holders
//!   at once (faster holders serve more; a holder that vanishes, stalls, answers busy or sends
//!   a bad chunk is dropped and its chunks go to the others), checks every chunk as it arrives,
//!   writes into a hidden part file with a resume sidecar, and only when the whole file is
//!   verified links it into place (never overwriting anything) and registers the new copy with
//!   the index. An interrupted download, run again, fetches only what is missing.
//! - [`FolderWatcher`]: follows the folder while the peer runs (inotify, debounced, plus a
//!   periodic rescan) and reports each [`LibraryChange`]; with [`OpenOptions::hash_cache`]
//!   the hashes survive restarts, so only changed files are read again.
//! - [`Announcer`]: keeps the peer's registrations alive on every index it was given
//!   (register, heartbeat every third of the lease, register again when an index forgot it,
//!   apply folder changes, unregister everywhere on shutdown).
//!
//! Two peers and an index on the in-memory network:
//!
//! ```
//! use shoal_index::{IndexClient, IndexServer, IndexServerConfig, MemoryStore};
//! use shoal_peer::{
//!     DownloadOutcome, Downloader, DownloaderConfig, Library, PeerServer, PeerServerConfig,
//! };
//! use shoal_proto::mem::MemNetwork;
//! use shoal_proto::{FileKey, PeerAddr};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let net = MemNetwork::new();
//! let index = IndexServer::new(net.host("index"), MemoryStore::with_seed(1), IndexServerConfig::default())
//!     .spawn(&PeerAddr::new("index:0")?)?;
//!
//! // Alice shares a folder with one file and tells the index about it.
//! let alice_dir = tempfile::tempdir()?;
//! std::fs::write(alice_dir.path().join("song.ogg"), vec![7u8; 100_000])?;
//! let library = Library::open(alice_dir.path(), 16384)?;
//! let alice = PeerServer::new(net.host("alice"), library.clone(), PeerServerConfig::default())
//!     .spawn(&PeerAddr::new("alice:0")?)?;
//! IndexClient::new(net.host("alice"), vec![index.addr().clone()])
//!     .register(alice.addr(), &library.files())?;
//!
//! // Bob fetches it: every chunk is verified before the file appears in his folder.
//! let bob_dir = tempfile::tempdir()?;
//! let mut bob = Downloader::new(
//!     net.host("bob"),
//!     vec![index.addr().clone()],
//!     bob_dir.path(),
//!     DownloaderConfig::default(),
//! );
//! let DownloadOutcome::Downloaded(report) = bob.fetch(&FileKey::Name("song.ogg".into()))? else {
//!     panic!("bob's folder was empty");
//! };
//! assert_eq!(report.from, *alice.addr());
//! assert_eq!(std::fs::read(bob_dir.path().join("song.ogg"))?, vec![7u8; 100_000]);
//!
//! // A second fetch finds the file in place and asks nobody.
//! assert!(matches!(
//!     bob.fetch(&FileKey::Name("song.ogg".into()))?,
//!     DownloadOutcome::AlreadyPresent(_)
//! ));
//! # Ok(())
//! # }
//! ```

mod activity;
mod announce;
mod clock;
mod download;
mod error;
mod format;
mod hash_cache;
mod library;
mod part;
mod peer;
mod pieces;
mod resume;
mod server;
mod share;
mod stamp;
mod swarm;
mod watch;

pub use activity::{Activity, DownloadRow, ServerStats, UploadRow};
#[doc(hidden)]
pub mod fuzzing;

pub use announce::{Announcer, AnnouncerConfig, IndexStatus};
pub use download::{
    DownloadOutcome, DownloadReport, Downloader, DownloaderConfig, HolderReport, Progress,
    ProgressCallback,
};
pub use error::PeerError;
pub use library::{
    ChangedFile, Library, LibraryChange, OpenOptions, ScanProgress, ScanReport, SharedFile,
    SkipReason, Skipped,
};
pub use part::{Interrupted, interrupted_downloads};
pub use peer::{FolderRow, IndexRow, Peer, PeerConfig, PeerMonitor, PeerSnapshot, PeerTotals};
pub use server::{PeerServer, PeerServerConfig};
pub use share::PartialShare;
pub use shoal_proto::server::ServerHandle;
pub use swarm::{DropReason, WrongNode};
pub use watch::{FolderWatcher, WatchConfig};
