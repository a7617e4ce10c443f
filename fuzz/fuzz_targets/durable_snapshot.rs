//! The durable store's snapshot as recovery loads it
//! (`shoal_index::fuzzing::durable_snapshot_input`): any bytes as `snapshot.N` never make
//! loading panic, and whatever loads re-encodes to a snapshot that loads to the same
//! registrations. Odd first bytes build a registry from the input: its snapshot loads back
//! to it, and is refused with one bit flipped or cut short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_index::fuzzing;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = fuzzing::durable_snapshot_input(data) {
        panic!("{broken}");
    }
});
