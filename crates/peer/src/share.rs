//! Downloads in progress, shared: the verified chunks of a part file, served to other peers
//! while the rest arrives (a *partial holder*, BitTorrent's leecher that uploads).
//!
//! A [`PartialShare`] is created by the downloader when a part file opens, registered in the
//! [`crate::Library`] (so the server finds it by id, like a complete file), told of each
//! chunk as it verifies, and withdrawn when the download ends: on success after the complete
//! file is in the library, so a reader never sees a gap. Only chunks that verified are ever
//! marked; the bytes of a marked chunk are never written again (one writer per chunk, none
//! once it is done), so serving them is as safe as serving a complete file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shoal_proto::message::{ChunkHash, Have, Manifest};
use shoal_proto::{FileMeta, content};

use crate::pieces::Bitset;

/// An `Added` answer lists at most this many chunks; more are sent as a bitmap.
const MAX_ADDED: usize = 1024;
/// Longest an availability request waits for news, whatever it asks for.
pub(crate) const MAX_AVAILABILITY_WAIT: Duration = Duration::from_secs(5);

/// A download in progress whose verified chunks this peer serves.
#[derive(Debug)]
pub struct PartialShare {
    meta: FileMeta,
    chunk_hashes: Arc<Vec<ChunkHash>>,
    /// A handle on the part file (it stays readable after the part name is unlinked).
    file: File,
    state: Mutex<ShareState>,
    changed: Condvar,
    /// Bytes served from this download to other peers.
    uploaded: AtomicU64,
}

#[derive(Debug)]
struct ShareState {
    have: Bitset,
    /// Chunks in the order they verified; `seq` is its length.
    log: Vec<u32>,
    /// The download ended (the share is being withdrawn): waiters answer at once.
    closed: bool,
}

/// What an availability request gets.
#[derive(Debug)]
pub(crate) enum Availability {
    /// `seq` and what to send.
    Answer { seq: u32, have: Have },
    /// The requester's grid differs from this download's.
    OtherGrid,
}

impl PartialShare {
    /// A share of `manifest`'s file backed by `file` (the part file), holding `verified`.
    pub(crate) fn new(manifest: &Manifest, file: File, verified: &[u32]) -> Self {
        let total = manifest.chunk_hashes.len() as u32;
        let mut have = Bitset::new(total);
        let mut log = Vec::with_capacity(verified.len());
        for &i in verified {
            if have.insert(i) {
                log.push(i);
            }
        }
        PartialShare {
            meta: manifest.file.clone(),
            chunk_hashes: Arc::new(manifest.chunk_hashes.clone()),
            file,
            state: Mutex::new(ShareState {
                have,
                log,
                closed: false,
            }),
            changed: Condvar::new(),
            uploaded: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ShareState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The file being downloaded (with the chunk size of its manifest).
    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }

    /// The manifest it is downloaded against (served to peers that ask a partial holder).
    pub fn manifest(&self) -> Manifest {
        Manifest {
            file: self.meta.clone(),
            chunk_hashes: self.chunk_hashes.to_vec(),
        }
    }

    /// Verified chunks so far.
    pub fn verified_chunks(&self) -> u32 {
        self.lock().have.count()
    }

    /// Bytes served to other peers from this download so far.
    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(Ordering::Relaxed)
    }

    /// Chunk `index` verified: it may be served from now on.
    pub(crate) fn add(&self, index: u32) {
        let mut state = self.lock();
        if state.have.insert(index) {
            state.log.push(index);
            self.changed.notify_all();
        }
    }

    /// The download ended: wake every waiting request.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Whether chunk `index` of this download's grid is verified.
    pub fn has(&self, index: u32) -> bool {
        self.lock().have.contains(index)
    }

    /// Reads verified chunk `index` into `buf` (resized to the chunk); false if it is not
    /// verified.
    pub(crate) fn read_chunk(&self, index: u32, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        if !self.has(index) {
            return Ok(false);
        }
        let Some(len) = content::chunk_len(self.meta.size, self.meta.chunk_size, index) else {
            return Ok(false);
        };
        buf.resize(len as usize, 0);
        self.file
            .read_exact_at(buf, content::chunk_offset(self.meta.chunk_size, index))?;
        self.uploaded.fetch_add(u64::from(len), Ordering::Relaxed);
        Ok(true)
    }

    /// The answer to an availability request: what was added after `since` (waiting up to
    /// `wait`, capped at [`MAX_AVAILABILITY_WAIT`], if nothing was), or the whole bitmap.
    pub(crate) fn availability(&self, chunk_size: u32, since: u32, wait: Duration) -> Availability {
        if chunk_size != self.meta.chunk_size {
            return Availability::OtherGrid;
        }
        let deadline = Instant::now() + wait.min(MAX_AVAILABILITY_WAIT);
        let mut state = self.lock();
        while since > 0
            && since as usize == state.log.len()
            && !state.closed
            && !state.have.is_full()
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let seq = u32::try_from(state.log.len()).unwrap_or(u32::MAX);
        let have = if state.have.is_full() {
            Have::All
        } else if since == 0 || since > seq || (seq - since) as usize > MAX_ADDED {
            Have::Bitmap(state.have.to_wire())
        } else {
            Have::Added(state.log[since as usize..].to_vec())
        };
        Availability::Answer { seq, have }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::FileId;

    fn share(chunks: u32, verified: &[u32]) -> PartialShare {
        let tmp = tempfile::tempfile().unwrap();
        tmp.set_len(u64::from(chunks) * 1024).unwrap();
        let manifest = Manifest {
            file: FileMeta {
                name: "f".into(),
                size: u64::from(chunks) * 1024,
                chunk_size: 1024,
                id: FileId([1; 32]),
            },
            chunk_hashes: vec![[0; 32]; chunks as usize],
        };
        PartialShare::new(&manifest, tmp, verified)
    }

    #[test]
    fn availability_is_a_bitmap_then_what_was_added() {
        let share = share(10, &[2]);
        let Availability::Answer { seq, have } = share.availability(1024, 0, Duration::ZERO) else {
            panic!("same grid");
        };
        assert_eq!((seq, have), (1, Have::Bitmap(vec![0b100, 0])));
        share.add(5);
        share.add(5);
        share.add(7);
        let Availability::Answer { seq, have } = share.availability(1024, 1, Duration::ZERO) else {
            panic!("same grid");
        };
        assert_eq!((seq, have), (3, Have::Added(vec![5, 7])));
        // Nothing new and no wait asked: an empty answer at once.
        let Availability::Answer { have, .. } = share.availability(1024, 3, Duration::ZERO) else {
            panic!("same grid");
        };
        assert_eq!(have, Have::Added(vec![]));
        assert!(matches!(
            share.availability(2048, 0, Duration::ZERO),
            Availability::OtherGrid
        ));
    }

    #[test]
    fn a_waiting_request_wakes_on_a_new_chunk_and_on_close() {
        let share = Arc::new(share(4, &[0]));
        let waiter = {
            let share = Arc::clone(&share);
            std::thread::spawn(move || share.availability(1024, 1, Duration::from_secs(60)))
        };
        share.add(3);
        let Ok(Availability::Answer { seq, .. }) = waiter.join() else {
            panic!("waiter failed");
        };
        // Either it saw chunk 3 arrive or it asked after it did: seq 2 both ways.
        assert_eq!(seq, 2);
        let waiter = {
            let share = Arc::clone(&share);
            std::thread::spawn(move || share.availability(1024, 2, Duration::from_secs(60)))
        };
        share.close();
        assert!(waiter.join().is_ok());
        let mut buf = Vec::new();
        assert!(
            !share.read_chunk(1, &mut buf).unwrap(),
            "chunk 1 is not verified"
        );
        assert!(share.read_chunk(3, &mut buf).unwrap());
        assert_eq!((buf.len(), share.uploaded()), (1024, 1024));
        share.add(1);
        share.add(2);
        let Availability::Answer { have, .. } = share.availability(1024, 0, Duration::ZERO) else {
            panic!("same grid");
        };
        assert_eq!(have, Have::All);
    }
}
