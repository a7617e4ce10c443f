//! `--http ADDR` of `shoal index` and `shoal peer`: the status page, `/api/status` and
//! `/metrics` (see `docs/STATUS.md`), served by `shoal-status`.

use std::sync::Arc;

use shoal_index::IndexMonitor;
use shoal_peer::PeerMonitor;
use shoal_proto::PeerAddr;
use shoal_status::{IndexPage, PeerPage, StatusServer, StatusSource};

use crate::error::CliError;
use crate::output::outln;

/// Serves an index's status on `http`; prints `status page on http://ADDR/`.
pub(crate) fn serve_index(
    http: &str,
    monitor: IndexMonitor,
    listen: &PeerAddr,
) -> Result<StatusServer, CliError> {
    spawn(http, Arc::new(IndexPage::new(monitor, listen.to_string())))
}

/// Serves a peer's status on `http`; prints `status page on http://ADDR/`.
pub(crate) fn serve_peer(
    http: &str,
    monitor: PeerMonitor,
    listen: &PeerAddr,
) -> Result<StatusServer, CliError> {
    spawn(http, Arc::new(PeerPage::new(monitor, listen.to_string())))
}

fn spawn(http: &str, source: Arc<dyn StatusSource>) -> Result<StatusServer, CliError> {
    let server = StatusServer::spawn(http, source)?;
    outln!("status page on http://{}/", server.addr());
    Ok(server)
}
