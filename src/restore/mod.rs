//! `pitr restore`: from the repo to a data directory that PostgreSQL recovers to the target.
//!
//! Planning is a pure function ([`plan`], four named steps: backup selection, stop-point
//! resolution, WAL and history files, recovery settings); this module gives it the repo
//! to read ([`RepoInput`]) and executes the plan.
//!
//! # Invariants
//!
//! - Nothing is written until the target, the backup, the WAL and the destination have
//!   been checked (the destination: empty or missing, and writable). A failure after that
//!   removes what was written.
//! - Every object is checked (CRC-32C of the stored bytes, lz4 content checksum) as it is read.
//! - The restored configuration holds exactly one set of recovery settings, pitr's, written
//!   last; earlier recovery and standby settings in `postgresql.auto.conf` are commented out
//!   and named in the report; a `standby.signal` from a standby's backup is removed (unless
//!   `--standby`).

pub mod cmd;
pub(crate) mod container;
pub(crate) mod extract;
pub(crate) mod plan;
pub(crate) mod rto;
pub mod target;
pub mod textfile;
pub mod verify;

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use walfmt::{DecoderConfig, EndReason, Lsn, Poll, SegNo, StartAt, WalDecoder, WalSegSize};

pub(crate) use plan::{Catalog, RecordAt, Request};
pub use plan::{HistoryFile, Mode, Plan, Span, Stop, WalFile, XactInfo};

use crate::repo::catalog::{
    self, ArchiveRecord, BadEntry, PathStep, SegFile, SegmentFacts, WalIndex,
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
    #[error("{}: {error}", path.display())]
    Io {
        /// Where.
        path: PathBuf,
        /// Why (shown in the message, so not also a separate cause).
        error: std::io::Error,
    },
    /// Extraction refused an entry.
    #[error(transparent)]
    Extract(#[from] extract::ExtractError),
    /// A backup object could not be fetched intact.
    #[error(transparent)]
    Fetch(crate::repo::fetch::FetchError),
}

impl From<crate::repo::fetch::FetchError> for RestoreError {
    fn from(e: crate::repo::fetch::FetchError) -> Self {
        match e {
            crate::repo::fetch::FetchError::Repo(r) => RestoreError::Repo(r),
            other => RestoreError::Fetch(other),
        }
    }
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
    Id(walfmt::TimeLineId),
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
    /// Restore this backup (by id or label) instead of choosing.
    pub backup: Option<String>,
    /// Promote (default) or stay a standby.
    pub mode: Mode,
    /// Include the target (PostgreSQL's `recovery_target_inclusive`, default on).
    pub inclusive: bool,
}

fn refused(msg: impl Into<String>) -> RestoreError {
    RestoreError::Refused(msg.into())
}

use target::format_micros as fmt_time;

/// The repo as the planner's input: segment facts from summaries (or by decoding segments
/// that lack one), and record boundaries by decoding the archived WAL.
#[derive(Debug, Clone)]
pub(crate) struct RepoInput<'a> {
    /// The repo.
    pub repo: &'a Repo,
    /// Its WAL index.
    pub idx: &'a WalIndex,
}

impl plan::PlanInput for RepoInput<'_> {
    async fn facts(
        &self,
        path: &[PathStep],
        segno: SegNo,
    ) -> Result<Option<SegmentFacts>, RestoreError> {
        Ok(self.idx.facts(self.repo, path, segno).await?)
    }

    async fn record_at_or_after(
        &self,
        path: &[PathStep],
        lsn: Lsn,
        wal_end: Lsn,
    ) -> Result<RecordAt, RestoreError> {
        let seg = self.idx.seg;
        let corrupt = |m: String| RestoreError::Corrupt(m);
        let mut segno = lsn.segment(seg);
        let start = segno
            .start_lsn(seg)
            .ok_or_else(|| corrupt(format!("LSN {lsn} is out of range")))?;
        let cfg = DecoderConfig::for_cluster(seg, self.idx.system_id);
        let mut dec = WalDecoder::new(cfg, StartAt::SegmentStart(start))
            .map_err(|e| corrupt(format!("decoding WAL at {start}: {e}")))?;
        loop {
            loop {
                let step = match dec.poll() {
                    Ok(Poll::Record(r)) => Some(Ok((r.lsn, end_rec_ptr(&r, seg)))),
                    Ok(Poll::NeedMore) => None,
                    Ok(Poll::End(e)) => Some(Err(e)),
                    Err(e) => return Err(corrupt(format!("archived WAL near {lsn}: {e}"))),
                };
                match step {
                    None => break,
                    Some(Ok((s, e))) if s >= lsn => {
                        return Ok(RecordAt::Complete { start: s, end: e });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(end)) => {
                        if !end.is_clean() {
                            return Err(corrupt(format!(
                                "archived WAL is invalid at {}: {end} (run `pitr verify`)",
                                end.lsn
                            )));
                        }
                        let pending =
                            matches!(end.reason, EndReason::InputEnded { mid_record: true })
                                .then_some(end.lsn);
                        return Ok(RecordAt::End { pending });
                    }
                }
            }
            let seg_start = segno.start_lsn(seg).unwrap_or(Lsn(u64::MAX));
            let file = self.idx.file(path, segno);
            let Some((_, file)) = file.filter(|_| seg_start < wal_end) else {
                dec.finish();
                continue;
            };
            let (key, partial_end) = match file {
                SegFile::Complete { key, .. } => (key, None),
                SegFile::Partial { key, end } => (key, Some(*end)),
            };
            let data = self
                .repo
                .read_wal_object(key, segno, partial_end, seg)
                .await?
                .ok_or_else(|| corrupt(format!("{key}: listed but missing")))?;
            let upto = wal_end
                .min(partial_end.unwrap_or(Lsn(u64::MAX)))
                .bytes_since(seg_start)
                .min(seg.bytes()) as usize;
            dec.feed(&data[..upto]);
            if upto < data.len() {
                dec.finish();
            }
            segno = segno.next();
        }
    }
}

/// Where PostgreSQL's reader says a record ends (`EndRecPtr`, which recovery reports as
/// `pg_last_wal_replay_lsn()` after stopping there): just past its bytes, except for an
/// `XLOG_SWITCH`, whose end is the end of its segment (xlogreader.c, `XLogDecodeNextRecord`,
/// moves `NextRecPtr` to the segment's end for a switch record).
fn end_rec_ptr(r: &walfmt::Record<'_>, seg: WalSegSize) -> Lsn {
    use walfmt::record::{RM_XLOG_ID, xlog_info};
    if r.header.rmid == RM_XLOG_ID && r.header.info & 0xF0 == xlog_info::SWITCH {
        return r.lsn.segment(seg).end_lsn(seg).unwrap_or(r.end);
    }
    r.end
}

/// Loads what the planner needs from the repo. Unusable catalog entries are skipped with a
/// warning (returned, for reports).
pub(crate) async fn load_catalog(repo: &Repo) -> Result<(Catalog, Vec<BadEntry>), RestoreError> {
    let (_, seg, sysid) = catalog::identity(repo).await?;
    let scan = catalog::scan_backups(repo).await?;
    catalog::warn_bad(&scan.bad);
    let index = WalIndex::load(repo, seg, sysid).await?;
    // Gap records only explain messages: an unreadable one must not block a restore.
    let gaps = match crate::repo::gaps::gaps(repo).await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unreadable gap records (run `pitr verify`)");
            Vec::new()
        }
    };
    Ok((
        Catalog {
            location: repo.location.clone(),
            backups: scan.good,
            index,
            gaps,
        },
        scan.bad,
    ))
}

/// Resolves the target into a plan. Reads the catalog, the summaries and at most the
/// segments that lack one or hold the stop record; writes nothing.
pub async fn plan(opts: &RestoreOptions) -> Result<Plan, RestoreError> {
    let (cat, bad) = load_catalog(&opts.repo).await?;
    let input = RepoInput {
        repo: &opts.repo,
        idx: &cat.index,
    };
    let req = Request {
        target: opts.target.clone(),
        timeline: opts.timeline,
        backup: opts.backup.clone(),
        mode: opts.mode.clone(),
        inclusive: opts.inclusive,
        dir: opts.dir.clone(),
        tablespace_map: opts.tablespace_map.clone(),
    };
    let mut p = plan::plan(&input, &cat, &req).await?;
    p.rto = Some(rto::estimate(
        rto::sizes(&p),
        rto::newest(&opts.repo).await.as_ref(),
    ));
    for b in bad {
        p.notes.push(format!(
            "skipped an unusable catalog entry {} ({}); `pitr verify` reports it",
            b.key, b.error
        ));
    }
    Ok(p)
}

/// Prints the plan for humans.
pub(crate) fn print_plan(w: &mut impl Write, p: &Plan) -> std::io::Result<()> {
    writeln!(w, "target:         {}", p.target)?;
    if let Some(u) = &p.target_utc
        && !p.target.contains(u.as_str())
    {
        writeln!(w, "  in UTC:       {u}")?;
    }
    writeln!(
        w,
        "backup:         {} (label {:?}, PostgreSQL {}, consistent at {} on timeline {}, restorable from {})",
        p.backup.id,
        p.backup.label,
        p.backup.pg_version,
        p.backup.end_lsn,
        p.backup.end_tli,
        p.backup_restorable_from
            .as_deref()
            .and_then(catalog::parse_micros)
            .map_or_else(|| "?".to_string(), fmt_time)
    )?;
    writeln!(w, "timeline:       {}", p.timeline)?;
    let show = |x: &XactInfo| {
        format!(
            "{} of xid {} at {}, LSN {}",
            x.kind,
            x.xid,
            fmt_time(x.micros),
            x.lsn
        )
    };
    match &p.last_included {
        Some(x) => writeln!(w, "last included:  {}", show(x))?,
        None => writeln!(
            w,
            "last included:  (no transaction ends in the replayed WAL)"
        )?,
    }
    if let Some(x) = &p.first_excluded {
        writeln!(w, "first excluded: {}", show(x))?;
    }
    if !p.excluded_despite_time.is_empty() {
        writeln!(
            w,
            "also excluded:  {} transaction(s) stamped at or before the target whose commit record comes after the first excluded one (PostgreSQL's rule):",
            p.excluded_despite_time.len()
        )?;
        for x in &p.excluded_despite_time {
            writeln!(w, "                {}", show(x))?;
        }
    }
    let (first, last) = (
        p.wal.first().map(|f| f.name.as_str()).unwrap_or("-"),
        p.wal.last().map(|f| f.name.as_str()).unwrap_or("-"),
    );
    writeln!(
        w,
        "WAL:            {} segment(s), {first} .. {last}{}, through {}{}",
        p.wal.len(),
        if p.wal.iter().any(|f| f.partial) {
            " (last one partial)"
        } else {
            ""
        },
        p.wal_end,
        if p.histories.is_empty() {
            String::new()
        } else {
            format!(", {} history file(s)", p.histories.len())
        }
    )?;
    match p.promotes_to {
        Some(t) => writeln!(w, "promotes to:    timeline {t} (unused in the repo)")?,
        None => writeln!(
            w,
            "standby:        stays in recovery, fetching WAL from the repo"
        )?,
    }
    writeln!(w, "directory:      {}", p.dir.display())?;
    for (oid, d) in &p.tablespaces {
        writeln!(w, "tablespace:     {oid} -> {}", d.display())?;
    }
    let settings: Vec<&str> = p
        .recovery_settings
        .iter()
        .filter(|s| !s.starts_with('#') && !s.ends_with("''") && !s.ends_with("= 0"))
        .map(String::as_str)
        .collect();
    writeln!(w, "recovery:       {}", settings.join("; "))?;
    if let Some(e) = &p.rto {
        writeln!(w, "RTO estimate:   {}", rto::describe(e))?;
    }
    for n in &p.notes {
        writeln!(w, "note:           {n}")?;
    }
    Ok(())
}

/// A directory pitr may restore into: missing, or empty; and writable (checked by creating
/// and removing a temporary file in it, or in its nearest existing parent). Returns whether
/// pitr must create it.
fn check_empty(dir: &Path, what: &str) -> Result<bool, RestoreError> {
    let missing = match std::fs::read_dir(dir) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(refused(format!(
                    "{what} {} is not empty: pitr restores only into an empty or missing directory (move the old one aside)",
                    dir.display()
                )));
            }
            false
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(refused(format!(
                "{what} {} is not a directory",
                dir.display()
            )));
        }
        Err(e) => return Err(refused(format!("{what} {}: {e}", dir.display()))),
    };
    let mut probe = dir.to_path_buf();
    if missing {
        loop {
            match probe.parent() {
                Some(p) if !p.as_os_str().is_empty() => probe = p.to_path_buf(),
                _ => {
                    probe = PathBuf::from(".");
                    break;
                }
            }
            match std::fs::metadata(&probe) {
                Ok(m) if m.is_dir() => break,
                Ok(_) => {
                    return Err(refused(format!(
                        "{what} {}: {} is not a directory",
                        dir.display(),
                        probe.display()
                    )));
                }
                Err(_) => continue,
            }
        }
    }
    if let Err(e) = tempfile::Builder::new()
        .prefix(".pitr-write-check-")
        .tempfile_in(&probe)
    {
        return Err(refused(format!(
            "{what} {} cannot be written ({}: {e}): choose a writable directory",
            dir.display(),
            probe.display()
        )));
    }
    Ok(missing)
}

/// Checks the destination, before anything is written or downloaded. Returns which
/// directories pitr will create (and so remove on failure).
pub(crate) fn check_destination(p: &Plan) -> Result<Vec<(PathBuf, bool)>, RestoreError> {
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
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreStats {
    /// Recovery and standby settings found in the restored configuration that pitr's
    /// settings replace (where, and how).
    pub neutralised: Vec<String>,
    /// Signal files from the backup that were removed.
    pub removed: Vec<String>,
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
    move |error| RestoreError::Io {
        path: path.to_path_buf(),
        error,
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
    let total: u64 = p.backup.bytes + p.wal.len() as u64 * p.seg.bytes();
    let pb = crate::progress::progress_bar(total, progress);
    pb.set_message("restore");
    let mut stats = RestoreStats::default();
    extract_archives(repo, p, &pb, &mut stats).await?;
    // The manifest, for pg_verifybackup.
    if let Some(m) = &p.backup.manifest {
        let data = crate::repo::fetch::get_checked(repo, m).await?;
        let path = p.dir.join("backup_manifest");
        write_file(&path, &data)?;
    }
    place_wal(repo, p, &pb, &mut stats).await?;
    write_recovery_settings(p, &mut stats)?;
    chown_for_postgres(dirs)?;
    pb.finish_and_clear();
    Ok(stats)
}

/// Extracts the backup's archives (tablespaces and base) in parallel.
async fn extract_archives(
    repo: &Repo,
    p: &Plan,
    pb: &indicatif::ProgressBar,
    stats: &mut RestoreStats,
) -> Result<(), RestoreError> {
    let ts: HashMap<String, PathBuf> = p.tablespaces.iter().cloned().collect();
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
    // On the first error, the others are still awaited (not dropped): a task's blocking
    // write would otherwise go on after `execute` removed the partial restore.
    let mut first = None;
    while let Some(r) = set.join_next().await {
        match r
            .map_err(RepoError::task("extraction"))
            .map_err(RestoreError::from)
            .and_then(|r| r)
        {
            Ok(s) => {
                stats.backup_bytes += s.bytes;
                stats.files += s.files;
            }
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// Places the planned WAL (two segments at a time) and the history files in `pg_wal`.
async fn place_wal(
    repo: &Repo,
    p: &Plan,
    pb: &indicatif::ProgressBar,
    stats: &mut RestoreStats,
) -> Result<(), RestoreError> {
    let seg = p.seg;
    let wal_dir = p.dir.join("pg_wal");
    std::fs::create_dir_all(&wal_dir).map_err(io_err(&wal_dir))?;
    let mut queue: VecDeque<_> = p.wal.iter().cloned().collect();
    let mut running = tokio::task::JoinSet::new();
    let mut first = None;
    while !queue.is_empty() || !running.is_empty() {
        while first.is_none()
            && running.len() < 2
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
                    .map_err(RepoError::task("write"))??;
                Ok::<u64, RestoreError>(len)
            });
        }
        if let Some(r) = running.join_next().await {
            // On the first error, no new fetch starts and the running ones are awaited: a
            // write still going on would race the removal of the partial restore.
            match r
                .map_err(RepoError::task("WAL"))
                .map_err(RestoreError::from)
                .and_then(|r| r)
            {
                Ok(n) => {
                    stats.wal_bytes += n;
                    stats.files += 1;
                    pb.inc(n);
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        } else if first.is_some() {
            break;
        }
    }
    if let Some(e) = first {
        return Err(e);
    }
    for h in &p.histories {
        let data = match &h.key {
            Some(key) => repo
                .fetch_wal(&h.name, seg)
                .await?
                .ok_or_else(|| RestoreError::Corrupt(format!("{key}: missing")))?,
            None => plan::placeholder_history(h.timeline).into_bytes(),
        };
        write_file(&wal_dir.join(&h.name), &data)?;
    }
    Ok(())
}

/// One clean set of recovery settings: earlier ones in postgresql.auto.conf are commented
/// out (and any in postgresql.conf are overridden by pitr's, written last); then the signal
/// file of the plan's mode, and no other.
fn write_recovery_settings(p: &Plan, stats: &mut RestoreStats) -> Result<(), RestoreError> {
    let auto = p.dir.join("postgresql.auto.conf");
    let old = match std::fs::read_to_string(&auto) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(&auto)(e)),
    };
    let (mut conf, gone) = plan::neutralise_auto_conf(&old);
    for g in gone {
        stats
            .neutralised
            .push(format!("{g} (postgresql.auto.conf: commented out)"));
    }
    let mut files = Vec::new();
    read_config_tree(&p.dir.join("postgresql.conf"), 0, &mut files);
    let mut variants = Vec::new();
    for (path, text) in &files {
        let shown = path
            .strip_prefix(&p.dir)
            .map_or_else(|_| path.display().to_string(), |r| r.display().to_string());
        for g in plan::recovery_settings_in(text) {
            stats.neutralised.push(format!("{g} ({shown}: overridden)"));
        }
        variants.extend(plan::case_variants(text));
    }
    for s in plan::respell(&p.recovery_settings, &variants) {
        conf.push_str(&s);
        conf.push('\n');
    }
    if auto.exists() {
        std::fs::remove_file(&auto).map_err(io_err(&auto))?;
    }
    write_file(&auto, conf.as_bytes())?;
    // A standby's backup carries standby.signal; a restore chooses its own mode.
    for sig in ["standby.signal", "recovery.signal"] {
        let path = p.dir.join(sig);
        match std::fs::remove_file(&path) {
            Ok(()) => stats.removed.push(sig.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    }
    let signal = if p.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    write_file(&p.dir.join(signal), b"")
}

/// A configuration file and, recursively, the files it includes (`include`,
/// `include_if_exists`, `include_dir`: relative paths from the including file's directory,
/// as PostgreSQL resolves them), as far as they can be read.
fn read_config_tree(path: &Path, depth: usize, out: &mut Vec<(PathBuf, String)>) {
    if depth > 10 || out.iter().any(|(p, _)| p == path) {
        return;
    }
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let incs = plan::includes_in(&text);
    out.push((path.to_path_buf(), text));
    for (kind, v) in incs {
        let target = dir.join(&v);
        if kind == "include_dir" {
            let Ok(rd) = std::fs::read_dir(&target) else {
                continue;
            };
            let mut names: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "conf")
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect();
            names.sort();
            for f in names {
                read_config_tree(&f, depth + 1, out);
            }
        } else {
            read_config_tree(&target, depth + 1, out);
        }
    }
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
    let planned = repo
        .retrying("fetch WAL", Duration::from_secs(10))
        .read_wal_object(&f.key, segno, f.partial_end, seg)
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
    let keep = segno.bytes_until(end, seg).min(seg.bytes()) as usize;
    data[keep..].fill(0);
    Ok(data)
}

/// Run as root, hands the restored tree to the user PostgreSQL will run as: the owner of the
/// destination's parent directory when that is not root, else the `postgres` user. (The
/// server refuses to run as root, and refuses a data directory it does not own.)
fn chown_for_postgres(dirs: &[(PathBuf, bool)]) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    if crate::pgproc::euid() != Some(0) {
        return Ok(());
    }
    let Some((dir, _)) = dirs.first() else {
        return Ok(());
    };
    let parent = dir.parent().and_then(|p| std::fs::metadata(p).ok());
    let owner = match parent {
        Some(m) if m.uid() != 0 => Some((m.uid(), m.gid())),
        _ => crate::pgproc::uid_gid_of("postgres"),
    };
    let Some((u, g)) = owner else {
        tracing::warn!(
            "running as root and no postgres user: the restored files stay owned by root; chown them to the server's user"
        );
        return Ok(());
    };
    for (d, _) in dirs {
        crate::pgproc::chown_tree(d, u, g).map_err(io_err(d))?;
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

/// Buffers a consumed chunk goes back to, for the next fetch to decode into: the few
/// allocations of an archive's chunks are reused instead of each chunk allocating its own
/// (with glibc, freed chunk-sized buffers on several threads' arenas raised the peak RSS of a
/// restore by half).
type BufPool = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// Reads the chunks a channel delivers, as one byte stream.
struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    pool: BufPool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    let done = std::mem::replace(&mut self.cur, c);
                    if done.capacity() > 0
                        && let Ok(mut p) = self.pool.lock()
                    {
                        p.push(done);
                    }
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
    let pool = BufPool::default();
    let consumer_pool = pool.clone();
    let consumer = tokio::task::spawn_blocking(move || {
        let mut reader = ChunkReader {
            rx,
            cur: Vec::new(),
            pos: 0,
            pool: consumer_pool,
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
            let buf = pool
                .lock()
                .ok()
                .and_then(|mut p| p.pop())
                .unwrap_or_default();
            pending.push_back(tokio::spawn(async move {
                if server_lz4 {
                    Ok(crate::repo::fetch::get_raw(&repo, &c).await?.to_vec())
                } else {
                    Ok(crate::repo::fetch::get_checked_into(&repo, &c, buf).await?)
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
                send_err = Some(RepoError::task("fetch")(e).into());
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
    let res = consumer.await.map_err(RepoError::task("archive"))?;
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
