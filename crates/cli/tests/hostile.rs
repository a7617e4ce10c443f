//! Hostile input against the real `shoal` binaries on 127.0.0.1: every test attacks a
//! running index or peer, then checks that the process is alive and still answers correctly.
//! Each one fails if the protection it names is removed.
//!
//! The attacks here speak shoal's own framing, so the servers run with `--insecure-plaintext`:
//! under TLS (the default) the same bytes would first have to pass the TLS layer, whose own
//! hostile cases (garbage, tampering, strangers) are in shoal-proto's TLS tests and
//! `tls.rs`.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use shoal_index::IndexClient;
use shoal_proto::codec::{self, Service};
use shoal_proto::message::{ErrorCode, IndexRequest, IndexResponse, PeerRequest, PeerResponse};
use shoal_proto::tcp::TcpTransport;
use shoal_proto::{FileKey, PeerAddr};
use tempfile::TempDir;

/// Bound on any wait for the other side (it answers in microseconds when healthy).
const WAIT: Duration = Duration::from_secs(30);

struct Proc {
    child: Child,
    addr: String,
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .arg("--insecure-plaintext")
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_string();
        Proc { child, addr }
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "the server died");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An index and one peer sharing `shared.bin` (and a symlink to /etc/passwd).
struct Net {
    index: Proc,
    peer: Proc,
    _dir: TempDir,
}

fn start(extra_index_args: &[&str]) -> Net {
    let mut args = vec!["index", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra_index_args);
    let index = Proc::start(&args);
    let dir = TempDir::new().unwrap();
    std::fs::write(dir.path().join("shared.bin"), vec![42u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", dir.path().join("passwd")).unwrap();
    let peer = Proc::start(&[
        "peer",
        "--dir",
        dir.path().to_str().unwrap(),
        "--index",
        &index.addr,
        "--no-console",
        "--frame-timeout",
        "1",
    ]);
    Net {
        index,
        peer,
        _dir: dir,
    }
}

impl Net {
    /// Both servers are alive and answer a real client correctly.
    fn check_healthy(&mut self) {
        self.index.assert_alive();
        self.peer.assert_alive();
        let index = PeerAddr::new(self.index.addr.as_str()).unwrap();
        let mut client = IndexClient::new(TcpTransport::default(), vec![index.clone()]);
        let hits = client.search("shared", 10).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].holders, 1);
        let out = TempDir::new().unwrap();
        let got = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args([
                "get",
                "shared.bin",
                "--insecure-plaintext",
                "--index",
                index.as_str(),
            ])
            .arg("--out")
            .arg(out.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            got.status.success(),
            "{}",
            String::from_utf8_lossy(&got.stderr)
        );
        assert_eq!(
            std::fs::read(out.path().join("shared.bin")).unwrap(),
            vec![42u8; 300_000]
        );
    }
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
}

fn handshaken(addr: &str, service: Service) -> TcpStream {
    let mut stream = connect(addr);
    codec::client_handshake(&mut stream, service).unwrap();
    stream
}

/// Reads until the server closes the connection; returns what it sent.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    got
}

#[test]
fn an_oversized_length_prefix_is_refused_before_anything_is_read() {
    let mut net = start(&[]);
    for (addr, service) in [
        (&net.index.addr, Service::Index),
        (&net.peer.addr, Service::Peer),
    ] {
        let mut s = handshaken(addr, service);
        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let answer = read_until_closed(&mut s);
        // A typed refusal (an Error frame), then the server hangs up.
        let reply: Result<IndexResponse, _> =
            codec::read_frame(&mut &answer[..], 1 << 20, &mut Vec::new());
        let peer_reply: Result<PeerResponse, _> =
            codec::read_frame(&mut &answer[..], 1 << 20, &mut Vec::new());
        let refused = matches!(reply, Ok(IndexResponse::Error(ref e)) if e.code == ErrorCode::BadRequest)
            || matches!(peer_reply, Ok(PeerResponse::Error(ref e)) if e.code == ErrorCode::BadRequest);
        assert!(refused, "no typed refusal: {answer:?}");
    }
    net.check_healthy();
}

#[test]
fn a_truncated_frame_is_dropped() {
    let mut net = start(&[]);
    for (addr, service) in [
        (&net.index.addr, Service::Index),
        (&net.peer.addr, Service::Peer),
    ] {
        let mut s = handshaken(addr, service);
        s.write_all(&100u32.to_be_bytes()).unwrap();
        s.write_all(&[1, 2, 3]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(read_until_closed(&mut s).is_empty());
    }
    net.check_healthy();
}

#[test]
fn a_garbage_handshake_gets_no_answer() {
    let mut net = start(&[]);
    for addr in [&net.index.addr, &net.peer.addr] {
        let mut s = connect(addr);
        s.write_all(b"\x00\x01\x02\x03\x04\x05\x06\x07").unwrap();
        assert!(read_until_closed(&mut s).is_empty());
    }
    net.check_healthy();
}

#[test]
fn http_sent_to_each_port_is_not_answered() {
    let mut net = start(&[]);
    for addr in [&net.index.addr, &net.peer.addr] {
        let mut s = connect(addr);
        s.write_all(b"GET / HTTP/1.1\r\nHost: shoal\r\n\r\n")
            .unwrap();
        assert!(read_until_closed(&mut s).is_empty());
    }
    net.check_healthy();
}

#[test]
fn a_mebibyte_of_random_bytes_is_survived() {
    let mut net = start(&[]);
    let mut noise = vec![0u8; 1 << 20];
    rand::rngs::StdRng::seed_from_u64(11).fill_bytes(&mut noise);
    for (addr, service) in [
        (&net.index.addr, Service::Index),
        (&net.peer.addr, Service::Peer),
    ] {
        // Before the handshake...
        let mut s = connect(addr);
        let _ = s.write_all(&noise);
        read_until_closed(&mut s);
        // ...and after it.
        let mut s = handshaken(addr, service);
        let _ = s.write_all(&noise);
        read_until_closed(&mut s);
    }
    net.check_healthy();
}

#[test]
fn a_slowloris_client_is_dropped() {
    let mut net = start(&["--frame-timeout", "1"]);
    for (addr, service) in [
        (&net.index.addr, Service::Index),
        (&net.peer.addr, Service::Peer),
    ] {
        let mut s = handshaken(addr, service);
        // One byte every 100 ms of a frame announcing 50 bytes: the frame would take 5 s
        // and each byte comes well within any idle timeout. The server must hang up first.
        s.write_all(&50u32.to_be_bytes()).unwrap();
        let mut dropped = false;
        for _ in 0..50 {
            std::thread::sleep(Duration::from_millis(100)); // the attack's own pace
            if s.write_all(&[0]).is_err() {
                dropped = true;
                break;
            }
            s.set_nonblocking(true).unwrap();
            let mut probe = [0u8; 1];
            let closed = matches!(s.read(&mut probe), Ok(0));
            s.set_nonblocking(false).unwrap();
            if closed {
                dropped = true;
                break;
            }
        }
        assert!(dropped, "{addr} kept a client sending a byte per 100 ms");
    }
    net.check_healthy();
}

#[test]
fn two_thousand_held_connections_do_not_stop_service() {
    let mut net = start(&[]);
    let held: Vec<TcpStream> = (0..2000)
        .map(|_| handshaken(&net.index.addr, Service::Index))
        .collect();
    net.check_healthy();
    drop(held);
}

#[test]
fn a_registration_claiming_another_host_is_recorded_as_its_real_sender() {
    let mut net = start(&[]);
    let index = PeerAddr::new(net.index.addr.as_str()).unwrap();
    let mut client = IndexClient::new(TcpTransport::default(), vec![index]);
    let meta = shoal_proto::FileMeta {
        name: "planted.bin".into(),
        size: 10,
        chunk_size: 1 << 20,
        id: shoal_proto::FileId([7; 32]),
    };
    client
        .register(&PeerAddr::new("10.66.66.66:7000").unwrap(), &[meta])
        .unwrap();
    let (_, holders) = client
        .holders(&FileKey::Name("planted.bin".into()))
        .unwrap();
    assert_eq!(holders, vec![PeerAddr::new("127.0.0.1:7000").unwrap()]);
    // Nobody can drop or renew someone else's registrations.
    let peer_holder = PeerAddr::new(net.peer.addr.as_str()).unwrap();
    let other = PeerAddr::new(format!(
        "10.1.2.3:{}",
        net.peer.addr.rsplit_once(':').unwrap().1
    ))
    .unwrap();
    assert!(client.unregister(&other, &[]).is_err());
    assert!(client.renew(&other).is_err());
    let (_, holders) = client.holders(&FileKey::Name("shared.bin".into())).unwrap();
    assert_eq!(holders, vec![peer_holder]);
    net.check_healthy();
}

#[test]
fn bad_names_are_refused_on_the_wire() {
    let mut net = start(&[]);
    let long = "x".repeat(300);
    for name in ["..", "../etc/passwd", "a/b", "a\0b", long.as_str(), ""] {
        let mut s = handshaken(&net.index.addr, Service::Index);
        let request = IndexRequest::Locate {
            key: FileKey::Name(name.into()),
        };
        codec::write_frame(&mut s, &request).unwrap();
        let reply: IndexResponse = codec::read_frame(&mut s, 1 << 20, &mut Vec::new()).unwrap();
        assert!(
            matches!(&reply, IndexResponse::Error(e) if e.code == ErrorCode::BadName),
            "{name:?}: {reply:?}"
        );
        let mut s = handshaken(&net.peer.addr, Service::Peer);
        let request = PeerRequest::Manifest {
            key: FileKey::Name(name.into()),
        };
        codec::write_frame(&mut s, &request).unwrap();
        let reply: PeerResponse = codec::read_frame(&mut s, 1 << 20, &mut Vec::new()).unwrap();
        assert!(
            matches!(&reply, PeerResponse::Error(e) if e.code == ErrorCode::BadName),
            "{name:?}: {reply:?}"
        );
    }
    net.check_healthy();
}

#[test]
fn a_symlink_out_of_the_folder_is_never_served() {
    let mut net = start(&[]);
    let mut s = handshaken(&net.peer.addr, Service::Peer);
    let request = PeerRequest::Manifest {
        key: FileKey::Name("passwd".into()),
    };
    codec::write_frame(&mut s, &request).unwrap();
    let reply: PeerResponse = codec::read_frame(&mut s, 1 << 20, &mut Vec::new()).unwrap();
    assert!(
        matches!(&reply, PeerResponse::Error(e) if e.code == ErrorCode::NotFound),
        "{reply:?}"
    );
    let index = PeerAddr::new(net.index.addr.as_str()).unwrap();
    let hits = IndexClient::new(TcpTransport::default(), vec![index])
        .search("passwd", 10)
        .unwrap();
    assert!(hits.is_empty(), "the symlink was registered: {hits:?}");
    net.check_healthy();
}
