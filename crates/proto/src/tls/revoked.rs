//! The revocation list: node ids shut out of a swarm (or out of an open node), one a line,
//! reread whenever the file changes.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use super::TlsError;
use crate::NodeId;

/// What identifies one version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    Present {
        len: u64,
        modified: Option<SystemTime>,
        inode: u64,
    },
    /// It could not be stat'ed (removed, say); warned about once.
    Missing,
}

fn stamp(path: &Path) -> Stamp {
    match fs::metadata(path) {
        Ok(meta) => Stamp::Present {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: inode(&meta),
        },
        Err(_) => Stamp::Missing,
    }
}

#[cfg(unix)]
fn inode(meta: &fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_meta: &fs::Metadata) -> u64 {
    0
}

struct State {
    stamp: Stamp,
    revoked: HashSet<NodeId>,
}

/// A revocation list file; see the [module docs](self).
pub(crate) struct RevocationList {
    path: PathBuf,
    state: Mutex<State>,
}

impl RevocationList {
    /// Reads the list at `path`; a line that is not a node id is an error naming it.
    pub(crate) fn load(path: &Path) -> Result<RevocationList, TlsError> {
        let stamp = stamp(path);
        let revoked = read(path)?;
        Ok(RevocationList {
            path: path.to_path_buf(),
            state: Mutex::new(State { stamp, revoked }),
        })
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `node` is revoked, after rereading the file if it changed since the last
    /// look. A changed file that cannot be read or parsed keeps the previous list (with a
    /// warning, once per change).
    pub(crate) fn contains(&self, node: &NodeId) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = stamp(&self.path);
        if now != state.stamp {
            state.stamp = now;
            match read(&self.path) {
                Ok(revoked) => {
                    log::info!(
                        "{} changed: {} nodes revoked",
                        self.path.display(),
                        revoked.len()
                    );
                    state.revoked = revoked;
                }
                Err(e) => log::warn!(
                    "{e}; keeping the previous revocation list ({} nodes)",
                    state.revoked.len()
                ),
            }
        }
        state.revoked.contains(node)
    }
}

fn read(path: &Path) -> Result<HashSet<NodeId>, TlsError> {
    let text = fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, path)
}

/// Node ids, one a line; `#` starts a comment; blank lines are ignored.
pub(crate) fn parse(text: &str, path: &Path) -> Result<HashSet<NodeId>, TlsError> {
    let mut out = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let node = line.parse().map_err(|_| TlsError::BadRevocationLine {
            path: path.to_path_buf(),
            line: i + 1,
            text: line.chars().take(80).collect(),
        })?;
        out.insert(node);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blank_lines_and_bad_lines() {
        let a = NodeId::from_bytes([1; 32]);
        let b = NodeId::from_bytes([2; 32]);
        let text = format!(
            "# revoked\n\n{a}   # lost laptop\n  {}\n",
            b.to_string().to_lowercase()
        );
        let set = parse(&text, Path::new("r")).unwrap();
        assert_eq!(set, HashSet::from([a, b]));
        let err = parse(&format!("{a}\nnot-a-node\n"), Path::new("r")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "r, line 2: \"not-a-node\" is not a node id"
        );
    }
}
