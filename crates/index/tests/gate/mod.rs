//! A store whose searches for [`HOLD`] wait at a gate: how a test keeps a connection busy
//! (in the middle of a request), since an idle one gives way to a new client at the
//! connection limit.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Duration;

use shoal_index::{MemoryStore, RegistrationLimits, Sources, Store, StoreError};
use shoal_proto::message::SearchHit;
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};

/// The query that waits at the gate.
pub(crate) const HOLD: &str = "hold the line";
/// The query the store fails, with a path and a cause in its error (as a durable store's
/// failure would have) that must not reach the client.
pub(crate) const FAIL: &str = "fail please";
/// The path named in [`FAIL`]'s error.
pub(crate) const FAIL_PATH: &str = "/var/lib/shoal-private/log-00000007";

/// A [`MemoryStore`] with a gate in front of searches for [`HOLD`].
pub(crate) struct Gated {
    inner: MemoryStore,
    /// Told when a held search reached the gate.
    arrived: Mutex<Sender<()>>,
    /// Opened (one search each) by the test.
    open: Mutex<Receiver<()>>,
}

/// The test's side of the gate.
pub(crate) struct Gate {
    /// A held search is at the gate (the connection is busy).
    pub(crate) arrived: Receiver<()>,
    /// Lets one held search through.
    pub(crate) open: Sender<()>,
}

/// A gated store over `inner`, and its gate.
pub(crate) fn gated(inner: MemoryStore) -> (Gated, Gate) {
    let (arrived_tx, arrived) = channel();
    let (open, open_rx) = channel();
    let store = Gated {
        inner,
        arrived: Mutex::new(arrived_tx),
        open: Mutex::new(open_rx),
    };
    (store, Gate { arrived, open })
}

impl Store for Gated {
    fn register_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, StoreError> {
        self.inner.register_within(holder, address, files, limits)
    }
    fn unregister(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, StoreError> {
        self.inner.unregister(holder, ids)
    }
    fn locate(&self, key: &FileKey) -> Result<Option<(FileMeta, PeerAddr)>, StoreError> {
        self.inner.locate(key)
    }
    fn holders(&self, key: &FileKey) -> Result<Option<(FileMeta, Vec<PeerAddr>)>, StoreError> {
        self.inner.holders(key)
    }
    fn search(&self, query: &str, limit: usize) -> Result<Vec<SearchHit>, StoreError> {
        if query == FAIL {
            return Err(StoreError::Failed(format!(
                "cannot read the log {FAIL_PATH}: sector 1234 unreadable"
            )));
        }
        if query == HOLD {
            let _ = self.arrived.lock().map(|tx| tx.send(()));
            // Bounded: a test that forgets to open the gate still ends.
            let _ = self
                .open
                .lock()
                .map(|rx| rx.recv_timeout(Duration::from_secs(30)));
        }
        self.inner.search(query, limit)
    }
    fn renew(&self, holder: &PeerAddr) -> Result<Option<u32>, StoreError> {
        self.inner.renew(holder)
    }
    fn sweep_expired(&self) -> Result<Vec<(PeerAddr, u32)>, StoreError> {
        self.inner.sweep_expired()
    }
    fn lease(&self) -> Duration {
        self.inner.lease()
    }
    fn register_partial_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, StoreError> {
        self.inner
            .register_partial_within(holder, address, files, limits)
    }
    fn unregister_partial(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, StoreError> {
        self.inner.unregister_partial(holder, ids)
    }
    fn sources(&self, key: &FileKey) -> Result<Option<Sources>, StoreError> {
        self.inner.sources(key)
    }
}
