//! The on-disk hash cache: `DIR/.shoal-cache`, so a restarted peer does not re-hash a large
//! folder whose files did not change.
//!
//! The cache is a hint, never trusted blindly: an entry saves hashing only when the file's
//! inode, size, modification time and change time all equal what was recorded, its chunk size
//! is the one the library would pick, and its chunk hashes merge to its id. Anything else
//! (another version, a bad checksum, a truncated file, an entry that does not add up) is
//! ignored with a warning and the files are hashed again.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "SHOALHC\0" | version u32 | entry count u32 | entries... | BLAKE3 of all before (32 bytes)
//! entry: name length u16 | name (UTF-8) | ino u64 | size u64 | mtime i64 | mtime_nsec i64
//!        | ctime i64 | ctime_nsec i64 | chunk size u32 | id [32] | chunk count u32
//!        | chunk hashes [32] x count
//! ```
//!
//! Written to a hidden temporary file, synced, then renamed over the old cache, so a reader
//! sees the old cache or the new one, never a mix. Hidden names are never shared, so neither
//! file is ever listed or registered.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use shoal_proto::message::ChunkHash;
use shoal_proto::{FileId, content};

use crate::library::Stamp;

/// The cache's file name in the shared folder.
pub(crate) const CACHE_FILE: &str = ".shoal-cache";
/// Where a new cache is written before it replaces the old one.
const TEMP_FILE: &str = ".shoal-cache.tmp";
const MAGIC: [u8; 8] = *b"SHOALHC\0";
/// Bump when the layout changes: a cache of another version is ignored, not guessed at.
pub(crate) const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const CHECKSUM_LEN: usize = 32;
/// A cache larger than this is not read (a 2^18-chunk manifest is 8 MiB; this allows
/// thousands of the largest files).
const MAX_CACHE_BYTES: u64 = 1 << 30;

/// One file's hashes as recorded, with the stamp that vouches for them.
pub(crate) struct CachedFile {
    pub(crate) ino: u64,
    pub(crate) size: u64,
    pub(crate) mtime: (i64, i64),
    pub(crate) ctime: (i64, i64),
    pub(crate) chunk_size: u32,
    pub(crate) id: FileId,
    pub(crate) chunk_hashes: Vec<ChunkHash>,
}

impl CachedFile {
    /// Whether this entry describes the file as it is now (`stamp`) and is self-consistent
    /// for a library that prefers `preferred_chunk_size`. The device number is not compared:
    /// it can change between boots for the same disk.
    pub(crate) fn vouches_for(&self, stamp: &Stamp, preferred_chunk_size: u32) -> bool {
        self.ino == stamp.ino
            && self.size == stamp.size
            && self.mtime == (stamp.mtime, stamp.mtime_nsec)
            && self.ctime == (stamp.ctime, stamp.ctime_nsec)
            && self.chunk_size == content::chunk_size_for(self.size, preferred_chunk_size)
            && self.chunk_hashes.len() as u64 == content::chunk_count(self.size, self.chunk_size)
            && content::root_from_chunk_hashes(&self.chunk_hashes) == Some(self.id)
    }
}

/// Reads the cache of `dir`. A missing cache is an empty one; an unusable one is reported
/// with a warning and treated as empty.
pub(crate) fn load(dir: &Path) -> HashMap<String, CachedFile> {
    let path = dir.join(CACHE_FILE);
    let bytes = match read_capped(&path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return HashMap::new(),
        Err(e) => {
            log::warn!(
                "ignoring the hash cache {}: {e}; hashing every file",
                path.display()
            );
            return HashMap::new();
        }
    };
    match decode(&bytes) {
        Ok(entries) => entries,
        Err(reason) => {
            log::warn!(
                "ignoring the hash cache {}: {reason}; hashing every file",
                path.display()
            );
            HashMap::new()
        }
    }
}

/// Replaces the cache of `dir` with `entries` (name, stamp, chunk size, id, chunk hashes).
pub(crate) fn save<'a>(
    dir: &Path,
    entries: impl ExactSizeIterator<Item = (&'a str, &'a Stamp, u32, &'a FileId, &'a [ChunkHash])>,
) -> io::Result<()> {
    let bytes = encode(entries)?;
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

fn read_capped(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len > MAX_CACHE_BYTES {
        return Err(io::Error::other(format!(
            "{len} bytes is more than a cache can be"
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_CACHE_BYTES).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

fn encode<'a>(
    entries: impl ExactSizeIterator<Item = (&'a str, &'a Stamp, u32, &'a FileId, &'a [ChunkHash])>,
) -> io::Result<Vec<u8>> {
    let too_many = || io::Error::other("too many entries for the cache format");
    let mut out = Vec::with_capacity(HEADER_LEN + entries.len() * 160);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(entries.len())
            .map_err(|_| too_many())?
            .to_le_bytes(),
    );
    for (name, stamp, chunk_size, id, hashes) in entries {
        let name_len = u16::try_from(name.len()).map_err(|_| too_many())?;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&stamp.ino.to_le_bytes());
        out.extend_from_slice(&stamp.size.to_le_bytes());
        out.extend_from_slice(&stamp.mtime.to_le_bytes());
        out.extend_from_slice(&stamp.mtime_nsec.to_le_bytes());
        out.extend_from_slice(&stamp.ctime.to_le_bytes());
        out.extend_from_slice(&stamp.ctime_nsec.to_le_bytes());
        out.extend_from_slice(&chunk_size.to_le_bytes());
        out.extend_from_slice(&id.0);
        let count = u32::try_from(hashes.len()).map_err(|_| too_many())?;
        out.extend_from_slice(&count.to_le_bytes());
        for hash in hashes {
            out.extend_from_slice(hash);
        }
    }
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<HashMap<String, CachedFile>, String> {
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN || bytes[..8] != MAGIC {
        return Err("not a shoal hash cache".into());
    }
    let mut header = Reader(&bytes[8..HEADER_LEN]);
    let version = header.u32()?;
    if version != VERSION {
        return Err(format!(
            "format version {version}, this shoal reads version {VERSION}"
        ));
    }
    let count = header.u32()?;
    let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if blake3::hash(body).as_bytes()[..] != checksum[..] {
        return Err("checksum mismatch (damaged or cut short)".into());
    }
    let mut r = Reader(&body[HEADER_LEN..]);
    // No preallocation from the claimed count: the map grows as entries really parse.
    let mut entries = HashMap::new();
    for _ in 0..count {
        let name_len = usize::from(r.u16()?);
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| "a name is not UTF-8".to_string())?
            .to_string();
        let ino = r.u64()?;
        let size = r.u64()?;
        let mtime = (r.i64()?, r.i64()?);
        let ctime = (r.i64()?, r.i64()?);
        let chunk_size = r.u32()?;
        let id = FileId(r.array()?);
        let chunks = r.u32()?;
        if u64::from(chunks) > content::MAX_CHUNKS {
            return Err(format!("an entry claims {chunks} chunks"));
        }
        let mut chunk_hashes = Vec::new();
        for _ in 0..chunks {
            chunk_hashes.push(r.array()?);
        }
        entries.insert(
            name,
            CachedFile {
                ino,
                size,
                mtime,
                ctime,
                chunk_size,
                id,
                chunk_hashes,
            },
        );
    }
    if !r.0.is_empty() {
        return Err("bytes left after the last entry".into());
    }
    Ok(entries)
}

/// A bounds-checked little-endian cursor.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("an entry is cut short".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, String> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, String> {
        self.array().map(i64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ino: u64, size: u64) -> Stamp {
        Stamp {
            dev: 1,
            ino,
            size,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            ctime: 1_700_000_001,
            ctime_nsec: 6,
        }
    }

    fn hashes_of(bytes: &[u8], chunk_size: u32) -> (FileId, Vec<ChunkHash>) {
        content::hash_reader(
            &mut &bytes[..],
            bytes.len() as u64,
            chunk_size,
            &mut Vec::new(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_every_damage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![3u8; 5000];
        let (id, hashes) = hashes_of(&bytes, 1024);
        let s = stamp(42, 5000);
        save(
            dir.path(),
            [("a.bin", &s, 1024, &id, &hashes[..])].into_iter(),
        )
        .unwrap();
        assert!(!dir.path().join(TEMP_FILE).exists());

        let loaded = load(dir.path());
        let entry = &loaded["a.bin"];
        assert_eq!((entry.id, entry.chunk_hashes.len()), (id, 5));
        assert!(entry.vouches_for(&s, 1024));
        // Another device number is fine; anything else about the file is not.
        assert!(entry.vouches_for(&Stamp { dev: 9, ..s }, 1024));
        for other in [
            Stamp { ino: 43, ..s },
            Stamp { size: 5001, ..s },
            Stamp { mtime_nsec: 6, ..s },
            Stamp { ctime: 0, ..s },
        ] {
            assert!(!entry.vouches_for(&other, 1024), "{other:?}");
        }
        // The library now prefers another chunk size: the entry's manifest is not what it
        // would compute.
        assert!(!entry.vouches_for(&s, 4096));

        let raw = fs::read(dir.path().join(CACHE_FILE)).unwrap();
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
    fn another_version_is_ignored() {
        let s = stamp(1, 0);
        let (id, hashes) = hashes_of(b"", 1024);
        let mut bytes = encode([("e", &s, 1024, &id, &hashes[..])].into_iter()).unwrap();
        bytes[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let body_len = bytes.len() - CHECKSUM_LEN;
        let checksum = *blake3::hash(&bytes[..body_len]).as_bytes();
        bytes[body_len..].copy_from_slice(&checksum);
        let err = decode(&bytes).err().unwrap();
        assert!(err.contains("version 2"), "{err}");
    }

    #[test]
    fn an_entry_whose_hashes_do_not_add_up_vouches_for_nothing() {
        let s = stamp(7, 5000);
        let (_, hashes) = hashes_of(&[1u8; 5000], 1024);
        let wrong = FileId([0; 32]);
        let bytes = encode([("x", &s, 1024, &wrong, &hashes[..])].into_iter()).unwrap();
        let entries = decode(&bytes).unwrap();
        assert!(!entries["x"].vouches_for(&s, 1024));
    }
}
