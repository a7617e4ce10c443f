//! shoal-bench: the measurements behind `shoal bench ...`.
//!
//! Every bench prints a markdown table of shoal against baselines measured in the same run,
//! contenders alternating, medians of several runs (one median for all: `stats.rs`). The
//! `shoal` binary parses [`BenchCommand`] and calls [`run`]; benches that need real `shoal`
//! processes (`index --data`, `hostile`, `swarm`) spawn the running executable, which must
//! therefore be the `shoal` binary (`swarm --shoal PATH` names another).
//!
//! | bench | measures | against |
//! |---|---|---|
//! | `bench index` (`index.rs`, SVG via `plot.rs`) | lookups/s, mean and p99 response time for 1..256 clients, persistent and per-lookup connections | a `redis-server` answering `SRANDMEMBER`, and a no-op server on shoal's own accept loop (the ceiling) |
//! | `bench index --data DIR` (`durable.rs`) | registrations/s with the durable store; recovery time and memory of 1M registrations in a real `shoal index` process | the in-memory store; the targets (≥ 0.5x, 3 s, 200 B per registration) |
//! | `bench transfer` (`transfer.rs`) | download GB/s and CPU s/GiB of shoal, 1 and 3 holders, to disk and verify-only | raw TCP file -> socket -> discarded buffer, and -> file |
//! | `bench hostile` (`hostile.rs`) | random frames rejected per second per core; CPU and memory of a `shoal index` holding N idle connections | none: absolute costs |
//! | `bench swarm` (`swarm.rs`, `swarm/`) | a flash crowd on emulated links (root: namespaces, `tc`): time to the last complete copy, seeder and peer uploads | one console alone (T1), nginx + curl, libtorrent + opentracker |
//!
//! Modules: `stats` (median, spread, percentile), `units` (sizes and rates for tables, also
//! used by the CLI's own output), `error` ([`BenchError`]), `swarm/net.rs` (namespaces,
//! veths, `tc`), `swarm/report.rs` (the swarm's tables), `swarm/bt_node.py` (the libtorrent
//! node).

mod child;
mod durable;
mod error;
mod hostile;
mod index;
mod plot;
mod stats;
mod swarm;
mod transfer;
pub mod units;

pub use durable::DurableBenchArgs;
pub use error::BenchError;
pub use hostile::HostileBenchArgs;
pub use index::IndexBenchArgs;
pub use swarm::SwarmBenchArgs;
pub use transfer::TransferBenchArgs;

/// The `shoal bench` subcommands.
#[derive(clap::Subcommand, Debug)]
// Parsed once at start-up: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum BenchCommand {
    /// Lookups/s and response times of the index against Redis and a no-op server, for
    /// 1..256 concurrent clients, persistent and per-lookup connections.
    #[command(
        after_help = "Example:\n  cargo run --release -p shoal-cli -- bench index --plot index.svg"
    )]
    Index(IndexBenchArgs),
    /// Download throughput of shoal (1 and 3 holders, to disk; verify-only) against raw TCP
    /// to a discarded buffer and to a file, on loopback, contenders alternating.
    #[command(
        after_help = "Example:\n  cargo run --release -p shoal-cli -- bench transfer --size-mib 1024 --reps 3"
    )]
    Transfer(TransferBenchArgs),
    /// What hostile input costs: garbage frames rejected per second per core, and an index
    /// holding thousands of idle connections (CPU and memory per connection).
    #[command(
        after_help = "Example:\n  cargo run --release -p shoal-cli -- bench hostile --connections 2000"
    )]
    Hostile(HostileBenchArgs),
    /// A flash crowd on an emulated network (root: network namespaces, tc): one seeder, N
    /// peers wanting the same file at once; shoal consoles, `shoal get`, nginx + curl and
    /// libtorrent + opentracker, contenders alternating.
    #[command(
        after_help = "Example:\n  sudo target/release/shoal bench swarm --peers 12 --size-mib 64 \
--rate-mbit 100\n  sudo target/release/shoal bench swarm --peers 4 --size-mib 16 --contenders t1,consoles,http"
    )]
    Swarm(SwarmBenchArgs),
}

/// Runs one bench, printing its tables to standard output.
pub fn run(command: &BenchCommand) -> Result<(), BenchError> {
    match command {
        BenchCommand::Index(args) => {
            index::run(args)?;
            if args.durable.data.is_some() {
                durable::run(&args.durable)?;
            }
            Ok(())
        }
        BenchCommand::Transfer(args) => transfer::run(args),
        BenchCommand::Hostile(args) => hostile::run(args),
        BenchCommand::Swarm(args) => swarm::run(args),
    }
}
