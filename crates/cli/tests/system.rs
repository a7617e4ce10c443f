//! Whole-system tests: an index and three peers in one process over the in-memory transport
//! (every case twice: plain, and over TLS 1.3 with a key per node),
//! seeded randomness, injected faults. Each test asserts what a user would check.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

common::plain_and_tls!("system/cases.rs");
