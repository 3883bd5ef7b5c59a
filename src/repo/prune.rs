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

pub mod cmd;

use std::time::Duration;

use serde::Serialize;
use walfmt::SegNo;

use super::catalog::{self, BackupRecord};
use super::{Repo, RepoError, WalObject, parse_wal_key};

/// `prune` settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// Keep the newest N backups.
    pub keep_full: Option<usize>,
    /// Keep what is needed to restore anywhere within this window.
    pub keep_within: Option<Duration>,
}

/// What prune did (or would do with `--dry-run`).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PruneReport {
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
pub(crate) fn by_end_time(mut backups: Vec<BackupRecord>) -> Vec<BackupRecord> {
    backups.sort_by(|a, b| (a.end_micros(), &a.id).cmp(&(b.end_micros(), &b.id)));
    backups
}

/// Which backups the rules keep (indexes into `backups`, oldest first by end time; see
/// [`by_end_time`]).
pub(crate) fn keep_set(backups: &[BackupRecord], r: Retention, now_us: i64) -> Vec<bool> {
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
pub(crate) const INCOMPLETE_AGE_US: i64 = 86_400_000_000;

/// Applies retention.
pub(crate) async fn prune(
    repo: &Repo,
    r: Retention,
    dry_run: bool,
) -> Result<PruneReport, RepoError> {
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
pub(crate) fn print(w: &mut impl std::io::Write, r: &PruneReport) -> std::io::Result<()> {
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

    // Hermetic tests of the rules: plain values, or a repo in the in-memory store.

    fn backups3() -> Vec<BackupRecord> {
        by_end_time(vec![
            rec("b1", 1, "0/2000028", "0/2000120", "2026-01-01T00:00:00Z"),
            rec("b2", 1, "0/5000028", "0/5000120", "2026-01-02T00:00:00Z"),
            rec("b3", 1, "0/8000028", "0/8000120", "2026-01-03T00:00:00Z"),
        ])
    }

    fn keep(keep_full: Option<usize>, keep_within_h: Option<u64>) -> Retention {
        Retention {
            keep_full,
            keep_within: keep_within_h.map(|h| Duration::from_secs(h * 3600)),
        }
    }

    #[test]
    fn without_rules_everything_is_kept_and_the_newest_always() {
        let b = backups3();
        let now = parse("2026-02-01T00:00:00Z");
        assert_eq!(keep_set(&b, keep(None, None), now), [true, true, true]);
        assert_eq!(keep_set(&b, keep(Some(0), None), now), [false, false, true]);
        // A window after every backup still keeps the newest (the one before the window).
        assert_eq!(keep_set(&b, keep(None, Some(1)), now), [false, false, true]);
        assert!(keep_set(&[], keep(Some(1), None), now).is_empty());
    }

    #[test]
    fn keep_full_and_keep_within_each_keep_what_they_need() {
        let b = backups3();
        let now = parse("2026-01-03T12:00:00Z");
        assert_eq!(keep_set(&b, keep(Some(2), None), now), [false, true, true]);
        assert_eq!(keep_set(&b, keep(Some(9), None), now), [true, true, true]);
        // 24 h back is 2026-01-02T12:00: b3 ends inside; b2 is the newest before it, needed
        // to restore to the window's start.
        assert_eq!(keep_set(&b, keep(None, Some(24)), now), [false, true, true]);
        // A window ending exactly at b2's end keeps b2 as inside, b1 as the one before.
        assert_eq!(keep_set(&b, keep(None, Some(36)), now), [true, true, true]);
        // Either rule keeps: the union.
        assert_eq!(
            keep_set(&b, keep(Some(1), Some(24)), now),
            [false, true, true]
        );
    }

    use crate::test_util::block_on as run;

    fn seg() -> walfmt::WalSegSize {
        walfmt::WalSegSize::new(16 << 20).unwrap()
    }

    /// A repo with `backups` (each with one chunk), WAL segments 1..=9 of timeline 1 with
    /// summaries, a partial of segment 10, a history file, and restore points at 0/3000000
    /// and 0/9000000.
    async fn repo_with(backups: &[BackupRecord]) -> Repo {
        use bytes::Bytes;
        use walfmt::{Lsn, TimeLineId};
        let repo = Repo::with_store(std::sync::Arc::new(crate::repo::memory::MemoryStore::new()));
        repo.claim(1, seg(), 17).await.unwrap();
        let put = |k: String, v: Vec<u8>| {
            let repo = repo.clone();
            async move { repo.put(&k, Bytes::from(v)).await.unwrap() }
        };
        for b in backups {
            put(catalog::backup_key(&b.id), serde_json::to_vec(b).unwrap()).await;
            put(catalog::chunk_key(&b.id, "base", 0, "lz4"), b"x".to_vec()).await;
        }
        let t = TimeLineId(1);
        for s in 1..=9 {
            put(crate::repo::segment_key(t, SegNo(s), seg()), vec![]).await;
            put(crate::repo::summary_key(t, SegNo(s), seg()), vec![]).await;
        }
        let end = Lsn(SegNo(10).start_lsn(seg()).unwrap().0 + 0x100);
        put(crate::repo::partial_key(t, SegNo(10), end, seg()), vec![]).await;
        put(
            crate::repo::history_key(TimeLineId(2)),
            b"1\t0/A000000\tx\n".to_vec(),
        )
        .await;
        for (i, lsn) in [Lsn(0x0300_0000), Lsn(0x0900_0000)].into_iter().enumerate() {
            let p = catalog::PointRecord {
                name: format!("p{i}"),
                lsn,
                tli: t,
                time: "2026-01-01T00:00:00Z".into(),
            };
            put(catalog::point_key(lsn), serde_json::to_vec(&p).unwrap()).await;
        }
        repo
    }

    async fn keys(repo: &Repo, prefix: &str) -> Vec<String> {
        let mut k: Vec<String> = repo
            .store()
            .list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        k.sort();
        k
    }

    #[test]
    fn prune_deletes_old_backups_then_wal_and_points_below_the_oldest_kept_start() {
        run(async {
            let repo = repo_with(&backups3()).await;
            let before = keys(&repo, "").await;
            // --dry-run reports and deletes nothing.
            let dry = prune(&repo, keep(Some(2), None), true).await.unwrap();
            assert_eq!(keys(&repo, "").await, before);
            let r = prune(&repo, keep(Some(2), None), false).await.unwrap();
            for r in [&dry, &r] {
                assert_eq!(r.kept, ["b2", "b3"]);
                assert_eq!(r.deleted_backups, ["b1"]);
                // Segments 1-4 and their summaries; b2 starts in segment 5.
                assert_eq!(r.deleted_wal_objects, 8);
                assert_eq!(r.deleted_points, 1);
                assert_eq!(r.wal_kept_from.as_deref(), Some("0/5000028 (segment 5)"));
                assert_eq!(r.wal_kept_because, None);
            }
            assert!(dry.dry_run && !r.dry_run);
            assert!(keys(&repo, "backups/b1/").await.is_empty());
            assert_eq!(keys(&repo, "backups/b2/").await.len(), 2);
            let wal = keys(&repo, "wal/").await;
            assert!(wal.contains(&"wal/00000002.history".to_string()), "{wal:?}");
            assert!(
                wal.iter()
                    .filter(|k| k.starts_with("wal/00000001/"))
                    .all(|k| k.as_str() >= "wal/00000001/000000010000000000000005"),
                "{wal:?}"
            );
            assert_eq!(wal.len(), 1 + 2 * 5 + 1, "{wal:?}");
            assert_eq!(
                keys(&repo, "points/").await,
                [catalog::point_key(walfmt::Lsn(0x0900_0000))]
            );
        });
    }

    /// The WAL floor is the lowest start of any kept backup, not the newest one's: here the
    /// newest (timeline 2, after a restore) starts below an older backup of timeline 1.
    #[test]
    fn the_wal_floor_is_the_lowest_kept_start_across_timelines() {
        run(async {
            let b = by_end_time(vec![
                rec("b1", 1, "0/2000028", "0/2000120", "2026-01-01T00:00:00Z"),
                rec("b2", 1, "0/8000028", "0/8000120", "2026-01-02T00:00:00Z"),
                rec("b3", 2, "0/6000028", "0/6000120", "2026-01-03T00:00:00Z"),
            ]);
            let repo = repo_with(&b).await;
            let r = prune(&repo, keep(Some(2), None), false).await.unwrap();
            assert_eq!(r.kept, ["b2", "b3"]);
            assert_eq!(r.wal_kept_from.as_deref(), Some("0/6000028 (segment 6)"));
            assert_eq!(r.deleted_wal_objects, 10);
        });
    }

    /// An unusable catalog entry is skipped and left alone, and while it is there no WAL or
    /// restore point is deleted (its backup may need them); the report names it.
    #[test]
    fn an_unusable_entry_stops_wal_deletion() {
        run(async {
            let repo = repo_with(&backups3()).await;
            let mut bad = serde_json::to_value(rec(
                "b0",
                1,
                "0/1000028",
                "0/1000120",
                "2025-12-31T00:00:00Z",
            ))
            .unwrap();
            bad["start_lsn"] = "garbage".into();
            let key = catalog::backup_key("b0");
            repo.put(&key, serde_json::to_vec(&bad).unwrap().into())
                .await
                .unwrap();
            let r = prune(&repo, keep(Some(1), None), false).await.unwrap();
            assert_eq!(r.kept, ["b3"]);
            assert_eq!(r.deleted_backups, ["b1", "b2"]);
            assert_eq!(r.deleted_wal_objects, 0);
            assert_eq!(r.deleted_points, 0);
            let why = r.wal_kept_because.unwrap();
            assert!(
                why.contains(&key) && why.contains("delete backups/b0/"),
                "{why}"
            );
            assert_eq!(keys(&repo, "backups/b0/").await, [key]);
            assert_eq!(keys(&repo, "wal/").await.len(), 2 * 9 + 2);
        });
    }

    /// A restore point whose LSN field is corrupt does not stop prune halfway (backups
    /// already deleted, WAL left, no report): it is skipped, kept, and the rest is pruned, as
    /// before the typed repo objects (ba25846 kept it: its LSN read as the highest).
    #[test]
    fn a_point_with_a_corrupt_lsn_is_kept_and_prune_completes() {
        run(async {
            let repo = repo_with(&backups3()).await;
            let key = "points/0000000F00000000.json";
            let bad = serde_json::json!({
                "name": "bad", "lsn": "garbage", "tli": 1, "time": "2026-01-01T00:00:00Z"
            });
            repo.put(key, serde_json::to_vec(&bad).unwrap().into())
                .await
                .unwrap();
            let r = prune(&repo, keep(Some(2), None), false).await.unwrap();
            assert_eq!(r.deleted_backups, ["b1"]);
            assert_eq!(r.deleted_wal_objects, 8);
            assert_eq!(r.deleted_points, 1);
            assert!(keys(&repo, "points/").await.contains(&key.to_string()));
        });
    }

    /// Incomplete backups (no catalog entry) are deleted once they started over a day ago;
    /// a recent one may still be running and is left alone.
    #[test]
    fn only_old_incomplete_backups_are_deleted() {
        run(async {
            let repo = repo_with(&backups3()).await;
            let recent = jiff::Timestamp::now()
                .strftime("%Y%m%dT%H%M%SZ")
                .to_string();
            for id in ["20200101T000000Z", recent.as_str()] {
                repo.put(
                    &catalog::chunk_key(id, "base", 0, "lz4"),
                    bytes::Bytes::from_static(b"x"),
                )
                .await
                .unwrap();
            }
            let r = prune(&repo, keep(None, None), false).await.unwrap();
            assert_eq!(r.kept, ["b1", "b2", "b3"]);
            assert_eq!(r.deleted_incomplete, ["20200101T000000Z"]);
            assert!(keys(&repo, "backups/20200101T000000Z/").await.is_empty());
            assert_eq!(keys(&repo, &format!("backups/{recent}/")).await.len(), 1);
            // Everything kept: the floor is the oldest backup's start.
            assert_eq!(r.deleted_wal_objects, 2);
        });
    }

    #[test]
    fn an_empty_repo_prunes_nothing() {
        run(async {
            let repo = repo_with(&[]).await;
            let r = prune(&repo, keep(Some(1), None), false).await.unwrap();
            assert!(r.kept.is_empty() && r.deleted_backups.is_empty());
            assert_eq!(r.deleted_wal_objects, 0);
            assert_eq!(keys(&repo, "wal/").await.len(), 2 * 9 + 2);
        });
    }
}
