//! `IndexRequest` frames: `read_frame` (whole and byte by byte) and `decode_body`, with the
//! round-trip oracle on everything accepted. See `shoal_fuzz::frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::message::IndexRequest;

fuzz_target!(|data: &[u8]| {
    shoal_fuzz::frames::<IndexRequest>(data, shoal_fuzz::REQUEST_LIMIT);
});
