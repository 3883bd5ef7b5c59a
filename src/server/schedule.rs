//! Base backups on a schedule inside `pitr stream` (`--backup-every 24h`, `--backup-at 02:00`),
//! each followed by retention when `--keep-full` / `--keep-within` are set.
//!
//! - When the repo holds no complete backup, one is taken right away: a sidecar without a
//!   backup cannot restore anything.
//! - `--backup-every D`: the next backup is due `D` after the newest complete one ended.
//! - `--backup-at HH:MM`: daily at that wall-clock time in the `TZ` zone (UTC when unset).
//! - A failed backup is logged, counted (`pitr_backup_failures_total`) and retried after
//!   five minutes (or the period, if shorter); it never stops the WAL stream.
//! - While the repo's newest WAL gap is open (no complete backup starts after it), a backup
//!   is due at once: the stream signals a new gap (`Metrics::backup_now`), and the state is
//!   read again after each backup.

use std::time::Duration;

use crate::backup::{self, BackupOptions};
use crate::repo::catalog;
use crate::repo::prune::{self, Retention};
use crate::server::Metrics;
use crate::shutdown::Shutdown;

/// When backups are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// A fixed period after the last backup.
    Every(Duration),
    /// Daily at this local time (hour, minute).
    At(i8, i8),
}

/// Parses `HH:MM`.
pub fn parse_at(s: &str) -> Result<(i8, i8), String> {
    let bad = || format!("invalid --backup-at {s:?}: use HH:MM, like 02:00");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return Err(bad());
    }
    Ok((h, m))
}

/// The zone `--backup-at` uses: `TZ`, else UTC.
fn zone() -> jiff::tz::TimeZone {
    std::env::var("TZ")
        .ok()
        .filter(|t| !t.is_empty())
        .and_then(|t| jiff::tz::TimeZone::get(t.trim_start_matches(':')).ok())
        .unwrap_or(jiff::tz::TimeZone::UTC)
}

/// When the next backup is due, given the end of the newest complete one.
pub fn next_due(
    s: Schedule,
    last_end: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
    tz: &jiff::tz::TimeZone,
) -> jiff::Timestamp {
    let Some(last) = last_end else {
        return now;
    };
    match s {
        Schedule::Every(d) => {
            let span = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
            last.checked_add(span).unwrap_or(now)
        }
        Schedule::At(h, m) => {
            // The first HH:MM after the last backup.
            let z = last.to_zoned(tz.clone());
            let mut day = z.date();
            for _ in 0..3 {
                if let Ok(t) = day.at(h, m, 0, 0).to_zoned(tz.clone())
                    && t.timestamp() > last
                {
                    return t.timestamp();
                }
                day = day.tomorrow().unwrap_or(day);
            }
            now
        }
    }
}

/// Settings.
#[derive(Debug, Clone)]
pub struct ScheduleOptions {
    /// When.
    pub schedule: Schedule,
    /// How (the stream's source and repo).
    pub backup: BackupOptions,
    /// Retention after each backup.
    pub retention: Option<Retention>,
}

/// Runs until `stop`.
pub async fn run(opts: ScheduleOptions, metrics: std::sync::Arc<Metrics>, mut stop: Shutdown) {
    use std::sync::atomic::Ordering;
    let tz = zone();
    // Let the stream connect first: the backup waits for its WAL.
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        _ = stop.recv() => return,
    }
    let mut retry_at: Option<jiff::Timestamp> = None;
    loop {
        let last = match catalog::backups(&opts.backup.repo).await {
            Ok(b) => b
                .last()
                .and_then(|b| b.end_time.parse::<jiff::Timestamp>().ok()),
            Err(e) => {
                tracing::warn!(error = %e, "scheduled backup: cannot read the catalog; retrying in 1 min");
                retry_at = Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60));
                None
            }
        };
        if let Some(l) = last {
            metrics
                .last_backup_unix_us
                .store(l.as_microsecond(), Ordering::Relaxed);
        }
        let now = jiff::Timestamp::now();
        let mut due = next_due(opts.schedule, last, now, &tz);
        if metrics.gap_open()
            && crate::stream::startup::refresh_open_gap(&opts.backup.repo, &metrics).await
        {
            // Nothing after the gap can be restored until a backup starts after it.
            due = now;
        }
        if let Some(r) = retry_at
            && r > due
        {
            due = r;
        }
        let wait = due.duration_since(now).try_into().unwrap_or(Duration::ZERO);
        if !wait.is_zero() {
            tracing::info!(due = %due, "next scheduled base backup");
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A gap opened: due now (re-evaluated at the top of the loop).
            _ = metrics.backup_now.notified() => continue,
            _ = stop.recv() => return,
        }
        let res = tokio::select! {
            r = backup::run(&opts.backup) => r,
            _ = stop.recv() => {
                tracing::info!("scheduled backup abandoned at shutdown (it stays incomplete; prune removes it later)");
                return;
            }
        };
        match res {
            Ok(rec) => {
                retry_at = None;
                metrics.backups.fetch_add(1, Ordering::Relaxed);
                metrics.gap_recheck.notify_one();
                tracing::info!(id = %rec.id, end = %rec.end_lsn, "scheduled base backup complete");
                if let Some(r) = opts.retention {
                    match prune::prune(&opts.backup.repo, r, false).await {
                        Ok(p) => tracing::info!(
                            deleted_backups = p.deleted_backups.len(),
                            deleted_wal_objects = p.deleted_wal_objects,
                            "retention applied"
                        ),
                        Err(e) => {
                            tracing::warn!(error = %e, "retention failed; will retry after the next backup")
                        }
                    }
                }
            }
            Err(e) => {
                metrics.backup_failures.fetch_add(1, Ordering::Relaxed);
                let period = match opts.schedule {
                    Schedule::Every(d) => d.min(Duration::from_secs(300)),
                    Schedule::At(..) => Duration::from_secs(300),
                };
                tracing::error!(error = %e, retry_in_s = period.as_secs(), "scheduled base backup failed");
                retry_at = Some(
                    jiff::Timestamp::now()
                        + jiff::SignedDuration::try_from(period)
                            .unwrap_or(jiff::SignedDuration::from_secs(300)),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn due_times() {
        let utc = jiff::tz::TimeZone::UTC;
        let now: jiff::Timestamp = "2025-11-22T10:00:00Z".parse().unwrap();
        assert_eq!(next_due(Schedule::At(2, 0), None, now, &utc), now);
        let last: jiff::Timestamp = "2025-11-22T02:00:30Z".parse().unwrap();
        assert_eq!(
            next_due(Schedule::At(2, 0), Some(last), now, &utc).to_string(),
            "2025-11-23T02:00:00Z"
        );
        let last: jiff::Timestamp = "2025-11-21T23:00:00Z".parse().unwrap();
        assert_eq!(
            next_due(Schedule::At(2, 0), Some(last), now, &utc).to_string(),
            "2025-11-22T02:00:00Z"
        );
        assert_eq!(
            next_due(
                Schedule::Every(Duration::from_secs(3600)),
                Some(last),
                now,
                &utc
            )
            .to_string(),
            "2025-11-22T00:00:00Z"
        );
        assert!(parse_at("25:00").is_err());
        assert_eq!(parse_at("02:30"), Ok((2, 30)));
    }
}
