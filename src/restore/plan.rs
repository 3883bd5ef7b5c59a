//! Restore planning: a pure, typed planner with no I/O of its own.
//!
//! The planner reads the catalog (backups) and the WAL index as plain values, and asks a
//! [`PlanInput`] for what it needs of individual segments (commits, restore points,
//! checkpoints, record boundaries). In production that is the repo ([`super::RepoInput`]);
//! in the unit tests below, tables of values. It runs in four named steps, as pgBackRest's
//! `command/restore/` separates selection, remapping, configuration and timelines:
//!
//! 1. **Backup selection** ([`candidates`], then per target in [`resolve`]): a backup is a
//!    candidate when both its start and end lie on the target timeline's history and the WAL
//!    from its start through its end is archived. For a time target it must also be
//!    *restorable from* at or before the target ([`restorable_from`]): no commit or abort in
//!    the WAL before its end, and no checkpoint it starts from, is stamped later than the
//!    target. Those instants are the server's clock (commit timestamps from the WAL), never
//!    pitr's host clock, so a skewed sidecar cannot let a later commit slip in.
//! 2. **Stop-point resolution** ([`resolve`]): every target becomes a stop LSN, using
//!    PostgreSQL's own rules (src/backend/access/transam/xlogrecovery.c,
//!    `recoveryStopsBefore` / `recoveryStopsAfter`):
//!    - a time `T`: stop *before* the first commit or abort record, in WAL order from the
//!      backup's start, whose timestamp is later than `T` (`recovery_target_time` with
//!      `recovery_target_inclusive = on`). A transaction stamped at or before `T` whose
//!      commit record comes after that one is excluded too, as PostgreSQL excludes it; the
//!      plan names such transactions ([`Plan::excluded_despite_time`]).
//!    - `--to-lsn X`: stop before the first record starting at or after `X`.
//!    - `--to-name N`: stop after the FIRST restore point named `N` (in WAL order, after the
//!      oldest candidate backup's end), as PostgreSQL stops at the first one it replays.
//!    - `latest`: replay all archived WAL.
//!
//!    PostgreSQL reads the whole stop record before it stops (and, for an exclusive stop,
//!    that record is the first one at or after the stop LSN). The plan therefore records the
//!    stop record's end ([`Plan::stop_record`]) and places WAL through it; a target whose stop
//!    record is not completely archived is refused, before anything is written. When no
//!    complete record starts at or after an LSN target within the archive (the target is the
//!    archive's end, as error messages suggest), "everything before X" is "everything
//!    archived": the plan replays to the end of the WAL it places.
//! 3. **WAL and history files** ([`wal_files`], [`history_files`]): one file per segment
//!    from the backup's start through the segment holding the last byte needed, from the
//!    timeline recovery reads it from; plus the history file of EVERY timeline the repo
//!    holds (a placeholder where only WAL exists), so that PostgreSQL, which promotes to one
//!    more than the newest timeline whose history it can see (`findNewestTimeLine`), picks a
//!    timeline ID no history in the repo uses. The plan predicts that ID
//!    ([`Plan::promotes_to`]); `--verify` checks it.
//! 4. **Recovery settings** ([`recovery_settings`]): one complete, clean set, written last
//!    in `postgresql.auto.conf`. Every recovery and standby setting is given explicitly
//!    (empty where unused), so earlier ones (a previous restore's, a standby's
//!    `primary_conninfo`, anything in `postgresql.conf`) cannot take effect; the empty
//!    targets come before the one that is set, because PostgreSQL refuses two targets.
//!
//! # Invariants
//!
//! - The planner writes nothing and reads only through [`PlanInput`].
//! - A plan's WAL reaches at least the backup's end and the stop record's end, and never
//!   beyond the contiguous archive; otherwise planning fails with a refusal.
//! - Every refusal is one actionable line; an LSN or time a refusal suggests is accepted
//!   as a target.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;

use serde::Serialize;
use walfmt::names::{history_file_name, segment_file_name};
use walfmt::{Lsn, SegNo, TimeLineId, WalSegSize};

use crate::repo::catalog::{
    self, BackupRecord, Coverage, PathStep, RestorePoint, SegFile, SegmentFacts, WalIndex, Xact,
};

use super::target::{self, format_micros as fmt_time};
use super::{RestoreError, TargetSpec, TimelineSel};

/// The first record at or after an LSN, as far as the archive holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordAt {
    /// A complete record `[start, end)`.
    Complete {
        /// Its start.
        start: Lsn,
        /// Just past its last byte (PostgreSQL's `EndRecPtr`).
        end: Lsn,
    },
    /// The archived WAL ends first. `pending`: the start of a record the archive holds
    /// only in part (if the WAL ends inside one).
    End {
        /// An incomplete record's start.
        pending: Option<Lsn>,
    },
}

/// What the planner reads besides the catalog and the index: per-segment facts and record
/// boundaries, on demand.
pub(crate) trait PlanInput: Sync {
    /// What segment `segno` of `path` holds (`None`: not archived).
    fn facts(
        &self,
        path: &[PathStep],
        segno: SegNo,
    ) -> impl Future<Output = Result<Option<SegmentFacts>, RestoreError>> + Send;
    /// The first record starting at or after `lsn` on `path`, reading no WAL at or beyond
    /// `wal_end` (the end of the contiguous archive).
    fn record_at_or_after(
        &self,
        path: &[PathStep],
        lsn: Lsn,
        wal_end: Lsn,
    ) -> impl Future<Output = Result<RecordAt, RestoreError>> + Send;
}

/// The catalog and index, as values.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    /// Where the repo is (for messages).
    pub location: String,
    /// Complete, readable backups, oldest first.
    pub backups: Vec<BackupRecord>,
    /// The WAL index.
    pub index: WalIndex,
    /// Gaps `pitr stream` recorded (WAL the server no longer had), for messages.
    pub gaps: Vec<crate::repo::gaps::GapRecord>,
}

impl Catalog {
    /// " (a gap pitr stream recorded on ...: reason; a backup taken after it restores past
    /// it)" when the missing WAL at `at` is a recorded gap, else a hint to find the segment.
    fn gap_note(&self, at: Lsn) -> String {
        let recorded = self.gaps.iter().find(|g| g.covers(at, self.index.seg));
        match recorded {
            Some(g) => format!(
                "; it is a gap pitr stream recorded on {} ({}): only a backup taken after {} restores past it",
                g.detected_at, g.reason, g.to
            ),
            None => "; find the missing segment (see `pitr list`)".into(),
        }
    }
}

/// How the restored server should come up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Recover to the target and promote (the default).
    Promote,
    /// Stay a standby (`--standby`): `standby.signal`, this `restore_command`, following the
    /// newest timeline.
    Standby {
        /// The `restore_command` to write.
        restore_command: String,
    },
}

/// A restore request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// Target.
    pub target: TargetSpec,
    /// Timeline to follow.
    pub timeline: TimelineSel,
    /// `--backup`: only this backup (id or label).
    pub backup: Option<String>,
    /// Promote or standby.
    pub mode: Mode,
    /// PostgreSQL's `recovery_target_inclusive` (default on): a time target includes
    /// transactions stamped exactly at it, an LSN target the first record at or after it.
    /// Off (`--exclusive`): both are excluded.
    pub inclusive: bool,
    /// Destination.
    pub dir: PathBuf,
    /// Tablespace relocation: original location (or OID) -> new directory.
    pub tablespace_map: HashMap<String, PathBuf>,
}

/// How recovery stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "lsn")]
pub enum Stop {
    /// Replay everything placed in `pg_wal`.
    #[serde(rename = "end_of_wal")]
    EndOfWal,
    /// Stop before the first record at or after this LSN.
    #[serde(rename = "before_lsn")]
    Before(Lsn),
    /// Stop after the record at this LSN.
    #[serde(rename = "after_lsn")]
    After(Lsn),
}

/// A record span, for reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Span {
    /// Start.
    pub start: Lsn,
    /// End (exclusive).
    pub end: Lsn,
}

/// One WAL file placed in `pg_wal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WalFile {
    /// Name in `pg_wal`.
    pub name: String,
    /// The object it comes from.
    pub key: String,
    /// A partial segment (zero-padded).
    pub partial: bool,
    /// For a partial: the end of the WAL it holds (what the plan predicts from).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_end: Option<Lsn>,
}

/// One history file placed in `pg_wal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryFile {
    /// Its timeline.
    pub timeline: u32,
    /// Name in `pg_wal`.
    pub name: String,
    /// The object it comes from; `None`: a placeholder (the repo has WAL of this timeline
    /// but no history file), written so that PostgreSQL does not choose this ID.
    pub key: Option<String>,
    /// On the recovery path (else: reserves the ID only).
    pub on_path: bool,
}

/// A commit or abort, for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XactInfo {
    /// Record start.
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
    /// The earliest instant the chosen backup restores to (server clock).
    pub backup_restorable_from: Option<String>,
    /// The timeline recovery follows.
    pub timeline: u32,
    /// How recovery stops.
    pub stop: Stop,
    /// The record PostgreSQL must read whole before it stops (the first excluded one for a
    /// stop before an LSN, the last included one for a stop after it).
    pub stop_record: Option<Span>,
    /// WAL placed ends here (exclusive): at least the backup's end and the stop record's.
    pub wal_end: Lsn,
    /// The last commit or abort recovery replays (the last one included).
    pub last_included: Option<XactInfo>,
    /// The transaction whose time `pg_last_xact_replay_timestamp()` shows once recovery
    /// stopped: the last included one, except after an inclusive LSN stop on that very
    /// commit or abort record, where PostgreSQL stops before recording its time
    /// (xlogrecovery.c, `recoveryStopsAfter` returns on the LSN target before
    /// `SetLatestXTime`), so the one before it. `--verify` compares with this.
    pub last_timestamped: Option<XactInfo>,
    /// The first one it does not replay.
    pub first_excluded: Option<XactInfo>,
    /// Transactions stamped at or before the target whose commit or abort record comes
    /// after the first excluded one: PostgreSQL (and so pitr) excludes them.
    pub excluded_despite_time: Vec<XactInfo>,
    /// WAL files placed in `pg_wal`.
    pub wal: Vec<WalFile>,
    /// History files placed in `pg_wal`.
    pub histories: Vec<HistoryFile>,
    /// The timeline the server will promote to (`None` for a standby).
    pub promotes_to: Option<u32>,
    /// A standby restore (`--standby`).
    pub standby: bool,
    /// Settings appended to `postgresql.auto.conf`.
    pub recovery_settings: Vec<String>,
    /// Destination.
    pub dir: PathBuf,
    /// Tablespaces: OID -> destination.
    pub tablespaces: Vec<(String, PathBuf)>,
    /// Things the user should know (a restore point name that is not unique, ...).
    pub notes: Vec<String>,
    /// The restore-time prediction (set by `restore::plan`, which reads the repo's
    /// measured rates; `None` from the pure planner).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rto: Option<super::rto::RtoEstimate>,
    /// Segment size.
    #[serde(skip)]
    pub seg: WalSegSize,
}

fn refused(msg: impl Into<String>) -> RestoreError {
    RestoreError::Refused(msg.into())
}

/// A backup that can reach the target timeline, with the WAL coverage from its start.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// The backup.
    pub backup: BackupRecord,
    /// Contiguous WAL from its start.
    pub cov: Coverage,
}

impl Candidate {
    fn wal_end(&self) -> Lsn {
        self.cov.end.unwrap_or(self.backup.end())
    }
}

/// Step 1a: the timeline to recover along, and its path through the history files.
pub(crate) fn choose_timeline(
    cat: &Catalog,
    sel: TimelineSel,
) -> Result<(TimeLineId, Vec<PathStep>), RestoreError> {
    let idx = &cat.index;
    let tli = match sel {
        TimelineSel::Id(t) => {
            if !idx.files.contains_key(&t) && !cat.backups.iter().any(|b| b.end_tli == t) {
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
        TimelineSel::Latest => idx.latest_timeline().unwrap_or(
            cat.backups
                .iter()
                .map(|b| b.end_tli)
                .max()
                .unwrap_or(TimeLineId(1)),
        ),
    };
    Ok((tli, idx.path(tli)))
}

/// Step 1b: backups on `path` whose WAL is archived from their start through their end,
/// newest first.
pub(crate) fn candidates(cat: &Catalog, path: &[PathStep], only: Option<&str>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = cat
        .backups
        .iter()
        .filter(|b| only.is_none_or(|id| b.id == id || b.label == id))
        .filter(|b| {
            catalog::on_path(path, b.start_tli, b.start())
                && catalog::on_path(path, b.end_tli, b.end())
        })
        .filter_map(|b| {
            let cov = cat.index.coverage(path, b.start());
            cov.end.is_some_and(|e| e >= b.end()).then(|| Candidate {
                backup: b.clone(),
                cov,
            })
        })
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse((c.backup.end(), c.backup.id.clone())));
    out
}

/// The earliest instant backup `b` restores to, on the server's clock: no commit or abort
/// in its data files or in the WAL it replays to become consistent is stamped later.
///
/// - Commits and aborts from its start to its end are in the WAL; the latest counts.
/// - The checkpoint it starts from: PostgreSQL stamps it in whole seconds
///   (`CheckPoint.time`, `time(NULL)` in xlog.c `CreateCheckPoint`), taken just before the
///   redo pointer, so commits of that same second can precede the start and be in the data
///   files, however much WAL lies between (a bulk load running when the backup began). The
///   WAL before the start is therefore read backwards until a commit or abort stamped more
///   than a second before the checkpoint's second (timestamps in WAL order are ordered to
///   within concurrency inversions), taking the latest time seen; if none turns up within
///   [`LOOKBACK_SEGMENTS`], the whole checkpoint second counts (its last microsecond). WAL
///   before the first archived segment cannot be read; commits there are not seen.
///
/// The checkpoint's stamp counts only when no commit or abort is seen at all; failing
/// that too, the end time pitr recorded (its own clock).
pub(crate) async fn restorable_from<I: PlanInput>(
    input: &I,
    path: &[PathStep],
    b: &BackupRecord,
    seg: WalSegSize,
) -> Result<(i64, bool), RestoreError> {
    let first = b.start().segment(seg).0;
    let last = catalog::last_segment(b.end(), seg).0.max(first);
    let mut best: Option<i64> = None;
    let take = |t: i64, best: &mut Option<i64>| *best = Some(best.map_or(t, |m| m.max(t)));
    let mut ckpt: Option<i64> = None;
    for s in first..=last {
        let Some(f) = input.facts(path, SegNo(s)).await? else {
            continue;
        };
        for x in f.xacts.iter().filter(|x| x.lsn < b.end()) {
            take(x.time, &mut best);
        }
        for c in f.checkpoints.iter().filter(|c| c.redo == b.start()) {
            let t = c.time_unix.saturating_mul(1_000_000);
            ckpt = Some(ckpt.map_or(t, |m: i64| m.max(t)));
        }
    }
    // Before the start: back to a commit clearly older than the checkpoint's second.
    let old_enough = ckpt.map_or(i64::MIN, |c| c.saturating_sub(1_000_000));
    let mut found_older = ckpt.is_none();
    let mut s = first;
    let mut looked = 0;
    while !found_older && s > 0 && looked < LOOKBACK_SEGMENTS {
        s -= 1;
        looked += 1;
        let Some(f) = input.facts(path, SegNo(s)).await? else {
            break; // the archive begins here
        };
        for x in f.xacts.iter().filter(|x| x.lsn < b.start()) {
            take(x.time, &mut best);
            found_older |= x.time < old_enough;
        }
        if looked == LOOKBACK_SEGMENTS
            && !found_older
            && let Some(c) = ckpt
        {
            take(c + 999_999, &mut best);
        }
    }
    // The checkpoint's own stamp is not a commit: it bounds nothing when commits were seen
    // (a target between the last commit and the checkpoint's second is restorable), and is
    // the server-clock answer only when none were.
    Ok(match best.or(ckpt) {
        Some(t) => (t, true),
        None => (b.end_micros(), false),
    })
}

/// How many segments before a backup's start [`restorable_from`] reads for commits stamped
/// in its checkpoint's second.
pub(crate) const LOOKBACK_SEGMENTS: u64 = 16;

/// Step 2's result.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// The backup.
    pub candidate: Candidate,
    /// Its restorable-from instant, when computed (time targets and reports).
    pub restorable_from: Option<i64>,
    /// How recovery stops.
    pub stop: Stop,
    /// The record recovery must read whole.
    pub stop_record: Option<Span>,
    /// WAL needed through here (exclusive).
    pub need_end: Lsn,
    /// Last included transaction.
    pub last: Option<Xact>,
    /// First excluded one.
    pub next: Option<Xact>,
    /// Stamped at or before the target, yet excluded.
    pub excluded: Vec<Xact>,
    /// The target instant, formatted.
    pub target_utc: Option<String>,
    /// Notes for the plan.
    pub notes: Vec<String>,
}

/// How far after the first excluded record [`resolve`] looks for transactions stamped at or
/// before the target (they are concurrency inversions: microseconds to milliseconds apart).
const INVERSION_SEGMENTS: u64 = 1;
/// At most this many are named.
const MAX_NAMED_INVERSIONS: usize = 100;

/// Walks commits and aborts from `from` (nothing before a backup's start is replayed)
/// through segment `through`, in WAL order, until `stops` accepts one. Returns the last one
/// before it, and it.
async fn scan_until<I: PlanInput>(
    input: &I,
    path: &[PathStep],
    seg: WalSegSize,
    from: Lsn,
    through: SegNo,
    stops: impl Fn(&Xact) -> bool,
) -> Result<(Option<Xact>, Option<Xact>), RestoreError> {
    let mut last = None;
    let mut s = from.segment(seg);
    while s <= through {
        for x in input.facts(path, s).await?.unwrap_or_default().xacts {
            if x.lsn < from {
                continue;
            }
            if stops(&x) {
                return Ok((last, Some(x)));
            }
            last = Some(x);
        }
        s = s.next();
    }
    Ok((last, None))
}

/// The last commit or abort at or after `from` and before `end`, scanning back.
async fn last_before<I: PlanInput>(
    input: &I,
    path: &[PathStep],
    seg: WalSegSize,
    from: Lsn,
    end: Lsn,
) -> Result<Option<Xact>, RestoreError> {
    let floor = from.segment(seg);
    let mut s = catalog::last_segment(end, seg);
    loop {
        let f = input.facts(path, s).await?.unwrap_or_default();
        if let Some(x) = f.xacts.iter().rev().find(|x| x.lsn >= from && x.lsn < end) {
            return Ok(Some(*x));
        }
        if s <= floor {
            return Ok(None);
        }
        s = SegNo(s.0 - 1);
    }
}

/// The stop record at `lsn`, which the index says is a complete record: its span.
async fn complete_record<I: PlanInput>(
    input: &I,
    path: &[PathStep],
    lsn: Lsn,
    wal_end: Lsn,
) -> Result<Span, RestoreError> {
    match input.record_at_or_after(path, lsn, wal_end).await? {
        RecordAt::Complete { start, end } if start == lsn => Ok(Span { start, end }),
        RecordAt::Complete { start, .. } => Err(RestoreError::Corrupt(format!(
            "the WAL index names a record at {lsn}, but the archived WAL has its next record at {start}: run `pitr verify`"
        ))),
        RecordAt::End { .. } => Err(refused(format!(
            "the record at {lsn} that recovery must read to stop is not completely archived yet (the archive ends at {wal_end}): wait for `pitr stream` to archive more WAL, or choose an earlier target"
        ))),
    }
}

/// What every step of [`resolve`] reads: the input, the catalog, the timeline and its path,
/// and `recovery_target_inclusive`.
struct Ctx<'a, I> {
    input: &'a I,
    cat: &'a Catalog,
    tli: TimeLineId,
    path: &'a [PathStep],
    inclusive: bool,
}

impl<I: PlanInput> Ctx<'_, I> {
    fn seg(&self) -> WalSegSize {
        self.cat.index.seg
    }

    /// The refusal when no backup reaches the timeline.
    fn no_candidates(&self) -> RestoreError {
        refused(format!(
            "no backup in repo {} can reach timeline {} (none lies on its history with its WAL archived): take a backup with `pitr backup`",
            self.cat.location, self.tli
        ))
    }
}

impl Resolved {
    /// Candidate `c`, replaying all WAL placed, before any stop was resolved.
    fn new(c: Candidate) -> Resolved {
        Resolved {
            candidate: c,
            restorable_from: None,
            stop: Stop::EndOfWal,
            stop_record: None,
            need_end: Lsn(0),
            last: None,
            next: None,
            excluded: Vec::new(),
            target_utc: None,
            notes: Vec::new(),
        }
    }
}

/// "T (backup B, consistent at LSN L on timeline N)": the earliest restorable point, for
/// refusals (`from`: its restorable-from instant when known, else its end time).
fn earliest_msg(b: &BackupRecord, from: Option<i64>) -> String {
    format!(
        "{} (backup {}, consistent at LSN {} on timeline {})",
        from.map_or_else(|| fmt_time(b.end_micros()), fmt_time),
        b.id,
        b.end_lsn,
        b.end_tli
    )
}

/// Step 2: the backup and the stop point for `target`. `cands` newest first (see
/// [`candidates`]); each kind of target is one named step below.
pub(crate) async fn resolve<I: PlanInput>(
    input: &I,
    cat: &Catalog,
    tli: TimeLineId,
    path: &[PathStep],
    cands: Vec<Candidate>,
    target: &TargetSpec,
    inclusive: bool,
) -> Result<Resolved, RestoreError> {
    let cx = Ctx {
        input,
        cat,
        tli,
        path,
        inclusive,
    };
    if cands.is_empty() {
        return Err(cx.no_candidates());
    }
    match target {
        TargetSpec::Latest => resolve_latest(&cx, cands).await,
        TargetSpec::Time(t) => resolve_time(&cx, cands, t.instant).await,
        TargetSpec::Lsn(x) => resolve_lsn(&cx, cands, *x).await,
        TargetSpec::Name(name) => resolve_name(&cx, cands, name).await,
    }
}

/// `--to latest`: the newest candidate, replaying all its contiguous WAL; refused at a gap.
async fn resolve_latest<I: PlanInput>(
    cx: &Ctx<'_, I>,
    mut cands: Vec<Candidate>,
) -> Result<Resolved, RestoreError> {
    let c = cands.swap_remove(0);
    if let Some(gap) = c.cov.gap {
        let upto = safe_end(cx.input, cx.path, gap).await?;
        return Err(refused(format!(
            "the archive of timeline {} has a gap at {gap}: WAL after it cannot be replayed; restore up to it with --to-lsn {upto}{}",
            cx.tli,
            cx.cat.gap_note(gap)
        )));
    }
    let end = c.wal_end();
    let last = last_before(cx.input, cx.path, cx.seg(), c.backup.start(), end).await?;
    Ok(Resolved {
        need_end: end,
        last,
        ..Resolved::new(c)
    })
}

/// A time target: the newest candidate restorable from at or before it, then a stop
/// before the first transaction stamped after it.
async fn resolve_time<I: PlanInput>(
    cx: &Ctx<'_, I>,
    cands: Vec<Candidate>,
    instant: jiff::Timestamp,
) -> Result<Resolved, RestoreError> {
    let us = instant.as_microsecond();
    let target_utc = target::format_utc(instant);
    let (c, from) = choose_for_time(cx, cands, us, &target_utc).await?;
    let b = c.backup.clone();
    let wal_end = c.wal_end();
    let inclusive = cx.inclusive;
    let (last, found) = scan_until(
        cx.input,
        cx.path,
        cx.seg(),
        b.start(),
        catalog::last_segment(wal_end, cx.seg()),
        |x| if inclusive { x.time > us } else { x.time >= us },
    )
    .await?;
    let r = Resolved {
        restorable_from: Some(from),
        target_utc: Some(target_utc.clone()),
        ..Resolved::new(c)
    };
    match found {
        Some(x) if x.lsn < b.end() => Err(RestoreError::Corrupt(format!(
            "backup {} replays a transaction stamped {} (after the target) before it is consistent, yet the index called it restorable from {}: run `pitr verify`",
            b.id,
            fmt_time(x.time),
            fmt_time(from)
        ))),
        Some(x) => stop_before_xact(cx, r, x, last, us, wal_end).await,
        None => time_after_last(cx, r, last, from, us, &target_utc, wal_end).await,
    }
}

/// The newest candidate restorable from at or before `us` (before it, when exclusive: no
/// backup may then contain a transaction stamped exactly at the target), with that instant.
async fn choose_for_time<I: PlanInput>(
    cx: &Ctx<'_, I>,
    cands: Vec<Candidate>,
    us: i64,
    target_utc: &str,
) -> Result<(Candidate, i64), RestoreError> {
    let usable = |from: i64| if cx.inclusive { from <= us } else { from < us };
    let mut oldest_from = None;
    for c in cands {
        let (from, _) = restorable_from(cx.input, cx.path, &c.backup, cx.seg()).await?;
        if usable(from) {
            return Ok((c, from));
        }
        oldest_from = Some((c.backup, from));
    }
    let e = oldest_from
        .map(|(b, f)| earliest_msg(&b, Some(f)))
        .unwrap_or_default();
    Err(refused(format!(
        "target {target_utc} is before the earliest restorable point {e}"
    )))
}

/// A time target's stop before `x`, the first transaction stamped after it; names the
/// transactions stamped at or before the target whose records come after `x`.
async fn stop_before_xact<I: PlanInput>(
    cx: &Ctx<'_, I>,
    mut r: Resolved,
    x: Xact,
    last: Option<Xact>,
    us: i64,
    wal_end: Lsn,
) -> Result<Resolved, RestoreError> {
    let seg = cx.seg();
    let rec = complete_record(cx.input, cx.path, x.lsn, wal_end).await?;
    let mut excluded = Vec::new();
    let mut s = x.lsn.segment(seg);
    let through = SegNo(s.0 + INVERSION_SEGMENTS).min(catalog::last_segment(wal_end, seg));
    while s <= through {
        for y in cx.input.facts(cx.path, s).await?.unwrap_or_default().xacts {
            let before = if cx.inclusive {
                y.time <= us
            } else {
                y.time < us
            };
            if y.lsn > x.lsn && before {
                excluded.push(y);
            }
        }
        s = s.next();
    }
    if excluded.len() > MAX_NAMED_INVERSIONS {
        r.notes.push(format!(
            "{} transactions stamped at or before the target commit after the first excluded one; the first {MAX_NAMED_INVERSIONS} are listed",
            excluded.len()
        ));
        excluded.truncate(MAX_NAMED_INVERSIONS);
    }
    r.stop = Stop::Before(x.lsn);
    r.stop_record = Some(rec);
    r.need_end = rec.end.max(r.candidate.backup.end());
    r.last = last;
    r.next = Some(x);
    r.excluded = excluded;
    Ok(r)
}

/// A time target no archived transaction is stamped after: refused at a gap, or past the
/// last transaction, except on its exact time (or, with none since the backup, on the
/// instant the backup became restorable).
async fn time_after_last<I: PlanInput>(
    cx: &Ctx<'_, I>,
    mut r: Resolved,
    last: Option<Xact>,
    from: i64,
    us: i64,
    target_utc: &str,
    wal_end: Lsn,
) -> Result<Resolved, RestoreError> {
    let tli = cx.tli;
    if let Some(gap) = r.candidate.cov.gap {
        let upto = safe_end(cx.input, cx.path, gap).await?;
        return Err(refused(format!(
            "target {target_utc} falls in a gap of the WAL archive (timeline {tli}, from {gap}): the WAL needed to reach it is missing; the latest restorable point before the gap is {}{}",
            last.map(|x| fmt_time(x.time))
                .unwrap_or_else(|| format!("--to-lsn {upto}")),
            cx.cat.gap_note(gap)
        )));
    }
    let b_end = r.candidate.backup.end();
    match last {
        // The target is the last archived transaction's exact time: stop just after it
        // (PostgreSQL would wait for a later record).
        Some(l) if l.time == us && cx.inclusive => {
            let rec = complete_record(cx.input, cx.path, l.lsn, wal_end).await?;
            r.stop = Stop::After(l.lsn);
            r.stop_record = Some(rec);
            r.need_end = rec.end.max(b_end);
            r.last = Some(l);
            Ok(r)
        }
        Some(l) => Err(refused(format!(
            "target {target_utc} is after the last archived commit ({} of xid {} at {}, LSN {}, timeline {tli}): the latest restorable point is {}; use --to latest, or an earlier time",
            if l.commit { "commit" } else { "abort" },
            l.xid,
            fmt_time(l.time),
            l.lsn,
            fmt_time(l.time)
        ))),
        // No transaction ends after the backup's start: only the backup's own consistent
        // state is proven, and only if T is exactly when it became restorable.
        None if from == us && cx.inclusive => {
            let (stop, rec, need) = stop_at_lsn(cx.input, cx.path, b_end, wal_end, false).await?;
            r.stop = stop;
            r.stop_record = rec;
            r.need_end = need.max(b_end);
            Ok(r)
        }
        None => Err(refused(format!(
            "target {target_utc} is after the last archived WAL, which holds no transaction since backup {}: use --to latest",
            r.candidate.backup.id
        ))),
    }
}

/// `--to-lsn X`: the newest candidate consistent at or before `X`, stopping at the first
/// record at or after it.
async fn resolve_lsn<I: PlanInput>(
    cx: &Ctx<'_, I>,
    mut cands: Vec<Candidate>,
    x: Lsn,
) -> Result<Resolved, RestoreError> {
    let tli = cx.tli;
    let Some(pos) = cands.iter().position(|c| c.backup.end() <= x) else {
        let oldest = cands.last().map(|c| c.backup.clone());
        let e = oldest.map(|b| earliest_msg(&b, None)).unwrap_or_default();
        return Err(refused(format!(
            "target LSN {x} is before the earliest restorable point {e}"
        )));
    };
    let c = cands.swap_remove(pos);
    let wal_end = c.wal_end();
    if x > wal_end {
        let upto = safe_end(cx.input, cx.path, wal_end).await?;
        return Err(refused(match c.cov.gap {
            Some(gap) => format!(
                "target LSN {x} falls in a gap of the WAL archive (timeline {tli}, from {gap}): the WAL needed is missing; the latest restorable point is --to-lsn {upto}{}",
                cx.cat.gap_note(gap)
            ),
            None => format!(
                "target LSN {x} is after the last archived WAL ({wal_end} on timeline {tli}): the latest restorable point is --to-lsn {upto}, or --to latest"
            ),
        }));
    }
    let b = c.backup.clone();
    let (stop, rec, need) = stop_at_lsn(cx.input, cx.path, x, wal_end, cx.inclusive).await?;
    // The included transactions: those whose record starts before the stop (or is the
    // included stop record).
    let first_out = match stop {
        Stop::After(l) => Lsn(l.0 + 1),
        Stop::Before(l) => l,
        Stop::EndOfWal => Lsn(u64::MAX),
    };
    let (last, next) = scan_until(
        cx.input,
        cx.path,
        cx.seg(),
        b.start(),
        catalog::last_segment(need.max(b.end()), cx.seg()),
        |xa| xa.lsn >= first_out,
    )
    .await?;
    Ok(Resolved {
        stop,
        stop_record: rec,
        need_end: need.max(b.end()),
        last,
        next,
        ..Resolved::new(c)
    })
}

/// `--to-name N`: stop after the first restore point named `N` after the oldest candidate's
/// end, from the newest candidate consistent before it.
async fn resolve_name<I: PlanInput>(
    cx: &Ctx<'_, I>,
    mut cands: Vec<Candidate>,
    name: &str,
) -> Result<Resolved, RestoreError> {
    let (rp, found) = points_named(cx, &cands, name).await?;
    let mut notes = Vec::new();
    if found.len() > 1 {
        notes.push(format!(
            "restore point name {name:?} is not unique: {} points ({}); restoring to the first, at {} ({}), as PostgreSQL's recovery_target_name would",
            found.len(),
            found
                .iter()
                .map(|p| format!("{} at {}", p.lsn, fmt_time(p.time)))
                .collect::<Vec<_>>()
                .join(", "),
            rp.lsn,
            fmt_time(rp.time)
        ));
    }
    let Some(pos) = cands.iter().position(|c| c.backup.end() <= rp.lsn) else {
        return Err(refused(format!(
            "restore point {name:?} ({}) is before the earliest restorable point",
            rp.lsn
        )));
    };
    let c = cands.swap_remove(pos);
    let b = c.backup.clone();
    let wal_end = c.wal_end();
    let rec = complete_record(cx.input, cx.path, rp.lsn, wal_end).await?;
    let (last, next) = scan_until(
        cx.input,
        cx.path,
        cx.seg(),
        b.start(),
        catalog::last_segment(rec.end, cx.seg()),
        |xa| xa.lsn > rp.lsn,
    )
    .await?;
    Ok(Resolved {
        stop: Stop::After(rp.lsn),
        stop_record: Some(rec),
        need_end: rec.end.max(b.end()),
        last,
        next,
        target_utc: Some(fmt_time(rp.time)),
        notes,
        ..Resolved::new(c)
    })
}

/// The first restore point named `name` after the oldest candidate's end, and all of them
/// in WAL order; refused, naming what exists, when there is none. A point inside the oldest
/// backup's own window (before it is consistent) is named in the refusal, not silently
/// "missing".
async fn points_named<I: PlanInput>(
    cx: &Ctx<'_, I>,
    cands: &[Candidate],
    name: &str,
) -> Result<(RestorePoint, Vec<RestorePoint>), RestoreError> {
    let Some(oldest_c) = cands.last() else {
        return Err(cx.no_candidates());
    };
    let oldest = oldest_c.backup.end();
    let oldest_start = oldest_c.backup.start();
    let wal_end = cands.iter().map(Candidate::wal_end).max().unwrap_or(oldest);
    let mut too_early = None;
    let mut s = oldest_start.segment(cx.seg());
    let last_seg = catalog::last_segment(wal_end, cx.seg());
    let mut found = Vec::new();
    let mut names = BTreeSet::new();
    while s <= last_seg {
        for p in cx
            .input
            .facts(cx.path, s)
            .await?
            .unwrap_or_default()
            .restore_points
        {
            if p.lsn >= oldest {
                names.insert(p.name.clone());
                if p.name == name {
                    found.push(p);
                }
            } else if p.lsn >= oldest_start && p.name == name {
                too_early.get_or_insert(p.lsn);
            }
        }
        s = s.next();
    }
    if let Some(first) = found.first().cloned() {
        return Ok((first, found));
    }
    if let Some(l) = too_early {
        return Err(refused(format!(
            "restore point {name:?} ({l}) is before the earliest restorable point: it was made while the oldest backup ({}) was being taken, before that backup is consistent at {oldest}",
            oldest_c.backup.id
        )));
    }
    Err(refused(format!(
        "no restore point named {name:?} in the archived WAL of timeline {} after a backup{}",
        cx.tli,
        if names.is_empty() {
            String::new()
        } else {
            format!(
                "; it has {}",
                names.into_iter().collect::<Vec<_>>().join(", ")
            )
        }
    )))
}

/// An LSN target `x`: stop after the first record at or after it (inclusive, PostgreSQL's
/// default) or before it (exclusive). That record must be complete in the archive. If the
/// archive ends first, and no record starting before `x` is incomplete, the target means
/// "everything archived": replay all of it.
async fn stop_at_lsn<I: PlanInput>(
    input: &I,
    path: &[PathStep],
    x: Lsn,
    wal_end: Lsn,
    inclusive: bool,
) -> Result<(Stop, Option<Span>, Lsn), RestoreError> {
    match input.record_at_or_after(path, x, wal_end).await? {
        RecordAt::Complete { start, end } => {
            let stop = if inclusive {
                Stop::After(start)
            } else {
                Stop::Before(x)
            };
            Ok((stop, Some(Span { start, end }), end))
        }
        RecordAt::End { pending: Some(p) } if p < x => Err(refused(format!(
            "the record at {p}, before target LSN {x}, is not completely archived yet: wait for `pitr stream` to archive more WAL, or use --to-lsn {p}"
        ))),
        RecordAt::End { .. } => Ok((Stop::EndOfWal, None, wal_end)),
    }
}

/// The latest LSN target that restores everything archived before `end` (where the archive
/// ends or a gap begins): `end` itself, or the start of a record the archive holds only in
/// part there. Suggested in error messages, and accepted as `--to-lsn`.
async fn safe_end<I: PlanInput>(
    input: &I,
    path: &[PathStep],
    end: Lsn,
) -> Result<Lsn, RestoreError> {
    Ok(match input.record_at_or_after(path, end, end).await? {
        RecordAt::End { pending: Some(p) } => p,
        _ => end,
    })
}

/// Step 3a: the WAL files from the backup's start through the segment holding the byte
/// before `need_end`.
pub(crate) fn wal_files(
    idx: &WalIndex,
    path: &[PathStep],
    backup: &BackupRecord,
    need_end: Lsn,
) -> Result<Vec<WalFile>, RestoreError> {
    let seg = idx.seg;
    let first = backup.start().segment(seg);
    let last = catalog::last_segment(need_end.max(backup.end()), seg).max(first);
    let mut out = Vec::new();
    let mut s = first;
    while s <= last {
        let Some((ftli, f)) = idx.file(path, s) else {
            return Err(refused(format!(
                "segment {} is missing from the archive (a gap): the restore cannot reach its target",
                segment_file_name(idx.tli_for_segment(path, s), s, seg)
            )));
        };
        let (key, partial_end) = match f {
            SegFile::Complete { key, .. } => (key.clone(), None),
            SegFile::Partial { key, end } => (key.clone(), Some(*end)),
        };
        if let Some(e) = partial_end
            && s == last
            && e < need_end
        {
            return Err(refused(format!(
                "the archive ends at {e}, before {need_end} which recovery must read: wait for `pitr stream` to archive more WAL"
            )));
        }
        out.push(WalFile {
            name: segment_file_name(ftli, s, seg),
            key,
            partial: partial_end.is_some(),
            partial_end,
        });
        s = s.next();
    }
    Ok(out)
}

/// Step 3b: history files for every timeline the repo holds (so PostgreSQL picks an unused
/// ID when it promotes), and that ID: the first one above `tli` with no history file placed
/// (PostgreSQL's `findNewestTimeLine` probes upwards from the recovery target timeline
/// while history files exist, then adds one).
pub(crate) fn history_files(
    idx: &WalIndex,
    path: &[PathStep],
    tli: TimeLineId,
) -> (Vec<HistoryFile>, u32) {
    let mut ids: BTreeSet<u32> = idx
        .files
        .keys()
        .chain(idx.history_keys.keys())
        .map(|t| t.0)
        .collect();
    ids.extend(path.iter().map(|p| p.tli.0));
    // Every ID a history names, even an ancestor whose own history file and WAL the repo
    // never received (pitr was not streaming while it existed): a placeholder reserves it.
    for h in idx.histories.values() {
        ids.extend(h.ancestors.iter().map(|a| a.tli.0));
    }
    let out: Vec<HistoryFile> = ids
        .iter()
        .filter(|t| **t > 1)
        .map(|t| HistoryFile {
            timeline: *t,
            name: history_file_name(TimeLineId(*t)),
            key: idx.history_keys.get(&TimeLineId(*t)).cloned(),
            on_path: path.iter().any(|p| p.tli.0 == *t),
        })
        .collect();
    let mut next = tli.0 + 1;
    while ids.contains(&next) {
        next += 1;
    }
    (out, next)
}

/// The content of a placeholder history file (a comment only: PostgreSQL never follows a
/// timeline pitr does not target, it only sees that the ID is taken).
pub(crate) fn placeholder_history(tli: u32) -> String {
    format!(
        "# pitr: placeholder for timeline {tli}, whose WAL is in the repo without a history file; it reserves the ID so a restored server does not reuse it\n"
    )
}

/// Recovery and standby settings a restore resets (they are written explicitly, so earlier
/// values anywhere in the configuration cannot take effect).
pub(crate) const RESET_SETTINGS: &[&str] = &[
    "recovery_target",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_lsn",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
    "restore_command",
    "recovery_end_command",
    "archive_cleanup_command",
    "primary_conninfo",
    "primary_slot_name",
    "recovery_min_apply_delay",
];

/// Settings that no longer exist in PostgreSQL 15-18 or belong to recovery.conf; commented
/// out when found in `postgresql.auto.conf` (a server refuses unknown settings there).
const OBSOLETE_SETTINGS: &[&str] = &["standby_mode", "promote_trigger_file", "trigger_file"];

/// Step 4: the settings written last in `postgresql.auto.conf`.
pub(crate) fn recovery_settings(
    target_text: &str,
    stop: Stop,
    tli: TimeLineId,
    mode: &Mode,
) -> Vec<String> {
    let mut v = vec![
        format!(
            "# added by pitr {} restore: target {target_text}",
            env!("CARGO_PKG_VERSION")
        ),
        "# every recovery and standby setting is set here, so earlier ones (a previous restore's, a standby's, postgresql.conf's) do not apply".into(),
        // Empty targets first: PostgreSQL refuses a second target while one is set.
        "recovery_target = ''".into(),
        "recovery_target_name = ''".into(),
        "recovery_target_time = ''".into(),
        "recovery_target_xid = ''".into(),
    ];
    match stop {
        Stop::EndOfWal => {
            v.push("recovery_target_lsn = ''".into());
            v.push("recovery_target_inclusive = on".into());
        }
        Stop::Before(l) => {
            v.push(format!("recovery_target_lsn = '{l}'"));
            v.push("recovery_target_inclusive = off".into());
        }
        Stop::After(l) => {
            v.push(format!("recovery_target_lsn = '{l}'"));
            v.push("recovery_target_inclusive = on".into());
        }
    }
    match mode {
        Mode::Promote => {
            v.push(format!("recovery_target_timeline = '{}'", tli.0));
            v.push("recovery_target_action = 'promote'".into());
            v.push("# the WAL recovery needs is in pg_wal: no archive to fetch from".into());
            v.push("restore_command = 'false'".into());
        }
        Mode::Standby { restore_command } => {
            v.push("recovery_target_timeline = 'latest'".into());
            v.push("recovery_target_action = 'pause'".into());
            v.push("# a standby of the repo: it fetches newer WAL as pitr archives it".into());
            v.push(format!(
                "restore_command = '{}'",
                restore_command.replace('\'', "''")
            ));
        }
    }
    v.extend([
        "recovery_end_command = ''".into(),
        "archive_cleanup_command = ''".into(),
        "primary_conninfo = ''".into(),
        "primary_slot_name = ''".into(),
        "recovery_min_apply_delay = 0".into(),
    ]);
    v
}

/// The setting a `postgresql.conf`-syntax line assigns, if any (`name = value`, `name value`).
fn setting_name(line: &str) -> Option<String> {
    let t = line.trim_start();
    if t.starts_with('#') || t.is_empty() {
        return None;
    }
    let end = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(t.len());
    (end > 0).then(|| t[..end].to_ascii_lowercase())
}

/// Rewrites a restored `postgresql.auto.conf`: every line that sets a recovery or standby
/// setting ([`RESET_SETTINGS`], and obsolete recovery.conf names) is commented out, visibly;
/// everything else is kept as is. Returns the new text and the settings neutralised.
pub(crate) fn neutralise_auto_conf(text: &str) -> (String, Vec<String>) {
    let mut out = String::with_capacity(text.len() + 256);
    let mut gone = Vec::new();
    for line in text.lines() {
        match setting_name(line) {
            Some(n)
                if RESET_SETTINGS.contains(&n.as_str())
                    || OBSOLETE_SETTINGS.contains(&n.as_str()) =>
            {
                out.push_str("# pitr restore: disabled: ");
                out.push_str(line.trim());
                out.push('\n');
                gone.push(n);
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    (out, gone)
}

/// The recovery and standby settings a configuration file sets spelled otherwise than in
/// lower case (`Recovery_Target_Time`), as spelled. PostgreSQL matches names
/// case-insensitively, but ignores an earlier assignment only when a later one is spelled
/// identically (guc.c, `ProcessConfigFileInternal`, `strcmp`): such a line still applies
/// before pitr's settings, and a recovery target left there makes the server refuse to
/// start ("multiple recovery targets specified"). The restore therefore also writes its
/// value under that spelling ([`respell`]).
pub(crate) fn case_variants(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            let n = setting_name(t)?;
            let raw = &t[..n.len()];
            (RESET_SETTINGS.contains(&n.as_str()) && raw != n).then(|| raw.to_string())
        })
        .collect()
}

/// `settings` (pitr's recovery settings) with, before each line, the same assignment under
/// every other spelling of its name in `variants`.
pub(crate) fn respell(settings: &[String], variants: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(settings.len() + variants.len());
    for line in settings {
        if let Some(n) = setting_name(line) {
            let value = &line.trim_start()[n.len()..];
            let mut seen = Vec::new();
            for v in variants.iter().filter(|v| v.to_ascii_lowercase() == n) {
                if !seen.contains(v) {
                    seen.push(v.clone());
                    out.push(format!("{v}{value}"));
                }
            }
        }
        out.push(line.clone());
    }
    out
}

/// The files a configuration file includes (`include`, `include_if_exists`,
/// `include_dir`), as written: (directive, path).
pub(crate) fn includes_in(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let t = l.trim_start();
            let n = setting_name(t)?;
            if !matches!(n.as_str(), "include" | "include_if_exists" | "include_dir") {
                return None;
            }
            let rest = t[n.len()..].trim_start();
            let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
            let value = if let Some(q) = rest.strip_prefix('\'') {
                let mut v = String::new();
                let mut it = q.chars().peekable();
                while let Some(c) = it.next() {
                    if c == '\'' {
                        if it.peek() == Some(&'\'') {
                            it.next();
                            v.push('\'');
                            continue;
                        }
                        break;
                    }
                    v.push(c);
                }
                v
            } else {
                rest.split(|c: char| c.is_whitespace() || c == '#')
                    .next()
                    .unwrap_or("")
                    .to_string()
            };
            (!value.is_empty()).then_some((n, value))
        })
        .collect()
}

/// The recovery and standby settings a configuration file sets (for reporting what the
/// restore's settings override in `postgresql.conf`).
pub(crate) fn recovery_settings_in(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(setting_name)
        .filter(|n| RESET_SETTINGS.contains(&n.as_str()))
        .collect()
}

fn target_text(t: &TargetSpec) -> String {
    match t {
        TargetSpec::Latest => "latest".to_string(),
        TargetSpec::Time(t) => match &t.zone {
            target::ZoneSource::Explicit | target::ZoneSource::DefaultUtc => t.input.clone(),
            target::ZoneSource::TzFlag(z) => format!("{} (--tz {z})", t.input),
            target::ZoneSource::TzEnv(z) => format!("{} (TZ={z})", t.input),
        },
        TargetSpec::Lsn(l) => format!("LSN {l}"),
        TargetSpec::Name(n) => format!("restore point {n:?}"),
    }
}

/// Tablespace destinations (step 1's remap): `-T OLD=NEW` by location or OID, else the
/// original location, which must be absolute.
pub(crate) fn tablespaces(
    backup: &BackupRecord,
    map: &HashMap<String, PathBuf>,
) -> Result<Vec<(String, PathBuf)>, RestoreError> {
    let mut out = Vec::new();
    for a in &backup.archives {
        if a.name == "base" {
            continue;
        }
        let loc = a.location.clone().unwrap_or_default();
        let dest = map
            .get(&loc)
            .or_else(|| map.get(&a.name))
            .cloned()
            .unwrap_or_else(|| PathBuf::from(&loc));
        if dest.is_relative() {
            return Err(refused(format!(
                "tablespace {} ({loc}) would be restored to a relative path: map it with --tablespace-map {loc}=/new/dir",
                a.name
            )));
        }
        out.push((a.name.clone(), dest));
    }
    Ok(out)
}

/// Plans a restore: the four steps above. Writes nothing.
pub(crate) async fn plan<I: PlanInput>(
    input: &I,
    cat: &Catalog,
    req: &Request,
) -> Result<Plan, RestoreError> {
    if cat.backups.is_empty() {
        return Err(refused(format!(
            "repo {} holds no complete backup: take one with `pitr backup` first",
            cat.location
        )));
    }
    if let Some(id) = &req.backup
        && !cat.backups.iter().any(|b| &b.id == id || &b.label == id)
    {
        return Err(refused(format!(
            "no complete backup {id:?} in the repo (see `pitr list`)"
        )));
    }
    let standby = matches!(req.mode, Mode::Standby { .. });
    if standby && req.target != TargetSpec::Latest {
        return Err(refused(
            "--standby follows the archive to its end (and then keeps fetching): it takes no --to/--to-lsn/--to-name target; drop --standby to restore to a point and promote",
        ));
    }
    // 1. Timeline and backups.
    let (tli, path) = choose_timeline(cat, req.timeline)?;
    let cands = candidates(cat, &path, req.backup.as_deref());
    // 2. Stop point.
    let mut r = resolve(input, cat, tli, &path, cands, &req.target, req.inclusive).await?;
    let backup = r.candidate.backup.clone();
    if r.restorable_from.is_none() {
        r.restorable_from = Some(
            restorable_from(input, &path, &backup, cat.index.seg)
                .await?
                .0,
        );
    }
    let last_timestamped = match (r.stop, r.last) {
        (Stop::After(l), Some(x)) if x.lsn == l => {
            last_before(input, &path, cat.index.seg, backup.start(), l).await?
        }
        (_, last) => last,
    };
    let wal_end = r.need_end.max(backup.end());
    // 3. Files.
    let wal = wal_files(&cat.index, &path, &backup, wal_end)?;
    let (histories, next_tli) = history_files(&cat.index, &path, tli);
    // 4. Settings.
    let text = target_text(&req.target);
    let recovery_settings = recovery_settings(&text, r.stop, tli, &req.mode);
    let tablespaces = tablespaces(&backup, &req.tablespace_map)?;
    Ok(Plan {
        target: text,
        target_utc: r.target_utc,
        backup_restorable_from: r.restorable_from.map(catalog::micros_rfc3339),
        backup,
        timeline: tli.0,
        stop: r.stop,
        stop_record: r.stop_record,
        wal_end,
        last_included: r.last.map(XactInfo::from),
        last_timestamped: last_timestamped.map(XactInfo::from),
        first_excluded: r.next.map(XactInfo::from),
        excluded_despite_time: r.excluded.into_iter().map(XactInfo::from).collect(),
        wal,
        histories,
        promotes_to: (!standby).then_some(next_tli),
        standby,
        recovery_settings,
        dir: req.dir.clone(),
        tablespaces,
        notes: r.notes,
        rto: None,
        seg: cat.index.seg,
    })
}

#[cfg(test)]
mod tests {
    //! Table-driven tests of each planning step, on plain values: no repo, no PostgreSQL.
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use walfmt::history::TimelineHistory;

    use super::*;
    use crate::repo::catalog::{ArchiveRecord, CheckpointFact, RestorePoint};

    const MB: u64 = 1 << 20;

    fn seg() -> WalSegSize {
        WalSegSize::new(MB as u32).unwrap()
    }

    fn l(x: u64) -> Lsn {
        Lsn(x)
    }

    /// One timeline's archive: segments `0..n` complete, plus an optional partial.
    #[derive(Default, Clone)]
    struct Fake {
        facts: BTreeMap<(u32, u64), SegmentFacts>,
        /// Record spans per timeline (sorted).
        records: BTreeMap<u32, Vec<(Lsn, Lsn)>>,
    }

    impl PlanInput for Fake {
        async fn facts(
            &self,
            path: &[PathStep],
            segno: SegNo,
        ) -> Result<Option<SegmentFacts>, RestoreError> {
            let tli = path
                .iter()
                .rev()
                .find(|p| p.from.segment(seg()) <= segno)
                .map_or(1, |p| p.tli.0);
            Ok(self.facts.get(&(tli, segno.0)).cloned())
        }
        async fn record_at_or_after(
            &self,
            path: &[PathStep],
            lsn: Lsn,
            wal_end: Lsn,
        ) -> Result<RecordAt, RestoreError> {
            let tli = path.last().unwrap().tli.0;
            let recs = self.records.get(&tli).cloned().unwrap_or_default();
            for (s, e) in recs {
                if s >= lsn {
                    if e <= wal_end {
                        return Ok(RecordAt::Complete { start: s, end: e });
                    }
                    return Ok(RecordAt::End { pending: Some(s) });
                }
                if e > wal_end {
                    return Ok(RecordAt::End { pending: Some(s) });
                }
            }
            Ok(RecordAt::End { pending: None })
        }
    }

    fn xact(lsn: u64, time: i64, xid: u32) -> Xact {
        Xact {
            lsn: l(lsn),
            time,
            xid,
            commit: true,
        }
    }

    fn backup(id: &str, start: u64, end: u64, tli: u32) -> BackupRecord {
        BackupRecord {
            format: 1,
            id: id.into(),
            label: id.into(),
            start_lsn: l(start),
            start_tli: TimeLineId(tli),
            end_lsn: l(end),
            end_tli: TimeLineId(tli),
            start_time: "2026-01-01T00:00:00Z".into(),
            // pitr's own clock, deliberately wrong (an hour early): never used when the
            // WAL has timestamps.
            end_time: "2025-12-31T23:00:00Z".into(),
            pg_version: "17.0".into(),
            pg_major: 17,
            system_id: "1".into(),
            compression: "lz4".into(),
            archives: vec![ArchiveRecord {
                name: "base".into(),
                location: None,
                bytes: 0,
                server_compression: None,
                chunks: vec![],
            }],
            manifest: None,
            bytes: 0,
            stored_bytes: 0,
            created_by: "test".into(),
            source_user: None,
            restorable_from: None,
        }
    }

    /// An index with complete segments `segs` per timeline and optional partial ends.
    fn index(
        segs: &[(u32, std::ops::Range<u64>)],
        partials: &[(u32, u64, u64)],
        histories: &[(u32, &str)],
    ) -> WalIndex {
        let mut files: BTreeMap<TimeLineId, BTreeMap<SegNo, SegFile>> = BTreeMap::new();
        for (t, r) in segs {
            for s in r.clone() {
                files.entry(TimeLineId(*t)).or_default().insert(
                    SegNo(s),
                    SegFile::Complete {
                        key: format!("k/{t}/{s}"),
                        summary: None,
                    },
                );
            }
        }
        for (t, s, end) in partials {
            files.entry(TimeLineId(*t)).or_default().insert(
                SegNo(*s),
                SegFile::Partial {
                    key: format!("k/{t}/{s}.partial"),
                    end: l(*end),
                },
            );
        }
        let mut hs = BTreeMap::new();
        let mut hk = BTreeMap::new();
        for (t, text) in histories {
            hs.insert(
                TimeLineId(*t),
                TimelineHistory::parse(TimeLineId(*t), text).unwrap(),
            );
            hk.insert(TimeLineId(*t), format!("wal/{t:08X}.history"));
        }
        WalIndex {
            seg: seg(),
            system_id: 1,
            files,
            histories: hs,
            history_keys: hk,
        }
    }

    fn cat(backups: Vec<BackupRecord>, index: WalIndex) -> Catalog {
        Catalog {
            location: "test".into(),
            backups,
            index,
            gaps: Vec::new(),
        }
    }

    fn req(target: TargetSpec) -> Request {
        Request {
            target,
            timeline: TimelineSel::Latest,
            backup: None,
            mode: Mode::Promote,
            inclusive: true,
            dir: PathBuf::from("/restore"),
            tablespace_map: HashMap::new(),
        }
    }

    fn time(us: i64) -> TargetSpec {
        TargetSpec::Time(target::TimeTarget {
            instant: jiff::Timestamp::from_microsecond(us).unwrap(),
            zone: target::ZoneSource::Explicit,
            input: format!("@{us}"),
        })
    }

    use crate::test_util::block_on as run;

    /// The base scenario: timeline 1, segments 0..4 complete, a backup from 0x100028 to
    /// 0x100400 (segment 1); commits at 1_000, 2_000, 3_000 us in segment 2; a big commit at
    /// 0x2FF000 (time 4_000) that ends in segment 3; more commits in segment 3.
    fn base() -> (Fake, Catalog) {
        let mut f = Fake::default();
        f.facts.insert(
            (1, 1),
            SegmentFacts {
                xacts: vec![xact(0x100100, 500, 9)],
                checkpoints: vec![CheckpointFact {
                    lsn: l(0x100060),
                    redo: l(0x100028),
                    time_unix: 0,
                }],
                ..Default::default()
            },
        );
        f.facts.insert(
            (1, 2),
            SegmentFacts {
                xacts: vec![
                    xact(0x200100, 1_000, 10),
                    xact(0x200200, 2_000, 11),
                    xact(0x200300, 3_000, 12),
                    xact(0x2FF000, 4_000, 13),
                ],
                ..Default::default()
            },
        );
        f.facts.insert(
            (1, 3),
            SegmentFacts {
                xacts: vec![xact(0x300100, 5_000, 14), xact(0x300200, 6_000, 15)],
                restore_points: vec![],
                ..Default::default()
            },
        );
        f.records.insert(
            1,
            vec![
                (l(0x100100), l(0x100140)),
                (l(0x100400), l(0x100440)),
                (l(0x200100), l(0x200140)),
                (l(0x200200), l(0x200240)),
                (l(0x200300), l(0x200340)),
                // The big commit: starts in segment 2, ends in segment 3.
                (l(0x2FF000), l(0x300080)),
                (l(0x300100), l(0x300140)),
                (l(0x300200), l(0x300240)),
            ],
        );
        let c = cat(
            vec![backup("b1", 0x100028, 0x100400, 1)],
            index(&[(1, 0..4)], &[], &[]),
        );
        (f, c)
    }

    #[test]
    fn stop_record_crossing_a_segment_boundary_places_the_next_segment() {
        let (f, c) = base();
        // Between 3_000 and 4_000: stop before the big commit, which ends in segment 3.
        let p = run(plan(&f, &c, &req(time(3_500)))).unwrap();
        assert_eq!(p.stop, Stop::Before(l(0x2FF000)));
        assert_eq!(
            p.stop_record,
            Some(Span {
                start: l(0x2FF000),
                end: l(0x300080)
            })
        );
        let names: Vec<&str> = p.wal.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(
            names.last().copied(),
            Some("000000010000000000000003"),
            "{names:?}"
        );
        assert_eq!(p.last_included.unwrap().xid, 12);
        assert_eq!(p.first_excluded.unwrap().xid, 13);
    }

    #[test]
    fn lsn_targets_at_segment_ends_and_the_archive_end() {
        let (f, c) = base();
        type Case = (u64, bool, Result<(Stop, &'static str), &'static str>);
        let cases: Vec<Case> = vec![
            // The start of segment 3 (what pg_switch_wal() returns at the end of segment 2):
            // the first record at or after it is in segment 3. Inclusive (PostgreSQL's
            // default) replays it, exclusive stops before it; both need it whole.
            (
                0x300000,
                true,
                Ok((Stop::After(l(0x300100)), "000000010000000000000003")),
            ),
            (
                0x300000,
                false,
                Ok((Stop::Before(l(0x300000)), "000000010000000000000003")),
            ),
            // Inside the big commit: the next record starts in segment 3.
            (
                0x2FF100,
                false,
                Ok((Stop::Before(l(0x2FF100)), "000000010000000000000003")),
            ),
            // A commit's own LSN: inclusive replays that commit.
            (
                0x2FF000,
                true,
                Ok((Stop::After(l(0x2FF000)), "000000010000000000000003")),
            ),
            // The archive's end (segment 4 is not archived): everything archived.
            (
                0x400000,
                true,
                Ok((Stop::EndOfWal, "000000010000000000000003")),
            ),
            (
                0x400000,
                false,
                Ok((Stop::EndOfWal, "000000010000000000000003")),
            ),
            // Beyond it: refused, naming an LSN that is accepted.
            (0x400001, true, Err("--to-lsn 0/400000")),
            // Before the backup is consistent.
            (0x100300, true, Err("before the earliest restorable point")),
        ];
        for (lsn, inclusive, want) in cases {
            let mut r = req(TargetSpec::Lsn(l(lsn)));
            r.inclusive = inclusive;
            let got = run(plan(&f, &c, &r));
            match (got, want) {
                (Ok(p), Ok((stop, last))) => {
                    assert_eq!(p.stop, stop, "{lsn:#x} {inclusive}");
                    assert_eq!(p.wal.last().unwrap().name, last, "{lsn:#x}");
                }
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{lsn:#x}: {e}"),
                (got, want) => panic!("{lsn:#x}: got {got:?}, want {want:?}"),
            }
        }
        // Inclusive at a commit's LSN: the commit is the last included transaction.
        let p = run(plan(&f, &c, &req(TargetSpec::Lsn(l(0x2FF000))))).unwrap();
        assert_eq!(p.last_included.unwrap().xid, 13);
        // ... but PostgreSQL stops after it before recording its time.
        assert_eq!(p.last_timestamped.unwrap().xid, 12);
        let mut r = req(TargetSpec::Lsn(l(0x2FF000)));
        r.inclusive = false;
        let p = run(plan(&f, &c, &r)).unwrap();
        assert_eq!(p.last_included.unwrap().xid, 12);
    }

    #[test]
    fn a_suggested_lsn_is_accepted() {
        let (f, c) = base();
        let e = run(plan(&f, &c, &req(TargetSpec::Lsn(l(0x500000))))).unwrap_err();
        let msg = e.to_string();
        let lsn: Lsn = msg
            .split("--to-lsn ")
            .nth(1)
            .unwrap()
            .split(|ch: char| ch == ',' || ch.is_whitespace())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let p = run(plan(&f, &c, &req(TargetSpec::Lsn(lsn)))).unwrap();
        assert_eq!(p.stop, Stop::EndOfWal);
    }

    #[test]
    fn a_record_not_yet_archived_is_refused() {
        let (f, mut c) = base();
        // Segment 3 is only a partial up to 0x300050: the big commit ends at 0x300080.
        c.index = index(&[(1, 0..3)], &[(1, 3, 0x300050)], &[]);
        let e = run(plan(&f, &c, &req(time(3_500)))).unwrap_err();
        assert!(e.to_string().contains("not completely archived"), "{e}");
        // An LSN target inside it too.
        let e = run(plan(&f, &c, &req(TargetSpec::Lsn(l(0x300010))))).unwrap_err();
        assert!(e.to_string().contains("not completely archived"), "{e}");
    }

    #[test]
    fn time_targets_follow_postgresql_and_name_inversions() {
        let (mut f, c) = base();
        // An inversion: xid 16 is stamped 3_200 (before the target 3_500) but its commit
        // record comes after the big commit stamped 4_000.
        f.facts
            .get_mut(&(1, 3))
            .unwrap()
            .xacts
            .insert(0, xact(0x300090, 3_200, 16));
        let p = run(plan(&f, &c, &req(time(3_500)))).unwrap();
        assert_eq!(p.stop, Stop::Before(l(0x2FF000)));
        let inv: Vec<u32> = p.excluded_despite_time.iter().map(|x| x.xid).collect();
        assert_eq!(inv, vec![16]);
        // Exactly a commit's time includes it.
        let p = run(plan(&f, &c, &req(time(2_000)))).unwrap();
        assert_eq!(p.last_included.unwrap().xid, 11);
        assert_eq!(p.stop, Stop::Before(l(0x200300)));
        // The last archived commit's exact time: stop just after it.
        let p = run(plan(&f, &c, &req(time(6_000)))).unwrap();
        assert_eq!(p.stop, Stop::After(l(0x300200)));
        // After it: refused, naming it.
        let e = run(plan(&f, &c, &req(time(7_000)))).unwrap_err();
        assert!(e.to_string().contains("after the last archived"), "{e}");
        // Exclusive: a commit stamped exactly at the target is excluded.
        let mut r = req(time(2_000));
        r.inclusive = false;
        let p = run(plan(&f, &c, &r)).unwrap();
        assert_eq!(p.last_included.unwrap().xid, 10);
        assert_eq!(p.stop, Stop::Before(l(0x200200)));
    }

    #[test]
    fn restorable_from_uses_the_servers_clock() {
        let (mut f, mut c) = base();
        // A commit in the segment before the backup's start, stamped 900: in the backup's
        // data, so a target at 700 must not use this backup, whatever pitr's clock said.
        f.facts.insert(
            (1, 0),
            SegmentFacts {
                xacts: vec![xact(0x0F0000, 900, 8)],
                checkpoints: vec![CheckpointFact {
                    lsn: l(0x60),
                    redo: l(0x28),
                    time_unix: 0,
                }],
                ..Default::default()
            },
        );
        f.records
            .get_mut(&1)
            .unwrap()
            .insert(0, (l(0x0F0000), l(0x0F0040)));
        let e = run(plan(&f, &c, &req(time(700)))).unwrap_err();
        assert!(
            e.to_string().contains("before the earliest restorable"),
            "{e}"
        );
        // With an older backup, that one is chosen, and recovery stops before the commit.
        c.backups.insert(0, backup("b0", 0x28, 0x400, 1));
        let p = run(plan(&f, &c, &req(time(700)))).unwrap();
        assert_eq!(p.backup.id, "b0");
        assert_eq!(p.stop, Stop::Before(l(0x0F0000)));
        // From 900 on, the newer backup serves.
        let p = run(plan(&f, &c, &req(time(950)))).unwrap();
        assert_eq!(p.backup.id, "b1");
        // The restorable-from instant is the WAL's (900 us), not pitr's recorded end time.
        assert!(
            p.backup_restorable_from
                .unwrap()
                .starts_with("1970-01-01T00:00:00.0009")
        );
    }

    /// A commit in the checkpoint's second, several segments before the backup's start (a
    /// bulk load ran in between): in the data files, so it bounds the restorable-from
    /// instant; found by reading back to a clearly older commit, or, failing that within
    /// the lookback, the whole checkpoint second counts.
    #[test]
    fn a_commit_of_the_checkpoint_second_segments_before_the_start_counts() {
        let ckpt = |redo: u64| CheckpointFact {
            lsn: l(redo + 0x38),
            redo: l(redo),
            time_unix: 10,
        };
        let mut f = Fake::default();
        f.facts.insert(
            (1, 1),
            SegmentFacts {
                xacts: vec![xact(0x100100, 3_000_000, 7)],
                ..Default::default()
            },
        );
        f.facts.insert(
            (1, 2),
            SegmentFacts {
                xacts: vec![xact(0x200100, 10_400_000, 8)],
                ..Default::default()
            },
        );
        for s in 3..5 {
            f.facts.insert((1, s), SegmentFacts::default());
        }
        f.facts.insert(
            (1, 5),
            SegmentFacts {
                checkpoints: vec![ckpt(0x500028)],
                ..Default::default()
            },
        );
        let c = cat(
            vec![backup("b1", 0x500028, 0x500400, 1)],
            index(&[(1, 0..6)], &[], &[]),
        );
        let (from, _) = run(restorable_from(
            &f,
            &c.index.path(TimeLineId(1)),
            &c.backups[0],
            seg(),
        ))
        .unwrap();
        assert_eq!(from, 10_400_000);
        let e = run(plan(&f, &c, &req(time(10_200_000)))).unwrap_err();
        assert!(
            e.to_string().contains("before the earliest restorable"),
            "{e}"
        );
        // No older commit within the lookback: the checkpoint's whole second.
        let mut f2 = Fake::default();
        let start = LOOKBACK_SEGMENTS + 2;
        for s in 0..start {
            f2.facts.insert((1, s), SegmentFacts::default());
        }
        let redo = start * MB + 0x28;
        f2.facts.insert(
            (1, start),
            SegmentFacts {
                checkpoints: vec![ckpt(redo)],
                ..Default::default()
            },
        );
        let b = backup("b2", redo, redo + 0x400, 1);
        let idx = index(&[(1, 0..start + 1)], &[], &[]);
        let (from, _) = run(restorable_from(&f2, &idx.path(TimeLineId(1)), &b, seg())).unwrap();
        assert_eq!(from, 10_999_999);
    }

    /// A checkpoint stamped in the second after the last commit (CI saw a commit at .977 and
    /// the next backup's checkpoint at the following whole second): a target between the two
    /// is restorable from that backup; the checkpoint's stamp is no commit. With no commit
    /// anywhere near, the stamp is the answer.
    #[test]
    fn a_checkpoint_stamped_after_the_last_commit_does_not_bound_the_restorable_instant() {
        let mut f = Fake::default();
        f.facts.insert(
            (1, 1),
            SegmentFacts {
                xacts: vec![xact(0x100100, 8_100_000, 7), xact(0x100200, 10_977_000, 8)],
                ..Default::default()
            },
        );
        f.facts.insert(
            (1, 2),
            SegmentFacts {
                checkpoints: vec![CheckpointFact {
                    lsn: l(0x200060),
                    redo: l(0x200028),
                    time_unix: 11,
                }],
                ..Default::default()
            },
        );
        let c = cat(
            vec![backup("b1", 0x200028, 0x200400, 1)],
            index(&[(1, 1..3)], &[], &[]),
        );
        let path = c.index.path(TimeLineId(1));
        let (from, from_wal) = run(restorable_from(&f, &path, &c.backups[0], seg())).unwrap();
        assert_eq!((from, from_wal), (10_977_000, true));
        // Without the commits, the checkpoint's second is all the server clock says.
        f.facts.get_mut(&(1, 1)).unwrap().xacts.clear();
        let (from, from_wal) = run(restorable_from(&f, &path, &c.backups[0], seg())).unwrap();
        assert_eq!((from, from_wal), (11_000_000, true));
    }

    #[test]
    fn settings_spelled_in_another_case_are_written_under_that_spelling_too() {
        let conf = "Recovery_Target_Time = '2020-01-01'\n  PRIMARY_CONNINFO='host=x'\nrecovery_target_xid = '5'\n# Recovery_Target_Name = 'n'\n";
        let v = case_variants(conf);
        assert_eq!(v, ["Recovery_Target_Time", "PRIMARY_CONNINFO"]);
        let s = recovery_settings("latest", Stop::EndOfWal, TimeLineId(1), &Mode::Promote);
        let r = respell(&s, &v);
        let i = r
            .iter()
            .position(|l| l == "Recovery_Target_Time = ''")
            .unwrap();
        assert_eq!(r[i + 1], "recovery_target_time = ''");
        assert!(r.contains(&"PRIMARY_CONNINFO = ''".to_string()), "{r:?}");
        assert_eq!(r.len(), s.len() + 2);
        assert_eq!(
            includes_in(
                "include 'a.conf'\ninclude_dir = 'conf.d' # x\ninclude_if_exists b.conf\n#include 'no'\n"
            ),
            [
                ("include".to_string(), "a.conf".to_string()),
                ("include_dir".to_string(), "conf.d".to_string()),
                ("include_if_exists".to_string(), "b.conf".to_string())
            ]
        );
    }

    #[test]
    fn duplicate_restore_point_names_use_the_first() {
        let (mut f, c) = base();
        let rp = |lsn, time| RestorePoint {
            lsn: l(lsn),
            name: "before_migration".into(),
            time,
        };
        f.facts.get_mut(&(1, 2)).unwrap().restore_points = vec![rp(0x200250, 2_100)];
        f.facts.get_mut(&(1, 3)).unwrap().restore_points = vec![rp(0x300150, 5_100)];
        f.records
            .get_mut(&1)
            .unwrap()
            .extend([(l(0x200250), l(0x200290)), (l(0x300150), l(0x300190))]);
        f.records.get_mut(&1).unwrap().sort();
        let p = run(plan(
            &f,
            &c,
            &req(TargetSpec::Name("before_migration".into())),
        ))
        .unwrap();
        assert_eq!(p.stop, Stop::After(l(0x200250)));
        assert_eq!(p.last_included.unwrap().xid, 11);
        assert!(
            p.notes.iter().any(|n| n.contains("not unique")),
            "{:?}",
            p.notes
        );
        // A point inside the only backup's window is named as too early, not as missing.
        f.facts.get_mut(&(1, 1)).unwrap().restore_points = vec![RestorePoint {
            lsn: l(0x100200),
            name: "during".into(),
            time: 600,
        }];
        let e = run(plan(&f, &c, &req(TargetSpec::Name("during".into())))).unwrap_err();
        assert!(
            e.to_string()
                .contains("before the earliest restorable point"),
            "{e}"
        );
    }

    #[test]
    fn a_timeline_named_only_as_an_ancestor_is_never_reused() {
        let (f, mut c) = base();
        // Timeline 3 descends from 2, which the repo never received.
        c.index = index(
            &[(1, 0..4)],
            &[],
            &[(3, "1\t0/280000\tx\n2\t0/380000\ty\n")],
        );
        let mut r = req(TargetSpec::Lsn(l(0x200200)));
        r.timeline = TimelineSel::Id(TimeLineId(1));
        let p = run(plan(&f, &c, &r)).unwrap();
        assert_eq!(p.promotes_to, Some(4));
        let placed: Vec<(u32, bool)> = p
            .histories
            .iter()
            .map(|h| (h.timeline, h.key.is_some()))
            .collect();
        assert_eq!(placed, vec![(2, false), (3, true)]);
    }

    #[test]
    fn timelines_are_never_reused() {
        let (mut f, mut c) = base();
        // Timeline 2 forked from 1 at 0x280000; timeline 3 from 2 at 0x380000; timeline 5
        // has WAL but no history file.
        c.index = index(
            &[(1, 0..4), (2, 2..4), (3, 3..4), (5, 3..4)],
            &[],
            &[
                (2, "1\t0/280000\tx\n"),
                (3, "1\t0/280000\tx\n2\t0/380000\ty\n"),
            ],
        );
        f.facts.insert((2, 2), f.facts[&(1, 2)].clone());
        f.records.insert(2, f.records[&1].clone());
        f.records.insert(3, f.records[&1].clone());
        // Restoring timeline 1 must not promote to 2, 3 or 5.
        let mut r = req(TargetSpec::Lsn(l(0x200200)));
        r.timeline = TimelineSel::Id(TimeLineId(1));
        let p = run(plan(&f, &c, &r)).unwrap();
        assert_eq!(p.promotes_to, Some(4));
        let placed: Vec<(u32, bool)> = p
            .histories
            .iter()
            .map(|h| (h.timeline, h.key.is_some()))
            .collect();
        assert_eq!(placed, vec![(2, true), (3, true), (5, false)]);
        // Following timeline 2 places segment 2 from timeline 2 (it forked inside it).
        r.timeline = TimelineSel::Id(TimeLineId(2));
        let p = run(plan(&f, &c, &r)).unwrap();
        assert_eq!(p.wal.last().unwrap().name, "000000020000000000000002");
        assert_eq!(p.promotes_to, Some(4));
        // Latest: timeline 5 (no history: it is its own root and the backup is not on it).
        let e = run(plan(&f, &c, &req(TargetSpec::Latest))).unwrap_err();
        assert!(e.to_string().contains("timeline 5"), "{e}");
    }

    #[test]
    fn recovery_settings_are_complete_and_ordered() {
        let s = recovery_settings(
            "LSN 0/3000000",
            Stop::Before(l(0x3000000)),
            TimeLineId(2),
            &Mode::Promote,
        );
        let names: Vec<String> = s.iter().filter_map(|l| setting_name(l)).collect();
        for n in RESET_SETTINGS {
            assert_eq!(
                names.iter().filter(|x| x == n).count(),
                1,
                "{n} must be set exactly once: {s:?}"
            );
        }
        // The target that is set comes after the empty ones.
        let pos = |n: &str| names.iter().position(|x| x == n).unwrap();
        assert!(pos("recovery_target_lsn") > pos("recovery_target_time"));
        assert!(s.contains(&"recovery_target_lsn = '0/3000000'".to_string()));
        assert!(s.contains(&"recovery_target_inclusive = off".to_string()));
        assert!(s.contains(&"primary_conninfo = ''".to_string()));
        // A standby keeps fetching and follows the newest timeline.
        let s = recovery_settings(
            "latest",
            Stop::EndOfWal,
            TimeLineId(2),
            &Mode::Standby {
                restore_command: "pitr wal fetch %f %p --repo '/r'".into(),
            },
        );
        assert!(s.contains(&"restore_command = 'pitr wal fetch %f %p --repo ''/r'''".to_string()));
        assert!(s.contains(&"recovery_target_timeline = 'latest'".to_string()));
    }

    #[test]
    fn earlier_recovery_settings_are_neutralised_and_the_rest_kept() {
        let before = "# Do not edit this file manually!\n\
            shared_buffers = '256MB'\n\
            recovery_target_lsn = '0/3000000'\n\
            recovery_target_inclusive = off\n\
            primary_conninfo = 'host=db1 user=rep'\n\
            Primary_Slot_Name='s1'\n\
            standby_mode = on\n\
            work_mem = '8MB'\n";
        let (after, gone) = neutralise_auto_conf(before);
        assert_eq!(
            gone,
            vec![
                "recovery_target_lsn",
                "recovery_target_inclusive",
                "primary_conninfo",
                "primary_slot_name",
                "standby_mode"
            ]
        );
        assert!(after.contains("shared_buffers = '256MB'\n"));
        assert!(after.contains("work_mem = '8MB'\n"));
        assert!(after.contains("# pitr restore: disabled: primary_conninfo = 'host=db1 user=rep'"));
        assert_eq!(recovery_settings_in(&after), Vec::<String>::new());
        assert_eq!(
            recovery_settings_in("restore_command='cp %p'\n#recovery_target_time = 'x'\n"),
            vec!["restore_command"]
        );
    }

    #[test]
    fn standby_takes_no_target_and_does_not_promote() {
        let (f, c) = base();
        let mut r = req(TargetSpec::Lsn(l(0x200200)));
        r.mode = Mode::Standby {
            restore_command: "x".into(),
        };
        assert!(run(plan(&f, &c, &r)).is_err());
        r.target = TargetSpec::Latest;
        let p = run(plan(&f, &c, &r)).unwrap();
        assert!(p.standby);
        assert_eq!(p.promotes_to, None);
    }
}
