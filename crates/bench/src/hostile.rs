//! `shoal bench hostile`: what strangers' bytes cost a shoal server.
//!
//! 1. Garbage in: how many random frames per second one core's decoder rejects (and how many
//!    it happens to accept), for every message type of both protocols.
//! 2. Idle connections: a real `shoal index` child process holds N connections that
//!    completed the handshake and then say nothing; its CPU use over a quiet period and its
//!    memory per held connection, read from /proc. The index must still answer a search
//!    while it holds them.

use std::io::{BufRead, BufReader, Cursor};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use shoal_index::IndexClient;
use shoal_proto::PeerAddr;
use shoal_proto::codec::{self, Service};
use shoal_proto::message::{IndexRequest, IndexResponse, PeerRequest, PeerResponse};
use shoal_proto::tcp::TcpTransport;

use crate::error::{BenchError, io_err};

/// `shoal bench hostile`
#[derive(clap::Args, Debug, Clone)]
pub struct HostileBenchArgs {
    /// Idle connections the index holds.
    #[arg(long, default_value_t = 2000)]
    connections: usize,
    /// Seconds of quiet over which the index's CPU use is measured.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Seconds each decoder is fed garbage.
    #[arg(long, default_value_t = 2)]
    decode_secs: u64,
}

pub(crate) fn run(args: &HostileBenchArgs) -> Result<(), BenchError> {
    println!(
        "shoal bench hostile: one core per decoder, {} held connections\n",
        args.connections
    );
    decoder_table(Duration::from_secs(args.decode_secs.max(1)));
    idle_connections(args.connections, Duration::from_secs(args.idle_secs.max(1)))
}

/// Random frames: a valid length prefix (so the body is really decoded) and random bodies of
/// 1..=512 bytes, seeded so every run feeds the same garbage.
fn garbage_frames() -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    (0..4096)
        .map(|_| {
            let len = 1 + (rng.next_u32() % 512) as usize;
            let mut frame = (len as u32).to_be_bytes().to_vec();
            let mut body = vec![0u8; len];
            rng.fill_bytes(&mut body);
            frame.extend_from_slice(&body);
            frame
        })
        .collect()
}

fn decode_rate<M: serde::de::DeserializeOwned>(frames: &[Vec<u8>], budget: Duration) -> (f64, f64) {
    let mut scratch = Vec::new();
    let (mut rejected, mut accepted) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < budget {
        for frame in frames {
            match codec::read_frame::<_, M>(&mut Cursor::new(frame), 64 << 10, &mut scratch) {
                Ok(_) => accepted += 1,
                Err(_) => rejected += 1,
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    (
        rejected as f64 / secs,
        accepted as f64 / (rejected + accepted).max(1) as f64,
    )
}

fn decoder_table(budget: Duration) {
    let frames = garbage_frames();
    println!("| decoder | garbage frames rejected/s (one core) | share that decoded anyway |");
    println!("|---|---:|---:|");
    let rows: [(&str, (f64, f64)); 4] = [
        ("IndexRequest", decode_rate::<IndexRequest>(&frames, budget)),
        (
            "IndexResponse",
            decode_rate::<IndexResponse>(&frames, budget),
        ),
        ("PeerRequest", decode_rate::<PeerRequest>(&frames, budget)),
        ("PeerResponse", decode_rate::<PeerResponse>(&frames, budget)),
    ];
    for (name, (rate, accepted)) in rows {
        println!("| {name} | {:.2}M | {:.2}% |", rate / 1e6, accepted * 100.0);
    }
    println!();
}

/// Kills the child index when the benchmark ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// (user + system CPU seconds, resident KiB) of a process, from /proc.
fn process_usage(pid: u32) -> Result<(f64, u64), BenchError> {
    let read = |path: String| {
        std::fs::read_to_string(&path).map_err(io_err(format!("cannot read {path} (Linux only)")))
    };
    let stat = read(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError::Parse {
            command: format!("cat /proc/{pid}/stat"),
            detail: "no `)` after the command name".into(),
        })?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let status = read(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok(((ticks(11) + ticks(12)) / 100.0, rss))
}

fn idle_connections(count: usize, quiet: Duration) -> Result<(), BenchError> {
    let exe = std::env::current_exe().map_err(io_err("cannot find this program"))?;
    let mut child = crate::child::spawn_index(
        &exe,
        ["--max-connections", "100000"],
        "warn",
        Stdio::inherit(),
    )?;
    let stdout = child.stdout.take().ok_or_else(|| BenchError::NotReady {
        what: "the index".into(),
        event: "give its standard output",
        why: "no pipe".into(),
        log: "standard error".into(),
    })?;
    let guard = ChildGuard(child);
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .map_err(io_err("cannot read the index's output"))?;
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| BenchError::Parse {
            command: format!("{} index", exe.display()),
            detail: format!("{first:?} is not `listening on ADDR`"),
        })?
        .to_string();
    let pid = guard.0.id();
    let (_, rss_before) = process_usage(pid)?;

    let mut held = Vec::with_capacity(count);
    for n in 0..count {
        let mut stream = TcpStream::connect(&addr)
            .map_err(io_err(format!("connection {n} to the index at {addr}")))?;
        codec::client_handshake(&mut stream, Service::Index).map_err(|e| {
            BenchError::Contender {
                contender: "shoal index".into(),
                detail: format!("handshake {n}: {e}"),
            }
        })?;
        held.push(stream);
    }
    // Let the server settle after the burst, then measure a quiet stretch.
    std::thread::sleep(Duration::from_secs(1));
    let (cpu_start, rss_held) = process_usage(pid)?;
    std::thread::sleep(quiet);
    let (cpu_end, _) = process_usage(pid)?;

    let peer = PeerAddr::new(addr.as_str())?;
    let answer = IndexClient::new(TcpTransport::default(), vec![peer]).search("", 10);
    let cpu_percent = (cpu_end - cpu_start) / quiet.as_secs_f64() * 100.0;
    let per_conn = (rss_held.saturating_sub(rss_before)) as f64 * 1024.0 / count as f64;
    println!(
        "| held idle connections | index CPU over {} s | RSS before | RSS holding them | per connection | still answers |",
        quiet.as_secs()
    );
    println!("|---:|---:|---:|---:|---:|---|");
    println!(
        "| {count} | {cpu_percent:.2}% | {} KiB | {} KiB | {:.1} KiB | {} |",
        rss_before,
        rss_held,
        per_conn / 1024.0,
        match answer {
            Ok(_) => "yes".to_string(),
            Err(e) => format!("no: {e}"),
        }
    );
    drop(held);
    Ok(())
}
