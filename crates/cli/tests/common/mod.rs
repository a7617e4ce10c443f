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
