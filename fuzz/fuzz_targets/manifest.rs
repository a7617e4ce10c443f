//! Manifests from a hostile peer: decode a `PeerResponse::Manifest` and run
//! `content::verify_manifest` against its own file meta and mutated ones (never panics; a
//! manifest for another id or size is always refused). Then a structured half: the input's
//! tail is a file's content; its real manifest must verify and any flipped hash byte must not.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::FileId;
use shoal_proto::codec;
use shoal_proto::content::{self, MIN_CHUNK_SIZE};
use shoal_proto::message::{Manifest, PeerResponse};

fn check(m: &Manifest) {
    let own = content::verify_manifest(m, &m.file);
    if own.is_ok() {
        // A verified manifest's geometry is usable without panics.
        let count = content::chunk_count(m.file.size, m.file.chunk_size);
        assert_eq!(count, m.chunk_hashes.len() as u64);
        assert_eq!(
            content::root_from_chunk_hashes(&m.chunk_hashes),
            Some(m.file.id)
        );
        for i in [0, count.saturating_sub(1)] {
            let i = u32::try_from(i).unwrap();
            let len = content::chunk_len(m.file.size, m.file.chunk_size, i).unwrap();
            assert!(len <= m.file.chunk_size);
            let _ = content::chunk_offset(m.file.chunk_size, i);
        }
    }
    let mut other = m.file.clone();
    other.id.0[0] ^= 1;
    assert!(
        content::verify_manifest(m, &other).is_err(),
        "accepted for another id"
    );
    let mut other = m.file.clone();
    other.size = other.size.wrapping_add(1);
    assert!(
        content::verify_manifest(m, &other).is_err(),
        "accepted for another size"
    );
    // Name and chunk size of the expectation are not compared (see SECURITY.md); only check
    // that they cannot make verification panic.
    let mut other = m.file.clone();
    other.chunk_size = other.chunk_size.rotate_left(1);
    other.name.push('x');
    let _ = content::verify_manifest(m, &other);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(PeerResponse::Manifest(m)) = codec::decode_body::<PeerResponse>(data) {
        check(&m);
    }
    if let Ok(m) = codec::decode_body::<Manifest>(data) {
        check(&m);
    }

    // Structured: [chunk-size shift, flip position, content...].
    let [shift, flip, file @ ..] = data else {
        return;
    };
    let chunk_size = MIN_CHUNK_SIZE << (shift % 3);
    let size = file.len() as u64;
    let (id, hashes) =
        content::hash_reader(&mut &file[..], size, chunk_size, &mut Vec::new()).unwrap();
    assert_eq!(
        id,
        FileId(*blake3::hash(file).as_bytes()),
        "the id is what b3sum prints"
    );
    let meta = shoal_proto::FileMeta {
        name: "f".into(),
        size,
        chunk_size,
        id,
    };
    let mut m = Manifest {
        file: meta.clone(),
        chunk_hashes: hashes,
    };
    content::verify_manifest(&m, &meta).unwrap();
    check(&m);
    // One flipped bit in one chunk hash is always caught.
    let n = m.chunk_hashes.len();
    let pos = usize::from(*flip) % (n * 32);
    m.chunk_hashes[pos / 32][pos % 32] ^= 1 << (flip % 8);
    assert!(
        content::verify_manifest(&m, &meta).is_err(),
        "a tampered hash verified"
    );
    // A dropped or an extra hash is caught.
    let mut short = m.clone();
    short.chunk_hashes.pop();
    assert!(content::verify_manifest(&short, &meta).is_err());
    let mut long = m;
    long.chunk_hashes.push([0; 32]);
    assert!(content::verify_manifest(&long, &meta).is_err());
});
