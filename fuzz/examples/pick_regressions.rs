//! Picks, per fuzz target, the smallest corpus entry for each distinct decoder outcome and
//! prints them as Rust byte-string literals (what `crates/proto/tests/fuzz_regressions.rs`
//! and `crates/index/tests/durable_fuzz_regressions.rs` embed). Run from `fuzz/` after a fuzzing session: `cargo run --example pick_regressions`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs;
use std::io::Cursor;

use serde::de::DeserializeOwned;
use shoal_index::fuzzing;
use shoal_proto::codec::{self, Service};
use shoal_proto::message::{IndexRequest, IndexResponse, PeerRequest, PeerResponse};

/// An outcome with the numbers and quoted text removed, so entries group by code path.
fn class(s: String) -> String {
    let s: String = s.split('"').step_by(2).collect::<Vec<_>>().join("\"\"");
    let s = s.split('(').next().unwrap_or("").to_string();
    s.chars().filter(|c| !c.is_ascii_digit()).take(70).collect()
}

fn outcome<M: DeserializeOwned + Debug>(data: &[u8], limit: u32) -> String {
    let body = match codec::decode_body::<M>(data) {
        Ok(m) => format!("{m:?}"),
        Err(e) => e.to_string(),
    };
    let frame = match codec::read_frame::<_, M>(&mut Cursor::new(data), limit, &mut Vec::new()) {
        Ok(m) => format!("{m:?}"),
        Err(e) => e.to_string(),
    };
    let _ = class(body);
    class(frame)
}

fn handshake(data: &[u8]) -> String {
    struct S<'a>(Cursor<&'a [u8]>);
    impl std::io::Read for S<'_> {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(b)
        }
    }
    impl std::io::Write for S<'_> {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = String::new();
    for service in [Service::Index, Service::Peer] {
        let r = codec::server_handshake(&mut S(Cursor::new(data)), service);
        out += &format!("s:{} ", class(format!("{r:?}")));
        let r = codec::client_handshake(&mut S(Cursor::new(data)), service);
        out += &format!("c:{} ", class(format!("{r:?}")));
    }
    out
}

/// A target name and how to classify its inputs.
type Target = (&'static str, fn(&[u8]) -> String);

fn main() {
    let targets: [Target; 8] = [
        ("handshake", handshake),
        ("index_request", |d| {
            outcome::<IndexRequest>(d, codec::DEFAULT_REQUEST_LIMIT)
        }),
        ("index_response", |d| {
            outcome::<IndexResponse>(d, codec::DEFAULT_RESPONSE_LIMIT)
        }),
        ("peer_request", |d| {
            outcome::<PeerRequest>(d, codec::DEFAULT_REQUEST_LIMIT)
        }),
        ("peer_response", |d| {
            outcome::<PeerResponse>(d, codec::DEFAULT_RESPONSE_LIMIT)
        }),
        ("manifest", |d| {
            outcome::<PeerResponse>(d, codec::DEFAULT_RESPONSE_LIMIT)
        }),
        // The oracles' own outcome classes (already free of numbers).
        ("durable_log", |d| {
            fuzzing::durable_log_input(d).unwrap_or_else(|e| format!("BROKEN {e}"))
        }),
        ("durable_snapshot", |d| {
            fuzzing::durable_snapshot_input(d).unwrap_or_else(|e| format!("BROKEN {e}"))
        }),
    ];
    let max_len: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(48);
    for (target, f) in targets {
        let mut best: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let Ok(dir) = fs::read_dir(format!("corpus/{target}")) else {
            continue;
        };
        for entry in dir.flatten() {
            let Ok(data) = fs::read(entry.path()) else {
                continue;
            };
            if data.len() > max_len {
                continue;
            }
            let key = f(&data);
            let slot = best.entry(key).or_insert_with(|| data.clone());
            if (data.len(), &data) < (slot.len(), slot) {
                *slot = data;
            }
        }
        println!("// {target}: {} outcome classes", best.len());
        for (key, data) in best {
            let lit: String = data.iter().map(|b| format!("\\x{b:02x}")).collect();
            println!("    // {key}\n    b\"{lit}\",");
        }
    }
}
