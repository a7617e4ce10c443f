//! What a peer is doing, for status pages and `/metrics`: the downloads in progress (with
//! progress and sources), the uploads (to whom, how much, how fast), and the counters of
//! both. One [`Activity`] per [`crate::Library`] (see [`crate::Library::activity`]), shared
//! by its server and downloaders.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use shoal_index::Refusals;
use shoal_proto::{FileMeta, PeerAddr};

/// What a peer's server has served, readable while it runs ([`crate::PeerServer::stats`]).
#[derive(Debug, Default)]
pub struct ServerStats {
    bytes: Counter,
    partial_bytes: Counter,
    chunks: Counter,
}

impl ServerStats {
    pub(crate) fn count(&self, bytes: u64, partial: bool) {
        self.bytes.inc_by(bytes);
        self.chunks.inc();
        if partial {
            self.partial_bytes.inc_by(bytes);
        }
    }

    /// Chunk bytes sent to other peers.
    pub fn bytes_served(&self) -> u64 {
        self.bytes.get()
    }

    /// Of those, bytes sent from downloads still in progress.
    pub fn partial_bytes_served(&self) -> u64 {
        self.partial_bytes.get()
    }

    /// Chunks sent to other peers.
    pub fn chunks_served(&self) -> u64 {
        self.chunks.get()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    outcome: &'static str,
}

/// A download in progress, on a status page.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct DownloadRow {
    /// The file's name.
    pub name: String,
    /// Its id in hex.
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
    /// Verified bytes so far (resumed ones included).
    pub done: u64,
    /// Holders sending now.
    pub active_sources: usize,
    /// Every holder known for it (complete and partial).
    pub sources: Vec<String>,
    /// Seconds since it started.
    pub seconds: f64,
}

/// An upload in progress, on a status page.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct UploadRow {
    /// Who is downloading (the connection's address).
    pub peer: String,
    /// The file's name.
    pub name: String,
    /// Its id in hex.
    pub id: String,
    /// Bytes sent in this transfer.
    pub bytes: u64,
    /// Seconds since this transfer started.
    pub seconds: f64,
    /// Average rate of this transfer, bytes per second.
    pub bytes_per_second: f64,
    /// Served from a download in progress.
    pub partial: bool,
}

#[derive(Debug)]
struct Download {
    meta: FileMeta,
    done: u64,
    active_sources: usize,
    sources: Vec<PeerAddr>,
    started: Instant,
}

#[derive(Debug)]
struct Upload {
    peer: PeerAddr,
    meta: FileMeta,
    bytes: u64,
    started: Instant,
    partial: bool,
}

/// The live state and counters of one peer. Names and units of its metrics are listed in
/// `docs/STATUS.md`.
#[derive(Debug)]
pub struct Activity {
    next: AtomicU64,
    downloads: Mutex<BTreeMap<u64, Download>>,
    uploads: Mutex<BTreeMap<u64, Upload>>,
    stats: Arc<ServerStats>,
    received: Counter,
    finished: Family<OutcomeLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    refused: Refusals,
    uploads_active: Gauge,
    downloads_active: Gauge,
    files: Gauge,
    bytes: Gauge,
    registry: Registry,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Activity {
    /// Nothing going on yet.
    pub fn new() -> Self {
        let stats = Arc::new(ServerStats::default());
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("shoal_peer");
        r.register_with_unit(
            "served",
            "Chunk bytes sent to other peers",
            Unit::Bytes,
            stats.bytes.clone(),
        );
        r.register_with_unit(
            "served_partial",
            "Of those, bytes sent from downloads still in progress",
            Unit::Bytes,
            stats.partial_bytes.clone(),
        );
        r.register(
            "chunks_served",
            "Chunks sent to other peers",
            stats.chunks.clone(),
        );
        let received = Counter::default();
        r.register_with_unit(
            "received",
            "Verified chunk bytes received from other peers",
            Unit::Bytes,
            received.clone(),
        );
        let finished = Family::<OutcomeLabels, Counter>::default();
        r.register(
            "downloads",
            "Downloads ended, by outcome (ok, failed)",
            finished.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "Requests answered by the peer server, by kind and outcome",
            requests.clone(),
        );
        let refused = Refusals::default();
        refused.register(r);
        let uploads_active = Gauge::default();
        r.register(
            "uploads_active",
            "Uploads in progress (one per connection and file)",
            uploads_active.clone(),
        );
        let downloads_active = Gauge::default();
        r.register(
            "downloads_active",
            "Downloads in progress",
            downloads_active.clone(),
        );
        let files = Gauge::default();
        r.register("shared_files", "Files in the shared folder", files.clone());
        let bytes = Gauge::default();
        r.register_with_unit(
            "shared",
            "Bytes in the shared folder",
            Unit::Bytes,
            bytes.clone(),
        );
        Activity {
            next: AtomicU64::new(0),
            downloads: Mutex::new(BTreeMap::new()),
            uploads: Mutex::new(BTreeMap::new()),
            stats,
            received,
            finished,
            requests,
            refused,
            uploads_active,
            downloads_active,
            files,
            bytes,
            registry: root,
        }
    }

    /// What the server has served.
    pub fn server_stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.stats)
    }

    /// Verified bytes received from other peers.
    pub fn bytes_received(&self) -> u64 {
        self.received.get()
    }

    /// Downloads ended `ok` and `failed`.
    pub fn downloads_finished(&self) -> (u64, u64) {
        let get = |outcome| {
            self.finished
                .get(&OutcomeLabels { outcome })
                .map_or(0, |c| c.get())
        };
        (get("ok"), get("failed"))
    }

    /// Counts one answered peer request (`kind`: manifest, availability, read_chunks;
    /// `outcome`: ok or the error code's label).
    pub fn request_answered(&self, kind: &'static str, outcome: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { kind, outcome })
            .inc();
    }

    /// Connections refused by reason.
    pub fn refusals(&self) -> &Refusals {
        &self.refused
    }

    /// A download of `meta` starts, from `sources` (more may be added).
    pub(crate) fn download_started(
        self: &Arc<Self>,
        meta: &FileMeta,
        done: u64,
        sources: Vec<PeerAddr>,
    ) -> DownloadTicket {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.downloads).insert(
            key,
            Download {
                meta: meta.clone(),
                done,
                active_sources: sources.len(),
                sources,
                started: Instant::now(),
            },
        );
        self.downloads_active.inc();
        DownloadTicket {
            activity: Arc::clone(self),
            key,
            ok: false,
        }
    }

    /// An upload of `meta` to `peer` starts (one per connection and file).
    pub(crate) fn upload_started(
        self: &Arc<Self>,
        peer: &PeerAddr,
        meta: &FileMeta,
        partial: bool,
    ) -> UploadTicket {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.uploads).insert(
            key,
            Upload {
                peer: peer.clone(),
                meta: meta.clone(),
                bytes: 0,
                started: Instant::now(),
                partial,
            },
        );
        self.uploads_active.inc();
        UploadTicket {
            activity: Arc::clone(self),
            key,
            id: meta.id,
            name: meta.name.clone(),
            peer: peer.clone(),
            bytes: 0,
            started: Instant::now(),
        }
    }

    /// Downloads in progress, oldest first.
    pub fn downloads(&self) -> Vec<DownloadRow> {
        lock(&self.downloads)
            .values()
            .map(|d| DownloadRow {
                name: d.meta.name.clone(),
                id: d.meta.id.to_hex(),
                size: d.meta.size,
                done: d.done,
                active_sources: d.active_sources,
                sources: d.sources.iter().map(ToString::to_string).collect(),
                seconds: d.started.elapsed().as_secs_f64(),
            })
            .collect()
    }

    /// Uploads in progress, oldest first.
    pub fn uploads(&self) -> Vec<UploadRow> {
        lock(&self.uploads)
            .values()
            .map(|u| {
                let seconds = u.started.elapsed().as_secs_f64();
                UploadRow {
                    peer: u.peer.to_string(),
                    name: u.meta.name.clone(),
                    id: u.meta.id.to_hex(),
                    bytes: u.bytes,
                    seconds,
                    bytes_per_second: u.bytes as f64 / seconds.max(1e-3),
                    partial: u.partial,
                }
            })
            .collect()
    }

    /// Appends `/metrics` (OpenMetrics text, which Prometheus reads) to `out`;
    /// `files` and `bytes` are the shared folder's.
    pub fn encode_metrics(&self, files: usize, bytes: u64, out: &mut String) -> std::fmt::Result {
        self.files.set(gauge_value(files as u64));
        self.bytes.set(gauge_value(bytes));
        self.refused.sync();
        prometheus_client::encoding::text::encode(out, &self.registry)
    }
}

/// A download on the board; leaves it when dropped (counted failed unless [`Self::succeeded`]).
pub(crate) struct DownloadTicket {
    activity: Arc<Activity>,
    key: u64,
    ok: bool,
}

impl DownloadTicket {
    /// Verified bytes now `done` (received ones counted), `active` holders sending.
    pub(crate) fn progress(&self, done: u64, active: usize) {
        if let Some(d) = lock(&self.activity.downloads).get_mut(&self.key) {
            self.activity.received.inc_by(done.saturating_sub(d.done));
            d.done = d.done.max(done);
            d.active_sources = active;
        }
    }

    /// Holders the index named since the start.
    pub(crate) fn add_sources(&self, sources: impl IntoIterator<Item = PeerAddr>) {
        if let Some(d) = lock(&self.activity.downloads).get_mut(&self.key) {
            for source in sources {
                if !d.sources.contains(&source) {
                    d.sources.push(source);
                }
            }
        }
    }

    /// The download ended with the whole file verified.
    pub(crate) fn succeeded(mut self) {
        self.ok = true;
    }
}

impl Drop for DownloadTicket {
    fn drop(&mut self) {
        lock(&self.activity.downloads).remove(&self.key);
        self.activity.downloads_active.dec();
        let outcome = if self.ok { "ok" } else { "failed" };
        self.activity
            .finished
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }
}

/// One transfer of one file to one peer (a connection's requests for that file): counted
/// while it runs, logged once when it ends (dropped).
pub(crate) struct UploadTicket {
    activity: Arc<Activity>,
    key: u64,
    id: shoal_proto::FileId,
    name: String,
    peer: PeerAddr,
    bytes: u64,
    started: Instant,
}

impl UploadTicket {
    /// The file this transfer sends.
    pub(crate) fn id(&self) -> shoal_proto::FileId {
        self.id
    }

    /// `bytes` more were sent.
    pub(crate) fn sent(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(u) = lock(&self.activity.uploads).get_mut(&self.key) {
            u.bytes = self.bytes;
        }
    }

    /// The log line of a finished transfer.
    fn summary(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64();
        format!(
            "sent {} to {}: {} B in {:.2} s ({:.1} MB/s)",
            self.name,
            self.peer,
            self.bytes,
            secs,
            self.bytes as f64 / secs.max(1e-3) / 1e6
        )
    }
}

impl Drop for UploadTicket {
    fn drop(&mut self) {
        lock(&self.activity.uploads).remove(&self.key);
        self.activity.uploads_active.dec();
        if self.bytes > 0 {
            log::info!("{}", self.summary(self.started.elapsed()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::FileId;

    fn meta() -> FileMeta {
        FileMeta {
            name: "a.bin".into(),
            size: 1000,
            chunk_size: 1024,
            id: FileId([3; 32]),
        }
    }

    #[test]
    fn boards_follow_tickets() {
        let activity = Arc::new(Activity::new());
        let peer = PeerAddr::new("b:1").unwrap();
        let download = activity.download_started(&meta(), 100, vec![peer.clone()]);
        download.progress(600, 1);
        download.add_sources([PeerAddr::new("c:1").unwrap(), peer.clone()]);
        let rows = activity.downloads();
        assert_eq!((rows[0].done, rows[0].sources.len()), (600, 2));
        assert_eq!(activity.bytes_received(), 500);
        download.succeeded();
        assert!(activity.downloads().is_empty());
        assert_eq!(activity.downloads_finished(), (1, 0));

        let mut upload = activity.upload_started(&peer, &meta(), false);
        upload.sent(400);
        upload.sent(100);
        assert_eq!(activity.uploads()[0].bytes, 500);
        assert!(
            upload
                .summary(Duration::from_secs(2))
                .starts_with("sent a.bin to b:1: 500 B in 2.00 s")
        );
        drop(upload);
        assert!(activity.uploads().is_empty());
        let mut text = String::new();
        activity.encode_metrics(1, 1000, &mut text).unwrap();
        assert!(
            text.contains("shoal_peer_received_bytes_total 500"),
            "{text}"
        );
        assert!(
            text.contains("shoal_peer_downloads_total{outcome=\"ok\"} 1"),
            "{text}"
        );
    }
}
