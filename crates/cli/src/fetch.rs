//! The one-shot client commands: `shoal get` and `shoal search`.

use std::io::Write;
use std::path::PathBuf;

use shoal_index::IndexClient;
use shoal_peer::{DownloadOutcome, Downloader, DownloaderConfig};
use shoal_proto::FileKey;
use shoal_proto::tcp::TcpTransport;

use crate::error::CliError;
use crate::progress::DownloadBar;
use crate::units;
use crate::{DEFAULT_INDEX, ensure_dir, parse_index_list};

/// `shoal get`
#[derive(clap::Args, Debug)]
pub(crate) struct GetArgs {
    /// File names, or 64-hex-digit content ids.
    #[arg(required = true)]
    names: Vec<String>,
    /// Index server(s), comma-separated; the first that answers is used.
    #[arg(long, default_value = DEFAULT_INDEX)]
    index: String,
    /// Folder to download into (created if missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Holders to download from at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    max_sources: u16,
    /// One JSON object per file on stdout: name, id, size, seconds, bytes per holder,
    /// holders dropped and why (and `error` if it failed).
    #[arg(long)]
    json: bool,
}

/// `shoal search`
#[derive(clap::Args, Debug)]
pub(crate) struct SearchArgs {
    /// Part of a file name, any case; empty lists every file.
    #[arg(default_value = "")]
    query: String,
    /// Index server(s), comma-separated; the first that answers is used.
    #[arg(long, default_value = DEFAULT_INDEX)]
    index: String,
    /// One JSON object per line: {"name", "size", "id", "holders"}.
    #[arg(long)]
    json: bool,
    /// At most this many results.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
}

pub(crate) fn run_get(args: &GetArgs) -> Result<(), CliError> {
    // Check every name before any network traffic: a typo fails fast and alone.
    let keys = args
        .names
        .iter()
        .map(|n| FileKey::parse(n))
        .collect::<Result<Vec<_>, _>>()?;
    ensure_dir(&args.out)?;
    let index = parse_index_list(&args.index)?;
    let config = DownloaderConfig {
        max_sources: usize::from(args.max_sources),
        ..DownloaderConfig::default()
    };
    let mut downloader = Downloader::new(TcpTransport::default(), index, &args.out, config);
    let bar = DownloadBar::attach(&mut downloader);
    let mut failed = 0;
    let mut last_error = None;
    for key in &keys {
        bar.start();
        let result = downloader.fetch(key);
        bar.finish();
        match &result {
            Ok(outcome) if args.json => println!("{}", outcome_json(outcome)),
            Ok(outcome) => println!("{}", describe_outcome(outcome)),
            Err(e) => {
                failed += 1;
                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({"name": key.to_string(), "error": e.to_string()})
                    );
                }
                // One file: its error is the command's one line on stderr (printed by main).
                if keys.len() > 1 {
                    eprintln!("shoal: {e}");
                }
            }
        }
        if let Err(e) = result {
            last_error = Some(e);
        }
    }
    match (failed, last_error) {
        (0, _) => Ok(()),
        (_, Some(e)) if keys.len() == 1 => Err(e.into()),
        _ => Err(CliError::SomeFailed {
            failed,
            total: keys.len(),
        }),
    }
}

/// The `--json` record of one download.
fn outcome_json(outcome: &DownloadOutcome) -> serde_json::Value {
    match outcome {
        DownloadOutcome::AlreadyPresent(file) => serde_json::json!({
            "name": file.name,
            "id": file.id.to_hex(),
            "size": file.size,
            "status": "present",
        }),
        DownloadOutcome::Downloaded(report) => {
            let bytes_per_holder: serde_json::Map<String, serde_json::Value> = report
                .holders
                .iter()
                .map(|h| (h.holder.to_string(), h.bytes.into()))
                .collect();
            let dropped: Vec<serde_json::Value> = report
                .holders
                .iter()
                .filter_map(|h| {
                    h.dropped.as_ref().map(
                        |why| serde_json::json!({"holder": h.holder.to_string(), "reason": why}),
                    )
                })
                .collect();
            serde_json::json!({
                "name": report.file.name,
                "id": report.file.id.to_hex(),
                "size": report.file.size,
                "status": "downloaded",
                "seconds": report.elapsed.as_secs_f64(),
                "resumed_bytes": report.resumed_bytes,
                "bytes_per_holder": bytes_per_holder,
                "dropped": dropped,
            })
        }
    }
}

/// One line per download, shared by `get` and the peer console.
pub(crate) fn describe_outcome(outcome: &DownloadOutcome) -> String {
    match outcome {
        DownloadOutcome::AlreadyPresent(file) => {
            format!(
                "present {}: already in the folder, nothing to do",
                file.name
            )
        }
        DownloadOutcome::Downloaded(report) => format!(
            "ok      {} ({}) from {} in {}, {} MB/s, verified blake3 {}",
            report.file.name,
            units::bytes(report.bytes),
            holders_summary(report),
            units::duration(report.elapsed),
            units::mb_per_s(report.bytes, report.elapsed),
            report.file.id.short(),
        ),
    }
}

/// `peer1:7000` for one holder, `3 holders (peer1:7000 most)` for several; drops noted.
fn holders_summary(report: &shoal_peer::DownloadReport) -> String {
    let serving = report.holders.iter().filter(|h| h.bytes > 0).count();
    let dropped = report
        .holders
        .iter()
        .filter(|h| h.dropped.is_some())
        .count();
    let mut text = if serving <= 1 {
        report.from.to_string()
    } else {
        format!("{serving} holders ({} most)", report.from)
    };
    if dropped > 0 {
        text.push_str(&format!(", {dropped} dropped"));
    }
    if report.resumed_bytes > 0 {
        text.push_str(&format!(
            ", resumed after {}",
            units::bytes(report.resumed_bytes)
        ));
    }
    text
}

pub(crate) fn run_search(args: &SearchArgs) -> Result<(), CliError> {
    let mut index = IndexClient::new(TcpTransport::default(), parse_index_list(&args.index)?);
    let hits = index.search(&args.query, args.limit)?;
    let mut out = std::io::stdout().lock();
    let write_err = |source| CliError::Io {
        what: "cannot write to standard output".into(),
        source,
    };
    if args.json {
        for hit in &hits {
            let line = serde_json::json!({
                "name": hit.file.name,
                "size": hit.file.size,
                "id": hit.file.id.to_hex(),
                "holders": hit.holders,
            });
            writeln!(out, "{line}").map_err(write_err)?;
        }
        return Ok(());
    }
    if hits.is_empty() {
        writeln!(out, "no files match {:?}", args.query).map_err(write_err)?;
        return Ok(());
    }
    let width = hits
        .iter()
        .map(|h| h.file.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    writeln!(
        out,
        "{:<width$}  {:>10}  {:>7}  ID",
        "NAME", "SIZE", "HOLDERS"
    )
    .map_err(write_err)?;
    for hit in &hits {
        writeln!(
            out,
            "{:<width$}  {:>10}  {:>7}  {}",
            hit.file.name,
            units::bytes(hit.file.size),
            hit.holders,
            hit.file.id
        )
        .map_err(write_err)?;
    }
    Ok(())
}
