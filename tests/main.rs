//! pitr's integration tests: one binary, one module per area. Tests that need PostgreSQL use
//! `testkit` to start real servers of every installed major (all four under `CI=true`).

#![allow(clippy::unwrap_used)] // tests panic on failure by design

mod correctness;
mod differential;
mod docker;
mod encryption;
mod encryption_faults;
mod encryption_redteam2;
mod faults;
mod harness;
mod inspect;
mod integrity;
#[cfg(feature = "kms")]
mod kms;
mod redteam;
mod replication;
mod restore;
mod store;
mod stream;
mod testcontainers_restore;
mod textfile;
mod verify_image;
mod write_only;
