//! The bytes on disk: file headers, record framing and checksums, and the log and snapshot
//! records with their encoding (the layout is in the parent module's documentation).

use std::path::Path;

use serde::{Deserialize, Serialize};
use shoal_proto::codec;
use shoal_proto::{FileId, FileMeta, PeerAddr};

use crate::registry::ListingView;
use crate::{IndexError, Registry};

/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

pub(super) const LOG_MAGIC: [u8; 8] = *b"SHOALLOG";
pub(super) const SNAPSHOT_MAGIC: [u8; 8] = *b"SHOALSNP";
pub(super) const HEADER_LEN: u64 = 20;
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
#[derive(Serialize, Deserialize)]
pub(super) enum LogRecord {
    Register {
        holder: PeerAddr,
        files: Vec<FileMeta>,
    },
    Unregister {
        holder: PeerAddr,
        ids: Vec<FileId>,
    },
    /// Holders whose lease lapsed, removed with every registration.
    Expire {
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
    out.extend_from_slice(&header(SNAPSHOT_MAGIC, generation));
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

/// Appends one record: length, body, checksum.
pub(super) fn encode_record<M: Serialize>(record: &M, out: &mut Vec<u8>) -> Result<(), IndexError> {
    let start = out.len();
    codec::encode_frame(record, out).map_err(|e| {
        IndexError::Store(crate::StoreError::Failed(format!(
            "cannot encode a log record: {e}"
        )))
    })?;
    let sum = checksum(out.get(start..).unwrap_or(&[]));
    out.extend_from_slice(&sum);
    Ok(())
}

pub(super) fn checksum(frame: &[u8]) -> [u8; CHECK_LEN] {
    let hash = blake3::hash(frame);
    let mut sum = [0u8; CHECK_LEN];
    sum.copy_from_slice(&hash.as_bytes()[..CHECK_LEN]);
    sum
}

pub(super) fn header(magic: [u8; 8], generation: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(&magic);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
    h[12..20].copy_from_slice(&generation.to_be_bytes());
    h
}

/// Checks a file header read from disk.
pub(super) fn check_header(
    bytes: &[u8; HEADER_LEN as usize],
    magic: [u8; 8],
    generation: u64,
    path: &Path,
) -> Result<(), IndexError> {
    let bad = |reason: String| IndexError::DataFormat {
        path: path.to_path_buf(),
        reason,
    };
    let (found_magic, rest) = bytes.split_at(8);
    if found_magic != magic {
        return Err(bad(format!(
            "it does not start with {:?} (if it is a damaged index file, move it aside or \
             restore it from a backup; this index does not guess at it)",
            String::from_utf8_lossy(&magic)
        )));
    }
    let mut version = [0u8; 2];
    version.copy_from_slice(rest.get(..2).unwrap_or(&[0, 0]));
    let version = u16::from_be_bytes(version);
    if version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {version}; this build reads version {FORMAT_VERSION}"
        )));
    }
    let mut found = [0u8; 8];
    found.copy_from_slice(rest.get(4..12).unwrap_or(&[0; 8]));
    let found = u64::from_be_bytes(found);
    if found != generation {
        return Err(bad(format!(
            "its header says generation {found}, its name {generation}"
        )));
    }
    Ok(())
}
