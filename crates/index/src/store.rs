use std::sync::{Mutex, MutexGuard, PoisonError};

use rand::SeedableRng;
use rand::rngs::StdRng;
use shoal_proto::message::SearchHit;
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};

use crate::{IndexError, Registry};

/// Where registrations live.
///
/// Today in memory ([`MemoryStore`]); next an embedded durable log + snapshot, then
/// Redis/Valkey so several stateless index servers share one state. Hence the trait is
/// operation-level (one call per request, which a remote store can answer in one round trip,
/// e.g. `SRANDMEMBER` for [`Store::locate`]), takes `&self` (the store does its own locking)
/// and is fallible. The semantics of each operation are those of the same-named
/// [`Registry`] method.
pub trait Store: Send + Sync + 'static {
    /// Adds `holder` for each file; returns how many registrations are new.
    fn register(&self, holder: &PeerAddr, files: &[FileMeta]) -> Result<u32, IndexError>;
    /// Removes `holder` from the given ids (empty: from everything); returns how many
    /// registrations were removed.
    fn unregister(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, IndexError>;
    /// One holder of the file, chosen uniformly at random.
    fn locate(&self, key: &FileKey) -> Result<Option<(FileMeta, PeerAddr)>, IndexError>;
    /// Every holder of the file, sorted.
    fn holders(&self, key: &FileKey) -> Result<Option<(FileMeta, Vec<PeerAddr>)>, IndexError>;
    /// Files whose name contains `query` (ignoring case), sorted by (name, id), at most
    /// `limit`.
    fn search(&self, query: &str, limit: usize) -> Result<Vec<SearchHit>, IndexError>;
}

/// A [`Registry`] and its random generator behind one mutex.
///
/// One lock is enough here: every operation is short and the target machine has two cores,
/// so contention stays negligible (the index benchmark measures it).
pub struct MemoryStore {
    inner: Mutex<Inner>,
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
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The registry never panics midway by design (no unchecked indexing); should a bug
        // make it, serving the data as is beats refusing every later request.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Store for MemoryStore {
    fn register(&self, holder: &PeerAddr, files: &[FileMeta]) -> Result<u32, IndexError> {
        Ok(self.lock().registry.register(holder, files))
    }

    fn unregister(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, IndexError> {
        Ok(self.lock().registry.unregister(holder, ids))
    }

    fn locate(&self, key: &FileKey) -> Result<Option<(FileMeta, PeerAddr)>, IndexError> {
        let mut inner = self.lock();
        let Inner { registry, rng } = &mut *inner;
        Ok(registry.locate(key, rng))
    }

    fn holders(&self, key: &FileKey) -> Result<Option<(FileMeta, Vec<PeerAddr>)>, IndexError> {
        Ok(self.lock().registry.holders(key))
    }

    fn search(&self, query: &str, limit: usize) -> Result<Vec<SearchHit>, IndexError> {
        Ok(self.lock().registry.search(query, limit))
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
}
