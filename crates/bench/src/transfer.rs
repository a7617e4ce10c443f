//! `shoal bench transfer`: shoal's download engine against the plain ways to move a file over
//! loopback TCP, measured in the same process and run, contenders alternating.
//!
//! Contenders (one 1 GiB file by default, already in the page cache):
//! - a1 raw TCP, file -> socket -> discarded buffer (1 MiB reads and writes on both ends);
//! - a2 raw TCP, file -> socket -> new file;
//! - b  shoal, one holder, to disk;
//! - c  shoal, three holders, to disk;
//! - d  shoal, one holder, verify-only sink (hashes checked, nothing written);
//! - e, f as b and d over TLS 1.3 (shoal's default transport; every other contender is
//!   plaintext), so the price of encryption is read off the same run.
//!
//! The raw baselines use 1 MiB `read`/`write` rather than `sendfile`: measured here, 1 MiB
//! buffers move 3.0 GB/s against sendfile's 2.6 GB/s and std `io::copy`'s 1.7 GB/s.
//! Freed memory goes back to this VM's host after about a second idle and the next big write
//! into fresh pages is several times slower, so right before every timed to-file run a
//! scratch file of the same size is written and deleted, for every contender alike.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Instant;

use rand::{RngCore, SeedableRng};
use shoal_index::{IndexClient, IndexServer, IndexServerConfig, MemoryStore};
use shoal_peer::{
    DownloadOutcome, Downloader, DownloaderConfig, Library, PeerServer, PeerServerConfig,
    ServerHandle,
};
use shoal_proto::content::DEFAULT_CHUNK_SIZE;
use shoal_proto::tcp::TcpTransport;
use shoal_proto::tls::{Identity, TlsConfig, TlsTransport};
use shoal_proto::{FileKey, PeerAddr, Transport};

use crate::error::{BenchError, io_err};
use crate::stats::{self, Spread};

/// Block size of the raw baselines.
const BLOCK: usize = 1 << 20;
const FILE_NAME: &str = "bench-transfer.bin";

/// `shoal bench transfer`
#[derive(clap::Args, Debug, Clone)]
pub struct TransferBenchArgs {
    /// File size in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Runs per contender (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Chunk size the holders hash with, in KiB (a power of two; to compare chunk sizes).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE / 1024)]
    chunk_kib: u32,
    /// Working folder (default: a new folder under the system temp dir, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    RawDiscard,
    RawFile,
    ShoalOne,
    ShoalThree,
    ShoalVerifyOnly,
    TlsOne,
    TlsVerifyOnly,
}

impl Contender {
    const ALL: [Contender; 7] = [
        Contender::RawDiscard,
        Contender::RawFile,
        Contender::ShoalOne,
        Contender::ShoalThree,
        Contender::ShoalVerifyOnly,
        Contender::TlsOne,
        Contender::TlsVerifyOnly,
    ];

    fn label(self) -> &'static str {
        match self {
            Contender::RawDiscard => "a1 raw TCP -> discard",
            Contender::RawFile => "a2 raw TCP -> file",
            Contender::ShoalOne => "b  shoal 1 holder -> file",
            Contender::ShoalThree => "c  shoal 3 holders -> file",
            Contender::ShoalVerifyOnly => "d  shoal 1 holder, verify only",
            Contender::TlsOne => "e  shoal+TLS 1 holder -> file",
            Contender::TlsVerifyOnly => "f  shoal+TLS 1 holder, verify only",
        }
    }

    fn writes_file(self) -> bool {
        matches!(
            self,
            Contender::RawFile | Contender::ShoalOne | Contender::ShoalThree | Contender::TlsOne
        )
    }
}

/// One timed run.
#[derive(Clone, Copy, Debug)]
struct Sample {
    secs: f64,
    cpu_secs: f64,
}

/// Everything the shoal contenders need: an index, three holders of the same file.
struct Swarm {
    index: ServerHandle,
    /// Kept alive for the whole run.
    _holders: Vec<ServerHandle>,
    /// An index that knows only the first holder (contenders b and d).
    solo_index: ServerHandle,
    /// The first holder's folder served again over TLS, with an index of its own (e, f).
    tls_index: ServerHandle,
    _tls_holder: ServerHandle,
    /// The downloading node's TLS transport (its own identity).
    tls_client: TlsTransport<TcpTransport>,
}

pub(crate) fn run(args: &TransferBenchArgs) -> Result<(), BenchError> {
    if args.reps == 0 || args.size_mib == 0 {
        return Err(BenchError::Usage(
            "--reps and --size-mib must be at least 1".into(),
        ));
    }
    shoal_proto::content::validate_chunk_size(args.chunk_kib.saturating_mul(1024))?;
    let (root, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("shoal-bench-transfer-{}", std::process::id())),
            true,
        ),
    };
    let result = run_in(&root, args);
    if temporary {
        let _ = fs::remove_dir_all(&root);
    }
    result
}

fn run_in(root: &Path, args: &TransferBenchArgs) -> Result<(), BenchError> {
    let size = args.size_mib << 20;
    let src_dir = root.join("holder1");
    let out_dir = root.join("out");
    for d in [&src_dir, &out_dir] {
        fs::create_dir_all(d).map_err(io_err(format!("cannot create {}", d.display())))?;
    }
    let source = src_dir.join(FILE_NAME);
    eprintln!("writing a {} MiB source file ...", args.size_mib);
    write_random(&source, size)?;
    // Three holders of the same bytes: hard links, so the page cache holds them once.
    for n in 2..=3 {
        let dir = root.join(format!("holder{n}"));
        fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
        let link = dir.join(FILE_NAME);
        let _ = fs::remove_file(&link);
        fs::hard_link(&source, &link).map_err(io_err(format!("cannot link {}", link.display())))?;
    }
    eprintln!("hashing the holders' folders ...");
    let swarm = start_swarm(root, args.chunk_kib * 1024)?;
    let scratch = root.join("scratch.bin");

    let mut samples: Vec<(Contender, Vec<Sample>)> =
        Contender::ALL.iter().map(|c| (*c, Vec::new())).collect();
    // One untimed warm-up of each, then alternate a1 a2 b c d a1 a2 b c d ...
    for rep in 0..=args.reps {
        for (contender, runs) in &mut samples {
            if contender.writes_file() {
                warm_pages(&scratch, size)?;
            }
            let sample = run_one(*contender, &source, &out_dir, &swarm, size)?;
            if rep > 0 {
                runs.push(sample);
            }
            eprintln!(
                "  rep {rep} {:<32} {:.2} GB/s",
                contender.label(),
                size as f64 / sample.secs / 1e9
            );
        }
    }
    print_table(&samples, size, args);
    drop(swarm);
    Ok(())
}

fn start_swarm(root: &Path, chunk_size: u32) -> Result<Swarm, BenchError> {
    let transport = TcpTransport::default();
    let local = PeerAddr::new("127.0.0.1:0")?;
    let spawn_index = || {
        IndexServer::new(
            transport.clone(),
            MemoryStore::new(),
            IndexServerConfig::default(),
        )
        .spawn(&local)
        .map_err(BenchError::from)
    };
    let index = spawn_index()?;
    let solo_index = spawn_index()?;
    let mut holders = Vec::new();
    let mut first_library = None;
    for n in 1..=3 {
        let dir = root.join(format!("holder{n}"));
        let library = Library::open(&dir, chunk_size)?;
        let server = PeerServer::new(
            transport.clone(),
            library.clone(),
            PeerServerConfig::default(),
        )
        .spawn(&local)?;
        let files = library.files();
        IndexClient::new(transport.clone(), vec![index.addr().clone()])
            .register(server.addr(), &files)?;
        if n == 1 {
            IndexClient::new(transport.clone(), vec![solo_index.addr().clone()])
                .register(server.addr(), &files)?;
            first_library = Some(library);
        }
        holders.push(server);
    }
    let library = first_library.ok_or(BenchError::Panicked("holder setup"))?;
    // One node serves (index and holder), another downloads: each its own key.
    let tls = || -> Result<TlsTransport<TcpTransport>, BenchError> {
        Ok(TlsTransport::new(
            TcpTransport::default(),
            TlsConfig::new(Identity::generate()?),
        )?)
    };
    let tls_server = tls()?;
    let tls_index = IndexServer::new(
        tls_server.clone(),
        MemoryStore::new(),
        IndexServerConfig::default(),
    )
    .spawn(&local)?;
    let tls_holder = PeerServer::new(
        tls_server.clone(),
        library.clone(),
        PeerServerConfig::default(),
    )
    .spawn(&local)?;
    IndexClient::new(tls_server, vec![tls_index.addr().clone()])
        .register(tls_holder.addr(), &library.files())?;
    Ok(Swarm {
        index,
        _holders: holders,
        solo_index,
        tls_index,
        _tls_holder: tls_holder,
        tls_client: tls()?,
    })
}

fn run_one(
    contender: Contender,
    source: &Path,
    out_dir: &Path,
    swarm: &Swarm,
    size: u64,
) -> Result<Sample, BenchError> {
    let target = out_dir.join(FILE_NAME);
    let _ = fs::remove_file(&target);
    let cpu_before = process_cpu_secs();
    let started = Instant::now();
    match contender {
        Contender::RawDiscard => raw_transfer(source, None)?,
        Contender::RawFile => raw_transfer(source, Some(&target))?,
        Contender::ShoalOne | Contender::ShoalThree | Contender::ShoalVerifyOnly => {
            let index = match contender {
                Contender::ShoalThree => swarm.index.addr(),
                _ => swarm.solo_index.addr(),
            };
            let downloader = Downloader::new(
                TcpTransport::default(),
                vec![index.clone()],
                out_dir,
                DownloaderConfig::default(),
            );
            shoal_download(contender, downloader, size)?;
        }
        Contender::TlsOne | Contender::TlsVerifyOnly => {
            let downloader = Downloader::new(
                swarm.tls_client.clone(),
                vec![swarm.tls_index.addr().clone()],
                out_dir,
                DownloaderConfig::default(),
            );
            shoal_download(contender, downloader, size)?;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = process_cpu_secs() - cpu_before;
    let _ = fs::remove_file(&target);
    Ok(Sample { secs, cpu_secs })
}

/// One shoal download of the bench file (to the folder, or verify-only), checked for size.
fn shoal_download<T: Transport>(
    contender: Contender,
    mut downloader: Downloader<T>,
    size: u64,
) -> Result<(), BenchError> {
    let key = FileKey::Name(FILE_NAME.into());
    let bytes = if matches!(
        contender,
        Contender::ShoalVerifyOnly | Contender::TlsVerifyOnly
    ) {
        downloader.verify_only(&key)?.bytes
    } else {
        match downloader.fetch(&key)? {
            DownloadOutcome::Downloaded(report) => report.bytes,
            DownloadOutcome::AlreadyPresent(_) => {
                return Err(BenchError::Contender {
                    contender: contender.label().into(),
                    detail: "the target file was already present".into(),
                });
            }
        }
    };
    if bytes != size {
        return Err(BenchError::Contender {
            contender: contender.label().into(),
            detail: format!("moved {bytes} bytes, expected {size}"),
        });
    }
    Ok(())
}

/// The plain way: one TcpStream, 1 MiB `read_at` + `write_all` on the sending side,
/// 1 MiB `read` + (discard | `write_all` to a new file) on the receiving side.
fn raw_transfer(source: &Path, target: Option<&Path>) -> Result<(), BenchError> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(io_err("cannot listen on 127.0.0.1"))?;
    let addr = listener
        .local_addr()
        .map_err(io_err("cannot read the listening address"))?;
    let source = source.to_path_buf();
    let sender = thread::spawn(move || -> io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        let file = File::open(&source)?;
        let mut buf = vec![0u8; BLOCK];
        let mut offset = 0u64;
        loop {
            let n = file.read_at(&mut buf, offset)?;
            if n == 0 {
                return Ok(());
            }
            socket.write_all(&buf[..n])?;
            offset += n as u64;
        }
    });
    let mut socket =
        TcpStream::connect(addr).map_err(io_err(format!("cannot connect to {addr}")))?;
    let mut out = match target {
        Some(path) => Some(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(io_err(format!("cannot create {}", path.display())))?,
        ),
        None => None,
    };
    let mut buf = vec![0u8; BLOCK];
    loop {
        let n = socket
            .read(&mut buf)
            .map_err(io_err(format!("cannot receive from {addr}")))?;
        if n == 0 {
            break;
        }
        if let (Some(file), Some(path)) = (&mut out, target) {
            file.write_all(&buf[..n])
                .map_err(io_err(format!("cannot write {}", path.display())))?;
        }
    }
    sender
        .join()
        .map_err(|_| BenchError::Panicked("raw TCP sender"))?
        .map_err(io_err("the raw TCP sender failed"))
}

/// Writes and deletes `size` bytes so the next big write finds warm pages (see module docs).
fn warm_pages(scratch: &Path, size: u64) -> Result<(), BenchError> {
    let block = vec![0x5au8; BLOCK];
    let what = || format!("cannot write the scratch file {}", scratch.display());
    let mut file = File::create(scratch).map_err(io_err(what()))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        file.write_all(&block[..n]).map_err(io_err(what()))?;
        left -= n as u64;
    }
    drop(file);
    fs::remove_file(scratch).map_err(io_err(format!("cannot remove {}", scratch.display())))
}

fn write_random(path: &Path, size: u64) -> Result<(), BenchError> {
    if fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    let mut file =
        File::create(path).map_err(io_err(format!("cannot create {}", path.display())))?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut block = vec![0u8; BLOCK];
    let mut left = size;
    while left > 0 {
        let n = left.min(BLOCK as u64) as usize;
        rng.fill_bytes(&mut block[..n]);
        file.write_all(&block[..n])
            .map_err(io_err(format!("cannot write {}", path.display())))?;
        left -= n as u64;
    }
    Ok(())
}

/// User + system CPU time of this process (all threads: both ends of every transfer run
/// here, for every contender alike), from /proc/self/stat in clock ticks of 10 ms.
fn process_cpu_secs() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn print_table(samples: &[(Contender, Vec<Sample>)], size: u64, args: &TransferBenchArgs) {
    let gib = size as f64 / (1u64 << 30) as f64;
    let rate = |c: Contender| -> f64 {
        samples
            .iter()
            .find(|(k, _)| *k == c)
            .and_then(|(_, runs)| {
                let v: Vec<f64> = runs.iter().map(|s| size as f64 / s.secs / 1e9).collect();
                stats::median(&v)
            })
            .unwrap_or(f64::NAN)
    };
    println!(
        "\nshoal bench transfer: {} MiB over loopback TCP, {} KiB chunks, {} runs each (median, \
         min-max), contenders alternating; {} cores\n",
        args.size_mib,
        args.chunk_kib,
        args.reps,
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| contender | GB/s | min-max | CPU s/GiB |");
    println!("|---|---:|---:|---:|");
    for (contender, runs) in samples {
        let rates: Vec<f64> = runs.iter().map(|s| size as f64 / s.secs / 1e9).collect();
        let cpu: Vec<f64> = runs.iter().map(|s| s.cpu_secs / gib).collect();
        let rate = Spread::of(&rates).unwrap_or(Spread::NAN);
        println!(
            "| {} | {:.2} | {:.2}-{:.2} | {:.2} |",
            contender.label(),
            rate.median,
            rate.min,
            rate.max,
            stats::median(&cpu).unwrap_or(f64::NAN)
        );
    }
    let ratio = |a: Contender, b: Contender| rate(a) / rate(b);
    println!(
        "\nb/a2 = {:.2} (target >= 0.9)   c/a2 = {:.2}   c/b = {:.2} (target >= 1)   d/a1 = {:.2} (target >= 0.8)",
        ratio(Contender::ShoalOne, Contender::RawFile),
        ratio(Contender::ShoalThree, Contender::RawFile),
        ratio(Contender::ShoalThree, Contender::ShoalOne),
        ratio(Contender::ShoalVerifyOnly, Contender::RawDiscard),
    );
    println!(
        "TLS: e/b = {:.2} (target >= 0.85)   f/d = {:.2}",
        ratio(Contender::TlsOne, Contender::ShoalOne),
        ratio(Contender::TlsVerifyOnly, Contender::ShoalVerifyOnly),
    );
}
