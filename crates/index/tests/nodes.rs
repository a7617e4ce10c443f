//! Holders are keys: the index binds each holder to the node id of the connection that
//! registered it, refuses changes from other ids, and answers the ids with lookups. Over the
//! `Claimed` stand-in for TLS (see `support/claimed.rs`) on the in-memory network.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

#[path = "support/keys.rs"]
mod keys;

use keys::{Claimed, node};
use shoal_index::{IndexClient, IndexError, IndexServer, IndexServerConfig, MemoryStore};
use shoal_proto::mem::{MemNetwork, MemTransport};
use shoal_proto::message::{ErrorCode, HolderNode};
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

struct World {
    net: MemNetwork,
    index: shoal_index::ServerHandle,
}

impl World {
    fn new() -> World {
        let net = MemNetwork::new();
        let index = IndexServer::new(
            Claimed::new(net.host("index"), node(99)),
            MemoryStore::with_seed(1),
            IndexServerConfig::default(),
        )
        .spawn(&addr("index:0"))
        .unwrap();
        World { net, index }
    }

    /// A client on `host` whose connections claim `id`.
    fn client(&self, host: &str, id: NodeId) -> IndexClient<Claimed<MemTransport>> {
        IndexClient::new(
            Claimed::new(self.net.host(host), id),
            vec![self.index.addr().clone()],
        )
    }

    /// A client on `host` proving no id (plain TCP's case).
    fn plain(&self, host: &str) -> IndexClient<Claimed<MemTransport>> {
        IndexClient::new(
            Claimed::anonymous(self.net.host(host)),
            vec![self.index.addr().clone()],
        )
    }
}

/// The refusal an index sends for a change from the wrong node.
fn refused_for_other_node<T>(
    result: Result<T, IndexError>,
    holder: &str,
    bound: NodeId,
    asker: NodeId,
) {
    match result {
        Err(IndexError::Refused(reply)) => {
            assert_eq!(reply.code, ErrorCode::BadRequest);
            assert_eq!(
                reply.message,
                format!(
                    "holder {holder} is registered by node {bound}; this connection is node {asker}"
                )
            );
        }
        Err(other) => panic!("expected a refusal naming both nodes, got {other}"),
        Ok(_) => panic!("expected a refusal naming both nodes, got success"),
    }
}

#[test]
fn lookups_answer_the_id_each_holder_registered_with() {
    let world = World::new();
    let song = meta("song.ogg", 1);
    let h1 = addr("h:1");
    let h2 = addr("h:2");
    world
        .client("h", node(1))
        .register(&h1, std::slice::from_ref(&song))
        .unwrap();
    world
        .client("h", node(2))
        .register(&h2, std::slice::from_ref(&song))
        .unwrap();
    // A holder registered without an id is listed without one.
    let h3 = addr("p:3");
    world
        .plain("p")
        .register(&h3, std::slice::from_ref(&song))
        .unwrap();

    let mut reader = world.plain("reader");
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
    assert_eq!(holders, [h1.clone(), h2.clone(), h3.clone()]);
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
        .client("h", node(4))
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
    let world = World::new();
    let song = meta("song.ogg", 1);
    let other = meta("other.ogg", 2);
    let h1 = addr("h:1");
    let mut owner = world.client("h", node(1));
    owner.register(&h1, std::slice::from_ref(&song)).unwrap();

    // Same host (the host check passes), another key: every change is refused.
    let mut impostor = world.client("h", node(2));
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
    // Nothing changed.
    let mut reader = world.plain("reader");
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
    let world = World::new();
    let h1 = addr("h:1");
    // Refused by the store's checks (a bad chunk size): the holder stays free.
    let mut bad = meta("bad.ogg", 3);
    bad.chunk_size = 1000;
    assert!(world.client("h", node(5)).register(&h1, &[bad]).is_err());
    // Renewing a holder the index does not know binds nothing either.
    assert!(matches!(
        world.client("h", node(6)).renew(&h1),
        Err(IndexError::UnknownHolder { .. })
    ));
    world
        .client("h", node(7))
        .register(&h1, &[meta("song.ogg", 1)])
        .unwrap();
    let (_, _, node_id) = world.plain("reader").located(&key("song.ogg")).unwrap();
    assert_eq!(node_id, Some(node(7)));
}

#[test]
fn connections_without_an_id_are_not_checked_and_bind_nothing() {
    let world = World::new();
    let h1 = addr("h:1");
    let song = meta("song.ogg", 1);
    world
        .plain("h")
        .register(&h1, std::slice::from_ref(&song))
        .unwrap();
    let mut reader = world.plain("reader");
    assert_eq!(reader.located(&key("song.ogg")).unwrap().2, None);
    assert!(reader.sources(&key("song.ogg")).unwrap().nodes.is_empty());
    assert!(reader.search("", 10).unwrap()[0].nodes.is_empty());
    // The first id to register it binds it.
    world.client("h", node(1)).register(&h1, &[song]).unwrap();
    assert_eq!(reader.located(&key("song.ogg")).unwrap().2, Some(node(1)));
    // A plaintext renewal is not checked (the host check still applies to it).
    assert_eq!(world.plain("h").renew(&h1).unwrap(), 1);
    assert!(world.plain("elsewhere").renew(&h1).is_err());
}
