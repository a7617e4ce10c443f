//! Everything two shoal processes must agree on, and nothing else.
//!
//! - [`FileId`], [`FileMeta`], [`PeerAddr`] and [`FileKey`]: the shared value types.
//! - [`message`]: the typed requests and responses of the two protocols (peer<->index,
//!   peer<->peer).
//! - [`codec`]: the handshake (magic + version + protocol) and u32-length-prefixed frames
//!   whose bodies are decoded with a byte limit, so a hostile frame costs at most that limit.
//! - [`content`]: content identity. A file's id is its BLAKE3 hash (what `b3sum` prints); a
//!   manifest lists the chaining values of its chunk-sized subtrees, so every chunk is verified
//!   on arrival and the list is verified against the id.
//! - [`server`]: the accept loop both servers share (a thread per connection from a pool of
//!   reused threads, bounded).
//! - [`Transport`]: the pluggable byte-stream transport, with [`tcp`] (std::net) and [`mem`]
//!   (an in-process network over crossbeam-channel with fault injection, for deterministic
//!   tests), and [`either::Either`] to choose one of two at run time.
//! - [`tls`]: TLS 1.3 with mutual authentication over any transport: node identities,
//!   private swarms (member certificates from a swarm authority), revocation.
//!
//! ```
//! use shoal_proto::{validate_name, FileKey};
//! assert!(validate_name("song.ogg").is_ok());
//! assert!(validate_name("../etc/passwd").is_err());
//! assert_eq!(FileKey::parse("a.txt").unwrap(), FileKey::Name("a.txt".into()));
//! ```

pub mod codec;
pub mod content;
pub mod deadline;
pub mod either;
mod error;
pub mod mem;
pub mod message;
mod node;
pub mod server;
pub mod tcp;
pub mod tls;
mod transport;
mod types;

pub use error::ProtoError;
pub use node::NodeId;
pub use transport::{Closer, Connection, Listener, Transport};
pub use types::{FileId, FileKey, FileMeta, MAX_NAME_LEN, PeerAddr, validate_name};
