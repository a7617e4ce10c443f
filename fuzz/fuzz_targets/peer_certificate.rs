//! A peer's certificate, the first thing a node reads from a stranger in every TLS handshake:
//! the open-mode and swarm-mode verifiers' checks and the certificate field readers (a DER
//! reader of shoal's own) must never panic, and the swarm verifier must never accept what
//! its own authority did not sign. Input: a certificate as-is (starting with 0x30), or a
//! 2-byte big-endian length, an end-entity certificate of that length, then an intermediate.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shoal_proto::tls::fuzzing::{self, Verifiers};

fn verifiers() -> &'static Verifiers {
    static V: OnceLock<Verifiers> = OnceLock::new();
    V.get_or_init(|| fuzzing::verifiers().expect("a swarm authority"))
}

fuzz_target!(|data: &[u8]| {
    let (end_entity, intermediate) = match data {
        [0x30, ..] | [] | [_] => (data, None),
        [hi, lo, rest @ ..] => {
            let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
            (&rest[..len], Some(&rest[len..]))
        }
    };
    let (open, swarm) = fuzzing::peer_certificate(verifiers(), end_entity, intermediate);
    // The swarm's authority is made at start and never signs anything the input could
    // contain, so no input can be a member.
    assert!(swarm.is_none(), "a forged certificate was accepted as a member");
    let _ = open;
});
