//! Holders are keys, as a user sees it: the real `shoal` binary over TLS (its default), a
//! peer with an identity of its own; `search` and `get --json` show the node id the index
//! recorded for it.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use tempfile::TempDir;

mod process;
use process::{Server, get, run, write_file};

#[test]
fn search_and_get_show_the_holders_node_ids() {
    let dir = TempDir::new().unwrap();
    let keys = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    let bytes = write_file(dir.path(), "song.ogg", 100_000);
    // The peer's own identity, not the one the other commands of this test use.
    let key_file = keys.path().join("holder.pem");
    let (identity, _) = shoal_proto::tls::Identity::load_or_create(&key_file).unwrap();
    let id = identity.node_id();

    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let (_peer, _) = Server::start(&[
        "peer",
        "--dir",
        dir.path().to_str().unwrap(),
        "--index",
        &index,
        "--identity",
        key_file.to_str().unwrap(),
        "--no-console",
    ]);

    let found = run(&["search", "song", "--index", &index, "--json"]);
    assert!(found.status.success(), "{found:?}");
    let line: serde_json::Value =
        serde_json::from_str(String::from_utf8(found.stdout).unwrap().trim()).unwrap();
    let nodes = line["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{line}");
    assert_eq!(nodes[0]["node"], id.to_string());
    let holder = nodes[0]["holder"].as_str().unwrap().to_string();

    // The table shows the short id.
    let table = run(&["search", "song", "--index", &index]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.lines().next().unwrap().ends_with("NODES"), "{table}");
    assert!(table.contains(&id.short()), "{table}");

    let got = get("song.ogg", &index, out.path(), &["--json"]);
    assert!(got.status.success(), "{got:?}");
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8(got.stdout).unwrap().trim()).unwrap();
    assert_eq!(
        report["nodes"],
        serde_json::json!([{"holder": holder, "node": id.to_string()}])
    );
    assert_eq!(std::fs::read(out.path().join("song.ogg")).unwrap(), bytes);
}

#[test]
fn an_impostor_on_a_holders_port_is_named_and_refused() {
    let keys = TempDir::new().unwrap();
    let real_dir = TempDir::new().unwrap();
    let fake_dir = TempDir::new().unwrap();
    let out = TempDir::new().unwrap();
    write_file(real_dir.path(), "song.ogg", 100_000);
    write_file(fake_dir.path(), "song.ogg", 100_000);
    let real_key = keys.path().join("real.pem");
    let fake_key = keys.path().join("fake.pem");
    let real = shoal_proto::tls::Identity::load_or_create(&real_key)
        .unwrap()
        .0
        .node_id();
    let fake = shoal_proto::tls::Identity::load_or_create(&fake_key)
        .unwrap()
        .0
        .node_id();

    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let peer = |dir: &TempDir, key: &std::path::Path, listen: &str| {
        Server::start_with(
            &[
                "peer",
                "--dir",
                dir.path().to_str().unwrap(),
                "--index",
                &index,
                "--identity",
                key.to_str().unwrap(),
                "--listen",
                listen,
                "--no-console",
            ],
            &[],
            true,
        )
    };
    let (holder, addr) = peer(&real_dir, &real_key, "127.0.0.1:0");
    // The real holder dies without a word (its registration stays until its lease lapses),
    // and another key takes its port.
    drop(holder);
    let (_impostor, same) = peer(&fake_dir, &fake_key, &addr);
    assert_eq!(same, addr);

    let got = get("song.ogg", &index, out.path(), &[]);
    assert!(!got.status.success());
    let stderr = String::from_utf8(got.stderr).unwrap();
    assert!(
        stderr.contains(&format!("presented node id {fake}, index said {real}")),
        "{stderr}"
    );
    assert!(!out.path().join("song.ogg").exists());
}
