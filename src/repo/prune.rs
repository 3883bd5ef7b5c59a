//! Retention: `pitr prune --keep-full N --keep-within 7d`.
//!
//! # Rules
//!
//! - A backup is kept if either rule keeps it: it is among the newest `N`, or it is needed to
//!   restore to some instant within the window (every backup ending inside the window, plus
//!   the newest one ending before it). The newest backup is always kept. "Newest" is by end
//!   time, never by LSN: after a restore to a point before the newest backup, the new
//!   timeline's backups have LSNs below the abandoned timeline's, yet they are the ones the
//!   live cluster needs.
//! - WAL is deleted only below the segment holding the lowest start LSN of any kept backup,
//!   on every timeline: no kept backup, and no restore from one, reads a segment below its
//!   own start. History files are never deleted.
//! - Order: a backup's catalog entry first (it stops counting as complete), then its chunks,
//!   then the WAL. An interrupted prune leaves only incomplete backups and surplus WAL.
//! - Concurrency: `pitr stream` only adds WAL above the newest backup, and a running `pitr
//!   backup` has no catalog entry yet; incomplete backups are deleted only when they started
//!   before the oldest kept backup and more than a day ago, so a running backup is never
//!   touched.

use std::time::Duration;

use serde::Serialize;
use walfmt::SegNo;

use super::catalog::{self, BackupRecord};
use super::{Repo, RepoError, WalObject, parse_wal_key};

/// `prune` settings.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Keep the newest N backups.
    pub keep_full: Option<usize>,
    /// Keep what is needed to restore anywhere within this window.
    pub keep_within: Option<Duration>,
}

/// What prune did (or would do with `--dry-run`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// Backups kept.
    pub kept: Vec<String>,
    /// Backups deleted.
    pub deleted_backups: Vec<String>,
    /// Incomplete backups deleted.
    pub deleted_incomplete: Vec<String>,
    /// WAL objects deleted.
    pub deleted_wal_objects: usize,
    /// Restore point records deleted.
    pub deleted_points: usize,
    /// First WAL segment kept.
    pub wal_kept_from: Option<String>,
    /// Why no WAL was deleted although retention would allow it (an unusable catalog entry:
    /// the backup it describes may need that WAL).
    pub wal_kept_because: Option<String>,
    /// Nothing was deleted (`--dry-run`).
    pub dry_run: bool,
}

/// Backups in the order retention counts them: by end time (then id), oldest first.
pub fn by_end_time(mut backups: Vec<BackupRecord>) -> Vec<BackupRecord> {
    backups.sort_by(|a, b| (a.end_micros(), &a.id).cmp(&(b.end_micros(), &b.id)));
    backups
}

/// Which backups the rules keep (indexes into `backups`, oldest first by end time; see
/// [`by_end_time`]).
pub fn keep_set(backups: &[BackupRecord], r: Retention, now_us: i64) -> Vec<bool> {
    let n = backups.len();
    let mut keep = vec![false; n];
    if n == 0 {
        return keep;
    }
    if r.keep_full.is_none() && r.keep_within.is_none() {
        return vec![true; n];
    }
    keep[n - 1] = true;
    if let Some(k) = r.keep_full {
        for flag in keep.iter_mut().skip(n.saturating_sub(k)) {
            *flag = true;
        }
    }
    if let Some(w) = r.keep_within {
        let from = now_us.saturating_sub(w.as_micros() as i64);
        let mut newest_before = None;
        for (i, b) in backups.iter().enumerate() {
            if b.end_micros() >= from {
                keep[i] = true;
            } else {
                newest_before = Some(i);
            }
        }
        if let Some(i) = newest_before {
            keep[i] = true;
        }
    }
    keep
}

/// An incomplete backup older than this is an interrupted one (microseconds: a day).
pub const INCOMPLETE_AGE_US: i64 = 86_400_000_000;

/// Applies retention.
pub async fn prune(repo: &Repo, r: Retention, dry_run: bool) -> Result<PruneReport, RepoError> {
    let (_, seg, _) = catalog::identity(repo).await?;
    let scan = catalog::scan_backups(repo).await?;
    // An unusable catalog entry is skipped (and its objects left alone: pitr cannot tell
    // what it is); `pitr verify` names it.
    catalog::warn_bad(&scan.bad);
    let backups = by_end_time(scan.good);
    let now = jiff::Timestamp::now().as_microsecond();
    let keep = keep_set(&backups, r, now);
    let mut report = PruneReport {
        dry_run,
        ..Default::default()
    };
    // The kept backup that reads the lowest WAL (not the first by time: timelines).
    let Some(oldest_kept) = backups
        .iter()
        .zip(&keep)
        .filter(|(_, k)| **k)
        .map(|(b, _)| b)
        .min_by_key(|b| b.start())
        .cloned()
    else {
        return Ok(report);
    };
    let store = repo.store();
    for (b, k) in backups.iter().zip(&keep) {
        if *k {
            report.kept.push(b.id.clone());
            continue;
        }
        report.deleted_backups.push(b.id.clone());
        if dry_run {
            continue;
        }
        store.delete(&catalog::backup_key(&b.id)).await?;
        for o in store.list(&format!("backups/{}/", b.id)).await? {
            store.delete(&o.key).await?;
        }
    }
    // Incomplete backups (no catalog entry) that started over a day ago. A backup still
    // running then fails cleanly: it checks its chunks before writing its catalog entry.
    let day_ago = now - INCOMPLETE_AGE_US;
    for i in &scan.incomplete {
        if i.started_us.is_some_and(|s| s < day_ago) {
            report.deleted_incomplete.push(i.id.clone());
            if !dry_run {
                for o in store.list(&format!("backups/{}/", i.id)).await? {
                    store.delete(&o.key).await?;
                }
            }
        }
    }
    // WAL below the oldest kept backup's start segment; none while a catalog entry is
    // unusable (the backup it describes may be restorable again once the entry is restored
    // from a copy, and its start is unknown).
    if let Some(b) = scan.bad.first() {
        report.wal_kept_because = Some(format!(
            "{} is unusable ({}): its backup may need the WAL; restore the entry from a copy, or delete backups/{}/ to let prune reclaim WAL",
            b.key,
            b.error,
            b.key
                .strip_prefix("backups/")
                .and_then(|r| r.split('/').next())
                .unwrap_or("?")
        ));
        return Ok(report);
    }
    let floor: SegNo = oldest_kept.start().segment(seg);
    report.wal_kept_from = Some(format!("{} (segment {:X})", oldest_kept.start_lsn, floor.0));
    for o in store.list("wal/").await? {
        let segno = match parse_wal_key(&o.key, seg) {
            Some(WalObject::Segment(_, s))
            | Some(WalObject::Partial(_, s, _))
            | Some(WalObject::Summary(_, s)) => s,
            _ => continue,
        };
        if segno < floor {
            report.deleted_wal_objects += 1;
            if !dry_run {
                store.delete(&o.key).await?;
            }
        }
    }
    for p in catalog::points(repo).await? {
        let lsn = p.lsn;
        if lsn < oldest_kept.start() {
            report.deleted_points += 1;
            if !dry_run {
                store.delete(&catalog::point_key(lsn)).await?;
            }
        }
    }
    Ok(report)
}

/// Prints the report.
pub fn print(w: &mut impl std::io::Write, r: &PruneReport) -> std::io::Result<()> {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    writeln!(w, "kept backups: {}", r.kept.join(", "))?;
    writeln!(
        w,
        "{verb} backups: {}",
        if r.deleted_backups.is_empty() {
            "none".into()
        } else {
            r.deleted_backups.join(", ")
        }
    )?;
    if !r.deleted_incomplete.is_empty() {
        writeln!(
            w,
            "{verb} incomplete backups: {}",
            r.deleted_incomplete.join(", ")
        )?;
    }
    if let Some(why) = &r.wal_kept_because {
        return writeln!(w, "no WAL or restore point record deleted: {why}");
    }
    writeln!(
        w,
        "{verb} {} WAL object(s) and {} restore point record(s); WAL kept from {}",
        r.deleted_wal_objects,
        r.deleted_points,
        r.wal_kept_from.as_deref().unwrap_or("-")
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn rec(id: &str, tli: u32, start: &str, end: &str, end_time: &str) -> BackupRecord {
        serde_json::from_value(serde_json::json!({
            "format": 1, "id": id, "label": id, "start_lsn": start, "start_tli": tli,
            "end_lsn": end, "end_tli": tli, "start_time": end_time, "end_time": end_time,
            "pg_version": "17.0", "pg_major": 17, "system_id": "1", "compression": "lz4",
            "archives": [{"name": "base", "location": null, "bytes": 1, "server_compression": null, "chunks": []}],
            "manifest": null, "bytes": 1, "stored_bytes": 1, "created_by": "test"
        }))
        .unwrap()
    }

    /// After a restore to before the newest backup, the new timeline's backup has the lower
    /// LSN but is the newest: `--keep-full 1` keeps it.
    #[test]
    fn newest_is_by_time_not_lsn_across_timelines() {
        let b1 = rec("b1", 1, "0/600028", "0/600120", "2026-01-01T00:00:00Z");
        let b2 = rec("b2", 1, "0/D00028", "0/D00120", "2026-01-02T00:00:00Z");
        let b3 = rec("b3", 2, "0/800028", "0/800120", "2026-01-03T00:00:00Z");
        // The catalog's order (by end LSN): b1, b3, b2.
        let backups = by_end_time(vec![b1, b3, b2]);
        let ids: Vec<&str> = backups.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["b1", "b2", "b3"]);
        let r = Retention {
            keep_full: Some(1),
            keep_within: None,
        };
        let now = parse("2026-01-04T00:00:00Z");
        assert_eq!(keep_set(&backups, r, now), [false, false, true]);
        let r = Retention {
            keep_full: None,
            keep_within: Some(Duration::from_secs(36 * 3600)),
        };
        // b3 ends inside the window; b2 is the newest before it.
        assert_eq!(keep_set(&backups, r, now), [false, true, true]);
    }

    fn parse(t: &str) -> i64 {
        catalog::parse_micros(t).unwrap()
    }
}
