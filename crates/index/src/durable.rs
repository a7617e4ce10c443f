//! The durable store: the registry in memory, every change in an append-only log on disk,
//! compacted by periodic snapshots. Survives `kill -9`: a change is acknowledged only after
//! its log record is on disk.
//!
//! # Files in the data folder
//!
//! - `log.N`: the changes made after snapshot `N` was taken (or from empty, if there is no
//!   snapshot `N`). A 20-byte header (`SHOALLOG`, format version as a big-endian u16, two
//!   zero bytes, the generation `N` as a big-endian u64), then records.
//! - `snapshot.N`: the whole registry at the start of `log.N`. Same header with `SHOALSNP`,
//!   then records: holder batches, listing batches, and an end record with the counts.
//! - A record is a u32 big-endian length, a body of that length (one value encoded by
//!   `shoal_proto::codec`, the wire encoding), and the first 8 bytes of the BLAKE3 hash of
//!   length and body. A damaged length, body or checksum is caught by the checksum.
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
//! that log afresh. Files of another format or version, a damaged log header, or a damaged
//! snapshot (written atomically, so damage means the disk, not a crash) stop the start with
//! a readable error and are left as they are. Leases are not stored: every holder loaded
//! gets a fresh lease from the load, so peers still running are listed at once, and peers
//! that are gone vanish within one lease.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use shoal_proto::codec;
use shoal_proto::message::SearchHit;
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};

use crate::partial::{Partials, Sources};
use crate::registry::{DEFAULT_LEASE, ListingView};
use crate::store::search_in_slices;
use crate::{Clock, IndexError, RegistrationLimits, Registry, Store, SystemClock};

/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

const LOG_MAGIC: [u8; 8] = *b"SHOALLOG";
const SNAPSHOT_MAGIC: [u8; 8] = *b"SHOALSNP";
const HEADER_LEN: u64 = 20;
const CHECK_LEN: usize = 8;
const LEN_LEN: usize = 4;
/// No record is longer (the codec's own frame ceiling).
const MAX_RECORD: usize = codec::MAX_FRAME_LEN;
/// Listings per snapshot record: big enough to amortise the per-record cost, small enough
/// that loading never holds much more than the registry itself.
const SNAPSHOT_BATCH: usize = 4096;
/// Buffer for reading logs and snapshots.
const READ_BUFFER: usize = 1 << 20;
/// Held locked while a store has the folder open.
const LOCK_FILE: &str = "LOCK";

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

/// The first body byte of each [`LogRecord`] variant (the wire encoding writes the variant
/// number first, as a one-byte varint below 251).
const LOG_RECORD_TAGS: [u8; 3] = [0, 1, 2];

/// A log record: one registry change.
#[derive(Serialize, Deserialize)]
enum LogRecord {
    Register {
        holder: PeerAddr,
        files: Vec<FileMeta>,
    },
    Unregister {
        holder: PeerAddr,
        ids: Vec<FileId>,
    },
    /// Holders whose lease lapsed, removed with every registration.
    Expire {
        holders: Vec<PeerAddr>,
    },
}

/// A snapshot record, as read.
#[derive(Deserialize)]
enum SnapshotRecord {
    Holders(Vec<PeerAddr>),
    Listings(Vec<SnapshotListing>),
    End {
        holders: u64,
        listings: u64,
        registrations: u64,
    },
}

#[derive(Deserialize)]
struct SnapshotListing {
    name: String,
    size: u64,
    chunk_size: u32,
    id: FileId,
    /// Holder numbers: positions in the snapshot's holder records.
    holders: Vec<u32>,
}

/// A snapshot record, as written: the same encoding as [`SnapshotRecord`], borrowing from the
/// registry instead of copying it.
#[derive(Serialize)]
enum SnapshotRecordOut<'a> {
    Holders(&'a [&'a PeerAddr]),
    Listings(&'a [SnapshotListingOut<'a>]),
    End {
        holders: u64,
        listings: u64,
        registrations: u64,
    },
}

#[derive(Serialize)]
struct SnapshotListingOut<'a> {
    name: &'a str,
    size: u64,
    chunk_size: u32,
    id: FileId,
    holders: &'a [u32],
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

struct LogFile {
    file: File,
    /// Its generation.
    generation: u64,
    /// Bytes in it, header included.
    written: u64,
    /// Bytes in it known to be on disk (`written` after the last successful sync).
    synced: u64,
    /// A write or sync since `synced` failed or is under way: the file may end in part of a
    /// record, which must be cut before anything else is appended.
    dirty: bool,
}

impl LogFile {
    /// Cuts whatever follows the last synced byte (a failed write's partial record).
    fn cut_to_synced(&mut self, dir: &Path) -> Result<(), IndexError> {
        // And move the write position back (a log created by a switch is not opened to
        // append): the next record goes right after the last synced one, not after a hole.
        self.file
            .set_len(self.synced)
            .and_then(|()| self.file.seek(SeekFrom::Start(self.synced)))
            .map_err(data_error("cannot cut a failed write off the log in", dir))?;
        self.written = self.synced;
        self.dirty = false;
        Ok(())
    }
}

struct Queue {
    batches: VecDeque<Batch>,
    /// Sequence number of the last record (or switch) queued.
    queued: u64,
    /// Requests waiting for their record, in sequence order: each is woken alone once its
    /// record is durable (a condvar's `notify_all` would also wake, for nothing, everyone
    /// queued during the fsync, and on two cores those wakeups cost more than the fsync).
    waiters: Vec<Arc<Waiter>>,
    /// A leader is writing and syncing a batch.
    committing: bool,
    /// The generation of the log being written.
    generation: u64,
    /// The generation the last queued switch goes to (>= `generation`).
    latest_generation: u64,
    /// Bytes in the current log, header included.
    log_bytes: u64,
    /// Size of the last snapshot written or loaded.
    snapshot_bytes: u64,
    /// Set when the log could not be written: changes are refused, without being applied,
    /// until a probe write to the data folder succeeds again.
    failed: Option<String>,
    /// Undoing a failed round (reloading the registry from disk) failed too: retried before
    /// changes are accepted again.
    reload_needed: bool,
    compact_wanted: bool,
    stop: bool,
}

/// A request waiting for everything up to `seq` to be durable.
struct Waiter {
    seq: u64,
    thread: Thread,
    /// Set once by the commit that decided it: `None` durable, `Some(reason)` failed.
    outcome: OnceLock<Option<String>>,
}

impl Waiter {
    fn new(seq: u64) -> Arc<Waiter> {
        Arc::new(Waiter {
            seq,
            thread: thread::current(),
            outcome: OnceLock::new(),
        })
    }

    fn decide(&self, outcome: Option<String>) {
        let _ = self.outcome.set(outcome);
        self.thread.unpark();
    }
}

enum Batch {
    Records { bytes: Vec<u8>, last: u64 },
    Switch { generation: u64, seq: u64 },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics midway by design; should a bug make it, the data is still as
    // consistent as the last complete operation left it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn data_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IndexError {
    let path = path.to_path_buf();
    move |source| IndexError::Data { what, path, source }
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
            return Err(IndexError::Store(
                "the lease must be longer than zero".into(),
            ));
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
                current = Some((generation, replay.end));
            }
        }
        let (generation, file, log_bytes) = match current {
            Some((generation, end)) => {
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
    ) -> Result<u32, IndexError> {
        // Encoded before taking the lock: the lock is held only to apply and queue.
        let mut record = Vec::new();
        encode_record(
            &LogRecord::Register {
                holder: holder.clone(),
                files: files.to_vec(),
            },
            &mut record,
        )?;
        self.change(|registry, now, out| {
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
        .inspect(|_| self.partials.complete(holder, files))
    }

    fn unregister(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, IndexError> {
        self.change(|registry, _, out| {
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
        })
    }

    fn locate(&self, key: &FileKey) -> Result<Option<(FileMeta, PeerAddr)>, IndexError> {
        Ok(self.read(|state, now| {
            let State { registry, rng } = state;
            registry.locate(key, now, rng)
        }))
    }

    fn holders(&self, key: &FileKey) -> Result<Option<(FileMeta, Vec<PeerAddr>)>, IndexError> {
        Ok(self.read(|state, now| state.registry.holders(key, now)))
    }

    fn search(&self, query: &str, limit: usize) -> Result<Vec<SearchHit>, IndexError> {
        let now = self.shared.clock.now();
        let complete = search_in_slices(
            || RegistryGuard(lock(&self.shared.state)),
            query,
            limit,
            now,
        );
        Ok(self.partials.search(query, limit, complete, now))
    }

    fn counts(&self) -> Result<crate::StoreCounts, IndexError> {
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

    fn renew(&self, holder: &PeerAddr) -> Result<Option<u32>, IndexError> {
        // Leases are not durable: a renewal writes nothing. But "you hold n files" must not
        // count a registration that a crash could still lose.
        self.partials.renew(holder, self.shared.clock.now());
        self.read_durable(|state, now| state.registry.renew(holder, now))
    }

    fn sweep_expired(&self) -> Result<Vec<(PeerAddr, u32)>, IndexError> {
        self.partials.sweep(self.shared.clock.now());
        self.change(|registry, now, out| {
            let gone = registry.sweep(now);
            if !gone.is_empty() {
                let holders = gone.iter().map(|(h, _)| h.clone()).collect();
                encode_record(&LogRecord::Expire { holders }, out)?;
            }
            Ok(gone)
        })
    }

    fn lease(&self) -> Duration {
        lock(&self.shared.state).registry.lease()
    }

    fn unregister_partial(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, IndexError> {
        Ok(self.partials.unregister(holder, ids))
    }

    fn sources(&self, key: &FileKey) -> Result<Option<Sources>, IndexError> {
        let (complete, now) = self.read(|state, now| (state.registry.holders(key, now), now));
        Ok(self.partials.sources(key, complete, now))
    }

    fn register_partial_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, IndexError> {
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

impl Shared {
    /// Queues encoded records (`last` is assigned here) or a log switch; returns the sequence
    /// number to wait for. Records are queued under the registry lock, so queue order is
    /// change order. The calling thread is registered to be woken when it is durable.
    fn enqueue(&self, batch: Batch) -> Arc<Waiter> {
        let mut queue = lock(&self.queue);
        queue.queued += 1;
        let seq = queue.queued;
        match batch {
            Batch::Records { bytes, .. } => match queue.batches.back_mut() {
                Some(Batch::Records {
                    bytes: pending,
                    last,
                }) => {
                    pending.extend_from_slice(&bytes);
                    *last = seq;
                }
                _ => queue.batches.push_back(Batch::Records { bytes, last: seq }),
            },
            Batch::Switch { generation, .. } => {
                queue.batches.push_back(Batch::Switch { generation, seq });
            }
        }
        let waiter = Waiter::new(seq);
        queue.waiters.push(Arc::clone(&waiter));
        waiter
    }

    /// For a change that writes nothing (or a renewal), called under the registry lock: a
    /// waiter for everything queued so far, or `None` if all of it is durable already.
    fn wait_for_pending(&self) -> Option<Arc<Waiter>> {
        // Records are queued under the registry lock, which the caller holds: nothing can
        // slip in between the answer and `queued`.
        let mut queue = lock(&self.queue);
        if self.settled_seq.load(Ordering::Acquire) >= queue.queued {
            return None;
        }
        // `queued` is the largest sequence number yet: the waiters stay in order.
        let waiter = Waiter::new(queue.queued);
        queue.waiters.push(Arc::clone(&waiter));
        Some(waiter)
    }

    /// Waits until `waiter`'s records are durable (or failed), leading commits whenever
    /// nobody else is.
    fn wait_durable(&self, waiter: &Waiter) -> Result<(), IndexError> {
        loop {
            match waiter.outcome.get() {
                Some(None) => return Ok(()),
                Some(Some(reason)) => return Err(IndexError::LogFailed(reason.clone())),
                None => {}
            }
            let lead = {
                let mut queue = lock(&self.queue);
                let lead = !queue.committing && !queue.batches.is_empty();
                queue.committing |= lead;
                lead
            };
            if lead {
                self.commit();
            } else {
                // Unparked when our batch is durable, or to lead the next round; a spurious
                // return just checks again.
                thread::park();
            }
        }
    }

    /// One round as leader: write everything queued, one `sync_data`, wake the requests it
    /// covered, and hand the lead to the first request still waiting, if any. If a write or
    /// sync fails, [`Shared::fail_round`] refuses and undoes what is not on disk.
    fn commit(&self) {
        let work: Vec<Batch> = lock(&self.queue).batches.drain(..).collect();
        #[cfg(test)]
        self.hold.pass();
        let mut log = lock(&self.log);
        // The last sequence number on disk in this round, and the last written but not synced.
        let mut durable = None;
        let mut unsynced = None;
        let result = (|| -> Result<(), IndexError> {
            if log.dirty {
                log.cut_to_synced(&self.dir)?;
            }
            for batch in work {
                match batch {
                    Batch::Records { bytes, last: seq } => {
                        log.dirty = true;
                        log.file
                            .write_all(&bytes)
                            .map_err(data_error("cannot write the log in", &self.dir))?;
                        log.written += bytes.len() as u64;
                        unsynced = Some(seq);
                    }
                    Batch::Switch {
                        generation: next,
                        seq,
                    } => {
                        // Everything before the switch is durable in the old log before
                        // anything goes to the new one.
                        log.file
                            .sync_data()
                            .map_err(data_error("cannot sync the log in", &self.dir))?;
                        log.synced = log.written;
                        log.dirty = false;
                        durable = unsynced.take().or(durable);
                        match create_log(&self.dir, next) {
                            Ok(file) => log.file = file,
                            Err(e) => {
                                // Half made: nothing is in it yet, and the switch is refused.
                                remove_stale(&log_path(&self.dir, next));
                                return Err(e);
                            }
                        }
                        log.generation = next;
                        log.written = HEADER_LEN;
                        log.synced = HEADER_LEN;
                        durable = Some(seq);
                    }
                }
            }
            log.file
                .sync_data()
                .map_err(data_error("cannot sync the log in", &self.dir))?;
            log.synced = log.written;
            log.dirty = false;
            durable = unsynced.take().or(durable);
            Ok(())
        })();
        if result.is_err() {
            // Cut the failed round's bytes off at once, so no later record follows part of
            // one; should that fail too, the next write tries again first.
            if let Err(e) = log.cut_to_synced(&self.dir) {
                log::error!("index: {e}");
            }
        }
        let (generation, written, synced) = (log.generation, log.written, log.synced);
        drop(log);
        if let Err(e) = result {
            self.fail_round(&e, durable, generation, written, synced);
            return;
        }
        let (woken, next) = {
            let mut queue = lock(&self.queue);
            queue.generation = generation;
            queue.log_bytes = written;
            if !queue.compact_wanted && wants_compaction(&queue, self.compact_after) {
                queue.compact_wanted = true;
                self.compact.notify_all();
            }
            let woken: Vec<Arc<Waiter>> = match durable {
                Some(seq) => {
                    self.settled_seq.fetch_max(seq, Ordering::Release);
                    // Waiters are in sequence order: wake exactly those now durable.
                    let done = queue.waiters.partition_point(|w| w.seq <= seq);
                    queue.waiters.drain(..done).collect()
                }
                None => Vec::new(),
            };
            queue.committing = false;
            // Records queued during this round: their first waiter leads the next one.
            let next = match queue.batches.is_empty() {
                true => None,
                false => queue.waiters.first().map(|w| w.thread.clone()),
            };
            (woken, next)
        };
        for waiter in woken {
            waiter.decide(None);
        }
        if let Some(thread) = next {
            thread.unpark();
        }
    }

    /// After a failed write or sync: every change not on disk (this round's after `durable`,
    /// and everything queued since) is refused, and undone by reloading the registry from
    /// what the data folder holds, as a restart would (the log was cut back to its last
    /// synced byte). The refused requests are told only once the registry no longer shows
    /// their changes. Changes are then refused, unapplied, until a probe write succeeds
    /// ([`Shared::writable`]).
    fn fail_round(
        &self,
        error: &IndexError,
        durable: Option<u64>,
        generation: u64,
        written: u64,
        synced: u64,
    ) {
        log::error!(
            "index: {error}; the changes not yet on disk are refused and undone, and changes \
             are refused until the data folder takes writes again"
        );
        let reason = error.to_string();
        // Registry first, then queue: the order every change takes them in.
        let mut state = lock(&self.state);
        let woken: Vec<(Arc<Waiter>, Option<String>)> = {
            let mut queue = lock(&self.queue);
            queue.generation = generation;
            // A refused switch's generation is free again: the logs stay without a gap.
            queue.latest_generation = generation;
            queue.log_bytes = written;
            queue.failed = Some(reason.clone());
            queue.batches.clear();
            let done = durable.map_or(0, |seq| queue.waiters.partition_point(|w| w.seq <= seq));
            let mut woken: Vec<_> = queue.waiters.drain(..done).map(|w| (w, None)).collect();
            woken.extend(queue.waiters.drain(..).map(|w| (w, Some(reason.clone()))));
            self.settled_seq.fetch_max(queue.queued, Ordering::Release);
            queue.committing = false;
            woken
        };
        let now = self.clock.now();
        match load_registry(&self.dir, state.registry.lease(), now, (generation, synced)) {
            Ok(registry) => state.registry = registry,
            Err(e) => {
                log::error!(
                    "index: cannot reload the registry from {} to undo the refused changes: \
                     {e}; retried before the next change",
                    self.dir.display()
                );
                lock(&self.queue).reload_needed = true;
            }
        }
        drop(state);
        for (waiter, outcome) in woken {
            waiter.decide(outcome);
        }
    }

    /// Called by every change under the registry lock, before it applies anything: `Ok` if
    /// the log is writable. After a failure, a probe write (and sync) to the data folder
    /// must succeed first; the log's tail is cut back and, if undoing the failure could not
    /// reload the registry then, it is reloaded now.
    fn writable(&self, state: &mut State) -> Result<(), IndexError> {
        let reload = {
            let queue = lock(&self.queue);
            if queue.failed.is_none() {
                return Ok(());
            }
            queue.reload_needed
        };
        let refused = |e: IndexError| IndexError::LogFailed(e.to_string());
        let synced = {
            let mut log = lock(&self.log);
            if log.dirty {
                log.cut_to_synced(&self.dir).map_err(refused)?;
            }
            probe_write(&self.dir).map_err(refused)?;
            (log.generation, log.synced)
        };
        if reload {
            let (lease, now) = (state.registry.lease(), self.clock.now());
            state.registry = load_registry(&self.dir, lease, now, synced).map_err(refused)?;
        }
        let mut queue = lock(&self.queue);
        queue.failed = None;
        queue.reload_needed = false;
        log::info!(
            "index: {} takes writes again; changes are accepted",
            self.dir.display()
        );
        Ok(())
    }
}

/// What recovery did about damage, for the start's log line ("" if nothing).
fn damage_summary(recovery: &Recovery) -> String {
    let mut out = String::new();
    if recovery.cut_bytes > 0 {
        out.push_str(&format!(", {} bytes of tail cut", recovery.cut_bytes));
    }
    if recovery.skipped_bytes > 0 {
        out.push_str(&format!(
            ", {} damaged bytes skipped",
            recovery.skipped_bytes
        ));
    }
    for kept in &recovery.kept {
        out.push_str(&format!(", damaged log kept as {}", kept.display()));
    }
    out
}

/// Bytes a probe writes (and syncs) before a store that failed to write accepts changes.
const PROBE_BYTES: usize = 64 << 10;

/// Writes and syncs [`PROBE_BYTES`] to a temporary file in `dir`, then removes it.
fn probe_write(dir: &Path) -> Result<(), IndexError> {
    // A `log.*.tmp` name: removed at the next start should a crash leave it.
    let path = dir.join("log.probe.tmp");
    let result = File::create(&path).and_then(|mut file| {
        file.write_all(&[0u8; PROBE_BYTES])?;
        file.sync_data()
    });
    remove_stale(&path);
    result.map_err(data_error("cannot write", &path))
}

/// The registry as the data folder holds it, read only (to undo changes that failed to be
/// written; the files were repaired when the store opened). `synced` is the current log's
/// generation and its last synced byte: nothing after it is read.
fn load_registry(
    dir: &Path,
    lease: Duration,
    now: Duration,
    synced: (u64, u64),
) -> Result<Registry, IndexError> {
    let files = DataFiles::scan(dir)?;
    let mut registry = Registry::with_lease(lease);
    let base = files.snapshots.last().copied();
    if let Some(generation) = base {
        load_snapshot(
            &snapshot_path(dir, generation),
            generation,
            &mut registry,
            now,
        )?;
    }
    let logs = files.logs_from(dir, base)?;
    for (i, &generation) in logs.iter().enumerate() {
        let mode = ReplayMode {
            newest: i + 1 == logs.len(),
            repair: false,
            upto: (generation == synced.0).then_some(synced.1),
        };
        replay_log(
            &log_path(dir, generation),
            generation,
            &mut registry,
            now,
            mode,
        )?;
    }
    Ok(registry)
}

fn wants_compaction(queue: &Queue, compact_after: u64) -> bool {
    queue.failed.is_none()
        && queue.log_bytes > HEADER_LEN
        && queue.log_bytes >= compact_after.max(queue.snapshot_bytes)
}

/// The compactor: take a snapshot whenever a commit finds the log has grown enough.
fn compact_loop(shared: &Shared) {
    loop {
        {
            let mut queue = lock(&shared.queue);
            while !queue.compact_wanted && !queue.stop {
                queue = shared
                    .compact
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if queue.stop {
                return;
            }
        }
        if let Err(e) = take_snapshot(shared) {
            log::warn!("index: compaction failed, the log keeps growing: {e}");
        }
        lock(&shared.queue).compact_wanted = false;
    }
}

/// Writes `snapshot.N+1` of the registry as of a switch to `log.N+1`, then deletes what it
/// replaces. Returns the snapshot's size.
fn take_snapshot(shared: &Shared) -> Result<u64, IndexError> {
    let _one_at_a_time = lock(&shared.snapshotting);
    let started = Instant::now();
    let (generation, bytes, registrations) = {
        let state = lock(&shared.state);
        let mut queue = lock(&shared.queue);
        if let Some(reason) = &queue.failed {
            return Err(IndexError::LogFailed(reason.clone()));
        }
        // Under the registry lock: the snapshot holds exactly the changes queued before the
        // switch, and none after.
        queue.latest_generation += 1;
        let generation = queue.latest_generation;
        drop(queue);
        let switch = shared.enqueue(Batch::Switch { generation, seq: 0 });
        let bytes = encode_snapshot(&state.registry, generation);
        let registrations = state.registry.registration_count();
        drop(state);
        // Whatever happened to the encoding, the switch is queued: see it through.
        shared.wait_durable(&switch)?;
        (generation, bytes?, registrations)
    };
    let path = snapshot_path(&shared.dir, generation);
    let tmp = path.with_extension(format!("{generation}.tmp"));
    let written = write_durably(&shared.dir, &tmp, &path, &bytes);
    if let Err(e) = written {
        remove_stale(&tmp);
        return Err(e);
    }
    // The switch is done (waited for above), so nothing is written to the old files any more:
    // with the snapshot durable they are redundant. Deleted under the registry lock, so a
    // reload of the registry from disk (undoing a failed write) never sees half of them.
    let _state = lock(&shared.state);
    lock(&shared.queue).snapshot_bytes = bytes.len() as u64;
    let files = DataFiles::scan(&shared.dir)?;
    for &g in files.logs.iter().filter(|&&g| g < generation) {
        remove_stale(&log_path(&shared.dir, g));
    }
    for &g in files.snapshots.iter().filter(|&&g| g < generation) {
        remove_stale(&snapshot_path(&shared.dir, g));
    }
    drop(_state);
    log::info!(
        "index: snapshot {generation} written ({registrations} registrations, {} KiB, {:.2} s); log compacted",
        bytes.len() >> 10,
        started.elapsed().as_secs_f64()
    );
    Ok(bytes.len() as u64)
}

fn encode_snapshot(registry: &Registry, generation: u64) -> Result<Vec<u8>, IndexError> {
    let mut out = Vec::with_capacity(1 << 20);
    out.extend_from_slice(&header(SNAPSHOT_MAGIC, generation));
    let holders = registry.export_holders();
    // Addresses are at most 256 bytes encoded; 16k of them stay far below a record's limit.
    for batch in holders.chunks(16 << 10) {
        encode_record(&SnapshotRecordOut::Holders(batch), &mut out)?;
    }
    let mut views: Vec<ListingView<'_>> = Vec::with_capacity(SNAPSHOT_BATCH);
    let mut numbers: Vec<u32> = Vec::new();
    let mut ends: Vec<usize> = Vec::with_capacity(SNAPSHOT_BATCH);
    let mut listings = 0u64;
    let mut result = Ok(());
    registry.export_listings(|view, hs| {
        views.push(view);
        numbers.extend_from_slice(hs);
        ends.push(numbers.len());
        if views.len() == SNAPSHOT_BATCH {
            if result.is_ok() {
                result = encode_listings(&views, &numbers, &ends, &mut out);
            }
            listings += views.len() as u64;
            views.clear();
            numbers.clear();
            ends.clear();
        }
    });
    result?;
    encode_listings(&views, &numbers, &ends, &mut out)?;
    listings += views.len() as u64;
    let end = SnapshotRecordOut::End {
        holders: holders.len() as u64,
        listings,
        registrations: registry.registration_count() as u64,
    };
    encode_record(&end, &mut out)?;
    Ok(out)
}

fn encode_listings(
    views: &[ListingView<'_>],
    numbers: &[u32],
    ends: &[usize],
    out: &mut Vec<u8>,
) -> Result<(), IndexError> {
    if views.is_empty() {
        return Ok(());
    }
    let mut start = 0;
    let listings: Vec<SnapshotListingOut<'_>> = views
        .iter()
        .zip(ends)
        .map(|(view, &end)| {
            let holders = numbers.get(start..end).unwrap_or(&[]);
            start = end;
            SnapshotListingOut {
                name: view.name,
                size: view.size,
                chunk_size: view.chunk_size,
                id: view.id,
                holders,
            }
        })
        .collect();
    encode_record(&SnapshotRecordOut::Listings(&listings), out)
}

/// Appends one record: length, body, checksum.
fn encode_record<M: Serialize>(record: &M, out: &mut Vec<u8>) -> Result<(), IndexError> {
    let start = out.len();
    codec::encode_frame(record, out)
        .map_err(|e| IndexError::Store(format!("cannot encode a log record: {e}")))?;
    let sum = checksum(out.get(start..).unwrap_or(&[]));
    out.extend_from_slice(&sum);
    Ok(())
}

fn checksum(frame: &[u8]) -> [u8; CHECK_LEN] {
    let hash = blake3::hash(frame);
    let mut sum = [0u8; CHECK_LEN];
    sum.copy_from_slice(&hash.as_bytes()[..CHECK_LEN]);
    sum
}

fn header(magic: [u8; 8], generation: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&magic);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
    h[12..20].copy_from_slice(&generation.to_be_bytes());
    h
}

/// Checks a file header read from disk.
fn check_header(
    bytes: &[u8; HEADER_LEN as usize],
    magic: [u8; 8],
    generation: u64,
    path: &Path,
) -> Result<(), IndexError> {
    let bad = |reason: String| IndexError::DataFormat {
        path: path.to_path_buf(),
        reason,
    };
    let (found_magic, rest) = bytes.split_at(8);
    if found_magic != magic {
        return Err(bad(format!(
            "it does not start with {:?} (if it is a damaged index file, move it aside or \
             restore it from a backup; this index does not guess at it)",
            String::from_utf8_lossy(&magic)
        )));
    }
    let mut version = [0u8; 2];
    version.copy_from_slice(rest.get(..2).unwrap_or(&[0, 0]));
    let version = u16::from_be_bytes(version);
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {version}; this build reads version {FORMAT_VERSION}"
        )));
    }
    let mut found = [0u8; 8];
    found.copy_from_slice(rest.get(4..12).unwrap_or(&[0; 8]));
    let found = u64::from_be_bytes(found);
    if found != generation {
        return Err(bad(format!(
            "its header says generation {found}, its name {generation}"
        )));
    }
    Ok(())
}

/// Reads length-prefixed, checksummed records.
struct RecordReader<R> {
    inner: R,
    /// Offset of the next record in the file.
    offset: u64,
    len: u64,
    buf: Vec<u8>,
}

enum Next {
    Record,
    End,
    Damaged(String),
}

impl<R: Read> RecordReader<R> {
    fn next(&mut self) -> io::Result<Next> {
        let mut len_bytes = [0u8; LEN_LEN];
        match read_full(&mut self.inner, &mut len_bytes)? {
            0 => return Ok(Next::End),
            LEN_LEN => {}
            _ => return Ok(Next::Damaged("a record's length is cut short".into())),
        }
        let len = u32::from_be_bytes(len_bytes) as usize;
        let total = LEN_LEN + len + CHECK_LEN;
        let left = self.len.saturating_sub(self.offset);
        if len > MAX_RECORD || total as u64 > left {
            return Ok(Next::Damaged(format!(
                "a record claims {len} bytes, {left} are left in the file"
            )));
        }
        self.buf.clear();
        self.buf.resize(total, 0);
        let Some((head, rest)) = self.buf.split_first_chunk_mut::<LEN_LEN>() else {
            return Ok(Next::Damaged("a record's length is cut short".into()));
        };
        *head = len_bytes;
        if read_full(&mut self.inner, rest)? != rest.len() {
            return Ok(Next::Damaged("a record is cut short".into()));
        }
        let (frame, sum) = self.buf.split_at(LEN_LEN + len);
        if checksum(frame) != sum {
            return Ok(Next::Damaged("a record fails its checksum".into()));
        }
        self.offset += total as u64;
        Ok(Next::Record)
    }

    fn body(&self) -> &[u8] {
        let end = self.buf.len().saturating_sub(CHECK_LEN);
        self.buf.get(LEN_LEN..end).unwrap_or(&[])
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(buf.get_mut(got..).unwrap_or(&mut [])) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

struct Replay {
    records: u64,
    /// Bytes cut off the end (a torn or damaged tail).
    cut_bytes: u64,
    /// Bytes of damage skipped inside the log.
    skipped_bytes: u64,
    /// Where the log ends (after any repair).
    end: u64,
    /// The damaged log, kept as it was, if the log was rewritten around damage.
    kept: Option<PathBuf>,
}

/// How [`replay_log`] treats what it finds.
#[derive(Clone, Copy)]
struct ReplayMode {
    /// The newest log: the only one a crash can have torn.
    newest: bool,
    /// Repair the file (cut a torn tail, rewrite the log around damage); otherwise only read.
    repair: bool,
    /// Read no further than this offset (the last synced byte, when undoing a failed write
    /// whose partial bytes could not be cut off).
    upto: Option<u64>,
}

/// A stretch of a log in which no intact record starts.
struct Damage {
    start: u64,
    end: u64,
    reason: String,
}

/// Replays one log into `registry`. A record that does not check out is skipped: the scan
/// resynchronises on the next offset where a whole record passes its checksum, and every
/// intact record after the damage is replayed. Damage with no intact record after it is the
/// tail. With `mode.repair`, a torn tail of the newest log (a record running past the end of
/// the file: a crash mid-write) is cut in place; any other damage first keeps the log as it
/// was (`log.N.damaged.K`), then rewrites it with exactly the intact records.
fn replay_log(
    path: &Path,
    generation: u64,
    registry: &mut Registry,
    now: Duration,
    mode: ReplayMode,
) -> Result<Replay, IndexError> {
    let file = File::open(path).map_err(data_error("cannot open the log", path))?;
    let len = file
        .metadata()
        .map_err(data_error("cannot read the size of", path))?
        .len()
        .min(mode.upto.unwrap_or(u64::MAX));
    let mut scan = LogScan {
        reader: BufReader::with_capacity(READ_BUFFER, file),
        pos: 0,
        len,
        buf: Vec::new(),
    };
    let mut head = [0u8; HEADER_LEN as usize];
    let got = read_full(&mut scan.reader, &mut head).map_err(data_error("cannot read", path))?;
    scan.pos = got as u64;
    if got < head.len() {
        // Created but its header never reached the disk (a crash right after a switch).
        log::warn!(
            "index: {}: header cut short ({got} bytes); starting the log afresh",
            path.display()
        );
        if mode.repair {
            rewrite_log(path, generation)?;
        }
        return Ok(Replay {
            records: 0,
            cut_bytes: len,
            skipped_bytes: 0,
            end: HEADER_LEN,
            kept: None,
        });
    }
    check_header(&head, LOG_MAGIC, generation, path)?;
    let read_error = data_error("cannot read", path);
    let scanned = (|| -> io::Result<_> {
        let mut count = 0u64;
        let mut damage = Vec::new();
        let mut at = HEADER_LEN;
        let tail = loop {
            let (reason, torn) = match scan.probe(at)? {
                Probe::End => break None,
                Probe::Valid(total) => {
                    match codec::decode_body::<LogRecord>(scan.body()) {
                        Ok(record) => {
                            apply(registry, record, now);
                            count += 1;
                        }
                        Err(e) => damage.push(Damage {
                            start: at,
                            end: at + total,
                            reason: format!("a record does not decode: {e}"),
                        }),
                    }
                    at += total;
                    continue;
                }
                Probe::Torn(reason) => (reason, true),
                Probe::Bad(reason) => (reason, false),
            };
            match scan.resync(at + 1)? {
                Some(next) => {
                    damage.push(Damage {
                        start: at,
                        end: next,
                        reason,
                    });
                    at = next;
                }
                None => break Some((at, reason, torn)),
            }
        };
        Ok((count, damage, tail))
    })();
    let (records, damage, tail) = scanned.map_err(read_error)?;
    drop(scan);
    let records_end = tail.as_ref().map_or(len, |&(at, _, _)| at);
    let mut replay = Replay {
        records,
        cut_bytes: len - records_end,
        skipped_bytes: damage.iter().map(|d| d.end - d.start).sum(),
        end: len,
        kept: None,
    };
    if damage.is_empty() && tail.is_none() {
        return Ok(replay);
    }
    for d in &damage {
        log::warn!(
            "index: {}: {} at byte {}; skipped {} damaged bytes and replayed the intact records \
             after them",
            path.display(),
            d.reason,
            d.start,
            d.end - d.start
        );
    }
    let torn = damage.is_empty() && mode.newest && tail.as_ref().is_some_and(|t| t.2);
    if let Some((at, reason, _)) = &tail {
        log::warn!(
            "index: {}: {reason} at byte {at}, and no intact record after it: {} bytes of \
             {} cut off",
            path.display(),
            len - at,
            if torn {
                "a write torn by a crash"
            } else {
                "damaged tail"
            }
        );
    }
    if !mode.repair {
        replay.end = records_end;
        return Ok(replay);
    }
    if torn {
        // The one thing a crash does: cut in place, so new records never follow garbage.
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(data_error("cannot open the log", path))?;
        file.set_len(records_end)
            .and_then(|()| file.sync_all())
            .map_err(data_error("cannot cut the torn tail of", path))?;
        replay.end = records_end;
        return Ok(replay);
    }
    // Damage a crash does not explain (the disk's doing, or someone's): keep the log as it
    // is, then rewrite it with exactly its intact records.
    let kept = keep_aside(path)?;
    replay.end = rewrite_around(path, generation, &damage, records_end)?;
    log::warn!(
        "index: {}: rewritten with its {records} intact records; the damaged original is kept \
         as {} (delete it once no longer wanted)",
        path.display(),
        kept.display()
    );
    replay.kept = Some(kept);
    Ok(replay)
}

/// Reads a log record by record, from any offset (to resynchronise after damage).
struct LogScan {
    reader: BufReader<File>,
    /// The reader's offset in the file.
    pos: u64,
    len: u64,
    /// The last record probed: length, body, checksum.
    buf: Vec<u8>,
}

enum Probe {
    /// The file ends here.
    End,
    /// A whole record of this many bytes checks out here.
    Valid(u64),
    /// A record starts here but runs past the end of the file.
    Torn(String),
    /// No record that checks out starts here.
    Bad(String),
}

impl LogScan {
    fn seek(&mut self, at: u64) -> io::Result<()> {
        if at != self.pos {
            match i64::try_from(at)
                .ok()
                .zip(i64::try_from(self.pos).ok())
                .map(|(to, from)| to - from)
            {
                // Stays in the buffer when it can: resynchronising moves a byte at a time.
                Some(delta) => self.reader.seek_relative(delta)?,
                None => {
                    self.reader.seek(SeekFrom::Start(at))?;
                }
            }
            self.pos = at;
        }
        Ok(())
    }

    fn probe(&mut self, at: u64) -> io::Result<Probe> {
        let left = self.len.saturating_sub(at);
        if left == 0 {
            return Ok(Probe::End);
        }
        let cut_length = || Probe::Torn("a record's length is cut short".into());
        if left < LEN_LEN as u64 {
            return Ok(cut_length());
        }
        self.seek(at)?;
        let mut len_bytes = [0u8; LEN_LEN];
        let got = read_full(&mut self.reader, &mut len_bytes)?;
        self.pos += got as u64;
        if got < LEN_LEN {
            return Ok(cut_length());
        }
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > MAX_RECORD {
            return Ok(Probe::Bad(format!(
                "a record claims {len} bytes, more than any record holds"
            )));
        }
        let total = LEN_LEN + len + CHECK_LEN;
        if total as u64 > left {
            return Ok(Probe::Torn(format!(
                "a record claims {len} bytes, {left} are left in the file"
            )));
        }
        self.buf.clear();
        self.buf.extend_from_slice(&len_bytes);
        self.buf.resize(total, 0);
        let rest = self.buf.get_mut(LEN_LEN..).unwrap_or(&mut []);
        let want = rest.len();
        let got = read_full(&mut self.reader, rest)?;
        self.pos += got as u64;
        if got < want {
            return Ok(Probe::Torn("a record is cut short".into()));
        }
        let frame = self.buf.get(..LEN_LEN + len).unwrap_or(&[]);
        let sum = self.buf.get(LEN_LEN + len..).unwrap_or(&[]);
        if checksum(frame) != sum {
            return Ok(Probe::Bad("a record fails its checksum".into()));
        }
        Ok(Probe::Valid(total as u64))
    }

    fn body(&self) -> &[u8] {
        let end = self.buf.len().saturating_sub(CHECK_LEN);
        self.buf.get(LEN_LEN..end).unwrap_or(&[])
    }

    /// The first offset from `from` on where a whole record checks out, if any. A false
    /// match needs a 64-bit checksum to match by chance.
    fn resync(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut at = from;
        while at + (LEN_LEN + CHECK_LEN) as u64 <= self.len {
            if self.plausible(at)?
                && let Probe::Valid(_) = self.probe(at)?
            {
                return Ok(Some(at));
            }
            at += 1;
        }
        Ok(None)
    }

    /// Whether a record could start at `at`, from its first five bytes: a length that fits
    /// the file, and a body that starts with a [`LogRecord`] variant. Spares resynchronising
    /// the checksum of most offsets in random garbage, where one offset in 256 claims a
    /// length below [`MAX_RECORD`] (megabytes to hash, each).
    fn plausible(&mut self, at: u64) -> io::Result<bool> {
        self.seek(at)?;
        let mut head = [0u8; LEN_LEN + 1];
        let got = read_full(&mut self.reader, &mut head)?;
        self.pos += got as u64;
        let Some((len, tag)) = head.split_first_chunk::<LEN_LEN>() else {
            return Ok(false);
        };
        let len = u64::from(u32::from_be_bytes(*len));
        let total = (LEN_LEN + CHECK_LEN) as u64 + len;
        Ok(got == head.len()
            && len > 0
            && len <= MAX_RECORD as u64
            && total <= self.len.saturating_sub(at)
            && tag.first().is_some_and(|t| LOG_RECORD_TAGS.contains(t)))
    }
}

/// Keeps `path` as it is under the first free name `<name>.damaged.K` (a hard link: nothing
/// is copied, and the rewrite that follows goes to a new file). Returns that name.
fn keep_aside(path: &Path) -> Result<PathBuf, IndexError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("."));
    for k in 1..=1000u32 {
        let aside = dir.join(format!("{name}.damaged.{k}"));
        let kept = match fs::hard_link(path, &aside) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(_) if !aside.exists() => {
                // No hard links here (some filesystems): copy.
                fs::copy(path, &aside)
                    .and_then(|_| File::open(&aside))
                    .and_then(|f| f.sync_all())
            }
            other => other,
        };
        kept.map_err(data_error(
            "cannot keep a copy of the damaged log as",
            &aside,
        ))?;
        sync_dir(dir)?;
        return Ok(aside);
    }
    Err(IndexError::Store(format!(
        "{} has 1000 damaged copies beside it already; clear them out",
        path.display()
    )))
}

/// Rewrites `log.N` with exactly its intact records (everything before `records_end` but the
/// damaged stretches), through a temporary file and a rename. Returns the new length.
fn rewrite_around(
    path: &Path,
    generation: u64,
    damage: &[Damage],
    records_end: u64,
) -> Result<u64, IndexError> {
    let tmp = path.with_extension(format!("{generation}.tmp"));
    let written = (|| -> io::Result<u64> {
        let mut src = File::open(path)?;
        let mut out = io::BufWriter::with_capacity(READ_BUFFER, File::create(&tmp)?);
        out.write_all(&header(LOG_MAGIC, generation))?;
        let mut written = HEADER_LEN;
        let mut from = HEADER_LEN;
        let ends = damage
            .iter()
            .map(|d| (d.start, d.end))
            .chain([(records_end, records_end)]);
        for (start, end) in ends {
            let keep = start.saturating_sub(from);
            src.seek(SeekFrom::Start(from))?;
            let copied = io::copy(&mut (&mut src).take(keep), &mut out)?;
            if copied != keep {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the log shrank while it was being rewritten",
                ));
            }
            written += copied;
            from = end;
        }
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        Ok(written)
    })();
    let written = match written {
        Ok(written) => written,
        Err(e) => {
            remove_stale(&tmp);
            return Err(IndexError::Data {
                what: "cannot rewrite the damaged log as",
                path: tmp,
                source: e,
            });
        }
    };
    fs::rename(&tmp, path).map_err(data_error("cannot rename to", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(written)
}

fn apply(registry: &mut Registry, record: LogRecord, now: Duration) {
    match record {
        LogRecord::Register { holder, files } => {
            registry.register(&holder, &files, now);
        }
        LogRecord::Unregister { holder, ids } => {
            registry.unregister(&holder, &ids);
        }
        LogRecord::Expire { holders } => {
            for holder in holders {
                registry.unregister(&holder, &[]);
            }
        }
    }
}

/// Loads a snapshot; returns its size. Any damage is fatal: snapshots are written
/// atomically, so a damaged one means the disk lost data, which must not pass silently.
fn load_snapshot(
    path: &Path,
    generation: u64,
    registry: &mut Registry,
    now: Duration,
) -> Result<u64, IndexError> {
    let damaged = |reason: String| IndexError::DataFormat {
        path: path.to_path_buf(),
        reason: format!(
            "{reason}; the snapshot is damaged (move it aside to start without it, losing its \
             registrations)"
        ),
    };
    let file = File::open(path).map_err(data_error("cannot open the snapshot", path))?;
    let len = file
        .metadata()
        .map_err(data_error("cannot read the size of", path))?
        .len();
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let mut head = [0u8; HEADER_LEN as usize];
    if read_full(&mut reader, &mut head).map_err(data_error("cannot read", path))? < head.len() {
        return Err(damaged("its header is cut short".into()));
    }
    check_header(&head, SNAPSHOT_MAGIC, generation, path)?;
    let mut records = RecordReader {
        inner: reader,
        offset: HEADER_LEN,
        len,
        buf: Vec::new(),
    };
    let mut numbers: Vec<u32> = Vec::new();
    let mut listings = 0u64;
    let mut mapped = Vec::new();
    loop {
        match records.next().map_err(data_error("cannot read", path))? {
            Next::Record => {}
            Next::End => return Err(damaged("it ends before its end record".into())),
            Next::Damaged(reason) => return Err(damaged(reason)),
        }
        let record = codec::decode_body::<SnapshotRecord>(records.body())
            .map_err(|e| damaged(format!("a record does not decode: {e}")))?;
        match record {
            SnapshotRecord::Holders(addrs) => {
                for addr in &addrs {
                    let n = registry
                        .restore_holder(addr, now)
                        .ok_or_else(|| damaged("more holders than a registry can hold".into()))?;
                    numbers.push(n);
                }
            }
            SnapshotRecord::Listings(batch) => {
                for listing in batch {
                    mapped.clear();
                    for &h in &listing.holders {
                        let n = numbers.get(h as usize).copied().ok_or_else(|| {
                            damaged(format!("a listing names holder {h}, which is not listed"))
                        })?;
                        mapped.push(n);
                    }
                    let file = FileMeta {
                        name: listing.name,
                        size: listing.size,
                        chunk_size: listing.chunk_size,
                        id: listing.id,
                    };
                    registry.restore_listing(&file, &mapped);
                    listings += 1;
                }
            }
            SnapshotRecord::End {
                holders,
                listings: expected_listings,
                registrations,
            } => {
                registry.finish_restore();
                let found = (
                    numbers.len() as u64,
                    listings,
                    registry.registration_count() as u64,
                );
                if found != (holders, expected_listings, registrations) {
                    return Err(damaged(format!(
                        "it promises {holders} holders, {expected_listings} files and \
                         {registrations} registrations but holds {}, {} and {}",
                        found.0, found.1, found.2
                    )));
                }
                return Ok(len);
            }
        }
    }
}

/// Writes `bytes` to `tmp`, syncs, renames to `path` and syncs the folder: after a crash
/// either the old state or the whole new file is there.
fn write_durably(dir: &Path, tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), IndexError> {
    let mut file = File::create(tmp).map_err(data_error("cannot create", tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(data_error("cannot write", tmp))?;
    drop(file);
    fs::rename(tmp, path).map_err(data_error("cannot rename to", path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), IndexError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(data_error("cannot sync the data folder", dir))
}

/// Creates `log.N` with its header, durably (file and folder entry), ready to append.
fn create_log(dir: &Path, generation: u64) -> Result<File, IndexError> {
    let path = log_path(dir, generation);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(data_error("cannot create the log", &path))?;
    file.write_all(&header(LOG_MAGIC, generation))
        .and_then(|()| file.sync_all())
        .map_err(data_error("cannot write the log", &path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Replaces a log whose header was torn by an empty one.
fn rewrite_log(path: &Path, generation: u64) -> Result<(), IndexError> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(data_error("cannot open the log", path))?;
    file.write_all(&header(LOG_MAGIC, generation))
        .and_then(|()| file.sync_all())
        .map_err(data_error("cannot write the log", path))
}

fn remove_stale(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => log::debug!("index: removed {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("index: cannot remove {}: {e}", path.display()),
    }
}

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log.{generation}"))
}

fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot.{generation}"))
}

/// The data folder's files, by kind, generations ascending.
struct DataFiles {
    logs: Vec<u64>,
    snapshots: Vec<u64>,
    temporaries: Vec<PathBuf>,
}

/// Takes `dir/LOCK` exclusively, so a second index on the same folder is refused instead of
/// interleaving its log with ours. The OS drops the lock when the process dies (kill -9
/// included), so a crash never leaves the folder locked.
fn lock_data_dir(dir: &Path) -> Result<File, IndexError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(data_error("cannot open the lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(IndexError::DataInUse { path }),
        Err(fs::TryLockError::Error(e)) => Err(IndexError::Data {
            what: "cannot lock",
            path,
            source: e,
        }),
    }
}

impl DataFiles {
    fn scan(dir: &Path) -> Result<DataFiles, IndexError> {
        let mut files = DataFiles {
            logs: Vec::new(),
            snapshots: Vec::new(),
            temporaries: Vec::new(),
        };
        let entries = fs::read_dir(dir).map_err(data_error("cannot list", dir))?;
        for entry in entries {
            let entry = entry.map_err(data_error("cannot list", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if (name.starts_with("snapshot.") || name.starts_with("log.")) && name.ends_with(".tmp")
            {
                files.temporaries.push(entry.path());
            } else if let Some(g) = name.strip_prefix("log.").and_then(|g| g.parse().ok()) {
                files.logs.push(g);
            } else if let Some(g) = name.strip_prefix("snapshot.").and_then(|g| g.parse().ok()) {
                files.snapshots.push(g);
            }
        }
        files.logs.sort_unstable();
        files.snapshots.sort_unstable();
        Ok(files)
    }

    /// The logs to replay after snapshot `base` (`None`: from empty), checked to continue it
    /// without a gap: `log.S`, `log.S+1`, ... (`log.1`, ... without a snapshot). A missing
    /// file would make the store start silently with a fraction of the registry.
    fn logs_from(&self, dir: &Path, base: Option<u64>) -> Result<Vec<u64>, IndexError> {
        let first = base.unwrap_or(1);
        let logs: Vec<u64> = self.logs.iter().copied().filter(|&g| g >= first).collect();
        let proceed = "restore it, or move the data folder aside to start empty (running \
                       peers register again with their next heartbeat)";
        if let (Some(&oldest), None) = (logs.first(), base)
            && oldest > 1
        {
            return Err(IndexError::DataMissing {
                path: snapshot_path(dir, oldest),
                reason: format!(
                    "log.{oldest} holds only the changes made after it, so starting \
                     without it would serve a fraction of the registry; {proceed}"
                ),
            });
        }
        if let (Some(s), None) = (base, logs.first()) {
            return Err(IndexError::DataMissing {
                path: log_path(dir, s),
                reason: format!(
                    "it holds the changes made after snapshot.{s}, which is there; {proceed}"
                ),
            });
        }
        for (expected, &found) in (first..).zip(&logs) {
            if found != expected {
                return Err(IndexError::DataMissing {
                    path: log_path(dir, expected),
                    reason: format!(
                        "it holds the changes between log.{} and log.{found}; {proceed}",
                        expected.saturating_sub(1)
                    ),
                });
            }
        }
        Ok(logs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use std::sync::RwLock;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    /// A fresh folder under the system temp dir, removed when dropped.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new() -> TestDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let dir =
                std::env::temp_dir().join(format!("shoal-durable-test-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TestDir(dir)
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn options(clock: &ManualClock) -> DurableOptions {
        DurableOptions {
            lease: Duration::from_secs(10),
            clock: Arc::new(clock.clone()),
            seed: Some(1),
            ..DurableOptions::default()
        }
    }

    /// Held (shared) by every store opening in these tests and while a disk is filled, and
    /// exclusively while a test runs `mount` or `umount`: a child process holds copies of
    /// this process's open files from its fork until its exec, so for that moment also the
    /// lock of a data folder another test just closed (its reopening would find the folder
    /// in use), or a filler file another test is deleting (its space would not return).
    static SPAWNING: RwLock<()> = RwLock::new(());

    fn open_store(
        dir: &Path,
        options: DurableOptions,
    ) -> Result<(DurableStore, Recovery), IndexError> {
        let _no_spawn = SPAWNING.read().unwrap_or_else(PoisonError::into_inner);
        DurableStore::open_with_report(dir, options)
    }

    /// Runs `command` with no store being opened meanwhile (see [`SPAWNING`]).
    fn run(command: &mut std::process::Command) -> io::Result<std::process::ExitStatus> {
        let _spawning = SPAWNING.write().unwrap_or_else(PoisonError::into_inner);
        command.status()
    }

    fn open(dir: &TestDir, clock: &ManualClock) -> (DurableStore, Recovery) {
        open_store(&dir.0, options(clock)).unwrap()
    }

    fn addr(s: &str) -> PeerAddr {
        PeerAddr::new(s).unwrap()
    }

    /// A gate commits pass right after taking their batches, before writing them.
    #[derive(Default)]
    pub(super) struct Hold {
        /// (closed, commits that reached the gate)
        state: Mutex<(bool, usize)>,
        changed: Condvar,
    }

    impl Hold {
        pub(super) fn pass(&self) {
            let mut state = lock(&self.state);
            state.1 += 1;
            self.changed.notify_all();
            while state.0 {
                state = self.changed.wait(state).unwrap();
            }
        }

        /// Closes the gate and counts arrivals from zero.
        fn close(&self) {
            *lock(&self.state) = (true, 0);
        }

        fn open(&self) {
            lock(&self.state).0 = false;
            self.changed.notify_all();
        }

        /// Waits until `n` commits reached the gate since it was closed.
        fn wait_arrived(&self, n: usize) {
            let mut state = lock(&self.state);
            while state.1 < n {
                state = self.changed.wait(state).unwrap();
            }
        }
    }

    /// Copies the data folder, as a crash at this moment would leave it.
    fn crash_copy(from: &Path) -> TestDir {
        let to = TestDir::new();
        fs::create_dir_all(&to.0).unwrap();
        for entry in fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), to.0.join(entry.file_name())).unwrap();
        }
        to
    }

    #[derive(Clone, Copy, Debug)]
    enum Repeat {
        Register,
        Unregister,
        Renew,
    }

    #[test]
    fn an_answer_that_rests_on_an_unwritten_record_waits_for_it() {
        for repeat in [Repeat::Register, Repeat::Unregister, Repeat::Renew] {
            let dir = TestDir::new();
            let clock = ManualClock::new();
            let store = Arc::new(open(&dir, &clock).0);
            let (holder, file) = (addr("a:1"), meta(1));
            if let Repeat::Unregister = repeat {
                assert_eq!(
                    store
                        .register(&holder, std::slice::from_ref(&file))
                        .unwrap(),
                    1
                );
            }
            store.shared.hold.close();
            // The first change's record is taken by its commit and held before the write.
            let first = {
                let (store, holder, file) = (Arc::clone(&store), holder.clone(), file.clone());
                thread::spawn(move || match repeat {
                    Repeat::Unregister => store.unregister(&holder, &[file.id]).unwrap(),
                    _ => store.register(&holder, &[file]).unwrap(),
                })
            };
            store.shared.hold.wait_arrived(1);
            // The same change again (a renewal for `Renew`): its answer rests on the first
            // one's record. A crash at the moment it is answered leaves the copy.
            let answered = Arc::new(AtomicBool::new(false));
            let second = {
                let (store, dir, answered) =
                    (Arc::clone(&store), dir.0.clone(), Arc::clone(&answered));
                let (holder, file) = (holder.clone(), file.clone());
                thread::spawn(move || {
                    let answer = match repeat {
                        Repeat::Register => store.register(&holder, &[file]).unwrap(),
                        Repeat::Unregister => store.unregister(&holder, &[file.id]).unwrap(),
                        Repeat::Renew => store.renew(&holder).unwrap().unwrap_or(0),
                    };
                    let copy = crash_copy(&dir);
                    answered.store(true, Ordering::SeqCst);
                    (answer, copy)
                })
            };
            // Until the second request was answered or waits for a commit (bounded).
            let deadline = Instant::now() + Duration::from_secs(30);
            while !answered.load(Ordering::SeqCst) && lock(&store.shared.queue).waiters.len() < 2 {
                assert!(
                    Instant::now() < deadline,
                    "{repeat:?}: the second request hangs"
                );
                thread::yield_now();
            }
            store.shared.hold.open();
            assert_eq!(first.join().unwrap(), 1);
            let (answer, copy) = second.join().unwrap();
            let expected = match repeat {
                Repeat::Register => 0,
                Repeat::Unregister => 0,
                Repeat::Renew => 1,
            };
            assert_eq!(answer, expected, "{repeat:?}");
            let (crashed, _) = open(&copy, &clock);
            let listed = match repeat {
                Repeat::Unregister => vec![],
                _ => vec![(file.name.clone(), 1)],
            };
            assert_eq!(listing(&crashed), listed, "{repeat:?}: lost on a crash");
        }
    }

    #[test]
    fn a_second_store_on_an_open_folder_is_refused_until_the_first_closes() {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        let (first, _) = open(&dir, &clock);
        match open_store(&dir.0, options(&clock)).map(|(store, _)| store) {
            Err(IndexError::DataInUse { path }) => assert_eq!(path, dir.0.join(LOCK_FILE)),
            Err(other) => panic!("expected DataInUse, got {other}"),
            Ok(_) => panic!("two stores opened the same folder"),
        }
        drop(first);
        let (_again, recovery) = open(&dir, &clock);
        assert_eq!(recovery.registrations, 0);
    }

    fn meta(n: u32) -> FileMeta {
        FileMeta {
            name: format!("file-{n}.bin"),
            size: u64::from(n),
            chunk_size: 1024,
            id: FileId(*blake3::hash(&n.to_le_bytes()).as_bytes()),
        }
    }

    /// Every (name, holders) the store lists, sorted: what a user would compare.
    fn listing(store: &DurableStore) -> Vec<(String, u32)> {
        store
            .search("", usize::MAX)
            .unwrap()
            .into_iter()
            .map(|hit| (hit.file.name, hit.holders))
            .collect()
    }

    /// Byte offsets of the records in a log (after its header).
    fn record_offsets(path: &Path) -> Vec<u64> {
        let bytes = fs::read(path).unwrap();
        let mut offsets = Vec::new();
        let mut at = HEADER_LEN as usize;
        while at < bytes.len() {
            offsets.push(at as u64);
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            at += LEN_LEN + len + CHECK_LEN;
        }
        offsets
    }

    /// Ten stores of one file each by one holder: ten records.
    fn ten_records(dir: &TestDir, clock: &ManualClock) -> Vec<(String, u32)> {
        let (store, recovery) = open(dir, clock);
        assert_eq!(
            recovery,
            Recovery {
                elapsed: recovery.elapsed,
                ..Recovery::default()
            }
        );
        for n in 0..10 {
            assert_eq!(store.register(&addr("a:1"), &[meta(n)]).unwrap(), 1);
        }
        let before = listing(&store);
        assert_eq!(before.len(), 10);
        before
    }

    #[test]
    fn changes_survive_a_reopen() {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        {
            let (store, _) = open(&dir, &clock);
            let files: Vec<FileMeta> = (0..5).map(meta).collect();
            assert_eq!(store.register(&addr("a:1"), &files).unwrap(), 5);
            assert_eq!(store.register(&addr("b:1"), &files[..2]).unwrap(), 2);
            // Nothing new: renews the lease, writes nothing.
            assert_eq!(store.register(&addr("b:1"), &files[..2]).unwrap(), 0);
            assert_eq!(store.unregister(&addr("a:1"), &[files[4].id]).unwrap(), 1);
            assert_eq!(store.unregister(&addr("c:1"), &[]).unwrap(), 0);
        }
        let (store, recovery) = open(&dir, &clock);
        assert_eq!((recovery.records, recovery.cut_bytes), (3, 0));
        assert_eq!((recovery.registrations, recovery.holders), (6, 2));
        let holders = store.holders(&FileKey::Name("file-0.bin".into())).unwrap();
        assert_eq!(holders.unwrap().1, vec![addr("a:1"), addr("b:1")]);
        assert_eq!(
            store.holders(&FileKey::Name("file-4.bin".into())).unwrap(),
            None
        );
    }

    #[test]
    fn a_torn_tail_is_cut_reported_and_writing_goes_on() {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        let before = ten_records(&dir, &clock);
        let log = log_path(&dir.0, 1);
        let len = fs::metadata(&log).unwrap().len();
        let last = *record_offsets(&log).last().unwrap();
        // A crash in the middle of writing the last record.
        let torn = last + 7;
        OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(torn)
            .unwrap();
        let (store, recovery) = open(&dir, &clock);
        assert_eq!((recovery.records, recovery.cut_bytes), (9, torn - last));
        assert_eq!(listing(&store), before[..9]);
        assert_eq!(fs::metadata(&log).unwrap().len(), last);
        assert!(len > torn);
        // A crash's torn write is cut in place: nothing to keep.
        assert!(recovery.kept.is_empty());
        assert_eq!(names(&dir.0), ["LOCK", "log.1"]);
        // New writes land after the cut and survive.
        assert_eq!(store.register(&addr("b:1"), &[meta(99)]).unwrap(), 1);
        drop(store);
        let (store, recovery) = open(&dir, &clock);
        assert_eq!((recovery.records, recovery.cut_bytes), (10, 0));
        assert_eq!(listing(&store).len(), 10);
        assert!(listing(&store).contains(&("file-99.bin".into(), 1)));
    }

    /// Flips one bit of the byte at `at`.
    fn flip(path: &Path, at: u64) {
        let mut bytes = fs::read(path).unwrap();
        bytes[at as usize] ^= 0x20;
        fs::write(path, &bytes).unwrap();
    }

    /// The names in the data folder, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn damage_at_the_start_middle_or_end_loses_only_the_damaged_record() {
        // (record, byte in it): the first record's body, a middle one's body, a middle one's
        // length (it then claims more than the file holds), the last one's body.
        for (record, offset_in_record) in [(0usize, 9u64), (4, 9), (6, 1), (9, 9)] {
            let dir = TestDir::new();
            let clock = ManualClock::new();
            let before = ten_records(&dir, &clock);
            let log = log_path(&dir.0, 1);
            let offsets = record_offsets(&log);
            flip(&log, offsets[record] + offset_in_record);
            let damaged = fs::read(&log).unwrap();

            let (store, recovery) = open(&dir, &clock);
            let case = format!("record {record}, byte {offset_in_record}");
            assert_eq!(recovery.records, 9, "{case}");
            let mut expected = before.clone();
            expected.remove(record);
            assert_eq!(listing(&store), expected, "{case}");
            let size = offsets
                .get(record + 1)
                .copied()
                .unwrap_or(damaged.len() as u64)
                - offsets[record];
            assert_eq!(recovery.skipped_bytes + recovery.cut_bytes, size, "{case}");
            // Never destroyed: the damaged log is kept as it was, beside the repaired one.
            let kept = dir.0.join("log.1.damaged.1");
            assert_eq!(recovery.kept, vec![kept.clone()], "{case}");
            assert_eq!(fs::read(&kept).unwrap(), damaged, "{case}");
            // Writing goes on, and the repaired log reads clean.
            assert_eq!(store.register(&addr("b:1"), &[meta(99)]).unwrap(), 1);
            drop(store);
            let (store, recovery) = open(&dir, &clock);
            assert_eq!(
                (recovery.records, recovery.cut_bytes, recovery.skipped_bytes),
                (10, 0, 0),
                "{case}"
            );
            assert!(recovery.kept.is_empty(), "{case}");
            assert_eq!(listing(&store).len(), 10, "{case}");
        }
    }

    #[test]
    fn a_zeroed_page_in_the_middle_loses_only_the_records_it_covers() {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        let (store, _) = open(&dir, &clock);
        for n in 0..200 {
            store.register(&addr("a:1"), &[meta(n)]).unwrap();
        }
        drop(store);
        let log = log_path(&dir.0, 1);
        let mut bytes = fs::read(&log).unwrap();
        let len = bytes.len() as u64;
        assert!(len > 3 * 4096, "{len}");
        bytes[4096..8192].fill(0);
        fs::write(&log, &bytes).unwrap();
        let offsets = record_offsets_until(&log, 4096);
        // Records that lie wholly outside the page survive.
        let mut ends: Vec<u64> = offsets.iter().skip(1).copied().collect();
        ends.push(len);
        let survivors: Vec<String> = (0..200u32)
            .zip(offsets.iter().zip(&ends))
            .filter(|&(_, (&start, &end))| end <= 4096 || start >= 8192)
            .map(|(n, _)| meta(n).name)
            .collect();
        assert!(survivors.len() > 100 && survivors.len() < 200);

        let (store, recovery) = open(&dir, &clock);
        assert_eq!(recovery.records, survivors.len() as u64);
        let mut listed: Vec<String> = listing(&store).into_iter().map(|(name, _)| name).collect();
        let mut survivors = survivors;
        listed.sort();
        survivors.sort();
        assert_eq!(listed, survivors);
        assert_eq!(recovery.cut_bytes, 0);
        assert_eq!(recovery.kept.len(), 1);
        assert_eq!(fs::read(&recovery.kept[0]).unwrap(), bytes);
    }

    /// Record offsets of a log of `Register { a:1, [meta(n)] }` for n = 0, 1, ...: from the
    /// lengths on disk before `damage_from`, from re-encoding the records after it.
    fn record_offsets_until(path: &Path, damage_from: u64) -> Vec<u64> {
        let bytes = fs::read(path).unwrap();
        let mut offsets = Vec::new();
        let mut at = HEADER_LEN;
        let mut n = 0u32;
        while (at as usize) < bytes.len() {
            offsets.push(at);
            let mut record = Vec::new();
            encode_record(
                &LogRecord::Register {
                    holder: addr("a:1"),
                    files: vec![meta(n)],
                },
                &mut record,
            )
            .unwrap();
            if at + 4 <= damage_from {
                let len =
                    u32::from_be_bytes(bytes[at as usize..at as usize + 4].try_into().unwrap());
                assert_eq!(u64::from(len) + 12, record.len() as u64);
            }
            at += record.len() as u64;
            n += 1;
        }
        offsets
    }

    #[test]
    fn a_log_without_the_snapshot_it_continues_is_refused_untouched() {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        {
            let (store, _) = open(&dir, &clock);
            let files: Vec<FileMeta> = (0..5).map(meta).collect();
            store.register(&addr("a:1"), &files).unwrap();
            store.snapshot_now().unwrap();
            store.register(&addr("b:1"), &[meta(7)]).unwrap();
        }
        assert_eq!(names(&dir.0), ["LOCK", "log.2", "snapshot.2"]);
        let snapshot = fs::read(snapshot_path(&dir.0, 2)).unwrap();
        let log = fs::read(log_path(&dir.0, 2)).unwrap();
        let refused =
            |missing: PathBuf| match open_store(&dir.0, options(&clock)).map(|(store, _)| store) {
                Err(IndexError::DataMissing { path, reason }) => {
                    assert_eq!(path, missing);
                    assert!(reason.contains("aside"), "{reason}");
                }
                Err(other) => panic!("expected DataMissing, got {other}"),
                Ok(_) => panic!("started with a fraction of the registry"),
            };
        // The snapshot is gone: log.2 alone would list b's file and none of a's.
        fs::remove_file(snapshot_path(&dir.0, 2)).unwrap();
        refused(snapshot_path(&dir.0, 2));
        assert_eq!(names(&dir.0), ["LOCK", "log.2"]);
        assert_eq!(fs::read(log_path(&dir.0, 2)).unwrap(), log);
        // The log after the snapshot is gone.
        fs::write(snapshot_path(&dir.0, 2), &snapshot).unwrap();
        fs::remove_file(log_path(&dir.0, 2)).unwrap();
        refused(log_path(&dir.0, 2));
        assert_eq!(names(&dir.0), ["LOCK", "snapshot.2"]);
        // A log in between is gone.
        fs::write(log_path(&dir.0, 2), &log).unwrap();
        fs::write(log_path(&dir.0, 4), header(LOG_MAGIC, 4)).unwrap();
        refused(log_path(&dir.0, 3));
        fs::remove_file(log_path(&dir.0, 4)).unwrap();
        let (store, recovery) = open(&dir, &clock);
        assert_eq!(recovery.registrations, 6);
        assert_eq!(listing(&store).len(), 6);
    }

    #[test]
    fn a_torn_header_starts_the_log_afresh() {
        let dir = TestDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        fs::write(log_path(&dir.0, 1), b"SHOAL").unwrap();
        let clock = ManualClock::new();
        let (store, recovery) = open(&dir, &clock);
        assert_eq!((recovery.records, recovery.cut_bytes), (0, 5));
        store.register(&addr("a:1"), &[meta(1)]).unwrap();
        drop(store);
        assert_eq!(open(&dir, &clock).1.registrations, 1);
    }

    #[test]
    fn foreign_files_and_other_versions_are_refused_not_cut() {
        let dir = TestDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let path = log_path(&dir.0, 1);
        let mut newer = header(LOG_MAGIC, 1);
        newer[8..10].copy_from_slice(&2u16.to_be_bytes());
        fs::write(&path, newer).unwrap();
        let clock = ManualClock::new();
        let err = open_store(&dir.0, options(&clock))
            .map(|(store, _)| store)
            .err()
            .unwrap();
        assert!(err.to_string().contains("format version 2"), "{err}");
        fs::write(&path, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let err = open_store(&dir.0, options(&clock))
            .map(|(store, _)| store)
            .err()
            .unwrap();
        assert!(err.to_string().contains("does not start with"), "{err}");
        // Refused, not cut: the file is untouched.
        assert_eq!(
            fs::read(&path).unwrap(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        );
    }

    #[test]
    fn a_damaged_log_header_is_refused_and_left_as_it_is() {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        ten_records(&dir, &clock);
        let log = log_path(&dir.0, 1);
        flip(&log, 3);
        let damaged = fs::read(&log).unwrap();
        match open_store(&dir.0, options(&clock)).map(|(store, _)| store) {
            Err(IndexError::DataFormat { path, reason }) => {
                assert_eq!(path, log);
                assert!(reason.contains("move it aside"), "{reason}");
            }
            Err(other) => panic!("expected DataFormat, got {other}"),
            Ok(_) => panic!("a damaged header was accepted"),
        }
        assert_eq!(fs::read(&log).unwrap(), damaged);
        assert_eq!(names(&dir.0), ["LOCK", "log.1"]);
    }

    #[test]
    fn snapshots_compact_the_log_and_recovery_uses_them() {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        {
            let (store, _) = open(&dir, &clock);
            for h in 0..50u32 {
                let files: Vec<FileMeta> = (h..h + 20).map(meta).collect();
                store.register(&addr(&format!("h{h}:1")), &files).unwrap();
            }
            store.unregister(&addr("h3:1"), &[]).unwrap();
            assert!(store.snapshot_now().unwrap() > HEADER_LEN);
            store.register(&addr("late:1"), &[meta(1000)]).unwrap();
            store.unregister(&addr("h4:1"), &[meta(4).id]).unwrap();
        }
        let files = DataFiles::scan(&dir.0).unwrap();
        assert_eq!((files.snapshots, files.logs), (vec![2], vec![2]));
        let (store, recovery) = open(&dir, &clock);
        assert_eq!(recovery.snapshot, Some(2));
        assert_eq!(recovery.records, 2);
        assert_eq!(recovery.registrations, 49 * 20 - 1 + 1);
        assert_eq!(recovery.holders, 50);
        let (_, holders) = store
            .holders(&FileKey::Name("file-10.bin".into()))
            .unwrap()
            .unwrap();
        // Files 0..69; file 10 is held by h0..h10 minus h3 (gone) and h4 (holds it still).
        assert_eq!(holders.len(), 10);
        // A second snapshot replaces the first.
        store.snapshot_now().unwrap();
        drop(store);
        let files = DataFiles::scan(&dir.0).unwrap();
        assert_eq!((files.snapshots, files.logs), (vec![3], vec![3]));
        assert_eq!(open(&dir, &clock).1.registrations, 49 * 20);
    }

    #[test]
    fn compaction_runs_on_its_own() {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        let options = DurableOptions {
            compact_after: 4 << 10,
            ..options(&clock)
        };
        let store = open_store(&dir.0, options.clone())
            .map(|(store, _)| store)
            .unwrap();
        for n in 0..200 {
            store.register(&addr("a:1"), &[meta(n)]).unwrap();
        }
        // Bounded wait for the background compactor.
        let deadline = Instant::now() + Duration::from_secs(30);
        while DataFiles::scan(&dir.0).unwrap().snapshots.is_empty() {
            assert!(Instant::now() < deadline, "no snapshot was taken");
            thread::yield_now();
        }
        drop(store);
        let (_, recovery) = open_store(&dir.0, options).unwrap();
        assert!(recovery.snapshot.is_some());
        assert_eq!(recovery.registrations, 200);
    }

    #[test]
    fn concurrent_changes_and_snapshots_all_survive() {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        let store = Arc::new(open(&dir, &clock).0);
        let threads: Vec<_> = (0..16u32)
            .map(|t| {
                let store = Arc::clone(&store);
                thread::spawn(move || {
                    let holder = addr(&format!("t{t}:1"));
                    for n in 0..40 {
                        assert_eq!(store.register(&holder, &[meta(t * 1000 + n)]).unwrap(), 1);
                    }
                })
            })
            .collect();
        // Compactions (log switches) in the middle of it all.
        let mut snapshots = 0;
        loop {
            store.snapshot_now().unwrap();
            snapshots += 1;
            if snapshots == 20 || threads.iter().all(|t| t.is_finished()) {
                break;
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        drop(Arc::into_inner(store).unwrap());
        let (store, recovery) = open(&dir, &clock);
        assert_eq!(recovery.registrations, 640);
        let files = DataFiles::scan(&dir.0).unwrap();
        assert_eq!(files.snapshots, vec![snapshots + 1]);
        assert_eq!(files.logs, vec![snapshots + 1]);
        for t in 0..16u32 {
            for n in 0..40 {
                let key = FileKey::Id(meta(t * 1000 + n).id);
                let (_, holders) = store.holders(&key).unwrap().unwrap();
                assert_eq!(holders, vec![addr(&format!("t{t}:1"))]);
            }
        }
    }

    #[test]
    fn leases_restart_fresh_and_expiries_are_durable() {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        let key = FileKey::Name("file-1.bin".into());
        {
            let (store, _) = open(&dir, &clock);
            store.register(&addr("a:1"), &[meta(1), meta(2)]).unwrap();
            store.register(&addr("b:1"), &[meta(1)]).unwrap();
            clock.advance(Duration::from_secs(9));
        }
        // Restarted at 9 s: both get a fresh 10 s lease from the load.
        let (store, _) = open(&dir, &clock);
        clock.advance(Duration::from_secs(8));
        assert_eq!(store.renew(&addr("a:1")).unwrap(), Some(2));
        clock.advance(Duration::from_secs(2));
        // 19 s: `b` lapsed exactly now; `a` renewed at 17 s lives until 27 s.
        assert_eq!(store.holders(&key).unwrap().unwrap().1, vec![addr("a:1")]);
        assert_eq!(store.renew(&addr("b:1")).unwrap(), None);
        assert_eq!(store.sweep_expired().unwrap(), vec![(addr("b:1"), 1)]);
        clock.advance(Duration::from_secs(8));
        // 27 s: `a` lapsed too; registering again drops its old files, durably.
        assert_eq!(store.holders(&key).unwrap(), None);
        assert_eq!(store.register(&addr("a:1"), &[meta(3)]).unwrap(), 1);
        drop(store);
        let (store, recovery) = open(&dir, &clock);
        assert_eq!((recovery.registrations, recovery.holders), (1, 1));
        assert_eq!(listing(&store), vec![("file-3.bin".to_string(), 1)]);
    }

    /// A small tmpfs, mounted for one test and unmounted when dropped (whatever the test
    /// did). `None`, with a message, unless running as root.
    struct SmallDisk(TestDir);

    impl SmallDisk {
        fn mount(size: &str) -> Option<SmallDisk> {
            let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
            let euid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1))
                .map(str::to_owned);
            if euid.as_deref() != Some("0") {
                println!("skipped: mounting a small tmpfs needs root (CI runs as root)");
                return None;
            }
            let dir = TestDir::new();
            fs::create_dir_all(&dir.0).unwrap();
            let mounted = run(std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(&dir.0));
            match mounted {
                Ok(status) if status.success() => Some(SmallDisk(dir)),
                other => {
                    println!("skipped: cannot mount a tmpfs ({other:?})");
                    None
                }
            }
        }

        /// Writes a file until the disk is full.
        fn fill(&self, name: &str) {
            // No child process may hold a copy of this file's descriptor when the test
            // deletes it to free the space (see [`SPAWNING`]).
            let _no_spawn = SPAWNING.read().unwrap_or_else(PoisonError::into_inner);
            let mut file = File::create(self.0.0.join(name)).unwrap();
            let block = vec![0xA5u8; 64 << 10];
            loop {
                match file.write(&block) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(28), "{e}"); // ENOSPC
                        break;
                    }
                }
            }
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = run(std::process::Command::new("umount").arg(&self.0.0));
        }
    }

    #[test]
    fn a_full_disk_refuses_a_change_without_a_trace_and_recovers_when_space_returns() {
        let Some(disk) = SmallDisk::mount("1m") else {
            return;
        };
        let clock = ManualClock::new();
        let (store, _) = open(&disk.0, &clock);
        assert_eq!(store.register(&addr("a:1"), &[meta(0)]).unwrap(), 1);
        disk.fill("filler");
        // Some 200 files: more than is left in the log's last page, so the write fails
        // halfway, leaving part of a record at the end of the log.
        let many: Vec<FileMeta> = (1..200).map(meta).collect();
        let before = listing(&store);
        for attempt in 0..2 {
            match store.register(&addr("b:1"), &many) {
                Err(IndexError::LogFailed(reason)) => {
                    assert!(reason.contains("No space left"), "{reason}")
                }
                other => panic!("attempt {attempt}: expected LogFailed, got {other:?}"),
            }
            // Not a trace: the refused files are not listed, and nothing was counted.
            assert_eq!(listing(&store), before, "attempt {attempt}");
            assert_eq!(store.holders(&FileKey::Id(meta(5).id)).unwrap(), None);
            assert_eq!(store.registration_count(), 1);
            assert_eq!(store.renew(&addr("b:1")).unwrap(), None);
        }
        // Space returns: the store writes again by itself, without a restart.
        fs::remove_file(disk.0.0.join("filler")).unwrap();
        assert_eq!(store.register(&addr("b:1"), &many).unwrap(), 199);
        assert_eq!(store.register(&addr("c:1"), &[meta(0)]).unwrap(), 1);
        drop(store);
        // And the log has no half record in the middle.
        let (store, recovery) = open(&disk.0, &clock);
        assert_eq!(
            (
                recovery.cut_bytes,
                recovery.skipped_bytes,
                recovery.kept.len()
            ),
            (0, 0, 0)
        );
        assert_eq!(recovery.registrations, 201);
        assert_eq!(listing(&store).len(), 200);
        drop(store);
    }

    #[test]
    fn a_log_switch_refused_by_a_full_disk_leaves_no_gap_in_the_logs() {
        let Some(disk) = SmallDisk::mount("1m") else {
            return;
        };
        let clock = ManualClock::new();
        let (store, _) = open(&disk.0, &clock);
        assert_eq!(store.register(&addr("a:1"), &[meta(0)]).unwrap(), 1);
        disk.fill("filler");
        // A snapshot cannot even start the next log (its header does not fit): refused.
        assert!(store.snapshot_now().is_err());
        assert_eq!(names(&disk.0.0), ["LOCK", "filler", "log.1"]);
        assert!(store.register(&addr("b:1"), &[meta(1)]).is_err());
        fs::remove_file(disk.0.0.join("filler")).unwrap();
        assert_eq!(store.register(&addr("b:1"), &[meta(1)]).unwrap(), 1);
        // The refused switch's generation is used, not skipped: log.2 follows log.1.
        store.snapshot_now().unwrap();
        assert_eq!(store.register(&addr("c:1"), &[meta(2)]).unwrap(), 1);
        drop(store);
        assert_eq!(names(&disk.0.0), ["LOCK", "log.2", "snapshot.2"]);
        let (store, recovery) = open(&disk.0, &clock);
        assert_eq!((recovery.snapshot, recovery.records), (Some(2), 1));
        assert_eq!(listing(&store).len(), 3);
        drop(store);
    }

    /// Until `n` requests wait for a commit (bounded).
    fn wait_for_waiters(store: &DurableStore, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while lock(&store.shared.queue).waiters.len() < n {
            assert!(
                Instant::now() < deadline,
                "fewer than {n} requests are waiting"
            );
            thread::yield_now();
        }
    }

    #[test]
    fn a_failed_write_refuses_and_undoes_every_change_not_on_disk() {
        let Some(disk) = SmallDisk::mount("1m") else {
            return;
        };
        let clock = ManualClock::new();
        let store = Arc::new(open(&disk.0, &clock).0);
        let register = |holder: &str, files: Vec<FileMeta>| {
            let (store, holder) = (Arc::clone(&store), addr(holder));
            thread::spawn(move || store.register(&holder, &files))
        };
        // `x` is being committed (held before its write); `a` (one file, which would fit)
        // and `b` (too many to fit) queue behind it and share the next round.
        store.shared.hold.close();
        let x = register("x:1", vec![meta(0)]);
        store.shared.hold.wait_arrived(1);
        let a = register("a:1", vec![meta(1)]);
        wait_for_waiters(&store, 2);
        let b = register("b:1", (2..200).map(meta).collect());
        wait_for_waiters(&store, 3);
        disk.fill("filler");
        store.shared.hold.open();
        assert_eq!(x.join().unwrap().unwrap(), 1);
        for (name, refused) in [("a", a), ("b", b)] {
            match refused.join().unwrap() {
                Err(IndexError::LogFailed(_)) => {}
                other => panic!("{name}: expected LogFailed, got {other:?}"),
            }
        }
        // Neither a's file nor any of b's is listed; x's, on disk, is.
        assert_eq!(listing(&store), vec![("file-0.bin".to_string(), 1)]);
        assert_eq!(store.registration_count(), 1);
        fs::remove_file(disk.0.0.join("filler")).unwrap();
        assert_eq!(store.register(&addr("a:1"), &[meta(1)]).unwrap(), 1);
        drop(Arc::into_inner(store).unwrap());
        let (store, recovery) = open(&disk.0, &clock);
        assert_eq!((recovery.records, recovery.cut_bytes), (2, 0));
        assert_eq!(listing(&store).len(), 2);
        drop(store);
    }

    #[test]
    fn damage_in_an_older_log_is_kept_aside_and_the_newer_log_still_replayed() {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        {
            let (store, _) = open(&dir, &clock);
            for n in 0..5 {
                store.register(&addr("a:1"), &[meta(n)]).unwrap();
            }
            // A switch to log.2 whose snapshot never got written (a crash right after it).
            lock(&store.shared.queue).latest_generation = 2;
            let switch = store.shared.enqueue(Batch::Switch {
                generation: 2,
                seq: 0,
            });
            store.shared.wait_durable(&switch).unwrap();
            for n in 5..8 {
                store.register(&addr("b:1"), &[meta(n)]).unwrap();
            }
        }
        assert_eq!(names(&dir.0), ["LOCK", "log.1", "log.2"]);
        let old = log_path(&dir.0, 1);
        flip(&old, record_offsets(&old)[2] + 9);
        let damaged = fs::read(&old).unwrap();
        let (store, recovery) = open(&dir, &clock);
        assert_eq!(recovery.records, 4 + 3);
        assert_eq!(recovery.kept, vec![dir.0.join("log.1.damaged.1")]);
        assert_eq!(fs::read(&recovery.kept[0]).unwrap(), damaged);
        let names_listed: Vec<String> = listing(&store).into_iter().map(|(n, _)| n).collect();
        let expected: Vec<String> = [0, 1, 3, 4, 5, 6, 7].map(|n| meta(n).name).to_vec();
        assert_eq!(names_listed, expected);
    }

    #[test]
    fn random_garbage_in_the_middle_loses_only_the_records_it_covers() {
        // A log of 20,000 one-file registrations, written directly (no fsync per record).
        let dir = TestDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let mut bytes = header(LOG_MAGIC, 1).to_vec();
        let mut offsets = Vec::new();
        for n in 0..20_000u32 {
            offsets.push(bytes.len());
            let record = LogRecord::Register {
                holder: addr("a:1"),
                files: vec![meta(n)],
            };
            encode_record(&record, &mut bytes).unwrap();
        }
        offsets.push(bytes.len());
        // 64 KiB of pseudo-random bytes (another file's sector, say) from 512 KiB on.
        let (from, to) = (512usize << 10, 576usize << 10);
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for b in &mut bytes[from..to] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        fs::write(log_path(&dir.0, 1), &bytes).unwrap();
        let survivors = offsets
            .windows(2)
            .filter(|w| w[1] <= from || w[0] >= to)
            .count();
        let clock = ManualClock::new();
        let started = Instant::now();
        let (store, recovery) = open(&dir, &clock);
        println!(
            "recovered {} records around 64 KiB of garbage in {:.3} s",
            recovery.records,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(recovery.records, survivors as u64);
        assert_eq!(store.registration_count(), survivors);
        assert_eq!(recovery.kept.len(), 1);
    }

    #[test]
    fn every_log_record_starts_with_a_tag_resynchronising_looks_for() {
        let records = [
            LogRecord::Register {
                holder: addr("a:1"),
                files: vec![meta(1)],
            },
            LogRecord::Unregister {
                holder: addr("a:1"),
                ids: vec![meta(1).id],
            },
            LogRecord::Expire {
                holders: vec![addr("a:1")],
            },
        ];
        for (record, tag) in records.iter().zip(LOG_RECORD_TAGS) {
            let mut bytes = Vec::new();
            encode_record(record, &mut bytes).unwrap();
            assert_eq!(bytes[LEN_LEN], tag);
        }
    }

    #[test]
    fn a_zero_lease_is_refused() {
        let dir = TestDir::new();
        let options = DurableOptions {
            lease: Duration::ZERO,
            ..DurableOptions::default()
        };
        assert!(open_store(&dir.0, options).map(|(store, _)| store).is_err());
    }
}
