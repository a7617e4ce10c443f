//! The durable store's log as recovery reads it (`shoal_index::fuzzing::durable_log_input`):
//! any bytes as `log.N` never make recovery panic; every byte after the header is an intact
//! record, reported damage or the reported tail; every record recovered re-encodes to one
//! that decodes equal; repairing keeps exactly the intact records. Odd first bytes build a
//! valid log with the input's rest appended as garbage, which must recover every record of
//! the valid part.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_index::fuzzing;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = fuzzing::durable_log_input(data) {
        panic!("{broken}");
    }
});
