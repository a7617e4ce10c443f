//! The durable store: the registry in memory, every change in an append-only log on disk,
//! compacted by periodic snapshots. Survives `kill -9`: a change is acknowledged only after
//! its log record is on disk.
//!
//! # Files in the data folder
//!
//! - `log.N`: the changes made after snapshot `N` was taken (or from empty, if there is no
//!   snapshot `N`). A 20-byte header (`SHOALLOG`, the format version as a little-endian u16,
//!   two zero bytes, the generation `N` as a little-endian u64), then records.
//! - `snapshot.N`: the whole registry at the start of `log.N`. Same header with `SHOALSNP`,
//!   then records: holder batches, listing batches, and an end record with the counts;
//!   nothing after it.
//! - A record is a little-endian u32 length, a body of that length (one value encoded by
//!   `shoal_proto::codec`, the wire encoding), and the first 8 bytes of the BLAKE3 hash of
//!   length and body. A damaged length, body or checksum is caught by the checksum.
//! - Format version 1 (this build's is [`FORMAT_VERSION`], 2) is the same layout with the
//!   header's version and generation and the record lengths big-endian (its version field
//!   reads `00 01`). It is still read, so an upgrade keeps every registration; a store whose
//!   newest log is of version 1 takes a snapshot as it opens (a current snapshot and log
//!   replace the old files) instead of appending to it. Any other version is refused, named.
//!   The peer's on-disk files follow the same convention (an 8-byte `SHOAL...` magic, a
//!   little-endian u16 version, little-endian integers, BLAKE3).
//! - `LOCK`: empty, held with an OS file lock while a store has the folder open; a second
//!   store on the same folder gets [`IndexError::DataInUse`].
//!
//! # Writing: group commit
//!
//! A change is applied to the registry and its record queued, both under the registry lock
//! (so the log order is the order of the changes); then the request waits, without the lock,
//! until its record is durable. There is no committer thread: a request that finds no commit
//! in progress leads one itself. The leader takes everything queued, writes it with one
//! `write`, calls `sync_data` once and unparks exactly the requests that batch covered; if
//! more arrived meanwhile, it unparks the first of them to lead the next round. N concurrent
//! requests thus share one fsync, and no batch waits for another thread to be scheduled (on
//! a busy two-core machine that wait cost more than the fsync). A lookup may see a change a
//! moment before it is durable; no client is ever told "registered" before it is. An answer
//! that writes nothing (a repeated registration, removing what is not held, a renewal)
//! still waits for every record queued before it: it may rest on one of them (a second
//! identical `Register` answered `added: 0` while the first's record is unwritten).
//!
//! # A failed write (a full disk)
//!
//! If a write or sync fails, every change not yet on disk (the failed round's, and all
//! queued since) is refused, and undone: the log is cut back to its last synced byte (a
//! failed write can leave part of a record) and the registry is reloaded from the data
//! folder, as a restart would load it, before any refused request is answered. So a refused
//! change leaves no trace. Changes are then refused before they are applied until a probe
//! (64 KiB written and synced to a temporary file in the data folder) succeeds; the store
//! then accepts changes again by itself. The undo costs one reload per failure (about as
//! long as a start, 0.5 to 0.7 s per million registrations), not one per refused request.
//!
//! # Compaction
//!
//! Once the log outgrows both `compact_after` and the last snapshot, a snapshot thread
//! encodes the registry (under its lock: 0.07 to 0.25 s per million registrations here),
//! queues a switch to `log.N+1`, and writes `snapshot.N+1` outside the lock: to a temporary
//! file, `fsync`, rename, `fsync` of the folder. Only then are older logs and snapshots
//! deleted.
//!
//! # Recovery
//!
//! Load the newest snapshot, replay the logs from its generation on, in order. The logs must
//! continue the snapshot without a gap (`log.S`, `log.S+1`, ...; `log.1`, ... without one):
//! a missing snapshot or log stops the start with [`IndexError::DataMissing`] instead of
//! serving a fraction of the registry.
//!
//! A record that does not check out (cut short, failing its checksum, not decoding) is
//! never applied. The replay then resynchronises: it scans forward byte by byte for the next
//! offset where a whole record passes its checksum (a false match needs 64 checksum bits to
//! agree by chance) and replays every intact record from there, so one damaged spot costs
//! the records it covers, not the rest of the log. (Records are set additions and removals
//! of one holder's files, so a later record never needs an earlier one to apply; losing a
//! record loses that change only.) Damage with no intact record after it is the tail. What
//! happens to the file:
//!
//! - A torn tail of the newest log (its last record runs past the end of the file: a crash
//!   mid-write, never acknowledged) is cut in place, so new records never follow garbage.
//! - Any other damage (inside a log, a complete last record failing its checksum, any damage
//!   in an older log) is the disk's doing or someone's: the log is first kept as it was
//!   (`log.N.damaged.K`, a hard link; never deleted by the index), then rewritten with exactly
//!   its intact records (temporary file, `fsync`, rename).
//!
//! Both are reported with `log::warn!` and in [`Recovery`] (bytes cut, bytes skipped, copies
//! kept); neither stops the start. A torn log header (a crash right after a switch) starts
//! that log afresh. Files of another format or of an unknown version, a damaged log header,
//! or a damaged snapshot (written atomically, so damage means the disk, not a crash) stop
//! the start with a readable error and are left as they are. Leases are not stored: every
//! holder loaded gets a fresh lease from the load, so peers still running are listed at
//! once, and peers that are gone vanish within one lease.
//!
//! # The parts
//!
//! - `format`: file headers, record framing and checksums, the log and snapshot records and
//!   their encoding.
//! - `commit`: group commit (the queue, the leader's write and fsync, undoing a failed round).
//! - `compact`: snapshots and the compaction thread.
//! - `recover`: loading a snapshot, replaying a log (tail cut, resynchronising after damage,
//!   repair).
//! - `files`: the folder's layout, `LOCK`, durable writes and fsync helpers.
//! - `fuzzing` (hidden): the byte decoders and their properties, for the fuzz targets in
//!   `fuzz/` and the property tests; not an API.

mod commit;
mod compact;
mod files;
mod format;
#[doc(hidden)]
pub mod fuzzing;
mod recover;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use shoal_proto::message::SearchHit;
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};

use crate::partial::{Partials, Sources};
use crate::registry::DEFAULT_LEASE;
use crate::store::search_in_slices;
use crate::{Clock, IndexError, RegistrationLimits, Registry, Store, StoreError, SystemClock};

use commit::{Batch, LogFile, Queue};
use compact::{compact_loop, take_snapshot, wants_compaction};
use files::{
    DataFiles, create_log, data_error, lock_data_dir, log_path, remove_stale, snapshot_path,
};
pub use format::FORMAT_VERSION;
use format::{HEADER_LEN, LogRecord, Version, encode_record};
use recover::{ReplayMode, damage_summary, load_snapshot, replay_log};

/// How a [`DurableStore`] behaves.
#[derive(Clone)]
pub struct DurableOptions {
    /// How long a registration lives without renewal (default 60 s).
    pub lease: Duration,
    /// Where lease time comes from (default [`SystemClock`]).
    pub clock: Arc<dyn Clock>,
    /// Snapshot once the log holds this many bytes and at least as many as the last
    /// snapshot (default 64 MiB): compaction then costs O(1) amortised per change.
    pub compact_after: u64,
    /// Seed of the random holder choice; `None` seeds from OS entropy.
    pub seed: Option<u64>,
}

impl Default for DurableOptions {
    fn default() -> Self {
        DurableOptions {
            lease: DEFAULT_LEASE,
            clock: Arc::new(SystemClock::new()),
            compact_after: 64 << 20,
            seed: None,
        }
    }
}

/// What [`DurableStore::open`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Generation of the snapshot loaded, if any.
    pub snapshot: Option<u64>,
    /// Log records replayed (after the snapshot).
    pub records: u64,
    /// Bytes of torn or corrupt log tail cut off.
    pub cut_bytes: u64,
    /// Bytes of damage inside logs skipped over (intact records after them are replayed).
    pub skipped_bytes: u64,
    /// Damaged logs kept, as they were, beside the repaired ones (`log.N.damaged.K`).
    pub kept: Vec<PathBuf>,
    /// Registrations loaded.
    pub registrations: usize,
    /// Distinct holders loaded.
    pub holders: usize,
    /// Time spent loading.
    pub elapsed: Duration,
}

/// A registration store that survives crashes: see the module documentation.
pub struct DurableStore {
    shared: Arc<Shared>,
    compactor: Option<JoinHandle<()>>,
    /// Downloads in progress: in memory only (see [`crate::Partials`]).
    partials: Partials,
}

struct Shared {
    dir: PathBuf,
    /// `LOCK` in the data folder, held (an OS file lock) while the store is open.
    _dir_lock: File,
    clock: Arc<dyn Clock>,
    compact_after: u64,
    state: Mutex<State>,
    queue: Mutex<Queue>,
    /// The log being appended to; only the commit leader touches it.
    log: Mutex<LogFile>,
    /// Every record up to this sequence number is settled: on disk, or refused and undone.
    /// Only grows.
    settled_seq: AtomicU64,
    /// Wakes the compactor (snapshot wanted, or stop).
    compact: Condvar,
    /// One snapshot at a time (background or [`DurableStore::snapshot_now`]).
    snapshotting: Mutex<()>,
    /// Tests hold commits here, to prove what is answered before a record is written.
    #[cfg(test)]
    hold: tests::Hold,
}

struct State {
    registry: Registry,
    rng: StdRng,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics midway by design; should a bug make it, the data is still as
    // consistent as the last complete operation left it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DurableStore {
    /// Opens (or, if empty or missing, initialises) the data folder `dir`: loads the newest
    /// snapshot, replays the log after it, cuts off a torn or corrupt tail, and starts the
    /// compaction thread.
    pub fn open(dir: impl AsRef<Path>, options: DurableOptions) -> Result<Self, IndexError> {
        let (store, _) = Self::open_with_report(dir, options)?;
        Ok(store)
    }

    /// [`DurableStore::open`], also returning what recovery found (the CLI and the benchmark
    /// print it).
    pub fn open_with_report(
        dir: impl AsRef<Path>,
        options: DurableOptions,
    ) -> Result<(Self, Recovery), IndexError> {
        let dir = dir.as_ref().to_path_buf();
        if options.lease.is_zero() {
            return Err(IndexError::Store(StoreError::Config(
                "the lease must be longer than zero".into(),
            )));
        }
        let started = Instant::now();
        fs::create_dir_all(&dir).map_err(data_error("cannot create the data folder", &dir))?;
        let dir_lock = lock_data_dir(&dir)?;
        let files = DataFiles::scan(&dir)?;
        let now = options.clock.now();
        let mut registry = Registry::with_lease(options.lease);
        let mut recovery = Recovery::default();

        let base = files.snapshots.last().copied();
        let mut snapshot_bytes = 0;
        if let Some(generation) = base {
            let path = snapshot_path(&dir, generation);
            snapshot_bytes = load_snapshot(&path, generation, &mut registry, now)?;
            recovery.snapshot = Some(generation);
        }
        let base_generation = base.unwrap_or(1);
        let logs = files.logs_from(&dir, base)?;
        let mut current = None;
        for (i, &generation) in logs.iter().enumerate() {
            let path = log_path(&dir, generation);
            let mode = ReplayMode {
                newest: i + 1 == logs.len(),
                repair: true,
                upto: None,
            };
            let replay = replay_log(&path, generation, &mut registry, now, mode)?;
            recovery.records += replay.records;
            recovery.cut_bytes += replay.cut_bytes;
            recovery.skipped_bytes += replay.skipped_bytes;
            recovery.kept.extend(replay.kept);
            if mode.newest {
                current = Some((generation, replay.end, replay.version));
            }
        }
        // A log of an older format is not appended to (its records would mix two formats):
        // the store starts by compacting it into a snapshot and a new log, both current.
        let upgrade_from =
            current.and_then(|(_, _, version)| (version != Version::CURRENT).then_some(version));
        let (generation, file, log_bytes) = match current {
            Some((generation, end, _)) => {
                let path = log_path(&dir, generation);
                let file = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(data_error("cannot open the log", &path))?;
                (generation, file, end)
            }
            None => {
                let file = create_log(&dir, base_generation)?;
                (base_generation, file, HEADER_LEN)
            }
        };
        // Files older than the snapshot were compacted into it; a crash kept them.
        for &g in files.logs.iter().filter(|&&g| g < base_generation) {
            remove_stale(&log_path(&dir, g));
        }
        for &g in files.snapshots.iter().filter(|&&g| Some(g) != base) {
            remove_stale(&snapshot_path(&dir, g));
        }
        for tmp in &files.temporaries {
            remove_stale(tmp);
        }

        recovery.registrations = registry.registration_count();
        recovery.holders = registry.holder_count();
        recovery.elapsed = started.elapsed();
        let rng = match options.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let shared = Arc::new(Shared {
            dir,
            _dir_lock: dir_lock,
            clock: options.clock,
            compact_after: options.compact_after,
            state: Mutex::new(State { registry, rng }),
            queue: Mutex::new(Queue {
                batches: VecDeque::new(),
                queued: 0,
                waiters: Vec::new(),
                committing: false,
                generation,
                latest_generation: generation,
                log_bytes,
                snapshot_bytes,
                failed: None,
                reload_needed: false,
                compact_wanted: false,
                stop: false,
            }),
            log: Mutex::new(LogFile {
                file,
                generation,
                written: log_bytes,
                synced: log_bytes,
                dirty: false,
            }),
            settled_seq: AtomicU64::new(0),
            compact: Condvar::new(),
            snapshotting: Mutex::new(()),
            #[cfg(test)]
            hold: tests::Hold::default(),
        });
        let mut store = DurableStore {
            shared: Arc::clone(&shared),
            compactor: None,
            partials: Partials::new(options.lease),
        };
        let compactor = thread::Builder::new()
            .name("index-compact".into())
            .spawn(move || compact_loop(&shared))
            .map_err(data_error("cannot start compaction for", &store.shared.dir))?;
        store.compactor = Some(compactor);
        if let Some(old) = upgrade_from {
            let written = take_snapshot(&store.shared).inspect_err(|e| {
                log::error!(
                    "index: cannot upgrade {} from format version {} to {FORMAT_VERSION}: {e}",
                    store.shared.dir.display(),
                    old.number()
                );
            })?;
            log::info!(
                "index: upgraded {} from format version {} to {FORMAT_VERSION} (a {written}-byte \
                 snapshot; nothing is lost)",
                store.shared.dir.display(),
                old.number()
            );
        }
        store.maybe_compact();
        log::info!(
            "index: recovered {} registrations of {} holders from {} in {:.2} s ({}, {} log \
             records replayed{})",
            recovery.registrations,
            recovery.holders,
            store.shared.dir.display(),
            recovery.elapsed.as_secs_f64(),
            recovery
                .snapshot
                .map_or_else(|| "no snapshot".to_string(), |g| format!("snapshot {g}")),
            recovery.records,
            damage_summary(&recovery)
        );
        Ok((store, recovery))
    }

    /// Takes a snapshot now and deletes the log it replaces (compaction also runs on its
    /// own as the log grows). Returns the snapshot's size in bytes.
    pub fn snapshot_now(&self) -> Result<u64, IndexError> {
        take_snapshot(&self.shared)
    }

    /// The data folder.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Registrations held, counting lapsed holders not yet swept.
    pub fn registration_count(&self) -> usize {
        lock(&self.shared.state).registry.registration_count()
    }

    fn maybe_compact(&self) {
        let mut queue = lock(&self.shared.queue);
        if wants_compaction(&queue, self.shared.compact_after) {
            queue.compact_wanted = true;
            self.shared.compact.notify_all();
        }
    }

    /// Applies a change under the registry lock and queues its records in the same order;
    /// then waits (without the lock) until they are durable.
    fn change<T>(
        &self,
        apply: impl FnOnce(&mut Registry, Duration, &mut Vec<u8>) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        let now = self.shared.clock.now();
        let mut records = Vec::new();
        let mut state = lock(&self.shared.state);
        self.shared.writable(&mut state)?;
        let result = apply(&mut state.registry, now, &mut records)?;
        let waiter = if records.is_empty() {
            // Nothing to write, but the answer ("already registered", "not registered")
            // may rest on a change still on its way to the disk: wait for everything
            // queued before it.
            self.shared.wait_for_pending()
        } else {
            Some(self.shared.enqueue(Batch::Records {
                bytes: records,
                last: 0,
            }))
        };
        drop(state);
        if let Some(waiter) = waiter {
            self.shared.wait_durable(&waiter)?;
        }
        Ok(result)
    }

    fn read<T>(&self, f: impl FnOnce(&mut State, Duration) -> T) -> T {
        let now = self.shared.clock.now();
        f(&mut lock(&self.shared.state), now)
    }

    /// [`DurableStore::read`] for an answer that must not rest on a change not yet durable.
    fn read_durable<T>(&self, f: impl FnOnce(&mut State, Duration) -> T) -> Result<T, IndexError> {
        let now = self.shared.clock.now();
        let (result, waiter) = {
            let mut state = lock(&self.shared.state);
            (f(&mut state, now), self.shared.wait_for_pending())
        };
        if let Some(waiter) = waiter {
            self.shared.wait_durable(&waiter)?;
        }
        Ok(result)
    }
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        {
            let mut queue = lock(&self.shared.queue);
            queue.stop = true;
            self.shared.compact.notify_all();
        }
        // Nothing else to wait for: every change waited for its own commit before returning.
        if let Some(t) = self.compactor.take() {
            let _ = t.join();
        }
    }
}

impl Store for DurableStore {
    fn register_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, StoreError> {
        // Encoded before taking the lock: the lock is held only to apply and queue.
        let mut record = Vec::new();
        encode_record(
            &LogRecord::Register {
                holder: holder.clone(),
                files: files.to_vec(),
            },
            &mut record,
        )?;
        Ok(self
            .change(|registry, now, out| {
                // A lapsed holder loses its old files as it registers; log that as an expiry,
                // since replay (everyone freshly leased) would not see the lapse.
                if registry.lapsed(holder, now) {
                    encode_record(
                        &LogRecord::Expire {
                            holders: vec![holder.clone()],
                        },
                        out,
                    )?;
                }
                let expired = !out.is_empty();
                // A refusal changes nothing (and drops the expiry record with it): the caps are
                // checked before the lapsed holder's files go.
                let added = registry.register_within(holder, address, files, now, limits)?;
                if added > 0 || expired {
                    out.extend_from_slice(&record);
                }
                Ok(added)
            })
            .inspect(|_| self.partials.complete(holder, files))?)
    }

    fn unregister(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, StoreError> {
        Ok(self
            .change(|registry, _, out| {
                let removed = registry.unregister(holder, ids);
                if removed > 0 {
                    encode_record(
                        &LogRecord::Unregister {
                            holder: holder.clone(),
                            ids: ids.to_vec(),
                        },
                        out,
                    )?;
                }
                Ok(removed)
            })
            .inspect(|_| {
                self.partials.unregister(holder, ids);
            })?)
    }

    fn locate(&self, key: &FileKey) -> Result<Option<(FileMeta, PeerAddr)>, StoreError> {
        Ok(self.read(|state, now| {
            let State { registry, rng } = state;
            registry.locate(key, now, rng)
        }))
    }

    fn holders(&self, key: &FileKey) -> Result<Option<(FileMeta, Vec<PeerAddr>)>, StoreError> {
        Ok(self.read(|state, now| state.registry.holders(key, now)))
    }

    fn search(&self, query: &str, limit: usize) -> Result<Vec<SearchHit>, StoreError> {
        let now = self.shared.clock.now();
        let complete = search_in_slices(
            || RegistryGuard(lock(&self.shared.state)),
            query,
            limit,
            now,
        );
        Ok(self.partials.search(query, limit, complete, now))
    }

    fn counts(&self) -> Result<crate::StoreCounts, StoreError> {
        let files = self.search("", usize::MAX)?.len();
        let state = lock(&self.shared.state);
        Ok(crate::store::registry_counts(
            &state.registry,
            &self.partials,
            files,
        ))
    }

    fn kind(&self) -> &'static str {
        "durable"
    }

    fn renew(&self, holder: &PeerAddr) -> Result<Option<u32>, StoreError> {
        // Leases are not durable: a renewal writes nothing. But "you hold n files" must not
        // count a registration that a crash could still lose.
        self.partials.renew(holder, self.shared.clock.now());
        Ok(self.read_durable(|state, now| state.registry.renew(holder, now))?)
    }

    fn sweep_expired(&self) -> Result<Vec<(PeerAddr, u32)>, StoreError> {
        self.partials.sweep(self.shared.clock.now());
        Ok(self.change(|registry, now, out| {
            let gone = registry.sweep(now);
            if !gone.is_empty() {
                let holders = gone.iter().map(|(h, _)| h.clone()).collect();
                encode_record(&LogRecord::Expire { holders }, out)?;
            }
            Ok(gone)
        })?)
    }

    fn lease(&self) -> Duration {
        lock(&self.shared.state).registry.lease()
    }

    fn unregister_partial(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, StoreError> {
        Ok(self.partials.unregister(holder, ids))
    }

    fn sources(&self, key: &FileKey) -> Result<Option<Sources>, StoreError> {
        let (complete, now) = self.read(|state, now| (state.registry.holders(key, now), now));
        Ok(self.partials.sources(key, complete, now))
    }

    fn register_partial_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, StoreError> {
        Ok(self.partials.register_within(
            holder,
            address,
            files,
            self.shared.clock.now(),
            limits,
        )?)
    }
}

/// The registry part of a locked [`State`].
struct RegistryGuard<'a>(MutexGuard<'a, State>);

impl std::ops::Deref for RegistryGuard<'_> {
    type Target = Registry;
    fn deref(&self) -> &Registry {
        &self.0.registry
    }
}
