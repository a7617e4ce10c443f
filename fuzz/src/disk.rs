//! Oracles for the peer's on-disk formats (`hash_cache`, `resume_sidecar` targets). Both
//! follow one convention: 8-byte magic, u16 little-endian version, body, BLAKE3 of all
//! before (docs/ARCHITECTURE.md, "On-disk formats").

use std::fmt::Debug;

/// The hash cache's magic (`DIR/.shoal-cache`).
pub const HASH_CACHE_MAGIC: [u8; 8] = *b"SHOALHSH";
/// The resume sidecar's magic (`DIR/.NAME.shoal-state`).
pub const RESUME_MAGIC: [u8; 8] = *b"SHOALRES";
/// The version both formats are at.
pub const VERSION: u16 = 2;

/// `body` in a valid envelope: magic, version, body, checksum. Lets the fuzzer reach the
/// body's own checks, which random bytes never get past the checksum to.
pub fn seal(magic: &[u8; 8], body: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(body);
    let checksum = blake3::hash(&out);
    out.extend_from_slice(checksum.as_bytes());
    out
}

/// The oracle for one input: decoding never panics; whatever decodes re-encodes to exactly
/// the same bytes, which decode to an equal value; and the input with any of a few bits
/// flipped (one chosen by the content, the first of the version, the last of the checksum)
/// is refused.
pub fn check<T, E>(
    data: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, E>,
    encode: impl Fn(&T) -> Vec<u8>,
) where
    T: PartialEq + Debug,
{
    let Ok(value) = decode(data) else {
        return;
    };
    let again = encode(&value);
    assert_eq!(again, data, "a decoded file re-encodes to other bytes");
    let back = decode(&again).ok().expect("a re-encoded file decodes");
    assert_eq!(back, value, "decode(encode(x)) != x");
    let chosen = data.iter().fold(0usize, |a, &b| {
        a.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    for bit in [chosen % (data.len() * 8), 8 * 8, data.len() * 8 - 1] {
        let mut flipped = data.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(decode(&flipped).is_err(), "bit {bit} flipped was accepted");
    }
}
