//! Recovery: loading a snapshot and replaying logs into a registry; cutting a torn tail,
//! resynchronising after damage inside a log, and repairing the file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_proto::FileMeta;
use shoal_proto::codec;

use super::Recovery;
use super::files::{
    DataFiles, data_error, log_path, remove_stale, rewrite_log, snapshot_path, sync_dir,
};
use super::format::{
    CHECK_LEN, HEADER_LEN, LEN_LEN, LOG_MAGIC, LOG_RECORD_TAGS, LogRecord, MAX_RECORD,
    SNAPSHOT_MAGIC, SnapshotRecord, check_header, checksum, header,
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

/// Reads length-prefixed, checksummed records.
pub(super) struct RecordReader<R> {
    pub(super) inner: R,
    /// Offset of the next record in the file.
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) buf: Vec<u8>,
}

pub(super) enum Next {
    Record,
    End,
    Damaged(String),
}

impl<R: Read> RecordReader<R> {
    pub(super) fn next(&mut self) -> io::Result<Next> {
        let mut len_bytes = [0u8; LEN_LEN];
        match read_full(&mut self.inner, &mut len_bytes)? {
            0 => return Ok(Next::End),
            LEN_LEN => {}
            _ => return Ok(Next::Damaged("a record's length is cut short".into())),
        }
        let len = u32::from_be_bytes(len_bytes) as usize;
        let total = LEN_LEN + len + CHECK_LEN;
        let left = self.len.saturating_sub(self.offset);
        if len > MAX_RECORD || total as u64 > left {
            return Ok(Next::Damaged(format!(
                "a record claims {len} bytes, {left} are left in the file"
            )));
        }
        self.buf.clear();
        self.buf.resize(total, 0);
        let Some((head, rest)) = self.buf.split_first_chunk_mut::<LEN_LEN>() else {
            return Ok(Next::Damaged("a record's length is cut short".into()));
        };
        *head = len_bytes;
        if read_full(&mut self.inner, rest)? != rest.len() {
            return Ok(Next::Damaged("a record is cut short".into()));
        }
        let (frame, sum) = self.buf.split_at(LEN_LEN + len);
        if checksum(frame) != sum {
            return Ok(Next::Damaged("a record fails its checksum".into()));
        }
        self.offset += total as u64;
        Ok(Next::Record)
    }

    pub(super) fn body(&self) -> &[u8] {
        let end = self.buf.len().saturating_sub(CHECK_LEN);
        self.buf.get(LEN_LEN..end).unwrap_or(&[])
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

/// A stretch of a log in which no intact record starts.
pub(super) struct Damage {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) reason: String,
}

/// Replays one log into `registry`. A record that does not check out is skipped: the scan
/// resynchronises on the next offset where a whole record passes its checksum, and every
/// intact record after the damage is replayed. Damage with no intact record after it is the
/// tail. With `mode.repair`, a torn tail of the newest log (a record running past the end of
/// the file: a crash mid-write) is cut in place; any other damage first keeps the log as it
/// was (`log.N.damaged.K`), then rewrites it with exactly the intact records.
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
    let mut scan = LogScan {
        reader: BufReader::with_capacity(READ_BUFFER, file),
        pos: 0,
        len,
        buf: Vec::new(),
    };
    let mut head = [0u8; HEADER_LEN as usize];
    let got = read_full(&mut scan.reader, &mut head).map_err(data_error("cannot read", path))?;
    scan.pos = got as u64;
    if got < head.len() {
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
        });
    }
    check_header(&head, LOG_MAGIC, generation, path)?;
    let read_error = data_error("cannot read", path);
    let scanned = (|| -> io::Result<_> {
        let mut count = 0u64;
        let mut damage = Vec::new();
        let mut at = HEADER_LEN;
        let tail = loop {
            let (reason, torn) = match scan.probe(at)? {
                Probe::End => break None,
                Probe::Valid(total) => {
                    match codec::decode_body::<LogRecord>(scan.body()) {
                        Ok(record) => {
                            apply(registry, record, now);
                            count += 1;
                        }
                        Err(e) => damage.push(Damage {
                            start: at,
                            end: at + total,
                            reason: format!("a record does not decode: {e}"),
                        }),
                    }
                    at += total;
                    continue;
                }
                Probe::Torn(reason) => (reason, true),
                Probe::Bad(reason) => (reason, false),
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
                None => break Some((at, reason, torn)),
            }
        };
        Ok((count, damage, tail))
    })();
    let (records, damage, tail) = scanned.map_err(read_error)?;
    drop(scan);
    let records_end = tail.as_ref().map_or(len, |&(at, _, _)| at);
    let mut replay = Replay {
        records,
        cut_bytes: len - records_end,
        skipped_bytes: damage.iter().map(|d| d.end - d.start).sum(),
        end: len,
        kept: None,
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
    let torn = damage.is_empty() && mode.newest && tail.as_ref().is_some_and(|t| t.2);
    if let Some((at, reason, _)) = &tail {
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
    replay.end = rewrite_around(path, generation, &damage, records_end)?;
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
pub(super) struct LogScan {
    pub(super) reader: BufReader<File>,
    /// The reader's offset in the file.
    pub(super) pos: u64,
    pub(super) len: u64,
    /// The last record probed: length, body, checksum.
    pub(super) buf: Vec<u8>,
}

pub(super) enum Probe {
    /// The file ends here.
    End,
    /// A whole record of this many bytes checks out here.
    Valid(u64),
    /// A record starts here but runs past the end of the file.
    Torn(String),
    /// No record that checks out starts here.
    Bad(String),
}

impl LogScan {
    pub(super) fn seek(&mut self, at: u64) -> io::Result<()> {
        if at != self.pos {
            match i64::try_from(at)
                .ok()
                .zip(i64::try_from(self.pos).ok())
                .map(|(to, from)| to - from)
            {
                // Stays in the buffer when it can: resynchronising moves a byte at a time.
                Some(delta) => self.reader.seek_relative(delta)?,
                None => {
                    self.reader.seek(SeekFrom::Start(at))?;
                }
            }
            self.pos = at;
        }
        Ok(())
    }

    pub(super) fn probe(&mut self, at: u64) -> io::Result<Probe> {
        let left = self.len.saturating_sub(at);
        if left == 0 {
            return Ok(Probe::End);
        }
        let cut_length = || Probe::Torn("a record's length is cut short".into());
        if left < LEN_LEN as u64 {
            return Ok(cut_length());
        }
        self.seek(at)?;
        let mut len_bytes = [0u8; LEN_LEN];
        let got = read_full(&mut self.reader, &mut len_bytes)?;
        self.pos += got as u64;
        if got < LEN_LEN {
            return Ok(cut_length());
        }
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > MAX_RECORD {
            return Ok(Probe::Bad(format!(
                "a record claims {len} bytes, more than any record holds"
            )));
        }
        let total = LEN_LEN + len + CHECK_LEN;
        if total as u64 > left {
            return Ok(Probe::Torn(format!(
                "a record claims {len} bytes, {left} are left in the file"
            )));
        }
        self.buf.clear();
        self.buf.extend_from_slice(&len_bytes);
        self.buf.resize(total, 0);
        let rest = self.buf.get_mut(LEN_LEN..).unwrap_or(&mut []);
        let want = rest.len();
        let got = read_full(&mut self.reader, rest)?;
        self.pos += got as u64;
        if got < want {
            return Ok(Probe::Torn("a record is cut short".into()));
        }
        let frame = self.buf.get(..LEN_LEN + len).unwrap_or(&[]);
        let sum = self.buf.get(LEN_LEN + len..).unwrap_or(&[]);
        if checksum(frame) != sum {
            return Ok(Probe::Bad("a record fails its checksum".into()));
        }
        Ok(Probe::Valid(total as u64))
    }

    pub(super) fn body(&self) -> &[u8] {
        let end = self.buf.len().saturating_sub(CHECK_LEN);
        self.buf.get(LEN_LEN..end).unwrap_or(&[])
    }

    /// The first offset from `from` on where a whole record checks out, if any. A false
    /// match needs a 64-bit checksum to match by chance.
    pub(super) fn resync(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut at = from;
        while at + (LEN_LEN + CHECK_LEN) as u64 <= self.len {
            if self.plausible(at)?
                && let Probe::Valid(_) = self.probe(at)?
            {
                return Ok(Some(at));
            }
            at += 1;
        }
        Ok(None)
    }

    /// Whether a record could start at `at`, from its first five bytes: a length that fits
    /// the file, and a body that starts with a [`LogRecord`] variant. Spares resynchronising
    /// the checksum of most offsets in random garbage, where one offset in 256 claims a
    /// length below [`MAX_RECORD`] (megabytes to hash, each).
    pub(super) fn plausible(&mut self, at: u64) -> io::Result<bool> {
        self.seek(at)?;
        let mut head = [0u8; LEN_LEN + 1];
        let got = read_full(&mut self.reader, &mut head)?;
        self.pos += got as u64;
        let Some((len, tag)) = head.split_first_chunk::<LEN_LEN>() else {
            return Ok(false);
        };
        let len = u64::from(u32::from_be_bytes(*len));
        let total = (LEN_LEN + CHECK_LEN) as u64 + len;
        Ok(got == head.len()
            && len > 0
            && len <= MAX_RECORD as u64
            && total <= self.len.saturating_sub(at)
            && tag.first().is_some_and(|t| LOG_RECORD_TAGS.contains(t)))
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
    generation: u64,
    damage: &[Damage],
    records_end: u64,
) -> Result<u64, IndexError> {
    let tmp = path.with_extension(format!("{generation}.tmp"));
    let written = (|| -> io::Result<u64> {
        let mut src = File::open(path)?;
        let mut out = io::BufWriter::with_capacity(READ_BUFFER, File::create(&tmp)?);
        out.write_all(&header(LOG_MAGIC, generation))?;
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

/// Loads a snapshot; returns its size. Any damage is fatal: snapshots are written
/// atomically, so a damaged one means the disk lost data, which must not pass silently.
pub(super) fn load_snapshot(
    path: &Path,
    generation: u64,
    registry: &mut Registry,
    now: Duration,
) -> Result<u64, IndexError> {
    let damaged = |reason: String| IndexError::DataFormat {
        path: path.to_path_buf(),
        reason: format!(
            "{reason}; the snapshot is damaged (move it aside to start without it, losing its \
             registrations)"
        ),
    };
    let file = File::open(path).map_err(data_error("cannot open the snapshot", path))?;
    let len = file
        .metadata()
        .map_err(data_error("cannot read the size of", path))?
        .len();
    let mut reader = BufReader::with_capacity(READ_BUFFER, file);
    let mut head = [0u8; HEADER_LEN as usize];
    if read_full(&mut reader, &mut head).map_err(data_error("cannot read", path))? < head.len() {
        return Err(damaged("its header is cut short".into()));
    }
    check_header(&head, SNAPSHOT_MAGIC, generation, path)?;
    let mut records = RecordReader {
        inner: reader,
        offset: HEADER_LEN,
        len,
        buf: Vec::new(),
    };
    let mut numbers: Vec<u32> = Vec::new();
    let mut listings = 0u64;
    let mut mapped = Vec::new();
    loop {
        match records.next().map_err(data_error("cannot read", path))? {
            Next::Record => {}
            Next::End => return Err(damaged("it ends before its end record".into())),
            Next::Damaged(reason) => return Err(damaged(reason)),
        }
        let record = codec::decode_body::<SnapshotRecord>(records.body())
            .map_err(|e| damaged(format!("a record does not decode: {e}")))?;
        match record {
            SnapshotRecord::Holders(addrs) => {
                for addr in &addrs {
                    let n = registry
                        .restore_holder(addr, now)
                        .ok_or_else(|| damaged("more holders than a registry can hold".into()))?;
                    numbers.push(n);
                }
            }
            SnapshotRecord::Listings(batch) => {
                for listing in batch {
                    mapped.clear();
                    for &h in &listing.holders {
                        let n = numbers.get(h as usize).copied().ok_or_else(|| {
                            damaged(format!("a listing names holder {h}, which is not listed"))
                        })?;
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
                if found != (holders, expected_listings, registrations) {
                    return Err(damaged(format!(
                        "it promises {holders} holders, {expected_listings} files and \
                         {registrations} registrations but holds {}, {} and {}",
                        found.0, found.1, found.2
                    )));
                }
                return Ok(len);
            }
        }
    }
}
