//! The swarm download engine: every source at once, verified chunks, failover.
//!
//! Sources are complete holders and partial ones (peers still downloading, which serve the
//! chunks they have verified). The piece-selection policy is [`crate::pieces::Picker`], plain
//! data behind the one mutex of [`Scheduler`]. Each source gets a reader thread that keeps up
//! to `pipeline` requests in flight on one connection and reads chunk bodies into recycled
//! buffers, and a verifier thread that hashes each chunk against the manifest and writes it
//! at its offset; so hashing never stalls the socket. Faster sources come back for work
//! sooner and so serve more chunks.
//!
//! A partial source is asked what it has (`Availability`, a bitmap), then, on the same
//! connection, what it added since (one question beside each chunk request, or a bounded
//! wait when it has nothing we want): the downloader learns new chunks without asking the
//! index. A chunk it lacks after all (`Unavailable`) goes back to the queue and is asked
//! elsewhere; the connection stays. While the download runs, the caller's feed is asked for
//! new sources every `refresh` (a crowd keeps arriving).
//!
//! A source that cannot connect, stays busy, stalls past the I/O timeout, breaks the
//! protocol or sends a chunk that fails its hash is dropped (with the reason, for the report)
//! and its unfinished chunks go back to the queue. When nothing is queued but chunks are
//! still in flight, idle sources fetch those too (end-game): the first verified copy wins,
//! so one slow holder cannot leave a download stuck at 99%.

use std::collections::{HashSet, VecDeque};
use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};
use shoal_proto::codec::{self, Service};
use shoal_proto::content::{ChunkHasher, chunk_len, chunk_offset};
use shoal_proto::deadline::FrameDeadline;
use shoal_proto::message::{ErrorCode, Have, Manifest, PeerRequest, PeerResponse};
use shoal_proto::{Connection, NodeId, PeerAddr, ProtoError, Transport};

use crate::error::io_text;
use crate::pieces::{Bitset, Claim, Picker, PickerConfig, SourceId, Work};

/// Where chunks go: a part file, or nowhere (verify-only).
pub(crate) trait ChunkSink: Send + Sync {
    /// Stores bytes at `offset`, before their chunk is verified (they are not final).
    fn write_piece(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Chunk `index` is fully stored and verified. In end-game two sources may deliver the
    /// same chunk: both copies verified, so storing it twice is harmless.
    fn chunk_verified(&self, index: u32) -> io::Result<()>;
}

/// Piece size for hashing and storing a chunk: fits a typical L2 cache.
const VERIFY_PIECE: usize = 256 << 10;

/// How the engine runs.
#[derive(Clone, Debug)]
pub(crate) struct SwarmConfig {
    /// Longest wait for any progress on a connection (a read or a write).
    pub(crate) io_timeout: Duration,
    /// Largest response frame accepted.
    pub(crate) response_limit: u32,
    /// Chunks asked for in one request.
    pub(crate) batch_chunks: u32,
    /// Requests kept in flight per connection, so a round trip never idles the pipe.
    pub(crate) pipeline: usize,
    /// How often the feed is asked for new sources (`None`: never).
    pub(crate) refresh: Option<Duration>,
    /// Most sources fetched from at once.
    pub(crate) max_sources: usize,
    /// Longest a partial source is asked to hold an availability answer for news.
    pub(crate) availability_wait: Duration,
    /// Piece-selection settings (seed included).
    pub(crate) picker: PickerConfig,
    /// Swarm mode for complete holders: one chunk request at a time, each chosen after the
    /// holder said what it already sent to others (so a seeder's upload goes out once).
    pub(crate) seeder_aware: bool,
    /// Slowest useful source, in bytes per second: a chunk body that arrives slower (with
    /// a floor of [`STALL_FLOOR`]) loses the source its work, whatever the others do.
    pub(crate) min_rate: u64,
    /// The whole download stops at this moment, whatever is missing (`None`: no deadline).
    pub(crate) deadline: Option<Instant>,
}

/// Reads wake at least this often to check the download's state: a blocked read ends
/// within a tick of the download finishing, of its deadline, or of its source being
/// judged stalled.
const TICK: Duration = Duration::from_millis(200);
/// No source is judged too slow before this much time on one chunk.
pub(crate) const STALL_FLOOR: Duration = Duration::from_secs(2);
/// A source whose chunk takes this many times the recent chunk time of the download,
/// while the others deliver, is stalled (a stopped process, a dying link).
const STALL_FACTOR: u32 = 10;

/// The first ask for new sources comes this soon after a download starts.
const FIRST_REFRESH: Duration = Duration::from_millis(100);

/// Where a download's sources come from: the first ones, and a call for more.
pub(crate) struct SourceFeed<'a> {
    pub(crate) initial: Vec<SourceSpec>,
    pub(crate) more: &'a mut dyn FnMut() -> Vec<SourceSpec>,
}

/// A source to fetch from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SourceSpec {
    pub(crate) addr: PeerAddr,
    /// Holds the whole file (else: a partial holder).
    pub(crate) complete: bool,
    /// The node id the index gave for it: the holder must present it, if the transport
    /// proves ids ([`check_node`]).
    pub(crate) node: Option<NodeId>,
}

/// A holder that presented another node id than the index gave for its address: an impostor
/// on the address, or a lying index. The source is dropped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("holder {addr} presented node id {presented}, index said {expected}")]
pub struct WrongNode {
    /// The address reached.
    pub addr: PeerAddr,
    /// The id the connection proved.
    pub presented: NodeId,
    /// The id the index gave for the address.
    pub expected: NodeId,
}

/// Checks, once its handshake is done, that the holder a connection reached presents the
/// node id the index gave for it. Nothing to check when the index gave none, or when the
/// transport proves no id (plain TCP).
pub(crate) fn check_node(
    addr: &PeerAddr,
    expected: Option<NodeId>,
    stream: &impl Connection,
) -> Result<(), WrongNode> {
    match (expected, stream.peer_node()) {
        (Some(expected), Some(presented)) if presented != expected => {
            log::warn!("holder {addr} presented node id {presented}, index said {expected}");
            Err(WrongNode {
                addr: addr.clone(),
                presented,
                expected,
            })
        }
        _ => Ok(()),
    }
}

/// Why a holder stopped serving a download early (in [`crate::HolderReport`]); its
/// `Display` is one sentence naming the cause.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DropReason {
    /// It could not be reached or refused the handshake.
    Unreachable(String),
    /// It answered busy (at its upload limit).
    Busy,
    /// It stopped sending (connection closed, reset or timed out).
    Failed(String),
    /// It sent a chunk that failed verification.
    Corrupt {
        /// The chunk.
        chunk: u32,
    },
    /// It gave no usable manifest (refused, sent a bad one, too slowly, ...).
    Manifest(String),
    /// It broke the protocol or refused a request.
    Protocol(String),
    /// The local disk could not store a chunk (not the holder's fault).
    LocalWrite(String),
    /// It sent too slowly, or stopped while the others went on.
    Slow(String),
    /// The download's deadline passed while it was sending.
    Deadline,
    /// It presented another node id than the index gave for its address.
    WrongNode(WrongNode),
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DropReason::Unreachable(e) => write!(f, "unreachable: {e}"),
            DropReason::Busy => f.write_str("busy (upload limit reached)"),
            DropReason::Failed(e) => write!(f, "stopped sending: {e}"),
            DropReason::Corrupt { chunk } => {
                write!(f, "sent chunk {chunk} that failed verification")
            }
            DropReason::Protocol(e) => write!(f, "protocol error: {e}"),
            DropReason::LocalWrite(e) => write!(f, "cannot store its chunks here: {e}"),
            DropReason::Manifest(e) => f.write_str(e),
            DropReason::Slow(e) => write!(f, "too slow: {e}"),
            DropReason::Deadline => {
                f.write_str("still sending when the download's deadline passed")
            }
            DropReason::WrongNode(e) => write!(
                f,
                "presented node id {}, index said {}",
                e.presented, e.expected
            ),
        }
    }
}

/// What one source did.
#[derive(Clone, Debug)]
pub(crate) struct SourceReport {
    pub(crate) addr: PeerAddr,
    /// Whether the index listed it as a complete holder.
    pub(crate) complete: bool,
    /// The node id the index gave for it.
    pub(crate) node: Option<NodeId>,
    /// Verified bytes it contributed (first copies only).
    pub(crate) bytes: u64,
    /// `ReadChunks` requests sent to it.
    pub(crate) requests: u32,
    pub(crate) dropped: Option<DropReason>,
}

/// The outcome of a swarm run.
#[derive(Debug)]
pub(crate) struct SwarmResult {
    pub(crate) sources: Vec<SourceReport>,
    /// Chunks no source delivered (empty on success).
    pub(crate) missing: Vec<u32>,
}

/// Progress callback: verified bytes so far (this run), sources still active.
pub(crate) type ProgressFn<'a> = &'a (dyn Fn(u64, usize) + Sync);

struct SchedState {
    picker: Picker,
    active_sources: usize,
    verified_bytes: u64,
    /// Chunk bodies read so far (any source).
    delivered: u64,
    /// Recent time to read one chunk body, averaged over every source.
    chunk_time: Option<Duration>,
}

/// The picker behind one lock, and the waits around it.
struct Scheduler {
    state: Mutex<SchedState>,
    changed: Condvar,
    deadline: Option<Instant>,
}

impl Scheduler {
    fn new(total: u32, missing: &[u32], config: PickerConfig, deadline: Option<Instant>) -> Self {
        Scheduler {
            state: Mutex::new(SchedState {
                picker: Picker::new(total, missing, config),
                active_sources: 0,
                verified_bytes: 0,
                delivered: 0,
                chunk_time: None,
            }),
            changed: Condvar::new(),
            deadline,
        }
    }

    /// The download is over: every chunk verified, or its deadline passed.
    fn over(&self) -> bool {
        self.remaining() == 0 || self.past_deadline()
    }

    fn past_deadline(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// A chunk body took `took` to read.
    fn delivered(&self, took: Duration) {
        let mut s = self.lock();
        s.delivered += 1;
        // An average of the last few chunks' times (weight 1/8 for the newest).
        s.chunk_time = Some(match s.chunk_time {
            None => took,
            Some(avg) => (avg * 7 + took) / 8,
        });
    }

    /// Whether a read waiting since `since` (with `delivered_then` bodies delivered by
    /// then) is stalled relative to the others: it has waited `STALL_FACTOR` times the
    /// recent chunk time (at least `STALL_FLOOR`) while the others delivered three chunks.
    fn stalled(&self, since: Instant, delivered_then: u64) -> Option<Duration> {
        let s = self.lock();
        let waited = since.elapsed();
        let limit = s.chunk_time?.saturating_mul(STALL_FACTOR).max(STALL_FLOOR);
        (waited >= limit && s.delivered >= delivered_then + 3).then_some(waited)
    }

    fn delivered_count(&self) -> u64 {
        self.lock().delivered
    }

    fn lock(&self) -> MutexGuard<'_, SchedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<R>(&self, f: impl FnOnce(&mut Picker) -> R) -> R {
        let result = f(&mut self.lock().picker);
        self.changed.notify_all();
        result
    }

    fn add_source(&self, complete: bool) -> SourceId {
        let mut s = self.lock();
        s.active_sources += 1;
        if complete {
            s.picker.add_complete()
        } else {
            s.picker.add_partial()
        }
    }

    fn remaining(&self) -> usize {
        self.lock().picker.remaining()
    }

    fn take(&self, source: SourceId, max: u32) -> Work {
        self.lock().picker.take(source, max)
    }

    /// Blocks until the queue changes or `timeout` passes; false once the download is done.
    fn wait_for_change(&self, timeout: Duration) -> bool {
        let s = self.lock();
        if s.picker.remaining() == 0 {
            return false;
        }
        let (s, _) = self
            .changed
            .wait_timeout(s, timeout)
            .unwrap_or_else(|e| e.into_inner());
        s.picker.remaining() > 0
    }

    /// Blocks until the download is done, no source is active, or `timeout` passes.
    fn wait_done_or_idle(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.picker.remaining() > 0 && s.active_sources > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The right to store chunk `index`: waits while another source stores it; false once
    /// the chunk is done. Ended by `complete` or `end_write`.
    fn claim_write(&self, index: u32) -> bool {
        let mut s = self.lock();
        loop {
            match s.picker.claim_write(index) {
                Claim::Granted => return true,
                Claim::Done => return false,
                Claim::Taken => {}
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn end_write(&self, index: u32) {
        self.with(|p| p.end_write(index));
    }

    /// Records a verified chunk; false if another source delivered it first.
    fn complete(&self, index: u32, len: u64) -> bool {
        let mut s = self.lock();
        let first = s.picker.complete(index);
        if first {
            s.verified_bytes += len;
        }
        drop(s);
        self.changed.notify_all();
        first
    }

    fn release(&self, indices: impl IntoIterator<Item = u32>) {
        self.with(|p| p.release(indices));
    }

    /// A source is done: it no longer counts, and is asked for nothing.
    fn source_finished(&self, source: SourceId) {
        let mut s = self.lock();
        s.active_sources = s.active_sources.saturating_sub(1);
        s.picker.remove_source(source);
        drop(s);
        self.changed.notify_all();
    }

    fn progress(&self) -> (u64, usize) {
        let s = self.lock();
        (s.verified_bytes, s.active_sources)
    }

    fn missing(&self) -> Vec<u32> {
        self.lock().picker.missing()
    }
}

/// Everything a source's threads share for one download.
struct Job<'a> {
    manifest: &'a Manifest,
    sink: &'a dyn ChunkSink,
    scheduler: &'a Scheduler,
    config: &'a SwarmConfig,
    progress: ProgressFn<'a>,
}

/// Fetches the `missing` chunks of `manifest` into `sink` from `sources` and from whatever
/// `feed` adds while the download runs (asked every `config.refresh`, and once more when
/// every source has stopped), at most `config.max_sources` at once. Returns when every
/// chunk is verified, or when no source is left and the feed has none to add.
pub(crate) fn run_swarm<T: Transport>(
    transport: &T,
    manifest: &Manifest,
    missing: &[u32],
    feed: SourceFeed<'_>,
    sink: &dyn ChunkSink,
    config: &SwarmConfig,
    progress: ProgressFn<'_>,
) -> SwarmResult {
    let total = manifest.chunk_hashes.len() as u32;
    let scheduler = Scheduler::new(total, missing, config.picker, config.deadline);
    let job = Job {
        manifest,
        sink,
        scheduler: &scheduler,
        config,
        progress,
    };
    let reports = thread::scope(|scope| {
        let mut known: HashSet<PeerAddr> = HashSet::new();
        let mut handles = Vec::new();
        let mut start = |specs: Vec<SourceSpec>, handles: &mut Vec<_>| {
            for spec in specs {
                if job.scheduler.progress().1 >= config.max_sources.max(1)
                    || !known.insert(spec.addr.clone())
                {
                    continue;
                }
                let id = job.scheduler.add_source(spec.complete);
                let job = &job;
                let addr = spec.addr.clone();
                let complete = spec.complete;
                let node = spec.node;
                let handle = scope.spawn(move || {
                    let report = fetch_from(transport, &spec, id, job);
                    job.scheduler.source_finished(id);
                    let (bytes, active) = job.scheduler.progress();
                    (job.progress)(bytes, active);
                    report
                });
                handles.push((addr, complete, node, handle));
            }
        };
        let SourceFeed { initial, more } = feed;
        start(initial, &mut handles);
        let mut last_refresh = Instant::now();
        // A crowd arrives together: ask soon after the start, then less and less often, up
        // to every `refresh`.
        let mut interval = config.refresh.map(|r| r.min(FIRST_REFRESH));
        while job.scheduler.remaining() > 0 {
            let wait = interval
                .map(|r| r.saturating_sub(last_refresh.elapsed()))
                .unwrap_or(Duration::from_secs(3600));
            let wait = match config.deadline {
                Some(d) => wait.min(d.saturating_duration_since(Instant::now())),
                None => wait,
            };
            job.scheduler.wait_done_or_idle(wait);
            if job.scheduler.over() {
                break;
            }
            let idle = job.scheduler.progress().1 == 0;
            let due = interval.is_some_and(|r| last_refresh.elapsed() >= r);
            if idle || due {
                last_refresh = Instant::now();
                interval = interval.zip(config.refresh).map(|(i, r)| (i * 2).min(r));
                let before = handles.len();
                start(more(), &mut handles);
                if idle && handles.len() == before {
                    break; // nobody left to ask
                }
            }
        }
        handles
            .into_iter()
            .map(|(addr, complete, node, h)| {
                h.join().unwrap_or_else(|_| SourceReport {
                    addr,
                    complete,
                    node,
                    bytes: 0,
                    requests: 0,
                    dropped: Some(DropReason::Failed("its thread panicked".into())),
                })
            })
            .collect()
    });
    SwarmResult {
        sources: reports,
        missing: scheduler.missing(),
    }
}

/// A chunk read off the wire, on its way to the verifier.
struct Arrived {
    index: u32,
    data: Vec<u8>,
}

/// The verifier's verdicts, shared with the reader.
#[derive(Default)]
struct VerifyState {
    failure: Mutex<Option<DropReason>>,
    failed: AtomicBool,
    bytes: Mutex<u64>,
}

fn fetch_from<T: Transport>(
    transport: &T,
    spec: &SourceSpec,
    source: SourceId,
    job: &Job<'_>,
) -> SourceReport {
    let addr = &spec.addr;
    let mut report = SourceReport {
        addr: addr.clone(),
        complete: spec.complete,
        node: spec.node,
        bytes: 0,
        requests: 0,
        dropped: None,
    };
    let mut stream = match connect(transport, spec, job.config, job.scheduler) {
        Ok(stream) => stream,
        Err(reason) => {
            report.dropped = Some(reason);
            return report;
        }
    };
    let chunk_size = job.manifest.file.chunk_size as usize;
    // Buffers circulate reader -> verifier -> reader: enough for what is in flight plus one
    // being verified, at most about 8 MiB per source (measured: 3 buffers held verify-only
    // downloads near 2.2 GB/s, 8 reached 3.0 GB/s). Allocated on first use.
    let in_flight = job.config.pipeline * job.config.batch_chunks as usize + 1;
    let pool = ((8 << 20) / chunk_size.max(1))
        .clamp(3, 8)
        .min(in_flight.max(3));
    let (to_verify, verify_rx) = bounded::<Arrived>(pool);
    let (recycle, free) = bounded::<Vec<u8>>(pool);
    for _ in 0..pool {
        let _ = recycle.send(Vec::new());
    }
    let verdicts = VerifyState::default();
    let outcome = thread::scope(|scope| {
        let verifier = scope.spawn(|| verify_loop(verify_rx, &recycle, job, &verdicts));
        let mut reader = Reader {
            stream: &mut stream,
            source,
            job,
            to_verify,
            free: &free,
            verdicts: &verdicts,
            report: &mut report,
            frame: Vec::new(),
            request: Vec::new(),
            pending: VecDeque::new(),
            since: 0,
            asking: false,
            busy_since: None,
            run_started: false,
        };
        let outcome = reader.run();
        drop(reader);
        let _ = verifier.join();
        outcome
    });
    report.bytes = *verdicts.bytes.lock().unwrap_or_else(|e| e.into_inner());
    let verify_failure = verdicts
        .failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    report.dropped = verify_failure.or(outcome.err());
    if let Some(reason) = &report.dropped {
        log::warn!(
            "dropped holder {addr} for {}: {reason}",
            job.manifest.file.name
        );
    }
    report
}

fn connect<'s, T: Transport>(
    transport: &T,
    spec: &SourceSpec,
    config: &SwarmConfig,
    scheduler: &'s Scheduler,
) -> Result<BufReader<Guarded<'s, T::Stream>>, DropReason> {
    let addr = &spec.addr;
    let mut stream = transport
        .connect(addr)
        .map_err(|e| DropReason::Unreachable(io_text(e)))?;
    let timeout = Some(config.io_timeout);
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| DropReason::Unreachable(io_text(e)))?;
    // The hello must arrive whole within the I/O timeout, not merely a byte per timeout.
    match codec::client_handshake(
        &mut FrameDeadline::new(&mut stream, config.io_timeout),
        Service::Peer,
    ) {
        Ok(()) => {}
        Err(ProtoError::Busy) => return Err(DropReason::Busy),
        Err(e) => return Err(DropReason::Unreachable(e.to_string())),
    }
    check_node(addr, spec.node, &stream).map_err(DropReason::WrongNode)?;
    // From here on reads wake every tick; `Guarded` keeps the real limits.
    stream
        .set_read_timeout(Some(TICK))
        .map_err(|e| DropReason::Unreachable(io_text(e)))?;
    Ok(BufReader::with_capacity(
        64 << 10,
        Guarded {
            inner: stream,
            scheduler,
            limit: None,
            tripped: None,
        },
    ))
}

/// What ends a read early.
#[derive(Clone, Copy, Debug)]
struct ReadLimit {
    /// Fails at this moment (the I/O timeout, or a body's minimum-rate budget).
    deadline: Instant,
    /// Why, if it does: true for a chunk body (the source is too slow), false for silence.
    body: bool,
    /// Whether the source may be judged stalled relative to the others (data should be
    /// flowing: a body, or the next chunk of a run already started).
    relative: bool,
    /// Relative stall detection: since when this read waits, and how many bodies the
    /// download had then.
    since: Instant,
    delivered_then: u64,
}

/// A source's stream whose reads end when the download is over, at their deadline, or
/// when the source is stalled relative to the others (see [`Scheduler::stalled`]).
struct Guarded<'s, S> {
    inner: S,
    scheduler: &'s Scheduler,
    limit: Option<ReadLimit>,
    tripped: Option<Tripped>,
}

/// Why a guarded read ended early.
#[derive(Clone, Debug)]
enum Tripped {
    /// Every chunk is verified: nothing to blame.
    Complete,
    Deadline,
    Slow(String),
}

impl<S> Guarded<'_, S> {
    /// Fails the read with `why`, kept for the reader to see.
    fn trip(&mut self, why: Tripped) -> io::Error {
        let text = match &why {
            Tripped::Complete => "the download is complete".to_string(),
            Tripped::Deadline => "the download's deadline passed".to_string(),
            Tripped::Slow(reason) => reason.clone(),
        };
        self.tripped = Some(why);
        // Not `Interrupted` (read_exact would retry) nor `TimedOut` (that reads as silence).
        io::Error::other(text)
    }
}

impl<S: Read> Read for Guarded<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.scheduler.remaining() == 0 {
                return Err(self.trip(Tripped::Complete));
            }
            if self.scheduler.past_deadline() {
                return Err(self.trip(Tripped::Deadline));
            }
            if let Some(limit) = self.limit {
                if Instant::now() >= limit.deadline {
                    let waited = limit.since.elapsed().as_secs_f64();
                    let reason = if limit.body {
                        format!("a chunk took over {waited:.1} s (below the minimum rate)")
                    } else {
                        format!("stalled: nothing arrived for {waited:.0} s")
                    };
                    return Err(self.trip(Tripped::Slow(reason)));
                }
                if limit.relative
                    && let Some(waited) = self.scheduler.stalled(limit.since, limit.delivered_then)
                {
                    return Err(self.trip(Tripped::Slow(format!(
                        "stalled: no chunk in {:.1} s while the other holders delivered",
                        waited.as_secs_f64()
                    ))));
                }
            }
            match self.inner.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                    ) => {}
                other => return other,
            }
        }
    }
}

impl<S: Write> Write for Guarded<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A request whose answer is still to be read, in the order they were sent.
enum Pending {
    Chunks(Vec<u32>),
    Availability,
}

/// One source's reader: sends requests (keeping `pipeline` chunk requests in flight, and
/// for a partial source one availability question) and reads the answers.
struct Reader<'j, 'a, S: Connection> {
    stream: &'j mut BufReader<Guarded<'a, S>>,
    source: SourceId,
    job: &'j Job<'a>,
    to_verify: Sender<Arrived>,
    free: &'j Receiver<Vec<u8>>,
    verdicts: &'j VerifyState,
    report: &'j mut SourceReport,
    frame: Vec<u8>,
    request: Vec<u8>,
    pending: VecDeque<Pending>,
    /// The `seq` of the last availability answer.
    since: u32,
    /// An availability question is in flight.
    asking: bool,
    /// When the source started answering busy (reset by a delivered chunk).
    busy_since: Option<Instant>,
    /// The oldest chunk request in flight has delivered a chunk already.
    run_started: bool,
}

impl<S: Connection> Reader<'_, '_, S> {
    fn run(&mut self) -> Result<(), DropReason> {
        let result = match self.exchange() {
            // Once every chunk is verified, nothing this source did is a failure.
            Err(_) if self.job.scheduler.remaining() == 0 => Ok(()),
            other => other,
        };
        // Whatever this source still owed goes back to the queue for the others.
        let owed: Vec<u32> = self
            .pending
            .drain(..)
            .filter_map(|p| match p {
                Pending::Chunks(run) => Some(run),
                Pending::Availability => None,
            })
            .flatten()
            .collect();
        self.job.scheduler.release(owed);
        result
    }

    fn partial(&self) -> bool {
        !self.job.scheduler.with(|p| p.holds_all(self.source))
    }

    /// Whether availability is asked of this source beside each chunk request.
    fn asks(&self) -> bool {
        self.partial() || self.seeder_aware()
    }

    fn seeder_aware(&self) -> bool {
        self.job.config.seeder_aware && self.report.complete
    }

    fn chunks_in_flight(&self) -> usize {
        self.pending
            .iter()
            .filter(|p| matches!(p, Pending::Chunks(_)))
            .count()
    }

    fn exchange(&mut self) -> Result<(), DropReason> {
        let file = &self.job.manifest.file;
        if self.asks() {
            // What it has (or, from a seeder, what it sent), before asking for anything.
            self.ask_availability(Duration::ZERO)?;
        }
        let pipeline = if self.seeder_aware() {
            1
        } else {
            self.job.config.pipeline
        };
        loop {
            if self.verdicts.failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            // Top up the pipeline (a seeder's next chunk is chosen only once it answered
            // what it sent meanwhile).
            while self.chunks_in_flight() < pipeline && !(self.seeder_aware() && self.asking) {
                match self
                    .job
                    .scheduler
                    .take(self.source, self.job.config.batch_chunks)
                {
                    Work::Chunks(run) => {
                        let request = PeerRequest::ReadChunks {
                            id: file.id,
                            chunk_size: file.chunk_size,
                            first: run[0],
                            count: run.len() as u32,
                        };
                        if let Err(e) = self.send(&request) {
                            self.job.scheduler.release(run);
                            return Err(e);
                        }
                        self.report.requests += 1;
                        self.pending.push_back(Pending::Chunks(run));
                        // Beside each chunk request, what it verified (or sent) since.
                        if self.asks() && !self.asking {
                            self.ask_availability(Duration::ZERO)?;
                        }
                    }
                    Work::Wait if self.pending.is_empty() => {
                        if self.partial() {
                            // It has nothing we want yet: wait on it for news, not on a timer.
                            self.ask_availability(self.job.config.availability_wait)?;
                            break;
                        }
                        if !self
                            .job
                            .scheduler
                            .wait_for_change(Duration::from_millis(200))
                        {
                            return Ok(());
                        }
                        if self.seeder_aware() {
                            // What it is sending changes as others are served: ask again.
                            self.ask_availability(Duration::ZERO)?;
                            break;
                        }
                    }
                    Work::Wait => break,
                    Work::Finished => {
                        if self.pending.is_empty() {
                            return Ok(());
                        }
                        break;
                    }
                }
            }
            if self.pending.is_empty() {
                continue;
            }
            if self.job.scheduler.over() {
                return if self.job.scheduler.remaining() == 0 {
                    Ok(())
                } else {
                    Err(DropReason::Deadline)
                };
            }
            self.read_answer()?;
        }
    }

    fn send(&mut self, request: &PeerRequest) -> Result<(), DropReason> {
        self.request.clear();
        codec::encode_frame(request, &mut self.request)
            .map_err(|e| DropReason::Protocol(e.to_string()))?;
        self.stream
            .get_mut()
            .write_all(&self.request)
            .map_err(|e| DropReason::Failed(io_text(e)))
    }

    fn ask_availability(&mut self, wait: Duration) -> Result<(), DropReason> {
        let file = &self.job.manifest.file;
        let request = PeerRequest::Availability {
            id: file.id,
            chunk_size: file.chunk_size,
            since: self.since,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        };
        self.send(&request)?;
        self.asking = true;
        self.pending.push_back(Pending::Availability);
        Ok(())
    }

    /// Bounds the next reads: `budget` from now, judged relative to the others if
    /// `relative`.
    fn limit(&mut self, budget: Duration, body: bool, relative: bool) {
        let now = Instant::now();
        self.stream.get_mut().limit = Some(ReadLimit {
            deadline: now + budget,
            body,
            relative,
            since: now,
            delivered_then: self.job.scheduler.delivered_count(),
        });
    }

    /// The drop reason for a failed read: what the guard saw, or the error itself.
    fn read_failed(&mut self, fallback: DropReason) -> DropReason {
        match self.stream.get_mut().tripped.take() {
            // Not a failure: `Reader::run` turns any error after completion into success.
            Some(Tripped::Complete) => DropReason::Failed("the download is complete".into()),
            Some(Tripped::Deadline) => DropReason::Deadline,
            Some(Tripped::Slow(reason)) => DropReason::Slow(reason),
            None => fallback,
        }
    }

    fn read_header(&mut self) -> Result<PeerResponse, DropReason> {
        let io_timeout = self.job.config.io_timeout;
        let (waiting, in_run) = match self.pending.front() {
            Some(Pending::Availability) => (self.job.config.availability_wait, false),
            Some(Pending::Chunks(_)) => (Duration::ZERO, self.run_started),
            None => (Duration::ZERO, false),
        };
        self.limit(io_timeout + waiting, false, in_run);
        let read = codec::read_frame(self.stream, self.job.config.response_limit, &mut self.frame);
        read.map_err(|e| {
            let fallback = match e {
                e if e.is_disconnect() => DropReason::Failed(e.to_string()),
                ProtoError::Idle => DropReason::Failed(format!(
                    "stalled: nothing arrived for {} s",
                    io_timeout.as_secs()
                )),
                io @ ProtoError::Io(_) => DropReason::Failed(io.to_string()),
                other => DropReason::Protocol(other.to_string()),
            };
            self.read_failed(fallback)
        })
    }

    /// Reads the answer to the oldest request in flight (one chunk of it, or all of an
    /// availability answer).
    fn read_answer(&mut self) -> Result<(), DropReason> {
        let header = self.read_header()?;
        let Some(front) = self.pending.front_mut() else {
            return Err(DropReason::Protocol("answered a request never sent".into()));
        };
        let run = match front {
            Pending::Availability => {
                self.pending.pop_front();
                self.asking = false;
                return self.apply_availability(header);
            }
            Pending::Chunks(run) => run,
        };
        let file = &self.job.manifest.file;
        let expected = run[0];
        let len = match header {
            PeerResponse::Chunk { index, len } if index == expected => len,
            PeerResponse::Chunk { index, .. } => {
                return Err(DropReason::Protocol(format!(
                    "sent chunk {index} where chunk {expected} was due"
                )));
            }
            PeerResponse::Error(reply) if reply.code == ErrorCode::Unavailable => {
                // A partial holder lacks it after all: ask elsewhere, keep the connection.
                // The index listed a complete holder as complete: that one broke its word.
                if self.report.complete {
                    return Err(DropReason::Protocol(format!(
                        "listed as a complete holder but lacks chunk {expected}"
                    )));
                }
                self.job.scheduler.with(|p| p.lacks(self.source, expected));
                if let Some(Pending::Chunks(run)) = self.pending.pop_front() {
                    self.job.scheduler.release(run);
                }
                return Ok(());
            }
            PeerResponse::Error(reply) if reply.code == ErrorCode::Busy => {
                // At its upload limit for longer than its queue holds a request: try again
                // shortly, and give up only after the I/O timeout of being busy.
                if let Some(Pending::Chunks(run)) = self.pending.pop_front() {
                    self.job.scheduler.release(run);
                }
                let since = *self.busy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.job.config.io_timeout {
                    return Err(DropReason::Busy);
                }
                self.job
                    .scheduler
                    .wait_for_change(Duration::from_millis(100));
                return Ok(());
            }
            PeerResponse::Error(reply) => return Err(DropReason::Protocol(reply.to_string())),
            PeerResponse::Manifest(_) | PeerResponse::Availability { .. } => {
                return Err(DropReason::Protocol(format!(
                    "sent something else where chunk {expected} was due"
                )));
            }
        };
        if Some(len) != chunk_len(file.size, file.chunk_size, expected) {
            return Err(DropReason::Protocol(format!(
                "announced {len} bytes for chunk {expected}"
            )));
        }
        // A buffer comes back as soon as the verifier is done with one.
        let mut data = self
            .free
            .recv()
            .map_err(|_| DropReason::Failed("verifier stopped".into()))?;
        data.resize(len as usize, 0);
        // A body gets the time the minimum rate allows (at least the stall floor), and is
        // judged against the other sources meanwhile.
        let budget =
            Duration::from_secs_f64(f64::from(len) / self.job.config.min_rate.max(1) as f64)
                .max(STALL_FLOOR);
        let started = Instant::now();
        self.limit(budget, true, true);
        if let Err(e) = self.stream.read_exact(&mut data) {
            let fallback = DropReason::Failed(io_text(e));
            return Err(self.read_failed(fallback));
        }
        self.job.scheduler.delivered(started.elapsed());
        self.busy_since = None;
        let Some(Pending::Chunks(run)) = self.pending.front_mut() else {
            return Err(DropReason::Protocol("lost track of its requests".into()));
        };
        run.remove(0);
        self.run_started = !run.is_empty();
        if run.is_empty() {
            self.pending.pop_front();
        }
        // Until the verifier completes it, the chunk is still in flight: end-game will not
        // ask this same holder for it again (the picker remembers what it was asked).
        if self
            .to_verify
            .send(Arrived {
                index: expected,
                data,
            })
            .is_err()
        {
            return Err(DropReason::Failed("verifier stopped".into()));
        }
        Ok(())
    }

    fn apply_availability(&mut self, header: PeerResponse) -> Result<(), DropReason> {
        let total = self.job.manifest.chunk_hashes.len() as u32;
        let (seq, have) = match header {
            PeerResponse::Availability { seq, have } => (seq, have),
            PeerResponse::Error(reply) => {
                return Err(DropReason::Protocol(format!(
                    "refused to say what it has: {reply}"
                )));
            }
            _ => {
                return Err(DropReason::Protocol(
                    "sent something else where its availability was due".into(),
                ));
            }
        };
        let source = self.source;
        match have {
            Have::All => self.job.scheduler.with(|p| p.set_all(source)),
            Have::Seeding(bytes) => {
                let sent = parse_bitmap(&bytes, total, "seeding bitmap")?;
                self.job.scheduler.with(|p| {
                    p.set_all(source);
                    p.set_handed(source, sent);
                });
            }
            Have::Bitmap(bytes) => {
                let bits = parse_bitmap(&bytes, total, "bitmap")?;
                self.job.scheduler.with(|p| p.set_have(source, &bits));
            }
            Have::Added(chunks) => {
                if let Some(bad) = chunks.iter().find(|&&i| i >= total) {
                    return Err(DropReason::Protocol(format!(
                        "claims chunk {bad} of {total}"
                    )));
                }
                self.job.scheduler.with(|p| {
                    for &i in &chunks {
                        p.add_have(source, i);
                    }
                });
            }
        }
        self.since = seq;
        Ok(())
    }
}

/// A bitmap off the wire, or the protocol error that names what was wrong with it.
fn parse_bitmap(bytes: &[u8], total: u32, what: &str) -> Result<Bitset, DropReason> {
    Bitset::from_wire(bytes, total).ok_or_else(|| {
        DropReason::Protocol(format!(
            "sent a {}-byte {what} for {total} chunks",
            bytes.len()
        ))
    })
}

/// Hashes each arrived chunk against the manifest, writes it, and marks it done.
fn verify_loop(
    arrived: Receiver<Arrived>,
    recycle: &Sender<Vec<u8>>,
    job: &Job<'_>,
    verdicts: &VerifyState,
) {
    let file = &job.manifest.file;
    for Arrived { index, data } in arrived {
        if verdicts.failed.load(Ordering::SeqCst) {
            job.scheduler.release([index]);
            continue;
        }
        if !job.scheduler.claim_write(index) {
            // Another source's copy verified first (end-game): this one is not needed.
            let _ = recycle.send(data);
            continue;
        }
        // Hash and store piece by piece while each piece is still in the CPU cache: every
        // byte crosses memory once instead of twice. Bytes land in the hidden part file
        // before the hash is known, but a chunk counts as done only once it verified, so an
        // unverified byte can never reach the final file.
        let mut hasher = ChunkHasher::new(file.size, file.chunk_size, index);
        let offset = chunk_offset(file.chunk_size, index);
        let mut stored = Ok(());
        for (n, piece) in data.chunks(VERIFY_PIECE).enumerate() {
            hasher.update(piece);
            if stored.is_ok() {
                stored = job
                    .sink
                    .write_piece(offset + (n * VERIFY_PIECE) as u64, piece);
            }
        }
        let expected = job.manifest.chunk_hashes.get(index as usize);
        if expected != Some(&hasher.finalize()) {
            *verdicts.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(DropReason::Corrupt { chunk: index });
            verdicts.failed.store(true, Ordering::SeqCst);
            job.scheduler.end_write(index);
            job.scheduler.release([index]);
            let _ = recycle.send(data);
            continue;
        }
        match stored.and_then(|()| job.sink.chunk_verified(index)) {
            Ok(()) => {
                if job.scheduler.complete(index, data.len() as u64) {
                    *verdicts.bytes.lock().unwrap_or_else(|e| e.into_inner()) += data.len() as u64;
                    let (bytes, active) = job.scheduler.progress();
                    (job.progress)(bytes, active);
                }
            }
            Err(e) => {
                // A local disk error is not the holder's fault, but nobody can store the
                // chunk either: stop this source and leave the chunk missing.
                *verdicts.failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(
                    DropReason::LocalWrite(format!("cannot write chunk {index}: {e}")),
                );
                verdicts.failed.store(true, Ordering::SeqCst);
                job.scheduler.end_write(index);
                job.scheduler.release([index]);
            }
        }
        let _ = recycle.send(data);
    }
}
