//! A download's part file: `DIR/.NAME.shoal-part`, OS-locked while a download writes it,
//! with its resume sidecar; re-verified on resume, shared while it fills, linked into place
//! when complete (never over an existing file), removed unless kept for a resume. And the
//! free-space check a download passes before a part file is created.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use shoal_proto::message::Manifest;
use shoal_proto::{FileMeta, MAX_NAME_LEN, content};

use crate::PeerError;
use crate::clock::Clock;
use crate::resume::{Geometry, ResumeState};
use crate::share::PartialShare;
use crate::swarm::ChunkSink;

/// Refuses a download the folder's file system has no room for, before anything is written:
/// the bytes still missing (a resumed part file already holds the rest) against the space
/// free for this user.
pub(crate) fn check_space(dir: &Path, manifest: &Manifest) -> Result<(), PeerError> {
    let meta = &manifest.file;
    let part = part_path(dir, meta);
    let held = fs::symlink_metadata(&part)
        .ok()
        .filter(|m| m.file_type().is_file() && m.len() == meta.size)
        .map_or(0, |m| m.blocks().saturating_mul(512));
    let needed = meta.size.saturating_sub(held);
    let stats = match rustix::fs::statvfs(dir) {
        Ok(stats) => stats,
        Err(e) => {
            log::debug!("cannot tell the free space of {}: {e}", dir.display());
            return Ok(());
        }
    };
    let available = stats.f_bavail.saturating_mul(stats.f_frsize);
    if needed > available {
        return Err(PeerError::NoSpace {
            name: meta.name.clone(),
            dir: dir.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

/// `dir/.{name}.shoal-part`, hidden so the library never lists it; the id stands in for a
/// name too long to take the affixes.
pub(crate) fn part_path(dir: &Path, meta: &FileMeta) -> PathBuf {
    let part = format!(".{}.shoal-part", meta.name);
    if part.len() <= MAX_NAME_LEN {
        dir.join(part)
    } else {
        dir.join(format!(".{}.shoal-part", meta.id.to_hex()))
    }
}

/// A download that stopped before the end and left its part file for a resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interrupted {
    /// The file's name (its id in hex when the name was too long for the part file's).
    pub name: String,
    /// Its id.
    pub id: shoal_proto::FileId,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes verified so far (a resume fetches only the rest).
    pub verified_bytes: u64,
}

/// The interrupted downloads of `dir`: every part file with a readable resume record. What
/// they hold is the record's word; a resume re-verifies it.
pub fn interrupted_downloads(dir: &Path) -> Vec<Interrupted> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<Interrupted> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let file_name = entry.file_name().into_string().ok()?;
            let name = file_name
                .strip_prefix('.')?
                .strip_suffix(".shoal-part.state")?;
            let part = entry.path().with_file_name(format!(".{name}.shoal-part"));
            if !part.is_file() {
                return None;
            }
            let (geometry, done) = ResumeState::peek(&entry.path()).ok()?;
            let verified_bytes = done
                .iter()
                .filter_map(|&i| content::chunk_len(geometry.size, geometry.chunk_size, i))
                .map(u64::from)
                .sum();
            Some(Interrupted {
                name: name.to_string(),
                id: geometry.id,
                size: geometry.size,
                verified_bytes,
            })
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// `dir/.{name}.shoal-state`, the resume sidecar beside the part file.
fn state_path(part: &Path) -> PathBuf {
    let mut name = part
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".state");
    part.with_file_name(name)
}

/// Takes the part file's OS lock (held until the file is closed), so two downloads of one
/// file into one folder, from two `get`s or a `get` beside a peer's console, never write it
/// at once. A file system without locks only loses this guard (the final inode check in
/// `publish` still catches a swapped part file).
fn lock_part(file: &File, path: &Path, meta: &FileMeta) -> Result<(), PeerError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(fs::TryLockError::WouldBlock) => Err(PeerError::InProgress {
            name: meta.name.clone(),
            dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        }),
        Err(fs::TryLockError::Error(e)) => {
            log::debug!("cannot lock {}: {e}; going on unlocked", path.display());
            Ok(())
        }
    }
}

/// How often the sidecar is rewritten while chunks arrive (it is also written when a
/// download stops). A crash loses at most this much of the record, never data: chunks the
/// sidecar does not list are simply fetched again.
const STATE_SAVE_INTERVAL: Duration = Duration::from_millis(250);

/// A download's part file and its resume sidecar. Removed when dropped, unless the download
/// is to be resumed.
pub(crate) struct PartFile {
    path: PathBuf,
    state_path: PathBuf,
    file: File,
    record: Mutex<Record>,
    /// Told of each verified chunk, when the download is shared.
    share: Option<Arc<PartialShare>>,
    /// Paces the sidecar's rewrites.
    clock: Arc<dyn Clock>,
}

struct Record {
    state: ResumeState,
    last_save: SystemTime,
    dirty: bool,
    keep: bool,
}

impl PartFile {
    /// Opens the part file of `manifest`'s file for a resume if it and its sidecar are
    /// sound, or creates it afresh. Chunks the sidecar lists are re-hashed from disk before
    /// they count: the sidecar is a hint, never trusted blindly. `clock` paces the sidecar's
    /// rewrites.
    pub(crate) fn open(
        dir: &Path,
        manifest: &Manifest,
        clock: Arc<dyn Clock>,
    ) -> Result<PartFile, PeerError> {
        let meta = &manifest.file;
        let path = part_path(dir, meta);
        let state_path = state_path(&path);
        let geometry = Geometry {
            id: meta.id,
            size: meta.size,
            chunk_size: meta.chunk_size,
        };
        if let Some(part) = Self::resume(&path, &state_path, geometry, manifest, &clock)? {
            return Ok(part);
        }
        // A part file without a usable sidecar is stale, unless a download holds it.
        if let Ok(existing) = File::open(&path) {
            lock_part(&existing, &path, meta)?;
        }
        for stale in [&path, &state_path] {
            match fs::remove_file(stale) {
                Ok(()) => log::debug!("removed the stale {}", stale.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(PeerError::io("remove the stale", stale, e)),
            }
        }
        // `create_new` never follows a symlink planted at the part name.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| PeerError::io("create the part file", &path, e))?;
        lock_part(&file, &path, meta)?;
        file.set_len(meta.size)
            .map_err(|e| PeerError::io("size the part file", &path, e))?;
        let state = ResumeState::new(geometry);
        let part = PartFile {
            path,
            state_path,
            file,
            record: Mutex::new(Record {
                state,
                last_save: clock.now(),
                dirty: false,
                keep: false,
            }),
            share: None,
            clock,
        };
        // The sidecar exists from the start, at its final length: should the disk fill,
        // it can still be updated in place and the verified part stays resumable.
        part.lock()
            .state
            .save(&part.state_path)
            .map_err(|e| PeerError::io("create the resume record", &part.state_path, e))?;
        Ok(part)
    }

    fn resume(
        path: &Path,
        state_path: &Path,
        geometry: Geometry,
        manifest: &Manifest,
        clock: &Arc<dyn Clock>,
    ) -> Result<Option<PartFile>, PeerError> {
        let mut state = match ResumeState::load(state_path, geometry) {
            Ok(Some(state)) => state,
            Ok(None) => return Ok(None),
            Err(reason) => {
                log::warn!(
                    "discarding the resume state {}: {reason}",
                    state_path.display()
                );
                return Ok(None);
            }
        };
        let regular = fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_file() && m.len() == geometry.size);
        if !regular {
            log::warn!(
                "discarding the resume state {}: its part file is missing or the wrong size",
                state_path.display()
            );
            return Ok(None);
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| PeerError::io("open the part file", path, e))?;
        lock_part(&file, path, &manifest.file)?;
        let mut buf = Vec::new();
        let mut rejected = 0;
        for index in state.done_chunks() {
            let Some(len) = content::chunk_len(geometry.size, geometry.chunk_size, index) else {
                continue;
            };
            buf.resize(len as usize, 0);
            let offset = content::chunk_offset(geometry.chunk_size, index);
            let sound = file.read_exact_at(&mut buf, offset).is_ok()
                && manifest.chunk_hashes.get(index as usize)
                    == Some(&content::chunk_hash(
                        geometry.size,
                        geometry.chunk_size,
                        index,
                        &buf,
                    ));
            if !sound {
                state.set_done(index, false);
                rejected += 1;
            }
        }
        if rejected > 0 {
            log::warn!(
                "{rejected} chunks listed in {} failed re-verification; fetching them again",
                state_path.display()
            );
        }
        Ok(Some(PartFile {
            path: path.to_path_buf(),
            state_path: state_path.to_path_buf(),
            file,
            record: Mutex::new(Record {
                state,
                last_save: clock.now(),
                dirty: rejected > 0,
                keep: false,
            }),
            share: None,
            clock: Arc::clone(clock),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chunks not yet verified on disk.
    pub(crate) fn missing(&self) -> Vec<u32> {
        let record = self.lock();
        let total = content::chunk_count(record.state_size(), record.state_chunk_size());
        (0..total as u32)
            .filter(|&i| !record.state.is_done(i))
            .collect()
    }

    /// Shares this part file's verified chunks (`missing` are the others) from now on.
    pub(crate) fn share(
        &mut self,
        manifest: &Manifest,
        missing: &[u32],
    ) -> Result<Arc<PartialShare>, PeerError> {
        let handle = self
            .file
            .try_clone()
            .map_err(|e| PeerError::io("open the part file", &self.path, e))?;
        let missing: std::collections::HashSet<u32> = missing.iter().copied().collect();
        let verified: Vec<u32> = (0..manifest.chunk_hashes.len() as u32)
            .filter(|i| !missing.contains(i))
            .collect();
        let share = Arc::new(PartialShare::new(manifest, handle, &verified));
        self.share = Some(Arc::clone(&share));
        Ok(share)
    }

    /// The download stopped short: leave the part file and an up-to-date sidecar behind.
    pub(crate) fn keep_for_resume(&self) {
        self.lock().keep = true;
    }

    /// Links the finished part file at `target`, failing if anything is already there, then
    /// removes the part name and sidecar (on drop). A hard link is atomic and never replaces
    /// a file.
    pub(crate) fn publish(self, target: &Path) -> Result<PathBuf, PeerError> {
        if let Err(e) = fs::hard_link(&self.path, target) {
            return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                PeerError::AlreadyExists {
                    path: target.to_path_buf(),
                }
            } else {
                PeerError::io("move the finished download to", target, e)
            });
        }
        // Another download of the same name could have replaced the part name under us; then
        // we just linked its unfinished file, which must not stay.
        let ours = self.file.metadata().map(|m| (m.dev(), m.ino()));
        let linked = fs::symlink_metadata(target).map(|m| (m.dev(), m.ino()));
        match (ours, linked) {
            (Ok(ours), Ok(linked)) if ours == linked => Ok(target.to_path_buf()),
            _ => {
                let _ = fs::remove_file(target);
                Err(PeerError::io(
                    "move the finished download to",
                    target,
                    io::Error::other("its part file was replaced by another download"),
                ))
            }
        }
    }
}

impl Record {
    fn state_size(&self) -> u64 {
        self.state.geometry().size
    }
    fn state_chunk_size(&self) -> u32 {
        self.state.geometry().chunk_size
    }
}

impl ChunkSink for PartFile {
    fn write_piece(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn chunk_verified(&self, index: u32) -> io::Result<()> {
        let mut record = self.lock();
        record.state.set_done(index, true);
        record.dirty = true;
        let now = self.clock.now();
        // A clock that went back saves at once rather than never.
        let due = now
            .duration_since(record.last_save)
            .map_or(true, |since| since >= STATE_SAVE_INTERVAL);
        if due {
            record.state.save(&self.state_path)?;
            record.last_save = now;
            record.dirty = false;
        }
        drop(record);
        // Stored and verified: other peers may have it now.
        if let Some(share) = &self.share {
            share.add(index);
        }
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        let record = self.record.get_mut().unwrap_or_else(|e| e.into_inner());
        if record.keep {
            if record.dirty
                && let Err(e) = record.state.save(&self.state_path)
            {
                log::warn!("cannot save {}: {e}", self.state_path.display());
            }
            return;
        }
        for path in [&self.path, &self.state_path] {
            if let Err(e) = fs::remove_file(path)
                && e.kind() != io::ErrorKind::NotFound
            {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{self, ManualClock};
    use crate::resume;
    use shoal_proto::FileId;

    fn meta(name: &str) -> FileMeta {
        FileMeta {
            name: name.into(),
            size: 1,
            chunk_size: 1024,
            id: FileId([3; 32]),
        }
    }

    #[test]
    fn part_paths_are_hidden_and_fit_a_name() {
        let dir = Path::new("/d");
        assert_eq!(
            part_path(dir, &meta("a.txt")),
            Path::new("/d/.a.txt.shoal-part")
        );
        let long = part_path(dir, &meta(&"x".repeat(250)));
        let file_name = long.file_name().unwrap().to_str().unwrap();
        assert!(file_name.starts_with('.') && file_name.len() <= MAX_NAME_LEN);
    }

    /// A manifest for `bytes` in 1 KiB chunks.
    fn manifest_of(name: &str, bytes: &[u8]) -> Manifest {
        let (id, chunk_hashes) =
            content::hash_reader(&mut &bytes[..], bytes.len() as u64, 1024, &mut Vec::new())
                .unwrap();
        Manifest {
            file: FileMeta {
                name: name.into(),
                size: bytes.len() as u64,
                chunk_size: 1024,
                id,
            },
            chunk_hashes,
        }
    }

    #[test]
    fn a_download_larger_than_the_free_space_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        // A valid manifest of a 4 TiB file (16 MiB chunks, the most a manifest may list).
        let chunk_size = 16 << 20;
        let size = 4u64 << 40;
        let chunk_hashes = vec![[7u8; 32]; content::chunk_count(size, chunk_size) as usize];
        let id = content::root_from_chunk_hashes(&chunk_hashes).unwrap();
        let manifest = Manifest {
            file: FileMeta {
                name: "huge.img".into(),
                size,
                chunk_size,
                id,
            },
            chunk_hashes,
        };
        match check_space(tmp.path(), &manifest) {
            Err(PeerError::NoSpace {
                needed, available, ..
            }) => assert!(needed == size && available < size),
            other => panic!("expected NoSpace, got {other:?}"),
        }
        // A small file fits.
        let small = manifest_of("small", &[1, 2, 3]);
        assert!(check_space(tmp.path(), &small).is_ok());
        assert_eq!(
            fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "nothing was written"
        );
    }

    /// A download of `bytes` into `dir` that verifies `chunks` (1 KiB each) and stops,
    /// keeping its part file for a resume.
    fn interrupt_after(dir: &Path, manifest: &Manifest, bytes: &[u8], chunks: &[u32]) {
        let part = PartFile::open(dir, manifest, clock::system()).unwrap();
        for &index in chunks {
            store_chunk(&part, bytes, index);
        }
        part.keep_for_resume();
    }

    #[test]
    fn interrupted_downloads_are_listed_with_what_they_verified() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let manifest = manifest_of("song.ogg", &bytes);
        assert!(interrupted_downloads(tmp.path()).is_empty());
        // Chunks 0 and 2 (1024 + 952 bytes) verified, then the download stops.
        interrupt_after(tmp.path(), &manifest, &bytes, &[0, 2]);
        let found = interrupted_downloads(tmp.path());
        assert_eq!(
            found,
            vec![Interrupted {
                name: "song.ogg".into(),
                id: manifest.file.id,
                size: 3000,
                verified_bytes: 1024 + 952,
            }]
        );
        // A record without its part file is not a download to resume.
        fs::remove_file(part_path(tmp.path(), &manifest.file)).unwrap();
        assert!(interrupted_downloads(tmp.path()).is_empty());
    }

    #[test]
    fn part_file_is_removed_unless_published() {
        let tmp = tempfile::tempdir().unwrap();
        let manifest = manifest_of("x", &[1, 2, 3]);
        let path = part_path(tmp.path(), &manifest.file);
        fs::write(&path, b"stale").unwrap();
        let part = PartFile::open(tmp.path(), &manifest, clock::system()).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 3);
        drop(part);
        assert!(!path.exists());

        let target = tmp.path().join("x");
        fs::write(&target, b"mine").unwrap();
        let part = PartFile::open(tmp.path(), &manifest, clock::system()).unwrap();
        assert!(matches!(
            part.publish(&target),
            Err(PeerError::AlreadyExists { .. })
        ));
        assert_eq!(fs::read(&target).unwrap(), b"mine");
        assert!(!path.exists());

        let part = PartFile::open(tmp.path(), &manifest, clock::system()).unwrap();
        let fresh = tmp.path().join("y");
        assert_eq!(part.publish(&fresh).unwrap(), fresh);
        assert_eq!(fs::read(&fresh).unwrap(), [0, 0, 0]);
        assert!(!path.exists());
    }

    #[test]
    fn a_part_file_in_use_is_neither_shared_nor_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..3000u32).map(|i| (i * 3) as u8).collect();
        let manifest = manifest_of("f", &bytes);
        let first = PartFile::open(tmp.path(), &manifest, clock::system()).unwrap();
        // A fresh part (no sidecar yet) and a resumable one (sidecar saved) alike.
        for round in 0..2 {
            match PartFile::open(tmp.path(), &manifest, clock::system()) {
                Err(PeerError::InProgress { name, dir }) => {
                    assert_eq!((name.as_str(), dir.as_path()), ("f", tmp.path()));
                }
                Err(e) => panic!("round {round}: expected InProgress, got {e}"),
                Ok(_) => panic!("round {round}: two downloads shared one part file"),
            }
            assert!(part_path(tmp.path(), &manifest.file).exists());
            first.write_piece(0, &bytes[..1024]).unwrap();
            first.chunk_verified(0).unwrap();
            first.lock().state.save(&first.state_path).unwrap();
        }
        first.keep_for_resume();
        drop(first);
        let again = PartFile::open(tmp.path(), &manifest, clock::system()).unwrap();
        assert_eq!(again.missing(), vec![1, 2]);
    }

    /// Writes chunk `index` of `bytes` (1 KiB chunks) and marks it verified.
    fn store_chunk(part: &PartFile, bytes: &[u8], index: u32) {
        let start = index as usize * 1024;
        let end = (start + 1024).min(bytes.len());
        part.write_piece(start as u64, &bytes[start..end]).unwrap();
        part.chunk_verified(index).unwrap();
    }

    #[test]
    fn an_interrupted_part_resumes_only_what_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let manifest = manifest_of("f", &bytes);
        let part = PartFile::open(tmp.path(), &manifest, clock::system()).unwrap();
        assert_eq!(part.missing(), vec![0, 1, 2, 3, 4]);
        for index in [0u32, 2, 4] {
            store_chunk(&part, &bytes, index);
        }
        part.keep_for_resume();
        drop(part);
        let part_file = part_path(tmp.path(), &manifest.file);
        assert!(part_file.exists() && state_path(&part_file).exists());

        let part = PartFile::open(tmp.path(), &manifest, clock::system()).unwrap();
        assert_eq!(part.missing(), vec![1, 3]);
        part.keep_for_resume();
        drop(part);

        // A chunk damaged on disk is fetched again, whatever the sidecar says.
        let damaged = OpenOptions::new().write(true).open(&part_file).unwrap();
        damaged.write_all_at(&[0xff], 2048).unwrap();
        let part = PartFile::open(tmp.path(), &manifest, clock::system()).unwrap();
        assert_eq!(part.missing(), vec![1, 2, 3]);
        part.keep_for_resume();
        drop(part);

        // A sidecar describing another file is discarded: everything is fetched afresh.
        let other = manifest_of("f", &bytes[..4000]);
        let part = PartFile::open(tmp.path(), &other, clock::system()).unwrap();
        assert_eq!(part.missing(), vec![0, 1, 2, 3]);
    }

    /// The chunks the sidecar on disk lists as done.
    fn on_disk(part: &PartFile) -> Vec<u32> {
        let geometry = part.lock().state.geometry();
        ResumeState::load(&part.state_path, geometry)
            .unwrap()
            .unwrap()
            .done_chunks()
    }

    #[test]
    fn the_sidecar_is_rewritten_at_most_every_interval() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let manifest = manifest_of("f", &bytes);
        let clock = ManualClock::at(SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 30));
        let part = PartFile::open(tmp.path(), &manifest, Arc::new(clock.clone())).unwrap();
        let verify = |index| store_chunk(&part, &bytes, index);
        verify(0);
        assert_eq!(on_disk(&part), Vec::<u32>::new(), "saved at once");
        clock.advance(STATE_SAVE_INTERVAL);
        verify(1);
        assert_eq!(on_disk(&part), vec![0, 1]);
        clock.advance(STATE_SAVE_INTERVAL - Duration::from_millis(1));
        verify(2);
        assert_eq!(on_disk(&part), vec![0, 1], "saved before the interval");
        clock.advance(Duration::from_millis(1));
        verify(3);
        assert_eq!(on_disk(&part), vec![0, 1, 2, 3]);
        // What the throttle held back is written when the download stops.
        verify(4);
        part.keep_for_resume();
        drop(part);
        let again = PartFile::open(tmp.path(), &manifest, clock::system()).unwrap();
        assert_eq!(again.missing(), Vec::<u32>::new());
    }

    #[test]
    fn a_sidecar_of_an_older_shoal_restarts_the_part() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = vec![5u8; 3000];
        let manifest = manifest_of("f", &bytes);
        let part = PartFile::open(tmp.path(), &manifest, clock::system()).unwrap();
        store_chunk(&part, &bytes, 0);
        let state = part.lock().state.clone();
        let state_file = part.state_path.clone();
        part.keep_for_resume();
        drop(part);
        // The same record, as version 1 wrote it: refused, and the part starts afresh.
        fs::write(&state_file, resume::version_1_sidecar(&state)).unwrap();
        let part = PartFile::open(tmp.path(), &manifest, clock::system()).unwrap();
        assert_eq!(part.missing(), vec![0, 1, 2]);
        let rewritten = fs::read(&state_file).unwrap();
        assert_eq!(&rewritten[..10], b"SHOALRES\x02\x00");
    }
}
