//! Content identity: a file's id is its plain BLAKE3 hash, and its manifest lists the BLAKE3
//! chaining values of its aligned, chunk-sized subtrees.
//!
//! Because the chunk size is a power of two (at least BLAKE3's 1 KiB chunk), every chunk of a
//! file is a complete subtree of BLAKE3's own tree (the last one may be short), so the chunk
//! hashes merge up to exactly the id `b3sum` prints. A downloader checks the whole list once
//! against the id ([`verify_manifest`]) and then each chunk as it arrives ([`chunk_hash`]): no
//! byte reaches a file unverified, and users can check a result with a standard tool.
//! A file that fits in one chunk has a single "chunk hash": its root hash, the id itself.

use std::io::{self, Read};

use blake3::hazmat::{HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};

use crate::message::{ChunkHash, Manifest};
use crate::{FileId, FileMeta, ProtoError};

/// Chunk size used for new files unless they are huge (see [`chunk_size_for`]).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 18;
/// Smallest accepted chunk size: BLAKE3's own chunk.
pub const MIN_CHUNK_SIZE: u32 = blake3::CHUNK_LEN as u32;
/// Largest accepted chunk size.
pub const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Most chunks a manifest may list (keeps a manifest under 8 MiB).
pub const MAX_CHUNKS: u64 = 1 << 18;

/// The chunk size shoal picks for a file of `size` bytes: `preferred`, doubled until the
/// manifest stays within 65,536 chunks.
pub fn chunk_size_for(size: u64, preferred: u32) -> u32 {
    let mut chunk_size = preferred
        .clamp(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        .next_power_of_two();
    while chunk_count(size, chunk_size) > 1 << 16 && chunk_size < MAX_CHUNK_SIZE {
        chunk_size *= 2;
    }
    chunk_size
}

/// Checks a chunk size received from elsewhere.
pub fn validate_chunk_size(chunk_size: u32) -> Result<(), ProtoError> {
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(ProtoError::BadManifest(format!(
            "chunk size {chunk_size} is not a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
        )));
    }
    Ok(())
}

/// Number of chunks of a file: at least one (an empty file is one empty chunk).
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size.max(1))).max(1)
}

/// Length of chunk `index`, or `None` if the file has no such chunk.
pub fn chunk_len(size: u64, chunk_size: u32, index: u32) -> Option<u32> {
    let start = u64::from(index) * u64::from(chunk_size);
    if u64::from(index) >= chunk_count(size, chunk_size) {
        return None;
    }
    u32::try_from((size - start).min(u64::from(chunk_size))).ok()
}

/// Byte offset of chunk `index` in the file.
pub fn chunk_offset(chunk_size: u32, index: u32) -> u64 {
    u64::from(index) * u64::from(chunk_size)
}

/// The hash of chunk `index` of a file of `size` bytes whose bytes are `data`.
///
/// Callers check `data.len() == chunk_len(..)` and the chunk size first; with those, this
/// cannot panic.
pub fn chunk_hash(size: u64, chunk_size: u32, index: u32, data: &[u8]) -> ChunkHash {
    if chunk_count(size, chunk_size) == 1 {
        return *blake3::hash(data).as_bytes();
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(chunk_offset(chunk_size, index));
    hasher.update(data);
    hasher.finalize_non_root()
}

/// Hashes one chunk fed in pieces (so a caller can hash and store each piece while it is
/// still in the CPU cache). Gives the same result as [`chunk_hash`] on the whole chunk.
pub struct ChunkHasher {
    hasher: blake3::Hasher,
    root: bool,
}

impl ChunkHasher {
    /// A hasher for chunk `index` of a file of `size` bytes in `chunk_size` chunks (checked by
    /// the caller, as for [`chunk_hash`]).
    pub fn new(size: u64, chunk_size: u32, index: u32) -> Self {
        let mut hasher = blake3::Hasher::new();
        let root = chunk_count(size, chunk_size) == 1;
        if !root {
            hasher.set_input_offset(chunk_offset(chunk_size, index));
        }
        ChunkHasher { hasher, root }
    }

    /// Feeds the next piece of the chunk.
    pub fn update(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
    }

    /// The chunk's hash.
    pub fn finalize(&self) -> ChunkHash {
        if self.root {
            *self.hasher.finalize().as_bytes()
        } else {
            self.hasher.finalize_non_root()
        }
    }
}

/// Merges a file's chunk hashes (in order) into its id.
pub fn root_from_chunk_hashes(hashes: &[ChunkHash]) -> Option<FileId> {
    match hashes {
        [] => None,
        [only] => Some(FileId(*only)),
        _ => {
            let (left, right) = hashes.split_at(left_subtree_chunks(hashes.len()));
            let hash = merge_subtrees_root(&merge(left), &merge(right), Mode::Hash);
            Some(FileId(*hash.as_bytes()))
        }
    }
}

/// BLAKE3's tree puts the largest power of two strictly below `n` on the left.
fn left_subtree_chunks(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

fn merge(hashes: &[ChunkHash]) -> ChunkHash {
    if let [only] = hashes {
        return *only;
    }
    let (left, right) = hashes.split_at(left_subtree_chunks(hashes.len()));
    merge_subtrees_non_root(&merge(left), &merge(right), Mode::Hash)
}

/// Checks that a manifest describes `expected` (same id and size) and is self-consistent:
/// its chunk size is acceptable, the chunk count matches the size, and the chunk hashes
/// merge to the id. The name and chunk size are not compared: a holder may store the file
/// under another name and split it at another chunk size, and the content is the same.
pub fn verify_manifest(manifest: &Manifest, expected: &FileMeta) -> Result<(), ProtoError> {
    let file = &manifest.file;
    if file.id != expected.id || file.size != expected.size {
        return Err(ProtoError::BadManifest(format!(
            "describes {} ({} bytes), expected {} ({} bytes)",
            file.id.short(),
            file.size,
            expected.id.short(),
            expected.size
        )));
    }
    validate_chunk_size(file.chunk_size)?;
    let count = chunk_count(file.size, file.chunk_size);
    if count > MAX_CHUNKS {
        return Err(ProtoError::BadManifest(format!(
            "{count} chunks is more than the limit of {MAX_CHUNKS}"
        )));
    }
    if manifest.chunk_hashes.len() as u64 != count {
        return Err(ProtoError::BadManifest(format!(
            "lists {} chunk hashes, a {}-byte file in {}-byte chunks has {count}",
            manifest.chunk_hashes.len(),
            file.size,
            file.chunk_size
        )));
    }
    if root_from_chunk_hashes(&manifest.chunk_hashes) != Some(file.id) {
        return Err(ProtoError::BadManifest(
            "chunk hashes do not add up to the file id".into(),
        ));
    }
    Ok(())
}

/// Hashes a whole file read from `reader` (exactly `size` bytes) in chunks of `chunk_size`,
/// returning its id and chunk hashes. `buf` is reused scratch space.
pub fn hash_reader<R: Read>(
    reader: &mut R,
    size: u64,
    chunk_size: u32,
    buf: &mut Vec<u8>,
) -> io::Result<(FileId, Vec<ChunkHash>)> {
    let count = chunk_count(size, chunk_size);
    let mut hashes = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for index in 0..count {
        let index = u32::try_from(index)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many chunks"))?;
        let len = chunk_len(size, chunk_size, index).unwrap_or(0) as usize;
        buf.resize(len, 0);
        reader.read_exact(buf)?;
        hashes.push(chunk_hash(size, chunk_size, index, buf));
    }
    // A file that grew while we read it would get an id that matches none of its versions.
    let mut probe = [0u8; 1];
    if reader.read(&mut probe)? != 0 {
        return Err(io::Error::other("file grew while it was being hashed"));
    }
    let id = root_from_chunk_hashes(&hashes)
        .ok_or_else(|| io::Error::other("a file always has at least one chunk"))?;
    Ok((id, hashes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn chunk_hashes_merge_to_the_plain_blake3_hash() {
        for chunk_size in [1024u32, 4096, 16384] {
            for len in [
                0, 1, 1023, 1024, 1025, 4096, 5000, 16384, 40000, 100_000, 131_072,
            ] {
                let bytes = data(len);
                let size = len as u64;
                let (id, hashes) =
                    hash_reader(&mut &bytes[..], size, chunk_size, &mut Vec::new()).unwrap();
                assert_eq!(
                    id.0,
                    *blake3::hash(&bytes).as_bytes(),
                    "len {len} cs {chunk_size}"
                );
                assert_eq!(hashes.len() as u64, chunk_count(size, chunk_size));
                let meta = FileMeta {
                    name: "f".into(),
                    size,
                    chunk_size,
                    id,
                };
                let manifest = Manifest {
                    file: meta.clone(),
                    chunk_hashes: hashes.clone(),
                };
                verify_manifest(&manifest, &meta).unwrap();
                // each chunk verifies on its own, whole or in pieces
                for (i, h) in hashes.iter().enumerate() {
                    let start = i * chunk_size as usize;
                    let l = chunk_len(size, chunk_size, i as u32).unwrap() as usize;
                    let mut pieces = ChunkHasher::new(size, chunk_size, i as u32);
                    for piece in bytes[start..start + l].chunks(700) {
                        pieces.update(piece);
                    }
                    assert_eq!(&pieces.finalize(), h);
                    assert_eq!(
                        &chunk_hash(size, chunk_size, i as u32, &bytes[start..start + l]),
                        h
                    );
                }
            }
        }
    }

    #[test]
    fn tampered_manifests_are_refused() {
        let bytes = data(10_000);
        let (id, hashes) = hash_reader(&mut &bytes[..], 10_000, 1024, &mut Vec::new()).unwrap();
        let meta = FileMeta {
            name: "f".into(),
            size: 10_000,
            chunk_size: 1024,
            id,
        };
        let mut bad = Manifest {
            file: meta.clone(),
            chunk_hashes: hashes.clone(),
        };
        bad.chunk_hashes[3][0] ^= 1;
        assert!(verify_manifest(&bad, &meta).is_err());
        bad.chunk_hashes = hashes[1..].to_vec();
        assert!(verify_manifest(&bad, &meta).is_err());
        bad.chunk_hashes = hashes;
        bad.file.chunk_size = 1000;
        assert!(verify_manifest(&bad, &meta).is_err());
    }

    #[test]
    fn chunk_geometry() {
        assert_eq!(chunk_count(0, 1024), 1);
        assert_eq!(chunk_len(0, 1024, 0), Some(0));
        assert_eq!(chunk_len(2049, 1024, 2), Some(1));
        assert_eq!(chunk_len(2049, 1024, 3), None);
        assert_eq!(chunk_size_for(100, DEFAULT_CHUNK_SIZE), DEFAULT_CHUNK_SIZE);
        assert!(chunk_count(1 << 40, chunk_size_for(1 << 40, DEFAULT_CHUNK_SIZE)) <= 1 << 16);
        assert!(validate_chunk_size(3000).is_err());
        assert!(validate_chunk_size(1 << 20).is_ok());
    }
}
