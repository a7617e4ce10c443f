//! The long-running commands: `shoal index` and `shoal peer`.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;

use shoal_index::{IndexClient, IndexServer, IndexServerConfig, MemoryStore};
use shoal_peer::{Downloader, DownloaderConfig, Library, PeerServer, PeerServerConfig};
use shoal_proto::content::DEFAULT_CHUNK_SIZE;
use shoal_proto::tcp::TcpTransport;
use shoal_proto::{FileKey, PeerAddr};

use crate::error::CliError;
use crate::fetch::describe_outcome;
use crate::progress::DownloadBar;
use crate::{DEFAULT_INDEX, ensure_dir, parse_index_list};

/// `shoal index`
#[derive(clap::Args, Debug)]
pub(crate) struct IndexArgs {
    /// Address to listen on; port 0 picks a free port (printed as `listening on ADDR`).
    #[arg(long, default_value = DEFAULT_INDEX)]
    listen: String,
    /// Most client connections served at once; the next is refused as busy.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
}

/// `shoal peer`
#[derive(clap::Args, Debug)]
pub(crate) struct PeerArgs {
    /// The folder to serve (created if missing); downloads land here too.
    #[arg(long)]
    dir: PathBuf,
    /// Index server(s), comma-separated; the first that answers is used.
    #[arg(long, default_value = DEFAULT_INDEX)]
    index: String,
    /// Address to serve other peers on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Address other peers should use to reach this one. Default: the listen address, or,
    /// when listening on 0.0.0.0, this machine's address as the index sees it.
    #[arg(long)]
    advertise: Option<String>,
    /// Do not read file names from standard input; just serve.
    #[arg(long)]
    no_console: bool,
    /// Most peers connected at once; the next is refused as busy.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Most transfers served at once; other requests get a busy reply and go elsewhere.
    #[arg(long, default_value_t = 16)]
    max_uploads: usize,
    /// Holders a console download pulls from at once.
    #[arg(long, default_value_t = 8)]
    max_sources: usize,
}

pub(crate) fn run_index(args: &IndexArgs) -> Result<(), CliError> {
    let listen = PeerAddr::new(args.listen.as_str())?;
    let config = IndexServerConfig {
        max_connections: args.max_connections,
        ..IndexServerConfig::default()
    };
    let server = IndexServer::new(TcpTransport::default(), MemoryStore::new(), config);
    let handle = server.spawn(&listen)?;
    announce_listening(handle.addr());
    log::info!("index started on {} (in-memory registry)", handle.addr());
    wait_for_interrupt()?;
    log::info!("index stopping");
    handle.shutdown();
    Ok(())
}

pub(crate) fn run_peer(args: &PeerArgs) -> Result<(), CliError> {
    ensure_dir(&args.dir)?;
    let index_addrs = parse_index_list(&args.index)?;
    let listen = PeerAddr::new(args.listen.as_str())?;
    let transport = TcpTransport::default();

    let started = std::time::Instant::now();
    let library = Library::open(&args.dir, DEFAULT_CHUNK_SIZE)?;
    log::info!(
        "scanned {}: {} files, {} in {:.2} s",
        args.dir.display(),
        library.files().len(),
        crate::units::bytes(library.total_bytes()),
        started.elapsed().as_secs_f64()
    );

    let config = PeerServerConfig {
        max_connections: args.max_connections,
        max_uploads: args.max_uploads.max(1),
        ..PeerServerConfig::default()
    };
    let handle = PeerServer::new(transport.clone(), library.clone(), config).spawn(&listen)?;

    let mut index = IndexClient::new(transport.clone(), index_addrs.clone());
    let advertise = match &args.advertise {
        Some(addr) => PeerAddr::new(addr.as_str())?,
        None => advertised_addr(handle.addr(), &mut index)?,
    };
    let files = library.files();
    let added = index.register(&advertise, &files)?;
    announce_listening(handle.addr());
    log::info!(
        "registered {} files ({added} new) with index {} as {advertise}",
        files.len(),
        index
            .connected_index()
            .map_or_else(|| "?".to_string(), ToString::to_string)
    );

    if !args.no_console {
        let downloader = Downloader::for_peer(
            transport,
            index_addrs,
            library,
            advertise.clone(),
            DownloaderConfig {
                max_sources: args.max_sources.max(1),
                ..DownloaderConfig::default()
            },
        );
        thread::Builder::new()
            .name("console".into())
            .spawn(move || run_console(downloader))
            .map_err(|source| CliError::Io {
                what: "cannot start the console".into(),
                source,
            })?;
    }

    wait_for_interrupt()?;
    log::info!("peer stopping: unregistering {advertise}");
    // A clean stop tells the index at once, so nobody is sent to a peer that is gone.
    if let Err(e) = index.unregister(&advertise, &[]) {
        log::warn!("could not unregister from the index: {e}");
    }
    handle.shutdown();
    Ok(())
}

/// Reads file names from stdin, one per line, and downloads each; one result line each.
fn run_console(mut downloader: Downloader<TcpTransport>) {
    let bar = DownloadBar::attach(&mut downloader);
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let input = line.trim();
        if input.is_empty() {
            continue;
        }
        bar.start();
        let result = FileKey::parse(input)
            .map_err(CliError::from)
            .and_then(|key| downloader.fetch(&key).map_err(CliError::from));
        bar.finish();
        let text = match result {
            Ok(outcome) => describe_outcome(&outcome),
            Err(e) => format!("error   {input}: {e}"),
        };
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
    log::info!("console closed (end of input); still serving until interrupted");
}

/// What other peers should dial: the listen address, unless it is a wildcard address, in
/// which case the host the index sees us as, with our listening port.
fn advertised_addr(
    listen: &PeerAddr,
    index: &mut IndexClient<TcpTransport>,
) -> Result<PeerAddr, CliError> {
    let Ok(socket) = listen.as_str().parse::<SocketAddr>() else {
        return Ok(listen.clone());
    };
    if !socket.ip().is_unspecified() {
        return Ok(listen.clone());
    }
    let seen_as = index.local_addr()?;
    let ip = seen_as
        .as_str()
        .parse::<SocketAddr>()
        .map(|s| s.ip())
        .map_err(|_| {
            CliError::Usage(format!(
                "cannot tell this machine's address from {seen_as}; pass --advertise"
            ))
        })?;
    Ok(PeerAddr::new(
        SocketAddr::new(ip, socket.port()).to_string(),
    )?)
}

/// The line scripts and tests wait for.
fn announce_listening(addr: &PeerAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening on {addr}");
    let _ = out.flush();
}

/// Blocks until SIGINT (Ctrl-C) or SIGTERM.
fn wait_for_interrupt() -> Result<(), CliError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|source| CliError::Io {
            what: "cannot install the Ctrl-C handler".into(),
            source,
        })?;
    let _ = signals.forever().next();
    Ok(())
}
