//! Folder watching: a running peer follows its folder as files come, change and go.
//!
//! The operating system's watcher (inotify on Linux, via the `notify` crate) says *that*
//! something happened to a name; the [`Library`] rescan then says *what*, comparing stamps,
//! so the watcher never needs to trust event details, and a missed or merged event costs
//! nothing but latency. Events are coalesced: a rescan runs once the folder has been quiet
//! for [`WatchConfig::debounce`], and at most [`WatchConfig::max_delay`] after the first
//! event, so a burst of changes is one rescan and a folder that never quiets still gets one.
//!
//! Files still being written are left alone: a name with data written and not yet closed is
//! skipped by rescans until it is closed or [`WatchConfig::settle`] passes without writes, so
//! a large copy into the folder is hashed once, when it is complete, not every rescan.
//! Hidden names (the downloader's `.NAME.shoal-part` files, the hash cache) are ignored
//! entirely, and so are opens and reads (the rescan's own reads would otherwise trigger
//! rescans). Files the downloader adds appear by hard link, which the rescan recognises by
//! stamp as the entry [`Library::insert`] made, so they are reported without re-hashing.
//!
//! A periodic full rescan ([`WatchConfig::rescan_interval`]) catches whatever the watcher
//! missed (an event queue overflow, a file system without change events).
//!
//! Memory stays bounded however fast the folder churns and however long a rescan takes
//! (hashing a huge file): events are not queued but folded, as they arrive, into one record
//! (the first and last event time, and the names being written, one entry per name). Past
//! `MAX_TRACKED` (4096) names being written, the record forgets them and asks for a full rescan
//! at once, as after a kernel queue overflow.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};

use crate::{Library, LibraryChange, PeerError};

/// Most names tracked as being written at once (about 100 bytes each); past it the watcher
/// forgets them and rescans the whole folder at once.
const MAX_TRACKED: usize = 4096;

fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // `Pending` holds no invariant a panic could break halfway.
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Timing of a [`FolderWatcher`].
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Quiet time after the last event before a rescan (default 300 ms).
    pub debounce: Duration,
    /// Longest wait between the first event and its rescan, however busy the folder
    /// (default 2 s).
    pub max_delay: Duration,
    /// A file written to and not closed is considered still being written for this long
    /// after its last write (default 1 s).
    pub settle: Duration,
    /// Full rescan this often even without events (default 60 s).
    pub rescan_interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            debounce: Duration::from_millis(300),
            max_delay: Duration::from_secs(2),
            settle: Duration::from_secs(1),
            rescan_interval: Duration::from_secs(60),
        }
    }
}

/// Watches a [`Library`]'s folder and rescans it when it changes, calling `on_change` with
/// what changed (never with an empty change). Stops when dropped (or [`FolderWatcher::stop`]).
///
/// It also rescans once right after starting, so changes between [`Library::open`] and the
/// start are not lost. If the operating system cannot watch the folder, it says so in a
/// warning and relies on the periodic rescan alone.
#[derive(Debug)]
pub struct FolderWatcher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    hashed: Arc<AtomicU64>,
}

impl FolderWatcher {
    /// Starts watching `library`'s folder; `on_change` runs on the watcher's thread.
    pub fn start(
        library: Library,
        config: WatchConfig,
        on_change: impl Fn(LibraryChange) + Send + 'static,
    ) -> Result<FolderWatcher, PeerError> {
        // Events name absolute paths; watching (and comparing against) the absolute folder
        // keeps a relative `--dir` working.
        let dir = std::path::absolute(library.dir()).map_err(|e| PeerError::Watch {
            dir: library.dir().to_path_buf(),
            reason: e.to_string(),
        })?;
        let pending = Arc::new(Mutex::new(Pending::new(&dir, &config, Instant::now())));
        // Events are folded into `pending` as they come; the channel only wakes the thread,
        // and one wake-up waiting is enough.
        let (wake_tx, events) = crossbeam_channel::bounded(1);
        let inbox = Arc::clone(&pending);
        let watcher = notify::recommended_watcher(move |event| {
            lock(&inbox).note(event, Instant::now());
            let _ = wake_tx.try_send(());
        })
        .and_then(|mut watcher| {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            Ok(watcher)
        });
        // Out of inotify watches (`fs.inotify.max_user_watches`) or an unsupported file
        // system: a peer that serves and rescans periodically beats one that does not start.
        let watcher = match watcher {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                log::warn!(
                    "cannot watch {} for changes ({e}); changes are picked up by the periodic \
                     rescan only, every {} s",
                    dir.display(),
                    config.rescan_interval.as_secs()
                );
                None
            }
        };
        // The failed watcher took the sender with it; wait on a channel that never fires.
        let events = if watcher.is_some() {
            events
        } else {
            crossbeam_channel::never()
        };
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let hashed = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&hashed);
        let thread = thread::Builder::new()
            .name("folder-watch".into())
            .spawn(move || {
                // Owned here so the OS watch ends with the thread.
                let _watcher = watcher;
                run(&library, &pending, &events, &stopped, &counter, &on_change);
            })
            .map_err(|source| PeerError::Thread {
                what: "folder watcher",
                source,
            })?;
        Ok(FolderWatcher {
            stop: Some(stop),
            thread: Some(thread),
            hashed,
        })
    }

    /// Files the watcher's rescans have read and hashed so far (files the downloader
    /// added, and unchanged files, are not read).
    pub fn files_hashed(&self) -> u64 {
        self.hashed.load(Ordering::Relaxed)
    }

    /// Stops watching and waits for a rescan in progress (and its `on_change`) to finish.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        // Closing the channel is the stop signal.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::warn!("the folder watcher stopped with a panic");
        }
    }
}

impl Drop for FolderWatcher {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(
    library: &Library,
    pending: &Mutex<Pending>,
    wake: &Receiver<()>,
    stopped: &Receiver<()>,
    hashed: &AtomicU64,
    on_change: &dyn Fn(LibraryChange),
) {
    loop {
        let now = Instant::now();
        let due = lock(pending).due();
        if due > now {
            select! {
                recv(wake) -> woke => if woke.is_err() {
                    // The OS watcher is gone: the watcher is stopping.
                    return;
                },
                recv(stopped) -> _ => return,
                default(due - now) => {}
            }
            continue;
        }
        // A copy: events go on being noted while the rescan runs.
        let busy = lock(pending).begin_rescan(Instant::now());
        match library.rescan_skipping(&|name| busy.contains_key(name)) {
            Ok(report) => {
                hashed.fetch_add(report.hashed as u64, Ordering::Relaxed);
                log::debug!(
                    "rescanned {}: {} files, {} hashed, {} still being written, {} ms",
                    library.dir().display(),
                    report.files,
                    report.hashed,
                    report.busy,
                    report.elapsed.as_millis()
                );
                if !report.change.is_empty() {
                    on_change(report.change);
                }
            }
            Err(e) => log::warn!("rescan failed: {e}"),
        }
        lock(pending).rescanned(Instant::now());
    }
}

/// The watcher's bookkeeping, apart from the thread and the clock so it can be tested with
/// made-up events and times.
struct Pending {
    dir: PathBuf,
    debounce: Duration,
    max_delay: Duration,
    settle: Duration,
    rescan_interval: Duration,
    /// The first and the last event since the last rescan.
    dirty: Option<(Instant, Instant)>,
    /// Names written to and not closed since, with the time of the last write.
    writing: HashMap<String, Instant>,
    /// When the last rescan finished (or the watcher started).
    last_rescan: Instant,
    /// A rescan is due now (at start, and after a watcher error).
    now: bool,
    /// A rescan is running: what is noted meanwhile is kept for the next one.
    scanning: bool,
    /// `dirty` and `now` as noted since the running rescan began.
    dirty_during: Option<(Instant, Instant)>,
    now_during: bool,
}

impl Pending {
    fn new(dir: &Path, config: &WatchConfig, now: Instant) -> Self {
        Pending {
            dir: dir.to_path_buf(),
            debounce: config.debounce,
            max_delay: config.max_delay,
            settle: config.settle,
            rescan_interval: config.rescan_interval,
            dirty: None,
            writing: HashMap::new(),
            last_rescan: now,
            now: true,
            scanning: false,
            dirty_during: None,
            now_during: false,
        }
    }

    fn want_now(&mut self) {
        self.now = true;
        self.now_during |= self.scanning;
    }

    /// When the next rescan is due.
    fn due(&self) -> Instant {
        if self.now {
            return self.last_rescan;
        }
        let mut due = self.last_rescan + self.rescan_interval;
        if let Some((first, last)) = self.dirty {
            due = due.min((last + self.debounce).min(first + self.max_delay));
        }
        // A file written without a close (truncate, mmap, a writer that died) gets its
        // rescan once it has settled.
        if let Some(last_write) = self.writing.values().min() {
            due = due.min(*last_write + self.settle);
        }
        due
    }

    fn note(&mut self, event: notify::Result<notify::Event>, now: Instant) {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                log::warn!("folder watcher: {e}; rescanning");
                self.want_now();
                return;
            }
        };
        if event.need_rescan() {
            // The kernel's queue overflowed: events were lost, and so may closes have been.
            self.writing.clear();
            self.want_now();
            return;
        }
        #[derive(PartialEq)]
        enum What {
            Written,
            Closed,
            Gone,
            Other,
        }
        let what = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => What::Closed,
            // Opens and reads change nothing, and the rescan's own reads cause them.
            EventKind::Access(_) => return,
            EventKind::Modify(ModifyKind::Data(_)) => What::Written,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_)) => What::Gone,
            _ => What::Other,
        };
        for path in &event.paths {
            if *path == self.dir {
                // The folder itself was moved or deleted; the rescan reports it.
                self.touch(now);
                continue;
            }
            if path.parent() != Some(self.dir.as_path()) {
                continue;
            }
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // Part files, the hash cache: never shared, so never a reason to rescan.
            if name.starts_with('.') {
                continue;
            }
            match what {
                What::Written => {
                    if let Some(last) = self.writing.get_mut(name) {
                        *last = now;
                    } else {
                        if self.writing.len() >= MAX_TRACKED {
                            // Too many files being written to follow one by one: forget
                            // them and rescan everything, as after a lost event queue.
                            log::debug!(
                                "folder watcher: more than {MAX_TRACKED} files being written; \
                                 rescanning the whole folder"
                            );
                            self.writing.clear();
                            self.writing.shrink_to_fit();
                            self.want_now();
                        }
                        self.writing.insert(name.to_string(), now);
                    }
                }
                What::Closed | What::Gone => {
                    self.writing.remove(name);
                }
                What::Other => {}
            }
            self.touch(now);
        }
    }

    fn touch(&mut self, now: Instant) {
        let first = self.dirty.map_or(now, |(first, _)| first);
        self.dirty = Some((first, now));
        if self.scanning {
            let first = self.dirty_during.map_or(now, |(first, _)| first);
            self.dirty_during = Some((first, now));
        }
    }

    /// Forgets writes that have settled; returns (a copy of) the names still being
    /// written. Events noted from now until [`Pending::rescanned`] call for another rescan.
    fn begin_rescan(&mut self, now: Instant) -> HashMap<String, Instant> {
        let settle = self.settle;
        self.writing
            .retain(|_, last| now.saturating_duration_since(*last) < settle);
        self.scanning = true;
        self.dirty_during = None;
        self.now_during = false;
        self.writing.clone()
    }

    fn rescanned(&mut self, now: Instant) {
        self.dirty = self.dirty_during.take();
        self.now = std::mem::take(&mut self.now_during);
        self.scanning = false;
        self.last_rescan = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, RemoveKind};

    const MS: Duration = Duration::from_millis(1);

    fn event(kind: EventKind, path: &Path) -> notify::Result<notify::Event> {
        Ok(notify::Event::new(kind).add_path(path.to_path_buf()))
    }

    fn pending(t0: Instant) -> Pending {
        let mut p = Pending::new(Path::new("/shared"), &WatchConfig::default(), t0);
        p.rescanned(t0);
        p
    }

    #[test]
    fn events_are_coalesced_but_not_forever() {
        let t0 = Instant::now();
        let mut p = pending(t0);
        assert_eq!(p.due(), t0 + Duration::from_secs(60));
        let file = Path::new("/shared/a.txt");
        p.note(event(EventKind::Create(CreateKind::File), file), t0);
        assert_eq!(p.due(), t0 + 300 * MS);
        p.note(
            event(EventKind::Modify(ModifyKind::Any), file),
            t0 + 200 * MS,
        );
        assert_eq!(p.due(), t0 + 500 * MS);
        // Events every 200 ms: the rescan still comes 2 s after the first.
        for i in 2..12 {
            p.note(
                event(EventKind::Modify(ModifyKind::Any), file),
                t0 + i * 200 * MS,
            );
        }
        assert_eq!(p.due(), t0 + 2000 * MS);
        p.rescanned(t0 + 2000 * MS);
        assert_eq!(p.due(), t0 + 62000 * MS);
    }

    #[test]
    fn hidden_names_reads_and_other_folders_are_ignored() {
        let t0 = Instant::now();
        let mut p = pending(t0);
        let quiet = p.due();
        for (kind, path) in [
            (
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                "/shared/.song.ogg.shoal-part",
            ),
            (EventKind::Create(CreateKind::File), "/shared/.shoal-cache"),
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/shared/a",
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/shared/a",
            ),
            (EventKind::Create(CreateKind::File), "/elsewhere/a"),
            (EventKind::Create(CreateKind::File), "/shared/sub/a"),
        ] {
            p.note(event(kind, Path::new(path)), t0);
        }
        assert_eq!(p.due(), quiet);
        assert!(p.writing.is_empty());
    }

    #[test]
    fn a_file_being_written_is_busy_until_closed_or_settled() {
        let t0 = Instant::now();
        let mut p = pending(t0);
        let file = Path::new("/shared/big.iso");
        let write = || event(EventKind::Modify(ModifyKind::Data(DataChange::Any)), file);
        p.note(write(), t0);
        p.note(write(), t0 + 100 * MS);
        assert!(p.begin_rescan(t0 + 400 * MS).contains_key("big.iso"));
        p.rescanned(t0 + 400 * MS);
        // Not closed: due once the last write is a settle period old, then no longer busy.
        assert_eq!(p.due(), t0 + 1100 * MS);
        assert!(p.begin_rescan(t0 + 1100 * MS).is_empty());

        // Closed: not busy, whenever the rescan comes.
        p.note(write(), t0 + 2000 * MS);
        p.note(
            event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                file,
            ),
            t0 + 2001 * MS,
        );
        assert!(p.begin_rescan(t0 + 2100 * MS).is_empty());

        // Deleted while being written: not busy either.
        p.note(write(), t0 + 3000 * MS);
        p.note(
            event(EventKind::Remove(RemoveKind::File), file),
            t0 + 3001 * MS,
        );
        assert!(p.begin_rescan(t0 + 3002 * MS).is_empty());
    }

    /// Issue 9, the folder watcher's queue: while a rescan runs (hashing a huge file), a
    /// folder that churns through names costs at most `MAX_TRACKED` entries: events for one
    /// name fold into one, and past the bound the watcher forgets the names and rescans
    /// everything at once.
    #[test]
    fn a_churning_folder_is_followed_in_bounded_memory() {
        let t0 = Instant::now();
        let mut p = pending(t0);
        let write = |name: &str| {
            event(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                &Path::new("/shared").join(name),
            )
        };
        // One name written a hundred thousand times is one entry.
        for i in 0..100_000u32 {
            p.note(write("busy.log"), t0 + Duration::from_micros(u64::from(i)));
        }
        assert_eq!(p.writing.len(), 1);
        assert!(p.due() > t0);
        // A hundred thousand names: never more than the bound, and a full rescan is due.
        for i in 0..100_000u32 {
            p.note(write(&format!("f{i}")), t0 + Duration::from_millis(200));
            assert!(
                p.writing.len() <= 10_000,
                "{} names tracked",
                p.writing.len()
            );
        }
        assert!(p.due() <= t0 + Duration::from_millis(200));
    }

    /// What happens while a rescan runs is not forgotten when it ends.
    #[test]
    fn events_during_a_rescan_call_for_another() {
        let t0 = Instant::now();
        let mut p = pending(t0);
        let file = Path::new("/shared/a.txt");
        p.note(event(EventKind::Create(CreateKind::File), file), t0);
        let _ = p.begin_rescan(t0 + 300 * MS);
        p.note(
            event(EventKind::Create(CreateKind::File), file),
            t0 + 400 * MS,
        );
        p.rescanned(t0 + 500 * MS);
        assert_eq!(p.due(), t0 + 700 * MS);
        let _ = p.begin_rescan(t0 + 700 * MS);
        p.rescanned(t0 + 800 * MS);
        assert_eq!(p.due(), t0 + 60_800 * MS);
    }

    #[test]
    fn a_lost_event_queue_means_a_rescan_now() {
        let t0 = Instant::now();
        let mut p = pending(t0);
        p.note(
            event(
                EventKind::Modify(ModifyKind::Data(DataChange::Any)),
                Path::new("/shared/x"),
            ),
            t0,
        );
        p.note(
            Ok(notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)),
            t0 + MS,
        );
        assert!(p.due() <= t0);
        assert!(p.writing.is_empty());
    }
}
