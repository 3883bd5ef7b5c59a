//! `pitr restore`: from the repo to a data directory that PostgreSQL recovers to the target.
//!
//! # How a target is resolved (before anything is written)
//!
//! Every target becomes an exact stop LSN taken from the commit-time index (the segment
//! summaries), so the result does not depend on how PostgreSQL parses times:
//!
//! - `latest`: replay all archived WAL of the timeline.
//! - a time `T`: PostgreSQL's own rule for `recovery_target_time` with
//!   `recovery_target_inclusive = on`: recovery stops before the first commit or abort record
//!   (in WAL order) whose time is after `T`. pitr finds that record `S` in the index and writes
//!   `recovery_target_lsn = S` with `recovery_target_inclusive = off`. Every transaction
//!   committed at or before `T` is included, none after it. A target equal to the last
//!   archived commit's time stops just after that commit. A target after the last archived
//!   commit is refused: nothing proves what happened between that commit and `T`.
//! - `--to-lsn X`: everything before `X` (`recovery_target_inclusive = off`).
//! - `--to-name N`: up to and including the newest restore point named `N`.
//!
//! The backup is the newest one on the target timeline's history that is consistent before
//! the stop point. The WAL placed in `pg_wal` runs from the backup's start to the segment
//! holding the stop record (the newest archived segment for `latest`), one file per segment
//! from the timeline recovery reads it from, plus the history files, so the directory
//! recovers with neither pitr nor the repo.
//!
//! # Invariants
//!
//! - Nothing is written until the target, the backup, the WAL and the destination have
//!   been checked. A failure after that removes what was written.
//! - Every object is checked (CRC-32C of the stored bytes, lz4 content checksum) as it is read.

pub mod extract;
pub mod target;

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use walfmt::names::{history_file_name, segment_file_name};
use walfmt::{Lsn, SegNo, TimeLineId, WalSegSize};

use crate::repo::catalog::{
    self, ArchiveRecord, BackupRecord, ChunkRecord, PathStep, SegFile, WalIndex, Xact,
};
use crate::repo::{Repo, RepoError};

/// Restore errors. Every message is one line saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The target or the destination was refused before anything was written.
    #[error("{0}")]
    Refused(String),
    /// The repo failed or holds a bad object.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A bad object, named.
    #[error("{0}")]
    Corrupt(String),
    /// Writing the destination failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Extraction refused an entry.
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
}

/// What to restore to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSpec {
    /// All archived WAL.
    Latest,
    /// An instant.
    Time(target::TimeTarget),
    /// Everything before this LSN.
    Lsn(Lsn),
    /// A named restore point.
    Name(String),
}

/// `--timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineSel {
    /// The newest timeline in the repo.
    Latest,
    /// This one.
    Id(TimeLineId),
}

/// `pitr restore` settings.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The repo.
    pub repo: Repo,
    /// Destination data directory.
    pub dir: PathBuf,
    /// Target.
    pub target: TargetSpec,
    /// Timeline to follow.
    pub timeline: TimelineSel,
    /// Tablespace relocation: original location (or OID) -> new directory.
    pub tablespace_map: HashMap<String, PathBuf>,
    /// Draw progress bars.
    pub progress: bool,
    /// Restore this backup (by id) instead of choosing.
    pub backup: Option<String>,
}

/// How recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "lsn")]
pub enum Stop {
    /// Replay everything.
    #[serde(rename = "end_of_wal")]
    EndOfWal,
    /// Stop before the record at this LSN.
    #[serde(rename = "before_lsn")]
    Before(#[serde(serialize_with = "ser_lsn")] Lsn),
    /// Stop after the record at this LSN.
    #[serde(rename = "after_lsn")]
    After(#[serde(serialize_with = "ser_lsn")] Lsn),
    /// Stop as soon as the backup is consistent.
    #[serde(rename = "immediate")]
    Immediate,
}

fn ser_lsn<S: serde::Serializer>(l: &Lsn, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&l.to_string())
}

/// One WAL file placed in `pg_wal`.
#[derive(Debug, Clone, Serialize)]
pub struct WalFile {
    /// Name in `pg_wal`.
    pub name: String,
    /// The object it comes from.
    pub key: String,
    /// A partial segment (zero-padded).
    pub partial: bool,
    /// For a partial: the end of the WAL it holds (what the plan predicts from).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_lsn"
    )]
    pub partial_end: Option<Lsn>,
}

fn ser_opt_lsn<S: serde::Serializer>(l: &Option<Lsn>, s: S) -> Result<S::Ok, S::Error> {
    match l {
        Some(l) => s.serialize_str(&l.to_string()),
        None => s.serialize_none(),
    }
}

/// A commit or abort, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XactInfo {
    /// Record start.
    #[serde(serialize_with = "ser_lsn")]
    pub lsn: Lsn,
    /// Time (Unix microseconds).
    #[serde(skip)]
    pub micros: i64,
    /// Time, RFC 3339 UTC.
    pub time: Option<String>,
    /// Transaction id.
    pub xid: u32,
    /// `commit` or `abort`.
    pub kind: &'static str,
}

impl From<Xact> for XactInfo {
    fn from(x: Xact) -> Self {
        XactInfo {
            lsn: x.lsn,
            micros: x.time,
            time: Some(catalog::micros_rfc3339(x.time)),
            xid: x.xid,
            kind: if x.commit { "commit" } else { "abort" },
        }
    }
}

/// A resolved restore: what will be written, decided before writing anything.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The target as given.
    pub target: String,
    /// The target instant in UTC, for time targets.
    pub target_utc: Option<String>,
    /// The chosen backup.
    pub backup: BackupRecord,
    /// The timeline recovery follows.
    pub timeline: u32,
    /// How recovery stops.
    pub stop: Stop,
    /// The last commit or abort recovery replays (the last one included).
    pub last_included: Option<XactInfo>,
    /// The first one it does not replay.
    pub first_excluded: Option<XactInfo>,
    /// WAL files placed in `pg_wal`.
    pub wal: Vec<WalFile>,
    /// History files placed in `pg_wal`.
    pub histories: Vec<WalFile>,
    /// Settings appended to `postgresql.auto.conf`.
    pub recovery_settings: Vec<String>,
    /// Destination.
    pub dir: PathBuf,
    /// Tablespaces: OID -> destination.
    pub tablespaces: Vec<(String, PathBuf)>,
    /// Segment size.
    #[serde(skip)]
    pub seg: WalSegSize,
}

fn refused(msg: impl Into<String>) -> RestoreError {
    RestoreError::Refused(msg.into())
}

use target::format_micros as fmt_time;

/// Reads the commit index along one timeline path.
struct XactScan<'a> {
    repo: &'a Repo,
    idx: &'a WalIndex,
    path: &'a [PathStep],
}

impl XactScan<'_> {
    async fn segment(&self, s: SegNo) -> Result<catalog::SegmentFacts, RestoreError> {
        Ok(self
            .idx
            .facts(self.repo, self.path, s)
            .await?
            .unwrap_or_default())
    }

    /// Walks the commits and aborts from `from` (recovery replays nothing before the
    /// backup's start) through segment `through`, in WAL order, up to the first one `stops`
    /// accepts. Returns the last one before it, and it (`None` when none stops the walk).
    async fn until(
        &self,
        from: Lsn,
        through: SegNo,
        stops: impl Fn(&Xact) -> bool,
    ) -> Result<(Option<Xact>, Option<Xact>), RestoreError> {
        let mut last = None;
        let mut s = from.segment(self.idx.seg);
        while s <= through {
            for x in self.segment(s).await?.xacts {
                if x.lsn < from {
                    continue;
                }
                if stops(&x) {
                    return Ok((last, Some(x)));
                }
                last = Some(x);
            }
            s = SegNo(s.0 + 1);
        }
        Ok((last, None))
    }
}

/// Resolves the target into a plan. Reads the catalog, the summaries and at most the
/// segments that lack one; writes nothing.
pub async fn plan(opts: &RestoreOptions) -> Result<Plan, RestoreError> {
    let repo = &opts.repo;
    let (_, seg, sysid) = catalog::identity(repo).await?;
    let mut backups = catalog::backups(repo).await?;
    if backups.is_empty() {
        return Err(refused(format!(
            "repo {} holds no complete backup: take one with `pitr backup` first",
            repo.location
        )));
    }
    if let Some(id) = &opts.backup {
        backups.retain(|b| &b.id == id || &b.label == id);
        if backups.is_empty() {
            return Err(refused(format!(
                "no complete backup {id:?} in the repo (see `pitr list`)"
            )));
        }
    }
    let idx = WalIndex::load(repo, seg, sysid).await?;
    let tli = match opts.timeline {
        TimelineSel::Id(t) => {
            if !idx.files.contains_key(&t) && !backups.iter().any(|b| b.end_tli == t.0) {
                return Err(refused(format!(
                    "timeline {t} is not in the repo; it has timelines {}",
                    idx.timelines()
                        .iter()
                        .map(|t| t.0.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            t
        }
        TimelineSel::Latest => idx.latest_timeline().unwrap_or(TimeLineId(
            backups.iter().map(|b| b.end_tli).max().unwrap_or(1),
        )),
    };
    let path = idx.path(tli);
    // Backups on this timeline's history whose WAL is archived through their end.
    let mut usable: Vec<(BackupRecord, catalog::Coverage)> = Vec::new();
    for b in backups {
        if !catalog::on_path(&path, b.start_tli, b.start())
            || !catalog::on_path(&path, b.end_tli, b.end())
        {
            continue;
        }
        let cov = idx.coverage(&path, b.start());
        if cov.end.is_some_and(|e| e >= b.end()) {
            usable.push((b, cov));
        }
    }
    if usable.is_empty() {
        return Err(refused(format!(
            "no backup in repo {} can reach timeline {tli} (none lies on its history with its WAL archived): take a backup with `pitr backup`",
            repo.location
        )));
    }
    // Newest first.
    usable.sort_by_key(|b| std::cmp::Reverse(b.0.end()));
    let scan = XactScan {
        repo,
        idx: &idx,
        path: &path,
    };
    let earliest = usable.last().map(|(b, _)| b.clone());
    let earliest_msg = |b: &BackupRecord| {
        format!(
            "{} (the end of backup {}, LSN {}, timeline {})",
            fmt_time(b.end_micros()),
            b.id,
            b.end_lsn,
            b.end_tli
        )
    };

    let mut target_utc = None;
    let (backup, cov, stop, last, next) = match &opts.target {
        TargetSpec::Latest => {
            let (b, cov) = usable.swap_remove(0);
            if let Some(gap) = cov.gap {
                return Err(refused(format!(
                    "the archive of timeline {tli} has a gap at {gap}: WAL after it cannot be replayed; restore up to it with --to-lsn {gap}, or find the missing segment (see `pitr list`)"
                )));
            }
            let end = cov.end.unwrap_or(b.end());
            // The last commit: scan back from the newest segment.
            let mut last = None;
            let mut s = catalog::last_segment(end, seg);
            loop {
                let f = scan.segment(s).await?;
                if let Some(x) = f.xacts.iter().rev().find(|x| x.lsn >= b.start()) {
                    last = Some(*x);
                    break;
                }
                if s <= b.start().segment(seg) {
                    break;
                }
                s = SegNo(s.0 - 1);
            }
            (b, cov, Stop::EndOfWal, last, None)
        }
        TargetSpec::Time(t) => {
            let us = t.instant.as_microsecond();
            target_utc = Some(target::format_utc(t.instant));
            let Some(pos) = usable.iter().position(|(b, _)| b.end_micros() <= us) else {
                let e = earliest.as_ref().map(earliest_msg).unwrap_or_default();
                return Err(refused(format!(
                    "target {} is before the earliest restorable point {e}",
                    target::format_utc(t.instant)
                )));
            };
            let (b, cov) = usable.swap_remove(pos);
            let wal_end = cov.end.unwrap_or(b.end());
            let (last, found) = scan
                .until(b.start(), catalog::last_segment(wal_end, seg), |x| {
                    x.lsn >= b.end() && x.time > us
                })
                .await?;
            match found {
                Some(x) => (b, cov, Stop::Before(x.lsn), last, Some(x)),
                None => {
                    if let Some(gap) = cov.gap {
                        return Err(refused(format!(
                            "target {} falls in a gap of the WAL archive (timeline {tli}, from {gap}): the WAL needed to reach it is missing; the latest restorable point before the gap is {}",
                            target::format_utc(t.instant),
                            last.map(|x| fmt_time(x.time))
                                .unwrap_or_else(|| gap.to_string())
                        )));
                    }
                    match last {
                        Some(l) if l.time == us && l.lsn >= b.end() => {
                            (b, cov, Stop::After(l.lsn), Some(l), None)
                        }
                        Some(l) if l.time == us => (b, cov, Stop::Immediate, Some(l), None),
                        Some(l) => {
                            return Err(refused(format!(
                                "target {} is after the last archived commit ({} at {}, LSN {}, timeline {tli}): the latest restorable point is {}; use --to latest, or an earlier time",
                                target::format_utc(t.instant),
                                if l.commit { "commit" } else { "abort" },
                                fmt_time(l.time),
                                l.lsn,
                                fmt_time(l.time)
                            )));
                        }
                        None => {
                            return Err(refused(format!(
                                "target {} is after the last archived WAL, which holds no commit since backup {}: use --to latest",
                                target::format_utc(t.instant),
                                b.id
                            )));
                        }
                    }
                }
            }
        }
        TargetSpec::Lsn(x) => {
            let Some(pos) = usable.iter().position(|(b, _)| b.end() <= *x) else {
                let e = earliest.as_ref().map(earliest_msg).unwrap_or_default();
                return Err(refused(format!(
                    "target LSN {x} is before the earliest restorable point {e}"
                )));
            };
            let (b, cov) = usable.swap_remove(pos);
            let wal_end = cov.end.unwrap_or(b.end());
            if *x >= wal_end {
                return Err(refused(match cov.gap {
                    Some(gap) => format!(
                        "target LSN {x} falls in a gap of the WAL archive (timeline {tli}, from {gap}): the WAL needed is missing"
                    ),
                    None => format!(
                        "target LSN {x} is after the last archived WAL ({wal_end} on timeline {tli}): the latest restorable point is --to-lsn {wal_end}, or --to latest"
                    ),
                }));
            }
            let (last, next) = scan
                .until(b.start(), x.segment(seg), |xa| xa.lsn >= *x)
                .await?;
            (b, cov, Stop::Before(*x), last, next)
        }
        TargetSpec::Name(name) => {
            // The newest restore point with this name after the oldest usable backup's end.
            let oldest = usable.last().map(|(b, _)| b.end()).unwrap_or(Lsn(0));
            let wal_end = usable
                .iter()
                .filter_map(|(_, c)| c.end)
                .max()
                .unwrap_or(oldest);
            let mut s = oldest.segment(seg);
            let last_seg = catalog::last_segment(wal_end, seg);
            let mut found = None;
            let mut names = std::collections::BTreeSet::new();
            while s <= last_seg {
                for p in scan.segment(s).await?.restore_points {
                    if p.lsn >= oldest {
                        names.insert(p.name.clone());
                        if &p.name == name {
                            found = Some(p);
                        }
                    }
                }
                s = SegNo(s.0 + 1);
            }
            let Some(rp) = found else {
                return Err(refused(format!(
                    "no restore point named {name:?} in the archived WAL of timeline {tli} after a backup{}",
                    if names.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; it has {}",
                            names.into_iter().collect::<Vec<_>>().join(", ")
                        )
                    }
                )));
            };
            let Some(pos) = usable.iter().position(|(b, _)| b.end() <= rp.lsn) else {
                return Err(refused(format!(
                    "restore point {name:?} ({}) is before the earliest restorable point",
                    rp.lsn
                )));
            };
            let (b, cov) = usable.swap_remove(pos);
            let (last, next) = scan
                .until(b.start(), rp.lsn.segment(seg), |xa| xa.lsn > rp.lsn)
                .await?;
            target_utc = Some(fmt_time(rp.time));
            (b, cov, Stop::After(rp.lsn), last, next)
        }
    };

    // WAL files: from the backup's start to the segment holding the stop record.
    let wal_end = cov.end.unwrap_or(backup.end());
    let first_seg = backup.start().segment(seg);
    let archived_last = catalog::last_segment(wal_end, seg);
    let stop_seg = match stop {
        Stop::EndOfWal => archived_last,
        Stop::Before(l) => l.segment(seg).min(archived_last),
        // The record may run into the next segment.
        Stop::After(l) => SegNo(l.segment(seg).0 + 1).min(archived_last),
        Stop::Immediate => SegNo(backup.end().segment(seg).0 + 1).min(archived_last),
    }
    .max(backup.end().segment(seg).min(archived_last));
    let mut wal = Vec::new();
    let mut s = first_seg;
    while s <= stop_seg {
        let Some((ftli, f)) = idx.file(&path, s) else {
            return Err(refused(format!(
                "segment {} is missing from the archive (a gap): the restore cannot reach its target",
                segment_file_name(idx.tli_for_segment(&path, s), s, seg)
            )));
        };
        let name = segment_file_name(ftli, s, seg);
        let (key, partial_end) = match f {
            SegFile::Complete { key, .. } => (key.clone(), None),
            SegFile::Partial { key, end } => (key.clone(), Some(*end)),
        };
        wal.push(WalFile {
            name,
            key,
            partial: partial_end.is_some(),
            partial_end,
        });
        s = SegNo(s.0 + 1);
    }
    let mut histories = Vec::new();
    for step in &path {
        if let Some(k) = idx.history_keys.get(&step.tli) {
            histories.push(WalFile {
                name: history_file_name(step.tli),
                key: k.clone(),
                partial: false,
                partial_end: None,
            });
        }
    }

    let target_text = match &opts.target {
        TargetSpec::Latest => "latest".to_string(),
        TargetSpec::Time(t) => match &t.zone {
            target::ZoneSource::Explicit | target::ZoneSource::DefaultUtc => t.input.clone(),
            target::ZoneSource::TzFlag(z) => format!("{} (--tz {z})", t.input),
            target::ZoneSource::TzEnv(z) => format!("{} (TZ={z})", t.input),
        },
        TargetSpec::Lsn(l) => format!("LSN {l}"),
        TargetSpec::Name(n) => format!("restore point {n:?}"),
    };
    let mut settings = vec![
        format!(
            "# added by pitr {} restore: target {}",
            env!("CARGO_PKG_VERSION"),
            target_text
        ),
        "# the WAL recovery needs is in pg_wal: no archive to fetch from".into(),
        "restore_command = 'false'".into(),
        format!("recovery_target_timeline = '{}'", tli.0),
    ];
    match stop {
        Stop::EndOfWal => {}
        Stop::Before(l) => {
            if let Some(u) = &target_utc {
                settings.push(format!(
                    "# = recovery_target_time = '{u}' (stops before the first transaction ending after it)"
                ));
            }
            settings.push(format!("recovery_target_lsn = '{l}'"));
            settings.push("recovery_target_inclusive = off".into());
        }
        Stop::After(l) => {
            settings.push(format!("recovery_target_lsn = '{l}'"));
            settings.push("recovery_target_inclusive = on".into());
        }
        Stop::Immediate => settings.push("recovery_target = 'immediate'".into()),
    }
    settings.push("recovery_target_action = 'promote'".into());

    let mut tablespaces = Vec::new();
    for a in &backup.archives {
        if a.name == "base" {
            continue;
        }
        let loc = a.location.clone().unwrap_or_default();
        let dest = opts
            .tablespace_map
            .get(&loc)
            .or_else(|| opts.tablespace_map.get(&a.name))
            .cloned()
            .unwrap_or_else(|| PathBuf::from(&loc));
        if dest.is_relative() {
            return Err(refused(format!(
                "tablespace {} ({loc}) would be restored to a relative path: map it with --tablespace-map {loc}=/new/dir",
                a.name
            )));
        }
        tablespaces.push((a.name.clone(), dest));
    }

    Ok(Plan {
        target: target_text,
        target_utc,
        timeline: tli.0,
        stop,
        last_included: last.map(XactInfo::from),
        first_excluded: next.map(XactInfo::from),
        wal,
        histories,
        recovery_settings: settings,
        dir: opts.dir.clone(),
        tablespaces,
        backup,
        seg,
    })
}

/// Prints the plan for humans.
pub fn print_plan(w: &mut impl Write, p: &Plan) -> std::io::Result<()> {
    writeln!(w, "target:         {}", p.target)?;
    if let Some(u) = &p.target_utc
        && !p.target.contains(u.as_str())
    {
        writeln!(w, "  in UTC:       {u}")?;
    }
    writeln!(
        w,
        "backup:         {} (label {:?}, PostgreSQL {}, consistent at {} on timeline {}, {})",
        p.backup.id,
        p.backup.label,
        p.backup.pg_version,
        p.backup.end_lsn,
        p.backup.end_tli,
        fmt_time(p.backup.end_micros())
    )?;
    writeln!(w, "timeline:       {}", p.timeline)?;
    match &p.last_included {
        Some(x) => writeln!(
            w,
            "last included:  {} of xid {} at {}, LSN {}",
            x.kind,
            x.xid,
            fmt_time(x.micros),
            x.lsn
        )?,
        None => writeln!(
            w,
            "last included:  (no transaction ends in the replayed WAL)"
        )?,
    }
    if let Some(x) = &p.first_excluded {
        writeln!(
            w,
            "first excluded: {} of xid {} at {}, LSN {}",
            x.kind,
            x.xid,
            fmt_time(x.micros),
            x.lsn
        )?;
    }
    let (first, last) = (
        p.wal.first().map(|f| f.name.as_str()).unwrap_or("-"),
        p.wal.last().map(|f| f.name.as_str()).unwrap_or("-"),
    );
    writeln!(
        w,
        "WAL:            {} segment(s), {first} .. {last}{}{}",
        p.wal.len(),
        if p.wal.iter().any(|f| f.partial) {
            " (last one partial)"
        } else {
            ""
        },
        if p.histories.is_empty() {
            String::new()
        } else {
            format!(", {} history file(s)", p.histories.len())
        }
    )?;
    writeln!(w, "directory:      {}", p.dir.display())?;
    for (oid, d) in &p.tablespaces {
        writeln!(w, "tablespace:     {oid} -> {}", d.display())?;
    }
    let settings: Vec<&str> = p
        .recovery_settings
        .iter()
        .filter(|s| !s.starts_with('#'))
        .map(String::as_str)
        .collect();
    writeln!(w, "recovery:       {}", settings.join("; "))?;
    Ok(())
}

/// A directory pitr may restore into: missing, or empty.
fn check_empty(dir: &Path, what: &str) -> Result<bool, RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(refused(format!(
                    "{what} {} is not empty: pitr restores only into an empty or missing directory (move the old one aside)",
                    dir.display()
                )));
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Err(refused(format!(
            "{what} {} is not a directory",
            dir.display()
        ))),
        Err(e) => Err(refused(format!("{what} {}: {e}", dir.display()))),
    }
}

/// Checks the destination, before anything is written. Returns which directories pitr
/// will create (and so remove on failure).
pub fn check_destination(p: &Plan) -> Result<Vec<(PathBuf, bool)>, RestoreError> {
    let mut out = vec![(p.dir.clone(), check_empty(&p.dir, "directory")?)];
    for (oid, d) in &p.tablespaces {
        out.push((
            d.clone(),
            check_empty(d, &format!("tablespace {oid} directory"))?,
        ));
    }
    Ok(out)
}

/// Numbers from a restore.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RestoreStats {
    /// Bytes extracted from the backup.
    pub backup_bytes: u64,
    /// WAL bytes placed.
    pub wal_bytes: u64,
    /// Files written.
    pub files: u64,
    /// Seconds spent.
    pub seconds: f64,
}

/// Executes a plan: downloads, checks and extracts the backup, places the WAL and writes the
/// recovery settings. On failure, removes what it wrote.
pub async fn execute(repo: &Repo, p: &Plan, progress: bool) -> Result<RestoreStats, RestoreError> {
    let dirs = check_destination(p)?;
    let began = Instant::now();
    let res = execute_inner(repo, p, progress, &dirs).await;
    match res {
        Ok(mut s) => {
            s.seconds = began.elapsed().as_secs_f64();
            Ok(s)
        }
        Err(e) => {
            for (d, created) in &dirs {
                let r = if *created {
                    std::fs::remove_dir_all(d)
                } else {
                    empty_dir(d)
                };
                if let Err(ce) = r
                    && ce.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::error!(dir = %d.display(), error = %ce, "could not remove the partial restore");
                }
            }
            tracing::warn!(dir = %p.dir.display(), "restore failed: removed what it had written");
            Err(e)
        }
    }
}

fn empty_dir(d: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(d)? {
        let e = e?;
        let path = e.path();
        if e.file_type()?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

async fn execute_inner(
    repo: &Repo,
    p: &Plan,
    progress: bool,
    dirs: &[(PathBuf, bool)],
) -> Result<RestoreStats, RestoreError> {
    for (d, _) in dirs {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(io_err(d))?;
    }
    let seg = p.seg;
    let total: u64 = p.backup.bytes + p.wal.len() as u64 * seg.bytes();
    let pb = crate::backup::progress_bar(total, progress);
    pb.set_message("restore");
    let ts: HashMap<String, PathBuf> = p.tablespaces.iter().cloned().collect();
    // Archives in parallel (tablespaces and base).
    let mut set = tokio::task::JoinSet::new();
    for a in &p.backup.archives {
        let dest = if a.name == "base" {
            p.dir.clone()
        } else {
            ts.get(&a.name).cloned().unwrap_or_default()
        };
        let opts = extract::ExtractOptions {
            tablespaces: ts.clone(),
        };
        set.spawn(restore_archive(
            repo.clone(),
            a.clone(),
            dest,
            opts,
            pb.clone(),
        ));
    }
    let mut stats = RestoreStats::default();
    while let Some(r) = set.join_next().await {
        let s = r.map_err(|e| RestoreError::Corrupt(format!("extraction task: {e}")))??;
        stats.backup_bytes += s.bytes;
        stats.files += s.files;
    }
    // The manifest, for pg_verifybackup.
    if let Some(m) = &p.backup.manifest {
        let data = get_checked(repo, m).await?;
        let path = p.dir.join("backup_manifest");
        write_file(&path, &data)?;
    }
    // WAL.
    let wal_dir = p.dir.join("pg_wal");
    std::fs::create_dir_all(&wal_dir).map_err(io_err(&wal_dir))?;
    let mut queue: VecDeque<_> = p.wal.iter().cloned().collect();
    let mut running = tokio::task::JoinSet::new();
    while !queue.is_empty() || !running.is_empty() {
        while running.len() < 2
            && let Some(f) = queue.pop_front()
        {
            let repo = repo.clone();
            let dir = wal_dir.clone();
            running.spawn(async move {
                let data = fetch_planned(&repo, &f, seg).await?;
                let path = dir.join(&f.name);
                let len = data.len() as u64;
                tokio::task::spawn_blocking(move || write_file(&path, &data))
                    .await
                    .map_err(|e| RestoreError::Corrupt(format!("write task: {e}")))??;
                Ok::<u64, RestoreError>(len)
            });
        }
        if let Some(r) = running.join_next().await {
            let n = r.map_err(|e| RestoreError::Corrupt(format!("WAL task: {e}")))??;
            stats.wal_bytes += n;
            stats.files += 1;
            pb.inc(n);
        }
    }
    for h in &p.histories {
        let data = repo
            .fetch_wal(&h.name, seg)
            .await?
            .ok_or_else(|| RestoreError::Corrupt(format!("{}: missing", h.key)))?;
        write_file(&wal_dir.join(&h.name), &data)?;
    }
    // Recovery settings.
    let auto = p.dir.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto).unwrap_or_default();
    if !conf.is_empty() && !conf.ends_with('\n') {
        conf.push('\n');
    }
    for s in &p.recovery_settings {
        conf.push_str(s);
        conf.push('\n');
    }
    if auto.exists() {
        std::fs::remove_file(&auto).map_err(io_err(&auto))?;
    }
    write_file(&auto, conf.as_bytes())?;
    write_file(&p.dir.join("recovery.signal"), b"")?;
    chown_for_postgres(dirs)?;
    pb.finish_and_clear();
    Ok(stats)
}

/// Fetches the WAL the plan chose, exactly: a partial is cut at the end the plan predicted
/// from, even if `pitr stream` has meanwhile replaced it with a longer partial or the full
/// segment (so recovery replays what was announced, no more).
async fn fetch_planned(repo: &Repo, f: &WalFile, seg: WalSegSize) -> Result<Vec<u8>, RestoreError> {
    let missing = || RestoreError::Corrupt(format!("{}: missing from the repo", f.key));
    let segno = match walfmt::WalFileName::parse(&f.name, seg) {
        Ok(walfmt::WalFileName::Segment(_, s)) => s,
        _ => {
            return Err(RestoreError::Corrupt(format!(
                "{}: not a segment name",
                f.name
            )));
        }
    };
    let planned = crate::repo::retry("fetch WAL", Duration::from_secs(10), || {
        repo.read_wal_object(&f.key, segno, f.partial_end, seg)
    })
    .await?;
    let Some(end) = f.partial_end else {
        return planned.ok_or_else(missing);
    };
    let mut data = match planned {
        Some(d) => d,
        // Superseded meanwhile: the full segment or a newer partial holds the same bytes.
        None => match repo.fetch_wal(&f.name, seg).await? {
            Some(d) => d,
            None => repo
                .fetch_wal(&format!("{}.partial", f.name), seg)
                .await?
                .ok_or_else(missing)?,
        },
    };
    // Exactly the planned bytes; the rest zero, as in a partial.
    let keep = end
        .0
        .saturating_sub(segno.start_lsn(seg).map_or(0, |l| l.0))
        .min(seg.bytes()) as usize;
    data[keep..].fill(0);
    Ok(data)
}

/// Run as root, hands the restored tree to the user PostgreSQL will run as: the owner of the
/// destination's parent directory when that is not root, else the `postgres` user. (The
/// server refuses to run as root, and refuses a data directory it does not own.)
fn chown_for_postgres(dirs: &[(PathBuf, bool)]) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    if crate::verify::euid() != Some(0) {
        return Ok(());
    }
    let Some((dir, _)) = dirs.first() else {
        return Ok(());
    };
    let parent = dir.parent().and_then(|p| std::fs::metadata(p).ok());
    let owner = match parent {
        Some(m) if m.uid() != 0 => Some((m.uid(), m.gid())),
        _ => crate::verify::uid_gid_of("postgres"),
    };
    let Some((u, g)) = owner else {
        tracing::warn!(
            "running as root and no postgres user: the restored files stay owned by root; chown them to the server's user"
        );
        return Ok(());
    };
    for (d, _) in dirs {
        crate::verify::chown_tree(d, u, g).map_err(io_err(d))?;
    }
    Ok(())
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), RestoreError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    Ok(())
}

/// Fetches one backup object and checks its CRC-32C; decompresses lz4 chunks.
pub(crate) async fn get_checked(repo: &Repo, c: &ChunkRecord) -> Result<Vec<u8>, RestoreError> {
    let raw = fetch_raw(repo, c).await?;
    let key = c.key.clone();
    tokio::task::spawn_blocking(move || crate::repo::decompress(&raw, &key))
        .await
        .map_err(|e| RestoreError::Corrupt(format!("decompression task: {e}")))?
        .map_err(RestoreError::Corrupt)
}

async fn fetch_raw(repo: &Repo, c: &ChunkRecord) -> Result<Bytes, RestoreError> {
    let raw = crate::repo::retry("fetch backup object", Duration::from_secs(10), || {
        repo.store().get(&c.key)
    })
    .await
    .map_err(RepoError::from)?
    .ok_or_else(|| {
        RestoreError::Corrupt(format!(
            "{}: missing from the repo (the backup is damaged)",
            c.key
        ))
    })?;
    if raw.len() as u64 != c.stored || crc32c::crc32c(&raw) != c.crc32c {
        return Err(RestoreError::Corrupt(format!(
            "{}: checksum mismatch ({} bytes, CRC-32C {:08x}; the catalog says {} bytes, {:08x}): the object is corrupt",
            c.key,
            raw.len(),
            crc32c::crc32c(&raw),
            c.stored,
            c.crc32c
        )));
    }
    Ok(raw)
}

/// Reads the chunks a channel delivers, as one byte stream.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Prefetched chunks per archive (each up to `CHUNK_BYTES` decompressed).
const PREFETCH: usize = 2;

/// Streams one archive's chunks (fetched and checked ahead, in parallel) into `consume`,
/// which runs on the blocking pool and reads the tar bytes in order.
pub(crate) async fn feed_archive<T, F>(
    repo: &Repo,
    a: &ArchiveRecord,
    consume: F,
) -> Result<T, RestoreError>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Read) -> Result<T, RestoreError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let server_lz4 = a.server_compression.is_some();
    let consumer = tokio::task::spawn_blocking(move || {
        let mut reader = ChunkReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        if server_lz4 {
            let mut dec = lz4_flex::frame::FrameDecoder::new(reader);
            consume(&mut dec)
        } else {
            consume(&mut reader)
        }
    });
    let mut pending: VecDeque<tokio::task::JoinHandle<Result<Vec<u8>, RestoreError>>> =
        VecDeque::new();
    let mut chunks = a.chunks.iter();
    let mut send_err = None;
    loop {
        while pending.len() < PREFETCH
            && let Some(c) = chunks.next()
        {
            let repo = repo.clone();
            let c = c.clone();
            pending.push_back(tokio::spawn(async move {
                if server_lz4 {
                    Ok(fetch_raw(&repo, &c).await?.to_vec())
                } else {
                    get_checked(&repo, &c).await
                }
            }));
        }
        let Some(h) = pending.pop_front() else { break };
        let data = match h.await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                send_err = Some(e);
                break;
            }
            Err(e) => {
                send_err = Some(RestoreError::Corrupt(format!("fetch task: {e}")));
                break;
            }
        };
        if tx.send(data).await.is_err() {
            break; // the consumer stopped: its error is reported below
        }
    }
    for h in pending {
        h.abort();
    }
    drop(tx);
    let res = consumer
        .await
        .map_err(|e| RestoreError::Corrupt(format!("archive task: {e}")))?;
    if let Some(e) = send_err {
        return Err(e);
    }
    res
}

async fn restore_archive(
    repo: Repo,
    a: ArchiveRecord,
    dest: PathBuf,
    opts: extract::ExtractOptions,
    pb: indicatif::ProgressBar,
) -> Result<extract::ExtractStats, RestoreError> {
    let name = format!("{}.tar", a.name);
    feed_archive(&repo, &a, move |r| {
        let mut on_bytes = |n: u64| pb.inc(n);
        Ok(extract::extract(r, &name, &dest, &opts, &mut on_bytes)?)
    })
    .await
}
