//! The typed messages of shoal's two protocols.
//!
//! Each connection starts with a [`crate::codec`] handshake naming the protocol; then the
//! client sends requests and reads one response per request (several per connection).
//! - peer<->index: [`IndexRequest`] / [`IndexResponse`]
//! - peer<->peer: [`PeerRequest`] / [`PeerResponse`]; a [`PeerResponse::Chunk`] frame is
//!   followed on the stream by exactly `len` raw bytes (the chunk body is not bincode, so it
//!   moves in large blocks).
//!
//! The byte layout is in `docs/PROTOCOL.md`.

use serde::{Deserialize, Serialize};

use crate::{FileId, FileKey, FileMeta, NodeId, PeerAddr};

/// A chunk's BLAKE3 chaining value (see [`crate::content`]).
pub type ChunkHash = [u8; 32];

/// A request to the index server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexRequest {
    /// The seed's *get*: one holder of the file, chosen at random to spread the load.
    Locate {
        /// Which file.
        key: FileKey,
    },
    /// Every holder of the file.
    Holders {
        /// Which file.
        key: FileKey,
    },
    /// The seed's *set*: `holder` serves these files.
    Register {
        /// Where the files can be fetched.
        holder: PeerAddr,
        /// The files it holds.
        #[serde(deserialize_with = "grow_only::deserialize")]
        files: Vec<FileMeta>,
    },
    /// `holder` no longer serves these files; an empty list means all of them.
    Unregister {
        /// The holder.
        holder: PeerAddr,
        /// The files it dropped (empty: all).
        #[serde(deserialize_with = "grow_only::deserialize")]
        ids: Vec<FileId>,
    },
    /// Files whose name contains `query`, ignoring case; an empty query lists all.
    Search {
        /// Substring to look for.
        query: String,
        /// At most this many results (the server may cap it lower).
        limit: u32,
    },
    /// Heartbeat: renews the lease of every registration of `holder` at once. Appended last
    /// so the earlier variants keep their wire numbers.
    Renew {
        /// The holder whose lease to renew.
        holder: PeerAddr,
    },
    /// Swarm: `holder` is downloading these files and serves the chunks it has verified
    /// (a *partial* holder). Kept apart from complete registrations, under its own lease,
    /// which this request renews; a later `Register` of the same file by the same holder
    /// makes the registration complete.
    RegisterPartial {
        /// Where the verified chunks can be fetched.
        holder: PeerAddr,
        /// The files it is downloading (with the chunk size of the manifest it uses).
        #[serde(deserialize_with = "grow_only::deserialize")]
        files: Vec<FileMeta>,
    },
    /// `holder` stopped downloading these files (failed or abandoned); empty: all of them.
    UnregisterPartial {
        /// The partial holder.
        holder: PeerAddr,
        /// The downloads it dropped (empty: all).
        #[serde(deserialize_with = "grow_only::deserialize")]
        ids: Vec<FileId>,
    },
    /// Every complete and every partial holder of the file, marked apart (what a swarm
    /// download asks for, at its start and again while it runs).
    Sources {
        /// Which file.
        key: FileKey,
    },
    /// Which registry the index serves (version 3): indexes that answer the same identity
    /// share one registry (a shared store such as Redis), so a peer registers with one of
    /// them and moves to another when it dies, instead of registering with each.
    Identify,
    /// How long this index keeps a registration without renewal: a peer renews well
    /// within the shortest lease of its indexes. Appended last, for wire compatibility
    /// (an index that predates it answers `BadRequest`).
    Lease,
}

/// The index server's answer to one [`IndexRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndexResponse {
    /// Answer to `Locate`.
    Located {
        /// The file.
        file: FileMeta,
        /// One holder, chosen at random.
        holder: PeerAddr,
        /// The node id the holder registered with (its certificate key), when the index
        /// knows it (version 4): a downloader checks that the holder it reaches presents it.
        node: Option<NodeId>,
    },
    /// Answer to `Holders`.
    Holders {
        /// The file.
        file: FileMeta,
        /// All its holders.
        #[serde(deserialize_with = "grow_only::deserialize")]
        holders: Vec<PeerAddr>,
        /// The node ids the index knows for the listed holders (version 4); a holder
        /// missing here registered over a transport that proves no identity.
        #[serde(deserialize_with = "grow_only::deserialize")]
        nodes: Vec<HolderNode>,
    },
    /// Answer to `Register`: how many (file, holder) registrations are new.
    Registered {
        /// Newly added registrations.
        added: u32,
    },
    /// Answer to `Unregister`: how many registrations were removed.
    Unregistered {
        /// Removed registrations.
        removed: u32,
    },
    /// Answer to `Search`.
    SearchResults {
        /// Matching files, sorted by name then id.
        #[serde(deserialize_with = "grow_only::deserialize")]
        hits: Vec<SearchHit>,
    },
    /// The request was refused or failed.
    Error(ErrorReply),
    /// Answer to `Renew`: the lease is renewed for this many registrations. A holder the
    /// index does not know (lease lapsed, or the index restarted without its data) gets
    /// `Error(NotFound)` instead and should register again. Last, for wire compatibility.
    Renewed {
        /// Registrations the renewed lease covers.
        files: u32,
    },
    /// Answer to `Sources`.
    Sources {
        /// The file.
        file: FileMeta,
        /// Holders of the whole file, sorted.
        #[serde(deserialize_with = "grow_only::deserialize")]
        complete: Vec<PeerAddr>,
        /// Holders still downloading it (they serve the chunks they have verified), sorted.
        #[serde(deserialize_with = "grow_only::deserialize")]
        partial: Vec<PeerAddr>,
        /// The node ids the index knows for the listed holders, complete or partial
        /// (version 4).
        #[serde(deserialize_with = "grow_only::deserialize")]
        nodes: Vec<HolderNode>,
    },
    /// Answer to `Identify`: the registry's identity, the same on every index serving it;
    /// `None` for an index with a registry of its own (in memory or in its own data folder).
    Identity {
        /// Opaque text, compared for equality only.
        registry: Option<String>,
    },
    /// Answer to `Lease`.
    Lease {
        /// The lease of a registration, in milliseconds.
        lease_ms: u64,
    },
}

/// One search result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    /// The file.
    pub file: FileMeta,
    /// How many peers hold all of it.
    pub holders: u32,
    /// How many peers are downloading it (partial holders).
    pub downloading: u32,
    /// Some complete holders and their node ids, where the index knows them (version 4):
    /// at most [`SEARCH_HIT_NODES`], and only for the first [`SEARCH_NODE_HITS`] hits of an
    /// answer, so a search stays cheap. A hint for people; a download asks for the sources.
    #[serde(deserialize_with = "grow_only::deserialize")]
    pub nodes: Vec<HolderNode>,
}

/// Most holders with node ids an index lists in one [`SearchHit`].
pub const SEARCH_HIT_NODES: usize = 8;
/// Most hits of one search answer whose holders' node ids an index lists (the later hits
/// have none).
pub const SEARCH_NODE_HITS: usize = 64;

/// A holder and the node id it registered with: the key its authenticated connection to the
/// index presented (version 4).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HolderNode {
    /// The holder's address.
    pub holder: PeerAddr,
    /// Its node id.
    pub node: NodeId,
}

/// The node id `nodes` gives for `holder`, if any.
pub fn node_of(nodes: &[HolderNode], holder: &PeerAddr) -> Option<NodeId> {
    nodes.iter().find(|n| &n.holder == holder).map(|n| n.node)
}

/// A request to a peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// The file's manifest: metadata plus one hash per chunk.
    Manifest {
        /// Which file.
        key: FileKey,
    },
    /// Chunks `first .. first + count` of file `id`, cut at `chunk_size` (the requester's
    /// manifest grid, so holders that hashed with another chunk size can still serve), streamed
    /// as `Chunk` frames with raw bodies.
    ReadChunks {
        /// Which file.
        id: FileId,
        /// Chunk size of the requester's manifest (a power of two, see `content`).
        chunk_size: u32,
        /// First chunk index.
        first: u32,
        /// Number of chunks.
        count: u32,
    },
    /// Which chunks of file `id` (in the grid of `chunk_size`) the peer has verified. A
    /// complete holder answers `Have::All`. With `since` = 0 the answer is the whole bitmap;
    /// with the `seq` of an earlier answer, only the chunks added after it. If nothing was
    /// added since `since`, the peer waits up to `wait_ms` (capped by the peer, see
    /// `docs/PROTOCOL.md`) for a new chunk before it answers, so a downloader learns of new
    /// chunks as they arrive without polling the index.
    Availability {
        /// Which file.
        id: FileId,
        /// Chunk size of the requester's manifest.
        chunk_size: u32,
        /// The `seq` of the last answer seen on this connection, or 0.
        since: u32,
        /// Longest wait for news, in milliseconds (0: answer at once).
        wait_ms: u32,
    },
}

/// A peer's answer to one [`PeerRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Answer to `Manifest`.
    Manifest(Manifest),
    /// One chunk of a `ReadChunks` answer; exactly `len` raw bytes follow this frame.
    Chunk {
        /// Chunk index.
        index: u32,
        /// Body length in bytes.
        len: u32,
    },
    /// The request was refused or failed (also ends a `ReadChunks` answer early).
    Error(ErrorReply),
    /// Answer to `Availability`.
    Availability {
        /// How many chunks the peer has verified so far (grows by one per chunk); the next
        /// request's `since`.
        seq: u32,
        /// What it has.
        have: Have,
    },
}

/// A peer's verified chunks of one file, in an [`PeerResponse::Availability`] answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Have {
    /// Every chunk: the peer holds the whole file.
    All,
    /// One bit per chunk, chunk `i` in byte `i / 8`, bit `i % 8` (least significant first);
    /// exactly `ceil(chunks / 8)` bytes.
    Bitmap(#[serde(deserialize_with = "grow_only::deserialize")] Vec<u8>),
    /// The chunks verified after the request's `since`, in the order they were verified.
    Added(#[serde(deserialize_with = "grow_only::deserialize")] Vec<u32>),
    /// Every chunk (a complete holder), and a bitmap, laid out as `Bitmap`, of the chunks it
    /// has already sent to some downloader in this round (a round ends when every chunk was
    /// sent once). Downloaders ask a seeder first for the chunks nobody was sent yet, so its
    /// upload goes out as one copy the crowd can trade (BitTorrent's super-seeding, in spirit).
    Seeding(#[serde(deserialize_with = "grow_only::deserialize")] Vec<u8>),
}

/// A file's metadata and the chaining value of every chunk, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The file.
    pub file: FileMeta,
    /// One hash per chunk (see [`crate::content`]).
    #[serde(deserialize_with = "grow_only::deserialize")]
    pub chunk_hashes: Vec<ChunkHash>,
}

/// A typed refusal: what a server tells a client instead of a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorReply {
    /// What kind of failure.
    pub code: ErrorCode,
    /// One readable sentence.
    pub message: String,
}

impl ErrorReply {
    /// Builds a reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
        }
    }
}

/// The kinds of refusal a server can send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// No such file (or no holder).
    NotFound,
    /// The file name is not a plain name.
    BadName,
    /// The request is well-formed but not acceptable (limits, inconsistent fields).
    BadRequest,
    /// The server is at a limit; try elsewhere or later.
    Busy,
    /// The server failed internally (disk error, ...).
    Internal,
    /// A partial holder does not have (has not verified) the chunk asked for; ask another
    /// holder. The connection stays usable.
    Unavailable,
    /// The index's shared registry (Redis) cannot be reached right now: nothing was changed;
    /// try again shortly, or another index (version 3).
    RegistryUnavailable,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorCode::NotFound => "not found",
            ErrorCode::BadName => "bad name",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::Busy => "busy",
            ErrorCode::Internal => "internal error",
            ErrorCode::Unavailable => "chunk not available here",
            ErrorCode::RegistryUnavailable => "registry unavailable",
        })
    }
}

/// Decodes sequences without trusting their claimed length for preallocation.
///
/// serde's `Vec` decoding preallocates up to 1 MiB from the length a frame *claims*; on a
/// 64 KiB frame that is a 16x amplification a hostile client gets for free. Growing as
/// elements really arrive keeps memory proportional to the bytes received.
mod grow_only {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::Deserializer;
    use serde::de::{Deserialize, SeqAccess, Visitor};

    /// Most elements reserved up front, whatever the frame claims.
    const INITIAL: usize = 16;

    pub(super) fn deserialize<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        struct GrowOnly<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for GrowOnly<T> {
            type Value = Vec<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(INITIAL));
                while let Some(item) = seq.next_element()? {
                    out.push(item);
                }
                Ok(out)
            }
        }

        deserializer.deserialize_seq(GrowOnly(PhantomData))
    }
}
