//! `shoal bench swarm`: the flash crowd of issue 8 on an emulated network.
//!
//! One seeder holds a file; N peers all want it at the same instant. Every host (index,
//! seeder, each peer) is a network namespace on one bridge, its link shaped both ways with
//! `tc tbf` (see [`net`]), so the run behaves like N + 2 machines on real access links.
//!
//! Contenders, alternating within each rep, everything killed and started fresh between them:
//! - `t1`: one shoal peer console alone fetches the file (one link's worth of time);
//! - `consoles`: N `shoal peer` consoles are told the file name at once;
//! - `get`: N `shoal get` processes start at once (sharing while they run);
//! - `http`: nginx on the seeder's host, N `curl` at once (a central server);
//! - `bt`, `bt1`: libtorrent-rasterbar + opentracker with N peers, and with one (BitTorrent).
//!
//! A contender's time runs from the instant the crowd is started (servers already up, the
//! file registered) to each peer's complete copy. Consoles and libtorrent nodes are running
//! before that instant and are then told the file (a line on stdin); `shoal get` and `curl`
//! are started at it, their start-up is part of their time. Seeder and peer uploads come from the
//! byte counters of their links (`ip -s link`), headers included. Right before every timed
//! run a scratch file as large as everything the run will write is written and deleted, for
//! every contender alike, so no run starts with more free page cache than another.

mod net;
mod report;

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};

use net::{Host, Net, Procs, Rates};

use crate::error::{BenchError, io_err};

/// The temporary work folder: this, then the run's id.
const WORK_PREFIX: &str = "shoal-bench-swarm-";
/// The shared file's name.
const FILE_NAME: &str = "payload.bin";
const INDEX_PORT: u16 = 1024;
const PEER_PORT: u16 = 7000;
const HTTP_PORT: u16 = 8080;
const TRACKER_PORT: u16 = 6969;
/// Longest wait for a server to start, a seeder to hash its file, a registration to show.
const STARTUP: Duration = Duration::from_secs(60);
/// How often completion is checked.
const POLL: Duration = Duration::from_millis(20);
/// The extra arguments of every `shoal get` in the `get` contender (`{ip}`: the peer's
/// address): share while downloading on that address, do not linger after finishing.
const GET_SHARE_ARGS: &str = "--listen {ip}:0 --seed 0";
/// The libtorrent node, written to the work folder at run time.
const BT_NODE: &str = include_str!("swarm/bt_node.py");
/// Debian's python3-libtorrent is for the system Python, whatever `python3` is in PATH.
const BT_PYTHON: &str = "/usr/bin/python3";
/// Issue 8's targets.
const TARGET_12: f64 = 1.3;
const TARGET_32: f64 = 1.5;
const TARGET_SEEDER_COPIES: f64 = 1.5;

/// `shoal bench swarm`
#[derive(clap::Args, Debug, Clone)]
pub struct SwarmBenchArgs {
    /// Downloaders in the crowd contenders.
    #[arg(long, default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    peers: u32,
    /// Size of the shared file in MiB.
    #[arg(long, default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    size_mib: u64,
    /// Every link's rate in Mbit/s, each way.
    #[arg(long, default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate_mbit: u32,
    /// The seeder's link rate in Mbit/s, each way (default: --rate-mbit).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    seeder_rate_mbit: Option<u32>,
    /// Runs of every contender, alternating; medians and min-max are reported.
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    reps: u32,
    /// The shoal binary to measure (default: this one).
    #[arg(long, value_name = "PATH")]
    shoal: Option<PathBuf>,
    /// Contenders to run, in this order within each rep.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "t1,consoles,get,http,bt"
    )]
    contenders: Vec<Contender>,
    /// Longest a contender run may take, in seconds (default: 1.5 x peers x SIZE/RATE + 30);
    /// a run that takes longer is stopped and reported as timed out.
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout: Option<u64>,
    /// Extra arguments of every `shoal get` in the `get` contender, split on spaces;
    /// `{ip}` stands for the peer's address.
    #[arg(long, value_name = "ARGS", default_value = GET_SHARE_ARGS, allow_hyphen_values = true)]
    get_args: String,
    /// Working folder, kept afterwards with every process's log (default: a new folder
    /// under the system temp dir, removed afterwards). Downloaded copies are always removed.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

type Result<T, E = BenchError> = std::result::Result<T, E>;

/// One way of getting the file to the peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Contender {
    /// One shoal peer console alone (T1).
    T1,
    /// N shoal peer consoles at once.
    Consoles,
    /// N `shoal get` at once.
    Get,
    /// nginx + N curl.
    Http,
    /// libtorrent-rasterbar + opentracker, N peers.
    Bt,
    /// libtorrent-rasterbar + opentracker, one peer alone.
    Bt1,
}

impl Contender {
    fn label(self, n: usize) -> String {
        match self {
            Contender::T1 => "T1: one shoal peer alone".into(),
            Contender::Consoles => format!("shoal: {n} peer consoles"),
            Contender::Get => format!("shoal: {n} `shoal get`"),
            Contender::Http => format!("nginx + {n} curl"),
            Contender::Bt => format!("libtorrent + opentracker, {n} peers"),
            Contender::Bt1 => "libtorrent, one peer alone".into(),
        }
    }

    /// Its name on the command line.
    fn name(self) -> String {
        format!("{self:?}").to_lowercase()
    }

    fn peers(self, n: usize) -> usize {
        match self {
            Contender::T1 | Contender::Bt1 => 1,
            _ => n,
        }
    }

    fn is_shoal_crowd(self) -> bool {
        matches!(self, Contender::Consoles | Contender::Get)
    }
}

/// Runs the benchmark and prints its tables.
pub(crate) fn run(args: &SwarmBenchArgs) -> Result<()> {
    if !is_root() {
        return Err(BenchError::NotRoot);
    }
    for program in ["ip", "tc", "ss"] {
        if which(program).is_none() {
            return Err(BenchError::MissingTool {
                program,
                hint: "apt-get install iproute2",
            });
        }
    }
    let peers = usize::try_from(args.peers).unwrap_or(usize::MAX);
    if peers > net::MAX_PEERS {
        return Err(BenchError::Usage(format!(
            "--peers: at most {}",
            net::MAX_PEERS
        )));
    }
    if cfg!(debug_assertions) {
        eprintln!("note: this is a debug build; numbers mean little (use --release)");
    }
    let shoal = match &args.shoal {
        Some(path) => path.clone(),
        None => std::env::current_exe().map_err(io_err("cannot find this program"))?,
    };
    let shoal = fs::canonicalize(&shoal).map_err(io_err(format!(
        "cannot find the shoal binary {}",
        shoal.display()
    )))?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second Ctrl-C ends the process at once; the first asks for a clean stop.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
            .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)))
            .map_err(io_err("cannot install the Ctrl-C handler"))?;
    }
    for ns in net::remove_stale() {
        eprintln!("removed namespace {ns}, left by an earlier run that was killed");
    }
    remove_stale_work_dirs();
    // Held until every namespace and the work folder are gone (dropped last).
    let run_lock = net::RunLock::take()?;

    // Who can run: the rest is said once, clearly, and left out.
    let mut contenders = Vec::new();
    let mut skipped = Vec::new();
    for &c in &args.contenders {
        if contenders.contains(&c) {
            continue;
        }
        match unavailable(c) {
            Some(why) => skipped.push((c, why)),
            None => contenders.push(c),
        }
    }
    if contenders.is_empty() {
        let why: Vec<&str> = skipped.iter().map(|(_, why)| why.as_str()).collect();
        return Err(BenchError::Usage(format!(
            "no contender can run: {}",
            why.join("; ")
        )));
    }

    let (work, temporary) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("{WORK_PREFIX}{}", run_lock.id)),
            true,
        ),
    };
    fs::create_dir_all(&work).map_err(io_err(format!("cannot create {}", work.display())))?;
    let _cleanup = temporary.then(|| RemoveOnDrop(work.clone()));

    let seeder_mbit = args.seeder_rate_mbit.unwrap_or(args.rate_mbit);
    let size = args.size_mib << 20;
    let seed_dir = work.join("seed");
    fs::create_dir_all(&seed_dir)
        .map_err(io_err(format!("cannot create {}", seed_dir.display())))?;
    let source = seed_dir.join(FILE_NAME);
    write_payload(&source, size)?;

    let rates = Rates {
        host_mbit: args.rate_mbit,
        seeder_mbit,
    };
    let net = Net::build(&run_lock, peers, rates).map_err(|e| BenchError::Network(Box::new(e)))?;
    let bound = size as f64 * 8.0 / (f64::from(args.rate_mbit.min(seeder_mbit)) * 1e6);
    let mut bench = Bench {
        net,
        shoal,
        work,
        seed_dir,
        source,
        size,
        peers,
        bound,
        timeout: args.timeout.map(Duration::from_secs),
        get_args: args.get_args.clone(),
        keep_logs: !temporary,
        stop,
        torrent: None,
    };
    bench.print_header(args, seeder_mbit, &contenders, &skipped);

    let mut all: Vec<Vec<RunResult>> = Vec::new();
    for rep in 1..=args.reps {
        let mut results = Vec::new();
        for &c in &contenders {
            eprintln!("rep {rep}/{}: {} ...", args.reps, c.label(peers));
            let result = match bench.run_contender(c, rep) {
                Ok(r) => r,
                Err(_) if bench.stopped() => return Err(BenchError::Interrupted),
                Err(e @ BenchError::Interrupted) => return Err(e),
                Err(e) => RunResult::failed(c, c.peers(peers), e.to_string()),
            };
            bench.net.kill_everything();
            let _ = fs::remove_dir_all(bench.work.join("data"));
            results.push(result);
        }
        println!("\n### run {rep} of {}\n", args.reps);
        bench.print_run(&results);
        all.push(results);
    }
    if args.reps > 1 {
        bench.print_summary(&contenders, &all);
    }
    Ok(())
}

/// Why contender `c` cannot run here, if it cannot.
fn unavailable(c: Contender) -> Option<String> {
    match c {
        Contender::T1 | Contender::Consoles | Contender::Get => None,
        Contender::Http => {
            let missing: Vec<&str> = ["nginx", "curl"]
                .into_iter()
                .filter(|p| which(p).is_none())
                .collect();
            (!missing.is_empty()).then(|| {
                format!(
                    "nginx + curl: not installed ({} missing; apt-get install nginx-light curl)",
                    missing.join(", ")
                )
            })
        }
        Contender::Bt | Contender::Bt1 => {
            let tracker = which("opentracker").is_some();
            let lt = Command::new(BT_PYTHON)
                .args(["-c", "import libtorrent"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            (!(tracker && lt)).then(|| {
                let missing = match (tracker, lt) {
                    (false, false) => "opentracker and libtorrent missing",
                    (false, true) => "opentracker missing",
                    _ => "libtorrent missing from /usr/bin/python3",
                };
                format!(
                    "libtorrent: not installed ({missing}; apt-get install opentracker \
                     python3-libtorrent)"
                )
            })
        }
    }
}

/// How a crowd member's completion shows.
enum Finish {
    /// The file appears under its final name with its full size; a console line starting
    /// with `error` is a failure.
    File,
    /// The process exits; success is a complete copy.
    Exit,
    /// `shoal get --json`: its record for the file says `downloaded`, or it exits with
    /// success (whichever comes first: a `--seed` linger is not download time); an `error`
    /// record or a failed exit is a failure.
    Record,
    /// The process prints this line (libtorrent's node: `complete`).
    Line(&'static str),
}

/// One downloader of a contender run.
struct Member {
    dir: PathBuf,
    log: PathBuf,
    /// Where its `--json` records go (`shoal get`).
    json: Option<PathBuf>,
    slot: usize,
    done: Option<f64>,
    failed: Option<String>,
}

impl Member {
    fn new(dir: PathBuf, log: PathBuf, slot: usize) -> Member {
        Member {
            dir,
            log,
            json: None,
            slot,
            done: None,
            failed: None,
        }
    }

    fn finished(&self) -> bool {
        self.done.is_some() || self.failed.is_some()
    }
}

/// The outcome of one contender run.
#[derive(Debug, Clone)]
struct RunResult {
    contender: Contender,
    peers: usize,
    /// Seconds from the start to each peer's complete copy.
    times: Vec<Option<f64>>,
    /// The peers that failed (`p3`) and why.
    failures: Vec<(String, String)>,
    /// The run was stopped after this long.
    timed_out: Option<f64>,
    /// Bytes the seeder's link sent during the run.
    seeder_sent: Option<u64>,
    /// Bytes all the peers' links sent during the run.
    peers_sent: Option<u64>,
    /// Bytes uploaded as the peers themselves report (`get --json`'s `uploaded`).
    reported_upload: Option<u64>,
    /// The run could not take place.
    error: Option<String>,
}

impl RunResult {
    fn failed(contender: Contender, peers: usize, error: String) -> RunResult {
        RunResult {
            contender,
            peers,
            times: vec![None; peers],
            failures: Vec::new(),
            timed_out: None,
            seeder_sent: None,
            peers_sent: None,
            reported_upload: None,
            error: Some(error),
        }
    }

    fn finished(&self) -> usize {
        self.times.iter().flatten().count()
    }

    /// The last copy's time, if every peer got one.
    fn last(&self) -> Option<f64> {
        if self.error.is_some() || self.finished() < self.times.len() {
            return None;
        }
        self.times.iter().flatten().copied().reduce(f64::max)
    }

    /// The median peer's time (a missing copy counts as infinitely late).
    fn median(&self) -> Option<f64> {
        let t: Vec<f64> = self
            .times
            .iter()
            .map(|t| t.unwrap_or(f64::INFINITY))
            .collect();
        let m = crate::stats::median(&t)?;
        m.is_finite().then_some(m)
    }
}

/// The state shared by every contender run.
struct Bench {
    net: Net,
    shoal: PathBuf,
    work: PathBuf,
    seed_dir: PathBuf,
    source: PathBuf,
    size: u64,
    peers: usize,
    /// SIZE / RATE in seconds: no peer can have its copy sooner.
    bound: f64,
    timeout: Option<Duration>,
    get_args: String,
    /// The work folder (and its logs) outlives the bench (`--dir`).
    keep_logs: bool,
    stop: Arc<AtomicBool>,
    /// The torrent and tracker whitelist, made at the first BitTorrent run.
    torrent: Option<PathBuf>,
}

impl Bench {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn check_stop(&self) -> Result<()> {
        if self.stopped() {
            Err(BenchError::Interrupted)
        } else {
            Ok(())
        }
    }

    fn index_addr(&self) -> String {
        format!("{}:{INDEX_PORT}", self.net.index.ip)
    }

    fn run_timeout(&self, peers: usize) -> Duration {
        self.timeout
            .unwrap_or_else(|| Duration::from_secs_f64(1.5 * peers as f64 * self.bound + 30.0))
    }

    fn run_contender(&mut self, c: Contender, rep: u32) -> Result<RunResult> {
        let n = c.peers(self.peers);
        let logs = self
            .work
            .join("logs")
            .join(format!("run{rep}-{}", c.name()));
        let data = self.work.join("data");
        let _ = fs::remove_dir_all(&data);
        for d in [&logs, &data] {
            fs::create_dir_all(d).map_err(io_err(format!("cannot create {}", d.display())))?;
        }
        let mut procs = Procs::default();
        match c {
            Contender::T1 | Contender::Consoles => {
                self.run_shoal(&mut procs, c, n, &logs, &data, true)
            }
            Contender::Get => self.run_shoal(&mut procs, c, n, &logs, &data, false),
            Contender::Http => self.run_http(&mut procs, n, &logs, &data),
            Contender::Bt | Contender::Bt1 => self.run_bt(&mut procs, c, n, &logs, &data),
        }
    }

    /// Index, seeder, then `n` consoles told the name at once, or `n` `shoal get` started
    /// at once.
    fn run_shoal(
        &mut self,
        procs: &mut Procs,
        c: Contender,
        n: usize,
        logs: &Path,
        data: &Path,
        consoles: bool,
    ) -> Result<RunResult> {
        let index = self.index_addr();
        let index_log = logs.join("index.log");
        let mut cmd = self.shoal_cmd(
            &self.net.index,
            &strs(&["index", "--listen", &index]),
            &index_log,
        )?;
        let slot = procs.spawn("shoal index", &mut cmd)?;
        self.wait_line(procs, slot, "the index", &index_log, "listening on")?;
        let seed_log = logs.join("seeder.log");
        let seed_args = strs(&[
            "peer",
            "--dir",
            &path_arg(&self.seed_dir),
            "--index",
            &index,
            "--listen",
            &format!("{}:{PEER_PORT}", self.net.seeder.ip),
            "--no-console",
        ]);
        let slot = procs.spawn(
            "the shoal seeder",
            &mut self.shoal_cmd(&self.net.seeder, &seed_args, &seed_log)?,
        )?;
        self.wait_line(procs, slot, "the seeder", &seed_log, "listening on")?;
        self.wait_registered(&index)?;

        let mut members = Vec::with_capacity(n);
        let mut stdins: Vec<ChildStdin> = Vec::new();
        if consoles {
            for (i, host) in self.net.peers.iter().take(n).enumerate() {
                let dir = data.join(format!("p{i}"));
                fs::create_dir_all(&dir)
                    .map_err(io_err(format!("cannot create {}", dir.display())))?;
                let log = logs.join(format!("p{i}.log"));
                let args = strs(&[
                    "peer",
                    "--dir",
                    &path_arg(&dir),
                    "--index",
                    &index,
                    "--listen",
                    &format!("{}:{PEER_PORT}", host.ip),
                ]);
                let mut cmd = self.shoal_cmd(host, &args, &log)?;
                let slot = spawn_with_stdin(procs, "a shoal peer console", &mut cmd, &mut stdins)?;
                members.push(Member::new(dir, log, slot));
            }
            for m in &members {
                self.wait_line(procs, m.slot, "a peer console", &m.log, "listening on")?;
            }
        }
        self.level_page_cache(n)?;
        let before = self.counters(n)?;
        let t0 = Instant::now();
        if consoles {
            tell_all(&mut stdins, FILE_NAME, "a peer console")?;
        } else {
            for (i, host) in self.net.peers.iter().take(n).enumerate() {
                let dir = data.join(format!("p{i}"));
                let log = logs.join(format!("p{i}.log"));
                let json = logs.join(format!("p{i}.json"));
                let args = self.get_command(&host.ip.to_string(), &index, &dir);
                let mut cmd = net::command_in(host, &self.shoal, &args);
                cmd.stdout(log_file(&json)?).stderr(log_file(&log)?);
                let slot = procs.spawn("shoal get", &mut cmd)?;
                let mut member = Member::new(dir, log, slot);
                member.json = Some(json);
                members.push(member);
            }
        }
        let finish = if consoles {
            Finish::File
        } else {
            Finish::Record
        };
        let timed_out = self.wait_crowd(procs, &mut members, &finish, t0, self.run_timeout(n))?;
        let after = self.counters(n)?;
        drop(stdins);
        procs.kill_all();
        let mut result = self.result(c, members, timed_out, &before, &after)?;
        if !consoles {
            result.reported_upload = reported_upload(logs, n);
        }
        Ok(result)
    }

    /// The argv of one `shoal get` of the `get` contender.
    fn get_command(&self, ip: &str, index: &str, dir: &Path) -> Vec<String> {
        let mut args = strs(&[
            "get",
            FILE_NAME,
            "--index",
            index,
            "--out",
            &path_arg(dir),
            "--json",
        ]);
        args.extend(
            self.get_args
                .split_whitespace()
                .map(|a| a.replace("{ip}", ip)),
        );
        args
    }

    /// nginx on the seeder's host, `n` curl at once.
    fn run_http(
        &mut self,
        procs: &mut Procs,
        n: usize,
        logs: &Path,
        data: &Path,
    ) -> Result<RunResult> {
        let conf = logs.join("nginx.conf");
        let err_log = logs.join("nginx.err");
        let seed = &self.net.seeder;
        let text = format!(
            "worker_processes 1;\nmaster_process off;\ndaemon off;\npid {pid};\n\
             error_log {err};\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  \
             server {{ listen {ip}:{HTTP_PORT}; root {root}; }}\n}}\n",
            pid = path_arg(&logs.join("nginx.pid")),
            err = path_arg(&err_log),
            ip = seed.ip,
            root = path_arg(&self.seed_dir),
        );
        fs::write(&conf, text).map_err(io_err(format!("cannot write {}", conf.display())))?;
        let args = strs(&["-c", &path_arg(&conf), "-e", &path_arg(&err_log)]);
        let mut cmd = net::command_in(seed, Path::new("nginx"), &args);
        cmd.stdout(log_file(&logs.join("nginx.out"))?)
            .stderr(log_file(&logs.join("nginx.stderr"))?);
        let slot = procs.spawn("nginx", &mut cmd)?;
        self.wait_port(procs, slot, "nginx", seed, HTTP_PORT, &err_log)?;

        self.level_page_cache(n)?;
        let before = self.counters(n)?;
        let url = format!("http://{}:{HTTP_PORT}/{FILE_NAME}", seed.ip);
        let t0 = Instant::now();
        let mut members = Vec::with_capacity(n);
        for (i, host) in self.net.peers.iter().take(n).enumerate() {
            let dir = data.join(format!("p{i}"));
            fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
            let log = logs.join(format!("p{i}.log"));
            let out = path_arg(&dir.join(FILE_NAME));
            let args = strs(&["-sS", "--fail", "-o", &out, &url]);
            let mut cmd = net::command_in(host, Path::new("curl"), &args);
            to_log(&mut cmd, &log)?;
            let slot = procs.spawn("curl", &mut cmd)?;
            members.push(Member::new(dir, log, slot));
        }
        let timed_out =
            self.wait_crowd(procs, &mut members, &Finish::Exit, t0, self.run_timeout(n))?;
        let after = self.counters(n)?;
        procs.kill_all();
        self.result(Contender::Http, members, timed_out, &before, &after)
    }

    /// opentracker on the index's host, a libtorrent seeder, `n` libtorrent peers at once.
    fn run_bt(
        &mut self,
        procs: &mut Procs,
        c: Contender,
        n: usize,
        logs: &Path,
        data: &Path,
    ) -> Result<RunResult> {
        let bt_dir = self.work.join("bt");
        let node = bt_dir.join("bt_node.py");
        let torrent = match &self.torrent {
            Some(t) => t.clone(),
            None => {
                let t = self.make_torrent(&bt_dir, &node)?;
                self.torrent = Some(t.clone());
                t
            }
        };
        let idx = &self.net.index;
        // It chroots into -d and reads its whitelist there: a relative name works both
        // before and after.
        let port = TRACKER_PORT.to_string();
        let tracker_args = strs(&[
            "-i",
            &idx.ip.to_string(),
            "-p",
            &port,
            "-P",
            &port,
            "-d",
            &path_arg(&bt_dir),
            "-w",
            "whitelist",
        ]);
        let tracker_log = logs.join("opentracker.log");
        let mut cmd = net::command_in(idx, Path::new("opentracker"), &tracker_args);
        cmd.current_dir(&bt_dir);
        to_log(&mut cmd, &tracker_log)?;
        let slot = procs.spawn("opentracker", &mut cmd)?;
        self.wait_port(procs, slot, "opentracker", idx, TRACKER_PORT, &tracker_log)?;

        let python = Path::new(BT_PYTHON);
        let node_run = |save: &Path, host: &Host| -> Vec<String> {
            vec![
                path_arg(&node),
                "run".into(),
                path_arg(&torrent),
                path_arg(save),
                host.ip.to_string(),
            ]
        };
        let seed = &self.net.seeder;
        let seed_log = logs.join("seeder.log");
        let mut cmd = net::command_in(seed, python, &node_run(&self.seed_dir, seed));
        to_log(&mut cmd, &seed_log)?;
        let slot = procs.spawn("the libtorrent seeder", &mut cmd)?;
        self.wait_line(procs, slot, "the libtorrent seeder", &seed_log, "complete")?;

        // Started before the clock, as the consoles are: Python and its session are up and
        // listening, and the torrent is added when the node reads a line.
        let mut members = Vec::with_capacity(n);
        let mut stdins: Vec<ChildStdin> = Vec::new();
        for (i, host) in self.net.peers.iter().take(n).enumerate() {
            let dir = data.join(format!("p{i}"));
            fs::create_dir_all(&dir).map_err(io_err(format!("cannot create {}", dir.display())))?;
            let log = logs.join(format!("p{i}.log"));
            let mut cmd = net::command_in(host, python, &node_run(&dir, host));
            to_log(&mut cmd, &log)?;
            let slot = spawn_with_stdin(procs, "a libtorrent peer", &mut cmd, &mut stdins)?;
            members.push(Member::new(dir, log, slot));
        }
        for m in &members {
            self.wait_line(procs, m.slot, "a libtorrent peer", &m.log, "ready")?;
        }
        self.level_page_cache(n)?;
        let before = self.counters(n)?;
        let t0 = Instant::now();
        tell_all(&mut stdins, "go", "a libtorrent peer")?;
        let finish = Finish::Line("complete");
        let timed_out = self.wait_crowd(procs, &mut members, &finish, t0, self.run_timeout(n))?;
        let after = self.counters(n)?;
        procs.kill_all();
        self.result(c, members, timed_out, &before, &after)
    }

    /// Writes the node script, makes a v1 torrent of the file and opentracker's whitelist.
    fn make_torrent(&self, bt_dir: &Path, node: &Path) -> Result<PathBuf> {
        fs::create_dir_all(bt_dir)
            .map_err(io_err(format!("cannot create {}", bt_dir.display())))?;
        fs::write(node, BT_NODE).map_err(io_err(format!("cannot write {}", node.display())))?;
        let torrent = bt_dir.join("payload.torrent");
        let tracker = format!("http://{}:{TRACKER_PORT}/announce", self.net.index.ip);
        let node_s = path_arg(node);
        let source = path_arg(&self.source);
        let torrent_s = path_arg(&torrent);
        let out = net::run_ok(BT_PYTHON, &[&node_s, "make", &source, &tracker, &torrent_s])?;
        let hash = out.trim();
        if hash.len() != 40 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BenchError::Parse {
                command: format!("{BT_PYTHON} bt_node.py make"),
                detail: format!("not an info-hash: {hash:?}"),
            });
        }
        // Debian's opentracker serves only whitelisted info-hashes, one hex a line.
        let whitelist = bt_dir.join("whitelist");
        fs::write(&whitelist, format!("{hash}\n"))
            .map_err(io_err(format!("cannot write {}", whitelist.display())))?;
        Ok(torrent)
    }

    /// `shoal ARGS` in `host`'s namespace, stdout and stderr into `log`.
    fn shoal_cmd(&self, host: &Host, args: &[String], log: &Path) -> Result<Command> {
        let mut cmd = net::command_in(host, &self.shoal, args);
        to_log(&mut cmd, log)?;
        Ok(cmd)
    }

    /// Waits for `needle` in `log` (a server's start line), failing early if it exits.
    fn wait_line(
        &self,
        procs: &mut Procs,
        slot: usize,
        what: &str,
        log: &Path,
        needle: &str,
    ) -> Result<()> {
        let end = Instant::now() + STARTUP;
        loop {
            self.check_stop()?;
            if read_lossy(log).contains(needle) {
                return Ok(());
            }
            let exited = procs.get(slot).and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= end {
                return Err(BenchError::NotReady {
                    what: what.into(),
                    event: "start",
                    why: not_ready_why(exited, log),
                    log: log.display().to_string(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until something listens on TCP `port` inside `host`.
    fn wait_port(
        &self,
        procs: &mut Procs,
        slot: usize,
        what: &str,
        host: &Host,
        port: u16,
        log: &Path,
    ) -> Result<()> {
        let end = Instant::now() + STARTUP;
        let filter = format!("sport = :{port}");
        loop {
            self.check_stop()?;
            let out = net::run_ok(
                "ip",
                &["netns", "exec", &host.ns, "ss", "-Hltn", filter.as_str()],
            )?;
            if !out.trim().is_empty() {
                return Ok(());
            }
            let exited = procs.get(slot).and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= end {
                return Err(BenchError::NotReady {
                    what: what.into(),
                    event: "listen",
                    why: not_ready_why(exited, log),
                    log: log.display().to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `shoal search` shows the file with a holder: the crowd must not arrive
    /// before the seeder is registered.
    fn wait_registered(&self, index: &str) -> Result<()> {
        let end = Instant::now() + STARTUP;
        let args = strs(&["search", FILE_NAME, "--index", index, "--json"]);
        loop {
            self.check_stop()?;
            let out = net::command_in(&self.net.index, &self.shoal, &args)
                .output()
                .map_err(io_err("cannot run shoal search"))?;
            let registered = String::from_utf8_lossy(&out.stdout).lines().any(|line| {
                serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                    v["name"] == FILE_NAME && v["holders"].as_u64().is_some_and(|h| h >= 1)
                })
            });
            if registered {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(BenchError::NotReady {
                    what: "the seeder's file".into(),
                    event: "show in `shoal search`",
                    why: format!("not registered after {} s", STARTUP.as_secs()),
                    log: "seeder.log".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until every member has its copy or failed, or `timeout`; returns the time
    /// waited if it timed out.
    fn wait_crowd(
        &self,
        procs: &mut Procs,
        members: &mut [Member],
        finish: &Finish,
        t0: Instant,
        timeout: Duration,
    ) -> Result<Option<f64>> {
        loop {
            self.check_stop()?;
            for m in members.iter_mut().filter(|m| !m.finished()) {
                let now = t0.elapsed().as_secs_f64();
                let exited = procs.get(m.slot).and_then(|c| c.try_wait().ok().flatten());
                match finish {
                    Finish::File => {
                        let complete = fs::metadata(m.dir.join(FILE_NAME))
                            .is_ok_and(|meta| meta.len() == self.size);
                        if complete {
                            m.done = Some(now);
                        } else if let Some(line) =
                            read_lossy(&m.log).lines().find(|l| l.starts_with("error"))
                        {
                            m.failed = Some(line.to_string());
                        } else if let Some(status) = exited {
                            m.failed = Some(format!("exited ({status}): {}", telling_line(&m.log)));
                        }
                    }
                    Finish::Exit => match exited {
                        Some(status) if status.success() => m.done = Some(now),
                        Some(status) => {
                            m.failed = Some(format!("{status}: {}", telling_line(&m.log)));
                        }
                        None => {}
                    },
                    Finish::Record => {
                        let record = m.json.as_deref().and_then(get_record);
                        match (record, exited) {
                            (Some(Ok(())), _) => m.done = Some(now),
                            (Some(Err(e)), _) => m.failed = Some(e),
                            (None, Some(status)) if status.success() => m.done = Some(now),
                            (None, Some(status)) => {
                                m.failed = Some(format!("{status}: {}", telling_line(&m.log)));
                            }
                            (None, None) => {}
                        }
                    }
                    Finish::Line(needle) => {
                        if read_lossy(&m.log).contains(needle) {
                            m.done = Some(now);
                        } else if let Some(status) = exited {
                            m.failed = Some(format!("exited ({status}): {}", telling_line(&m.log)));
                        }
                    }
                }
            }
            if members.iter().all(Member::finished) {
                return Ok(None);
            }
            if t0.elapsed() >= timeout {
                return Ok(Some(t0.elapsed().as_secs_f64()));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Link byte counters: the seeder's, then each of the first `n` peers'.
    fn counters(&self, n: usize) -> Result<Vec<u64>> {
        std::iter::once(&self.net.seeder)
            .chain(self.net.peers.iter().take(n))
            .map(net::sent_bytes)
            .collect()
    }

    /// Checks every copy against the seeder's file and sums up the run.
    fn result(
        &self,
        contender: Contender,
        mut members: Vec<Member>,
        timed_out: Option<f64>,
        before: &[u64],
        after: &[u64],
    ) -> Result<RunResult> {
        for m in &mut members {
            if m.done.is_some() && !same_bytes(&self.source, &m.dir.join(FILE_NAME))? {
                m.done = None;
                m.failed = Some("its copy differs from the seeder's file".into());
            }
        }
        let sent = |i: usize| {
            after
                .get(i)
                .zip(before.get(i))
                .map_or(0, |(a, b)| a.saturating_sub(*b))
        };
        let mut failures = Vec::new();
        for (i, m) in members.iter().enumerate() {
            if let Some(why) = &m.failed {
                failures.push((format!("p{i}"), why.clone()));
            } else if m.done.is_none() {
                failures.push((format!("p{i}"), "no complete copy at the timeout".into()));
            }
        }
        Ok(RunResult {
            contender,
            peers: members.len(),
            times: members.iter().map(|m| m.done).collect(),
            failures,
            timed_out,
            seeder_sent: Some(sent(0)),
            peers_sent: Some((1..after.len()).map(sent).sum()),
            reported_upload: None,
            error: None,
        })
    }

    /// Writes and deletes a scratch file as large as the `n` copies about to be written.
    fn level_page_cache(&self, n: usize) -> Result<()> {
        let path = self.work.join("scratch.bin");
        let block = vec![0u8; 1 << 20];
        let total = self.size.saturating_mul(n as u64);
        let mut file =
            File::create(&path).map_err(io_err(format!("cannot create {}", path.display())))?;
        let mut written = 0u64;
        while written < total {
            let len =
                usize::try_from((total - written).min(block.len() as u64)).unwrap_or(block.len());
            file.write_all(&block[..len])
                .map_err(io_err(format!("cannot write {}", path.display())))?;
            written += len as u64;
        }
        drop(file);
        fs::remove_file(&path).map_err(io_err(format!("cannot remove {}", path.display())))
    }
}

/// The sum of the `uploaded` fields of the `get --json` records, if any has one.
fn reported_upload(logs: &Path, n: usize) -> Option<u64> {
    let mut total = None;
    for i in 0..n {
        for line in read_lossy(&logs.join(format!("p{i}.json"))).lines() {
            let up = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["uploaded"].as_u64());
            if let Some(up) = up {
                *total.get_or_insert(0) += up;
            }
        }
    }
    total
}

/// Whether the two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> Result<bool> {
    let open = |p: &Path| File::open(p).map_err(io_err(format!("cannot open {}", p.display())));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na =
            read_full(&mut fa, &mut ba).map_err(io_err(format!("cannot read {}", a.display())))?;
        let nb =
            read_full(&mut fb, &mut bb).map_err(io_err(format!("cannot read {}", b.display())))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end of the file.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// SIZE bytes of seeded random data (the same file every run).
fn write_payload(path: &Path, size: u64) -> Result<()> {
    if fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    eprintln!("writing the {} MiB file ...", size >> 20);
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let mut file =
        File::create(path).map_err(io_err(format!("cannot create {}", path.display())))?;
    let mut block = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let len = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        rng.fill_bytes(&mut block[..len]);
        file.write_all(&block[..len])
            .map_err(io_err(format!("cannot write {}", path.display())))?;
        left -= len as u64;
    }
    file.sync_all()
        .map_err(io_err(format!("cannot write {}", path.display())))
}

/// Starts `cmd` with a piped stdin, kept in `stdins` (the line that starts the clock goes
/// there); returns the process's slot.
fn spawn_with_stdin(
    procs: &mut net::Procs,
    what: &'static str,
    cmd: &mut Command,
    stdins: &mut Vec<ChildStdin>,
) -> Result<usize> {
    let slot = procs.spawn(what, cmd.stdin(Stdio::piped()))?;
    if let Some(stdin) = procs.get(slot).and_then(|child| child.stdin.take()) {
        stdins.push(stdin);
    }
    Ok(slot)
}

/// Writes `line` to every one of `stdins` (`what` names them in the error).
fn tell_all(stdins: &mut [ChildStdin], line: &str, what: &str) -> Result<()> {
    for stdin in stdins {
        writeln!(stdin, "{line}")
            .and_then(|()| stdin.flush())
            .map_err(io_err(format!("cannot write to {what}")))?;
    }
    Ok(())
}

fn log_file(path: &Path) -> Result<File> {
    File::create(path).map_err(io_err(format!("cannot create {}", path.display())))
}

/// Sends `cmd`'s stdout and stderr to one new file `log`: one open file, so the two share
/// one offset and neither overwrites the other's lines.
fn to_log(cmd: &mut Command, log: &Path) -> Result<()> {
    let file = log_file(log)?;
    let clone = file
        .try_clone()
        .map_err(io_err(format!("cannot share {}", log.display())))?;
    cmd.stdout(file).stderr(clone);
    Ok(())
}

/// A file's text so far ("" if it is not there yet).
fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The line of a log that says what went wrong: the first that starts with `error` or
/// `shoal:` (clap's and shoal's error lines), else the last one.
fn telling_line(path: &Path) -> String {
    let text = read_lossy(path);
    let lines = || text.lines().map(str::trim).filter(|l| !l.is_empty());
    lines()
        .find(|l| l.starts_with("error") || l.starts_with("shoal:"))
        .or_else(|| lines().next_back())
        .unwrap_or("(no output)")
        .to_string()
}

/// Why a server is not ready: how it exited and its telling line, or the wait ran out.
fn not_ready_why(exited: Option<std::process::ExitStatus>, log: &Path) -> String {
    match exited {
        Some(status) => format!("it exited ({status}): {}", telling_line(log)),
        None => format!("not within {} s", STARTUP.as_secs()),
    }
}

/// The outcome in a `shoal get --json` file so far: `Ok` once a record says the file was
/// downloaded (or was present), `Err` with its message if one says `error`.
fn get_record(path: &Path) -> Option<Result<(), String>> {
    read_lossy(path).lines().find_map(|line| {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        if let Some(e) = v.get("error") {
            return Some(Err(format!("error: {}", e.as_str().unwrap_or("?"))));
        }
        matches!(v["status"].as_str(), Some("downloaded" | "present")).then_some(Ok(()))
    })
}

/// Owned arguments.
fn strs(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_string()).collect()
}

fn path_arg(path: &Path) -> String {
    path.display().to_string()
}

fn libtorrent_version() -> String {
    Command::new(BT_PYTHON)
        .args(["-c", "import libtorrent as lt; print(lt.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// Whether this process runs as root (effective uid 0, from /proc/self/status).
fn is_root() -> bool {
    let Ok(file) = File::open("/proc/self/status") else {
        return false;
    };
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("Uid:")
                .and_then(|rest| rest.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `program` in PATH, if it is there and executable.
fn which(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Removes the temporary work folders of benches that were killed before they could.
fn remove_stale_work_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let over = name
            .to_str()
            .and_then(|n| net::run_id(n, WORK_PREFIX))
            .is_some_and(net::run_is_over);
        if over && fs::remove_dir_all(entry.path()).is_ok() {
            eprintln!(
                "removed {}, left by an earlier run that was killed",
                entry.path().display()
            );
        }
    }
}

/// Removes a folder on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_copy_is_infinitely_late() {
        let mut r = RunResult::failed(Contender::Consoles, 3, String::new());
        r.error = None;
        r.times = vec![Some(1.0), Some(2.0), None];
        assert_eq!(r.last(), None);
        assert_eq!(r.median(), Some(2.0));
        r.times = vec![Some(1.0), None, None];
        assert_eq!(r.median(), None);
        r.times = vec![Some(1.0), Some(3.0), Some(2.0)];
        assert_eq!(r.last(), Some(3.0));
    }

    #[test]
    fn the_node_script_is_embedded() {
        assert!(BT_NODE.contains("v1_only"));
    }
}
