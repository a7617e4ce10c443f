//! The downloader: index lookup, manifest, verified chunks into a part file, then an atomic,
//! non-clobbering move into place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_index::IndexClient;
use shoal_proto::codec::{self, Service};
use shoal_proto::message::{PeerRequest, PeerResponse};
use shoal_proto::{
    Connection, FileKey, FileMeta, MAX_NAME_LEN, PeerAddr, ProtoError, Transport, content,
    validate_name,
};

use crate::library::hash_file;
use crate::{Library, PeerError, SharedFile};

/// Read buffer in front of a holder's stream: chunk headers come from it, and bodies larger
/// than it bypass it.
const STREAM_BUF: usize = 64 << 10;

/// How a [`Downloader`] runs.
#[derive(Clone, Debug)]
pub struct DownloaderConfig {
    /// A read from a holder that waits longer than this fails the download (default 30 s).
    pub io_timeout: Duration,
    /// Largest frame accepted from a holder (manifests are the big ones).
    pub response_limit: u32,
    /// Seeds the random choice of the first holder; `None` seeds from the OS. Tests set it.
    pub seed: Option<u64>,
}

impl Default for DownloaderConfig {
    fn default() -> Self {
        DownloaderConfig {
            io_timeout: Duration::from_secs(30),
            response_limit: codec::DEFAULT_RESPONSE_LIMIT,
            seed: None,
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

/// A completed download.
#[derive(Clone, Debug)]
pub struct DownloadReport {
    /// The file (with the chunk size its holder used).
    pub file: FileMeta,
    /// The holder it came from.
    pub from: PeerAddr,
    /// Where it is now.
    pub path: PathBuf,
    /// Bytes transferred (the file size).
    pub bytes: u64,
    /// Time from the call to [`Downloader::fetch`] until the file was in place.
    pub elapsed: Duration,
    /// Whether the new copy was registered with the index.
    pub registered: bool,
}

/// Fetches files: asks the index for holders, takes the manifest from one, streams every
/// chunk, verifies each against the manifest (and the manifest against the file id), and only
/// then moves the file into place. Nothing ever overwrites a file already in the folder.
pub struct Downloader<T: Transport> {
    transport: T,
    index: IndexClient<T>,
    dir: PathBuf,
    library: Option<Library>,
    advertise: Option<PeerAddr>,
    config: DownloaderConfig,
    rng: StdRng,
    /// Response frame scratch.
    frame: Vec<u8>,
    /// One chunk's bytes, reused.
    chunk: Vec<u8>,
}

/// How one holder's attempt failed.
enum Attempt {
    /// The holder is at fault and nothing was received: another holder may do better.
    NextHolder(PeerError),
    /// Stop here.
    Fatal(PeerError),
}

impl From<PeerError> for Attempt {
    fn from(e: PeerError) -> Self {
        Attempt::Fatal(e)
    }
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
            frame: Vec::new(),
            chunk: Vec::new(),
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
                    return Ok(DownloadOutcome::AlreadyPresent(present));
                }
            }
            FileKey::Id(_) => {
                if let Some(file) = self.library.as_ref().and_then(|l| l.get(key)) {
                    return Ok(DownloadOutcome::AlreadyPresent(file.meta));
                }
            }
        }

        let (meta, mut holders) = self.index.holders(key)?;
        check_index_answer(key, &meta)?;
        if let FileKey::Id(_) = key {
            if let Some(present) = self.present(&meta.name)? {
                if present.id == meta.id {
                    return Ok(DownloadOutcome::AlreadyPresent(present));
                }
                return Err(PeerError::AlreadyExists {
                    path: self.dir.join(&meta.name),
                });
            }
        }
        if holders.is_empty() {
            return Err(PeerError::NotFound {
                key: key.to_string(),
            });
        }
        // A random first holder spreads downloads; the others are fallbacks.
        let first = self.rng.random_range(0..holders.len());
        holders.rotate_left(first);

        let mut last_error = String::new();
        for (tried, holder) in holders.iter().enumerate() {
            match self.download_from(holder, &meta) {
                Ok((file, path)) => return Ok(self.finish(file, path, holder, started)),
                Err(Attempt::NextHolder(e)) => {
                    log::info!("{e}; trying the next holder");
                    last_error = e.to_string();
                }
                Err(Attempt::Fatal(e)) => {
                    log::debug!("download of {} failed after {tried} fallbacks", meta.name);
                    return Err(e);
                }
            }
        }
        Err(PeerError::NoReachableHolder {
            name: meta.name,
            tried: holders.len(),
            last_error,
        })
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

    /// One holder: manifest, then every chunk into the part file, then the move into place.
    fn download_from(
        &mut self,
        holder: &PeerAddr,
        meta: &FileMeta,
    ) -> Result<(SharedFile, PathBuf), Attempt> {
        let name = &meta.name;
        let failed = |source: ProtoError| {
            Attempt::NextHolder(PeerError::HolderFailed {
                name: name.clone(),
                holder: holder.clone(),
                source,
            })
        };
        let protocol = |reason: String| PeerError::Protocol {
            name: name.clone(),
            holder: holder.clone(),
            reason,
        };

        let mut stream = self
            .transport
            .connect(holder)
            .map_err(|e| failed(e.into()))?;
        let timeout = Some(self.config.io_timeout);
        stream
            .set_read_timeout(timeout)
            .and_then(|()| stream.set_write_timeout(timeout))
            .map_err(|e| failed(e.into()))?;
        codec::client_handshake(&mut stream, Service::Peer).map_err(failed)?;
        let mut conn = BufReader::with_capacity(STREAM_BUF, stream);

        // Ask by id: the holder may have other content under the same name.
        let request = PeerRequest::Manifest {
            key: FileKey::Id(meta.id),
        };
        codec::write_frame(conn.get_mut(), &request).map_err(failed)?;
        let response = codec::read_frame(&mut conn, self.config.response_limit, &mut self.frame)
            .map_err(failed)?;
        let manifest = match response {
            PeerResponse::Manifest(manifest) => manifest,
            PeerResponse::Error(reply) => {
                return Err(Attempt::NextHolder(PeerError::Refused {
                    name: name.clone(),
                    holder: holder.clone(),
                    reply,
                }));
            }
            PeerResponse::Chunk { .. } => {
                return Err(Attempt::NextHolder(protocol(
                    "it sent a chunk instead of the manifest".into(),
                )));
            }
        };
        if let Err(e) = content::verify_manifest(&manifest, meta) {
            return Err(Attempt::NextHolder(PeerError::BadManifest {
                name: name.clone(),
                holder: holder.clone(),
                reason: match e {
                    ProtoError::BadManifest(reason) => reason,
                    other => other.to_string(),
                },
            }));
        }

        let part = PartFile::create(part_path(&self.dir, meta), meta.size)?;
        let size = meta.size;
        let chunk_size = manifest.file.chunk_size;
        // verify_manifest capped the count at content::MAX_CHUNKS.
        let count = u32::try_from(manifest.chunk_hashes.len())
            .map_err(|_| protocol("its manifest lists too many chunks".into()))?;
        let request = PeerRequest::ReadChunks {
            id: meta.id,
            first: 0,
            count,
        };
        codec::write_frame(conn.get_mut(), &request).map_err(failed)?;

        let mut received = 0u64;
        let transfer = |received: u64, source: ProtoError| PeerError::Transfer {
            name: name.clone(),
            holder: holder.clone(),
            received,
            size,
            source: ended(source),
        };
        for (index, expected) in (0..count).zip(manifest.chunk_hashes.iter()) {
            let Some(expected_len) = content::chunk_len(size, chunk_size, index) else {
                return Err(protocol(format!("its manifest has no chunk {index}")).into());
            };
            let header = match codec::read_frame(
                &mut conn,
                self.config.response_limit,
                &mut self.frame,
            ) {
                Ok(header) => header,
                Err(e @ (ProtoError::FrameTooLarge { .. } | ProtoError::Malformed(_))) => {
                    return Err(protocol(e.to_string()).into());
                }
                Err(e) => return Err(transfer(received, e).into()),
            };
            match header {
                PeerResponse::Chunk { index: i, len } if i == index && len == expected_len => {}
                PeerResponse::Chunk { index: i, len } => {
                    return Err(protocol(format!(
                        "it sent chunk {i} ({len} bytes) where chunk {index} \
                         ({expected_len} bytes) was due"
                    ))
                    .into());
                }
                PeerResponse::Error(reply) => {
                    let refused = PeerError::Refused {
                        name: name.clone(),
                        holder: holder.clone(),
                        reply,
                    };
                    // Before any byte came, it is as if it had refused the manifest.
                    return Err(if received == 0 {
                        Attempt::NextHolder(refused)
                    } else {
                        Attempt::Fatal(refused)
                    });
                }
                PeerResponse::Manifest(_) => {
                    return Err(
                        protocol(format!("it sent a manifest where chunk {index} was due")).into(),
                    );
                }
            }
            let len = expected_len as usize;
            if self.chunk.len() < len {
                // At most content::MAX_CHUNK_SIZE: verify_manifest checked the chunk size.
                self.chunk.resize(len, 0);
            }
            let body = &mut self.chunk[..len];
            conn.read_exact(body)
                .map_err(|e| transfer(received, e.into()))?;
            if content::chunk_hash(size, chunk_size, index, body) != *expected {
                return Err(PeerError::Integrity {
                    name: name.clone(),
                    holder: holder.clone(),
                    chunk: index,
                }
                .into());
            }
            part.file
                .write_all_at(body, content::chunk_offset(chunk_size, index))
                .map_err(|e| PeerError::io("write", &part.path, e))?;
            received += u64::from(expected_len);
        }
        drop(conn);

        // Every chunk matched the manifest and the manifest merges to the id, so the part
        // file's BLAKE3 is the id. No sync_all: the page cache serves it to readers at once,
        // and a crash before writeback loses only a file that can be fetched again.
        let path = part.publish(&self.dir.join(name))?;
        let file = SharedFile {
            meta: FileMeta {
                name: name.clone(),
                size,
                chunk_size,
                id: meta.id,
            },
            chunk_hashes: Arc::new(manifest.chunk_hashes),
            path: path.clone(),
        };
        Ok((file, path))
    }

    /// After a verified download: record it, announce it, report it.
    fn finish(
        &mut self,
        file: SharedFile,
        path: PathBuf,
        holder: &PeerAddr,
        started: Instant,
    ) -> DownloadOutcome {
        let meta = file.meta.clone();
        if let Some(library) = &self.library {
            library.insert(file);
        }
        let registered = match &self.advertise {
            Some(advertise) => match self.index.register(advertise, std::slice::from_ref(&meta)) {
                Ok(_) => true,
                Err(e) => {
                    // The file is here and verified; the index learns of it at the next
                    // registration.
                    log::warn!("downloaded {} but could not register it: {e}", meta.name);
                    false
                }
            },
            None => false,
        };
        let elapsed = started.elapsed();
        log::info!(
            "downloaded {} ({} B) from {holder} in {} ms",
            meta.name,
            meta.size,
            elapsed.as_millis()
        );
        DownloadOutcome::Downloaded(DownloadReport {
            bytes: meta.size,
            file: meta,
            from: holder.clone(),
            path,
            elapsed,
            registered,
        })
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

/// `dir/.{name}.shoal-part`, hidden so the library never lists it; the id stands in for a
/// name too long to take the affixes.
fn part_path(dir: &Path, meta: &FileMeta) -> PathBuf {
    let part = format!(".{}.shoal-part", meta.name);
    if part.len() <= MAX_NAME_LEN {
        dir.join(part)
    } else {
        dir.join(format!(".{}.shoal-part", meta.id.to_hex()))
    }
}

/// Maps "the stream ended" in its various spellings to [`ProtoError::Closed`].
fn ended(e: ProtoError) -> ProtoError {
    match e {
        ProtoError::Io(io) if io.kind() == io::ErrorKind::UnexpectedEof => ProtoError::Closed,
        other => other,
    }
}

/// A download's part file; removed when dropped, whatever happened.
struct PartFile {
    path: PathBuf,
    file: File,
}

impl PartFile {
    /// Creates the part file afresh, sized to `size`.
    fn create(path: PathBuf, size: u64) -> Result<PartFile, PeerError> {
        // A leftover from an interrupted download (or anything planted there) is removed
        // rather than opened: `create_new` never follows a symlink.
        match fs::remove_file(&path) {
            Ok(()) => log::debug!("removed the stale part file {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(PeerError::io("remove the stale part file", path, e)),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| PeerError::io("create the part file", &path, e))?;
        let part = PartFile { path, file };
        part.file
            .set_len(size)
            .map_err(|e| PeerError::io("size the part file", &part.path, e))?;
        Ok(part)
    }

    /// Links the finished part file at `target`, failing if anything is already there, then
    /// removes the part name (on drop). A hard link is atomic and never replaces a file.
    fn publish(self, target: &Path) -> Result<PathBuf, PeerError> {
        if let Err(e) = fs::hard_link(&self.path, target) {
            return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                PeerError::AlreadyExists {
                    path: target.to_path_buf(),
                }
            } else {
                PeerError::io("move the finished download to", target, e)
            });
        }
        // Another download of the same name could have replaced the part name under us; then
        // we just linked its unfinished file, which must not stay.
        let ours = self.file.metadata().map(|m| (m.dev(), m.ino()));
        let linked = fs::symlink_metadata(target).map(|m| (m.dev(), m.ino()));
        match (ours, linked) {
            (Ok(ours), Ok(linked)) if ours == linked => Ok(target.to_path_buf()),
            _ => {
                let _ = fs::remove_file(target);
                Err(PeerError::io(
                    "move the finished download to",
                    target,
                    io::Error::other("its part file was replaced by another download"),
                ))
            }
        }
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
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

    #[test]
    fn part_paths_are_hidden_and_fit_a_name() {
        let dir = Path::new("/d");
        assert_eq!(
            part_path(dir, &meta("a.txt")),
            Path::new("/d/.a.txt.shoal-part")
        );
        let long = part_path(dir, &meta(&"x".repeat(250)));
        let file_name = long.file_name().unwrap().to_str().unwrap();
        assert!(file_name.starts_with('.') && file_name.len() <= MAX_NAME_LEN);
    }

    #[test]
    fn part_file_is_removed_unless_published() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(".x.shoal-part");
        fs::write(&path, b"stale").unwrap();
        let part = PartFile::create(path.clone(), 10).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().len(), 10);
        drop(part);
        assert!(!path.exists());

        let target = tmp.path().join("x");
        fs::write(&target, b"mine").unwrap();
        let part = PartFile::create(path.clone(), 3).unwrap();
        assert!(matches!(
            part.publish(&target),
            Err(PeerError::AlreadyExists { .. })
        ));
        assert_eq!(fs::read(&target).unwrap(), b"mine");
        assert!(!path.exists());

        let part = PartFile::create(path.clone(), 3).unwrap();
        let fresh = tmp.path().join("y");
        assert_eq!(part.publish(&fresh).unwrap(), fresh);
        assert_eq!(fs::read(&fresh).unwrap(), [0, 0, 0]);
        assert!(!path.exists());
    }
}
