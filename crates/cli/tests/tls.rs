//! TLS and private swarms with the real `shoal` binary on 127.0.0.1: identities, a swarm set
//! up from the README's commands, strangers and revoked members refused with a clear line,
//! and plaintext on one side only caught in one line, never a hang.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod process;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use process::{Server, get, http_get, run, write_file};
use tempfile::TempDir;

/// `shoal id --identity FILE`: its last word.
fn node_id(identity: &Path) -> String {
    let out = run(&["id", "--identity", identity.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().last().unwrap().to_string()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A private swarm made with the CLI: the authority and, per node name, an identity and a
/// member certificate.
struct Swarm {
    dir: TempDir,
}

impl Swarm {
    fn new() -> Swarm {
        let dir = TempDir::new().unwrap();
        let authority = dir.path().join("team.swarm");
        let out = run(&[
            "swarm",
            "new",
            "--out",
            authority.to_str().unwrap(),
            "--name",
            "team",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        Swarm { dir }
    }

    fn identity(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.identity"))
    }

    fn member(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.member"))
    }

    /// Creates `node`'s identity and admits it; returns its id.
    fn admit(&self, node: &str) -> String {
        let id = node_id(&self.identity(node));
        let out = run(&[
            "swarm",
            "admit",
            "--swarm",
            self.dir.path().join("team.swarm").to_str().unwrap(),
            "--id",
            &id,
            "--out",
            self.member(node).to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        id
    }

    /// `--identity FILE --member FILE` of an admitted node.
    fn flags(&self, node: &str) -> Vec<String> {
        vec![
            "--identity".into(),
            self.identity(node).to_str().unwrap().into(),
            "--member".into(),
            self.member(node).to_str().unwrap().into(),
        ]
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn an_identity_is_created_once_and_its_id_is_the_last_word() {
    let dir = TempDir::new().unwrap();
    let file = dir.path().join("me.pem");
    let first = run(&["id", "--identity", file.to_str().unwrap()]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("created a new identity"),
        "{}",
        stderr(&first)
    );
    let id = node_id(&file);
    assert_eq!(
        String::from_utf8_lossy(&first.stdout)
            .split_whitespace()
            .last(),
        Some(id.as_str())
    );
    // 13 groups of 4 base32 characters, the same on every run.
    assert_eq!(id.split('-').count(), 13, "{id}");
    assert_eq!(node_id(&file), id);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the identity is readable by others: {mode:o}"
        );
    }
}

#[test]
fn a_private_swarm_from_the_readme_serves_members_and_refuses_strangers() {
    let swarm = Swarm::new();
    for node in ["index", "peer", "getter", "revoked"] {
        swarm.admit(node);
    }
    let revoked_list = swarm.dir.path().join("revoked.txt");
    std::fs::write(&revoked_list, "# nobody yet\n").unwrap();

    // The index takes its identity, membership and revocation list from its config file.
    let config = swarm.dir.path().join("shoal.toml");
    std::fs::write(
        &config,
        format!(
            "[index]\nlisten = \"127.0.0.1:0\"\nidentity = {:?}\nmember = {:?}\nrevoked = {:?}\n",
            swarm.identity("index").to_str().unwrap(),
            swarm.member("index").to_str().unwrap(),
            revoked_list.to_str().unwrap()
        ),
    )
    .unwrap();
    let (_index, index) = Server::start(&["index", "--config", config.to_str().unwrap()]);

    let shared = TempDir::new().unwrap();
    let bytes = write_file(shared.path(), "plan.txt", 200_000);
    let mut peer_args = vec![
        "peer".to_string(),
        "--dir".into(),
        shared.path().to_str().unwrap().into(),
        "--index".into(),
        index.clone(),
        "--no-console".into(),
        "--http".into(),
        "127.0.0.1:0".into(),
    ];
    peer_args.extend(swarm.flags("peer"));
    let (mut peer, _) = Server::start(&strs(&peer_args));
    // Its status page says who it is on the network.
    let (code, body) = http_get(&peer.status_page(), "/api/status");
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["node"], node_id(&swarm.identity("peer")).as_str());
    assert_eq!(status["swarm"], "team");

    // A member downloads, over TLS, from a member.
    let out = TempDir::new().unwrap();
    let got = get(
        "plan.txt",
        &index,
        out.path(),
        &strs(&swarm.flags("getter")),
    );
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(std::fs::read(out.path().join("plan.txt")).unwrap(), bytes);

    // A node with its own key but no member certificate is refused at the handshake, in
    // one line that says why.
    let stranger = swarm.dir.path().join("stranger.identity");
    let refused = get(
        "plan.txt",
        &index,
        TempDir::new().unwrap().path(),
        &["--identity", stranger.to_str().unwrap(), "--no-share"],
    );
    assert!(!refused.status.success());
    let line = stderr(&refused);
    assert!(line.contains("member"), "{line}");

    // A member of another swarm is refused too.
    let other = Swarm::new();
    other.admit("outsider");
    let refused = get(
        "plan.txt",
        &index,
        TempDir::new().unwrap().path(),
        &strs(&[other.flags("outsider"), vec!["--no-share".into()]].concat()),
    );
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("member"), "{}", stderr(&refused));

    // Revoking a member shuts it out once the list changes, without restarting anyone.
    let before = get(
        "plan.txt",
        &index,
        TempDir::new().unwrap().path(),
        &strs(&[swarm.flags("revoked"), vec!["--no-share".into()]].concat()),
    );
    assert!(before.status.success(), "{}", stderr(&before));
    let revoked_id = node_id(&swarm.identity("revoked"));
    std::fs::write(&revoked_list, format!("# left the team\n{revoked_id}\n")).unwrap();
    let after = get(
        "plan.txt",
        &index,
        TempDir::new().unwrap().path(),
        &strs(&[swarm.flags("revoked"), vec!["--no-share".into()]].concat()),
    );
    assert!(!after.status.success(), "a revoked member still got in");
    assert!(stderr(&after).contains("revoked"), "{}", stderr(&after));
}

#[test]
fn a_member_certificate_for_another_identity_is_refused_before_any_connection() {
    let swarm = Swarm::new();
    swarm.admit("a");
    node_id(&swarm.identity("b"));
    let out = run(&[
        "search",
        "--index",
        "127.0.0.1:9",
        "--identity",
        swarm.identity("b").to_str().unwrap(),
        "--member",
        swarm.member("a").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let line = stderr(&out);
    assert!(
        line.lines().count() == 1 && line.contains("member"),
        "{line}"
    );
}

#[test]
fn plaintext_on_one_side_only_is_one_clear_line_not_a_hang() {
    // A plaintext client against a TLS index.
    let (_index, index) = Server::start(&["index", "--listen", "127.0.0.1:0"]);
    let started = Instant::now();
    let out = run(&["search", "--index", &index, "--insecure-plaintext"]);
    assert!(!out.status.success());
    let line = stderr(&out);
    assert!(line.contains("TLS"), "{line}");
    assert!(line.contains("--insecure-plaintext"), "{line}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );

    // A TLS client against a plaintext index.
    let (_plain, plain) =
        Server::start(&["index", "--listen", "127.0.0.1:0", "--insecure-plaintext"]);
    let out = run(&["search", "--index", &plain]);
    assert!(!out.status.success());
    let line = stderr(&out);
    assert!(line.contains("TLS"), "{line}");
    // Both ends plaintext still works (for measurement), with a warning.
    let out = run(&["search", "--index", &plain, "--insecure-plaintext"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning"), "{}", stderr(&out));
}
