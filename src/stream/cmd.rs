//! `pitr stream` as a command: from resolved [`StreamSettings`] to a running sidecar (the
//! WAL stream, the metrics endpoints, scheduled backups), stopped by a [`Shutdown`].
//!
//! Invariants:
//! - Settings arrive parsed and checked ([`crate::config::resolve`]); this module only wires
//!   them: nothing here parses a string or picks a default (those are in [`crate::config`]).
//! - The spool directory's lock is held until the stream has stopped.
//! - The metrics server and the scheduler stop with the same [`Shutdown`] as the stream.
//! - After a shutdown request the process ends within twice `--shutdown-timeout` plus
//!   [`WATCHDOG_GRACE`], whatever is stuck ([`watchdog`]).

use std::process::ExitCode;
use std::sync::Arc;

use crate::backup::BackupOptions;
use crate::config::{self, StreamSettings};
use crate::metrics::Metrics;
use crate::metrics::ReadyPolicy;
use crate::replication::conninfo::{ConnInfoError, ConnParams};
use crate::repo::{Repo, RepoError};
use crate::server;
use crate::server::schedule::{self, ScheduleOptions};
use crate::shutdown::Shutdown;
use crate::stream::{self, StreamError, StreamOptions, spool};

/// Why `pitr stream` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// A bad `--source`.
    #[error(transparent)]
    ConnInfo(#[from] ConnInfoError),
    /// The repo could not be opened.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The stream (or the spool) failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The metrics address could not be bound.
    #[error(
        "cannot listen on {addr} for metrics: {source} (use --metrics-listen HOST:PORT or off)"
    )]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Runs `pitr stream` until `shutdown` (or a fatal error).
pub async fn run(settings: StreamSettings, shutdown: Shutdown) -> Result<ExitCode, CmdError> {
    let source = ConnParams::parse(&settings.source, true)?;
    let repo = Repo::open(&settings.repo).await?;
    if settings.retention().is_some() && !repo.can_read() {
        return Err(StreamError::Refused(
            "--keep-full and --keep-within need to read the backups' catalog entries, which write-only mode (--recipient without --identity) cannot: drop them here and run pitr prune --identity FILE where the identity is kept".into(),
        )
        .into());
    }
    // Held until exit: the spool is this process's alone.
    let spool_dir = settings.spool();
    let spool_lock = spool_dir.as_deref().map(spool::prepare_dir).transpose()?;
    let opts = StreamOptions {
        source,
        repo,
        slot: settings.slot.clone(),
        partial_every: settings.partial_every,
        status_interval: settings.status_interval,
        reconnect_cap: config::RECONNECT_CAP,
        metrics: Arc::new(Metrics::new(ReadyPolicy {
            max_lag_bytes: settings.ready_max_lag,
            max_lag_time: settings.ready_max_lag_time,
        })),
        slot_check_every: config::SLOT_CHECK_EVERY,
        spool: spool_dir.map(|dir| spool::SpoolConfig {
            dir,
            max_bytes: settings.spool_max,
        }),
        shutdown_timeout: settings.shutdown_timeout,
        writer_heartbeat: settings.writer_heartbeat,
        // With metrics served, a refusal stays visible on /healthz until SIGTERM.
        linger_on_divergence: settings.metrics_listen.addr().is_some(),
    };
    watchdog(shutdown.clone(), settings.shutdown_timeout);
    if let Some(s) = scheduled_backups(&settings, &opts) {
        tokio::spawn(schedule::run(s, opts.metrics.clone(), shutdown.clone()));
    }
    if let Some(addr) = settings.metrics_listen.addr() {
        let bound = server::serve(addr, opts.metrics.clone(), shutdown.clone())
            .await
            .map_err(|source| CmdError::Listen { addr, source })?;
        tracing::info!(address = %bound, "serving /metrics, /livez, /healthz and /readyz");
    }
    stream::run(opts, shutdown).await?;
    drop(spool_lock);
    Ok(ExitCode::SUCCESS)
}

/// The last line of defence behind the deadlines of an orderly stop: once shutdown is
/// requested, a plain thread (which neither a stuck task nor a blocked runtime can hold)
/// ends the process, with an error line and exit code 1, if it is still running after
/// twice the shutdown timeout plus [`WATCHDOG_GRACE`]. An orderly stop needs at most the
/// timeout for the session and the timeout again for the uploads, plus a few seconds, so
/// this fires only on a bug; nothing is lost when it does (what was not reported flushed
/// stays on the server).
fn watchdog(mut shutdown: Shutdown, timeout: std::time::Duration) {
    tokio::spawn(async move {
        shutdown.recv().await;
        let limit = 2 * timeout + WATCHDOG_GRACE;
        std::thread::spawn(move || {
            std::thread::sleep(limit);
            tracing::error!(after = ?limit, "internal error: the orderly stop did not finish; exiting now (what was not reported flushed stays on the server)");
            std::process::exit(1);
        });
    });
}

/// See [`watchdog`].
const WATCHDOG_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// The scheduler's options: backups of the stream's server into its repo, on the settings'
/// schedule, with their retention. `None` without a schedule.
fn scheduled_backups(settings: &StreamSettings, opts: &StreamOptions) -> Option<ScheduleOptions> {
    Some(ScheduleOptions {
        schedule: settings.schedule()?,
        backup: BackupOptions {
            source: opts.source.clone(),
            repo: opts.repo.clone(),
            label: config::SCHEDULED_BACKUP_LABEL.into(),
            server_compression: false,
            codec: crate::repo::codec::ChunkCodec::Lz4,
            wal_timeout: config::SCHEDULED_BACKUP_WAL_TIMEOUT,
            progress: false,
            wake: Some(opts.metrics.clone()),
        },
        retention: settings.retention(),
    })
}
