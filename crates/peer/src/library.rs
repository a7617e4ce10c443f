//! The shared folder: which files a peer serves, with their ids and chunk hashes.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use shoal_proto::message::ChunkHash;
use shoal_proto::{FileId, FileKey, FileMeta, content, validate_name};

use crate::PeerError;

/// One file of the shared folder, with everything needed to serve it.
#[derive(Clone, Debug)]
pub struct SharedFile {
    /// Name, size, chunk size and id.
    pub meta: FileMeta,
    /// One hash per chunk (the manifest), shared between clones.
    pub chunk_hashes: Arc<Vec<ChunkHash>>,
    /// Where the file is on disk.
    pub path: PathBuf,
}

/// What a file looked like when it was hashed; a rescan re-hashes only files whose stamp
/// changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Stamp {
    fn of(m: &Metadata) -> Self {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        }
    }
}

#[derive(Clone)]
struct Entry {
    file: SharedFile,
    stamp: Option<Stamp>,
    /// The `State::generation` at which [`Library::insert`] added it (0 for scanned files).
    inserted: u64,
}

#[derive(Default)]
struct State {
    by_name: BTreeMap<String, Entry>,
    /// Id -> one name with that content (two names may share one content; any copy serves).
    by_id: HashMap<FileId, String>,
    /// Counts inserts, so a rescan keeps files inserted while it was reading the folder.
    generation: u64,
}

impl State {
    fn reindex(&mut self) {
        self.by_id.clear();
        for (name, entry) in &self.by_name {
            self.by_id
                .entry(entry.file.meta.id)
                .or_insert_with(|| name.clone());
        }
    }
}

struct Inner {
    dir: PathBuf,
    chunk_size: u32,
    state: RwLock<State>,
}

/// The shared folder. Cheap to clone (an `Arc` inside) and safe to share between the server
/// threads and a downloader.
///
/// Only regular files directly in the folder whose names pass
/// [`validate_name`] and do not start with `.` are listed; hidden files include
/// the downloader's part files, so a half-downloaded file is never served or registered.
#[derive(Clone)]
pub struct Library {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("dir", &self.inner.dir)
            .field("files", &self.read().by_name.len())
            .finish()
    }
}

impl Library {
    /// Scans `dir` (creating it if missing) and hashes every regular file directly in it,
    /// in chunks of [`content::chunk_size_for`]`(size, chunk_size)` bytes.
    ///
    /// Hidden files (names starting with `.`, which covers part files), names that fail
    /// [`validate_name`], symlinks and anything else that is not a regular file are skipped.
    /// A file that cannot be read is skipped with a warning.
    pub fn open(dir: &Path, chunk_size: u32) -> Result<Library, PeerError> {
        fs::create_dir_all(dir).map_err(|e| PeerError::io("create the folder", dir, e))?;
        let by_name = scan(dir, chunk_size, &BTreeMap::new())?;
        let mut state = State {
            by_name,
            ..State::default()
        };
        state.reindex();
        Ok(Library {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                chunk_size,
                state: RwLock::new(state),
            }),
        })
    }

    /// The shared folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Every shared file, sorted by name.
    pub fn files(&self) -> Vec<FileMeta> {
        self.read()
            .by_name
            .values()
            .map(|e| e.file.meta.clone())
            .collect()
    }

    /// The file with this name or id, if it is shared.
    pub fn get(&self, key: &FileKey) -> Option<SharedFile> {
        let state = self.read();
        let name = match key {
            FileKey::Name(name) => name,
            FileKey::Id(id) => state.by_id.get(id)?,
        };
        state.by_name.get(name).map(|e| e.file.clone())
    }

    /// True if a file of this name is shared.
    pub fn contains_name(&self, name: &str) -> bool {
        self.read().by_name.contains_key(name)
    }

    /// Adds (or replaces) a file, e.g. after a verified download; its hashes are trusted as
    /// given, not recomputed.
    pub fn insert(&self, file: SharedFile) {
        let stamp = fs::symlink_metadata(&file.path)
            .ok()
            .filter(|m| m.file_type().is_file())
            .map(|m| Stamp::of(&m));
        let mut state = self.write();
        state.generation += 1;
        let name = file.meta.name.clone();
        let id = file.meta.id;
        let entry = Entry {
            file,
            stamp,
            inserted: state.generation,
        };
        let replaced = state.by_name.insert(name.clone(), entry);
        match replaced {
            // The old content's id may have pointed at this name.
            Some(old) if old.file.meta.id != id => state.reindex(),
            _ => {
                state.by_id.entry(id).or_insert(name);
            }
        }
    }

    /// Re-reads the folder: new files are hashed, changed ones (size, mtime or inode)
    /// re-hashed, vanished ones dropped. Unchanged files keep their hashes.
    pub fn rescan(&self) -> Result<(), PeerError> {
        // Hash outside the lock: serving goes on while a big folder is read.
        let (cache, generation) = {
            let state = self.read();
            (state.by_name.clone(), state.generation)
        };
        let mut by_name = scan(&self.inner.dir, self.inner.chunk_size, &cache)?;
        let mut state = self.write();
        // Files inserted after the snapshot may have landed after `read_dir` passed them.
        for (name, entry) in &state.by_name {
            if entry.inserted > generation && !by_name.contains_key(name) {
                by_name.insert(name.clone(), entry.clone());
            }
        }
        state.by_name = by_name;
        state.reindex();
        Ok(())
    }

    /// Total size of the shared files, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.read().by_name.values().map(|e| e.file.meta.size).sum()
    }

    // A thread that panicked while holding the lock cannot have left a half-made state:
    // every update is a single assignment or insert.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Opens `path` only if it is a regular file (not a symlink, FIFO, directory, ...), returning
/// the file and its metadata.
pub(crate) fn open_regular(path: &Path) -> io::Result<(File, Metadata)> {
    let link = fs::symlink_metadata(path)?;
    if !link.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let file = File::open(path)?;
    let meta = file.metadata()?;
    // The name could have been swapped for a symlink between the check and the open; the
    // same inode proves it was not.
    if meta.dev() != link.dev() || meta.ino() != link.ino() {
        return Err(io::Error::other("the file was replaced while being opened"));
    }
    Ok((file, meta))
}

/// Hashes the regular file at `path` as the shared file `name`.
pub(crate) fn hash_file(
    path: &Path,
    name: &str,
    preferred_chunk_size: u32,
    buf: &mut Vec<u8>,
) -> io::Result<SharedFile> {
    hash_file_stamped(path, name, preferred_chunk_size, buf).map(|(file, _)| file)
}

fn hash_file_stamped(
    path: &Path,
    name: &str,
    preferred_chunk_size: u32,
    buf: &mut Vec<u8>,
) -> io::Result<(SharedFile, Stamp)> {
    let (mut file, meta) = open_regular(path)?;
    let size = meta.len();
    let chunk_size = content::chunk_size_for(size, preferred_chunk_size);
    let (id, hashes) = content::hash_reader(&mut file, size, chunk_size, buf)?;
    let shared = SharedFile {
        meta: FileMeta {
            name: name.to_string(),
            size,
            chunk_size,
            id,
        },
        chunk_hashes: Arc::new(hashes),
        path: path.to_path_buf(),
    };
    // Stamped before reading: a write during hashing changes the mtime, so the next rescan
    // hashes it again.
    Ok((shared, Stamp::of(&meta)))
}

/// Lists and hashes the shareable files of `dir`, reusing `cache` entries whose stamp is
/// unchanged.
fn scan(
    dir: &Path,
    chunk_size: u32,
    cache: &BTreeMap<String, Entry>,
) -> Result<BTreeMap<String, Entry>, PeerError> {
    let entries = fs::read_dir(dir).map_err(|e| PeerError::io("list the folder", dir, e))?;
    let mut out = BTreeMap::new();
    let mut buf = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                log::warn!("cannot list {}: {e}", dir.display());
                continue;
            }
        };
        let path = entry.path();
        let Ok(name) = entry.file_name().into_string() else {
            log::debug!("skipping {}: name is not UTF-8", path.display());
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if let Err(e) = validate_name(&name) {
            log::debug!("skipping {}: {e}", path.display());
            continue;
        }
        // `DirEntry::file_type` does not follow symlinks.
        match entry.file_type() {
            Ok(t) if t.is_file() => {}
            Ok(_) => {
                log::debug!("skipping {}: not a regular file", path.display());
                continue;
            }
            Err(e) => {
                log::warn!("skipping {}: {e}", path.display());
                continue;
            }
        }
        if let Some(old) = cache.get(&name) {
            let now = fs::symlink_metadata(&path).ok().map(|m| Stamp::of(&m));
            if old.stamp.is_some() && old.stamp == now {
                let mut kept = old.clone();
                kept.inserted = 0;
                out.insert(name, kept);
                continue;
            }
        }
        match hash_file_stamped(&path, &name, chunk_size, &mut buf) {
            Ok((file, stamp)) => {
                out.insert(
                    name,
                    Entry {
                        file,
                        stamp: Some(stamp),
                        inserted: 0,
                    },
                );
            }
            Err(e) => log::warn!("skipping {}: cannot read it: {e}", path.display()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// The id computed independently of the library's chunk size: the ids do not depend on
    /// it, and proto's tests show they equal `b3sum`.
    fn id_of(bytes: &[u8]) -> FileId {
        let size = bytes.len() as u64;
        content::hash_reader(&mut &bytes[..], size, 1 << 20, &mut Vec::new())
            .unwrap()
            .0
    }

    #[test]
    fn scan_lists_plain_regular_files_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shared");
        fs::create_dir(&dir).unwrap();
        let a = data(300_000, 1);
        let b = data(10, 2);
        fs::write(dir.join("a.bin"), &a).unwrap();
        fs::write(dir.join("b.txt"), &b).unwrap();
        fs::write(dir.join("empty"), b"").unwrap();
        fs::write(dir.join(".hidden"), b"x").unwrap();
        fs::write(dir.join(".a.bin.shoal-part"), b"partial").unwrap();
        fs::write(dir.join("bad\nname"), b"x").unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        fs::write(dir.join("sub").join("inner.txt"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.join("a.bin"), dir.join("link.bin")).unwrap();
        fs::write(tmp.path().join("outside"), b"secret").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("outside"), dir.join("escape")).unwrap();

        let lib = Library::open(&dir, 16384).unwrap();
        let files = lib.files();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["a.bin", "b.txt", "empty"]);
        assert_eq!(files[0].id, id_of(&a));
        assert_eq!(files[0].chunk_size, 16384);
        assert_eq!(files[1].id, id_of(&b));
        assert_eq!(files[2].id, id_of(b""));
        assert_eq!(lib.total_bytes(), 300_010);

        let shared = lib.get(&FileKey::Name("a.bin".into())).unwrap();
        assert_eq!(shared.chunk_hashes.len(), 19);
        assert_eq!(shared.path, dir.join("a.bin"));
        let by_id = lib.get(&FileKey::Id(id_of(&b))).unwrap();
        assert_eq!(by_id.meta.name, "b.txt");
        assert!(lib.contains_name("a.bin"));
        assert!(!lib.contains_name("link.bin"));
        assert!(lib.get(&FileKey::Name("escape".into())).is_none());
        assert!(lib.get(&FileKey::Id(FileId([0; 32]))).is_none());
    }

    #[test]
    fn open_creates_a_missing_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new").join("folder");
        let lib = Library::open(&dir, 16384).unwrap();
        assert!(dir.is_dir());
        assert!(lib.files().is_empty());
        assert_eq!(lib.dir(), dir);
    }

    #[test]
    fn rescan_follows_the_folder_and_keeps_inserts() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("keep"), data(5000, 1)).unwrap();
        fs::write(dir.join("change"), data(5000, 2)).unwrap();
        fs::write(dir.join("gone"), data(5000, 3)).unwrap();
        let lib = Library::open(dir, 1024).unwrap();
        let old_change = lib.get(&FileKey::Name("change".into())).unwrap().meta.id;
        let gone_id = lib.get(&FileKey::Name("gone".into())).unwrap().meta.id;

        let changed = data(7000, 4);
        fs::write(dir.join("change"), &changed).unwrap();
        fs::remove_file(dir.join("gone")).unwrap();
        fs::write(dir.join("new"), data(10, 5)).unwrap();
        lib.rescan().unwrap();

        let names: Vec<String> = lib.files().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["change", "keep", "new"]);
        let now = lib.get(&FileKey::Name("change".into())).unwrap().meta;
        assert_ne!(now.id, old_change);
        assert_eq!(now.id, id_of(&changed));
        assert_eq!(now.size, 7000);
        assert!(lib.get(&FileKey::Id(gone_id)).is_none());
        assert!(lib.get(&FileKey::Id(old_change)).is_none());
    }

    #[test]
    fn insert_adds_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = Library::open(tmp.path(), 1024).unwrap();
        let bytes = data(3000, 9);
        let path = tmp.path().join("got.bin");
        fs::write(&path, &bytes).unwrap();
        let file = hash_file(&path, "got.bin", 1024, &mut Vec::new()).unwrap();
        let id = file.meta.id;
        lib.insert(file.clone());
        assert_eq!(lib.get(&FileKey::Id(id)).unwrap().meta, file.meta);
        assert_eq!(lib.files(), vec![file.meta.clone()]);

        let mut other = file.clone();
        other.meta.id = FileId([1; 32]);
        lib.insert(other);
        assert!(lib.get(&FileKey::Id(id)).is_none());
        assert!(lib.get(&FileKey::Id(FileId([1; 32]))).is_some());
        // An inserted file is trusted as given, and survives a rescan while unchanged.
        lib.rescan().unwrap();
        assert!(lib.get(&FileKey::Id(FileId([1; 32]))).is_some());
    }
}
