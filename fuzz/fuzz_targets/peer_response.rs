//! `PeerResponse` frames: `read_frame` (whole and byte by byte) and `decode_body`, with the
//! round-trip oracle on everything accepted. See `shoal_fuzz::frames`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::message::PeerResponse;

fuzz_target!(|data: &[u8]| {
    shoal_fuzz::frames::<PeerResponse>(data, shoal_fuzz::RESPONSE_LIMIT);
});
