//! The status pages in a real browser (headless Chromium, which `.ci/run` installs): an
//! index's page lists a registered file, a peer's page shows a download that is running,
//! and a screenshot of each is saved.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Swarm, status, wait_until};
use shoal_proto::FileKey;

/// The Chromium binary, if one is installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Loads `url` headless, lets its script run for a few seconds of virtual time, and returns
/// the rendered DOM; with `screenshot`, saves a PNG of the page there too.
fn render(browser: &Path, url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("timeout");
    cmd.arg("120")
        .arg(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with id `id` (its tags stripped), from a dumped DOM.
fn element_text(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let rest = &dom[start..];
    let end = rest
        .find("</table>")
        .or_else(|| rest.find("</p>"))
        .unwrap_or(rest.len());
    let mut text = String::new();
    let mut in_tag = false;
    for c in rest[..end].chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

#[test]
fn browser_shows_a_registered_file_and_a_running_download() {
    let Some(browser) = chromium() else {
        // CI installs Chromium (.ci/run): there, a missing browser is a failure.
        assert!(
            std::env::var_os("CI").is_none(),
            "no chromium on PATH (apt-get install chromium)"
        );
        eprintln!("skipped: no chromium on PATH (apt-get install chromium)");
        return;
    };
    let swarm = Swarm::new("big-file.bin", 1 << 20);
    // The seeder stops sending partway (without closing): the download stays in progress.
    swarm
        .net
        .stall_after(swarm.seeder.listen_addr().unwrap(), 300_000);
    let mut downloader = swarm.downloader.downloader();
    std::thread::spawn(move || downloader.fetch(&FileKey::Name("big-file.bin".into())));
    let page = swarm.downloader_page.addr();
    wait_until("the download to show progress", || {
        let s = status(page);
        s["downloads"][0]["done"].as_u64().unwrap_or(0) > 0
    });

    let index_url = format!("http://{}/", swarm.index_page.addr());
    let peer_url = format!("http://{page}/");
    let index_dom = render(&browser, &index_url, None);
    assert!(
        index_dom.contains("data-kind=\"index\""),
        "the script did not run:\n{index_dom}"
    );
    let files = element_text(&index_dom, "files");
    assert!(files.contains("big-file.bin"), "{files}");

    let peer_dom = render(&browser, &peer_url, None);
    assert!(
        peer_dom.contains("data-kind=\"peer\""),
        "the script did not run:\n{peer_dom}"
    );
    let downloads = element_text(&peer_dom, "downloads");
    assert!(
        downloads.contains("big-file.bin") && downloads.contains("% of 1.0 MiB"),
        "{downloads}"
    );
    assert!(
        downloads.contains("seeder:7000"),
        "the source is named: {downloads}"
    );

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (url, name) in [
        (&index_url, "status-index.png"),
        (&peer_url, "status-peer.png"),
    ] {
        let path = shots.join(name);
        let _ = std::fs::remove_file(&path);
        render(&browser, url, Some(&path));
        let png = std::fs::read(&path).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{name} is not a PNG");
        eprintln!("screenshot saved: {}", path.display());
    }
}
