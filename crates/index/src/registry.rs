//! The registry: which peer holds which file, and until when. Pure data: no I/O, no locking,
//! no clock (every time-dependent call takes `now`), and the random choice of a holder takes
//! the caller's `Rng`, so tests can seed it.

use std::cmp::Ordering;
use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::time::Duration;

use rand::Rng;
use shoal_proto::message::SearchHit;
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};

/// How long a registration lives without renewal unless configured otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// A holder set gets a position index above this many holders (removal stays O(1)).
const INDEX_FROM: usize = 32;
/// ... and loses it again below this many, so memory stays flat after churn.
const UNINDEX_BELOW: usize = INDEX_FROM / 2;
/// Random picks tried before a lookup filters the expired holders out of a holder set.
const PICK_TRIES: usize = 8;
/// Slot numbers stay below this: the top bit of a key-index value marks a shared list.
const MAX_SLOTS: u32 = SHARED;
const SHARED: u32 = 1 << 31;
/// Tables (slabs, maps, vectors) are shrunk once their live entries fill less than a
/// `SHRINK_BELOW`th of what they hold room for...
const SHRINK_BELOW: usize = 4;
/// ... and hold room for at least this many (small tables are not worth the rehash).
const SHRINK_FROM: usize = 1024;
/// Times a sliced search starts over because the registry compacted its slots under it;
/// the next attempt runs in one slice, so a search always ends.
const SEARCH_RESTARTS: u32 = 3;

/// Which peers hold which files, with a lease per holder.
///
/// Listings are keyed by (name, id): two peers can hold different contents under one name
/// (the id tells them apart) and one content under two names. Each listing keeps the holders
/// in a vector, so choosing one at random costs O(1); holders and listings are numbered
/// slots, so a registration costs a few bytes, not a copy of the address.
///
/// Leases: registering (or [`Registry::renew`]) sets the holder's expiry to `now + lease`.
/// From its expiry on, a holder is invisible to lookups; [`Registry::sweep`] then removes
/// its registrations, and a holder that registers after its lease lapsed starts afresh.
///
/// ```
/// use std::time::Duration;
/// use rand::{SeedableRng, rngs::StdRng};
/// use shoal_index::Registry;
/// use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};
///
/// let mut registry = Registry::with_lease(Duration::from_secs(60));
/// let song = FileMeta { name: "song.ogg".into(), size: 3, chunk_size: 1024, id: FileId([1; 32]) };
/// let alice = PeerAddr::new("alice:7000").unwrap();
/// let now = Duration::ZERO;
/// assert_eq!(registry.register(&alice, &[song.clone()], now), 1);
/// let mut rng = StdRng::seed_from_u64(7);
/// let key = FileKey::Name("song.ogg".into());
/// assert_eq!(registry.locate(&key, now, &mut rng), Some((song, alice)));
/// // 60 s later, without a renewal, the lease has lapsed.
/// assert_eq!(registry.locate(&key, Duration::from_secs(60), &mut rng), None);
/// ```
pub struct Registry {
    lease: Duration,
    listings: Slab<Listing>,
    /// Keyed hash of the name -> listings with that name.
    by_name: KeyIndex,
    /// Keyed hash of the id -> listings with that id.
    by_id: KeyIndex,
    holders: Slab<Holder>,
    holder_slots: HashMap<PeerAddr, u32>,
    /// The addresses registrations came from, with what is charged to each.
    addresses: Slab<Address>,
    address_slots: HashMap<Box<str>, u32>,
    /// Position indexes of the few holder sets larger than `INDEX_FROM`, by listing slot
    /// (kept out of `Listing` so the common small listing does not pay for the field).
    positions: HashMap<u32, HashMap<u32, u32>>,
    registrations: usize,
    /// No lease ends before this (a lower bound, exact after a sweep). Until then every
    /// holder is live and lookups skip the per-holder check.
    earliest_expiry: Duration,
    /// Bumped whenever listings change slot (compaction), so a sliced search knows to
    /// start over.
    generation: u64,
}

/// One (name, id) and its holders. Stored decomposed rather than as a `FileMeta`, and with
/// one holder inline, because a registry of a million single-holder files is mostly these.
struct Listing {
    name: Box<str>,
    id: FileId,
    size: u64,
    chunk_size: u32,
    holders: HolderList,
}

impl Listing {
    fn meta(&self) -> FileMeta {
        FileMeta {
            name: self.name.to_string(),
            size: self.size,
            chunk_size: self.chunk_size,
            id: self.id,
        }
    }

    fn key(&self) -> (&str, FileId) {
        (&self.name, self.id)
    }
}

struct Holder {
    addr: PeerAddr,
    /// Reverse index (listing slots), so unregistering a holder touches only its listings.
    listings: Vec<u32>,
    /// The holder is live while `now < expires`.
    expires: Duration,
    /// The address (slot in `addresses`) its registrations are charged to: the host it
    /// first registered from.
    address: u32,
}

/// A source address: the host registrations arrived from.
struct Address {
    host: Box<str>,
    /// Registrations of the holders charged to it.
    registrations: usize,
    /// Holders charged to it (the entry goes with the last).
    holders: usize,
}

/// Caps on what one holder, and the holders registered from one source address, may hold;
/// see [`Registry::register_within`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistrationLimits {
    /// Most registrations one holder may have.
    pub per_holder: usize,
    /// Most registrations the holders first registered from one host may have together.
    pub per_address: usize,
}

impl RegistrationLimits {
    /// No cap at all (replaying a log, restoring a snapshot, tests).
    pub const UNLIMITED: RegistrationLimits = RegistrationLimits {
        per_holder: usize::MAX,
        per_address: usize::MAX,
    };
}

/// A registration refused because it would take a holder or an address past its cap.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The holder would hold more than [`RegistrationLimits::per_holder`].
    #[error(
        "{holder} would hold {would} registrations; the limit is {limit} per holder \
         (unregister files first)"
    )]
    Holder {
        /// The holder.
        holder: PeerAddr,
        /// Registrations it would have after the request.
        would: usize,
        /// The cap.
        limit: usize,
    },
    /// The holders charged to the address would hold more than
    /// [`RegistrationLimits::per_address`].
    #[error(
        "holders registered from {address} would hold {would} registrations; the limit is \
         {limit} per source address"
    )]
    Address {
        /// The host the registrations come from.
        address: String,
        /// Registrations its holders would have after the request.
        would: usize,
        /// The cap.
        limit: usize,
    },
}

/// A listing as [`Registry::export_listings`] shows it (its holders come alongside, as numbers).
#[derive(Clone, Copy, Debug)]
pub struct ListingView<'a> {
    /// File name.
    pub name: &'a str,
    /// Content id.
    pub id: FileId,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
}

impl Default for Registry {
    fn default() -> Self {
        Self::with_lease(DEFAULT_LEASE)
    }
}

impl Registry {
    /// An empty registry with the default lease (60 s).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty registry whose registrations live for `lease` without renewal.
    pub fn with_lease(lease: Duration) -> Self {
        Registry {
            lease,
            listings: Slab::default(),
            by_name: KeyIndex::default(),
            by_id: KeyIndex::default(),
            holders: Slab::default(),
            holder_slots: HashMap::new(),
            addresses: Slab::default(),
            address_slots: HashMap::new(),
            positions: HashMap::new(),
            registrations: 0,
            earliest_expiry: Duration::MAX,
            generation: 0,
        }
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Changes the lease length; it applies from each holder's next registration or renewal.
    pub fn set_lease(&mut self, lease: Duration) {
        self.lease = lease;
    }

    /// Adds `holder` for each file and renews its lease to `now + lease`; returns how many
    /// (file, holder) registrations are new. A holder whose lease had lapsed first loses its
    /// old registrations (as a sweep would have removed them). The [`FileMeta`] stored for a
    /// listing is the first one registered (same name and id). An empty `files` changes
    /// nothing.
    pub fn register(&mut self, holder: &PeerAddr, files: &[FileMeta], now: Duration) -> u32 {
        self.register_charged(holder, holder.host(), files, now)
    }

    /// [`Registry::register`] within `limits`: `address` is the host the request came from,
    /// which a new holder's registrations are charged to (an existing holder stays charged
    /// to the address it first registered from). A request that would take the holder, or
    /// its address, past a cap is refused whole and changes nothing; files the holder
    /// already has do not count.
    pub fn register_within(
        &mut self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        now: Duration,
        limits: &RegistrationLimits,
    ) -> Result<u32, LimitExceeded> {
        if files.is_empty() {
            return Ok(0);
        }
        // What the holder and its address hold now (a lapsed holder starts afresh, charged
        // to this address).
        let existing = self.holder_slots.get(holder).copied();
        let entry = existing.and_then(|h| self.holders.get(h));
        let live = entry.filter(|e| now < e.expires);
        let held = live.map_or(0, |e| e.listings.len());
        let (charged, charged_now) = match live {
            Some(e) => {
                let a = self.addresses.get(e.address);
                (
                    a.map_or(address, |a| &*a.host),
                    a.map_or(0, |a| a.registrations),
                )
            }
            None => {
                let mut count = self
                    .address_slots
                    .get(address)
                    .and_then(|&a| self.addresses.get(a))
                    .map_or(0, |a| a.registrations);
                // A lapsed holder's old registrations go before the new ones come.
                if let Some(e) = entry
                    && self
                        .addresses
                        .get(e.address)
                        .is_some_and(|a| &*a.host == address)
                {
                    count = count.saturating_sub(e.listings.len());
                }
                (address, count)
            }
        };
        let fits = |n: usize| {
            held.saturating_add(n) <= limits.per_holder
                && charged_now.saturating_add(n) <= limits.per_address
        };
        if !fits(files.len()) {
            // Close to a cap: count exactly what is new.
            let new = self.count_new(live.and(existing), files);
            if held.saturating_add(new) > limits.per_holder {
                return Err(LimitExceeded::Holder {
                    holder: holder.clone(),
                    would: held.saturating_add(new),
                    limit: limits.per_holder,
                });
            }
            if charged_now.saturating_add(new) > limits.per_address {
                return Err(LimitExceeded::Address {
                    address: charged.to_string(),
                    would: charged_now.saturating_add(new),
                    limit: limits.per_address,
                });
            }
        }
        let charged = charged.to_string();
        Ok(self.register_charged(holder, &charged, files, now))
    }

    /// How many of `files` holder `h` (if known and live) does not have yet.
    fn count_new(&self, h: Option<u32>, files: &[FileMeta]) -> usize {
        let mut seen: HashSet<(&str, FileId)> = HashSet::new();
        files
            .iter()
            .filter(|meta| {
                let had = h.is_some_and(|h| {
                    self.find_listing(meta)
                        .is_some_and(|slot| self.position(slot, h).is_some())
                });
                !had && seen.insert((meta.name.as_str(), meta.id))
            })
            .count()
    }

    fn register_charged(
        &mut self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        now: Duration,
    ) -> u32 {
        if files.is_empty() {
            return 0;
        }
        if self.lapsed(holder, now) {
            self.unregister(holder, &[]);
        }
        let Some(h) = self.holder_or_insert(holder, address, now) else {
            return 0;
        };
        let mut added = 0u32;
        for meta in files {
            let Some(slot) = self.listing_slot_or_insert(meta) else {
                continue;
            };
            if self.add_holder(slot, h) {
                if let Some(entry) = self.holders.get_mut(h) {
                    entry.listings.push(slot);
                }
                self.registrations += 1;
                added = added.saturating_add(1);
            }
        }
        self.charge(h, added as usize, true);
        added
    }

    /// Adds (or takes back) `n` registrations to holder `h`'s address.
    fn charge(&mut self, h: u32, n: usize, add: bool) {
        let Some(a) = self.holders.get(h).map(|e| e.address) else {
            return;
        };
        if let Some(address) = self.addresses.get_mut(a) {
            address.registrations = if add {
                address.registrations.saturating_add(n)
            } else {
                address.registrations.saturating_sub(n)
            };
        }
    }

    /// Registrations charged to `address` (a host), for tests and diagnostics.
    pub fn address_registrations(&self, address: &str) -> usize {
        self.address_slots
            .get(address)
            .and_then(|&a| self.addresses.get(a))
            .map_or(0, |a| a.registrations)
    }

    /// Whether `holder` is known but its lease ended at or before `now`.
    pub fn lapsed(&self, holder: &PeerAddr, now: Duration) -> bool {
        self.holder_slots
            .get(holder)
            .and_then(|&h| self.holders.get(h))
            .is_some_and(|entry| now >= entry.expires)
    }

    /// Renews `holder`'s lease to `now + lease`. Returns its registration count, or `None`
    /// if the holder is unknown or its lease already lapsed (it must register again).
    pub fn renew(&mut self, holder: &PeerAddr, now: Duration) -> Option<u32> {
        let &h = self.holder_slots.get(holder)?;
        let entry = self.holders.get_mut(h)?;
        if now >= entry.expires {
            return None;
        }
        entry.expires = now.saturating_add(self.lease);
        Some(u32::try_from(entry.listings.len()).unwrap_or(u32::MAX))
    }

    /// Removes `holder` from the given ids (under every name listing that id); an empty slice
    /// removes the holder from everything. Returns the number of registrations removed.
    /// Listings left with no holder are deleted entirely, so memory stays flat under churn.
    pub fn unregister(&mut self, holder: &PeerAddr, ids: &[FileId]) -> u32 {
        let Some(&h) = self.holder_slots.get(holder) else {
            return 0;
        };
        let wanted: HashSet<u32> = if ids.is_empty() {
            HashSet::new()
        } else {
            ids.iter().flat_map(|id| self.slots_for_id(id)).collect()
        };
        let Some(entry) = self.holders.get_mut(h) else {
            return 0;
        };
        let targets: Vec<u32> = if ids.is_empty() {
            std::mem::take(&mut entry.listings)
        } else {
            let mut targets = Vec::new();
            entry.listings.retain(|slot| {
                let hit = wanted.contains(slot);
                if hit {
                    targets.push(*slot);
                }
                !hit
            });
            targets
        };
        let holder_done = entry.listings.is_empty();
        shrink_vec(&mut entry.listings);
        let mut removed = 0u32;
        for slot in targets {
            if self.remove_registration(h, slot) {
                removed = removed.saturating_add(1);
            }
        }
        self.charge(h, removed as usize, false);
        if holder_done {
            self.remove_holder(h);
        }
        self.reclaim();
        removed
    }

    /// Removes holder slot `h` (its registrations already gone) and, with its last holder,
    /// its address.
    fn remove_holder(&mut self, h: u32) {
        let Some(entry) = self.holders.remove(h) else {
            return;
        };
        self.holder_slots.remove(&entry.addr);
        let gone = match self.addresses.get_mut(entry.address) {
            Some(address) => {
                address.holders = address.holders.saturating_sub(1);
                address.holders == 0
            }
            None => false,
        };
        if gone && let Some(address) = self.addresses.remove(entry.address) {
            self.address_slots.remove(&address.host);
        }
    }

    /// Gives memory back once tables are mostly empty: listings move down into free slots
    /// so the slab can shrink, and maps and vectors are shrunk to what they hold. Each
    /// shrink follows at least three quarters of a table's entries going, so the work is
    /// amortised over the removals.
    fn reclaim(&mut self) {
        if mostly_empty(self.listings.len(), self.listings.capacity()) {
            self.compact_listings();
        }
        if mostly_empty(self.holders.len(), self.holders.capacity()) {
            self.holders.trim();
        }
        if mostly_empty(self.addresses.len(), self.addresses.capacity()) {
            self.addresses.trim();
        }
        shrink_map(&mut self.holder_slots);
        shrink_map(&mut self.address_slots);
        shrink_map(&mut self.positions);
        self.by_name.reclaim();
        self.by_id.reclaim();
    }

    /// Moves every listing above slot `len` into a free slot below it, then cuts the slab
    /// to `len`. Costs the moved listings plus the reverse indexes of their holders.
    fn compact_listings(&mut self) {
        let live = self.listings.len();
        let mut low_free: Vec<u32> = self
            .listings
            .free
            .iter()
            .copied()
            .filter(|&s| (s as usize) < live)
            .collect();
        let mut moved: HashMap<u32, u32> = HashMap::new();
        let mut touched: Vec<u32> = Vec::new();
        for from in live..self.listings.capacity() {
            let from = to_u32(from);
            if self.listings.get(from).is_none() {
                continue;
            }
            let Some(to) = low_free.pop() else {
                break;
            };
            self.move_listing(from, to);
            if let Some(listing) = self.listings.get(to) {
                touched.extend_from_slice(listing.holders.as_slice());
            }
            moved.insert(from, to);
        }
        touched.sort_unstable();
        touched.dedup();
        for h in touched {
            if let Some(entry) = self.holders.get_mut(h) {
                for slot in &mut entry.listings {
                    if let Some(&to) = moved.get(slot) {
                        *slot = to;
                    }
                }
            }
        }
        // The low free slots taken are live now; the ones left (none, as many listings
        // moved as there were holes) stay free, and every slot above `live` is empty.
        self.listings.free = low_free;
        self.listings.trim();
        self.generation = self.generation.wrapping_add(1);
    }

    /// Moves the listing in slot `from` to the free slot `to`, with every index naming it
    /// but its holders' reverse lists (the caller fixes those, in one pass).
    fn move_listing(&mut self, from: u32, to: u32) {
        let Some(listing) = self
            .listings
            .entries
            .get_mut(from as usize)
            .and_then(Option::take)
        else {
            return;
        };
        let name_hash = self.by_name.hash(&*listing.name);
        self.by_name.replace(name_hash, from, to);
        let id_hash = self.by_id.hash(&listing.id);
        self.by_id.replace(id_hash, from, to);
        if let Some(index) = self.positions.remove(&from) {
            self.positions.insert(to, index);
        }
        // The free list is rebuilt by the trim that ends the compaction.
        if let Some(entry) = self.listings.entries.get_mut(to as usize) {
            *entry = Some(listing);
        }
    }

    /// Removes every holder whose lease ended at or before `now`, with all its
    /// registrations. Returns each removed holder and how many registrations it had.
    pub fn sweep(&mut self, now: Duration) -> Vec<(PeerAddr, u32)> {
        if now < self.earliest_expiry {
            return Vec::new();
        }
        let expired: Vec<PeerAddr> = self
            .holders
            .iter()
            .filter(|(_, entry)| now >= entry.expires)
            .map(|(_, entry)| entry.addr.clone())
            .collect();
        let gone = expired
            .into_iter()
            .map(|addr| {
                let removed = self.unregister(&addr, &[]);
                (addr, removed)
            })
            .collect();
        self.earliest_expiry = self
            .holders
            .iter()
            .map(|(_, entry)| entry.expires)
            .min()
            .unwrap_or(Duration::MAX);
        gone
    }

    /// The seed's *get*: one live holder chosen uniformly at random with `rng`.
    ///
    /// By name: if several ids share the name, the id with the most live holders is used
    /// (ties: the smallest id). By id: any live holder of that id under any name, each
    /// distinct holder equally likely; the metadata is that of the listing with the most
    /// live holders.
    pub fn locate<R: Rng + ?Sized>(
        &self,
        key: &FileKey,
        now: Duration,
        rng: &mut R,
    ) -> Option<(FileMeta, PeerAddr)> {
        let (listing, holder) = match key {
            FileKey::Name(name) => {
                let slot = self.best_for_name(name, now)?;
                let listing = self.listings.get(slot)?;
                (
                    listing,
                    self.pick_live(listing.holders.as_slice(), now, rng)?,
                )
            }
            FileKey::Id(id) => {
                let slots = self.slots_for_id(id);
                let listing = self.listings.get(self.best_of(&slots, now)?)?;
                if slots.len() == 1 {
                    (
                        listing,
                        self.pick_live(listing.holders.as_slice(), now, rng)?,
                    )
                } else {
                    // Rare (one content under several names): pick from the deduplicated
                    // union so a holder listing it twice is not twice as likely.
                    let union = self.live_union(&slots, now);
                    let pick = *union.get(rng.random_range(0..union.len().max(1)))?;
                    (listing, pick)
                }
            }
        };
        Some((listing.meta(), self.holders.get(holder)?.addr.clone()))
    }

    /// All live holders of a file, sorted; the file is chosen as in [`Registry::locate`]
    /// (by id: the holders under every name).
    pub fn holders(&self, key: &FileKey, now: Duration) -> Option<(FileMeta, Vec<PeerAddr>)> {
        let (listing, slots) = match key {
            FileKey::Name(name) => {
                let listing = self.listings.get(self.best_for_name(name, now)?)?;
                let live = listing
                    .holders
                    .as_slice()
                    .iter()
                    .copied()
                    .filter(|&h| self.live(h, now))
                    .collect();
                (listing, live)
            }
            FileKey::Id(id) => {
                let slots = self.slots_for_id(id);
                let listing = self.listings.get(self.best_of(&slots, now)?)?;
                (listing, self.live_union(&slots, now))
            }
        };
        let mut addrs: Vec<PeerAddr> = slots
            .iter()
            .filter_map(|&h| self.holders.get(h))
            .map(|h| h.addr.clone())
            .collect();
        addrs.sort_unstable();
        Some((listing.meta(), addrs))
    }

    /// Files whose name contains `query`, ignoring case (an empty query lists everything),
    /// sorted by (name, id), at most `limit` of them. Holder counts count live holders only;
    /// a file with none is not listed.
    pub fn search(&self, query: &str, limit: usize, now: Duration) -> Vec<SearchHit> {
        let mut search = Search::new(query, limit);
        while !self.search_some(&mut search, now, usize::MAX) {}
        search.finish()
    }

    /// Goes on with `search` over at most `budget` listing slots; returns true when it
    /// has seen every slot ([`Search::finish`] then gives the hits). A caller that holds a
    /// lock around the registry releases it between calls, so a search over a large
    /// registry never holds it for long. Changes between calls are seen or not, as with
    /// any request racing a search; should listings move slots in between (after mass
    /// removals), the search starts over, and after a few restarts finishes in one call.
    pub fn search_some(&self, search: &mut Search, now: Duration, budget: usize) -> bool {
        if search.limit == 0 {
            return true;
        }
        let mut budget = budget;
        match search.generation {
            Some(g) if g != self.generation => {
                search.restart();
                if search.restarts > SEARCH_RESTARTS {
                    budget = usize::MAX;
                }
            }
            _ => {}
        }
        search.generation = Some(self.generation);
        let end = self.listings.capacity();
        let stop = search.next.saturating_add(budget).min(end);
        let entries = self.listings.entries.get(search.next..stop).unwrap_or(&[]);
        for listing in entries.iter().flatten() {
            if search
                .bound
                .as_ref()
                .is_some_and(|(name, id)| listing.key() > (name.as_str(), *id))
            {
                continue;
            }
            if !search.query.matches(&listing.name, &mut search.lowered) {
                continue;
            }
            let count = self.live_count(listing, now);
            if count > 0 {
                search.push(SearchHit {
                    file: listing.meta(),
                    holders: u32::try_from(count).unwrap_or(u32::MAX),
                    downloading: 0,
                    nodes: Vec::new(),
                });
            }
        }
        search.next = stop;
        stop >= end
    }

    /// Distinct (name, id) listings, expired holders' included until swept.
    pub fn listing_count(&self) -> usize {
        self.listings.len()
    }

    /// (listing, holder) pairs, expired holders' included until swept.
    pub fn registration_count(&self) -> usize {
        self.registrations
    }

    /// Distinct holders with at least one registration, expired ones included until swept.
    pub fn holder_count(&self) -> usize {
        self.holder_slots.len()
    }

    /// Every holder, for snapshots: a holder's position in this list is its number in
    /// [`Registry::export_listings`]. Leases are not exported.
    pub fn export_holders(&self) -> Vec<&PeerAddr> {
        self.holders.iter().map(|(_, entry)| &entry.addr).collect()
    }

    /// Calls `on_listing` once per listing, for snapshots, with its holders as positions in
    /// [`Registry::export_holders`]. The view borrows from the registry, so a caller can
    /// batch views without copying names.
    pub fn export_listings<'r, L>(&'r self, mut on_listing: L)
    where
        L: FnMut(ListingView<'r>, &[u32]),
    {
        // Slots may have holes; number holders densely (in `export_holders` order) so a
        // snapshot needs no gaps.
        let mut numbers = vec![u32::MAX; self.holders.capacity()];
        for (n, (slot, _)) in self.holders.iter().enumerate() {
            if let Some(number) = numbers.get_mut(slot as usize) {
                *number = to_u32(n);
            }
        }
        let mut mapped = Vec::new();
        for (_, l) in self.listings.iter() {
            mapped.clear();
            mapped.extend(
                l.holders
                    .as_slice()
                    .iter()
                    .filter_map(|&h| numbers.get(h as usize).copied()),
            );
            let view = ListingView {
                name: &l.name,
                id: l.id,
                size: l.size,
                chunk_size: l.chunk_size,
            };
            on_listing(view, &mapped);
        }
    }

    /// Restores one holder from a snapshot with a fresh lease (`now + lease`); returns the
    /// number to name it by in [`Registry::restore_listing`], or `None` if the registry is
    /// full. Call [`Registry::finish_restore`] after the last listing.
    pub fn restore_holder(&mut self, holder: &PeerAddr, now: Duration) -> Option<u32> {
        self.holder_or_insert(holder, holder.host(), now)
    }

    /// Restores one listing from a snapshot: `holders` are numbers returned by
    /// [`Registry::restore_holder`] (unknown numbers are skipped). Returns how many
    /// registrations are new.
    pub fn restore_listing(&mut self, file: &FileMeta, holders: &[u32]) -> u32 {
        let Some(slot) = self.listing_slot_or_insert(file) else {
            return 0;
        };
        let mut added = 0u32;
        for &h in holders {
            if self.holders.get(h).is_none() || !self.add_holder(slot, h) {
                continue;
            }
            if let Some(entry) = self.holders.get_mut(h) {
                entry.listings.push(slot);
            }
            self.charge(h, 1, true);
            self.registrations += 1;
            added = added.saturating_add(1);
        }
        if self
            .listings
            .get(slot)
            .is_some_and(|l| l.holders.as_slice().is_empty())
        {
            self.delete_listing(slot);
        }
        added
    }

    /// Ends a restore: drops holders that ended up with no registration (a damaged or
    /// hand-made snapshot could list one), so counts and memory stay exact.
    pub fn finish_restore(&mut self) {
        let empty: Vec<PeerAddr> = self
            .holders
            .iter()
            .filter(|(_, entry)| entry.listings.is_empty())
            .map(|(_, entry)| entry.addr.clone())
            .collect();
        for addr in empty {
            if let Some(&h) = self.holder_slots.get(&addr) {
                self.remove_holder(h);
            }
        }
        self.reclaim();
    }

    fn holder_or_insert(&mut self, holder: &PeerAddr, address: &str, now: Duration) -> Option<u32> {
        let expires = now.saturating_add(self.lease);
        let h = match self.holder_slots.get(holder) {
            Some(&h) => {
                if let Some(entry) = self.holders.get_mut(h) {
                    entry.expires = expires;
                }
                h
            }
            None => {
                let a = match self.address_slots.get(address) {
                    Some(&a) => a,
                    None => {
                        let a = self.addresses.insert(Address {
                            host: address.into(),
                            registrations: 0,
                            holders: 0,
                        })?;
                        self.address_slots.insert(address.into(), a);
                        a
                    }
                };
                let Some(h) = self.holders.insert(Holder {
                    addr: holder.clone(),
                    listings: Vec::new(),
                    expires,
                    address: a,
                }) else {
                    if self.addresses.get(a).is_some_and(|e| e.holders == 0)
                        && let Some(gone) = self.addresses.remove(a)
                    {
                        self.address_slots.remove(&gone.host);
                    }
                    return None;
                };
                if let Some(entry) = self.addresses.get_mut(a) {
                    entry.holders += 1;
                }
                self.holder_slots.insert(holder.clone(), h);
                h
            }
        };
        self.earliest_expiry = self.earliest_expiry.min(expires);
        Some(h)
    }

    fn live(&self, h: u32, now: Duration) -> bool {
        now < self.earliest_expiry || self.holders.get(h).is_some_and(|e| now < e.expires)
    }

    fn live_count(&self, listing: &Listing, now: Duration) -> usize {
        let holders = listing.holders.as_slice();
        if now < self.earliest_expiry {
            return holders.len();
        }
        holders.iter().filter(|&&h| self.live(h, now)).count()
    }

    /// A uniformly random live holder: a few random tries (each uniform over all holders, so
    /// a hit is uniform over the live ones), then an exact filter. Either way uniform.
    fn pick_live<R: Rng + ?Sized>(
        &self,
        holders: &[u32],
        now: Duration,
        rng: &mut R,
    ) -> Option<u32> {
        if holders.is_empty() {
            return None;
        }
        for _ in 0..PICK_TRIES {
            let h = *holders.get(rng.random_range(0..holders.len()))?;
            if self.live(h, now) {
                return Some(h);
            }
        }
        let live: Vec<u32> = holders
            .iter()
            .copied()
            .filter(|&h| self.live(h, now))
            .collect();
        if live.is_empty() {
            return None;
        }
        live.get(rng.random_range(0..live.len())).copied()
    }

    /// Listing slots for `id` (usually one).
    fn slots_for_id(&self, id: &FileId) -> Vec<u32> {
        self.by_id
            .candidates(self.by_id.hash(id))
            .iter()
            .copied()
            .filter(|&s| self.listings.get(s).is_some_and(|l| l.id == *id))
            .collect()
    }

    /// The listing of (name, id), if there is one.
    fn find_listing(&self, meta: &FileMeta) -> Option<u32> {
        let key = (meta.name.as_str(), meta.id);
        let candidates = self
            .by_name
            .candidates(self.by_name.hash(meta.name.as_str()));
        let i = self.sorted_position(candidates, key).ok()?;
        candidates.get(i).copied()
    }

    fn listing_slot_or_insert(&mut self, meta: &FileMeta) -> Option<u32> {
        let key = (meta.name.as_str(), meta.id);
        let name_hash = self.by_name.hash(meta.name.as_str());
        let name_pos = match self.sorted_position(self.by_name.candidates(name_hash), key) {
            Ok(i) => return self.by_name.candidates(name_hash).get(i).copied(),
            Err(i) => i,
        };
        let id_hash = self.by_id.hash(&meta.id);
        let id_pos = match self.sorted_position(self.by_id.candidates(id_hash), key) {
            Ok(i) | Err(i) => i,
        };
        let slot = self.listings.insert(Listing {
            name: meta.name.as_str().into(),
            id: meta.id,
            size: meta.size,
            chunk_size: meta.chunk_size,
            holders: HolderList::default(),
        })?;
        self.by_name.insert_at(name_hash, name_pos, slot);
        self.by_id.insert_at(id_hash, id_pos, slot);
        Some(slot)
    }

    /// Binary search of a candidate list, kept sorted by (name, id).
    fn sorted_position(&self, candidates: &[u32], key: (&str, FileId)) -> Result<usize, usize> {
        candidates.binary_search_by(|&s| match self.listings.get(s) {
            Some(l) => l.key().cmp(&key),
            None => Ordering::Less,
        })
    }

    fn position(&self, slot: u32, h: u32) -> Option<usize> {
        match self.positions.get(&slot) {
            Some(index) => index.get(&h).map(|&p| p as usize),
            None => self
                .listings
                .get(slot)?
                .holders
                .as_slice()
                .iter()
                .position(|&x| x == h),
        }
    }

    /// Adds holder `h` to listing `slot`; false if it was already there.
    fn add_holder(&mut self, slot: u32, h: u32) -> bool {
        if self.position(slot, h).is_some() {
            return false;
        }
        let Some(listing) = self.listings.get_mut(slot) else {
            return false;
        };
        listing.holders.push(h);
        let list = listing.holders.as_slice();
        match self.positions.get_mut(&slot) {
            Some(index) => {
                index.insert(h, to_u32(list.len() - 1));
            }
            None if list.len() > INDEX_FROM => {
                let index = list
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| (x, to_u32(i)))
                    .collect();
                self.positions.insert(slot, index);
            }
            None => {}
        }
        true
    }

    /// Removes holder `h` from listing `slot` (the caller keeps the holder's reverse index),
    /// deleting the listing if it is left empty.
    fn remove_registration(&mut self, h: u32, slot: u32) -> bool {
        let Some(pos) = self.position(slot, h) else {
            return false;
        };
        let Some(listing) = self.listings.get_mut(slot) else {
            return false;
        };
        listing.holders.swap_remove(pos);
        let list = listing.holders.as_slice();
        let left = list.len();
        if let Some(index) = self.positions.get_mut(&slot) {
            index.remove(&h);
            if let Some(&moved) = list.get(pos) {
                index.insert(moved, to_u32(pos));
            }
            if left < UNINDEX_BELOW {
                self.positions.remove(&slot);
            }
        }
        self.registrations = self.registrations.saturating_sub(1);
        if left == 0 {
            self.delete_listing(slot);
        }
        true
    }

    fn delete_listing(&mut self, slot: u32) {
        let Some(listing) = self.listings.remove(slot) else {
            return;
        };
        self.positions.remove(&slot);
        let name_hash = self.by_name.hash(&*listing.name);
        self.by_name.remove(name_hash, slot);
        let id_hash = self.by_id.hash(&listing.id);
        self.by_id.remove(id_hash, slot);
    }

    /// The listing a name lookup uses: most live holders, ties to the smallest id.
    fn best_for_name(&self, name: &str, now: Duration) -> Option<u32> {
        let candidates = self.by_name.candidates(self.by_name.hash(name));
        let mut best: Option<(u32, usize)> = None;
        // Candidates are sorted by (name, id), and only a strictly larger count replaces:
        // ties keep the smallest id.
        for &slot in candidates {
            let Some(listing) = self.listings.get(slot) else {
                continue;
            };
            if &*listing.name != name {
                continue;
            }
            let count = self.live_count(listing, now);
            if count > 0 && best.is_none_or(|(_, c)| count > c) {
                best = Some((slot, count));
            }
        }
        best.map(|(slot, _)| slot)
    }

    /// The listing whose metadata an id lookup reports: most live holders, ties to the
    /// smallest name.
    fn best_of(&self, slots: &[u32], now: Duration) -> Option<u32> {
        slots
            .iter()
            .filter_map(|&s| {
                self.listings
                    .get(s)
                    .map(|l| (s, l, self.live_count(l, now)))
            })
            .filter(|&(_, _, count)| count > 0)
            .max_by(|(_, a, ca), (_, b, cb)| ca.cmp(cb).then_with(|| b.name.cmp(&a.name)))
            .map(|(s, _, _)| s)
    }

    /// Distinct live holder slots over several listings.
    fn live_union(&self, slots: &[u32], now: Duration) -> Vec<u32> {
        let mut union: Vec<u32> = slots
            .iter()
            .filter_map(|&s| self.listings.get(s))
            .flat_map(|l| l.holders.as_slice().iter().copied())
            .filter(|&h| self.live(h, now))
            .collect();
        union.sort_unstable();
        union.dedup();
        union
    }
}

/// Slot numbers and positions are below `MAX_SLOTS`, so this never saturates in practice.
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A search in progress over a [`Registry`], in slices (see [`Registry::search_some`]):
/// the query is prepared once, and at most `2 * limit` hits are held at any time.
pub struct Search {
    query: Query,
    limit: usize,
    /// The next listing slot to look at.
    next: usize,
    /// The registry generation the slots were numbered in.
    generation: Option<u64>,
    restarts: u32,
    hits: Vec<SearchHit>,
    /// Once `limit` hits are held, the largest (name, id) among them: larger listings
    /// cannot make the answer, so they are skipped without being matched or copied.
    bound: Option<(String, FileId)>,
    /// Reused buffer for lowercasing names.
    lowered: Vec<u8>,
}

impl Search {
    /// A search for names containing `query` (ignoring case), at most `limit` hits.
    pub fn new(query: &str, limit: usize) -> Search {
        Search {
            query: Query::new(query),
            limit,
            next: 0,
            generation: None,
            restarts: 0,
            hits: Vec::new(),
            bound: None,
            lowered: Vec::new(),
        }
    }

    /// The hits, sorted by (name, id), at most `limit`.
    pub fn finish(mut self) -> Vec<SearchHit> {
        self.prune();
        self.hits
            .sort_unstable_by(|a, b| hit_key(a).cmp(&hit_key(b)));
        self.hits
    }

    /// Adds `hit` if its name contains the query (for stores that search elsewhere and
    /// filter here, such as [`crate::RedisStore`]).
    pub(crate) fn offer(&mut self, hit: SearchHit) {
        if self.query.matches(&hit.file.name, &mut self.lowered) {
            self.push(hit);
        }
    }

    fn restart(&mut self) {
        self.next = 0;
        self.restarts += 1;
        self.hits.clear();
        self.bound = None;
    }

    fn push(&mut self, hit: SearchHit) {
        self.hits.push(hit);
        if self.hits.len() >= self.limit.saturating_mul(2).max(64) {
            self.prune();
        }
    }

    /// Keeps the `limit` smallest hits, and remembers the largest of them.
    fn prune(&mut self) {
        if self.hits.len() <= self.limit {
            return;
        }
        let order = |a: &SearchHit, b: &SearchHit| hit_key(a).cmp(&hit_key(b));
        let last = self.limit.saturating_sub(1);
        self.hits.select_nth_unstable_by(last, order);
        self.hits.truncate(self.limit);
        self.bound = self
            .hits
            .get(last)
            .map(|h| (h.file.name.clone(), h.file.id));
    }
}

fn hit_key(hit: &SearchHit) -> (&str, FileId) {
    (&hit.file.name, hit.file.id)
}

/// A search query, lowercased once, with its skip table for a Horspool substring search.
struct Query {
    lower: Vec<u8>,
    ascii: bool,
    /// How far the window may move when its last byte is `b`.
    skip: Box<[usize; 256]>,
}

impl Query {
    fn new(query: &str) -> Query {
        let lower = query.to_lowercase().into_bytes();
        let mut skip = Box::new([lower.len().max(1); 256]);
        let last = lower.len().saturating_sub(1);
        for (j, &b) in lower.iter().enumerate().take(last) {
            if let Some(entry) = skip.get_mut(usize::from(b)) {
                *entry = last - j;
            }
        }
        Query {
            ascii: lower.is_ascii(),
            lower,
            skip,
        }
    }

    /// Whether `name` contains the query, ignoring case. ASCII names (the common case) are
    /// lowercased into `buf` without allocating.
    fn matches(&self, name: &str, buf: &mut Vec<u8>) -> bool {
        if self.lower.is_empty() {
            return true;
        }
        if name.is_ascii() {
            // Lowercase ASCII stays ASCII: it cannot contain a non-ASCII query.
            if !self.ascii || name.len() < self.lower.len() {
                return false;
            }
            buf.clear();
            buf.extend(name.bytes().map(|b| b.to_ascii_lowercase()));
            return self.find_in(buf);
        }
        // Lowercasing grows a name by half at most (İ, 2 bytes, becomes 3).
        if name.len().saturating_mul(2) < self.lower.len() {
            return false;
        }
        self.find_in(name.to_lowercase().as_bytes())
    }

    /// Horspool: compares from each window's last byte and skips by the table.
    fn find_in(&self, hay: &[u8]) -> bool {
        let needle = self.lower.as_slice();
        let Some((&last_byte, head)) = needle.split_last() else {
            return true;
        };
        let last = head.len();
        let mut at = 0;
        while let Some(window) = hay.get(at..at + needle.len()) {
            let Some(&b) = window.get(last) else {
                return false;
            };
            if b == last_byte && window.get(..last) == Some(head) {
                return true;
            }
            at += self.skip.get(usize::from(b)).copied().unwrap_or(1).max(1);
        }
        false
    }
}

/// Whether a table with `len` entries and room for `capacity` should shrink.
fn mostly_empty(len: usize, capacity: usize) -> bool {
    capacity >= SHRINK_FROM && len.saturating_mul(SHRINK_BELOW) < capacity
}

fn shrink_map<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if mostly_empty(map.len(), map.capacity()) {
        map.shrink_to_fit();
    }
}

fn shrink_vec<T>(list: &mut Vec<T>) {
    // Small lists too: a holder's reverse index is one of these per holder.
    if list.len().saturating_mul(SHRINK_BELOW) < list.capacity() {
        list.shrink_to_fit();
    }
}

/// A listing's holders: one inline (most files have one holder, and a vector would cost a
/// heap block each), a vector beyond.
enum HolderList {
    One(u32),
    Many(Vec<u32>),
}

impl Default for HolderList {
    fn default() -> Self {
        HolderList::Many(Vec::new())
    }
}

impl HolderList {
    fn as_slice(&self) -> &[u32] {
        match self {
            HolderList::One(h) => std::slice::from_ref(h),
            HolderList::Many(list) => list,
        }
    }

    fn push(&mut self, h: u32) {
        match self {
            HolderList::Many(list) if list.is_empty() => *self = HolderList::One(h),
            HolderList::Many(list) => list.push(h),
            HolderList::One(first) => *self = HolderList::Many(vec![*first, h]),
        }
    }

    fn swap_remove(&mut self, pos: usize) {
        match self {
            HolderList::One(_) if pos == 0 => *self = HolderList::Many(Vec::new()),
            HolderList::One(_) => {}
            HolderList::Many(list) if pos < list.len() => {
                list.swap_remove(pos);
                if list.len() * 4 < list.capacity() {
                    list.shrink_to_fit();
                }
            }
            HolderList::Many(_) => {}
        }
    }
}

/// An index from a key (a name or an id) to the listing slots with that key, kept sorted by
/// (name, id). Keys are stored only as a 32-bit keyed hash (SipHash with per-registry random
/// keys, so peers cannot aim collisions): the listing holds the key itself, and callers
/// compare it. A hash shared by several listings (several ids under one name, one id under
/// several names, or a rare 32-bit collision) points to a list in `shared`. This costs
/// about 9 bytes a listing where `HashMap<String, Vec<..>>` cost well over 100.
#[derive(Default)]
struct KeyIndex {
    keys: RandomState,
    /// Hash -> a listing slot, or `SHARED | index into shared`.
    map: HashMap<u32, u32, BuildHasherDefault<Spread>>,
    shared: Slab<Vec<u32>>,
}

impl KeyIndex {
    fn hash<K: Hash + ?Sized>(&self, key: &K) -> u32 {
        // Truncation is the point: the low 32 bits of a keyed 64-bit hash.
        self.keys.hash_one(key) as u32
    }

    fn candidates(&self, hash: u32) -> &[u32] {
        match self.map.get(&hash) {
            Some(v) if v & SHARED != 0 => {
                self.shared.get(v & !SHARED).map_or(&[][..], Vec::as_slice)
            }
            Some(v) => std::slice::from_ref(v),
            None => &[],
        }
    }

    /// Inserts `slot` at `pos` in the candidate list of `hash`.
    fn insert_at(&mut self, hash: u32, pos: usize, slot: u32) {
        match self.map.entry(hash) {
            Entry::Vacant(e) => {
                e.insert(slot);
            }
            Entry::Occupied(mut e) => {
                let v = *e.get();
                if v & SHARED != 0 {
                    if let Some(list) = self.shared.get_mut(v & !SHARED) {
                        list.insert(pos.min(list.len()), slot);
                    }
                } else {
                    let mut list = vec![v];
                    list.insert(pos.min(1), slot);
                    if let Some(i) = self.shared.insert(list) {
                        *e.get_mut() = SHARED | i;
                    }
                }
            }
        }
    }

    /// Renames listing slot `from` to `to` (the order of the list, by key, is unchanged).
    fn replace(&mut self, hash: u32, from: u32, to: u32) {
        let Some(v) = self.map.get_mut(&hash) else {
            return;
        };
        if *v & SHARED == 0 {
            if *v == from {
                *v = to;
            }
            return;
        }
        if let Some(list) = self.shared.get_mut(*v & !SHARED) {
            for s in list.iter_mut().filter(|s| **s == from) {
                *s = to;
            }
        }
    }

    fn reclaim(&mut self) {
        shrink_map(&mut self.map);
        if mostly_empty(self.shared.len(), self.shared.capacity()) {
            self.shared.trim();
        }
    }

    fn remove(&mut self, hash: u32, slot: u32) {
        let Some(&v) = self.map.get(&hash) else {
            return;
        };
        if v & SHARED == 0 {
            if v == slot {
                self.map.remove(&hash);
            }
            return;
        }
        let i = v & !SHARED;
        let Some(list) = self.shared.get_mut(i) else {
            return;
        };
        list.retain(|&s| s != slot);
        match *list.as_slice() {
            [] => {
                self.shared.remove(i);
                self.map.remove(&hash);
            }
            [one] => {
                self.shared.remove(i);
                self.map.insert(hash, one);
            }
            _ => {}
        }
    }
}

/// The hasher of `KeyIndex`'s map: its keys are already uniform keyed hashes, so one
/// multiplication spreads them into the high bits the table uses, instead of a second
/// SipHash.
#[derive(Default)]
struct Spread(u64);

impl Hasher for Spread {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Numbered slots with reuse, so slot numbers stay small and stable while their entry lives.
struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<u32>,
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
    /// `None` only when `MAX_SLOTS` entries are live (far beyond any memory this runs in).
    fn insert(&mut self, value: T) -> Option<u32> {
        if let Some(slot) = self.free.pop()
            && let Some(entry) = self.entries.get_mut(slot as usize)
        {
            *entry = Some(value);
            self.len += 1;
            return Some(slot);
        }
        let slot = u32::try_from(self.entries.len())
            .ok()
            .filter(|&s| s < MAX_SLOTS)?;
        self.entries.push(Some(value));
        self.len += 1;
        Some(slot)
    }

    fn remove(&mut self, slot: u32) -> Option<T> {
        let value = self.entries.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(value)
    }

    fn get(&self, slot: u32) -> Option<&T> {
        self.entries.get(slot as usize)?.as_ref()
    }

    fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.entries.get_mut(slot as usize)?.as_mut()
    }

    fn len(&self) -> usize {
        self.len
    }

    /// Highest slot number + 1.
    fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Drops the free slots at the end and gives back the room no entry uses. Live slots
    /// keep their numbers.
    fn trim(&mut self) {
        while self.entries.last().is_some_and(Option::is_none) {
            self.entries.pop();
        }
        let end = self.entries.len();
        self.free.retain(|&s| (s as usize) < end);
        self.entries.shrink_to_fit();
        self.free.shrink_to_fit();
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((to_u32(i), e.as_ref()?)))
    }
}

#[cfg(test)]
#[path = "test_model.rs"]
mod test_model;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use std::collections::{BTreeMap, BTreeSet};

    /// A time for tests where leases do not matter.
    const T0: Duration = Duration::ZERO;
    const LEASE: Duration = Duration::from_secs(60);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

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
        assert_eq!(r.register(&a, &[meta("x", 1), meta("y", 2)], T0), 2);
        assert_eq!(r.register(&a, &[meta("x", 1), meta("x", 1)], T0), 0);
        assert_eq!(r.register(&b, &[meta("x", 1)], T0), 1);
        assert_eq!(r.register(&b, &[], T0), 0);
        assert_eq!(
            (r.listing_count(), r.registration_count(), r.holder_count()),
            (2, 3, 2)
        );
        assert_eq!(r.holders(&name("x"), T0), Some((meta("x", 1), vec![a, b])));
    }

    #[test]
    fn first_meta_wins() {
        let mut r = Registry::new();
        let mut other = meta("x", 1);
        other.size = 999;
        r.register(&addr("a:1"), &[meta("x", 1)], T0);
        r.register(&addr("b:1"), &[other], T0);
        assert_eq!(r.holders(&name("x"), T0).unwrap().0, meta("x", 1));
    }

    #[test]
    fn two_ids_under_one_name() {
        let mut r = Registry::new();
        let (a, b, c) = (addr("a:1"), addr("b:1"), addr("c:1"));
        r.register(&a, &[meta("x", 2)], T0);
        r.register(&b, &[meta("x", 1)], T0);
        // Tie (one holder each): the smallest id.
        assert_eq!(
            r.holders(&name("x"), T0).unwrap(),
            (meta("x", 1), vec![b.clone()])
        );
        r.register(&c, &[meta("x", 2)], T0);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            let (file, holder) = r.locate(&name("x"), T0, &mut rng).unwrap();
            assert_eq!(file, meta("x", 2));
            assert!(holder == a || holder == c);
        }
        assert_eq!(r.holders(&id(1), T0).unwrap(), (meta("x", 1), vec![b]));
        assert_eq!(r.listing_count(), 2);
    }

    #[test]
    fn one_id_under_two_names() {
        let mut r = Registry::new();
        let (a, b) = (addr("a:1"), addr("b:1"));
        r.register(&a, &[meta("x", 1), meta("y", 1)], T0);
        r.register(&b, &[meta("y", 1)], T0);
        assert_eq!(r.registration_count(), 3);
        // By id: both holders once each; metadata of the listing with more holders.
        assert_eq!(
            r.holders(&id(1), T0).unwrap(),
            (meta("y", 1), vec![a.clone(), b.clone()])
        );
        assert_eq!(r.holders(&name("x"), T0).unwrap().1, vec![a.clone()]);
        // Unregistering the id removes it under both names.
        assert_eq!(r.unregister(&a, &[FileId([1; 32])]), 2);
        assert_eq!(r.holders(&name("x"), T0), None);
        assert_eq!(r.holders(&id(1), T0).unwrap(), (meta("y", 1), vec![b]));
    }

    #[test]
    fn locate_by_id_is_uniform_over_distinct_holders() {
        let mut r = Registry::new();
        let (a, b) = (addr("a:1"), addr("b:1"));
        // `a` lists the content under two names; it must not be picked twice as often.
        r.register(&a, &[meta("x", 1), meta("y", 1)], T0);
        r.register(&b, &[meta("y", 1)], T0);
        let mut rng = StdRng::seed_from_u64(3);
        let a_count = (0..2000)
            .filter(|_| r.locate(&id(1), T0, &mut rng).unwrap().1 == a)
            .count();
        assert!((850..1150).contains(&a_count), "{a_count}");
    }

    #[test]
    fn unregister_all_and_empty_listings_disappear() {
        let mut r = Registry::new();
        let (a, b) = (addr("a:1"), addr("b:1"));
        r.register(&a, &[meta("x", 1), meta("y", 2), meta("z", 3)], T0);
        r.register(&b, &[meta("x", 1)], T0);
        assert_eq!(r.unregister(&a, &[]), 3);
        assert_eq!(
            (r.listing_count(), r.registration_count(), r.holder_count()),
            (1, 1, 1)
        );
        assert_eq!(r.holders(&name("y"), T0), None);
        assert_eq!(r.search("", 10, T0).len(), 1);
        assert_eq!(r.unregister(&a, &[]), 0);
        assert_eq!(r.unregister(&b, &[FileId([9; 32])]), 0);
        assert_eq!(r.unregister(&b, &[FileId([1; 32]), FileId([1; 32])]), 1);
        assert_eq!(
            (r.listing_count(), r.registration_count(), r.holder_count()),
            (0, 0, 0)
        );
        assert!(r.by_name.map.is_empty() && r.by_id.map.is_empty() && r.holder_slots.is_empty());
    }

    #[test]
    fn churn_reuses_slots() {
        let mut r = Registry::new();
        for round in 0..50u8 {
            let holder = addr(&format!("h{round}:1"));
            r.register(&holder, &[meta("x", round), meta("y", 1)], T0);
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
            T0,
        );
        r.register(&addr("b:1"), &[meta("song.ogg", 4)], T0);
        let names = |hits: Vec<SearchHit>| -> Vec<(String, u8, u32)> {
            hits.into_iter()
                .map(|h| (h.file.name, h.file.id.0[0], h.holders))
                .collect()
        };
        assert_eq!(
            names(r.search("SONG", 10, T0)),
            vec![
                ("Song.OGG".into(), 1, 1),
                ("song.ogg".into(), 3, 1),
                ("song.ogg".into(), 4, 2)
            ]
        );
        assert_eq!(
            names(r.search("été", 10, T0)),
            vec![("ÉTÉ.flac".into(), 5, 1)]
        );
        assert_eq!(r.search("", 10, T0).len(), 5);
        assert_eq!(
            names(r.search("", 2, T0)),
            vec![("Song.OGG".into(), 1, 1), ("readme.txt".into(), 2, 1)]
        );
        assert!(r.search("", 0, T0).is_empty());
        assert!(r.search("nothing", 10, T0).is_empty());
    }

    #[test]
    fn unknown_keys() {
        let r = Registry::new();
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(r.locate(&name("x"), T0, &mut rng), None);
        assert_eq!(r.locate(&id(1), T0, &mut rng), None);
        assert_eq!(r.holders(&name("x"), T0), None);
    }

    #[test]
    fn locate_spreads_load_evenly() {
        let mut r = Registry::new();
        let holders = [addr("a:1"), addr("b:1"), addr("c:1")];
        for h in &holders {
            r.register(h, &[meta("x", 1)], T0);
        }
        let mut rng = StdRng::seed_from_u64(2024);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            let (_, h) = r.locate(&name("x"), T0, &mut rng).unwrap();
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
            r.register(h, &[meta("x", 1)], T0);
        }
        for h in many.iter().step_by(2) {
            assert_eq!(r.unregister(h, &[]), 1);
        }
        let (_, left) = r.holders(&name("x"), T0).unwrap();
        let mut expected: Vec<PeerAddr> = many.iter().skip(1).step_by(2).cloned().collect();
        expected.sort();
        assert_eq!(left, expected);
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..100 {
            let (_, h) = r.locate(&name("x"), T0, &mut rng).unwrap();
            assert!(expected.contains(&h));
        }
    }

    #[test]
    fn a_lapsed_holder_vanishes_from_every_lookup_at_its_expiry() {
        let mut r = Registry::with_lease(LEASE);
        let (a, b) = (addr("a:1"), addr("b:1"));
        r.register(&a, &[meta("x", 1), meta("only-a", 2)], secs(0));
        r.register(&b, &[meta("x", 1)], secs(30));
        let mut rng = StdRng::seed_from_u64(1);
        let just_before = secs(60) - Duration::from_millis(1);
        assert_eq!(
            r.holders(&name("x"), just_before).unwrap().1,
            vec![a.clone(), b.clone()]
        );
        // At exactly registration + lease, `a` is gone; `b` (registered later) stays.
        for now in [secs(60), secs(89)] {
            assert_eq!(r.holders(&name("x"), now).unwrap().1, vec![b.clone()]);
            assert_eq!(r.holders(&id(1), now).unwrap().1, vec![b.clone()]);
            for _ in 0..50 {
                assert_eq!(r.locate(&name("x"), now, &mut rng).unwrap().1, b);
                assert_eq!(r.locate(&id(1), now, &mut rng).unwrap().1, b);
            }
            assert_eq!(r.holders(&name("only-a"), now), None);
            assert_eq!(r.locate(&id(2), now, &mut rng), None);
            let hits = r.search("", 10, now);
            assert_eq!(hits.len(), 1);
            assert_eq!((hits[0].file.name.as_str(), hits[0].holders), ("x", 1));
        }
        assert_eq!(r.holders(&name("x"), secs(90)), None);
        assert!(r.search("", 10, secs(90)).is_empty());
        // Nothing was removed yet: lookups filter, the sweep removes.
        assert_eq!(r.registration_count(), 3);
    }

    #[test]
    fn renewing_keeps_a_holder_and_sweeping_removes_the_rest() {
        let mut r = Registry::with_lease(LEASE);
        let (a, b) = (addr("a:1"), addr("b:1"));
        r.register(&a, &[meta("x", 1), meta("y", 2)], secs(0));
        r.register(&b, &[meta("x", 1)], secs(0));
        for t in [20, 40, 60, 80, 100] {
            assert_eq!(r.renew(&a, secs(t)), Some(2), "renew at {t}");
            assert!(r.holders(&name("x"), secs(t)).unwrap().1.contains(&a));
        }
        assert_eq!(r.sweep(secs(59)), vec![]);
        assert_eq!(r.sweep(secs(100)), vec![(b.clone(), 1)]);
        assert_eq!((r.registration_count(), r.holder_count()), (2, 1));
        // A swept holder is unknown: renewing fails and it must register again.
        assert_eq!(r.renew(&b, secs(100)), None);
        // A lapsed but not yet swept holder cannot renew either.
        assert_eq!(r.renew(&a, secs(160)), None);
        assert!(r.lapsed(&a, secs(160)));
        // Registering after a lapse starts afresh: the old files are not revived.
        assert_eq!(r.register(&a, &[meta("z", 3)], secs(160)), 1);
        assert_eq!(r.holders(&name("y"), secs(160)), None);
        assert_eq!((r.registration_count(), r.listing_count()), (1, 1));
        assert_eq!(r.sweep(secs(220)), vec![(a, 1)]);
        assert_eq!(
            (r.registration_count(), r.listing_count(), r.holder_count()),
            (0, 0, 0)
        );
        assert!(r.by_name.map.is_empty() && r.by_id.map.is_empty() && r.positions.is_empty());
    }

    #[test]
    fn export_and_restore_round_trip() {
        let mut r = Registry::new();
        let holders: Vec<PeerAddr> = (0..40).map(|i| addr(&format!("p{i}:1"))).collect();
        for (i, h) in holders.iter().enumerate() {
            r.register(
                h,
                &[meta("big", 1), meta(&format!("own{i}"), 100 + i as u8)],
                T0,
            );
        }
        r.register(&holders[0], &[meta("big", 2), meta("alias", 1)], T0);
        // Leave a hole in the holder slots.
        r.unregister(&holders[3], &[]);
        let exported_holders: Vec<PeerAddr> = r.export_holders().into_iter().cloned().collect();
        let mut exported = Vec::new();
        r.export_listings(|l, hs| {
            let file = FileMeta {
                name: l.name.into(),
                size: l.size,
                chunk_size: l.chunk_size,
                id: l.id,
            };
            exported.push((file, hs.to_vec()));
        });
        let mut back = Registry::new();
        let numbers: Vec<u32> = exported_holders
            .iter()
            .map(|h| back.restore_holder(h, secs(5)).unwrap())
            .collect();
        for (file, hs) in &exported {
            let mapped: Vec<u32> = hs.iter().map(|&n| numbers[n as usize]).collect();
            back.restore_listing(file, &mapped);
        }
        back.finish_restore();
        assert_eq!(
            (
                back.registration_count(),
                back.listing_count(),
                back.holder_count()
            ),
            (r.registration_count(), r.listing_count(), r.holder_count())
        );
        for key in [name("big"), name("alias"), id(1), id(2), name("own7")] {
            assert_eq!(back.holders(&key, secs(5)), r.holders(&key, T0), "{key}");
        }
        // Restored holders got a fresh lease from the restore time.
        assert!(back.holders(&name("big"), secs(64)).is_some());
        assert!(back.holders(&name("big"), secs(65)).is_none());
    }

    fn many(prefix: &str, n: u32) -> Vec<FileMeta> {
        (0..n)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_le_bytes());
                id[4..8].copy_from_slice(&(prefix.len() as u32).to_le_bytes());
                id[8] = prefix.as_bytes()[0];
                FileMeta {
                    name: format!("{prefix}{i}.bin"),
                    size: 1,
                    chunk_size: 1024,
                    id: FileId(id),
                }
            })
            .collect()
    }

    /// Room in the big tables: listing slots, holder slots, the two key indexes, holders.
    fn capacities(r: &Registry) -> [usize; 5] {
        [
            r.listings.entries.capacity(),
            r.holders.entries.capacity(),
            r.by_name.map.capacity(),
            r.by_id.map.capacity(),
            r.holder_slots.capacity(),
        ]
    }

    /// Issue 9, memory per holder: a holder that registers a mass of files and then goes
    /// (unregistering everything, some by id, or lapsing) leaves the tables as small as
    /// what remains, even when an honest holder registered in between.
    #[test]
    fn a_mass_unregister_gives_the_memory_back() {
        for how in ["all", "by id", "lapse"] {
            let mut r = Registry::with_lease(LEASE);
            let honest = addr("honest:1");
            r.register(&honest, &many("keep", 50), secs(0));
            let empty = capacities(&r);
            let flood = addr("flood:1");
            let files = many("x", 40_000);
            r.register(&flood, &files, secs(0));
            // An honest file in a slot above the flood's: the slab cannot just be cut.
            let late = addr("late:1");
            r.register(&late, &many("late", 10), secs(10));
            r.renew(&honest, secs(10));
            assert!(capacities(&r)[0] >= 40_000);
            match how {
                "all" => assert_eq!(r.unregister(&flood, &[]), 40_000),
                "by id" => {
                    for chunk in files.chunks(3000) {
                        let ids: Vec<FileId> = chunk.iter().map(|f| f.id).collect();
                        r.unregister(&flood, &ids);
                    }
                }
                _ => assert_eq!(r.sweep(secs(60)), vec![(flood.clone(), 40_000)]),
            }
            assert_eq!((r.listing_count(), r.holder_count()), (60, 2), "{how}");
            let after = capacities(&r);
            for (i, (&now, &before)) in after.iter().zip(&empty).enumerate() {
                assert!(
                    now <= before.max(1024),
                    "{how}: table {i} holds room for {now} entries after the flood left \
                     (it held {before} before): {after:?}"
                );
            }
            // Everything left still answers, under its moved slots.
            assert_eq!(r.search("", 1000, secs(10)).len(), 60);
            assert_eq!(
                r.holders(&name("late3.bin"), secs(10)).unwrap().1,
                vec![late.clone()]
            );
            assert_eq!(
                r.holders(&FileKey::Id(many("keep", 50)[7].id), secs(10))
                    .unwrap()
                    .1,
                vec![honest.clone()]
            );
            assert_eq!(r.unregister(&late, &[many("late", 10)[2].id]), 1);
            assert_eq!(r.unregister(&honest, &[]), 50);
            assert_eq!(r.unregister(&late, &[]), 9);
            assert_eq!((r.listing_count(), r.registration_count()), (0, 0));
        }
    }

    /// Compaction moves listings between slots: every lookup, removal and search must still
    /// agree with a model after rounds of floods and removals (seeded).
    #[test]
    fn compaction_keeps_every_lookup_right() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut r = Registry::new();
        let holders: Vec<PeerAddr> = (0..4).map(|i| addr(&format!("h{i}:1"))).collect();
        let files = many("f", 3000);
        let mut model: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
        for round in 0..6 {
            for (h, holder) in holders.iter().enumerate() {
                let picked: Vec<usize> = (0..1500)
                    .map(|_| rng.random_range(0..files.len()))
                    .collect();
                let metas: Vec<FileMeta> = picked.iter().map(|&f| files[f].clone()).collect();
                r.register(holder, &metas, T0);
                for f in picked {
                    model.entry(f).or_default().insert(h);
                }
            }
            for (h, holder) in holders.iter().enumerate() {
                let keep = rng.random_range(0..40);
                let gone: Vec<usize> = (0..files.len()).filter(|f| f % 40 != keep).collect();
                let ids: Vec<FileId> = gone.iter().map(|&f| files[f].id).collect();
                r.unregister(holder, &ids);
                for f in gone {
                    if let Some(hs) = model.get_mut(&f) {
                        hs.remove(&h);
                    }
                }
            }
            model.retain(|_, hs| !hs.is_empty());
            assert_eq!(r.listing_count(), model.len(), "round {round}");
            for (f, file) in files.iter().enumerate() {
                let expected = model.get(&f).map(|hs| {
                    (
                        file.clone(),
                        hs.iter().map(|&h| holders[h].clone()).collect::<Vec<_>>(),
                    )
                });
                assert_eq!(
                    r.holders(&FileKey::Id(file.id), T0),
                    expected,
                    "round {round}"
                );
            }
            let hits = r.search(".BIN", usize::MAX, T0);
            assert_eq!(hits.len(), model.len());
        }
    }

    /// Issue 9, memory per holder: the caps refuse a request whole, count only new
    /// registrations, and charge a new holder to the address it registered from.
    #[test]
    fn registrations_are_capped_per_holder_and_per_address() {
        let mut r = Registry::with_lease(LEASE);
        let limits = RegistrationLimits {
            per_holder: 10,
            per_address: 15,
        };
        let a = addr("10.0.0.1:1");
        let files = many("f", 30);
        assert_eq!(
            r.register_within(&a, "10.0.0.1", &files[..8], T0, &limits),
            Ok(8)
        );
        // Already held files do not count; new ones past the cap refuse the whole request.
        assert_eq!(
            r.register_within(&a, "10.0.0.1", &files[..10], T0, &limits),
            Ok(2)
        );
        let refused = r.register_within(&a, "10.0.0.1", &files[5..11], T0, &limits);
        assert_eq!(
            refused,
            Err(LimitExceeded::Holder {
                holder: a.clone(),
                would: 11,
                limit: 10
            })
        );
        assert_eq!(r.registration_count(), 10);
        // A second holder on the same address shares the address's cap.
        let b = addr("10.0.0.1:2");
        assert_eq!(
            r.register_within(&b, "10.0.0.1", &files[..5], T0, &limits),
            Ok(5)
        );
        let refused = r.register_within(&b, "10.0.0.1", &files[5..6], T0, &limits);
        assert!(
            matches!(&refused, Err(LimitExceeded::Address { address, would: 16, limit: 15 }) if address == "10.0.0.1"),
            "{refused:?}"
        );
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("limit is 15 per source address")
        );
        // Another address has its own.
        let c = addr("10.0.0.2:1");
        assert_eq!(
            r.register_within(&c, "10.0.0.2", &files[..10], T0, &limits),
            Ok(10)
        );
        // Going frees the room; a lapsed holder starts afresh.
        assert_eq!(r.unregister(&b, &[]), 5);
        assert_eq!(r.address_registrations("10.0.0.1"), 10);
        assert_eq!(
            r.register_within(&b, "10.0.0.1", &files[20..25], T0, &limits),
            Ok(5)
        );
        assert_eq!(
            r.register_within(&a, "10.0.0.1", &files[..10], secs(60), &limits),
            Ok(10)
        );
        assert_eq!(r.address_registrations("10.0.0.1"), 15);
        r.sweep(secs(61));
        assert_eq!(r.address_registrations("10.0.0.1"), 10);
        r.sweep(secs(200));
        assert_eq!(r.address_registrations("10.0.0.1"), 0);
        assert!(r.address_slots.is_empty());
        assert_eq!(r.addresses.len(), 0);
    }

    /// Issue 9, search cost: a search in slices (the lock released between them) finds what
    /// one pass finds, and scans no more than its budget per slice, even while the
    /// registry changes and compacts between slices.
    #[test]
    fn a_search_in_slices_agrees_with_one_pass() {
        let mut r = Registry::new();
        let a = addr("a:1");
        r.register(&a, &many("Song", 5000), T0);
        r.register(&addr("b:1"), &many("other", 1000), T0);
        for (query, limit) in [
            ("song", 20),
            ("SONG4", 1000),
            ("", 7),
            ("ng49", 3),
            ("zzz", 5),
        ] {
            let whole = r.search(query, limit, T0);
            let mut search = Search::new(query, limit);
            let mut slices = 0;
            while !r.search_some(&mut search, T0, 500) {
                slices += 1;
                assert!(search.hits.len() <= (2 * limit).max(64));
            }
            assert_eq!(slices, 11, "{query}");
            assert_eq!(search.finish(), whole, "{query:?}");
        }
        // A compaction between slices: the search starts over and still finds every file.
        let mut search = Search::new("other", usize::MAX);
        assert!(!r.search_some(&mut search, T0, 3000));
        r.unregister(&a, &[]);
        while !r.search_some(&mut search, T0, 500) {}
        assert_eq!(search.finish().len(), 1000);
    }

    #[test]
    fn the_substring_search_finds_what_contains_finds() {
        let mut rng = StdRng::seed_from_u64(4);
        let alphabet = ['a', 'b', 'A', 'B', 'é', 'É', 'İ', 'K'];
        let word = |rng: &mut StdRng, n: usize| -> String {
            (0..n)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())])
                .collect()
        };
        let mut buf = Vec::new();
        for _ in 0..5000 {
            let (name_len, query_len) = (rng.random_range(1..12), rng.random_range(0..4));
            let name = word(&mut rng, name_len);
            let query = word(&mut rng, query_len);
            let expected = name.to_lowercase().contains(&query.to_lowercase());
            assert_eq!(
                Query::new(&query).matches(&name, &mut buf),
                expected,
                "{name:?} {query:?}"
            );
        }
        assert!(Query::new("").matches("x", &mut buf));
        assert!(!Query::new(&"a".repeat(65536)).matches(&"a".repeat(255), &mut buf));
    }

    #[test]
    fn compact_layout() {
        // The per-listing cost is what the 200-bytes-per-registration target hinges on.
        assert!(std::mem::size_of::<HolderList>() <= 24);
        assert!(std::mem::size_of::<Option<Listing>>() <= 88);
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

    // The model is shared with the store conformance suite.
    use super::test_model::{
        LeaseOp, Model, lease_op, model_holders, model_register, model_unregister,
    };

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
                        let added = model_register(&mut model, &holder, &metas);
                        prop_assert_eq!(r.register(&holder, &metas, T0), added);
                    }
                    Op::Unregister(h, ids) => {
                        let holder = addr(&format!("h{h}:1"));
                        let removed = model_unregister(&mut model, &holder, &ids);
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
                    prop_assert_eq!(r.holders(&key, T0), model_holders(&model, &key));
                    let key = FileKey::Id(FileId([n; 32]));
                    prop_assert_eq!(r.holders(&key, T0), model_holders(&model, &key));
                }
            }
        }

        #[test]
        fn leases_agree_with_a_model(ops in prop::collection::vec(lease_op(), 1..60)) {
            let mut r = Registry::with_lease(LEASE);
            let mut model = Model::new();
            let mut expires: BTreeMap<PeerAddr, Duration> = BTreeMap::new();
            let mut now = Duration::ZERO;
            let lease_ms = u64::try_from(LEASE.as_millis()).unwrap();
            for op in ops {
                match op {
                    LeaseOp::Register(h, files) => {
                        let holder = addr(&format!("h{h}:1"));
                        let metas: Vec<FileMeta> = files.iter().map(|&(n, i)| FileMeta {
                            name: format!("n{n}"), size: 1, chunk_size: 1024, id: FileId([i; 32]),
                        }).collect();
                        if metas.is_empty() {
                            prop_assert_eq!(r.register(&holder, &metas, now), 0);
                            continue;
                        }
                        if expires.get(&holder).is_some_and(|&e| now >= e) {
                            for (_, hs) in model.values_mut() {
                                hs.remove(&holder);
                            }
                            model.retain(|_, (_, hs)| !hs.is_empty());
                        }
                        expires.insert(holder.clone(), now + LEASE);
                        let added = model_register(&mut model, &holder, &metas);
                        prop_assert_eq!(r.register(&holder, &metas, now), added);
                    }
                    LeaseOp::Renew(h) => {
                        let holder = addr(&format!("h{h}:1"));
                        let expected = match expires.get_mut(&holder) {
                            Some(e) if now < *e => {
                                *e = now + LEASE;
                                let n = model.values().filter(|(_, hs)| hs.contains(&holder)).count();
                                Some(u32::try_from(n).unwrap())
                            }
                            _ => None,
                        };
                        prop_assert_eq!(r.renew(&holder, now), expected);
                    }
                    LeaseOp::Unregister(h) => {
                        let holder = addr(&format!("h{h}:1"));
                        let removed = model_unregister(&mut model, &holder, &[]);
                        expires.remove(&holder);
                        prop_assert_eq!(r.unregister(&holder, &[]), removed);
                    }
                    LeaseOp::Advance(ms) => now += Duration::from_millis(ms % (lease_ms * 2)),
                    LeaseOp::Sweep => {
                        let gone: BTreeSet<PeerAddr> = expires
                            .iter()
                            .filter(|&(_, &e)| now >= e)
                            .map(|(h, _)| h.clone())
                            .collect();
                        let mut expected: Vec<(PeerAddr, u32)> = gone
                            .iter()
                            .map(|h| {
                                let n = model.values().filter(|(_, hs)| hs.contains(h)).count();
                                (h.clone(), u32::try_from(n).unwrap())
                            })
                            .collect();
                        for (_, hs) in model.values_mut() {
                            hs.retain(|h| !gone.contains(h));
                        }
                        model.retain(|_, (_, hs)| !hs.is_empty());
                        expires.retain(|h, _| !gone.contains(h));
                        let mut swept = r.sweep(now);
                        swept.sort();
                        expected.sort();
                        prop_assert_eq!(swept, expected);
                    }
                }
                let registrations: usize = model.values().map(|(_, hs)| hs.len()).sum();
                prop_assert_eq!(r.registration_count(), registrations);
                prop_assert_eq!(r.holder_count(), expires.len());
                // Lookups see the model restricted to live holders.
                let mut live = model.clone();
                for (_, hs) in live.values_mut() {
                    hs.retain(|h| expires.get(h).is_some_and(|&e| now < e));
                }
                live.retain(|_, (_, hs)| !hs.is_empty());
                for n in 0..3u8 {
                    let key = FileKey::Name(format!("n{n}"));
                    prop_assert_eq!(r.holders(&key, now), model_holders(&live, &key));
                    let key = FileKey::Id(FileId([n; 32]));
                    prop_assert_eq!(r.holders(&key, now), model_holders(&live, &key));
                }
                let hits: Vec<(String, u8, u32)> = r
                    .search("", 100, now)
                    .into_iter()
                    .map(|h| (h.file.name, h.file.id.0[0], h.holders))
                    .collect();
                let expected: Vec<(String, u8, u32)> = live
                    .iter()
                    .map(|((n, i), (_, hs))| (n.clone(), *i, u32::try_from(hs.len()).unwrap()))
                    .collect();
                prop_assert_eq!(hits, expected);
            }
        }
    }
}
