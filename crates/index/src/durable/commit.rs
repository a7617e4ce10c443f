//! Group commit: changes queue their records; whichever request finds no commit under way
//! leads one (one write, one `sync_data`) and wakes exactly the requests it covered. A failed
//! write or sync refuses and undoes every change not on disk.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::thread::{self, Thread};

use super::files::{create_log, data_error, log_path, remove_stale};
use super::format::HEADER_LEN;
use super::recover::load_registry;
use super::{Shared, State, lock, wants_compaction};
use crate::IndexError;

pub(super) struct LogFile {
    pub(super) file: File,
    /// Its generation.
    pub(super) generation: u64,
    /// Bytes in it, header included.
    pub(super) written: u64,
    /// Bytes in it known to be on disk (`written` after the last successful sync).
    pub(super) synced: u64,
    /// A write or sync since `synced` failed or is under way: the file may end in part of a
    /// record, which must be cut before anything else is appended.
    pub(super) dirty: bool,
}

impl LogFile {
    /// `sync_data`: everything written so far is on disk.
    fn sync(&mut self, dir: &Path) -> Result<(), IndexError> {
        self.file
            .sync_data()
            .map_err(data_error("cannot sync the log in", dir))?;
        self.synced = self.written;
        self.dirty = false;
        Ok(())
    }

    /// Cuts whatever follows the last synced byte (a failed write's partial record).
    pub(super) fn cut_to_synced(&mut self, dir: &Path) -> Result<(), IndexError> {
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

pub(super) struct Queue {
    pub(super) batches: VecDeque<Batch>,
    /// Sequence number of the last record (or switch) queued.
    pub(super) queued: u64,
    /// Requests waiting for their record, in sequence order: each is woken alone once its
    /// record is durable (a condvar's `notify_all` would also wake, for nothing, everyone
    /// queued during the fsync, and on two cores those wakeups cost more than the fsync).
    pub(super) waiters: Vec<Arc<Waiter>>,
    /// A leader is writing and syncing a batch.
    pub(super) committing: bool,
    /// The generation of the log being written.
    pub(super) generation: u64,
    /// The generation the last queued switch goes to (>= `generation`).
    pub(super) latest_generation: u64,
    /// Bytes in the current log, header included.
    pub(super) log_bytes: u64,
    /// Size of the last snapshot written or loaded.
    pub(super) snapshot_bytes: u64,
    /// Set when the log could not be written: changes are refused, without being applied,
    /// until a probe write to the data folder succeeds again.
    pub(super) failed: Option<String>,
    /// Undoing a failed round (reloading the registry from disk) failed too: retried before
    /// changes are accepted again.
    pub(super) reload_needed: bool,
    pub(super) compact_wanted: bool,
    pub(super) stop: bool,
}

/// A request waiting for everything up to `seq` to be durable.
pub(super) struct Waiter {
    pub(super) seq: u64,
    pub(super) thread: Thread,
    /// Set once by the commit that decided it: `None` durable, `Some(reason)` failed.
    pub(super) outcome: OnceLock<Option<String>>,
}

impl Waiter {
    pub(super) fn new(seq: u64) -> Arc<Waiter> {
        Arc::new(Waiter {
            seq,
            thread: thread::current(),
            outcome: OnceLock::new(),
        })
    }

    pub(super) fn decide(&self, outcome: Option<String>) {
        let _ = self.outcome.set(outcome);
        self.thread.unpark();
    }
}

pub(super) enum Batch {
    Records { bytes: Vec<u8>, last: u64 },
    Switch { generation: u64, seq: u64 },
}

impl Shared {
    /// Queues encoded records (`last` is assigned here) or a log switch; returns the sequence
    /// number to wait for. Records are queued under the registry lock, so queue order is
    /// change order. The calling thread is registered to be woken when it is durable.
    pub(super) fn enqueue(&self, batch: Batch) -> Arc<Waiter> {
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
    pub(super) fn wait_for_pending(&self) -> Option<Arc<Waiter>> {
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
    pub(super) fn wait_durable(&self, waiter: &Waiter) -> Result<(), IndexError> {
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
    pub(super) fn commit(&self) {
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
                        log.sync(&self.dir)?;
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
            log.sync(&self.dir)?;
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
    pub(super) fn fail_round(
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
    pub(super) fn writable(&self, state: &mut State) -> Result<(), IndexError> {
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

/// Bytes a probe writes (and syncs) before a store that failed to write accepts changes.
pub(super) const PROBE_BYTES: usize = 64 << 10;

/// Writes and syncs [`PROBE_BYTES`] to a temporary file in `dir`, then removes it.
pub(super) fn probe_write(dir: &Path) -> Result<(), IndexError> {
    // A `log.*.tmp` name: removed at the next start should a crash leave it.
    let path = dir.join("log.probe.tmp");
    let result = File::create(&path).and_then(|mut file| {
        file.write_all(&[0u8; PROBE_BYTES])?;
        file.sync_data()
    });
    remove_stale(&path);
    result.map_err(data_error("cannot write", &path))
}
