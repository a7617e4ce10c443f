//! What the whole-system test binaries share.
#![allow(dead_code, clippy::unwrap_used)] // each binary uses a part; a failed unwrap fails a test

use rand::SeedableRng;
use shoal_index::{IndexServer, IndexServerConfig, MemoryStore};
use shoal_proto::server::ServerHandle;
use shoal_proto::{PeerAddr, Transport};

/// `len` seeded random bytes: the same content for the same seed, every run.
pub(crate) fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rng, &mut bytes);
    bytes
}

/// An index on `transport` (host `index` of the test's network), port 1024, its random
/// choices seeded.
pub(crate) fn index<T: Transport>(transport: T, seed: u64) -> ServerHandle {
    IndexServer::new(
        transport,
        MemoryStore::with_seed(seed),
        IndexServerConfig::default(),
    )
    .spawn(&PeerAddr::new("index:1024").unwrap())
    .unwrap()
}

/// Compiles a file of test cases twice, as modules `plain` (the bare in-memory network) and
/// `tls` (TLS 1.3 over it, one key per host name, as one identity per machine). The cases
/// see `Net` (the transport type), `on_host(&MemNetwork, name) -> Net` and `TLS`.
#[allow(unused_macros)] // not every test binary compiles cases twice
macro_rules! plain_and_tls {
    ($cases:literal) => {
        /// The cases on the bare in-memory network.
        mod plain {
            type Net = shoal_proto::mem::MemTransport;
            #[allow(dead_code)]
            const TLS: bool = false;

            fn on_host(net: &shoal_proto::mem::MemNetwork, name: &str) -> Net {
                net.host(name)
            }

            include!($cases);
        }

        /// The same cases with every host on TLS over the in-memory network.
        mod tls {
            type Net = shoal_proto::tls::TlsTransport<shoal_proto::mem::MemTransport>;
            #[allow(dead_code)]
            const TLS: bool = true;

            fn on_host(net: &shoal_proto::mem::MemNetwork, name: &str) -> Net {
                super::common::tls_host(net, name)
            }

            include!($cases);
        }
    };
}
#[allow(unused_imports)]
pub(crate) use plain_and_tls;

/// Host `name` of `net` on TLS, with that name's key (kept under the target folder, so
/// every test binary and run gives a host name the same node id).
pub(crate) fn tls_host(
    net: &shoal_proto::mem::MemNetwork,
    name: &str,
) -> shoal_proto::tls::TlsTransport<shoal_proto::mem::MemTransport> {
    use shoal_proto::tls::{Identity, TlsConfig, TlsTransport};
    let keys = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("mem-host-keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (identity, _) = Identity::load_or_create(&keys.join(format!("{name}.pem"))).unwrap();
    TlsTransport::new(net.host(name), TlsConfig::new(identity)).unwrap()
}
