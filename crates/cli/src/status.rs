//! `--http ADDR` of `shoal index` and `shoal peer`: the status page, `/api/status` and
//! `/metrics` (see `docs/STATUS.md`), served by `shoal-status` from the snapshot APIs of the
//! index and peer crates.

use std::sync::Arc;
use std::time::Instant;

use shoal_index::IndexMonitor;
use shoal_peer::PeerMonitor;
use shoal_proto::PeerAddr;
use shoal_status::{StatusServer, StatusSource};

use crate::error::CliError;
use crate::output::outln;

/// Files listed on a status page (the first by name; the counts cover all).
const FILES_SHOWN: usize = 200;

struct IndexSource {
    monitor: IndexMonitor,
    listen: String,
    started: Instant,
}

impl StatusSource for IndexSource {
    fn status(&self) -> serde_json::Value {
        let snapshot = self.monitor.snapshot(FILES_SHOWN);
        let mut value = serde_json::to_value(snapshot).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("kind".into(), "index".into());
            object.insert("version".into(), env!("CARGO_PKG_VERSION").into());
            object.insert("listen".into(), self.listen.clone().into());
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

struct PeerSource {
    monitor: PeerMonitor,
    listen: String,
    started: Instant,
}

impl StatusSource for PeerSource {
    fn status(&self) -> serde_json::Value {
        let snapshot = self.monitor.snapshot(FILES_SHOWN);
        let mut value = serde_json::to_value(snapshot).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.insert("kind".into(), "peer".into());
            object.insert("version".into(), env!("CARGO_PKG_VERSION").into());
            object.insert("listen".into(), self.listen.clone().into());
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

/// Serves an index's status on `http`; prints `status page on http://ADDR/`.
pub(crate) fn serve_index(
    http: &str,
    monitor: IndexMonitor,
    listen: &PeerAddr,
) -> Result<StatusServer, CliError> {
    spawn(
        http,
        Arc::new(IndexSource {
            monitor,
            listen: listen.to_string(),
            started: Instant::now(),
        }),
    )
}

/// Serves a peer's status on `http`; prints `status page on http://ADDR/`.
pub(crate) fn serve_peer(
    http: &str,
    monitor: PeerMonitor,
    listen: &PeerAddr,
) -> Result<StatusServer, CliError> {
    spawn(
        http,
        Arc::new(PeerSource {
            monitor,
            listen: listen.to_string(),
            started: Instant::now(),
        }),
    )
}

fn spawn(http: &str, source: Arc<dyn StatusSource>) -> Result<StatusServer, CliError> {
    let server = StatusServer::spawn(http, source)?;
    outln!("status page on http://{}/", server.addr());
    Ok(server)
}
