//! The decoders of the peer's on-disk formats, for the fuzz targets in `fuzz/` and the
//! regression tests in `crates/peer/tests`. Not part of the supported API: the formats are
//! the peer's own files, and these wrappers exist only so code outside the crate can feed
//! them bytes.

pub use crate::format::FormatError;

/// A decoded hash cache (`DIR/.shoal-cache`), entries in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashCache(crate::hash_cache::Entries);

impl HashCache {
    /// Decodes a cache file.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        crate::hash_cache::decode(bytes).map(HashCache)
    }

    /// Encodes the entries again.
    pub fn encode(&self) -> Result<Vec<u8>, FormatError> {
        crate::hash_cache::encode(&self.0)
    }

    /// Names and chunk counts of the entries, in file order.
    pub fn entries(&self) -> Vec<(&str, usize)> {
        self.0
            .iter()
            .map(|(name, file)| (name.as_str(), file.chunk_hashes.len()))
            .collect()
    }
}

/// A decoded resume sidecar (`DIR/.NAME.shoal-state`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeSidecar(crate::resume::ResumeState);

impl ResumeSidecar {
    /// Decodes a sidecar, whichever file it describes.
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        crate::resume::ResumeState::decode(bytes).map(ResumeSidecar)
    }

    /// Encodes it again.
    pub fn encode(&self) -> Vec<u8> {
        self.0.encode()
    }

    /// The chunks it marks done.
    pub fn done_chunks(&self) -> Vec<u32> {
        self.0.done_chunks()
    }
}
