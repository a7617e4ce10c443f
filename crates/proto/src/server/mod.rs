//! The accept loop shared by the index server and the peer server: each connection is served
//! by a thread of its own, from a pool of connection threads that outlive their connections,
//! bounded by a maximum number of live connections. A client over the limit gets a typed busy
//! answer in the handshake and the server goes on serving the others.
//!
//! Why threads: on the index benchmark this server matches a no-op server up to hundreds of
//! clients (see `docs/ARCHITECTURE.md`), idle threads cost no CPU and a small stack each, and
//! the logic stays plain blocking code over any [`Transport`]. Why a pool: starting and
//! tearing down a thread was about half the server's system calls per connection when every
//! lookup opens a new connection.
//!
//! How the pool works: idle connection threads all block in `accept` on the shared listener
//! (the kernel hands each new connection to one of them), so a connection goes from the
//! kernel to the thread that serves it with no hand-over. A thread that takes a connection
//! while no other is accepting starts one more, so someone always accepts. A thread that
//! finished its connection accepts again; one whose accept waited longer than
//! [`AcceptConfig::idle_timeout`] exits, as long as more than [`AcceptConfig::idle_threads`]
//! remain and another is accepting, so the memory of a burst goes back.
//!
//! Idle connections give way: every live connection is in a registry, and its handler says
//! when it is busy with a request and when it is idle again ([`LiveConnection`]). A client
//! that arrives at the limit takes the place of an idle connection instead of being
//! refused: of the source host with the most connections, the one idle the longest. That
//! connection is closed at once ([`crate::Connection::closer`]), or at its handler's next
//! read timeout where the transport cannot. Only when every connection is busy is the
//! client refused. So a client that opens idle connections up to the limit shuts nobody
//! out: the next client closes one of them, and a flood from one host closes its own.
//!
//! Each connection's session (timeouts, handshake, reading requests, idle time, bad frames)
//! is [`serve_session`]'s; a server supplies only a [`Handler`] that answers one request.

use std::any::Any;
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

mod session;
pub use session::{Handler, SessionConfig, SessionEnd, SessionStream, serve_session, write_frame};

use crate::codec::{Service, refuse_busy};
use crate::{Closer, Connection, Listener, PeerAddr, Transport};

/// How an accept loop runs.
#[derive(Clone, Debug)]
pub struct AcceptConfig {
    /// Which protocol the server speaks (for the busy answer).
    pub service: Service,
    /// Live connections allowed at once; the next one is refused as busy.
    pub max_connections: usize,
    /// Stack size of each connection thread.
    pub stack_size: usize,
    /// Thread name prefix, for debuggers and logs.
    pub name: &'static str,
    /// Idle connection threads kept however long they idle (at least one is kept).
    pub idle_threads: usize,
    /// How long a connection thread beyond `idle_threads` waits for a connection before it
    /// exits; zero keeps every thread. It is the listener's accept timeout, which on Linux
    /// TCP streams inherit as their read timeout until the handler sets its own.
    pub idle_timeout: Duration,
}

impl AcceptConfig {
    /// Defaults for `service`: 4,096 connections, 256 KiB stacks, 16 idle threads kept, the
    /// others exit after 10 s idle.
    pub fn new(service: Service, name: &'static str) -> Self {
        AcceptConfig {
            service,
            max_connections: 4096,
            stack_size: 256 << 10,
            name,
            idle_threads: 16,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// A running server. Dropping it (or calling [`ServerHandle::shutdown`]) stops accepting,
/// ends the idle connection threads and closes the listener; connections already open finish
/// on their own.
pub struct ServerHandle {
    addr: PeerAddr,
    stop: Arc<AtomicBool>,
    wake: Box<dyn Fn() + Send + Sync>,
    /// Our reference to the listener (type-erased); the threads accepting hold the others.
    listener: Option<Box<dyn Any + Send + Sync>>,
    /// Disconnects once the listener is dropped, i.e. nobody accepts any more.
    closed: Receiver<()>,
    accepting: Arc<AtomicUsize>,
    live: Arc<AtomicUsize>,
    threads: Arc<AtomicUsize>,
    registry: Arc<Registry>,
    /// Run once the accept loop has stopped, in order (e.g. stop a server's sweeper thread).
    on_stop: Vec<Box<dyn FnOnce() + Send + Sync>>,
}

impl ServerHandle {
    /// The address the server really listens on.
    pub fn addr(&self) -> &PeerAddr {
        &self.addr
    }

    /// Connections being served right now.
    pub fn live_connections(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Connection threads alive right now, serving or idle.
    pub fn connection_threads(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }

    /// Idle connections closed so far to make room for a new client at the limit.
    pub fn idle_connections_closed(&self) -> u64 {
        self.registry.taken.load(Ordering::Relaxed)
    }

    /// Counters of the accept loop that outlive a borrow of the handle (for metrics).
    pub fn counters(&self) -> AcceptCounters {
        AcceptCounters {
            registry: Arc::clone(&self.registry),
        }
    }

    /// Registers `hook` to run when the server stops (shutdown or drop), after the accept
    /// loop ended: how a server ties its background work to the handle's lifetime.
    pub fn on_stop(&mut self, hook: impl FnOnce() + Send + Sync + 'static) {
        self.on_stop.push(Box::new(hook));
    }

    /// Stops accepting and waits until the listener is closed.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    /// Blocks until the accept loop ends, which only [`ServerHandle::shutdown`] does: for a
    /// CLI server, until Ctrl-C exits the process.
    pub fn wait(self) {
        // Our own reference keeps the listener open, so this never disconnects.
        let _ = self.closed.recv();
    }

    fn stop_now(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        // Every thread counts itself as accepting before it checks the stop flag, so each
        // one blocked in accept now is counted here and gets a connection of its own that
        // wakes it to see the flag.
        for _ in 0..self.accepting.load(Ordering::SeqCst) {
            (self.wake)();
        }
        drop(self.listener.take());
        let _ = self.closed.recv();
        for hook in self.on_stop.drain(..) {
            hook();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Decrements a counter when dropped, however the owner ends (a handler may panic).
struct CountGuard(Option<Arc<AtomicUsize>>);

impl CountGuard {
    fn new(count: &Arc<AtomicUsize>) -> CountGuard {
        CountGuard(Some(Arc::clone(count)))
    }

    /// Lets go without decrementing: the caller already took itself off the count.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        if let Some(count) = &self.0 {
            count.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// The listener, shared by the threads accepting on it. Dropping it disconnects
/// [`ServerHandle::closed`].
struct Shared<L> {
    listener: L,
    _closed: Sender<()>,
}

/// A connection's state in the registry.
const IDLE: u8 = 0;
const BUSY: u8 = 1;
/// Closed to make room for another client, which took over its place in the count.
const TAKEN: u8 = 2;
/// Its handler returned.
const DONE: u8 = 3;

/// One live connection, as the registry sees it.
struct Slot {
    /// Registration order: breaks ties between connections idle since the same moment.
    id: u64,
    /// The source host (the address without its port): whose connection it is.
    host: String,
    state: AtomicU8,
    /// When it last became idle, in ms after the registry's epoch.
    idle_since: AtomicU64,
    closer: Mutex<Option<Closer>>,
}

/// The live connections of one server.
struct Registry {
    epoch: Instant,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    next_id: AtomicU64,
    /// Connections being served (shared with the handle).
    live: Arc<AtomicUsize>,
    /// Idle connections closed for a new client.
    taken: AtomicU64,
    /// Clients refused because every connection was busy.
    refused: AtomicU64,
}

impl Registry {
    fn new(live: Arc<AtomicUsize>) -> Registry {
        Registry {
            epoch: Instant::now(),
            slots: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            live,
            taken: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers an admitted connection (already counted in `live`), idle until its
    /// handler says otherwise.
    fn insert(self: &Arc<Self>, from: &PeerAddr, closer: Option<Closer>) -> LiveConnection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            id,
            host: from.host().to_string(),
            state: AtomicU8::new(IDLE),
            idle_since: AtomicU64::new(self.now_ms()),
            closer: Mutex::new(closer),
        });
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::clone(&slot));
        LiveConnection {
            id,
            slot,
            registry: Arc::clone(self),
        }
    }

    /// Closes the connection idle the longest of the host with the most connections (of
    /// those hosts that have an idle one), so a new client can take its place in the count.
    /// Returns its host and how long it had been idle; `None` when every connection is busy.
    fn take_idlest(&self) -> Option<(String, Duration)> {
        let victim = {
            let slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            // Per host: its connections, and its idlest idle one (idle since, id).
            type Idlest<'s> = Option<((u64, u64), &'s Arc<Slot>)>;
            let mut hosts: HashMap<&str, (usize, Idlest<'_>)> = HashMap::new();
            for slot in slots.values() {
                let entry = hosts.entry(slot.host.as_str()).or_insert((0, None));
                entry.0 += 1;
                if slot.state.load(Ordering::SeqCst) == IDLE {
                    let since = (slot.idle_since.load(Ordering::SeqCst), slot.id);
                    if entry.1.is_none_or(|(best, _)| since < best) {
                        entry.1 = Some((since, slot));
                    }
                }
            }
            let mut candidates: Vec<(usize, (u64, u64), Arc<Slot>)> = hosts
                .into_values()
                .filter_map(|(count, idle)| {
                    idle.map(|(since, slot)| (count, since, Arc::clone(slot)))
                })
                .collect();
            // The most connections first, then the idlest.
            candidates.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            candidates.into_iter().find(|(_, _, slot)| {
                slot.state
                    .compare_exchange(IDLE, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            })
        };
        let (_, (since, _), slot) = victim?;
        self.taken.fetch_add(1, Ordering::Relaxed);
        let closer = slot
            .closer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(close) = closer {
            close();
        }
        let idle = Duration::from_millis(self.now_ms().saturating_sub(since));
        Some((slot.host.clone(), idle))
    }
}

/// A live connection in the accept loop's registry, handed to the handler with its stream.
/// What an accept loop has refused and closed, readable while it runs
/// ([`ServerHandle::counters`]).
#[derive(Clone)]
pub struct AcceptCounters {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for AcceptCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcceptCounters")
            .field("refused_busy", &self.refused_busy())
            .field("idle_closed", &self.idle_closed())
            .finish()
    }
}

impl AcceptCounters {
    /// Clients refused at the connection limit because every connection was busy.
    pub fn refused_busy(&self) -> u64 {
        self.registry.refused.load(Ordering::Relaxed)
    }

    /// Idle connections closed to make room for a new client at the limit.
    pub fn idle_closed(&self) -> u64 {
        self.registry.taken.load(Ordering::Relaxed)
    }
}

/// The handler calls [`LiveConnection::busy`] when a request arrives and
/// [`LiveConnection::idle`] once it is answered; at the connection limit the accept loop
/// closes an idle connection for a new client (see the module docs), and the handler of a
/// closed one should end as soon as it notices ([`LiveConnection::is_taken`]).
pub struct LiveConnection {
    id: u64,
    slot: Arc<Slot>,
    registry: Arc<Registry>,
}

impl LiveConnection {
    /// The connection is busy with a request: it is not closed for others until it is
    /// idle again. False if it was already taken for another client: end it now.
    pub fn busy(&self) -> bool {
        self.slot
            .state
            .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst)
            .map_or_else(|state| state == BUSY, |_| true)
    }

    /// The request is answered; the connection waits for the next one and may be closed
    /// for a new client, the longest idle first.
    pub fn idle(&self) {
        self.slot
            .idle_since
            .store(self.registry.now_ms(), Ordering::SeqCst);
        let _ = self
            .slot
            .state
            .compare_exchange(BUSY, IDLE, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The connection was closed to make room for another client.
    pub fn is_taken(&self) -> bool {
        self.slot.state.load(Ordering::SeqCst) == TAKEN
    }
}

impl Drop for LiveConnection {
    fn drop(&mut self) {
        self.registry
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
        // A taken connection's place in the count went to the client that took it.
        if self.slot.state.swap(DONE, Ordering::SeqCst) != TAKEN {
            self.registry.live.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// What every connection thread of one server shares.
struct Pool<S, H> {
    handler: H,
    config: AcceptConfig,
    stop: Arc<AtomicBool>,
    /// Threads in (or about to enter) `accept`.
    accepting: Arc<AtomicUsize>,
    /// Connections being served.
    live: Arc<AtomicUsize>,
    /// Connection threads alive.
    threads: Arc<AtomicUsize>,
    /// The connections being served, for the ones that give way at the limit.
    registry: Arc<Registry>,
    refuser: Option<Sender<S>>,
}

/// Runs `handler` for each accepted connection on a connection thread of its own, in the
/// background. `handler` gets the stream, the client's address and the connection's place
/// in the registry (to say when it is busy and idle); it does the handshake itself so a
/// slow client never blocks the others.
pub fn spawn_accept_loop<T, H>(
    transport: &T,
    listener: T::Listener,
    config: AcceptConfig,
    handler: H,
) -> io::Result<ServerHandle>
where
    T: Transport,
    H: Fn(T::Stream, PeerAddr, &LiveConnection) + Send + Sync + 'static,
{
    let addr = listener.local_addr()?;
    let timeout = (!config.idle_timeout.is_zero()).then_some(config.idle_timeout);
    if let Err(e) = listener.set_accept_timeout(timeout) {
        // Idle threads then stay until the server stops: more memory, same behaviour.
        log::debug!("{}: idle threads will not exit: {e}", config.name);
    }
    let (closed_tx, closed) = bounded::<()>(0);
    let shared = Arc::new(Shared {
        listener,
        _closed: closed_tx,
    });
    let live = Arc::new(AtomicUsize::new(0));
    let pool = Arc::new(Pool {
        refuser: spawn_refuser::<T::Stream>(&config),
        handler,
        config,
        stop: Arc::new(AtomicBool::new(false)),
        accepting: Arc::new(AtomicUsize::new(0)),
        registry: Arc::new(Registry::new(Arc::clone(&live))),
        live,
        threads: Arc::new(AtomicUsize::new(0)),
    });
    start_thread(&pool, Arc::downgrade(&shared))?;
    let wake = {
        let transport = transport.clone();
        let addr = addr.clone();
        Box::new(move || transport.wake(&addr))
    };
    Ok(ServerHandle {
        addr,
        stop: Arc::clone(&pool.stop),
        wake,
        listener: Some(Box::new(shared)),
        closed,
        accepting: Arc::clone(&pool.accepting),
        live: Arc::clone(&pool.live),
        threads: Arc::clone(&pool.threads),
        registry: Arc::clone(&pool.registry),
        on_stop: Vec::new(),
    })
}

/// Starts one more connection thread unless `max_connections + 1` run already (one more
/// than can be serving, so that one is left to accept and refuse).
fn start_thread<L, H>(pool: &Arc<Pool<L::Stream, H>>, listener: Weak<Shared<L>>) -> io::Result<()>
where
    L: Listener,
    H: Fn(L::Stream, PeerAddr, &LiveConnection) + Send + Sync + 'static,
{
    let cap = pool.config.max_connections.saturating_add(1);
    let reserved = pool
        .threads
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < cap).then_some(n + 1)
        });
    if reserved.is_err() {
        return Ok(());
    }
    let counted = CountGuard::new(&pool.threads);
    let thread_pool = Arc::clone(pool);
    // On failure the closure is dropped, and with it the count.
    thread::Builder::new()
        .name(format!("{}-conn", pool.config.name))
        .stack_size(pool.config.stack_size)
        .spawn(move || connection_thread(&thread_pool, &listener, counted))
        .map(drop)
}

/// Accepts and serves connections, one at a time, until the server stops or the thread is
/// idle too long. It holds the listener only while accepting, so a shutdown closes it even
/// while connections are still being served.
fn connection_thread<L, H>(
    pool: &Arc<Pool<L::Stream, H>>,
    listener: &Weak<Shared<L>>,
    counted: CountGuard,
) where
    L: Listener,
    H: Fn(L::Stream, PeerAddr, &LiveConnection) + Send + Sync + 'static,
{
    let config = &pool.config;
    loop {
        let Some(shared) = listener.upgrade() else {
            return;
        };
        pool.accepting.fetch_add(1, Ordering::SeqCst);
        if pool.stop.load(Ordering::SeqCst) {
            pool.accepting.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let accepted = shared.listener.accept();
        let others_accepting = pool.accepting.fetch_sub(1, Ordering::SeqCst) - 1;
        if pool.stop.load(Ordering::SeqCst) {
            // The wake-up connection, or a client that came as we stopped.
            return;
        }
        let (stream, from) = match accepted {
            Ok(accepted) => accepted,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                // Idle for a whole timeout: leave if enough threads remain and another one
                // is accepting. The compare-and-swap keeps threads timing out together from
                // all leaving at the floor.
                let floor = config.idle_threads.max(1);
                if others_accepting > 0
                    && pool
                        .threads
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                            (n > floor).then(|| n - 1)
                        })
                        .is_ok()
                {
                    counted.disarm();
                    return;
                }
                continue;
            }
            Err(e) => {
                log::warn!("{}: accept failed: {e}", config.name);
                // Out of file descriptors and similar: back off instead of spinning.
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        let admitted = pool
            .live
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < config.max_connections).then(|| n + 1)
            })
            .is_ok();
        // At the limit, an idle connection gives way; the new one takes over its count.
        if !admitted {
            if let Some((host, idle)) = pool.registry.take_idlest() {
                log::info!(
                    "{}: {} connections open; closed one from {host}, idle for {} ms, for {from}",
                    config.name,
                    config.max_connections,
                    idle.as_millis()
                );
            } else {
                pool.registry.refused.fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "{}: refused {from}: {} connections already open, all busy",
                    config.name,
                    config.max_connections
                );
                // Full refuser queue: drop the connection outright rather than wait.
                if let Some(refuser) = &pool.refuser {
                    let _ = refuser.try_send(stream);
                }
                continue;
            }
        }
        let live = pool.registry.insert(&from, stream.closer());
        if others_accepting == 0 {
            // We were the last one accepting: start another before serving.
            if let Err(e) = start_thread(pool, Weak::clone(listener)) {
                log::warn!("{}: cannot start a connection thread: {e}", config.name);
            }
        }
        drop(shared);
        (pool.handler)(stream, from, &live);
        drop(live);
    }
}

/// How long the refuser waits for a refused client's hello.
const REFUSE_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// One thread that answers over-limit clients with the busy status. It reads their hello
/// first (and whatever arrived with it, such as a first request sent in the same write):
/// closing a TCP socket with unread input resets the connection, and on some systems the
/// reset destroys the busy answer before the client reads it. One thread and a short queue
/// keep the cost of a flood of refused clients bounded.
fn spawn_refuser<S: Connection>(config: &AcceptConfig) -> Option<Sender<S>> {
    let (tx, rx) = bounded::<S>(64);
    let service = config.service;
    let spawned = thread::Builder::new()
        .name(format!("{}-refuse", config.name))
        .stack_size(64 << 10)
        .spawn(move || {
            for mut stream in rx {
                let _ = stream.set_read_timeout(Some(REFUSE_READ_TIMEOUT));
                read_hello_and_more(&mut stream);
                let _ = refuse_busy(&mut stream, service);
            }
        });
    match spawned {
        Ok(_) => Some(tx),
        Err(e) => {
            log::warn!("{}: cannot start the refuser thread: {e}", config.name);
            None
        }
    }
}

/// Reads until at least the 8-byte hello is in, taking whatever else is already there in
/// the same reads (never waiting for more than the hello); gives up on an error, the end of
/// the stream or after [`REFUSE_READ_TIMEOUT`] in all.
fn read_hello_and_more<S: Connection>(stream: &mut S) {
    let deadline = Instant::now() + REFUSE_READ_TIMEOUT;
    let mut buf = [0u8; 1024];
    let mut got = 0;
    while got < 8 {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
        if Instant::now() >= deadline {
            return;
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProtoError;
    use crate::codec::{client_handshake, server_handshake};
    use crate::mem::MemNetwork;
    use std::collections::HashSet;
    use std::io::{Read, Write};
    use std::sync::Mutex;

    #[test]
    fn refuses_over_the_limit_and_keeps_serving() {
        let net = MemNetwork::new();
        let t = net.host("srv");
        let listener = t.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
        let mut config = AcceptConfig::new(Service::Index, "test");
        config.max_connections = 1;
        let (release_tx, release_rx) = bounded::<()>(0);
        // The held connection is busy from before its handshake ends (an idle one would
        // give way to the next client; see below).
        let handle = spawn_accept_loop(&t, listener, config, move |mut s, _, live| {
            if live.busy() && server_handshake(&mut s, Service::Index).is_ok() {
                let _ = release_rx.recv();
            }
        })
        .unwrap();
        let client = net.host("c");
        let mut first = client.connect(handle.addr()).unwrap();
        client_handshake(&mut first, Service::Index).unwrap();
        let mut second = client.connect(handle.addr()).unwrap();
        assert!(matches!(
            client_handshake(&mut second, Service::Index),
            Err(ProtoError::Busy)
        ));
        drop(second);
        release_tx.send(()).unwrap();
        drop(first);
        // Once the first connection is gone a new one is served again (bounded retry).
        let mut served = false;
        for _ in 0..10_000 {
            let mut again = client.connect(handle.addr()).unwrap();
            again
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            if client_handshake(&mut again, Service::Index).is_ok() {
                served = true;
                break;
            }
            thread::yield_now();
        }
        assert!(served);
        handle.shutdown();
    }

    /// Handshakes, then echoes bytes one at a time (busy while echoing, idle in between)
    /// until the client leaves or the connection is taken for another client.
    fn echo_while_open<S: Connection>(mut s: S, live: &LiveConnection) {
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        if server_handshake(&mut s, Service::Index).is_err() {
            return;
        }
        let mut b = [0u8; 1];
        loop {
            match s.read(&mut b) {
                Ok(0) => return,
                Ok(_) => {
                    if !live.busy() || s.write_all(&b).is_err() {
                        return;
                    }
                    live.idle();
                }
                Err(_) if live.is_taken() => return,
                Err(_) => {}
            }
        }
    }

    fn exchange(s: &mut crate::mem::MemStream, byte: u8) -> io::Result<()> {
        s.write_all(&[byte])?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        assert_eq!(b, [byte]);
        Ok(())
    }

    #[test]
    fn idle_connections_give_way_to_a_new_client_at_the_limit() {
        let net = MemNetwork::new();
        let t = net.host("srv");
        let listener = t.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
        let mut config = AcceptConfig::new(Service::Index, "test");
        config.max_connections = 4;
        let handle = spawn_accept_loop(&t, listener, config, |s, _, live| {
            echo_while_open(s, live);
        })
        .unwrap();
        let connect = |host: &str| {
            let mut s = net.host(host).connect(handle.addr()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let shook = client_handshake(&mut s, Service::Index);
            (s, shook)
        };
        // An honest client, then idle: the connection idle the longest from here on.
        let (mut honest, shook) = connect("honest");
        shook.unwrap();
        exchange(&mut honest, 1).unwrap();
        // One host opens far more idle connections than the limit.
        let flood: Vec<_> = (0..10).map(|_| connect("flood")).collect();
        // The honest connection stayed: the flood's own idle connections made the room.
        exchange(&mut honest, 2).unwrap();
        // A new client gets through.
        let (mut newcomer, shook) = connect("newcomer");
        shook.unwrap();
        exchange(&mut newcomer, 3).unwrap();
        // Every connection past the limit closed exactly one idle connection, and the count
        // never went over the limit.
        assert_eq!(handle.idle_connections_closed(), 8);
        assert_eq!(handle.live_connections(), 4);
        // The flood's eight oldest were closed (their reads end), its newest two remain.
        let mut ended = 0;
        for (mut s, _) in flood {
            let mut b = [0u8; 1];
            if matches!(s.read(&mut b), Ok(0)) {
                ended += 1;
            }
            drop(s);
            if ended == 8 {
                break;
            }
        }
        assert_eq!(ended, 8);
        handle.shutdown();
    }

    /// Handshakes, then echoes one byte: the client knows its connection was served.
    fn echo_once<S: Connection>(mut s: S) {
        if server_handshake(&mut s, Service::Index).is_ok() {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    }

    fn one_exchange(client: &crate::mem::MemTransport, addr: &PeerAddr) {
        let mut s = client.connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client_handshake(&mut s, Service::Index).unwrap();
        s.write_all(&[7]).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b, [7]);
    }

    #[test]
    fn sequential_connections_reuse_threads_and_shutdown_ends_idle_ones() {
        let net = MemNetwork::new();
        let t = net.host("srv");
        let listener = t.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let handle = {
            let seen = Arc::clone(&seen);
            spawn_accept_loop(
                &t,
                listener,
                AcceptConfig::new(Service::Index, "test"),
                move |s, _, _| {
                    seen.lock().unwrap().insert(thread::current().id());
                    echo_once(s);
                },
            )
            .unwrap()
        };
        let client = net.host("c");
        for _ in 0..200 {
            one_exchange(&client, handle.addr());
            // A thread waits for the next connection only after its handler returned; give
            // it the moment to get there, or the next connection starts a thread of its own.
            while handle.live_connections() > 0 {
                thread::yield_now();
            }
            thread::sleep(Duration::from_millis(1));
        }
        let distinct = seen.lock().unwrap().len();
        assert!(
            distinct <= 8,
            "{distinct} threads for 200 sequential connections"
        );
        assert!(handle.connection_threads() >= 1);
        let threads = Arc::clone(&handle.threads);
        handle.shutdown();
        // Idle threads see the closed handoff channel and exit (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(10);
        while threads.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(threads.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn shutdown_closes_the_listener_while_a_connection_is_served() {
        let tcp = crate::tcp::TcpTransport::default();
        let net = MemNetwork::new();
        let mem = net.host("srv");
        let (release_tx, release_rx) = bounded::<()>(0);
        let hold = move |mut s: crate::mem::MemStream, _, _: &LiveConnection| {
            if server_handshake(&mut s, Service::Index).is_ok() {
                let _ = release_rx.recv();
            }
        };
        let listener = mem.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
        let handle =
            spawn_accept_loop(&mem, listener, AcceptConfig::new(Service::Index, "t"), hold)
                .unwrap();
        let addr = handle.addr().clone();
        let mut held = net.host("c").connect(&addr).unwrap();
        client_handshake(&mut held, Service::Index).unwrap();
        handle.shutdown();
        // The address is free at once, though its connection is still being served.
        let again = mem.bind(&addr).unwrap();
        drop(again);
        release_tx.send(()).unwrap();

        // The same over TCP: the port can be bound again.
        let (release_tx, release_rx) = bounded::<()>(0);
        let listener = tcp.bind(&PeerAddr::new("127.0.0.1:0").unwrap()).unwrap();
        let handle = spawn_accept_loop(
            &tcp,
            listener,
            AcceptConfig::new(Service::Index, "t"),
            move |mut s, _, _| {
                if server_handshake(&mut s, Service::Index).is_ok() {
                    let _ = release_rx.recv();
                }
            },
        )
        .unwrap();
        let addr = handle.addr().clone();
        let mut held = tcp.connect(&addr).unwrap();
        client_handshake(&mut held, Service::Index).unwrap();
        handle.shutdown();
        drop(tcp.bind(&addr).unwrap());
        release_tx.send(()).unwrap();
    }

    #[test]
    fn threads_beyond_the_floor_exit_when_idle() {
        let net = MemNetwork::new();
        let t = net.host("srv");
        let listener = t.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
        let mut config = AcceptConfig::new(Service::Index, "test");
        config.idle_threads = 2;
        config.idle_timeout = Duration::from_millis(50);
        let (release_tx, release_rx) = bounded::<()>(0);
        let handle = spawn_accept_loop(&t, listener, config, move |mut s, _, _| {
            if server_handshake(&mut s, Service::Index).is_ok() {
                let _ = release_rx.recv();
            }
        })
        .unwrap();
        let client = net.host("c");
        // Eight connections held open at once need eight threads, plus one accepting.
        let mut open = Vec::new();
        for _ in 0..8 {
            let mut s = client.connect(handle.addr()).unwrap();
            client_handshake(&mut s, Service::Index).unwrap();
            open.push(s);
        }
        assert_eq!(handle.connection_threads(), 9);
        assert_eq!(handle.live_connections(), 8);
        for _ in 0..8 {
            release_tx.send(()).unwrap();
        }
        drop(open);
        let deadline = Instant::now() + Duration::from_secs(10);
        while handle.connection_threads() > 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(handle.connection_threads(), 2);
        assert_eq!(handle.live_connections(), 0);
        // The kept threads time out again and again, and stay.
        thread::sleep(Duration::from_millis(300));
        assert_eq!(handle.connection_threads(), 2);
        // They still serve (the one serving may start another if it caught the other
        // between two timeouts).
        let mut s = client.connect(handle.addr()).unwrap();
        client_handshake(&mut s, Service::Index).unwrap();
        assert!(handle.connection_threads() <= 3);
        release_tx.send(()).unwrap();
        handle.shutdown();
    }
}
