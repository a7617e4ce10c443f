//! The status page, JSON API and Prometheus metrics of a running shoal index or peer, on one
//! small HTTP listener (`--http ADDR`).
//!
//! - [`StatusServer::spawn`] binds an address and answers, on two threads of its own:
//!   - `GET /`: a self-updating page (plain HTML and JavaScript, embedded in the binary,
//!     no external resources) that polls `/api/status` every 1.5 s and draws what a
//!     person wants to see: for an index, its files and holders, lookups and registrations
//!     per second and the store's health; for a peer, its folder, downloads in progress
//!     with progress and sources, uploads with whom and how fast, totals and ratio.
//!   - `GET /api/status`: the JSON the page draws ([`StatusSource::status`]; documented in
//!     `docs/STATUS.md`).
//!   - `GET /metrics`: the Prometheus text format ([`StatusSource::metrics`]).
//!   - anything else: 404 (other methods: 405). Every answer is `no-store`; the page
//!     renders names with `textContent` only, so a file name can never become markup.
//! - [`StatusSource`]: what the server asks; [`IndexPage`] and [`PeerPage`] answer it from
//!   the snapshot APIs of `shoal-index` ([`shoal_index::IndexMonitor`]) and `shoal-peer`
//!   ([`shoal_peer::PeerMonitor`]).
//!
//! ```
//! use std::sync::Arc;
//! use shoal_status::{StatusServer, StatusSource};
//!
//! struct Hello;
//! impl StatusSource for Hello {
//!     fn status(&self) -> serde_json::Value {
//!         serde_json::json!({"kind": "index", "files": []})
//!     }
//!     fn metrics(&self, out: &mut String) -> std::fmt::Result {
//!         out.push_str("# EOF\n");
//!         Ok(())
//!     }
//! }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = StatusServer::spawn("127.0.0.1:0", Arc::new(Hello))?;
//! println!("status page on http://{}/", server.addr());
//! server.shutdown();
//! # Ok(())
//! # }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tiny_http::{Header, Method, Request, Response, Server};

mod sources;
pub use sources::{FILES_SHOWN, IndexPage, Monitor, Page, PeerPage};

/// The page, embedded in the binary.
const PAGE: &str = include_str!("page.html");
/// Worker threads answering requests (a status page has one or two viewers).
const WORKERS: usize = 2;
/// How often a worker waiting for a request checks whether the server is stopping.
const POLL: Duration = Duration::from_millis(200);

/// The content type of `/metrics`: the OpenMetrics text format (what `prometheus-client`
/// writes; Prometheus reads it and asks for it first).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a [`StatusServer`] shows: implemented by whatever runs the index or peer.
pub trait StatusSource: Send + Sync + 'static {
    /// The `/api/status` document: an object whose `kind` is `"index"` or `"peer"`.
    fn status(&self) -> serde_json::Value;
    /// Appends the `/metrics` text (Prometheus text format) to `out`.
    fn metrics(&self, out: &mut String) -> std::fmt::Result;
}

/// Why a [`StatusServer`] could not start.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The address could not be bound.
    #[error("cannot serve the status page on {addr}: {reason}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// Why.
        reason: String,
    },
    /// A worker thread could not be started.
    #[error("cannot start the status page's threads: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running status listener; stops when shut down or dropped.
pub struct StatusServer {
    addr: SocketAddr,
    server: Arc<Server>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
}

impl StatusServer {
    /// Binds `addr` (`HOST:PORT`; port 0 picks a free one, see [`StatusServer::addr`]) and
    /// serves `source` until shut down.
    pub fn spawn(addr: &str, source: Arc<dyn StatusSource>) -> Result<StatusServer, StatusError> {
        let bind_error = |reason: String| StatusError::Bind {
            addr: addr.to_string(),
            reason,
        };
        let server = Server::http(addr).map_err(|e| bind_error(e.to_string()))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| bind_error("not an IP address".into()))?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let mut status = StatusServer {
            addr: bound,
            server,
            stop,
            workers: Vec::new(),
        };
        for i in 0..WORKERS {
            let server = Arc::clone(&status.server);
            let stop = Arc::clone(&status.stop);
            let source = Arc::clone(&source);
            let worker = thread::Builder::new()
                .name(format!("status-http-{i}"))
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match server.recv_timeout(POLL) {
                            Ok(Some(request)) => answer(request, &*source),
                            Ok(None) => {}
                            Err(e) => {
                                log::debug!("status page: {e}");
                                thread::sleep(POLL);
                            }
                        }
                    }
                })
                .map_err(StatusError::Thread)?;
            status.workers.push(worker);
        }
        Ok(status)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops answering and waits for the workers.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in 0..self.workers.len() {
            self.server.unblock();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// What one request gets: status code, content type, body.
pub fn route(method: &str, path: &str, source: &dyn StatusSource) -> (u16, &'static str, String) {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain; charset=utf-8", "only GET\n".into());
    }
    match path {
        "/" | "/index.html" => (200, "text/html; charset=utf-8", PAGE.to_string()),
        "/api/status" => (200, "application/json", format!("{}\n", source.status())),
        "/metrics" => {
            let mut out = String::new();
            match source.metrics(&mut out) {
                Ok(()) => (200, METRICS_CONTENT_TYPE, out),
                Err(_) => (
                    500,
                    "text/plain; charset=utf-8",
                    "cannot encode the metrics\n".into(),
                ),
            }
        }
        _ => (
            404,
            "text/plain; charset=utf-8",
            format!("no page {path}\n"),
        ),
    }
}

fn answer(request: Request, source: &dyn StatusSource) {
    let method = match request.method() {
        Method::Get => "GET",
        Method::Head => "HEAD",
        _ => "OTHER",
    };
    let (code, content_type, body) = route(method, request.url(), source);
    let mut response = Response::from_string(body).with_status_code(code);
    for (name, value) in [
        ("Content-Type", content_type),
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        (
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:",
        ),
    ] {
        if let Ok(header) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(header);
        }
    }
    if let Err(e) = request.respond(response) {
        log::debug!("status page: cannot answer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl StatusSource for Fixed {
        fn status(&self) -> serde_json::Value {
            serde_json::json!({"kind": "peer", "name": "<b>x</b>"})
        }
        fn metrics(&self, out: &mut String) -> std::fmt::Result {
            out.push_str("up 1\n# EOF\n");
            Ok(())
        }
    }

    #[test]
    fn routes() {
        let (code, kind, body) = route("GET", "/", &Fixed);
        assert_eq!((code, kind), (200, "text/html; charset=utf-8"));
        assert!(body.contains("/api/status"));
        let (code, _, body) = route("GET", "/api/status?t=1", &Fixed);
        assert_eq!(code, 200);
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(value["kind"], "peer");
        let (code, kind, body) = route("GET", "/metrics", &Fixed);
        assert_eq!(
            (code, kind, body.as_str()),
            (200, METRICS_CONTENT_TYPE, "up 1\n# EOF\n")
        );
        assert_eq!(route("GET", "/etc/passwd", &Fixed).0, 404);
        assert_eq!(route("POST", "/", &Fixed).0, 405);
    }

    #[test]
    fn the_page_never_renders_names_as_markup() {
        assert!(
            !PAGE.contains("innerHTML"),
            "names must go through textContent"
        );
        assert!(
            !PAGE.contains("http://") && !PAGE.contains("https://"),
            "no external resources"
        );
    }

    #[test]
    fn serves_over_http() {
        use std::io::{Read, Write};
        let server = StatusServer::spawn("127.0.0.1:0", Arc::new(Fixed)).unwrap();
        let mut conn = std::net::TcpStream::connect(server.addr()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).unwrap();
        assert!(
            text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
            "{text}"
        );
        assert!(
            text.contains("no-store") && text.ends_with("up 1\n# EOF\n"),
            "{text}"
        );
        server.shutdown();
    }
}
