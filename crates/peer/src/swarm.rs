//! The multi-source download engine: every holder at once, verified chunks, failover.
//!
//! One [`Scheduler`] holds the chunks still to fetch. Each source (a holder) gets a reader
//! thread that keeps up to `pipeline` `ReadChunks` requests in flight on one connection and
//! reads chunk bodies into recycled buffers, and a verifier thread that hashes each chunk
//! against the manifest and writes it at its offset; so hashing never stalls the socket.
//! Faster sources come back for work sooner and so serve more chunks.
//!
//! A source that cannot connect, answers busy, stalls past the I/O timeout, breaks the
//! protocol or sends a chunk that fails its hash is dropped (with the reason, for the report)
//! and its unfinished chunks go back to the queue. When the queue is empty but chunks are
//! still in flight, idle sources fetch those too (end-game): the first verified copy wins,
//! so one slow holder cannot leave a download stuck at 99%.

use std::collections::{BTreeSet, HashSet};
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded};
use shoal_proto::codec::{self, Service};
use shoal_proto::content::{ChunkHasher, chunk_len, chunk_offset};
use shoal_proto::message::{ErrorCode, Manifest, PeerRequest, PeerResponse};
use shoal_proto::{Connection, PeerAddr, ProtoError, Transport};

use crate::error::io_text;

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
}

/// Why a source stopped serving this download early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// It could not be reached or refused the handshake.
    Unreachable(String),
    /// It answered busy (at its upload limit).
    Busy,
    /// It stopped sending (connection closed, reset or timed out).
    Failed(String),
    /// It sent a chunk that failed verification.
    Corrupt { chunk: u32 },
    /// It broke the protocol or refused a request.
    Protocol(String),
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
        }
    }
}

/// What one source did.
#[derive(Clone, Debug)]
pub(crate) struct SourceReport {
    pub(crate) addr: PeerAddr,
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Done,
    Queued,
    /// Being fetched by this many sources.
    InFlight(u8),
}

struct SchedState {
    chunks: Vec<ChunkState>,
    queued: BTreeSet<u32>,
    /// Each source's first run, set aside at the start so every holder begins with work
    /// (and shows its speed) even if the others are quicker to connect.
    reserved: Vec<Vec<u32>>,
    remaining: usize,
    active_sources: usize,
    verified_bytes: u64,
    /// Chunks whose bytes a source is storing right now. In end-game two sources may carry
    /// the same chunk; only one may write it at a time, and none once it is done, or a late
    /// corrupt copy would overwrite verified bytes in the part file.
    writing: HashSet<u32>,
}

/// The shared work queue.
struct Scheduler {
    state: Mutex<SchedState>,
    changed: Condvar,
}

enum Work {
    Chunks(Vec<u32>),
    /// Nothing for this source right now, but chunks are in flight elsewhere.
    Wait,
    Finished,
}

impl Scheduler {
    fn new(total: u32, missing: &[u32], sources: usize, batch: u32) -> Self {
        let mut chunks = vec![ChunkState::Done; total as usize];
        for &i in missing {
            if let Some(c) = chunks.get_mut(i as usize) {
                *c = ChunkState::Queued;
            }
        }
        let mut queued: BTreeSet<u32> = missing.iter().copied().collect();
        // Reserve only when there is enough work for every source to get a whole run.
        let reserve = missing.len() >= sources * batch as usize * 2;
        let reserved = (0..sources)
            .map(|_| {
                if !reserve {
                    return Vec::new();
                }
                let run = take_run(&mut queued, batch);
                for &i in &run {
                    chunks[i as usize] = ChunkState::InFlight(1);
                }
                run
            })
            .collect();
        Scheduler {
            state: Mutex::new(SchedState {
                chunks,
                queued,
                reserved,
                remaining: missing.len(),
                active_sources: sources,
                verified_bytes: 0,
                writing: HashSet::new(),
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SchedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remaining(&self) -> usize {
        self.lock().remaining
    }

    /// Source `source`'s reserved run first, then up to `max` consecutive queued chunks; in
    /// end-game, one chunk in flight elsewhere.
    fn take(&self, source: usize, max: u32, mine: &HashSet<u32>) -> Work {
        let mut s = self.lock();
        if s.remaining == 0 {
            return Work::Finished;
        }
        if let Some(reserved) = s.reserved.get_mut(source) {
            let run: Vec<u32> = std::mem::take(reserved)
                .into_iter()
                .filter(|&i| s.chunks[i as usize] != ChunkState::Done)
                .collect();
            if !run.is_empty() {
                return Work::Chunks(run);
            }
        }
        let run = take_run(&mut s.queued, max);
        if !run.is_empty() {
            for &i in &run {
                s.chunks[i as usize] = ChunkState::InFlight(1);
            }
            return Work::Chunks(run);
        }
        // End-game: duplicate the least-duplicated chunk someone else is still fetching.
        let candidate = s
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(i, c)| match c {
                ChunkState::InFlight(n) if !mine.contains(&(i as u32)) => Some((*n, i as u32)),
                _ => None,
            })
            .min();
        match candidate {
            Some((n, i)) if n < 3 => {
                s.chunks[i as usize] = ChunkState::InFlight(n + 1);
                Work::Chunks(vec![i])
            }
            _ => Work::Wait,
        }
    }

    /// Blocks until the queue changes; false once the download is finished.
    fn wait_for_change(&self) -> bool {
        let s = self.lock();
        if s.remaining == 0 {
            return false;
        }
        // Woken by every completion and release; the timeout is only a safety net.
        let (s, _) = self
            .changed
            .wait_timeout(s, Duration::from_millis(200))
            .unwrap_or_else(|e| e.into_inner());
        s.remaining > 0
    }

    /// The right to store chunk `index`: waits while another source stores it, and is false
    /// once the chunk is done (nothing left to store). Ended by `complete` or `end_write`.
    fn claim_write(&self, index: u32) -> bool {
        let mut s = self.lock();
        loop {
            match s.chunks.get(index as usize) {
                None | Some(ChunkState::Done) => return false,
                Some(_) => {
                    if s.writing.insert(index) {
                        return true;
                    }
                }
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Gives up the right to store `index` without completing it.
    fn end_write(&self, index: u32) {
        self.lock().writing.remove(&index);
        self.changed.notify_all();
    }

    /// Records a verified chunk (and ends its write claim); false if another source
    /// delivered it first.
    fn complete(&self, index: u32, len: u64) -> bool {
        let mut s = self.lock();
        s.writing.remove(&index);
        let first = matches!(
            s.chunks.get(index as usize),
            Some(ChunkState::InFlight(_) | ChunkState::Queued)
        );
        if first {
            s.chunks[index as usize] = ChunkState::Done;
            s.queued.remove(&index);
            s.remaining -= 1;
            s.verified_bytes += len;
            self.changed.notify_all();
        }
        first
    }

    /// A source gives chunks back unfinished.
    fn release(&self, indices: impl IntoIterator<Item = u32>) {
        let mut s = self.lock();
        for i in indices {
            if let Some(ChunkState::InFlight(n)) = s.chunks.get(i as usize).copied() {
                if n > 1 {
                    s.chunks[i as usize] = ChunkState::InFlight(n - 1);
                } else {
                    s.chunks[i as usize] = ChunkState::Queued;
                    s.queued.insert(i);
                }
            }
        }
        self.changed.notify_all();
    }

    /// A source is done; anything still reserved for it goes back to the queue.
    fn source_finished(&self, source: usize) {
        let unclaimed = {
            let mut s = self.lock();
            s.active_sources = s.active_sources.saturating_sub(1);
            s.reserved
                .get_mut(source)
                .map(std::mem::take)
                .unwrap_or_default()
        };
        self.release(unclaimed);
    }

    fn progress(&self) -> (u64, usize) {
        let s = self.lock();
        (s.verified_bytes, s.active_sources)
    }

    fn missing(&self) -> Vec<u32> {
        let s = self.lock();
        (0..s.chunks.len() as u32)
            .filter(|&i| s.chunks[i as usize] != ChunkState::Done)
            .collect()
    }
}

/// Removes and returns up to `max` consecutive chunks from the front of `queued`.
fn take_run(queued: &mut BTreeSet<u32>, max: u32) -> Vec<u32> {
    let Some(first) = queued.pop_first() else {
        return Vec::new();
    };
    let mut run = vec![first];
    while (run.len() as u32) < max {
        let next = run[run.len() - 1] + 1;
        if !queued.remove(&next) {
            break;
        }
        run.push(next);
    }
    run
}

/// Everything a source's threads share for one download.
struct Job<'a> {
    manifest: &'a Manifest,
    sink: &'a dyn ChunkSink,
    scheduler: &'a Scheduler,
    config: &'a SwarmConfig,
    progress: ProgressFn<'a>,
}

/// Fetches the `missing` chunks of `manifest` from `sources` in parallel into `sink`.
pub(crate) fn run_swarm<T: Transport>(
    transport: &T,
    manifest: &Manifest,
    missing: &[u32],
    sources: &[PeerAddr],
    sink: &dyn ChunkSink,
    config: &SwarmConfig,
    progress: ProgressFn<'_>,
) -> SwarmResult {
    let total = manifest.chunk_hashes.len() as u32;
    let scheduler = Scheduler::new(total, missing, sources.len(), config.batch_chunks);
    let job = Job {
        manifest,
        sink,
        scheduler: &scheduler,
        config,
        progress,
    };
    let reports = thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(n, addr)| {
                let job = &job;
                scope.spawn(move || {
                    let report = fetch_from(transport, addr, n, job);
                    job.scheduler.source_finished(n);
                    let (bytes, active) = job.scheduler.progress();
                    (job.progress)(bytes, active);
                    report
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(sources)
            .map(|(h, addr)| {
                h.join().unwrap_or_else(|_| SourceReport {
                    addr: addr.clone(),
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
    addr: &PeerAddr,
    source: usize,
    job: &Job<'_>,
) -> SourceReport {
    let mut report = SourceReport {
        addr: addr.clone(),
        bytes: 0,
        requests: 0,
        dropped: None,
    };
    let mut stream = match connect(transport, addr, job.config) {
        Ok(stream) => stream,
        Err(reason) => {
            report.dropped = Some(reason);
            return report;
        }
    };
    let chunk_size = job.manifest.file.chunk_size as usize;
    // Buffers circulate reader -> verifier -> reader: about 8 MiB per source (3 to 8 chunks),
    // enough that the reader never waits for the verifier on a fast link (measured: 3 buffers
    // held verify-only downloads near 2.2 GB/s, 8 reached 3.0 GB/s).
    let pool = ((8 << 20) / chunk_size.max(1)).clamp(3, 8);
    let (to_verify, verify_rx) = bounded::<Arrived>(pool);
    let (recycle, free) = bounded::<Vec<u8>>(pool);
    for _ in 0..pool {
        let _ = recycle.send(Vec::with_capacity(chunk_size));
    }
    let verdicts = VerifyState::default();
    let outcome = thread::scope(|scope| {
        let verifier = scope.spawn(|| verify_loop(verify_rx, &recycle, job, &verdicts));
        let outcome = read_loop(
            &mut stream,
            source,
            job,
            to_verify,
            &free,
            &verdicts,
            &mut report,
        );
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

fn connect<T: Transport>(
    transport: &T,
    addr: &PeerAddr,
    config: &SwarmConfig,
) -> Result<BufReader<T::Stream>, DropReason> {
    let mut stream = transport
        .connect(addr)
        .map_err(|e| DropReason::Unreachable(io_text(e)))?;
    let timeout = Some(config.io_timeout);
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| DropReason::Unreachable(io_text(e)))?;
    match codec::client_handshake(&mut stream, Service::Peer) {
        Ok(()) => Ok(BufReader::with_capacity(64 << 10, stream)),
        Err(ProtoError::Busy) => Err(DropReason::Busy),
        Err(e) => Err(DropReason::Unreachable(e.to_string())),
    }
}

/// Sends requests (keeping `pipeline` in flight) and reads chunk bodies off the wire.
fn read_loop<S: Connection>(
    stream: &mut BufReader<S>,
    source: usize,
    job: &Job<'_>,
    to_verify: Sender<Arrived>,
    free: &Receiver<Vec<u8>>,
    verdicts: &VerifyState,
    report: &mut SourceReport,
) -> Result<(), DropReason> {
    let file = &job.manifest.file;
    let mut in_flight: std::collections::VecDeque<Vec<u32>> = Default::default();
    // Every chunk this holder was ever asked for: end-game only duplicates other holders' work.
    let mut mine: HashSet<u32> = HashSet::new();
    let mut frame = Vec::new();
    let mut request = Vec::new();
    let result = (|| {
        loop {
            if verdicts.failed.load(Ordering::SeqCst) {
                return Ok(());
            }
            // Top up the pipeline.
            while in_flight.len() < job.config.pipeline {
                match job.scheduler.take(source, job.config.batch_chunks, &mine) {
                    Work::Chunks(run) => {
                        request.clear();
                        codec::encode_frame(
                            &PeerRequest::ReadChunks {
                                id: file.id,
                                chunk_size: file.chunk_size,
                                first: run[0],
                                count: run.len() as u32,
                            },
                            &mut request,
                        )
                        .map_err(|e| DropReason::Protocol(e.to_string()))?;
                        stream
                            .get_mut()
                            .write_all(&request)
                            .map_err(|e| DropReason::Failed(io_text(e)))?;
                        report.requests += 1;
                        mine.extend(run.iter().copied());
                        in_flight.push_back(run);
                    }
                    Work::Wait if in_flight.is_empty() => {
                        if !job.scheduler.wait_for_change() {
                            return Ok(());
                        }
                    }
                    Work::Wait => break,
                    Work::Finished => {
                        if in_flight.is_empty() {
                            return Ok(());
                        }
                        break;
                    }
                }
            }
            let Some(run) = in_flight.front_mut() else {
                continue;
            };
            if job.scheduler.remaining() == 0 {
                return Ok(());
            }
            let expected = run[0];
            let header: PeerResponse =
                codec::read_frame(stream, job.config.response_limit, &mut frame).map_err(|e| {
                    match e {
                        e if e.is_disconnect() => DropReason::Failed(e.to_string()),
                        ProtoError::Idle => DropReason::Failed(format!(
                            "stalled: nothing arrived for {} s",
                            job.config.io_timeout.as_secs()
                        )),
                        io @ ProtoError::Io(_) => DropReason::Failed(io.to_string()),
                        other => DropReason::Protocol(other.to_string()),
                    }
                })?;
            let len = match header {
                PeerResponse::Chunk { index, len } if index == expected => len,
                PeerResponse::Chunk { index, .. } => {
                    return Err(DropReason::Protocol(format!(
                        "sent chunk {index} where chunk {expected} was due"
                    )));
                }
                PeerResponse::Error(reply) if reply.code == ErrorCode::Busy => {
                    return Err(DropReason::Busy);
                }
                PeerResponse::Error(reply) => return Err(DropReason::Protocol(reply.to_string())),
                PeerResponse::Manifest(_) => {
                    return Err(DropReason::Protocol(
                        "sent a manifest instead of a chunk".into(),
                    ));
                }
            };
            if Some(len) != chunk_len(file.size, file.chunk_size, expected) {
                return Err(DropReason::Protocol(format!(
                    "announced {len} bytes for chunk {expected}"
                )));
            }
            // A buffer comes back as soon as the verifier is done with one.
            let mut data = free
                .recv()
                .map_err(|_| DropReason::Failed("verifier stopped".into()))?;
            data.resize(len as usize, 0);
            stream
                .read_exact(&mut data)
                .map_err(|e| DropReason::Failed(io_text(e)))?;
            run.remove(0);
            if run.is_empty() {
                in_flight.pop_front();
            }
            // `expected` stays in `mine`: until the verifier completes it, it is still in flight,
            // and end-game must not ask this same holder for it again.
            if to_verify
                .send(Arrived {
                    index: expected,
                    data,
                })
                .is_err()
            {
                return Ok(());
            }
        }
    })();
    // Whatever this source still owed goes back to the queue for the others.
    job.scheduler.release(in_flight.into_iter().flatten());
    drop(to_verify);
    result
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
                    DropReason::Failed(format!("cannot write chunk {index} locally: {e}")),
                );
                verdicts.failed.store(true, Ordering::SeqCst);
                job.scheduler.end_write(index);
                job.scheduler.release([index]);
            }
        }
        let _ = recycle.send(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_done_chunk_cannot_be_written_again() {
        let scheduler = Scheduler::new(2, &[0, 1], 2, 1);
        assert!(scheduler.claim_write(0));
        assert!(scheduler.complete(0, 10));
        // A late duplicate (perhaps corrupt) must not touch the verified bytes.
        assert!(!scheduler.claim_write(0));
        assert!(!scheduler.claim_write(7), "no such chunk");
    }

    #[test]
    fn a_second_copy_waits_for_the_first_writer_and_takes_over_if_it_fails() {
        let scheduler = Arc::new(Scheduler::new(1, &[0], 2, 1));
        assert!(scheduler.claim_write(0));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let second = {
            let scheduler = Arc::clone(&scheduler);
            thread::spawn(move || {
                let claimed = scheduler.claim_write(0);
                let _ = tx.send(claimed);
            })
        };
        // The second writer is blocked while the first holds the claim.
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        // The first copy failed its hash: the second may store its own.
        scheduler.end_write(0);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
        assert!(second.join().is_ok());
        assert!(scheduler.complete(0, 10));
    }

    #[test]
    fn a_waiting_copy_is_dropped_once_the_first_writer_completes() {
        let scheduler = Arc::new(Scheduler::new(1, &[0], 2, 1));
        assert!(scheduler.claim_write(0));
        let second = {
            let scheduler = Arc::clone(&scheduler);
            thread::spawn(move || scheduler.claim_write(0))
        };
        assert!(scheduler.complete(0, 10));
        assert_eq!(second.join().ok(), Some(false));
    }
}
