//! `shoal bench index --store redis`: the registry on Redis (issue 11).
//!
//! Four contenders, alternating cell by cell, driven by the same client threads:
//! - **memory**: a `shoal index` process with the in-memory registry;
//! - **redis-1**: a `shoal index --store redis://...` process on our own redis-server;
//! - **redis-2**: two such processes on the same Redis and prefix, clients split between them;
//! - **raw**: that redis-server itself answering `SRANDMEMBER bench.bin` (lookups) and `SADD`
//!   (registrations): the floor under any index that keeps its registry there.
//!
//! Lookups/s and registrations/s for each client count (median of the reps), then CPU per
//! lookup of the index processes and of Redis (from /proc, around the cells at each client
//! count), Redis memory per registration for three shapes of registry, and the round trip of
//! a heartbeat that renews 10,000 files.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use shoal_index::{IndexClient, LocalRedis, RedisOptions, RedisStore, Store};
use shoal_proto::tcp::TcpTransport;
use shoal_proto::{FileId, FileMeta, PeerAddr};

use crate::child::IndexProcess;
use crate::error::{BenchError, contender_err, io_err};
use crate::hostile::process_usage;
use crate::index::{
    BenchData, Cell, Contender, IndexBenchArgs, Mode, Summary, Wire, fmt_ms, fmt_rate, fmt_ratio,
    redis_command, register_all, run_cell,
};
use crate::stats;

/// The key prefix the shoal contenders share.
const PREFIX: &str = "bench";
/// Registrations per client per registration cell (at least).
const MIN_REGISTRATIONS: usize = 50;
/// Files of the heartbeat measured.
const RENEW_FILES: u32 = 10_000;

/// CPU seconds of a set of processes.
fn cpu(pids: &[u32]) -> Result<f64, BenchError> {
    let mut total = 0.0;
    for &pid in pids {
        total += process_usage(pid)?.0;
    }
    Ok(total)
}

/// One contender with the processes whose CPU it costs.
struct Entry {
    lookup: Contender,
    /// Registration requests go here (shoal) or are `SADD`s (raw).
    register: Vec<SocketAddr>,
    index_pids: Vec<u32>,
}

/// Runs the shared-registry benchmark and prints its tables.
pub(crate) fn run(args: &IndexBenchArgs) -> Result<(), BenchError> {
    let started = Instant::now();
    if !LocalRedis::available() && args.redis_server.as_os_str() == "redis-server" {
        return Err(BenchError::MissingTool {
            program: "redis-server",
            hint: "apt-get install redis-server",
        });
    }
    let redis =
        LocalRedis::start_program(&args.redis_server).map_err(|detail| BenchError::Contender {
            contender: "redis".into(),
            detail,
        })?;
    let redis_pid = redis.pid().unwrap_or(0);
    let url = redis.url();
    let data = BenchData::new()?;

    // The registration cells register hundreds of thousands of files from 127.0.0.1.
    let uncapped = ["--max-files-per-address", "100000000"];
    let memory = IndexProcess::start(&uncapped)?;
    let store_args = [
        uncapped[0],
        uncapped[1],
        "--store",
        url.as_str(),
        "--redis-prefix",
        PREFIX,
    ];
    let one = IndexProcess::start(&store_args)?;
    let two = [
        IndexProcess::start(&store_args)?,
        IndexProcess::start(&store_args)?,
    ];
    register_all(&memory.addr, &data)?;
    register_all(&one.addr, &data)?;
    let raw_addr: SocketAddr = redis.addr().parse().map_err(|e| BenchError::Parse {
        command: "redis-server".into(),
        detail: format!("{e}"),
    })?;
    load_raw(raw_addr, &data)?;

    let request = data.locate_frame()?;
    let mut two_lookup = Contender::new("redis-2", Wire::Shoal, &two[0].addr, request.clone())?;
    two_lookup.others = vec![two[1].socket()?];
    let entries = vec![
        Entry {
            lookup: Contender::new("memory", Wire::Shoal, &memory.addr, request.clone())?,
            register: vec![memory.socket()?],
            index_pids: vec![memory.child.id()],
        },
        Entry {
            lookup: Contender::new("redis-1", Wire::Shoal, &one.addr, request)?,
            register: vec![one.socket()?],
            index_pids: vec![one.child.id()],
        },
        Entry {
            lookup: two_lookup,
            register: vec![two[0].socket()?, two[1].socket()?],
            index_pids: vec![two[0].child.id(), two[1].child.id()],
        },
        Entry {
            lookup: Contender {
                name: "raw",
                wire: Wire::Redis,
                addr: raw_addr,
                others: Vec::new(),
                request: redis_command(&["SRANDMEMBER", "bench.bin"]),
                tls: None,
            },
            register: vec![raw_addr],
            index_pids: Vec::new(),
        },
    ];
    let noop_reply = data.located_frame()?;
    for e in &entries {
        e.lookup.probe(&noop_reply)?;
        let warm = run_cell(&e.lookup, Mode::Persistent, 2, 300);
        if warm.errors > 0 {
            eprintln!(
                "warning: {} warm-up had {} errors",
                e.lookup.name, warm.errors
            );
        }
    }

    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "shoal bench index --store redis: {cores} cores, median of {} reps, {} requests per cell \
         split over the clients, persistent connections; contenders alternate within each rep",
        args.reps, args.lookups
    );
    println!(
        "redis: our own redis-server on {} (no persistence); memory = shoal index in memory, \
         redis-1 = one shoal index on Redis, redis-2 = two on the same Redis (clients split), \
         raw = SRANDMEMBER / SADD on that Redis from the same client threads",
        redis.addr()
    );

    let names: Vec<&str> = entries.iter().map(|e| e.lookup.name).collect();
    let mut lookup_rows = Vec::new();
    let mut register_rows = Vec::new();
    for &clients in &args.clients {
        let per_client = (args.lookups / clients).max(MIN_REGISTRATIONS);
        eprintln!(
            "  {clients} clients x {per_client} requests x {} reps",
            args.reps
        );
        let mut lookups: Vec<Vec<Cell>> = vec![Vec::new(); entries.len()];
        let mut registrations: Vec<Vec<f64>> = vec![Vec::new(); entries.len()];
        let mut cpu_index = vec![Vec::new(); entries.len()];
        let mut cpu_redis = vec![Vec::new(); entries.len()];
        for rep in 0..args.reps {
            // Untimed: keeps the registrations within their lease.
            register_all(&memory.addr, &data)?;
            register_all(&one.addr, &data)?;
            for (i, e) in entries.iter().enumerate() {
                let (index0, redis0) = (cpu(&e.index_pids)?, cpu(&[redis_pid])?);
                let cell = run_cell(&e.lookup, Mode::Persistent, clients, per_client);
                let (index1, redis1) = (cpu(&e.index_pids)?, cpu(&[redis_pid])?);
                let ok = cell.ok.max(1) as f64;
                cpu_index[i].push((index1 - index0) / ok * 1e6);
                cpu_redis[i].push((redis1 - redis0) / ok * 1e6);
                lookups[i].push(cell);
                let tag = format!("r{rep}-c{clients}");
                registrations[i].push(register_cell(e, clients, per_client, &tag)?);
            }
        }
        lookup_rows.push((
            clients,
            lookups.iter().map(|c| Summary::of(c)).collect::<Vec<_>>(),
            cpu_index
                .iter()
                .map(|v| stats::median(v).unwrap_or(f64::NAN))
                .collect::<Vec<_>>(),
            cpu_redis
                .iter()
                .map(|v| stats::median(v).unwrap_or(f64::NAN))
                .collect::<Vec<_>>(),
        ));
        register_rows.push((
            clients,
            registrations
                .iter()
                .map(|v| stats::median(v).unwrap_or(f64::NAN))
                .collect::<Vec<_>>(),
        ));
    }

    println!("\n### lookups/s (median, min-max), persistent connections\n");
    let per_name: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    print_head(
        &per_name,
        &[
            "redis-1/raw",
            "redis-2/raw",
            "p99 ms redis-1 / raw",
            "errors",
        ],
    );
    for (clients, sums, _, _) in &lookup_rows {
        let mut line = format!("| {clients} |");
        for s in sums {
            line.push_str(&format!(
                " {} ({}-{}) |",
                fmt_rate(s.rate),
                fmt_rate(s.rate_min),
                fmt_rate(s.rate_max)
            ));
        }
        let ratio = |a: usize| match (sums.get(a), sums.get(3)) {
            (Some(a), Some(r)) if r.rate > 0.0 => a.rate / r.rate,
            _ => f64::NAN,
        };
        let p99 = |i: usize| sums.get(i).map_or(f64::NAN, |s| s.p99_ms);
        let errors: u64 = sums.iter().map(|s| s.errors).sum();
        line.push_str(&format!(
            " {} | {} | {} / {} | {errors} |",
            fmt_ratio(ratio(1)),
            fmt_ratio(ratio(2)),
            fmt_ms(p99(1)),
            fmt_ms(p99(3))
        ));
        println!("{line}");
    }
    for (clients, sums, _, _) in &lookup_rows {
        for (n, s) in names.iter().zip(sums) {
            if let Some(e) = &s.first_error {
                println!("note: {n} at {clients} clients: {e}");
            }
        }
    }

    println!("\n### registrations/s (median; one new file per request)\n");
    print_head(&per_name, &["redis-1/raw", "redis-2/raw"]);
    for (clients, rates) in &register_rows {
        let mut line = format!("| {clients} |");
        for r in rates {
            line.push_str(&format!(" {} |", fmt_rate(*r)));
        }
        let ratio = |a: usize| match (rates.get(a), rates.get(3)) {
            (Some(a), Some(r)) if *r > 0.0 => a / r,
            _ => f64::NAN,
        };
        line.push_str(&format!(
            " {} | {} |",
            fmt_ratio(ratio(1)),
            fmt_ratio(ratio(2))
        ));
        println!("{line}");
    }

    println!("\n### CPU per lookup (µs; median over reps)\n");
    let per_name: Vec<String> = names
        .iter()
        .flat_map(|n| [format!("{n} index"), format!("{n} redis")])
        .collect();
    print_head(&per_name, &[]);
    for (clients, _, index, redis_cpu) in &lookup_rows {
        let mut line = format!("| {clients} |");
        for (i, r) in index.iter().zip(redis_cpu) {
            line.push_str(&format!(" {i:.1} | {r:.1} |"));
        }
        println!("{line}");
    }
    println!(
        "(CPU from /proc in 10 ms ticks; the index processes' and redis-server's only, not the \
         client threads')"
    );

    memory_per_registration(&url)?;
    renew_round_trip(&url, &one.addr)?;
    let took = started.elapsed().as_secs();
    println!("took {}m{:02}s", took / 60, took % 60);
    Ok(())
}

/// A table's header: clients, one column per entry of `columns`, then `extra`.
fn print_head(columns: &[String], extra: &[&str]) {
    let mut head = String::from("| clients |");
    let mut rule = String::from("|--:|");
    for c in columns
        .iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
    {
        head.push_str(&format!(" {c} |"));
        rule.push_str("--:|");
    }
    println!("{head}\n{rule}");
}

/// Loads `bench.bin`'s holders into a plain set for SRANDMEMBER.
fn load_raw(addr: SocketAddr, data: &BenchData) -> Result<(), BenchError> {
    let mut members = vec!["SADD", "bench.bin"];
    for (holder, files) in &data.registrations {
        if files.iter().any(|f| f.name == "bench.bin") {
            members.push(holder.as_str());
        }
    }
    let mut conn = raw_conn(addr)?;
    conn.get_mut()
        .write_all(&redis_command(&members))
        .map_err(io_err("cannot load redis"))?;
    let mut line = String::new();
    conn.read_line(&mut line)
        .map_err(io_err("cannot load redis"))?;
    if !line.starts_with(':') {
        return Err(BenchError::WrongAnswer(format!("SADD answered {line:?}")));
    }
    Ok(())
}

fn raw_conn(addr: SocketAddr) -> Result<BufReader<TcpStream>, BenchError> {
    let stream = TcpStream::connect(addr).map_err(io_err(format!("connect to redis on {addr}")))?;
    stream.set_nodelay(true).map_err(io_err("nodelay"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io_err("timeout"))?;
    Ok(BufReader::new(stream))
}

fn file(tag: &str, client: usize, n: usize) -> FileMeta {
    let hash = blake3_like(tag, client, n);
    FileMeta {
        name: format!("reg-{tag}-{client}-{n}.bin"),
        size: 1 << 20,
        chunk_size: 1 << 20,
        id: FileId(hash),
    }
}

/// A distinct id per (tag, client, n), no hashing needed.
fn blake3_like(tag: &str, client: usize, n: usize) -> [u8; 32] {
    let mut id = [0u8; 32];
    let tag = tag.as_bytes();
    let len = tag.len().min(16);
    id[..len].copy_from_slice(&tag[..len]);
    id[16..24].copy_from_slice(&(client as u64).to_le_bytes());
    id[24..32].copy_from_slice(&(n as u64).to_le_bytes());
    id
}

/// Registrations/s: every client registers `per_client` new files, one per request.
fn register_cell(
    e: &Entry,
    clients: usize,
    per_client: usize,
    tag: &str,
) -> Result<f64, BenchError> {
    let barrier = Barrier::new(clients + 1);
    let results: (Vec<Result<usize, BenchError>>, f64) = thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let target = e.register[c % e.register.len()];
                let barrier = &barrier;
                s.spawn(move || -> Result<usize, BenchError> {
                    let holder = PeerAddr::new(format!("127.0.0.1:{}", 20_000 + c))?;
                    if e.lookup.wire == Wire::Redis {
                        let mut conn = raw_conn(target)?;
                        let mut scratch = Vec::new();
                        barrier.wait();
                        for n in 0..per_client {
                            let f = file(tag, c, n);
                            let cmd = redis_command(&["SADD", &f.name, holder.as_str()]);
                            conn.get_mut().write_all(&cmd).map_err(io_err("SADD"))?;
                            scratch.clear();
                            conn.read_until(b'\n', &mut scratch)
                                .map_err(io_err("SADD answer"))?;
                        }
                        return Ok(per_client);
                    }
                    let index = PeerAddr::new(target.to_string())?;
                    let mut client = IndexClient::new(TcpTransport::default(), vec![index]);
                    // Connected (and checked) before the start.
                    client
                        .register(&holder, &[])
                        .map_err(contender_err(e.lookup.name, "cannot register: "))?;
                    barrier.wait();
                    for n in 0..per_client {
                        let f = file(tag, c, n);
                        client
                            .register(&holder, std::slice::from_ref(&f))
                            .map_err(contender_err(e.lookup.name, "cannot register: "))?;
                    }
                    Ok(per_client)
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let done: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(BenchError::WrongAnswer("a client thread panicked".into()))
                })
            })
            .collect();
        let secs = t0.elapsed().as_secs_f64();
        (done, secs)
    });
    let (results, secs) = results;
    let mut total = 0usize;
    for r in results {
        total += r?;
    }
    Ok(total as f64 / secs.max(1e-9))
}

/// Redis memory per registration for three shapes: one holder per file (the worst case:
/// every registration is a listing of its own), ten, and a hundred.
fn memory_per_registration(url: &str) -> Result<(), BenchError> {
    println!("\n### Redis memory per registration (INFO used_memory before and after)\n");
    println!("| shape | registrations | bytes per registration |");
    println!("|---|--:|--:|");
    for (files, holders) in [(50_000u32, 1u32), (10_000, 10), (1_000, 100)] {
        let options = RedisOptions {
            prefix: format!("mem{holders}"),
            ..RedisOptions::default()
        };
        let store = RedisStore::open(url, options)?;
        let before = store.used_memory()?;
        let metas: Vec<FileMeta> = (0..files)
            .map(|n| {
                let mut id = [0x33; 32];
                id[..4].copy_from_slice(&n.to_le_bytes());
                id[4..8].copy_from_slice(&holders.to_le_bytes());
                FileMeta {
                    name: format!("some music/album {:03}/track-{n:06}.ogg", n % 997),
                    size: 4_000_000 + u64::from(n),
                    chunk_size: 1 << 20,
                    id: FileId(id),
                }
            })
            .collect();
        for h in 0..holders {
            let holder = PeerAddr::new(format!(
                "10.{}.{}.{}:7000",
                h / 65536 % 256,
                h / 256 % 256,
                h % 256
            ))?;
            for batch in metas.chunks(1000) {
                store.register(&holder, batch)?;
            }
        }
        let after = store.used_memory()?;
        let registrations = u64::from(files) * u64::from(holders);
        println!(
            "| {files} files x {holders} holders (names ~35 bytes) | {registrations} | {:.0} |",
            after.saturating_sub(before) as f64 / registrations as f64
        );
    }
    Ok(())
}

/// A heartbeat of a holder with 10,000 files: one script call on Redis, one request to the
/// index.
fn renew_round_trip(url: &str, index: &PeerAddr) -> Result<(), BenchError> {
    let store = RedisStore::open(
        url,
        RedisOptions {
            prefix: PREFIX.into(),
            ..RedisOptions::default()
        },
    )?;
    let holder = PeerAddr::new("127.0.0.1:30000")?;
    let metas: Vec<FileMeta> = (0..RENEW_FILES)
        .map(|n| {
            let mut id = [0x44; 32];
            id[..4].copy_from_slice(&n.to_le_bytes());
            FileMeta {
                name: format!("big-{n}.bin"),
                size: 1,
                chunk_size: 1 << 20,
                id: FileId(id),
            }
        })
        .collect();
    for batch in metas.chunks(1000) {
        store.register(&holder, batch)?;
    }
    let mut direct = Vec::new();
    for _ in 0..51 {
        let t0 = Instant::now();
        let n = store.renew(&holder)?;
        direct.push(t0.elapsed().as_secs_f64() * 1e3);
        if n != Some(RENEW_FILES) {
            return Err(BenchError::WrongAnswer(format!("renew answered {n:?}")));
        }
    }
    let mut client = IndexClient::new(TcpTransport::default(), vec![index.clone()]);
    let mut through = Vec::new();
    for _ in 0..51 {
        let t0 = Instant::now();
        let n = client
            .renew(&holder)
            .map_err(contender_err("redis-1", "cannot renew: "))?;
        through.push(t0.elapsed().as_secs_f64() * 1e3);
        if n != RENEW_FILES {
            return Err(BenchError::WrongAnswer(format!("renew answered {n}")));
        }
    }
    println!(
        "\nrenew of a holder with {RENEW_FILES} files: one round trip (one script call): median \
         {} ms on Redis directly, {} ms through shoal index (median of 51)",
        fmt_ms(stats::median(&direct).unwrap_or(f64::NAN)),
        fmt_ms(stats::median(&through).unwrap_or(f64::NAN))
    );
    Ok(())
}
