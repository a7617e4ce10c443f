//! [`BenchError`]: everything a benchmark can fail with, one line each.

use std::io;

/// Everything `shoal bench ...` can fail with; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Inconsistent or out-of-range arguments.
    #[error("{0}")]
    Usage(String),
    /// Namespaces and qdiscs need root.
    #[error("shoal bench swarm needs root (it makes network namespaces and tc qdiscs)")]
    NotRoot,
    /// A required program is not installed.
    #[error("`{program}` not found in PATH ({hint})")]
    MissingTool {
        /// The program.
        program: &'static str,
        /// How to get it.
        hint: &'static str,
    },
    /// A local I/O failure (a file, a folder, a socket).
    #[error("{what}: {source}")]
    Io {
        /// What we were doing, with the path or address involved.
        what: String,
        /// Why it failed.
        source: io::Error,
    },
    /// A contender or helper process could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program (its path or name).
        program: String,
        /// Why it failed.
        source: io::Error,
    },
    /// A registration store failed (the durable one on disk, or Redis).
    #[error(transparent)]
    Store(#[from] shoal_index::StoreError),
    /// A shoal peer failure (library, download, server).
    #[error(transparent)]
    Peer(#[from] shoal_peer::PeerError),
    /// A command (`ip`, `tc`, ...) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// What it said.
        stderr: String,
    },
    /// A command's output was not what it should be.
    #[error("unexpected output from `{command}`: {detail}")]
    Parse {
        /// The command line.
        command: String,
        /// What was wrong.
        detail: String,
    },
    /// A server or seeder did not get ready.
    #[error("{what} did not {event}: {why} (log: {log})")]
    NotReady {
        /// Which process.
        what: String,
        /// What it did not do.
        event: &'static str,
        /// It exited (how, and its telling line), or the wait ran out.
        why: String,
        /// Its log file.
        log: String,
    },
    /// The emulated network (namespaces, veths, the bridge, `tc`) could not be built.
    #[error("cannot set up the emulated network: {0}")]
    Network(Box<BenchError>),
    /// A contender answered or behaved wrongly, so its numbers would mean nothing.
    #[error("{contender}: {detail}")]
    Contender {
        /// Which contender (or server under test).
        contender: String,
        /// What went wrong.
        detail: String,
    },
    /// A shoal index failure.
    #[error(transparent)]
    Index(#[from] shoal_index::IndexError),
    /// A shoal-protocol step with a server under test failed.
    #[error("{what}: {source}")]
    Protocol {
        /// The step (handshake, answer, ...).
        what: &'static str,
        /// Why it failed.
        source: shoal_proto::ProtoError,
    },
    /// A shoal protocol failure (address, codec, transport).
    #[error(transparent)]
    Proto(#[from] shoal_proto::ProtoError),
    /// A TLS identity or transport could not be set up.
    #[error(transparent)]
    Tls(#[from] shoal_proto::tls::TlsError),
    /// A server under test answered something other than what the lookup asks for.
    #[error("{0}")]
    WrongAnswer(String),
    /// A worker thread of the benchmark panicked.
    #[error("a {0} thread panicked")]
    Panicked(&'static str),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted; network namespaces and processes removed")]
    Interrupted,
}

/// `map_err(io_err("cannot read X"))`: an I/O failure with what was being done.
pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// `map_err(spawn_err(program))`: a process that could not be started.
pub(crate) fn spawn_err(program: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
    let program = program.into();
    move |source| BenchError::Spawn { program, source }
}

/// `map_err(contender_err(name))`: a server under test that failed a checked step.
pub(crate) fn contender_err<E: std::fmt::Display>(
    contender: impl Into<String>,
    what: &'static str,
) -> impl FnOnce(E) -> BenchError {
    let contender = contender.into();
    move |e| BenchError::Contender {
        contender,
        detail: format!("{what}{e}"),
    }
}

/// `map_err(proto_err("handshake"))`: a protocol step with a server under test.
pub(crate) fn proto_err(what: &'static str) -> impl FnOnce(shoal_proto::ProtoError) -> BenchError {
    move |source| BenchError::Protocol { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_with_what_and_where() {
        let missing = io::Error::from(io::ErrorKind::NotFound);
        let e = io_err("cannot create /tmp/x/holder1")(missing);
        assert!(
            e.to_string().starts_with("cannot create /tmp/x/holder1: "),
            "{e}"
        );
        let e = BenchError::Network(Box::new(BenchError::MissingTool {
            program: "tc",
            hint: "apt-get install iproute2",
        }));
        assert_eq!(
            e.to_string(),
            "cannot set up the emulated network: `tc` not found in PATH (apt-get install iproute2)"
        );
        let e = spawn_err("redis-server")(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(
            e.to_string().starts_with("cannot start redis-server: "),
            "{e}"
        );
        let e = contender_err("shoal", "lookup failed: ")(BenchError::WrongAnswer("nil".into()));
        assert_eq!(e.to_string(), "shoal: lookup failed: nil");
        for e in [e, BenchError::Interrupted, BenchError::NotRoot] {
            assert!(!e.to_string().contains('\n'));
        }
    }
}
