//! # pitr: point-in-time recovery for PostgreSQL
//!
//! The library behind the `pitr` binary. PostgreSQL formats live in the `walfmt` crate; this
//! crate holds the jobs (`wal inspect` for now; `stream`, `backup`, `restore` and `verify` as
//! they land) and the CLI.
//!
//! Errors: each module has a `thiserror` enum; `anyhow` is used only in `main.rs`.

pub mod backup;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod crashsafe;
pub mod demo;
pub mod list;
pub mod metrics;
pub mod pgproc;
pub(crate) mod progress;
pub mod replication;
pub mod repo;
pub mod restore;
pub mod server;
pub mod shutdown;
pub mod stream;
pub mod verify;
pub mod wal;
