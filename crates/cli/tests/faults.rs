//! Downloads where a holder trickles, stalls or outlives a deadline (issue: every wait has an
//! end). Over the in-memory network with injected faults; each download runs with an I/O
//! timeout of an hour, so a test that relied on it would hang past its bounded wait and fail.
//!
//! Every case runs twice: on the bare in-memory network and over TLS 1.3 on it.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

common::plain_and_tls!("faults/cases.rs");
