//! Running the real `shoal` binary in tests: servers whose output lines arrive on channels,
//! one-shot commands, sample files.
#![allow(dead_code, clippy::unwrap_used)] // each test binary uses a part; unwrap fails a test

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::Duration;

/// Bound on any single wait for the binary; generous for a loaded 2-core CI machine.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// The `shoal` binary, with this test binary's own config folder (so its identity, and
/// never the user's ~/.config/shoal, is the one used) and no identity settings inherited.
pub(crate) fn shoal() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shoal"));
    cmd.env("RUST_LOG", "warn")
        .env("XDG_CONFIG_HOME", config_home())
        .env_remove("SHOAL_IDENTITY")
        .env_remove("SHOAL_MEMBER");
    cmd
}

/// XDG_CONFIG_HOME of every `shoal` run by these tests: one identity for all of them (as on
/// one machine), created here before the first run so no run says it created one.
pub(crate) fn config_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| {
        let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shoal-test-config");
        std::fs::create_dir_all(home.join("shoal")).unwrap();
        shoal_proto::tls::Identity::load_or_create(&identity_path_in(&home)).unwrap();
        home
    })
}

fn identity_path_in(home: &Path) -> PathBuf {
    home.join("shoal").join("identity.pem")
}

/// A TLS client with the identity the binaries use: what a library user on this machine
/// would connect with.
pub(crate) fn tls_client() -> shoal_proto::tls::TlsTransport<shoal_proto::tcp::TcpTransport> {
    let identity = shoal_proto::tls::Identity::load(&identity_path_in(config_home())).unwrap();
    shoal_proto::tls::TlsTransport::new(
        shoal_proto::tcp::TcpTransport::default(),
        shoal_proto::tls::TlsConfig::new(identity),
    )
    .unwrap()
}

/// A running server process, killed when dropped; its stdout (and, if asked, stderr) lines
/// arrive on channels.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) lines: Receiver<String>,
    pub(crate) log: Option<Receiver<String>>,
    pub(crate) stdin: Option<ChildStdin>,
}

/// Forwards each line of `from` to a channel, on its own thread.
pub(crate) fn line_channel(from: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Server {
    pub(crate) fn start(args: &[&str]) -> (Server, String) {
        Self::start_with(args, &[], false)
    }

    pub(crate) fn start_with(
        args: &[&str],
        env: &[(&str, &str)],
        capture_log: bool,
    ) -> (Server, String) {
        let mut child = shoal()
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if capture_log {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .unwrap();
        let lines = line_channel(child.stdout.take().unwrap());
        let log = child.stderr.take().map(line_channel);
        let stdin = child.stdin.take();
        let mut server = Server {
            child,
            lines,
            log,
            stdin,
        };
        let first = server.next_line();
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_string();
        (server, addr)
    }

    /// Types a line on the server's console.
    pub(crate) fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    pub(crate) fn next_line(&mut self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("the server printed nothing in time")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn run(args: &[&str]) -> Output {
    shoal().args(args).stdin(Stdio::null()).output().unwrap()
}

/// `shoal get NAME --index INDEX --out OUT EXTRA...`.
pub(crate) fn get(name: &str, index: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "get",
        name,
        "--index",
        index,
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// `shoal get NAME --index INDEX --out OUT` must succeed; returns its stdout.
pub(crate) fn get_ok(name: &str, index: &str, out: &Path) -> String {
    let got = get(name, index, out, &[]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    String::from_utf8(got.stdout).unwrap()
}

/// A peer serving `dir` (no console) with an hour's lease: its next heartbeat is 20 minutes
/// away, so whatever an index lists meanwhile is not from a fresh announcement.
pub(crate) fn start_long_lease_peer(dir: &Path, index: &str) -> (Server, String) {
    Server::start(&[
        "peer",
        "--dir",
        dir.to_str().unwrap(),
        "--index",
        index,
        "--lease",
        "3600",
        "--no-console",
    ])
}

pub(crate) fn write_file(dir: &Path, name: &str, len: usize) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + name.len()) as u8).collect();
    std::fs::write(dir.join(name), &bytes).unwrap();
    bytes
}

/// `GET path` over HTTP/1.0 from `addr` (`HOST:PORT`): the status code and the body.
pub(crate) fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

impl Server {
    /// The address of the `status page on http://ADDR/` line, the next line printed.
    pub(crate) fn status_page(&mut self) -> String {
        let line = self.next_line();
        line.strip_prefix("status page on http://")
            .and_then(|rest| rest.strip_suffix('/'))
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .to_string()
    }

    /// Sends SIGTERM (what `systemctl stop` sends) and waits for the exit status.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        self.child.wait().unwrap()
    }
}

/// An index and one seeder (an hour's lease) sharing `files` (name, length), in `root`.
pub(crate) struct Seeded {
    pub(crate) seeder: Server,
    pub(crate) index: Server,
    /// The index's address.
    pub(crate) addr: String,
    /// The seeder's folder.
    pub(crate) seed: std::path::PathBuf,
    pub(crate) root: tempfile::TempDir,
}

pub(crate) fn seeded(files: &[(&str, usize)]) -> Seeded {
    let root = tempfile::tempdir().unwrap();
    let (index, addr) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let seed = root.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    for (name, len) in files {
        write_file(&seed, name, *len);
    }
    let (seeder, _) = start_long_lease_peer(&seed, &addr);
    Seeded {
        seeder,
        index,
        addr,
        seed,
        root,
    }
}
