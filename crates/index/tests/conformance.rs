//! One conformance suite for every [`Store`]: `MemoryStore`, `DurableStore`, `DurableStore`
//! reopened between operations, and `RedisStore` (on a private redis-server; reopened means
//! a second store on the same Redis and prefix, as a second index server would be).
//!
//! - the registry's model-based operation sequences (register/unregister, then every lookup
//!   against an obvious model), and the lease sequences with an injected clock;
//! - every other operation (caps, partial holders, sources, search with downloading counts,
//!   renewals, sweeps) against `MemoryStore` as the reference, answer by answer.
//!
//! Without redis-server installed the Redis flavour is skipped with a loud message
//! (`.ci/run` installs it, so CI never skips).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use model::{LeaseOp, Model, lease_op, model_holders, model_register, model_unregister};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use shoal_index::{
    Clock, DurableOptions, DurableStore, LocalRedis, ManualClock, MemoryStore, RedisOptions,
    RedisStore, RegistrationLimits, Store, StoreError,
};
use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};

#[path = "../src/test_model.rs"]
mod model;

const LEASE: Duration = Duration::from_secs(10);
const CASES: u32 = 48;

/// Makes fresh stores of one kind and reopens them.
trait Flavour {
    type S: Store;
    fn fresh(&mut self, clock: &ManualClock) -> Self::S;
    /// The same registry seen anew (a restart, or another server on the same Redis), or
    /// `store` itself if this flavour does not reopen.
    fn reopen(&mut self, store: Self::S, clock: &ManualClock) -> Self::S;
}

struct Memory;

impl Flavour for Memory {
    type S = MemoryStore;
    fn fresh(&mut self, clock: &ManualClock) -> MemoryStore {
        MemoryStore::with_seed(1)
            .with_lease(LEASE)
            .with_clock(clock.clone())
    }
    fn reopen(&mut self, store: MemoryStore, _: &ManualClock) -> MemoryStore {
        store
    }
}

struct Durable {
    dir: Option<tempfile::TempDir>,
    reopens: bool,
}

impl Durable {
    fn options(clock: &ManualClock) -> DurableOptions {
        DurableOptions {
            lease: LEASE,
            clock: Arc::new(clock.clone()),
            seed: Some(1),
            ..DurableOptions::default()
        }
    }
}

impl Flavour for Durable {
    type S = DurableStore;
    fn fresh(&mut self, clock: &ManualClock) -> DurableStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = DurableStore::open(dir.path(), Self::options(clock)).expect("open");
        self.dir = Some(dir);
        store
    }
    fn reopen(&mut self, store: DurableStore, clock: &ManualClock) -> DurableStore {
        if !self.reopens {
            return store;
        }
        drop(store);
        let dir = self.dir.as_ref().expect("opened");
        DurableStore::open(dir.path(), Self::options(clock)).expect("reopen")
    }
}

struct Redis {
    server: LocalRedis,
    prefix: String,
}

impl Redis {
    /// A private redis-server, or `None` (and a loud message) without one.
    fn start(test: &str) -> Option<Redis> {
        if !LocalRedis::available() {
            // Straight to the terminal: the test harness captures `eprintln!` of a passing test.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {test} on RedisStore: redis-server is not installed \
                 (apt-get install redis-server; .ci/run installs it) ***\n"
            );
            return None;
        }
        Some(Redis {
            server: LocalRedis::start().expect("start redis-server"),
            prefix: String::new(),
        })
    }

    fn open(&self, clock: &ManualClock) -> RedisStore {
        let options = RedisOptions {
            prefix: self.prefix.clone(),
            lease: LEASE,
            ..RedisOptions::default()
        };
        RedisStore::open(&self.server.url(), options)
            .expect("open")
            .with_clock(clock.clone())
            .with_seed(1)
    }
}

impl Flavour for Redis {
    type S = RedisStore;
    fn fresh(&mut self, clock: &ManualClock) -> RedisStore {
        static N: AtomicU32 = AtomicU32::new(0);
        self.prefix = format!("t{}", N.fetch_add(1, Ordering::Relaxed));
        self.open(clock)
    }
    fn reopen(&mut self, _: RedisStore, clock: &ManualClock) -> RedisStore {
        self.open(clock)
    }
}

fn addr(s: &str) -> PeerAddr {
    PeerAddr::new(s).expect("address")
}

fn meta(n: u8, i: u8, size: u64) -> FileMeta {
    FileMeta {
        name: format!("n{n}"),
        size,
        chunk_size: 1024,
        id: FileId([i; 32]),
    }
}

/// Every lookup of `store` agrees with `model` (live holders only).
fn check_lookups<S: Store>(store: &S, model: &Model, keys: u8) -> Result<(), TestCaseError> {
    for n in 0..keys {
        for key in [FileKey::Name(format!("n{n}")), FileKey::Id(FileId([n; 32]))] {
            let expected = model_holders(model, &key);
            prop_assert_eq!(store.holders(&key).expect("holders"), expected.clone());
            match (store.locate(&key).expect("locate"), expected) {
                (None, None) => {}
                (Some((m, h)), Some((em, hs))) => {
                    prop_assert_eq!(m, em);
                    prop_assert!(hs.contains(&h), "{} is not a holder", h);
                }
                (got, want) => prop_assert!(false, "locate {key}: {got:?}, model {want:?}"),
            }
        }
    }
    let hits: Vec<(String, u8, u32)> = store
        .search("", 100)
        .expect("search")
        .into_iter()
        .map(|h| (h.file.name, h.file.id.0[0], h.holders))
        .collect();
    let expected: Vec<(String, u8, u32)> = model
        .iter()
        .map(|((n, i), (_, hs))| (n.clone(), *i, u32::try_from(hs.len()).expect("small")))
        .collect();
    prop_assert_eq!(hits, expected);
    Ok(())
}

#[derive(Clone, Debug)]
enum Op {
    Register(u8, Vec<(u8, u8, u64)>),
    Unregister(u8, Vec<u8>),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..5u8, prop::collection::vec((0..4u8, 0..4u8, 0..3u64), 0..5))
            .prop_map(|(h, files)| Op::Register(h, files)),
        2 => (0..5u8, prop::collection::vec(0..4u8, 0..3))
            .prop_map(|(h, ids)| Op::Unregister(h, ids)),
        1 => Just(Op::Reopen),
    ]
}

/// The registry's model-based sequences, through the `Store` trait.
fn agrees_with_a_model<F: Flavour>(flavour: &mut F) {
    let flavour = RefCell::new(flavour);
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    let strategy = prop::collection::vec(op(), 1..40);
    let result = runner.run(&strategy, |ops| {
        let clock = ManualClock::new();
        let mut store = flavour.borrow_mut().fresh(&clock);
        let mut model = Model::new();
        for op in ops {
            match op {
                Op::Register(h, files) => {
                    let holder = addr(&format!("h{h}:1"));
                    let metas: Vec<FileMeta> =
                        files.iter().map(|&(n, i, size)| meta(n, i, size)).collect();
                    let added = model_register(&mut model, &holder, &metas);
                    prop_assert_eq!(store.register(&holder, &metas).expect("register"), added);
                }
                Op::Unregister(h, ids) => {
                    let holder = addr(&format!("h{h}:1"));
                    let removed = model_unregister(&mut model, &holder, &ids);
                    let ids: Vec<FileId> = ids.iter().map(|&i| FileId([i; 32])).collect();
                    prop_assert_eq!(
                        store.unregister(&holder, &ids).expect("unregister"),
                        removed
                    );
                }
                Op::Reopen => store = flavour.borrow_mut().reopen(store, &clock),
            }
            check_lookups(&store, &model, 4)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// The registry's lease sequences with an injected clock, through the `Store` trait.
fn leases_agree_with_a_model<F: Flavour>(flavour: &mut F) {
    let flavour = RefCell::new(flavour);
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    let strategy = prop::collection::vec(lease_op(), 1..60);
    let lease_ms = u64::try_from(LEASE.as_millis()).expect("small");
    let result = runner.run(&strategy, |ops| {
        let clock = ManualClock::new();
        let store = flavour.borrow_mut().fresh(&clock);
        let mut model = Model::new();
        let mut expires: BTreeMap<PeerAddr, Duration> = BTreeMap::new();
        for op in ops {
            let now = clock.now();
            match op {
                LeaseOp::Register(h, files) => {
                    let holder = addr(&format!("h{h}:1"));
                    let metas: Vec<FileMeta> = files.iter().map(|&(n, i)| meta(n, i, 1)).collect();
                    if metas.is_empty() {
                        prop_assert_eq!(store.register(&holder, &metas).expect("register"), 0);
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
                    prop_assert_eq!(store.register(&holder, &metas).expect("register"), added);
                }
                LeaseOp::Renew(h) => {
                    let holder = addr(&format!("h{h}:1"));
                    let expected = match expires.get_mut(&holder) {
                        Some(e) if now < *e => {
                            *e = now + LEASE;
                            let n = model
                                .values()
                                .filter(|(_, hs)| hs.contains(&holder))
                                .count();
                            Some(u32::try_from(n).expect("small"))
                        }
                        _ => None,
                    };
                    prop_assert_eq!(store.renew(&holder).expect("renew"), expected);
                }
                LeaseOp::Unregister(h) => {
                    let holder = addr(&format!("h{h}:1"));
                    let removed = model_unregister(&mut model, &holder, &[]);
                    expires.remove(&holder);
                    prop_assert_eq!(store.unregister(&holder, &[]).expect("unregister"), removed);
                }
                LeaseOp::Advance(ms) => {
                    clock.advance(Duration::from_millis(ms % (lease_ms * 2)));
                }
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
                            (h.clone(), u32::try_from(n).expect("small"))
                        })
                        .collect();
                    for (_, hs) in model.values_mut() {
                        hs.retain(|h| !gone.contains(h));
                    }
                    model.retain(|_, (_, hs)| !hs.is_empty());
                    expires.retain(|h, _| !gone.contains(h));
                    let mut swept = store.sweep_expired().expect("sweep");
                    swept.sort();
                    expected.sort();
                    prop_assert_eq!(swept, expected);
                }
            }
            let now = clock.now();
            let mut live = model.clone();
            for (_, hs) in live.values_mut() {
                hs.retain(|h| expires.get(h).is_some_and(|&e| now < e));
            }
            live.retain(|_, (_, hs)| !hs.is_empty());
            check_lookups(&store, &live, 3)?;
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[derive(Clone, Debug)]
enum Any {
    Register(u8, u8, Vec<(u8, u8)>),
    RegisterPartial(u8, u8, Vec<(u8, u8)>),
    Unregister(u8, Vec<u8>),
    UnregisterPartial(u8, Vec<u8>),
    Renew(u8),
    Advance(u64),
    Sweep,
}

fn any_op() -> impl Strategy<Value = Any> {
    let files = || prop::collection::vec((0..4u8, 0..4u8), 0..5);
    prop_oneof![
        4 => (0..6u8, 0..2u8, files()).prop_map(|(h, a, f)| Any::Register(h, a, f)),
        3 => (0..6u8, 0..2u8, files()).prop_map(|(h, a, f)| Any::RegisterPartial(h, a, f)),
        1 => (0..6u8, prop::collection::vec(0..4u8, 0..2)).prop_map(|(h, i)| Any::Unregister(h, i)),
        1 => (0..6u8, prop::collection::vec(0..4u8, 0..2))
            .prop_map(|(h, i)| Any::UnregisterPartial(h, i)),
        2 => (0..6u8).prop_map(Any::Renew),
        2 => (0..15_000u64).prop_map(Any::Advance),
        1 => Just(Any::Sweep),
    ]
}

/// What a store answered, comparable across stores (errors by their message).
fn answer<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(StoreError::OverLimit(limit)) => format!("over limit: {limit}"),
        Err(e) => panic!("store failed: {e}"),
    }
}

/// Everything the model tests leave out (caps, partial holders, sources, downloading
/// counts, renewals covering downloads, sweeps), answer by answer against `MemoryStore`.
fn agrees_with_the_memory_store<F: Flavour>(flavour: &mut F) {
    let limits = RegistrationLimits {
        per_holder: 6,
        per_address: 9,
    };
    let flavour = RefCell::new(flavour);
    let mut runner = TestRunner::new(Config::with_cases(CASES));
    let strategy = prop::collection::vec(any_op(), 1..50);
    let result = runner.run(&strategy, |ops| {
        let clock = ManualClock::new();
        let store = flavour.borrow_mut().fresh(&clock);
        let reference = Memory.fresh(&clock);
        for op in ops {
            let holder = |h: u8| addr(&format!("h{h}:1"));
            let host = |a: u8| format!("10.0.0.{a}");
            let metas = |f: &[(u8, u8)]| -> Vec<FileMeta> {
                f.iter().map(|&(n, i)| meta(n, i, 1)).collect()
            };
            let ids = |i: &[u8]| -> Vec<FileId> { i.iter().map(|&i| FileId([i; 32])).collect() };
            let (got, want) = match &op {
                Any::Register(h, a, f) => {
                    let (h, a, f) = (holder(*h), host(*a), metas(f));
                    (
                        answer(store.register_within(&h, &a, &f, &limits)),
                        answer(reference.register_within(&h, &a, &f, &limits)),
                    )
                }
                Any::RegisterPartial(h, a, f) => {
                    let (h, a, f) = (holder(*h), host(*a), metas(f));
                    (
                        answer(store.register_partial_within(&h, &a, &f, &limits)),
                        answer(reference.register_partial_within(&h, &a, &f, &limits)),
                    )
                }
                Any::Unregister(h, i) => (
                    answer(store.unregister(&holder(*h), &ids(i))),
                    answer(reference.unregister(&holder(*h), &ids(i))),
                ),
                Any::UnregisterPartial(h, i) => (
                    answer(store.unregister_partial(&holder(*h), &ids(i))),
                    answer(reference.unregister_partial(&holder(*h), &ids(i))),
                ),
                Any::Renew(h) => (
                    answer(store.renew(&holder(*h))),
                    answer(reference.renew(&holder(*h))),
                ),
                Any::Advance(ms) => {
                    clock.advance(Duration::from_millis(*ms));
                    continue;
                }
                Any::Sweep => {
                    let sorted = |r: Result<Vec<(PeerAddr, u32)>, StoreError>| {
                        r.map(|mut v| {
                            v.sort();
                            v
                        })
                    };
                    (
                        answer(sorted(store.sweep_expired())),
                        answer(sorted(reference.sweep_expired())),
                    )
                }
            };
            prop_assert_eq!(got, want, "{:?}", op);
            for n in 0..4u8 {
                for key in [FileKey::Name(format!("n{n}")), FileKey::Id(FileId([n; 32]))] {
                    prop_assert_eq!(
                        store.sources(&key).expect("sources"),
                        reference.sources(&key).expect("sources"),
                        "{} after {:?}",
                        key,
                        op
                    );
                    prop_assert_eq!(
                        store.holders(&key).expect("holders"),
                        reference.holders(&key).expect("holders")
                    );
                }
            }
            for (query, limit) in [("", 100), ("N1", 100), ("", 3)] {
                prop_assert_eq!(
                    store.search(query, limit).expect("search"),
                    reference.search(query, limit).expect("search"),
                    "search {:?} {} after {:?}",
                    query,
                    limit,
                    op
                );
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Names that only match ignoring case, outside ASCII too, and glob characters that must
/// match themselves.
fn search_is_a_case_insensitive_substring_search<F: Flavour>(flavour: &mut F) {
    let clock = ManualClock::new();
    let store = flavour.fresh(&clock);
    let names = [
        "Song.OGG",
        "song-two.ogg",
        "İstanbul.txt",
        "STRASSE.md",
        "straße.md",
        "a*b?[c].txt",
        "back\\slash",
    ];
    let files: Vec<FileMeta> = names
        .iter()
        .enumerate()
        .map(|(i, n)| FileMeta {
            name: (*n).to_string(),
            size: 1,
            chunk_size: 1024,
            id: FileId([u8::try_from(i).expect("small"); 32]),
        })
        .collect();
    store.register(&addr("a:1"), &files).expect("register");
    let found = |q: &str| -> Vec<String> {
        store
            .search(q, 100)
            .expect("search")
            .into_iter()
            .map(|h| h.file.name)
            .collect()
    };
    assert_eq!(found("SONG"), ["Song.OGG", "song-two.ogg"]);
    assert_eq!(found(".ogg"), ["Song.OGG", "song-two.ogg"]);
    assert_eq!(found("i̇stan"), ["İstanbul.txt"]);
    assert_eq!(found("STRASSE"), ["STRASSE.md"]);
    assert_eq!(found("STRAßE"), ["straße.md"]);
    assert_eq!(found("*b?[c]"), ["a*b?[c].txt"]);
    assert_eq!(found("*"), ["a*b?[c].txt"]);
    assert_eq!(found("k\\s"), ["back\\slash"]);
    assert_eq!(found("[").len(), 1);
    assert!(found("zzz").is_empty());
    assert_eq!(found("").len(), names.len());
    assert_eq!(store.search("", 2).expect("search").len(), 2);
    assert!(store.search("", 0).expect("search").is_empty());
}

/// A holder of 10,000 files renews them in one call, and a lookup after the lease finds
/// none of them without a sweep.
fn a_big_holder_renews_at_once<F: Flavour>(flavour: &mut F) {
    let clock = ManualClock::new();
    let store = flavour.fresh(&clock);
    let files: Vec<FileMeta> = (0..10_000u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            FileMeta {
                name: format!("f{i}.bin"),
                size: 1,
                chunk_size: 1024,
                id: FileId(id),
            }
        })
        .collect();
    let big = addr("big:1");
    assert_eq!(store.register(&big, &files).expect("register"), 10_000);
    for _ in 0..3 {
        clock.advance(LEASE / 2);
        assert_eq!(store.renew(&big).expect("renew"), Some(10_000));
    }
    let key = FileKey::Name("f9999.bin".into());
    assert!(store.locate(&key).expect("locate").is_some());
    clock.advance(LEASE);
    assert_eq!(store.locate(&key).expect("locate"), None);
    assert_eq!(store.renew(&big).expect("renew"), None);
    assert_eq!(store.sweep_expired().expect("sweep"), vec![(big, 10_000)]);
}

fn suite<F: Flavour>(flavour: &mut F) {
    agrees_with_a_model(flavour);
    leases_agree_with_a_model(flavour);
    search_is_a_case_insensitive_substring_search(flavour);
    a_big_holder_renews_at_once(flavour);
}

#[test]
fn memory_store_conforms() {
    suite(&mut Memory);
}

#[test]
fn durable_store_conforms() {
    let mut durable = Durable {
        dir: None,
        reopens: false,
    };
    suite(&mut durable);
    agrees_with_the_memory_store(&mut durable);
}

#[test]
fn durable_store_conforms_across_reopens() {
    agrees_with_a_model(&mut Durable {
        dir: None,
        reopens: true,
    });
}

#[test]
fn redis_store_conforms() {
    let Some(mut redis) = Redis::start("redis_store_conforms") else {
        return;
    };
    suite(&mut redis);
    agrees_with_the_memory_store(&mut redis);
}
