//! Downloads where a holder trickles, stalls or outlives a deadline (issue: every wait has an
//! end). Over the in-memory network with injected faults; each download runs with an I/O
//! timeout of an hour, so a test that relied on it would hang past its bounded wait and fail.
//!
//! Every case runs twice: on the bare in-memory network and over TLS 1.3 on it.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

/// The cases on the bare in-memory network.
mod plain {
    type Net = shoal_proto::mem::MemTransport;

    fn on_host(net: &shoal_proto::mem::MemNetwork, name: &str) -> Net {
        net.host(name)
    }

    include!("faults/cases.rs");
}

/// The same cases with every host on TLS over the in-memory network, each with its own key.
mod tls {
    use shoal_proto::tls::{Identity, TlsConfig, TlsTransport};

    type Net = TlsTransport<shoal_proto::mem::MemTransport>;

    /// One key per host name (kept under the target folder), as a machine has one identity
    /// for all its connections.
    fn on_host(net: &shoal_proto::mem::MemNetwork, name: &str) -> Net {
        let keys = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mem-host-keys");
        std::fs::create_dir_all(&keys).unwrap();
        let (identity, _) = Identity::load_or_create(&keys.join(format!("{name}.pem"))).unwrap();
        TlsTransport::new(net.host(name), TlsConfig::new(identity)).unwrap()
    }

    include!("faults/cases.rs");
}
