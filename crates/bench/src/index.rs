//! `shoal bench index`: the original study's measurement of the index.
//!
//! Each client makes N sequential lookups, for 1..256 concurrent clients, once over persistent
//! connections and once with a new connection per lookup (the seed's way). The same client
//! threads, in the same run and alternating cell by cell, also drive two references, so only
//! the server differs:
//! - **no-op**: shoal's own accept loop (pooled connection threads) doing the real handshake and
//!   then answering every frame at once with a pre-encoded `Located` answer of the real size:
//!   the ceiling for this machine and this load generator.
//! - **redis**: a `redis-server` child answering `SRANDMEMBER bench.bin`, the anchor the
//!   project compares against.
//! - **shoal-tls**: the same index over TLS 1.3 (shoal's default transport; the others are
//!   plaintext): clients hold a TLS session on persistent connections and make a full
//!   mutually authenticated handshake per lookup in the other mode, so that mode's lookups/s
//!   are its handshakes/s.
//!
//! Clients use raw sockets and the bare codec (not `IndexClient`), so the client-side cost is
//! minimal and identical in shape for every contender. A new shoal connection sends its hello
//! and its lookup in one write, as `IndexClient` does: one round trip, like Redis's.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use shoal_index::{IndexClient, IndexServer, IndexServerConfig, MemoryStore};
use shoal_proto::codec::{self, Service};
use shoal_proto::content::DEFAULT_CHUNK_SIZE;
use shoal_proto::message::{IndexRequest, IndexResponse};
use shoal_proto::server::{AcceptConfig, ServerHandle, spawn_accept_loop};
use shoal_proto::tcp::TcpTransport;
use shoal_proto::tls::{Identity, TlsConfig, TlsTransport};
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr, Transport};

use crate::error::{BenchError, contender_err, io_err, proto_err, spawn_err};
use crate::plot::{self, Chart, Series};
use crate::stats::{self, Spread};

/// The file every lookup asks for.
const BENCH_FILE: &str = "bench.bin";
/// Files registered besides it, so the registry is not trivially tiny.
const OTHER_FILES: u32 = 1000;
/// Holders the files are spread over; the first three hold `bench.bin`.
const HOLDERS: u16 = 10;
/// Each client does at least this many lookups, so a percentile means something.
const MIN_PER_CLIENT: usize = 50;
/// Stack of a client thread: it only formats a request and parses a short answer.
const CLIENT_STACK: usize = 256 << 10;

/// How clients connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// One connection per client, all its lookups over it.
    Persistent,
    /// Connect, (handshake with the lookup in the same write,) one lookup, close: the seed's
    /// way.
    PerConnection,
}

impl Mode {
    fn table(self) -> &'static str {
        match self {
            Mode::Persistent => "index-lookup-persistent",
            Mode::PerConnection => "index-lookup-per-connection",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Mode::Persistent => "persistent connections",
            Mode::PerConnection => "a new connection per lookup",
        }
    }
}

/// Arguments of `shoal bench index`.
#[derive(clap::Args, Debug, Clone)]
pub struct IndexBenchArgs {
    /// Client counts to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4, 8, 16, 64, 256])]
    pub(crate) clients: Vec<usize>,
    /// Lookups per cell, split over the clients (each client does at least 50).
    #[arg(long, default_value_t = 20_000)]
    pub(crate) lookups: usize,
    /// Repetitions per cell; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub(crate) reps: usize,
    /// Connection modes to measure.
    #[arg(long, alias = "mode", value_enum, value_delimiter = ',',
          default_values_t = [Mode::Persistent, Mode::PerConnection])]
    modes: Vec<Mode>,
    /// Also draw response time (and lookups/s) against clients into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Append raw rows (`table<TAB>row<TAB>column<TAB>value`, one per run) to this file, for
    /// scripts that compare runs across machines or commits.
    #[arg(long, value_name = "FILE")]
    tsv: Option<PathBuf>,
    /// The redis-server program to compare against.
    #[arg(long, value_name = "PATH", default_value = "redis-server")]
    pub(crate) redis_server: PathBuf,
    /// Do not start Redis; measure shoal and the no-op server only.
    #[arg(long)]
    no_redis: bool,
    /// Measure only these contenders (e.g. `--only shoal` while profiling).
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [Which::Shoal, Which::NoOp, Which::Redis, Which::ShoalTls])]
    only: Vec<Which>,
    /// `redis`: measure the registry on Redis instead (issue 11): lookups/s and
    /// registrations/s of the in-memory index, one and two indexes on one Redis, and raw
    /// Redis; CPU per lookup; Redis memory per registration; a 10,000-file heartbeat.
    #[arg(long, value_enum, default_value = "memory")]
    pub(crate) store: StoreKind,
    /// With `--data DIR`: also registrations/s with durability on and off, and recovery
    /// time and memory of an index of a million registrations.
    #[command(flatten)]
    pub(crate) durable: crate::durable::DurableBenchArgs,
}

/// Which registry `shoal bench index` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StoreKind {
    /// The in-memory index against Redis and the no-op server.
    Memory,
    /// The index on a shared Redis (`shared.rs`).
    Redis,
}

/// The servers the benchmark can measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Which {
    /// shoal's index server.
    Shoal,
    /// The no-op server: the ceiling.
    NoOp,
    /// redis-server, SRANDMEMBER.
    Redis,
    /// shoal's index server over TLS.
    ShoalTls,
}

/// Runs the benchmark and prints its tables.
pub(crate) fn run(args: &IndexBenchArgs) -> Result<(), BenchError> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        return Err(BenchError::Usage(
            "--clients needs positive client counts".into(),
        ));
    }
    if args.lookups == 0 || args.reps == 0 || args.modes.is_empty() {
        return Err(BenchError::Usage(
            "--lookups, --reps and --modes must not be zero or empty".into(),
        ));
    }
    if cfg!(debug_assertions) {
        eprintln!("note: this is a debug build; numbers mean little (use cargo run --release)");
    }
    if args.store == StoreKind::Redis {
        return crate::shared::run(args);
    }
    let started = Instant::now();
    let data = BenchData::new()?;

    // Contenders are kept alive (and killed) by these guards until the end of `run`.
    let wanted = |w: Which| args.only.contains(&w);
    let noop_reply = data.located_frame()?;
    let request = data.locate_frame()?;
    let mut contenders = Vec::new();
    let shoal = match wanted(Which::Shoal) {
        true => Some(start_shoal(TcpTransport::default(), &data)?),
        false => None,
    };
    if let Some(h) = &shoal {
        contenders.push(Contender::new(
            "shoal",
            Wire::Shoal,
            h.addr(),
            request.clone(),
        )?);
    }
    let noop = match wanted(Which::NoOp) {
        true => Some(start_noop(noop_reply.clone())?),
        false => None,
    };
    if let Some(h) = &noop {
        contenders.push(Contender::new("no-op", Wire::Shoal, h.addr(), request)?);
    }
    let redis = if args.no_redis || !wanted(Which::Redis) {
        None
    } else {
        start_redis(&args.redis_server, &data)?
    };
    if let Some(redis) = &redis {
        contenders.push(Contender {
            name: "redis",
            wire: Wire::Redis,
            addr: redis.addr,
            others: Vec::new(),
            request: redis_command(&["SRANDMEMBER", BENCH_FILE]),
            tls: None,
        });
    }
    // The TLS index and its clients: two nodes, each its own key.
    let tls = || -> Result<TlsTransport<TcpTransport>, BenchError> {
        Ok(TlsTransport::new(
            TcpTransport::default(),
            TlsConfig::new(Identity::generate()?),
        )?)
    };
    let shoal_tls = match wanted(Which::ShoalTls) {
        true => Some(start_shoal(tls()?, &data)?),
        false => None,
    };
    if let Some(h) = &shoal_tls {
        let mut c = Contender::new("shoal-tls", Wire::Shoal, h.addr(), data.locate_frame()?)?;
        c.tls = Some(tls()?);
        contenders.push(c);
    }
    if contenders.is_empty() {
        return Err(BenchError::Usage(
            "nothing to measure: --only names no contender that can run".into(),
        ));
    }
    // One checked lookup each before anything is timed: a contender that cannot answer is a
    // setup failure, not thousands of counted errors.
    for c in &contenders {
        c.probe(&noop_reply)?;
    }

    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let heading = format!(
        "{cores} cores, median of {} reps, {} lookups per cell split over the clients (at least \
         {MIN_PER_CLIENT} each); contenders alternate within each rep",
        args.reps, args.lookups
    );
    println!("shoal bench index: {heading}");
    match &redis {
        Some(r) => println!(
            "redis: {} ({}), own instance on {}, SRANDMEMBER {BENCH_FILE}",
            r.version,
            args.redis_server.display(),
            r.addr
        ),
        None if args.no_redis => println!("redis: not run (--no-redis)"),
        None if !wanted(Which::Redis) => println!("redis: not run (not in --only)"),
        None => println!(
            "redis: not run ({} not found; apt-get install redis-server to compare against it)",
            args.redis_server.display()
        ),
    }
    println!(
        "data: {BENCH_FILE} with 3 holders plus {OTHER_FILES} other files; shoal answers \
         Locate{{name}}, no-op replays a {}-byte Located frame",
        noop_reply.len()
    );

    let mut results = Vec::new();
    let mut tsv = String::new();
    for &mode in &args.modes {
        for c in &contenders {
            // Warm-up: threads, allocator, caches and the server's code paths, untimed.
            let warm = run_cell(c, mode, 2, 300);
            if warm.errors > 0 {
                eprintln!(
                    "warning: {} warm-up ({}) had {} errors: {}",
                    c.name,
                    mode.title(),
                    warm.errors,
                    warm.first_error.as_deref().unwrap_or("?")
                );
            }
        }
        for &clients in &args.clients {
            let per_client = (args.lookups / clients).max(MIN_PER_CLIENT);
            eprintln!(
                "  {}: {clients} clients x {per_client} lookups x {} reps",
                mode.title(),
                args.reps
            );
            let mut cells: Vec<Vec<Cell>> = vec![Vec::new(); contenders.len()];
            for _ in 0..args.reps {
                // Untimed: keeps shoal's registrations within their lease (60 s by default).
                if let Some(h) = &shoal {
                    register_all(h.addr(), &data)?;
                }
                if let (Some(h), Some(c)) = (&shoal_tls, contenders.last()) {
                    let transport = c.tls.clone().ok_or(BenchError::Panicked("tls setup"))?;
                    register_all_with(transport, h.addr(), &data)?;
                }
                for (i, c) in contenders.iter().enumerate() {
                    let cell = run_cell(c, mode, clients, per_client);
                    let row = format!("clients={clients}");
                    for (column, value) in [
                        ("req/s", cell.rate()),
                        ("avg ms", cell.mean_ms),
                        ("p99 ms", cell.p99_ms),
                        ("errors", cell.errors as f64),
                    ] {
                        let _ =
                            writeln!(tsv, "{}\t{row}\t{} {column}\t{value}", mode.table(), c.name);
                    }
                    cells[i].push(cell);
                }
            }
            results.push(Row {
                mode,
                clients,
                per_contender: cells.iter().map(|reps| Summary::of(reps)).collect(),
            });
        }
    }
    let names: Vec<&str> = contenders.iter().map(|c| c.name).collect();
    for &mode in &args.modes {
        print_table(mode, &names, &results);
    }
    if let Some(path) = &args.tsv {
        append(path, &tsv)?;
        println!("raw rows appended to {}", path.display());
    }
    if let Some(path) = &args.plot {
        let charts = charts(&args.modes, &names, &results);
        plot::write_svg(path, &format!("shoal index lookups: {heading}"), &charts, 2)
            .map_err(io_err(format!("cannot write {}", path.display())))?;
        println!("plot written to {}", path.display());
    }
    let took = started.elapsed().as_secs();
    println!("took {}m{:02}s", took / 60, took % 60);
    drop(redis);
    Ok(())
}

/// The registry contents every contender is given.
pub(crate) struct BenchData {
    bench: FileMeta,
    holders: Vec<PeerAddr>,
    /// (holder, files it registers), the bench file included.
    pub(crate) registrations: Vec<(PeerAddr, Vec<FileMeta>)>,
}

impl BenchData {
    pub(crate) fn new() -> Result<BenchData, BenchError> {
        // Same-length addresses, so every Located answer has the same size whoever is chosen.
        let holders = (1..=HOLDERS)
            .map(|i| PeerAddr::new(format!("127.0.0.1:{}", 40_000 + i)))
            .collect::<Result<Vec<_>, _>>()?;
        let bench = meta(BENCH_FILE.to_string(), 0, 1 << 30);
        let mut registrations: Vec<(PeerAddr, Vec<FileMeta>)> =
            holders.iter().map(|h| (h.clone(), Vec::new())).collect();
        for entry in registrations.iter_mut().take(3) {
            entry.1.push(bench.clone());
        }
        for n in 1..=OTHER_FILES {
            let file = meta(format!("file-{n:04}.bin"), n, (1 << 20) + u64::from(n));
            // Two holders each, spread evenly.
            for h in [n % u32::from(HOLDERS), (n + 3) % u32::from(HOLDERS)] {
                registrations[h as usize].1.push(file.clone());
            }
        }
        Ok(BenchData {
            bench,
            holders,
            registrations,
        })
    }

    /// The request every shoal-protocol lookup sends, as frame bytes.
    pub(crate) fn locate_frame(&self) -> Result<Vec<u8>, BenchError> {
        let mut buf = Vec::new();
        codec::encode_frame(
            &IndexRequest::Locate {
                key: FileKey::Name(BENCH_FILE.into()),
            },
            &mut buf,
        )?;
        Ok(buf)
    }

    /// The answer the no-op server replays: a real `Located`, as shoal would send it.
    pub(crate) fn located_frame(&self) -> Result<Vec<u8>, BenchError> {
        let mut buf = Vec::new();
        codec::encode_frame(
            &IndexResponse::Located {
                file: self.bench.clone(),
                holder: self.holders[0].clone(),
                node: None,
            },
            &mut buf,
        )?;
        Ok(buf)
    }
}

fn meta(name: String, n: u32, size: u64) -> FileMeta {
    // Distinct, arbitrary ids: the index does not hash content, it only keys on the id.
    let mut id = [0x5a; 32];
    id[..4].copy_from_slice(&n.to_le_bytes());
    FileMeta {
        name,
        size,
        chunk_size: DEFAULT_CHUNK_SIZE,
        id: FileId(id),
    }
}

fn localhost() -> Result<PeerAddr, BenchError> {
    Ok(PeerAddr::new("127.0.0.1:0")?)
}

fn start_shoal<T: Transport>(transport: T, data: &BenchData) -> Result<ServerHandle, BenchError> {
    let config = IndexServerConfig {
        // Above any client count measured: a busy refusal would measure the limit, not speed.
        max_connections: 4096,
        ..IndexServerConfig::default()
    };
    let handle =
        IndexServer::new(transport.clone(), MemoryStore::new(), config).spawn(&localhost()?)?;
    register_all_with(transport, handle.addr(), data)?;
    Ok(handle)
}

/// Registers (again) every holder's files with shoal. Registering renews a holder's lease,
/// so calling this between reps keeps the data alive however long the run and the lease.
pub(crate) fn register_all(index: &PeerAddr, data: &BenchData) -> Result<(), BenchError> {
    register_all_with(TcpTransport::default(), index, data)
}

/// [`register_all`] over a given transport (the TLS contender's).
fn register_all_with<T: Transport>(
    transport: T,
    index: &PeerAddr,
    data: &BenchData,
) -> Result<(), BenchError> {
    let mut client = IndexClient::new(transport, vec![index.clone()]);
    for (holder, files) in &data.registrations {
        client.register(holder, files).map_err(contender_err(
            "shoal",
            "cannot register the bench's files: ",
        ))?;
    }
    Ok(())
}

fn start_noop(reply: Vec<u8>) -> Result<ServerHandle, BenchError> {
    let transport = TcpTransport::default();
    let listener = transport
        .bind(&localhost()?)
        .map_err(io_err("cannot start the no-op server"))?;
    // Exactly shoal's accept loop, so the two differ only in what a connection thread does.
    spawn_accept_loop(
        &transport,
        listener,
        AcceptConfig::new(Service::Index, "noop"),
        move |stream: TcpStream, _from, _live| noop_connection(stream, &reply),
    )
    .map_err(io_err("cannot start the no-op server"))
}

/// Handshake, then for every frame read (raw bytes, never decoded) write `reply` at once.
fn noop_connection(mut stream: TcpStream, reply: &[u8]) {
    if codec::server_handshake(&mut stream, Service::Index).is_err() {
        return;
    }
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut body = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if reader.read_exact(&mut len).is_err() {
            return;
        }
        let len = u32::from_be_bytes(len);
        if len > codec::DEFAULT_REQUEST_LIMIT {
            return;
        }
        body.resize(len as usize, 0);
        if reader.read_exact(&mut body).is_err() || writer.write_all(reply).is_err() {
            return;
        }
    }
}

/// The redis-server child; killed and reaped when dropped, on every path.
struct Redis {
    child: Child,
    addr: SocketAddr,
    version: String,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts our own redis-server on a free loopback port and loads the data; `None` when the
/// program is not installed.
fn start_redis(program: &Path, data: &BenchData) -> Result<Option<Redis>, BenchError> {
    let version = match Command::new(program).arg("--version").output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            // "Redis server v=7.0.15 sha=..." -> "Redis 7.0.15"
            text.split_whitespace()
                .find_map(|w| w.strip_prefix("v="))
                .map_or_else(|| text.trim().to_string(), |v| format!("Redis {v}"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(spawn_err(format!("{} --version", program.display()))(e)),
    };
    // A free port: bind port 0, read it, release it for redis (a tiny race, checked below).
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io_err("cannot find a free port for redis"))?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let child = Command::new(program)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err(program.display().to_string()))?;
    let mut redis = Redis {
        child,
        addr,
        version,
    };
    let mut conn = wait_for_ping(&mut redis)?;
    // Same data as shoal: one set of holders per file name, sent pipelined.
    let mut sets: Vec<(&str, Vec<&str>)> = Vec::new();
    for (holder, files) in &data.registrations {
        for f in files {
            match sets.iter_mut().find(|(name, _)| *name == f.name) {
                Some((_, members)) => members.push(holder.as_str()),
                None => sets.push((f.name.as_str(), vec![holder.as_str()])),
            }
        }
    }
    let mut batch = Vec::new();
    for (name, members) in &sets {
        let mut cmd = vec!["SADD", *name];
        cmd.extend(members);
        batch.extend(redis_command(&cmd));
    }
    conn.get_mut()
        .write_all(&batch)
        .map_err(io_err(format!("cannot load redis on {addr}")))?;
    let mut line = Vec::new();
    for _ in &sets {
        line.clear();
        conn.read_until(b'\n', &mut line)
            .map_err(io_err(format!("cannot load redis on {addr}")))?;
        if line.first() != Some(&b':') {
            return Err(BenchError::Contender {
                contender: "redis".into(),
                detail: format!("refused SADD: {}", String::from_utf8_lossy(&line).trim()),
            });
        }
    }
    Ok(Some(redis))
}

/// Waits (bounded) until the child answers PING; returns that connection.
fn wait_for_ping(redis: &mut Redis) -> Result<BufReader<TcpStream>, BenchError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if let Ok(Some(status)) = redis.child.try_wait() {
            let mut out = String::new();
            if let Some(mut s) = redis.child.stdout.take() {
                let _ = s.read_to_string(&mut out);
            }
            if let Some(mut s) = redis.child.stderr.take() {
                let _ = s.read_to_string(&mut out);
            }
            return Err(BenchError::NotReady {
                what: "redis-server".into(),
                event: "answer PING",
                why: format!("it exited ({status})"),
                log: out.trim().to_string(),
            });
        }
        match ping(redis.addr) {
            Ok(conn) => return Ok(conn),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(20));
    }
    Err(BenchError::NotReady {
        what: format!("redis-server on {}", redis.addr),
        event: "answer PING",
        why: format!("none within 10 s, last: {last}"),
        log: "its standard error".into(),
    })
}

fn ping(addr: SocketAddr) -> Result<BufReader<TcpStream>, BenchError> {
    let what = || format!("PING to redis on {addr}");
    let stream = TcpStream::connect(addr).map_err(io_err(what()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(io_err(what()))?;
    let mut conn = BufReader::new(stream);
    conn.get_mut()
        .write_all(&redis_command(&["PING"]))
        .map_err(io_err(what()))?;
    let mut line = String::new();
    conn.read_line(&mut line).map_err(io_err(what()))?;
    if line.trim_end() != "+PONG" {
        return Err(BenchError::WrongAnswer(format!(
            "PING answered {:?}",
            line.trim_end()
        )));
    }
    conn.get_mut()
        .set_read_timeout(None)
        .map_err(io_err(what()))?;
    Ok(conn)
}

/// One RESP command, as an array of bulk strings.
pub(crate) fn redis_command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n{a}\r\n", a.len());
    }
    out.into_bytes()
}

/// The protocol a contender speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire {
    /// shoal's handshake and frames (shoal and the no-op server).
    Shoal,
    /// RESP.
    Redis,
}

/// A server under test, as its clients see it.
#[derive(Clone)]
pub(crate) struct Contender {
    pub(crate) name: &'static str,
    pub(crate) wire: Wire,
    pub(crate) addr: SocketAddr,
    /// Further servers answering the same requests (several index servers on one shared
    /// registry): client `i` of a cell uses `[addr, others...][i % n]`.
    pub(crate) others: Vec<SocketAddr>,
    /// The pre-encoded lookup request, sent as-is every time.
    pub(crate) request: Vec<u8>,
    /// Connect over TLS with this client transport (shoal-tls); plain TCP when `None`.
    pub(crate) tls: Option<TlsTransport<TcpTransport>>,
}

impl Contender {
    pub(crate) fn new(
        name: &'static str,
        wire: Wire,
        addr: &PeerAddr,
        request: Vec<u8>,
    ) -> Result<Contender, BenchError> {
        let addr = addr.as_str().parse().map_err(|e| BenchError::Contender {
            contender: name.into(),
            detail: format!("listens on {addr}, not an IP address: {e}"),
        })?;
        Ok(Contender {
            name,
            wire,
            addr,
            others: Vec::new(),
            request,
            tls: None,
        })
    }

    /// What client `i` of a cell talks to (the servers taken in turn).
    fn for_client(&self, i: usize) -> Contender {
        let n = self.others.len() + 1;
        let addr = match i % n {
            0 => self.addr,
            k => self.others.get(k - 1).copied().unwrap_or(self.addr),
        };
        Contender {
            addr,
            others: Vec::new(),
            ..self.clone()
        }
    }

    /// One lookup with its answer checked; for shoal also that the answer is exactly as
    /// large as the no-op server's, so the ceiling moves the same bytes.
    pub(crate) fn probe(&self, noop_reply: &[u8]) -> Result<(), BenchError> {
        let mut conn = Conn::open(self).map_err(contender_err(self.name, "does not answer: "))?;
        if self.wire == Wire::Shoal {
            conn.reader
                .get_mut()
                .write_all(&self.request)
                .map_err(contender_err(self.name, ""))?;
            let mut len = [0u8; 4];
            conn.reader
                .read_exact(&mut len)
                .map_err(contender_err(self.name, ""))?;
            let len = u32::from_be_bytes(len) as usize;
            let mut body = vec![0; len.min(1 << 20)];
            conn.reader
                .read_exact(&mut body)
                .map_err(contender_err(self.name, ""))?;
            match codec::decode_body::<IndexResponse>(&body) {
                Ok(IndexResponse::Located { .. }) => {}
                other => {
                    return Err(BenchError::Contender {
                        contender: self.name.into(),
                        detail: format!("answers {other:?}, not Located"),
                    });
                }
            }
            if len + 4 != noop_reply.len() {
                eprintln!(
                    "note: {} answers {} bytes, the no-op server {}",
                    self.name,
                    len + 4,
                    noop_reply.len()
                );
            }
        }
        let mut scratch = Vec::new();
        conn.lookup(self, &mut scratch)
            .map_err(contender_err(self.name, "lookup failed: "))?;
        Conn::lookup_once(self, &mut scratch).map_err(contender_err(
            self.name,
            "lookup on a new connection failed: ",
        ))
    }
}

/// A client's byte stream: TCP, or TLS over TCP.
trait Duplex: Read + Write + Send {}
impl<S: Read + Write + Send> Duplex for S {}

/// A client connection: the stream behind a small read buffer (one read per answer).
struct Conn {
    reader: BufReader<Box<dyn Duplex>>,
}

impl Conn {
    fn connect(c: &Contender) -> Result<Box<dyn Duplex>, BenchError> {
        if let Some(tls) = &c.tls {
            let addr = PeerAddr::new(c.addr.to_string())?;
            // Connects and completes the TLS handshake.
            return Ok(Box::new(tls.connect(&addr).map_err(io_err("connect"))?));
        }
        let stream = TcpStream::connect(c.addr).map_err(io_err("connect"))?;
        stream.set_nodelay(true).map_err(io_err("nodelay"))?;
        Ok(Box::new(stream))
    }

    /// A new connection for one lookup. shoal's hello and the request leave in one write
    /// and the server's hello comes back ahead of the answer, so it is one round trip.
    fn lookup_once(c: &Contender, scratch: &mut Vec<u8>) -> Result<(), BenchError> {
        let mut stream = Conn::connect(c)?;
        if c.wire == Wire::Redis {
            return Conn::wrap(stream).lookup(c, scratch);
        }
        // The server answers exactly 8 bytes, so reading it unbuffered loses nothing.
        codec::client_handshake_with_frame(&mut stream, Service::Index, &c.request)
            .map_err(proto_err("handshake"))?;
        Conn::wrap(stream).answer(c, scratch)
    }

    fn wrap(stream: Box<dyn Duplex>) -> Conn {
        Conn {
            reader: BufReader::with_capacity(1024, stream),
        }
    }

    fn open(c: &Contender) -> Result<Conn, BenchError> {
        let mut stream = Conn::connect(c)?;
        if c.wire == Wire::Shoal {
            // The server answers exactly 8 bytes, so reading it unbuffered loses nothing.
            codec::client_handshake(&mut stream, Service::Index).map_err(proto_err("handshake"))?;
        }
        Ok(Conn::wrap(stream))
    }

    /// Sends the request and reads (and checks) one answer.
    fn lookup(&mut self, c: &Contender, scratch: &mut Vec<u8>) -> Result<(), BenchError> {
        self.reader
            .get_mut()
            .write_all(&c.request)
            .map_err(io_err("send"))?;
        self.answer(c, scratch)
    }

    /// Reads (and checks) one answer.
    fn answer(&mut self, c: &Contender, scratch: &mut Vec<u8>) -> Result<(), BenchError> {
        match c.wire {
            Wire::Shoal => match codec::read_frame::<_, IndexResponse>(
                &mut self.reader,
                codec::DEFAULT_RESPONSE_LIMIT,
                scratch,
            ) {
                Ok(IndexResponse::Located { .. }) => Ok(()),
                Ok(other) => Err(BenchError::WrongAnswer(format!(
                    "answer is not Located: {other:?}"
                ))),
                Err(e) => Err(proto_err("answer")(e)),
            },
            Wire::Redis => read_bulk(&mut self.reader, scratch),
        }
    }
}

/// Reads one RESP bulk-string reply (`$N\r\n<N bytes>\r\n`); nil or an error reply fail.
fn read_bulk<R: Read>(reader: &mut BufReader<R>, buf: &mut Vec<u8>) -> Result<(), BenchError> {
    buf.clear();
    let n = reader.read_until(b'\n', buf).map_err(io_err("answer"))?;
    if n == 0 {
        return Err(BenchError::WrongAnswer("answer: connection closed".into()));
    }
    let header = String::from_utf8_lossy(buf);
    let len: i64 = header
        .strip_prefix('$')
        .and_then(|rest| rest.trim_end().parse().ok())
        .ok_or_else(|| {
            BenchError::WrongAnswer(format!(
                "answer is not a bulk string: {:?}",
                header.trim_end()
            ))
        })?;
    let len = usize::try_from(len)
        .map_err(|_| BenchError::WrongAnswer("answer is nil (no such set)".into()))?;
    buf.resize(len + 2, 0);
    reader.read_exact(buf).map_err(io_err("answer body"))
}

/// Starts all clients of a cell at once, after they are connected.
struct Gate {
    state: Mutex<(usize, bool)>,
    arrived: Condvar,
    go: Condvar,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            state: Mutex::new((0, false)),
            arrived: Condvar::new(),
            go: Condvar::new(),
        }
    }

    /// A client is ready; blocks until the gate opens.
    fn arrive(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.0 += 1;
        self.arrived.notify_one();
        while !s.1 {
            s = self.go.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until `n` clients are ready, opens the gate and returns the start time. (Unlike
    /// a `Barrier`, it still opens when some client threads could not be spawned.)
    fn open_when(&self, n: usize) -> Instant {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while s.0 < n {
            s = self.arrived.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        s.1 = true;
        let start = Instant::now();
        self.go.notify_all();
        start
    }
}

/// What one client thread measured.
struct Worker {
    /// Response time of each successful lookup, in nanoseconds.
    samples: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
    end: Instant,
}

impl Worker {
    fn fail(&mut self, e: BenchError) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }
}

fn client(c: &Contender, mode: Mode, lookups: usize, gate: &Gate) -> Worker {
    let mut w = Worker {
        samples: Vec::with_capacity(lookups),
        errors: 0,
        first_error: None,
        end: Instant::now(),
    };
    let mut scratch = Vec::with_capacity(256);
    match mode {
        Mode::Persistent => {
            // Connected before the start, so the cell times lookups, not connects.
            let mut conn = match Conn::open(c) {
                Ok(conn) => Some(conn),
                Err(e) => {
                    w.first_error = Some(e.to_string());
                    None
                }
            };
            gate.arrive();
            for _ in 0..lookups {
                // A broken connection is replaced (untimed); each failed lookup counts once.
                let open = match conn.take() {
                    Some(open) => Ok(open),
                    None => Conn::open(c),
                };
                let mut open = match open {
                    Ok(open) => open,
                    Err(e) => {
                        w.fail(e);
                        continue;
                    }
                };
                let t0 = Instant::now();
                let result = open.lookup(c, &mut scratch);
                let elapsed = t0.elapsed();
                match result {
                    Ok(()) => {
                        w.samples.push(nanos(elapsed));
                        conn = Some(open);
                    }
                    Err(e) => w.fail(e),
                }
            }
        }
        Mode::PerConnection => {
            gate.arrive();
            for _ in 0..lookups {
                // Connect, handshake, lookup and close are all part of the response time.
                let t0 = Instant::now();
                let result = Conn::lookup_once(c, &mut scratch);
                let elapsed = t0.elapsed();
                match result {
                    Ok(()) => w.samples.push(nanos(elapsed)),
                    Err(e) => w.fail(e),
                }
            }
        }
    }
    w.end = Instant::now();
    w
}

fn nanos(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// One measured run of one contender at one client count.
#[derive(Clone, Debug)]
pub(crate) struct Cell {
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    pub(crate) secs: f64,
    pub(crate) mean_ms: f64,
    pub(crate) p99_ms: f64,
    first_error: Option<String>,
}

impl Cell {
    pub(crate) fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }
}

pub(crate) fn run_cell(c: &Contender, mode: Mode, clients: usize, per_client: usize) -> Cell {
    let gate = Gate::new();
    let mut samples: Vec<u32> = Vec::with_capacity(clients * per_client);
    let mut errors = 0u64;
    let mut first_error = None;
    let (start, end) = thread::scope(|s| {
        let mut handles = Vec::with_capacity(clients);
        for i in 0..clients {
            let mine = c.for_client(i);
            let gate = &gate;
            let spawned = thread::Builder::new()
                .name("bench-client".into())
                .stack_size(CLIENT_STACK)
                .spawn_scoped(s, move || client(&mine, mode, per_client, gate));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    errors += per_client as u64;
                    first_error.get_or_insert(format!("cannot start a client thread: {e}"));
                }
            }
        }
        let start = gate.open_when(handles.len());
        let mut end = start;
        for h in handles {
            match h.join() {
                Ok(w) => {
                    samples.extend_from_slice(&w.samples);
                    errors += w.errors;
                    if let Some(e) = w.first_error {
                        first_error.get_or_insert(e);
                    }
                    end = end.max(w.end);
                }
                Err(_) => {
                    errors += per_client as u64;
                    first_error.get_or_insert("a client thread panicked".into());
                }
            }
        }
        (start, end)
    });
    let (mean_ms, p99_ms) = if samples.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        let sum: u64 = samples.iter().map(|&s| u64::from(s)).sum();
        let mean = sum as f64 / samples.len() as f64 / 1e6;
        let p99 = stats::percentile(&mut samples, 99).map_or(f64::NAN, |p| f64::from(p) / 1e6);
        (mean, p99)
    };
    Cell {
        ok: samples.len() as u64,
        errors,
        secs: (end - start).as_secs_f64(),
        mean_ms,
        p99_ms,
        first_error,
    }
}

/// The reps of one (mode, clients, contender), reduced to medians.
pub(crate) struct Summary {
    pub(crate) rate: f64,
    pub(crate) rate_min: f64,
    pub(crate) rate_max: f64,
    pub(crate) mean_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl Summary {
    pub(crate) fn of(cells: &[Cell]) -> Summary {
        let rates: Vec<f64> = cells.iter().map(Cell::rate).collect();
        let rate = Spread::of(&rates).unwrap_or(Spread::NAN);
        let median_of = |f: fn(&Cell) -> f64| {
            stats::median(&cells.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        Summary {
            rate: rate.median,
            rate_min: rate.min,
            rate_max: rate.max,
            mean_ms: median_of(|c| c.mean_ms),
            p99_ms: median_of(|c| c.p99_ms),
            errors: cells.iter().map(|c| c.errors).sum(),
            first_error: cells.iter().find_map(|c| c.first_error.clone()),
        }
    }
}

/// All contenders at one (mode, clients).
struct Row {
    mode: Mode,
    clients: usize,
    /// In contender order.
    per_contender: Vec<Summary>,
}

/// `112.3k`, `1.05M`, `950`.
pub(crate) fn fmt_rate(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Milliseconds with three significant-ish digits: `0.084`, `1.23`, `12.5`.
pub(crate) fn fmt_ms(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// `1.07x`, or `-` when one side was not measured.
pub(crate) fn fmt_ratio(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}x")
    } else {
        "-".into()
    }
}

fn print_table(mode: Mode, names: &[&str], rows: &[Row]) {
    let shoal = names.iter().position(|n| *n == "shoal");
    let noop = names.iter().position(|n| *n == "no-op");
    let redis = names.iter().position(|n| *n == "redis");
    let tls = names.iter().position(|n| *n == "shoal-tls");
    println!("\n### index lookups, {}\n", mode.title());
    let mut head = String::from("| clients |");
    let mut rule = String::from("|--:|");
    for n in names {
        let _ = write!(head, " {n} lookups/s | {n} avg ms | {n} p99 ms |");
        rule.push_str("--:|--:|--:|");
    }
    if redis.is_some() {
        head.push_str(" shoal/redis |");
        rule.push_str("--:|");
    }
    if noop.is_some() {
        head.push_str(" shoal/no-op |");
        rule.push_str("--:|");
    }
    if tls.is_some() {
        head.push_str(" tls/shoal |");
        rule.push_str("--:|");
    }
    head.push_str(" targets | errors |");
    rule.push_str("---|---|");
    println!("{head}\n{rule}");
    let mut notes = Vec::new();
    for row in rows.iter().filter(|r| r.mode == mode) {
        let mut line = format!("| {} |", row.clients);
        for s in &row.per_contender {
            let _ = write!(
                line,
                " {} ({}-{}) | {} | {} |",
                fmt_rate(s.rate),
                fmt_rate(s.rate_min),
                fmt_rate(s.rate_max),
                fmt_ms(s.mean_ms),
                fmt_ms(s.p99_ms)
            );
        }
        let get = |i: Option<usize>| i.and_then(|i| row.per_contender.get(i));
        let ratio = |a: Option<&Summary>, b: Option<&Summary>| match (a, b) {
            (Some(a), Some(b)) if b.rate > 0.0 => a.rate / b.rate,
            _ => f64::NAN,
        };
        let vs_redis = ratio(get(shoal), get(redis));
        let vs_noop = ratio(get(shoal), get(noop));
        if redis.is_some() {
            let _ = write!(line, " {} |", fmt_ratio(vs_redis));
        }
        // The targets: >= 1.1x Redis, >= 0.9x the no-op ceiling, p99 <= Redis's.
        let mut missed = Vec::new();
        // Written so that a NaN (nothing measured) counts as missed.
        if redis.is_some() && (vs_redis.is_nan() || vs_redis < 1.1) {
            missed.push("<1.1x redis");
        }
        if noop.is_some() && (vs_noop.is_nan() || vs_noop < 0.9) {
            missed.push("<0.9x no-op");
        }
        let p99_worse = match (get(shoal), get(redis)) {
            (Some(s), Some(r)) => s.p99_ms.is_nan() || s.p99_ms > r.p99_ms,
            _ => false,
        };
        if p99_worse {
            missed.push("p99 > redis");
        }
        // Issue 12: persistent lookups over TLS at least 0.8x plaintext.
        let vs_plain = ratio(get(tls), get(shoal));
        if tls.is_some() && mode == Mode::Persistent && (vs_plain.is_nan() || vs_plain < 0.8) {
            missed.push("tls <0.8x plain");
        }
        let targets = if shoal.is_none() {
            "-".to_string()
        } else if missed.is_empty() {
            "met".to_string()
        } else {
            missed.join(", ")
        };
        let errors: Vec<String> = names
            .iter()
            .zip(&row.per_contender)
            .filter(|(_, s)| s.errors > 0)
            .map(|(n, s)| format!("{n} {}", s.errors))
            .collect();
        let errors = if errors.is_empty() {
            "0".to_string()
        } else {
            errors.join(", ")
        };
        if noop.is_some() {
            let _ = write!(line, " {} |", fmt_ratio(vs_noop));
        }
        if tls.is_some() {
            let _ = write!(line, " {} |", fmt_ratio(vs_plain));
        }
        let _ = write!(line, " {targets} | {errors} |");
        println!("{line}");
        for (n, s) in names.iter().zip(&row.per_contender) {
            if let Some(e) = &s.first_error {
                notes.push(format!("{n} at {} clients: {e}", row.clients));
            }
        }
    }
    if !notes.is_empty() {
        println!("\nfirst error per cell:");
        for n in notes {
            println!("- {n}");
        }
    }
}

fn charts(modes: &[Mode], names: &[&str], rows: &[Row]) -> Vec<Chart> {
    let mut latency = Vec::new();
    let mut rate = Vec::new();
    for &mode in modes {
        let points = |i: usize, f: &dyn Fn(&Summary) -> f64| -> Vec<(f64, f64)> {
            rows.iter()
                .filter(|r| r.mode == mode)
                .filter_map(|r| Some((r.clients as f64, f(r.per_contender.get(i)?))))
                .collect()
        };
        let mut lat_series = Vec::new();
        let mut rate_series = Vec::new();
        for (i, name) in names.iter().enumerate() {
            lat_series.push(Series {
                name: format!("{name} avg"),
                points: points(i, &|s| s.mean_ms),
                color: i,
                dashed: false,
            });
            lat_series.push(Series {
                name: format!("{name} p99"),
                points: points(i, &|s| s.p99_ms),
                color: i,
                dashed: true,
            });
            rate_series.push(Series {
                name: name.to_string(),
                points: points(i, &|s| s.rate),
                color: i,
                dashed: false,
            });
        }
        latency.push(Chart {
            title: format!("response time, {}", mode.title()),
            x_label: "concurrent clients".into(),
            y_label: "ms (log scale)".into(),
            series: lat_series,
            log_x: true,
            log_y: true,
        });
        rate.push(Chart {
            title: format!("throughput, {}", mode.title()),
            x_label: "concurrent clients".into(),
            y_label: "lookups/s".into(),
            series: rate_series,
            log_x: true,
            log_y: false,
        });
    }
    // Response time (the study's plot) on the first row, throughput below.
    latency.extend(rate);
    latency
}

fn append(path: &Path, text: &str) -> Result<(), BenchError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(io_err(format!("cannot append to {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let rates = [
            (112_345.0, "112.3k"),
            (950.0, "950"),
            (2_500_000.0, "2.50M"),
        ];
        for (rate, shown) in rates {
            assert_eq!(fmt_rate(rate), shown);
        }
        for (ms, shown) in [(0.0841, "0.084"), (12.34, "12.3")] {
            assert_eq!(fmt_ms(ms), shown);
        }
    }

    #[test]
    fn resp_command_encoding() {
        assert_eq!(
            redis_command(&["SRANDMEMBER", "bench.bin"]),
            b"*2\r\n$11\r\nSRANDMEMBER\r\n$9\r\nbench.bin\r\n".to_vec()
        );
    }

    #[test]
    fn data_registers_bench_file_three_times() {
        let data = BenchData::new().unwrap();
        let holders = data
            .registrations
            .iter()
            .filter(|(_, files)| files.iter().any(|f| f.name == BENCH_FILE))
            .count();
        assert_eq!(holders, 3);
        let total: usize = data.registrations.iter().map(|(_, f)| f.len()).sum();
        assert_eq!(total, 3 + 2 * OTHER_FILES as usize);
    }
}
