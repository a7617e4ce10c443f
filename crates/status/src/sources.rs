//! The [`StatusSource`]s of a running index and peer, from the snapshot APIs of
//! `shoal-index` ([`IndexMonitor`]) and `shoal-peer` ([`PeerMonitor`]).

use std::time::Instant;

use shoal_index::IndexMonitor;
use shoal_peer::PeerMonitor;
use shoal_proto::NodeId;

use crate::StatusSource;

/// Files listed on a status page (the first by name; the counts cover all).
pub const FILES_SHOWN: usize = 200;

/// What a page needs from a running server: its snapshot as JSON, and its metrics.
pub trait Monitor: Send + Sync + 'static {
    /// `"index"` or `"peer"`.
    const KIND: &'static str;
    /// The snapshot's fields, as JSON.
    fn snapshot_json(&self) -> serde_json::Value;
    /// Appends `/metrics` to `out`.
    fn encode_metrics(&self, out: &mut String) -> std::fmt::Result;
}

impl Monitor for IndexMonitor {
    const KIND: &'static str = "index";
    fn snapshot_json(&self) -> serde_json::Value {
        serde_json::to_value(self.snapshot(FILES_SHOWN)).unwrap_or_default()
    }
    fn encode_metrics(&self, out: &mut String) -> std::fmt::Result {
        IndexMonitor::encode_metrics(self, out)
    }
}

impl Monitor for PeerMonitor {
    const KIND: &'static str = "peer";
    fn snapshot_json(&self) -> serde_json::Value {
        serde_json::to_value(self.snapshot(FILES_SHOWN)).unwrap_or_default()
    }
    fn encode_metrics(&self, out: &mut String) -> std::fmt::Result {
        PeerMonitor::encode_metrics(self, out)
    }
}

/// The status page of a running index ([`IndexPage`]) or peer ([`PeerPage`]): its snapshot
/// plus `kind`, `version`, `listen`, `uptime_seconds`, and who the server is on the network:
/// `node` (its node id, `null` without TLS) and `swarm` (its private swarm's name, or `null`).
pub struct Page<M> {
    monitor: M,
    listen: String,
    node: Option<String>,
    swarm: Option<String>,
    started: Instant,
}

/// An index's status page.
pub type IndexPage = Page<IndexMonitor>;
/// A peer's status page.
pub type PeerPage = Page<PeerMonitor>;

impl<M: Monitor> Page<M> {
    /// The page of the server `monitor` reads, listening on `listen`.
    pub fn new(monitor: M, listen: impl Into<String>) -> Self {
        Page {
            monitor,
            listen: listen.into(),
            node: None,
            swarm: None,
            started: Instant::now(),
        }
    }

    /// The page of a server that talks TLS as `node`, a member of `swarm` (if any).
    pub fn with_identity(mut self, node: Option<NodeId>, swarm: Option<String>) -> Self {
        self.node = node.map(|n| n.to_string());
        self.swarm = swarm;
        self
    }
}

impl<M: Monitor> StatusSource for Page<M> {
    fn status(&self) -> serde_json::Value {
        let mut value = self.monitor.snapshot_json();
        if let Some(object) = value.as_object_mut() {
            object.insert("kind".into(), M::KIND.into());
            object.insert("version".into(), env!("CARGO_PKG_VERSION").into());
            object.insert("listen".into(), self.listen.clone().into());
            object.insert("node".into(), self.node.clone().into());
            object.insert("swarm".into(), self.swarm.clone().into());
            object.insert(
                "uptime_seconds".into(),
                self.started.elapsed().as_secs_f64().into(),
            );
        }
        value
    }

    fn metrics(&self, out: &mut String) -> std::fmt::Result {
        self.monitor.encode_metrics(out)
    }
}
