//! Download progress on a terminal: one bar (bytes, rate, ETA, active holders) on stderr.
//! Not on a terminal (pipes, CI, logs): nothing, and one result line per file as before.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shoal_peer::{Downloader, Progress};
use shoal_proto::Transport;

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
        }
    }

    /// After each file: clear the bar so the result line stands alone.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
