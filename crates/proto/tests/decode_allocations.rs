//! Garbage fed to the decoder never makes it allocate more than a small multiple of the frame
//! limit, even when the garbage claims huge lengths (a vector of 2^60 elements, a 4 GiB frame). A counting
//! allocator records the largest single allocation. This file holds one test so no other
//! test's allocations run at the same time.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use shoal_proto::codec;
use shoal_proto::message::{IndexRequest, IndexResponse, PeerRequest, PeerResponse};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const LIMIT: u32 = 64 << 10;

fn feed(bytes: &[u8]) {
    let mut scratch = Vec::new();
    let _ = codec::read_frame::<_, IndexRequest>(&mut Cursor::new(bytes), LIMIT, &mut scratch);
    let _ = codec::read_frame::<_, IndexResponse>(&mut Cursor::new(bytes), LIMIT, &mut scratch);
    let _ = codec::read_frame::<_, PeerRequest>(&mut Cursor::new(bytes), LIMIT, &mut scratch);
    let _ = codec::read_frame::<_, PeerResponse>(&mut Cursor::new(bytes), LIMIT, &mut scratch);
}

#[test]
fn garbage_never_allocates_beyond_the_limit() {
    // Hand-made worst cases: a huge length prefix, and bodies whose varint lengths claim
    // enormous vectors and strings (0xfd = u64 varint marker in bincode's encoding).
    let mut cases: Vec<Vec<u8>> = vec![
        u32::MAX.to_be_bytes().to_vec(),
        LIMIT.to_be_bytes().to_vec(),
    ];
    for variant in 0u8..6 {
        let body = [
            &[variant][..],
            &[0xfd],
            &u64::MAX.to_le_bytes(),
            &[0xff; 40],
        ]
        .concat();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        cases.push(frame);
    }
    LARGEST.store(0, Ordering::Relaxed);
    for case in &cases {
        feed(case);
    }
    let mut runner = TestRunner::default();
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..4096), |body| {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            feed(&frame);
            feed(&body);
            Ok(())
        })
        .unwrap();
    let largest = LARGEST.load(Ordering::Relaxed);
    // Decoded messages are larger in memory than on the wire (a 35-byte FileMeta on the
    // wire is a 72-byte struct plus its name), and a growing Vec may hold up to twice its
    // elements: so the bound is a small multiple of the limit, never a claimed length.
    assert!(
        largest <= (LIMIT as usize) * 4,
        "largest single allocation was {largest} bytes, limit {LIMIT}"
    );
}
