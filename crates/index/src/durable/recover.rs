//! Recovery: loading a snapshot and replaying logs into a registry; cutting a torn tail,
//! resynchronising after damage inside a log, and repairing the file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_proto::FileMeta;

use super::Recovery;
use super::files::{
    DataFiles, data_error, log_path, remove_stale, rewrite_log, snapshot_path, sync_dir,
};
use super::format::{
    CHECK_LEN, FileKind, FormatError, HEADER_LEN, LEN_LEN, LogRecord, SnapshotRecord, Version,
    check_frame, could_start, decode_header, decode_log_record, decode_snapshot_record,
    encode_header, frame_len,
};
use crate::{IndexError, Registry};

/// Buffer for reading logs and snapshots.
pub(super) const READ_BUFFER: usize = 1 << 20;

/// What recovery did about damage, for the start's log line ("" if nothing).
pub(super) fn damage_summary(recovery: &Recovery) -> String {
    let mut out = String::new();
    if recovery.cut_bytes > 0 {
        out.push_str(&format!(", {} bytes of tail cut", recovery.cut_bytes));
    }
    if recovery.skipped_bytes > 0 {
        out.push_str(&format!(
            ", {} damaged bytes skipped",
            recovery.skipped_bytes
        ));
    }
    for kept in &recovery.kept {
        out.push_str(&format!(", damaged log kept as {}", kept.display()));
    }
    out
}

/// The registry as the data folder holds it, read only (to undo changes that failed to be
/// written; the files were repaired when the store opened). `synced` is the current log's
/// generation and its last synced byte: nothing after it is read.
pub(super) fn load_registry(
    dir: &Path,
    lease: Duration,
    now: Duration,
    synced: (u64, u64),
) -> Result<Registry, IndexError> {
    let files = DataFiles::scan(dir)?;
    let mut registry = Registry::with_lease(lease);
    let base = files.snapshots.last().copied();
    if let Some(generation) = base {
        load_snapshot(
            &snapshot_path(dir, generation),
            generation,
            &mut registry,
            now,
        )?;
    }
    let logs = files.logs_from(dir, base)?;
    for (i, &generation) in logs.iter().enumerate() {
        let mode = ReplayMode {
            newest: i + 1 == logs.len(),
            repair: false,
            upto: (generation == synced.0).then_some(synced.1),
        };
        replay_log(
            &log_path(dir, generation),
            generation,
            &mut registry,
            now,
            mode,
        )?;
    }
    Ok(registry)
}

/// Why reading a log or a snapshot stopped.
#[derive(Debug)]
pub enum ReadError {
    /// Reading the bytes failed.
    Io(io::Error),
    /// The bytes are not what this build writes.
    Format(FormatError),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

impl From<FormatError> for ReadError {
    fn from(e: FormatError) -> Self {
        ReadError::Format(e)
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
pub(super) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(buf.get_mut(got..).unwrap_or(&mut [])) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads a header from the start of `reader` (a file named generation `generation`) and
/// checks it. `Ok(Err(got))`: the file is shorter than a header.
fn read_header<R: Read>(
    reader: &mut R,
    kind: FileKind,
    generation: u64,
) -> Result<Result<Version, usize>, ReadError> {
    let mut head = [0u8; HEADER_LEN as usize];
    let got = read_full(reader, &mut head)?;
    if got < head.len() {
        return Ok(Err(got));
    }
    let header = decode_header(kind, &head)?;
    if header.generation != generation {
        return Err(FormatError::Generation {
            found: header.generation,
            expected: generation,
        }
        .into());
    }
    Ok(Ok(header.version))
}

/// A stretch of a log in which no intact record starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    /// Its first byte.
    pub start: u64,
    /// The first byte after it (where an intact record starts).
    pub end: u64,
    /// What was wrong at `start`.
    pub reason: FormatError,
}

/// What a scan of a log found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScannedLog {
    /// The file is shorter than a header (a crash right after it was created).
    HeaderCut {
        /// Bytes there are.
        got: usize,
    },
    /// A header, then records.
    Records(ScanReport),
}

/// A log's records, as a scan found them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanReport {
    /// The header's version.
    pub version: Version,
    /// Intact records found (and handed over).
    pub records: u64,
    /// Damage inside the log: intact records follow each stretch.
    pub damage: Vec<Damage>,
    /// Damage with no intact record after it: where it starts, and what is wrong there.
    pub tail: Option<(u64, FormatError)>,
}

/// Reads a log of `len` bytes (named generation `generation`) from `reader` and hands every
/// intact record, with its offset, to `on_record`. A record that does not check out is
/// skipped: the scan resynchronises on the next offset where a whole record passes its
/// checksum. A header that is not this build's (or not this file's) is an error.
pub(super) fn scan_log<R: Read + Seek>(
    reader: R,
    len: u64,
    generation: u64,
    mut on_record: impl FnMut(u64, LogRecord),
) -> Result<ScannedLog, ReadError> {
    let mut scan = LogScan {
        reader,
        pos: 0,
        len,
        buf: Vec::new(),
        version: Version::CURRENT,
    };
    let version = match read_header(&mut scan.reader, FileKind::Log, generation)? {
        Ok(version) => version,
        Err(got) => return Ok(ScannedLog::HeaderCut { got }),
    };
    scan.version = version;
    scan.pos = HEADER_LEN;
    let mut records = 0u64;
    let mut damage = Vec::new();
    let mut at = HEADER_LEN;
    let tail = loop {
        let reason = match scan.probe(at)? {
            Probe::End => break None,
            Probe::Valid(total) => {
                match decode_log_record(scan.body()) {
                    Ok(record) => {
                        on_record(at, record);
                        records += 1;
                    }
                    Err(reason) => damage.push(Damage {
                        start: at,
                        end: at + total,
                        reason,
                    }),
                }
                at += total;
                continue;
            }
            Probe::Broken(reason) => reason,
        };
        match scan.resync(at + 1)? {
            Some(next) => {
                damage.push(Damage {
                    start: at,
                    end: next,
                    reason,
                });
                at = next;
            }
            None => break Some((at, reason)),
        }
    };
    Ok(ScannedLog::Records(ScanReport {
        version,
        records,
        damage,
        tail,
    }))
}

pub(super) struct Replay {
    pub(super) records: u64,
    /// Bytes cut off the end (a torn or damaged tail).
    pub(super) cut_bytes: u64,
    /// Bytes of damage skipped inside the log.
    pub(super) skipped_bytes: u64,
    /// Where the log ends (after any repair).
    pub(super) end: u64,
    /// The damaged log, kept as it was, if the log was rewritten around damage.
    pub(super) kept: Option<PathBuf>,
    /// The log's format version (after any repair).
    pub(super) version: Version,
}

/// How [`replay_log`] treats what it finds.
#[derive(Clone, Copy)]
pub(super) struct ReplayMode {
    /// The newest log: the only one a crash can have torn.
    pub(super) newest: bool,
    /// Repair the file (cut a torn tail, rewrite the log around damage); otherwise only read.
    pub(super) repair: bool,
    /// Read no further than this offset (the last synced byte, when undoing a failed write
    /// whose partial bytes could not be cut off).
    pub(super) upto: Option<u64>,
}

/// The error for a file that cannot be read or is not what this build wrote.
fn read_error(
    path: &Path,
    e: ReadError,
    damaged: impl FnOnce(FormatError) -> String,
) -> IndexError {
    match e {
        ReadError::Io(source) => IndexError::Data {
            what: "cannot read",
            path: path.to_path_buf(),
            source,
        },
        ReadError::Format(
            e @ (FormatError::Magic { .. }
            | FormatError::UnknownVersion { .. }
            | FormatError::Generation { .. }),
        ) => IndexError::DataFormat {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        ReadError::Format(e) => IndexError::DataFormat {
            path: path.to_path_buf(),
            reason: damaged(e),
        },
    }
}

/// Replays one log into `registry` ([`scan_log`]). Damage with no intact record after it is
/// the tail. With `mode.repair`, a torn tail of the newest log (a record running past the
/// end of the file: a crash mid-write) is cut in place; any other damage first keeps the log
/// as it was (`log.N.damaged.K`), then rewrites it with exactly the intact records.
pub(super) fn replay_log(
    path: &Path,
    generation: u64,
    registry: &mut Registry,
    now: Duration,
    mode: ReplayMode,
) -> Result<Replay, IndexError> {
    let file = File::open(path).map_err(data_error("cannot open the log", path))?;
    let len = file
        .metadata()
        .map_err(data_error("cannot read the size of", path))?
        .len()
        .min(mode.upto.unwrap_or(u64::MAX));
    let reader = BufReader::with_capacity(READ_BUFFER, file);
    let scanned = scan_log(reader, len, generation, |_, record| {
        apply(registry, record, now);
    })
    .map_err(|e| read_error(path, e, |e| e.to_string()))?;
    let ScanReport {
        version,
        records,
        damage,
        tail,
    } = match scanned {
        ScannedLog::HeaderCut { got } => {
            // Created but its header never reached the disk (a crash right after a switch).
            log::warn!(
                "index: {}: header cut short ({got} bytes); starting the log afresh",
                path.display()
            );
            if mode.repair {
                rewrite_log(path, generation)?;
            }
            return Ok(Replay {
                records: 0,
                cut_bytes: len,
                skipped_bytes: 0,
                end: HEADER_LEN,
                kept: None,
                version: Version::CURRENT,
            });
        }
        ScannedLog::Records(report) => report,
    };
    let records_end = tail.as_ref().map_or(len, |&(at, _)| at);
    let mut replay = Replay {
        records,
        cut_bytes: len - records_end,
        skipped_bytes: damage.iter().map(|d| d.end - d.start).sum(),
        end: len,
        kept: None,
        version,
    };
    if damage.is_empty() && tail.is_none() {
        return Ok(replay);
    }
    for d in &damage {
        log::warn!(
            "index: {}: {} at byte {}; skipped {} damaged bytes and replayed the intact records \
             after them",
            path.display(),
            d.reason,
            d.start,
            d.end - d.start
        );
    }
    let torn = damage.is_empty() && mode.newest && tail.as_ref().is_some_and(|t| t.1.is_torn());
    if let Some((at, reason)) = &tail {
        log::warn!(
            "index: {}: {reason} at byte {at}, and no intact record after it: {} bytes of \
             {} cut off",
            path.display(),
            len - at,
            if torn {
                "a write torn by a crash"
            } else {
                "damaged tail"
            }
        );
    }
    if !mode.repair {
        replay.end = records_end;
        return Ok(replay);
    }
    if torn {
        // The one thing a crash does: cut in place, so new records never follow garbage.
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(data_error("cannot open the log", path))?;
        file.set_len(records_end)
            .and_then(|()| file.sync_all())
            .map_err(data_error("cannot cut the torn tail of", path))?;
        replay.end = records_end;
        return Ok(replay);
    }
    // Damage a crash does not explain (the disk's doing, or someone's): keep the log as it
    // is, then rewrite it with exactly its intact records.
    let kept = keep_aside(path)?;
    replay.end = rewrite_around(path, version, generation, &damage, records_end)?;
    log::warn!(
        "index: {}: rewritten with its {records} intact records; the damaged original is kept \
         as {} (delete it once no longer wanted)",
        path.display(),
        kept.display()
    );
    replay.kept = Some(kept);
    Ok(replay)
}

/// Reads a log record by record, from any offset (to resynchronise after damage).
struct LogScan<R> {
    reader: R,
    /// The reader's offset in the file.
    pos: u64,
    len: u64,
    /// The last record probed: length, body, checksum.
    buf: Vec<u8>,
    version: Version,
}

enum Probe {
    /// The file ends here.
    End,
    /// A whole record of this many bytes checks out here.
    Valid(u64),
    /// No record that checks out starts here.
    Broken(FormatError),
}

impl<R: Read + Seek> LogScan<R> {
    fn seek(&mut self, at: u64) -> io::Result<()> {
        if at != self.pos {
            match i64::try_from(at)
                .ok()
                .zip(i64::try_from(self.pos).ok())
                .map(|(to, from)| to - from)
            {
                // Stays in a buffer when it can: resynchronising moves a byte at a time.
                Some(delta) => {
                    self.reader.seek_relative(delta)?;
                }
                None => {
                    self.reader.seek(SeekFrom::Start(at))?;
                }
            }
            self.pos = at;
        }
        Ok(())
    }

    /// Reads up to `n` bytes at `at` into `buf`.
    fn read_at(&mut self, at: u64, n: usize) -> io::Result<()> {
        self.seek(at)?;
        self.buf.clear();
        self.buf.resize(n, 0);
        let got = read_full(&mut self.reader, &mut self.buf)?;
        self.pos += got as u64;
        self.buf.truncate(got);
        Ok(())
    }

    fn probe(&mut self, at: u64) -> io::Result<Probe> {
        let left = self.len.saturating_sub(at);
        if left == 0 {
            return Ok(Probe::End);
        }
        self.read_at(at, LEN_LEN.min(left as usize))?;
        let total = match frame_len(self.version, &self.buf, left) {
            Ok(total) => total,
            Err(e) => return Ok(Probe::Broken(e)),
        };
        self.read_at(at, total)?;
        if self.buf.len() < total {
            return Ok(Probe::Broken(FormatError::RecordCut));
        }
        Ok(match check_frame(&self.buf) {
            Ok(_) => Probe::Valid(total as u64),
            Err(e) => Probe::Broken(e),
        })
    }

    fn body(&self) -> &[u8] {
        let end = self.buf.len().saturating_sub(CHECK_LEN);
        self.buf.get(LEN_LEN..end).unwrap_or(&[])
    }

    /// The first offset from `from` on where a whole record checks out, if any. A false
    /// match needs a 64-bit checksum to match by chance.
    fn resync(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut at = from;
        while at + (LEN_LEN + CHECK_LEN) as u64 <= self.len {
            self.read_at(at, LEN_LEN + 1)?;
            if could_start(self.version, &self.buf, self.len - at)
                && let Probe::Valid(_) = self.probe(at)?
            {
                return Ok(Some(at));
            }
            at += 1;
        }
        Ok(None)
    }
}

/// Keeps `path` as it is under the first free name `<name>.damaged.K` (a hard link: nothing
/// is copied, and the rewrite that follows goes to a new file). Returns that name.
pub(super) fn keep_aside(path: &Path) -> Result<PathBuf, IndexError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("."));
    for k in 1..=1000u32 {
        let aside = dir.join(format!("{name}.damaged.{k}"));
        let kept = match fs::hard_link(path, &aside) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(_) if !aside.exists() => {
                // No hard links here (some filesystems): copy.
                fs::copy(path, &aside)
                    .and_then(|_| File::open(&aside))
                    .and_then(|f| f.sync_all())
            }
            other => other,
        };
        kept.map_err(data_error(
            "cannot keep a copy of the damaged log as",
            &aside,
        ))?;
        sync_dir(dir)?;
        return Ok(aside);
    }
    Err(IndexError::Store(crate::StoreError::Failed(format!(
        "{} has 1000 damaged copies beside it already; clear them out",
        path.display()
    ))))
}

/// Rewrites `log.N` with exactly its intact records (everything before `records_end` but the
/// damaged stretches), through a temporary file and a rename. Returns the new length.
pub(super) fn rewrite_around(
    path: &Path,
    version: Version,
    generation: u64,
    damage: &[Damage],
    records_end: u64,
) -> Result<u64, IndexError> {
    let tmp = path.with_extension(format!("{generation}.tmp"));
    let written = (|| -> io::Result<u64> {
        let mut src = File::open(path)?;
        let mut out = io::BufWriter::with_capacity(READ_BUFFER, File::create(&tmp)?);
        // The records are copied as they are, so the header keeps their version.
        out.write_all(&encode_header(FileKind::Log, version, generation))?;
        let mut written = HEADER_LEN;
        let mut from = HEADER_LEN;
        let ends = damage
            .iter()
            .map(|d| (d.start, d.end))
            .chain([(records_end, records_end)]);
        for (start, end) in ends {
            let keep = start.saturating_sub(from);
            src.seek(SeekFrom::Start(from))?;
            let copied = io::copy(&mut (&mut src).take(keep), &mut out)?;
            if copied != keep {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the log shrank while it was being rewritten",
                ));
            }
            written += copied;
            from = end;
        }
        let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        Ok(written)
    })();
    let written = match written {
        Ok(written) => written,
        Err(e) => {
            remove_stale(&tmp);
            return Err(IndexError::Data {
                what: "cannot rewrite the damaged log as",
                path: tmp,
                source: e,
            });
        }
    };
    fs::rename(&tmp, path).map_err(data_error("cannot rename to", path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(written)
}

pub(super) fn apply(registry: &mut Registry, record: LogRecord, now: Duration) {
    match record {
        LogRecord::Register { holder, files } => {
            registry.register(&holder, &files, now);
        }
        LogRecord::Unregister { holder, ids } => {
            registry.unregister(&holder, &ids);
        }
        LogRecord::Expire { holders } => {
            for holder in holders {
                registry.unregister(&holder, &[]);
            }
        }
    }
}

/// Reads a snapshot of `len` bytes (named generation `generation`) from `reader` into
/// `registry`. Any damage is an error: snapshots are written atomically.
pub(super) fn read_snapshot<R: Read>(
    mut reader: R,
    len: u64,
    generation: u64,
    registry: &mut Registry,
    now: Duration,
) -> Result<(), ReadError> {
    let version = read_header(&mut reader, FileKind::Snapshot, generation)?
        .map_err(|got| FormatError::HeaderCut { got })?;
    let mut at = HEADER_LEN;
    let mut buf = Vec::new();
    let mut numbers: Vec<u32> = Vec::new();
    let mut listings = 0u64;
    let mut mapped = Vec::new();
    loop {
        let left = len.saturating_sub(at);
        if left == 0 {
            return Err(FormatError::NoEnd.into());
        }
        buf.clear();
        buf.resize(LEN_LEN.min(left as usize), 0);
        let got = read_full(&mut reader, &mut buf)?;
        buf.truncate(got);
        let total = frame_len(version, &buf, left)?;
        buf.resize(total, 0);
        if read_full(&mut reader, buf.get_mut(got..).unwrap_or(&mut []))? != total - got {
            return Err(FormatError::RecordCut.into());
        }
        at += total as u64;
        match decode_snapshot_record(check_frame(&buf)?)? {
            SnapshotRecord::Holders(addrs) => {
                for addr in &addrs {
                    let n = registry
                        .restore_holder(addr, now)
                        .ok_or(FormatError::TooManyHolders)?;
                    numbers.push(n);
                }
            }
            SnapshotRecord::Listings(batch) => {
                for listing in batch {
                    mapped.clear();
                    for &h in &listing.holders {
                        let n = numbers
                            .get(h as usize)
                            .copied()
                            .ok_or(FormatError::UnknownHolder(h))?;
                        mapped.push(n);
                    }
                    let file = FileMeta {
                        name: listing.name,
                        size: listing.size,
                        chunk_size: listing.chunk_size,
                        id: listing.id,
                    };
                    registry.restore_listing(&file, &mapped);
                    listings += 1;
                }
            }
            SnapshotRecord::End {
                holders,
                listings: expected_listings,
                registrations,
            } => {
                registry.finish_restore();
                let found = (
                    numbers.len() as u64,
                    listings,
                    registry.registration_count() as u64,
                );
                let promised = (holders, expected_listings, registrations);
                if found != promised {
                    return Err(FormatError::Counts { promised, found }.into());
                }
                if at < len {
                    return Err(FormatError::AfterEnd(len - at).into());
                }
                return Ok(());
            }
        }
    }
}

/// Loads a snapshot; returns its size. Any damage is fatal: snapshots are written
/// atomically, so a damaged one means the disk lost data, which must not pass silently.
pub(super) fn load_snapshot(
    path: &Path,
    generation: u64,
    registry: &mut Registry,
    now: Duration,
) -> Result<u64, IndexError> {
    let file = File::open(path).map_err(data_error("cannot open the snapshot", path))?;
    let len = file
        .metadata()
        .map_err(data_error("cannot read the size of", path))?
        .len();
    let reader = BufReader::with_capacity(READ_BUFFER, file);
    read_snapshot(reader, len, generation, registry, now).map_err(|e| {
        read_error(path, e, |e| {
            format!(
                "{e}; the snapshot is damaged (move it aside to start without it, losing its \
                 registrations)"
            )
        })
    })?;
    Ok(len)
}
