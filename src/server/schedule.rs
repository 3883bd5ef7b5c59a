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
use crate::metrics::Metrics;
use crate::repo::catalog;
use crate::repo::prune::{self, Retention};
use crate::shutdown::Shutdown;

/// When backups are due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schedule {
    /// A fixed period after the last backup.
    Every(Duration),
    /// Daily at this local time (hour, minute).
    At(i8, i8),
}

/// Parses `HH:MM`.
pub(crate) fn parse_at(s: &str) -> Result<(i8, i8), String> {
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
pub(crate) fn next_due(
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

/// Wait after start-up before the first decision: the stream connects first (a backup waits
/// for its WAL).
pub(crate) const START_DELAY: Duration = Duration::from_secs(2);
/// Retry after the catalog could not be read.
pub(crate) const CATALOG_RETRY: Duration = Duration::from_secs(60);
/// Retry after a failed backup (or the `--backup-every` period, if shorter).
pub(crate) const FAILURE_RETRY: Duration = Duration::from_secs(300);

/// When the next backup is due (pure): the schedule's next time after the newest complete
/// backup (now when the repo has none), now while the repo's newest WAL gap is open, and
/// never before a pending retry (`retry_at`, after a failure).
pub(crate) fn decide(
    s: Schedule,
    last_end: Option<jiff::Timestamp>,
    gap_open: bool,
    retry_at: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
    tz: &jiff::tz::TimeZone,
) -> jiff::Timestamp {
    let mut due = next_due(s, last_end, now, tz);
    if gap_open {
        // Nothing after the gap can be restored until a backup starts after it.
        due = now;
    }
    match retry_at {
        Some(r) if r > due => r,
        _ => due,
    }
}

/// How long after a failed backup the next attempt is due: [`FAILURE_RETRY`], or the
/// `--backup-every` period when shorter.
pub(crate) fn retry_period(s: Schedule) -> Duration {
    match s {
        Schedule::Every(d) => d.min(FAILURE_RETRY),
        Schedule::At(..) => FAILURE_RETRY,
    }
}

/// `at` plus `d` (saturating at a far-future instant).
fn after(at: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    let span = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::from_secs(300));
    at.checked_add(span).unwrap_or(jiff::Timestamp::MAX)
}

/// Settings.
#[derive(Debug, Clone)]
pub(crate) struct ScheduleOptions {
    /// When.
    pub schedule: Schedule,
    /// How (the stream's source and repo).
    pub backup: BackupOptions,
    /// Retention after each backup.
    pub retention: Option<Retention>,
}

/// Runs until `stop`.
pub(crate) async fn run(
    opts: ScheduleOptions,
    metrics: std::sync::Arc<Metrics>,
    mut stop: Shutdown,
) {
    use std::sync::atomic::Ordering;
    let tz = zone();
    // Let the stream connect first: the backup waits for its WAL.
    tokio::select! {
        _ = tokio::time::sleep(START_DELAY) => {}
        _ = stop.recv() => return,
    }
    let mut retry_at: Option<jiff::Timestamp> = None;
    let readable = opts.backup.repo.can_read();
    if !readable {
        tracing::info!(
            "write-only mode: the backup schedule counts from the newest complete backup's start (its id), since catalog entries cannot be read"
        );
    }
    // The end of the newest backup this process took.
    let mut own_last: Option<jiff::Timestamp> = None;
    loop {
        let newest = if readable {
            catalog::backups(&opts.backup.repo).await.map(|b| {
                b.last()
                    .and_then(|b| b.end_time.parse::<jiff::Timestamp>().ok())
            })
        } else {
            last_backup_by_name(&opts.backup.repo).await
        };
        let last = match newest {
            Ok(l) => l.max(own_last),
            Err(e) => {
                tracing::warn!(error = %e, "scheduled backup: cannot read the catalog; retrying in 1 min");
                retry_at = Some(after(jiff::Timestamp::now(), CATALOG_RETRY));
                own_last
            }
        };
        if let Some(l) = last {
            metrics
                .last_backup_unix_us
                .store(l.as_microsecond(), Ordering::Relaxed);
        }
        let gap_open = metrics.gap_open()
            && crate::metrics::refresh_open_gap(&opts.backup.repo, &metrics).await;
        let now = jiff::Timestamp::now();
        let due = decide(opts.schedule, last, gap_open, retry_at, now, &tz);
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
                own_last = own_last.max(rec.end_time.parse().ok());
                if !readable {
                    metrics.backup_completed_here(rec.start(), rec.start_tli);
                }
                metrics.backups.fetch_add(1, Ordering::Relaxed);
                metrics.gap_recheck.notify_one();
                tracing::info!(id = %rec.id, end = %rec.end_lsn, "scheduled base backup complete");
                if let Some(r) = opts.retention.filter(|_| !readable) {
                    // Refused at start-up (`pitr stream`); never applied unread.
                    tracing::warn!(retention = ?r, "write-only mode: retention needs to read the catalog; not applied (run pitr prune --identity FILE)");
                } else if let Some(r) = opts.retention {
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
                let period = retry_period(opts.schedule);
                tracing::error!(error = %e, retry_in_s = period.as_secs(), "scheduled base backup failed");
                retry_at = Some(after(jiff::Timestamp::now(), period));
            }
        }
    }
}

/// Write-only mode: when the newest complete backup started, from the catalog's names (its
/// end time is in its entry, which cannot be read). `None` when there is none.
async fn last_backup_by_name(
    repo: &crate::repo::Repo,
) -> Result<Option<jiff::Timestamp>, crate::repo::RepoError> {
    Ok(catalog::complete_backup_ids(repo)
        .await?
        .iter()
        .filter_map(|id| catalog::id_start_time(id))
        .max())
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

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn backup_every_is_due_its_period_after_the_last_backup_ended() {
        let utc = jiff::tz::TimeZone::UTC;
        let now = ts("2025-11-22T10:00:00Z");
        let every = Schedule::Every(24 * HOUR);
        let last = ts("2025-11-22T03:15:00Z");
        let due = decide(every, Some(last), false, None, now, &utc);
        assert_eq!(due, ts("2025-11-23T03:15:00Z"));
        // Overdue: the due time is in the past, so the wait is zero.
        let due = decide(
            every,
            Some(ts("2025-11-20T00:00:00Z")),
            false,
            None,
            now,
            &utc,
        );
        assert!(due <= now);
    }

    #[test]
    fn backup_at_is_due_at_the_first_such_wall_clock_time_after_the_last_backup() {
        let now = ts("2025-11-22T10:00:00Z");
        let at = Schedule::At(2, 0);
        let utc = jiff::tz::TimeZone::UTC;
        let due = decide(at, Some(ts("2025-11-22T01:59:00Z")), false, None, now, &utc);
        assert_eq!(due, ts("2025-11-22T02:00:00Z"));
        let due = decide(at, Some(ts("2025-11-22T02:00:00Z")), false, None, now, &utc);
        assert_eq!(due, ts("2025-11-23T02:00:00Z"));
        // In the TZ zone: 02:00 in Paris (UTC+1 in November) is 01:00 UTC.
        let paris = jiff::tz::TimeZone::get("Europe/Paris").unwrap();
        let due = decide(
            at,
            Some(ts("2025-11-22T03:00:00Z")),
            false,
            None,
            now,
            &paris,
        );
        assert_eq!(due, ts("2025-11-23T01:00:00Z"));
    }

    #[test]
    fn a_backup_is_due_at_once_when_the_repo_has_none() {
        let utc = jiff::tz::TimeZone::UTC;
        let now = ts("2025-11-22T10:00:00Z");
        for s in [Schedule::Every(24 * HOUR), Schedule::At(2, 0)] {
            assert_eq!(decide(s, None, false, None, now, &utc), now, "{s:?}");
        }
    }

    #[test]
    fn an_open_gap_makes_a_backup_due_at_once() {
        let utc = jiff::tz::TimeZone::UTC;
        let now = ts("2025-11-22T10:00:00Z");
        let last = Some(ts("2025-11-22T09:00:00Z"));
        assert_eq!(
            decide(Schedule::Every(24 * HOUR), last, true, None, now, &utc),
            now
        );
    }

    #[test]
    fn a_failed_backup_is_retried_after_five_minutes_or_the_period() {
        assert_eq!(retry_period(Schedule::Every(24 * HOUR)), FAILURE_RETRY);
        assert_eq!(
            retry_period(Schedule::Every(Duration::from_secs(60))),
            Duration::from_secs(60)
        );
        assert_eq!(retry_period(Schedule::At(2, 0)), FAILURE_RETRY);
        let utc = jiff::tz::TimeZone::UTC;
        let now = ts("2025-11-22T10:00:00Z");
        let retry = after(now, retry_period(Schedule::At(2, 0)));
        assert_eq!(retry, ts("2025-11-22T10:05:00Z"));
        // The first backup of an empty repo failed: not again at once, but at the retry.
        let s = Schedule::Every(24 * HOUR);
        assert_eq!(decide(s, None, false, Some(retry), now, &utc), retry);
        // A gap does not override the retry either (the backup just failed).
        assert_eq!(decide(s, None, true, Some(retry), now, &utc), retry);
        // A retry earlier than the schedule's next time changes nothing.
        let last = Some(ts("2025-11-22T09:00:00Z"));
        assert_eq!(
            decide(s, last, false, Some(retry), now, &utc),
            ts("2025-11-23T09:00:00Z")
        );
    }
}
