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

use std::any::Any;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::codec::{Service, refuse_busy};
use crate::{Connection, Listener, PeerAddr, Transport};

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
    refuser: Option<Sender<S>>,
}

/// Runs `handler` for each accepted connection on a connection thread of its own, in the
/// background. `handler` gets the stream and the client's address; it does the handshake
/// itself so a slow client never blocks the others.
pub fn spawn_accept_loop<T, H>(
    transport: &T,
    listener: T::Listener,
    config: AcceptConfig,
    handler: H,
) -> io::Result<ServerHandle>
where
    T: Transport,
    H: Fn(T::Stream, PeerAddr) + Send + Sync + 'static,
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
    let pool = Arc::new(Pool {
        refuser: spawn_refuser::<T::Stream>(&config),
        handler,
        config,
        stop: Arc::new(AtomicBool::new(false)),
        accepting: Arc::new(AtomicUsize::new(0)),
        live: Arc::new(AtomicUsize::new(0)),
        threads: Arc::new(AtomicUsize::new(0)),
    });
    start_thread(&pool, Arc::downgrade(&shared))?;
    let wake = {
        let transport = transport.clone();
        let addr = addr.clone();
        Box::new(move || {
            let _ = transport.connect(&addr);
        })
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
        on_stop: Vec::new(),
    })
}

/// Starts one more connection thread unless `max_connections + 1` run already (one more
/// than can be serving, so that one is left to accept and refuse).
fn start_thread<L, H>(pool: &Arc<Pool<L::Stream, H>>, listener: Weak<Shared<L>>) -> io::Result<()>
where
    L: Listener,
    H: Fn(L::Stream, PeerAddr) + Send + Sync + 'static,
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
    H: Fn(L::Stream, PeerAddr) + Send + Sync + 'static,
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
            });
        if admitted.is_err() {
            log::warn!(
                "{}: refused {from}: {} connections already open",
                config.name,
                config.max_connections
            );
            // Full refuser queue: drop the connection outright rather than wait.
            if let Some(refuser) = &pool.refuser {
                let _ = refuser.try_send(stream);
            }
            continue;
        }
        let live = CountGuard::new(&pool.live);
        if others_accepting == 0 {
            // We were the last one accepting: start another before serving.
            if let Err(e) = start_thread(pool, Weak::clone(listener)) {
                log::warn!("{}: cannot start a connection thread: {e}", config.name);
            }
        }
        drop(shared);
        (pool.handler)(stream, from);
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
        let handle = spawn_accept_loop(&t, listener, config, move |mut s, _| {
            if server_handshake(&mut s, Service::Index).is_ok() {
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
                move |s, _| {
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
        let hold = move |mut s: crate::mem::MemStream, _| {
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
            move |mut s, _| {
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
        let handle = spawn_accept_loop(&t, listener, config, move |mut s, _| {
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
