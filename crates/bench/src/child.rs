//! The `shoal index` child processes the benches measure from outside (`index --data`,
//! `hostile`): a separate process, so its memory and CPU are its own.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::error::{BenchError, spawn_err};

/// Starts `SHOAL index --listen 127.0.0.1:0 ARGS...` with `RUST_LOG=log`, its standard output
/// piped (its first line says where it listens) and its standard error as given.
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
        .args(["index", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(spawn_err(format!("{} index", shoal.display())))
}
