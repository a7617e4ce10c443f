//! The accept loop shared by the index server and the peer server: one thread per
//! connection with a small stack, bounded by a maximum number of live connections. A client
//! over the limit gets a typed busy answer in the handshake and the server goes on serving
//! the others.
//!
//! Why threads: on the index benchmark a thread-per-connection server matches a no-op server
//! up to hundreds of clients (see `docs/ARCHITECTURE.md`), idle threads cost no CPU and a small
//! stack each, and the logic stays plain blocking code over any [`Transport`].

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::codec::{Service, refuse_busy};

use crossbeam_channel::{Sender, bounded};

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
}

impl AcceptConfig {
    /// Defaults for `service`: 4,096 connections, 256 KiB stacks.
    pub fn new(service: Service, name: &'static str) -> Self {
        AcceptConfig {
            service,
            max_connections: 4096,
            stack_size: 256 << 10,
            name,
        }
    }
}

/// A running server. Dropping it (or calling [`ServerHandle::shutdown`]) stops accepting;
/// connections already open finish on their own.
pub struct ServerHandle {
    addr: PeerAddr,
    stop: Arc<AtomicBool>,
    wake: Box<dyn Fn() + Send + Sync>,
    thread: Option<JoinHandle<()>>,
    live: Arc<AtomicUsize>,
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

    /// Stops accepting and waits for the accept loop to end.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    /// Blocks until the accept loop ends (it ends only through [`ServerHandle::shutdown`] from
    /// another handle clone of the stop flag, i.e. never for a CLI server until Ctrl-C exits
    /// the process).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop_now(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        (self.wake)();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Decrements the live-connection count when a connection thread ends, however it ends.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs `handler` for each accepted connection on its own thread, in a background accept
/// loop. `handler` gets the stream and the client's address; it does the handshake itself so
/// a slow client never blocks the accept loop.
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
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let thread = {
        let stop = Arc::clone(&stop);
        let live = Arc::clone(&live);
        thread::Builder::new()
            .name(format!("{}-accept", config.name))
            .spawn(move || accept_loop(listener, config, handler, stop, live))?
    };
    let wake = {
        let transport = transport.clone();
        let addr = addr.clone();
        // Accept blocks; a connection to ourselves wakes it so it can see the stop flag.
        Box::new(move || {
            let _ = transport.connect(&addr);
        })
    };
    Ok(ServerHandle {
        addr,
        stop,
        wake,
        thread: Some(thread),
        live,
    })
}

fn accept_loop<L, H>(
    listener: L,
    config: AcceptConfig,
    handler: Arc<H>,
    stop: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
) where
    L: Listener,
    H: Fn(L::Stream, PeerAddr) + Send + Sync + 'static,
{
    let refuser = spawn_refuser::<L::Stream>(&config);
    while !stop.load(Ordering::SeqCst) {
        let (stream, from) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                log::warn!("{}: accept failed: {e}", config.name);
                // Out of file descriptors and similar: back off instead of spinning.
                thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if live.load(Ordering::SeqCst) >= config.max_connections {
            log::warn!(
                "{}: refused {from}: {} connections already open",
                config.name,
                config.max_connections
            );
            // Full refuser queue: drop the connection outright rather than wait.
            if let Some(refuser) = &refuser {
                let _ = refuser.try_send(stream);
            }
            continue;
        }
        live.fetch_add(1, Ordering::SeqCst);
        let guard = LiveGuard(Arc::clone(&live));
        let handler = Arc::clone(&handler);
        let spawned = thread::Builder::new()
            .name(format!("{}-conn", config.name))
            .stack_size(config.stack_size)
            .spawn(move || {
                let _guard = guard;
                handler(stream, from);
            });
        if let Err(e) = spawned {
            log::warn!("{}: cannot start a connection thread: {e}", config.name);
        }
    }
}

/// How long the refuser waits for a refused client's hello.
const REFUSE_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// One thread that answers over-limit clients with the busy status. It reads their hello
/// first: closing a TCP socket with unread input resets the connection, and the reset can
/// destroy the busy answer before the client reads it. One thread and a short queue keep the
/// cost of a flood of refused clients bounded.
fn spawn_refuser<S: Connection>(config: &AcceptConfig) -> Option<Sender<S>> {
    let (tx, rx) = bounded::<S>(64);
    let service = config.service;
    let spawned = thread::Builder::new()
        .name(format!("{}-refuse", config.name))
        .stack_size(64 << 10)
        .spawn(move || {
            for mut stream in rx {
                let _ = stream.set_read_timeout(Some(REFUSE_READ_TIMEOUT));
                let mut hello = [0u8; 8];
                let _ = stream.read_exact(&mut hello);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProtoError;
    use crate::codec::{client_handshake, server_handshake};
    use crate::mem::MemNetwork;

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
}
