//! Swarm tests over the in-memory network: every downloader serves the chunks it has
//! verified, so a crowd finishes from each other instead of queueing at one seeder. Every
//! host's upload is limited (`MemNetwork::limit_upload`), so the seeder is a real
//! bottleneck; the assertions are about bytes, never about time.
//!
//! Every case runs twice: on the bare in-memory network and over TLS 1.3 on it.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

common::plain_and_tls!("swarm/cases.rs");
