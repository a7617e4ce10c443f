//! Piece selection: which chunk a download fetches next, and from which source.
//!
//! Plain data: no locks, no I/O, no clock; the swarm engine (`swarm.rs`) wraps it in one
//! mutex. The policy, BitTorrent's:
//!
//! - A source is only asked for chunks it is known to hold: a complete holder holds all, a
//!   partial holder what its availability answers said (bitmap, then each added chunk).
//! - The first few chunks of a download are picked at random among the candidates, so peers
//!   that start together quickly hold different chunks and can trade.
//! - After that, rarest first: the chunk the fewest known *partial* holders have, random
//!   among equals. Complete holders do not count, so a seeder is asked first for the chunks
//!   nobody else has yet and the crowd serves the rest.
//! - A request takes a run of consecutive chunks from the picked one (up to the caller's
//!   batch), all held by the source and all still queued.
//! - End-game: once no chunk is queued (all remaining ones are in flight), an idle source
//!   may duplicate an in-flight chunk it holds and was not asked for yet, at most
//!   `max_copies` requests per chunk; the first verified copy wins.
//! - Release: a failed or refused request puts its chunks back in the queue; a source that
//!   says it lacks a chunk loses that chunk from its known holdings.
//! - One writer per chunk ([`Picker::claim_write`]), and none once it is done, so a late
//!   duplicate can never overwrite verified bytes.

use std::collections::{BTreeSet, HashSet};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A source's number within one download.
pub(crate) type SourceId = usize;

/// A set of chunk indices `0..len`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bitset {
    words: Vec<u64>,
    len: u32,
    ones: u32,
}

impl Bitset {
    /// An empty set over `len` chunks.
    pub(crate) fn new(len: u32) -> Self {
        Bitset {
            words: vec![0; (len as usize).div_ceil(64)],
            len,
            ones: 0,
        }
    }

    /// Every chunk of `len`.
    #[cfg(test)]
    pub(crate) fn full(len: u32) -> Self {
        let mut set = Bitset::new(len);
        for i in 0..len {
            set.insert(i);
        }
        set
    }

    /// Members.
    pub(crate) fn count(&self) -> u32 {
        self.ones
    }

    pub(crate) fn is_full(&self) -> bool {
        self.ones == self.len
    }

    pub(crate) fn contains(&self, i: u32) -> bool {
        i < self.len
            && self
                .words
                .get((i / 64) as usize)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Adds `i`; true if it was not a member (false also when out of range).
    pub(crate) fn insert(&mut self, i: u32) -> bool {
        if i >= self.len || self.contains(i) {
            return false;
        }
        if let Some(w) = self.words.get_mut((i / 64) as usize) {
            *w |= 1 << (i % 64);
            self.ones += 1;
            return true;
        }
        false
    }

    /// Removes `i`; true if it was a member.
    pub(crate) fn remove(&mut self, i: u32) -> bool {
        if !self.contains(i) {
            return false;
        }
        if let Some(w) = self.words.get_mut((i / 64) as usize) {
            *w &= !(1 << (i % 64));
            self.ones -= 1;
            return true;
        }
        false
    }

    /// Members in increasing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.len).filter(|&i| self.contains(i))
    }

    /// The wire form (`Have::Bitmap`): chunk `i` in byte `i / 8`, bit `i % 8`.
    pub(crate) fn to_wire(&self) -> Vec<u8> {
        let mut out = vec![0u8; (self.len as usize).div_ceil(8)];
        for i in self.iter() {
            out[(i / 8) as usize] |= 1 << (i % 8);
        }
        out
    }

    /// Reads the wire form for `len` chunks: exactly `ceil(len / 8)` bytes, no bit set past
    /// `len`. `None` if it is not that.
    pub(crate) fn from_wire(bytes: &[u8], len: u32) -> Option<Bitset> {
        if bytes.len() != (len as usize).div_ceil(8) {
            return None;
        }
        let mut set = Bitset::new(len);
        for (n, byte) in bytes.iter().enumerate() {
            for bit in 0..8u32 {
                if byte & (1 << bit) != 0 {
                    let i = u32::try_from(n).ok()? * 8 + bit;
                    if i >= len {
                        return None;
                    }
                    set.insert(i);
                }
            }
        }
        Some(set)
    }
}

/// What a source is known to hold.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Holding {
    All,
    Some(Bitset),
}

#[derive(Debug)]
struct Source {
    holding: Holding,
    /// For a seeder that says so: the chunks it already sent to someone this round.
    handed: Option<Bitset>,
    /// Every chunk this source was asked for: end-game never asks it twice for one.
    asked: HashSet<u32>,
    active: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Done,
    Queued,
    /// Requested from this many sources.
    InFlight(u8),
}

/// The next thing a source should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Work {
    /// Request these consecutive chunks.
    Chunks(Vec<u32>),
    /// Nothing this source holds is wanted right now; wait for a change.
    Wait,
    /// Every chunk is verified.
    Finished,
}

/// May this source store the chunk it just received?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Yes; end it with [`Picker::complete`] or [`Picker::end_write`].
    Granted,
    /// Another copy is being stored: wait, then ask again.
    Taken,
    /// The chunk is already verified (or does not exist): drop this copy.
    Done,
}

/// How the picker chooses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PickerConfig {
    /// Choose at random (swarms). Off, a download alone with complete holders takes the
    /// lowest queued chunk first: it reads in file order, which disks and tests prefer.
    pub(crate) random: bool,
    /// Chunks picked at random before rarest-first starts.
    pub(crate) random_first: usize,
    /// Most requests in flight for one chunk in end-game.
    pub(crate) max_copies: u8,
    /// End-game starts once at most this many chunks remain (and none is queued). A swarm
    /// keeps it small: its sources are busy serving a crowd, and early duplicates would
    /// take their upload from chunks others need.
    pub(crate) endgame_below: usize,
    /// Seeds the random choices.
    pub(crate) seed: u64,
}

impl Default for PickerConfig {
    fn default() -> Self {
        PickerConfig {
            random: true,
            random_first: 4,
            max_copies: 3,
            endgame_below: usize::MAX,
            seed: 0,
        }
    }
}

/// The piece-selection state of one download (see the module documentation).
#[derive(Debug)]
pub(crate) struct Picker {
    chunks: Vec<Chunk>,
    /// The chunks in state `Queued`, in order: a take looks at these, not at every chunk.
    queued: BTreeSet<u32>,
    remaining: usize,
    /// Known partial sources holding each chunk.
    availability: Vec<u16>,
    sources: Vec<Source>,
    writing: HashSet<u32>,
    picked: usize,
    /// `lacks` is turning a full holding back into a bitmap.
    converting: bool,
    config: PickerConfig,
    rng: StdRng,
}

impl Picker {
    /// A download of `total` chunks of which `missing` are still to fetch.
    pub(crate) fn new(total: u32, missing: &[u32], config: PickerConfig) -> Self {
        let mut chunks = vec![Chunk::Done; total as usize];
        for &i in missing {
            if let Some(c) = chunks.get_mut(i as usize) {
                *c = Chunk::Queued;
            }
        }
        let queued: BTreeSet<u32> = (0..total)
            .filter(|&i| chunks[i as usize] == Chunk::Queued)
            .collect();
        Picker {
            chunks,
            remaining: queued.len(),
            queued,
            availability: vec![0; total as usize],
            sources: Vec::new(),
            writing: HashSet::new(),
            picked: 0,
            converting: false,
            config,
            rng: StdRng::seed_from_u64(config.seed),
        }
    }

    /// Chunks not verified yet.
    pub(crate) fn remaining(&self) -> usize {
        self.remaining
    }

    /// Chunks not verified yet, in order.
    pub(crate) fn missing(&self) -> Vec<u32> {
        (0..self.chunks.len() as u32)
            .filter(|&i| self.chunks[i as usize] != Chunk::Done)
            .collect()
    }

    fn total(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// A new source holding every chunk.
    pub(crate) fn add_complete(&mut self) -> SourceId {
        self.add(Holding::All)
    }

    /// A new partial source, holding nothing until its availability is known.
    pub(crate) fn add_partial(&mut self) -> SourceId {
        self.add(Holding::Some(Bitset::new(self.total())))
    }

    fn add(&mut self, holding: Holding) -> SourceId {
        self.sources.push(Source {
            holding,
            handed: None,
            asked: HashSet::new(),
            active: true,
        });
        self.sources.len() - 1
    }

    /// Whether `source` is known to hold chunk `i`.
    pub(crate) fn holds(&self, source: SourceId, i: u32) -> bool {
        match self.sources.get(source) {
            Some(s) if s.active => match &s.holding {
                Holding::All => i < self.total(),
                Holding::Some(bits) => bits.contains(i),
            },
            _ => false,
        }
    }

    /// Whether `source` is known to hold the whole file.
    pub(crate) fn holds_all(&self, source: SourceId) -> bool {
        self.sources
            .get(source)
            .is_some_and(|s| s.holding == Holding::All)
    }

    /// `source` holds chunk `i` (an availability update).
    pub(crate) fn add_have(&mut self, source: SourceId, i: u32) {
        if let Some(Source {
            holding: Holding::Some(bits),
            active: true,
            ..
        }) = self.sources.get_mut(source)
            && bits.insert(i)
            && let Some(a) = self.availability.get_mut(i as usize)
        {
            *a = a.saturating_add(1);
            if bits.is_full() && !self.converting {
                self.set_all(source);
            }
        }
    }

    /// `source` holds exactly `bits` (a full availability answer; it never loses chunks, so
    /// this only adds).
    pub(crate) fn set_have(&mut self, source: SourceId, bits: &Bitset) {
        for i in bits.iter() {
            self.add_have(source, i);
        }
    }

    /// `source` holds every chunk now (it finished its download).
    pub(crate) fn set_all(&mut self, source: SourceId) {
        let Some(s) = self.sources.get_mut(source) else {
            return;
        };
        if let Holding::Some(bits) = std::mem::replace(&mut s.holding, Holding::All) {
            for i in bits.iter() {
                if let Some(a) = self.availability.get_mut(i as usize) {
                    *a = a.saturating_sub(1);
                }
            }
        }
    }

    /// `source` (a complete holder) is sending, or just sent, the chunks of `sent` to
    /// others: it is asked only for the others, and waited on if there are none (the
    /// crowd trades those; its marks lapse within seconds, so nothing waits for good).
    pub(crate) fn set_handed(&mut self, source: SourceId, sent: Bitset) {
        if let Some(s) = self.sources.get_mut(source) {
            s.handed = Some(sent);
        }
    }

    /// `source` said it lacks chunk `i`: it is not asked for it again. A partial source that
    /// had claimed every chunk goes back to a bitmap of all but `i`.
    pub(crate) fn lacks(&mut self, source: SourceId, i: u32) {
        let total = self.total();
        if let Some(s) = self.sources.get_mut(source)
            && s.holding == Holding::All
            && s.active
        {
            s.holding = Holding::Some(Bitset::new(total));
            self.converting = true;
            for c in 0..total {
                self.add_have(source, c);
            }
            self.converting = false;
        }
        if let Some(Source {
            holding: Holding::Some(bits),
            ..
        }) = self.sources.get_mut(source)
            && bits.remove(i)
            && let Some(a) = self.availability.get_mut(i as usize)
        {
            *a = a.saturating_sub(1);
        }
    }

    /// `source` is gone: it is asked for nothing more and no longer counts for rarity. Its
    /// requests in flight must be given back with [`Picker::release`].
    pub(crate) fn remove_source(&mut self, source: SourceId) {
        let Some(s) = self.sources.get_mut(source) else {
            return;
        };
        s.active = false;
        if let Holding::Some(bits) = &s.holding {
            for i in bits.iter() {
                if let Some(a) = self.availability.get_mut(i as usize) {
                    *a = a.saturating_sub(1);
                }
            }
        }
        s.holding = Holding::Some(Bitset::new(0));
    }

    /// What `source` should request next: up to `max` consecutive chunks.
    pub(crate) fn take(&mut self, source: SourceId, max: u32) -> Work {
        if self.remaining == 0 {
            return Work::Finished;
        }
        let first = if self.config.random {
            let candidates: Vec<u32> = self
                .queued
                .iter()
                .copied()
                .filter(|&i| self.holds(source, i))
                .collect();
            self.choose(source, &candidates)
        } else {
            // In file order: the first queued chunk the source holds.
            self.queued.iter().copied().find(|&i| self.holds(source, i))
        };
        if let Some(first) = first {
            let mut run = vec![first];
            while (run.len() as u32) < max.max(1) {
                let next = run[run.len() - 1] + 1;
                if !self.queued.contains(&next) || !self.holds(source, next) {
                    break;
                }
                run.push(next);
            }
            for &i in &run {
                self.chunks[i as usize] = Chunk::InFlight(1);
                self.queued.remove(&i);
            }
            self.picked += run.len();
            if let Some(s) = self.sources.get_mut(source) {
                s.asked.extend(run.iter().copied());
            }
            return Work::Chunks(run);
        }
        if !self.queued.is_empty() || self.remaining > self.config.endgame_below {
            return Work::Wait;
        }
        // End-game: the least-duplicated in-flight chunk this source holds and was not
        // asked for.
        let asked = self.sources.get(source).map(|s| &s.asked);
        // Nor what a seeder is sending to someone right now.
        let handed = self.sources.get(source).and_then(|s| s.handed.as_ref());
        let duplicate = (0..self.total())
            .filter_map(|i| match self.chunks[i as usize] {
                Chunk::InFlight(n)
                    if n < self.config.max_copies
                        && self.holds(source, i)
                        && !asked.is_some_and(|a| a.contains(&i))
                        && !handed.is_some_and(|h| h.contains(i)) =>
                {
                    Some((n, i))
                }
                _ => None,
            })
            .min();
        match duplicate {
            Some((n, i)) => {
                self.chunks[i as usize] = Chunk::InFlight(n + 1);
                if let Some(s) = self.sources.get_mut(source) {
                    s.asked.insert(i);
                }
                Work::Chunks(vec![i])
            }
            None => Work::Wait,
        }
    }

    /// Random for the first picks, then rarest first with random tie-breaks; from a seeder
    /// that lists what it sent, the chunks nobody was sent come before all others.
    fn choose(&mut self, source: SourceId, candidates: &[u32]) -> Option<u32> {
        if candidates.is_empty() {
            return None;
        }
        let handed = self.sources.get(source).and_then(|s| s.handed.as_ref());
        if let Some(sent) = handed {
            let fresh: Vec<u32> = candidates
                .iter()
                .copied()
                .filter(|&i| !sent.contains(i))
                .collect();
            return self.rarest(&fresh);
        }
        if self.picked < self.config.random_first {
            return candidates
                .get(self.rng.random_range(0..candidates.len()))
                .copied();
        }
        self.rarest(candidates)
    }

    /// The candidate the fewest known partial holders have, random among equals.
    fn rarest(&mut self, candidates: &[u32]) -> Option<u32> {
        if candidates.is_empty() {
            return None;
        }
        let rarity = |i: u32| self.availability.get(i as usize).copied().unwrap_or(0);
        let least = candidates.iter().map(|&i| rarity(i)).min()?;
        let rarest: Vec<u32> = candidates
            .iter()
            .copied()
            .filter(|&i| rarity(i) == least)
            .collect();
        rarest.get(self.rng.random_range(0..rarest.len())).copied()
    }

    /// Gives back requested chunks that did not arrive (a failed, refused or cut request).
    pub(crate) fn release(&mut self, chunks: impl IntoIterator<Item = u32>) {
        for i in chunks {
            if let Some(Chunk::InFlight(n)) = self.chunks.get(i as usize).copied() {
                self.chunks[i as usize] = if n > 1 {
                    Chunk::InFlight(n - 1)
                } else {
                    self.queued.insert(i);
                    Chunk::Queued
                };
            }
        }
    }

    /// The right to store chunk `i`.
    pub(crate) fn claim_write(&mut self, i: u32) -> Claim {
        match self.chunks.get(i as usize) {
            None | Some(Chunk::Done) => Claim::Done,
            Some(_) if self.writing.insert(i) => Claim::Granted,
            Some(_) => Claim::Taken,
        }
    }

    /// Gives up the right to store `i` without completing it (its copy failed).
    pub(crate) fn end_write(&mut self, i: u32) {
        self.writing.remove(&i);
    }

    /// Chunk `i` is verified and stored (ends its write claim). True for the first copy.
    pub(crate) fn complete(&mut self, i: u32) -> bool {
        self.writing.remove(&i);
        match self.chunks.get(i as usize).copied() {
            Some(Chunk::InFlight(_)) => {}
            Some(Chunk::Queued) => {
                self.queued.remove(&i);
            }
            _ => return false,
        }
        self.chunks[i as usize] = Chunk::Done;
        self.remaining -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bits(len: u32, members: &[u32]) -> Bitset {
        let mut set = Bitset::new(len);
        for &i in members {
            set.insert(i);
        }
        set
    }

    #[test]
    fn bitmaps_round_trip_and_refuse_bad_lengths() {
        let set = bits(10, &[0, 3, 9]);
        let wire = set.to_wire();
        assert_eq!(wire, vec![0b0000_1001, 0b0000_0010]);
        assert_eq!(Bitset::from_wire(&wire, 10), Some(set));
        assert_eq!(Bitset::from_wire(&wire, 17), None, "too short");
        assert_eq!(Bitset::from_wire(&[0, 0b100], 10), None, "bit past the end");
        assert!(Bitset::full(70).is_full());
    }

    #[test]
    fn a_source_is_asked_only_for_what_it_holds_and_the_seeder_for_the_rarest() {
        let mut picker = Picker::new(
            6,
            &[0, 1, 2, 3, 4, 5],
            PickerConfig {
                random_first: 0,
                ..PickerConfig::default()
            },
        );
        let seeder = picker.add_complete();
        let a = picker.add_partial();
        let b = picker.add_partial();
        picker.set_have(a, &bits(6, &[0, 1, 2]));
        picker.set_have(b, &bits(6, &[1, 2, 3]));
        // The seeder's first choices are the chunks no partial holder has: 4 and 5.
        let Work::Chunks(run) = picker.take(seeder, 1) else {
            panic!("seeder got no work");
        };
        assert!(run == vec![4] || run == vec![5], "{run:?}");
        // `a` holds 0 (one holder) and 1, 2 (two): rarest first takes 0.
        assert_eq!(picker.take(a, 1), Work::Chunks(vec![0]));
        // `b`: 3 is held by b alone.
        assert_eq!(picker.take(b, 1), Work::Chunks(vec![3]));
        // A run extends over consecutive queued chunks the source holds (1 and 2 are equally
        // rare: either may come first).
        let Work::Chunks(run) = picker.take(a, 4) else {
            panic!("a got no work");
        };
        assert!(run == vec![1, 2] || run == vec![2], "{run:?}");
        if run == vec![2] {
            assert_eq!(picker.take(a, 4), Work::Chunks(vec![1]));
        }
        // `b` holds nothing queued, and chunks are still queued: it waits, no end-game.
        assert_eq!(picker.take(b, 4), Work::Wait);
        // `b` says it lacks 3 after all: 3 goes back to the queue and is never asked of b.
        picker.lacks(b, 3);
        picker.release([3]);
        assert!(!picker.holds(b, 3));
        assert_eq!(picker.take(b, 4), Work::Wait);
    }

    #[test]
    fn a_seeder_is_asked_first_for_what_it_sent_nobody() {
        let mut picker = Picker::new(4, &[0, 1, 2, 3], PickerConfig::default());
        let seeder = picker.add_complete();
        picker.set_handed(seeder, bits(4, &[0, 1, 3]));
        assert_eq!(picker.take(seeder, 1), Work::Chunks(vec![2]));
        // Everything else is on its way to someone: wait for the crowd, not a duplicate.
        assert_eq!(picker.take(seeder, 1), Work::Wait);
        // The marks lapsed (the seeder's next answer lists none): any chunk will do.
        picker.set_handed(seeder, bits(4, &[]));
        assert!(matches!(picker.take(seeder, 1), Work::Chunks(_)));
    }

    #[test]
    fn end_game_duplicates_only_when_nothing_is_queued() {
        let sequential = PickerConfig {
            random: false,
            ..PickerConfig::default()
        };
        let mut picker = Picker::new(2, &[0, 1], sequential);
        let s = picker.add_complete();
        let t = picker.add_complete();
        assert_eq!(picker.take(s, 2), Work::Chunks(vec![0, 1]));
        // Everything is in flight at s: t duplicates one chunk at a time, never s itself.
        let Work::Chunks(dup) = picker.take(t, 2) else {
            panic!("no end-game");
        };
        assert_eq!(dup.len(), 1);
        assert!(picker.take(s, 2) == Work::Wait);
        assert_eq!(picker.claim_write(dup[0]), Claim::Granted);
        assert_eq!(picker.claim_write(dup[0]), Claim::Taken);
        assert!(picker.complete(dup[0]));
        assert_eq!(picker.claim_write(dup[0]), Claim::Done);
        assert!(!picker.complete(dup[0]), "a second copy is not counted");
    }

    #[test]
    fn a_partial_source_that_completes_stops_counting_for_rarity() {
        let mut picker = Picker::new(3, &[0, 1, 2], PickerConfig::default());
        let a = picker.add_partial();
        picker.add_have(a, 0);
        picker.add_have(a, 1);
        assert!(!picker.holds_all(a));
        picker.add_have(a, 2);
        assert!(picker.holds_all(a));
        assert_eq!(picker.availability, vec![0, 0, 0]);
        picker.remove_source(a);
        assert_eq!(picker.take(a, 1), Work::Wait);
    }

    /// One simulated request in flight.
    #[derive(Debug, Clone)]
    struct Pending {
        source: SourceId,
        chunks: Vec<u32>,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Take { source: usize, max: u32 },
        Deliver { pending: usize },
        Fail { pending: usize },
        Lack { pending: usize },
        Have { source: usize, chunk: u32 },
        Remove { source: usize },
    }

    fn op(sources: usize, chunks: u32) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..sources, 1..4u32).prop_map(|(source, max)| Op::Take { source, max }),
            3 => (0..64usize).prop_map(|pending| Op::Deliver { pending }),
            1 => (0..64usize).prop_map(|pending| Op::Fail { pending }),
            1 => (0..64usize).prop_map(|pending| Op::Lack { pending }),
            2 => (0..sources, 0..chunks).prop_map(|(source, chunk)| Op::Have { source, chunk }),
            1 => (1..sources).prop_map(|source| Op::Remove { source }),
        ]
    }

    proptest! {
        /// Whatever happens (sources come and go, requests fail, holders lack chunks), every
        /// chunk ends verified exactly once, no source is asked for a chunk it is not known to
        /// hold, and nothing released is lost. Source 0 is a seeder that never leaves.
        #[test]
        fn every_chunk_ends_verified_exactly_once(
            total in 1..40u32,
            done in proptest::collection::vec(any::<bool>(), 40),
            partial in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 40), 1..5),
            ops in proptest::collection::vec(op(6, 40), 0..200),
            seed in any::<u64>(),
        ) {
            let missing: Vec<u32> = (0..total).filter(|&i| !done[i as usize]).collect();
            let mut picker = Picker::new(total, &missing, PickerConfig { seed, ..PickerConfig::default() });
            let mut ids = vec![picker.add_complete()];
            for have in &partial {
                let id = picker.add_partial();
                let set: Vec<u32> = (0..total).filter(|&i| have[i as usize]).collect();
                picker.set_have(id, &bits(total, &set));
                ids.push(id);
            }
            let mut verified = vec![0u32; total as usize];
            let mut pending: Vec<Pending> = Vec::new();
            let mut gone: HashSet<SourceId> = HashSet::new();
            let deliver = |picker: &mut Picker, verified: &mut Vec<u32>, p: Pending| {
                for i in p.chunks {
                    if picker.claim_write(i) == Claim::Granted && picker.complete(i) {
                        verified[i as usize] += 1;
                    }
                }
            };
            for op in ops {
                match op {
                    Op::Take { source, max } => {
                        let Some(&id) = ids.get(source) else { continue };
                        if let Work::Chunks(run) = picker.take(id, max) {
                            prop_assert!(!gone.contains(&id), "a removed source got work");
                            for &i in &run {
                                prop_assert!(picker.holds(id, i), "asked {id} for {i} it lacks");
                            }
                            pending.push(Pending { source: id, chunks: run });
                        }
                    }
                    Op::Deliver { pending: n } if n < pending.len() => {
                        let p = pending.swap_remove(n);
                        deliver(&mut picker, &mut verified, p);
                    }
                    Op::Fail { pending: n } if n < pending.len() => {
                        let p = pending.swap_remove(n);
                        picker.release(p.chunks);
                    }
                    Op::Lack { pending: n } if n < pending.len() => {
                        let p = pending.swap_remove(n);
                        if !picker.holds_all(p.source) {
                            for &i in &p.chunks {
                                picker.lacks(p.source, i);
                            }
                        }
                        picker.release(p.chunks);
                    }
                    Op::Have { source, chunk } if chunk < total => {
                        if let Some(&id) = ids.get(source) {
                            picker.add_have(id, chunk);
                        }
                    }
                    Op::Remove { source } => {
                        let Some(&id) = ids.get(source) else { continue };
                        picker.remove_source(id);
                        gone.insert(id);
                        let (theirs, rest): (Vec<_>, Vec<_>) =
                            pending.drain(..).partition(|p| p.source == id);
                        pending = rest;
                        for p in theirs {
                            picker.release(p.chunks);
                        }
                    }
                    _ => {}
                }
            }
            // Finish: deliver what is in flight, then let the seeder fetch the rest.
            for p in std::mem::take(&mut pending) {
                deliver(&mut picker, &mut verified, p);
            }
            let mut rounds = 0;
            loop {
                match picker.take(ids[0], 3) {
                    Work::Chunks(run) => deliver(&mut picker, &mut verified, Pending { source: ids[0], chunks: run }),
                    Work::Finished => break,
                    Work::Wait => prop_assert!(false, "the seeder was left waiting"),
                }
                rounds += 1;
                prop_assert!(rounds <= 1000);
            }
            prop_assert_eq!(picker.remaining(), 0);
            for i in 0..total {
                let expected = u32::from(!done[i as usize]);
                prop_assert_eq!(verified[i as usize], expected, "chunk {}", i);
            }
        }
    }
}
