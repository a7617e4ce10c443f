//! The convention the peer's on-disk formats share (the hash cache and the resume sidecar),
//! the one chosen for all of shoal's on-disk formats (the index's durable log and snapshot
//! move to it in their own change):
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic: `SHOAL` + three ASCII letters naming the format |
//! | 2 | format version, u16 little-endian |
//! | ... | the format's body; every fixed-width integer little-endian |
//! | 32 | BLAKE3 hash of everything above |
//!
//! Decoders work on bytes ([`open`]) and refuse with a typed [`FormatError`]: another magic,
//! another version (a file of an older shoal is recognised by its old magic and named as
//! such), a checksum that does not match, then whatever the body's own checks find.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Length of the checksum that ends every file.
pub(crate) const CHECKSUM_LEN: usize = 32;
/// Magic and version.
pub(crate) const HEADER_LEN: usize = 10;

/// One on-disk format: its magic, its version, and how files of older versions began.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Format {
    /// What the file is, for messages ("hash cache").
    pub(crate) name: &'static str,
    pub(crate) magic: [u8; 8],
    pub(crate) version: u16,
    /// The magic of the versions before the shared convention, recognised only to say so.
    pub(crate) legacy_magic: &'static [u8],
}

/// Why bytes are not a file of some format. Every refusal is one of these; none panics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the smallest file of the format.
    #[error("too short for a {format} ({len} bytes)")]
    TooShort {
        /// What the file was to be.
        format: &'static str,
        /// How many bytes there were.
        len: usize,
    },
    /// Another magic number: not this kind of file at all.
    #[error("not a shoal {format}")]
    Magic {
        /// What the file was to be.
        format: &'static str,
    },
    /// Written by a shoal from before the shared format convention.
    #[error(
        "a {format} of an older shoal (format version 1); this shoal reads version {supported}"
    )]
    Legacy {
        /// What the file was to be.
        format: &'static str,
        /// The version this build reads.
        supported: u16,
    },
    /// This kind of file, in a version this build does not read.
    #[error("{format} format version {found}; this shoal reads version {supported}")]
    Version {
        /// What the file was to be.
        format: &'static str,
        /// The version the file says.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The trailing BLAKE3 hash does not match: damaged, torn or cut short.
    #[error("checksum mismatch (damaged or cut short)")]
    Checksum,
    /// A field runs past the end of the body.
    #[error("cut short in {field}")]
    Truncated {
        /// Which field.
        field: &'static str,
    },
    /// Bytes after the last field the body announced.
    #[error("{extra} bytes after the last field")]
    Trailing {
        /// How many.
        extra: usize,
    },
    /// A name that is not UTF-8.
    #[error("a name is not UTF-8")]
    NameNotUtf8,
    /// The same name listed twice.
    #[error("the name {name:?} is listed twice")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// More chunks than any shoal file has.
    #[error("{count} chunks is more than a file can have")]
    TooManyChunks {
        /// The chunk count the file gives.
        count: u64,
    },
    /// A chunk count that is not what the size and chunk size give.
    #[error("{count} chunks do not make a {size}-byte file of {chunk_size}-byte chunks")]
    ChunkCount {
        /// The chunk count the file gives.
        count: u64,
        /// The file size it gives.
        size: u64,
        /// The chunk size it gives.
        chunk_size: u32,
    },
    /// Bits set in a bitmap past its last chunk.
    #[error("chunks past the end of the file are marked")]
    Padding,
    /// Too much to write in the format's fixed-width fields.
    #[error("{what} does not fit the format")]
    TooLarge {
        /// What did not fit.
        what: &'static str,
    },
}

impl FormatError {
    /// The kind of refusal without its details (the variant's name: `"Checksum"`,
    /// `"Truncated"`, ...), for grouping outcomes.
    pub fn kind(&self) -> &'static str {
        match self {
            FormatError::TooShort { .. } => "TooShort",
            FormatError::Magic { .. } => "Magic",
            FormatError::Legacy { .. } => "Legacy",
            FormatError::Version { .. } => "Version",
            FormatError::Checksum => "Checksum",
            FormatError::Truncated { .. } => "Truncated",
            FormatError::Trailing { .. } => "Trailing",
            FormatError::NameNotUtf8 => "NameNotUtf8",
            FormatError::DuplicateName { .. } => "DuplicateName",
            FormatError::TooManyChunks { .. } => "TooManyChunks",
            FormatError::ChunkCount { .. } => "ChunkCount",
            FormatError::Padding => "Padding",
            FormatError::TooLarge { .. } => "TooLarge",
        }
    }
}

/// Why a file on disk was not loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error("cannot read it: {0}")]
    Io(#[from] io::Error),
    #[error("larger than it can be (over {most} bytes)")]
    TooLong { most: u64 },
    #[error(transparent)]
    Format(#[from] FormatError),
}

impl Format {
    /// Magic and version, the start of every file of this format.
    pub(crate) fn header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&self.magic);
        out.extend_from_slice(&self.version.to_le_bytes());
        out
    }

    /// Appends the checksum of everything in `out` (which began with [`Format::header`]).
    pub(crate) fn seal(out: &mut Vec<u8>) {
        let checksum = blake3::hash(out);
        out.extend_from_slice(checksum.as_bytes());
    }

    /// Checks magic, version and checksum, in that order, and returns the body between
    /// the header and the checksum.
    pub(crate) fn open<'a>(&self, bytes: &'a [u8]) -> Result<&'a [u8], FormatError> {
        let format = self.name;
        if !self.legacy_magic.is_empty() && bytes.starts_with(self.legacy_magic) {
            return Err(FormatError::Legacy {
                format,
                supported: self.version,
            });
        }
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(FormatError::TooShort {
                format,
                len: bytes.len(),
            });
        }
        if bytes[..8] != self.magic {
            return Err(FormatError::Magic { format });
        }
        let found = u16::from_le_bytes([bytes[8], bytes[9]]);
        if found != self.version {
            return Err(FormatError::Version {
                format,
                found,
                supported: self.version,
            });
        }
        let (sealed, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if blake3::hash(sealed).as_bytes()[..] != checksum[..] {
            return Err(FormatError::Checksum);
        }
        Ok(&sealed[HEADER_LEN..])
    }

    /// `body` in a valid envelope of this format, for tests that reach the body's checks.
    #[cfg(test)]
    pub(crate) fn sealed(&self, body: &[u8]) -> Vec<u8> {
        let mut out = self.header();
        out.extend_from_slice(body);
        Format::seal(&mut out);
        out
    }
}

/// Replaces the checksum at the end of `bytes`, for tests that changed a field.
#[cfg(test)]
pub(crate) fn reseal(bytes: &mut Vec<u8>) {
    bytes.truncate(bytes.len().saturating_sub(CHECKSUM_LEN));
    Format::seal(bytes);
}

/// Reads the file at `path` whole, refusing one longer than `most` bytes after reading at
/// most one byte more (a huge file planted under the name costs one bounded read, not
/// memory). `Ok(None)`: there is no file.
pub(crate) fn read_capped(path: &Path, most: u64) -> Result<Option<Vec<u8>>, LoadError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut bytes = Vec::new();
    file.take(most.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > most {
        return Err(LoadError::TooLong { most });
    }
    Ok(Some(bytes))
}

/// A bounds-checked little-endian cursor over a body.
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Truncated { field });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], FormatError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, FormatError> {
        self.array(field).map(u16::from_le_bytes)
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, FormatError> {
        self.array(field).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, FormatError> {
        self.array(field).map(u64::from_le_bytes)
    }

    pub(crate) fn i64(&mut self, field: &'static str) -> Result<i64, FormatError> {
        self.array(field).map(i64::from_le_bytes)
    }

    /// The body must end here.
    pub(crate) fn finish(self) -> Result<(), FormatError> {
        match self.0.len() {
            0 => Ok(()),
            extra => Err(FormatError::Trailing { extra }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: Format = Format {
        name: "test file",
        magic: *b"SHOALTST",
        version: 2,
        legacy_magic: b"OLD",
    };

    #[test]
    fn the_envelope_refuses_each_kind_of_stranger_by_name() {
        let good = TEST.sealed(b"body");
        assert_eq!(TEST.open(&good), Ok(&b"body"[..]));
        assert_eq!(good.len(), HEADER_LEN + 4 + CHECKSUM_LEN);

        let mut other_version = good.clone();
        other_version[8] = 3;
        assert_eq!(
            TEST.open(&other_version),
            Err(FormatError::Version {
                format: "test file",
                found: 3,
                supported: 2
            })
        );
        let mut other_magic = good.clone();
        other_magic[5] = b'X';
        assert_eq!(
            TEST.open(&other_magic),
            Err(FormatError::Magic {
                format: "test file"
            })
        );
        let mut flipped = good.clone();
        flipped[12] ^= 1;
        assert_eq!(TEST.open(&flipped), Err(FormatError::Checksum));
        assert_eq!(
            TEST.open(b"OLD and long enough to be anything at all, really"),
            Err(FormatError::Legacy {
                format: "test file",
                supported: 2
            })
        );
        assert!(matches!(
            TEST.open(&good[..20]),
            Err(FormatError::TooShort { len: 20, .. })
        ));
        let msg = FormatError::Legacy {
            format: "hash cache",
            supported: 2,
        }
        .to_string();
        assert!(msg.contains("older shoal"), "{msg}");
    }

    #[test]
    fn a_capped_read_refuses_what_is_too_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert!(matches!(read_capped(&path, 4), Ok(None)));
        std::fs::write(&path, b"1234").unwrap();
        assert_eq!(read_capped(&path, 4).unwrap(), Some(b"1234".to_vec()));
        std::fs::write(&path, b"12345").unwrap();
        assert!(matches!(
            read_capped(&path, 4),
            Err(LoadError::TooLong { most: 4 })
        ));
    }
}
