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
//! Load the newest snapshot, replay the logs from its generation on, in order. A record cut
//! short (a crash mid-write) or failing its checksum ends the replay of that log: the rest of
//! the file is cut off (truncated, so new records never follow garbage) and reported with
//! `log::warn!`; it is never fatal and never applied, nor is anything after it in that log
//! (a later record could depend on the lost one). Only the newest log can be torn by a crash:
//! an older one was complete and synced before the next began, so damage there is the disk's
//! doing; its tail is cut the same way and the newer logs are still replayed, since they hold
//! acknowledged changes. Files of another format or version, or a damaged snapshot (written
//! atomically, so damage means the disk, not a crash), stop the start with a readable error
//! instead. Leases are not stored: every holder loaded gets a fresh lease from the load, so
//! peers still running are listed at once, and peers that are gone vanish within one lease.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
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

use crate::registry::{DEFAULT_LEASE, ListingView};
use crate::{Clock, IndexError, Registry, Store, SystemClock};

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
    /// Registrations loaded.
    pub registrations: usize,
    /// Distinct holders loaded.
    pub holders: usize,
    /// Time spent loading.
    pub elapsed: Duration,
}

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
    /// Every record up to this sequence number is on disk (read without a lock, so an answer
    /// that needs no record sees at once whether anything is still pending).
    durable_seq: AtomicU64,
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
    /// Bytes in it, header included.
    written: u64,
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
    /// Set once the log could not be written; changes are refused from then on.
    failed: Option<String>,
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
        let logs: Vec<u64> = files
            .logs
            .iter()
            .copied()
            .filter(|&g| g >= base_generation)
            .collect();
        let mut current = None;
        for (i, &generation) in logs.iter().enumerate() {
            let path = log_path(&dir, generation);
            let replay = replay_log(&path, generation, &mut registry, now)?;
            recovery.records += replay.records;
            recovery.cut_bytes += replay.cut_bytes;
            if i + 1 == logs.len() {
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
                compact_wanted: false,
                stop: false,
            }),
            log: Mutex::new(LogFile {
                file,
                written: log_bytes,
            }),
            durable_seq: AtomicU64::new(0),
            compact: Condvar::new(),
            snapshotting: Mutex::new(()),
            #[cfg(test)]
            hold: tests::Hold::default(),
        });
        let mut store = DurableStore {
            shared: Arc::clone(&shared),
            compactor: None,
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
            if recovery.cut_bytes > 0 {
                format!(", {} damaged bytes cut", recovery.cut_bytes)
            } else {
                String::new()
            }
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
        if let Some(reason) = &lock(&self.shared.queue).failed {
            return Err(IndexError::LogFailed(reason.clone()));
        }
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
    fn register(&self, holder: &PeerAddr, files: &[FileMeta]) -> Result<u32, IndexError> {
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
            let added = registry.register(holder, files, now);
            if added > 0 || expired {
                out.extend_from_slice(&record);
            }
            Ok(added)
        })
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
        Ok(self.read(|state, now| state.registry.search(query, limit, now)))
    }

    fn renew(&self, holder: &PeerAddr) -> Result<Option<u32>, IndexError> {
        // Leases are not durable: a renewal writes nothing. But "you hold n files" must not
        // count a registration that a crash could still lose.
        self.read_durable(|state, now| state.registry.renew(holder, now))
    }

    fn sweep_expired(&self) -> Result<Vec<(PeerAddr, u32)>, IndexError> {
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
        if self.durable_seq.load(Ordering::Acquire) >= queue.queued {
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
    /// covered, and hand the lead to the first request still waiting, if any.
    fn commit(&self) {
        let work: Vec<Batch> = lock(&self.queue).batches.drain(..).collect();
        #[cfg(test)]
        self.hold.pass();
        let mut log = lock(&self.log);
        let mut last = None;
        let mut generation = None;
        let result = (|| -> Result<(), IndexError> {
            for batch in work {
                match batch {
                    Batch::Records { bytes, last: seq } => {
                        log.file
                            .write_all(&bytes)
                            .map_err(data_error("cannot write the log in", &self.dir))?;
                        log.written += bytes.len() as u64;
                        last = Some(seq);
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
                        log.file = create_log(&self.dir, next)?;
                        log.written = HEADER_LEN;
                        generation = Some(next);
                        last = Some(seq);
                    }
                }
            }
            log.file
                .sync_data()
                .map_err(data_error("cannot sync the log in", &self.dir))
        })();
        let written = log.written;
        drop(log);
        let (woken, next) = {
            let mut queue = lock(&self.queue);
            let woken = match result {
                Ok(()) => {
                    if let Some(g) = generation {
                        queue.generation = g;
                    }
                    queue.log_bytes = written;
                    if !queue.compact_wanted && wants_compaction(&queue, self.compact_after) {
                        queue.compact_wanted = true;
                        self.compact.notify_all();
                    }
                    match last {
                        Some(seq) => {
                            self.durable_seq.store(seq, Ordering::Release);
                            // Waiters are in sequence order: wake exactly those now durable.
                            let done = queue.waiters.partition_point(|w| w.seq <= seq);
                            queue.waiters.drain(..done).map(|w| (w, None)).collect()
                        }
                        None => Vec::new(),
                    }
                }
                Err(e) => {
                    log::error!("index: {e}; refusing changes until restarted");
                    let reason = e.to_string();
                    queue.failed = Some(reason.clone());
                    queue.batches.clear();
                    let failed: Vec<_> = std::mem::take(&mut queue.waiters)
                        .into_iter()
                        .map(|w| (w, Some(reason.clone())))
                        .collect();
                    failed
                }
            };
            queue.committing = false;
            // Records queued during this round: their first waiter leads the next one.
            let next = match queue.batches.is_empty() {
                true => None,
                false => queue.waiters.first().map(|w| w.thread.clone()),
            };
            (woken, next)
        };
        for (waiter, outcome) in woken {
            waiter.decide(outcome);
        }
        if let Some(thread) = next {
            thread.unpark();
        }
    }
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
        let mut queue = lock(&shared.queue);
        queue.compact_wanted = false;
        if let Some(failed) = &queue.failed {
            log::debug!("index: no more compaction after a log failure: {failed}");
            return;
        }
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
    // with the snapshot durable they are redundant.
    lock(&shared.queue).snapshot_bytes = bytes.len() as u64;
    let files = DataFiles::scan(&shared.dir)?;
    for &g in files.logs.iter().filter(|&&g| g < generation) {
        remove_stale(&log_path(&shared.dir, g));
    }
    for &g in files.snapshots.iter().filter(|&&g| g < generation) {
        remove_stale(&snapshot_path(&shared.dir, g));
    }
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
            "it does not start with {:?}",
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
    cut_bytes: u64,
    /// Where the log ends (after any cut).
    end: u64,
}

/// Replays one log into `registry`, cutting off a torn or corrupt tail.
fn replay_log(
    path: &Path,
    generation: u64,
    registry: &mut Registry,
    now: Duration,
) -> Result<Replay, IndexError> {
    let file = File::open(path).map_err(data_error("cannot open the log", path))?;
    let len = file
        .metadata()
        .map_err(data_error("cannot read the size of", path))?
        .len();
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let mut head = [0u8; HEADER_LEN as usize];
    let got = read_full(&mut reader, &mut head).map_err(data_error("cannot read", path))?;
    if got < head.len() {
        // Created but its header never reached the disk (a crash right after a switch).
        log::warn!(
            "index: {}: header cut short ({got} bytes); starting the log afresh",
            path.display()
        );
        rewrite_log(path, generation)?;
        return Ok(Replay {
            records: 0,
            cut_bytes: len,
            end: HEADER_LEN,
        });
    }
    check_header(&head, LOG_MAGIC, generation, path)?;
    let mut records = RecordReader {
        inner: reader,
        offset: HEADER_LEN,
        len,
        buf: Vec::new(),
    };
    let mut count = 0u64;
    let damage = loop {
        match records.next().map_err(data_error("cannot read", path))? {
            Next::End => break None,
            Next::Damaged(reason) => break Some(reason),
            Next::Record => {}
        }
        match codec::decode_body::<LogRecord>(records.body()) {
            Ok(record) => apply(registry, record, now),
            Err(e) => break Some(format!("a record does not decode: {e}")),
        }
        count += 1;
    };
    let end = records.offset;
    let cut_bytes = len - end;
    if let Some(reason) = damage {
        log::warn!(
            "index: {}: {reason} at byte {end}; replayed the {count} records before it and cut \
             off the remaining {cut_bytes} bytes",
            path.display()
        );
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(data_error("cannot open the log", path))?;
        file.set_len(end)
            .and_then(|()| file.sync_all())
            .map_err(data_error("cannot cut the damaged tail of", path))?;
    }
    Ok(Replay {
        records: count,
        cut_bytes,
        end,
    })
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
            if name.starts_with("snapshot.") && name.ends_with(".tmp") {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
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

    fn open(dir: &TestDir, clock: &ManualClock) -> (DurableStore, Recovery) {
        DurableStore::open_with_report(&dir.0, options(clock)).unwrap()
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
                assert_eq!(store.register(&holder, std::slice::from_ref(&file)).unwrap(), 1);
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
        match DurableStore::open(&dir.0, options(&clock)) {
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
        // New writes land after the cut and survive.
        assert_eq!(store.register(&addr("b:1"), &[meta(99)]).unwrap(), 1);
        drop(store);
        let (store, recovery) = open(&dir, &clock);
        assert_eq!((recovery.records, recovery.cut_bytes), (10, 0));
        assert_eq!(listing(&store).len(), 10);
        assert!(listing(&store).contains(&("file-99.bin".into(), 1)));
    }

    #[test]
    fn a_flipped_byte_is_cut_reported_and_writing_goes_on() {
        // In a record's body, and in a record's length.
        for (record, offset_in_record) in [(4usize, 9u64), (6, 1)] {
            let dir = TestDir::new();
            let clock = ManualClock::new();
            let before = ten_records(&dir, &clock);
            let log = log_path(&dir.0, 1);
            let len = fs::metadata(&log).unwrap().len();
            let damaged = record_offsets(&log)[record];
            let mut bytes = fs::read(&log).unwrap();
            bytes[(damaged + offset_in_record) as usize] ^= 0x20;
            fs::write(&log, &bytes).unwrap();

            let (store, recovery) = open(&dir, &clock);
            // Everything before the damage, nothing from it on (later records could depend
            // on the lost one, so they are not mixed in either).
            assert_eq!(recovery.records, record as u64, "record {record}");
            assert_eq!(recovery.cut_bytes, len - damaged);
            assert_eq!(listing(&store), before[..record]);
            assert_eq!(store.register(&addr("b:1"), &[meta(99)]).unwrap(), 1);
            drop(store);
            let (store, recovery) = open(&dir, &clock);
            assert_eq!(recovery.cut_bytes, 0);
            assert_eq!(listing(&store).len(), record + 1);
        }
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
        let err = DurableStore::open(&dir.0, options(&clock)).err().unwrap();
        assert!(err.to_string().contains("format version 2"), "{err}");
        fs::write(&path, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let err = DurableStore::open(&dir.0, options(&clock)).err().unwrap();
        assert!(err.to_string().contains("does not start with"), "{err}");
        // Refused, not cut: the file is untouched.
        assert_eq!(
            fs::read(&path).unwrap(),
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        );
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
        let store = DurableStore::open(&dir.0, options.clone()).unwrap();
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
        let (_, recovery) = DurableStore::open_with_report(&dir.0, options).unwrap();
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

    #[test]
    fn a_zero_lease_is_refused() {
        let dir = TestDir::new();
        let options = DurableOptions {
            lease: Duration::ZERO,
            ..DurableOptions::default()
        };
        assert!(DurableStore::open(&dir.0, options).is_err());
    }
}
