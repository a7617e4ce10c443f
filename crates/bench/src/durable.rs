//! `shoal bench index --data DIR`: what durability costs the index.
//!
//! 1. Registrations/s with the in-memory store against the durable store (fsync'd log, group
//!    commit), for 1, 16 and 64 clients: real `IndexServer`s on loopback TCP, each client an
//!    `IndexClient` registering one file per request (the worst case for a log: one record
//!    and one acknowledgement per registration). The two stores alternate within each rep,
//!    and the median of the reps is reported.
//! 2. Recovery of an index of 1,000,000 (file, holder) registrations, for two shapes: every
//!    file held by one peer (the worst case for memory: one listing per registration) and
//!    files shared by four peers on average. The data folder (a snapshot plus a log tail) is
//!    built here, then opened by a real `shoal index --data DIR` process: its recovery time
//!    comes from its log line, its memory from its VmRSS (/proc/PID/status) minus that of an
//!    index started on an empty folder. A separate process, because inside this one the
//!    allocator hands memory freed by an earlier measurement to the next one, and an RSS
//!    delta then reads close to zero.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use shoal_index::{
    DurableOptions, DurableStore, IndexClient, IndexServer, IndexServerConfig, MemoryStore, Store,
};
use shoal_proto::tcp::TcpTransport;
use shoal_proto::{FileId, FileMeta, PeerAddr};

use crate::error::{BenchError, io_err};
use crate::stats;

/// Target: durable registrations/s at 64 clients at least this share of in-memory.
const THROUGHPUT_TARGET: f64 = 0.5;
/// Target: recovery time of 1M registrations.
const RECOVERY_TARGET: Duration = Duration::from_secs(3);
/// Target: resident memory per registration.
const BYTES_TARGET: f64 = 200.0;
/// Files per holder in the recovery index.
const FILES_PER_HOLDER: usize = 100;
/// Threads building the recovery index (group commit makes them share fsyncs).
const BUILDERS: usize = 8;
/// One holder in this many registers after the snapshot: the log tail recovery replays.
const LOG_TAIL_SHARE: usize = 100;
/// Bound on the wait for a `shoal index` child to start listening.
const CHILD_WAIT: Duration = Duration::from_secs(300);

/// Arguments of the durable part of `shoal bench index`.
#[derive(clap::Args, Debug, Clone)]
pub struct DurableBenchArgs {
    /// Measure the durable store, keeping its data under DIR (a fresh subfolder per run,
    /// removed afterwards). Put it on the disk the index will use: fsync cost is the point.
    #[arg(long, value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    /// Client counts for the registration throughput.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 64])]
    register_clients: Vec<usize>,
    /// Registrations per cell, split over the clients, one file per request.
    #[arg(long, default_value_t = 20_000)]
    registrations: usize,
    /// Repetitions per cell; the median is reported.
    #[arg(long, default_value_t = 3)]
    register_reps: usize,
    /// (file, holder) registrations in the index whose recovery is timed.
    #[arg(long, default_value_t = 1_000_000)]
    recovery_registrations: usize,
    /// The `shoal` binary whose `index --data` recovery is measured (default: this one).
    #[arg(long, value_name = "PATH", hide = true)]
    shoal_binary: Option<PathBuf>,
}

/// Runs the measurements and prints markdown tables.
pub(crate) fn run(args: &DurableBenchArgs) -> Result<(), BenchError> {
    let Some(data) = &args.data else {
        return Err(BenchError::Usage(
            "the durable benchmark needs --data DIR".into(),
        ));
    };
    if args.register_clients.is_empty() || args.register_clients.contains(&0) {
        return Err(BenchError::Usage(
            "--register-clients needs positive client counts".into(),
        ));
    }
    if args.registrations == 0 || args.register_reps == 0 || args.recovery_registrations == 0 {
        return Err(BenchError::Usage(
            "--registrations, --register-reps and --recovery-registrations must be positive".into(),
        ));
    }
    if cfg!(debug_assertions) {
        eprintln!("note: this is a debug build; numbers mean little (use cargo run --release)");
    }
    fs::create_dir_all(data).map_err(io_err(format!("cannot create {}", data.display())))?;
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "shoal bench index --data {}: {cores} cores, data on {}, one fsync takes {}",
        data.display(),
        filesystem_of(data),
        fsync_latency(data).map_or_else(
            |e| format!("? ({e})"),
            |d| format!("{:.3} ms", d.as_secs_f64() * 1e3)
        )
    );

    let shoal = match &args.shoal_binary {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(io_err("cannot find this program"))?,
    };
    let empty = data.join("recovery-empty");
    let _cleanup = RemoveOnDrop(empty.clone());
    let baseline = run_index_child(&shoal, &empty)?.rss;
    let mut recovery_rows = Vec::new();
    for shape in [Shape::Distinct, Shape::Shared] {
        recovery_rows.push(measure_recovery(
            &shoal,
            data,
            shape,
            args.recovery_registrations,
            baseline,
        )?);
    }

    let mut throughput_rows = Vec::new();
    for &clients in &args.register_clients {
        let mut memory = Vec::new();
        let mut durable = Vec::new();
        for rep in 0..args.register_reps {
            // Alternate which store goes first, so drift favours neither.
            for which in if rep % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            } {
                let dir = data.join(format!("throughput-{clients}-{rep}"));
                let rate = measure_throughput(
                    which.then_some(dir.as_path()),
                    clients,
                    args.registrations,
                    rep,
                )?;
                if which {
                    durable.push(rate);
                } else {
                    memory.push(rate);
                }
            }
        }
        throughput_rows.push((
            clients,
            stats::median(&memory).unwrap_or(f64::NAN),
            stats::median(&durable).unwrap_or(f64::NAN),
        ));
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nregistrations/s (median of {} reps, {} registrations per cell, one file per request, \
         loopback TCP):\n",
        args.register_reps, args.registrations
    );
    let _ = writeln!(
        out,
        "| clients | in memory | durable (fsync, group commit) | durable / memory | target |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---|");
    let largest = args.register_clients.iter().max().copied().unwrap_or(0);
    for &(clients, memory, durable) in &throughput_rows {
        let ratio = durable / memory;
        let target = if clients == largest && clients >= 64 {
            verdict(
                ratio >= THROUGHPUT_TARGET,
                &format!("≥ {THROUGHPUT_TARGET:.2}"),
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "| {clients} | {} | {} | {ratio:.2} | {target} |",
            fmt_rate(memory),
            fmt_rate(durable)
        );
    }
    let _ = writeln!(
        out,
        "\nrecovery (`shoal index --data DIR` on a snapshot + log tail; RSS over an index on an \
         empty folder, {:.1} MiB):\n",
        baseline as f64 / f64::from(1 << 20)
    );
    let _ = writeln!(
        out,
        "| index | registrations | files | holders | on disk | log records replayed | recovery | target | RSS added | per registration | target |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|");
    for row in &recovery_rows {
        let per = row.rss_added as f64 / row.registrations.max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.1} MiB | {} | {:.2} s | {} | {:.1} MiB | {per:.0} B | {} |",
            row.shape.describe(),
            row.registrations,
            row.files,
            row.holders,
            row.disk_bytes as f64 / f64::from(1 << 20),
            row.records,
            row.elapsed.as_secs_f64(),
            verdict(row.elapsed < RECOVERY_TARGET, "< 3 s"),
            row.rss_added as f64 / f64::from(1 << 20),
            verdict(per < BYTES_TARGET, "< 200 B"),
        );
    }
    print!("{out}");
    Ok(())
}

fn verdict(met: bool, target: &str) -> String {
    format!("{target}: {}", if met { "met" } else { "MISSED" })
}

/// How files are spread over holders in the recovery index.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Every file held by exactly one holder: one listing per registration.
    Distinct,
    /// Files drawn from a catalog a quarter the size: four holders per file on average.
    Shared,
}

impl Shape {
    fn describe(self) -> &'static str {
        match self {
            Shape::Distinct => "1 holder per file",
            Shape::Shared => "~4 holders per file",
        }
    }

    /// The `j`th file of holder `h`, out of `total` registrations.
    fn file(self, h: usize, j: usize, total: usize) -> FileMeta {
        let n = match self {
            Shape::Distinct => h * FILES_PER_HOLDER + j,
            Shape::Shared => {
                // Distinct within a holder (j * 2503 < catalog for every j < 100), spread
                // across holders: 2 to 5 holders per file at 1M registrations.
                let catalog = (total / 4).max((FILES_PER_HOLDER - 1) * 2503 + 1);
                (h * 37 + j * 2503) % catalog
            }
        };
        bench_file(&format!("file-{n:07}.bin"), n as u64)
    }
}

fn bench_file(name: &str, seed: u64) -> FileMeta {
    FileMeta {
        name: name.to_string(),
        size: 1 << 20,
        chunk_size: 1 << 20,
        id: id_of(seed),
    }
}

/// A distinct, random-looking 32-byte id per seed (splitmix64), like a real content hash.
fn id_of(seed: u64) -> FileId {
    let mut state = seed;
    let mut id = [0u8; 32];
    for part in id.chunks_mut(8) {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        part.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    FileId(id)
}

fn holder_addr(h: usize) -> Result<PeerAddr, BenchError> {
    PeerAddr::new(format!(
        "10.{}.{}.{}:7000",
        h >> 16 & 255,
        h >> 8 & 255,
        h & 255
    ))
    .map_err(BenchError::from)
}

struct RecoveryRow {
    shape: Shape,
    registrations: usize,
    files: usize,
    holders: usize,
    disk_bytes: u64,
    records: u64,
    elapsed: Duration,
    rss_added: u64,
}

fn measure_recovery(
    shoal: &Path,
    data: &Path,
    shape: Shape,
    total: usize,
    baseline: u64,
) -> Result<RecoveryRow, BenchError> {
    let dir = data.join(format!("recovery-{shape:?}").to_lowercase());
    let _cleanup = RemoveOnDrop(dir.clone());
    let _ = fs::remove_dir_all(&dir);
    eprintln!(
        "building an index of {total} registrations ({}) in {} ...",
        shape.describe(),
        dir.display()
    );
    let (registrations, files, holders) = build_recovery_index(&dir, shape, total)?;
    let disk_bytes = fs::read_dir(&dir)
        .map_err(io_err(format!("cannot list {}", dir.display())))?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let child = run_index_child(shoal, &dir)?;
    let recovered = child.recovered.ok_or_else(|| BenchError::Contender {
        contender: format!("{} index --data {}", shoal.display(), dir.display()),
        detail: format!(
            "logged no recovery line; its log:\n{}",
            child.log.join("\n")
        ),
    })?;
    if recovered.registrations != registrations {
        return Err(BenchError::Contender {
            contender: format!("{} index --data {}", shoal.display(), dir.display()),
            detail: format!(
                "recovered {} registrations, expected {registrations}",
                recovered.registrations
            ),
        });
    }
    Ok(RecoveryRow {
        shape,
        registrations,
        files,
        holders,
        disk_bytes,
        records: recovered.records,
        elapsed: recovered.elapsed,
        rss_added: child.rss.saturating_sub(baseline),
    })
}

/// What a `shoal index` child reported.
struct ChildIndex {
    /// VmRSS once it listened.
    rss: u64,
    recovered: Option<Recovered>,
    /// Its stderr, for error messages.
    log: Vec<String>,
}

/// The numbers of the durable store's "recovered ..." log line.
#[derive(Debug, PartialEq)]
struct Recovered {
    registrations: usize,
    records: u64,
    elapsed: Duration,
}

/// Starts `shoal index --data DIR` on loopback, waits until it listens (recovery done), reads
/// its RSS, and kills it.
fn run_index_child(shoal: &Path, dir: &Path) -> Result<ChildIndex, BenchError> {
    let data = [OsStr::new("--data"), dir.as_os_str()];
    let mut child = crate::child::spawn_index(shoal, data, "info", Stdio::piped())?;
    let stdout = lines_of(child.stdout.take());
    let stderr = lines_of(child.stderr.take());
    let listening = stdout
        .recv_timeout(CHILD_WAIT)
        .map(|line| line.starts_with("listening on "));
    let rss = proc_rss(&format!("/proc/{}/status", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    // The child is gone, so its stderr ends: this collects everything it logged.
    let log: Vec<String> = stderr.iter().collect();
    if listening != Ok(true) {
        return Err(BenchError::NotReady {
            what: format!("{} index --data {}", shoal.display(), dir.display()),
            event: "start listening",
            why: format!("within {} s", CHILD_WAIT.as_secs()),
            log: format!("its standard error:\n{}", log.join("\n")),
        });
    }
    Ok(ChildIndex {
        rss: rss?,
        recovered: log.iter().find_map(|l| parse_recovered(l)),
        log,
    })
}

fn lines_of<R: std::io::Read + Send + 'static>(stream: Option<R>) -> Receiver<String> {
    let (tx, rx) = channel();
    if let Some(stream) = stream {
        thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Parses "... recovered N registrations of H holders from DIR in S s (..., R log records
/// replayed ...)".
fn parse_recovered(line: &str) -> Option<Recovered> {
    let rest = line.split("recovered ").nth(1)?;
    let registrations = rest.split_whitespace().next()?.parse().ok()?;
    let elapsed = rest
        .rsplit(" in ")
        .next()?
        .split(" s")
        .next()?
        .parse::<f64>()
        .ok()?;
    let records = rest
        .split(" log records replayed")
        .next()?
        .rsplit([' ', ','])
        .next()?
        .parse()
        .ok()?;
    Some(Recovered {
        registrations,
        records,
        elapsed: Duration::try_from_secs_f64(elapsed).ok()?,
    })
}

/// Writes the index through a durable store: registrations from several threads, one
/// snapshot, then a log tail. Returns (registrations, distinct files, holders).
fn build_recovery_index(
    dir: &Path,
    shape: Shape,
    total: usize,
) -> Result<(usize, usize, usize), BenchError> {
    let store = DurableStore::open(dir, DurableOptions::default())?;
    let holders = total.div_ceil(FILES_PER_HOLDER);
    // The last holders register after the snapshot: they are the log tail recovery replays.
    let tail_from = holders - holders / LOG_TAIL_SHARE;
    let register_range = |store: &DurableStore, from: usize, to: usize| -> Result<(), BenchError> {
        thread::scope(|s| {
            let workers: Vec<_> = (0..BUILDERS)
                .map(|t| {
                    s.spawn(move || -> Result<(), BenchError> {
                        for h in (from..to).skip(t).step_by(BUILDERS) {
                            let count = FILES_PER_HOLDER.min(total - h * FILES_PER_HOLDER);
                            let files: Vec<FileMeta> =
                                (0..count).map(|j| shape.file(h, j, total)).collect();
                            store.register(&holder_addr(h)?, &files)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            workers.into_iter().try_for_each(|w| {
                w.join()
                    .map_err(|_| BenchError::Panicked("index builder"))?
            })
        })
    };
    register_range(&store, 0, tail_from)?;
    store.snapshot_now()?;
    register_range(&store, tail_from, holders)?;
    let registrations = store.registration_count();
    let files = store.search("", usize::MAX)?.len();
    Ok((registrations, files, holders))
}

/// One cell: `clients` threads register `total` files, one per request, against a fresh
/// server (durable when `dir` is given). Returns registrations/s.
fn measure_throughput(
    dir: Option<&Path>,
    clients: usize,
    total: usize,
    rep: usize,
) -> Result<f64, BenchError> {
    let transport = TcpTransport::default();
    let config = IndexServerConfig {
        max_connections: 4096,
        ..IndexServerConfig::default()
    };
    let listen = PeerAddr::new("127.0.0.1:0")?;
    let _cleanup = dir.map(|d| RemoveOnDrop(d.to_path_buf()));
    let handle = match dir {
        Some(dir) => {
            let _ = fs::remove_dir_all(dir);
            let store = DurableStore::open(dir, DurableOptions::default())?;
            spawn(transport.clone(), store, config, &listen)?
        }
        None => spawn(transport.clone(), MemoryStore::new(), config, &listen)?,
    };
    let per_client = total.div_ceil(clients);
    let start = Arc::new(Barrier::new(clients + 1));
    let workers: Vec<_> = (0..clients)
        .map(|c| {
            let transport = transport.clone();
            let addr = handle.addr().clone();
            let start = Arc::clone(&start);
            thread::Builder::new()
                .stack_size(256 << 10)
                .spawn(move || -> Result<usize, BenchError> {
                    let mut client = IndexClient::new(transport, vec![addr]);
                    // A loopback holder, as the index records the host a registration comes
                    // from: one holder per client.
                    let holder = PeerAddr::new(format!("127.0.0.1:{}", 20_000 + c))?;
                    // Connect before the clock starts: this measures registrations, not
                    // handshakes.
                    let connected = client.local_addr();
                    start.wait();
                    connected?;
                    for n in 0..per_client {
                        let file = bench_file(
                            &format!("r{rep}-c{c}-f{n}.bin"),
                            (c * per_client + n) as u64,
                        );
                        client.register(&holder, std::slice::from_ref(&file))?;
                    }
                    Ok(per_client)
                })
                .map_err(io_err("cannot start a client thread"))
        })
        .collect::<Result<_, _>>()?;
    start.wait();
    let started = Instant::now();
    let mut done = 0;
    for w in workers {
        done += w.join().map_err(|_| BenchError::Panicked("client"))??;
    }
    let elapsed = started.elapsed();
    handle.shutdown();
    Ok(done as f64 / elapsed.as_secs_f64())
}

fn spawn<S: Store>(
    transport: TcpTransport,
    store: S,
    config: IndexServerConfig,
    listen: &PeerAddr,
) -> Result<shoal_index::ServerHandle, BenchError> {
    IndexServer::new(transport, store, config)
        .spawn(listen)
        .map_err(BenchError::from)
}

/// A process's resident memory, from its /proc status file.
fn proc_rss(status_path: &str) -> Result<u64, BenchError> {
    let status = fs::read_to_string(status_path)
        .map_err(io_err(format!("cannot read {status_path} (Linux only)")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| BenchError::Parse {
            command: format!("cat {status_path}"),
            detail: "no VmRSS line".into(),
        })
}

/// The type of the filesystem holding `dir` (longest mount point prefix in /proc/mounts).
fn filesystem_of(dir: &Path) -> String {
    let Ok(dir) = dir.canonicalize() else {
        return "?".into();
    };
    let Ok(mounts) = fs::read_to_string("/proc/mounts") else {
        return "?".into();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (device, point, kind) = (parts.next()?, parts.next()?, parts.next()?);
            dir.starts_with(point)
                .then(|| (point.len(), format!("{kind} ({device})")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "?".into(), |(_, kind)| kind)
}

/// Median time of a small append + `sync_data` in `dir`: what one group commit waits for.
fn fsync_latency(dir: &Path) -> Result<Duration, BenchError> {
    use std::io::Write;
    let path = dir.join(".fsync-probe");
    let _cleanup = RemoveOnDrop(path.clone());
    let what = || format!("cannot write the fsync probe {}", path.display());
    let mut file = fs::File::create(&path).map_err(io_err(what()))?;
    let mut times = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        file.write_all(&[0u8; 100])
            .and_then(|()| file.sync_data())
            .map_err(io_err(what()))?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(Duration::from_secs_f64(
        stats::median(&times).unwrap_or_default(),
    ))
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = if self.0.is_dir() {
            fs::remove_dir_all(&self.0)
        } else {
            fs::remove_file(&self.0)
        };
    }
}

fn fmt_rate(per_second: f64) -> String {
    if per_second >= 1000.0 {
        format!("{:.1}k", per_second / 1000.0)
    } else {
        format!("{per_second:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_give_the_promised_spread() {
        let total = 1_000_000;
        let mut distinct = std::collections::HashSet::new();
        let mut shared = std::collections::HashSet::new();
        for h in 0..total / FILES_PER_HOLDER {
            let mut own = std::collections::HashSet::new();
            for j in 0..FILES_PER_HOLDER {
                distinct.insert(Shape::Distinct.file(h, j, total).id);
                let file = Shape::Shared.file(h, j, total);
                assert!(own.insert(file.id), "holder {h} lists a file twice");
                shared.insert(file.id);
            }
        }
        assert_eq!(distinct.len(), total);
        assert_eq!(shared.len(), total / 4);
    }

    #[test]
    fn the_recovery_line_parses() {
        let line = "2026-01-01T00:00:00Z INFO  shoal_index::durable: index: recovered 1000000 \
                    registrations of 10000 holders from /d in 0.64 s (snapshot 2, 100 log records \
                    replayed, 5 damaged bytes cut)";
        assert_eq!(
            parse_recovered(line),
            Some(Recovered {
                registrations: 1_000_000,
                records: 100,
                elapsed: Duration::from_millis(640),
            })
        );
        assert_eq!(parse_recovered("index started"), None);
        assert!(proc_rss("/proc/self/status").unwrap() > 0);
    }
}
