//! `IndexResponse` frames: `read_frame` (whole and byte by byte) and `decode_body`, with the
//! round-trip oracle on everything accepted. See `shoal_fuzz::frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::message::IndexResponse;

fuzz_target!(|data: &[u8]| {
    shoal_fuzz::frames::<IndexResponse>(data, shoal_fuzz::RESPONSE_LIMIT);
});
