//! Writes seed inputs for the on-disk format targets into `fuzz/corpus/hash_cache/` and
//! `fuzz/corpus/resume_sidecar/`: valid files built from the documented layout (checked to
//! decode), their bare bodies (the targets also seal the input as a body), and a file of
//! each format's version 1. Run from `fuzz/`: `cargo run --example format_seeds`.

use std::fs;
use std::path::Path;

use shoal_fuzz::disk::{self, HASH_CACHE_MAGIC, RESUME_MAGIC};
use shoal_peer::fuzzing::{HashCache, ResumeSidecar};
use shoal_proto::content;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    fs::create_dir_all(&dir).expect("mkdir");
    fs::write(dir.join(name), bytes).expect("write");
}

/// One hash cache entry: a real file's hashes under a made-up stamp.
fn cache_entry(name: &str, len: usize, chunk_size: u32) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let size = len as u64;
    let (id, hashes) =
        content::hash_reader(&mut &bytes[..], size, chunk_size, &mut Vec::new()).expect("hash");
    let mut out = (name.len() as u16).to_le_bytes().to_vec();
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&77u64.to_le_bytes()); // inode
    out.extend_from_slice(&size.to_le_bytes());
    for t in [1_700_000_000i64, 5, 1_700_000_001, 6] {
        out.extend_from_slice(&t.to_le_bytes());
    }
    out.extend_from_slice(&chunk_size.to_le_bytes());
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&(hashes.len() as u32).to_le_bytes());
    for h in &hashes {
        out.extend_from_slice(h);
    }
    out
}

fn cache_body(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = (entries.len() as u32).to_le_bytes().to_vec();
    for e in entries {
        out.extend_from_slice(e);
    }
    out
}

fn sidecar_body(size: u64, chunk_size: u32, done: &[u32]) -> Vec<u8> {
    let count = content::chunk_count(size, chunk_size);
    let mut out = [0x5au8; 32].to_vec();
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&chunk_size.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    let mut bitmap = vec![0u8; count.div_ceil(8) as usize];
    for &i in done {
        bitmap[i as usize / 8] |= 1 << (i % 8);
    }
    out.extend_from_slice(&bitmap);
    out
}

/// Each body sealed as a file (which must decode) and bare, plus the version-1 file.
fn write_target(
    target: &str,
    magic: &[u8; 8],
    bodies: &[Vec<u8>],
    version_1: &[u8],
    decodes: &dyn Fn(&[u8]) -> bool,
) {
    for (i, body) in bodies.iter().enumerate() {
        let file = disk::seal(magic, body);
        assert!(decodes(&file), "seed {i} of {target} does not decode");
        write(target, &format!("file-{i}"), &file);
        write(target, &format!("body-{i}"), body);
    }
    write(target, "version-1", version_1);
}

fn main() {
    let caches = [
        cache_body(&[]),
        cache_body(&[cache_entry("a.txt", 100, 1024)]),
        cache_body(&[cache_entry("empty", 0, 1024)]),
        cache_body(&[
            cache_entry("song.ogg", 5000, 1024),
            cache_entry("\u{e9}.bin", 9000, 4096),
            cache_entry("b", 1, 1 << 20),
        ]),
    ];
    // Version 1: `SHOALHC\0`, u32 version, the same body, BLAKE3.
    let mut v1 = b"SHOALHC\0\x01\0\0\0".to_vec();
    v1.extend_from_slice(&caches[1]);
    let checksum = blake3::hash(&v1);
    v1.extend_from_slice(checksum.as_bytes());
    write_target("hash_cache", &HASH_CACHE_MAGIC, &caches, &v1, &|f| {
        HashCache::decode(f).is_ok()
    });

    let sidecars = [
        sidecar_body(0, 1024, &[]),
        sidecar_body(10 * 1024 + 5, 1024, &[0, 3, 10]),
        sidecar_body(8 * 1024, 1024, &[0, 1, 2, 3, 4, 5, 6, 7]),
        sidecar_body(100 << 20, 1 << 20, &[99]),
    ];
    // Version 1: `SHRS`, version byte, three zero bytes, the same body, 16 bytes of BLAKE3.
    let mut v1 = b"SHRS\x01\0\0\0".to_vec();
    v1.extend_from_slice(&sidecars[1]);
    let checksum = blake3::hash(&v1);
    v1.extend_from_slice(&checksum.as_bytes()[..16]);
    write_target("resume_sidecar", &RESUME_MAGIC, &sidecars, &v1, &|f| {
        ResumeSidecar::decode(f).is_ok()
    });
    eprintln!("seed corpora written under corpus/hash_cache and corpus/resume_sidecar");
}
