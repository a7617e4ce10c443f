//! `shoal`: the command line of the shoal peer-to-peer file-sharing system.
//!
//! Thin by design: it parses arguments, wires the TCP transport into the index and peer
//! crates, and prints. Everything else lives in `shoal-proto`, `shoal-index` and `shoal-peer`;
//! `shoal bench ...` is parsed and run by `shoal-bench`.

mod choose;
mod config;
mod console;
mod demo;
mod error;
mod fetch;
mod install;
mod logger;
mod net;
mod output;
mod progress;
mod serve;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_bench::units;
use shoal_proto::PeerAddr;

use crate::error::CliError;

/// The index's default port: the seed design's.
const DEFAULT_INDEX: &str = "127.0.0.1:1024";

/// shoal: share files peer to peer. A central index knows who holds what; peers send each
/// other files directly, in verified chunks; a peer that finishes a download serves it too.
#[derive(Parser, Debug)]
#[command(name = "shoal", version, propagate_version = true)]
#[command(
    after_help = "Examples:\n  shoal demo\n  shoal index --listen 0.0.0.0:1024\n  \
shoal peer --dir ./shared --index 10.0.0.5:1024 --listen 0.0.0.0:7000\n  \
shoal get song.ogg --index 10.0.0.5:1024 --out ./downloads\n  shoal search ogg --index 10.0.0.5:1024"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an index server: the registry of which peer holds which file.
    #[command(
        after_help = "Example:\n  shoal index                         # 127.0.0.1:1024, this machine only\n  \
shoal index --listen 0.0.0.0:1024   # serve other machines"
    )]
    Index(serve::IndexArgs),
    /// Serve a folder to other peers, register it with the index, and download the file
    /// names typed on standard input into it.
    #[command(
        after_help = "Example:\n  shoal peer --dir ./shared --index 127.0.0.1:1024\n  \
(then type a file name and Enter to fetch it into ./shared)"
    )]
    Peer(serve::PeerArgs),
    /// Download files (by name or 64-hex-digit id), verified, into a folder, then exit.
    #[command(
        after_help = "Examples:\n  shoal get song.ogg notes.txt --index 127.0.0.1:1024 --out ./downloads\n  \
shoal get release.iso --index 10.0.0.5:1024 --seed 600   # then serve it 10 minutes\n\n\
While it downloads, `get` serves the chunks it has verified to other downloaders (a crowd of \
`get`s swarms) on a free port next to the address it reaches the index from (--listen to \
choose, --no-share to only fetch). It exits when its downloads are done, unregistering what \
it registered; --seed SECS serves the finished files that long first."
    )]
    Get(fetch::GetArgs),
    /// List files the index knows whose name contains QUERY (empty: all).
    #[command(after_help = "Example:\n  shoal search ogg\n  shoal search --json | jq .name")]
    Search(fetch::SearchArgs),
    /// Start an index and three peers on loopback with sample files, let each peer fetch the
    /// files it lacks, and print what happened.
    #[command(
        after_help = "Example:\n  shoal demo\n  shoal demo --keep ./demo-run --largest-mib 20"
    )]
    Demo(demo::DemoArgs),
    /// Measurements (run with --release).
    #[command(subcommand)]
    Bench(shoal_bench::BenchCommand),
    /// Print a shell completion script: `shoal completions bash > /etc/bash_completion.d/shoal`.
    #[command(
        after_help = "Examples:\n  shoal completions bash > ~/.local/share/bash-completion/completions/shoal\n  \
shoal completions zsh > ~/.zfunc/_shoal\n  shoal completions fish > ~/.config/fish/completions/shoal.fish"
    )]
    Completions(install::CompletionsArgs),
    /// Print the man page shoal(1), or write every page into a folder with --out.
    #[command(
        after_help = "Examples:\n  shoal man | man -l -\n  shoal man --out /usr/local/share/man/man1"
    )]
    Man(install::ManArgs),
    /// Print this node's id (created with its identity on first use): the last word printed.
    #[command(
        after_help = "Examples:\n  shoal id\n  shoal id --identity /etc/shoal/identity.pem --member node.member"
    )]
    Id(net::IdArgs),
    /// Private swarms: create a swarm authority, admit nodes by id.
    #[command(subcommand)]
    Swarm(net::SwarmCommand),
}

fn main() -> ExitCode {
    // Flags, then the environment (SHOAL_INDEX), then `--config FILE`, then defaults.
    let cli: Cli = config::parse();
    // Servers log one line per event. The demo and benchmarks print tables that their
    // servers' event lines would bury. One-shot clients print their results, and on failure
    // one error line that carries the details (`RUST_LOG=info` shows the events too).
    logger::init(match &cli.command {
        Command::Index(args) if args.quiet() => log::LevelFilter::Warn,
        Command::Peer(args) if args.quiet() => log::LevelFilter::Warn,
        Command::Index(_) | Command::Peer(_) => log::LevelFilter::Info,
        Command::Demo(_) | Command::Bench(_) => log::LevelFilter::Warn,
        Command::Get(_)
        | Command::Search(_)
        | Command::Completions(_)
        | Command::Man(_)
        | Command::Id(_)
        | Command::Swarm(_) => log::LevelFilter::Error,
    });
    let result = match cli.command {
        Command::Index(args) => serve::run_index(&args),
        Command::Peer(args) => serve::run_peer(&args),
        Command::Get(args) => fetch::run_get(&args),
        Command::Search(args) => fetch::run_search(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Completions(args) => install::completions::<Cli>(&args),
        Command::Man(args) => install::man::<Cli>(&args),
        Command::Id(args) => net::run_id(&args),
        Command::Swarm(command) => net::run_swarm(&command),
        Command::Bench(command) => shoal_bench::run(&command).map_err(CliError::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("shoal: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `--index A,B,C`.
fn parse_index_list(list: &str) -> Result<Vec<PeerAddr>, CliError> {
    let addrs = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PeerAddr::new)
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(CliError::Usage("--index needs at least one address".into()));
    }
    Ok(addrs)
}

/// A folder given on the command line, created if missing.
fn ensure_dir(dir: &PathBuf) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).map_err(|source| CliError::Io {
        what: format!("cannot create folder {}", dir.display()),
        source,
    })
}
