//! `--http ADDR` of `shoal index` and `shoal peer`: the status page, `/api/status` and
//! `/metrics` (see `docs/STATUS.md`), served by `shoal-status`.

use std::sync::Arc;

use shoal_status::{StatusServer, StatusSource};

use crate::error::CliError;
use crate::output::outln;

/// Serves `source` on `http`; prints `status page on http://ADDR/` once it listens.
pub(crate) fn serve(http: &str, source: impl StatusSource) -> Result<StatusServer, CliError> {
    let server = StatusServer::spawn(http, Arc::new(source))?;
    outln!("status page on http://{}/", server.addr());
    Ok(server)
}
