//! The peer's console: file names (or ids) typed on standard input are queued and fetched
//! into the folder one after the other, each with one result line on stdout.
//!
//! On a terminal it shows a prompt, says what each line did at once (queued, and how many
//! are ahead), draws a progress bar that log lines never overwrite, and answers `help` and
//! `queue`. Feedback and the prompt go to stderr, like the bar and the logs, so stdout stays
//! one result line per download for scripts.

use std::collections::VecDeque;
use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;

use shoal_peer::{Downloader, Interrupted};
use shoal_proto::FileKey;

use crate::error::CliError;
use crate::fetch::describe_outcome;
use crate::output::outln;
use crate::progress::{DownloadBar, write_stderr};

/// What `help` prints.
const HELP: &str = "\
commands:
  NAME or ID   queue a download into the folder (a file name, or its 64-hex-digit id)
  queue        what is downloading and what waits
  help         this list
end of input (Ctrl-D) closes the console; the peer serves until Ctrl-C";

/// The prompt, on a terminal.
const PROMPT: &str = "shoal> ";

/// Downloads waiting, and the one running.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<FileKey>,
    running: Option<FileKey>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
    terminal: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Feedback for the person typing: a line on stderr, then the prompt again.
    fn say(&self, text: &str) {
        let prompt = if self.terminal { PROMPT } else { "" };
        write_stderr(&format!("{text}\n{prompt}"));
    }

    fn prompt(&self) {
        if self.terminal {
            write_stderr(PROMPT);
        }
    }
}

/// Starts the console's reader and downloader threads.
pub(crate) fn spawn(downloader: Downloader<crate::net::Net>, dir: &Path) -> Result<(), CliError> {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        changed: Condvar::new(),
        terminal: std::io::stdin().is_terminal(),
    });
    let io_error = |source| CliError::Io {
        what: "cannot start the console".into(),
        source,
    };
    shared.say(&format!(
        "console: type a file name (or id) and Enter to download it into {}; `help` lists the commands",
        dir.display()
    ));
    let worker = Arc::clone(&shared);
    thread::Builder::new()
        .name("console-fetch".into())
        .spawn(move || fetch_loop(downloader, &worker))
        .map_err(io_error)?;
    thread::Builder::new()
        .name("console".into())
        .spawn(move || read_loop(&shared))
        .map_err(io_error)?;
    Ok(())
}

/// Reads lines until end of input: commands are answered, names queued.
fn read_loop(shared: &Shared) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let input = line.trim();
        match input {
            "" => shared.prompt(),
            "help" | "?" => {
                outln!("{HELP}");
                shared.prompt();
            }
            "queue" => {
                let q = shared.lock();
                let running = q
                    .running
                    .as_ref()
                    .map_or("nothing".to_string(), |k| k.to_string());
                let waiting: Vec<String> = q.waiting.iter().map(ToString::to_string).collect();
                drop(q);
                outln!(
                    "downloading {running}; waiting: {}",
                    if waiting.is_empty() {
                        "none".to_string()
                    } else {
                        waiting.join(", ")
                    }
                );
                shared.prompt();
            }
            _ => match FileKey::parse(input) {
                Err(e) => {
                    outln!("error   {input}: {e}");
                    shared.prompt();
                }
                Ok(key) => {
                    let mut q = shared.lock();
                    let ahead = q.waiting.len() + usize::from(q.running.is_some());
                    q.waiting.push_back(key);
                    drop(q);
                    shared.changed.notify_all();
                    let note = match ahead {
                        0 => format!("queued {input}: starting"),
                        1 => format!("queued {input}: 1 download ahead"),
                        n => format!("queued {input}: {n} downloads ahead"),
                    };
                    shared.say(&note);
                }
            },
        }
    }
    shared.lock().closed = true;
    shared.changed.notify_all();
    log::info!("console closed (end of input); still serving until interrupted");
}

/// Fetches queued keys one after the other; one result line each.
fn fetch_loop(mut downloader: Downloader<crate::net::Net>, shared: &Shared) {
    let bar = DownloadBar::attach(&mut downloader);
    loop {
        let key = {
            let mut q = shared.lock();
            loop {
                if let Some(key) = q.waiting.pop_front() {
                    q.running = Some(key.clone());
                    break key;
                }
                if q.closed {
                    return;
                }
                q = shared
                    .changed
                    .wait(q)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        bar.start();
        let result = downloader.fetch(&key).map_err(CliError::from);
        bar.finish();
        shared.lock().running = None;
        let text = match result {
            Ok(outcome) => describe_outcome(&outcome),
            Err(e) => format!("error   {key}: {e}"),
        };
        outln!("{text}");
        shared.prompt();
    }
}

/// The lines about downloads left as part files: `stopping` when the peer stops while they
/// run, else found in the folder at start.
pub(crate) fn interrupted_report(
    found: &[Interrupted],
    stopping: bool,
    console: bool,
) -> Vec<String> {
    found
        .iter()
        .map(|d| {
            let pct = if d.size == 0 {
                100.0
            } else {
                100.0 * d.verified_bytes as f64 / d.size as f64
            };
            let how = if console {
                format!("type {} at the console to resume it", d.name)
            } else {
                format!("`shoal get {}` into this folder resumes it", d.name)
            };
            let verb = if stopping { "was interrupted" } else { "was interrupted before" };
            format!(
                "download of {} {verb}: left as a part file with {} of {} verified ({pct:.0}%); {how}",
                d.name,
                crate::units::bytes(d.verified_bytes),
                crate::units::bytes(d.size),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::FileId;

    #[test]
    fn an_interrupted_download_is_reported_with_what_it_kept_and_how_to_resume() {
        let found = [Interrupted {
            name: "big.iso".into(),
            id: FileId([1; 32]),
            size: 4 << 20,
            verified_bytes: 1 << 20,
        }];
        let at_stop = interrupted_report(&found, true, true);
        assert_eq!(at_stop.len(), 1);
        assert!(
            at_stop[0].contains("big.iso was interrupted: left as a part file"),
            "{}",
            at_stop[0]
        );
        assert!(at_stop[0].contains("(25%)") && at_stop[0].contains("type big.iso at the console"));
        let at_start = interrupted_report(&found, false, false);
        assert!(
            at_start[0].contains("`shoal get big.iso`"),
            "{}",
            at_start[0]
        );
    }
}
