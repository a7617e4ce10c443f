//! The registry: which peer holds which file. Pure data: no I/O, no locking, and the random
//! choice of a holder takes the caller's `Rng`, so tests can seed it.

use std::collections::{HashMap, HashSet};

use rand::Rng;
use shoal_proto::message::SearchHit;
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};

/// A holder set switches from linear search to a position index above this many holders.
const INDEX_FROM: usize = 32;

/// Which peers hold which files.
///
/// Listings are keyed by (name, id): two peers can hold different contents under one name
/// (the id tells them apart) and one content under two names. Each listing keeps the holders
/// in a vector, so choosing one at random costs O(1); holders and listings are numbered
/// slots, so a registration costs a few machine words, not a copy of the address.
///
/// ```
/// use rand::{SeedableRng, rngs::StdRng};
/// use shoal_index::Registry;
/// use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};
///
/// let mut registry = Registry::new();
/// let song = FileMeta { name: "song.ogg".into(), size: 3, chunk_size: 1024, id: FileId([1; 32]) };
/// let alice = PeerAddr::new("alice:7000").unwrap();
/// assert_eq!(registry.register(&alice, &[song.clone()]), 1);
/// let mut rng = StdRng::seed_from_u64(7);
/// let found = registry.locate(&FileKey::Name("song.ogg".into()), &mut rng);
/// assert_eq!(found, Some((song, alice)));
/// ```
#[derive(Default)]
pub struct Registry {
    listings: Slab<Listing>,
    /// Name -> (id, listing slot), sorted by id: finding a listing at registration is a
    /// binary search even when many contents share a name.
    by_name: HashMap<String, Vec<(FileId, usize)>>,
    /// Id -> listing slots (one per name the content is listed under; usually one).
    by_id: HashMap<FileId, Vec<usize>>,
    holders: Slab<Holder>,
    holder_slots: HashMap<PeerAddr, usize>,
    registrations: usize,
}

struct Listing {
    meta: FileMeta,
    holders: HolderSet,
}

struct Holder {
    addr: PeerAddr,
    /// Reverse index, so unregistering a holder touches only its own listings.
    listings: HashSet<usize>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `holder` for each file; returns how many (file, holder) registrations are new.
    /// The [`FileMeta`] stored for a listing is the first one registered (same name and id).
    pub fn register(&mut self, holder: &PeerAddr, files: &[FileMeta]) -> u32 {
        if files.is_empty() {
            return 0;
        }
        let h = match self.holder_slots.get(holder) {
            Some(&h) => h,
            None => {
                let h = self.holders.insert(Holder {
                    addr: holder.clone(),
                    listings: HashSet::new(),
                });
                self.holder_slots.insert(holder.clone(), h);
                h
            }
        };
        let mut added = 0u32;
        for meta in files {
            let slot = self.listing_slot_or_insert(meta);
            let (Some(listing), Some(entry)) =
                (self.listings.get_mut(slot), self.holders.get_mut(h))
            else {
                continue;
            };
            if listing.holders.insert(h) {
                entry.listings.insert(slot);
                self.registrations += 1;
                added = added.saturating_add(1);
            }
        }
        added
    }

    /// Removes `holder` from the given ids (under every name listing that id); an empty slice
    /// removes the holder from everything. Returns the number of registrations removed.
    /// Listings left with no holder are deleted entirely, so memory stays flat under churn.
    pub fn unregister(&mut self, holder: &PeerAddr, ids: &[FileId]) -> u32 {
        let Some(&h) = self.holder_slots.get(holder) else {
            return 0;
        };
        let Some(entry) = self.holders.get_mut(h) else {
            return 0;
        };
        let targets: Vec<usize> = if ids.is_empty() {
            entry.listings.drain().collect()
        } else {
            let by_id = &self.by_id;
            ids.iter()
                .filter_map(|id| by_id.get(id))
                .flatten()
                .copied()
                // `remove` also drops duplicates (an id listed twice in `ids`).
                .filter(|slot| entry.listings.remove(slot))
                .collect()
        };
        let holder_done = entry.listings.is_empty();
        let mut removed = 0u32;
        for slot in targets {
            if self.remove_registration(h, slot) {
                removed = removed.saturating_add(1);
            }
        }
        if holder_done {
            self.holders.remove(h);
            self.holder_slots.remove(holder);
        }
        removed
    }

    /// The seed's *get*: one holder chosen uniformly at random with `rng`.
    ///
    /// By name: if several ids share the name, the id with the most holders is used (ties:
    /// the smallest id). By id: any holder of that id under any name, each distinct holder
    /// equally likely; the metadata is that of the listing with the most holders.
    pub fn locate<R: Rng + ?Sized>(
        &self,
        key: &FileKey,
        rng: &mut R,
    ) -> Option<(FileMeta, PeerAddr)> {
        let (listing, holder) = match key {
            FileKey::Name(name) => {
                let listing = self.listings.get(self.best_for_name(name)?)?;
                (listing, listing.holders.pick(rng)?)
            }
            FileKey::Id(id) => {
                let slots = self.by_id.get(id)?;
                let listing = self.listings.get(self.best_for_id(slots)?)?;
                if slots.len() == 1 {
                    (listing, listing.holders.pick(rng)?)
                } else {
                    // Rare (one content under several names): pick from the deduplicated
                    // union so a holder listing it twice is not twice as likely.
                    let union = self.union_of(slots);
                    let pick = *union.get(rng.random_range(0..union.len().max(1)))?;
                    (listing, pick)
                }
            }
        };
        Some((listing.meta.clone(), self.holders.get(holder)?.addr.clone()))
    }

    /// All holders of a file, sorted; the file is chosen as in [`Registry::locate`] (by id:
    /// the holders under every name).
    pub fn holders(&self, key: &FileKey) -> Option<(FileMeta, Vec<PeerAddr>)> {
        let (listing, slots) = match key {
            FileKey::Name(name) => {
                let listing = self.listings.get(self.best_for_name(name)?)?;
                (listing, listing.holders.list.clone())
            }
            FileKey::Id(id) => {
                let slots = self.by_id.get(id)?;
                let listing = self.listings.get(self.best_for_id(slots)?)?;
                (listing, self.union_of(slots))
            }
        };
        let mut addrs: Vec<PeerAddr> = slots
            .iter()
            .filter_map(|&h| self.holders.get(h))
            .map(|h| h.addr.clone())
            .collect();
        addrs.sort_unstable();
        Some((listing.meta.clone(), addrs))
    }

    /// Files whose name contains `query`, ignoring case (an empty query lists everything),
    /// sorted by (name, id), at most `limit` of them.
    pub fn search(&self, query: &str, limit: usize) -> Vec<SearchHit> {
        if limit == 0 {
            return Vec::new();
        }
        let query = query.to_lowercase();
        let mut found: Vec<&Listing> = self
            .by_name
            .iter()
            .filter(|(name, _)| contains_ignoring_case(name, &query))
            .flat_map(|(_, ids)| ids.iter())
            .filter_map(|&(_, slot)| self.listings.get(slot))
            .collect();
        let order =
            |a: &&Listing, b: &&Listing| (&a.meta.name, a.meta.id).cmp(&(&b.meta.name, b.meta.id));
        // Select the first `limit` before sorting: a broad query over a large registry
        // then sorts only what it returns.
        if found.len() > limit {
            found.select_nth_unstable_by(limit, order);
            found.truncate(limit);
        }
        found.sort_unstable_by(order);
        found
            .into_iter()
            .map(|l| SearchHit {
                file: l.meta.clone(),
                holders: u32::try_from(l.holders.len()).unwrap_or(u32::MAX),
            })
            .collect()
    }

    /// Distinct (name, id) listings.
    pub fn listing_count(&self) -> usize {
        self.listings.len()
    }

    /// (listing, holder) pairs.
    pub fn registration_count(&self) -> usize {
        self.registrations
    }

    /// Distinct holders with at least one registration.
    pub fn holder_count(&self) -> usize {
        self.holder_slots.len()
    }

    fn listing_slot_or_insert(&mut self, meta: &FileMeta) -> usize {
        let pos = match self.by_name.get(&meta.name) {
            Some(ids) => match ids.binary_search_by_key(&meta.id, |&(id, _)| id) {
                Ok(i) => match ids.get(i) {
                    Some(&(_, slot)) => return slot,
                    None => i,
                },
                Err(i) => i,
            },
            None => 0,
        };
        let slot = self.listings.insert(Listing {
            meta: meta.clone(),
            holders: HolderSet::default(),
        });
        let ids = self.by_name.entry(meta.name.clone()).or_default();
        ids.insert(pos.min(ids.len()), (meta.id, slot));
        self.by_id.entry(meta.id).or_default().push(slot);
        slot
    }

    /// Removes holder `h` from listing `slot` (the caller keeps the holder's reverse index),
    /// deleting the listing if it is left empty.
    fn remove_registration(&mut self, h: usize, slot: usize) -> bool {
        let Some(listing) = self.listings.get_mut(slot) else {
            return false;
        };
        if !listing.holders.remove(h) {
            return false;
        }
        self.registrations = self.registrations.saturating_sub(1);
        if listing.holders.is_empty() {
            self.delete_listing(slot);
        }
        true
    }

    fn delete_listing(&mut self, slot: usize) {
        let Some(listing) = self.listings.remove(slot) else {
            return;
        };
        let FileMeta { name, id, .. } = listing.meta;
        if let Some(ids) = self.by_name.get_mut(&name) {
            ids.retain(|&(_, s)| s != slot);
            if ids.is_empty() {
                self.by_name.remove(&name);
            }
        }
        if let Some(slots) = self.by_id.get_mut(&id) {
            slots.retain(|&s| s != slot);
            if slots.is_empty() {
                self.by_id.remove(&id);
            }
        }
    }

    /// The listing a name lookup uses: most holders, ties to the smallest id.
    fn best_for_name(&self, name: &str) -> Option<usize> {
        let ids = self.by_name.get(name)?;
        let mut best: Option<(usize, usize)> = None;
        // Ascending id order, and only a strictly larger count replaces: ties keep the
        // smallest id.
        for &(_, slot) in ids {
            let count = self.listings.get(slot).map_or(0, |l| l.holders.len());
            if best.is_none_or(|(_, c)| count > c) {
                best = Some((slot, count));
            }
        }
        best.map(|(slot, _)| slot)
    }

    /// The listing whose metadata an id lookup reports: most holders, ties to the smallest
    /// name.
    fn best_for_id(&self, slots: &[usize]) -> Option<usize> {
        slots
            .iter()
            .filter_map(|&s| self.listings.get(s).map(|l| (s, l)))
            .max_by(|(_, a), (_, b)| {
                a.holders
                    .len()
                    .cmp(&b.holders.len())
                    .then_with(|| b.meta.name.cmp(&a.meta.name))
            })
            .map(|(s, _)| s)
    }

    /// Distinct holder slots over several listings.
    fn union_of(&self, slots: &[usize]) -> Vec<usize> {
        let mut union: Vec<usize> = slots
            .iter()
            .filter_map(|&s| self.listings.get(s))
            .flat_map(|l| l.holders.list.iter().copied())
            .collect();
        union.sort_unstable();
        union.dedup();
        union
    }
}

/// `query` must already be lowercase. ASCII names (the common case) are compared without
/// allocating.
fn contains_ignoring_case(name: &str, query: &str) -> bool {
    if query.is_empty() {
        return true;
    }
    if name.is_ascii() && query.is_ascii() {
        return name
            .as_bytes()
            .windows(query.len())
            .any(|w| w.eq_ignore_ascii_case(query.as_bytes()));
    }
    name.to_lowercase().contains(query)
}

/// The holders of one listing: a vector for an O(1) uniform choice, plus a position index
/// once the set is large enough that a linear search on removal would hurt.
#[derive(Default)]
struct HolderSet {
    list: Vec<usize>,
    index: Option<HashMap<usize, usize>>,
}

impl HolderSet {
    fn len(&self) -> usize {
        self.list.len()
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn position(&self, h: usize) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&h).copied(),
            None => self.list.iter().position(|&x| x == h),
        }
    }

    fn insert(&mut self, h: usize) -> bool {
        if self.position(h).is_some() {
            return false;
        }
        self.list.push(h);
        match &mut self.index {
            Some(index) => {
                index.insert(h, self.list.len() - 1);
            }
            None if self.list.len() > INDEX_FROM => {
                self.index = Some(self.list.iter().enumerate().map(|(i, &x)| (x, i)).collect());
            }
            None => {}
        }
        true
    }

    fn remove(&mut self, h: usize) -> bool {
        let Some(pos) = self.position(h) else {
            return false;
        };
        self.list.swap_remove(pos);
        if let Some(index) = &mut self.index {
            index.remove(&h);
            if let Some(&moved) = self.list.get(pos) {
                index.insert(moved, pos);
            }
        }
        true
    }

    fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        if self.list.is_empty() {
            return None;
        }
        self.list.get(rng.random_range(0..self.list.len())).copied()
    }
}

/// Numbered slots with reuse, so slot numbers stay small and stable while their entry lives.
struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        if let Some(slot) = self.free.pop() {
            if let Some(entry) = self.entries.get_mut(slot) {
                *entry = Some(value);
                return slot;
            }
        }
        self.entries.push(Some(value));
        self.entries.len() - 1
    }

    fn remove(&mut self, slot: usize) -> Option<T> {
        let value = self.entries.get_mut(slot)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(value)
    }

    fn get(&self, slot: usize) -> Option<&T> {
        self.entries.get(slot)?.as_ref()
    }

    fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.entries.get_mut(slot)?.as_mut()
    }

    fn len(&self) -> usize {
        self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::{BTreeMap, BTreeSet};

    fn meta(name: &str, id: u8) -> FileMeta {
        FileMeta {
            name: name.into(),
            size: u64::from(id) * 10,
            chunk_size: 1024,
            id: FileId([id; 32]),
        }
    }

    fn addr(s: &str) -> PeerAddr {
        PeerAddr::new(s).unwrap()
    }

    fn name(s: &str) -> FileKey {
        FileKey::Name(s.into())
    }

    fn id(n: u8) -> FileKey {
        FileKey::Id(FileId([n; 32]))
    }

    #[test]
    fn register_counts_only_new_registrations() {
        let mut r = Registry::new();
        let (a, b) = (addr("a:1"), addr("b:1"));
        assert_eq!(r.register(&a, &[meta("x", 1), meta("y", 2)]), 2);
        assert_eq!(r.register(&a, &[meta("x", 1), meta("x", 1)]), 0);
        assert_eq!(r.register(&b, &[meta("x", 1)]), 1);
        assert_eq!(r.register(&b, &[]), 0);
        assert_eq!(
            (r.listing_count(), r.registration_count(), r.holder_count()),
            (2, 3, 2)
        );
        assert_eq!(r.holders(&name("x")), Some((meta("x", 1), vec![a, b])));
    }

    #[test]
    fn first_meta_wins() {
        let mut r = Registry::new();
        let mut other = meta("x", 1);
        other.size = 999;
        r.register(&addr("a:1"), &[meta("x", 1)]);
        r.register(&addr("b:1"), &[other]);
        assert_eq!(r.holders(&name("x")).unwrap().0, meta("x", 1));
    }

    #[test]
    fn two_ids_under_one_name() {
        let mut r = Registry::new();
        let (a, b, c) = (addr("a:1"), addr("b:1"), addr("c:1"));
        r.register(&a, &[meta("x", 2)]);
        r.register(&b, &[meta("x", 1)]);
        // Tie (one holder each): the smallest id.
        assert_eq!(
            r.holders(&name("x")).unwrap(),
            (meta("x", 1), vec![b.clone()])
        );
        r.register(&c, &[meta("x", 2)]);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            let (file, holder) = r.locate(&name("x"), &mut rng).unwrap();
            assert_eq!(file, meta("x", 2));
            assert!(holder == a || holder == c);
        }
        assert_eq!(r.holders(&id(1)).unwrap(), (meta("x", 1), vec![b]));
        assert_eq!(r.listing_count(), 2);
    }

    #[test]
    fn one_id_under_two_names() {
        let mut r = Registry::new();
        let (a, b) = (addr("a:1"), addr("b:1"));
        r.register(&a, &[meta("x", 1), meta("y", 1)]);
        r.register(&b, &[meta("y", 1)]);
        assert_eq!(r.registration_count(), 3);
        // By id: both holders once each; metadata of the listing with more holders.
        assert_eq!(
            r.holders(&id(1)).unwrap(),
            (meta("y", 1), vec![a.clone(), b.clone()])
        );
        assert_eq!(r.holders(&name("x")).unwrap().1, vec![a.clone()]);
        // Unregistering the id removes it under both names.
        assert_eq!(r.unregister(&a, &[FileId([1; 32])]), 2);
        assert_eq!(r.holders(&name("x")), None);
        assert_eq!(r.holders(&id(1)).unwrap(), (meta("y", 1), vec![b]));
    }

    #[test]
    fn locate_by_id_is_uniform_over_distinct_holders() {
        let mut r = Registry::new();
        let (a, b) = (addr("a:1"), addr("b:1"));
        // `a` lists the content under two names; it must not be picked twice as often.
        r.register(&a, &[meta("x", 1), meta("y", 1)]);
        r.register(&b, &[meta("y", 1)]);
        let mut rng = StdRng::seed_from_u64(3);
        let a_count = (0..2000)
            .filter(|_| r.locate(&id(1), &mut rng).unwrap().1 == a)
            .count();
        assert!((850..1150).contains(&a_count), "{a_count}");
    }

    #[test]
    fn unregister_all_and_empty_listings_disappear() {
        let mut r = Registry::new();
        let (a, b) = (addr("a:1"), addr("b:1"));
        r.register(&a, &[meta("x", 1), meta("y", 2), meta("z", 3)]);
        r.register(&b, &[meta("x", 1)]);
        assert_eq!(r.unregister(&a, &[]), 3);
        assert_eq!(
            (r.listing_count(), r.registration_count(), r.holder_count()),
            (1, 1, 1)
        );
        assert_eq!(r.holders(&name("y")), None);
        assert_eq!(r.search("", 10).len(), 1);
        assert_eq!(r.unregister(&a, &[]), 0);
        assert_eq!(r.unregister(&b, &[FileId([9; 32])]), 0);
        assert_eq!(r.unregister(&b, &[FileId([1; 32]), FileId([1; 32])]), 1);
        assert_eq!(
            (r.listing_count(), r.registration_count(), r.holder_count()),
            (0, 0, 0)
        );
        assert!(r.by_name.is_empty() && r.by_id.is_empty() && r.holder_slots.is_empty());
    }

    #[test]
    fn churn_reuses_slots() {
        let mut r = Registry::new();
        for round in 0..50u8 {
            let holder = addr(&format!("h{round}:1"));
            r.register(&holder, &[meta("x", round), meta("y", 1)]);
            r.unregister(&holder, &[]);
        }
        assert_eq!(r.listing_count(), 0);
        assert!(r.listings.entries.len() <= 2 && r.holders.entries.len() <= 1);
    }

    #[test]
    fn search_is_case_insensitive_sorted_and_limited() {
        let mut r = Registry::new();
        let a = addr("a:1");
        r.register(
            &a,
            &[
                meta("Song.OGG", 1),
                meta("readme.txt", 2),
                meta("song.ogg", 3),
                meta("song.ogg", 4),
                meta("ÉTÉ.flac", 5),
            ],
        );
        r.register(&addr("b:1"), &[meta("song.ogg", 4)]);
        let names = |hits: Vec<SearchHit>| -> Vec<(String, u8, u32)> {
            hits.into_iter()
                .map(|h| (h.file.name, h.file.id.0[0], h.holders))
                .collect()
        };
        assert_eq!(
            names(r.search("SONG", 10)),
            vec![
                ("Song.OGG".into(), 1, 1),
                ("song.ogg".into(), 3, 1),
                ("song.ogg".into(), 4, 2)
            ]
        );
        assert_eq!(names(r.search("été", 10)), vec![("ÉTÉ.flac".into(), 5, 1)]);
        assert_eq!(r.search("", 10).len(), 5);
        assert_eq!(
            names(r.search("", 2)),
            vec![("Song.OGG".into(), 1, 1), ("readme.txt".into(), 2, 1)]
        );
        assert!(r.search("", 0).is_empty());
        assert!(r.search("nothing", 10).is_empty());
    }

    #[test]
    fn unknown_keys() {
        let r = Registry::new();
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(r.locate(&name("x"), &mut rng), None);
        assert_eq!(r.locate(&id(1), &mut rng), None);
        assert_eq!(r.holders(&name("x")), None);
    }

    #[test]
    fn locate_spreads_load_evenly() {
        let mut r = Registry::new();
        let holders = [addr("a:1"), addr("b:1"), addr("c:1")];
        for h in &holders {
            r.register(h, &[meta("x", 1)]);
        }
        let mut rng = StdRng::seed_from_u64(2024);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            let (_, h) = r.locate(&name("x"), &mut rng).unwrap();
            let i = holders.iter().position(|x| *x == h).unwrap();
            counts[i] += 1;
        }
        for c in counts {
            assert!((840..=1170).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn large_holder_sets_use_the_index() {
        let mut r = Registry::new();
        let many: Vec<PeerAddr> = (0..100).map(|i| addr(&format!("p{i}:1"))).collect();
        for h in &many {
            r.register(h, &[meta("x", 1)]);
        }
        for h in many.iter().step_by(2) {
            assert_eq!(r.unregister(h, &[]), 1);
        }
        let (_, left) = r.holders(&name("x")).unwrap();
        let mut expected: Vec<PeerAddr> = many.iter().skip(1).step_by(2).cloned().collect();
        expected.sort();
        assert_eq!(left, expected);
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..100 {
            let (_, h) = r.locate(&name("x"), &mut rng).unwrap();
            assert!(expected.contains(&h));
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Register(u8, Vec<(u8, u8, u64)>),
        Unregister(u8, Vec<u8>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..5u8, prop::collection::vec((0..4u8, 0..4u8, 0..3u64), 0..5))
                .prop_map(|(h, files)| Op::Register(h, files)),
            1 => (0..5u8, prop::collection::vec(0..4u8, 0..3))
                .prop_map(|(h, ids)| Op::Unregister(h, ids)),
        ]
    }

    /// The obvious model: (name, id) -> (first meta, holders).
    type Model = BTreeMap<(String, u8), (FileMeta, BTreeSet<PeerAddr>)>;

    fn model_holders(model: &Model, key: &FileKey) -> Option<(FileMeta, Vec<PeerAddr>)> {
        let listings = model.iter().filter(|((n, i), _)| match key {
            FileKey::Name(name) => n == name,
            FileKey::Id(id) => FileId([*i; 32]) == *id,
        });
        match key {
            FileKey::Name(_) => listings
                // Most holders; the model iterates ids ascending, so `rev` + `max_by_key`
                // (last max wins) picks the smallest id on ties.
                .rev()
                .max_by_key(|(_, (_, hs))| hs.len())
                .map(|(_, (m, hs))| (m.clone(), hs.iter().cloned().collect())),
            FileKey::Id(_) => {
                let all: Vec<_> = listings.collect();
                let (_, (best, _)) = all
                    .iter()
                    .rev()
                    .max_by_key(|(_, (_, hs))| hs.len())
                    .copied()?;
                let union: BTreeSet<PeerAddr> = all
                    .iter()
                    .flat_map(|(_, (_, hs))| hs.iter().cloned())
                    .collect();
                Some((best.clone(), union.into_iter().collect()))
            }
        }
    }

    proptest! {
        #[test]
        fn registry_agrees_with_a_model(ops in prop::collection::vec(op(), 1..40)) {
            let mut r = Registry::new();
            let mut model = Model::new();
            for op in ops {
                match op {
                    Op::Register(h, files) => {
                        let holder = addr(&format!("h{h}:1"));
                        let metas: Vec<FileMeta> = files.iter().map(|&(n, i, size)| FileMeta {
                            name: format!("n{n}"), size, chunk_size: 1024, id: FileId([i; 32]),
                        }).collect();
                        let mut added = 0;
                        for m in &metas {
                            let entry = model
                                .entry((m.name.clone(), m.id.0[0]))
                                .or_insert_with(|| (m.clone(), BTreeSet::new()));
                            added += u32::from(entry.1.insert(holder.clone()));
                        }
                        prop_assert_eq!(r.register(&holder, &metas), added);
                    }
                    Op::Unregister(h, ids) => {
                        let holder = addr(&format!("h{h}:1"));
                        let mut removed = 0;
                        for (key, (_, hs)) in model.iter_mut() {
                            if (ids.is_empty() || ids.contains(&key.1)) && hs.remove(&holder) {
                                removed += 1;
                            }
                        }
                        model.retain(|_, (_, hs)| !hs.is_empty());
                        let ids: Vec<FileId> = ids.iter().map(|&i| FileId([i; 32])).collect();
                        prop_assert_eq!(r.unregister(&holder, &ids), removed);
                    }
                }
                let registrations: usize = model.values().map(|(_, hs)| hs.len()).sum();
                prop_assert_eq!(r.registration_count(), registrations);
                prop_assert_eq!(r.listing_count(), model.len());
                let holders: BTreeSet<&PeerAddr> = model.values().flat_map(|(_, hs)| hs).collect();
                prop_assert_eq!(r.holder_count(), holders.len());
                for n in 0..4u8 {
                    let key = FileKey::Name(format!("n{n}"));
                    prop_assert_eq!(r.holders(&key), model_holders(&model, &key));
                    let key = FileKey::Id(FileId([n; 32]));
                    prop_assert_eq!(r.holders(&key), model_holders(&model, &key));
                }
            }
        }
    }
}
