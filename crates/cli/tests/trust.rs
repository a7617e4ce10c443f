//! Answers a user can trust, with the real binary on 127.0.0.1: a name whose content differs
//! from the folder's, a search cut at its limit, a closed pipe, one log line per transfer,
//! `--quiet`, SIGTERM, the config file and the environment, completions and the man page.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::Stdio;

mod process;
use process::{Server, get, http_get, run, seeded, shoal, start_long_lease_peer, write_file};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn peer_args<'a>(dir: &'a str, index: &'a str) -> Vec<&'a str> {
    vec![
        "peer",
        "--dir",
        dir,
        "--index",
        index,
        "--no-console",
        "--lease",
        "3600",
    ]
}

#[test]
fn get_a_name_the_folder_holds_with_other_content_names_both_ids_and_fails() {
    let swarm = seeded(&[("notes.txt", 10_000)]);
    let (index, seed) = (&swarm.addr, &swarm.seed);
    let out = swarm.root.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), b"my own notes, not the listed ones").unwrap();
    let here = blake3::hash(b"my own notes, not the listed ones")
        .to_hex()
        .to_string();
    let listed = blake3::hash(&std::fs::read(seed.join("notes.txt")).unwrap())
        .to_hex()
        .to_string();

    let got = get("notes.txt", index, &out, &["--no-share"]);
    let stderr = stderr_of(&got);
    assert!(!got.status.success(), "{stderr}");
    assert!(
        stderr.contains(&here[..12]) && stderr.contains(&listed[..12]),
        "both ids must be named: {stderr}"
    );
    assert!(stderr.contains("other content"), "{stderr}");
    // Nothing was touched.
    assert_eq!(
        std::fs::read(out.join("notes.txt")).unwrap(),
        b"my own notes, not the listed ones"
    );
    // The same content stays a quiet no-op.
    let same = swarm.root.path().join("same");
    std::fs::create_dir_all(&same).unwrap();
    std::fs::copy(seed.join("notes.txt"), same.join("notes.txt")).unwrap();
    let got = get("notes.txt", index, &same, &["--no-share"]);
    assert!(got.status.success(), "{}", stderr_of(&got));
}

#[test]
fn search_says_when_it_stopped_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    for n in 0..3 {
        write_file(dir.path(), &format!("track-{n}.ogg"), 1000 + n);
    }
    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let (_peer, _) = start_long_lease_peer(dir.path(), &index);
    let cut = run(&["search", "track", "--index", &index, "--limit", "2"]);
    assert!(cut.status.success());
    assert_eq!(
        String::from_utf8_lossy(&cut.stdout).lines().count(),
        3,
        "header and 2 rows"
    );
    assert!(
        stderr_of(&cut).contains("stopped at --limit 2"),
        "{}",
        stderr_of(&cut)
    );
    let json = run(&[
        "search", "track", "--index", &index, "--limit", "2", "--json",
    ]);
    assert_eq!(String::from_utf8_lossy(&json.stdout).lines().count(), 2);
    assert!(stderr_of(&json).contains("stopped at --limit 2"));
    let all = run(&["search", "track", "--index", &index, "--limit", "10"]);
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 4);
    assert!(!stderr_of(&all).contains("--limit"), "{}", stderr_of(&all));
}

/// Runs `args`, reads `lines` lines of its stdout, closes the pipe, and returns the exit
/// status and stderr.
fn read_then_close(args: &[&str], lines: usize) -> (std::process::ExitStatus, String) {
    let mut child = shoal()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    for _ in 0..lines {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "fewer than {lines} lines"
        );
    }
    drop(out); // like `| head -2`
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status, stderr)
}

#[test]
fn demo_and_search_into_a_closed_pipe_end_quietly() {
    let (status, stderr) = read_then_close(&["demo", "--largest-mib", "1"], 2);
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    for n in 0..50 {
        write_file(dir.path(), &format!("file-{n:02}.bin"), 100);
    }
    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let (_peer, _) = start_long_lease_peer(dir.path(), &index);
    let (status, stderr) = read_then_close(&["search", "--index", &index], 1);
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

/// Serves a 2 MiB file (8 chunks) to one `get`, then stops the seeder with SIGTERM; returns
/// the seeder's log lines.
fn seeder_log_of_one_get(extra: &[&str]) -> Vec<String> {
    let root = tempfile::tempdir().unwrap();
    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let seed = root.path().join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    write_file(&seed, "big.bin", 2 << 20);
    let seed_path = seed.to_str().unwrap();
    let mut args = peer_args(seed_path, &index);
    args.extend_from_slice(extra);
    let (mut seeder, _) = Server::start_with(&args, &[("RUST_LOG", "")], true);
    let out = root.path().join("out");
    let got = get("big.bin", &index, &out, &[]);
    assert!(got.status.success(), "{}", stderr_of(&got));
    let log = seeder.log.take().unwrap();
    if extra.is_empty() {
        // The transfer's line comes when its connection ends (the `get` has exited).
        loop {
            let line = log
                .recv_timeout(process::WAIT)
                .expect("no transfer line in time");
            if line.contains("sent big.bin to") {
                break;
            }
        }
    }
    assert!(seeder.terminate().success());
    let mut lines: Vec<String> = log.into_iter().collect();
    if extra.is_empty() {
        lines.push("sent big.bin to (the line waited for)".into());
    }
    lines
}

#[test]
fn serving_logs_one_line_per_transfer_not_per_chunk_request() {
    let lines = seeder_log_of_one_get(&[]);
    let sent: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("sent big.bin to"))
        .collect();
    assert_eq!(sent.len(), 1, "one transfer, one line: {lines:#?}");
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("served big.bin chunks") || l.contains("requested")),
        "per-request lines at the default level: {lines:#?}"
    );
}

#[test]
fn quiet_serving_logs_no_events() {
    let lines = seeder_log_of_one_get(&["--quiet"]);
    assert!(!lines.iter().any(|l| l.contains(" INFO ")), "{lines:#?}");
}

#[test]
fn sigterm_unregisters_a_peer_at_once() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "song.ogg", 5000);
    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let (mut peer, _) = start_long_lease_peer(dir.path(), &index);
    let listed = |index: &str| {
        let out = run(&["search", "song.ogg", "--index", index, "--json"]);
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    assert_eq!(listed(&index), 1);
    let status = peer.terminate();
    assert!(status.success(), "{status}");
    // Gone at once, not a lease (an hour) later.
    assert_eq!(listed(&index), 0);
}

/// The indexes a peer's status page says it announces to.
fn announced_to(page: &str) -> Vec<String> {
    let (code, body) = http_get(page, "/api/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["addr"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn config_precedence_flag_over_env_over_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_a, a) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let (_b, b) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let (_c, c) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let config = dir.path().join("shoal.toml");
    let folder = dir.path().join("shared");
    std::fs::write(
        &config,
        format!(
            "[peer]\ndir = {:?}\nindex = [{a:?}]\nno-console = true\nhttp = \"127.0.0.1:0\"\nlease = 3600\n",
            folder.to_str().unwrap()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let start = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["peer", "--config", cfg];
        all.extend_from_slice(args);
        let (mut peer, _) = Server::start_with(&all, env, false);
        let page = peer.status_page();
        (peer, page)
    };
    // The file alone: its index, its folder, its status page.
    let (peer, page) = start(&[], &[]);
    assert_eq!(announced_to(&page), vec![a.clone()]);
    assert!(folder.is_dir());
    drop(peer);
    // The environment beats the file.
    let (peer, page) = start(&[], &[("SHOAL_INDEX", &b)]);
    assert_eq!(announced_to(&page), vec![b.clone()]);
    drop(peer);
    // A flag beats both.
    let (peer, page) = start(&["--index", &c], &[("SHOAL_INDEX", &b)]);
    assert_eq!(announced_to(&page), vec![c.clone()]);
    drop(peer);
}

#[test]
fn config_unknown_key_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shoal.toml");
    std::fs::write(&config, "[index]\nlisten = \"127.0.0.1:0\"\nleese = 30\n").unwrap();
    let out = run(&["index", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("unknown key `leese` in [index]"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("shoal") && script.contains("max-sources"),
            "{shell}: {script}"
        );
    }
    let out = run(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH shoal"),
        "{page}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["man", "--out", dir.path().to_str().unwrap()]);
    assert!(out.status.success());
    for page in ["shoal.1", "shoal-peer.1", "shoal-get.1"] {
        assert!(dir.path().join(page).is_file(), "{page}");
    }
}

#[test]
fn a_peer_whose_only_index_is_down_serves_and_registers_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "song.ogg", 5000);
    // A port nobody listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let index = format!("127.0.0.1:{port}");
    let mut args = peer_args(dir.path().to_str().unwrap(), &index);
    args.truncate(args.len() - 2);
    args.extend_from_slice(&["--lease", "3"]);
    // It starts and serves (`listening on` is printed) although no index answers.
    let (mut peer, _addr) = Server::start_with(&args, &[("RUST_LOG", "info")], true);
    let log = peer.log.take().unwrap();
    // A few heartbeats (one a second) fail meanwhile; the log says so once.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (_index, _) = Server::start(&["index", "--listen", &index]);
    let mut down_lines = Vec::new();
    loop {
        let line = log
            .recv_timeout(process::WAIT)
            .expect("the peer never registered");
        if line.contains(&format!("index {index} is back")) {
            break;
        }
        if line.contains(&index) {
            down_lines.push(line);
        }
    }
    let first = run(&["search", "song.ogg", "--index", &index, "--json"]);
    assert_eq!(String::from_utf8_lossy(&first.stdout).lines().count(), 1);
    let about_the_index: Vec<&String> = down_lines
        .iter()
        .filter(|l| l.contains("did not take") || l.contains("not answering"))
        .collect();
    assert_eq!(
        about_the_index.len(),
        1,
        "one line per state change: {down_lines:#?}"
    );
}

#[test]
fn get_a_name_with_several_contents_says_which_it_took_and_id_selects_another() {
    let root = tempfile::tempdir().unwrap();
    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let mut seeders = Vec::new();
    let mut ids = Vec::new();
    for n in 0..2 {
        let dir = root.path().join(format!("seed{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        write_file(&dir, "song.ogg", 4000 + n);
        let bytes = std::fs::read(dir.join("song.ogg")).unwrap();
        ids.push((blake3::hash(&bytes).to_hex().to_string(), bytes));
        seeders.push(start_long_lease_peer(&dir, &index).0);
    }
    // One holder each: the index takes the smallest id.
    ids.sort();
    let (taken, other) = (&ids[0], &ids[1]);
    let out = root.path().join("out");
    let got = get("song.ogg", &index, &out, &["--no-share"]);
    let stderr = stderr_of(&got);
    assert!(got.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("took {}", &taken.0[..12]))
            && stderr.contains("1 other content")
            && stderr.contains(&other.0[..12]),
        "{stderr}"
    );
    assert_eq!(std::fs::read(out.join("song.ogg")).unwrap(), taken.1);

    let out2 = root.path().join("out2");
    let pick = &other.0[..12];
    let got = get("song.ogg", &index, &out2, &["--id", pick, "--no-share"]);
    assert!(got.status.success(), "{}", stderr_of(&got));
    assert_eq!(std::fs::read(out2.join("song.ogg")).unwrap(), other.1);

    // Too short, or matching nothing: refused, listing the candidates.
    let got = get("song.ogg", &index, &out2, &["--id", &other.0[..6]]);
    assert!(!got.status.success());
    assert!(
        stderr_of(&got).contains("at least 12 hex digits"),
        "{}",
        stderr_of(&got)
    );
    let got = get("song.ogg", &index, &out2, &["--id", "000000000000"]);
    assert!(!got.status.success());
    let stderr = stderr_of(&got);
    assert!(
        stderr.contains(&taken.0[..12]) && stderr.contains(&other.0[..12]),
        "{stderr}"
    );
}

#[test]
fn console_answers_help_and_says_what_it_queued() {
    let swarm = seeded(&[("a.bin", 3000), ("b.bin", 4000)]);
    let index = &swarm.addr;
    let mine = swarm.root.path().join("mine");
    let args = [
        "peer",
        "--dir",
        mine.to_str().unwrap(),
        "--index",
        index,
        "--lease",
        "3600",
    ];
    let (mut console, _) = Server::start_with(&args, &[], true);
    let log = console.log.take().unwrap();
    let greeting = log.recv_timeout(process::WAIT).unwrap();
    assert!(greeting.contains("`help` lists the commands"), "{greeting}");
    console.type_line("help");
    assert_eq!(console.next_line(), "commands:");
    while !console.next_line().starts_with("end of input") {}
    console.type_line("a.bin");
    console.type_line("b.bin");
    let first = console.next_line();
    let second = console.next_line();
    assert!(
        first.starts_with("ok") && first.contains("a.bin"),
        "{first}"
    );
    assert!(
        second.starts_with("ok") && second.contains("b.bin"),
        "{second}"
    );
    // Both were written before their results; the log channel may lag behind stdout.
    let mut feedback = Vec::new();
    while feedback.len() < 2 {
        let line = log.recv_timeout(process::WAIT).expect("no queued feedback");
        if line.starts_with("queued") {
            feedback.push(line);
        }
    }
    assert!(feedback[0].starts_with("queued a.bin: ") && feedback[1].starts_with("queued b.bin: "));
    console.type_line("queue");
    assert_eq!(console.next_line(), "downloading nothing; waiting: none");
}
