//! The tables of `shoal bench swarm`: one per run, a summary over the runs, the targets.

use std::path::Path;
use std::process::Command;

use crate::stats::{Spread, median};

use super::{
    Bench, Contender, FILE_NAME, HTTP_PORT, PEER_PORT, RunResult, SwarmBenchArgs, TARGET_12,
    TARGET_32, TARGET_SEEDER_COPIES, libtorrent_version,
};

impl Bench {
    pub(super) fn print_header(
        &self,
        args: &SwarmBenchArgs,
        seeder_mbit: u32,
        contenders: &[Contender],
        skipped: &[(Contender, String)],
    ) {
        let version = Command::new(&self.shoal)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        println!(
            "## shoal bench swarm: 1 seeder, {} peers, {} MiB, links {} Mbit/s each way (seeder {} \
             Mbit/s), tc tbf\n",
            self.peers, args.size_mib, args.rate_mbit, seeder_mbit
        );
        println!(
            "bound SIZE/RATE = {:.2} s; shoal: {} ({version}); {} reps, contenders alternating; \
             timeout per run {}",
            self.bound,
            self.shoal.display(),
            args.reps,
            self.timeout.map_or_else(
                || "1.5 x peers x SIZE/RATE + 30 s".into(),
                |t| format!("{} s", t.as_secs())
            ),
        );
        let idx = self.index_addr();
        let last_peer = self
            .net
            .peers
            .last()
            .map_or_else(String::new, |h| h.ip.to_string());
        println!(
            "- addresses: index {}, seeder {}, peers PEER_IP = {}..{last_peer}; DIR: a fresh empty \
             folder per peer and run",
            self.net.index.ip,
            self.net.seeder.ip,
            self.net
                .peers
                .first()
                .map_or_else(String::new, |h| h.ip.to_string()),
        );
        let p = "PEER_IP";
        for c in contenders {
            let line = match c {
                Contender::T1 | Contender::Consoles => format!(
                    "{}: shoal peer --dir DIR --index {idx} --listen {p}:{PEER_PORT} \
                     (then `{FILE_NAME}` on its stdin)",
                    c.label(c.peers(self.peers))
                ),
                Contender::Get => format!(
                    "{}: shoal {}",
                    c.label(self.peers),
                    self.get_command("PEER_IP", &idx, Path::new("DIR"))
                        .join(" ")
                ),
                Contender::Http => format!(
                    "{}: curl -sS --fail -o DIR/{FILE_NAME} http://{}:{HTTP_PORT}/{FILE_NAME}",
                    c.label(self.peers),
                    self.net.seeder.ip
                ),
                Contender::Bt | Contender::Bt1 => format!(
                    "{}: python3-libtorrent {}, v1 torrent, 256 KiB pieces, opentracker -w",
                    c.label(c.peers(self.peers)),
                    libtorrent_version()
                ),
            };
            println!("- {line}");
        }
        if contenders
            .iter()
            .any(|c| matches!(c, Contender::T1 | Contender::Consoles | Contender::Get))
        {
            println!(
                "- shoal servers: shoal index --listen {idx}; shoal peer --dir SEED --index {idx} \
                 --listen {}:{PEER_PORT} --no-console",
                self.net.seeder.ip
            );
        }
        for (c, why) in skipped {
            println!("- skipped {}: {why}", c.name());
        }
    }

    pub(super) fn print_run(&self, results: &[RunResult]) {
        let t1 = results
            .iter()
            .find(|r| r.contender == Contender::T1)
            .and_then(RunResult::last);
        println!(
            "| contender | done | last | median | seeder upload | peers upload | last / T1 | \
             last / bound |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for r in results {
            // An incomplete run: when the copies that did arrive were done.
            let partial = r
                .times
                .iter()
                .flatten()
                .copied()
                .reduce(f64::max)
                .map_or_else(String::new, |l| format!("; those done by {l:.2} s"));
            let last = match (r.last(), r.timed_out, &r.error) {
                (Some(l), _, _) => format!("{l:.2} s"),
                (None, _, Some(_)) => "failed".into(),
                (None, Some(t), None) => format!("timed out ({t:.0} s{partial})"),
                (None, None, None) => format!("failed{partial}"),
            };
            println!(
                "| {} | {}/{} | {last} | {} | {} | {} | {} | {} |",
                r.contender.label(r.peers),
                r.finished(),
                r.peers,
                r.median()
                    .map_or_else(|| "-".into(), |m| format!("{m:.2} s")),
                self.copies(r.seeder_sent),
                self.copies(r.peers_sent),
                ratio(r.last(), t1),
                ratio(r.last(), Some(self.bound)),
            );
        }
        println!();
        for r in results {
            if let Some(e) = &r.error {
                println!("- {}: could not run: {e}", r.contender.label(r.peers));
            }
            // One line per reason, naming the peers (logs: p3.log in the run's folder).
            let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
            for (peer, why) in &r.failures {
                match reasons.iter_mut().find(|(w, _)| *w == why.as_str()) {
                    Some((_, peers)) => peers.push(peer),
                    None => reasons.push((why, vec![peer])),
                }
            }
            for (why, peers) in &reasons {
                let names = if peers.len() > 8 {
                    format!("{}, ...", peers[..8].join(", "))
                } else {
                    peers.join(", ")
                };
                println!(
                    "- {}: {} of {} ({names}): {why}",
                    r.contender.label(r.peers),
                    peers.len(),
                    r.peers
                );
            }
            let unknown_arg = r
                .failures
                .iter()
                .any(|(_, why)| why.contains("unexpected argument"));
            if r.contender == Contender::Get && unknown_arg {
                println!(
                    "- {}: this shoal does not know an argument of --get-args ({:?}, which make \
                     `get` share while it downloads); --get-args '' runs it without them",
                    r.contender.label(r.peers),
                    self.get_args
                );
            }
            if let Some(up) = r.reported_upload {
                println!(
                    "- {}: the peers report {} uploaded to others (`get --json` `uploaded`)",
                    r.contender.label(r.peers),
                    crate::units::bytes(up)
                );
            }
        }
        let bt_alone = results
            .iter()
            .find(|r| r.contender == Contender::Bt1)
            .and_then(RunResult::last);
        if let Some((crowd, alone)) = results
            .iter()
            .find(|r| r.contender == Contender::Bt)
            .and_then(RunResult::last)
            .zip(bt_alone)
        {
            println!(
                "- libtorrent: {} peers take {:.2}x its own single download",
                self.peers,
                crowd / alone
            );
        }
        let failed = results
            .iter()
            .any(|r| r.error.is_some() || !r.failures.is_empty());
        if failed && !self.keep_logs {
            println!(
                "- logs: {}/logs/run<rep>-<contender>/ (removed when the bench ends; --dir DIR \
                 keeps them)",
                self.work.display()
            );
        } else if failed {
            println!("- logs: {}/logs/run<rep>-<contender>/", self.work.display());
        }
        let bt = results
            .iter()
            .find(|r| r.contender == Contender::Bt)
            .and_then(RunResult::last);
        let bt_ran = results.iter().any(|r| r.contender == Contender::Bt);
        for r in results.iter().filter(|r| r.contender.is_shoal_crowd()) {
            // Upload per copy means something only once every copy is there.
            let copies = r
                .last()
                .and(r.seeder_sent)
                .map(|b| b as f64 / self.size as f64);
            println!(
                "- targets, {}: {}; seeder uploads <= {TARGET_SEEDER_COPIES} copies: {}; faster \
                 than libtorrent in the same run: {}",
                r.contender.label(r.peers),
                self.t1_target(r.peers, r.last().zip(t1).map(|(l, t)| l / t)),
                verdict(copies.map(|c| c <= TARGET_SEEDER_COPIES), copies, " copies"),
                match (bt_ran, r.last(), bt) {
                    (false, _, _) => "n/a (libtorrent not run)".into(),
                    (true, Some(l), Some(b)) => verdict(Some(l < b), Some(l / b), "x libtorrent"),
                    (true, None, _) => "missed (shoal did not finish)".into(),
                    (true, Some(_), None) => "n/a (libtorrent did not finish)".into(),
                },
            );
        }
    }

    /// `12 peers within 1.3x T1: met (1.12x)`.
    fn t1_target(&self, peers: usize, ratio: Option<f64>) -> String {
        let target = if peers <= 12 {
            TARGET_12
        } else if peers <= 32 {
            TARGET_32
        } else {
            return format!("no T1 target for {peers} peers (issue 8 sets 12 and 32)");
        };
        format!(
            "{peers} peers within {target}x T1: {}",
            verdict(ratio.map(|r| r <= target), ratio, "x")
        )
    }

    pub(super) fn print_summary(&self, contenders: &[Contender], all: &[Vec<RunResult>]) {
        println!("\n### all {} runs: median (min-max)\n", all.len());
        println!(
            "| contender | complete runs | last | median | seeder upload (copies) | peers upload \
             (copies) | last / T1 | last / bound |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        let mut t1_ratio_medians: Vec<(Contender, Option<f64>)> = Vec::new();
        for &c in contenders {
            let runs: Vec<(&RunResult, Option<f64>)> = all
                .iter()
                .filter_map(|rep| {
                    let t1 = rep
                        .iter()
                        .find(|r| r.contender == Contender::T1)
                        .and_then(RunResult::last);
                    rep.iter().find(|r| r.contender == c).map(|r| (r, t1))
                })
                .collect();
            let peers = runs.first().map_or(0, |(r, _)| r.peers);
            let complete: Vec<&(&RunResult, Option<f64>)> =
                runs.iter().filter(|(r, _)| r.last().is_some()).collect();
            let lasts: Vec<f64> = complete.iter().filter_map(|(r, _)| r.last()).collect();
            let medians: Vec<f64> = complete.iter().filter_map(|(r, _)| r.median()).collect();
            let copies: Vec<f64> = complete
                .iter()
                .filter_map(|(r, _)| r.seeder_sent)
                .map(|b| b as f64 / self.size as f64)
                .collect();
            let peer_copies: Vec<f64> = complete
                .iter()
                .filter_map(|(r, _)| r.peers_sent)
                .map(|b| b as f64 / self.size as f64)
                .collect();
            let t1s: Vec<f64> = complete
                .iter()
                .filter_map(|(r, t1)| r.last().zip(*t1).map(|(l, t)| l / t))
                .collect();
            let bounds: Vec<f64> = lasts.iter().map(|l| l / self.bound).collect();
            t1_ratio_medians.push((c, median(&t1s)));
            println!(
                "| {} | {}/{} | {} | {} | {} | {} | {} | {} |",
                c.label(peers),
                complete.len(),
                runs.len(),
                spread(&lasts, " s"),
                spread(&medians, " s"),
                spread(&copies, ""),
                spread(&peer_copies, ""),
                spread(&t1s, "x"),
                spread(&bounds, "x"),
            );
        }
        println!();
        let bt_lasts: Vec<Option<f64>> = all
            .iter()
            .map(|rep| {
                rep.iter()
                    .find(|r| r.contender == Contender::Bt)
                    .and_then(RunResult::last)
            })
            .collect();
        let bt_ran = contenders.contains(&Contender::Bt);
        for (c, t1_ratio) in t1_ratio_medians.iter().filter(|(c, _)| c.is_shoal_crowd()) {
            let runs: Vec<&RunResult> = all
                .iter()
                .filter_map(|rep| rep.iter().find(|r| r.contender == *c))
                .collect();
            let copies: Vec<f64> = runs
                .iter()
                .filter(|r| r.last().is_some())
                .filter_map(|r| r.seeder_sent)
                .map(|b| b as f64 / self.size as f64)
                .collect();
            let copies = median(&copies);
            let faster = runs
                .iter()
                .zip(&bt_lasts)
                .filter(|(r, bt)| r.last().zip(**bt).is_some_and(|(l, b)| l < b))
                .count();
            println!(
                "- targets, {} (medians): {}; seeder uploads <= {TARGET_SEEDER_COPIES} copies: \
                 {}; faster than libtorrent in the same run: {}",
                c.label(self.peers),
                self.t1_target(self.peers, *t1_ratio),
                verdict(copies.map(|c| c <= TARGET_SEEDER_COPIES), copies, " copies"),
                if bt_ran {
                    let word = if faster == runs.len() {
                        "met"
                    } else {
                        "missed"
                    };
                    format!("{word} ({faster} of {} runs)", runs.len())
                } else {
                    "n/a (libtorrent not run)".into()
                },
            );
        }
    }

    fn copies(&self, bytes: Option<u64>) -> String {
        bytes.map_or_else(
            || "-".into(),
            |b| format!("{:.2} copies", b as f64 / self.size as f64),
        )
    }
}

/// `met (1.12x)` / `missed (3.40x)` / `n/a`.
fn verdict(ok: Option<bool>, value: Option<f64>, unit: &str) -> String {
    match (ok, value) {
        (Some(ok), Some(v)) => format!("{} ({v:.2}{unit})", if ok { "met" } else { "missed" }),
        _ => "n/a".into(),
    }
}

fn ratio(value: Option<f64>, base: Option<f64>) -> String {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 => format!("{:.2}", v / b),
        _ => "-".into(),
    }
}

/// `5.61 s (5.50-5.80)`, or `-` when there is nothing.
fn spread(values: &[f64], unit: &str) -> String {
    match Spread::of(values) {
        Some(s) => format!("{:.2}{unit} ({:.2}-{:.2})", s.median, s.min, s.max),
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        assert_eq!(spread(&[2.0, 1.0, 3.0], " s"), "2.00 s (1.00-3.00)");
        assert_eq!(spread(&[], " s"), "-");
    }

    #[test]
    fn verdicts() {
        assert_eq!(verdict(Some(true), Some(1.1), "x"), "met (1.10x)");
        assert_eq!(
            verdict(Some(false), Some(2.0), " copies"),
            "missed (2.00 copies)"
        );
        assert_eq!(verdict(None, None, "x"), "n/a");
    }
}
