//! The peer's hash cache (`DIR/.shoal-cache`), decoded from bytes: the input as a whole file,
//! and the input as the body of a valid envelope (magic, version, checksum), which reaches
//! the entry checks. Oracles (`shoal_fuzz::disk::check`): no panic; what decodes re-encodes
//! to the same bytes and decodes equal; a flipped bit is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_fuzz::disk::{self, HASH_CACHE_MAGIC};
use shoal_peer::fuzzing::HashCache;

fn encode(cache: &HashCache) -> Vec<u8> {
    cache.encode().expect("a decoded cache re-encodes")
}

fuzz_target!(|data: &[u8]| {
    disk::check(data, HashCache::decode, encode);
    disk::check(
        &disk::seal(&HASH_CACHE_MAGIC, data),
        HashCache::decode,
        encode,
    );
});
