//! Progress on a terminal, on stderr: one bar per download (bytes, rate, ETA, active
//! holders), and one for the first scan of a peer's folder (files, bytes, rate, ETA).
//! Not on a terminal (pipes, CI, logs): nothing, and one result line per file as before.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, PoisonError};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_peer::{Downloader, Progress, ScanProgress};
use shoal_proto::Transport;

/// The bar on screen, if one is: log lines and console feedback are written around it
/// ([`write_stderr`]) so they never overwrite it and it is drawn again below them.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

fn shown() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    SHOWN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes `text` to stderr in one write; with a bar on screen, the bar is cleared first and
/// drawn again after, so the text stands on its own lines above it.
pub(crate) fn write_stderr(text: &str) {
    let bar = shown().clone();
    let write = || {
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    };
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// The bar of one command, reused file after file; `None` when stderr is not a terminal.
pub(crate) struct DownloadBar {
    bar: Option<ProgressBar>,
}

impl DownloadBar {
    /// Attaches a bar to `downloader` if stderr is a terminal.
    pub(crate) fn attach<T: Transport>(downloader: &mut Downloader<T>) -> Self {
        if !std::io::stderr().is_terminal() {
            return DownloadBar { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg:24!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        let shown = bar.clone();
        downloader.set_progress(Arc::new(move |p: &Progress| {
            shown.set_length(p.size);
            shown.set_position(p.done);
            shown.set_message(format!("{} ({} holders)", p.name, p.active_sources));
        }));
        DownloadBar { bar: Some(bar) }
    }

    /// Before each file: start from zero.
    pub(crate) fn start(&self) {
        if let Some(bar) = &self.bar {
            bar.reset();
            *shown() = Some(bar.clone());
        }
    }

    /// After each file: clear the bar so the result line stands alone.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            *shown() = None;
            bar.finish_and_clear();
        }
    }
}

/// The hashing bar of a folder scan; `None` when stderr is not a terminal.
pub(crate) struct ScanBar {
    bar: Option<ProgressBar>,
}

impl ScanBar {
    /// A bar if stderr is a terminal; it shows once there is something to hash.
    pub(crate) fn new() -> Self {
        if !std::io::stderr().is_terminal() {
            return ScanBar { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{msg:32!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        *shown() = Some(bar.clone());
        ScanBar { bar: Some(bar) }
    }

    /// Shows `p` (the library's scan callback).
    pub(crate) fn update(&self, p: &ScanProgress<'_>) {
        let Some(bar) = &self.bar else { return };
        // Everything came from the hash cache: no bar at all.
        if p.files_total == 0 {
            return;
        }
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(format!("hashing {}/{} files", p.files_done, p.files_total));
    }

    /// Clears the bar so the scan's summary line stands alone.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            *shown() = None;
            bar.finish_and_clear();
        }
    }
}
