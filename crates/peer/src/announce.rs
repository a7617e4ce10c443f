//! Announcing: keeping a peer's registrations alive on every index it was given.
//!
//! Like a BitTorrent client with a multi-tracker list, a peer registers with *all* its
//! indexes, one [`IndexClient`] each, so losing any one of them loses nothing: lookups fail
//! over to the next index, and it lists the peer too. For each index the [`Announcer`]:
//!
//! - registers the whole library at start (an index that is down is retried at every
//!   heartbeat; starting needs one index to accept);
//! - renews the lease with one small `Renew` every [`AnnouncerConfig::heartbeat_interval`]
//!   (a third of the lease, so two heartbeats may be lost before the lease lapses);
//! - registers everything again when the index answers that it does not know the peer (it
//!   restarted without its data, or the lease lapsed while it was unreachable);
//! - applies the folder's changes ([`Announcer::apply`], fed by a [`crate::FolderWatcher`]);
//!   an index that misses a change is brought back in step at the next heartbeat by
//!   unregistering everything and registering again, since it may hold stale ids that a
//!   renewal would otherwise keep alive forever;
//! - unregisters everything at shutdown, from all indexes at once.
//!
//! Indexes that serve one shared registry (they answer `Identify` with the same identity,
//! e.g. several index servers on one Redis) count as one: the peer announces through the
//! first of them and moves to the next when that one stops answering (its
//! [`IndexClient`] has them all, in the order given), instead of announcing to each.
//!
//! Each round talks to all indexes in parallel, so an index that hangs until its timeout
//! delays no other. [`Announcer::tick`] is one heartbeat round, so tests drive heartbeats
//! without waiting for time to pass.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};
use shoal_index::{IndexClient, IndexError};
use shoal_proto::{FileId, FileMeta, PeerAddr, Transport};

use crate::{Library, LibraryChange, PeerError};

/// Encoded-size budget of one `Register` request: well under the index's default 64 KiB
/// request limit, so a large folder goes in several requests instead of being refused.
const REGISTER_BATCH_BYTES: usize = 32 << 10;
/// Generous upper bound of one file's encoded size beyond its name.
const FILE_OVERHEAD: usize = 64;
/// Ids per `Unregister` request (32 bytes each, well under the request limit).
const UNREGISTER_BATCH: usize = 1000;

/// Timing of an [`Announcer`].
#[derive(Clone, Debug)]
pub struct AnnouncerConfig {
    /// How long the indexes keep a registration without renewal (their `--lease`);
    /// heartbeats go every third of it. Default 60 s.
    pub lease: Duration,
    /// Read/write timeout of each request to an index. Default 5 s.
    pub request_timeout: Duration,
}

impl Default for AnnouncerConfig {
    fn default() -> Self {
        AnnouncerConfig {
            lease: Duration::from_secs(60),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl AnnouncerConfig {
    /// Time between heartbeats: a third of the lease.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.lease / 3).max(Duration::from_millis(1))
    }
}

/// What one index made of the last round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexStatus {
    /// The lease was renewed; the index counts this many of the peer's registrations.
    Renewed {
        /// Registrations the lease covers.
        files: u32,
    },
    /// Every file was registered (at start, or again because the index had forgotten the
    /// peer or was out of step).
    Registered {
        /// Files registered.
        files: usize,
    },
    /// Everything was unregistered (shutdown).
    Unregistered {
        /// Registrations the index removed.
        removed: u32,
    },
    /// The index could not be reached or refused; retried at the next heartbeat.
    Failed {
        /// Why.
        reason: String,
    },
    /// Nothing was sent (nothing to renew, or not yet tried).
    Idle,
}

impl fmt::Display for IndexStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexStatus::Renewed { files } => write!(f, "renewed ({files} files)"),
            IndexStatus::Registered { files } => write!(f, "registered {files} files"),
            IndexStatus::Unregistered { removed } => write!(f, "unregistered {removed} files"),
            IndexStatus::Failed { reason } => write!(f, "failed: {reason}"),
            IndexStatus::Idle => f.write_str("idle"),
        }
    }
}

/// Keeps a peer's files registered on every index it was given (see the module docs).
/// Dropping it (or [`Announcer::shutdown`]) stops the heartbeat and unregisters the peer
/// from every index.
pub struct Announcer<T: Transport> {
    shared: Arc<Mutex<Core<T>>>,
    holder: PeerAddr,
    config: AnnouncerConfig,
    heartbeat: Option<(Sender<()>, JoinHandle<()>)>,
}

impl<T: Transport> fmt::Debug for Announcer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Announcer")
            .field("holder", &self.holder)
            .field("status", &self.status())
            .finish()
    }
}

impl<T: Transport> Announcer<T> {
    /// Registers `library`'s files as held by `holder` with every index in `indexes` (in
    /// parallel). Succeeds if at least one index accepted; the others are warned about and
    /// retried at each heartbeat. No heartbeat runs until [`Announcer::spawn_heartbeat`]
    /// (or [`Announcer::tick`]).
    pub fn start(
        transport: T,
        indexes: Vec<PeerAddr>,
        holder: PeerAddr,
        library: &Library,
        config: AnnouncerConfig,
    ) -> Result<Announcer<T>, PeerError> {
        let mut seen = BTreeSet::new();
        let indexes: Vec<PeerAddr> = indexes
            .into_iter()
            .filter(|addr| seen.insert(addr.clone()))
            .collect();
        let trackers = registries(&transport, indexes, config.request_timeout)
            .into_iter()
            .filter_map(|addrs| {
                Some(Tracker {
                    addr: addrs.first()?.clone(),
                    client: IndexClient::new(transport.clone(), addrs)
                        .with_timeout(config.request_timeout),
                    sync: Standing::Unregistered,
                    suspect: false,
                    last: IndexStatus::Idle,
                })
            })
            .collect();
        let mut core = Core {
            holder: holder.clone(),
            announced: library
                .files()
                .into_iter()
                .map(|m| (m.name.clone(), m))
                .collect(),
            trackers,
            stopped: false,
        };
        let statuses = core.heartbeat();
        let accepted = statuses
            .iter()
            .filter(|(_, s)| matches!(s, IndexStatus::Registered { .. }))
            .count();
        if accepted == 0 {
            let reasons = if statuses.is_empty() {
                "no index address was given".to_string()
            } else {
                statuses
                    .iter()
                    .map(|(addr, status)| format!("{addr}: {status}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Err(PeerError::NoIndexAccepted { holder, reasons });
        }
        for (addr, status) in &statuses {
            if let IndexStatus::Failed { reason } = status {
                log::warn!(
                    "index {addr} did not take the registration ({reason}); retrying every {} s",
                    config.heartbeat_interval().as_secs()
                );
            }
        }
        Ok(Announcer {
            shared: Arc::new(Mutex::new(core)),
            holder,
            config,
            heartbeat: None,
        })
    }

    /// Starts the heartbeat thread: a [`Announcer::tick`] every
    /// [`AnnouncerConfig::heartbeat_interval`] until shutdown. Calling it again does nothing.
    pub fn spawn_heartbeat(&mut self) -> Result<(), PeerError> {
        if self.heartbeat.is_some() {
            return Ok(());
        }
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let shared = Arc::clone(&self.shared);
        let interval = self.config.heartbeat_interval();
        let thread = thread::Builder::new()
            .name("index-heartbeat".into())
            .spawn(move || {
                // The stop signal is the channel closing; a timeout is the next heartbeat.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    lock(&shared).heartbeat();
                }
            })
            .map_err(|source| PeerError::Thread {
                what: "heartbeat",
                source,
            })?;
        self.heartbeat = Some((stop, thread));
        Ok(())
    }

    /// One heartbeat round on every index: renew, or register everything where the index
    /// forgot the peer, never took the registration, or missed a change.
    pub fn tick(&self) -> Vec<(PeerAddr, IndexStatus)> {
        lock(&self.shared).heartbeat()
    }

    /// Applies a change of the folder on every index: the ids of removed and changed files
    /// are unregistered, new and changed files registered.
    pub fn apply(&self, change: &LibraryChange) {
        lock(&self.shared).apply(change);
    }

    /// A callback for [`crate::FolderWatcher::start`] that applies each change.
    pub fn change_sink(&self) -> impl Fn(LibraryChange) + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move |change: LibraryChange| lock(&shared).apply(&change)
    }

    /// The address the files are registered as.
    pub fn holder(&self) -> &PeerAddr {
        &self.holder
    }

    /// Each index with the outcome of its last round.
    pub fn status(&self) -> Vec<(PeerAddr, IndexStatus)> {
        lock(&self.shared)
            .trackers
            .iter()
            .map(|t| (t.addr.clone(), t.last.clone()))
            .collect()
    }

    /// Stops the heartbeat and unregisters the peer from every index at once; returns what
    /// each index said. Later calls (and drop) do nothing.
    pub fn shutdown(mut self) -> Vec<(PeerAddr, IndexStatus)> {
        self.halt()
    }

    fn halt(&mut self) -> Vec<(PeerAddr, IndexStatus)> {
        if let Some((stop, thread)) = self.heartbeat.take() {
            drop(stop);
            if thread.join().is_err() {
                log::warn!("the heartbeat thread stopped with a panic");
            }
        }
        lock(&self.shared).shut_down()
    }
}

impl<T: Transport> Drop for Announcer<T> {
    fn drop(&mut self) {
        self.halt();
    }
}

// A panic while the lock was held left at worst an index marked out of step, which the
// next heartbeat repairs.
fn lock<T: Transport>(shared: &Mutex<Core<T>>) -> MutexGuard<'_, Core<T>> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where one index stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// It holds exactly the announced files (as far as we know).
    InSync,
    /// It holds nothing of ours: register everything.
    Unregistered,
    /// It may hold stale ids: unregister everything, then register everything.
    OutOfStep,
}

struct Tracker<T: Transport> {
    addr: PeerAddr,
    client: IndexClient<T>,
    sync: Standing,
    /// The last renewal counted other than the announced number of files; a second one in a
    /// row means out of step (one alone may be a download registered a moment before the
    /// watcher reported it).
    suspect: bool,
    last: IndexStatus,
}

struct Core<T: Transport> {
    holder: PeerAddr,
    /// What every index should list for us, by name.
    announced: BTreeMap<String, FileMeta>,
    trackers: Vec<Tracker<T>>,
    stopped: bool,
}

impl<T: Transport> Core<T> {
    fn heartbeat(&mut self) -> Vec<(PeerAddr, IndexStatus)> {
        if self.stopped {
            return Vec::new();
        }
        let files: Vec<FileMeta> = self.announced.values().cloned().collect();
        let holder = &self.holder;
        round(&mut self.trackers, |t| {
            let before = t.last.clone();
            let status = t.heartbeat(holder, &files);
            log_transition(&t.addr, &before, &status);
            status
        })
    }

    fn apply(&mut self, change: &LibraryChange) {
        if self.stopped || change.is_empty() {
            return;
        }
        let mut dropped = BTreeSet::new();
        let mut add = BTreeMap::new();
        for meta in &change.removed {
            self.announced.remove(&meta.name);
            dropped.insert(meta.id);
        }
        for changed in &change.changed {
            dropped.insert(changed.old.id);
            self.announced
                .insert(changed.new.name.clone(), changed.new.clone());
            add.insert(changed.new.name.clone(), changed.new.clone());
        }
        for meta in &change.added {
            self.announced.insert(meta.name.clone(), meta.clone());
            add.insert(meta.name.clone(), meta.clone());
        }
        // Unregistering is by id: another name with a dropped id loses its listing too, so
        // it is registered again.
        for (name, meta) in &self.announced {
            if dropped.contains(&meta.id) {
                add.insert(name.clone(), meta.clone());
            }
        }
        let dropped: Vec<FileId> = dropped.into_iter().collect();
        let add: Vec<FileMeta> = add.into_values().collect();
        log::info!(
            "folder changed: {} added, {} changed, {} removed; updating {} indexes",
            change.added.len(),
            change.changed.len(),
            change.removed.len(),
            self.trackers.len()
        );
        let holder = &self.holder;
        round(&mut self.trackers, |t| t.apply(holder, &dropped, &add));
    }

    fn shut_down(&mut self) -> Vec<(PeerAddr, IndexStatus)> {
        if self.stopped {
            return Vec::new();
        }
        self.stopped = true;
        let holder = &self.holder;
        let statuses = round(&mut self.trackers, |t| {
            match t.client.unregister(holder, &[]) {
                Ok(removed) => IndexStatus::Unregistered { removed },
                Err(e) => IndexStatus::Failed {
                    reason: e.to_string(),
                },
            }
        });
        for (addr, status) in &statuses {
            match status {
                IndexStatus::Failed { reason } => {
                    log::warn!("could not unregister {holder} from index {addr}: {reason}")
                }
                _ => log::info!("index {addr}: {status}"),
            }
        }
        statuses
    }
}

/// Groups index addresses by the registry they serve: indexes that answer the same identity
/// share one registry (Redis), so one of them takes the announcement and the others are
/// its fallbacks, in the order given. An index that has a registry of its own, an older
/// index that does not know the question, or one that cannot be asked now, is a group of
/// its own. Asks all of them in parallel; each non-empty group keeps its first address first.
fn registries<T: Transport>(
    transport: &T,
    indexes: Vec<PeerAddr>,
    timeout: Duration,
) -> Vec<Vec<PeerAddr>> {
    if indexes.len() < 2 {
        return indexes.into_iter().map(|addr| vec![addr]).collect();
    }
    let identities: Vec<Option<String>> = thread::scope(|scope| {
        let jobs: Vec<_> = indexes
            .iter()
            .map(|addr| {
                let mut client =
                    IndexClient::new(transport.clone(), vec![addr.clone()]).with_timeout(timeout);
                thread::Builder::new()
                    .name("index-identify".into())
                    .spawn_scoped(scope, move || client.identify().ok().flatten())
            })
            .collect();
        jobs.into_iter()
            .map(|job| job.ok().and_then(|j| j.join().ok()).flatten())
            .collect()
    });
    let mut groups: Vec<(Option<String>, Vec<PeerAddr>)> = Vec::new();
    for (addr, identity) in indexes.into_iter().zip(identities) {
        match groups
            .iter_mut()
            .find(|(id, _)| identity.is_some() && *id == identity)
        {
            Some((_, addrs)) => {
                let first = addrs.first().map_or("", PeerAddr::as_str);
                log::info!(
                    "index {addr} serves the same registry as {first}: announcing through one of them"
                );
                addrs.push(addr);
            }
            None => groups.push((identity, vec![addr])),
        }
    }
    groups.into_iter().map(|(_, addrs)| addrs).collect()
}

/// Runs `op` on every index in parallel and records each outcome.
fn round<T: Transport>(
    trackers: &mut [Tracker<T>],
    op: impl Fn(&mut Tracker<T>) -> IndexStatus + std::marker::Sync,
) -> Vec<(PeerAddr, IndexStatus)> {
    let op = &op;
    if let [only] = trackers {
        only.last = op(only);
    } else {
        thread::scope(|scope| {
            for tracker in trackers.iter_mut() {
                let addr = tracker.addr.clone();
                let job = thread::Builder::new()
                    .name("index-announce".into())
                    .spawn_scoped(scope, move || tracker.last = op(tracker));
                // Rare enough (out of threads) that this index just sits out the round.
                if let Err(e) = job {
                    log::warn!("cannot start a thread to update index {addr}: {e}");
                }
            }
        });
    }
    trackers
        .iter()
        .map(|t| (t.addr.clone(), t.last.clone()))
        .collect()
}

impl<T: Transport> Tracker<T> {
    fn heartbeat(&mut self, holder: &PeerAddr, files: &[FileMeta]) -> IndexStatus {
        match self.sync {
            Standing::Unregistered => self.register_all(holder, files, false),
            Standing::OutOfStep => self.register_all(holder, files, true),
            // Nothing registered, nothing to keep alive (the index forgets a holder with no
            // files, so a renewal would only be refused).
            Standing::InSync if files.is_empty() => IndexStatus::Idle,
            Standing::InSync => match self.client.renew(holder) {
                Ok(n) if n as usize == files.len() => {
                    self.suspect = false;
                    IndexStatus::Renewed { files: n }
                }
                Ok(n) if self.suspect => {
                    log::warn!(
                        "index {} lists {n} files of {holder}, not {}; registering again",
                        self.addr,
                        files.len()
                    );
                    self.register_all(holder, files, true)
                }
                Ok(n) => {
                    self.suspect = true;
                    IndexStatus::Renewed { files: n }
                }
                Err(IndexError::UnknownHolder { .. }) => {
                    log::info!(
                        "index {} forgot {holder} (restarted, or the lease lapsed); registering {} files again",
                        self.addr,
                        files.len()
                    );
                    self.register_all(holder, files, false)
                }
                // Still in step as far as we know: when the index answers again, its
                // renewal says whether it kept us.
                Err(e) => IndexStatus::Failed {
                    reason: e.to_string(),
                },
            },
        }
    }

    /// Registers every file, after unregistering everything first if `clear`.
    fn register_all(&mut self, holder: &PeerAddr, files: &[FileMeta], clear: bool) -> IndexStatus {
        let result = (|| {
            if clear {
                self.client.unregister(holder, &[])?;
            }
            if files.is_empty() {
                // Still one request: it tells whether the index is there.
                self.client.register(holder, &[])?;
            }
            for batch in register_batches(files) {
                self.client.register(holder, batch)?;
            }
            Ok::<(), IndexError>(())
        })();
        match result {
            Ok(()) => {
                self.sync = Standing::InSync;
                self.suspect = false;
                IndexStatus::Registered { files: files.len() }
            }
            Err(e) => IndexStatus::Failed {
                reason: e.to_string(),
            },
        }
    }

    /// Unregisters `dropped` ids, then registers `add`. An index not in step is left for the
    /// next heartbeat, which registers everything anyway.
    fn apply(&mut self, holder: &PeerAddr, dropped: &[FileId], add: &[FileMeta]) -> IndexStatus {
        if self.sync != Standing::InSync {
            return self.last.clone();
        }
        if let IndexStatus::Failed { reason } = &self.last {
            // Known to be down: waiting for its timeout would only hold up the watcher.
            self.sync = Standing::OutOfStep;
            return IndexStatus::Failed {
                reason: reason.clone(),
            };
        }
        let result = (|| {
            for batch in dropped.chunks(UNREGISTER_BATCH) {
                self.client.unregister(holder, batch)?;
            }
            for batch in register_batches(add) {
                self.client.register(holder, batch)?;
            }
            Ok::<(), IndexError>(())
        })();
        match result {
            Ok(()) => IndexStatus::Registered { files: add.len() },
            Err(e) => {
                log::warn!(
                    "index {} missed a folder change ({e}); it is brought back in step at the next heartbeat",
                    self.addr
                );
                self.sync = Standing::OutOfStep;
                IndexStatus::Failed {
                    reason: e.to_string(),
                }
            }
        }
    }
}

/// One log line when an index stops or starts answering, not one per heartbeat.
fn log_transition(addr: &PeerAddr, before: &IndexStatus, now: &IndexStatus) {
    let failed = |s: &IndexStatus| matches!(s, IndexStatus::Failed { .. });
    match (failed(before), now) {
        (false, IndexStatus::Failed { reason }) if *before != IndexStatus::Idle => {
            log::warn!("index {addr} is not answering ({reason}); retrying at each heartbeat")
        }
        (true, status) if !failed(status) => log::info!("index {addr} is back: {status}"),
        _ => log::debug!("index {addr}: {now}"),
    }
}

/// Splits `files` into requests that fit the index's request limit.
fn register_batches(files: &[FileMeta]) -> impl Iterator<Item = &[FileMeta]> {
    let mut rest = files;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let mut n = 0;
        for meta in rest {
            bytes += meta.name.len() + FILE_OVERHEAD;
            if n > 0 && bytes > REGISTER_BATCH_BYTES {
                break;
            }
            n += 1;
        }
        let (batch, tail) = rest.split_at(n);
        rest = tail;
        Some(batch)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str) -> FileMeta {
        FileMeta {
            name: name.into(),
            size: 1,
            chunk_size: 1024,
            id: FileId([0; 32]),
        }
    }

    #[test]
    fn batches_cover_every_file_once_within_the_budget() {
        let files: Vec<FileMeta> = (0..2000).map(|i| meta(&format!("{i:0>200}"))).collect();
        let batches: Vec<&[FileMeta]> = register_batches(&files).collect();
        assert!(batches.len() > 1);
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 2000);
        for batch in &batches {
            let bytes: usize = batch.iter().map(|m| m.name.len() + FILE_OVERHEAD).sum();
            assert!(bytes <= REGISTER_BATCH_BYTES);
        }
        assert_eq!(register_batches(&[]).count(), 0);
        assert_eq!(register_batches(&files[..1]).count(), 1);
    }

    #[test]
    fn the_heartbeat_is_a_third_of_the_lease() {
        let config = AnnouncerConfig::default();
        assert_eq!(config.heartbeat_interval(), Duration::from_secs(20));
    }
}
