//! Holders are keys: the index binds each holder to the node id of the connection that
//! registered it, refuses changes from other ids, and answers the ids with lookups. Over real
//! TLS and the `Claimed` stand-in (see `support/keys.rs`), on the in-memory network; the
//! plaintext cases over `Claimed` only (a TLS connection always proves an id).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "support/keys.rs"]
mod keys;

use keys::{ClaimedKeys, Keys, TlsKeys, refused_for_other_node};
use shoal_index::{IndexClient, IndexError, IndexServer, IndexServerConfig, MemoryStore};
use shoal_proto::mem::MemNetwork;
use shoal_proto::message::HolderNode;
use shoal_proto::{FileId, FileKey, FileMeta, NodeId, PeerAddr};

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

struct World<K: Keys> {
    keys: K,
    net: MemNetwork,
    index: shoal_index::ServerHandle,
    metrics: std::sync::Arc<shoal_index::IndexMetrics>,
}

impl<K: Keys> World<K> {
    fn new(keys: K) -> World<K> {
        let net = MemNetwork::new();
        let server = IndexServer::new(
            keys.transport(&net, "index", 99),
            MemoryStore::with_seed(1),
            IndexServerConfig::default(),
        );
        let metrics = server.metrics();
        let index = server.spawn(&addr("index:0")).unwrap();
        World {
            keys,
            net,
            index,
            metrics,
        }
    }

    fn node(&self, who: u8) -> NodeId {
        self.keys.node(who)
    }

    /// A client on `host` whose connections present node `who`.
    fn client(&self, host: &str, who: u8) -> IndexClient<K::T> {
        IndexClient::new(
            self.keys.transport(&self.net, host, who),
            vec![self.index.addr().clone()],
        )
    }

    /// A client on `host` proving no id (plain TCP's case), where the transport can.
    fn plain(&self, host: &str) -> Option<IndexClient<K::T>> {
        let transport = self.keys.anonymous(&self.net, host)?;
        Some(IndexClient::new(transport, vec![self.index.addr().clone()]))
    }

    /// A client that only reads.
    fn reader(&self) -> IndexClient<K::T> {
        self.client("reader", 98)
    }
}

#[test]
fn lookups_answer_the_id_each_holder_registered_with() {
    lookups_answer_ids(World::new(TlsKeys::default()));
    lookups_answer_ids(World::new(ClaimedKeys));
}

fn lookups_answer_ids<K: Keys>(world: World<K>) {
    let node = |who| world.node(who);
    let song = meta("song.ogg", 1);
    let h1 = addr("h:1");
    let h2 = addr("h:2");
    world
        .client("h", 1)
        .register(&h1, std::slice::from_ref(&song))
        .unwrap();
    world
        .client("h", 2)
        .register(&h2, std::slice::from_ref(&song))
        .unwrap();
    // A holder registered without an id is listed without one.
    let h3 = addr("p:3");
    let mut all = vec![h1.clone(), h2.clone()];
    if let Some(mut plain) = world.plain("p") {
        plain.register(&h3, std::slice::from_ref(&song)).unwrap();
        all.push(h3.clone());
    }

    let mut reader = world.reader();
    let known = vec![
        HolderNode {
            holder: h1.clone(),
            node: node(1),
        },
        HolderNode {
            holder: h2.clone(),
            node: node(2),
        },
    ];
    let (_, holders, nodes) = reader.holders_with_nodes(&key("song.ogg")).unwrap();
    assert_eq!(holders, all);
    assert_eq!(nodes, known);
    let sources = reader.sources(&key("song.ogg")).unwrap();
    assert_eq!(sources.nodes, known);
    for _ in 0..20 {
        let (_, holder, node_id) = reader.located(&key("song.ogg")).unwrap();
        let expected = if holder == h1 {
            Some(node(1))
        } else if holder == h2 {
            Some(node(2))
        } else {
            None
        };
        assert_eq!(node_id, expected, "{holder}");
    }
    let hits = reader.search("song", 10).unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].nodes, known);

    // A partial holder's id is answered with the sources too.
    let h4 = addr("h:4");
    world
        .client("h", 4)
        .register_partial(&h4, std::slice::from_ref(&song))
        .unwrap();
    let sources = reader.sources(&key("song.ogg")).unwrap();
    assert_eq!(sources.partial, std::slice::from_ref(&h4));
    assert!(sources.nodes.contains(&HolderNode {
        holder: h4,
        node: node(4)
    }));
}

#[test]
fn only_the_registering_node_may_change_its_holder() {
    only_the_registering_node(World::new(TlsKeys::default()));
    only_the_registering_node(World::new(ClaimedKeys));
}

fn only_the_registering_node<K: Keys>(world: World<K>) {
    let node = |who| world.node(who);
    let song = meta("song.ogg", 1);
    let other = meta("other.ogg", 2);
    let h1 = addr("h:1");
    let mut owner = world.client("h", 1);
    owner.register(&h1, std::slice::from_ref(&song)).unwrap();

    // Same host (the host check passes), another key: every change is refused.
    let mut impostor = world.client("h", 2);
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
    // Nothing changed, and the five refusals are counted for /metrics.
    assert_eq!(world.metrics.node_refusals(), 5);
    let mut reader = world.reader();
    let (_, holders, nodes) = reader.holders_with_nodes(&key("song.ogg")).unwrap();
    assert_eq!(holders, std::slice::from_ref(&h1));
    assert_eq!(nodes[0].node, node(1));
    assert!(reader.holders(&key("other.ogg")).is_err());

    // The owner renews and unregisters; then the address is free for another key.
    assert_eq!(owner.renew(&h1).unwrap(), 1);
    assert_eq!(owner.unregister(&h1, &[]).unwrap(), 1);
    impostor
        .register(&h1, std::slice::from_ref(&other))
        .unwrap();
    let (_, holder, node_id) = reader.located(&key("other.ogg")).unwrap();
    assert_eq!((holder, node_id), (h1.clone(), Some(node(2))));
    refused_for_other_node(owner.renew(&h1), "h:1", node(2), node(1));
}

#[test]
fn a_failed_registration_binds_nothing() {
    failed_registrations_bind_nothing(World::new(TlsKeys::default()));
    failed_registrations_bind_nothing(World::new(ClaimedKeys));
}

fn failed_registrations_bind_nothing<K: Keys>(world: World<K>) {
    let h1 = addr("h:1");
    // Refused by the store's checks (a bad chunk size): the holder stays free.
    let mut bad = meta("bad.ogg", 3);
    bad.chunk_size = 1000;
    assert!(world.client("h", 5).register(&h1, &[bad]).is_err());
    // Renewing a holder the index does not know binds nothing either.
    assert!(matches!(
        world.client("h", 6).renew(&h1),
        Err(IndexError::UnknownHolder { .. })
    ));
    world
        .client("h", 7)
        .register(&h1, &[meta("song.ogg", 1)])
        .unwrap();
    let (_, _, node_id) = world.reader().located(&key("song.ogg")).unwrap();
    assert_eq!(node_id, Some(world.node(7)));
}

#[test]
fn connections_without_an_id_are_not_checked_and_bind_nothing() {
    let world = World::new(ClaimedKeys);
    let node = |who| world.node(who);
    let plain = |host| world.plain(host).unwrap();
    let h1 = addr("h:1");
    let song = meta("song.ogg", 1);
    plain("h")
        .register(&h1, std::slice::from_ref(&song))
        .unwrap();
    let mut reader = plain("reader");
    assert_eq!(reader.located(&key("song.ogg")).unwrap().2, None);
    assert!(reader.sources(&key("song.ogg")).unwrap().nodes.is_empty());
    assert!(reader.search("", 10).unwrap()[0].nodes.is_empty());
    // The first id to register it binds it.
    world.client("h", 1).register(&h1, &[song]).unwrap();
    assert_eq!(reader.located(&key("song.ogg")).unwrap().2, Some(node(1)));
    // A plaintext renewal is not checked (the host check still applies to it).
    assert_eq!(plain("h").renew(&h1).unwrap(), 1);
    assert!(plain("elsewhere").renew(&h1).is_err());
}
