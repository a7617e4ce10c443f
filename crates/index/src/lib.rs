//! shoal's index: the central registry that knows which peer holds which file.
//!
//! Peers *register* the files they serve; anyone can *locate* a file (one holder chosen at
//! random, which spreads downloads across holders), list all its *holders*, or *search* names.
//! The index never sees file contents: peers transfer files to each other directly.
//!
//! - [`Registry`]: the data, with no I/O and no locking. Listings are keyed by (name, id), so
//!   two peers can hold different contents under one name and one content under two names.
//! - [`Store`]: where registrations live, one call per request. [`MemoryStore`] is a
//!   [`Registry`] behind a mutex; [`DurableStore`] adds an fsync'd log with group commit
//!   and snapshots (survives `kill -9`); [`RedisStore`] keeps it in a shared Redis, so
//!   several stateless index servers serve one registry (one Lua script call per operation).
//!   Stores fail with their own [`StoreError`]; `tests/conformance.rs` holds every store to
//!   the same behaviour. [`LocalRedis`] starts a private `redis-server` for tests and benches.
//! - Leases: a registration lives for a lease (default 60 s) unless its holder renews it
//!   ([`IndexClient::renew`], one small heartbeat for all its files); time comes from an
//!   injected [`Clock`] ([`ManualClock`] in tests).
//! - [`IndexServer`]: serves a [`Store`] over any [`shoal_proto::Transport`], many requests
//!   per connection, one thread per connection. Beside the store, a [`NodeBook`] (in memory)
//!   records which node id each holder registered with, and answers it with lookups.
//! - [`IndexClient`]: typed calls over one persistent connection, with failover across
//!   several index addresses and one transparent reconnect.
//!
//! Everything is generic over the transport, so tests run over the in-memory network:
//!
//! ```
//! use shoal_index::{IndexClient, IndexError, IndexServer, IndexServerConfig, MemoryStore};
//! use shoal_proto::mem::MemNetwork;
//! use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};
//!
//! let net = MemNetwork::new();
//! let server = IndexServer::new(net.host("index"), MemoryStore::with_seed(1), IndexServerConfig::default())
//!     .spawn(&PeerAddr::new("index:0").unwrap())
//!     .unwrap();
//! let mut client = IndexClient::new(net.host("alice"), vec![server.addr().clone()]);
//!
//! let song = FileMeta { name: "song.ogg".into(), size: 5, chunk_size: 1024, id: FileId([7; 32]) };
//! let alice = PeerAddr::new("alice:7000").unwrap();
//! assert_eq!(client.register(&alice, &[song.clone()]).unwrap(), 1);
//! assert_eq!(client.locate(&FileKey::Name("song.ogg".into())).unwrap(), (song, alice));
//! assert!(matches!(
//!     client.locate(&FileKey::Name("other.ogg".into())),
//!     Err(IndexError::NotFound { .. })
//! ));
//! ```

mod client;
mod clock;
mod durable;
mod error;
mod local_redis;
mod metrics;
pub mod nodes;
mod partial;
mod redis;
mod registry;
mod server;
mod store;
mod store_error;

pub use client::IndexClient;
pub use clock::{Clock, ManualClock, SystemClock, UnixClock};
/// Not an API: the durable store's byte decoders and their oracles, for the fuzz targets and
/// property tests.
#[doc(hidden)]
pub use durable::fuzzing;
pub use durable::{DurableOptions, DurableStore, FORMAT_VERSION, Recovery};
pub use error::IndexError;
pub use local_redis::LocalRedis;
pub use metrics::{
    FileRow, IndexMetrics, IndexMonitor, IndexSnapshot, REFUSAL_REASONS, Refusals, RequestTotals,
    StoreHealth, outcome_label,
};
pub use nodes::NodeBook;
pub use partial::{Partials, Sources};
pub use redis::{DEFAULT_PREFIX, DEFAULT_REDIS_TIMEOUT, RedisOptions, RedisStore};
pub use registry::{
    DEFAULT_LEASE, LimitExceeded, ListingView, RegistrationLimits, Registry, Search,
};
pub use server::{
    DEFAULT_MAX_PER_ADDRESS, DEFAULT_MAX_PER_HOLDER, DEFAULT_MAX_QUERY_LEN, IndexServer,
    IndexServerConfig,
};
pub use shoal_proto::server::ServerHandle;
pub use store::{MemoryStore, Store, StoreCounts};
pub use store_error::StoreError;
