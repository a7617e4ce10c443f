//! The [`StatusSource`]s of a running index and peer, from the snapshot APIs of
//! `shoal-index` ([`IndexMonitor`]) and `shoal-peer` ([`PeerMonitor`]).

use std::time::Instant;

use shoal_index::IndexMonitor;
use shoal_peer::PeerMonitor;

use crate::StatusSource;

/// Files listed on a status page (the first by name; the counts cover all).
pub const FILES_SHOWN: usize = 200;

/// The `kind`, `version`, `listen` and `uptime_seconds` every status document carries,
/// added to a snapshot's fields.
fn document(
    snapshot: serde_json::Value,
    kind: &str,
    listen: &str,
    started: Instant,
) -> serde_json::Value {
    let mut value = snapshot;
    if let Some(object) = value.as_object_mut() {
        object.insert("kind".into(), kind.into());
        object.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        object.insert("listen".into(), listen.into());
        object.insert(
            "uptime_seconds".into(),
            started.elapsed().as_secs_f64().into(),
        );
    }
    value
}

/// An index's status page.
pub struct IndexPage {
    monitor: IndexMonitor,
    listen: String,
    started: Instant,
}

impl IndexPage {
    /// The page of the index `monitor` reads, listening on `listen`.
    pub fn new(monitor: IndexMonitor, listen: impl Into<String>) -> Self {
        IndexPage {
            monitor,
            listen: listen.into(),
            started: Instant::now(),
        }
    }
}

impl StatusSource for IndexPage {
    fn status(&self) -> serde_json::Value {
        let snapshot = serde_json::to_value(self.monitor.snapshot(FILES_SHOWN)).unwrap_or_default();
        document(snapshot, "index", &self.listen, self.started)
    }

    fn metrics(&self, out: &mut String) -> std::fmt::Result {
        self.monitor.encode_metrics(out)
    }
}

/// A peer's status page.
pub struct PeerPage {
    monitor: PeerMonitor,
    listen: String,
    started: Instant,
}

impl PeerPage {
    /// The page of the peer `monitor` reads, listening on `listen`.
    pub fn new(monitor: PeerMonitor, listen: impl Into<String>) -> Self {
        PeerPage {
            monitor,
            listen: listen.into(),
            started: Instant::now(),
        }
    }
}

impl StatusSource for PeerPage {
    fn status(&self) -> serde_json::Value {
        let snapshot = serde_json::to_value(self.monitor.snapshot(FILES_SHOWN)).unwrap_or_default();
        document(snapshot, "peer", &self.listen, self.started)
    }

    fn metrics(&self, out: &mut String) -> std::fmt::Result {
        self.monitor.encode_metrics(out)
    }
}
