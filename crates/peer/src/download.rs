//! The downloader: index lookup, a verified manifest, then every holder at once through the
//! swarm engine into a resumable part file, then an atomic, non-clobbering move into place.

use std::fs;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use shoal_index::IndexClient;
use shoal_proto::codec::{self, Service};
use shoal_proto::deadline::FrameDeadline;
use shoal_proto::message::{Manifest, PeerRequest, PeerResponse, node_of};
use shoal_proto::{
    Connection, FileKey, FileMeta, NodeId, PeerAddr, ProtoError, Transport, content, validate_name,
};

use crate::clock;
use crate::error::io_text;
use crate::library::hash_file;
use crate::part::{PartFile, check_space};
use crate::pieces::PickerConfig;
use crate::swarm::{self, ChunkSink, DropReason, SourceSpec, SwarmConfig, check_node};
use crate::{Library, PeerError, SharedFile};

/// A manifest may always take this long, however small.
const MANIFEST_FLOOR: Duration = Duration::from_secs(5);

/// A sharing download renews its partial registration this often (a third of the default
/// lease, as the announcer's heartbeat).
const PARTIAL_RENEW: Duration = Duration::from_secs(20);

/// How a [`Downloader`] runs.
#[derive(Clone, Debug)]
pub struct DownloaderConfig {
    /// Longest wait for progress on any connection; a holder silent for longer is dropped
    /// and its chunks go to the others (default 30 s).
    pub io_timeout: Duration,
    /// Largest frame accepted from a holder (manifests are the big ones).
    pub response_limit: u32,
    /// Seeds the random order of holders; `None` seeds from the OS. Tests set it.
    pub seed: Option<u64>,
    /// Holders fetched from at once (default 8).
    pub max_sources: usize,
    /// Bytes asked for per request (rounded to whole chunks; default 4 MiB). Three requests
    /// are kept in flight per holder. A sharing download asks one chunk at a time, two in
    /// flight, so the chunks spread over the crowd instead of queueing at one holder.
    pub request_bytes: u64,
    /// While a download runs, ask the index for new sources this often (default 1 s): a
    /// crowd keeps arriving.
    pub refresh: Duration,
    /// Serve the verified chunks of a download while it runs and tell the index (a partial
    /// holder; default on). Needs a library and an address ([`Downloader::for_peer`]).
    pub share: bool,
    /// Slowest useful holder, in bytes per second (default 16 KiB/s): a chunk that arrives
    /// slower loses that holder its work, and a manifest must arrive at this rate too.
    /// Independently, a holder that stops while the others deliver is dropped at once.
    pub min_rate: u64,
    /// Longest a whole download may take (default: none). Past it, the download stops with
    /// what it has verified kept for a resume, and the error names the holders still busy.
    pub deadline: Option<Duration>,
}

impl Default for DownloaderConfig {
    fn default() -> Self {
        DownloaderConfig {
            io_timeout: Duration::from_secs(30),
            response_limit: codec::DEFAULT_RESPONSE_LIMIT,
            seed: None,
            max_sources: 8,
            request_bytes: 4 << 20,
            refresh: Duration::from_secs(1),
            share: true,
            min_rate: 16 << 10,
            deadline: None,
        }
    }
}

/// What [`Downloader::fetch`] did.
#[derive(Clone, Debug)]
pub enum DownloadOutcome {
    /// The folder already holds the file; nothing was transferred.
    AlreadyPresent(FileMeta),
    /// The file was downloaded and verified.
    Downloaded(DownloadReport),
}

/// What one holder did for a download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderReport {
    /// The holder.
    pub holder: PeerAddr,
    /// Verified bytes it contributed.
    pub bytes: u64,
    /// Chunk requests sent to it.
    pub requests: u32,
    /// Whether it was still downloading the file (a partial holder) when first asked.
    pub partial: bool,
    /// The node id the index gave for it (checked against the one it presented, where the
    /// transport proves ids).
    pub node: Option<NodeId>,
    /// Why it was dropped before the end, if it was.
    pub dropped: Option<DropReason>,
    /// The chunk it sent that failed verification, if it did.
    pub corrupt_chunk: Option<u32>,
}

/// A completed download.
#[derive(Clone, Debug)]
pub struct DownloadReport {
    /// The file (with the chunk size of the manifest used).
    pub file: FileMeta,
    /// The holder that sent the most bytes.
    pub from: PeerAddr,
    /// Where it is now (`None` for [`Downloader::verify_only`]).
    pub path: Option<PathBuf>,
    /// Bytes transferred by this call (the file size, minus what a resume already had).
    pub bytes: u64,
    /// Bytes a previous, interrupted run had already verified.
    pub resumed_bytes: u64,
    /// Time from the call until the file was in place.
    pub elapsed: Duration,
    /// Whether the new copy was registered with the index.
    pub registered: bool,
    /// Bytes of this file served to other peers while it downloaded (a sharing download).
    pub uploaded: u64,
    /// Every holder used, with its share and why it stopped early, if it did.
    pub holders: Vec<HolderReport>,
}

/// Where a download stands, for progress displays.
#[derive(Clone, Debug)]
pub struct Progress {
    /// The file.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Verified bytes so far, resumed ones included.
    pub done: u64,
    /// Holders still sending.
    pub active_sources: usize,
}

/// A progress callback (called from download threads).
pub type ProgressCallback = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Fetches files: asks the index for every holder, takes a manifest from one and checks it
/// against the file id, pulls chunks from up to `max_sources` holders at once, verifies each
/// chunk, and only then moves the file into place. Nothing ever overwrites a file already in
/// the folder. An interrupted download resumes where it stopped.
pub struct Downloader<T: Transport> {
    transport: T,
    index: IndexClient<T>,
    dir: PathBuf,
    library: Option<Library>,
    advertise: Option<PeerAddr>,
    config: DownloaderConfig,
    rng: StdRng,
    progress: Option<ProgressCallback>,
}

/// Where the verified bytes go.
enum Target {
    /// `dir/.NAME.shoal-part`, then `dir/NAME`.
    Folder,
    /// Nowhere: hashes are checked and the bytes dropped (benchmarks, integrity checks).
    VerifyOnly,
}

impl<T: Transport> Downloader<T> {
    /// A downloader into `dir`, using the index servers at `index_addrs`.
    pub fn new(
        transport: T,
        index_addrs: Vec<PeerAddr>,
        dir: &Path,
        config: DownloaderConfig,
    ) -> Self {
        let index = IndexClient::new(transport.clone(), index_addrs);
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Downloader {
            transport,
            index,
            dir: dir.to_path_buf(),
            library: None,
            advertise: None,
            config,
            rng,
            progress: None,
        }
    }

    /// A peer's downloader: files go into `library`'s folder and are added to `library`, and
    /// each new copy is registered with the index as held by `advertise`.
    pub fn for_peer(
        transport: T,
        index_addrs: Vec<PeerAddr>,
        library: Library,
        advertise: PeerAddr,
        config: DownloaderConfig,
    ) -> Self {
        let mut downloader = Downloader::new(transport, index_addrs, library.dir(), config);
        downloader.library = Some(library);
        downloader.advertise = Some(advertise);
        downloader
    }

    /// Calls `callback` as verified bytes arrive (from download threads).
    pub fn set_progress(&mut self, callback: ProgressCallback) {
        self.progress = Some(callback);
    }

    /// The index client (for searches and registrations on the same connection).
    pub fn index(&mut self) -> &mut IndexClient<T> {
        &mut self.index
    }

    /// Downloads the file named by `key` into the folder, unless it is already there.
    pub fn fetch(&mut self, key: &FileKey) -> Result<DownloadOutcome, PeerError> {
        let started = Instant::now();
        key.validate().map_err(PeerError::BadName)?;
        match key {
            FileKey::Name(name) => {
                refuse_hidden(name)?;
                if let Some(present) = self.present(name)? {
                    // Same name, but the same content? The index says which content the name
                    // stands for; if it cannot say (unreachable, or it does not know the
                    // name), what is here stands.
                    return match self.index.sources(key) {
                        Ok(sources) if sources.file.id != present.id => {
                            Err(PeerError::DifferentContent {
                                path: self.dir.join(name),
                                here: present.id,
                                listed: sources.file.id,
                            })
                        }
                        _ => Ok(DownloadOutcome::AlreadyPresent(present)),
                    };
                }
            }
            FileKey::Id(_) => {
                if let Some(file) = self.library.as_ref().and_then(|l| l.get(key)) {
                    return Ok(DownloadOutcome::AlreadyPresent(file.meta));
                }
            }
        }
        let (meta, holders) = self.lookup(key)?;
        if let FileKey::Id(_) = key
            && let Some(present) = self.present(&meta.name)?
        {
            if present.id == meta.id {
                return Ok(DownloadOutcome::AlreadyPresent(present));
            }
            return Err(PeerError::AlreadyExists {
                path: self.dir.join(&meta.name),
            });
        }
        let report = self.download(&meta, holders, Target::Folder, started)?;
        Ok(DownloadOutcome::Downloaded(report))
    }

    /// Fetches and verifies every chunk of the file without storing it anywhere: proves the
    /// holders serve the file intact, and measures the engine without the disk.
    pub fn verify_only(&mut self, key: &FileKey) -> Result<DownloadReport, PeerError> {
        let started = Instant::now();
        key.validate().map_err(PeerError::BadName)?;
        let (meta, holders) = self.lookup(key)?;
        self.download(&meta, holders, Target::VerifyOnly, started)
    }

    /// Asks the index for every complete and partial holder, checks its answer, shuffles
    /// each kind (complete holders first).
    fn lookup(&mut self, key: &FileKey) -> Result<(FileMeta, Vec<SourceSpec>), PeerError> {
        let sources = self.index.sources(key)?;
        check_index_answer(key, &sources.file)?;
        let meta = sources.file.clone();
        let holders = source_specs(sources, self.advertise.as_ref(), &mut self.rng);
        if holders.is_empty() {
            return Err(PeerError::NotFound {
                key: key.to_string(),
            });
        }
        Ok((meta, holders))
    }

    /// The file called `name` if the folder already holds one: the library's entry, or a
    /// regular file on disk (hashed to report its id). Anything else at that path is an error.
    fn present(&self, name: &str) -> Result<Option<FileMeta>, PeerError> {
        if let Some(file) = self
            .library
            .as_ref()
            .and_then(|l| l.get(&FileKey::Name(name.to_string())))
        {
            return Ok(Some(file.meta));
        }
        let path = self.dir.join(name);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PeerError::io("inspect", path, e)),
            Ok(m) if m.file_type().is_file() => {
                let file = hash_file(&path, name, content::DEFAULT_CHUNK_SIZE, &mut Vec::new())
                    .map_err(|e| PeerError::io("read", &path, e))?;
                Ok(Some(file.meta))
            }
            Ok(_) => Err(PeerError::AlreadyExists { path }),
        }
    }

    /// Manifest, swarm, placement, registration.
    fn download(
        &mut self,
        meta: &FileMeta,
        holders: Vec<SourceSpec>,
        target: Target,
        started: Instant,
    ) -> Result<DownloadReport, PeerError> {
        let (manifest, sources, mut failures) = self.fetch_manifest(meta, holders)?;
        let chunk_size = manifest.file.chunk_size;
        let total = manifest.chunk_hashes.len() as u32;
        if let Target::Folder = target {
            check_space(&self.dir, &manifest)?;
        }

        let mut part = match target {
            Target::Folder => Some(PartFile::open(&self.dir, &manifest, clock::system())?),
            Target::VerifyOnly => None,
        };
        let missing: Vec<u32> = match &part {
            Some(part) => part.missing(),
            None => (0..total).collect(),
        };
        let missing_bytes = bytes_of(&manifest.file, &missing);
        let resumed_bytes = meta.size - missing_bytes;
        if resumed_bytes > 0 {
            log::info!(
                "resuming {}: {resumed_bytes} of {} bytes already verified",
                meta.name,
                meta.size
            );
        }
        // A sharing download serves what it has verified from the start, and says so.
        let share = match (&mut part, &self.library, &self.advertise) {
            (Some(part), Some(library), Some(advertise)) if self.config.share => {
                let share = part.share(&manifest, &missing)?;
                library.share_partial(Arc::clone(&share));
                if let Err(e) = self
                    .index
                    .register_partial(advertise, std::slice::from_ref(&manifest.file))
                {
                    log::warn!(
                        "cannot tell the index that {} is downloading here: {e}",
                        meta.name
                    );
                }
                Some(share)
            }
            _ => None,
        };
        // On the peer's board (status page, metrics) while it runs.
        let ticket = self.library.as_ref().map(|library| {
            library.activity().download_started(
                &manifest.file,
                resumed_bytes,
                sources.iter().map(|s| s.addr.clone()).collect(),
            )
        });
        let swarming = share.is_some() || sources.iter().any(|s| !s.complete);
        let config = SwarmConfig {
            io_timeout: self.config.io_timeout,
            response_limit: self.config.response_limit,
            batch_chunks: if swarming {
                1
            } else {
                u32::try_from(self.config.request_bytes / u64::from(chunk_size))
                    .unwrap_or(u32::MAX)
                    .max(1)
            },
            pipeline: if swarming { 2 } else { 3 },
            refresh: Some(self.config.refresh),
            max_sources: self.config.max_sources.max(1),
            availability_wait: Duration::from_millis(500),
            seeder_aware: swarming,
            min_rate: self.config.min_rate,
            deadline: self.config.deadline.map(|d| started + d),
            picker: PickerConfig {
                random: swarming,
                endgame_below: if swarming { 4 } else { usize::MAX },
                seed: self.rng.random(),
                ..PickerConfig::default()
            },
        };
        let progress = self.progress.clone();
        let name = meta.name.clone();
        let size = meta.size;
        let board = ticket.as_ref();
        let report_progress = move |bytes: u64, active: usize| {
            if let Some(ticket) = board {
                ticket.progress(resumed_bytes + bytes, active);
            }
            if let Some(callback) = &progress {
                callback(&Progress {
                    name: name.clone(),
                    size,
                    done: resumed_bytes + bytes,
                    active_sources: active,
                });
            }
        };
        report_progress(0, sources.len().min(config.max_sources));
        let result = if missing.is_empty() {
            swarm::SwarmResult {
                sources: Vec::new(),
                missing: Vec::new(),
            }
        } else {
            let Downloader {
                transport,
                index,
                advertise,
                rng,
                ..
            } = self;
            let id = manifest.file.id;
            let file = manifest.file.clone();
            let mut renewed = Instant::now();
            let sharing = share.is_some();
            let mut feed = || {
                if let (true, Some(advertise)) = (sharing, advertise.as_ref())
                    && renewed.elapsed() >= PARTIAL_RENEW
                {
                    renewed = Instant::now();
                    if let Err(e) = index.register_partial(advertise, std::slice::from_ref(&file)) {
                        log::debug!(
                            "cannot renew the partial registration of {}: {e}",
                            file.name
                        );
                    }
                }
                match index.sources(&FileKey::Id(id)) {
                    Ok(sources) => {
                        let specs = source_specs(sources, advertise.as_ref(), rng);
                        if let Some(ticket) = board {
                            ticket.add_sources(specs.iter().map(|s| s.addr.clone()));
                        }
                        specs
                    }
                    Err(e) => {
                        log::debug!("cannot ask the index for more sources: {e}");
                        Vec::new()
                    }
                }
            };
            let sink: &dyn ChunkSink = match &part {
                Some(part) => part,
                None => &DiscardSink,
            };
            swarm::run_swarm(
                transport,
                &manifest,
                &missing,
                swarm::SourceFeed {
                    initial: sources.clone(),
                    more: &mut feed,
                },
                sink,
                &config,
                &report_progress,
            )
        };
        let uploaded = share.as_ref().map_or(0, |s| s.uploaded());

        let mut holders: Vec<HolderReport> = result
            .sources
            .iter()
            .map(|s| HolderReport {
                holder: s.addr.clone(),
                bytes: s.bytes,
                requests: s.requests,
                partial: !s.complete,
                node: s.node,
                dropped: s.dropped.clone(),
                corrupt_chunk: match s.dropped {
                    Some(DropReason::Corrupt { chunk }) => Some(chunk),
                    _ => None,
                },
            })
            .collect();
        if !result.missing.is_empty() {
            self.withdraw(&manifest.file, share.is_some());
            if let Some(part) = &part {
                part.keep_for_resume();
            }
            let missing_bytes = bytes_of(&manifest.file, &result.missing);
            // A disk that cannot take the chunks is not the holders' fault: say so.
            let local = result.sources.iter().find_map(|s| match &s.dropped {
                Some(DropReason::LocalWrite(reason)) => Some(reason.clone()),
                _ => None,
            });
            if let Some(reason) = local {
                return Err(PeerError::LocalDisk {
                    name: meta.name.clone(),
                    dir: self.dir.clone(),
                    reason,
                    verified_bytes: meta.size - missing_bytes,
                });
            }
            failures.append(&mut holders);
            return Err(PeerError::Incomplete {
                name: meta.name.clone(),
                missing_bytes,
                missing_chunks: result.missing.len() as u32,
                size: meta.size,
                failures,
            });
        }
        holders.extend(failures);

        let file = FileMeta {
            name: meta.name.clone(),
            size: meta.size,
            chunk_size,
            id: meta.id,
        };
        let path = match part {
            // Every chunk matched the manifest and the manifest merges to the id, so the part
            // file's BLAKE3 is the id. No sync_all: the page cache serves it at once, and a
            // crash before writeback loses only a file that can be fetched again.
            Some(part) => match part.publish(&self.dir.join(&meta.name)) {
                Ok(path) => Some(path),
                Err(e) => {
                    self.withdraw(&manifest.file, share.is_some());
                    return Err(e);
                }
            },
            None => None,
        };
        let registered = match (&path, &self.library) {
            (Some(path), Some(library)) => {
                // The complete file first, then the partial share goes: no gap for readers.
                library.insert(SharedFile {
                    meta: file.clone(),
                    chunk_hashes: Arc::new(manifest.chunk_hashes),
                    path: path.clone(),
                });
                library.withdraw_partial(&file.id);
                // A complete registration replaces the partial one at the index.
                self.register(&file)
            }
            _ => false,
        };
        // The holder that sent the most; the manifest's holder if a resume needed nothing.
        let from = holders
            .iter()
            .filter(|h| h.bytes > 0)
            .max_by_key(|h| h.bytes)
            .map(|h| h.holder.clone())
            .or_else(|| sources.first().map(|s| s.addr.clone()))
            .ok_or_else(|| PeerError::NoReachableHolder {
                name: meta.name.clone(),
                tried: 0,
                last_error: "no holder left".into(),
            })?;
        if let Some(ticket) = ticket {
            ticket.succeeded();
        }
        let elapsed = started.elapsed();
        log::info!(
            "downloaded {} ({} B) from {} holders in {} ms; uploaded {uploaded} B of it to others meanwhile",
            file.name,
            file.size,
            holders.iter().filter(|h| h.bytes > 0).count(),
            elapsed.as_millis()
        );
        Ok(DownloadReport {
            bytes: missing_bytes,
            resumed_bytes,
            file,
            from,
            path,
            elapsed,
            registered,
            uploaded,
            holders,
        })
    }

    /// A failed or abandoned sharing download stops being served and leaves the index.
    fn withdraw(&mut self, file: &FileMeta, shared: bool) {
        if !shared {
            return;
        }
        if let Some(library) = &self.library {
            library.withdraw_partial(&file.id);
        }
        if let Some(advertise) = &self.advertise
            && let Err(e) = self.index.unregister_partial(advertise, &[file.id])
        {
            log::debug!(
                "cannot withdraw the partial registration of {}: {e}",
                file.name
            );
        }
    }

    /// Tells the index about the new copy; a failure here is not a download failure.
    fn register(&mut self, file: &FileMeta) -> bool {
        let Some(advertise) = &self.advertise else {
            return false;
        };
        match self.index.register(advertise, std::slice::from_ref(file)) {
            Ok(_) => true,
            Err(e) => {
                // The file is here and verified; the index learns of it at the next
                // registration.
                log::warn!("downloaded {} but could not register it: {e}", file.name);
                false
            }
        }
    }

    /// The first manifest, in holder order, that verifies against the id. Returns it, the
    /// holders worth fetching chunks from (the manifest's holder first), and the failures.
    fn fetch_manifest(
        &self,
        meta: &FileMeta,
        holders: Vec<SourceSpec>,
    ) -> Result<(Manifest, Vec<SourceSpec>, Vec<HolderReport>), PeerError> {
        let mut failures = Vec::new();
        let tried = holders.len();
        for (i, spec) in holders.iter().enumerate() {
            let holder = &spec.addr;
            match self.manifest_from(spec, meta) {
                Ok(manifest) => {
                    // Holders that failed to give a manifest are not asked for chunks either.
                    let sources = holders[i..].to_vec();
                    return Ok((manifest, sources, failures));
                }
                Err(reason) => {
                    log::info!("no manifest of {} from {holder}: {reason}", meta.name);
                    failures.push(HolderReport {
                        holder: holder.clone(),
                        bytes: 0,
                        requests: 0,
                        partial: !spec.complete,
                        node: spec.node,
                        dropped: Some(reason),
                        corrupt_chunk: None,
                    });
                }
            }
        }
        Err(PeerError::NoReachableHolder {
            name: meta.name.clone(),
            tried,
            last_error: failures
                .last()
                .and_then(|f| f.dropped.as_ref().map(|r| format!("{}: {r}", f.holder)))
                .unwrap_or_default(),
        })
    }

    fn manifest_from(&self, spec: &SourceSpec, meta: &FileMeta) -> Result<Manifest, DropReason> {
        let text = DropReason::Manifest;
        let stream = self
            .transport
            .connect(&spec.addr)
            .map_err(|e| text(io_text(e)))?;
        let timeout = Some(self.config.io_timeout);
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(|e| text(io_text(e)))?;
        // The hello, and then the manifest, must each arrive whole at the minimum rate (at
        // least in a few seconds), however slowly they trickle: a holder that drips them
        // loses its turn to the next.
        let expected = content::chunk_count(meta.size, meta.chunk_size).saturating_mul(33) + 512;
        let budget = Duration::from_secs_f64(expected as f64 / self.config.min_rate.max(1) as f64)
            .max(MANIFEST_FLOOR);
        let mut stream = FrameDeadline::new(stream, budget);
        codec::client_handshake(&mut stream, Service::Peer).map_err(|e| text(e.to_string()))?;
        stream.frame_done();
        // The handshake proved who is there, if the transport proves anything.
        check_node(&spec.addr, spec.node, stream.get_ref()).map_err(DropReason::WrongNode)?;
        // Ask by id: the holder may have other content under the same name.
        let request = PeerRequest::Manifest {
            key: FileKey::Id(meta.id),
        };
        codec::write_frame(&mut stream, &request).map_err(|e| text(e.to_string()))?;
        let mut conn = BufReader::new(stream);
        let response: PeerResponse =
            codec::read_frame(&mut conn, self.config.response_limit, &mut Vec::new()).map_err(
                |e| {
                    text(match e {
                        ProtoError::Io(io) if io.kind() == io::ErrorKind::TimedOut => format!(
                            "too slow: the manifest did not arrive within {} s",
                            budget.as_secs()
                        ),
                        other => other.to_string(),
                    })
                },
            )?;
        let manifest = match response {
            PeerResponse::Manifest(manifest) => manifest,
            PeerResponse::Error(reply) => return Err(text(format!("refused: {reply}"))),
            PeerResponse::Chunk { .. } | PeerResponse::Availability { .. } => {
                return Err(text(
                    "broke the protocol: sent something else than the manifest".into(),
                ));
            }
        };
        content::verify_manifest(&manifest, meta)
            .map_err(|e| text(format!("sent a bad manifest: {e}")))?;
        Ok(manifest)
    }
}

/// Bytes in `chunks` of `file` (in its manifest's grid).
fn bytes_of(file: &FileMeta, chunks: &[u32]) -> u64 {
    chunks
        .iter()
        .filter_map(|&i| content::chunk_len(file.size, file.chunk_size, i))
        .map(u64::from)
        .sum()
}

/// The index's answer as sources: complete holders first, each kind in random order (which
/// spreads downloads over holders, as the seed's random *get* did), never this peer itself.
fn source_specs(
    sources: shoal_index::Sources,
    me: Option<&PeerAddr>,
    rng: &mut StdRng,
) -> Vec<SourceSpec> {
    let mut complete = sources.complete;
    let mut partial = sources.partial;
    complete.shuffle(rng);
    partial.shuffle(rng);
    let nodes = sources.nodes;
    let spec = |addr: PeerAddr, complete: bool| SourceSpec {
        node: node_of(&nodes, &addr),
        addr,
        complete,
    };
    complete
        .into_iter()
        .map(|addr| spec(addr, true))
        .chain(partial.into_iter().map(|addr| spec(addr, false)))
        .filter(|s| Some(&s.addr) != me)
        .collect()
}

/// Verify-only downloads drop the bytes.
struct DiscardSink;

impl ChunkSink for DiscardSink {
    fn write_piece(&self, _offset: u64, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn chunk_verified(&self, _index: u32) -> io::Result<()> {
        Ok(())
    }
}

/// Hidden names are never shared (the library skips them) and part files are hidden, so a
/// hidden name is refused rather than risk colliding with a part file.
fn refuse_hidden(name: &str) -> Result<(), PeerError> {
    if name.starts_with('.') {
        return Err(PeerError::BadName(ProtoError::BadName {
            name: name.chars().take(80).collect(),
            reason: "starts with `.` (hidden files are never shared)",
        }));
    }
    Ok(())
}

/// The index is not trusted more than a peer: its answer must name a usable file, and the
/// file asked for.
fn check_index_answer(key: &FileKey, meta: &FileMeta) -> Result<(), PeerError> {
    let bad = |reason: String| PeerError::BadIndexAnswer {
        key: key.to_string(),
        reason,
    };
    validate_name(&meta.name).map_err(|e| bad(e.to_string()))?;
    if meta.name.starts_with('.') {
        return Err(bad(format!("the hidden name {:?}", meta.name)));
    }
    match key {
        FileKey::Name(name) if *name != meta.name => {
            Err(bad(format!("it describes {:?} instead", meta.name)))
        }
        FileKey::Id(id) if *id != meta.id => Err(bad(format!("it describes {} instead", meta.id))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::FileId;

    fn meta(name: &str) -> FileMeta {
        FileMeta {
            name: name.into(),
            size: 1,
            chunk_size: 1024,
            id: FileId([3; 32]),
        }
    }

    #[test]
    fn index_answers_are_checked() {
        let key = FileKey::Name("a.txt".into());
        assert!(check_index_answer(&key, &meta("a.txt")).is_ok());
        for bad in ["../a.txt", "b.txt", ".a.txt"] {
            let err = check_index_answer(&key, &meta(bad)).unwrap_err();
            assert!(matches!(err, PeerError::BadIndexAnswer { .. }), "{err}");
        }
        let by_id = FileKey::Id(FileId([4; 32]));
        let err = check_index_answer(&by_id, &meta("a.txt")).unwrap_err();
        assert!(err.to_string().contains("instead"), "{err}");
    }
}
