use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use shoal_proto::codec::{self, Service};
use shoal_proto::content::{MAX_CHUNKS, chunk_count, validate_chunk_size};
use shoal_proto::message::{
    ErrorCode, ErrorReply, HolderNode, IndexRequest, IndexResponse, SEARCH_HIT_NODES,
    SEARCH_NODE_HITS, SearchHit,
};
use shoal_proto::server::{
    AcceptConfig, Handler, ServerHandle, SessionConfig, SessionStream, serve_session,
    spawn_accept_loop, write_frame,
};
use shoal_proto::{
    Connection, FileId, FileKey, FileMeta, NodeId, PeerAddr, ProtoError, Transport, validate_name,
};

use crate::nodes::{
    BoundToOther, Claimed, DEFAULT_NODE_BOOK_LIMIT, NodeBindings, NodeBook, Refusal,
};
use crate::{IndexError, IndexMetrics, IndexMonitor, RegistrationLimits, Store, StoreError};

/// Read buffer per connection: a request is small, and one read usually takes it whole.
const READ_BUFFER: usize = 4 << 10;
/// Floor on the sweep interval, so a tiny test lease does not make the sweeper spin.
const MIN_SWEEP_INTERVAL: Duration = Duration::from_millis(10);

/// Default [`IndexServerConfig::max_query_len`]: twice the longest name.
pub const DEFAULT_MAX_QUERY_LEN: usize = 512;
/// Default [`IndexServerConfig::max_registrations_per_holder`]: far more files than a
/// shared folder holds, and about 45 MB of index memory (some 170 bytes each).
pub const DEFAULT_MAX_PER_HOLDER: usize = 250_000;
/// Default [`IndexServerConfig::max_registrations_per_address`]: four such holders, about
/// 170 MB.
pub const DEFAULT_MAX_PER_ADDRESS: usize = 1_000_000;

/// Limits and timeouts of an [`IndexServer`].
#[derive(Clone, Debug)]
pub struct IndexServerConfig {
    /// Live connections at once; the next client is told the server is busy.
    pub max_connections: usize,
    /// Largest request frame accepted, in bytes.
    pub request_limit: u32,
    /// Most files one `Register` (or ids one `Unregister`) may list.
    pub max_files_per_register: usize,
    /// Server-side cap on search results, whatever the client asks for.
    pub search_limit: u32,
    /// Longest search query accepted, in bytes (a name is at most 255): a search costs
    /// listings times query length, so a longer one is refused.
    pub max_query_len: usize,
    /// Most registrations one holder may have (complete ones; partial ones count apart,
    /// against the same cap). A registration past it is refused whole.
    pub max_registrations_per_holder: usize,
    /// Most registrations the holders registered from one host may have together (every
    /// port of a machine, or every peer behind one NAT), likewise.
    pub max_registrations_per_address: usize,
    /// How long a connection may sit idle between requests; `None` waits forever.
    pub idle_timeout: Option<Duration>,
    /// A request (or the handshake) must arrive whole within this long of its first byte,
    /// however slowly it trickles in: slowloris clients are dropped. Also the longest
    /// silence in the middle of a request.
    pub frame_timeout: Duration,
    /// Take the holder address a registration announces at its word. Off (the default),
    /// the index records the host the registration arrived from (keeping the announced
    /// port), and refuses to unregister or renew holders on other hosts: nobody can register
    /// files on another machine's behalf. On, for peers behind NAT or a proxy.
    pub trust_announced_host: bool,
}

impl Default for IndexServerConfig {
    fn default() -> Self {
        IndexServerConfig {
            max_connections: 4096,
            request_limit: codec::DEFAULT_REQUEST_LIMIT,
            max_files_per_register: 100_000,
            search_limit: 1000,
            max_query_len: DEFAULT_MAX_QUERY_LEN,
            max_registrations_per_holder: DEFAULT_MAX_PER_HOLDER,
            max_registrations_per_address: DEFAULT_MAX_PER_ADDRESS,
            idle_timeout: Some(Duration::from_secs(300)),
            frame_timeout: Duration::from_secs(10),
            trust_announced_host: false,
        }
    }
}

/// The index server: answers [`IndexRequest`]s from a [`Store`], many per connection, one
/// thread per connection (see [`shoal_proto::server`]).
pub struct IndexServer<T: Transport, S: Store> {
    transport: T,
    store: Arc<S>,
    config: IndexServerConfig,
    metrics: Arc<IndexMetrics>,
    /// Which node id each holder registered with (see [`crate::nodes`]), unless the store
    /// keeps the bindings itself ([`Store::node_bindings`]).
    book: Arc<Mutex<NodeBook>>,
}

impl<T: Transport, S: Store> IndexServer<T, S> {
    /// A server over `transport` answering from `store`.
    pub fn new(transport: T, store: S, config: IndexServerConfig) -> Self {
        let book = NodeBook::new(store.lease(), DEFAULT_NODE_BOOK_LIMIT);
        IndexServer {
            transport,
            store: Arc::new(store),
            config,
            metrics: Arc::new(IndexMetrics::new()),
            book: Arc::new(Mutex::new(book)),
        }
    }

    /// The server's counters (shared with the running server).
    pub fn metrics(&self) -> Arc<IndexMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Reads the store and the counters while the server runs: for status pages and
    /// `/metrics`.
    pub fn monitor(&self) -> IndexMonitor {
        let store: Arc<dyn Store> = Arc::clone(&self.store) as Arc<dyn Store>;
        IndexMonitor::new(store, Arc::clone(&self.metrics))
    }

    /// Binds `addr` (port 0 picks a free port) and serves in the background until the
    /// returned handle is dropped or shut down; [`ServerHandle::addr`] is the real address.
    /// A sweeper thread removes holders whose lease lapsed every quarter lease, and stops
    /// with the server.
    pub fn spawn(self, addr: &PeerAddr) -> Result<ServerHandle, IndexError> {
        let bind_error = |source| IndexError::Bind {
            addr: addr.clone(),
            source,
        };
        let listener = self.transport.bind(addr).map_err(bind_error)?;
        let mut accept = AcceptConfig::new(Service::Index, "index");
        accept.max_connections = self.config.max_connections;
        let store = Arc::clone(&self.store);
        let config = self.config;
        let session = config.session();
        let metrics = Arc::clone(&self.metrics);
        let book = Arc::clone(&self.book);
        let mut handle = spawn_accept_loop(
            &self.transport,
            listener,
            accept,
            move |stream, from, live| {
                let mut handler = IndexHandler {
                    store: &*store,
                    config: &config,
                    from: &from,
                    metrics: &metrics,
                    book: &book,
                    out: Vec::with_capacity(256),
                };
                let end = serve_session(stream, &from, live, &session, &mut handler);
                metrics.refusals().session_ended(&end);
            },
        )
        .map_err(bind_error)?;
        self.metrics.refusals().attach(handle.counters());
        let interval = (self.store.lease() / 4).max(MIN_SWEEP_INTERVAL);
        // Dropping the sender (when the handle stops) wakes and ends the sweeper at once.
        let (stop, stopped) = mpsc::channel::<()>();
        let store = self.store;
        let book = self.book;
        let sweeper = thread::Builder::new()
            .name("index-sweep".into())
            .stack_size(256 << 10)
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    sweep_once(&*store, &book);
                }
            })
            .map_err(|source| IndexError::Spawn {
                what: "the lease sweeper",
                source,
            })?;
        handle.on_stop(move || {
            drop(stop);
            let _ = sweeper.join();
        });
        Ok(handle)
    }
}

/// One sweep, one log line per expired holder; their node bindings go too.
fn sweep_once<S: Store>(store: &S, book: &Mutex<NodeBook>) {
    let result = store.sweep_expired();
    let expired: Vec<PeerAddr> = match &result {
        Ok(expired) => expired.iter().map(|(holder, _)| holder.clone()).collect(),
        Err(_) => Vec::new(),
    };
    bindings_of(store, book).swept(&expired, store.lease());
    match result {
        Ok(expired) => {
            for (holder, removed) in expired {
                log::info!("lease of {holder} lapsed: removed its {removed} registrations");
            }
        }
        // The store logged the outage already, once.
        Err(StoreError::Unavailable(reason)) => log::debug!("index: no sweep: {reason}"),
        Err(e) => log::warn!("index: sweeping expired leases failed: {e}"),
    }
}

/// One connection's answers: [`serve_session`] reads the requests, this answers them.
struct IndexHandler<'a, S> {
    store: &'a S,
    config: &'a IndexServerConfig,
    from: &'a PeerAddr,
    /// The server's counters.
    metrics: &'a IndexMetrics,
    /// The holders' node ids, unless the store keeps them.
    book: &'a Mutex<NodeBook>,
    /// Encoded response scratch, reused for every answer of the connection.
    out: Vec<u8>,
}

impl<C: Connection, S: Store> Handler<C> for IndexHandler<'_, S> {
    type Request = IndexRequest;
    type Response = IndexResponse;

    fn error_response(reply: ErrorReply) -> IndexResponse {
        IndexResponse::Error(reply)
    }

    fn handle(
        &mut self,
        request: IndexRequest,
        stream: &mut SessionStream<C>,
    ) -> Result<(), ProtoError> {
        let kind = crate::metrics::request_kind(&request);
        let started = Instant::now();
        // Known once the transport's handshake finished, which the first request's read did.
        let caller = Caller {
            from: self.from,
            node: stream.get_ref().peer_node(),
        };
        let response = answer(
            request,
            self.store,
            self.config,
            &caller,
            self.metrics,
            bindings_of(self.store, self.book),
        );
        self.metrics.record(kind, &response, started.elapsed());
        if let Err(e) = write_frame(stream, &mut self.out, &response) {
            let ProtoError::Malformed(e) = e else {
                return Err(e);
            };
            // Only an absurdly large answer fails to encode; tell the client rather than
            // hang it.
            log::warn!("index: cannot encode the answer to {}: {e}", self.from);
            let reply = ErrorReply::new(ErrorCode::Internal, "the answer could not be encoded");
            write_frame(stream, &mut self.out, &IndexResponse::Error(reply))?;
        }
        Ok(())
    }
}

impl IndexServerConfig {
    fn session(&self) -> SessionConfig {
        SessionConfig {
            service: Service::Index,
            label: "index",
            request_limit: self.request_limit,
            frame_timeout: self.frame_timeout,
            idle_timeout: self.idle_timeout,
            // A client that stops reading an answer is dropped like an idle one.
            write_timeout: self.idle_timeout,
            read_buffer: READ_BUFFER,
        }
    }
}

/// The holder a registration is recorded under: the announced port on the host the request
/// came from, unless announced hosts are trusted.
fn holder_as_seen(
    announced: PeerAddr,
    from: &PeerAddr,
    config: &IndexServerConfig,
) -> Result<PeerAddr, ErrorReply> {
    if config.trust_announced_host || announced.host() == from.host() {
        return Ok(announced);
    }
    // The port is the parsed number, never the announced text: no padding can stretch the
    // rebuilt address past the limit and so slip the announced host through.
    let seen = PeerAddr::new(format!("{}:{}", from.host(), announced.port())).map_err(|e| {
        ErrorReply::new(
            ErrorCode::BadRequest,
            format!("cannot record {from}'s holder: {e}"),
        )
    })?;
    log::info!("index: {from} announced {announced}; recording it as {seen}");
    Ok(seen)
}

/// Unregistering and renewing are for a holder's own host only (unless trusted).
fn own_holder(
    holder: &PeerAddr,
    from: &PeerAddr,
    config: &IndexServerConfig,
    what: &str,
) -> Result<(), ErrorReply> {
    if config.trust_announced_host || holder.host() == from.host() {
        return Ok(());
    }
    log::warn!("index: refused {from}'s request to {what} {holder}, a holder on another host");
    Err(ErrorReply::new(
        ErrorCode::BadRequest,
        format!(
            "cannot {what} {holder}: requests from {} may only {what} holders on that host",
            from.host()
        ),
    ))
}

/// Who sent a request: where from, and the node id its connection proved, if it did.
struct Caller<'a> {
    from: &'a PeerAddr,
    node: Option<NodeId>,
}

/// Where the holders' node ids live: the store's own bindings if it keeps them (a shared
/// registry), else the server's book.
fn bindings_of<'a, S: Store>(store: &'a S, book: &'a Mutex<NodeBook>) -> &'a dyn NodeBindings {
    store.node_bindings().unwrap_or(book)
}

/// The refusal of a change to a holder bound to another node id.
fn bound_to_other(
    holder: &PeerAddr,
    caller: &Caller<'_>,
    node: NodeId,
    refused: BoundToOther,
    what: &str,
) -> ErrorReply {
    log::warn!(
        "index: refused {}'s request to {what} {holder}: it is registered by node {}, the \
         connection is node {node}",
        caller.from,
        refused.bound
    );
    ErrorReply::new(
        ErrorCode::BadRequest,
        format!(
            "holder {holder} is registered by node {}; this connection is node {node}",
            refused.bound
        ),
    )
}

/// A refused claim or check: bound to another id, or the shared bindings unavailable (the
/// same refusal as the store's failure: nothing is let through unchecked).
fn refusal(
    refused: Refusal,
    holder: &PeerAddr,
    caller: &Caller<'_>,
    node: NodeId,
    what: &str,
    metrics: &IndexMetrics,
) -> ErrorReply {
    match refused {
        Refusal::Bound(bound) => {
            metrics.node_refused();
            bound_to_other(holder, caller, node, bound, what)
        }
        Refusal::Store(e) => store_failure(&e, metrics),
    }
}

/// Before a registration or renewal: binds `holder` to the caller's node id (refused while
/// it is bound to another). Returns what to undo if the change fails; `None` for a
/// connection without an id, which binds nothing.
fn claim_holder(
    bindings: &dyn NodeBindings,
    holder: &PeerAddr,
    caller: &Caller<'_>,
    what: &str,
    metrics: &IndexMetrics,
) -> Result<Option<(NodeId, Claimed)>, ErrorReply> {
    let Some(node) = caller.node else {
        return Ok(None);
    };
    bindings
        .claim(holder, node)
        .map(|claimed| Some((node, claimed)))
        .map_err(|refused| refusal(refused, holder, caller, node, what, metrics))
}

/// Puts back the binding a failed change claimed. If that fails too (the shared registry
/// went away meanwhile), the binding stays until it lapses: the holder's own id, which
/// only delays a new key taking an address nobody registered.
fn undo_claim(bindings: &dyn NodeBindings, holder: &PeerAddr, claimed: Option<(NodeId, Claimed)>) {
    if let Some((node, claimed)) = claimed
        && let Err(e) = bindings.undo(holder, node, claimed)
    {
        log::debug!("index: could not undo the binding of {holder}: {e}");
    }
}

/// Before an unregistration: refused while `holder` is bound to another node id.
fn check_holder(
    bindings: &dyn NodeBindings,
    holder: &PeerAddr,
    caller: &Caller<'_>,
    what: &str,
    metrics: &IndexMetrics,
) -> Result<(), ErrorReply> {
    let Some(node) = caller.node else {
        return Ok(());
    };
    bindings
        .check(holder, node)
        .map_err(|refused| refusal(refused, holder, caller, node, what, metrics))
}

/// Lists, for the first [`SEARCH_NODE_HITS`] hits, up to [`SEARCH_HIT_NODES`] complete
/// holders with known node ids (one holder lookup per hit, then one node lookup for all of
/// them, and none when no holder is bound).
fn add_search_nodes<S: Store>(hits: &mut [SearchHit], store: &S, bindings: &dyn NodeBindings) {
    if !bindings.may_have_any() {
        return;
    }
    let mut per_hit: Vec<(usize, Vec<PeerAddr>)> = Vec::new();
    for (i, hit) in hits.iter().enumerate().take(SEARCH_NODE_HITS) {
        if hit.holders == 0 {
            continue;
        }
        match store.holders(&FileKey::Id(hit.file.id)) {
            Ok(Some((_, holders))) => per_hit.push((i, holders)),
            Ok(None) => {}
            Err(e) => {
                log::debug!("index: no node ids for a search hit: {e}");
                return;
            }
        }
    }
    if per_hit.is_empty() {
        return;
    }
    let all: Vec<&PeerAddr> = per_hit.iter().flat_map(|(_, holders)| holders).collect();
    let known = match bindings.nodes_of(&all) {
        Ok(known) => known,
        Err(e) => {
            log::debug!("index: no node ids for the search hits: {e}");
            return;
        }
    };
    let known: std::collections::HashMap<&PeerAddr, NodeId> =
        known.iter().map(|n| (&n.holder, n.node)).collect();
    for (i, holders) in &per_hit {
        let mut nodes: Vec<_> = holders
            .iter()
            .filter_map(|holder| {
                known.get(holder).map(|&node| HolderNode {
                    holder: holder.clone(),
                    node,
                })
            })
            .collect();
        nodes.truncate(SEARCH_HIT_NODES);
        if let Some(hit) = hits.get_mut(*i) {
            hit.nodes = nodes;
        }
    }
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> IndexResponse {
    IndexResponse::Error(ErrorReply::new(code, message))
}

fn not_found(key: &FileKey) -> IndexResponse {
    refuse(ErrorCode::NotFound, format!("no peer holds {key}"))
}

/// A change the store refused or failed: over a cap is the client's doing.
fn change_failed(
    e: &StoreError,
    holder: &PeerAddr,
    from: &PeerAddr,
    metrics: &IndexMetrics,
) -> IndexResponse {
    match e {
        StoreError::OverLimit(limit) => {
            log::warn!("index: refused a registration of {holder} from {from}: {limit}");
            refuse(ErrorCode::BadRequest, limit.to_string())
        }
        other => store_failed(other, metrics),
    }
}

impl IndexServerConfig {
    fn registration_limits(&self) -> RegistrationLimits {
        RegistrationLimits {
            per_holder: self.max_registrations_per_holder,
            per_address: self.max_registrations_per_address,
        }
    }
}

/// An internal failure: the details (paths in the data folder, the store's own words) go
/// to the log; the client learns only that the index could not answer, and may try another.
/// A registry that is unavailable (Redis down) gets its own code, so clients can tell
/// "try again shortly" from a failure; the store logs each outage once, so a request
/// refused meanwhile is logged at debug level only.
fn store_failed(e: &StoreError, metrics: &IndexMetrics) -> IndexResponse {
    IndexResponse::Error(store_failure(e, metrics))
}

/// [`store_failed`]'s refusal.
fn store_failure(e: &StoreError, metrics: &IndexMetrics) -> ErrorReply {
    if let StoreError::Unavailable(reason) = e {
        log::debug!("index: registry unavailable: {reason}");
        return ErrorReply::new(ErrorCode::RegistryUnavailable, REGISTRY_UNAVAILABLE);
    }
    log::warn!("index: {e}");
    metrics.store_failed(e);
    ErrorReply::new(ErrorCode::Internal, STORE_FAILED)
}

/// What a client is told when the store fails.
const STORE_FAILED: &str = "the index's registry failed to answer; try again or ask another index";
/// What a client is told while the shared registry cannot be reached.
const REGISTRY_UNAVAILABLE: &str =
    "the index's registry is unavailable; nothing was changed; try again shortly";

fn answer<S: Store>(
    request: IndexRequest,
    store: &S,
    config: &IndexServerConfig,
    caller: &Caller<'_>,
    metrics: &IndexMetrics,
    bindings: &dyn NodeBindings,
) -> IndexResponse {
    let from = caller.from;
    match request {
        IndexRequest::Identify => IndexResponse::Identity {
            registry: store.identity(),
        },
        IndexRequest::Locate { key } => {
            if let Err(e) = key.validate() {
                return refuse(ErrorCode::BadName, e.to_string());
            }
            match store.locate_bound(&key, bindings) {
                Ok(Some((file, holder, node))) => {
                    log::debug!("index: {from} located {key} at {holder}");
                    IndexResponse::Located { file, holder, node }
                }
                Ok(None) => not_found(&key),
                Err(e) => store_failed(&e, metrics),
            }
        }
        IndexRequest::Holders { key } => {
            if let Err(e) = key.validate() {
                return refuse(ErrorCode::BadName, e.to_string());
            }
            match store.holders(&key) {
                Ok(Some((file, holders))) => {
                    log::debug!(
                        "index: {from} asked for the {} holders of {key}",
                        holders.len()
                    );
                    let asked: Vec<&PeerAddr> = holders.iter().collect();
                    match bindings.nodes_of(&asked) {
                        Ok(nodes) => IndexResponse::Holders {
                            file,
                            holders,
                            nodes,
                        },
                        Err(e) => store_failed(&e, metrics),
                    }
                }
                Ok(None) => not_found(&key),
                Err(e) => store_failed(&e, metrics),
            }
        }
        IndexRequest::Register { holder, files } => {
            let holder = match holder_as_seen(holder, from, config) {
                Ok(holder) => holder,
                Err(refusal) => return IndexResponse::Error(refusal),
            };
            if let Err(refusal) = check_files(&files, config) {
                log::info!("index: refused a registration of {holder} from {from}: {refusal}");
                return IndexResponse::Error(refusal);
            }
            let claimed = match claim_holder(bindings, &holder, caller, "register", metrics) {
                Ok(claimed) => claimed,
                Err(refusal) => return IndexResponse::Error(refusal),
            };
            let limits = config.registration_limits();
            match store.register_within(&holder, from.host(), &files, &limits) {
                Ok(added) => {
                    log::info!("{holder} registered {} files ({added} new)", files.len());
                    IndexResponse::Registered { added }
                }
                Err(e) => {
                    undo_claim(bindings, &holder, claimed);
                    change_failed(&e, &holder, from, metrics)
                }
            }
        }
        IndexRequest::RegisterPartial { holder, files } => {
            let holder = match holder_as_seen(holder, from, config) {
                Ok(holder) => holder,
                Err(refusal) => return IndexResponse::Error(refusal),
            };
            if let Err(refusal) = check_files(&files, config) {
                log::info!("index: refused a partial registration of {holder}: {refusal}");
                return IndexResponse::Error(refusal);
            }
            let claimed = match claim_holder(bindings, &holder, caller, "register", metrics) {
                Ok(claimed) => claimed,
                Err(refusal) => return IndexResponse::Error(refusal),
            };
            let limits = config.registration_limits();
            match store.register_partial_within(&holder, from.host(), &files, &limits) {
                Ok(added) => {
                    if added > 0 {
                        log::info!(
                            "{holder} is downloading {} files ({added} new)",
                            files.len()
                        );
                    }
                    IndexResponse::Registered { added }
                }
                Err(e) => {
                    undo_claim(bindings, &holder, claimed);
                    change_failed(&e, &holder, from, metrics)
                }
            }
        }
        IndexRequest::UnregisterPartial { holder, ids } => {
            if let Err(refusal) = own_holder(&holder, from, config, "unregister")
                .and_then(|()| check_holder(bindings, &holder, caller, "unregister", metrics))
            {
                return IndexResponse::Error(refusal);
            }
            if let Err(refusal) = check_id_count(&ids, config) {
                return IndexResponse::Error(refusal);
            }
            match store.unregister_partial(&holder, &ids) {
                Ok(removed) => {
                    log::info!("{holder} stopped {removed} downloads");
                    IndexResponse::Unregistered { removed }
                }
                Err(e) => store_failed(&e, metrics),
            }
        }
        IndexRequest::Sources { key } => {
            if let Err(e) = key.validate() {
                return refuse(ErrorCode::BadName, e.to_string());
            }
            match store.sources(&key) {
                Ok(Some(sources)) => {
                    log::debug!(
                        "index: {from} asked for the sources of {key}: {} complete, {} partial",
                        sources.complete.len(),
                        sources.partial.len()
                    );
                    let asked: Vec<&PeerAddr> =
                        sources.complete.iter().chain(&sources.partial).collect();
                    match bindings.nodes_of(&asked) {
                        Ok(nodes) => IndexResponse::Sources {
                            file: sources.file,
                            complete: sources.complete,
                            partial: sources.partial,
                            nodes,
                        },
                        Err(e) => store_failed(&e, metrics),
                    }
                }
                Ok(None) => not_found(&key),
                Err(e) => store_failed(&e, metrics),
            }
        }
        IndexRequest::Unregister { holder, ids } => {
            if let Err(refusal) = own_holder(&holder, from, config, "unregister")
                .and_then(|()| check_holder(bindings, &holder, caller, "unregister", metrics))
            {
                return IndexResponse::Error(refusal);
            }
            if let Err(refusal) = check_id_count(&ids, config) {
                return IndexResponse::Error(refusal);
            }
            match store.unregister(&holder, &ids) {
                Ok(removed) => {
                    let what = if ids.is_empty() {
                        "all its files".to_string()
                    } else {
                        format!("{} files", ids.len())
                    };
                    log::info!("{holder} unregistered {what} ({removed} removed)");
                    // Gone for good: the address is free for another key. (A connection
                    // without an id cannot free a bound holder; the binding lapses.)
                    if ids.is_empty()
                        && let Some(node) = caller.node
                        && let Err(e) = bindings.forget(&holder, node)
                    {
                        // It lapses with the holder's lease instead.
                        log::debug!("index: could not free the binding of {holder}: {e}");
                    }
                    IndexResponse::Unregistered { removed }
                }
                Err(e) => store_failed(&e, metrics),
            }
        }
        IndexRequest::Renew { holder } => match own_holder(&holder, from, config, "renew")
            .and_then(|()| claim_holder(bindings, &holder, caller, "renew", metrics))
            .and_then(|claimed| {
                let renewed = store.renew(&holder).map_err(|e| store_failure(&e, metrics));
                // An unknown holder binds nothing.
                if !matches!(renewed, Ok(Some(_))) {
                    undo_claim(bindings, &holder, claimed);
                }
                renewed
            }) {
            Ok(Some(files)) => {
                log::debug!("index: {holder} renewed its lease ({files} registrations)");
                IndexResponse::Renewed { files }
            }
            Ok(None) => {
                log::info!("{holder} renewed an unknown or lapsed lease; asked to register again");
                refuse(
                    ErrorCode::NotFound,
                    format!(
                        "{holder} is not registered (lease lapsed or index restarted); register again"
                    ),
                )
            }
            Err(refusal) => IndexResponse::Error(refusal),
        },
        IndexRequest::Lease => IndexResponse::Lease {
            lease_ms: u64::try_from(store.lease().as_millis()).unwrap_or(u64::MAX),
        },
        IndexRequest::Search { query, limit } => {
            if query.len() > config.max_query_len {
                log::info!(
                    "index: refused {from}'s search of {} bytes (limit {})",
                    query.len(),
                    config.max_query_len
                );
                return refuse(
                    ErrorCode::BadRequest,
                    format!(
                        "the search query is {} bytes; the limit is {} (a name is at most {})",
                        query.len(),
                        config.max_query_len,
                        shoal_proto::MAX_NAME_LEN
                    ),
                );
            }
            let limit = limit.min(config.search_limit);
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            match store.search(&query, limit) {
                Ok(mut hits) => {
                    add_search_nodes(&mut hits, store, bindings);
                    log::debug!("index: {from} searched {query:?}: {} hits", hits.len());
                    IndexResponse::SearchResults { hits }
                }
                Err(e) => store_failed(&e, metrics),
            }
        }
    }
}

/// The count limit of an unregistration.
fn check_id_count(ids: &[FileId], config: &IndexServerConfig) -> Result<(), ErrorReply> {
    if ids.len() > config.max_files_per_register {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            format!(
                "unregister lists {} files; the limit is {}",
                ids.len(),
                config.max_files_per_register
            ),
        ));
    }
    Ok(())
}

/// Checks a registration before it reaches the store: the count limit, then each file's
/// name and chunk layout (a peer could never serve a file that fails these).
fn check_files(files: &[FileMeta], config: &IndexServerConfig) -> Result<(), ErrorReply> {
    if files.len() > config.max_files_per_register {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            format!(
                "register lists {} files; the limit is {}",
                files.len(),
                config.max_files_per_register
            ),
        ));
    }
    for file in files {
        validate_name(&file.name)
            .map_err(|e| ErrorReply::new(ErrorCode::BadName, e.to_string()))?;
        validate_chunk_size(file.chunk_size)
            .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, format!("{}: {e}", file.name)))?;
        if chunk_count(file.size, file.chunk_size) > MAX_CHUNKS {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "{}: {} bytes in chunks of {} bytes is more than {MAX_CHUNKS} chunks",
                    file.name, file.size, file.chunk_size
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::FileId;

    fn meta(name: &str, chunk_size: u32, size: u64) -> FileMeta {
        FileMeta {
            name: name.into(),
            size,
            chunk_size,
            id: FileId([1; 32]),
        }
    }

    #[test]
    fn registrations_are_checked() {
        let config = IndexServerConfig {
            max_files_per_register: 2,
            ..IndexServerConfig::default()
        };
        assert!(check_files(&[meta("a", 1024, 5), meta("b", 1 << 20, 0)], &config).is_ok());
        let code = |files: &[FileMeta]| check_files(files, &config).unwrap_err().code;
        assert_eq!(code(&[meta("../a", 1024, 5)]), ErrorCode::BadName);
        assert_eq!(code(&[meta("a", 1000, 5)]), ErrorCode::BadRequest);
        assert_eq!(code(&[meta("a", 1024, u64::MAX)]), ErrorCode::BadRequest);
        assert_eq!(code(&vec![meta("a", 1024, 5); 3]), ErrorCode::BadRequest);
    }

    #[test]
    fn search_limit_is_capped() {
        let store = crate::MemoryStore::with_seed(1);
        let holder = PeerAddr::new("h:1").unwrap();
        let files: Vec<FileMeta> = (0..5).map(|i| meta(&format!("f{i}"), 1024, 1)).collect();
        store.register(&holder, &files).unwrap();
        let config = IndexServerConfig {
            search_limit: 3,
            ..IndexServerConfig::default()
        };
        let request = IndexRequest::Search {
            query: String::new(),
            limit: 100,
        };
        let caller = Caller {
            from: &holder,
            node: None,
        };
        let book = Mutex::new(NodeBook::new(Duration::from_secs(60), 100));
        match answer(
            request,
            &store,
            &config,
            &caller,
            &IndexMetrics::new(),
            &book,
        ) {
            IndexResponse::SearchResults { hits } => assert_eq!(hits.len(), 3),
            other => panic!("{other:?}"),
        }
    }
}
