//! Retention: `pitr prune --keep-full N --keep-within 7d`.
//!
//! # Rules
//!
//! - A backup is kept if either rule keeps it: it is among the newest `N`, or it is needed to
//!   restore to some instant within the window (every backup ending inside the window, plus
//!   the newest one ending before it). The newest backup is always kept.
//! - WAL is deleted only below the segment holding the oldest kept backup's start LSN, on
//!   every timeline: no kept backup, and no restore from one, reads a segment below its
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
    /// Nothing was deleted (`--dry-run`).
    pub dry_run: bool,
}

/// Which backups the rules keep (indexes into `backups`, oldest first).
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
    let backups = scan.good;
    let now = jiff::Timestamp::now().as_microsecond();
    let keep = keep_set(&backups, r, now);
    let mut report = PruneReport {
        dry_run,
        ..Default::default()
    };
    let Some(oldest_kept) = backups
        .iter()
        .zip(&keep)
        .find(|(_, k)| **k)
        .map(|(b, _)| b.clone())
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
    // WAL below the oldest kept backup's start segment.
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
        let lsn: walfmt::Lsn = p.lsn.parse().unwrap_or(walfmt::Lsn(u64::MAX));
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
    writeln!(
        w,
        "{verb} {} WAL object(s) and {} restore point record(s); WAL kept from {}",
        r.deleted_wal_objects,
        r.deleted_points,
        r.wal_kept_from.as_deref().unwrap_or("-")
    )
}
