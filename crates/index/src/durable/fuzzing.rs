//! Not an API: the durable store's byte decoders, and the properties they must keep, for the
//! fuzz targets in `fuzz/` (`durable_log`, `durable_snapshot`), the property tests and the
//! fuzz regressions in `crates/index/tests`. Hidden from the docs and free to change.
//!
//! The oracles return `Ok(outcome)` (a short class of what happened, numbers left out, so
//! inputs group by code path) or `Err(property broken)`; they never panic themselves.

use std::io::Cursor;
use std::time::Duration;

use shoal_proto::{FileId, FileMeta, PeerAddr};

pub use super::format::{
    FORMAT_VERSION, FileKind, FormatError, HEADER_LEN, Header, LogRecord, Version, decode_frame,
    decode_header, decode_log_record, encode_header, encode_record,
};
pub use super::recover::{Damage, ReadError, ScanReport, ScannedLog};
use super::recover::{apply, read_snapshot as read_snapshot_from, scan_log as scan_log_from};
use crate::registry::DEFAULT_LEASE;
use crate::{IndexError, Registry};

/// An intact record a scan found: its offset, its whole length, the record.
pub type Found = (u64, u64, LogRecord);

/// Reads `bytes` as `log.<generation>`, the way recovery reads the file.
pub fn scan_log(bytes: &[u8], generation: u64) -> Result<(ScannedLog, Vec<Found>), ReadError> {
    let mut found = Vec::new();
    let mut offsets = Vec::new();
    let scanned = scan_log_from(
        Cursor::new(bytes),
        bytes.len() as u64,
        generation,
        |at, r| {
            offsets.push(at);
            found.push(r);
        },
    )?;
    let lens = record_lens(bytes, &scanned, &offsets);
    let found = offsets
        .into_iter()
        .zip(lens)
        .zip(found)
        .map(|((at, len), r)| (at, len, r))
        .collect();
    Ok((scanned, found))
}

/// The whole length of each record found at `offsets`.
fn record_lens(bytes: &[u8], scanned: &ScannedLog, offsets: &[u64]) -> Vec<u64> {
    let ScannedLog::Records(ScanReport { version, .. }) = scanned else {
        return Vec::new();
    };
    offsets
        .iter()
        .map(|&at| {
            let rest = bytes.get(at as usize..).unwrap_or(&[]);
            decode_frame(*version, rest).map_or(0, |(_, len)| len as u64)
        })
        .collect()
}

/// A log (header and records, the current format) holding `records`.
pub fn encode_log(generation: u64, records: &[LogRecord]) -> Result<Vec<u8>, IndexError> {
    let mut out = encode_header(FileKind::Log, Version::CURRENT, generation).to_vec();
    for record in records {
        encode_record(record, &mut out)?;
    }
    Ok(out)
}

/// Reads `bytes` as `snapshot.<generation>` into a fresh registry.
pub fn read_snapshot(bytes: &[u8], generation: u64) -> Result<Registry, ReadError> {
    let mut registry = Registry::with_lease(DEFAULT_LEASE);
    read_snapshot_from(
        Cursor::new(bytes),
        bytes.len() as u64,
        generation,
        &mut registry,
        Duration::ZERO,
    )?;
    Ok(registry)
}

/// The snapshot of `registry` the store would write.
pub fn encode_snapshot(registry: &Registry, generation: u64) -> Result<Vec<u8>, IndexError> {
    super::format::encode_snapshot(registry, generation)
}

/// A registry with `records` applied, as a replay applies them.
pub fn replay(records: &[LogRecord]) -> Registry {
    let mut registry = Registry::with_lease(DEFAULT_LEASE);
    for record in records {
        apply(&mut registry, record.clone(), Duration::ZERO);
    }
    registry
}

/// Every registration of `registry`, sorted: each listing with its holders (sorted), for
/// comparing two registries.
pub fn registrations(registry: &Registry) -> Vec<(FileMeta, Vec<PeerAddr>)> {
    let holders = registry.export_holders();
    let mut out = Vec::new();
    registry.export_listings(|view, numbers| {
        let mut addrs: Vec<PeerAddr> = numbers
            .iter()
            .filter_map(|&n| holders.get(n as usize).map(|&a| a.clone()))
            .collect();
        addrs.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let file = FileMeta {
            name: view.name.to_string(),
            size: view.size,
            chunk_size: view.chunk_size,
            id: view.id,
        };
        out.push((file, addrs));
    });
    out.sort_by(|a, b| (&a.0.name, a.0.id).cmp(&(&b.0.name, b.0.id)));
    out
}

/// Log records made from arbitrary bytes (a fuzzer's), eight bytes each: registrations,
/// unregistrations and expiries over a few holders and files, so they overlap.
pub fn records_from(bytes: &[u8]) -> Vec<LogRecord> {
    bytes
        .chunks(8)
        .filter_map(|c| {
            let b = |i: usize| c.get(i).copied().unwrap_or(0);
            let holder = PeerAddr::new(format!("h{}:{}", b(1) % 8, 1 + u16::from(b(2)))).ok()?;
            let file = |n: u8| FileMeta {
                name: format!("f{}.bin", n % 16),
                size: u64::from(b(4)) << (b(5) % 40),
                chunk_size: 1024 << (b(6) % 4),
                id: FileId(*blake3::hash(&[n % 16, b(7) % 2]).as_bytes()),
            };
            Some(match b(0) % 4 {
                0 | 1 => LogRecord::Register {
                    holder,
                    files: (0..=b(3) % 3).map(|k| file(b(3).wrapping_add(k))).collect(),
                },
                2 => LogRecord::Unregister {
                    holder,
                    ids: vec![file(b(3)).id],
                },
                _ => LogRecord::Expire {
                    holders: vec![holder],
                },
            })
        })
        .collect()
}

/// The name of a format error's kind, for outcome classes.
fn kind(e: &FormatError) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_ascii_alphanumeric())
        .next()
        .unwrap_or("")
        .to_string()
}

fn read_error(e: &ReadError) -> Result<&FormatError, String> {
    match e {
        ReadError::Format(e) => Ok(e),
        ReadError::Io(e) => Err(format!("reading bytes in memory failed: {e}")),
    }
}

/// The log oracle, for any bytes. Recovery never panics or fails to read; a refusal is a
/// header's; every byte after the header is accounted for, as an intact record, damage or
/// the tail (damage is reported, never accepted); every record found re-encodes to a record
/// that decodes equal; and the log rewritten with exactly its intact records (what repair
/// writes) scans back to the same records with no damage.
pub fn check_log(bytes: &[u8]) -> Result<String, String> {
    let generation = decode_header(FileKind::Log, bytes).map_or(1, |h| h.generation);
    let (scanned, found) = match scan_log(bytes, generation) {
        Ok(scanned) => scanned,
        Err(e) => {
            let e = read_error(&e)?;
            return match e {
                FormatError::Magic { .. }
                | FormatError::UnknownVersion { .. }
                | FormatError::Reserved(_) => Ok(format!("refused {}", kind(e))),
                other => Err(format!("a log refused for {other:?}, not its header")),
            };
        }
    };
    let report = match scanned {
        ScannedLog::HeaderCut { got } if got == bytes.len() && got < HEADER_LEN as usize => {
            return Ok("header cut".into());
        }
        ScannedLog::HeaderCut { got } => {
            return Err(format!("header cut at {got} of {} bytes", bytes.len()));
        }
        ScannedLog::Records(report) => report,
    };
    let ScanReport {
        version, records, ..
    } = report;
    let (damage, tail) = (&report.damage, &report.tail);
    if records != found.len() as u64 {
        return Err(format!(
            "{records} records counted, {} handed over",
            found.len()
        ));
    }
    // Every byte: records and damage in order, without gaps or overlaps, then the tail.
    let mut spans: Vec<(u64, u64)> = found.iter().map(|&(at, len, _)| (at, at + len)).collect();
    spans.extend(damage.iter().map(|d| (d.start, d.end)));
    spans.sort_unstable();
    let mut at = HEADER_LEN;
    for (start, end) in spans {
        if start != at || end <= start {
            return Err(format!(
                "bytes {at}..{start} unaccounted for (or overlapping)"
            ));
        }
        at = end;
    }
    let end = tail.as_ref().map_or(bytes.len() as u64, |(t, _)| *t);
    if at != end || end > bytes.len() as u64 {
        return Err(format!("records end at {at}, the tail starts at {end}"));
    }
    let mut rewritten = encode_header(FileKind::Log, version, generation).to_vec();
    for (at, len, record) in &found {
        let mut encoded = Vec::new();
        encode_record(record, &mut encoded).map_err(|e| format!("cannot re-encode: {e}"))?;
        let (body, _) =
            decode_frame(Version::CURRENT, &encoded).map_err(|e| format!("re-encoded: {e}"))?;
        let again = decode_log_record(body).map_err(|e| format!("re-encoded: {e}"))?;
        if &again != record {
            return Err(format!("{record:?} re-encodes to {again:?}"));
        }
        let original = bytes.get(*at as usize..(at + len) as usize).unwrap_or(&[]);
        rewritten.extend_from_slice(original);
    }
    let (rescanned, refound) =
        scan_log(&rewritten, generation).map_err(|e| format!("the repaired log: {e:?}"))?;
    let clean =
        matches!(&rescanned, ScannedLog::Records(r) if r.damage.is_empty() && r.tail.is_none());
    let same = refound.iter().map(|f| &f.2).eq(found.iter().map(|f| &f.2));
    if !clean || !same {
        return Err("the log repaired to its intact records does not read back as them".into());
    }
    let mut outcome = format!("{version:?} records:{}", records.min(2));
    let kinds: std::collections::BTreeSet<String> =
        damage.iter().map(|d| kind(&d.reason)).collect();
    for k in kinds {
        outcome += &format!(" damage:{k}");
    }
    if let Some((_, reason)) = tail {
        outcome += &format!(" tail:{}", kind(reason));
    }
    Ok(outcome)
}

/// The appended-garbage oracle: a valid log of `records` followed by `garbage` recovers
/// every one of `records` before anything the garbage holds, with no damage reported inside
/// them; and the whole passes [`check_log`].
pub fn check_log_with_garbage(records: &[LogRecord], garbage: &[u8]) -> Result<String, String> {
    let mut bytes = encode_log(1, records).map_err(|e| format!("cannot encode: {e}"))?;
    let valid_end = bytes.len() as u64;
    bytes.extend_from_slice(garbage);
    let outcome = check_log(&bytes)?;
    let (scanned, found) = scan_log(&bytes, 1).map_err(|e| format!("{e:?}"))?;
    let prefix: Vec<&LogRecord> = found.iter().take(records.len()).map(|f| &f.2).collect();
    if !prefix.iter().copied().eq(records.iter()) {
        return Err(format!(
            "a valid log of {} records with garbage after it recovered {} of them",
            records.len(),
            prefix.len()
        ));
    }
    if let ScannedLog::Records(ScanReport { damage, tail, .. }) = &scanned {
        let first_damage = damage
            .first()
            .map(|d| d.start)
            .or(tail.as_ref().map(|t| t.0));
        if first_damage.is_some_and(|at| at < valid_end) {
            return Err("damage reported inside the valid prefix".into());
        }
    }
    Ok(outcome)
}

/// The snapshot oracle, for any bytes. Loading never panics or fails to read; whatever loads
/// re-encodes to a snapshot that loads to the same registrations and re-encodes to the same
/// bytes.
pub fn check_snapshot(bytes: &[u8]) -> Result<String, String> {
    let generation = decode_header(FileKind::Snapshot, bytes).map_or(1, |h| h.generation);
    let registry = match read_snapshot(bytes, generation) {
        Ok(registry) => registry,
        Err(e) => return Ok(format!("refused {}", kind(read_error(&e)?))),
    };
    let again = round_trip_snapshot(&registry, generation)?;
    Ok(format!(
        "loaded holders:{} files:{}",
        registry.holder_count().min(2),
        again.len().min(2)
    ))
}

/// The registry's snapshot loads back to the same registrations, and so does the snapshot
/// of what it loads as, which re-encodes byte for byte the same (a fixed point).
fn round_trip_snapshot(
    registry: &Registry,
    generation: u64,
) -> Result<Vec<(FileMeta, Vec<PeerAddr>)>, String> {
    let want = registrations(registry);
    let mut previous: Option<Vec<u8>> = None;
    let mut current = encode_snapshot(registry, generation).map_err(|e| format!("encode: {e}"))?;
    for _ in 0..2 {
        let loaded =
            read_snapshot(&current, generation).map_err(|e| format!("re-encoded: {e:?}"))?;
        let got = registrations(&loaded);
        if want != got {
            return Err(format!("snapshot of {want:?} loads as {got:?}"));
        }
        let next = encode_snapshot(&loaded, generation).map_err(|e| format!("encode: {e}"))?;
        previous = Some(std::mem::replace(&mut current, next));
    }
    if previous.as_ref() != Some(&current) {
        return Err("a loaded snapshot's snapshot re-encodes to other bytes".into());
    }
    Ok(want)
}

/// The structured snapshot oracle: the snapshot of the registry `records` build loads back
/// to it; with one bit flipped (at `flip`, modulo its length) or cut short by `cut` bytes it
/// is refused, never loaded as something else.
pub fn check_snapshot_of(records: &[LogRecord], flip: u32, cut: u8) -> Result<String, String> {
    let registry = replay(records);
    round_trip_snapshot(&registry, 3)?;
    let encoded = encode_snapshot(&registry, 3).map_err(|e| format!("encode: {e}"))?;
    let mut flipped = encoded.clone();
    let bit = flip as usize % (flipped.len() * 8);
    if let Some(byte) = flipped.get_mut(bit / 8) {
        *byte ^= 1 << (bit % 8);
    }
    if read_snapshot(&flipped, 3).is_ok() {
        return Err(format!("a snapshot with bit {bit} flipped loaded"));
    }
    let short = encoded.len().saturating_sub(usize::from(cut).max(1));
    if read_snapshot(encoded.get(..short).unwrap_or(&[]), 3).is_ok() {
        return Err(format!("a snapshot cut to {short} bytes loaded"));
    }
    Ok(format!(
        "round trip files:{}",
        registry.registration_count().min(2)
    ))
}

/// `bytes` (a file in the current format) as format version 1 wrote it: big-endian header
/// fields and record lengths, checksums over those. `None` if `bytes` is not a whole file of
/// intact records.
pub fn to_v1(kind: FileKind, bytes: &[u8]) -> Option<Vec<u8>> {
    let header = decode_header(kind, bytes).ok()?;
    let mut out = encode_header(kind, Version::V1, header.generation).to_vec();
    let mut rest = bytes.get(HEADER_LEN as usize..)?;
    while !rest.is_empty() {
        let (body, len) = decode_frame(header.version, rest).ok()?;
        let start = out.len();
        out.extend_from_slice(&u32::try_from(body.len()).ok()?.to_be_bytes());
        out.extend_from_slice(body);
        let sum = super::format::checksum(out.get(start..)?);
        out.extend_from_slice(&sum);
        rest = rest.get(len..)?;
    }
    Some(out)
}

/// One input of the `durable_log` fuzz target. The first byte picks the mode: even, the rest
/// is the file ([`check_log`]); odd, records made from the next `8 * (byte / 2 % 16)` bytes
/// ([`records_from`]) make a valid log, and the rest is appended as garbage
/// ([`check_log_with_garbage`]).
pub fn durable_log_input(data: &[u8]) -> Result<String, String> {
    let Some((&mode, rest)) = data.split_first() else {
        return Ok("empty".into());
    };
    if mode % 2 == 0 {
        return check_log(rest);
    }
    let n = (usize::from(mode / 2) % 16 * 8).min(rest.len());
    let (seed, garbage) = rest.split_at(n);
    check_log_with_garbage(&records_from(seed), garbage)
}

/// One input of the `durable_snapshot` fuzz target. The first byte picks the mode: even, the
/// rest is the file ([`check_snapshot`]); odd, the next four bytes (little-endian) pick a bit
/// to flip and the fifth a length to cut, and the rest makes records
/// ([`check_snapshot_of`]).
pub fn durable_snapshot_input(data: &[u8]) -> Result<String, String> {
    let Some((&mode, rest)) = data.split_first() else {
        return Ok("empty".into());
    };
    if mode % 2 == 0 {
        return check_snapshot(rest);
    }
    let [a, b, c, d, cut, seed @ ..] = rest else {
        return Ok("short".into());
    };
    let flip = u32::from_le_bytes([*a, *b, *c, *d]);
    check_snapshot_of(&records_from(seed), flip, *cut)
}
