//! Compaction: a snapshot of the registry as of a switch to a new log, written atomically,
//! after which the older logs and snapshots are deleted.

use std::sync::PoisonError;
use std::time::Instant;

use super::commit::{Batch, Queue};
use super::files::{DataFiles, log_path, remove_stale, snapshot_path, write_durably};
use super::format::{HEADER_LEN, encode_snapshot};
use super::{Shared, lock};
use crate::IndexError;

pub(super) fn wants_compaction(queue: &Queue, compact_after: u64) -> bool {
    queue.failed.is_none()
        && queue.log_bytes > HEADER_LEN
        && queue.log_bytes >= compact_after.max(queue.snapshot_bytes)
}

/// The compactor: take a snapshot whenever a commit finds the log has grown enough.
pub(super) fn compact_loop(shared: &Shared) {
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
pub(super) fn take_snapshot(shared: &Shared) -> Result<u64, IndexError> {
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
