//! The peer server: serves the manifests and chunks of the library's files.

use std::io::{BufReader, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use shoal_proto::codec::{self, Service};
use shoal_proto::deadline::FrameDeadline;
use shoal_proto::message::{ErrorCode, ErrorReply, Manifest, PeerRequest, PeerResponse};
use shoal_proto::server::{AcceptConfig, ServerHandle, spawn_accept_loop};
use shoal_proto::{Connection, FileId, FileKey, PeerAddr, ProtoError, Transport, content};

use crate::library::open_regular;
use crate::{Library, PeerError};

/// Read buffer for requests (they are a few dozen bytes each).
const REQUEST_BUF: usize = 1024;

/// How a [`PeerServer`] runs.
#[derive(Clone, Debug)]
pub struct PeerServerConfig {
    /// Connections served at once; the next client gets a "busy" handshake (default 256).
    pub max_connections: usize,
    /// A connection idle this long between requests is closed (default 120 s; `None`: never).
    pub idle_timeout: Option<Duration>,
    /// A request (or the handshake) must arrive whole within this long of its first byte,
    /// however slowly it trickles in: slowloris clients are dropped (default 10 s).
    pub frame_timeout: Duration,
    /// A write that cannot progress for this long ends the connection (default 30 s).
    pub io_timeout: Duration,
    /// Largest request frame accepted, in bytes.
    pub request_limit: u32,
    /// Transfers (`ReadChunks` answers) served at once; the next gets a typed busy reply so
    /// the downloader moves to other holders (default 16).
    pub max_uploads: usize,
}

impl Default for PeerServerConfig {
    fn default() -> Self {
        PeerServerConfig {
            max_connections: 256,
            idle_timeout: Some(Duration::from_secs(120)),
            frame_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(30),
            request_limit: codec::DEFAULT_REQUEST_LIMIT,
            max_uploads: 16,
        }
    }
}

/// Serves a [`Library`] to other peers: manifests, and chunk ranges streamed as
/// `Chunk` frames each followed by its raw bytes.
pub struct PeerServer<T: Transport> {
    transport: T,
    library: Library,
    config: PeerServerConfig,
}

impl<T: Transport> PeerServer<T> {
    /// A server of `library` over `transport`; nothing happens until [`PeerServer::spawn`].
    pub fn new(transport: T, library: Library, config: PeerServerConfig) -> Self {
        PeerServer {
            transport,
            library,
            config,
        }
    }

    /// Listens on `addr` (port 0 picks a free port, see [`ServerHandle::addr`]) and serves
    /// each connection on its own thread until the handle is shut down or dropped.
    pub fn spawn(self, addr: &PeerAddr) -> Result<ServerHandle, PeerError> {
        let bind_error = |source| PeerError::Bind {
            addr: addr.clone(),
            source,
        };
        let listener = self.transport.bind(addr).map_err(bind_error)?;
        let mut accept = AcceptConfig::new(Service::Peer, "peer");
        accept.max_connections = self.config.max_connections;
        let PeerServer {
            transport,
            library,
            config,
        } = self;
        let uploads = Arc::new(AtomicUsize::new(0));
        spawn_accept_loop(&transport, listener, accept, move |stream, from| {
            serve(stream, from, &library, &config, &uploads);
        })
        .map_err(bind_error)
    }
}

/// One connection: the handshake, then requests until the client leaves.
fn serve<S: Connection>(
    stream: S,
    from: PeerAddr,
    library: &Library,
    config: &PeerServerConfig,
    uploads: &AtomicUsize,
) {
    // Reads wait at most one frame budget; quiet time between requests is added up against
    // the idle timeout in `Session::run`.
    let setup = stream
        .set_read_timeout(Some(config.frame_timeout))
        .and_then(|()| stream.set_write_timeout(Some(config.io_timeout)));
    if let Err(e) = setup {
        log::debug!("cannot set up the connection from {from}: {e}");
        return;
    }
    let mut stream = FrameDeadline::new(stream, config.frame_timeout);
    // The hello is read straight from the stream (exactly 8 bytes), so nothing the client
    // sends after it is lost to the buffered reader below.
    if let Err(e) = codec::server_handshake(&mut stream, Service::Peer) {
        log::debug!("handshake with {from} failed: {e}");
        return;
    }
    stream.frame_done();
    let mut session = Session {
        conn: BufReader::with_capacity(REQUEST_BUF, stream),
        from,
        library,
        config,
        uploads,
        frame: Vec::new(),
        out: Vec::with_capacity(64),
        chunk: Vec::new(),
    };
    session.run();
}

struct Session<'a, S> {
    conn: BufReader<FrameDeadline<S>>,
    from: PeerAddr,
    library: &'a Library,
    config: &'a PeerServerConfig,
    /// Transfers in progress on the whole server.
    uploads: &'a AtomicUsize,
    /// Request body scratch.
    frame: Vec<u8>,
    /// Encoded response scratch.
    out: Vec<u8>,
    /// One chunk's bytes, reused for every chunk of the connection.
    chunk: Vec<u8>,
}

impl<S: Connection> Session<'_, S> {
    fn run(&mut self) {
        let mut quiet = Duration::ZERO;
        loop {
            let request =
                codec::read_frame(&mut self.conn, self.config.request_limit, &mut self.frame);
            if request.is_ok() {
                quiet = Duration::ZERO;
                self.conn.get_mut().frame_done();
            }
            let result = match request {
                Err(ProtoError::Idle) => {
                    quiet += self.config.frame_timeout;
                    if self.config.idle_timeout.is_some_and(|idle| quiet >= idle) {
                        log::debug!("closing {}: idle for {} s", self.from, quiet.as_secs());
                        return;
                    }
                    continue;
                }
                Ok(PeerRequest::Manifest { key }) => self.manifest(&key),
                Ok(PeerRequest::ReadChunks {
                    id,
                    chunk_size,
                    first,
                    count,
                }) => self.read_chunks_limited(id, chunk_size, first, count),
                Err(ProtoError::Closed) => {
                    log::debug!("{} closed the connection", self.from);
                    return;
                }
                Err(e @ (ProtoError::FrameTooLarge { .. } | ProtoError::Malformed(_))) => {
                    // The stream is out of step now; say why before hanging up.
                    let _ = self.refuse(ErrorCode::BadRequest, e.to_string());
                    log::debug!("bad request from {}: {e}", self.from);
                    return;
                }
                Err(e) => {
                    log::debug!("connection from {} ended: {e}", self.from);
                    return;
                }
            };
            if let Err(e) = result {
                log::debug!("connection from {} ended: {e}", self.from);
                return;
            }
        }
    }

    /// Sends a refusal; the connection stays usable.
    fn refuse(&mut self, code: ErrorCode, message: String) -> Result<(), ProtoError> {
        self.send(&PeerResponse::Error(ErrorReply::new(code, message)))
    }

    fn send(&mut self, response: &PeerResponse) -> Result<(), ProtoError> {
        self.out.clear();
        codec::encode_frame(response, &mut self.out)?;
        self.conn.get_mut().write_all(&self.out)?;
        Ok(())
    }

    fn manifest(&mut self, key: &FileKey) -> Result<(), ProtoError> {
        if let Err(e) = key.validate() {
            log::debug!("{} asked for a bad name: {e}", self.from);
            return self.refuse(ErrorCode::BadName, e.to_string());
        }
        log::info!("{} requested {key} manifest", self.from);
        let Some(file) = self.library.get(key) else {
            return self.refuse(ErrorCode::NotFound, format!("no file {key} here"));
        };
        self.send(&PeerResponse::Manifest(Manifest {
            file: file.meta,
            chunk_hashes: file.chunk_hashes.to_vec(),
        }))
    }

    /// `read_chunks` within the server's upload limit.
    fn read_chunks_limited(
        &mut self,
        id: FileId,
        chunk_size: u32,
        first: u32,
        count: u32,
    ) -> Result<(), ProtoError> {
        let max = self.config.max_uploads;
        if self
            .uploads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            log::info!("refused {}: {max} uploads already in progress", self.from);
            return self.refuse(
                ErrorCode::Busy,
                format!("{max} uploads already in progress; try another holder"),
            );
        }
        let result = self.read_chunks(id, chunk_size, first, count);
        self.uploads.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn read_chunks(
        &mut self,
        id: FileId,
        chunk_size: u32,
        first: u32,
        count: u32,
    ) -> Result<(), ProtoError> {
        let started = Instant::now();
        if let Err(e) = content::validate_chunk_size(chunk_size) {
            return self.refuse(ErrorCode::BadRequest, e.to_string());
        }
        // Only files of the library are served: the path comes from the library, never from
        // the request.
        let Some(file) = self.library.get(&FileKey::Id(id)) else {
            return self.refuse(ErrorCode::NotFound, format!("no file {id} here"));
        };
        let meta = file.meta;
        // The requester's grid, not ours: any valid chunk size cuts the same bytes.
        let total = content::chunk_count(meta.size, chunk_size);
        let end = u64::from(first) + u64::from(count);
        if end > total {
            return self.refuse(
                ErrorCode::BadRequest,
                format!(
                    "chunks {first}..{end} are past the end of {} ({total} chunks)",
                    meta.name
                ),
            );
        }
        let opened = open_regular(&file.path).and_then(|(f, m)| {
            if m.len() == meta.size {
                Ok(f)
            } else {
                Err(std::io::Error::other(format!(
                    "its size changed from {} to {} bytes",
                    meta.size,
                    m.len()
                )))
            }
        });
        let disk = match opened {
            Ok(f) => f,
            Err(e) => {
                log::warn!("cannot serve {}: {e}", file.path.display());
                return self.refuse(
                    ErrorCode::Internal,
                    format!("{} cannot be read here", meta.name),
                );
            }
        };
        let mut bytes = 0u64;
        for index in first..first.saturating_add(count) {
            let Some(chunk_len) = content::chunk_len(meta.size, chunk_size, index) else {
                break; // unreachable: the range was checked above
            };
            let len = chunk_len as usize;
            if self.chunk.len() < len {
                self.chunk.resize(len, 0);
            }
            let body = &mut self.chunk[..len];
            let offset = content::chunk_offset(chunk_size, index);
            if let Err(e) = disk.read_exact_at(body, offset) {
                log::warn!(
                    "{} changed while being served to {}: {e}",
                    file.path.display(),
                    self.from
                );
                return self.refuse(
                    ErrorCode::Internal,
                    format!("{} changed on disk while being served", meta.name),
                );
            }
            self.out.clear();
            codec::encode_frame(
                &PeerResponse::Chunk {
                    index,
                    len: chunk_len,
                },
                &mut self.out,
            )?;
            // Header and body as two writes: the body goes straight from our buffer to the
            // stream, with no copy into a writer's buffer.
            let stream = self.conn.get_mut();
            stream.write_all(&self.out)?;
            stream.write_all(body)?;
            bytes += len as u64;
        }
        log::info!(
            "served {} chunks {first}..{end} ({bytes} B) to {} in {} ms",
            meta.name,
            self.from,
            started.elapsed().as_millis()
        );
        Ok(())
    }
}
