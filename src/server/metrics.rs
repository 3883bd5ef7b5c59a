//! Metrics of `pitr stream`, kept in atomics and rendered as Prometheus text.
//!
//! Names follow Prometheus conventions (`_bytes`, `_seconds`, `_total`, base units). LSNs are
//! exported as byte positions, so `pitr_archive_lag_bytes` =
//! `pitr_received_lsn_bytes - pitr_archived_lsn_bytes`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Readiness fails when the archive trails what was received by more than this.
pub const READY_MAX_LAG_BYTES: u64 = 256 << 20;

/// Counters and gauges shared by the receiver, the archiver and the HTTP server.
#[derive(Debug, Default)]
pub struct Metrics {
    /// End of WAL received from the server.
    pub received_lsn: AtomicU64,
    /// Flush position last reported to the server.
    pub flushed_lsn: AtomicU64,
    /// End of WAL durable in the repo.
    pub archived_lsn: AtomicU64,
    /// Bytes in the `--ack spool` spool.
    pub spool_bytes: AtomicU64,
    /// The server's WAL write position, read every few seconds over SQL (0: unknown).
    pub server_lsn: AtomicU64,
    /// Unix microseconds of the last archived commit (0: none yet).
    pub last_commit_unix_us: AtomicI64,
    /// Objects uploaded.
    pub uploads: AtomicU64,
    /// Storage retries after transient errors.
    pub retries: AtomicU64,
    /// Storage errors (transient included).
    pub errors: AtomicU64,
    /// Reconnections to the server.
    pub reconnects: AtomicU64,
    /// Current timeline.
    pub timeline: AtomicU64,
    /// Streaming right now.
    pub streaming: AtomicBool,
    /// The archiver has failed (permanently).
    pub failed: AtomicBool,
    /// `safe_wal_size` of the slot, when known.
    pub slot_safe_wal_size: AtomicU64,
    /// `slot_safe_wal_size` has been read.
    pub slot_safe_known: AtomicBool,
    /// The slot is close to (or past) `max_slot_wal_keep_size`.
    pub slot_warning: AtomicBool,
    /// Scheduled backups completed.
    pub backups: AtomicU64,
    /// Scheduled backups that failed.
    pub backup_failures: AtomicU64,
    /// Unix microseconds of the end of the last complete scheduled backup (0: none).
    pub last_backup_unix_us: AtomicI64,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Metrics {
    /// Archive lag in bytes.
    pub fn lag(&self) -> u64 {
        self.received_lsn
            .load(Ordering::Relaxed)
            .saturating_sub(self.archived_lsn.load(Ordering::Relaxed))
    }

    /// Liveness.
    pub fn health(&self) -> Result<(), String> {
        if self.failed.load(Ordering::Relaxed) {
            Err("archiving has failed; see the log".into())
        } else {
            Ok(())
        }
    }

    /// Readiness.
    pub fn readiness(&self) -> Result<(), String> {
        self.health()?;
        if !self.streaming.load(Ordering::Relaxed) {
            return Err("not streaming (connecting or reconnecting)".into());
        }
        let lag = self.lag();
        if lag > READY_MAX_LAG_BYTES {
            return Err(format!(
                "archive lag {lag} bytes exceeds {READY_MAX_LAG_BYTES}"
            ));
        }
        Ok(())
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut g = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        g(
            "pitr_received_lsn_bytes",
            "gauge",
            "End of WAL received from the server, as a byte position.",
            l(&self.received_lsn),
        );
        g(
            "pitr_flushed_lsn_bytes",
            "gauge",
            "Flush position last reported to the server.",
            l(&self.flushed_lsn),
        );
        g(
            "pitr_archived_lsn_bytes",
            "gauge",
            "End of WAL durable in the repo.",
            l(&self.archived_lsn),
        );
        g(
            "pitr_archive_lag_bytes",
            "gauge",
            "WAL received but not yet durable in the repo.",
            self.lag().to_string(),
        );
        let server = self.server_lsn.load(Ordering::Relaxed);
        if server > 0 {
            g(
                "pitr_server_lsn_bytes",
                "gauge",
                "The server's current WAL position, polled over SQL.",
                server.to_string(),
            );
            g(
                "pitr_server_archive_lag_bytes",
                "gauge",
                "WAL the server has written that is not yet durable in the repo.",
                server
                    .saturating_sub(self.archived_lsn.load(Ordering::Relaxed))
                    .to_string(),
            );
        }
        let last = self.last_commit_unix_us.load(Ordering::Relaxed);
        if last > 0 {
            g(
                "pitr_last_archived_commit_timestamp_seconds",
                "gauge",
                "Commit time of the newest commit durable in the repo.",
                format!("{:.6}", last as f64 / 1e6),
            );
            g(
                "pitr_last_archived_commit_age_seconds",
                "gauge",
                "Seconds since the newest commit durable in the repo was made.",
                format!("{:.3}", (now_us() - last).max(0) as f64 / 1e6),
            );
        }
        g(
            "pitr_uploads_total",
            "counter",
            "Objects written to the repo.",
            l(&self.uploads),
        );
        g(
            "pitr_upload_retries_total",
            "counter",
            "Storage operations retried after a transient error.",
            l(&self.retries),
        );
        g(
            "pitr_upload_errors_total",
            "counter",
            "Storage operations that failed (retried or not).",
            l(&self.errors),
        );
        g(
            "pitr_reconnects_total",
            "counter",
            "Reconnections to the server.",
            l(&self.reconnects),
        );
        g(
            "pitr_timeline",
            "gauge",
            "Timeline being archived.",
            l(&self.timeline),
        );
        g(
            "pitr_spool_bytes",
            "gauge",
            "WAL in the local spool (--ack spool) not yet removed after upload.",
            l(&self.spool_bytes),
        );
        if self.backups.load(Ordering::Relaxed) + self.backup_failures.load(Ordering::Relaxed) > 0 {
            g(
                "pitr_backups_total",
                "counter",
                "Scheduled base backups completed (--backup-every / --backup-at).",
                l(&self.backups),
            );
            g(
                "pitr_backup_failures_total",
                "counter",
                "Scheduled base backups that failed.",
                l(&self.backup_failures),
            );
        }
        let lb = self.last_backup_unix_us.load(Ordering::Relaxed);
        if lb > 0 {
            g(
                "pitr_last_backup_timestamp_seconds",
                "gauge",
                "When the newest complete base backup ended.",
                format!("{:.6}", lb as f64 / 1e6),
            );
        }
        g(
            "pitr_streaming",
            "gauge",
            "1 while streaming from the server.",
            u8::from(self.streaming.load(Ordering::Relaxed)).to_string(),
        );
        s
    }
}
