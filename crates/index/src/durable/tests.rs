use super::files::LOCK_FILE;
use super::format::{
    CHECK_LEN, FileKind, FormatError, LEN_LEN, LOG_RECORD_TAGS, Version, decode_header,
    encode_header,
};
use super::*;
use crate::ManualClock;
use std::io::{self, Write};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A fresh folder under the system temp dir, removed when dropped.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> TestDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("shoal-durable-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        TestDir(dir)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn options(clock: &ManualClock) -> DurableOptions {
    DurableOptions {
        lease: Duration::from_secs(10),
        clock: Arc::new(clock.clone()),
        seed: Some(1),
        ..DurableOptions::default()
    }
}

/// Held (shared) by every store opening in these tests and while a disk is filled, and
/// exclusively while a test runs `mount` or `umount`: a child process holds copies of
/// this process's open files from its fork until its exec, so for that moment also the
/// lock of a data folder another test just closed (its reopening would find the folder
/// in use), or a filler file another test is deleting (its space would not return).
static SPAWNING: RwLock<()> = RwLock::new(());

fn open_store(dir: &Path, options: DurableOptions) -> Result<(DurableStore, Recovery), IndexError> {
    let _no_spawn = SPAWNING.read().unwrap_or_else(PoisonError::into_inner);
    DurableStore::open_with_report(dir, options)
}

/// Runs `command` with no store being opened meanwhile (see [`SPAWNING`]).
fn run(command: &mut std::process::Command) -> io::Result<std::process::ExitStatus> {
    let _spawning = SPAWNING.write().unwrap_or_else(PoisonError::into_inner);
    command.status()
}

fn open(dir: &TestDir, clock: &ManualClock) -> (DurableStore, Recovery) {
    open_store(&dir.0, options(clock)).unwrap()
}

fn addr(s: &str) -> PeerAddr {
    PeerAddr::new(s).unwrap()
}

/// A gate commits pass right after taking their batches, before writing them.
#[derive(Default)]
pub(super) struct Hold {
    /// (closed, commits that reached the gate)
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Hold {
    pub(super) fn pass(&self) {
        let mut state = lock(&self.state);
        state.1 += 1;
        self.changed.notify_all();
        while state.0 {
            state = self.changed.wait(state).unwrap();
        }
    }

    /// Closes the gate and counts arrivals from zero.
    fn close(&self) {
        *lock(&self.state) = (true, 0);
    }

    fn open(&self) {
        lock(&self.state).0 = false;
        self.changed.notify_all();
    }

    /// Waits until `n` commits reached the gate since it was closed.
    fn wait_arrived(&self, n: usize) {
        let mut state = lock(&self.state);
        while state.1 < n {
            state = self.changed.wait(state).unwrap();
        }
    }
}

/// Copies the data folder, as a crash at this moment would leave it.
fn crash_copy(from: &Path) -> TestDir {
    let to = TestDir::new();
    fs::create_dir_all(&to.0).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.0.join(entry.file_name())).unwrap();
    }
    to
}

#[derive(Clone, Copy, Debug)]
enum Repeat {
    Register,
    Unregister,
    Renew,
}

#[test]
fn an_answer_that_rests_on_an_unwritten_record_waits_for_it() {
    for repeat in [Repeat::Register, Repeat::Unregister, Repeat::Renew] {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        let store = Arc::new(open(&dir, &clock).0);
        let (holder, file) = (addr("a:1"), meta(1));
        if let Repeat::Unregister = repeat {
            assert_eq!(
                store
                    .register(&holder, std::slice::from_ref(&file))
                    .unwrap(),
                1
            );
        }
        store.shared.hold.close();
        // The first change's record is taken by its commit and held before the write.
        let first = {
            let (store, holder, file) = (Arc::clone(&store), holder.clone(), file.clone());
            thread::spawn(move || match repeat {
                Repeat::Unregister => store.unregister(&holder, &[file.id]).unwrap(),
                _ => store.register(&holder, &[file]).unwrap(),
            })
        };
        store.shared.hold.wait_arrived(1);
        // The same change again (a renewal for `Renew`): its answer rests on the first
        // one's record. A crash at the moment it is answered leaves the copy.
        let answered = Arc::new(AtomicBool::new(false));
        let second = {
            let (store, dir, answered) = (Arc::clone(&store), dir.0.clone(), Arc::clone(&answered));
            let (holder, file) = (holder.clone(), file.clone());
            thread::spawn(move || {
                let answer = match repeat {
                    Repeat::Register => store.register(&holder, &[file]).unwrap(),
                    Repeat::Unregister => store.unregister(&holder, &[file.id]).unwrap(),
                    Repeat::Renew => store.renew(&holder).unwrap().unwrap_or(0),
                };
                let copy = crash_copy(&dir);
                answered.store(true, Ordering::SeqCst);
                (answer, copy)
            })
        };
        // Until the second request was answered or waits for a commit (bounded).
        let deadline = Instant::now() + Duration::from_secs(30);
        while !answered.load(Ordering::SeqCst) && lock(&store.shared.queue).waiters.len() < 2 {
            assert!(
                Instant::now() < deadline,
                "{repeat:?}: the second request hangs"
            );
            thread::yield_now();
        }
        store.shared.hold.open();
        assert_eq!(first.join().unwrap(), 1);
        let (answer, copy) = second.join().unwrap();
        let expected = match repeat {
            Repeat::Register => 0,
            Repeat::Unregister => 0,
            Repeat::Renew => 1,
        };
        assert_eq!(answer, expected, "{repeat:?}");
        let (crashed, _) = open(&copy, &clock);
        let listed = match repeat {
            Repeat::Unregister => vec![],
            _ => vec![(file.name.clone(), 1)],
        };
        assert_eq!(listing(&crashed), listed, "{repeat:?}: lost on a crash");
    }
}

#[test]
fn a_second_store_on_an_open_folder_is_refused_until_the_first_closes() {
    let dir = TestDir::new();
    let clock = ManualClock::new();
    let (first, _) = open(&dir, &clock);
    match open_store(&dir.0, options(&clock)).map(|(store, _)| store) {
        Err(IndexError::DataInUse { path }) => assert_eq!(path, dir.0.join(LOCK_FILE)),
        Err(other) => panic!("expected DataInUse, got {other}"),
        Ok(_) => panic!("two stores opened the same folder"),
    }
    drop(first);
    let (_again, recovery) = open(&dir, &clock);
    assert_eq!(recovery.registrations, 0);
}

fn meta(n: u32) -> FileMeta {
    FileMeta {
        name: format!("file-{n}.bin"),
        size: u64::from(n),
        chunk_size: 1024,
        id: FileId(*blake3::hash(&n.to_le_bytes()).as_bytes()),
    }
}

/// Every (name, holders) the store lists, sorted: what a user would compare.
fn listing(store: &DurableStore) -> Vec<(String, u32)> {
    store
        .search("", usize::MAX)
        .unwrap()
        .into_iter()
        .map(|hit| (hit.file.name, hit.holders))
        .collect()
}

/// Byte offsets of the records in a log (after its header).
fn record_offsets(path: &Path) -> Vec<u64> {
    let bytes = fs::read(path).unwrap();
    let mut offsets = Vec::new();
    let mut at = HEADER_LEN as usize;
    while at < bytes.len() {
        offsets.push(at as u64);
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        at += LEN_LEN + len + CHECK_LEN;
    }
    offsets
}

/// Ten stores of one file each by one holder: ten records.
fn ten_records(dir: &TestDir, clock: &ManualClock) -> Vec<(String, u32)> {
    let (store, recovery) = open(dir, clock);
    assert_eq!(
        recovery,
        Recovery {
            elapsed: recovery.elapsed,
            ..Recovery::default()
        }
    );
    for n in 0..10 {
        assert_eq!(store.register(&addr("a:1"), &[meta(n)]).unwrap(), 1);
    }
    let before = listing(&store);
    assert_eq!(before.len(), 10);
    before
}

#[test]
fn changes_survive_a_reopen() {
    let dir = TestDir::new();
    let clock = ManualClock::new();
    {
        let (store, _) = open(&dir, &clock);
        let files: Vec<FileMeta> = (0..5).map(meta).collect();
        assert_eq!(store.register(&addr("a:1"), &files).unwrap(), 5);
        assert_eq!(store.register(&addr("b:1"), &files[..2]).unwrap(), 2);
        // Nothing new: renews the lease, writes nothing.
        assert_eq!(store.register(&addr("b:1"), &files[..2]).unwrap(), 0);
        assert_eq!(store.unregister(&addr("a:1"), &[files[4].id]).unwrap(), 1);
        assert_eq!(store.unregister(&addr("c:1"), &[]).unwrap(), 0);
    }
    let (store, recovery) = open(&dir, &clock);
    assert_eq!((recovery.records, recovery.cut_bytes), (3, 0));
    assert_eq!((recovery.registrations, recovery.holders), (6, 2));
    let holders = store.holders(&FileKey::Name("file-0.bin".into())).unwrap();
    assert_eq!(holders.unwrap().1, vec![addr("a:1"), addr("b:1")]);
    assert_eq!(
        store.holders(&FileKey::Name("file-4.bin".into())).unwrap(),
        None
    );
}

#[test]
fn a_torn_tail_is_cut_reported_and_writing_goes_on() {
    let dir = TestDir::new();
    let clock = ManualClock::new();
    let before = ten_records(&dir, &clock);
    let log = log_path(&dir.0, 1);
    let len = fs::metadata(&log).unwrap().len();
    let last = *record_offsets(&log).last().unwrap();
    // A crash in the middle of writing the last record.
    let torn = last + 7;
    OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(torn)
        .unwrap();
    let (store, recovery) = open(&dir, &clock);
    assert_eq!((recovery.records, recovery.cut_bytes), (9, torn - last));
    assert_eq!(listing(&store), before[..9]);
    assert_eq!(fs::metadata(&log).unwrap().len(), last);
    assert!(len > torn);
    // A crash's torn write is cut in place: nothing to keep.
    assert!(recovery.kept.is_empty());
    assert_eq!(names(&dir.0), ["LOCK", "log.1"]);
    // New writes land after the cut and survive.
    assert_eq!(store.register(&addr("b:1"), &[meta(99)]).unwrap(), 1);
    drop(store);
    let (store, recovery) = open(&dir, &clock);
    assert_eq!((recovery.records, recovery.cut_bytes), (10, 0));
    assert_eq!(listing(&store).len(), 10);
    assert!(listing(&store).contains(&("file-99.bin".into(), 1)));
}

/// Flips one bit of the byte at `at`.
fn flip(path: &Path, at: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[at as usize] ^= 0x20;
    fs::write(path, &bytes).unwrap();
}

/// The names in the data folder, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn damage_at_the_start_middle_or_end_loses_only_the_damaged_record() {
    // (record, byte in it): the first record's body, a middle one's body, a middle one's
    // length (it then claims more than the file holds), the last one's body.
    for (record, offset_in_record) in [(0usize, 9u64), (4, 9), (6, 1), (9, 9)] {
        let dir = TestDir::new();
        let clock = ManualClock::new();
        let before = ten_records(&dir, &clock);
        let log = log_path(&dir.0, 1);
        let offsets = record_offsets(&log);
        flip(&log, offsets[record] + offset_in_record);
        let damaged = fs::read(&log).unwrap();

        let (store, recovery) = open(&dir, &clock);
        let case = format!("record {record}, byte {offset_in_record}");
        assert_eq!(recovery.records, 9, "{case}");
        let mut expected = before.clone();
        expected.remove(record);
        assert_eq!(listing(&store), expected, "{case}");
        let size = offsets
            .get(record + 1)
            .copied()
            .unwrap_or(damaged.len() as u64)
            - offsets[record];
        assert_eq!(recovery.skipped_bytes + recovery.cut_bytes, size, "{case}");
        // Never destroyed: the damaged log is kept as it was, beside the repaired one.
        let kept = dir.0.join("log.1.damaged.1");
        assert_eq!(recovery.kept, vec![kept.clone()], "{case}");
        assert_eq!(fs::read(&kept).unwrap(), damaged, "{case}");
        // Writing goes on, and the repaired log reads clean.
        assert_eq!(store.register(&addr("b:1"), &[meta(99)]).unwrap(), 1);
        drop(store);
        let (store, recovery) = open(&dir, &clock);
        assert_eq!(
            (recovery.records, recovery.cut_bytes, recovery.skipped_bytes),
            (10, 0, 0),
            "{case}"
        );
        assert!(recovery.kept.is_empty(), "{case}");
        assert_eq!(listing(&store).len(), 10, "{case}");
    }
}

#[test]
fn a_zeroed_page_in_the_middle_loses_only_the_records_it_covers() {
    let dir = TestDir::new();
    let clock = ManualClock::new();
    let (store, _) = open(&dir, &clock);
    for n in 0..200 {
        store.register(&addr("a:1"), &[meta(n)]).unwrap();
    }
    drop(store);
    let log = log_path(&dir.0, 1);
    let mut bytes = fs::read(&log).unwrap();
    let len = bytes.len() as u64;
    assert!(len > 3 * 4096, "{len}");
    bytes[4096..8192].fill(0);
    fs::write(&log, &bytes).unwrap();
    let offsets = record_offsets_until(&log, 4096);
    // Records that lie wholly outside the page survive.
    let mut ends: Vec<u64> = offsets.iter().skip(1).copied().collect();
    ends.push(len);
    let survivors: Vec<String> = (0..200u32)
        .zip(offsets.iter().zip(&ends))
        .filter(|&(_, (&start, &end))| end <= 4096 || start >= 8192)
        .map(|(n, _)| meta(n).name)
        .collect();
    assert!(survivors.len() > 100 && survivors.len() < 200);

    let (store, recovery) = open(&dir, &clock);
    assert_eq!(recovery.records, survivors.len() as u64);
    let mut listed: Vec<String> = listing(&store).into_iter().map(|(name, _)| name).collect();
    let mut survivors = survivors;
    listed.sort();
    survivors.sort();
    assert_eq!(listed, survivors);
    assert_eq!(recovery.cut_bytes, 0);
    assert_eq!(recovery.kept.len(), 1);
    assert_eq!(fs::read(&recovery.kept[0]).unwrap(), bytes);
}

/// Record offsets of a log of `Register { a:1, [meta(n)] }` for n = 0, 1, ...: from the
/// lengths on disk before `damage_from`, from re-encoding the records after it.
fn record_offsets_until(path: &Path, damage_from: u64) -> Vec<u64> {
    let bytes = fs::read(path).unwrap();
    let mut offsets = Vec::new();
    let mut at = HEADER_LEN;
    let mut n = 0u32;
    while (at as usize) < bytes.len() {
        offsets.push(at);
        let mut record = Vec::new();
        encode_record(
            &LogRecord::Register {
                holder: addr("a:1"),
                files: vec![meta(n)],
            },
            &mut record,
        )
        .unwrap();
        if at + 4 <= damage_from {
            let len = u32::from_le_bytes(bytes[at as usize..at as usize + 4].try_into().unwrap());
            assert_eq!(u64::from(len) + 12, record.len() as u64);
        }
        at += record.len() as u64;
        n += 1;
    }
    offsets
}

#[test]
fn a_log_without_the_snapshot_it_continues_is_refused_untouched() {
    let dir = TestDir::new();
    let clock = ManualClock::new();
    {
        let (store, _) = open(&dir, &clock);
        let files: Vec<FileMeta> = (0..5).map(meta).collect();
        store.register(&addr("a:1"), &files).unwrap();
        store.snapshot_now().unwrap();
        store.register(&addr("b:1"), &[meta(7)]).unwrap();
    }
    assert_eq!(names(&dir.0), ["LOCK", "log.2", "snapshot.2"]);
    let snapshot = fs::read(snapshot_path(&dir.0, 2)).unwrap();
    let log = fs::read(log_path(&dir.0, 2)).unwrap();
    let refused =
        |missing: PathBuf| match open_store(&dir.0, options(&clock)).map(|(store, _)| store) {
            Err(IndexError::DataMissing { path, reason }) => {
                assert_eq!(path, missing);
                assert!(reason.contains("aside"), "{reason}");
            }
            Err(other) => panic!("expected DataMissing, got {other}"),
            Ok(_) => panic!("started with a fraction of the registry"),
        };
    // The snapshot is gone: log.2 alone would list b's file and none of a's.
    fs::remove_file(snapshot_path(&dir.0, 2)).unwrap();
    refused(snapshot_path(&dir.0, 2));
    assert_eq!(names(&dir.0), ["LOCK", "log.2"]);
    assert_eq!(fs::read(log_path(&dir.0, 2)).unwrap(), log);
    // The log after the snapshot is gone.
    fs::write(snapshot_path(&dir.0, 2), &snapshot).unwrap();
    fs::remove_file(log_path(&dir.0, 2)).unwrap();
    refused(log_path(&dir.0, 2));
    assert_eq!(names(&dir.0), ["LOCK", "snapshot.2"]);
    // A log in between is gone.
    fs::write(log_path(&dir.0, 2), &log).unwrap();
    fs::write(
        log_path(&dir.0, 4),
        encode_header(FileKind::Log, Version::CURRENT, 4),
    )
    .unwrap();
    refused(log_path(&dir.0, 3));
    fs::remove_file(log_path(&dir.0, 4)).unwrap();
    let (store, recovery) = open(&dir, &clock);
    assert_eq!(recovery.registrations, 6);
    assert_eq!(listing(&store).len(), 6);
}

#[test]
fn a_torn_header_starts_the_log_afresh() {
    let dir = TestDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    fs::write(log_path(&dir.0, 1), b"SHOAL").unwrap();
    let clock = ManualClock::new();
    let (store, recovery) = open(&dir, &clock);
    assert_eq!((recovery.records, recovery.cut_bytes), (0, 5));
    store.register(&addr("a:1"), &[meta(1)]).unwrap();
    drop(store);
    assert_eq!(open(&dir, &clock).1.registrations, 1);
}

#[test]
fn foreign_files_and_other_versions_are_refused_not_cut() {
    let dir = TestDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    let path = log_path(&dir.0, 1);
    let mut newer = encode_header(FileKind::Log, Version::CURRENT, 1);
    newer[8..10].copy_from_slice(&7u16.to_le_bytes());
    fs::write(&path, newer).unwrap();
    let clock = ManualClock::new();
    match open_store(&dir.0, options(&clock)).map(|(store, _)| store) {
        Err(IndexError::DataFormat { path: at, reason }) => {
            assert_eq!(at, path);
            assert!(reason.starts_with("format version 7 "), "{reason}");
        }
        Err(other) => panic!("expected DataFormat, got {other}"),
        Ok(_) => panic!("a log of version 7 was opened"),
    }
    assert_eq!(
        decode_header(FileKind::Log, &newer),
        Err(FormatError::UnknownVersion { version: 7 })
    );
    assert_eq!(fs::read(&path).unwrap(), newer, "refused, not cut");
    fs::write(&path, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let err = open_store(&dir.0, options(&clock))
        .map(|(store, _)| store)
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not start with"), "{err}");
    // Refused, not cut: the file is untouched.
    assert_eq!(
        fs::read(&path).unwrap(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    );
}

#[test]
fn a_damaged_log_header_is_refused_and_left_as_it_is() {
    let dir = TestDir::new();
    let clock = ManualClock::new();
    ten_records(&dir, &clock);
    let log = log_path(&dir.0, 1);
    flip(&log, 3);
    let damaged = fs::read(&log).unwrap();
    match open_store(&dir.0, options(&clock)).map(|(store, _)| store) {
        Err(IndexError::DataFormat { path, reason }) => {
            assert_eq!(path, log);
            assert!(reason.contains("move it aside"), "{reason}");
        }
        Err(other) => panic!("expected DataFormat, got {other}"),
        Ok(_) => panic!("a damaged header was accepted"),
    }
    assert_eq!(fs::read(&log).unwrap(), damaged);
    assert_eq!(names(&dir.0), ["LOCK", "log.1"]);
}

#[test]
fn snapshots_compact_the_log_and_recovery_uses_them() {
    let dir = TestDir::new();
    let clock = ManualClock::new();
    {
        let (store, _) = open(&dir, &clock);
        for h in 0..50u32 {
            let files: Vec<FileMeta> = (h..h + 20).map(meta).collect();
            store.register(&addr(&format!("h{h}:1")), &files).unwrap();
        }
        store.unregister(&addr("h3:1"), &[]).unwrap();
        assert!(store.snapshot_now().unwrap() > HEADER_LEN);
        store.register(&addr("late:1"), &[meta(1000)]).unwrap();
        store.unregister(&addr("h4:1"), &[meta(4).id]).unwrap();
    }
    let files = DataFiles::scan(&dir.0).unwrap();
    assert_eq!((files.snapshots, files.logs), (vec![2], vec![2]));
    let (store, recovery) = open(&dir, &clock);
    assert_eq!(recovery.snapshot, Some(2));
    assert_eq!(recovery.records, 2);
    assert_eq!(recovery.registrations, 49 * 20 - 1 + 1);
    assert_eq!(recovery.holders, 50);
    let (_, holders) = store
        .holders(&FileKey::Name("file-10.bin".into()))
        .unwrap()
        .unwrap();
    // Files 0..69; file 10 is held by h0..h10 minus h3 (gone) and h4 (holds it still).
    assert_eq!(holders.len(), 10);
    // A second snapshot replaces the first.
    store.snapshot_now().unwrap();
    drop(store);
    let files = DataFiles::scan(&dir.0).unwrap();
    assert_eq!((files.snapshots, files.logs), (vec![3], vec![3]));
    assert_eq!(open(&dir, &clock).1.registrations, 49 * 20);
}

#[test]
fn compaction_runs_on_its_own() {
    let dir = TestDir::new();
    let clock = ManualClock::new();
    let options = DurableOptions {
        compact_after: 4 << 10,
        ..options(&clock)
    };
    let store = open_store(&dir.0, options.clone())
        .map(|(store, _)| store)
        .unwrap();
    for n in 0..200 {
        store.register(&addr("a:1"), &[meta(n)]).unwrap();
    }
    // Bounded wait for the background compactor.
    let deadline = Instant::now() + Duration::from_secs(30);
    while DataFiles::scan(&dir.0).unwrap().snapshots.is_empty() {
        assert!(Instant::now() < deadline, "no snapshot was taken");
        thread::yield_now();
    }
    drop(store);
    let (_, recovery) = open_store(&dir.0, options).unwrap();
    assert!(recovery.snapshot.is_some());
    assert_eq!(recovery.registrations, 200);
}

#[test]
fn concurrent_changes_and_snapshots_all_survive() {
    let dir = TestDir::new();
    let clock = ManualClock::new();
    let store = Arc::new(open(&dir, &clock).0);
    let threads: Vec<_> = (0..16u32)
        .map(|t| {
            let store = Arc::clone(&store);
            thread::spawn(move || {
                let holder = addr(&format!("t{t}:1"));
                for n in 0..40 {
                    assert_eq!(store.register(&holder, &[meta(t * 1000 + n)]).unwrap(), 1);
                }
            })
        })
        .collect();
    // Compactions (log switches) in the middle of it all.
    let mut snapshots = 0;
    loop {
        store.snapshot_now().unwrap();
        snapshots += 1;
        if snapshots == 20 || threads.iter().all(|t| t.is_finished()) {
            break;
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    drop(Arc::into_inner(store).unwrap());
    let (store, recovery) = open(&dir, &clock);
    assert_eq!(recovery.registrations, 640);
    let files = DataFiles::scan(&dir.0).unwrap();
    assert_eq!(files.snapshots, vec![snapshots + 1]);
    assert_eq!(files.logs, vec![snapshots + 1]);
    for t in 0..16u32 {
        for n in 0..40 {
            let key = FileKey::Id(meta(t * 1000 + n).id);
            let (_, holders) = store.holders(&key).unwrap().unwrap();
            assert_eq!(holders, vec![addr(&format!("t{t}:1"))]);
        }
    }
}

#[test]
fn leases_restart_fresh_and_expiries_are_durable() {
    let dir = TestDir::new();
    let clock = ManualClock::new();
    let key = FileKey::Name("file-1.bin".into());
    {
        let (store, _) = open(&dir, &clock);
        store.register(&addr("a:1"), &[meta(1), meta(2)]).unwrap();
        store.register(&addr("b:1"), &[meta(1)]).unwrap();
        clock.advance(Duration::from_secs(9));
    }
    // Restarted at 9 s: both get a fresh 10 s lease from the load.
    let (store, _) = open(&dir, &clock);
    clock.advance(Duration::from_secs(8));
    assert_eq!(store.renew(&addr("a:1")).unwrap(), Some(2));
    clock.advance(Duration::from_secs(2));
    // 19 s: `b` lapsed exactly now; `a` renewed at 17 s lives until 27 s.
    assert_eq!(store.holders(&key).unwrap().unwrap().1, vec![addr("a:1")]);
    assert_eq!(store.renew(&addr("b:1")).unwrap(), None);
    assert_eq!(store.sweep_expired().unwrap(), vec![(addr("b:1"), 1)]);
    clock.advance(Duration::from_secs(8));
    // 27 s: `a` lapsed too; registering again drops its old files, durably.
    assert_eq!(store.holders(&key).unwrap(), None);
    assert_eq!(store.register(&addr("a:1"), &[meta(3)]).unwrap(), 1);
    drop(store);
    let (store, recovery) = open(&dir, &clock);
    assert_eq!((recovery.registrations, recovery.holders), (1, 1));
    assert_eq!(listing(&store), vec![("file-3.bin".to_string(), 1)]);
}

/// A small tmpfs, mounted for one test and unmounted when dropped (whatever the test
/// did). `None`, with a message, unless running as root.
struct SmallDisk(TestDir);

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .map(str::to_owned);
        if euid.as_deref() != Some("0") {
            println!("skipped: mounting a small tmpfs needs root (CI runs as root)");
            return None;
        }
        let dir = TestDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        let mounted = run(std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir.0));
        match mounted {
            Ok(status) if status.success() => Some(SmallDisk(dir)),
            other => {
                println!("skipped: cannot mount a tmpfs ({other:?})");
                None
            }
        }
    }

    /// Writes a file until the disk is full.
    fn fill(&self, name: &str) {
        // No child process may hold a copy of this file's descriptor when the test
        // deletes it to free the space (see [`SPAWNING`]).
        let _no_spawn = SPAWNING.read().unwrap_or_else(PoisonError::into_inner);
        let mut file = File::create(self.0.0.join(name)).unwrap();
        let block = vec![0xA5u8; 64 << 10];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "{e}"); // ENOSPC
                    break;
                }
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = run(std::process::Command::new("umount").arg(&self.0.0));
    }
}

#[test]
fn a_full_disk_refuses_a_change_without_a_trace_and_recovers_when_space_returns() {
    let Some(disk) = SmallDisk::mount("1m") else {
        return;
    };
    let clock = ManualClock::new();
    let (store, _) = open(&disk.0, &clock);
    assert_eq!(store.register(&addr("a:1"), &[meta(0)]).unwrap(), 1);
    disk.fill("filler");
    // Some 200 files: more than is left in the log's last page, so the write fails
    // halfway, leaving part of a record at the end of the log.
    let many: Vec<FileMeta> = (1..200).map(meta).collect();
    let before = listing(&store);
    for attempt in 0..2 {
        match store.register(&addr("b:1"), &many) {
            Err(crate::StoreError::LogFailed(reason)) => {
                assert!(reason.contains("No space left"), "{reason}")
            }
            other => panic!("attempt {attempt}: expected LogFailed, got {other:?}"),
        }
        // Not a trace: the refused files are not listed, and nothing was counted.
        assert_eq!(listing(&store), before, "attempt {attempt}");
        assert_eq!(store.holders(&FileKey::Id(meta(5).id)).unwrap(), None);
        assert_eq!(store.registration_count(), 1);
        assert_eq!(store.renew(&addr("b:1")).unwrap(), None);
    }
    // Space returns: the store writes again by itself, without a restart.
    fs::remove_file(disk.0.0.join("filler")).unwrap();
    assert_eq!(store.register(&addr("b:1"), &many).unwrap(), 199);
    assert_eq!(store.register(&addr("c:1"), &[meta(0)]).unwrap(), 1);
    drop(store);
    // And the log has no half record in the middle.
    let (store, recovery) = open(&disk.0, &clock);
    assert_eq!(
        (
            recovery.cut_bytes,
            recovery.skipped_bytes,
            recovery.kept.len()
        ),
        (0, 0, 0)
    );
    assert_eq!(recovery.registrations, 201);
    assert_eq!(listing(&store).len(), 200);
    drop(store);
}

#[test]
fn a_log_switch_refused_by_a_full_disk_leaves_no_gap_in_the_logs() {
    let Some(disk) = SmallDisk::mount("1m") else {
        return;
    };
    let clock = ManualClock::new();
    let (store, _) = open(&disk.0, &clock);
    assert_eq!(store.register(&addr("a:1"), &[meta(0)]).unwrap(), 1);
    disk.fill("filler");
    // A snapshot cannot even start the next log (its header does not fit): refused.
    assert!(store.snapshot_now().is_err());
    assert_eq!(names(&disk.0.0), ["LOCK", "filler", "log.1"]);
    assert!(store.register(&addr("b:1"), &[meta(1)]).is_err());
    fs::remove_file(disk.0.0.join("filler")).unwrap();
    assert_eq!(store.register(&addr("b:1"), &[meta(1)]).unwrap(), 1);
    // The refused switch's generation is used, not skipped: log.2 follows log.1.
    store.snapshot_now().unwrap();
    assert_eq!(store.register(&addr("c:1"), &[meta(2)]).unwrap(), 1);
    drop(store);
    assert_eq!(names(&disk.0.0), ["LOCK", "log.2", "snapshot.2"]);
    let (store, recovery) = open(&disk.0, &clock);
    assert_eq!((recovery.snapshot, recovery.records), (Some(2), 1));
    assert_eq!(listing(&store).len(), 3);
    drop(store);
}

/// Until `n` requests wait for a commit (bounded).
fn wait_for_waiters(store: &DurableStore, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while lock(&store.shared.queue).waiters.len() < n {
        assert!(
            Instant::now() < deadline,
            "fewer than {n} requests are waiting"
        );
        thread::yield_now();
    }
}

#[test]
fn a_failed_write_refuses_and_undoes_every_change_not_on_disk() {
    let Some(disk) = SmallDisk::mount("1m") else {
        return;
    };
    let clock = ManualClock::new();
    let store = Arc::new(open(&disk.0, &clock).0);
    let register = |holder: &str, files: Vec<FileMeta>| {
        let (store, holder) = (Arc::clone(&store), addr(holder));
        thread::spawn(move || store.register(&holder, &files))
    };
    // `x` is being committed (held before its write); `a` (one file, which would fit)
    // and `b` (too many to fit) queue behind it and share the next round.
    store.shared.hold.close();
    let x = register("x:1", vec![meta(0)]);
    store.shared.hold.wait_arrived(1);
    let a = register("a:1", vec![meta(1)]);
    wait_for_waiters(&store, 2);
    let b = register("b:1", (2..200).map(meta).collect());
    wait_for_waiters(&store, 3);
    disk.fill("filler");
    store.shared.hold.open();
    assert_eq!(x.join().unwrap().unwrap(), 1);
    for (name, refused) in [("a", a), ("b", b)] {
        match refused.join().unwrap() {
            Err(crate::StoreError::LogFailed(_)) => {}
            other => panic!("{name}: expected LogFailed, got {other:?}"),
        }
    }
    // Neither a's file nor any of b's is listed; x's, on disk, is.
    assert_eq!(listing(&store), vec![("file-0.bin".to_string(), 1)]);
    assert_eq!(store.registration_count(), 1);
    fs::remove_file(disk.0.0.join("filler")).unwrap();
    assert_eq!(store.register(&addr("a:1"), &[meta(1)]).unwrap(), 1);
    drop(Arc::into_inner(store).unwrap());
    let (store, recovery) = open(&disk.0, &clock);
    assert_eq!((recovery.records, recovery.cut_bytes), (2, 0));
    assert_eq!(listing(&store).len(), 2);
    drop(store);
}

#[test]
fn damage_in_an_older_log_is_kept_aside_and_the_newer_log_still_replayed() {
    let dir = TestDir::new();
    let clock = ManualClock::new();
    {
        let (store, _) = open(&dir, &clock);
        for n in 0..5 {
            store.register(&addr("a:1"), &[meta(n)]).unwrap();
        }
        // A switch to log.2 whose snapshot never got written (a crash right after it).
        lock(&store.shared.queue).latest_generation = 2;
        let switch = store.shared.enqueue(Batch::Switch {
            generation: 2,
            seq: 0,
        });
        store.shared.wait_durable(&switch).unwrap();
        for n in 5..8 {
            store.register(&addr("b:1"), &[meta(n)]).unwrap();
        }
    }
    assert_eq!(names(&dir.0), ["LOCK", "log.1", "log.2"]);
    let old = log_path(&dir.0, 1);
    flip(&old, record_offsets(&old)[2] + 9);
    let damaged = fs::read(&old).unwrap();
    let (store, recovery) = open(&dir, &clock);
    assert_eq!(recovery.records, 4 + 3);
    assert_eq!(recovery.kept, vec![dir.0.join("log.1.damaged.1")]);
    assert_eq!(fs::read(&recovery.kept[0]).unwrap(), damaged);
    let names_listed: Vec<String> = listing(&store).into_iter().map(|(n, _)| n).collect();
    let expected: Vec<String> = [0, 1, 3, 4, 5, 6, 7].map(|n| meta(n).name).to_vec();
    assert_eq!(names_listed, expected);
}

#[test]
fn random_garbage_in_the_middle_loses_only_the_records_it_covers() {
    // A log of 20,000 one-file registrations, written directly (no fsync per record).
    let dir = TestDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    let mut bytes = encode_header(FileKind::Log, Version::CURRENT, 1).to_vec();
    let mut offsets = Vec::new();
    for n in 0..20_000u32 {
        offsets.push(bytes.len());
        let record = LogRecord::Register {
            holder: addr("a:1"),
            files: vec![meta(n)],
        };
        encode_record(&record, &mut bytes).unwrap();
    }
    offsets.push(bytes.len());
    // 64 KiB of pseudo-random bytes (another file's sector, say) from 512 KiB on.
    let (from, to) = (512usize << 10, 576usize << 10);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for b in &mut bytes[from..to] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(log_path(&dir.0, 1), &bytes).unwrap();
    let survivors = offsets
        .windows(2)
        .filter(|w| w[1] <= from || w[0] >= to)
        .count();
    let clock = ManualClock::new();
    let started = Instant::now();
    let (store, recovery) = open(&dir, &clock);
    println!(
        "recovered {} records around 64 KiB of garbage in {:.3} s",
        recovery.records,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(recovery.records, survivors as u64);
    assert_eq!(store.registration_count(), survivors);
    assert_eq!(recovery.kept.len(), 1);
}

#[test]
fn every_log_record_starts_with_a_tag_resynchronising_looks_for() {
    let records = [
        LogRecord::Register {
            holder: addr("a:1"),
            files: vec![meta(1)],
        },
        LogRecord::Unregister {
            holder: addr("a:1"),
            ids: vec![meta(1).id],
        },
        LogRecord::Expire {
            holders: vec![addr("a:1")],
        },
    ];
    for (record, tag) in records.iter().zip(LOG_RECORD_TAGS) {
        let mut bytes = Vec::new();
        encode_record(record, &mut bytes).unwrap();
        assert_eq!(bytes[LEN_LEN], tag);
    }
}

#[test]
fn a_zero_lease_is_refused() {
    let dir = TestDir::new();
    let options = DurableOptions {
        lease: Duration::ZERO,
        ..DurableOptions::default()
    };
    assert!(open_store(&dir.0, options).map(|(store, _)| store).is_err());
}

/// A header as format version 1 wrote it: magic, version 1 and the generation big-endian.
fn v1_header(magic: &[u8; 8], generation: u64) -> Vec<u8> {
    [&magic[..], &[0, 1, 0, 0], &generation.to_be_bytes()].concat()
}

/// A record as format version 1 framed it: the codec's wire frame (a big-endian u32 length,
/// then the body), then the first 8 bytes of the BLAKE3 hash of both.
fn v1_record<M: serde::Serialize>(record: &M) -> Vec<u8> {
    let mut frame = Vec::new();
    shoal_proto::codec::encode_frame(record, &mut frame).unwrap();
    let sum = blake3::hash(&frame);
    frame.extend_from_slice(&sum.as_bytes()[..8]);
    frame
}

/// The snapshot records of version 1, written here independently of the store's encoder.
#[derive(serde::Serialize)]
enum V1SnapshotRecord {
    Holders(Vec<PeerAddr>),
    Listings(Vec<V1Listing>),
    End {
        holders: u64,
        listings: u64,
        registrations: u64,
    },
}

#[derive(serde::Serialize)]
struct V1Listing {
    name: String,
    size: u64,
    chunk_size: u32,
    id: FileId,
    holders: Vec<u32>,
}

fn v1_listing(n: u32, holders: Vec<u32>) -> V1Listing {
    let m = meta(n);
    V1Listing {
        name: m.name,
        size: m.size,
        chunk_size: m.chunk_size,
        id: m.id,
        holders,
    }
}

#[test]
fn a_version_1_folder_opens_with_its_registrations_and_is_upgraded() {
    let dir = TestDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    // snapshot.2: a:1 holds files 1 and 2, b:1 holds file 1.
    let snapshot = [
        v1_header(b"SHOALSNP", 2),
        v1_record(&V1SnapshotRecord::Holders(vec![addr("a:1"), addr("b:1")])),
        v1_record(&V1SnapshotRecord::Listings(vec![
            v1_listing(1, vec![0, 1]),
            v1_listing(2, vec![0]),
        ])),
        v1_record(&V1SnapshotRecord::End {
            holders: 2,
            listings: 2,
            registrations: 3,
        }),
    ]
    .concat();
    // log.2: b:1 registers file 3, a:1 drops file 1.
    let log = [
        v1_header(b"SHOALLOG", 2),
        v1_record(&LogRecord::Register {
            holder: addr("b:1"),
            files: vec![meta(3)],
        }),
        v1_record(&LogRecord::Unregister {
            holder: addr("a:1"),
            ids: vec![meta(1).id],
        }),
    ]
    .concat();
    fs::write(snapshot_path(&dir.0, 2), &snapshot).unwrap();
    fs::write(log_path(&dir.0, 2), &log).unwrap();
    let clock = ManualClock::new();
    let expected = vec![
        ("file-1.bin".to_string(), 1),
        ("file-2.bin".to_string(), 1),
        ("file-3.bin".to_string(), 1),
    ];
    let (store, recovery) = open(&dir, &clock);
    assert_eq!(
        (recovery.snapshot, recovery.records, recovery.registrations),
        (Some(2), 2, 3)
    );
    assert_eq!((recovery.cut_bytes, recovery.skipped_bytes), (0, 0));
    assert_eq!(listing(&store), expected);
    // Upgraded before anything is appended: a current snapshot and log replace both files.
    assert_eq!(names(&dir.0), ["LOCK", "log.3", "snapshot.3"]);
    for (kind, path) in [
        (FileKind::Log, log_path(&dir.0, 3)),
        (FileKind::Snapshot, snapshot_path(&dir.0, 3)),
    ] {
        let header = decode_header(kind, &fs::read(path).unwrap()).unwrap();
        assert_eq!((header.version, header.generation), (Version::V2, 3));
    }
    assert_eq!(store.register(&addr("c:1"), &[meta(4)]).unwrap(), 1);
    drop(store);
    let (store, recovery) = open(&dir, &clock);
    assert_eq!((recovery.snapshot, recovery.records), (Some(3), 1));
    let mut more = expected;
    more.push(("file-4.bin".into(), 1));
    assert_eq!(listing(&store), more);
}

#[test]
fn a_version_1_log_without_a_snapshot_is_read_and_its_torn_tail_cut() {
    let dir = TestDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    let record = v1_record(&LogRecord::Register {
        holder: addr("a:1"),
        files: vec![meta(1), meta(2)],
    });
    let log = [
        v1_header(b"SHOALLOG", 1),
        record.clone(),
        record[..record.len() - 3].to_vec(),
    ]
    .concat();
    fs::write(log_path(&dir.0, 1), &log).unwrap();
    let clock = ManualClock::new();
    let (store, recovery) = open(&dir, &clock);
    assert_eq!(
        (recovery.records, recovery.cut_bytes),
        (1, record.len() as u64 - 3)
    );
    assert_eq!(store.registration_count(), 2);
    assert_eq!(names(&dir.0), ["LOCK", "log.2", "snapshot.2"]);
}

#[test]
fn a_snapshot_of_an_unknown_version_is_refused_naming_it() {
    let dir = TestDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    let mut header = encode_header(FileKind::Snapshot, Version::CURRENT, 1);
    header[8..10].copy_from_slice(&300u16.to_le_bytes());
    fs::write(snapshot_path(&dir.0, 1), header).unwrap();
    fs::write(
        log_path(&dir.0, 1),
        encode_header(FileKind::Log, Version::CURRENT, 1),
    )
    .unwrap();
    let clock = ManualClock::new();
    match open_store(&dir.0, options(&clock)).map(|(store, _)| store) {
        Err(IndexError::DataFormat { path, reason }) => {
            assert_eq!(path, snapshot_path(&dir.0, 1));
            assert!(reason.starts_with("format version 300 "), "{reason}");
            assert!(!reason.contains("damaged"), "{reason}");
        }
        Err(other) => panic!("expected DataFormat, got {other}"),
        Ok(_) => panic!("a snapshot of version 300 was loaded"),
    }
    assert_eq!(fs::read(snapshot_path(&dir.0, 1)).unwrap(), header);
}
