//! The resume sidecar: which chunks of a part file are already verified, and for which
//! content.
//!
//! Next to `DIR/.NAME.shoal-part` lives `DIR/.NAME.shoal-state`, in the shared convention
//! of `format.rs` (integers little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `SHOALRES` |
//! | 2 | format version (2), u16 |
//! | 32 | content id |
//! | 8 | file size, u64 |
//! | 4 | chunk size, u32 |
//! | 4 | chunk count, u32 |
//! | ceil(count / 8) | bitmap, chunk `i` done = bit `i % 8` of byte `i / 8`; bits past the last chunk zero |
//! | 32 | BLAKE3 hash of everything above |
//!
//! A sidecar is a hint, never trusted blindly: one that does not parse, fails its checksum,
//! is of another version or describes another file is discarded (the caller warns and
//! starts the part afresh), and chunks it marks done are re-hashed from the part file before
//! a resumed download counts them. Version 1 (magic `SHRS`, a 16-byte truncated checksum) is
//! refused as an older shoal's.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use shoal_proto::FileId;
use shoal_proto::content::{MAX_CHUNKS, chunk_count};

use crate::format::{self, CHECKSUM_LEN, Format, FormatError, HEADER_LEN, LoadError, Reader};

pub(crate) const FORMAT: Format = Format {
    name: "resume sidecar",
    magic: *b"SHOALRES",
    version: 2,
    legacy_magic: b"SHRS",
};
/// Id, size, chunk size, chunk count.
const GEOMETRY_LEN: usize = 32 + 8 + 4 + 4;

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

/// Why a sidecar on disk was discarded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SidecarError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "it describes another download (id {}, {} bytes, {}-byte chunks)",
        .found.id.short(), .found.size, .found.chunk_size
    )]
    OtherDownload { found: Geometry },
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
    pub(crate) fn load(path: &Path, expected: Geometry) -> Result<Option<Self>, SidecarError> {
        // Read no more than a sidecar of this file can be.
        let most = HEADER_LEN + GEOMETRY_LEN + expected.bitmap_len() + CHECKSUM_LEN;
        let Some(bytes) = format::read_capped(path, most as u64)? else {
            return Ok(None);
        };
        let state = Self::decode(&bytes).map_err(LoadError::from)?;
        if state.geometry != expected {
            return Err(SidecarError::OtherDownload {
                found: state.geometry,
            });
        }
        Ok(Some(state))
    }

    /// Reads a sidecar without knowing which download it belongs to (to report the
    /// interrupted downloads of a folder): its geometry and the chunks it marks done.
    /// Bounded by the largest sidecar any file can have.
    pub(crate) fn peek(path: &Path) -> Result<(Geometry, Vec<u32>), String> {
        let most = HEADER_LEN
            + GEOMETRY_LEN
            + usize::try_from(MAX_CHUNKS.div_ceil(8)).unwrap_or(usize::MAX)
            + CHECKSUM_LEN;
        let bytes = format::read_capped(path, most as u64)
            .map_err(|e| e.to_string())?
            .ok_or("there is none")?;
        let state = Self::decode(&bytes).map_err(|e| e.to_string())?;
        Ok((state.geometry, state.done_chunks()))
    }

    /// The sidecar in `bytes`, whichever file it describes.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader(FORMAT.open(bytes)?);
        let id = FileId(r.array("the id")?);
        let size = r.u64("the size")?;
        let chunk_size = r.u32("the chunk size")?;
        let count = u64::from(r.u32("the chunk count")?);
        if count > MAX_CHUNKS {
            return Err(FormatError::TooManyChunks { count });
        }
        if count != chunk_count(size, chunk_size) {
            return Err(FormatError::ChunkCount {
                count,
                size,
                chunk_size,
            });
        }
        let geometry = Geometry {
            id,
            size,
            chunk_size,
        };
        let done = r.take(geometry.bitmap_len(), "the bitmap")?.to_vec();
        r.finish()?;
        // Bits past the last chunk: no encoder sets them.
        let used = count % 8;
        if used != 0 && done.last().is_some_and(|last| last >> used != 0) {
            return Err(FormatError::Padding);
        }
        Ok(ResumeState { geometry, done })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let g = &self.geometry;
        let mut out = FORMAT.header();
        out.extend_from_slice(&g.id.0);
        out.extend_from_slice(&g.size.to_le_bytes());
        out.extend_from_slice(&g.chunk_size.to_le_bytes());
        out.extend_from_slice(&(g.chunks() as u32).to_le_bytes());
        out.extend_from_slice(&self.done);
        Format::seal(&mut out);
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

    /// Marks chunk `index` done or not; an index past the last chunk is ignored.
    pub(crate) fn set_done(&mut self, index: u32, done: bool) {
        let i = index as usize;
        if i >= self.geometry.chunks() {
            return;
        }
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

/// A sidecar as version 1 wrote it: `SHRS`, a version byte, three zero bytes, the
/// geometry and bitmap, the first 16 bytes of the BLAKE3 hash.
#[cfg(test)]
pub(crate) fn version_1_sidecar(state: &ResumeState) -> Vec<u8> {
    let new = state.encode();
    let mut out = b"SHRS\x01\0\0\0".to_vec();
    out.extend_from_slice(&new[HEADER_LEN..new.len() - CHECKSUM_LEN]);
    let checksum = blake3::hash(&out);
    out.extend_from_slice(&checksum.as_bytes()[..16]);
    out
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

    #[test]
    fn a_version_1_sidecar_is_refused_as_an_older_shoals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".f.shoal-state");
        let mut state = ResumeState::new(geometry());
        state.set_done(1, true);
        fs::write(&path, version_1_sidecar(&state)).unwrap();
        let err = ResumeState::load(&path, geometry()).unwrap_err();
        assert!(
            matches!(
                err,
                SidecarError::Load(LoadError::Format(FormatError::Legacy { supported: 2, .. }))
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("older shoal"), "{err}");
    }

    #[test]
    fn marks_past_the_last_chunk_are_neither_kept_nor_read() {
        // 11 chunks: five bits of the second byte are padding.
        let mut state = ResumeState::new(geometry());
        state.set_done(11, true);
        state.set_done(15, true);
        assert_eq!(state, ResumeState::new(geometry()));
        let mut bytes = state.encode();
        let last = bytes.len() - CHECKSUM_LEN - 1;
        bytes[last] |= 0x80;
        format::reseal(&mut bytes);
        assert_eq!(ResumeState::decode(&bytes), Err(FormatError::Padding));
    }

    fn arb_state() -> impl proptest::strategy::Strategy<Value = ResumeState> {
        use proptest::prelude::*;
        (
            any::<[u8; 32]>(),
            0u64..200_000,
            10u32..24,
            proptest::collection::vec(any::<u32>(), 0..20),
        )
            .prop_map(|(id, size, shift, done)| {
                let mut state = ResumeState::new(Geometry {
                    id: FileId(id),
                    size,
                    chunk_size: 1 << shift,
                });
                let chunks = state.geometry().chunks() as u32;
                for i in done {
                    state.set_done(i % chunks, true);
                }
                state
            })
    }

    proptest::proptest! {
        /// Any sidecar: decode(encode(s)) == s, and re-encoding gives the same bytes.
        #[test]
        fn any_sidecar_round_trips(state in arb_state()) {
            let bytes = state.encode();
            let back = ResumeState::decode(&bytes).unwrap();
            proptest::prop_assert_eq!(&back, &state);
            proptest::prop_assert_eq!(back.encode(), bytes);
        }

        /// Any bytes: a verdict, never a panic; whatever is accepted re-encodes to itself.
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            seal in proptest::bool::ANY,
        ) {
            // Sealed: past the magic and the checksum, into the field checks.
            let bytes = if seal { FORMAT.sealed(&body) } else { body };
            if let Ok(state) = ResumeState::decode(&bytes) {
                proptest::prop_assert_eq!(state.encode(), bytes);
            }
        }

        /// A valid sidecar with any one bit flipped is refused.
        #[test]
        fn any_flipped_bit_is_refused(state in arb_state(), at in 0usize..10_000, bit in 0u8..8) {
            let mut bytes = state.encode();
            let at = at % bytes.len();
            bytes[at] ^= 1 << bit;
            proptest::prop_assert!(ResumeState::decode(&bytes).is_err());
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
        assert!(err.to_string().contains("larger than"), "{err}");
    }
}
