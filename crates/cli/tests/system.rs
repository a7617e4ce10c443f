//! Whole-system tests: an index and three peers in one process over the in-memory transport
//! (every case twice: plain, and over TLS 1.3 with a key per node),
//! seeded randomness, injected faults. Each test asserts what a user would check.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

/// The cases on the bare in-memory network.
mod plain {
    type Net = shoal_proto::mem::MemTransport;
    const TLS: bool = false;

    fn on_host(net: &shoal_proto::mem::MemNetwork, name: &str) -> Net {
        net.host(name)
    }

    include!("system/cases.rs");
}

/// The same cases with every host on TLS over the in-memory network, each with its own key.
mod tls {
    use shoal_proto::tls::{Identity, TlsConfig, TlsTransport};

    type Net = TlsTransport<shoal_proto::mem::MemTransport>;
    const TLS: bool = true;

    /// One key per host name (kept under the target folder), as a machine has one identity
    /// for all its connections.
    fn on_host(net: &shoal_proto::mem::MemNetwork, name: &str) -> Net {
        let keys = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mem-host-keys");
        std::fs::create_dir_all(&keys).unwrap();
        let (identity, _) = Identity::load_or_create(&keys.join(format!("{name}.pem"))).unwrap();
        TlsTransport::new(net.host(name), TlsConfig::new(identity)).unwrap()
    }

    include!("system/cases.rs");
}
