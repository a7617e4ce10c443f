//! Property tests of the durable store's on-disk formats, through the byte decoders recovery
//! itself uses (`shoal_index::fuzzing`): any records survive a log round trip, in both
//! format versions; any registry survives a snapshot round trip; and a valid log cut short
//! anywhere or with any bit flipped is recovered to a prefix (cut) or a subsequence (flip) of
//! its records with the damage reported, never to a record it did not hold.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use proptest::prelude::*;
use shoal_index::fuzzing::{self, FileKind, HEADER_LEN, LogRecord, ScannedLog, Version};
use shoal_proto::{FileId, FileMeta, PeerAddr};

fn file_id() -> impl Strategy<Value = FileId> {
    // A few ids, so records overlap and unregistrations hit.
    prop_oneof![any::<[u8; 32]>(), (0u8..4).prop_map(|n| [n; 32])].prop_map(FileId)
}

fn addr() -> impl Strategy<Value = PeerAddr> {
    ("[a-z0-9.]{1,12}", any::<u16>()).prop_map(|(h, p)| PeerAddr::new(format!("{h}:{p}")).unwrap())
}

fn meta() -> impl Strategy<Value = FileMeta> {
    (
        "[a-zA-Z0-9 ._-]{1,30}",
        any::<u64>(),
        any::<u32>(),
        file_id(),
    )
        .prop_map(|(name, size, chunk_size, id)| FileMeta {
            name,
            size,
            chunk_size,
            id,
        })
}

fn record() -> impl Strategy<Value = LogRecord> {
    prop_oneof![
        3 => (addr(), prop::collection::vec(meta(), 0..4))
            .prop_map(|(holder, files)| LogRecord::Register { holder, files }),
        1 => (addr(), prop::collection::vec(file_id(), 0..4))
            .prop_map(|(holder, ids)| LogRecord::Unregister { holder, ids }),
        1 => prop::collection::vec(addr(), 0..3)
            .prop_map(|holders| LogRecord::Expire { holders }),
    ]
}

fn records() -> impl Strategy<Value = Vec<LogRecord>> {
    prop::collection::vec(record(), 1..12)
}

/// The records a scan of `bytes` found, and whether it reported damage (inside or at the
/// tail); `None` if the log was refused.
fn scan(bytes: &[u8]) -> Option<(Vec<LogRecord>, bool)> {
    match fuzzing::scan_log(bytes, 1) {
        Ok((ScannedLog::Records(report), found)) => Some((
            found.into_iter().map(|f| f.2).collect(),
            !report.damage.is_empty() || report.tail.is_some(),
        )),
        Ok((ScannedLog::HeaderCut { .. }, _)) => Some((Vec::new(), true)),
        Err(_) => None,
    }
}

/// Whether `part` is `whole` with some elements left out (order kept).
fn is_subsequence(part: &[LogRecord], whole: &[LogRecord]) -> bool {
    let mut rest = whole.iter();
    part.iter().all(|p| rest.any(|w| w == p))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn records_round_trip_through_a_log_of_either_version(records in records()) {
        let log = fuzzing::encode_log(1, &records).unwrap();
        prop_assert_eq!(scan(&log), Some((records.clone(), false)));
        let v1 = fuzzing::to_v1(FileKind::Log, &log).unwrap();
        prop_assert_eq!(scan(&v1), Some((records.clone(), false)));
        prop_assert!(fuzzing::check_log(&log).is_ok());
        prop_assert!(fuzzing::check_log(&v1).is_ok());
        // Each record alone: encode, frame, decode.
        for record in &records {
            let mut bytes = Vec::new();
            fuzzing::encode_record(record, &mut bytes).unwrap();
            let (body, len) = fuzzing::decode_frame(Version::CURRENT, &bytes).unwrap();
            prop_assert_eq!(len, bytes.len());
            prop_assert_eq!(&fuzzing::decode_log_record(body).unwrap(), record);
        }
    }

    #[test]
    fn a_snapshot_loads_back_to_its_registry(records in records(), flip: u32, cut: u8) {
        let registry = fuzzing::replay(&records);
        for version in [Version::V2, Version::V1] {
            let mut snapshot = fuzzing::encode_snapshot(&registry, 5).unwrap();
            if version == Version::V1 {
                snapshot = fuzzing::to_v1(FileKind::Snapshot, &snapshot).unwrap();
            }
            let loaded = fuzzing::read_snapshot(&snapshot, 5).unwrap();
            prop_assert_eq!(fuzzing::registrations(&loaded), fuzzing::registrations(&registry));
            prop_assert!(fuzzing::read_snapshot(&snapshot, 6).is_err(), "another generation");
        }
        let checked = fuzzing::check_snapshot_of(&records, flip, cut);
        prop_assert!(checked.is_ok(), "{:?}", checked);
    }

    #[test]
    fn a_log_cut_short_recovers_a_prefix_and_reports_the_cut(
        records in records(),
        at in any::<prop::sample::Index>(),
    ) {
        let log = fuzzing::encode_log(1, &records).unwrap();
        let cut = at.index(log.len());
        let (found, reported) = scan(&log[..cut]).unwrap();
        prop_assert_eq!(&found[..], &records[..found.len()], "not a prefix");
        let whole = fuzzing::encode_log(1, &records[..found.len()]).unwrap();
        // Cut at a record boundary: nothing to report; anywhere else, the cut is reported.
        prop_assert_eq!(reported, whole.len() != cut || cut < HEADER_LEN as usize);
        prop_assert!(fuzzing::check_log(&log[..cut]).is_ok());
    }

    #[test]
    fn a_flipped_bit_costs_records_and_is_reported_never_misread(
        records in records(),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut log = fuzzing::encode_log(1, &records).unwrap();
        let at = at.index(log.len());
        log[at] ^= 1 << bit;
        match scan(&log) {
            // In the header: refused, whatever bit.
            None => prop_assert!(at < HEADER_LEN as usize),
            Some((found, reported)) => {
                prop_assert!(at >= HEADER_LEN as usize, "a damaged header was accepted");
                prop_assert!(reported, "damage not reported");
                prop_assert!(found.len() < records.len());
                prop_assert!(is_subsequence(&found, &records), "a record it did not hold");
            }
        }
        let checked = fuzzing::check_log(&log);
        prop_assert!(checked.is_ok(), "{:?}", checked);
    }
}
