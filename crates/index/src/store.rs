use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use shoal_proto::message::SearchHit;
use shoal_proto::{FileId, FileKey, FileMeta, NodeId, PeerAddr};

use crate::nodes::NodeBindings;
use crate::partial::{Partials, Sources};
use crate::{Clock, RegistrationLimits, Registry, Search, StoreError, SystemClock};

/// Listing slots a search looks at per hold of the registry lock (a few milliseconds at
/// most): other requests get their turn between slices.
pub(crate) const SEARCH_SLICE: usize = 4096;

/// Where registrations live.
///
/// In memory ([`MemoryStore`]) or in an embedded durable log + snapshots
/// ([`crate::DurableStore`]); next Redis/Valkey, so several stateless index servers share one
/// state. Hence the trait is
/// operation-level (one call per request, which a remote store can answer in one round trip,
/// e.g. `SRANDMEMBER` for [`Store::locate`]), takes `&self` (the store does its own locking)
/// and is fallible. The semantics of each operation are those of the same-named
/// [`Registry`] method, with the time taken from the store's clock.
///
/// Leases: a registration lives for [`Store::lease`] after the holder's last registration
/// or renewal; lookups never return a holder whose lease lapsed, and
/// [`Store::sweep_expired`] (which [`crate::IndexServer`] calls every quarter lease)
/// removes such holders for good.
pub trait Store: Send + Sync + 'static {
    /// Adds `holder` for each file; returns how many registrations are new. No caps: see
    /// [`Store::register_within`], which the server calls.
    fn register(&self, holder: &PeerAddr, files: &[FileMeta]) -> Result<u32, StoreError> {
        self.register_within(holder, holder.host(), files, &RegistrationLimits::UNLIMITED)
    }
    /// Removes `holder` from the given ids (empty: from everything); returns how many
    /// registrations were removed.
    fn unregister(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, StoreError>;
    /// One holder of the file, chosen uniformly at random.
    fn locate(&self, key: &FileKey) -> Result<Option<(FileMeta, PeerAddr)>, StoreError>;
    /// Every holder of the file, sorted.
    fn holders(&self, key: &FileKey) -> Result<Option<(FileMeta, Vec<PeerAddr>)>, StoreError>;
    /// Files whose name contains `query` (ignoring case), sorted by (name, id), at most
    /// `limit`.
    fn search(&self, query: &str, limit: usize) -> Result<Vec<SearchHit>, StoreError>;
    /// Renews the lease of all of `holder`'s registrations. Returns how many it has, or
    /// `None` if the store does not know the holder or its lease already lapsed (it must
    /// register again).
    fn renew(&self, holder: &PeerAddr) -> Result<Option<u32>, StoreError>;
    /// Removes every holder whose lease lapsed, with all its registrations. Returns each
    /// removed holder and how many registrations it had.
    fn sweep_expired(&self) -> Result<Vec<(PeerAddr, u32)>, StoreError>;
    /// How long a registration lives without renewal.
    fn lease(&self) -> Duration;
    /// The registry's identity if other index servers may serve the same one (a shared
    /// store: the same text on all of them, see [`crate::RedisStore::identity`]); `None`
    /// for a registry of this server's own, or while the shared one cannot be reached.
    fn identity(&self) -> Option<String> {
        None
    }
    /// Swarm: `holder` is downloading these files and serves their verified chunks. Returns
    /// how many partial registrations are new; renews the holder's partial lease. A later
    /// [`Store::register`] of a file by the same holder replaces its partial registration.
    /// No caps: see [`Store::register_partial_within`].
    fn register_partial(&self, holder: &PeerAddr, files: &[FileMeta]) -> Result<u32, StoreError> {
        self.register_partial_within(holder, holder.host(), files, &RegistrationLimits::UNLIMITED)
    }
    /// `holder` stopped downloading these ids (empty: all); returns how many were removed.
    fn unregister_partial(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, StoreError>;
    /// Every live complete and partial holder of the file, marked apart.
    fn sources(&self, key: &FileKey) -> Result<Option<Sources>, StoreError>;

    /// What the store holds, for status pages and metrics. The default counts through a
    /// search of everything (it cannot tell distinct holders); stores that can count
    /// directly say so.
    fn counts(&self) -> Result<StoreCounts, StoreError> {
        let hits = self.search("", usize::MAX)?;
        Ok(StoreCounts {
            files: hits.len(),
            holders: None,
            registrations: hits.iter().map(|h| u64::from(h.holders)).sum(),
            partial_registrations: hits.iter().map(|h| u64::from(h.downloading)).sum(),
        })
    }
    /// A short name of the kind of store (`memory`, `durable`, ...), for status pages.
    fn kind(&self) -> &'static str {
        "custom"
    }

    /// Where the holders' node-id bindings live, if the store keeps them itself (see
    /// [`crate::nodes`]): a store several index servers share must, so a holder bound
    /// through one server is bound at all of them. `None` (the default): each server keeps
    /// its own [`crate::NodeBook`] in memory.
    fn node_bindings(&self) -> Option<&dyn NodeBindings> {
        None
    }

    /// [`Store::locate`] and the chosen holder's node id from `bindings` (the server's: this
    /// store's own [`Store::node_bindings`] when it has them). The default asks one, then the
    /// other; a store with its own bindings may answer both at once (`RedisStore`: in the
    /// same script call), and then answers from its own bindings whatever it is given.
    fn locate_bound(
        &self,
        key: &FileKey,
        bindings: &dyn NodeBindings,
    ) -> Result<Option<(FileMeta, PeerAddr, Option<NodeId>)>, StoreError> {
        match self.locate(key)? {
            Some((file, holder)) => {
                let node = bindings.node(&holder)?;
                Ok(Some((file, holder, node)))
            }
            None => Ok(None),
        }
    }

    /// [`Store::register`] within `limits`: `address` is the host the request came from.
    /// A request that would take the holder, or the holders registered from its address,
    /// past a cap is refused whole with [`StoreError::OverLimit`] and stores nothing. The
    /// caps are checked under the store's own lock, so two requests cannot both slip past.
    fn register_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, StoreError>;

    /// [`Store::register_partial`] within `limits`, as [`Store::register_within`]; partial
    /// registrations are counted apart from complete ones, against the same caps.
    fn register_partial_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, StoreError>;
}

/// What a [`Store`] holds ([`Store::counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreCounts {
    /// Files with at least one complete or partial holder.
    pub files: usize,
    /// Distinct complete holders, where the store can tell.
    pub holders: Option<usize>,
    /// Complete (file, holder) registrations.
    pub registrations: u64,
    /// Partial (file, holder) registrations: downloads in progress that serve.
    pub partial_registrations: u64,
}

/// Exact counts of a registry and its partial registry (expired entries included until
/// swept); files counted from the listing of everything.
pub(crate) fn registry_counts(
    registry: &Registry,
    partials: &Partials,
    files: usize,
) -> StoreCounts {
    StoreCounts {
        files,
        holders: Some(registry.holder_count()),
        registrations: registry.registration_count() as u64,
        partial_registrations: partials.registration_count() as u64,
    }
}

/// Runs `search` over the registry `lock` gives, one [`SEARCH_SLICE`] per hold of the lock.
pub(crate) fn search_in_slices<G: std::ops::Deref<Target = Registry>>(
    mut lock: impl FnMut() -> G,
    query: &str,
    limit: usize,
    now: Duration,
) -> Vec<SearchHit> {
    let mut search = Search::new(query, limit);
    while !lock().search_some(&mut search, now, SEARCH_SLICE) {}
    search.finish()
}

/// A [`Registry`] and its random generator behind one mutex.
///
/// One lock is enough here: every operation is short and the target machine has two cores,
/// so contention stays negligible (the index benchmark measures it).
pub struct MemoryStore {
    inner: Mutex<Inner>,
    partials: Partials,
    clock: Arc<dyn Clock>,
}

struct Inner {
    registry: Registry,
    rng: StdRng,
}

impl MemoryStore {
    /// An empty store whose random choices are seeded from OS entropy.
    pub fn new() -> Self {
        Self::from_rng(StdRng::from_os_rng())
    }

    /// An empty store with a seeded generator, for deterministic tests.
    pub fn with_seed(seed: u64) -> Self {
        Self::from_rng(StdRng::seed_from_u64(seed))
    }

    fn from_rng(rng: StdRng) -> Self {
        MemoryStore {
            inner: Mutex::new(Inner {
                registry: Registry::new(),
                rng,
            }),
            partials: Partials::new(crate::DEFAULT_LEASE),
            clock: Arc::new(SystemClock::new()),
        }
    }

    /// Sets the lease (default 60 s); it applies from the next registration or renewal.
    pub fn with_lease(self, lease: Duration) -> Self {
        self.lock().registry.set_lease(lease);
        self.partials.set_lease(lease);
        self
    }

    /// Takes lease time from `clock` (default: [`SystemClock`]); tests pass a
    /// [`crate::ManualClock`].
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The registry never panics midway by design (no unchecked indexing); should a bug
        // make it, serving the data as is beats refusing every later request.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The registry part of a locked [`Inner`].
struct RegistryGuard<'a>(MutexGuard<'a, Inner>);

impl std::ops::Deref for RegistryGuard<'_> {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.0.registry
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for MemoryStore {
    fn register_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, StoreError> {
        let now = self.clock.now();
        let added = self
            .lock()
            .registry
            .register_within(holder, address, files, now, limits)?;
        self.partials.complete(holder, files);
        Ok(added)
    }

    fn register_partial_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, StoreError> {
        Ok(self
            .partials
            .register_within(holder, address, files, self.clock.now(), limits)?)
    }

    fn unregister(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, StoreError> {
        let removed = self.lock().registry.unregister(holder, ids);
        self.partials.unregister(holder, ids);
        Ok(removed)
    }

    fn locate(&self, key: &FileKey) -> Result<Option<(FileMeta, PeerAddr)>, StoreError> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let Inner { registry, rng } = &mut *inner;
        Ok(registry.locate(key, now, rng))
    }

    fn holders(&self, key: &FileKey) -> Result<Option<(FileMeta, Vec<PeerAddr>)>, StoreError> {
        let now = self.clock.now();
        Ok(self.lock().registry.holders(key, now))
    }

    fn search(&self, query: &str, limit: usize) -> Result<Vec<SearchHit>, StoreError> {
        let now = self.clock.now();
        let complete = search_in_slices(|| RegistryGuard(self.lock()), query, limit, now);
        Ok(self.partials.search(query, limit, complete, now))
    }

    fn counts(&self) -> Result<StoreCounts, StoreError> {
        let files = self.search("", usize::MAX)?.len();
        Ok(registry_counts(
            &self.lock().registry,
            &self.partials,
            files,
        ))
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn renew(&self, holder: &PeerAddr) -> Result<Option<u32>, StoreError> {
        let now = self.clock.now();
        self.partials.renew(holder, now);
        Ok(self.lock().registry.renew(holder, now))
    }

    fn sweep_expired(&self) -> Result<Vec<(PeerAddr, u32)>, StoreError> {
        let now = self.clock.now();
        self.partials.sweep(now);
        Ok(self.lock().registry.sweep(now))
    }

    fn lease(&self) -> Duration {
        self.lock().registry.lease()
    }

    fn unregister_partial(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, StoreError> {
        Ok(self.partials.unregister(holder, ids))
    }

    fn sources(&self, key: &FileKey) -> Result<Option<Sources>, StoreError> {
        let now = self.clock.now();
        let complete = self.lock().registry.holders(key, now);
        Ok(self.partials.sources(key, complete, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_stores_choose_alike() {
        let files = [FileMeta {
            name: "x".into(),
            size: 1,
            chunk_size: 1024,
            id: FileId([1; 32]),
        }];
        let (a, b) = (MemoryStore::with_seed(9), MemoryStore::with_seed(9));
        for i in 0..10 {
            let holder = PeerAddr::new(format!("h{i}:1")).unwrap();
            a.register(&holder, &files).unwrap();
            b.register(&holder, &files).unwrap();
        }
        let key = FileKey::Name("x".into());
        for _ in 0..20 {
            assert_eq!(a.locate(&key).unwrap(), b.locate(&key).unwrap());
        }
        assert_eq!(a.holders(&key).unwrap().unwrap().1.len(), 10);
        assert_eq!(a.search("X", 5).unwrap().len(), 1);
        assert_eq!(
            a.unregister(&PeerAddr::new("h0:1").unwrap(), &[]).unwrap(),
            1
        );
    }

    #[test]
    fn leases_follow_the_injected_clock() {
        let clock = crate::ManualClock::new();
        let store = MemoryStore::with_seed(1)
            .with_lease(Duration::from_secs(10))
            .with_clock(clock.clone());
        let file = FileMeta {
            name: "x".into(),
            size: 1,
            chunk_size: 1024,
            id: FileId([1; 32]),
        };
        let (a, b) = (PeerAddr::new("a:1").unwrap(), PeerAddr::new("b:1").unwrap());
        store.register(&a, std::slice::from_ref(&file)).unwrap();
        store.register(&b, &[file]).unwrap();
        let key = FileKey::Name("x".into());
        // `a` renews every 5 s, `b` never: `b` vanishes at 10 s exactly, `a` stays.
        for step in 1..=6 {
            clock.advance(Duration::from_secs(5));
            assert_eq!(store.renew(&a).unwrap(), Some(1));
            let holders = store.holders(&key).unwrap().unwrap().1;
            let expected = if step < 2 {
                vec![a.clone(), b.clone()]
            } else {
                vec![a.clone()]
            };
            assert_eq!(holders, expected, "at {} s", step * 5);
        }
        assert_eq!(store.renew(&b).unwrap(), None);
        assert_eq!(store.sweep_expired().unwrap(), vec![(b, 1)]);
        assert_eq!(store.lease(), Duration::from_secs(10));
    }
}
