#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::mem::MemNetwork;
use crate::tcp::TcpTransport;
use crate::{Connection, Listener, PeerAddr, Transport};
use rustls_pki_types::CertificateDer;

fn open(identity: &Identity) -> TlsConfig {
    TlsConfig::new(identity.clone())
}

/// Accepts one connection on `listener` in a thread: reads 5 bytes, echoes them, returns
/// the result (or the server-side error) and the peer node it saw.
fn echo_once<L: Listener>(listener: L) -> thread::JoinHandle<Result<Option<NodeId>, String>>
where
    L::Stream: Connection,
{
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
        stream.write_all(&buf).map_err(|e| e.to_string())?;
        stream.flush().map_err(|e| e.to_string())?;
        Ok(stream.peer_node())
    })
}

fn handshake_and_echo<T: Transport>(
    server_t: TlsTransport<T>,
    client_t: TlsTransport<T>,
    bind: &str,
) {
    let listener = server_t.bind(&PeerAddr::new(bind).unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = echo_once(listener);
    let mut client = client_t.connect(&addr).unwrap();
    assert_eq!(client.peer_node(), Some(server_t.node_id()));
    client.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    assert_eq!(server.join().unwrap().unwrap(), Some(client_t.node_id()));
}

#[test]
fn open_mode_handshake_and_echo_on_mem() {
    let net = MemNetwork::new();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = TlsTransport::new(net.host("srv"), open(&a)).unwrap();
    let client = TlsTransport::new(net.host("cli"), open(&b)).unwrap();
    handshake_and_echo(server, client, "srv:0");
}

#[test]
fn open_mode_handshake_and_echo_on_tcp() {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = TlsTransport::new(TcpTransport::default(), open(&a)).unwrap();
    let client = TlsTransport::new(TcpTransport::default(), open(&b)).unwrap();
    handshake_and_echo(server, client, "127.0.0.1:0");
}

// ---- helpers for refusals ----------------------------------------------------------------

fn member(authority: &SwarmAuthority, identity: &Identity) -> TlsConfig {
    let mut config = TlsConfig::new(identity.clone());
    config.membership = Some(
        authority
            .admit(&identity.node_id(), Duration::from_secs(3600))
            .unwrap(),
    );
    config
}

/// Connects `client` to `server` over a fresh mem network; returns the client's result
/// (the connected stream's peer node, or its error) and the server side's.
fn attempt(
    server: TlsConfig,
    client: TlsConfig,
) -> (
    Result<Option<NodeId>, io::Error>,
    Result<Option<NodeId>, String>,
) {
    let net = MemNetwork::new();
    let server = TlsTransport::new(net.host("srv"), server).unwrap();
    let client = TlsTransport::new(net.host("cli"), client).unwrap();
    attempt_with(&server, &client)
}

fn attempt_with<T: Transport>(
    server: &TlsTransport<T>,
    client: &TlsTransport<T>,
) -> (
    Result<Option<NodeId>, io::Error>,
    Result<Option<NodeId>, String>,
) {
    attempt_at(server, client, bind_addr(server))
}

fn bind_addr<T: Transport>(_server: &TlsTransport<T>) -> &'static str {
    // Mem hosts bind any name; "srv:0" there, TCP needs an IP.
    if std::any::type_name::<T>().contains("MemTransport") {
        "srv:0"
    } else {
        "127.0.0.1:0"
    }
}

fn attempt_at<T: Transport>(
    server: &TlsTransport<T>,
    client: &TlsTransport<T>,
    bind: &str,
) -> (
    Result<Option<NodeId>, io::Error>,
    Result<Option<NodeId>, String>,
) {
    let listener = server.bind(&PeerAddr::new(bind).unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = echo_once(listener);
    let client_side = client.connect(&addr).and_then(|mut stream| {
        stream.write_all(b"hello")?;
        let mut back = [0u8; 5];
        stream.read_exact(&mut back)?;
        assert_eq!(&back, b"hello");
        Ok(stream.peer_node())
    });
    (client_side, handle.join().unwrap())
}

fn tls_error(e: &io::Error) -> &TlsError {
    TlsError::from_io(e).unwrap_or_else(|| panic!("not a TlsError: {e:?}"))
}

use std::io;

// ---- swarm mode -------------------------------------------------------------------------

#[test]
fn members_of_one_swarm_talk_on_mem_and_tcp() {
    let authority = SwarmAuthority::generate("test swarm").unwrap();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let net = MemNetwork::new();
    let server = TlsTransport::new(net.host("srv"), member(&authority, &a)).unwrap();
    let client = TlsTransport::new(net.host("cli"), member(&authority, &b)).unwrap();
    assert_eq!(server.swarm_name(), Some("test swarm"));
    handshake_and_echo(server, client, "srv:0");

    let server = TlsTransport::new(TcpTransport::default(), member(&authority, &a)).unwrap();
    let client = TlsTransport::new(TcpTransport::default(), member(&authority, &b)).unwrap();
    handshake_and_echo(server, client, "127.0.0.1:0");
}

#[test]
fn a_stranger_is_refused_by_a_swarm_server_with_words_on_both_sides() {
    let authority = SwarmAuthority::generate("private").unwrap();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (client, server) = attempt(member(&authority, &a), open(&b));
    let client = client.unwrap_err();
    assert_eq!(client.kind(), io::ErrorKind::PermissionDenied, "{client}");
    assert!(matches!(tls_error(&client), TlsError::RefusedUs { .. }));
    assert_eq!(
        client.to_string(),
        "srv:10001 refused us: this node is not a member of its swarm"
    );
    let server = server.unwrap_err();
    assert!(
        server.contains("is not a member of this swarm (it presented no member certificate)"),
        "{server}"
    );
    assert!(server.starts_with("cli:"), "{server}");
}

#[test]
fn a_member_does_not_trust_a_server_outside_its_swarm() {
    let authority = SwarmAuthority::generate("private").unwrap();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (client, server) = attempt(open(&a), member(&authority, &b));
    let client = client.unwrap_err();
    assert_eq!(
        client.to_string(),
        "srv:10001 is not a member of this swarm (it presented no member certificate)"
    );
    let server = server.unwrap_err();
    assert!(
        server.contains("refused us: this node is not a member of its swarm"),
        "{server}"
    );
}

#[test]
fn a_member_of_another_swarm_is_refused() {
    let ours = SwarmAuthority::generate("ours").unwrap();
    let theirs = SwarmAuthority::generate("theirs").unwrap();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (client, server) = attempt(member(&ours, &a), member(&theirs, &b));
    let client = client.unwrap_err();
    // The client checks the server first: it is not in *its* swarm.
    assert_eq!(
        client.to_string(),
        "srv:10001 is not a member of this swarm (its certificate is signed by another authority)"
    );
    let server = server.unwrap_err();
    assert!(
        server.contains("refused us: this node is not a member"),
        "{server}"
    );

    // Same name, different key: still another swarm.
    let impostor = SwarmAuthority::generate("ours").unwrap();
    let (client, _) = attempt(member(&ours, &a), member(&impostor, &b));
    assert!(matches!(
        tls_error(&client.unwrap_err()),
        TlsError::NotMember { .. }
    ));
}

#[test]
fn an_expired_member_is_refused_and_cannot_start() {
    let authority = SwarmAuthority::generate("s").unwrap();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let expired = authority
        .admit_between(&b.node_id(), now - 2 * day, now - day)
        .unwrap();
    let mut config = TlsConfig::new(b.clone());
    config.membership = Some(expired.clone());
    let err = TlsTransport::new(MemNetwork::new().host("x"), config.clone()).unwrap_err();
    assert!(matches!(err, TlsError::MembershipExpired { .. }), "{err}");
    assert!(err.to_string().contains("expired at"), "{err}");

    // A node that presents it anyway (its clock is behind) is refused by its peers.
    let net = MemNetwork::new();
    let server = TlsTransport::new(net.host("srv"), member(&authority, &a)).unwrap();
    let client = TlsTransport::build(net.host("cli"), config, now - day - day / 2).unwrap();
    let (client, server) = attempt_with(&server, &client);
    let client = client.unwrap_err();
    assert!(
        client
            .to_string()
            .contains("refused us: our member certificate has expired"),
        "{client}"
    );
    let server = server.unwrap_err();
    assert!(server.contains("member certificate is expired"), "{server}");
}

#[test]
fn a_membership_for_another_node_is_refused() {
    let authority = SwarmAuthority::generate("s").unwrap();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let mut config = TlsConfig::new(a.clone());
    config.membership = Some(
        authority
            .admit(&b.node_id(), Duration::from_secs(60))
            .unwrap(),
    );
    let err = TlsTransport::new(MemNetwork::new().host("x"), config).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the member certificate is for node {}, this identity is node {}",
            b.node_id(),
            a.node_id()
        )
    );
}

// ---- revocation -------------------------------------------------------------------------

#[test]
fn a_revoked_member_is_refused_once_the_list_changes() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked");
    let authority = SwarmAuthority::generate("s").unwrap();
    let (a, b, c) = (
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
    );
    std::fs::write(&list, format!("# lost laptops\n{}\n", c.node_id())).unwrap();
    let mut config = member(&authority, &a);
    config.revoked = Some(list.clone());
    let net = MemNetwork::new();
    let server = TlsTransport::new(net.host("srv"), config).unwrap();
    let client = TlsTransport::new(net.host("cli"), member(&authority, &b)).unwrap();
    let (ok, server_ok) = attempt_with(&server, &client);
    assert_eq!(ok.unwrap(), Some(a.node_id()));
    assert_eq!(server_ok.unwrap(), Some(b.node_id()));

    // The same transport, the list rewritten: b is out.
    std::fs::write(&list, format!("{}\n{}\n", c.node_id(), b.node_id())).unwrap();
    let (client_err, server_err) = attempt_with(&server, &client);
    let client_err = client_err.unwrap_err();
    assert!(
        client_err
            .to_string()
            .ends_with(" refused us: this node is revoked"),
        "{client_err}"
    );
    let server_err = server_err.unwrap_err();
    assert!(
        server_err.ends_with(&format!(
            ": node {} is revoked (listed in {})",
            b.node_id(),
            list.display()
        )),
        "{server_err}"
    );
    assert!(server_err.starts_with("cli:"), "{server_err}");

    // A list broken on reload keeps the previous one (b stays out); fixed, b is back.
    std::fs::write(&list, "garbage\n").unwrap();
    assert!(attempt_with(&server, &client).0.is_err());
    std::fs::write(&list, "").unwrap();
    assert!(attempt_with(&server, &client).0.is_ok());
}

#[test]
fn revocation_works_in_open_mode_and_on_the_client_side() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked");
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    std::fs::write(&list, format!("{}\n", a.node_id())).unwrap();
    let mut config = open(&b);
    config.revoked = Some(list.clone());
    let (client, server) = attempt(open(&a), config);
    let client = client.unwrap_err();
    assert!(matches!(tls_error(&client), TlsError::Revoked { node, .. } if *node == a.node_id()));
    assert!(
        server
            .unwrap_err()
            .contains("refused us: this node is revoked")
    );
}

#[test]
fn a_bad_revocation_list_is_an_error_at_start_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("revoked");
    std::fs::write(&list, "# ok\n\nnot a node\n").unwrap();
    let mut config = open(&Identity::generate().unwrap());
    config.revoked = Some(list.clone());
    let err = TlsTransport::new(MemNetwork::new().host("x"), config.clone()).unwrap_err();
    assert!(
        matches!(err, TlsError::BadRevocationLine { line: 3, .. }),
        "{err}"
    );
    config.revoked = Some(dir.path().join("missing"));
    let err = TlsTransport::new(MemNetwork::new().host("x"), config).unwrap_err();
    assert!(err.to_string().starts_with("cannot read"), "{err}");
}

// ---- wire faults and protocol mix-ups ---------------------------------------------------

#[test]
fn an_altered_byte_is_a_tls_error_never_a_wrong_byte() {
    let net = MemNetwork::new();
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = TlsTransport::new(net.host("srv"), open(&a)).unwrap();
    let client = TlsTransport::new(net.host("cli"), open(&b)).unwrap();
    let listener = server.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    // Well past the handshake: inside the application data.
    net.corrupt_at(&addr, 100_000);
    let payload: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let sent = payload.clone();
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut hello = [0u8; 1];
        stream.read_exact(&mut hello).unwrap();
        // The client stops reading at the error; the write may fail then.
        let _ = stream.write_all(&sent);
    });
    let mut stream = client.connect(&addr).unwrap();
    stream.write_all(b"x").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let err = loop {
        match stream.read(&mut buf) {
            Ok(0) => panic!(
                "end of stream instead of an error after {} bytes",
                got.len()
            ),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break e,
        }
    };
    assert_eq!(got[..], payload[..got.len()], "a wrong byte was delivered");
    assert!(got.len() < 100_000);
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    assert_eq!(
        err.to_string(),
        "TLS with srv:10001 failed: data was altered on the wire (bad record MAC)"
    );
    // And it stays failed.
    assert!(stream.read(&mut buf).is_err());
    drop(stream);
    handle.join().unwrap();

    // Altered in the handshake: connect itself fails.
    let listener = server.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    net.corrupt_at(&addr, 200);
    let handle = echo_once(listener);
    assert!(client.connect(&addr).is_err());
    assert!(handle.join().unwrap().is_err());
}

#[test]
fn a_plaintext_client_is_told_the_server_speaks_tls() {
    use crate::codec::{self, Service};
    let net = MemNetwork::new();
    let server = TlsTransport::new(net.host("srv"), open(&Identity::generate().unwrap())).unwrap();
    let listener = server.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        codec::server_handshake(&mut stream, Service::Index)
    });
    let mut plain = net.host("cli").connect(&addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let err = codec::client_handshake(&mut plain, Service::Index).unwrap_err();
    assert!(matches!(err, crate::ProtoError::TlsServer), "{err}");
    let server_err = handle.join().unwrap().unwrap_err();
    assert!(
        server_err
            .to_string()
            .contains("spoke plaintext to a TLS server"),
        "{server_err}"
    );
}

#[test]
fn a_plaintext_client_over_tcp_gets_the_same_answer() {
    use crate::codec::{self, Service};
    let server = TlsTransport::new(
        TcpTransport::default(),
        open(&Identity::generate().unwrap()),
    )
    .unwrap();
    let listener = server.bind(&PeerAddr::new("127.0.0.1:0").unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        codec::server_handshake(&mut stream, Service::Index)
    });
    let mut plain = TcpTransport::default().connect(&addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let err = codec::client_handshake(&mut plain, Service::Index).unwrap_err();
    assert!(matches!(err, crate::ProtoError::TlsServer), "{err}");
    assert!(handle.join().unwrap().is_err());
}

#[test]
fn a_tls_client_is_told_the_server_is_plaintext() {
    use crate::codec::{self, Service};
    let net = MemNetwork::new();
    let plain = net
        .host("srv")
        .bind(&PeerAddr::new("srv:0").unwrap())
        .unwrap();
    let addr = plain.local_addr().unwrap();
    let client = TlsTransport::new(net.host("cli"), open(&Identity::generate().unwrap())).unwrap();

    // A plaintext server reads a bad magic and closes without answering.
    let handle = thread::spawn(move || {
        let (mut stream, _) = plain.accept().unwrap();
        let first = codec::server_handshake(&mut stream, Service::Index);
        drop(stream);
        // A busy plaintext server answers before reading anything.
        let (mut stream, _) = plain.accept().unwrap();
        codec::refuse_busy(&mut stream, Service::Index).unwrap();
        first
    });
    let err = client.connect(&addr).unwrap_err();
    assert_eq!(
        err.to_string(),
        "srv:10001 closed the connection during the TLS handshake before answering: does it speak TLS? (a server run with --insecure-plaintext?)"
    );
    let err = client.connect(&addr).unwrap_err();
    assert_eq!(
        err.to_string(),
        "srv:10001 does not speak TLS (a server run with --insecure-plaintext?)"
    );
    // Wrapped as protocol errors are, the words stay (not "the other side closed").
    let wrapped = crate::ProtoError::from(err).to_string();
    assert_eq!(
        wrapped,
        "srv:10001 does not speak TLS (a server run with --insecure-plaintext?)"
    );
    assert!(matches!(
        handle.join().unwrap(),
        Err(crate::ProtoError::BadMagic(_))
    ));
}

#[test]
fn a_silent_server_costs_a_client_at_most_the_handshake_timeout() {
    let net = MemNetwork::new();
    let silent = net
        .host("srv")
        .bind(&PeerAddr::new("srv:0").unwrap())
        .unwrap();
    let addr = silent.local_addr().unwrap();
    let mut config = open(&Identity::generate().unwrap());
    config.handshake_timeout = Duration::from_millis(100);
    let client = TlsTransport::new(net.host("cli"), config).unwrap();
    let err = client.connect(&addr).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    assert!(matches!(tls_error(&err), TlsError::HandshakeTimeout { .. }));
    assert_eq!(
        crate::ProtoError::from(err).to_string(),
        "the TLS handshake with srv:10001 took longer than 100 ms"
    );
    drop(silent);
}

#[test]
fn a_silent_client_gets_timeouts_then_the_handshake_deadline_on_the_server() {
    let net = MemNetwork::new();
    let mut config = open(&Identity::generate().unwrap());
    config.handshake_timeout = Duration::from_millis(100);
    let server = TlsTransport::new(net.host("srv"), config).unwrap();
    let listener = server.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = net.host("cli").connect(&addr).unwrap();
    let (mut stream, _) = listener.accept().unwrap();
    assert_eq!(stream.peer_node(), None);
    stream
        .set_read_timeout(Some(Duration::from_millis(40)))
        .unwrap();
    let mut buf = [0u8; 8];
    let mut timeouts = 0;
    let err = loop {
        let err = stream.read(&mut buf).unwrap_err();
        if err.kind() != io::ErrorKind::TimedOut || TlsError::from_io(&err).is_some() {
            break err;
        }
        timeouts += 1;
        assert!(timeouts < 100, "the handshake deadline never came");
    };
    assert!(
        matches!(tls_error(&err), TlsError::HandshakeTimeout { .. }),
        "{err}"
    );
    // Later calls fail at once, with a kind that is not a timeout.
    let again = stream.read(&mut buf).unwrap_err();
    assert_eq!(again.kind(), io::ErrorKind::ConnectionAborted, "{again}");
}

/// What a TLS server of ours says about a plain rustls client that presents `chain` with
/// `key` (ECDSA P-256).
fn server_words_for_client_chain(
    chain: Vec<CertificateDer<'static>>,
    key: &rcgen::KeyPair,
) -> String {
    use rustls::pki_types::PrivateKeyDer;
    let net = MemNetwork::new();
    let server = TlsTransport::new(net.host("srv"), open(&Identity::generate().unwrap())).unwrap();
    let listener = server.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = echo_once(listener);
    let policy = Arc::new(verify::Policy {
        provider: verify::provider(),
        swarm: None,
        revoked: None,
    });
    let signing = verify::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .unwrap();
    let resolver = Arc::new(verify::FixedCert(Arc::new(CertifiedKey::new(
        chain, signing,
    ))));
    let config = ClientConfig::builder_with_provider(verify::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verify::PeerCheck::new(policy))
        .with_client_cert_resolver(resolver);
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(SNI_NAME).unwrap())
            .unwrap();
    let sock = net.host("cli").connect(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let _ = tls.write_all(b"hello");
    let mut buf = [0u8; 5];
    // This plain client learns it from an alert or a closed connection, depending on
    // whether its write raced the server's close; the server's words are what count.
    assert!(tls.read_exact(&mut buf).is_err());
    handle.join().unwrap().unwrap_err()
}

#[test]
fn a_key_that_is_not_ed25519_is_refused() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let words = server_words_for_client_chain(vec![cert.der().clone()], &key);
    assert!(
        words.contains("presented an unusable certificate: its key is not Ed25519"),
        "{words}"
    );
}

#[test]
fn a_malformed_certificate_is_refused() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    let words = server_words_for_client_chain(vec![garbage], &key);
    assert!(
        words.contains("presented an unusable certificate: malformed certificate"),
        "{words}"
    );
}

// ---- files ------------------------------------------------------------------------------

#[test]
fn an_identity_is_created_once_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys").join("identity.pem");
    let (first, created) = Identity::load_or_create(&path).unwrap();
    assert!(created);
    let (second, created) = Identity::load_or_create(&path).unwrap();
    assert!(!created);
    assert_eq!(first.node_id(), second.node_id());
    assert_eq!(Identity::load(&path).unwrap().node_id(), first.node_id());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn concurrent_creators_agree_on_one_identity() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let path = path.clone();
            thread::spawn(move || Identity::load_or_create(&path).unwrap())
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let created = results.iter().filter(|(_, created)| *created).count();
    assert_eq!(created, 1);
    let id = results[0].0.node_id();
    assert!(results.iter().all(|(identity, _)| identity.node_id() == id));
    assert_eq!(Identity::load(&path).unwrap().node_id(), id);
}

#[test]
fn authority_and_membership_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("swarm.key");
    let authority = SwarmAuthority::create(&ca_path, "lab").unwrap();
    let err = SwarmAuthority::create(&ca_path, "lab").unwrap_err();
    assert!(matches!(err, TlsError::Exists { .. }), "{err}");
    let reloaded = SwarmAuthority::load(&ca_path).unwrap();
    assert_eq!(reloaded.name(), "lab");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ca_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Members admitted before and after the reload are in one swarm.
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let before = authority
        .admit(&a.node_id(), Duration::from_secs(3600))
        .unwrap();
    let after = reloaded
        .admit(&b.node_id(), Duration::from_secs(3600))
        .unwrap();
    let m_path = dir.path().join("member.pem");
    after.save(&m_path).unwrap();
    let loaded = Membership::load(&m_path).unwrap();
    assert_eq!(loaded.node_id(), b.node_id());
    assert_eq!(loaded.swarm_name(), "lab");
    assert_eq!(
        loaded
            .not_after()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        after
            .not_after()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    let mut server = TlsConfig::new(a.clone());
    server.membership = Some(before);
    let mut client = TlsConfig::new(b.clone());
    client.membership = Some(loaded);
    let (client, server) = attempt(server, client);
    assert_eq!(client.unwrap(), Some(a.node_id()));
    assert_eq!(server.unwrap(), Some(b.node_id()));
}

#[test]
fn malformed_and_mixed_up_files_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let authority_path = dir.path().join("ca.pem");
    let authority = SwarmAuthority::create(&authority_path, "lab").unwrap();
    let identity_path = dir.path().join("id.pem");
    let (identity, _) = Identity::load_or_create(&identity_path).unwrap();
    let member_path = dir.path().join("member.pem");
    authority
        .admit(&identity.node_id(), Duration::from_secs(60))
        .unwrap()
        .save(&member_path)
        .unwrap();

    let write = |name: &str, text: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let expect_wrong = |result: Result<(), TlsError>, words: &str| {
        let err = result.unwrap_err();
        assert!(matches!(err, TlsError::WrongFile { .. }), "{err}");
        assert!(err.to_string().contains(words), "{err} lacks {words:?}");
    };
    // Not PEM at all, truncated PEM, empty.
    let garbage = write("garbage", b"hello world\n");
    expect_wrong(Membership::load(&garbage).map(drop), "no PEM sections");
    let member_text = std::fs::read_to_string(&member_path).unwrap();
    let truncated = write(
        "truncated",
        &member_text.as_bytes()[..member_text.len() / 2],
    );
    expect_wrong(Membership::load(&truncated).map(drop), "malformed PEM");
    // The wrong kind of file in each place.
    expect_wrong(Membership::load(&identity_path).map(drop), "private key");
    expect_wrong(Identity::load(&authority_path).map(drop), "swarm authority");
    expect_wrong(
        SwarmAuthority::load(&identity_path).map(drop),
        "node identity",
    );
    expect_wrong(
        SwarmAuthority::load(&member_path).map(drop),
        "no private key",
    );
    // A member certificate with one byte changed: its signature no longer verifies.
    let mut sections: Vec<_> = member_text.split("-----END CERTIFICATE-----").collect();
    let first = sections[0].to_string();
    let body_start = first.find("-----BEGIN CERTIFICATE-----\n").unwrap() + 28;
    let mut body: Vec<u8> = first.into_bytes();
    // Flip a base64 letter in the middle of the certificate.
    let i = body_start + 200;
    body[i] = if body[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(body).unwrap();
    sections[0] = &altered;
    let tampered = write(
        "tampered",
        sections.join("-----END CERTIFICATE-----").as_bytes(),
    );
    let err = Membership::load(&tampered).unwrap_err();
    assert!(matches!(err, TlsError::WrongFile { .. }), "{err}");
    // Another swarm's authority certificate with our member certificate.
    let other = SwarmAuthority::generate("lab").unwrap();
    let mut mixed = String::new();
    let membership = Membership::load(&member_path).unwrap();
    identity::push_pem(&mut mixed, "CERTIFICATE", membership.member_certificate());
    identity::push_pem(&mut mixed, "CERTIFICATE", other.certificate());
    let mixed = write("mixed", mixed.as_bytes());
    expect_wrong(Membership::load(&mixed).map(drop), "does not verify");
    // Missing file.
    let err = Membership::load(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    // Bad swarm names.
    assert!(matches!(
        SwarmAuthority::generate(""),
        Err(TlsError::BadSwarmName { .. })
    ));
    assert!(SwarmAuthority::generate(&"x".repeat(65)).is_err());
}

#[test]
fn large_writes_arrive_whole_over_tcp() {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let server = TlsTransport::new(TcpTransport::default(), open(&a)).unwrap();
    let client = TlsTransport::new(TcpTransport::default(), open(&b)).unwrap();
    let listener = server.bind(&PeerAddr::new("127.0.0.1:0").unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let payload: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = payload.clone();
    let handle = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        got
    });
    let mut stream = client.connect(&addr).unwrap();
    stream.write_all(&payload).unwrap();
    stream.flush().unwrap();
    stream.close().unwrap();
    drop(stream);
    assert!(handle.join().unwrap() == expected);
}

// ---- with the shared accept loop and session ---------------------------------------------

mod with_server {
    use super::*;
    use crate::ProtoError;
    use crate::codec::{self, Service};
    use crate::message::{ErrorCode, ErrorReply, IndexRequest, IndexResponse};
    use crate::server::{
        AcceptConfig, Handler, SessionConfig, SessionEnd, SessionStream, serve_session,
        spawn_accept_loop, write_frame,
    };
    use crate::{FileKey, Transport};
    use crossbeam_channel::{Sender, unbounded};

    /// Answers every request with the client's node id, as the session's stream saw it.
    struct WhoAmI;

    impl<C: Connection> Handler<C> for WhoAmI {
        type Request = IndexRequest;
        type Response = IndexResponse;

        fn error_response(reply: ErrorReply) -> IndexResponse {
            IndexResponse::Error(reply)
        }

        fn handle(
            &mut self,
            _request: IndexRequest,
            stream: &mut SessionStream<C>,
        ) -> Result<(), ProtoError> {
            let who = match stream.get_ref().peer_node() {
                Some(node) => node.to_string(),
                None => "nobody".into(),
            };
            let reply = IndexResponse::Error(ErrorReply::new(ErrorCode::NotFound, who));
            write_frame(stream, &mut Vec::new(), &reply)
        }
    }

    fn serve<T: Transport>(
        transport: &T,
        bind: &str,
        ends: Sender<SessionEnd>,
    ) -> crate::server::ServerHandle {
        let listener = transport.bind(&PeerAddr::new(bind).unwrap()).unwrap();
        let config = SessionConfig {
            service: Service::Index,
            label: "test",
            request_limit: 1024,
            frame_timeout: Duration::from_secs(5),
            idle_timeout: None,
            write_timeout: Some(Duration::from_secs(5)),
            read_buffer: 4096,
        };
        let accept = AcceptConfig::new(Service::Index, "test");
        spawn_accept_loop(transport, listener, accept, move |s, from, live| {
            let _ = ends.send(serve_session(s, &from, live, &config, &mut WhoAmI));
        })
        .unwrap()
    }

    fn ask<C: Connection>(c: &mut C) -> Result<String, ProtoError> {
        let request = IndexRequest::Locate {
            key: FileKey::Name("a".into()),
        };
        codec::client_handshake_with(c, Service::Index, &request)?;
        match codec::read_frame(c, codec::DEFAULT_RESPONSE_LIMIT, &mut Vec::new())? {
            IndexResponse::Error(reply) => Ok(reply.message),
            other => panic!("{other:?}"),
        }
    }

    fn sessions_know_their_clients<T: Transport>(inner_server: T, inner_client: T, bind: &str) {
        let authority = SwarmAuthority::generate("s").unwrap();
        let (a, b, c) = (
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
        );
        let server = TlsTransport::new(inner_server, member(&authority, &a)).unwrap();
        let (tx, ends) = unbounded();
        let handle = serve(&server, bind, tx);
        let timeout = Duration::from_secs(10);

        let client = TlsTransport::new(inner_client.clone(), member(&authority, &b)).unwrap();
        let mut conn = client.connect(handle.addr()).unwrap();
        conn.set_read_timeout(Some(timeout)).unwrap();
        assert_eq!(ask(&mut conn).unwrap(), b.node_id().to_string());
        drop(conn);
        assert_eq!(ends.recv_timeout(timeout).unwrap(), SessionEnd::Closed);

        // A stranger never reaches the handler; both sides say why.
        let stranger = TlsTransport::new(inner_client.clone(), open(&c)).unwrap();
        let err = stranger.connect(handle.addr()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("refused us: this node is not a member of its swarm"),
            "{err}"
        );
        match ends.recv_timeout(timeout).unwrap() {
            SessionEnd::Handshake(e) => assert!(e.contains("is not a member of this swarm"), "{e}"),
            other => panic!("{other:?}"),
        }

        // A plaintext client is told, and the session ends at the handshake.
        let mut plain = inner_client.connect(handle.addr()).unwrap();
        plain.set_read_timeout(Some(timeout)).unwrap();
        assert!(matches!(ask(&mut plain), Err(ProtoError::TlsServer)));
        match ends.recv_timeout(timeout).unwrap() {
            SessionEnd::Handshake(e) => assert!(e.contains("spoke plaintext"), "{e}"),
            other => panic!("{other:?}"),
        }

        let started = std::time::Instant::now();
        handle.shutdown();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn sessions_know_their_clients_on_mem() {
        let net = MemNetwork::new();
        sessions_know_their_clients(net.host("srv"), net.host("cli"), "srv:0");
    }

    #[test]
    fn sessions_know_their_clients_on_tcp() {
        sessions_know_their_clients(
            TcpTransport::default(),
            TcpTransport::default(),
            "127.0.0.1:0",
        );
    }
}

#[test]
fn waking_an_accept_loop_does_not_wait_for_a_handshake() {
    // An accept loop that stops wakes its threads with connections nobody may accept; a
    // TLS connect would wait for a handshake until its timeout.
    let net = MemNetwork::new();
    let mut config = open(&Identity::generate().unwrap());
    config.handshake_timeout = Duration::from_secs(60);
    let transport = TlsTransport::new(net.host("srv"), config).unwrap();
    let listener = transport.bind(&PeerAddr::new("srv:0").unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let started = std::time::Instant::now();
    transport.wake(&addr);
    assert!(started.elapsed() < Duration::from_secs(30));
    // The wake-up did arrive.
    listener
        .set_accept_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let (stream, _) = listener.accept().unwrap();
    assert_eq!(stream.peer_node(), None);
}
