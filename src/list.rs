//! `pitr list`: backups, the recoverable window per timeline, gaps and restore points.
//!
//! Answers from the catalog, the object listing and the segment summaries; WAL bodies are
//! read only for the newest (partial) segment of a timeline, which has no summary yet.

pub mod cmd;

use serde::Serialize;
use walfmt::{Lsn, SegNo, TimeLineId};

use crate::repo::catalog::{self, BackupRecord, PointRecord, WalIndex};
use crate::repo::{Repo, RepoError};

/// One timeline's window.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TimelineWindow {
    /// Timeline.
    pub timeline: TimeLineId,
    /// Its parent and where it branched, if any.
    pub parent: Option<(TimeLineId, Lsn)>,
    /// Earliest restorable point (the end of the oldest backup reaching it).
    pub earliest: Option<String>,
    /// Its LSN.
    pub earliest_lsn: Option<Lsn>,
    /// The last archived commit (time).
    pub last_commit_time: Option<String>,
    /// Its LSN.
    pub last_commit_lsn: Option<Lsn>,
    /// End of the archived WAL.
    pub archived_to: Option<Lsn>,
    /// Gaps: `[from, to)`.
    pub gaps: Vec<(Lsn, Lsn)>,
}

/// A backup in the listing.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ListedBackup {
    /// Its catalog entry.
    #[serde(flatten)]
    pub record: BackupRecord,
    /// The earliest instant it restores to, on the server's clock (see `pitr restore`).
    pub restorable_from: String,
}

/// The whole listing.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Listing {
    /// Repo location.
    pub repo: String,
    /// System identifier.
    pub system_id: String,
    /// PostgreSQL major.
    pub pg_major: u32,
    /// Backups, oldest first.
    pub backups: Vec<ListedBackup>,
    /// Catalog entries that cannot be used (skipped; `pitr verify` fails on them).
    pub unusable_backups: Vec<catalog::BadEntry>,
    /// Backups that never completed (no catalog entry).
    pub incomplete_backups: Vec<catalog::IncompleteBackup>,
    /// Gaps `pitr stream` recorded (WAL the server no longer had when pitr resumed).
    pub recorded_gaps: Vec<crate::repo::gaps::GapRecord>,
    /// What needs attention: signs of two histories mixed in the repo, WAL after a gap
    /// that no backup restores, unreadable gap records (see `pitr verify`).
    pub problems: Vec<String>,
    /// Windows.
    pub timelines: Vec<TimelineWindow>,
    /// Restore points made with `pitr mark`.
    pub restore_points: Vec<PointRecord>,
}

use crate::restore::target::format_micros as show;

fn show_rfc(s: &str) -> String {
    catalog::parse_micros(s)
        .map(show)
        .unwrap_or_else(|| s.into())
}

/// Builds the listing.
pub(crate) async fn list(repo: &Repo) -> Result<Listing, RepoError> {
    let (id, seg, sysid) = catalog::identity(repo).await?;
    let scan = catalog::scan_backups(repo).await?;
    catalog::warn_bad(&scan.bad);
    let backups = scan.good;
    let points = catalog::points(repo).await?;
    let idx = WalIndex::load(repo, seg, sysid).await?;
    let input = crate::restore::RepoInput { repo, idx: &idx };
    let mut from = std::collections::HashMap::new();
    for b in &backups {
        let path = idx.path(b.end_tli);
        let (t, _) = crate::restore::plan::restorable_from(&input, &path, b, seg)
            .await
            .map_err(|e| match e {
                crate::restore::RestoreError::Repo(r) => r,
                other => RepoError::Corrupt {
                    repo: repo.location.clone(),
                    message: other.to_string(),
                },
            })?;
        from.insert(b.id.clone(), t);
    }
    let mut problems = catalog::history_problems(&idx);
    problems.extend(catalog::boundary_problems(repo, &idx).await?);
    let recorded_gaps = match crate::repo::gaps::gaps(repo).await {
        Ok(g) => g,
        Err(e) => {
            problems.push(e.to_string());
            Vec::new()
        }
    };
    if let Some(g) = crate::repo::gaps::open_gap_after(&recorded_gaps, &backups) {
        problems.push(g.unrestorable());
    }
    let mut timelines = Vec::new();
    for tli in idx.timelines() {
        let path = idx.path(tli);
        let parent = idx
            .histories
            .get(&tli)
            .and_then(|h| h.ancestors.last())
            .map(|a| (a.tli, a.end));
        let reaching: Vec<&BackupRecord> = backups
            .iter()
            .filter(|b| catalog::on_path(&path, b.end_tli, b.end()))
            .collect();
        let oldest = reaching.first();
        // From the oldest backup reaching it, else from its first archived segment (every
        // listed timeline has one).
        let first_archived = idx
            .files
            .get(&tli)
            .and_then(|m| m.keys().next())
            .and_then(|s| s.start_lsn(seg));
        let Some(start) = oldest.map(|b| b.start()).or(first_archived) else {
            continue;
        };
        let cov = idx.coverage(&path, start);
        let mut last = None;
        if let Some(end) = cov.end {
            let mut s = catalog::last_segment(end, seg);
            let floor = start.segment(seg);
            loop {
                if let Some(f) = idx.facts(repo, &path, s).await?
                    && let Some(x) = f.xacts.iter().rev().find(|x| x.commit)
                {
                    last = Some(*x);
                    break;
                }
                if s <= floor {
                    break;
                }
                s = SegNo(s.0 - 1);
            }
        }
        timelines.push(TimelineWindow {
            timeline: tli,
            parent,
            earliest: oldest.and_then(|b| from.get(&b.id)).map(|t| show(*t)),
            earliest_lsn: oldest.map(|b| b.end_lsn),
            last_commit_time: last.map(|x| show(x.time)),
            last_commit_lsn: last.map(|x| x.lsn),
            archived_to: cov.end,
            gaps: idx.gaps(tli),
        });
    }
    Ok(Listing {
        repo: repo.location.clone(),
        system_id: id.system_id,
        pg_major: id.pg_major,
        backups: backups
            .into_iter()
            .map(|b| ListedBackup {
                restorable_from: from.get(&b.id).map(|t| show(*t)).unwrap_or_default(),
                record: b,
            })
            .collect(),
        unusable_backups: scan.bad,
        recorded_gaps,
        incomplete_backups: scan.incomplete,
        problems,
        timelines,
        restore_points: points,
    })
}

/// Prints the listing for humans.
pub(crate) fn print(w: &mut impl std::io::Write, l: &Listing) -> std::io::Result<()> {
    writeln!(
        w,
        "repo {} (system {}, PostgreSQL {})",
        l.repo, l.system_id, l.pg_major
    )?;
    writeln!(w)?;
    writeln!(w, "backups:")?;
    if l.backups.is_empty() {
        writeln!(w, "  (none: take one with `pitr backup`)")?;
    }
    for lb in &l.backups {
        let b = &lb.record;
        writeln!(
            w,
            "  {}  {:<16} started {}  restorable from {}  tli {}  {} to {}  {} MiB ({} MiB stored)",
            b.id,
            b.label,
            show_rfc(&b.start_time),
            lb.restorable_from,
            b.end_tli,
            b.start_lsn,
            b.end_lsn,
            b.bytes >> 20,
            b.stored_bytes >> 20
        )?;
    }
    for u in &l.unusable_backups {
        writeln!(
            w,
            "  UNUSABLE: {}: {} (skipped; run `pitr verify`)",
            u.key, u.error
        )?;
    }
    for i in &l.incomplete_backups {
        writeln!(
            w,
            "  incomplete: {} ({} object(s), {} MiB, no catalog entry: interrupted, or still running)",
            i.id,
            i.objects,
            i.bytes >> 20
        )?;
    }
    writeln!(w)?;
    writeln!(w, "recoverable window per timeline:")?;
    let known = |l: Option<Lsn>| l.map_or_else(|| "?".to_string(), |l| l.to_string());
    for t in &l.timelines {
        let parent = t
            .parent
            .as_ref()
            .map(|(p, at)| format!(" (branched from {p} at {at})"))
            .unwrap_or_default();
        match (&t.earliest, &t.last_commit_time) {
            (Some(e), Some(c)) => writeln!(
                w,
                "  timeline {}{parent}: {e} .. {c} (last commit at {}; WAL archived to {})",
                t.timeline,
                known(t.last_commit_lsn),
                known(t.archived_to)
            )?,
            (Some(e), None) => writeln!(
                w,
                "  timeline {}{parent}: from {e}; no commit archived yet (WAL archived to {})",
                t.timeline,
                known(t.archived_to)
            )?,
            (None, _) => writeln!(
                w,
                "  timeline {}{parent}: not restorable (no backup reaches it); WAL archived to {}",
                t.timeline,
                known(t.archived_to)
            )?,
        }
        for (a, b) in &t.gaps {
            let why = l
                .recorded_gaps
                .iter()
                .find(|g| g.timeline == t.timeline.0 && g.to_lsn().is_ok_and(|to| to == *b))
                .map(|g| format!(" (recorded {}: {})", g.detected_at, g.reason))
                .unwrap_or_default();
            writeln!(w, "    GAP: WAL missing from {a} to {b}{why}")?;
        }
    }
    for p in &l.problems {
        writeln!(w, "PROBLEM: {p}")?;
    }
    if !l.restore_points.is_empty() {
        writeln!(w)?;
        writeln!(w, "restore points (pitr mark):")?;
        for p in &l.restore_points {
            writeln!(
                w,
                "  {:<24} {}  LSN {}  tli {}",
                p.name,
                show_rfc(&p.time),
                p.lsn,
                p.tli
            )?;
        }
    }
    Ok(())
}
