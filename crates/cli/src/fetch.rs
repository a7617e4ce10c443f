//! The one-shot client commands: `shoal get` and `shoal search`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use shoal_index::IndexClient;
use shoal_peer::{DownloadOutcome, Downloader, DownloaderConfig, Library, Peer, PeerConfig};
use shoal_proto::content::DEFAULT_CHUNK_SIZE;
use shoal_proto::message::HolderNode;
use shoal_proto::{FileKey, PeerAddr};

use crate::choose;
use crate::error::CliError;
use crate::net::{Net, SecurityArgs};
use crate::output::outln;
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
    #[arg(long, env = "SHOAL_INDEX", default_value = DEFAULT_INDEX)]
    index: String,
    /// Folder to download into (created if missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// When the index lists several contents under NAME: the one whose id starts with
    /// PREFIX (at least 12 hex digits, as `search` and `get` print them). One NAME only.
    #[arg(long, value_name = "PREFIX")]
    id: Option<String>,
    /// Holders to download from at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    max_sources: u16,
    /// One JSON object per file on stdout: name, id, size, seconds, bytes per holder,
    /// the holders' node ids where the index knows them (`nodes`), bytes uploaded to other
    /// peers meanwhile, holders dropped and why (and `error` if it failed).
    #[arg(long)]
    json: bool,
    /// Share while downloading on this address: other peers fetch the chunks this download
    /// has verified, so a crowd of `get`s swarms. Default: a free port on the address this
    /// machine reaches the index from.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Give up after SECS seconds per file, whatever is missing (what verified is kept for a
    /// resume; the error names the holders still sending). Default: no deadline, though a
    /// holder slower than 16 KiB/s, or stopped while others deliver, is dropped anyway.
    #[arg(long, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    deadline: Option<u64>,
    /// Do not share: no listening port, nothing registered with the index.
    #[arg(long, conflicts_with_all = ["listen", "seed"])]
    no_share: bool,
    /// After the last download, keep serving what was downloaded for SECS seconds (Ctrl-C
    /// ends it early). Default 0: exit at once. Either way, everything this `get` registered
    /// is unregistered when it exits.
    #[arg(long, value_name = "SECS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=31_536_000))]
    seed: u64,
    #[command(flatten)]
    security: SecurityArgs,
}

/// `shoal search`
#[derive(clap::Args, Debug)]
pub(crate) struct SearchArgs {
    /// Part of a file name, any case; empty lists every file.
    #[arg(default_value = "")]
    query: String,
    /// Index server(s), comma-separated; the first that answers is used.
    #[arg(long, env = "SHOAL_INDEX", default_value = DEFAULT_INDEX)]
    index: String,
    /// One JSON object per line: {"name", "size", "id", "holders", "downloading", "nodes"}
    /// (`holders` hold the whole file; `downloading` are fetching it and serve what they
    /// have; `nodes`: some complete holders and their node ids, [{"holder", "node"}], where
    /// the index knows them).
    #[arg(long)]
    json: bool,
    /// At most this many results.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    #[command(flatten)]
    security: SecurityArgs,
}

pub(crate) fn run_get(args: &GetArgs) -> Result<(), CliError> {
    // Check every name before any network traffic: a typo fails fast and alone.
    let keys = args
        .names
        .iter()
        .map(|n| FileKey::parse(n))
        .collect::<Result<Vec<_>, _>>()?;
    if args.id.is_some() && keys.len() != 1 {
        return Err(CliError::Usage(
            "--id chooses the content of one NAME".into(),
        ));
    }
    ensure_dir(&args.out)?;
    let index = parse_index_list(&args.index)?;
    let config = DownloaderConfig {
        max_sources: usize::from(args.max_sources),
        deadline: args.deadline.map(Duration::from_secs),
        ..DownloaderConfig::default()
    };
    let transport = args.security.transport()?;
    let peer = if args.no_share {
        None
    } else {
        share_peer(&transport, &index, args, config.clone())?
    };
    if let Some(peer) = &peer {
        withdraw_on_interrupt(&transport, &index, peer.advertise().clone())?;
    }
    let mut downloader = match &peer {
        Some(peer) => peer.downloader(),
        None => Downloader::new(transport, index, &args.out, config),
    };
    let bar = DownloadBar::attach(&mut downloader);
    let mut failed = 0;
    let mut last_error = None;
    for key in &keys {
        let (chosen, candidates) = choose_content(&mut downloader, key, args.id.as_deref())?;
        bar.start();
        let result = downloader.fetch(&chosen);
        bar.finish();
        if let (Ok(outcome), FileKey::Name(name), None) = (&result, key, &args.id) {
            let taken = match outcome {
                DownloadOutcome::AlreadyPresent(file) => file.id,
                DownloadOutcome::Downloaded(report) => report.file.id,
            };
            if let Some(note) = choose::took_one_of_several(name, &taken, &candidates) {
                eprintln!("shoal: {note}");
            }
        }
        if let (Ok(DownloadOutcome::Downloaded(report)), Some(peer)) = (&result, &peer) {
            peer.announce_added(&report.file);
        }
        match &result {
            Ok(outcome) if args.json => outln!("{}", outcome_json(outcome)),
            Ok(outcome) => outln!("{}", describe_outcome(outcome)),
            Err(e) => {
                failed += 1;
                if args.json {
                    outln!(
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
    if let Some(peer) = peer {
        if args.seed > 0 && failed < keys.len() {
            if let Some(addr) = peer.listen_addr() {
                log::warn!("seeding on {addr} for {} s (Ctrl-C to stop)", args.seed);
            }
            // Ctrl-C ends it early (see `withdraw_on_interrupt`).
            std::thread::sleep(Duration::from_secs(args.seed));
        }
        log::info!(
            "served {} to other peers; unregistering",
            units::bytes(peer.stats().bytes_served())
        );
        peer.shutdown();
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

/// What to fetch for `key`: for a name, the contents the index lists under it (from a
/// search), and with `--id PREFIX` the one it names, by id. Without `--id`, a failed search
/// leaves the choice to the download's own lookup (which reports the index's trouble).
fn choose_content<T: shoal_proto::Transport>(
    downloader: &mut Downloader<T>,
    key: &FileKey,
    id: Option<&str>,
) -> Result<(FileKey, Vec<choose::Candidate>), CliError> {
    let FileKey::Name(name) = key else {
        if id.is_some() {
            return Err(CliError::Usage(
                "--id chooses among the contents of a NAME, not an id".into(),
            ));
        }
        return Ok((key.clone(), Vec::new()));
    };
    let hits = match downloader.index().search(name, SEARCH_FOR_CONTENTS) {
        Ok(hits) => hits,
        Err(e) if id.is_some() => return Err(e.into()),
        Err(_) => return Ok((key.clone(), Vec::new())),
    };
    let candidates = choose::candidates(name, &hits);
    match id {
        Some(prefix) => {
            let chosen = choose::by_prefix(name, prefix, &candidates)?;
            Ok((FileKey::Id(chosen), candidates))
        }
        None => Ok((key.clone(), candidates)),
    }
}

/// Search results asked for when looking for every content under a name.
const SEARCH_FOR_CONTENTS: u32 = 1000;

/// A peer that shares this `get`'s downloads while they run (and while it seeds). An
/// explicit `--listen` that is not an address, or cannot be served, is an error; without
/// one, a peer that cannot start (no index reachable, say) is `None`, and the download goes
/// on without sharing (and reports the index's trouble itself).
fn share_peer(
    transport: &Net,
    index: &[PeerAddr],
    args: &GetArgs,
    downloader: DownloaderConfig,
) -> Result<Option<Peer<Net>>, CliError> {
    let listen = match &args.listen {
        Some(addr) => PeerAddr::new(addr.as_str())?,
        // Next to the address this machine reaches the index from, on a free port.
        None => {
            let local = IndexClient::new(transport.clone(), index.to_vec())
                .local_addr()
                .ok()
                .and_then(|seen| seen.as_str().parse::<SocketAddr>().ok())
                .and_then(|seen| PeerAddr::new(SocketAddr::new(seen.ip(), 0).to_string()).ok());
            let Some(listen) = local else {
                return Ok(None);
            };
            listen
        }
    };
    let mut config = PeerConfig::new(index.to_vec(), listen);
    config.downloader = downloader;
    config.watch = None;
    let library = Library::empty(&args.out, DEFAULT_CHUNK_SIZE);
    match Peer::start(transport.clone(), library, config) {
        Ok(peer) => {
            if let Some(addr) = peer.listen_addr() {
                log::info!("sharing downloads on {addr}");
            }
            Ok(Some(peer))
        }
        Err(e) if args.listen.is_some() => Err(e.into()),
        Err(e) => {
            log::warn!("not sharing while downloading: {e}");
            Ok(None)
        }
    }
}

/// On SIGINT or SIGTERM (a download or the seeding cut short), unregisters everything this
/// `get` registered, complete and partial, so the index sends nobody to a process that is
/// gone, then exits with status 130. What verified stays in the part file for a resume.
fn withdraw_on_interrupt(
    transport: &Net,
    index: &[PeerAddr],
    holder: PeerAddr,
) -> Result<(), CliError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|source| CliError::Io {
            what: "cannot install the Ctrl-C handler".into(),
            source,
        })?;
    let transport = transport.clone();
    let index = index.to_vec();
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            if signals.forever().next().is_some() {
                for addr in index {
                    let mut client = IndexClient::new(transport.clone(), vec![addr])
                        .with_timeout(Duration::from_secs(2));
                    let _ = client.unregister(&holder, &[]);
                }
                eprintln!(
                    "shoal: interrupted; the verified part is kept, run the same get to resume"
                );
                std::process::exit(130);
            }
        })
        .map_err(|source| CliError::Io {
            what: "cannot start the Ctrl-C handler".into(),
            source,
        })?;
    Ok(())
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
            // The node id the index gave for each holder, where it knew one.
            let nodes: Vec<serde_json::Value> = report
                .holders
                .iter()
                .filter_map(|h| h.node.map(|node| node_json(&h.holder, &node)))
                .collect();
            let dropped: Vec<serde_json::Value> = report
                .holders
                .iter()
                .filter_map(|h| {
                    h.dropped.as_ref().map(
                        |why| serde_json::json!({"holder": h.holder.to_string(), "reason": why.to_string()}),
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
                "uploaded": report.uploaded,
                "from_partial_holders": report
                    .holders
                    .iter()
                    .filter(|h| h.partial)
                    .map(|h| h.bytes)
                    .sum::<u64>(),
                "bytes_per_holder": bytes_per_holder,
                "nodes": nodes,
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
    let mut index = IndexClient::new(args.security.transport()?, parse_index_list(&args.index)?);
    let hits = index.search(&args.query, args.limit)?;
    // Said on stderr, so `--json` output stays one object per line.
    let stopped = hits.len() >= usize::try_from(args.limit).unwrap_or(usize::MAX);
    let note = || {
        if stopped {
            eprintln!(
                "shoal: stopped at --limit {} matches; there may be more (raise --limit or narrow the query)",
                args.limit
            );
        }
    };
    if args.json {
        for hit in &hits {
            let line = serde_json::json!({
                "name": hit.file.name,
                "size": hit.file.size,
                "id": hit.file.id.to_hex(),
                "holders": hit.holders,
                "downloading": hit.downloading,
                "nodes": hit.nodes.iter().map(|n| node_json(&n.holder, &n.node)).collect::<Vec<_>>(),
            });
            outln!("{line}");
        }
        note();
        return Ok(());
    }
    if hits.is_empty() {
        outln!("no files match {:?}", args.query);
        return Ok(());
    }
    let width = hits
        .iter()
        .map(|h| h.file.name.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    outln!(
        "{:<width$}  {:>10}  {:>7}  {:>11}  {:<64}  NODES",
        "NAME",
        "SIZE",
        "HOLDERS",
        "DOWNLOADING",
        "ID"
    );
    for hit in &hits {
        outln!(
            "{:<width$}  {:>10}  {:>7}  {:>11}  {}  {}",
            hit.file.name,
            units::bytes(hit.file.size),
            hit.holders,
            hit.downloading,
            hit.file.id,
            nodes_column(&hit.nodes)
        );
    }
    note();
    Ok(())
}

/// `{"holder", "node"}` of `search --json` and `get --json`.
fn node_json(holder: &PeerAddr, node: &shoal_proto::NodeId) -> serde_json::Value {
    serde_json::json!({"holder": holder.to_string(), "node": node.to_string()})
}

/// Most short node ids `search` prints for one file.
const NODES_SHOWN: usize = 3;

/// The `NODES` column of `search`: holders' short node ids, `-` when the index knows none
/// (full ids in `--json`).
pub(crate) fn nodes_column(nodes: &[HolderNode]) -> String {
    if nodes.is_empty() {
        return "-".to_string();
    }
    let mut text = nodes
        .iter()
        .take(NODES_SHOWN)
        .map(|n| n.node.short())
        .collect::<Vec<_>>()
        .join(",");
    if nodes.len() > NODES_SHOWN {
        text.push_str(&format!(" +{}", nodes.len() - NODES_SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::NodeId;

    #[test]
    fn get_json_lists_the_holders_node_ids_where_known() {
        let holder = |name: &str, node: Option<NodeId>| shoal_peer::HolderReport {
            holder: PeerAddr::new(name).unwrap(),
            bytes: 10,
            requests: 1,
            partial: false,
            node,
            dropped: None,
            corrupt_chunk: None,
        };
        let file = shoal_proto::FileMeta {
            name: "a.bin".into(),
            size: 20,
            chunk_size: 1024,
            id: shoal_proto::FileId([1; 32]),
        };
        let report = shoal_peer::DownloadReport {
            file,
            from: PeerAddr::new("a:1").unwrap(),
            path: None,
            bytes: 20,
            resumed_bytes: 0,
            elapsed: Duration::from_millis(5),
            registered: false,
            uploaded: 0,
            holders: vec![
                holder("a:1", Some(NodeId::from_bytes([7; 32]))),
                holder("b:1", None),
            ],
        };
        let json = outcome_json(&DownloadOutcome::Downloaded(report));
        assert_eq!(
            json["nodes"],
            serde_json::json!([{"holder": "a:1", "node": NodeId::from_bytes([7; 32]).to_string()}])
        );
    }

    #[test]
    fn the_nodes_column_is_short() {
        let node = |b: u8| HolderNode {
            holder: PeerAddr::new(format!("h:{b}")).unwrap(),
            node: NodeId::from_bytes([b; 32]),
        };
        assert_eq!(nodes_column(&[]), "-");
        let one = nodes_column(&[node(0)]);
        assert_eq!(one, NodeId::from_bytes([0; 32]).short());
        let five: Vec<HolderNode> = (0..5).map(node).collect();
        let text = nodes_column(&five);
        assert!(text.ends_with(" +2"), "{text}");
        assert_eq!(text.matches(',').count(), 2, "{text}");
    }
}
