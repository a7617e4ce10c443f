//! [`Peer`]: one running peer, its parts started and stopped in the right order.

use std::net::SocketAddr;
use std::sync::Arc;

use shoal_index::IndexClient;
use shoal_proto::{FileMeta, PeerAddr, Transport};

use crate::{
    Announcer, AnnouncerConfig, Downloader, DownloaderConfig, FolderWatcher, IndexStatus, Library,
    LibraryChange, PeerError, PeerServer, PeerServerConfig, ServerHandle, ServerStats, WatchConfig,
};

/// How a [`Peer`] runs.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Index servers: the folder is registered with all of them, downloads ask the first
    /// that answers.
    pub indexes: Vec<PeerAddr>,
    /// Where the server listens (port 0 picks a free one).
    pub listen: PeerAddr,
    /// Where other peers reach it. `None`: the listen address, or, when listening on a
    /// wildcard address (`0.0.0.0`, `[::]`), this host as the first index sees it.
    pub advertise: Option<PeerAddr>,
    /// The chunk server.
    pub server: PeerServerConfig,
    /// Downloads (sharing while they run is [`DownloaderConfig::share`]).
    pub downloader: DownloaderConfig,
    /// Registrations and heartbeats.
    pub announcer: AnnouncerConfig,
    /// Follow the folder and announce its changes (`None`: the folder is only what it was at
    /// start plus what this peer downloads).
    pub watch: Option<WatchConfig>,
}

impl PeerConfig {
    /// Defaults for a peer of `indexes` listening on `listen`, watching its folder.
    pub fn new(indexes: Vec<PeerAddr>, listen: PeerAddr) -> Self {
        PeerConfig {
            indexes,
            listen,
            advertise: None,
            server: PeerServerConfig::default(),
            downloader: DownloaderConfig::default(),
            announcer: AnnouncerConfig::default(),
            watch: Some(WatchConfig::default()),
        }
    }
}

/// A running peer: the server of its library, the announcer keeping its registrations
/// alive on every index, the folder watcher, and downloaders that share what they fetch.
///
/// Start order: server (so the address is real), announcer (registers and heartbeats),
/// watcher. Stop order ([`Peer::shutdown`], also on drop): watcher (no change announced after
/// the goodbye), announcer (unregisters everywhere at once, so nobody is sent to a peer that
/// is gone), server.
pub struct Peer<T: Transport> {
    transport: T,
    library: Library,
    config: PeerConfig,
    advertise: PeerAddr,
    stats: Arc<ServerStats>,
    // Options so shutdown can take them apart in order.
    watcher: Option<FolderWatcher>,
    announcer: Option<Announcer<T>>,
    server: Option<ServerHandle>,
}

impl<T: Transport> std::fmt::Debug for Peer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("advertise", &self.advertise)
            .field("library", &self.library)
            .finish()
    }
}

impl<T: Transport> Peer<T> {
    /// Serves `library`, registers it with the indexes and starts the heartbeat (and the
    /// watcher, if configured). Fails if the address cannot be bound or no index is given; an
    /// index that does not answer is retried at every heartbeat while the peer serves.
    pub fn start(transport: T, library: Library, config: PeerConfig) -> Result<Self, PeerError> {
        let server = PeerServer::new(transport.clone(), library.clone(), config.server.clone());
        let stats = server.stats();
        let server = server.spawn(&config.listen)?;
        let advertise = match &config.advertise {
            Some(addr) => addr.clone(),
            None => advertised_addr(
                server.addr(),
                &mut IndexClient::new(transport.clone(), config.indexes.clone()),
            )?,
        };
        let mut announcer = Announcer::start(
            transport.clone(),
            config.indexes.clone(),
            advertise.clone(),
            &library,
            config.announcer.clone(),
        )?;
        announcer.spawn_heartbeat()?;
        let watcher = match &config.watch {
            Some(watch) => Some(FolderWatcher::start(
                library.clone(),
                watch.clone(),
                announcer.change_sink(),
            )?),
            None => None,
        };
        Ok(Peer {
            transport,
            library,
            config,
            advertise,
            stats,
            watcher,
            announcer: Some(announcer),
            server: Some(server),
        })
    }

    /// A downloader into this peer's folder: what it fetches is served while it arrives
    /// (unless [`DownloaderConfig::share`] is off) and registered when complete.
    pub fn downloader(&self) -> Downloader<T> {
        Downloader::for_peer(
            self.transport.clone(),
            self.config.indexes.clone(),
            self.library.clone(),
            self.advertise.clone(),
            self.config.downloader.clone(),
        )
    }

    /// Tells the announcer about a file this peer now holds (needed without a watcher, which
    /// would otherwise report it), so heartbeats and re-registrations include it.
    pub fn announce_added(&self, file: &FileMeta) {
        if self.watcher.is_some() {
            return;
        }
        if let Some(announcer) = &self.announcer {
            announcer.apply(&LibraryChange {
                added: vec![file.clone()],
                ..LibraryChange::default()
            });
        }
    }

    /// The shared folder.
    pub fn library(&self) -> &Library {
        &self.library
    }

    /// The address the server listens on.
    pub fn listen_addr(&self) -> Option<&PeerAddr> {
        self.server.as_ref().map(ServerHandle::addr)
    }

    /// The address registered with the indexes.
    pub fn advertise(&self) -> &PeerAddr {
        &self.advertise
    }

    /// What the server has served.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// The time between heartbeats now (a third of the shortest lease: the peer's own, or
    /// one an index told).
    pub fn heartbeat_interval(&self) -> Option<std::time::Duration> {
        self.announcer.as_ref().map(Announcer::heartbeat_interval)
    }

    /// Each index and how the last exchange with it went.
    pub fn index_status(&self) -> Vec<(PeerAddr, IndexStatus)> {
        self.announcer
            .as_ref()
            .map(Announcer::status)
            .unwrap_or_default()
    }

    /// Reads this peer's state while it runs: for status pages and `/metrics`.
    pub fn monitor(&self) -> PeerMonitor {
        PeerMonitor {
            library: self.library.clone(),
            advertise: self.advertise.clone(),
            indexes: match &self.announcer {
                Some(announcer) => Box::new(announcer.status_reader()),
                None => Box::new(Vec::new),
            },
        }
    }

    /// Stops the watcher, unregisters from every index, stops the server.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            watcher.stop();
        }
        if let Some(announcer) = self.announcer.take() {
            announcer.shutdown();
        }
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

impl<T: Transport> Drop for Peer<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What other peers should dial: the listen address, unless it is a wildcard address, in
/// which case the host the index sees us as, with our listening port.
fn advertised_addr<T: Transport>(
    listen: &PeerAddr,
    index: &mut IndexClient<T>,
) -> Result<PeerAddr, PeerError> {
    let Ok(socket) = listen.as_str().parse::<SocketAddr>() else {
        return Ok(listen.clone());
    };
    if !socket.ip().is_unspecified() {
        return Ok(listen.clone());
    }
    let seen_as = index.local_addr()?;
    let ip = seen_as
        .as_str()
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .map_err(|_| PeerError::NoAdvertiseAddr {
            seen_as: seen_as.clone(),
        })?;
    PeerAddr::new(SocketAddr::new(ip, socket.port()).to_string()).map_err(PeerError::BadName)
}

/// Reads a running [`Peer`]'s state ([`Peer::monitor`]).
pub struct PeerMonitor {
    library: Library,
    advertise: PeerAddr,
    indexes: Box<dyn Fn() -> Vec<(PeerAddr, IndexStatus)> + Send + Sync>,
}

/// A file of the shared folder, on a status page.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FolderRow {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its id in hex.
    pub id: String,
}

/// An index and how the last exchange with it went, on a status page.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IndexRow {
    /// Its address.
    pub addr: String,
    /// `registered` (registered or renewed), `failed`, `unregistered` or `idle`.
    pub state: &'static str,
    /// What it said, in words.
    pub detail: String,
}

/// A peer's totals.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PeerTotals {
    /// Chunk bytes sent to other peers.
    pub bytes_served: u64,
    /// Verified chunk bytes received from other peers.
    pub bytes_received: u64,
    /// Served over received (BitTorrent's share ratio); `None` before anything arrived.
    pub ratio: Option<f64>,
    /// Downloads finished whole.
    pub downloads_completed: u64,
    /// Downloads that ended without the whole file.
    pub downloads_failed: u64,
}

/// A moment of a peer.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PeerSnapshot {
    /// The shared folder.
    pub folder: String,
    /// The address registered with the indexes.
    pub advertise: String,
    /// Files in the folder.
    pub folder_files: usize,
    /// Their bytes.
    pub folder_bytes: u64,
    /// The first files of the folder by name.
    pub files: Vec<FolderRow>,
    /// Every index.
    pub indexes: Vec<IndexRow>,
    /// Downloads in progress.
    pub downloads: Vec<crate::DownloadRow>,
    /// Uploads in progress.
    pub uploads: Vec<crate::UploadRow>,
    /// Totals since the start.
    pub totals: PeerTotals,
}

impl PeerMonitor {
    /// The peer's state, with the first `files` files of its folder.
    pub fn snapshot(&self, files: usize) -> PeerSnapshot {
        let activity = self.library.activity();
        let stats = activity.server_stats();
        let mut listed = self.library.files();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let folder_files = listed.len();
        let served = stats.bytes_served();
        let received = activity.bytes_received();
        let (completed, failed) = activity.downloads_finished();
        PeerSnapshot {
            folder: self.library.dir().display().to_string(),
            advertise: self.advertise.to_string(),
            folder_files,
            folder_bytes: self.library.total_bytes(),
            files: listed
                .into_iter()
                .take(files)
                .map(|f| FolderRow {
                    name: f.name,
                    size: f.size,
                    id: f.id.to_hex(),
                })
                .collect(),
            indexes: (self.indexes)()
                .into_iter()
                .map(|(addr, status)| IndexRow {
                    addr: addr.to_string(),
                    state: match status {
                        IndexStatus::Registered { .. } | IndexStatus::Renewed { .. } => {
                            "registered"
                        }
                        IndexStatus::Failed { .. } => "failed",
                        IndexStatus::Unregistered { .. } => "unregistered",
                        IndexStatus::Idle => "idle",
                    },
                    detail: status.to_string(),
                })
                .collect(),
            downloads: activity.downloads(),
            uploads: activity.uploads(),
            totals: PeerTotals {
                bytes_served: served,
                bytes_received: received,
                ratio: (received > 0).then(|| served as f64 / received as f64),
                downloads_completed: completed,
                downloads_failed: failed,
            },
        }
    }

    /// Appends `/metrics` (OpenMetrics text, which Prometheus reads) to `out`.
    pub fn encode_metrics(&self, out: &mut String) -> std::fmt::Result {
        let files = self.library.files().len();
        self.library
            .activity()
            .encode_metrics(files, self.library.total_bytes(), out)
    }
}
