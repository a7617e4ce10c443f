//! `/metrics` over HTTP, read by a strict Prometheus text-format parser, and its counters
//! moving when a download happens; `/api/status` telling the same story.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{Swarm, http_get, parse_metrics, status};
use shoal_peer::DownloadOutcome;
use shoal_proto::FileKey;

const LEN: usize = 300_000;

fn metrics(addr: std::net::SocketAddr) -> common::Exposition {
    let (code, headers, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    assert!(
        headers["content-type"].starts_with("application/openmetrics-text"),
        "{headers:?}"
    );
    parse_metrics(&body)
}

#[test]
fn metrics_counters_move_when_a_download_happens() {
    let swarm = Swarm::new("song.ogg", LEN);
    let index0 = metrics(swarm.index_page.addr());
    let seeder0 = metrics(swarm.seeder_page.addr());
    let getter0 = metrics(swarm.downloader_page.addr());
    assert_eq!(index0.value("shoal_index_files", &[]), 1.0);
    assert_eq!(index0.value("shoal_index_holders", &[]), 1.0);
    assert_eq!(getter0.value("shoal_peer_received_bytes_total", &[]), 0.0);

    let outcome = swarm
        .downloader
        .downloader()
        .fetch(&FileKey::Name("song.ogg".into()))
        .unwrap();
    assert!(matches!(outcome, DownloadOutcome::Downloaded(_)));

    let index = metrics(swarm.index_page.addr());
    let sources = [("kind", "sources"), ("outcome", "ok")];
    assert!(
        index.value("shoal_index_requests_total", &sources)
            > index0.value("shoal_index_requests_total", &sources)
    );
    assert!(
        index.value("shoal_index_lookup_duration_seconds_count", &[])
            > index0.value("shoal_index_lookup_duration_seconds_count", &[])
    );
    assert_eq!(
        index.types["shoal_index_lookup_duration_seconds"],
        "histogram"
    );
    assert_eq!(
        index.units["shoal_index_lookup_duration_seconds"],
        "seconds"
    );
    // The new copy: one more complete registration, after a partial one while it ran.
    assert_eq!(
        index.value("shoal_index_registrations_total", &[])
            - index0.value("shoal_index_registrations_total", &[]),
        1.0
    );
    assert_eq!(
        index.value("shoal_index_partial_registrations_total", &[]),
        1.0
    );
    assert_eq!(
        (
            index.value("shoal_index_holders", &[]),
            index.value("shoal_index_copies", &[])
        ),
        (2.0, 2.0)
    );
    assert_eq!(index.value("shoal_index_store_errors_total", &[]), 0.0);

    let seeder = metrics(swarm.seeder_page.addr());
    let served = seeder.value("shoal_peer_served_bytes_total", &[])
        - seeder0.value("shoal_peer_served_bytes_total", &[]);
    assert_eq!(served, LEN as f64, "the seeder was the only source");
    assert!(
        seeder.value(
            "shoal_peer_requests_total",
            &[("kind", "read_chunks"), ("outcome", "ok")]
        ) > 0.0
    );
    assert!(
        seeder.value(
            "shoal_peer_requests_total",
            &[("kind", "manifest"), ("outcome", "ok")]
        ) >= 1.0
    );

    let getter = metrics(swarm.downloader_page.addr());
    assert_eq!(
        getter.value("shoal_peer_received_bytes_total", &[]),
        LEN as f64
    );
    assert_eq!(
        getter.value("shoal_peer_downloads_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(getter.value("shoal_peer_downloads_active", &[]), 0.0);
    assert_eq!(getter.value("shoal_peer_shared_files", &[]), 1.0);
    assert_eq!(getter.value("shoal_peer_shared_bytes", &[]), LEN as f64);

    // The API says the same.
    let index_status = status(swarm.index_page.addr());
    assert_eq!(index_status["kind"], "index");
    assert_eq!(index_status["files"][0]["name"], "song.ogg");
    assert_eq!(index_status["files"][0]["holders"], 2);
    assert_eq!(index_status["store"]["healthy"], true);
    let getter_status = status(swarm.downloader_page.addr());
    assert_eq!(getter_status["kind"], "peer");
    assert_eq!(getter_status["totals"]["bytes_received"], LEN);
    assert_eq!(getter_status["totals"]["downloads_completed"], 1);
    assert_eq!(getter_status["files"][0]["name"], "song.ogg");
    assert_eq!(getter_status["indexes"][0]["state"], "registered");
    let seeder_status = status(swarm.seeder_page.addr());
    assert_eq!(seeder_status["totals"]["bytes_served"], LEN);
    assert_eq!(
        seeder_status["totals"]["ratio"],
        serde_json::Value::Null,
        "nothing received yet"
    );
}

#[test]
fn metrics_parser_refuses_what_prometheus_would() {
    let good = "# HELP x_total a.\n# TYPE x counter\nx_total{a=\"1\"} 3\n# EOF\n";
    assert_eq!(parse_metrics(good).value("x_total", &[("a", "1")]), 3.0);
    for bad in [
        "# TYPE x counter\nx_total 3\n",             // no # EOF
        "x_total 3\n# EOF\n",                        // undeclared family
        "# TYPE x counter\nx 3\n# EOF\n",            // counter without _total
        "# TYPE x counter\nx_total{a=1} 3\n# EOF\n", // unquoted label
        "# TYPE x counter\nx_total three\n# EOF\n",  // not a number
        "# TYPE x gauge\nx 1\nx 2\n# EOF\n",         // duplicate sample
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n", // shrinking
    ] {
        let parsed = std::panic::catch_unwind(|| parse_metrics(bad));
        assert!(parsed.is_err(), "accepted {bad:?}");
    }
}
