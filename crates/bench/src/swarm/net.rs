//! The emulated network of `shoal bench swarm`: one network namespace per host, each joined
//! by a veth pair to one bridge in a hub namespace, every link shaped both ways with `tc tbf`
//! (upload: the host's side of its veth; download: the hub's side). Addresses live only
//! inside the namespaces made here, in 10.77.0.0/16. Everything is torn down on drop.

use std::fs::{self, File, TryLockError};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rand::{RngCore, SeedableRng};

use crate::BenchError;

/// Every namespace this bench makes starts with this, then the run's id and a dash.
pub(super) const NS_PREFIX: &str = "shoal-bench-";
/// A run holds an exclusive lock on `LOCK_DIR/shoal-bench-ID.lock` from before its first
/// namespace to after its last is gone: namespaces and folders of a run whose lock nobody
/// holds were left by a bench killed with -9. A lock rather than a pid, because benches in
/// other pid namespaces (containers) share /run/netns and their pids are not in our /proc.
const LOCK_DIR: &str = "/run";
/// The private /16 the hosts live in.
const NET: [u8; 2] = [10, 77];
/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// One emulated machine.
#[derive(Debug, Clone)]
pub(super) struct Host {
    /// Its namespace.
    pub(super) ns: String,
    /// Its one address (on `eth0`).
    pub(super) ip: Ipv4Addr,
}

/// The namespaces made so far; deleted (after killing whatever runs in them) on drop, so a
/// half-built network is cleaned up as well as a whole one.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Hosts first, the hub (whose bridge they hang on) last.
        for ns in self.0.iter().rev() {
            kill_all_in(ns);
            let _ = run_ok("ip", &["netns", "del", ns]);
        }
    }
}

/// The network: an index host, a seeder host and `peers` peer hosts.
pub(super) struct Net {
    made: Namespaces,
    /// The host of the index (and of the BitTorrent tracker).
    pub(super) index: Host,
    /// The host that holds the file at the start.
    pub(super) seeder: Host,
    /// The downloaders' hosts.
    pub(super) peers: Vec<Host>,
}

/// Link rates, Mbit/s each way.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rates {
    /// Every host but the seeder.
    pub(super) host_mbit: u32,
    /// The seeder.
    pub(super) seeder_mbit: u32,
}

impl Net {
    /// Builds the bridge and `peers + 2` shaped hosts.
    pub(super) fn build(run: &RunLock, peers: usize, rates: Rates) -> Result<Net, BenchError> {
        let prefix = format!("{NS_PREFIX}{}-", run.id);
        let hub = format!("{prefix}hub");
        let mut made = Namespaces(Vec::new());
        run_ok("ip", &["netns", "add", &hub])?;
        made.0.push(hub.clone());
        run_ok("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run_ok("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        let mut add = |name: &str, number: usize, mbit: u32| -> Result<Host, BenchError> {
            let ns = format!("{prefix}{name}");
            let ip = host_ip(number);
            run_ok("ip", &["netns", "add", &ns])?;
            made.0.push(ns.clone());
            run_ok("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            let hub_side = format!("v{number}");
            run_ok(
                "ip",
                &[
                    "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &hub_side,
                    "netns", &hub,
                ],
            )?;
            run_ok(
                "ip",
                &["-n", &hub, "link", "set", &hub_side, "master", "br0"],
            )?;
            run_ok("ip", &["-n", &hub, "link", "set", &hub_side, "up"])?;
            let cidr = format!("{ip}/16");
            run_ok("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run_ok("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            shape(&ns, "eth0", mbit)?;
            shape(&hub, &hub_side, mbit)?;
            Ok(Host { ns, ip })
        };
        let index = add("index", 0, rates.host_mbit)?;
        let seeder = add("seeder", 1, rates.seeder_mbit)?;
        let peers = (0..peers)
            .map(|i| add(&format!("p{i}"), i + 2, rates.host_mbit))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Net {
            made,
            index,
            seeder,
            peers,
        })
    }

    /// Kills every process in every host of the network (between contenders).
    pub(super) fn kill_everything(&self) {
        for ns in &self.made.0 {
            kill_all_in(ns);
        }
    }
}

/// Host `number`'s address: 10.77.0.1, 10.77.0.2, ... (never .0 or .255 in the last byte).
fn host_ip(number: usize) -> Ipv4Addr {
    let n = u32::try_from(number).unwrap_or(u32::MAX);
    Ipv4Addr::new(
        NET[0],
        NET[1],
        u8::try_from(n / 250).unwrap_or(u8::MAX),
        u8::try_from(n % 250 + 1).unwrap_or(u8::MAX),
    )
}

/// The most hosts the /16 gives room for.
pub(super) const MAX_PEERS: usize = 250 * 250 - 2;

/// A token bucket on `dev`'s egress in `ns`: `mbit` Mbit/s, a burst of 20 ms at that rate
/// (at least 64 KiB: one GSO segment), at most 200 ms queued.
fn shape(ns: &str, dev: &str, mbit: u32) -> Result<(), BenchError> {
    let burst = (u64::from(mbit) * 1_000_000 / 8 / 50).max(64 * 1024);
    run_ok(
        "tc",
        &[
            "-n",
            ns,
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &format!("{mbit}mbit"),
            "burst",
            &burst.to_string(),
            "latency",
            "200ms",
        ],
    )
    .map(drop)
}

/// Bytes `host` has sent on its link so far (its upload, headers included).
pub(super) fn sent_bytes(host: &Host) -> Result<u64, BenchError> {
    let out = run_ok(
        "ip",
        &["-n", &host.ns, "-s", "-j", "link", "show", "dev", "eth0"],
    )?;
    let parsed: serde_json::Value = serde_json::from_str(&out).map_err(|e| BenchError::Parse {
        command: format!("ip -n {} -s -j link show dev eth0", host.ns),
        detail: e.to_string(),
    })?;
    parsed
        .pointer("/0/stats64/tx/bytes")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| BenchError::Parse {
            command: format!("ip -n {} -s -j link show dev eth0", host.ns),
            detail: "no stats64.tx.bytes".into(),
        })
}

/// `program args` inside `host`'s namespace, in a process group of its own (so a Ctrl-C
/// on the terminal reaches only the bench, which then stops it), stdin closed.
pub(super) fn command_in(host: &Host, program: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &host.ns])
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// SIGKILLs every process inside `ns` (`ip netns pids`).
fn kill_all_in(ns: &str) {
    let Ok(pids) = run_ok("ip", &["netns", "pids", ns]) else {
        return;
    };
    let pids: Vec<&str> = pids.split_whitespace().collect();
    if pids.is_empty() {
        return;
    }
    let mut args = vec!["-KILL"];
    args.extend(pids);
    let _ = run_ok("kill", &args);
    // Let the kernel reap them before the namespace goes (a veth in use holds it).
    std::thread::sleep(Duration::from_millis(50));
}

/// This run's id and its lock (see [`LOCK_DIR`]); the lock file goes on drop.
pub(super) struct RunLock {
    /// Eight hex digits, random: unique across pid namespaces too.
    pub(super) id: String,
    path: PathBuf,
    _file: File,
}

impl RunLock {
    /// Takes a fresh id and locks it.
    pub(super) fn take() -> Result<RunLock, BenchError> {
        let id = format!("{:08x}", rand::rngs::StdRng::from_os_rng().next_u32());
        let path = lock_path(&id);
        let file = File::create_new(&path).map_err(|source| BenchError::Io {
            what: format!("cannot create {}", path.display()),
            source,
        })?;
        file.try_lock().map_err(|e| BenchError::Io {
            what: format!("cannot lock {}", path.display()),
            source: e.into(),
        })?;
        Ok(RunLock {
            id,
            path,
            _file: file,
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn lock_path(id: &str) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("{NS_PREFIX}{id}.lock"))
}

/// The run id in `name` after `prefix` (eight hex digits, then `-` or the end).
pub(super) fn run_id<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = name.strip_prefix(prefix)?;
    let id = rest.get(..8)?;
    let tail = rest.get(8..)?;
    (id.bytes().all(|b| b.is_ascii_hexdigit()) && (tail.is_empty() || tail.starts_with('-')))
        .then_some(id)
}

/// Whether run `id` is over: its lock file is gone or nobody holds its lock.
pub(super) fn run_is_over(id: &str) -> bool {
    match File::open(lock_path(id)) {
        Err(_) => true,
        Ok(file) => match file.try_lock() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(_)) => false,
        },
    }
}

/// Removes the namespaces (and the lock files) of runs that are over: a bench killed before
/// it could clean up. Returns the namespaces removed.
pub(super) fn remove_stale() -> Vec<String> {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut stale: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| run_id(name, NS_PREFIX).is_some_and(run_is_over))
        .collect();
    // Hubs last: the hosts' veths hang on their bridge.
    stale.sort_by_key(|name| name.ends_with("-hub"));
    for ns in &stale {
        kill_all_in(ns);
        let _ = run_ok("ip", &["netns", "del", ns]);
    }
    for ns in &stale {
        if let Some(id) = run_id(ns, NS_PREFIX) {
            let _ = fs::remove_file(lock_path(id));
        }
    }
    stale
}

/// Runs a short command; its stdout, or an error carrying its stderr.
pub(super) fn run_ok(program: &str, args: &[&str]) -> Result<String, BenchError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BenchError::Io {
            what: format!("cannot run {program}"),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(BenchError::Command {
            command: format!("{program} {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The processes of one contender run; SIGKILLed and reaped on drop.
#[derive(Default)]
pub(super) struct Procs(Vec<Child>);

impl Procs {
    /// Starts `cmd` and keeps it; returns its slot.
    pub(super) fn spawn(&mut self, what: &str, cmd: &mut Command) -> Result<usize, BenchError> {
        let child = cmd.spawn().map_err(|source| BenchError::Io {
            what: format!("cannot start {what}"),
            source,
        })?;
        self.0.push(child);
        Ok(self.0.len() - 1)
    }

    /// The process in `slot`.
    pub(super) fn get(&mut self, slot: usize) -> Option<&mut Child> {
        self.0.get_mut(slot)
    }

    /// Kills and reaps every process.
    pub(super) fn kill_all(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
        self.0.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.kill_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_and_never_network_or_broadcast() {
        let ips: Vec<Ipv4Addr> = (0..2000).map(host_ip).collect();
        let mut sorted = ips.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ips.len());
        assert!(ips.iter().all(|ip| {
            let o = ip.octets();
            o[0] == 10 && o[1] == 77 && o[3] != 0 && o[3] != 255
        }));
        assert_eq!(host_ip(0), Ipv4Addr::new(10, 77, 0, 1));
        assert_eq!(host_ip(MAX_PEERS + 1).octets()[2], 249);
    }

    #[test]
    fn run_ids_are_eight_hex_digits() {
        assert_eq!(
            run_id("shoal-bench-0a1b2c3d-p12", NS_PREFIX),
            Some("0a1b2c3d")
        );
        assert_eq!(
            run_id("shoal-bench-0a1b2c3d-hub", NS_PREFIX),
            Some("0a1b2c3d")
        );
        assert_eq!(run_id("x-0a1b2c3d", "x-"), Some("0a1b2c3d"));
        // An older bench's pid-named namespaces, and anything else, are not ours to judge.
        assert_eq!(run_id("shoal-bench-11658-p0", NS_PREFIX), None);
        assert_eq!(run_id("shoal-bench-0a1b2c3dx-p0", NS_PREFIX), None);
        assert_eq!(run_id("other-0a1b2c3d-p0", NS_PREFIX), None);
    }
}
