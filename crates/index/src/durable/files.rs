//! The data folder: its layout (`log.N`, `snapshot.N`, temporaries), `LOCK`, and the writes
//! and fsyncs that make a file durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::format::{FileKind, Version, encode_header};
use crate::IndexError;

/// Held locked while a store has the folder open.
pub(super) const LOCK_FILE: &str = "LOCK";

pub(super) fn data_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IndexError {
    let path = path.to_path_buf();
    move |source| IndexError::Data { what, path, source }
}

/// Writes `bytes` to `tmp`, syncs, renames to `path` and syncs the folder: after a crash
/// either the old state or the whole new file is there.
pub(super) fn write_durably(
    dir: &Path,
    tmp: &Path,
    path: &Path,
    bytes: &[u8],
) -> Result<(), IndexError> {
    let mut file = File::create(tmp).map_err(data_error("cannot create", tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(data_error("cannot write", tmp))?;
    drop(file);
    fs::rename(tmp, path).map_err(data_error("cannot rename to", path))?;
    sync_dir(dir)
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), IndexError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(data_error("cannot sync the data folder", dir))
}

/// Creates `log.N` with its header, durably (file and folder entry), ready to append.
pub(super) fn create_log(dir: &Path, generation: u64) -> Result<File, IndexError> {
    let path = log_path(dir, generation);
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .map_err(data_error("cannot create the log", &path))?;
    file.write_all(&encode_header(FileKind::Log, Version::CURRENT, generation))
        .and_then(|()| file.sync_all())
        .map_err(data_error("cannot write the log", &path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// Replaces a log whose header was torn by an empty one.
pub(super) fn rewrite_log(path: &Path, generation: u64) -> Result<(), IndexError> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(data_error("cannot open the log", path))?;
    file.write_all(&encode_header(FileKind::Log, Version::CURRENT, generation))
        .and_then(|()| file.sync_all())
        .map_err(data_error("cannot write the log", path))
}

pub(super) fn remove_stale(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => log::debug!("index: removed {}", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("index: cannot remove {}: {e}", path.display()),
    }
}

pub(super) fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("log.{generation}"))
}

pub(super) fn snapshot_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("snapshot.{generation}"))
}

/// The data folder's files, by kind, generations ascending.
pub(super) struct DataFiles {
    pub(super) logs: Vec<u64>,
    pub(super) snapshots: Vec<u64>,
    pub(super) temporaries: Vec<PathBuf>,
}

/// Takes `dir/LOCK` exclusively, so a second index on the same folder is refused instead of
/// interleaving its log with ours. The OS drops the lock when the process dies (kill -9
/// included), so a crash never leaves the folder locked.
pub(super) fn lock_data_dir(dir: &Path) -> Result<File, IndexError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(data_error("cannot open the lock file", &path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(IndexError::DataInUse { path }),
        Err(fs::TryLockError::Error(e)) => Err(IndexError::Data {
            what: "cannot lock",
            path,
            source: e,
        }),
    }
}

impl DataFiles {
    pub(super) fn scan(dir: &Path) -> Result<DataFiles, IndexError> {
        let mut files = DataFiles {
            logs: Vec::new(),
            snapshots: Vec::new(),
            temporaries: Vec::new(),
        };
        let entries = fs::read_dir(dir).map_err(data_error("cannot list", dir))?;
        for entry in entries {
            let entry = entry.map_err(data_error("cannot list", dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if (name.starts_with("snapshot.") || name.starts_with("log.")) && name.ends_with(".tmp")
            {
                files.temporaries.push(entry.path());
            } else if let Some(g) = name.strip_prefix("log.").and_then(|g| g.parse().ok()) {
                files.logs.push(g);
            } else if let Some(g) = name.strip_prefix("snapshot.").and_then(|g| g.parse().ok()) {
                files.snapshots.push(g);
            }
        }
        files.logs.sort_unstable();
        files.snapshots.sort_unstable();
        Ok(files)
    }

    /// The logs to replay after snapshot `base` (`None`: from empty), checked to continue it
    /// without a gap: `log.S`, `log.S+1`, ... (`log.1`, ... without a snapshot). A missing
    /// file would make the store start silently with a fraction of the registry.
    pub(super) fn logs_from(&self, dir: &Path, base: Option<u64>) -> Result<Vec<u64>, IndexError> {
        let first = base.unwrap_or(1);
        let logs: Vec<u64> = self.logs.iter().copied().filter(|&g| g >= first).collect();
        let proceed = "restore it, or move the data folder aside to start empty (running \
                       peers register again with their next heartbeat)";
        if let (Some(&oldest), None) = (logs.first(), base)
            && oldest > 1
        {
            return Err(IndexError::DataMissing {
                path: snapshot_path(dir, oldest),
                reason: format!(
                    "log.{oldest} holds only the changes made after it, so starting \
                     without it would serve a fraction of the registry; {proceed}"
                ),
            });
        }
        if let (Some(s), None) = (base, logs.first()) {
            return Err(IndexError::DataMissing {
                path: log_path(dir, s),
                reason: format!(
                    "it holds the changes made after snapshot.{s}, which is there; {proceed}"
                ),
            });
        }
        for (expected, &found) in (first..).zip(&logs) {
            if found != expected {
                return Err(IndexError::DataMissing {
                    path: log_path(dir, expected),
                    reason: format!(
                        "it holds the changes between log.{} and log.{found}; {proceed}",
                        expected.saturating_sub(1)
                    ),
                });
            }
        }
        Ok(logs)
    }
}
