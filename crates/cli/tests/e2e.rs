//! End-to-end: the real `shoal` binary, an index and two peers on 127.0.0.1 with free ports,
//! then `get`, `search --json`, the peer console and the refusals a user would see.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::thread;

use tempfile::TempDir;

mod process;
use process::{Server, WAIT, get_ok, line_channel, run, shoal, start_long_lease_peer, write_file};

#[test]
fn index_two_peers_get_search_and_console() {
    let a_dir = TempDir::new().unwrap();
    let b_dir = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let alpha = write_file(a_dir.path(), "alpha.bin", 3 << 20);
    let beta = write_file(b_dir.path(), "beta.txt", 5000);

    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    assert!(
        index.starts_with("127.0.0.1:") && !index.ends_with(":0"),
        "{index}"
    );
    let a_path = a_dir.path().to_str().unwrap();
    let b_path = b_dir.path().to_str().unwrap();
    // A peer prints `listening on` only after it registered its folder.
    let (_a, _) = Server::start(&["peer", "--dir", a_path, "--index", &index, "--no-console"]);
    let (mut b, _) = Server::start(&["peer", "--dir", b_path, "--index", &index]);

    // One-shot get.
    let stdout = get_ok("alpha.bin", &index, out.path());
    assert_eq!(std::fs::read(out.path().join("alpha.bin")).unwrap(), alpha);
    assert!(stdout.contains("verified"), "{stdout}");

    // The console of peer B fetches alpha.bin into its folder and then serves it.
    b.type_line("alpha.bin");
    let line = b.next_line();
    assert!(
        line.starts_with("ok") && line.contains("alpha.bin"),
        "{line}"
    );
    assert_eq!(
        std::fs::read(b_dir.path().join("alpha.bin")).unwrap(),
        alpha
    );
    b.type_line("beta.txt");
    let line = b.next_line();
    assert!(line.starts_with("present"), "{line}");

    // search --json: one object per line, holders counted.
    let found = run(&["search", "", "--index", &index, "--json"]);
    assert!(found.status.success());
    let mut rows: Vec<serde_json::Value> = String::from_utf8(found.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    rows.sort_by_key(|r| r["name"].as_str().unwrap().to_string());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["name"], "alpha.bin");
    assert_eq!(rows[0]["size"], alpha.len() as u64);
    assert_eq!(rows[0]["holders"], 2);
    assert_eq!(rows[0]["id"].as_str().unwrap().len(), 64);
    assert_eq!(rows[1]["name"], "beta.txt");
    assert_eq!(rows[1]["size"], beta.len() as u64);
    assert_eq!(rows[1]["holders"], 1);

    // Case-insensitive substring, people's table.
    let found = run(&["search", "ALP", "--index", &index]);
    let table = String::from_utf8(found.stdout).unwrap();
    assert!(
        table.contains("alpha.bin") && !table.contains("beta.txt"),
        "{table}"
    );

    // Refusals: one readable line on stderr, non-zero exit, nothing written.
    for (name, expect) in [
        ("nosuch.bin", "no peer holds"),
        ("../escape", "invalid file name"),
        ("a/b", "invalid file name"),
    ] {
        let failed = run(&[
            "get",
            name,
            "--index",
            &index,
            "--out",
            out.path().to_str().unwrap(),
        ]);
        assert!(!failed.status.success(), "{name}");
        let stderr = String::from_utf8(failed.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expect), "{name}: {stderr}");
    }
    let mut names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["alpha.bin"]);

    // No index at all: a clear error, not a hang.
    let dead = run(&["search", "x", "--index", "127.0.0.1:9"]);
    assert!(!dead.status.success());
    assert_eq!(String::from_utf8(dead.stderr).unwrap().lines().count(), 1);
}

#[test]
fn version_and_help_show_examples() {
    let version = run(&["--version"]);
    assert!(
        String::from_utf8(version.stdout)
            .unwrap()
            .starts_with("shoal ")
    );
    for cmd in ["index", "peer", "get", "search", "demo"] {
        let help = run(&[cmd, "--help"]);
        let text = String::from_utf8(help.stdout).unwrap();
        assert!(text.contains("Example"), "{cmd} --help lacks an example");
    }
}

#[test]
fn a_holder_killed_during_get_does_not_stop_the_download() {
    let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
    let out = TempDir::new().unwrap();
    let bytes: Vec<u8> = (0..(48usize << 20))
        .map(|i| (i % 251) as u8 ^ (i >> 20) as u8)
        .collect();
    for dir in &dirs {
        std::fs::write(dir.path().join("big.bin"), &bytes).unwrap();
    }
    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    // The holders log each batch they serve at debug level (at info, one line per transfer,
    // when it ends): that is how the test knows a transfer is under way.
    let mut holders: Vec<Server> = dirs
        .iter()
        .map(|dir| {
            let args = [
                "peer",
                "--dir",
                dir.path().to_str().unwrap(),
                "--index",
                &index,
                "--no-console",
            ];
            Server::start_with(&args, &[("RUST_LOG", "info,shoal_peer=debug")], true).0
        })
        .collect();

    let get = shoal()
        .args([
            "get",
            "big.bin",
            "--index",
            &index,
            "--out",
            out.path().to_str().unwrap(),
            "--json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Kill the first holder seen serving a batch, while the download is still running: the
    // holders' log lines meet on one channel, tagged with their holder.
    let (tx, served) = channel();
    for (n, holder) in holders.iter_mut().enumerate() {
        let log = holder.log.take().unwrap();
        let tx = tx.clone();
        thread::spawn(move || {
            for line in log {
                if line.contains("served big.bin") && tx.send(n).is_err() {
                    break;
                }
            }
        });
    }
    let victim = served.recv_timeout(WAIT).ok();
    let victim = victim.expect("no holder served a batch");
    holders[victim].child.kill().unwrap();
    holders[victim].child.wait().unwrap();

    let output = get.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(std::fs::read(out.path().join("big.bin")).unwrap(), bytes);
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8(output.stdout).unwrap().trim()).unwrap();
    assert_eq!(report["status"], "downloaded");
    assert_eq!(report["size"], bytes.len() as u64);
    let served: u64 = report["bytes_per_holder"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(served, bytes.len() as u64);
}

#[test]
fn killing_one_of_two_indexes_stops_nothing() {
    let shared = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let bytes = write_file(shared.path(), "survivor.bin", 200_000);
    let (index_a, a) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let (_index_b, b) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let both = format!("{a},{b}");
    // The peer announces to both indexes before it says it is listening.
    let (_peer, _) = Server::start(&[
        "peer",
        "--dir",
        shared.path().to_str().unwrap(),
        "--index",
        &both,
        "--no-console",
    ]);
    let mut index_a = index_a;
    index_a.child.kill().unwrap();
    index_a.child.wait().unwrap();

    get_ok("survivor.bin", &both, out.path());
    assert_eq!(
        std::fs::read(out.path().join("survivor.bin")).unwrap(),
        bytes
    );
    let found = run(&["search", "survivor", "--index", &both, "--json"]);
    assert!(found.status.success());
    assert!(
        String::from_utf8(found.stdout)
            .unwrap()
            .contains("\"holders\":1")
    );
}

#[test]
fn a_durable_index_restarted_under_running_peers_lists_their_files_at_once() {
    let data = TempDir::new().unwrap();
    let shared = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let bytes = write_file(shared.path(), "kept.bin", 300_000);
    let data_dir = data.path().to_str().unwrap();
    let index_args = |listen| {
        [
            "index", "--listen", listen, "--data", data_dir, "--lease", "3600",
        ]
    };
    let (mut index, addr) = Server::start(&index_args("127.0.0.1:0"));
    // Whatever the restarted index lists, it read from its data folder.
    let (_peer, _) = start_long_lease_peer(shared.path(), &addr);
    index.child.kill().unwrap();
    index.child.wait().unwrap();

    // Same address, same data, and at once: the peer's file is listed and can be fetched.
    let (_index, again) = Server::start(&index_args(&addr));
    assert_eq!(again, addr);
    let found = run(&["search", "kept", "--index", &addr, "--json"]);
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    let listing = String::from_utf8(found.stdout).unwrap();
    assert!(
        listing.contains("\"name\":\"kept.bin\"") && listing.contains("\"holders\":1"),
        "{listing}"
    );
    get_ok("kept.bin", &addr, out.path());
    assert_eq!(std::fs::read(out.path().join("kept.bin")).unwrap(), bytes);
}

#[test]
fn a_listed_holder_that_is_gone_gives_one_readable_line() {
    let shared = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    write_file(shared.path(), "orphan.bin", 100_000);
    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    // The index keeps listing the holder after it is killed.
    let (mut peer, peer_addr) = start_long_lease_peer(shared.path(), &index);
    peer.child.kill().unwrap();
    peer.child.wait().unwrap();

    let failed = run(&[
        "get",
        "orphan.bin",
        "--index",
        &index,
        "--out",
        out.path().to_str().unwrap(),
    ]);
    assert!(!failed.status.success());
    let stderr = String::from_utf8(failed.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no holder of orphan.bin") && stderr.contains(&peer_addr),
        "{stderr}"
    );
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(!stderr.contains("os error"), "{stderr}");
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn six_console_peers_asking_at_once_swarm_and_upload_to_each_other() {
    let root = tempfile::tempdir().unwrap();
    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let seed_dir = root.path().join("seeder");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let file = write_file(&seed_dir, "release.bin", 24 << 20);
    // One upload slot: the seeder is the bottleneck, as on a real uplink.
    let (_seeder, _) = Server::start(&[
        "peer",
        "--dir",
        seed_dir.to_str().unwrap(),
        "--index",
        &index,
        "--no-console",
        "--max-uploads",
        "1",
    ]);
    let mut crowd: Vec<(Server, std::path::PathBuf)> = (0..6)
        .map(|n| {
            let dir = root.path().join(format!("peer{n}"));
            let (server, _) = Server::start_with(
                &["peer", "--dir", dir.to_str().unwrap(), "--index", &index],
                &[("RUST_LOG", "shoal_peer::download=info,warn")],
                true,
            );
            (server, dir)
        })
        .collect();
    for (peer, _) in &mut crowd {
        peer.type_line("release.bin");
    }
    let mut uploaded = 0u64;
    for (peer, dir) in &mut crowd {
        let line = peer.next_line();
        assert!(line.starts_with("ok      release.bin"), "{line}");
        assert!(std::fs::read(dir.join("release.bin")).unwrap() == file);
        let log = peer.log.as_ref().unwrap();
        let done = log
            .iter()
            .find(|l| l.contains("downloaded release.bin"))
            .unwrap();
        let bytes: u64 = done
            .split("uploaded ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no upload count in {done:?}"));
        uploaded += bytes;
    }
    // The consoles served each other at least one copy's worth while downloading.
    assert!(
        uploaded >= file.len() as u64,
        "peers uploaded only {uploaded} B to each other"
    );
}

#[test]
fn a_seeding_get_serves_then_withdraws_everything_on_ctrl_c() {
    let root = tempfile::tempdir().unwrap();
    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let seed_dir = root.path().join("seeder");
    std::fs::create_dir_all(&seed_dir).unwrap();
    write_file(&seed_dir, "song.ogg", 300_000);
    let (_seeder, _) = start_long_lease_peer(&seed_dir, &index);
    let out = root.path().join("out");
    let mut get = shoal()
        .args(["get", "song.ogg", "--index", &index, "--out"])
        .arg(&out)
        .args(["--json", "--seed", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = line_channel(get.stdout.take().unwrap());
    let record = lines.recv_timeout(WAIT).unwrap();
    assert!(record.contains("\"downloaded\""), "{record}");
    let holders = |index: &str| -> u64 {
        let out = run(&["search", "song.ogg", "--index", index, "--json"]);
        let line = String::from_utf8(out.stdout).unwrap();
        let hit: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        hit["holders"].as_u64().unwrap()
    };
    // Seeding: the new copy is a holder now.
    assert_eq!(holders(&index), 2);
    let killed = Command::new("kill")
        .args(["-INT", &get.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = get.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    // Gone from the index at once, not a lease later.
    assert_eq!(holders(&index), 1);
}

#[test]
fn get_with_a_listen_address_that_is_not_one_is_refused_in_one_line() {
    let out = tempfile::tempdir().unwrap();
    let got = run(&[
        "get",
        "song.ogg",
        "--index",
        "127.0.0.1:1",
        "--out",
        out.path().to_str().unwrap(),
        "--listen",
        "nonsense",
    ]);
    assert!(!got.status.success());
    let stderr = String::from_utf8_lossy(&got.stderr);
    assert!(
        stderr.contains("invalid peer address \"nonsense\"") && stderr.lines().count() == 1,
        "{stderr}"
    );
}
