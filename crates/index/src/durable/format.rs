//! The bytes on disk: file headers, record framing and checksums, and the log and snapshot
//! records with their encoding (the layout is in the parent module's documentation).
//!
//! Everything here works on byte slices, not files: recovery reads a file (streaming it, or
//! whole) and hands these functions the bytes, and so can a fuzzer.

use serde::{Deserialize, Serialize};
use shoal_proto::codec;
use shoal_proto::{FileId, FileMeta, PeerAddr};

use crate::registry::ListingView;
use crate::{IndexError, Registry};

/// Bytes in the version field of a version 1 header (it wrote a big-endian u16).
const V1_FIELD: [u8; 2] = 1u16.to_be_bytes();

/// The on-disk format version this build writes. It also reads version 1 (the same layout
/// with big-endian integers), so an upgrade keeps the registrations.
pub const FORMAT_VERSION: u16 = 2;

pub(super) const LOG_MAGIC: [u8; 8] = *b"SHOALLOG";
pub(super) const SNAPSHOT_MAGIC: [u8; 8] = *b"SHOALSNP";
/// Bytes in a file header.
pub const HEADER_LEN: u64 = 20;
pub(super) const CHECK_LEN: usize = 8;
pub(super) const LEN_LEN: usize = 4;
/// No record is longer (the codec's own frame ceiling).
pub(super) const MAX_RECORD: usize = codec::MAX_FRAME_LEN;
/// Listings per snapshot record: big enough to amortise the per-record cost, small enough
/// that loading never holds much more than the registry itself.
pub(super) const SNAPSHOT_BATCH: usize = 4096;

/// The first body byte of each [`LogRecord`] variant (the wire encoding writes the variant
/// number first, as a one-byte varint below 251).
pub(super) const LOG_RECORD_TAGS: [u8; 3] = [0, 1, 2];

/// A log record: one registry change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogRecord {
    /// A holder registered files.
    Register {
        /// Who.
        holder: PeerAddr,
        /// What.
        files: Vec<FileMeta>,
    },
    /// A holder unregistered files.
    Unregister {
        /// Who.
        holder: PeerAddr,
        /// The files' ids.
        ids: Vec<FileId>,
    },
    /// Holders whose lease lapsed, removed with every registration.
    Expire {
        /// Who.
        holders: Vec<PeerAddr>,
    },
}

/// A snapshot record, as read.
#[derive(Deserialize)]
pub(super) enum SnapshotRecord {
    Holders(Vec<PeerAddr>),
    Listings(Vec<SnapshotListing>),
    End {
        holders: u64,
        listings: u64,
        registrations: u64,
    },
}

#[derive(Deserialize)]
pub(super) struct SnapshotListing {
    pub(super) name: String,
    pub(super) size: u64,
    pub(super) chunk_size: u32,
    pub(super) id: FileId,
    /// Holder numbers: positions in the snapshot's holder records.
    pub(super) holders: Vec<u32>,
}

/// A snapshot record, as written: the same encoding as [`SnapshotRecord`], borrowing from the
/// registry instead of copying it.
#[derive(Serialize)]
pub(super) enum SnapshotRecordOut<'a> {
    Holders(&'a [&'a PeerAddr]),
    Listings(&'a [SnapshotListingOut<'a>]),
    End {
        holders: u64,
        listings: u64,
        registrations: u64,
    },
}

#[derive(Serialize)]
pub(super) struct SnapshotListingOut<'a> {
    pub(super) name: &'a str,
    pub(super) size: u64,
    pub(super) chunk_size: u32,
    pub(super) id: FileId,
    pub(super) holders: &'a [u32],
}

pub(super) fn encode_snapshot(registry: &Registry, generation: u64) -> Result<Vec<u8>, IndexError> {
    let mut out = Vec::with_capacity(1 << 20);
    out.extend_from_slice(&encode_header(
        FileKind::Snapshot,
        Version::CURRENT,
        generation,
    ));
    let holders = registry.export_holders();
    // Addresses are at most 256 bytes encoded; 16k of them stay far below a record's limit.
    for batch in holders.chunks(16 << 10) {
        encode_record(&SnapshotRecordOut::Holders(batch), &mut out)?;
    }
    let mut views: Vec<ListingView<'_>> = Vec::with_capacity(SNAPSHOT_BATCH);
    let mut numbers: Vec<u32> = Vec::new();
    let mut ends: Vec<usize> = Vec::with_capacity(SNAPSHOT_BATCH);
    let mut listings = 0u64;
    let mut result = Ok(());
    registry.export_listings(|view, hs| {
        views.push(view);
        numbers.extend_from_slice(hs);
        ends.push(numbers.len());
        if views.len() == SNAPSHOT_BATCH {
            if result.is_ok() {
                result = encode_listings(&views, &numbers, &ends, &mut out);
            }
            listings += views.len() as u64;
            views.clear();
            numbers.clear();
            ends.clear();
        }
    });
    result?;
    encode_listings(&views, &numbers, &ends, &mut out)?;
    listings += views.len() as u64;
    let end = SnapshotRecordOut::End {
        holders: holders.len() as u64,
        listings,
        registrations: registry.registration_count() as u64,
    };
    encode_record(&end, &mut out)?;
    Ok(out)
}

pub(super) fn encode_listings(
    views: &[ListingView<'_>],
    numbers: &[u32],
    ends: &[usize],
    out: &mut Vec<u8>,
) -> Result<(), IndexError> {
    if views.is_empty() {
        return Ok(());
    }
    let mut start = 0;
    let listings: Vec<SnapshotListingOut<'_>> = views
        .iter()
        .zip(ends)
        .map(|(view, &end)| {
            let holders = numbers.get(start..end).unwrap_or(&[]);
            start = end;
            SnapshotListingOut {
                name: view.name,
                size: view.size,
                chunk_size: view.chunk_size,
                id: view.id,
                holders,
            }
        })
        .collect();
    encode_record(&SnapshotRecordOut::Listings(&listings), out)
}

/// Which file a header starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// `log.N`.
    Log,
    /// `snapshot.N`.
    Snapshot,
}

impl FileKind {
    fn magic(self) -> [u8; 8] {
        match self {
            FileKind::Log => LOG_MAGIC,
            FileKind::Snapshot => SNAPSHOT_MAGIC,
        }
    }
}

/// A format version this build reads. It decides the byte order of the record lengths (the
/// header itself is read the same way in both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// The first format: header version and generation, and record lengths, big-endian.
    V1,
    /// [`FORMAT_VERSION`]: every fixed-width integer little-endian, like the peer's files.
    V2,
}

impl Version {
    /// The version written.
    pub const CURRENT: Version = Version::V2;

    /// Its number.
    pub fn number(self) -> u16 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }

    fn field(self) -> [u8; 2] {
        match self {
            Version::V1 => V1_FIELD,
            Version::V2 => self.number().to_le_bytes(),
        }
    }

    fn u64_bytes(self, n: u64) -> [u8; 8] {
        match self {
            Version::V1 => n.to_be_bytes(),
            Version::V2 => n.to_le_bytes(),
        }
    }

    fn u64_from(self, bytes: [u8; 8]) -> u64 {
        match self {
            Version::V1 => u64::from_be_bytes(bytes),
            Version::V2 => u64::from_le_bytes(bytes),
        }
    }

    fn u32_from(self, bytes: [u8; 4]) -> u32 {
        match self {
            Version::V1 => u32::from_be_bytes(bytes),
            Version::V2 => u32::from_le_bytes(bytes),
        }
    }
}

/// What a file header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The format version.
    pub version: Version,
    /// The generation `N` (of `log.N` or `snapshot.N`).
    pub generation: u64,
}

/// Why bytes are not a header, a record or a snapshot this build wrote.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than a header.
    #[error("its header is cut short ({got} of {HEADER_LEN} bytes)")]
    HeaderCut {
        /// Bytes there are.
        got: usize,
    },
    /// Not `SHOALLOG` / `SHOALSNP`.
    #[error(
        "it does not start with {expected:?} (if it is a damaged index file, move it aside or \
         restore it from a backup; this index does not guess at it)"
    )]
    Magic {
        /// The magic wanted.
        expected: &'static str,
    },
    /// A format version this build does not read (a newer build's, or damage).
    #[error(
        "format version {version} (header bytes {:02x} {:02x}); this build reads version 1 \
         (00 01) and {FORMAT_VERSION} ({:02x} {:02x})",
        version.to_le_bytes()[0], version.to_le_bytes()[1],
        FORMAT_VERSION.to_le_bytes()[0], FORMAT_VERSION.to_le_bytes()[1]
    )]
    UnknownVersion {
        /// The version field, read little-endian.
        version: u16,
    },
    /// The two reserved header bytes are not zero.
    #[error("its header's reserved bytes are {0:02x?}, not zero")]
    Reserved([u8; 2]),
    /// The header's generation is not the file name's.
    #[error("its header says generation {found}, its name {expected}")]
    Generation {
        /// In the header.
        found: u64,
        /// In the name.
        expected: u64,
    },
    /// Fewer than 4 bytes left for a record's length.
    #[error("a record's length is cut short")]
    LengthCut,
    /// A length beyond any record's.
    #[error("a record claims {len} bytes, more than any record holds")]
    TooLong {
        /// The length claimed.
        len: u64,
    },
    /// A record running past the end of the file.
    #[error("a record claims {len} bytes, {left} are left in the file")]
    PastEnd {
        /// The length claimed.
        len: u64,
        /// Bytes from the record's start to the end of the file.
        left: u64,
    },
    /// The file ended while a record was being read (it shrank meanwhile).
    #[error("a record is cut short")]
    RecordCut,
    /// The checksum does not match the length and body.
    #[error("a record fails its checksum")]
    Checksum,
    /// The body checks out but is not a record of this file.
    #[error("a record does not decode: {0}")]
    Decode(String),
    /// A snapshot's records end without its end record.
    #[error("it ends before its end record")]
    NoEnd,
    /// Bytes after a snapshot's end record.
    #[error("{0} bytes follow its end record")]
    AfterEnd(u64),
    /// A snapshot lists more holders than a registry holds.
    #[error("more holders than a registry can hold")]
    TooManyHolders,
    /// A snapshot listing names a holder number no holder record gave.
    #[error("a listing names holder {0}, which is not listed")]
    UnknownHolder(u32),
    /// A snapshot's end record disagrees with what it holds.
    #[error("it promises {promised:?} holders, files and registrations but holds {found:?}")]
    Counts {
        /// (holders, files, registrations) in the end record.
        promised: (u64, u64, u64),
        /// What the records held.
        found: (u64, u64, u64),
    },
}

impl FormatError {
    /// Whether this is how a crash mid-write leaves a log's last record: it runs past the end
    /// of the file. Anything else is damage a crash does not explain.
    pub fn is_torn(&self) -> bool {
        matches!(
            self,
            FormatError::LengthCut | FormatError::PastEnd { .. } | FormatError::RecordCut
        )
    }
}

/// A header: magic, version field, two zero bytes, generation.
pub fn encode_header(
    kind: FileKind,
    version: Version,
    generation: u64,
) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&kind.magic());
    h[8..10].copy_from_slice(&version.field());
    h[12..20].copy_from_slice(&version.u64_bytes(generation));
    h
}

/// Reads a header from the first bytes of a file. Bytes after the header are not looked at.
pub fn decode_header(kind: FileKind, bytes: &[u8]) -> Result<Header, FormatError> {
    let Some((head, _)) = bytes.split_first_chunk::<{ HEADER_LEN as usize }>() else {
        return Err(FormatError::HeaderCut { got: bytes.len() });
    };
    let (magic, rest) = head.split_at(8);
    if magic != kind.magic() {
        return Err(FormatError::Magic {
            expected: match kind {
                FileKind::Log => "SHOALLOG",
                FileKind::Snapshot => "SHOALSNP",
            },
        });
    }
    let field = [rest[0], rest[1]];
    let version = match field {
        V1_FIELD => Version::V1,
        f if f == Version::V2.field() => Version::V2,
        f => {
            return Err(FormatError::UnknownVersion {
                version: u16::from_le_bytes(f),
            });
        }
    };
    let reserved = [rest[2], rest[3]];
    if reserved != [0, 0] {
        return Err(FormatError::Reserved(reserved));
    }
    let mut generation = [0u8; 8];
    generation.copy_from_slice(&rest[4..12]);
    Ok(Header {
        version,
        generation: version.u64_from(generation),
    })
}

/// Appends one record in the current format: length, body, checksum.
pub fn encode_record<M: Serialize>(record: &M, out: &mut Vec<u8>) -> Result<(), IndexError> {
    let start = out.len();
    codec::encode_frame(record, out).map_err(|e| {
        IndexError::Store(crate::StoreError::Failed(format!(
            "cannot encode a log record: {e}"
        )))
    })?;
    // The codec frames for the wire, in network byte order; on disk every integer is
    // little-endian (the same body, only the length's bytes turned around).
    if let Some(len) = out.get_mut(start..start + LEN_LEN) {
        len.reverse();
    }
    let sum = checksum(out.get(start..).unwrap_or(&[]));
    out.extend_from_slice(&sum);
    Ok(())
}

/// The first [`CHECK_LEN`] bytes of the BLAKE3 hash of a record's length and body.
pub(super) fn checksum(frame: &[u8]) -> [u8; CHECK_LEN] {
    let hash = blake3::hash(frame);
    let mut sum = [0u8; CHECK_LEN];
    sum.copy_from_slice(&hash.as_bytes()[..CHECK_LEN]);
    sum
}

/// The whole length (length field, body, checksum) of the record whose first bytes are
/// `head` (4, or fewer if the file has fewer), `left` bytes before the end of the file.
pub(super) fn frame_len(version: Version, head: &[u8], left: u64) -> Result<usize, FormatError> {
    let Some((len, _)) = head.split_first_chunk::<LEN_LEN>() else {
        return Err(FormatError::LengthCut);
    };
    let len = version.u32_from(*len) as usize;
    if len > MAX_RECORD {
        return Err(FormatError::TooLong { len: len as u64 });
    }
    let total = LEN_LEN + len + CHECK_LEN;
    if total as u64 > left {
        return Err(FormatError::PastEnd {
            len: len as u64,
            left,
        });
    }
    Ok(total)
}

/// The body of the record `frame` (exactly one record's bytes, as [`frame_len`] measured),
/// if its checksum matches.
pub(super) fn check_frame(frame: &[u8]) -> Result<&[u8], FormatError> {
    let split = frame.len().saturating_sub(CHECK_LEN);
    let (framed, sum) = frame.split_at(split);
    if split < LEN_LEN || checksum(framed) != sum {
        return Err(FormatError::Checksum);
    }
    Ok(framed.get(LEN_LEN..).unwrap_or(&[]))
}

/// The record at the start of `bytes` (which run to the end of the file): its body and its
/// whole length, if it checks out.
pub fn decode_frame(version: Version, bytes: &[u8]) -> Result<(&[u8], usize), FormatError> {
    let total = frame_len(version, bytes, bytes.len() as u64)?;
    let frame = bytes.get(..total).ok_or(FormatError::RecordCut)?;
    Ok((check_frame(frame)?, total))
}

/// Whether a log record could start at `head` (its first five bytes at least), `left` bytes
/// before the end of the file: a length that fits, and a body that starts with a
/// [`LogRecord`] variant. Spares resynchronising the checksum of most offsets in random
/// garbage, where one offset in 256 claims a length below [`MAX_RECORD`] (megabytes to hash,
/// each).
pub(super) fn could_start(version: Version, head: &[u8], left: u64) -> bool {
    head.len() > LEN_LEN
        && frame_len(version, head, left).is_ok_and(|total| total > LEN_LEN + CHECK_LEN)
        && head
            .get(LEN_LEN)
            .is_some_and(|t| LOG_RECORD_TAGS.contains(t))
}

/// Decodes a log record's body.
pub fn decode_log_record(body: &[u8]) -> Result<LogRecord, FormatError> {
    codec::decode_body(body).map_err(|e| FormatError::Decode(e.to_string()))
}

/// Decodes a snapshot record's body.
pub(super) fn decode_snapshot_record(body: &[u8]) -> Result<SnapshotRecord, FormatError> {
    codec::decode_body(body).map_err(|e| FormatError::Decode(e.to_string()))
}
