//! When a file's recorded hashes may be trusted without reading the file again.
//!
//! A [`Stamp`] is what a file looked like when it was hashed (inode, size, modification and
//! change time). Two checks decide whether a stamp vouches for hashes:
//!
//! - [`Stamp::racy`]: a file hashed so soon after its last write that another write could
//!   leave its stamp unchanged is not trusted (hashed again at the next rescan, never written
//!   to the hash cache), and
//! - [`CachedFile::vouches_for`]: an entry of the on-disk hash cache describes the file as it
//!   is now and is self-consistent.
//!
//! Both are pure: the time and the file's metadata come in as arguments (the library takes
//! the time from its injected [`crate::clock::Clock`]).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shoal_proto::message::ChunkHash;
use shoal_proto::{FileId, content};

/// What a file looked like when it was hashed; a rescan re-hashes only files whose stamp
/// changed. The change time is included because it cannot be set back: a tool that rewrites
/// a file and restores its modification time (`cp -p`, `touch -r`) still changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime: i64,
    pub(crate) mtime_nsec: i64,
    pub(crate) ctime: i64,
    pub(crate) ctime_nsec: i64,
}

impl Stamp {
    pub(crate) fn of(m: &Metadata) -> Self {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }

    /// Whether a write right after `seen_at` could leave the modification time unchanged
    /// (it ticks coarsely), so the stamp cannot prove the hash later. Such a file is hashed
    /// again at the next rescan and not written to the hash cache, as git does with its
    /// "racily clean" index entries. Whole-second times suggest a coarse file system (FAT
    /// has 2 s); otherwise timestamps tick in milliseconds at worst.
    pub(crate) fn racy(&self, seen_at: SystemTime) -> bool {
        let granularity = if self.mtime_nsec == 0 {
            Duration::from_secs(2)
        } else {
            Duration::from_millis(100)
        };
        let Ok(seen) = seen_at.duration_since(UNIX_EPOCH) else {
            return true;
        };
        let mtime = Duration::new(
            u64::try_from(self.mtime).unwrap_or(0),
            u32::try_from(self.mtime_nsec).unwrap_or(0),
        );
        seen < mtime + granularity
    }
}

/// One file's hashes as the hash cache recorded them, with the stamp (less the device
/// number) they were recorded under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CachedFile {
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime: (i64, i64),
    pub(crate) ctime: (i64, i64),
    pub(crate) chunk_size: u32,
    pub(crate) id: FileId,
    pub(crate) chunk_hashes: Arc<Vec<ChunkHash>>,
}

impl CachedFile {
    /// What the cache records for a file hashed under `stamp`.
    pub(crate) fn recorded(
        stamp: &Stamp,
        chunk_size: u32,
        id: FileId,
        chunk_hashes: Arc<Vec<ChunkHash>>,
    ) -> Self {
        CachedFile {
            ino: stamp.ino,
            size: stamp.size,
            mtime: (stamp.mtime, stamp.mtime_nsec),
            ctime: (stamp.ctime, stamp.ctime_nsec),
            chunk_size,
            id,
            chunk_hashes,
        }
    }

    /// Whether this entry describes the file as it is now (`stamp`) and is self-consistent
    /// for a library that prefers `preferred_chunk_size`. The device number is not compared:
    /// it can change between boots for the same disk.
    pub(crate) fn vouches_for(&self, stamp: &Stamp, preferred_chunk_size: u32) -> bool {
        self.ino == stamp.ino
            && self.size == stamp.size
            && self.mtime == (stamp.mtime, stamp.mtime_nsec)
            && self.ctime == (stamp.ctime, stamp.ctime_nsec)
            && self.chunk_size == content::chunk_size_for(self.size, preferred_chunk_size)
            && self.chunk_hashes.len() as u64 == content::chunk_count(self.size, self.chunk_size)
            && content::root_from_chunk_hashes(&self.chunk_hashes) == Some(self.id)
    }
}

/// Stamps and hashes for the tests of this module and of the hash cache.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A stamp of a file with this inode and size, written in November 2023.
    pub(crate) fn stamp(ino: u64, size: u64) -> Stamp {
        Stamp {
            dev: 1,
            ino,
            size,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            ctime: 1_700_000_001,
            ctime_nsec: 6,
        }
    }

    /// The id and chunk hashes of `bytes`.
    pub(crate) fn hashes_of(bytes: &[u8], chunk_size: u32) -> (FileId, Arc<Vec<ChunkHash>>) {
        let (id, hashes) = content::hash_reader(
            &mut &bytes[..],
            bytes.len() as u64,
            chunk_size,
            &mut Vec::new(),
        )
        .expect("bytes in memory hash");
        (id, Arc::new(hashes))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{hashes_of, stamp};
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn a_stamp_is_racy_until_the_modification_time_has_surely_ticked() {
        let fine = stamp(1, 10);
        assert!(fine.racy(at(1_700_000_000, 5)));
        assert!(fine.racy(at(1_700_000_000, 100_000_004)));
        assert!(!fine.racy(at(1_700_000_000, 100_000_005)));
        // A whole-second time: maybe a coarse file system, two seconds to be sure.
        let coarse = Stamp {
            mtime_nsec: 0,
            ..fine
        };
        assert!(coarse.racy(at(1_700_000_001, 999_999_999)));
        assert!(!coarse.racy(at(1_700_000_002, 0)));
        // A modification time in the future of the clock is racy; so is a clock before 1970.
        assert!(fine.racy(at(1_600_000_000, 0)));
        assert!(fine.racy(UNIX_EPOCH - Duration::from_secs(1)));
    }

    #[test]
    fn an_entry_vouches_only_for_the_file_it_recorded() {
        let (id, hashes) = hashes_of(&[3u8; 5000], 1024);
        let s = stamp(42, 5000);
        let entry = CachedFile::recorded(&s, 1024, id, hashes);
        assert!(entry.vouches_for(&s, 1024));
        // Another device number is fine; anything else about the file is not.
        assert!(entry.vouches_for(&Stamp { dev: 9, ..s }, 1024));
        for other in [
            Stamp { ino: 43, ..s },
            Stamp { size: 5001, ..s },
            Stamp { mtime: 0, ..s },
            Stamp { mtime_nsec: 6, ..s },
            Stamp { ctime: 0, ..s },
            Stamp { ctime_nsec: 0, ..s },
        ] {
            assert!(!entry.vouches_for(&other, 1024), "{other:?}");
        }
        // The library now prefers another chunk size: the entry's manifest is not what it
        // would compute.
        assert!(!entry.vouches_for(&s, 4096));
    }

    #[test]
    fn an_entry_whose_hashes_do_not_add_up_vouches_for_nothing() {
        let s = stamp(7, 5000);
        let (id, hashes) = hashes_of(&[1u8; 5000], 1024);
        let wrong_id = CachedFile::recorded(&s, 1024, FileId([0; 32]), Arc::clone(&hashes));
        assert!(!wrong_id.vouches_for(&s, 1024));
        let mut short = hashes.to_vec();
        short.pop();
        let missing_chunk = CachedFile::recorded(&s, 1024, id, Arc::new(short));
        assert!(!missing_chunk.vouches_for(&s, 1024));
    }
}
