use std::io::{BufReader, Write};
use std::time::Duration;

use shoal_proto::codec::{self, Service};
use shoal_proto::message::{ErrorCode, HolderNode, IndexRequest, IndexResponse, SearchHit};
use shoal_proto::{Connection, FileId, FileKey, FileMeta, NodeId, PeerAddr, ProtoError, Transport};

use crate::{IndexError, Sources};

/// Read/write timeout per request unless [`IndexClient::with_timeout`] says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A typed client of the index server.
///
/// It holds one persistent connection and sends every request on it. The connection is
/// opened lazily to the first address in `addrs` that answers the handshake. If a request
/// fails because the connection is gone (the server restarted, or closed it while idle), the
/// client reconnects once, trying the addresses in order again, and sends the request once
/// more; every index request is idempotent, so the retry is safe.
pub struct IndexClient<T: Transport> {
    transport: T,
    addrs: Vec<PeerAddr>,
    timeout: Duration,
    conn: Option<Conn<T::Stream>>,
    /// The encoded request, reused between requests (and between the two attempts).
    out: Vec<u8>,
    /// Scratch space for response bodies.
    body: Vec<u8>,
}

struct Conn<S> {
    reader: BufReader<S>,
    addr: PeerAddr,
}

impl<T: Transport> IndexClient<T> {
    /// A client of the index servers at `addrs` (tried in order). Nothing is sent until the
    /// first request.
    pub fn new(transport: T, addrs: Vec<PeerAddr>) -> Self {
        IndexClient {
            transport,
            addrs,
            timeout: DEFAULT_TIMEOUT,
            conn: None,
            out: Vec::with_capacity(128),
            body: Vec::new(),
        }
    }

    /// Sets the read and write timeout of each request (default 10 s); zero disables it.
    /// Applies to connections opened afterwards.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The seed's *get*: one holder of the file, chosen by the index at random.
    pub fn locate(&mut self, key: &FileKey) -> Result<(FileMeta, PeerAddr), IndexError> {
        self.located(key).map(|(file, holder, _)| (file, holder))
    }

    /// [`IndexClient::locate`], with the node id the holder registered with, when the
    /// index knows it (a downloader checks the holder presents it).
    pub fn located(
        &mut self,
        key: &FileKey,
    ) -> Result<(FileMeta, PeerAddr, Option<NodeId>), IndexError> {
        match self.call(&IndexRequest::Locate { key: key.clone() })? {
            IndexResponse::Located { file, holder, node } => Ok((file, holder, node)),
            other => Err(unexpected(other, Some(key), "Located")),
        }
    }

    /// Every holder of the file, sorted.
    pub fn holders(&mut self, key: &FileKey) -> Result<(FileMeta, Vec<PeerAddr>), IndexError> {
        self.holders_with_nodes(key)
            .map(|(file, holders, _)| (file, holders))
    }

    /// [`IndexClient::holders`], with the node ids the index knows for them.
    pub fn holders_with_nodes(
        &mut self,
        key: &FileKey,
    ) -> Result<(FileMeta, Vec<PeerAddr>, Vec<HolderNode>), IndexError> {
        match self.call(&IndexRequest::Holders { key: key.clone() })? {
            IndexResponse::Holders {
                file,
                holders,
                nodes,
            } => Ok((file, holders, nodes)),
            other => Err(unexpected(other, Some(key), "Holders")),
        }
    }

    /// The seed's *set*: `holder` serves `files`. Returns how many registrations are new.
    pub fn register(&mut self, holder: &PeerAddr, files: &[FileMeta]) -> Result<u32, IndexError> {
        let request = IndexRequest::Register {
            holder: holder.clone(),
            files: files.to_vec(),
        };
        match self.call(&request)? {
            IndexResponse::Registered { added } => Ok(added),
            other => Err(unexpected(other, None, "Registered")),
        }
    }

    /// `holder` no longer serves `ids` (empty: anything). Returns how many registrations were
    /// removed.
    pub fn unregister(&mut self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, IndexError> {
        let request = IndexRequest::Unregister {
            holder: holder.clone(),
            ids: ids.to_vec(),
        };
        match self.call(&request)? {
            IndexResponse::Unregistered { removed } => Ok(removed),
            other => Err(unexpected(other, None, "Unregistered")),
        }
    }

    /// Every complete and partial holder of the file (a swarm download's sources).
    pub fn sources(&mut self, key: &FileKey) -> Result<Sources, IndexError> {
        match self.call(&IndexRequest::Sources { key: key.clone() })? {
            IndexResponse::Sources {
                file,
                complete,
                partial,
                nodes,
            } => Ok(Sources {
                file,
                complete,
                partial,
                nodes,
            }),
            other => Err(unexpected(other, Some(key), "Sources")),
        }
    }

    /// Swarm: `holder` is downloading `files` and serves their verified chunks (sent again
    /// to renew). Returns how many partial registrations are new.
    pub fn register_partial(
        &mut self,
        holder: &PeerAddr,
        files: &[FileMeta],
    ) -> Result<u32, IndexError> {
        let request = IndexRequest::RegisterPartial {
            holder: holder.clone(),
            files: files.to_vec(),
        };
        match self.call(&request)? {
            IndexResponse::Registered { added } => Ok(added),
            other => Err(unexpected(other, None, "Registered")),
        }
    }

    /// `holder` stopped downloading `ids` (empty: all). Returns how many were removed.
    pub fn unregister_partial(
        &mut self,
        holder: &PeerAddr,
        ids: &[FileId],
    ) -> Result<u32, IndexError> {
        let request = IndexRequest::UnregisterPartial {
            holder: holder.clone(),
            ids: ids.to_vec(),
        };
        match self.call(&request)? {
            IndexResponse::Unregistered { removed } => Ok(removed),
            other => Err(unexpected(other, None, "Unregistered")),
        }
    }

    /// Heartbeat: renews the lease of all of `holder`'s registrations at once; returns how
    /// many it covers. [`IndexError::UnknownHolder`] means the index forgot the holder (its
    /// lease lapsed, or the index restarted without data): register again.
    pub fn renew(&mut self, holder: &PeerAddr) -> Result<u32, IndexError> {
        let request = IndexRequest::Renew {
            holder: holder.clone(),
        };
        match self.call(&request)? {
            IndexResponse::Renewed { files } => Ok(files),
            IndexResponse::Error(reply) if reply.code == ErrorCode::NotFound => {
                Err(IndexError::UnknownHolder {
                    holder: holder.clone(),
                })
            }
            other => Err(unexpected(other, None, "Renewed")),
        }
    }

    /// How long the index keeps a registration without renewal (its `--lease`).
    pub fn lease(&mut self) -> Result<Duration, IndexError> {
        match self.call(&IndexRequest::Lease)? {
            IndexResponse::Lease { lease_ms } => Ok(Duration::from_millis(lease_ms)),
            other => Err(unexpected(other, None, "Lease")),
        }
    }

    /// Files whose name contains `query`, ignoring case (empty: all), sorted by name then id;
    /// at most `limit`, and the server may cap it lower.
    pub fn search(&mut self, query: &str, limit: u32) -> Result<Vec<SearchHit>, IndexError> {
        let request = IndexRequest::Search {
            query: query.to_string(),
            limit,
        };
        match self.call(&request)? {
            IndexResponse::SearchResults { hits } => Ok(hits),
            other => Err(unexpected(other, None, "SearchResults")),
        }
    }

    /// Which registry the index serves: the same `Some` text from two indexes means they
    /// share one registry (one announcement reaches both); `None`, a registry of its own.
    pub fn identify(&mut self) -> Result<Option<String>, IndexError> {
        match self.call(&IndexRequest::Identify)? {
            IndexResponse::Identity { registry } => Ok(registry),
            other => Err(unexpected(other, None, "Identity")),
        }
    }

    /// Address of the index currently connected to, if any.
    pub fn connected_index(&self) -> Option<&PeerAddr> {
        self.conn.as_ref().map(|c| &c.addr)
    }

    /// Our own address as the index sees it: the local end of the current connection
    /// (connecting first if needed). A peer listening on `0.0.0.0` advertises this host.
    pub fn local_addr(&mut self) -> Result<PeerAddr, IndexError> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => self.connect(None)?,
        };
        let addr = conn.reader.get_ref().local_addr();
        self.conn = Some(conn);
        Ok(addr.map_err(ProtoError::from)?)
    }

    /// Sends one request and reads its response, reconnecting and retrying once if the
    /// connection turns out to be gone.
    fn call(&mut self, request: &IndexRequest) -> Result<IndexResponse, IndexError> {
        self.out.clear();
        codec::encode_frame(request, &mut self.out)?;
        match self.exchange() {
            Err(IndexError::Proto(e)) if e.is_disconnect() => {
                log::debug!("index connection lost ({e}); reconnecting");
                self.exchange()
            }
            other => other,
        }
    }

    /// One attempt on the current connection (opened if needed). Any failure drops the
    /// connection: after a timeout or a garbled frame, the stream is out of step.
    fn exchange(&mut self) -> Result<IndexResponse, IndexError> {
        let mut conn = match self.conn.take() {
            Some(mut conn) => {
                conn.reader
                    .get_mut()
                    .write_all(&self.out)
                    .map_err(ProtoError::from)?;
                conn
            }
            // A new connection carries the request with its hello: one round trip, not two.
            None => self.connect(Some(&self.out))?,
        };
        let response = codec::read_frame(
            &mut conn.reader,
            codec::DEFAULT_RESPONSE_LIMIT,
            &mut self.body,
        )?;
        self.conn = Some(conn);
        Ok(response)
    }

    /// Opens a connection to the first index that accepts, sending `first` (an encoded
    /// request frame) together with the hello.
    fn connect(&self, first: Option<&[u8]>) -> Result<Conn<T::Stream>, IndexError> {
        let mut failures = Vec::new();
        for addr in &self.addrs {
            match self.open(addr, first) {
                Ok(reader) => {
                    log::debug!("connected to the index at {addr}");
                    return Ok(Conn {
                        reader,
                        addr: addr.clone(),
                    });
                }
                Err(e) => {
                    log::debug!("index at {addr} unavailable: {e}");
                    failures.push((addr, e.to_string()));
                }
            }
        }
        let addrs: Vec<&str> = self.addrs.iter().map(PeerAddr::as_str).collect();
        Err(IndexError::Unreachable {
            addrs: if addrs.is_empty() {
                "(none)".to_string()
            } else {
                addrs.join(", ")
            },
            reason: match failures.as_slice() {
                [] => "no index address was given".to_string(),
                // The address is already in the message.
                [(_, only)] => only.clone(),
                all => all
                    .iter()
                    .map(|(addr, e)| format!("{addr}: {e}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            },
        })
    }

    fn open(
        &self,
        addr: &PeerAddr,
        first: Option<&[u8]>,
    ) -> Result<BufReader<T::Stream>, ProtoError> {
        let mut stream = self.transport.connect(addr)?;
        let timeout = (!self.timeout.is_zero()).then_some(self.timeout);
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        match first {
            Some(frame) => codec::client_handshake_with_frame(&mut stream, Service::Index, frame)?,
            None => codec::client_handshake(&mut stream, Service::Index)?,
        }
        Ok(BufReader::new(stream))
    }
}

/// Turns a response that is not the expected answer into the error it means.
fn unexpected(response: IndexResponse, key: Option<&FileKey>, wanted: &str) -> IndexError {
    match (response, key) {
        (IndexResponse::Error(reply), Some(key)) if reply.code == ErrorCode::NotFound => {
            IndexError::NotFound {
                key: key.to_string(),
            }
        }
        (IndexResponse::Error(reply), _) if reply.code == ErrorCode::RegistryUnavailable => {
            IndexError::RegistryUnavailable(format!("index answered: {}", reply.message))
        }
        (IndexResponse::Error(reply), _) => IndexError::Refused(reply),
        (other, _) => IndexError::UnexpectedResponse(format!(
            "expected {wanted}, got {}",
            variant_name(&other)
        )),
    }
}

fn variant_name(response: &IndexResponse) -> &'static str {
    match response {
        IndexResponse::Located { .. } => "Located",
        IndexResponse::Holders { .. } => "Holders",
        IndexResponse::Registered { .. } => "Registered",
        IndexResponse::Unregistered { .. } => "Unregistered",
        IndexResponse::SearchResults { .. } => "SearchResults",
        IndexResponse::Error(_) => "Error",
        IndexResponse::Renewed { .. } => "Renewed",
        IndexResponse::Sources { .. } => "Sources",
        IndexResponse::Lease { .. } => "Lease",
        IndexResponse::Identity { .. } => "Identity",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::message::ErrorReply;

    #[test]
    fn responses_map_to_errors() {
        let key = FileKey::Name("x".into());
        let not_found = IndexResponse::Error(ErrorReply::new(ErrorCode::NotFound, "no"));
        assert!(matches!(
            unexpected(not_found.clone(), Some(&key), "Located"),
            IndexError::NotFound { key } if key == "x"
        ));
        assert!(matches!(
            unexpected(not_found, None, "Registered"),
            IndexError::Refused(_)
        ));
        let err = unexpected(
            IndexResponse::Registered { added: 1 },
            Some(&key),
            "Located",
        );
        assert_eq!(
            err.to_string(),
            "the index sent an unexpected response: expected Located, got Registered"
        );
    }

    #[test]
    fn an_unreachable_index_is_named_once_with_a_readable_reason() {
        let net = shoal_proto::mem::MemNetwork::new();
        let addr = |s: &str| PeerAddr::new(s).unwrap();
        let mut one = IndexClient::new(net.host("me"), vec![addr("gone:1024")]);
        let err = one.search("", 10).unwrap_err().to_string();
        assert_eq!(err.matches("gone:1024").count(), 1, "{err}");
        assert!(err.contains("connection refused"), "{err}");
        assert!(
            !err.contains("os error") && !err.contains("i/o error"),
            "{err}"
        );

        let mut two = IndexClient::new(net.host("me"), vec![addr("a:1"), addr("b:2")]);
        let err = two.search("", 10).unwrap_err().to_string();
        assert!(
            err.contains("a:1: connection refused") && err.contains("b:2: connection refused"),
            "{err}"
        );
    }
}
