//! The on-disk hash cache: `DIR/.shoal-cache`, so a restarted peer does not re-hash a large
//! folder whose files did not change.
//!
//! The cache is a hint, never trusted blindly: an entry saves hashing only when
//! [`CachedFile::vouches_for`] the file as it is now. Anything else (another version, a bad
//! checksum, a truncated file, an entry that does not add up) is ignored with one warning
//! and the files are hashed again.
//!
//! Layout (the shared convention of `format.rs`; integers little-endian):
//!
//! ```text
//! magic "SHOALHSH" | version u16 (2) | entry count u32 | entries... | BLAKE3 of all before (32 bytes)
//! entry: name length u16 | name (UTF-8) | ino u64 | size u64 | mtime i64 | mtime_nsec i64
//!        | ctime i64 | ctime_nsec i64 | chunk size u32 | id [32] | chunk count u32
//!        | chunk hashes [32] x count
//! ```
//!
//! Names are unique. Version 1 (magic `SHOALHC\0`, u32 version) is refused as an older
//! shoal's cache: the folder is hashed once and the cache rewritten in version 2.
//!
//! Written to a hidden temporary file, synced, then renamed over the old cache, so a reader
//! sees the old cache or the new one, never a mix. Hidden names are never shared, so neither
//! file is ever listed or registered.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use shoal_proto::{FileId, content};

use crate::format::{self, Format, FormatError, Reader};
use crate::stamp::CachedFile;

/// The cache's file name in the shared folder.
pub(crate) const CACHE_FILE: &str = ".shoal-cache";
/// Where a new cache is written before it replaces the old one.
const TEMP_FILE: &str = ".shoal-cache.tmp";
/// Bump the version when the layout changes: a cache of another version is ignored, not
/// guessed at.
pub(crate) const FORMAT: Format = Format {
    name: "hash cache",
    magic: *b"SHOALHSH",
    version: 2,
    legacy_magic: b"SHOALHC\0",
};
/// A cache larger than this is not read (a 2^18-chunk manifest is 8 MiB; this allows
/// thousands of the largest files).
const MAX_CACHE_BYTES: u64 = 1 << 30;

/// The entries of a cache, in file order.
pub(crate) type Entries = Vec<(String, CachedFile)>;

/// Reads the cache of `dir`. A missing cache is an empty one; an unusable one is reported
/// with one warning and treated as empty.
pub(crate) fn load(dir: &Path) -> HashMap<String, CachedFile> {
    let path = dir.join(CACHE_FILE);
    let decoded = format::read_capped(&path, MAX_CACHE_BYTES)
        .and_then(|bytes| Ok(bytes.map(|b| decode(&b)).transpose()?));
    match decoded {
        Ok(entries) => entries.unwrap_or_default().into_iter().collect(),
        Err(reason) => {
            log::warn!(
                "ignoring the hash cache {}: {reason}; hashing every file",
                path.display()
            );
            HashMap::new()
        }
    }
}

/// Replaces the cache of `dir` with `entries`.
pub(crate) fn save(dir: &Path, entries: &[(String, CachedFile)]) -> io::Result<()> {
    let bytes = encode(entries).map_err(io::Error::other)?;
    let temp = dir.join(TEMP_FILE);
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(&bytes)?;
        // Synced before the rename, so a crash cannot leave an empty file under the real
        // name (it would only be ignored, but then everything is hashed again).
        file.sync_data()?;
        fs::rename(&temp, dir.join(CACHE_FILE))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// The cache file holding `entries`. Refuses what its fixed-width fields cannot hold and a
/// name listed twice (which no decoder would accept back).
pub(crate) fn encode(entries: &[(String, CachedFile)]) -> Result<Vec<u8>, FormatError> {
    let too_large = |what| FormatError::TooLarge { what };
    let mut out = FORMAT.header();
    let count = u32::try_from(entries.len()).map_err(|_| too_large("the entry count"))?;
    out.extend_from_slice(&count.to_le_bytes());
    let mut names = HashSet::new();
    for (name, file) in entries {
        if !names.insert(name.as_str()) {
            return Err(FormatError::DuplicateName { name: name.clone() });
        }
        let name_len = u16::try_from(name.len()).map_err(|_| too_large("a name"))?;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&file.ino.to_le_bytes());
        out.extend_from_slice(&file.size.to_le_bytes());
        for t in [file.mtime.0, file.mtime.1, file.ctime.0, file.ctime.1] {
            out.extend_from_slice(&t.to_le_bytes());
        }
        out.extend_from_slice(&file.chunk_size.to_le_bytes());
        out.extend_from_slice(&file.id.0);
        let chunks = u32::try_from(file.chunk_hashes.len())
            .ok()
            .filter(|&n| u64::from(n) <= content::MAX_CHUNKS)
            .ok_or(too_large("a chunk count"))?;
        out.extend_from_slice(&chunks.to_le_bytes());
        for hash in file.chunk_hashes.iter() {
            out.extend_from_slice(hash);
        }
    }
    Format::seal(&mut out);
    Ok(out)
}

/// The entries of a cache file, in file order.
pub(crate) fn decode(bytes: &[u8]) -> Result<Entries, FormatError> {
    let mut r = Reader(FORMAT.open(bytes)?);
    let count = r.u32("the entry count")?;
    // No preallocation from the claimed count: the list grows as entries really parse.
    let mut entries: Entries = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..count {
        let name_len = usize::from(r.u16("a name length")?);
        let name = std::str::from_utf8(r.take(name_len, "a name")?)
            .map_err(|_| FormatError::NameNotUtf8)?;
        if !names.insert(name) {
            return Err(FormatError::DuplicateName { name: name.into() });
        }
        let ino = r.u64("an inode number")?;
        let size = r.u64("a size")?;
        let mtime = (r.i64("a modification time")?, r.i64("a modification time")?);
        let ctime = (r.i64("a change time")?, r.i64("a change time")?);
        let chunk_size = r.u32("a chunk size")?;
        let id = FileId(r.array("an id")?);
        let chunks = u64::from(r.u32("a chunk count")?);
        if chunks > content::MAX_CHUNKS {
            return Err(FormatError::TooManyChunks { count: chunks });
        }
        // Allocates no more than the bytes present can fill.
        let present = r.0.len() / 32;
        let mut chunk_hashes = Vec::with_capacity(present.min(chunks as usize));
        for _ in 0..chunks {
            chunk_hashes.push(r.array("the chunk hashes")?);
        }
        entries.push((
            name.to_string(),
            CachedFile {
                ino,
                size,
                mtime,
                ctime,
                chunk_size,
                id,
                chunk_hashes: Arc::new(chunk_hashes),
            },
        ));
    }
    r.finish()?;
    Ok(entries)
}

/// A cache as version 1 wrote it (magic `SHOALHC\0`, u32 version, 16-byte header), for
/// the tests that an older shoal's cache is refused.
#[cfg(test)]
pub(crate) fn version_1_cache(entries: &[(String, CachedFile)]) -> Vec<u8> {
    let Ok(body) = encode(entries) else {
        return Vec::new();
    };
    let mut out = b"SHOALHC\0".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&body[format::HEADER_LEN..body.len() - format::CHECKSUM_LEN]);
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{CHECKSUM_LEN, HEADER_LEN};
    use crate::stamp::Stamp;
    use crate::stamp::testing::{hashes_of, stamp};

    fn one_entry() -> (Stamp, Entries) {
        let (id, hashes) = hashes_of(&[3u8; 5000], 1024);
        let s = stamp(42, 5000);
        let entry = CachedFile::recorded(&s, 1024, id, hashes);
        (s, vec![("a.bin".to_string(), entry)])
    }

    /// The smallest cache: no entries.
    const EMPTY_LEN: usize = HEADER_LEN + 4 + CHECKSUM_LEN;

    #[test]
    fn round_trip_and_every_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (s, entries) = one_entry();
        save(dir.path(), &entries).unwrap();
        assert!(!dir.path().join(TEMP_FILE).exists());

        let loaded = load(dir.path());
        let entry = &loaded["a.bin"];
        assert_eq!(entry, &entries[0].1);
        assert!(entry.vouches_for(&s, 1024));

        let raw = fs::read(dir.path().join(CACHE_FILE)).unwrap();
        assert_eq!(&raw[..10], b"SHOALHSH\x02\x00");
        let mut damaged = Vec::new();
        for i in [0, 9, 20, raw.len() - 1] {
            let mut b = raw.clone();
            b[i] ^= 1;
            damaged.push(b);
        }
        damaged.push(raw[..raw.len() - 10].to_vec());
        damaged.push(Vec::new());
        damaged.push(b"garbage".to_vec());
        for bytes in damaged {
            assert!(decode(&bytes).is_err());
            fs::write(dir.path().join(CACHE_FILE), &bytes).unwrap();
            assert!(load(dir.path()).is_empty());
        }
    }

    #[test]
    fn another_version_is_refused_by_number() {
        let (_, entries) = one_entry();
        let mut bytes = encode(&entries).unwrap();
        bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
        format::reseal(&mut bytes);
        let err = decode(&bytes).unwrap_err();
        assert_eq!(
            err,
            FormatError::Version {
                format: "hash cache",
                found: 3,
                supported: 2
            }
        );
        assert!(err.to_string().contains("version 3"), "{err}");
    }

    #[test]
    fn a_version_1_cache_is_refused_as_an_older_shoals() {
        let (_, entries) = one_entry();
        let old = version_1_cache(&entries);
        let err = decode(&old).unwrap_err();
        assert_eq!(
            err,
            FormatError::Legacy {
                format: "hash cache",
                supported: 2
            }
        );
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CACHE_FILE), &old).unwrap();
        assert!(load(dir.path()).is_empty());
    }

    #[test]
    fn a_name_listed_twice_is_neither_written_nor_read() {
        let (_, mut entries) = one_entry();
        entries.push(entries[0].clone());
        let dup = FormatError::DuplicateName {
            name: "a.bin".into(),
        };
        assert_eq!(encode(&entries), Err(dup.clone()));
        // Hand-made: the entry's bytes twice, count 2.
        let one = encode(&entries[..1]).unwrap();
        let entry = &one[HEADER_LEN + 4..one.len() - CHECKSUM_LEN];
        let two = FORMAT.sealed(&[&2u32.to_le_bytes()[..], entry, entry].concat());
        assert_eq!(decode(&two), Err(dup));
    }

    #[test]
    fn the_empty_cache_is_the_smallest() {
        let bytes = encode(&[]).unwrap();
        assert_eq!(bytes.len(), EMPTY_LEN);
        assert_eq!(decode(&bytes), Ok(Vec::new()));
        assert!(matches!(
            decode(&bytes[..EMPTY_LEN - 1]),
            Err(FormatError::Checksum | FormatError::TooShort { .. })
        ));
    }

    fn arb_entry() -> impl proptest::strategy::Strategy<Value = (String, CachedFile)> {
        use proptest::prelude::*;
        (
            "[a-z0-9.\u{e9}]{0,12}",
            any::<(u64, u64, i64, i64, i64, i64, u32)>(),
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..6),
        )
            .prop_map(
                |(name, (ino, size, m, mn, c, cn, chunk_size), id, hashes)| {
                    let file = CachedFile {
                        ino,
                        size,
                        mtime: (m, mn),
                        ctime: (c, cn),
                        chunk_size,
                        id: FileId(id),
                        chunk_hashes: Arc::new(hashes),
                    };
                    (name, file)
                },
            )
    }

    proptest::proptest! {
        /// Any entries with distinct names: decode(encode(e)) == e, in order, and encoding
        /// the decoded entries gives the same bytes.
        #[test]
        fn any_cache_round_trips(entries in proptest::collection::vec(arb_entry(), 0..5)) {
            let mut seen = HashSet::new();
            let entries: Entries =
                entries.into_iter().filter(|(n, _)| seen.insert(n.clone())).collect();
            let bytes = encode(&entries).unwrap();
            let back = decode(&bytes).unwrap();
            proptest::prop_assert_eq!(&back, &entries);
            proptest::prop_assert_eq!(encode(&back).unwrap(), bytes);
        }

        /// Any flipped bit of a valid cache is refused.
        #[test]
        fn any_flipped_bit_is_refused(
            entries in proptest::collection::vec(arb_entry(), 1..3),
            at in proptest::num::usize::ANY,
            bit in 0u8..8,
        ) {
            let mut seen = HashSet::new();
            let entries: Entries =
                entries.into_iter().filter(|(n, _)| seen.insert(n.clone())).collect();
            let mut bytes = encode(&entries).unwrap();
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
            proptest::prop_assert!(decode(&bytes).is_err());
        }

        /// Arbitrary bytes, sealed or not: a verdict, never a panic.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            seal in proptest::bool::ANY,
        ) {
            let bytes = if seal { FORMAT.sealed(&body) } else { body };
            if let Ok(entries) = decode(&bytes) {
                proptest::prop_assert_eq!(encode(&entries).unwrap(), bytes);
            }
        }
    }
}
