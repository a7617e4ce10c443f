//! The shared folder: which files a peer serves, with their ids and chunk hashes.
//!
//! Hashing is the slow part of opening a large folder, so it is avoided wherever a file
//! provably did not change: a rescan reuses the hashes of every file whose stamp (inode,
//! size, modification and change time) is unchanged, and with [`OpenOptions::hash_cache`]
//! the hashes also survive restarts in `DIR/.shoal-cache` (see `hash_cache.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use shoal_proto::message::ChunkHash;

use crate::activity::Activity;
use shoal_proto::{FileId, FileKey, FileMeta, content, validate_name};

use crate::PeerError;
use crate::clock::{self, Clock};
use crate::hash_cache;
use crate::share::PartialShare;
use crate::stamp::{CachedFile, Stamp};

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

/// How [`Library::open_with`] opens a folder.
#[derive(Clone, Copy)]
pub struct OpenOptions<'a> {
    /// Preferred chunk size (see [`content::chunk_size_for`]).
    pub chunk_size: u32,
    /// Keep the hashes in `DIR/.shoal-cache`, so a restart hashes only files that changed.
    /// Off by default: the library then writes nothing into the folder.
    pub hash_cache: bool,
    /// Called as the first scan goes (after every file, and within large files).
    pub progress: Option<&'a dyn Fn(&ScanProgress<'_>)>,
}

impl Default for OpenOptions<'_> {
    fn default() -> Self {
        OpenOptions {
            chunk_size: content::DEFAULT_CHUNK_SIZE,
            hash_cache: false,
            progress: None,
        }
    }
}

impl std::fmt::Debug for OpenOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("chunk_size", &self.chunk_size)
            .field("hash_cache", &self.hash_cache)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// How far a scan is. Counts cover only the files that need hashing (the cache covers the
/// rest), so the rate and ETA describe the real work.
#[derive(Clone, Debug)]
pub struct ScanProgress<'a> {
    /// The file being hashed ("" before the first).
    pub name: &'a str,
    /// Files hashed so far.
    pub files_done: usize,
    /// Files to hash in all.
    pub files_total: usize,
    /// Bytes hashed so far.
    pub bytes_done: u64,
    /// Bytes to hash in all.
    pub bytes_total: u64,
    /// Files whose hashes were reused without reading them.
    pub cached: usize,
    /// Time since the scan started.
    pub elapsed: Duration,
}

impl ScanProgress<'_> {
    /// Bytes hashed per second so far.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.bytes_done as f64 / secs
        } else {
            0.0
        }
    }

    /// Time left at the rate so far; `None` until there is a rate.
    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0).then(|| {
            Duration::from_secs_f64(self.bytes_total.saturating_sub(self.bytes_done) as f64 / rate)
        })
    }
}

/// A file whose content changed under the same name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedFile {
    /// What it was.
    pub old: FileMeta,
    /// What it is now.
    pub new: FileMeta,
}

/// What changed in a library since the previous report (for [`Library::open_with`]: since
/// an empty library), by name. A file renamed within the folder is one removal and one
/// addition with the same id; a file touched but not changed is no change at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LibraryChange {
    /// New names.
    pub added: Vec<FileMeta>,
    /// Names whose content changed.
    pub changed: Vec<ChangedFile>,
    /// Names gone from the folder.
    pub removed: Vec<FileMeta>,
}

impl LibraryChange {
    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// What a scan did.
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    /// Files in the library after the scan.
    pub files: usize,
    /// Files read and hashed.
    pub hashed: usize,
    /// Files whose hashes were reused (unchanged since the last scan, or vouched for by the
    /// hash cache).
    pub cached: usize,
    /// Bytes read and hashed.
    pub bytes_hashed: u64,
    /// Files left as they were because they are still being written (watcher rescans only).
    pub busy: usize,
    /// How long the scan took.
    pub elapsed: Duration,
    /// What changed.
    pub change: LibraryChange,
    /// Names in the folder that are not shared, with why, reported for the first time by
    /// this scan (each is logged once, at the normal level; a name that stays is not
    /// reported again, one that leaves and comes back is).
    pub skipped: Vec<Skipped>,
}

/// A name in a shared folder that is not shared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The name as it is (not UTF-8 names lossily, with U+FFFD).
    pub name: String,
    /// Why it is not shared.
    pub reason: SkipReason,
}

/// Why a name in a shared folder is not shared.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SkipReason {
    /// A subfolder: only files directly in the folder are shared.
    Subfolder,
    /// A symbolic link: never followed.
    Symlink,
    /// Neither a regular file, a folder nor a link (a FIFO, socket or device).
    NotRegular,
    /// The name is not UTF-8, so it cannot travel on the wire.
    NotUtf8,
    /// The name is not a plain shareable name (a control character, too long, ...).
    BadName(String),
    /// It could not be read.
    Unreadable(String),
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Subfolder => {
                f.write_str("a subfolder (only files directly in the folder are shared)")
            }
            SkipReason::Symlink => f.write_str("a symbolic link (links are never followed)"),
            SkipReason::NotRegular => f.write_str("not a regular file"),
            SkipReason::NotUtf8 => f.write_str("the name is not UTF-8"),
            SkipReason::BadName(why) => write!(f, "the name cannot be shared: {why}"),
            SkipReason::Unreadable(why) => write!(f, "cannot be read: {why}"),
        }
    }
}

#[derive(Clone)]
struct Entry {
    file: SharedFile,
    stamp: Option<Stamp>,
    /// The stamp proves the hashes (false if hashed racily, see [`Stamp::racy`]).
    trusted: bool,
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
    /// The files as of the last report, which the next rescan's change is relative to
    /// (so inserts between two rescans are reported too).
    reported: BTreeMap<String, FileMeta>,
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

    /// The change from `reported` to now, and now becomes the reported state.
    fn take_change(&mut self) -> LibraryChange {
        let mut change = LibraryChange::default();
        let mut now = BTreeMap::new();
        for (name, entry) in &self.by_name {
            let meta = &entry.file.meta;
            match self.reported.remove(name) {
                None => change.added.push(meta.clone()),
                Some(old) if old != *meta => change.changed.push(ChangedFile {
                    old,
                    new: meta.clone(),
                }),
                Some(_) => {}
            }
            now.insert(name.clone(), meta.clone());
        }
        change.removed = std::mem::take(&mut self.reported).into_values().collect();
        self.reported = now;
        change
    }
}

struct Inner {
    dir: PathBuf,
    chunk_size: u32,
    hash_cache: bool,
    state: RwLock<State>,
    /// Serialises cache writers (they share one temporary file).
    cache_writer: Mutex<()>,
    /// An insert happened since the cache was last written.
    cache_dirty: AtomicBool,
    /// Downloads in progress whose verified chunks are served, by id.
    partials: Mutex<HashMap<FileId, Arc<PartialShare>>>,
    /// Downloads and uploads in progress, and the counters of both.
    activity: Arc<Activity>,
    /// Names skipped and already reported (see [`ScanReport::skipped`]).
    reported_skips: Mutex<HashSet<String>>,
    /// Tells a file hashed right after a write (see [`Stamp::racy`]).
    clock: Arc<dyn Clock>,
}

/// The shared folder. Cheap to clone (an `Arc` inside) and safe to share between the server
/// threads, a downloader and a [`crate::FolderWatcher`].
///
/// Only regular files directly in the folder whose names pass
/// [`validate_name`] and do not start with `.` are listed; hidden files include
/// the downloader's part files and the hash cache, so a half-downloaded file is never served
/// or registered.
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
    /// in chunks of [`content::chunk_size_for`]`(size, chunk_size)` bytes. No hash cache, no
    /// progress: see [`Library::open_with`].
    ///
    /// Hidden files (names starting with `.`, which covers part files), names that fail
    /// [`validate_name`], symlinks and anything else that is not a regular file are skipped.
    /// A file that cannot be read is skipped with a warning.
    pub fn open(dir: &Path, chunk_size: u32) -> Result<Library, PeerError> {
        let options = OpenOptions {
            chunk_size,
            ..OpenOptions::default()
        };
        Library::open_with(dir, &options).map(|(library, _)| library)
    }

    /// [`Library::open`] with options: the on-disk hash cache (files it vouches for are not
    /// read) and a progress callback. The report's change lists every file as added.
    pub fn open_with(
        dir: &Path,
        options: &OpenOptions<'_>,
    ) -> Result<(Library, ScanReport), PeerError> {
        Library::open_with_clock(dir, options, clock::system())
    }

    /// [`Library::open_with`], telling the time by `clock`.
    pub(crate) fn open_with_clock(
        dir: &Path,
        options: &OpenOptions<'_>,
        clock: Arc<dyn Clock>,
    ) -> Result<(Library, ScanReport), PeerError> {
        let started = Instant::now();
        fs::create_dir_all(dir).map_err(|e| PeerError::io("create the folder", dir, e))?;
        let disk = if options.hash_cache {
            hash_cache::load(dir)
        } else {
            HashMap::new()
        };
        let disk_entries = disk.len();
        let sources = Sources {
            memory: &BTreeMap::new(),
            disk,
            busy: &|_| false,
            progress: options.progress,
            clock: &*clock,
        };
        let (by_name, mut report) = scan(dir, options.chunk_size, sources, started)?;
        let mut reported = HashSet::new();
        report_skipped(dir, &mut report.skipped, &mut reported);
        let mut state = State {
            by_name,
            ..State::default()
        };
        state.reindex();
        report.change = state.take_change();
        let library = Library {
            inner: Arc::new(Inner {
                activity: Arc::new(Activity::new()),
                dir: dir.to_path_buf(),
                chunk_size: options.chunk_size,
                hash_cache: options.hash_cache,
                state: RwLock::new(state),
                cache_writer: Mutex::new(()),
                cache_dirty: AtomicBool::new(false),
                partials: Mutex::new(HashMap::new()),
                reported_skips: Mutex::new(reported),
                clock,
            }),
        };
        // Rewritten when it would differ: new hashes, or entries of files now gone.
        if report.hashed > 0 || report.cached != disk_entries {
            library.save_cache();
        }
        report.elapsed = started.elapsed();
        Ok((library, report))
    }

    /// A library of `dir` that lists nothing yet (no scan): for a peer that shares only what
    /// it downloads, such as `shoal get`. Files come in through [`Library::insert`].
    pub fn empty(dir: &Path, chunk_size: u32) -> Library {
        Library {
            inner: Arc::new(Inner {
                activity: Arc::new(Activity::new()),
                dir: dir.to_path_buf(),
                chunk_size,
                hash_cache: false,
                state: RwLock::new(State::default()),
                cache_writer: Mutex::new(()),
                cache_dirty: AtomicBool::new(false),
                partials: Mutex::new(HashMap::new()),
                reported_skips: Mutex::new(HashSet::new()),
                clock: clock::system(),
            }),
        }
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

    /// Serves the verified chunks of a download in progress (a partial holder), until
    /// [`Library::withdraw_partial`]. A complete file of the same id is preferred.
    pub(crate) fn share_partial(&self, share: Arc<PartialShare>) {
        self.partials().insert(share.meta().id, share);
    }

    /// Stops serving a download in progress (it finished, failed or was abandoned).
    pub(crate) fn withdraw_partial(&self, id: &FileId) {
        if let Some(share) = self.partials().remove(id) {
            share.close();
        }
    }

    /// The download in progress of this id, if its chunks are served.
    pub(crate) fn partial(&self, id: &FileId) -> Option<Arc<PartialShare>> {
        self.partials().get(id).cloned()
    }

    /// What this peer is downloading and uploading, and its counters.
    pub fn activity(&self) -> &Arc<Activity> {
        &self.inner.activity
    }

    /// Downloads in progress whose verified chunks are served now.
    pub fn downloads(&self) -> Vec<Arc<PartialShare>> {
        self.partials().values().cloned().collect()
    }

    fn partials(&self) -> std::sync::MutexGuard<'_, HashMap<FileId, Arc<PartialShare>>> {
        self.inner
            .partials
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// True if a file of this name is shared.
    pub fn contains_name(&self, name: &str) -> bool {
        self.read().by_name.contains_key(name)
    }

    /// Adds (or replaces) a file, e.g. after a verified download; its hashes are trusted as
    /// given, not recomputed, and a later rescan does not read it again while its stamp is
    /// unchanged. The next [`Library::rescan`] reports it (added or changed).
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
            trusted: true,
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
        self.inner.cache_dirty.store(true, Ordering::Relaxed);
    }

    /// Re-reads the folder: new files are hashed, changed ones (inode, size, modification or
    /// change time) re-hashed, vanished ones dropped; unchanged files keep their hashes.
    /// Returns what changed since the previous rescan (inserts included).
    pub fn rescan(&self) -> Result<ScanReport, PeerError> {
        self.rescan_skipping(&|_| false)
    }

    /// [`Library::rescan`], leaving the names `busy` picks as they were (a file still being
    /// written is not worth hashing: it is about to change again).
    pub(crate) fn rescan_skipping(
        &self,
        busy: &dyn Fn(&str) -> bool,
    ) -> Result<ScanReport, PeerError> {
        let started = Instant::now();
        // Hash outside the lock: serving goes on while a big folder is read.
        let (memory, generation) = {
            let state = self.read();
            (state.by_name.clone(), state.generation)
        };
        let sources = Sources {
            memory: &memory,
            disk: HashMap::new(),
            busy,
            progress: None,
            clock: &*self.inner.clock,
        };
        let (mut by_name, mut report) =
            scan(&self.inner.dir, self.inner.chunk_size, sources, started)?;
        report_skipped(
            &self.inner.dir,
            &mut report.skipped,
            &mut self
                .inner
                .reported_skips
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let mut state = self.write();
        // Files inserted after the snapshot may have landed after `read_dir` passed them.
        for (name, entry) in &state.by_name {
            if entry.inserted > generation && !by_name.contains_key(name) {
                by_name.insert(name.clone(), entry.clone());
            }
        }
        state.by_name = by_name;
        state.reindex();
        report.files = state.by_name.len();
        report.change = state.take_change();
        drop(state);
        let inserted = self.inner.cache_dirty.load(Ordering::Relaxed);
        if report.hashed > 0 || !report.change.is_empty() || inserted {
            self.save_cache();
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Total size of the shared files, in bytes.
    pub fn total_bytes(&self) -> u64 {
        self.read().by_name.values().map(|e| e.file.meta.size).sum()
    }

    /// Writes the hash cache (if enabled): every file whose stamp vouches for its hashes.
    /// A failure costs only re-hashing after a restart, so it is a warning.
    fn save_cache(&self) {
        if !self.inner.hash_cache {
            return;
        }
        let _writer = self
            .inner
            .cache_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.inner.cache_dirty.store(false, Ordering::Relaxed);
        let entries: Vec<(String, CachedFile)> = self
            .read()
            .by_name
            .iter()
            .filter(|(_, e)| e.trusted)
            .filter_map(|(name, e)| {
                let file = &e.file;
                let recorded = CachedFile::recorded(
                    &e.stamp?,
                    file.meta.chunk_size,
                    file.meta.id,
                    Arc::clone(&file.chunk_hashes),
                );
                Some((name.clone(), recorded))
            })
            .collect();
        if let Err(e) = hash_cache::save(&self.inner.dir, &entries) {
            log::warn!(
                "cannot write the hash cache in {}: {e} (files will be hashed again after a restart)",
                self.inner.dir.display()
            );
        }
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

#[cfg(test)]
thread_local! {
    /// Runs between `open_regular`'s check and its open, on this thread: where a test swaps
    /// the name for something else.
    static BETWEEN_CHECK_AND_OPEN: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(None) };
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
    #[cfg(test)]
    if let Some(swap) = BETWEEN_CHECK_AND_OPEN.with(|hook| hook.borrow_mut().take()) {
        swap();
    }
    // The name may have been swapped since the check. Opened non-blocking, a FIFO does not
    // wait for a writer (a plain open would block this thread until someone writes), and
    // without following links, a symlink is not followed to whatever it names; either is
    // refused below. O_NONBLOCK stays set: it changes nothing for a regular file (reads
    // of one never return `WouldBlock`), and clearing it would take `fcntl`, unsafe code.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    // What was opened must be the regular file that was checked: the same inode.
    if !meta.file_type().is_file() || meta.dev() != link.dev() || meta.ino() != link.ino() {
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
    hash_file_stamped(
        path,
        name,
        preferred_chunk_size,
        buf,
        &mut |_| {},
        &clock::SystemClock,
    )
    .map(|(file, _, _)| file)
}

/// Hashes a file, calling `on_read` with each number of bytes read. Returns the file, its
/// stamp from before the read, and whether that stamp proves the hashes (not racy).
fn hash_file_stamped(
    path: &Path,
    name: &str,
    preferred_chunk_size: u32,
    buf: &mut Vec<u8>,
    on_read: &mut dyn FnMut(u64),
    clock: &dyn Clock,
) -> io::Result<(SharedFile, Stamp, bool)> {
    // Taken before the stamp: the racy check must not credit time spent reading.
    let seen_at = clock.now();
    let (file, meta) = open_regular(path)?;
    let size = meta.len();
    let chunk_size = content::chunk_size_for(size, preferred_chunk_size);
    let mut reader = CountingReader {
        inner: file,
        on_read,
    };
    let (id, hashes) = content::hash_reader(&mut reader, size, chunk_size, buf)?;
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
    let stamp = Stamp::of(&meta);
    Ok((shared, stamp, !stamp.racy(seen_at)))
}

/// Reports bytes as they are read, for scan progress inside large files.
struct CountingReader<'a, R> {
    inner: R,
    on_read: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.on_read)(n as u64);
        Ok(n)
    }
}

/// Where a scan may find hashes without reading files, and what it reports to.
struct Sources<'a> {
    /// The library's entries (a rescan): reused while their stamp is unchanged.
    memory: &'a BTreeMap<String, Entry>,
    /// The on-disk cache (first scan): reused when an entry vouches for the file.
    disk: HashMap<String, CachedFile>,
    /// Names left as they are in `memory` (absent if they are not there).
    busy: &'a dyn Fn(&str) -> bool,
    progress: Option<&'a dyn Fn(&ScanProgress<'_>)>,
    /// Tells whether a file was hashed racily.
    clock: &'a dyn Clock,
}

/// Logs each name of `skipped` not yet in `reported` (once, at the normal level), keeps only
/// those in `skipped`, and makes `reported` what this scan skipped.
fn report_skipped(dir: &Path, skipped: &mut Vec<Skipped>, reported: &mut HashSet<String>) {
    let now: HashSet<String> = skipped.iter().map(|s| s.name.clone()).collect();
    skipped.retain(|s| !reported.contains(&s.name));
    for s in skipped.iter() {
        log::info!("not sharing {}: {}", dir.join(&s.name).display(), s.reason);
    }
    *reported = now;
}

/// Lists and hashes the shareable files of `dir`, reusing what `sources` vouches for.
/// First lists and stats everything, so progress knows the total work before hashing.
fn scan(
    dir: &Path,
    chunk_size: u32,
    mut sources: Sources<'_>,
    started: Instant,
) -> Result<(BTreeMap<String, Entry>, ScanReport), PeerError> {
    let entries = fs::read_dir(dir).map_err(|e| PeerError::io("list the folder", dir, e))?;
    let mut out = BTreeMap::new();
    let mut report = ScanReport::default();
    let mut to_hash = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                log::warn!("cannot list {}: {e}", dir.display());
                continue;
            }
        };
        let path = entry.path();
        let mut skip = |name: String, reason: SkipReason| {
            report.skipped.push(Skipped { name, reason });
        };
        let name = match entry.file_name().into_string() {
            Ok(name) => name,
            Err(raw) => {
                skip(raw.to_string_lossy().into_owned(), SkipReason::NotUtf8);
                continue;
            }
        };
        if name.starts_with('.') {
            continue;
        }
        if let Err(e) = validate_name(&name) {
            skip(name, SkipReason::BadName(e.to_string()));
            continue;
        }
        // `DirEntry::file_type` does not follow symlinks.
        match entry.file_type() {
            Ok(t) if t.is_file() => {}
            Ok(t) => {
                let reason = if t.is_dir() {
                    SkipReason::Subfolder
                } else if t.is_symlink() {
                    SkipReason::Symlink
                } else {
                    SkipReason::NotRegular
                };
                skip(name, reason);
                continue;
            }
            Err(e) => {
                skip(name, SkipReason::Unreadable(e.to_string()));
                continue;
            }
        }
        if (sources.busy)(&name) {
            if let Some(old) = sources.memory.get(&name) {
                let mut kept = old.clone();
                kept.inserted = 0;
                out.insert(name, kept);
            }
            report.busy += 1;
            continue;
        }
        let stamp = match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() => Stamp::of(&m),
            // Gone or replaced since `read_dir`: the next rescan sees what is there.
            Ok(_) => continue,
            Err(e) => {
                log::debug!("skipping {}: {e}", path.display());
                continue;
            }
        };
        if let Some(old) = sources.memory.get(&name)
            && old.trusted
            && old.stamp == Some(stamp)
        {
            let mut kept = old.clone();
            kept.inserted = 0;
            out.insert(name, kept);
            report.cached += 1;
            continue;
        }
        if let Some(cached) = sources.disk.remove(&name)
            && cached.vouches_for(&stamp, chunk_size)
        {
            let file = SharedFile {
                meta: FileMeta {
                    name: name.clone(),
                    size: cached.size,
                    chunk_size: cached.chunk_size,
                    id: cached.id,
                },
                chunk_hashes: cached.chunk_hashes,
                path,
            };
            let entry = Entry {
                file,
                stamp: Some(stamp),
                trusted: true,
                inserted: 0,
            };
            out.insert(name, entry);
            report.cached += 1;
            continue;
        }
        to_hash.push((name, path, stamp.size));
    }

    let files_total = to_hash.len();
    let bytes_total: u64 = to_hash.iter().map(|(_, _, size)| size).sum();
    let (mut files_done, mut bytes_done) = (0, 0u64);
    let cached = report.cached;
    let show = |name: &str, files_done: usize, bytes_done: u64| {
        if let Some(show) = sources.progress {
            show(&ScanProgress {
                name,
                files_done,
                files_total,
                bytes_done,
                bytes_total,
                cached,
                elapsed: started.elapsed(),
            });
        }
    };
    show("", 0, 0);
    let mut buf = Vec::new();
    for (name, path, _) in to_hash {
        let mut on_read = |n: u64| {
            bytes_done += n;
            show(&name, files_done, bytes_done);
        };
        match hash_file_stamped(
            &path,
            &name,
            chunk_size,
            &mut buf,
            &mut on_read,
            sources.clock,
        ) {
            Ok((file, stamp, trusted)) => {
                report.hashed += 1;
                report.bytes_hashed += file.meta.size;
                let entry = Entry {
                    file,
                    stamp: Some(stamp),
                    trusted,
                    inserted: 0,
                };
                out.insert(name, entry);
            }
            Err(e) => log::warn!("skipping {}: cannot read it: {e}", path.display()),
        }
        files_done += 1;
        show("", files_done, bytes_done);
    }
    report.files = out.len();
    Ok((out, report))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn a_name_swapped_for_a_fifo_is_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let probe = tmp.path().join("probe");
        let mkfifo = |path: &Path| {
            std::process::Command::new("mkfifo")
                .arg(path)
                .status()
                .is_ok_and(|status| status.success())
        };
        if !mkfifo(&probe) {
            eprintln!("skipped: no mkfifo here");
            return;
        }
        let path = tmp.path().join("song.ogg");
        fs::write(&path, b"a tune").unwrap();
        let (done_tx, done) = std::sync::mpsc::channel();
        let opener = {
            let path = path.clone();
            std::thread::spawn(move || {
                let swapped = path.clone();
                BETWEEN_CHECK_AND_OPEN.with(|hook| {
                    *hook.borrow_mut() = Some(Box::new(move || {
                        fs::remove_file(&swapped).unwrap();
                        assert!(mkfifo(&swapped));
                    }));
                });
                let _ = done_tx.send(open_regular(&path).map(|_| ()));
            })
        };
        let result = match done.recv_timeout(Duration::from_secs(10)) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Blocked in the open: a writer lets it go, then the test fails.
                let _ = fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&path);
                let _ = opener.join();
                panic!("open_regular blocked on a FIFO swapped in after its check");
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the opener thread failed: {:?}", opener.join().err());
            }
        };
        opener.join().unwrap();
        let err = result.unwrap_err();
        assert!(err.to_string().contains("replaced"), "{err}");
    }

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
    fn skipped_names_are_reported_once_with_the_reason() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("a.txt"), b"shared").unwrap();
        fs::create_dir(root.join("sub")).unwrap();
        std::os::unix::fs::symlink(root.join("a.txt"), root.join("link")).unwrap();
        fs::write(root.join(std::ffi::OsStr::from_bytes(b"bad\xff")), b"x").unwrap();
        fs::write(root.join(".hidden"), b"x").unwrap();
        let (lib, report) = Library::open_with(root, &OpenOptions::default()).unwrap();
        assert_eq!(lib.files().len(), 1);
        let mut skipped: Vec<(String, SkipReason)> = report
            .skipped
            .into_iter()
            .map(|s| (s.name, s.reason))
            .collect();
        skipped.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            skipped,
            vec![
                ("bad\u{FFFD}".to_string(), SkipReason::NotUtf8),
                ("link".to_string(), SkipReason::Symlink),
                ("sub".to_string(), SkipReason::Subfolder),
            ],
            "hidden files (part files, the cache) are not news"
        );
        // Once: the next scans stay quiet about them...
        assert!(lib.rescan().unwrap().skipped.is_empty());
        // ...unless one goes and comes back.
        fs::remove_dir(root.join("sub")).unwrap();
        assert!(lib.rescan().unwrap().skipped.is_empty());
        fs::create_dir(root.join("sub")).unwrap();
        let again = lib.rescan().unwrap().skipped;
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].reason.to_string(),
            "a subfolder (only files directly in the folder are shared)"
        );
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

    /// Sets a file's modification time an hour back, so its stamp is not racy (a file
    /// written a moment ago is hashed again at the next scan; see `Stamp::racy`).
    fn age(path: &Path) {
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
    }

    fn cached_open(dir: &Path) -> (Library, ScanReport) {
        let options = OpenOptions {
            chunk_size: 1024,
            hash_cache: true,
            progress: None,
        };
        Library::open_with(dir, &options).unwrap()
    }

    #[test]
    fn the_hash_cache_spares_unchanged_files_after_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for (name, seed) in [("a", 1), ("b", 2), ("c", 3)] {
            fs::write(dir.join(name), data(5000, seed)).unwrap();
            age(&dir.join(name));
        }
        let (first, report) = cached_open(dir);
        assert_eq!((report.hashed, report.cached, report.files), (3, 0, 3));
        assert_eq!(report.bytes_hashed, 15_000);
        assert_eq!(report.change.added.len(), 3);
        assert!(dir.join(hash_cache::CACHE_FILE).is_file());
        let ids = first.files();
        drop(first);

        let (again, report) = cached_open(dir);
        assert_eq!((report.hashed, report.cached), (0, 3));
        assert_eq!(again.files(), ids);
        assert_eq!(
            again
                .get(&FileKey::Name("a".into()))
                .unwrap()
                .chunk_hashes
                .len(),
            5
        );

        // A changed file is hashed again, even with the same size and modification time
        // (the change time gives it away); a new file is hashed; a gone one dropped.
        let changed = data(5000, 9);
        let mtime = fs::metadata(dir.join("b")).unwrap().modified().unwrap();
        fs::write(dir.join("b"), &changed).unwrap();
        File::options()
            .write(true)
            .open(dir.join("b"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        fs::write(dir.join("d"), data(10, 4)).unwrap();
        age(&dir.join("d"));
        fs::remove_file(dir.join("c")).unwrap();
        drop(again);
        let (lib, report) = cached_open(dir);
        assert_eq!((report.hashed, report.cached), (2, 1));
        assert_eq!(
            lib.get(&FileKey::Name("b".into())).unwrap().meta.id,
            id_of(&changed)
        );
        let (_, report) = cached_open(dir);
        assert_eq!((report.hashed, report.cached, report.files), (0, 3, 3));

        // Garbage in the cache: ignored, everything hashed, and a good cache written again.
        fs::write(dir.join(hash_cache::CACHE_FILE), b"not a cache").unwrap();
        let (_, report) = cached_open(dir);
        assert_eq!((report.hashed, report.cached), (3, 0));
        let (_, report) = cached_open(dir);
        assert_eq!((report.hashed, report.cached), (0, 3));
    }

    #[test]
    fn a_file_hashed_right_after_a_write_is_not_trusted_to_the_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("fresh"), data(3000, 1)).unwrap();
        fs::write(dir.join("old"), data(3000, 2)).unwrap();
        age(&dir.join("old"));
        // The clock reads 50 ms after the fresh file's write, however long the machine
        // took to get here: within the granularity of any file system's timestamps.
        let written = fs::metadata(dir.join("fresh")).unwrap().modified().unwrap();
        let clock = ManualClock::at(written + Duration::from_millis(50));
        let open = || {
            let options = OpenOptions {
                chunk_size: 1024,
                hash_cache: true,
                progress: None,
            };
            Library::open_with_clock(dir, &options, Arc::new(clock.clone())).unwrap()
        };
        let (lib, report) = open();
        assert_eq!(report.hashed, 2);
        // In memory too: the next rescan reads it again (same content: no change).
        let rescan = lib.rescan().unwrap();
        assert_eq!((rescan.hashed, rescan.cached), (1, 1));
        assert!(rescan.change.is_empty());
        drop(lib);
        // Only the old file went to the cache.
        let (_, report) = open();
        assert_eq!((report.hashed, report.cached), (1, 1));

        // Once the modification time has surely ticked (2 s even on a coarse file system),
        // hashing the fresh file once more proves it: kept in memory and in the cache.
        clock.advance(Duration::from_secs(3));
        let (lib, report) = open();
        assert_eq!((report.hashed, report.cached), (1, 1));
        let rescan = lib.rescan().unwrap();
        assert_eq!((rescan.hashed, rescan.cached), (0, 2));
        drop(lib);
        let (_, report) = open();
        assert_eq!((report.hashed, report.cached), (0, 2));
    }

    #[test]
    fn a_hash_cache_of_an_older_shoal_is_refused_and_the_folder_hashed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        for (name, seed) in [("a", 1), ("b", 2)] {
            fs::write(dir.join(name), data(3000, seed)).unwrap();
            age(&dir.join(name));
        }
        cached_open(dir);
        let cache = dir.join(hash_cache::CACHE_FILE);
        let entries = hash_cache::decode(&fs::read(&cache).unwrap()).unwrap();
        assert_eq!(entries.len(), 2);
        // The same entries as version 1 wrote them: not read, every file hashed, and the
        // cache written again in the current version.
        fs::write(&cache, hash_cache::version_1_cache(&entries)).unwrap();
        let (_, report) = cached_open(dir);
        assert_eq!((report.hashed, report.cached), (2, 0));
        assert_eq!(
            hash_cache::decode(&fs::read(&cache).unwrap()).unwrap(),
            entries
        );
        let (_, report) = cached_open(dir);
        assert_eq!((report.hashed, report.cached), (0, 2));
    }

    #[test]
    fn without_the_cache_nothing_is_written_into_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a"), data(3000, 1)).unwrap();
        age(&tmp.path().join("a"));
        let lib = Library::open(tmp.path(), 1024).unwrap();
        fs::write(tmp.path().join("b"), data(3000, 2)).unwrap();
        lib.rescan().unwrap();
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn progress_counts_the_work_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("small"), data(1000, 1)).unwrap();
        fs::write(dir.join("large"), data(300_000, 2)).unwrap();
        for name in ["small", "large"] {
            age(&dir.join(name));
        }
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |p: &ScanProgress<'_>| {
            seen.borrow_mut().push((
                p.files_done,
                p.files_total,
                p.bytes_done,
                p.bytes_total,
                p.cached,
            ));
        };
        let options = OpenOptions {
            chunk_size: 16384,
            hash_cache: true,
            progress: Some(&record),
        };
        Library::open_with(dir, &options).unwrap();
        let seen = seen.take();
        assert_eq!(seen.first(), Some(&(0, 2, 0, 301_000, 0)));
        assert_eq!(seen.last(), Some(&(2, 2, 301_000, 301_000, 0)));
        // Inside the large file too, not only between files.
        assert!(seen.len() > 10, "{}", seen.len());
        assert!(seen.windows(2).all(|w| w[0].2 <= w[1].2));

        // The second time the cache covers everything: nothing to hash.
        let seen = std::cell::RefCell::new(Vec::new());
        let record = |p: &ScanProgress<'_>| seen.borrow_mut().push((p.files_total, p.cached));
        let options = OpenOptions {
            progress: Some(&record),
            ..options
        };
        Library::open_with(dir, &options).unwrap();
        assert_eq!(seen.take(), [(0, 2)]);
    }

    #[test]
    fn rescan_reports_changes_since_the_last_report() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("keep"), data(5000, 1)).unwrap();
        fs::write(dir.join("edit"), data(5000, 2)).unwrap();
        fs::write(dir.join("drop"), data(5000, 3)).unwrap();
        let lib = Library::open(dir, 1024).unwrap();
        let before = lib.files();
        assert!(lib.rescan().unwrap().change.is_empty());

        fs::write(dir.join("edit"), data(5000, 4)).unwrap();
        fs::remove_file(dir.join("drop")).unwrap();
        fs::write(dir.join("new"), data(10, 5)).unwrap();
        // Touched, same content: not a change.
        File::options()
            .write(true)
            .open(dir.join("keep"))
            .unwrap()
            .set_modified(SystemTime::now())
            .unwrap();
        let change = lib.rescan().unwrap().change;
        let names = |m: &[FileMeta]| m.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&change.added), ["new"]);
        assert_eq!(names(&change.removed), ["drop"]);
        assert_eq!(change.changed.len(), 1);
        assert_eq!(change.changed[0].old, before[1]);
        assert_eq!(change.changed[0].new, lib.files()[0]);
        assert!(lib.rescan().unwrap().change.is_empty());

        // An insert (a finished download) is reported by the next rescan, without a re-hash.
        for name in ["keep", "edit", "new"] {
            age(&dir.join(name));
        }
        assert!(lib.rescan().unwrap().change.is_empty());
        let path = dir.join("got");
        fs::write(&path, data(3000, 6)).unwrap();
        age(&path);
        let file = hash_file(&path, "got", 1024, &mut Vec::new()).unwrap();
        lib.insert(file.clone());
        let report = lib.rescan_skipping(&|_| false).unwrap();
        assert_eq!(report.change.added, [file.meta]);
        assert!(report.change.changed.is_empty() && report.change.removed.is_empty());
        assert_eq!(report.hashed, 0);
    }

    #[test]
    fn busy_names_are_left_as_they_were() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fs::write(dir.join("growing"), data(5000, 1)).unwrap();
        let lib = Library::open(dir, 1024).unwrap();
        let old = lib.files();
        fs::write(dir.join("growing"), data(9000, 1)).unwrap();
        fs::write(dir.join("partial"), data(100, 2)).unwrap();
        let busy = |name: &str| name == "growing" || name == "partial";
        let report = lib.rescan_skipping(&busy).unwrap();
        assert_eq!((report.busy, report.hashed), (2, 0));
        assert!(report.change.is_empty());
        assert_eq!(lib.files(), old);
        let report = lib.rescan().unwrap();
        assert_eq!(report.change.added.len(), 1);
        assert_eq!(report.change.changed.len(), 1);
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
