//! `shoal demo`: the seed's three-peer setup, in one process, on loopback TCP, as a private
//! swarm: a swarm authority made for the run admits the index and each peer (a fresh key
//! each), and every connection is mutually authenticated TLS 1.3.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{RngCore, SeedableRng};
use shoal_index::{IndexClient, IndexServer, IndexServerConfig, MemoryStore};
use shoal_peer::{DownloadOutcome, Library, Peer, PeerConfig};
use shoal_proto::content::{DEFAULT_CHUNK_SIZE, hash_reader};
use shoal_proto::tcp::TcpTransport;
use shoal_proto::tls::{Identity, SwarmAuthority, TlsConfig, TlsTransport};
use shoal_proto::{FileKey, PeerAddr};

use crate::error::CliError;
use crate::units;

/// `shoal demo`
#[derive(clap::Args, Debug)]
pub(crate) struct DemoArgs {
    /// Keep the sample folders (DIR/peer1..peer3) instead of using a temporary folder.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
    /// Size of the largest sample file in MiB (the seed's tests went up to 100).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=4096))]
    largest_mib: u64,
}

struct DemoPeer {
    name: String,
    peer: Peer<TlsTransport<TcpTransport>>,
}

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> CliError {
    move |source| CliError::Io { what, source }
}

pub(crate) fn run(args: &DemoArgs) -> Result<(), CliError> {
    let root = match &args.keep {
        Some(dir) => dir.clone(),
        None => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            std::env::temp_dir().join(format!("shoal-demo-{}-{nanos}", std::process::id()))
        }
    };
    let result = run_in(&root, args.largest_mib);
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else if result.is_ok() {
        crate::output::outln!("\nfolders kept in {}", root.display());
    }
    result
}

/// The seed's sample folders: small text files on peer1, mid-size on peer2, a big one on peer3.
fn sample_files(largest_mib: u64) -> [(usize, String, u64); 6] {
    [
        (0, "onekb.txt".into(), 1 << 10),
        (0, "tenkb.txt".into(), 10 << 10),
        (0, "hundredkb.txt".into(), 100 << 10),
        (1, "onemb.bin".into(), 1 << 20),
        (1, "tenmb.bin".into(), (10 << 20).min(largest_mib << 20)),
        (2, format!("{largest_mib}mb.bin"), largest_mib << 20),
    ]
}

fn run_in(root: &Path, largest_mib: u64) -> Result<(), CliError> {
    // The swarm of this run: its authority lives in memory only and admits four nodes.
    let swarm = SwarmAuthority::generate("shoal demo")?;
    let member = |what: &str| -> Result<TlsTransport<TcpTransport>, CliError> {
        let identity = Identity::generate()?;
        let mut config = TlsConfig::new(identity);
        let node = config.identity.node_id();
        config.membership = Some(swarm.admit(&node, Duration::from_secs(3600))?);
        crate::output::outln!("{what:<6} node id {node}");
        Ok(TlsTransport::new(TcpTransport::default(), config)?)
    };
    crate::output::outln!(
        "a private swarm: every node has its own key, admitted by the swarm {:?}; every \
         connection is TLS 1.3, both ends authenticated\n",
        swarm.name()
    );
    let samples = sample_files(largest_mib);
    let mut dirs = Vec::new();
    for n in 1..=3 {
        let dir = root.join(format!("peer{n}"));
        // Only our own subfolders are cleared, never the rest of a --keep folder.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(io_err(format!("cannot clear {}", dir.display())))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(io_err(format!("cannot create {}", dir.display())))?;
        dirs.push(dir);
    }
    for (seed, (owner, name, size)) in samples.iter().enumerate() {
        write_sample(&dirs[*owner].join(name), *size, seed as u64)?;
    }

    let localhost = PeerAddr::new("127.0.0.1:0")?;
    let index_transport = member("index")?;
    let index = IndexServer::new(
        index_transport.clone(),
        MemoryStore::new(),
        IndexServerConfig::default(),
    )
    .spawn(&localhost)?;
    let index_addr = index.addr().clone();
    crate::output::outln!("index listening on {index_addr}");

    let mut peers = Vec::new();
    let mut names_by_addr = HashMap::new();
    let transports = (1..=3)
        .map(|n| member(&format!("peer{n}")))
        .collect::<Result<Vec<_>, _>>()?;
    crate::output::outln!();
    for (n, (dir, transport)) in dirs.iter().zip(transports).enumerate() {
        let library = Library::open(dir, DEFAULT_CHUNK_SIZE)?;
        // Server, registration and heartbeat in one; no folder watcher for a demo.
        let mut config = PeerConfig::new(vec![index_addr.clone()], localhost.clone());
        config.watch = None;
        let peer = Peer::start(transport, library.clone(), config)?;
        let name = format!("peer{}", n + 1);
        crate::output::outln!(
            "{name} listening on {}, sharing {} files ({})",
            peer.advertise(),
            library.files().len(),
            units::bytes(library.total_bytes())
        );
        names_by_addr.insert(peer.advertise().clone(), name.clone());
        peers.push(DemoPeer { name, peer });
    }

    crate::output::outln!(
        "\neach peer fetches every file it lacks (holders are picked at random by the index):\n"
    );
    crate::output::outln!(
        "{:<14} {:>10}  {:<6} {:<6} {:>10} {:>9}  VERIFIED",
        "FILE",
        "SIZE",
        "FROM",
        "TO",
        "TIME",
        "MB/s"
    );
    let mut total_bytes = 0;
    for peer in &peers {
        let mut downloader = peer.peer.downloader();
        for (_, name, _) in &samples {
            // Nobody reads the table any more (`shoal demo | head`): stop, tidily.
            if crate::output::closed() {
                break;
            }
            if peer.peer.library().contains_name(name) {
                continue;
            }
            let DownloadOutcome::Downloaded(report) =
                downloader.fetch(&FileKey::Name(name.clone()))?
            else {
                continue;
            };
            let path = peer.peer.library().dir().join(&report.file.name);
            let verified = rehash_matches(&path, &report.file)?;
            total_bytes += report.bytes;
            crate::output::outln!(
                "{:<14} {:>10}  {:<6} {:<6} {:>10} {:>9}  {}",
                name,
                units::bytes(report.bytes),
                names_by_addr
                    .get(&report.from)
                    .map_or(report.from.as_str(), String::as_str),
                peer.name,
                units::duration(report.elapsed),
                units::mb_per_s(report.bytes, report.elapsed),
                if verified { "yes (blake3)" } else { "NO" }
            );
            if !verified {
                return Err(CliError::Usage(format!(
                    "{name} on {} does not match its id",
                    peer.name
                )));
            }
        }
    }

    crate::output::outln!(
        "\nthe index now lists every copy, each holder by address and node id:\n"
    );
    let hits = IndexClient::new(index_transport, vec![index_addr]).search("", 100)?;
    for hit in hits {
        crate::output::outln!(
            "{:<14} {:>10}  {} holders  {}  nodes {}",
            hit.file.name,
            units::bytes(hit.file.size),
            hit.holders,
            hit.file.id.short(),
            crate::fetch::nodes_column(&hit.nodes)
        );
    }
    crate::output::outln!(
        "\nmoved {} in total, every chunk verified on arrival",
        units::bytes(total_bytes)
    );
    for peer in peers {
        peer.peer.shutdown();
    }
    index.shutdown();
    Ok(())
}

/// Pseudo-random bytes (seeded, so every run shares the same files); text for `.txt`.
fn write_sample(path: &Path, size: u64, seed: u64) -> Result<(), CliError> {
    let what = || format!("cannot write sample file {}", path.display());
    let file = File::create(path).map_err(io_err(what()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    let text = path.extension().is_some_and(|e| e == "txt");
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        if text {
            for (i, byte) in block[..n].iter_mut().enumerate() {
                *byte = if i % 64 == 63 {
                    b'\n'
                } else {
                    b'a' + (rng.next_u32() % 26) as u8
                };
            }
        } else {
            rng.fill_bytes(&mut block[..n]);
        }
        out.write_all(&block[..n]).map_err(io_err(what()))?;
        left -= n as u64;
    }
    out.flush().map_err(io_err(what()))
}

/// Re-hashes a downloaded file from disk, independently of the downloader.
fn rehash_matches(path: &Path, file: &shoal_proto::FileMeta) -> Result<bool, CliError> {
    let what = format!("cannot re-read {}", path.display());
    let mut reader = File::open(path).map_err(io_err(what.clone()))?;
    let (id, _) = hash_reader(&mut reader, file.size, file.chunk_size, &mut Vec::new())
        .map_err(io_err(what))?;
    Ok(id == file.id)
}
