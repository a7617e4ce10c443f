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
    /// watcher, if configured). Fails if the address cannot be bound or no index accepts.
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

    /// Each index and how the last exchange with it went.
    pub fn index_status(&self) -> Vec<(PeerAddr, IndexStatus)> {
        self.announcer
            .as_ref()
            .map(Announcer::status)
            .unwrap_or_default()
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
