//! The obvious model of a registry, shared by the registry's own property tests
//! (`registry.rs`) and the store conformance suite (`tests/conformance.rs`), compiled into
//! each as a module of its own (test builds only): listings
//! keyed by (name, first id byte), each with the first meta registered and its holders.
#![allow(dead_code)] // each user takes a part

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};

/// (name, id byte) -> (first meta, holders).
pub(crate) type Model = BTreeMap<(String, u8), (FileMeta, BTreeSet<PeerAddr>)>;

/// What a registry answers for `holders(key)`: by name the id with the most holders (ties:
/// the smallest id); by id the union of holders under every name, with the meta of the
/// listing with the most (ties: the smallest name).
pub(crate) fn model_holders(model: &Model, key: &FileKey) -> Option<(FileMeta, Vec<PeerAddr>)> {
    let listings = model.iter().filter(|((n, i), _)| match key {
        FileKey::Name(name) => n == name,
        FileKey::Id(id) => FileId([*i; 32]) == *id,
    });
    match key {
        // Ascending iteration, so `rev` + `max_by_key` (last max wins) keeps the smallest.
        FileKey::Name(_) => listings
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

/// Registers `holder` for `metas` in the model; returns how many registrations are new.
pub(crate) fn model_register(model: &mut Model, holder: &PeerAddr, metas: &[FileMeta]) -> u32 {
    let mut added = 0;
    for m in metas {
        let entry = model
            .entry((m.name.clone(), m.id.0[0]))
            .or_insert_with(|| (m.clone(), BTreeSet::new()));
        added += u32::from(entry.1.insert(holder.clone()));
    }
    added
}

/// Removes `holder` from the listings of `ids` (empty: all); returns how many went.
pub(crate) fn model_unregister(model: &mut Model, holder: &PeerAddr, ids: &[u8]) -> u32 {
    let mut removed = 0;
    for (key, (_, hs)) in model.iter_mut() {
        if (ids.is_empty() || ids.contains(&key.1)) && hs.remove(holder) {
            removed += 1;
        }
    }
    model.retain(|_, (_, hs)| !hs.is_empty());
    removed
}

/// One step of a lease sequence (holder, files as (name, id byte); clock advances in ms).
#[derive(Clone, Debug)]
pub(crate) enum LeaseOp {
    Register(u8, Vec<(u8, u8)>),
    Renew(u8),
    Unregister(u8),
    Advance(u64),
    Sweep,
}

pub(crate) fn lease_op() -> impl Strategy<Value = LeaseOp> {
    prop_oneof![
        3 => (0..4u8, prop::collection::vec((0..3u8, 0..3u8), 0..4))
            .prop_map(|(h, files)| LeaseOp::Register(h, files)),
        2 => (0..4u8).prop_map(LeaseOp::Renew),
        1 => (0..4u8).prop_map(LeaseOp::Unregister),
        3 => any::<u64>().prop_map(LeaseOp::Advance),
        1 => Just(LeaseOp::Sweep),
    ]
}
