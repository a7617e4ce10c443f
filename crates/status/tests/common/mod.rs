//! What the status crate's tests share: a small swarm on the in-memory network with the
//! real status pages over HTTP on 127.0.0.1, a minimal HTTP client, and a strict parser of
//! the Prometheus / OpenMetrics text format.
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a part; unwrap fails a test

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_index::{IndexServer, IndexServerConfig, MemoryStore};
use shoal_peer::{DownloaderConfig, Library, Peer, PeerConfig};
use shoal_proto::PeerAddr;
use shoal_proto::mem::{MemNetwork, MemTransport};
use shoal_proto::server::ServerHandle;
use shoal_status::{IndexPage, PeerPage, StatusServer};

/// Chunk size of the test files: many chunks, so a stalled download shows partial progress.
pub(crate) const CHUNK: u32 = 16 << 10;
/// Longest any wait of these tests takes before it fails.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// An index, a seeder with one file and a downloader peer, each with its status page.
pub(crate) struct Swarm {
    pub(crate) net: MemNetwork,
    pub(crate) index: ServerHandle,
    pub(crate) index_page: StatusServer,
    pub(crate) seeder: Peer<MemTransport>,
    pub(crate) seeder_page: StatusServer,
    pub(crate) downloader: Peer<MemTransport>,
    pub(crate) downloader_page: StatusServer,
    pub(crate) dirs: Vec<tempfile::TempDir>,
}

/// `len` bytes of a fixed pattern.
pub(crate) fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
}

fn peer(net: &MemNetwork, host: &str, library: Library, index: &PeerAddr) -> Peer<MemTransport> {
    let mut config = PeerConfig::new(
        vec![index.clone()],
        PeerAddr::new(format!("{host}:7000")).unwrap(),
    );
    config.watch = None;
    config.downloader = DownloaderConfig {
        // A stalled holder stays a source: the download stays in progress for the test.
        io_timeout: Duration::from_secs(600),
        min_rate: 1,
        ..DownloaderConfig::default()
    };
    Peer::start(net.host(host), library, config).unwrap()
}

impl Swarm {
    /// The seeder holds `name` (`len` bytes).
    pub(crate) fn new(name: &str, len: usize) -> Swarm {
        let net = MemNetwork::new();
        let server = IndexServer::new(
            net.host("index"),
            MemoryStore::with_seed(7),
            IndexServerConfig::default(),
        );
        let monitor = server.monitor();
        let index = server.spawn(&PeerAddr::new("index:1024").unwrap()).unwrap();
        let index_page = StatusServer::spawn(
            "127.0.0.1:0",
            Arc::new(IndexPage::new(monitor, "index:1024")),
        )
        .unwrap();

        let seed_dir = tempfile::tempdir().unwrap();
        std::fs::write(seed_dir.path().join(name), content(len)).unwrap();
        let library = Library::open(seed_dir.path(), CHUNK).unwrap();
        let seeder = peer(&net, "seeder", library, index.addr());
        let seeder_page = StatusServer::spawn(
            "127.0.0.1:0",
            Arc::new(PeerPage::new(seeder.monitor(), "seeder:7000")),
        )
        .unwrap();

        let get_dir = tempfile::tempdir().unwrap();
        let downloader = peer(
            &net,
            "getter",
            Library::empty(get_dir.path(), CHUNK),
            index.addr(),
        );
        let downloader_page = StatusServer::spawn(
            "127.0.0.1:0",
            Arc::new(PeerPage::new(downloader.monitor(), "getter:7000")),
        )
        .unwrap();
        Swarm {
            net,
            index,
            index_page,
            seeder,
            seeder_page,
            downloader,
            downloader_page,
            dirs: vec![seed_dir, get_dir],
        }
    }

    /// The downloader's folder.
    pub(crate) fn out(&self) -> &Path {
        self.dirs[1].path()
    }
}

/// Waits (bounded) until `done` holds.
pub(crate) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET path` over HTTP/1.0: the status code, the headers (lower-case names) and the body.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> (u16, BTreeMap<String, String>, String) {
    let mut conn = TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap();
    let code = status.split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (code, headers, body.to_string())
}

/// `/api/status` as JSON.
pub(crate) fn status(addr: SocketAddr) -> serde_json::Value {
    let (code, _, body) = http_get(addr, "/api/status");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// One sample: metric name and its labels, sorted.
pub(crate) type SampleKey = (String, Vec<(String, String)>);

/// A parsed exposition: every sample's value, and each family's type.
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    pub(crate) samples: BTreeMap<SampleKey, f64>,
    pub(crate) types: BTreeMap<String, String>,
    pub(crate) units: BTreeMap<String, String>,
}

impl Exposition {
    /// The value of `name` with exactly `labels` (0 if absent: a counter not yet touched).
    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.samples
            .get(&(name.to_string(), labels))
            .copied()
            .unwrap_or(0.0)
    }

    /// The sum of `name` over every label set.
    pub(crate) fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the Prometheus text format (OpenMetrics flavour) strictly: every line is a
/// `# HELP`, `# TYPE`, `# UNIT` or a sample of a declared family, names and label sets
/// well-formed, values numbers, counters' samples end in `_total`, histogram buckets grow
/// and end at `+Inf` equal to `_count`, and the text ends with `# EOF`. Panics naming the
/// line otherwise.
pub(crate) fn parse_metrics(text: &str) -> Exposition {
    let mut out = Exposition::default();
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.pop(),
        Some("# EOF"),
        "the exposition must end with # EOF"
    );
    for line in lines {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (keyword, name, value) = (
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            assert!(valid_name(name), "bad metric name in {line:?}");
            match keyword {
                "HELP" => {}
                "TYPE" => {
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "info",
                            "summary",
                            "unknown",
                            "stateset"
                        ]
                        .contains(&value),
                        "bad type in {line:?}"
                    );
                    assert!(
                        out.types
                            .insert(name.to_string(), value.to_string())
                            .is_none(),
                        "second TYPE in {line:?}"
                    );
                }
                "UNIT" => {
                    assert!(
                        name.ends_with(&format!("_{value}")),
                        "unit not in the name: {line:?}"
                    );
                    out.units.insert(name.to_string(), value.to_string());
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (name, parse_labels(body, line))
            }
        };
        assert!(valid_name(name), "bad sample name in {line:?}");
        let family = family_of(name, &out.types)
            .unwrap_or_else(|| panic!("sample of an undeclared family: {line:?}"));
        let kind = out.types[&family].as_str();
        match kind {
            "counter" => assert!(
                name == format!("{family}_total") || name == format!("{family}_created"),
                "counter sample {line:?}"
            ),
            "histogram" => assert!(
                [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                    format!("{family}_created")
                ]
                .contains(&name.to_string()),
                "histogram sample {line:?}"
            ),
            _ => assert_eq!(name, family, "sample of a {kind}: {line:?}"),
        }
        if kind == "counter" || name.ends_with("_count") || name.ends_with("_bucket") {
            assert!(value >= 0.0, "negative count in {line:?}");
        }
        let mut labels = labels;
        labels.sort();
        assert!(
            out.samples
                .insert((name.to_string(), labels), value)
                .is_none(),
            "duplicate sample {line:?}"
        );
    }
    check_histograms(&out);
    out
}

fn family_of(sample: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if types.contains_key(sample) {
        return Some(sample.to_string());
    }
    ["_total", "_created", "_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| sample.strip_suffix(suffix))
        .find(|family| types.contains_key(*family))
        .map(str::to_string)
}

fn parse_labels(body: &str, line: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("bad label in {line:?}"));
        assert!(
            valid_name(name) && !name.starts_with("__"),
            "bad label name in {line:?}"
        );
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => panic!("bad escape in {line:?}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        };
        assert!(
            labels.iter().all(|(n, _): &(String, String)| n != name),
            "repeated label in {line:?}"
        );
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    labels
}

fn check_histograms(out: &Exposition) {
    for (family, kind) in &out.types {
        if kind != "histogram" {
            continue;
        }
        let bucket = format!("{family}_bucket");
        let mut buckets: Vec<(f64, f64)> = out
            .samples
            .iter()
            .filter(|((n, _), _)| *n == bucket)
            .map(|((_, labels), v)| {
                let le = &labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .expect("a bucket without le")
                    .1;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                (le, *v)
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{family}: buckets must not shrink"
        );
        let last = buckets
            .last()
            .unwrap_or_else(|| panic!("{family}: no buckets"));
        assert!(
            last.0.is_infinite(),
            "{family}: the last bucket must be +Inf"
        );
        assert_eq!(
            last.1,
            out.value(&format!("{family}_count"), &[]),
            "{family}: +Inf bucket != count"
        );
    }
}
