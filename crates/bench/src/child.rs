//! The `shoal index` child processes the benches measure from outside (`index --data`,
//! `hostile`): a separate process, so its memory and CPU are its own.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use shoal_proto::PeerAddr;

use crate::error::{BenchError, io_err, spawn_err};

/// Starts `SHOAL index --listen 127.0.0.1:0 --insecure-plaintext ARGS...` with
/// `RUST_LOG=log`, its standard output piped (its first line says where it listens) and its
/// standard error as given. Plaintext: these benches measure the index's own work (its
/// registry, its log, its accept loop) against plaintext baselines with raw shoal frames;
/// what TLS costs is measured by `bench transfer` and `bench index` (contender shoal-tls).
pub(crate) fn spawn_index<I, A>(
    shoal: &Path,
    args: I,
    log: &str,
    stderr: Stdio,
) -> Result<Child, BenchError>
where
    I: IntoIterator<Item = A>,
    A: AsRef<OsStr>,
{
    Command::new(shoal)
        .args(["index", "--listen", "127.0.0.1:0", "--insecure-plaintext"])
        .args(args)
        .env("RUST_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(spawn_err(format!("{} index", shoal.display())))
}

/// A `shoal index` child, killed when dropped.
pub(crate) struct IndexProcess {
    pub(crate) child: Child,
    pub(crate) addr: PeerAddr,
}

impl IndexProcess {
    /// Starts this program as `shoal index --listen 127.0.0.1:0 ARGS...` and reads where it
    /// listens.
    pub(crate) fn start(args: &[&str]) -> Result<IndexProcess, BenchError> {
        let exe = std::env::current_exe().map_err(io_err("cannot find this program"))?;
        let mut child = spawn_index(&exe, args, "warn", Stdio::inherit())?;
        let stdout = child.stdout.take().ok_or_else(|| BenchError::NotReady {
            what: "the index".into(),
            event: "give its standard output",
            why: "no pipe".into(),
            log: "standard error".into(),
        })?;
        let mut process = IndexProcess {
            child,
            addr: PeerAddr::new("127.0.0.1:0")?,
        };
        let mut first = String::new();
        BufReader::new(stdout)
            .read_line(&mut first)
            .map_err(io_err("cannot read the index's output"))?;
        let addr = first
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| BenchError::Parse {
                command: format!("{} index {}", exe.display(), args.join(" ")),
                detail: format!("{first:?} is not `listening on ADDR`"),
            })?;
        process.addr = PeerAddr::new(addr)?;
        Ok(process)
    }

    /// The address as a socket address.
    pub(crate) fn socket(&self) -> Result<SocketAddr, BenchError> {
        self.addr.as_str().parse().map_err(|e| BenchError::Parse {
            command: "shoal index".into(),
            detail: format!("listens on {}, not an IP address: {e}", self.addr),
        })
    }
}

impl Drop for IndexProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
