//! # pitr: point-in-time recovery for PostgreSQL
//!
//! The library behind the `pitr` binary; `ARCHITECTURE.md` maps every behaviour to the
//! module that owns it. PostgreSQL's formats live in the `walfmt` crate, never here.
//!
//! - Layers: [`replication`] (the wire protocol, BASE_BACKUP as typed events) and [`repo`]
//!   (storage backends, retries, the typed stored objects, catalog, retention).
//! - One module per job, each with its command's `run` in `cmd`: [`stream`], [`backup`],
//!   [`restore`], [`verify`], [`list`], [`wal`], and [`demo`], the tour of them all.
//! - The sidecar's HTTP endpoints and schedule: [`server`]; its metrics: [`metrics`].
//! - Shared concerns, one home each: [`config`] (settings resolution), [`cli`],
//!   [`shutdown`], [`crashsafe`] (fsync and atomic publish), [`pgproc`] (PostgreSQL
//!   binaries and processes), [`cmd`] (command output).
//!
//! Errors: each module has a `thiserror` enum that keeps its sources; `anyhow` is used only
//! by the binary and the demo.

pub mod backup;
pub mod cli;
pub(crate) mod cmd;
pub mod config;
pub(crate) mod crashsafe;
pub mod demo;
pub mod key;
pub mod list;
pub mod metrics;
pub(crate) mod pgproc;
pub(crate) mod progress;
pub mod replication;
pub mod repo;
pub mod restore;
pub(crate) mod server;
pub mod shutdown;
pub mod stream;
pub mod verify;
pub mod wal;

/// What the hermetic unit tests share.
#[cfg(test)]
pub(crate) mod test_util {
    /// Runs a future to completion on a current-thread runtime with timers and I/O.
    pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
            .block_on(f)
    }
}
