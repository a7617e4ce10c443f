//! The long-running commands: `shoal index` and `shoal peer`.

use std::path::PathBuf;
use std::time::Duration;

use shoal_index::{IndexServer, IndexServerConfig, MemoryStore};
use shoal_peer::{
    AnnouncerConfig, DownloaderConfig, IndexStatus, Library, OpenOptions, Peer, PeerConfig,
    PeerServerConfig, ScanProgress, WatchConfig,
};
use shoal_proto::PeerAddr;
use shoal_proto::content::DEFAULT_CHUNK_SIZE;
use shoal_status::{IndexPage, PeerPage};

use crate::error::CliError;
use crate::net::{Net, SecurityArgs};
use crate::progress::ScanBar;
use crate::{DEFAULT_INDEX, ensure_dir, parse_index_list};

/// What `shoal index` and `shoal peer` share: a config file, the status page, the log level.
#[derive(clap::Args, Debug)]
pub(crate) struct ServiceArgs {
    /// Read every flag not given on the command line from this TOML file's `[index]` or
    /// `[peer]` table (see `dist/shoal.toml`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Serve a status page, `/api/status` (JSON) and `/metrics` (Prometheus) on this
    /// address (printed as `status page on http://ADDR/`). Off by default.
    #[arg(long, value_name = "ADDR")]
    http: Option<String>,
    /// Log warnings and errors only (not one line per transfer or event).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    security: SecurityArgs,
}

/// `shoal index`
#[derive(clap::Args, Debug)]
pub(crate) struct IndexArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// Address to listen on; port 0 picks a free port (printed as `listening on ADDR`).
    #[arg(long, default_value = DEFAULT_INDEX)]
    listen: String,
    /// Most client connections served at once; the next is refused as busy.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Keep the registry durable in DIR (an fsync'd log plus snapshots; survives kill -9).
    /// An empty or missing DIR is initialised. Without it the registry lives in memory.
    #[arg(long, value_name = "DIR", conflicts_with = "store")]
    data: Option<PathBuf>,
    /// Keep the registry in a shared Redis (or Valkey), `redis://[:PASSWORD@]HOST:PORT[/DB]`:
    /// every index given the same URL and prefix serves the same registry, so they are
    /// interchangeable. How durable it is is Redis's configuration (appendonly, fsync).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Key prefix in Redis, so several registries (swarms) share one Redis: keys are
    /// `{P}:...` (a hash tag: Redis Cluster keeps one registry on one shard).
    #[arg(long, value_name = "P", default_value = shoal_index::DEFAULT_PREFIX, requires = "store")]
    redis_prefix: String,
    /// Seconds a registration lives unless its peer renews it (peers heartbeat well
    /// within this); a peer that vanishes drops out of lookups after at most this long.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    lease: u64,
    /// Seconds a request may take from its first byte to its last (slow senders are
    /// dropped); also the longest silence in the middle of one.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    frame_timeout: u64,
    /// Record holders at the address they announce instead of the address their
    /// registration came from (peers behind NAT or a proxy). Off, nobody can register files
    /// on another machine's behalf or drop another host's registrations.
    #[arg(long)]
    trust_announced_host: bool,
    /// Most files one holder (a peer's address and port) may have registered; a
    /// registration past it is refused. Downloads in progress count apart, likewise.
    #[arg(long, value_name = "N", default_value_t = shoal_index::DEFAULT_MAX_PER_HOLDER)]
    max_files_per_holder: usize,
    /// Most files the holders registered from one host (every port of a machine, or every
    /// peer behind one NAT or proxy) may have registered together.
    #[arg(long, value_name = "N", default_value_t = shoal_index::DEFAULT_MAX_PER_ADDRESS)]
    max_files_per_address: usize,
}

/// `shoal peer`
#[derive(clap::Args, Debug)]
pub(crate) struct PeerArgs {
    #[command(flatten)]
    service: ServiceArgs,
    /// The folder to serve (created if missing); downloads land here too.
    #[arg(long)]
    dir: PathBuf,
    /// Index server(s), comma-separated: the folder is registered with all of them;
    /// downloads ask the first that answers.
    #[arg(long, env = "SHOAL_INDEX", default_value = DEFAULT_INDEX)]
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
    /// Seconds a request may take from its first byte to its last (slow senders are
    /// dropped); also the longest silence in the middle of one.
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    frame_timeout: u64,
    /// The indexes' lease in seconds (their `--lease`): registrations are renewed every
    /// third of it, or of a shorter lease an index tells.
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    lease: u64,
    /// Seconds between full rescans of the folder, which catch any change the watcher
    /// missed (changes are otherwise picked up within about a second).
    #[arg(long, value_name = "SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    rescan: u64,
}

pub(crate) fn run_index(args: &IndexArgs) -> Result<(), CliError> {
    /// Serves `store` until Ctrl-C; `what` describes it in the start line.
    fn serve<S: shoal_index::Store>(
        transport: Net,
        listen: &PeerAddr,
        store: S,
        config: IndexServerConfig,
        what: &str,
        http: Option<&str>,
    ) -> Result<(), CliError> {
        let lease = store.lease().as_secs();
        let (node, swarm) = (
            crate::net::node_id(&transport),
            crate::net::swarm_name(&transport),
        );
        let who = crate::net::describe(node.as_ref(), swarm.as_deref());
        let server = IndexServer::new(transport, store, config);
        let monitor = server.monitor();
        let handle = server.spawn(listen)?;
        announce_listening(handle.addr());
        let _status = http
            .map(|http| {
                let page =
                    IndexPage::new(monitor, handle.addr().to_string()).with_identity(node, swarm);
                crate::status::serve(http, page)
            })
            .transpose()?;
        log::info!(
            "index started on {} ({what}, lease {lease} s; {who})",
            handle.addr()
        );
        wait_for_interrupt()?;
        log::info!("index stopping");
        handle.shutdown();
        Ok(())
    }

    let listen = PeerAddr::new(args.listen.as_str())?;
    let transport = args.service.security.transport()?;
    let config = IndexServerConfig {
        max_connections: args.max_connections,
        frame_timeout: std::time::Duration::from_secs(args.frame_timeout),
        trust_announced_host: args.trust_announced_host,
        max_registrations_per_holder: args.max_files_per_holder,
        max_registrations_per_address: args.max_files_per_address,
        ..IndexServerConfig::default()
    };
    let lease = std::time::Duration::from_secs(args.lease);
    if let Some(url) = &args.store {
        let options = shoal_index::RedisOptions {
            prefix: args.redis_prefix.clone(),
            lease,
            ..shoal_index::RedisOptions::default()
        };
        let store = shoal_index::RedisStore::open(url, options)?;
        let what = format!("shared registry, {}", store.describe());
        return serve(
            transport,
            &listen,
            store,
            config,
            &what,
            args.service.http.as_deref(),
        );
    }
    match &args.data {
        Some(dir) => {
            let options = shoal_index::DurableOptions {
                lease,
                ..shoal_index::DurableOptions::default()
            };
            // Recovery logs its own line (records replayed, damaged tail cut, time).
            let store = shoal_index::DurableStore::open(dir, options)?;
            let what = format!("durable, data in {}", dir.display());
            serve(
                transport,
                &listen,
                store,
                config,
                &what,
                args.service.http.as_deref(),
            )
        }
        None => {
            let store = MemoryStore::new().with_lease(lease);
            let what = "in-memory registry, lost on exit";
            serve(
                transport,
                &listen,
                store,
                config,
                what,
                args.service.http.as_deref(),
            )
        }
    }
}

pub(crate) fn run_peer(args: &PeerArgs) -> Result<(), CliError> {
    ensure_dir(&args.dir)?;
    let index_addrs = parse_index_list(&args.index)?;
    let listen = PeerAddr::new(args.listen.as_str())?;
    let transport = args.service.security.transport()?;

    // Hashes are cached in DIR/.shoal-cache: a restart reads only files that changed.
    let bar = ScanBar::new();
    let show = |p: &ScanProgress<'_>| bar.update(p);
    let options = OpenOptions {
        chunk_size: DEFAULT_CHUNK_SIZE,
        hash_cache: true,
        progress: Some(&show),
    };
    let scanned = Library::open_with(&args.dir, &options);
    bar.finish();
    let (library, report) = scanned?;
    log::info!(
        "scanned {}: {} files, {} in {:.2} s ({} hashed, {} unchanged since the last run)",
        args.dir.display(),
        report.files,
        crate::units::bytes(library.total_bytes()),
        report.elapsed.as_secs_f64(),
        report.hashed,
        report.cached
    );

    let mut config = PeerConfig::new(index_addrs.clone(), listen);
    config.advertise = args.advertise.as_deref().map(PeerAddr::new).transpose()?;
    config.server = PeerServerConfig {
        max_connections: args.max_connections,
        max_uploads: args.max_uploads.max(1),
        frame_timeout: std::time::Duration::from_secs(args.frame_timeout),
        ..PeerServerConfig::default()
    };
    config.downloader = DownloaderConfig {
        max_sources: args.max_sources.max(1),
        ..DownloaderConfig::default()
    };
    config.announcer = AnnouncerConfig {
        lease: Duration::from_secs(args.lease),
        ..AnnouncerConfig::default()
    };
    config.watch = Some(WatchConfig {
        rescan_interval: Duration::from_secs(args.rescan),
        ..WatchConfig::default()
    });
    let heartbeat = config.announcer.heartbeat_interval();
    // Server, then registration with every index (one that does not answer, even the only
    // one, is retried at each heartbeat while the peer serves), then the folder watcher.
    let (node, swarm) = (
        crate::net::node_id(&transport),
        crate::net::swarm_name(&transport),
    );
    log::info!("{}", crate::net::describe(node.as_ref(), swarm.as_deref()));
    let peer = Peer::start(transport, library, config)?;
    // An index may have told a shorter lease than --lease.
    let heartbeat = peer.heartbeat_interval().unwrap_or(heartbeat);
    if let Some(addr) = peer.listen_addr() {
        announce_listening(addr);
    }
    let _status = match (&args.service.http, peer.listen_addr()) {
        (Some(http), Some(listen)) => {
            let page = PeerPage::new(peer.monitor(), listen.to_string()).with_identity(node, swarm);
            Some(crate::status::serve(http, page)?)
        }
        _ => None,
    };
    let advertise = peer.advertise().clone();
    let accepted: Vec<String> = peer
        .index_status()
        .into_iter()
        .filter(|(_, status)| matches!(status, IndexStatus::Registered { .. }))
        .map(|(addr, _)| addr.to_string())
        .collect();
    if accepted.is_empty() {
        log::warn!(
            "no index answered yet: serving as {advertise} anyway and retrying all {} every {} s",
            index_addrs.len(),
            heartbeat.as_secs_f64()
        );
    } else {
        log::info!(
            "registered {} files with {} of {} indexes ({}) as {advertise}; heartbeat every {} s, \
             watching the folder; downloads are shared while they run",
            report.files,
            accepted.len(),
            index_addrs.len(),
            accepted.join(", "),
            heartbeat.as_secs_f64()
        );
    }

    let console = !args.no_console;
    for line in crate::console::interrupted_report(
        &shoal_peer::interrupted_downloads(&args.dir),
        false,
        console,
    ) {
        log::warn!("{line}");
    }
    if console {
        crate::console::spawn(peer.downloader(), &args.dir)?;
    }

    wait_for_interrupt()?;
    let running: Vec<shoal_peer::Interrupted> = peer
        .library()
        .activity()
        .downloads()
        .into_iter()
        .filter_map(|d| {
            Some(shoal_peer::Interrupted {
                id: d.id.parse().ok()?,
                name: d.name,
                size: d.size,
                verified_bytes: d.done,
            })
        })
        .collect();
    for line in crate::console::interrupted_report(&running, true, console) {
        log::warn!("{line}");
    }
    log::info!(
        "peer stopping: unregistering {advertise} from every index ({} served to others)",
        crate::units::bytes(peer.stats().bytes_served())
    );
    peer.shutdown();
    Ok(())
}

/// The line scripts and tests wait for.
pub(crate) fn announce_listening(addr: &PeerAddr) {
    crate::output::outln!("listening on {addr}");
}

/// Blocks until SIGINT (Ctrl-C) or SIGTERM.
pub(crate) fn wait_for_interrupt() -> Result<(), CliError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|source| CliError::Io {
            what: "cannot install the Ctrl-C handler".into(),
            source,
        })?;
    let _ = signals.forever().next();
    Ok(())
}

impl IndexArgs {
    /// `--quiet`.
    pub(crate) fn quiet(&self) -> bool {
        self.service.quiet
    }
}

impl PeerArgs {
    /// `--quiet`.
    pub(crate) fn quiet(&self) -> bool {
        self.service.quiet
    }
}
