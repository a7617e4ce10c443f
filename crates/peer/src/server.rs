//! The peer server: serves the manifests and chunks of the library's files.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::codec::{self, Service};
use shoal_proto::message::{ErrorCode, ErrorReply, Have, Manifest, PeerRequest, PeerResponse};
use shoal_proto::server::{
    AcceptConfig, Handler, ServerHandle, SessionConfig, SessionStream, serve_session,
    spawn_accept_loop,
};
use shoal_proto::{
    Connection, FileId, FileKey, FileMeta, PeerAddr, ProtoError, Transport, content,
};

use crate::library::open_regular;
use crate::pieces::Bitset;
use crate::share::{Availability, PartialShare};
use crate::{Library, PeerError, SharedFile};

/// Read buffer for requests (they are a few dozen bytes each).
const REQUEST_BUF: usize = 1024;
/// An upload goes out in pieces of at most this many bytes, each with its own deadline
/// (see [`PeerServerConfig::min_upload_rate`]): a requester's huge chunk size buys no time.
const UPLOAD_PIECE: usize = 256 << 10;
/// How often a blocked upload write wakes to check its deadline.
const UPLOAD_WAKE: Duration = Duration::from_millis(250);

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
    /// Transfers (`ReadChunks` answers) served at once (default 16). Requests beyond it
    /// queue in arrival order, so every downloader gets its turn; one that waits longer
    /// than `upload_queue_wait` gets a typed busy reply and tries other holders.
    pub max_uploads: usize,
    /// Longest a `ReadChunks` request waits for an upload slot (default 5 s).
    pub upload_queue_wait: Duration,
    /// An upload slot is kept by progress: while another request waits for a slot, each
    /// piece of an upload (at most 256 KiB) must leave within the time it takes at this
    /// rate, in bytes per second (and at least `upload_grace`), or the transfer ends, the
    /// connection is closed ([`ProtoError::TooSlow`]) and the slot goes to the next in
    /// line. Nobody waiting, a slow reader keeps its slot. 0 turns it off (default 64 KiB/s:
    /// 4 s per 256 KiB piece, within `upload_queue_wait`).
    pub min_upload_rate: u64,
    /// The least time any piece of an upload gets, however small (default 2 s).
    pub upload_grace: Duration,
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
            upload_queue_wait: Duration::from_secs(5),
            min_upload_rate: 64 << 10,
            upload_grace: Duration::from_secs(2),
        }
    }
}

/// Serves a [`Library`] to other peers: manifests, and chunk ranges streamed as
/// `Chunk` frames each followed by its raw bytes.
pub struct PeerServer<T: Transport> {
    transport: T,
    library: Library,
    config: PeerServerConfig,
    stats: Arc<ServerStats>,
}

/// What a [`PeerServer`] has served, readable while it runs ([`PeerServer::stats`]).
#[derive(Debug, Default)]
pub struct ServerStats {
    bytes: AtomicU64,
    partial_bytes: AtomicU64,
    chunks: AtomicU64,
}

impl ServerStats {
    fn count(&self, bytes: u64, partial: bool) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.chunks.fetch_add(1, Ordering::Relaxed);
        if partial {
            self.partial_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Chunk bytes sent to other peers.
    pub fn bytes_served(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Of those, bytes sent from downloads still in progress.
    pub fn partial_bytes_served(&self) -> u64 {
        self.partial_bytes.load(Ordering::Relaxed)
    }

    /// Chunks sent to other peers.
    pub fn chunks_served(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }
}

/// Upload slots, handed out in the order requests arrive (no downloader starves).
struct UploadSlots {
    max: usize,
    state: Mutex<SlotState>,
    freed: Condvar,
}

struct SlotState {
    active: usize,
    next_ticket: u64,
    queue: VecDeque<u64>,
}

impl UploadSlots {
    fn new(max: usize) -> Self {
        UploadSlots {
            max: max.max(1),
            state: Mutex::new(SlotState {
                active: 0,
                next_ticket: 0,
                queue: VecDeque::new(),
            }),
            freed: Condvar::new(),
        }
    }

    /// A slot, waiting at most `wait` behind earlier requests; false if none came.
    fn acquire(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.queue.push_back(ticket);
        loop {
            if s.queue.front() == Some(&ticket) && s.active < self.max {
                s.queue.pop_front();
                s.active += 1;
                // The next in line may fit too.
                self.freed.notify_all();
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.queue.retain(|&t| t != ticket);
                self.freed.notify_all();
                return false;
            }
            s = self
                .freed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn release(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.active = s.active.saturating_sub(1);
        self.freed.notify_all();
    }

    /// Requests waiting for a slot now.
    fn waiting(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue
            .len()
    }
}

/// The progress an upload must make to keep its slot (see
/// [`PeerServerConfig::min_upload_rate`]).
struct Pace<'a> {
    slots: &'a UploadSlots,
    /// Bytes per second; 0: no minimum.
    min_rate: u64,
    grace: Duration,
    /// The longest a write may make no progress at all, contended or not.
    io_timeout: Duration,
}

impl Pace<'_> {
    /// How long a piece of `len` bytes may take.
    fn budget(&self, len: usize) -> Duration {
        let at_rate = Duration::from_secs_f64(len as f64 / self.min_rate.max(1) as f64);
        at_rate.max(self.grace)
    }

    /// Writes `bytes` of an upload in pieces of at most [`UPLOAD_PIECE`] bytes. A piece
    /// still unsent past its budget while another request waits for a slot ends the
    /// transfer with [`ProtoError::TooSlow`]; the stream is then mid-frame, so the caller
    /// closes the connection. The stream's write timeout must be short ([`UPLOAD_WAKE`]),
    /// so a blocked write comes back to check.
    fn write<W: Write>(&self, w: &mut W, bytes: &[u8]) -> Result<(), ProtoError> {
        if self.min_rate == 0 {
            w.write_all(bytes)?;
            return Ok(());
        }
        for piece in bytes.chunks(UPLOAD_PIECE) {
            let started = Instant::now();
            let deadline = started + self.budget(piece.len());
            let mut progress = started;
            let mut rest = piece;
            while !rest.is_empty() {
                match w.write(rest) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                    Ok(n) => {
                        rest = rest.get(n..).unwrap_or_default();
                        progress = Instant::now();
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        if progress.elapsed() >= self.io_timeout {
                            return Err(e.into());
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
                if !rest.is_empty() && Instant::now() >= deadline && self.slots.waiting() > 0 {
                    return Err(ProtoError::TooSlow {
                        min_rate: self.min_rate,
                    });
                }
            }
        }
        Ok(())
    }
}

impl<T: Transport> PeerServer<T> {
    /// A server of `library` over `transport`; nothing happens until [`PeerServer::spawn`].
    pub fn new(transport: T, library: Library, config: PeerServerConfig) -> Self {
        PeerServer {
            transport,
            library,
            config,
            stats: Arc::new(ServerStats::default()),
        }
    }

    /// What the server has served so far (shared with the running server).
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.stats)
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
            stats,
        } = self;
        let shared = Arc::new(Shared {
            uploads: UploadSlots::new(config.max_uploads),
            stats,
            handed: HandedOut::default(),
        });
        let session = config.session();
        spawn_accept_loop(&transport, listener, accept, move |stream, from, live| {
            let mut handler = Session {
                from: from.clone(),
                library: &library,
                config: &config,
                shared: &shared,
                out: Vec::with_capacity(64),
                chunk: Vec::new(),
            };
            serve_session(stream, &from, live, &session, &mut handler);
        })
        .map_err(bind_error)
    }
}

/// What every connection of one server shares.
struct Shared {
    uploads: UploadSlots,
    stats: Arc<ServerStats>,
    handed: HandedOut,
}

/// Files whose hand-outs are tracked at once; the least recently asked is forgotten.
const HANDED_FILES: usize = 16;
/// A chunk counts as handed out while it is being sent and this long after: time for its
/// receiver to verify it and for the crowd to learn that the receiver has it.
const HANDED_GRACE: Duration = Duration::from_millis(1500);

/// Which chunks of each complete file (in each requester grid) this server is sending or
/// sent a moment ago: a seeder's answer to `Availability` lists them, so a crowd asks it
/// for chunks nobody is getting yet and trades the rest. Bounded: at most `HANDED_FILES`
/// (file, grid) entries, five bytes per chunk each.
#[derive(Default)]
struct HandedOut {
    files: Mutex<HashMap<(FileId, u32), Handed>>,
}

struct Handed {
    epoch: Instant,
    /// Requests of each chunk being answered now.
    sending: Vec<u8>,
    /// When each chunk was last sent, in ms after `epoch` (0: never).
    sent_ms: Vec<u32>,
    last_used: Instant,
}

impl HandedOut {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(FileId, u32), Handed>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Chunks `range` of a file of `chunks` chunks are about to be sent.
    fn start(&self, key: (FileId, u32), chunks: u32, range: std::ops::Range<u32>) {
        let mut files = self.lock();
        if files.len() >= HANDED_FILES && !files.contains_key(&key) {
            let oldest = files
                .iter()
                .min_by_key(|(_, h)| h.last_used)
                .map(|(key, _)| *key);
            if let Some(oldest) = oldest {
                files.remove(&oldest);
            }
        }
        let now = Instant::now();
        let entry = files.entry(key).or_insert_with(|| Handed {
            epoch: now,
            sending: vec![0; chunks as usize],
            sent_ms: vec![0; chunks as usize],
            last_used: now,
        });
        entry.last_used = now;
        for i in range {
            if let Some(n) = entry.sending.get_mut(i as usize) {
                *n = n.saturating_add(1);
            }
        }
    }

    /// The requests of `range` are answered (or ended).
    fn finish(&self, key: (FileId, u32), range: std::ops::Range<u32>) {
        let mut files = self.lock();
        let Some(entry) = files.get_mut(&key) else {
            return;
        };
        let ms = u32::try_from(entry.epoch.elapsed().as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        for i in range {
            if let (Some(n), Some(at)) = (
                entry.sending.get_mut(i as usize),
                entry.sent_ms.get_mut(i as usize),
            ) {
                *n = n.saturating_sub(1);
                *at = ms;
            }
        }
    }

    /// The wire bitmap of the chunks being sent or sent within the grace, if any are.
    fn handed(&self, key: (FileId, u32)) -> Option<Vec<u8>> {
        let files = self.lock();
        let entry = files.get(&key)?;
        let now = entry.epoch.elapsed();
        let mut bits = Bitset::new(entry.sending.len() as u32);
        for (i, (&n, &at)) in entry.sending.iter().zip(&entry.sent_ms).enumerate() {
            let recent =
                at > 0 && now.saturating_sub(Duration::from_millis(u64::from(at))) < HANDED_GRACE;
            if n > 0 || recent {
                bits.insert(i as u32);
            }
        }
        Some(bits.to_wire())
    }
}

/// One connection's answers: [`serve_session`] reads the requests, this answers them.
struct Session<'a> {
    from: PeerAddr,
    library: &'a Library,
    config: &'a PeerServerConfig,
    /// Upload slots and counters of the whole server.
    shared: &'a Shared,
    /// Encoded response scratch.
    out: Vec<u8>,
    /// One chunk's bytes, reused for every chunk of the connection.
    chunk: Vec<u8>,
}

impl<C: Connection> Handler<C> for Session<'_> {
    type Request = PeerRequest;
    type Response = PeerResponse;

    fn error_response(reply: ErrorReply) -> PeerResponse {
        PeerResponse::Error(reply)
    }

    fn handle(
        &mut self,
        request: PeerRequest,
        stream: &mut SessionStream<C>,
    ) -> Result<(), ProtoError> {
        let mut conn = Conn { stream, s: self };
        match request {
            PeerRequest::Manifest { key } => conn.manifest(&key),
            PeerRequest::ReadChunks {
                id,
                chunk_size,
                first,
                count,
            } => conn.read_chunks_limited(id, chunk_size, first, count),
            PeerRequest::Availability {
                id,
                chunk_size,
                since,
                wait_ms,
            } => conn.availability(id, chunk_size, since, wait_ms),
        }
    }
}

impl PeerServerConfig {
    fn session(&self) -> SessionConfig {
        SessionConfig {
            service: Service::Peer,
            label: "peer",
            request_limit: self.request_limit,
            frame_timeout: self.frame_timeout,
            idle_timeout: self.idle_timeout,
            write_timeout: Some(self.io_timeout),
            read_buffer: REQUEST_BUF,
        }
    }
}

/// One request being answered: the session's state and the connection's stream.
struct Conn<'s, 'a, C> {
    stream: &'s mut SessionStream<C>,
    s: &'s mut Session<'a>,
}

impl<'a, C: Connection> Conn<'_, 'a, C> {
    /// Sends a refusal; the connection stays usable.
    fn refuse(&mut self, code: ErrorCode, message: String) -> Result<(), ProtoError> {
        self.send(&PeerResponse::Error(ErrorReply::new(code, message)))
    }

    fn send(&mut self, response: &PeerResponse) -> Result<(), ProtoError> {
        self.s.out.clear();
        codec::encode_frame(response, &mut self.s.out)?;
        self.stream.write_all(&self.s.out)?;
        Ok(())
    }

    fn manifest(&mut self, key: &FileKey) -> Result<(), ProtoError> {
        if let Err(e) = key.validate() {
            log::debug!("{} asked for a bad name: {e}", self.s.from);
            return self.refuse(ErrorCode::BadName, e.to_string());
        }
        log::info!("{} requested {key} manifest", self.s.from);
        if let Some(file) = self.s.library.get(key) {
            return self.send(&PeerResponse::Manifest(Manifest {
                file: file.meta,
                chunk_hashes: file.chunk_hashes.to_vec(),
            }));
        }
        // A download in progress has a verified manifest too (asked by id only: a name
        // here is a complete file's).
        if let FileKey::Id(id) = key
            && let Some(share) = self.s.library.partial(id)
        {
            return self.send(&PeerResponse::Manifest(share.manifest()));
        }
        self.refuse(ErrorCode::NotFound, format!("no file {key} here"))
    }

    /// Which chunks of `id` this peer has: all of a complete file, the verified ones of a
    /// download in progress (waiting up to `wait_ms` for news after `since`).
    fn availability(
        &mut self,
        id: FileId,
        chunk_size: u32,
        since: u32,
        wait_ms: u32,
    ) -> Result<(), ProtoError> {
        if let Err(e) = content::validate_chunk_size(chunk_size) {
            return self.refuse(ErrorCode::BadRequest, e.to_string());
        }
        let share = match self.source(&id) {
            None => return self.refuse(ErrorCode::NotFound, format!("no file {id} here")),
            Some(Source::Complete(file)) => {
                let chunks = content::chunk_count(file.meta.size, chunk_size);
                let have = match self.s.shared.handed.handed((id, chunk_size)) {
                    Some(sent) if sent.len() as u64 == chunks.div_ceil(8) => Have::Seeding(sent),
                    _ => Have::All,
                };
                return self.send(&PeerResponse::Availability { seq: 0, have });
            }
            Some(Source::Partial(share)) => share,
        };
        let wait = Duration::from_millis(u64::from(wait_ms));
        match share.availability(chunk_size, since, wait) {
            Availability::Answer { seq, have } => {
                // The download may have finished while we waited: say so.
                let have = if self.s.library.get(&FileKey::Id(id)).is_some() {
                    Have::All
                } else {
                    have
                };
                self.send(&PeerResponse::Availability { seq, have })
            }
            Availability::OtherGrid => {
                self.refuse(ErrorCode::BadRequest, other_grid(&share, chunk_size))
            }
        }
    }

    /// A `ReadChunks` request: checked once against the file it names (a complete file, or
    /// a download in progress in its own grid), then answered in an upload slot.
    fn read_chunks_limited(
        &mut self,
        id: FileId,
        chunk_size: u32,
        first: u32,
        count: u32,
    ) -> Result<(), ProtoError> {
        if let Err(e) = content::validate_chunk_size(chunk_size) {
            return self.refuse(ErrorCode::BadRequest, e.to_string());
        }
        // Only files of the library are served: the path comes from the library, never from
        // the request.
        let Some(source) = self.source(&id) else {
            return self.refuse(ErrorCode::NotFound, format!("no file {id} here"));
        };
        if let Source::Partial(share) = &source
            && chunk_size != share.meta().chunk_size
        {
            return self.refuse(ErrorCode::BadRequest, other_grid(share, chunk_size));
        }
        // The requester's grid: any valid chunk size cuts the same bytes of a complete file.
        let meta = source.meta();
        let total = content::chunk_count(meta.size, chunk_size);
        let end = u64::from(first) + u64::from(count);
        if end > total {
            let refusal = format!(
                "chunks {first}..{end} are past the end of {} ({total} chunks)",
                meta.name
            );
            return self.refuse(ErrorCode::BadRequest, refusal);
        }
        let range = first..first + count; // cannot overflow: end <= total <= u32::MAX
        // A seeder counts chunks as handed out when asked for, before the wait for a slot:
        // the next downloader to ask what is left already knows.
        let key = (id, chunk_size);
        let handed = matches!(source, Source::Complete(_));
        if handed {
            let chunks = u32::try_from(total).unwrap_or(u32::MAX);
            self.s.shared.handed.start(key, chunks, range.clone());
        }
        let result = self.upload_in_slot(&source, chunk_size, range.clone());
        if handed {
            self.s.shared.handed.finish(key, range);
        }
        result
    }

    /// The complete file of this id, or else the download in progress.
    fn source(&self, id: &FileId) -> Option<Source> {
        match self.s.library.get(&FileKey::Id(*id)) {
            Some(file) => Some(Source::Complete(file)),
            None => self.s.library.partial(id).map(Source::Partial),
        }
    }

    /// The transfer in an upload slot, with the short write timeout the pace check needs.
    fn upload_in_slot(
        &mut self,
        source: &Source,
        chunk_size: u32,
        range: std::ops::Range<u32>,
    ) -> Result<(), ProtoError> {
        let max = self.s.config.max_uploads;
        if !self
            .s
            .shared
            .uploads
            .acquire(self.s.config.upload_queue_wait)
        {
            log::info!("refused {}: {max} uploads already in progress", self.s.from);
            return self.refuse(
                ErrorCode::Busy,
                format!("{max} uploads already in progress; try another holder"),
            );
        }
        let paced = self.s.config.min_upload_rate > 0;
        let mut result = Ok(());
        if paced {
            let wake = UPLOAD_WAKE.min(self.s.config.io_timeout);
            result = self
                .stream
                .get_ref()
                .set_write_timeout(Some(wake))
                .map_err(ProtoError::from);
        }
        if result.is_ok() {
            result = match source {
                Source::Complete(file) => self.read_chunks(file, chunk_size, range),
                Source::Partial(share) => self.read_partial_chunks(share, range),
            };
        }
        self.s.shared.uploads.release();
        if let Err(e @ ProtoError::TooSlow { .. }) = &result {
            log::info!(
                "ended the upload to {}: {e}; its slot goes to the next in line",
                self.s.from
            );
        }
        if paced && result.is_ok() {
            self.stream
                .get_ref()
                .set_write_timeout(Some(self.s.config.io_timeout))?;
        }
        result
    }

    /// The pace this connection's uploads must keep.
    fn pace(&self) -> Pace<'a> {
        let shared: &'a Shared = self.s.shared;
        Pace {
            slots: &shared.uploads,
            min_rate: self.s.config.min_upload_rate,
            grace: self.s.config.upload_grace,
            io_timeout: self.s.config.io_timeout,
        }
    }

    /// Chunks of a complete file, cut at the requester's grid (checked by the caller).
    fn read_chunks(
        &mut self,
        file: &SharedFile,
        chunk_size: u32,
        range: std::ops::Range<u32>,
    ) -> Result<(), ProtoError> {
        let started = Instant::now();
        let meta = &file.meta;
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
        for index in range.clone() {
            let Some(len) = content::chunk_len(meta.size, chunk_size, index) else {
                break; // unreachable: the range was checked by the caller
            };
            // One buffer per connection, taken out while the chunk is sent.
            let mut body = std::mem::take(&mut self.s.chunk);
            body.resize(len as usize, 0);
            let offset = content::chunk_offset(chunk_size, index);
            if let Err(e) = disk.read_exact_at(&mut body, offset) {
                self.s.chunk = body;
                log::warn!(
                    "{} changed while being served to {}: {e}",
                    file.path.display(),
                    self.s.from
                );
                return self.refuse(
                    ErrorCode::Internal,
                    format!("{} changed on disk while being served", meta.name),
                );
            }
            let sent = self.send_chunk(index, &body);
            self.s.chunk = body;
            sent?;
            bytes += u64::from(len);
            self.s.shared.stats.count(u64::from(len), false);
        }
        log::info!(
            "served {} chunks {}..{} ({bytes} B) to {} in {} ms",
            meta.name,
            range.start,
            range.end,
            self.s.from,
            started.elapsed().as_millis()
        );
        Ok(())
    }

    /// Chunks of a download in progress, in its own grid (checked by the caller): only
    /// verified ones. A chunk not verified yet ends the answer with a typed `Unavailable`
    /// (the connection stays usable; the requester asks elsewhere).
    fn read_partial_chunks(
        &mut self,
        share: &PartialShare,
        range: std::ops::Range<u32>,
    ) -> Result<(), ProtoError> {
        let mut bytes = 0u64;
        for index in range.clone() {
            let mut body = std::mem::take(&mut self.s.chunk);
            let read = share.read_chunk(index, &mut body);
            let result = match read {
                Ok(true) => self.send_chunk(index, &body),
                Ok(false) => {
                    self.s.chunk = body;
                    return self.refuse(
                        ErrorCode::Unavailable,
                        format!(
                            "chunk {index} of {} is not verified here yet",
                            share.meta().name
                        ),
                    );
                }
                Err(e) => {
                    self.s.chunk = body;
                    log::warn!("cannot read the download of {}: {e}", share.meta().name);
                    return self.refuse(
                        ErrorCode::Internal,
                        format!("{} cannot be read here", share.meta().name),
                    );
                }
            };
            let len = body.len() as u64;
            self.s.chunk = body;
            result?;
            bytes += len;
            self.s.shared.stats.count(len, true);
        }
        log::info!(
            "served {} chunks {}..{} ({bytes} B, downloading) to {}",
            share.meta().name,
            range.start,
            range.end,
            self.s.from
        );
        Ok(())
    }

    /// One `Chunk` frame and its body, as two writes: the body goes straight from our
    /// buffer to the stream, with no copy into a writer's buffer.
    fn send_chunk(&mut self, index: u32, body: &[u8]) -> Result<(), ProtoError> {
        self.s.out.clear();
        codec::encode_frame(
            &PeerResponse::Chunk {
                index,
                len: u32::try_from(body.len()).unwrap_or(u32::MAX),
            },
            &mut self.s.out,
        )?;
        let pace = self.pace();
        pace.write(self.stream, &self.s.out)?;
        pace.write(self.stream, body)?;
        Ok(())
    }
}

/// A file a `ReadChunks` or `Availability` request can be answered from.
enum Source {
    /// Complete, in the library: any grid.
    Complete(SharedFile),
    /// A download in progress: its own grid, verified chunks only.
    Partial(Arc<PartialShare>),
}

impl Source {
    fn meta(&self) -> &FileMeta {
        match self {
            Source::Complete(file) => &file.meta,
            Source::Partial(share) => share.meta(),
        }
    }
}

/// The refusal for a request cut at another grid than a download in progress uses.
fn other_grid(share: &PartialShare, chunk_size: u32) -> String {
    format!(
        "{} is being downloaded here in chunks of {} bytes, not {chunk_size}",
        share.meta().name,
        share.meta().chunk_size
    )
}
