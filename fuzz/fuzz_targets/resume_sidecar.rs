//! The peer's resume sidecar (`DIR/.NAME.shoal-state`), decoded from bytes: the input as a
//! whole file, and the input as the body of a valid envelope (magic, version, checksum),
//! which reaches the geometry and bitmap checks. Oracles (`shoal_fuzz::disk::check`): no
//! panic; what decodes re-encodes to the same bytes and decodes equal; a flipped bit is
//! refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_fuzz::disk::{self, RESUME_MAGIC};
use shoal_peer::fuzzing::ResumeSidecar;

fuzz_target!(|data: &[u8]| {
    disk::check(data, ResumeSidecar::decode, ResumeSidecar::encode);
    disk::check(
        &disk::seal(&RESUME_MAGIC, data),
        ResumeSidecar::decode,
        ResumeSidecar::encode,
    );
});
