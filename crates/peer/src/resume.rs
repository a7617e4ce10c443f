//! The resume sidecar: which chunks of a part file are already verified, and for which
//! content.
//!
//! Next to `DIR/.NAME.shoal-part` lives `DIR/.NAME.shoal-state`:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `SHRS` |
//! | 1 | format version (1) |
//! | 3 | reserved, zero |
//! | 32 | content id |
//! | 8 | file size, little-endian |
//! | 4 | chunk size, little-endian |
//! | 4 | chunk count, little-endian |
//! | ceil(count / 8) | bitmap, chunk `i` done = bit `i % 8` of byte `i / 8` |
//! | 16 | first 16 bytes of the BLAKE3 hash of everything above |
//!
//! A sidecar is a hint, never trusted blindly: one that does not parse, fails its checksum or
//! describes another file is discarded (the caller warns), and chunks it marks done are
//! re-hashed from the part file before a resumed download counts them.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use shoal_proto::FileId;
use shoal_proto::content::{MAX_CHUNKS, chunk_count};

const MAGIC: [u8; 4] = *b"SHRS";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 4 + 1 + 3 + 32 + 8 + 4 + 4;
const CHECKSUM_LEN: usize = 16;

/// What a sidecar describes: one file's identity and chunk grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub(crate) id: FileId,
    pub(crate) size: u64,
    pub(crate) chunk_size: u32,
}

impl Geometry {
    fn chunks(&self) -> usize {
        usize::try_from(chunk_count(self.size, self.chunk_size)).unwrap_or(usize::MAX)
    }

    fn bitmap_len(&self) -> usize {
        self.chunks().div_ceil(8)
    }
}

/// The verified-chunk bitmap of one partial download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResumeState {
    geometry: Geometry,
    done: Vec<u8>,
}

impl ResumeState {
    /// Nothing done yet.
    pub(crate) fn new(geometry: Geometry) -> Self {
        ResumeState {
            geometry,
            done: vec![0; geometry.bitmap_len()],
        }
    }

    /// Reads a sidecar. `Ok(None)`: there is none. `Err(reason)`: there is one but it is
    /// garbage or describes another file; the caller discards it with a warning.
    pub(crate) fn load(path: &Path, expected: Geometry) -> Result<Option<Self>, String> {
        let file = match fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read it: {e}")),
        };
        // Read no more than a sidecar of this file can be: a huge file planted under the
        // sidecar's name costs one bounded read, not memory.
        let most = HEADER_LEN + expected.bitmap_len() + CHECKSUM_LEN;
        let mut bytes = Vec::new();
        file.take(most as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if bytes.len() > most {
            return Err(format!("too long for this file (over {most} bytes)"));
        }
        Self::decode(&bytes, expected).map(Some)
    }

    /// Reads a sidecar without knowing which download it belongs to (to report the
    /// interrupted downloads of a folder): its geometry and how many chunks it marks done.
    /// Bounded like [`ResumeState::load`], by the most chunks a file may have.
    pub(crate) fn peek(path: &Path) -> Result<(Geometry, Vec<u32>), String> {
        let file = fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
        let most = HEADER_LEN
            + usize::try_from(MAX_CHUNKS.div_ceil(8)).unwrap_or(usize::MAX)
            + CHECKSUM_LEN;
        let mut bytes = Vec::new();
        file.take(most as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read it: {e}"))?;
        let field = |range: std::ops::Range<usize>| bytes.get(range).unwrap_or(&[]);
        let geometry = Geometry {
            id: FileId(field(8..40).try_into().map_err(|_| "too short")?),
            size: u64::from_le_bytes(field(40..48).try_into().map_err(|_| "too short")?),
            chunk_size: u32::from_le_bytes(field(48..52).try_into().map_err(|_| "too short")?),
        };
        let state = Self::decode(&bytes, geometry)?;
        let done = (0..geometry.chunks() as u32)
            .filter(|&i| state.is_done(i))
            .collect();
        Ok((geometry, done))
    }

    fn decode(bytes: &[u8], expected: Geometry) -> Result<Self, String> {
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(format!("too short ({} bytes)", bytes.len()));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if blake3::hash(body).as_bytes()[..CHECKSUM_LEN] != *checksum {
            return Err("checksum mismatch (torn or corrupted)".into());
        }
        if body[..4] != MAGIC {
            return Err("not a shoal resume file".into());
        }
        if body[4] != VERSION {
            return Err(format!("unknown format version {}", body[4]));
        }
        let field = |range: std::ops::Range<usize>| body.get(range).unwrap_or(&[]);
        let id = FileId(field(8..40).try_into().map_err(|_| "short id")?);
        let size = u64::from_le_bytes(field(40..48).try_into().map_err(|_| "short size")?);
        let chunk_size =
            u32::from_le_bytes(field(48..52).try_into().map_err(|_| "short chunk size")?);
        let count = u32::from_le_bytes(field(52..56).try_into().map_err(|_| "short count")?);
        let found = Geometry {
            id,
            size,
            chunk_size,
        };
        if found != expected {
            return Err(format!(
                "it describes another download (id {}, {size} bytes, {chunk_size}-byte chunks)",
                id.short()
            ));
        }
        if u64::from(count) != chunk_count(size, chunk_size) || u64::from(count) > MAX_CHUNKS {
            return Err("inconsistent chunk count".into());
        }
        let bitmap = &body[HEADER_LEN..];
        if bitmap.len() != expected.bitmap_len() {
            return Err("bitmap length does not match the chunk count".into());
        }
        Ok(ResumeState {
            geometry: expected,
            done: bitmap.to_vec(),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let g = &self.geometry;
        let mut out = Vec::with_capacity(HEADER_LEN + self.done.len() + CHECKSUM_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&g.id.0);
        out.extend_from_slice(&g.size.to_le_bytes());
        out.extend_from_slice(&g.chunk_size.to_le_bytes());
        out.extend_from_slice(&(g.chunks() as u32).to_le_bytes());
        out.extend_from_slice(&self.done);
        let checksum = blake3::hash(&out);
        out.extend_from_slice(&checksum.as_bytes()[..CHECKSUM_LEN]);
        out
    }

    /// Writes the sidecar atomically (temp file + rename), so a crash leaves the old or the
    /// new version, never a mix.
    pub(crate) fn save(&self, path: &Path) -> io::Result<()> {
        let tmp = temp_path(path);
        let bytes = self.encode();
        let written = fs::File::create(&tmp)
            .and_then(|mut file| file.write_all(&bytes))
            .and_then(|()| fs::rename(&tmp, path));
        let Err(e) = written else {
            return Ok(());
        };
        // A full disk leaves no half-written temporary behind. The sidecar of a download
        // always has the same length, so the existing one can take the new record in place
        // without a new block: not atomic, but a torn record fails its checksum and is
        // discarded on load, never trusted.
        let _ = fs::remove_file(&tmp);
        match fs::OpenOptions::new().write(true).open(path) {
            Ok(mut file) if file.metadata().is_ok_and(|m| m.len() == bytes.len() as u64) => {
                file.write_all(&bytes)
            }
            _ => Err(e),
        }
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub(crate) fn is_done(&self, index: u32) -> bool {
        let i = index as usize;
        self.done
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    pub(crate) fn set_done(&mut self, index: u32, done: bool) {
        let i = index as usize;
        if let Some(byte) = self.done.get_mut(i / 8) {
            if done {
                *byte |= 1 << (i % 8);
            } else {
                *byte &= !(1 << (i % 8));
            }
        }
    }

    /// Indices of the chunks marked done.
    pub(crate) fn done_chunks(&self) -> Vec<u32> {
        (0..self.geometry.chunks() as u32)
            .filter(|&i| self.is_done(i))
            .collect()
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> Geometry {
        Geometry {
            id: FileId([9; 32]),
            size: 10 * 1024 + 5,
            chunk_size: 1024,
        }
    }

    #[test]
    fn a_failed_save_leaves_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let state = ResumeState::new(Geometry {
            id: shoal_proto::FileId([1; 32]),
            size: 10,
            chunk_size: 1024,
        });
        // The target is a folder: the rename fails after the temporary was written.
        let target = tmp.path().join("busy");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("x"), b"x").unwrap();
        assert!(state.save(&target).is_err());
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn round_trip_and_rejections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".f.shoal-state");
        assert_eq!(ResumeState::load(&path, geometry()).unwrap(), None);
        let mut state = ResumeState::new(geometry());
        for i in [0, 3, 10] {
            state.set_done(i, true);
        }
        state.save(&path).unwrap();
        let back = ResumeState::load(&path, geometry()).unwrap().unwrap();
        assert_eq!(back.done_chunks(), vec![0, 3, 10]);

        // Another file's sidecar is refused.
        let other = Geometry {
            id: FileId([8; 32]),
            ..geometry()
        };
        assert!(ResumeState::load(&path, other).is_err());

        // Any flipped byte is caught by the checksum.
        let good = fs::read(&path).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            assert!(ResumeState::load(&path, geometry()).is_err(), "byte {at}");
        }
        // Garbage and truncation too.
        fs::write(&path, b"garbage").unwrap();
        assert!(ResumeState::load(&path, geometry()).is_err());
        fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(ResumeState::load(&path, geometry()).is_err());
    }

    proptest::proptest! {
        /// Any bytes, for any expected file: a verdict, never a panic; and whatever is
        /// accepted describes exactly the expected file.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            mut bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            seal in proptest::bool::ANY,
            size in 0u64..100_000,
            chunk_shift in 10u32..24,
        ) {
            let expected = Geometry { id: FileId([7; 32]), size, chunk_size: 1 << chunk_shift };
            if seal {
                // Past the checksum and the magic, into the field checks.
                if bytes.len() >= 5 {
                    bytes[..4].copy_from_slice(&MAGIC);
                    bytes[4] = VERSION;
                }
                let checksum = blake3::hash(&bytes);
                bytes.extend_from_slice(&checksum.as_bytes()[..CHECKSUM_LEN]);
            }
            if let Ok(state) = ResumeState::decode(&bytes, expected) {
                proptest::prop_assert_eq!(state.geometry(), expected);
            }
        }

        /// A valid sidecar with any one byte changed is refused.
        #[test]
        fn any_changed_byte_is_refused(at in 0usize..1000, xor in 1u8..=255, done in 0u32..11) {
            let mut state = ResumeState::new(geometry());
            state.set_done(done, true);
            let mut bytes = state.encode();
            let at = at % bytes.len();
            bytes[at] ^= xor;
            proptest::prop_assert!(ResumeState::decode(&bytes, geometry()).is_err());
        }
    }

    #[test]
    fn an_oversized_sidecar_is_refused_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".f.shoal-state");
        let mut bytes = ResumeState::new(geometry()).encode();
        bytes.extend_from_slice(&[0; 4096]);
        fs::write(&path, &bytes).unwrap();
        let err = ResumeState::load(&path, geometry()).unwrap_err();
        assert!(err.contains("too long"), "{err}");
    }
}
