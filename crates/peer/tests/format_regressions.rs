//! Inputs found by the on-disk format fuzz targets `hash_cache` and `resume_sidecar` in
//! `fuzz/` (see docs/SECURITY.md, "Fuzzing"), replayed in the normal test suite. None ever
//! crashed a decoder; `tests/format_corpus/<target>/` holds the smallest corpus entry per
//! distinct outcome, as `fuzz/examples/pick_format_regressions.rs` wrote them: each file is
//! named `<outcome as a file>.<outcome sealed as a body>`, an outcome being `ok` or the
//! `FormatError` kind. So a change that makes one of these paths panic, accept what it
//! refused or refuse it for another reason fails here, without a fuzzer.
//!
//! The oracles are the targets' own: nothing panics; whatever decodes re-encodes to the
//! same bytes and decodes back equal; a flipped bit is refused.
#![allow(clippy::unwrap_used)]

use std::fmt::Debug;
use std::fs;
use std::path::Path;

use shoal_peer::fuzzing::{FormatError, HashCache, ResumeSidecar};

/// `body` in a valid envelope: magic, version 2 (u16 little-endian), body, BLAKE3.
fn seal(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(body);
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

/// Replays `tests/format_corpus/<target>/*` as files and as sealed bodies: each must reach
/// the outcomes its name says, under the targets' oracles. Returns how many were replayed.
fn replay<T: PartialEq + Debug>(
    target: &str,
    magic: &[u8; 8],
    decode: impl Fn(&[u8]) -> Result<T, FormatError>,
    encode: impl Fn(&T) -> Vec<u8>,
) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/format_corpus")
        .join(target);
    let mut replayed = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let expected = path.file_name().unwrap().to_str().unwrap().to_string();
        let input = fs::read(&path).unwrap();
        let mut outcome = Vec::new();
        for bytes in [input.clone(), seal(magic, &input)] {
            let decoded = decode(&bytes);
            outcome.push(decoded.as_ref().map_or_else(|e| e.kind(), |_| "ok"));
            let Ok(value) = decoded else { continue };
            assert_eq!(
                encode(&value),
                bytes,
                "{expected}: re-encodes to other bytes"
            );
            assert_eq!(decode(&bytes).unwrap(), value);
            for bit in [0, 8 * 8, bytes.len() * 8 / 2, bytes.len() * 8 - 1] {
                let mut flipped = bytes.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(decode(&flipped).is_err(), "{expected}: bit {bit} flipped");
            }
        }
        assert_eq!(outcome.join("."), expected);
        replayed += 1;
    }
    replayed
}

#[test]
fn hash_cache_corpus_entries_keep_their_outcomes() {
    let replayed = replay("hash_cache", b"SHOALHSH", HashCache::decode, |c| {
        c.encode().unwrap()
    });
    assert_eq!(replayed, 12);
}

#[test]
fn resume_sidecar_corpus_entries_keep_their_outcomes() {
    let replayed = replay(
        "resume_sidecar",
        b"SHOALRES",
        ResumeSidecar::decode,
        ResumeSidecar::encode,
    );
    assert_eq!(replayed, 15);
}
