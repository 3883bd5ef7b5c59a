//! walfmt's tests, in one binary:
//! - `units`: names, LSNs, history files, backup_label, timestamps;
//! - `fixtures`: committed segments from PostgreSQL 15-18 against the stored pg_waldump output
//!   (no PostgreSQL needed);
//! - `segment_math`: the named LSN, segment and page arithmetic (what callers must not hand-write);
//! - `robustness`: property tests over random and mutated WAL (no panic, no hang, right LSN);
//! - `differential`: fresh WAL from real servers against each version's own pg_waldump.

#![allow(clippy::unwrap_used)] // tests panic on failure by design

mod common;
mod differential;
mod fixtures;
mod robustness;
mod segment_math;
mod units;
