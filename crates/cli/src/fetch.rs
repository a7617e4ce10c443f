//! The one-shot client commands: `shoal get` and `shoal search`.

use std::io::Write;
use std::path::PathBuf;

use shoal_index::IndexClient;
use shoal_peer::{DownloadOutcome, Downloader, DownloaderConfig};
use shoal_proto::FileKey;
use shoal_proto::tcp::TcpTransport;

use crate::error::CliError;
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
    let mut downloader = Downloader::new(
        TcpTransport::default(),
        index,
        &args.out,
        DownloaderConfig::default(),
    );
    if let [key] = keys.as_slice() {
        // One file: its error is the command's one line on stderr.
        println!("{}", describe_outcome(&downloader.fetch(key)?));
        return Ok(());
    }
    let mut failed = 0;
    for key in &keys {
        match downloader.fetch(key) {
            Ok(outcome) => println!("{}", describe_outcome(&outcome)),
            Err(e) => {
                failed += 1;
                eprintln!("shoal: {e}");
            }
        }
    }
    if failed > 0 {
        return Err(CliError::SomeFailed {
            failed,
            total: keys.len(),
        });
    }
    Ok(())
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
            report.from,
            units::duration(report.elapsed),
            units::mb_per_s(report.bytes, report.elapsed),
            report.file.id.short(),
        ),
    }
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
