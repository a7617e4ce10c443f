//! Swarm tests over the in-memory network: every downloader serves the chunks it has
//! verified, so a crowd finishes from each other instead of queueing at one seeder. Every
//! host's upload is limited (`MemNetwork::limit_upload`), so the seeder is a real
//! bottleneck; the assertions are about bytes, never about time.
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

    include!("swarm/cases.rs");
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

    include!("swarm/cases.rs");
}
