//! Picks, for the on-disk format targets, the smallest corpus entry for each distinct
//! decoder outcome: the input decoded as a file and sealed as the body of a valid envelope,
//! each accepted (`ok`) or refused with some `FormatError` kind. Run from `fuzz/` after a
//! fuzzing session: `cargo run --example pick_format_regressions [DIR]`. With `DIR`
//! (`../crates/peer/tests/format_corpus`, replayed by `crates/peer/tests/format_regressions.rs`)
//! the entries replace `DIR/<target>/`, one file named `<file outcome>.<body outcome>` each;
//! without, the outcomes and sizes are listed.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use shoal_fuzz::disk::{self, HASH_CACHE_MAGIC, RESUME_MAGIC};
use shoal_peer::fuzzing::{FormatError, HashCache, ResumeSidecar};

fn kind<T>(r: Result<T, FormatError>) -> &'static str {
    r.map_or_else(|e| e.kind(), |_| "ok")
}

type Target = (&'static str, [u8; 8], fn(&[u8]) -> &'static str);

fn main() {
    let out = std::env::args().nth(1);
    let targets: [Target; 2] = [
        ("hash_cache", HASH_CACHE_MAGIC, |d| {
            kind(HashCache::decode(d))
        }),
        ("resume_sidecar", RESUME_MAGIC, |d| {
            kind(ResumeSidecar::decode(d))
        }),
    ];
    for (target, magic, outcome) in targets {
        let mut inputs: Vec<Vec<u8>> = fs::read_dir(format!("corpus/{target}"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| fs::read(entry.path()).ok())
            .collect();
        // Smallest first, so the first input of each outcome is the one kept.
        inputs.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
        let mut picked: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for data in inputs {
            let name = format!("{}.{}", outcome(&data), outcome(&disk::seal(&magic, &data)));
            picked.entry(name).or_insert(data);
        }
        println!("{target}: {} outcomes", picked.len());
        for (name, data) in &picked {
            println!("  {name}: {} bytes", data.len());
        }
        if let Some(dir) = &out {
            let dir = Path::new(dir).join(target);
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).expect("create the output folder");
            for (name, data) in &picked {
                fs::write(dir.join(name), data).expect("write an entry");
            }
        }
    }
}
