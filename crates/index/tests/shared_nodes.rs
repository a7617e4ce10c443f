//! Holders are keys on a shared registry: two index servers on one Redis (a private
//! redis-server) see one set of node-id bindings, so a holder registered through one is
//! answered with its id, and guarded against other ids, through the other. Over real TLS and
//! the `Claimed` stand-in (see `support/keys.rs`), on the in-memory network.
//!
//! Without redis-server installed the tests are skipped with a loud message (`.ci/run`
//! installs it, so CI never skips).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "support/keys.rs"]
mod keys;

use std::io::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use keys::{ClaimedKeys, Keys, TlsKeys, refused_for_other_node};
use shoal_index::nodes::Refusal;
use shoal_index::{
    IndexClient, IndexError, IndexServer, IndexServerConfig, LocalRedis, ManualClock, RedisOptions,
    RedisStore, ServerHandle, Store, StoreError,
};
use shoal_proto::mem::MemNetwork;
use shoal_proto::message::HolderNode;
use shoal_proto::{FileId, FileKey, FileMeta, NodeId, PeerAddr};

const LEASE: Duration = Duration::from_secs(60);

fn addr(s: &str) -> PeerAddr {
    PeerAddr::new(s).unwrap()
}

fn meta(name: &str, id: u8) -> FileMeta {
    FileMeta {
        name: name.into(),
        size: 5,
        chunk_size: 1024,
        id: FileId([id; 32]),
    }
}

fn key(name: &str) -> FileKey {
    FileKey::Name(name.into())
}

/// A private redis-server, or `None` (and a loud message) without one.
fn redis(test: &str) -> Option<LocalRedis> {
    if !LocalRedis::available() {
        // Straight to the terminal: the test harness captures `eprintln!` of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED {test}: redis-server is not installed \
             (apt-get install redis-server; .ci/run installs it) ***\n"
        );
        return None;
    }
    Some(LocalRedis::start().expect("start redis-server"))
}

/// A fresh prefix per store set, so tests sharing nothing never meet.
fn prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("n{}", N.fetch_add(1, Ordering::Relaxed))
}

fn open(redis: &LocalRedis, prefix: &str, clock: &ManualClock) -> RedisStore {
    let options = RedisOptions {
        prefix: prefix.to_string(),
        lease: LEASE,
        timeout: Duration::from_millis(500),
    };
    RedisStore::open(&redis.url(), options)
        .unwrap()
        .with_clock(clock.clone())
        .with_seed(1)
}

/// Index servers `a:0` and `b:0` on one registry in one Redis, with one clock.
struct Shared<K: Keys> {
    keys: K,
    net: MemNetwork,
    clock: ManualClock,
    a: ServerHandle,
    b: ServerHandle,
}

impl<K: Keys> Shared<K> {
    fn new(keys: K, redis: &LocalRedis) -> Shared<K> {
        let net = MemNetwork::new();
        let clock = ManualClock::new();
        let prefix = prefix();
        let serve = |name: &str| {
            IndexServer::new(
                keys.transport(&net, name, 99),
                open(redis, &prefix, &clock),
                IndexServerConfig::default(),
            )
            .spawn(&addr(&format!("{name}:0")))
            .unwrap()
        };
        let (a, b) = (serve("a"), serve("b"));
        Shared {
            keys,
            net,
            clock,
            a,
            b,
        }
    }

    fn node(&self, who: u8) -> NodeId {
        self.keys.node(who)
    }

    /// A client on `host` whose connections present node `who`, asking `index` only.
    fn client(&self, index: &ServerHandle, host: &str, who: u8) -> IndexClient<K::T> {
        IndexClient::new(
            self.keys.transport(&self.net, host, who),
            vec![index.addr().clone()],
        )
    }
}

#[test]
fn a_holder_registered_through_one_index_is_answered_with_its_id_through_the_other() {
    let Some(redis) = redis("shared lookups") else {
        return;
    };
    lookups_through_the_other(Shared::new(TlsKeys::default(), &redis));
    lookups_through_the_other(Shared::new(ClaimedKeys, &redis));
}

fn lookups_through_the_other<K: Keys>(world: Shared<K>) {
    let song = meta("song.ogg", 1);
    let h1 = addr("h:1");
    let h2 = addr("g:2");
    world
        .client(&world.a, "h", 1)
        .register(&h1, std::slice::from_ref(&song))
        .unwrap();
    world
        .client(&world.a, "g", 2)
        .register_partial(&h2, std::slice::from_ref(&song))
        .unwrap();
    let known = HolderNode {
        holder: h1.clone(),
        node: world.node(1),
    };

    let mut reader = world.client(&world.b, "reader", 98);
    let (_, holder, node) = reader.located(&key("song.ogg")).unwrap();
    assert_eq!((holder, node), (h1.clone(), Some(world.node(1))));
    let (_, holders, nodes) = reader.holders_with_nodes(&key("song.ogg")).unwrap();
    assert_eq!(holders, std::slice::from_ref(&h1));
    assert_eq!(nodes, std::slice::from_ref(&known));
    let sources = reader.sources(&key("song.ogg")).unwrap();
    assert_eq!(sources.partial, std::slice::from_ref(&h2));
    assert_eq!(
        sources.nodes,
        vec![
            known.clone(),
            HolderNode {
                holder: h2,
                node: world.node(2)
            }
        ]
    );
    let hits = reader.search("song", 10).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].nodes, std::slice::from_ref(&known));
}

#[test]
fn another_node_cannot_change_the_holder_through_the_other_index() {
    let Some(redis) = redis("shared refusals") else {
        return;
    };
    impostor_through_the_other(Shared::new(TlsKeys::default(), &redis));
    impostor_through_the_other(Shared::new(ClaimedKeys, &redis));
}

fn impostor_through_the_other<K: Keys>(world: Shared<K>) {
    let node = |who| world.node(who);
    let song = meta("song.ogg", 1);
    let other = meta("other.ogg", 2);
    let h1 = addr("h:1");
    let mut owner = world.client(&world.a, "h", 1);
    owner.register(&h1, std::slice::from_ref(&song)).unwrap();

    // Same host (the host check passes), another key, the other index: all refused.
    let mut impostor = world.client(&world.b, "h", 2);
    refused_for_other_node(
        impostor.register(&h1, std::slice::from_ref(&other)),
        "h:1",
        node(1),
        node(2),
    );
    refused_for_other_node(
        impostor.register_partial(&h1, std::slice::from_ref(&other)),
        "h:1",
        node(1),
        node(2),
    );
    refused_for_other_node(impostor.renew(&h1), "h:1", node(1), node(2));
    refused_for_other_node(impostor.unregister(&h1, &[]), "h:1", node(1), node(2));
    refused_for_other_node(
        impostor.unregister_partial(&h1, &[song.id]),
        "h:1",
        node(1),
        node(2),
    );
    // Nothing changed, seen from either index.
    for index in [&world.a, &world.b] {
        let mut reader = world.client(index, "reader", 98);
        let (_, holders, nodes) = reader.holders_with_nodes(&key("song.ogg")).unwrap();
        assert_eq!(holders, std::slice::from_ref(&h1));
        assert_eq!(nodes[0].node, node(1));
        assert!(reader.holders(&key("other.ogg")).is_err());
    }

    // The owner renews through the other index (one binding, wherever it is refreshed),
    // then unregisters everything: the address is free for another key at both.
    let mut owner_at_b = world.client(&world.b, "h", 1);
    assert_eq!(owner_at_b.renew(&h1).unwrap(), 1);
    assert_eq!(owner.unregister(&h1, &[]).unwrap(), 1);
    impostor
        .register(&h1, std::slice::from_ref(&other))
        .unwrap();
    let mut reader = world.client(&world.a, "reader", 98);
    let (_, holder, node_id) = reader.located(&key("other.ogg")).unwrap();
    assert_eq!((holder, node_id), (h1.clone(), Some(node(2))));
    refused_for_other_node(owner.renew(&h1), "h:1", node(2), node(1));
}

#[test]
fn a_lapsed_holder_may_be_taken_by_another_key_through_either_index() {
    let Some(redis) = redis("shared lapse") else {
        return;
    };
    let world = Shared::new(ClaimedKeys, &redis);
    let h1 = addr("h:1");
    let song = meta("song.ogg", 1);
    world
        .client(&world.a, "h", 1)
        .register(&h1, std::slice::from_ref(&song))
        .unwrap();
    let mut newcomer = world.client(&world.b, "h", 2);
    // Live (a lease to the millisecond): still the first key's.
    world.clock.advance(LEASE);
    refused_for_other_node(
        newcomer.register(&h1, std::slice::from_ref(&song)),
        "h:1",
        world.node(1),
        world.node(2),
    );
    world.clock.advance(Duration::from_millis(1));
    newcomer.register(&h1, std::slice::from_ref(&song)).unwrap();
    for index in [&world.a, &world.b] {
        let (_, holder, node) = world
            .client(index, "reader", 98)
            .located(&key("song.ogg"))
            .unwrap();
        assert_eq!((holder, node), (h1.clone(), Some(world.node(2))));
    }
    refused_for_other_node(
        world.client(&world.a, "h", 1).renew(&h1),
        "h:1",
        world.node(2),
        world.node(1),
    );
}

#[test]
fn a_failed_change_through_one_index_leaves_the_shared_binding_as_it_was() {
    let Some(redis) = redis("shared undo") else {
        return;
    };
    let world = Shared::new(ClaimedKeys, &redis);
    let h1 = addr("h:1");
    // Renewing a holder the registry does not know binds nothing, at either index.
    assert!(matches!(
        world.client(&world.a, "h", 6).renew(&h1),
        Err(IndexError::UnknownHolder { .. })
    ));
    world
        .client(&world.b, "h", 7)
        .register(&h1, &[meta("song.ogg", 1)])
        .unwrap();
    let (_, _, node) = world
        .client(&world.a, "reader", 98)
        .located(&key("song.ogg"))
        .unwrap();
    assert_eq!(node, Some(world.node(7)));
}

#[test]
fn the_shared_bindings_refuse_while_redis_is_down() {
    let Some(mut redis) = redis("shared outage") else {
        return;
    };
    let clock = ManualClock::new();
    let store = open(&redis, &prefix(), &clock);
    let bindings = store
        .node_bindings()
        .expect("a shared registry keeps its own bindings");
    let h1 = addr("h:1");
    let (x, y) = (NodeId::from_bytes([1; 32]), NodeId::from_bytes([2; 32]));
    bindings.claim(&h1, x).unwrap();
    assert!(matches!(bindings.claim(&h1, y), Err(Refusal::Bound(b)) if b.bound == x));
    assert!(matches!(bindings.check(&h1, y), Err(Refusal::Bound(b)) if b.bound == x));
    bindings.check(&h1, x).unwrap();

    redis.kill();
    // Nothing is let through unchecked: every claim and check is refused as unavailable.
    for who in [x, y] {
        assert!(
            matches!(
                bindings.claim(&h1, who),
                Err(Refusal::Store(StoreError::Unavailable(_)))
            ),
            "a claim went through without Redis"
        );
        assert!(matches!(
            bindings.check(&h1, who),
            Err(Refusal::Store(StoreError::Unavailable(_)))
        ));
    }
    assert!(matches!(
        bindings.nodes_of(&[&h1]),
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        bindings.node(&h1),
        Err(StoreError::Unavailable(_))
    ));
}

/// End to end, the shared bindings' outage reaches the client as the registry being
/// unavailable (the claim comes first, so a refusal of another kind, or a panic, would show
/// here), at the index the holder registered through and at the other.
#[test]
fn an_index_refuses_a_change_as_registry_unavailable_while_redis_is_down() {
    let Some(mut redis) = redis("shared outage at the server") else {
        return;
    };
    let world = Shared::new(ClaimedKeys, &redis);
    let h1 = addr("h:1");
    world
        .client(&world.a, "h", 1)
        .register(&h1, &[meta("song.ogg", 1)])
        .unwrap();
    redis.kill();
    for (index, who) in [(&world.a, 1), (&world.b, 2)] {
        let mut client = world.client(index, "h", who);
        assert!(matches!(
            client.register(&h1, &[meta("other.ogg", 2)]),
            Err(IndexError::RegistryUnavailable(_))
        ));
        assert!(matches!(
            client.renew(&h1),
            Err(IndexError::RegistryUnavailable(_))
        ));
        assert!(matches!(
            client.unregister(&h1, &[]),
            Err(IndexError::RegistryUnavailable(_))
        ));
    }
}
