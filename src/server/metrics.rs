//! Metrics of `pitr stream`, kept in atomics and rendered as Prometheus text.
//!
//! Names follow Prometheus conventions (`_bytes`, `_seconds`, `_total`, base units). LSNs are
//! exported as byte positions, so `pitr_archive_lag_bytes` =
//! `pitr_received_lsn_bytes - pitr_archived_lsn_bytes`.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

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
    /// The server's history differs from the repo's: the one-line refusal (nothing is archived).
    pub divergence: Mutex<Option<String>>,
    /// The server's flush position was behind the repo's tip at the last start attempt.
    pub server_behind: AtomicBool,
    /// WAL gaps this process recorded.
    pub wal_gaps: AtomicU64,
    /// The newest gap while no complete backup starts after it: its one-line description.
    pub open_gap: Mutex<Option<String>>,
    /// Wakes the scheduler for a base backup now (a gap opened).
    pub backup_now: Notify,
    /// Asks for the open-gap state to be read again from the repo (a backup completed).
    pub gap_recheck: Notify,
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
        // The refusal says more than "failed"; an open gap says less.
        if let Some(d) = self.divergence.lock().ok().and_then(|d| d.clone()) {
            return Err(d);
        }
        if self.failed.load(Ordering::Relaxed) {
            return Err("archiving has failed; see the log".into());
        }
        self.integrity()
    }

    /// The repo's integrity as seen by the stream: a divergence (nothing is archived), or an
    /// open WAL gap (nothing after it can be restored until a base backup starts after it).
    pub fn integrity(&self) -> Result<(), String> {
        if let Some(d) = self.divergence.lock().ok().and_then(|d| d.clone()) {
            return Err(d);
        }
        if let Some(g) = self.open_gap.lock().ok().and_then(|g| g.clone()) {
            return Err(format!(
                "{g}: no complete base backup starts after it yet; take one (pitr backup)"
            ));
        }
        Ok(())
    }

    /// Records the refusal of a server whose history is not the repo's.
    pub fn set_divergence(&self, line: &str) {
        if let Ok(mut d) = self.divergence.lock() {
            *d = Some(line.to_owned());
        }
        self.streaming.store(false, Ordering::Relaxed);
    }

    /// A gap was recorded by this process: counted, open, and a backup is due now.
    pub fn gap_recorded(&self, g: &crate::repo::gaps::GapRecord) {
        self.wal_gaps.fetch_add(1, Ordering::Relaxed);
        self.set_open_gap(Some(g.describe()));
        self.backup_now.notify_one();
        self.gap_recheck.notify_one();
    }

    /// Sets or clears the open gap.
    pub fn set_open_gap(&self, g: Option<String>) {
        if let Ok(mut cur) = self.open_gap.lock() {
            *cur = g;
        }
    }

    /// A gap is open.
    pub fn gap_open(&self) -> bool {
        self.open_gap.lock().is_ok_and(|g| g.is_some())
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
        let flag = |b: bool| u8::from(b).to_string();
        g(
            "pitr_history_diverged",
            "gauge",
            "1 when the server's history or WAL differs from the repo's (nothing is archived).",
            flag(self.divergence.lock().is_ok_and(|d| d.is_some())),
        );
        g(
            "pitr_server_behind_repo",
            "gauge",
            "1 while the server's WAL ends before the repo's tip (a lagging standby, or a rollback).",
            flag(self.server_behind.load(Ordering::Relaxed)),
        );
        g(
            "pitr_wal_gaps_total",
            "counter",
            "WAL gaps recorded in the repo by this process (WAL the server no longer had).",
            l(&self.wal_gaps),
        );
        g(
            "pitr_wal_gap_open",
            "gauge",
            "1 while no complete base backup starts after the repo's newest WAL gap.",
            flag(self.gap_open()),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn health_reports_divergence_then_failure_then_an_open_gap() {
        let m = Metrics::default();
        assert_eq!(m.health(), Ok(()));
        assert!(m.render().contains("pitr_history_diverged 0\n"));
        assert!(m.render().contains("pitr_wal_gap_open 0\n"));
        let g = crate::repo::gaps::GapRecord::new(
            walfmt::TimeLineId(1),
            walfmt::TimeLineId(1),
            walfmt::Lsn(0x700000),
            walfmt::Lsn(0x1200000),
            "test",
        );
        m.gap_recorded(&g);
        let why = m.health().unwrap_err();
        assert!(
            why.contains("0/1200000") && why.contains("pitr backup"),
            "{why}"
        );
        assert!(m.render().contains("pitr_wal_gap_open 1\n"));
        assert!(m.render().contains("pitr_wal_gaps_total 1\n"));
        m.failed.store(true, Ordering::Relaxed);
        assert_eq!(m.health().unwrap_err(), "archiving has failed; see the log");
        m.set_divergence("timeline 1: differs");
        assert_eq!(m.health().unwrap_err(), "timeline 1: differs");
        assert_eq!(m.readiness().unwrap_err(), "timeline 1: differs");
        assert!(m.render().contains("pitr_history_diverged 1\n"));
        m.set_open_gap(None);
        assert!(!m.gap_open());
    }
}
