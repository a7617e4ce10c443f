//! Partial holders: peers downloading a file, which serve the chunks they have verified.
//!
//! They live in a [`Registry`] of their own, so a complete lookup (`Locate`, `Holders`) never
//! returns them and their counts stay apart in search. The embedded stores keep them in memory
//! only ([`crate::RedisStore`] keeps them in Redis, in a namespace of their own, like this):
//! a partial registration lasts as long as a download, its downloader sends it again every
//! third of a lease (as it asks for new sources), so an index that restarts forgets a partial
//! holder for at most that long, and nothing is written to a log for a state that changes
//! with every download.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use shoal_proto::message::{HolderNode, SearchHit};
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};

use crate::store::search_in_slices;
use crate::{LimitExceeded, RegistrationLimits, Registry};

/// Everyone who can serve a file: complete holders and partial ones, marked apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sources {
    /// The file.
    pub file: FileMeta,
    /// Holders of the whole file, sorted.
    pub complete: Vec<PeerAddr>,
    /// Holders still downloading it, sorted (never one that is also complete).
    pub partial: Vec<PeerAddr>,
    /// The node ids the index knows for these holders. Stores leave it empty: the
    /// [`IndexServer`](crate::IndexServer) fills it from its [`NodeBook`](crate::NodeBook).
    pub nodes: Vec<HolderNode>,
}

/// The partial-holder registry of a store (a [`Registry`] behind its own lock).
pub struct Partials {
    registry: Mutex<Registry>,
}

impl Partials {
    /// An empty set of partial holders whose registrations live for `lease`.
    pub fn new(lease: Duration) -> Self {
        Partials {
            registry: Mutex::new(Registry::with_lease(lease)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the lease (from each partial holder's next registration).
    pub fn set_lease(&self, lease: Duration) {
        self.lock().set_lease(lease);
    }

    /// `holder` is downloading `files`; renews its partial lease. Returns how many partial
    /// registrations are new.
    pub fn register(&self, holder: &PeerAddr, files: &[FileMeta], now: Duration) -> u32 {
        let mut registry = self.lock();
        // A registration renews every download of the holder, not only the ones listed.
        registry.renew(holder, now);
        registry.register(holder, files, now)
    }

    /// [`Partials::register`] within `limits` (see [`Registry::register_within`]): partial
    /// registrations count against the caps apart from complete ones. A refused request
    /// still renews the holder's other downloads.
    pub fn register_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        now: Duration,
        limits: &RegistrationLimits,
    ) -> Result<u32, LimitExceeded> {
        let mut registry = self.lock();
        registry.renew(holder, now);
        registry.register_within(holder, address, files, now, limits)
    }

    /// `holder` stopped downloading `ids` (empty: everything) or finished them.
    pub fn unregister(&self, holder: &PeerAddr, ids: &[FileId]) -> u32 {
        self.lock().unregister(holder, ids)
    }

    /// `holder` now holds `files` whole: their partial registrations go.
    pub fn complete(&self, holder: &PeerAddr, files: &[FileMeta]) {
        if files.is_empty() {
            return;
        }
        let ids: Vec<FileId> = files.iter().map(|f| f.id).collect();
        self.lock().unregister(holder, &ids);
    }

    /// Renews `holder`'s partial lease (a heartbeat covers its downloads too).
    pub fn renew(&self, holder: &PeerAddr, now: Duration) {
        self.lock().renew(holder, now);
    }

    /// Removes partial holders whose lease lapsed.
    pub fn sweep(&self, now: Duration) {
        self.lock().sweep(now);
    }

    /// Joins the complete holders of `key` (from the store's own registry) with its partial
    /// holders. By name, the complete registry chooses the id when it knows one; a file that
    /// only partial holders have left is still found.
    pub fn sources(
        &self,
        key: &FileKey,
        complete: Option<(FileMeta, Vec<PeerAddr>)>,
        now: Duration,
    ) -> Option<Sources> {
        let registry = self.lock();
        let (file, complete) = match complete {
            Some(found) => found,
            None => {
                let (file, _) = registry.holders(key, now)?;
                (file, Vec::new())
            }
        };
        let mut partial = registry
            .holders(&FileKey::Id(file.id), now)
            .map(|(_, holders)| holders)
            .unwrap_or_default();
        partial.retain(|h| complete.binary_search(h).is_err());
        Some(Sources {
            file,
            complete,
            partial,
            nodes: Vec::new(),
        })
    }

    /// Adds the partial counts to a store's search hits, and lists files only partial
    /// holders have; sorted by (name, id), at most `limit`.
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        complete: Vec<SearchHit>,
        now: Duration,
    ) -> Vec<SearchHit> {
        let partial = search_in_slices(|| self.lock(), query, limit, now);
        merge_hits(complete, partial, limit)
    }

    /// Partial (file, holder) registrations, expired ones included until swept.
    pub fn registration_count(&self) -> usize {
        self.lock().registration_count()
    }
}

/// Merges a store's complete hits with its partial ones (both sorted by (name, id)): a file
/// in both gets the partial count as `downloading`, a file only partial holders have is
/// listed with no complete holder; at most `limit`.
pub(crate) fn merge_hits(
    complete: Vec<SearchHit>,
    partial: Vec<SearchHit>,
    limit: usize,
) -> Vec<SearchHit> {
    if partial.is_empty() {
        return complete;
    }
    let key = |h: &SearchHit| (h.file.name.clone(), h.file.id);
    let mut merged: Vec<SearchHit> = Vec::with_capacity(complete.len() + partial.len());
    let (mut a, mut b) = (
        complete.into_iter().peekable(),
        partial.into_iter().peekable(),
    );
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => match key(x).cmp(&key(y)) {
                std::cmp::Ordering::Less => a.next(),
                std::cmp::Ordering::Greater => b.next().map(as_partial),
                std::cmp::Ordering::Equal => {
                    let downloading = b.next().map(|p| p.holders).unwrap_or(0);
                    a.next().map(|mut hit| {
                        hit.downloading = downloading;
                        hit
                    })
                }
            },
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next().map(as_partial),
            (None, None) => None,
        };
        match next {
            Some(hit) if merged.len() < limit => merged.push(hit),
            _ => break,
        }
    }
    merged
}

/// A partial registry's hit counts its holders as downloading, not as complete.
fn as_partial(mut hit: SearchHit) -> SearchHit {
    hit.downloading = hit.holders;
    hit.holders = 0;
    hit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, id: u8) -> FileMeta {
        FileMeta {
            name: name.into(),
            size: 10,
            chunk_size: 1024,
            id: FileId([id; 32]),
        }
    }

    fn addr(s: &str) -> PeerAddr {
        PeerAddr::new(s).unwrap()
    }

    #[test]
    fn sources_mark_partial_holders_apart_and_drop_the_complete_ones() {
        let partials = Partials::new(Duration::from_secs(60));
        let now = Duration::ZERO;
        partials.register(&addr("a:1"), &[meta("f", 1)], now);
        partials.register(&addr("b:1"), &[meta("f", 1)], now);
        let complete = Some((meta("f", 1), vec![addr("a:1"), addr("s:1")]));
        let sources = partials
            .sources(&FileKey::Name("f".into()), complete, now)
            .unwrap();
        assert_eq!(sources.complete, vec![addr("a:1"), addr("s:1")]);
        assert_eq!(sources.partial, vec![addr("b:1")]);
        // With no complete holder left, the partial holders still serve the file.
        let only = partials
            .sources(&FileKey::Name("f".into()), None, now)
            .unwrap();
        assert_eq!(only.partial, vec![addr("a:1"), addr("b:1")]);
        assert!(only.complete.is_empty());
        partials.complete(&addr("a:1"), &[meta("f", 1)]);
        partials.unregister(&addr("b:1"), &[]);
        assert!(
            partials
                .sources(&FileKey::Name("f".into()), None, now)
                .is_none()
        );
    }

    #[test]
    fn partial_leases_lapse_unless_renewed() {
        let partials = Partials::new(Duration::from_secs(10));
        partials.register(&addr("a:1"), &[meta("f", 1)], Duration::ZERO);
        partials.renew(&addr("a:1"), Duration::from_secs(8));
        let key = FileKey::Id(FileId([1; 32]));
        assert!(
            partials
                .sources(&key, None, Duration::from_secs(15))
                .is_some()
        );
        assert!(
            partials
                .sources(&key, None, Duration::from_secs(18))
                .is_none()
        );
        partials.sweep(Duration::from_secs(18));
        assert_eq!(partials.registration_count(), 0);
    }

    #[test]
    fn search_counts_downloading_apart_in_order() {
        let partials = Partials::new(Duration::from_secs(60));
        let now = Duration::ZERO;
        partials.register(&addr("a:1"), &[meta("b", 2), meta("c", 3)], now);
        partials.register(&addr("x:1"), &[meta("b", 2)], now);
        let complete = vec![
            SearchHit {
                file: meta("a", 1),
                holders: 1,
                downloading: 0,
                nodes: Vec::new(),
            },
            SearchHit {
                file: meta("b", 2),
                holders: 2,
                downloading: 0,
                nodes: Vec::new(),
            },
        ];
        let hits = partials.search("", 10, complete, now);
        let counts: Vec<(&str, u32, u32)> = hits
            .iter()
            .map(|h| (h.file.name.as_str(), h.holders, h.downloading))
            .collect();
        assert_eq!(counts, vec![("a", 1, 0), ("b", 2, 2), ("c", 0, 1)]);
        assert_eq!(partials.search("", 2, Vec::new(), now).len(), 2);
    }
}
