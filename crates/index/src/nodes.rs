//! Holders are keys: which node id (the key of its authenticated transport, see
//! [`shoal_proto::NodeId`]) each holder address registered with.
//!
//! The [`IndexServer`](crate::IndexServer) binds a holder to the id of the connection that
//! registers it (complete or partial) or renews it, and from then on refuses to register,
//! renew or unregister that holder for a connection presenting another id, as long as the
//! binding is live: refreshed by the holder's own registrations and renewals within the last
//! lease (a holder that stopped renewing has lapsed, and its address may be taken by a new
//! key). Lookups answer the bound ids beside the addresses, so a downloader can check that
//! the holder it reaches is the one that registered. Connections without an id (plain TCP)
//! are neither checked nor bound: the host check of the server still applies to them.
//!
//! Where the bindings live is a [`NodeBindings`]: a store shared by several index servers
//! offers its own ([`Store::node_bindings`](crate::Store::node_bindings); the
//! [`RedisStore`](crate::RedisStore) keeps them in Redis beside the registry, so a holder
//! registered through one index is checked and answered through every other), and the
//! server uses its own in-memory [`NodeBook`] otherwise (the memory and durable stores).
//! A shared binding that cannot be read or written (Redis down) refuses the change as the
//! registry being unavailable: a claim that cannot be checked is never let through.
//!
//! The book is plain data in memory beside the store, behind the server's lock: it is not
//! written to the durable log. After a durable index restarts a holder has no binding until
//! it renews or registers again, which it does within a third of a lease; until then
//! lookups list it without an id, and downloaders check nothing for it.
//!
//! Bounded: at most [`NodeBook::limit`] bindings. Holders whose lease lapsed are dropped at
//! every sweep, holders that unregister everything at once; a book that is full anyway drops
//! its stalest eighth. (Shared bindings expire in Redis by themselves.)

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use shoal_proto::message::HolderNode;
use shoal_proto::{NodeId, PeerAddr};

use crate::StoreError;

/// Default [`NodeBook::limit`]: one binding per holder of a large index (about 100 bytes
/// each, some 100 MB at most).
pub const DEFAULT_NODE_BOOK_LIMIT: usize = 1 << 20;

/// One holder's binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Binding {
    node: NodeId,
    /// Its last registration or renewal from `node`.
    seen: Instant,
}

/// A holder bound to another node id than the one asking; see [`NodeBook::claim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundToOther {
    /// The id the holder is bound to.
    pub bound: NodeId,
}

/// What a claim replaced ([`NodeBook::claim`], [`NodeBindings::claim`]), so a failed store
/// change can put it back with [`NodeBook::undo`] or [`NodeBindings::undo`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claimed(Previous);

/// What was there before a claim, as the bindings that made it keep it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Previous {
    /// A [`NodeBook`]'s binding.
    Book(Option<Binding>),
    /// A shared store's stored value (`None`: the holder was free).
    Shared(Option<Vec<u8>>),
}

impl Claimed {
    /// A shared store's claim that replaced `value`.
    pub(crate) fn shared(value: Option<Vec<u8>>) -> Claimed {
        Claimed(Previous::Shared(value))
    }

    /// The stored value a shared store's claim replaced; `None` if it replaced nothing or
    /// was a [`NodeBook`]'s.
    pub(crate) fn shared_value(&self) -> Option<&[u8]> {
        match &self.0 {
            Previous::Shared(value) => value.as_deref(),
            Previous::Book(_) => None,
        }
    }

    /// Whether the claim was a shared store's.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self.0, Previous::Shared(_))
    }
}

/// Why a claim or check was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The holder is bound, live, to another id.
    #[error("the holder is registered by node {}", .0.bound)]
    Bound(BoundToOther),
    /// The shared bindings could not be read or written (the registry is unavailable or
    /// failed): the change is refused, never let through unchecked.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<BoundToOther> for Refusal {
    fn from(bound: BoundToOther) -> Self {
        Refusal::Bound(bound)
    }
}

/// Where holder -> node id bindings live, with the policy of the [module docs](self): the
/// operations the [`IndexServer`](crate::IndexServer) needs. Time is each implementation's
/// own (the book's [`Instant::now`], a shared store's clock).
pub trait NodeBindings: Send + Sync {
    /// Binds `holder` to `node` (or refreshes the binding), refused while it is bound, live,
    /// to another id; returns what it replaced, for [`NodeBindings::undo`].
    fn claim(&self, holder: &PeerAddr, node: NodeId) -> Result<Claimed, Refusal>;
    /// Puts back what a claim of `holder` by `node` replaced (the change it allowed failed
    /// or did nothing).
    fn undo(&self, holder: &PeerAddr, node: NodeId, claimed: Claimed) -> Result<(), StoreError>;
    /// May `node` change `holder` (unregister it)? Refused while the holder is bound, live,
    /// to another id.
    fn check(&self, holder: &PeerAddr, node: NodeId) -> Result<(), Refusal>;
    /// Drops `holder`'s binding to `node` (it unregistered everything); a binding to another
    /// id stays.
    fn forget(&self, holder: &PeerAddr, node: NodeId) -> Result<(), StoreError>;
    /// After a sweep removed the `expired` holders: drops their bindings and whatever else
    /// lapsed (with the store's current `lease`).
    fn swept(&self, expired: &[PeerAddr], lease: Duration);
    /// The id `holder` is bound to, if any.
    fn node(&self, holder: &PeerAddr) -> Result<Option<NodeId>, StoreError>;
    /// The bound ids of `holders`, in their order (one round trip for a shared store).
    fn nodes_of(&self, holders: &[&PeerAddr]) -> Result<Vec<HolderNode>, StoreError>;
    /// Whether some holder may be bound: `false` lets lookups skip asking (a shared store
    /// cannot tell cheaply, and says `true`).
    fn may_have_any(&self) -> bool {
        true
    }
}

fn lock_book(book: &Mutex<NodeBook>) -> MutexGuard<'_, NodeBook> {
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The server's own book, behind its lock, with time from [`Instant::now`].
impl NodeBindings for Mutex<NodeBook> {
    fn claim(&self, holder: &PeerAddr, node: NodeId) -> Result<Claimed, Refusal> {
        Ok(lock_book(self).claim(holder, node, Instant::now())?)
    }

    fn undo(&self, holder: &PeerAddr, _: NodeId, claimed: Claimed) -> Result<(), StoreError> {
        lock_book(self).undo(holder, claimed);
        Ok(())
    }

    fn check(&self, holder: &PeerAddr, node: NodeId) -> Result<(), Refusal> {
        Ok(lock_book(self).check(holder, node, Instant::now())?)
    }

    fn forget(&self, holder: &PeerAddr, _: NodeId) -> Result<(), StoreError> {
        lock_book(self).forget(holder);
        Ok(())
    }

    fn swept(&self, expired: &[PeerAddr], lease: Duration) {
        let mut book = lock_book(self);
        book.set_lease(lease);
        book.prune(Instant::now());
        for holder in expired {
            book.forget(holder);
        }
    }

    fn node(&self, holder: &PeerAddr) -> Result<Option<NodeId>, StoreError> {
        Ok(lock_book(self).node(holder))
    }

    fn nodes_of(&self, holders: &[&PeerAddr]) -> Result<Vec<HolderNode>, StoreError> {
        Ok(lock_book(self).nodes_of(holders.iter().copied()))
    }

    fn may_have_any(&self) -> bool {
        !lock_book(self).is_empty()
    }
}

/// Holder address -> node id, with the policy above; see the [module docs](self).
#[derive(Debug)]
pub struct NodeBook {
    bound: HashMap<PeerAddr, Binding>,
    lease: Duration,
    limit: usize,
}

impl NodeBook {
    /// An empty book whose bindings stay live for `lease` after their last refresh, with at
    /// most `limit` bindings (at least 8).
    pub fn new(lease: Duration, limit: usize) -> Self {
        NodeBook {
            bound: HashMap::new(),
            lease,
            limit: limit.max(8),
        }
    }

    /// Most bindings kept.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many holders are bound.
    pub fn len(&self) -> usize {
        self.bound.len()
    }

    /// Whether no holder is bound.
    pub fn is_empty(&self) -> bool {
        self.bound.is_empty()
    }

    /// Changes the lease (a store's lease can change after the server starts).
    pub fn set_lease(&mut self, lease: Duration) {
        self.lease = lease;
    }

    /// The id `holder` is bound to, live or not (lookups only list live holders anyway).
    pub fn node(&self, holder: &PeerAddr) -> Option<NodeId> {
        self.bound.get(holder).map(|b| b.node)
    }

    /// The bound ids of `holders`, in their order.
    pub fn nodes_of<'a>(&self, holders: impl IntoIterator<Item = &'a PeerAddr>) -> Vec<HolderNode> {
        holders
            .into_iter()
            .filter_map(|holder| {
                self.node(holder).map(|node| HolderNode {
                    holder: holder.clone(),
                    node,
                })
            })
            .collect()
    }

    /// May `node` change `holder` (unregister it)? Refused while the holder is bound, live,
    /// to another id.
    pub fn check(&self, holder: &PeerAddr, node: NodeId, now: Instant) -> Result<(), BoundToOther> {
        match self.bound.get(holder) {
            Some(b) if b.node != node && self.live(b, now) => Err(BoundToOther { bound: b.node }),
            _ => Ok(()),
        }
    }

    /// Binds `holder` to `node` (or refreshes the binding), as [`NodeBook::check`] allows;
    /// returns what it replaced, for [`NodeBook::undo`].
    pub fn claim(
        &mut self,
        holder: &PeerAddr,
        node: NodeId,
        now: Instant,
    ) -> Result<Claimed, BoundToOther> {
        self.check(holder, node, now)?;
        if !self.bound.contains_key(holder) && self.bound.len() >= self.limit {
            self.make_room(now);
        }
        let binding = Binding { node, seen: now };
        Ok(Claimed(Previous::Book(
            self.bound.insert(holder.clone(), binding),
        )))
    }

    /// Puts back what a [`NodeBook::claim`] of `holder` replaced (the change it allowed
    /// failed or did nothing).
    pub fn undo(&mut self, holder: &PeerAddr, claimed: Claimed) {
        match claimed.0 {
            Previous::Book(Some(previous)) => {
                self.bound.insert(holder.clone(), previous);
            }
            Previous::Book(None) => {
                self.bound.remove(holder);
            }
            // Not this book's claim: nothing of it to put back.
            Previous::Shared(_) => {}
        }
    }

    /// Drops `holder`'s binding (it unregistered everything, or its lease lapsed).
    pub fn forget(&mut self, holder: &PeerAddr) {
        self.bound.remove(holder);
    }

    /// Drops the bindings not refreshed within the lease.
    pub fn prune(&mut self, now: Instant) {
        let lease = self.lease;
        self.bound
            .retain(|_, b| now.saturating_duration_since(b.seen) <= lease);
    }

    fn live(&self, binding: &Binding, now: Instant) -> bool {
        now.saturating_duration_since(binding.seen) <= self.lease
    }

    /// Full: drop what lapsed, and if that is not enough, the stalest eighth.
    fn make_room(&mut self, now: Instant) {
        self.prune(now);
        if self.bound.len() < self.limit {
            return;
        }
        let mut seen: Vec<Instant> = self.bound.values().map(|b| b.seen).collect();
        let cut = (self.limit / 8).max(1).min(seen.len() - 1);
        let (_, &mut threshold, _) = seen.select_nth_unstable(cut);
        self.bound.retain(|_, b| b.seen > threshold);
        log::warn!(
            "index: {} holders are bound to node ids, the limit; dropped the stalest",
            self.limit
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> PeerAddr {
        PeerAddr::new(format!("h:{}", 1000 + i)).unwrap()
    }

    fn node(b: u8) -> NodeId {
        NodeId::from_bytes([b; 32])
    }

    const LEASE: Duration = Duration::from_secs(60);

    #[test]
    fn a_live_binding_refuses_other_ids() {
        let t0 = Instant::now();
        let mut book = NodeBook::new(LEASE, 100);
        book.claim(&addr(1), node(1), t0).unwrap();
        assert_eq!(book.node(&addr(1)), Some(node(1)));
        assert_eq!(
            book.claim(&addr(1), node(2), t0 + LEASE),
            Err(BoundToOther { bound: node(1) })
        );
        assert!(book.check(&addr(1), node(2), t0).is_err());
        assert!(book.check(&addr(1), node(1), t0).is_ok());
        // Refreshed by its own renewal, it stays live a lease longer.
        book.claim(&addr(1), node(1), t0 + LEASE).unwrap();
        assert!(book.check(&addr(1), node(2), t0 + LEASE * 2).is_err());
        // Lapsed: a new key may take the address.
        let later = t0 + LEASE * 2 + Duration::from_millis(1);
        book.claim(&addr(1), node(2), later).unwrap();
        assert_eq!(book.node(&addr(1)), Some(node(2)));
        assert_eq!(
            book.nodes_of([&addr(2), &addr(1)]),
            vec![HolderNode {
                holder: addr(1),
                node: node(2)
            }]
        );
    }

    #[test]
    fn undo_restores_and_forget_frees() {
        let t0 = Instant::now();
        let mut book = NodeBook::new(LEASE, 100);
        let first = book.claim(&addr(1), node(1), t0).unwrap();
        book.undo(&addr(1), first);
        assert!(book.is_empty());
        book.claim(&addr(1), node(1), t0).unwrap();
        let again = book.claim(&addr(1), node(1), t0 + LEASE).unwrap();
        book.undo(&addr(1), again);
        // The older binding is back: it lapses from t0.
        assert!(book.check(&addr(1), node(2), t0 + LEASE * 2).is_ok());
        book.forget(&addr(1));
        assert_eq!(book.node(&addr(1)), None);
    }

    #[test]
    fn the_book_stays_bounded() {
        let t0 = Instant::now();
        let mut book = NodeBook::new(LEASE, 16);
        for i in 0..100 {
            let at = t0 + Duration::from_millis(u64::from(i));
            book.claim(&addr(i), node(1), at).unwrap();
            assert!(book.len() <= 16, "{}", book.len());
        }
        // The newest stays; the oldest went.
        assert_eq!(book.node(&addr(99)), Some(node(1)));
        assert_eq!(book.node(&addr(0)), None);
        book.prune(t0 + LEASE * 3);
        assert!(book.is_empty());
    }
}
