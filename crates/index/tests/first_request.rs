//! A fresh [`IndexClient`] sends its first request together with its hello (one round trip
//! instead of two), over the in-memory network.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use shoal_index::{IndexClient, IndexError, IndexServer, IndexServerConfig, MemoryStore};
use shoal_proto::codec;
use shoal_proto::mem::MemNetwork;
use shoal_proto::message::{IndexRequest, IndexResponse};
use shoal_proto::{FileId, FileKey, FileMeta, Listener, PeerAddr, Transport};

mod gate;

fn addr(s: &str) -> PeerAddr {
    PeerAddr::new(s).unwrap()
}

fn meta(name: &str) -> FileMeta {
    FileMeta {
        name: name.into(),
        size: 4096,
        chunk_size: 1024,
        id: FileId([9; 32]),
    }
}

#[test]
fn the_first_request_travels_with_the_hello() {
    let net = MemNetwork::new();
    let listener = net.host("fake").bind(&addr("fake:1")).unwrap();
    // A server that answers the hello only once the request is in: a client that waited
    // for the answer before sending its request would time out here.
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut hello = [0u8; 8];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello[..4], b"SHOL");
        let mut buf = Vec::new();
        let request: IndexRequest =
            codec::read_frame(&mut s, codec::DEFAULT_REQUEST_LIMIT, &mut buf).unwrap();
        assert_eq!(
            request,
            IndexRequest::Locate {
                key: FileKey::Name("a.txt".into())
            }
        );
        let mut reply = hello;
        reply[7] = 0; // accepted
        s.write_all(&reply).unwrap();
        let located = IndexResponse::Located {
            file: meta("a.txt"),
            holder: addr("p:1"),
            node: None,
        };
        codec::write_frame(&mut s, &located).unwrap();
        s
    });
    let mut client =
        IndexClient::new(net.host("c"), vec![addr("fake:1")]).with_timeout(Duration::from_secs(5));
    let (file, holder) = client.locate(&FileKey::Name("a.txt".into())).unwrap();
    assert_eq!((file, holder), (meta("a.txt"), addr("p:1")));
    drop(server.join().unwrap());
}

#[test]
fn fresh_clients_against_the_real_server() {
    let net = MemNetwork::new();
    let index = IndexServer::new(
        net.host("index"),
        MemoryStore::with_seed(3),
        IndexServerConfig::default(),
    )
    .spawn(&addr("index:0"))
    .unwrap();
    // Host `p` registers its own holder `p:1`.
    let fresh = || IndexClient::new(net.host("p"), vec![index.addr().clone()]);
    assert_eq!(fresh().register(&addr("p:1"), &[meta("a.txt")]).unwrap(), 1);
    let (file, holder) = fresh().locate(&FileKey::Name("a.txt".into())).unwrap();
    assert_eq!((file, holder), (meta("a.txt"), addr("p:1")));
    // The next request on the same client goes over the connection already open.
    let mut client = fresh();
    client.search("", 10).unwrap();
    let connections = net.stats(index.addr()).connections;
    assert_eq!(client.search("a", 10).unwrap().len(), 1);
    assert_eq!(net.stats(index.addr()).connections, connections);
}

#[test]
fn a_busy_index_is_still_reported_and_skipped() {
    let net = MemNetwork::new();
    let config = IndexServerConfig {
        max_connections: 1,
        ..IndexServerConfig::default()
    };
    let (store, gate) = gate::gated(MemoryStore::with_seed(1));
    let busy = IndexServer::new(net.host("busy"), store, config)
        .spawn(&addr("busy:0"))
        .unwrap();
    let free = IndexServer::new(
        net.host("free"),
        MemoryStore::with_seed(2),
        IndexServerConfig::default(),
    )
    .spawn(&addr("free:0"))
    .unwrap();
    // Holds the busy index's only slot, busy in the middle of a request (an idle
    // connection would give way to the next client).
    let mut holder = IndexClient::new(net.host("h"), vec![busy.addr().clone()]);
    let holding = thread::spawn(move || holder.search(gate::HOLD, 1).map(drop));
    gate.arrived.recv_timeout(Duration::from_secs(10)).unwrap();

    let mut alone = IndexClient::new(net.host("c"), vec![busy.addr().clone()]);
    match alone.register(&addr("p:1"), &[meta("a.txt")]) {
        Err(e @ IndexError::Unreachable { .. }) => {
            assert!(e.to_string().contains("busy"), "{e}")
        }
        other => panic!("expected a busy refusal, got {other:?}"),
    }

    // With a second address the request is sent again there, and served.
    let mut both = IndexClient::new(
        net.host("c"),
        vec![busy.addr().clone(), free.addr().clone()],
    );
    assert_eq!(both.register(&addr("p:1"), &[meta("a.txt")]).unwrap(), 1);
    assert_eq!(both.connected_index(), Some(free.addr()));

    // The refused requests were never processed by the busy index.
    gate.open.send(()).unwrap();
    holding.join().unwrap().unwrap();
    let mut later = IndexClient::new(net.host("c"), vec![busy.addr().clone()]);
    let mut answer = later.locate(&FileKey::Name("a.txt".into()));
    for _ in 0..1000 {
        // The held slot frees once the server noticed the holder left (bounded retry).
        match &answer {
            Err(IndexError::Unreachable { .. }) => {
                thread::sleep(Duration::from_millis(5));
                answer = later.locate(&FileKey::Name("a.txt".into()));
            }
            _ => break,
        }
    }
    assert!(
        matches!(answer, Err(IndexError::NotFound { .. })),
        "{answer:?}"
    );
}
