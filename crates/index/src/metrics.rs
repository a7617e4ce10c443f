//! What an index server has done, for `/metrics` and status pages: requests by kind and
//! outcome, lookup latency, registrations, refused connections and store errors, counted
//! as they happen; what the store holds is read when asked ([`IndexMonitor`]).

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use shoal_proto::message::SearchHit;
use shoal_proto::message::{ErrorCode, IndexRequest, IndexResponse};
use shoal_proto::server::{AcceptCounters, SessionEnd};

use crate::{Store, StoreCounts};

/// The labels of `shoal_index_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    outcome: &'static str,
}

/// The labels of `*_connections_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The reasons a shoal server refuses or drops a connection before (or instead of) a
/// request: `busy` (at the connection limit, every connection busy), `gave_way` (an idle
/// connection closed for a newcomer at the limit), `handshake` (no valid hello in time),
/// `bad_request` (a frame too large or malformed).
pub const REFUSAL_REASONS: [&str; 4] = ["busy", "gave_way", "handshake", "bad_request"];

/// Connections refused by reason, for the index's and the peer's metrics: counted from the
/// accept loop's counters ([`Refusals::attach`]) and from how sessions ended.
#[derive(Debug, Default)]
pub struct Refusals {
    family: Family<ReasonLabels, Counter>,
    accept: OnceLock<AcceptCounters>,
    /// The accept loop's counts already added to `family`: (busy, gave_way).
    synced: Mutex<(u64, u64)>,
}

impl Refusals {
    /// Registers `connections_refused` (a counter by `reason`) in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "connections_refused",
            "Connections refused or dropped before a request, by reason",
            self.family.clone(),
        );
    }

    /// Reads the busy refusals and idle closures of a running accept loop.
    pub fn attach(&self, counters: AcceptCounters) {
        let _ = self.accept.set(counters);
    }

    /// Counts a session that ended on a bad hello or a bad frame.
    pub fn session_ended(&self, end: &SessionEnd) {
        let reason = match end {
            SessionEnd::Handshake(_) => "handshake",
            SessionEnd::BadRequest(_) => "bad_request",
            _ => return,
        };
        self.family.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// Brings the accept loop's counts into the family (before encoding or reading).
    pub fn sync(&self) {
        let Some(accept) = self.accept.get() else {
            return;
        };
        let mut synced = self.synced.lock().unwrap_or_else(PoisonError::into_inner);
        let (busy, gave_way) = (accept.refused_busy(), accept.idle_closed());
        self.family
            .get_or_create(&ReasonLabels { reason: "busy" })
            .inc_by(busy.saturating_sub(synced.0));
        self.family
            .get_or_create(&ReasonLabels { reason: "gave_way" })
            .inc_by(gave_way.saturating_sub(synced.1));
        *synced = (busy.max(synced.0), gave_way.max(synced.1));
    }

    /// Every refusal so far.
    pub fn total(&self) -> u64 {
        self.sync();
        REFUSAL_REASONS
            .iter()
            .filter_map(|&reason| self.family.get(&ReasonLabels { reason }).map(|c| c.get()))
            .sum()
    }
}

/// The counters of one index server (shared by its connections; see
/// [`crate::IndexServer::metrics`]). Names and units are listed in `docs/STATUS.md`.
#[derive(Debug)]
pub struct IndexMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    lookup_seconds: Histogram,
    registrations: Counter,
    partial_registrations: Counter,
    refused: Refusals,
    store_errors: Counter,
    node_refusals: Counter,
    files: Gauge,
    holders: Gauge,
    copies: Gauge,
    downloading: Gauge,
    last_store_error: Mutex<Option<(Instant, String)>>,
}

/// Cumulative request counts, for rates on a status page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestTotals {
    /// Requests answered, of every kind.
    pub requests: u64,
    /// `Locate`, `Holders` and `Sources` requests.
    pub lookups: u64,
    /// `Register` and `RegisterPartial` requests.
    pub registrations: u64,
    /// `Search` requests.
    pub searches: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Connections refused (all reasons).
    pub refused_connections: u64,
}

impl Default for IndexMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The kind label of a request.
pub(crate) fn request_kind(request: &IndexRequest) -> &'static str {
    match request {
        IndexRequest::Locate { .. } => "locate",
        IndexRequest::Holders { .. } => "holders",
        IndexRequest::Sources { .. } => "sources",
        IndexRequest::Search { .. } => "search",
        IndexRequest::Register { .. } => "register",
        IndexRequest::RegisterPartial { .. } => "register_partial",
        IndexRequest::Unregister { .. } => "unregister",
        IndexRequest::UnregisterPartial { .. } => "unregister_partial",
        IndexRequest::Renew { .. } => "renew",
        IndexRequest::Lease => "lease",
        IndexRequest::Identify => "identify",
    }
}

/// The outcome label of an error code (also used by the peer server's metrics).
pub fn outcome_label(code: Option<ErrorCode>) -> &'static str {
    match code {
        None => "ok",
        Some(ErrorCode::NotFound) => "not_found",
        Some(ErrorCode::BadName) => "bad_name",
        Some(ErrorCode::BadRequest) => "bad_request",
        Some(ErrorCode::Busy) => "busy",
        Some(ErrorCode::Internal) => "internal",
        Some(ErrorCode::Unavailable) => "unavailable",
        Some(ErrorCode::RegistryUnavailable) => "registry_unavailable",
    }
}

const LOOKUPS: [&str; 3] = ["locate", "holders", "sources"];
const REGISTRATIONS: [&str; 2] = ["register", "register_partial"];

impl IndexMetrics {
    /// Zeroed counters, registered under `shoal_index_*`.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let registry = root.sub_registry_with_prefix("shoal_index");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by kind and outcome (ok or the error code sent)",
            requests.clone(),
        );
        // 10 µs .. ~2.6 s: an in-memory lookup takes microseconds, a durable one waits
        // for nothing, a remote store takes a round trip.
        let lookup_seconds = Histogram::new(exponential_buckets(1e-5, 4.0, 10));
        registry.register_with_unit(
            "lookup_duration",
            "Time to answer a lookup (locate, holders, sources), from decoded request to encoded answer",
            Unit::Seconds,
            lookup_seconds.clone(),
        );
        let registrations = Counter::default();
        registry.register(
            "registrations",
            "New complete (file, holder) registrations accepted",
            registrations.clone(),
        );
        let partial_registrations = Counter::default();
        registry.register(
            "partial_registrations",
            "New partial (downloading) registrations accepted",
            partial_registrations.clone(),
        );
        let refused = Refusals::default();
        refused.register(registry);
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Store operations that failed (disk full, I/O, a remote store down)",
            store_errors.clone(),
        );
        let node_refusals = Counter::default();
        registry.register(
            "node_id_refusals",
            "Changes refused because the holder is registered by another node id",
            node_refusals.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let files = gauge(registry, "files", "Files with a complete or partial holder");
        let holders = gauge(registry, "holders", "Distinct complete holders");
        let copies = gauge(registry, "copies", "Complete (file, holder) registrations");
        let downloading = gauge(
            registry,
            "downloading",
            "Partial (file, holder) registrations: downloads in progress that serve",
        );
        IndexMetrics {
            registry: root,
            requests,
            lookup_seconds,
            registrations,
            partial_registrations,
            refused,
            store_errors,
            node_refusals,
            files,
            holders,
            copies,
            downloading,
            last_store_error: Mutex::new(None),
        }
    }

    /// Counts one answered request of `kind` that took `elapsed`.
    pub(crate) fn record(&self, kind: &'static str, response: &IndexResponse, elapsed: Duration) {
        let code = match response {
            IndexResponse::Error(reply) => Some(reply.code),
            IndexResponse::Registered { added } => {
                let counter = if kind == "register" {
                    &self.registrations
                } else {
                    &self.partial_registrations
                };
                counter.inc_by(u64::from(*added));
                None
            }
            _ => None,
        };
        self.requests
            .get_or_create(&RequestLabels {
                kind,
                outcome: outcome_label(code),
            })
            .inc();
        if LOOKUPS.contains(&kind) {
            self.lookup_seconds.observe(elapsed.as_secs_f64());
        }
    }

    /// Counts a change refused because the holder is bound to another node id.
    pub(crate) fn node_refused(&self) {
        self.node_refusals.inc();
    }

    /// Changes refused so far because the holder is bound to another node id.
    pub fn node_refusals(&self) -> u64 {
        self.node_refusals.get()
    }

    /// Counts a store failure and keeps its message for the status page.
    pub(crate) fn store_failed(&self, error: &impl std::fmt::Display) {
        self.store_errors.inc();
        *self
            .last_store_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), error.to_string()));
    }

    /// Connections refused by reason.
    pub fn refusals(&self) -> &Refusals {
        &self.refused
    }

    /// Cumulative totals.
    pub fn totals(&self) -> RequestTotals {
        let mut totals = RequestTotals::default();
        // Every label set ever seen: at most kinds x outcomes, a few dozen.
        for kind in LOOKUPS.iter().chain(&REGISTRATIONS).chain(&[
            "search",
            "unregister",
            "unregister_partial",
            "renew",
        ]) {
            for code in [
                None,
                Some(ErrorCode::NotFound),
                Some(ErrorCode::BadName),
                Some(ErrorCode::BadRequest),
                Some(ErrorCode::Busy),
                Some(ErrorCode::Internal),
                Some(ErrorCode::Unavailable),
                Some(ErrorCode::RegistryUnavailable),
            ] {
                let labels = RequestLabels {
                    kind,
                    outcome: outcome_label(code),
                };
                let Some(n) = self.requests.get(&labels).map(|c| c.get()) else {
                    continue;
                };
                totals.requests += n;
                if code.is_some() {
                    totals.errors += n;
                }
                if LOOKUPS.contains(kind) {
                    totals.lookups += n;
                } else if REGISTRATIONS.contains(kind) {
                    totals.registrations += n;
                } else if *kind == "search" {
                    totals.searches += n;
                }
            }
        }
        totals.refused_connections = self.refused.total();
        totals
    }

    /// Store failures so far, and the last one's message with how long ago it was.
    pub fn store_errors(&self) -> (u64, Option<(Duration, String)>) {
        let last = self
            .last_store_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(at, message)| (at.elapsed(), message.clone()));
        (self.store_errors.get(), last)
    }
}

/// A file on an index's status page.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileRow {
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its id in hex.
    pub id: String,
    /// Complete holders.
    pub holders: u32,
    /// Partial holders (downloading, serving what they verified).
    pub downloading: u32,
}

impl From<SearchHit> for FileRow {
    fn from(hit: SearchHit) -> Self {
        FileRow {
            name: hit.file.name,
            size: hit.file.size,
            id: hit.file.id.to_hex(),
            holders: hit.holders,
            downloading: hit.downloading,
        }
    }
}

/// The store's health on a status page.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StoreHealth {
    /// `memory`, `durable`, ... ([`Store::kind`]).
    pub kind: &'static str,
    /// The store answered this snapshot, and no operation failed in the last minute.
    pub healthy: bool,
    /// Store operations that failed since the start.
    pub errors: u64,
    /// The last failure's message, if any.
    pub last_error: Option<String>,
    /// Seconds since the last failure.
    pub last_error_seconds_ago: Option<f64>,
}

/// A moment of an index: what the store holds and what the server has done.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IndexSnapshot {
    /// The lease in seconds.
    pub lease_seconds: u64,
    /// The store's health.
    pub store: StoreHealth,
    /// What the store holds (zero when it cannot be read: see `store`).
    pub counts: StoreCounts,
    /// Cumulative request counts.
    pub totals: RequestTotals,
    /// The first files by name, with their holder counts.
    pub files: Vec<FileRow>,
}

/// A store failure this recent makes the store unhealthy on the status page.
const UNHEALTHY_FOR: Duration = Duration::from_secs(60);

/// Reads a running index's state for status pages and `/metrics` (from
/// [`crate::IndexServer::monitor`]).
pub struct IndexMonitor {
    store: Arc<dyn Store>,
    metrics: Arc<IndexMetrics>,
}

impl IndexMonitor {
    pub(crate) fn new(store: Arc<dyn Store>, metrics: Arc<IndexMetrics>) -> Self {
        IndexMonitor { store, metrics }
    }

    /// The counters.
    pub fn metrics(&self) -> &IndexMetrics {
        &self.metrics
    }

    /// The store's counts and health, the totals, and the first `files` files by name.
    pub fn snapshot(&self, files: usize) -> IndexSnapshot {
        let counts = self.store.counts();
        let listed = self.store.search("", files);
        let (errors, last) = self.metrics.store_errors();
        let read_error = match (&counts, &listed) {
            (Err(e), _) | (_, Err(e)) => Some(e.to_string()),
            _ => None,
        };
        let recent = last.as_ref().is_some_and(|(ago, _)| *ago < UNHEALTHY_FOR);
        let store = StoreHealth {
            kind: self.store.kind(),
            healthy: read_error.is_none() && !recent,
            errors,
            last_error: read_error.clone().or(last.as_ref().map(|(_, m)| m.clone())),
            last_error_seconds_ago: if read_error.is_some() {
                Some(0.0)
            } else {
                last.as_ref().map(|(ago, _)| ago.as_secs_f64())
            },
        };
        IndexSnapshot {
            lease_seconds: self.store.lease().as_secs(),
            store,
            counts: counts.unwrap_or_default(),
            totals: self.metrics.totals(),
            files: listed
                .unwrap_or_default()
                .into_iter()
                .map(FileRow::from)
                .collect(),
        }
    }

    /// Appends `/metrics` (the OpenMetrics text format, which Prometheus reads) to `out`,
    /// the gauges read from the store first.
    pub fn encode_metrics(&self, out: &mut String) -> std::fmt::Result {
        let m = &self.metrics;
        match self.store.counts() {
            Ok(counts) => {
                m.files.set(gauge_value(counts.files as u64));
                m.holders
                    .set(gauge_value(counts.holders.unwrap_or(0) as u64));
                m.copies.set(gauge_value(counts.registrations));
                m.downloading.set(gauge_value(counts.partial_registrations));
            }
            Err(e) => m.store_failed(&e),
        }
        m.refused.sync();
        prometheus_client::encoding::text::encode(out, &m.registry)
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
