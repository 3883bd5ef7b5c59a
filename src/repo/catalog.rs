//! The catalog: base backups, named restore points, and an index of the archived WAL that
//! answers "what can be restored" from object names and segment summaries alone.
//!
//! # Objects (format 1, next to the WAL area described in `mod.rs`)
//!
//! | key | content |
//! |---|---|
//! | `backups/<id>/<archive>.<NNNNNN>.lz4` | chunk `NNNNNN` (from 000000) of one tar archive of the backup (`base` or a tablespace OID), an lz4 frame of at most [`CHUNK_BYTES`] tar bytes (a zstd frame, `.zst` instead of `.lz4`, with `--compress zstd`); with server-side compression, the server's compressed stream cut at [`CHUNK_BYTES`] and stored as is (`.srv` instead of `.lz4`) |
//! | `backups/<id>/backup_manifest.lz4` | the server's backup manifest, lz4 frame |
//! | `backups/<id>/backup.json` | the catalog entry ([`BackupRecord`]); **written last**, only once every chunk, the manifest and the WAL from the backup's start to its end LSN are in the repo |
//! | `points/<LSN>.json` | a restore point made by `pitr mark` ([`PointRecord`]); `LSN` is 16 hex digits |
//!
//! `<id>` is the backup's start time, `YYYYMMDDTHHMMSSZ` (UTC). A backup without `backup.json`
//! is incomplete: nothing lists or restores it, and `prune` removes it once it is old.
//!
//! # Invariants
//!
//! - Every object is written once, with create-if-absent; the catalog entry is the commit
//!   point of a backup.
//! - The stored JSON is typed once, in [`super::objects`] (re-exported here); a catalog
//!   entry that does not read or validate is a [`BadEntry`] naming its key, never a default.
//! - The index never reads WAL bodies except, when a segment has no summary (the newest,
//!   partial one, or one whose summary was never written), that one segment.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use walfmt::history::TimelineHistory;
use walfmt::{DecoderConfig, Lsn, SegNo, TimeLineId, WalSegSize};

use super::objects::SummaryRecord;
pub(crate) use super::objects::{
    ArchiveRecord, BACKUP_FORMAT, BACKUP_FORMAT_ZSTD, BackupRecord, ChunkRecord, PointRecord,
};
use super::{Repo, RepoError, WalObject, parse_wal_key};

/// Uncompressed tar bytes per backup chunk.
pub(crate) const CHUNK_BYTES: usize = 8 << 20;

/// Key of a backup's catalog entry.
pub(crate) fn backup_key(id: &str) -> String {
    format!("backups/{id}/backup.json")
}

/// The ids of complete backups (those with a catalog entry), from one listing, reading
/// nothing (what write-only mode can know of the catalog), oldest first.
pub(crate) async fn complete_backup_ids(repo: &Repo) -> Result<Vec<String>, RepoError> {
    let mut ids: Vec<String> = repo
        .store()
        .list("backups/")
        .await?
        .into_iter()
        .filter_map(|o| {
            let id = o
                .key
                .strip_prefix("backups/")?
                .strip_suffix("/backup.json")?;
            (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// When the backup of `id` started, from the id alone (`YYYYMMDDTHHMMSSZ`, with `-N` when
/// two backups started in the same second).
pub(crate) fn id_start_time(id: &str) -> Option<jiff::Timestamp> {
    let stamp = id.split('-').next()?;
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", stamp)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// Key of one chunk of a backup archive.
/// `ext` is the codec's (`lz4`, `zst`), or `srv` for the server's compressed stream.
pub(crate) fn chunk_key(id: &str, archive: &str, n: usize, ext: &str) -> String {
    format!("backups/{id}/{archive}.{n:06}.{ext}")
}

/// Key of a backup's manifest.
pub(crate) fn manifest_key(id: &str) -> String {
    format!("backups/{id}/backup_manifest.lz4")
}

/// Key of a named restore point.
pub(crate) fn point_key(lsn: Lsn) -> String {
    format!("points/{:016X}.json", lsn.0)
}

/// Parses an RFC 3339 instant into Unix microseconds.
pub(crate) fn parse_micros(s: &str) -> Option<i64> {
    let ts: jiff::Timestamp = s.parse().ok()?;
    Some(ts.as_microsecond())
}

/// Formats Unix microseconds as RFC 3339 UTC (`2025-11-22T14:30:05.123456Z`).
pub(crate) fn micros_rfc3339(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| format!("@{us}us"))
}

/// A commit or abort from the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Xact {
    /// Record start.
    pub lsn: Lsn,
    /// Commit/abort time, Unix microseconds.
    pub time: i64,
    /// Transaction id.
    pub xid: u32,
    /// Commit (true) or abort.
    pub commit: bool,
}

/// A restore point from the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RestorePoint {
    /// Record start.
    pub lsn: Lsn,
    /// Name.
    pub name: String,
    /// Time, Unix microseconds.
    pub time: i64,
}

/// A checkpoint record from the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CheckpointFact {
    /// Record start.
    pub lsn: Lsn,
    /// Its redo pointer (a backup's start LSN is one).
    pub redo: Lsn,
    /// The server's clock when the checkpoint began (Unix seconds).
    pub time_unix: i64,
}

/// What the index knows about one segment (from its summary, or from decoding it).
#[derive(Debug, Clone, Default)]
pub(crate) struct SegmentFacts {
    /// Commits and aborts starting in it, in LSN order.
    pub xacts: Vec<Xact>,
    /// Restore points.
    pub restore_points: Vec<RestorePoint>,
    /// Checkpoint records.
    pub checkpoints: Vec<CheckpointFact>,
    /// Start of the first record starting in it.
    pub first_lsn: Option<Lsn>,
    /// That record's `xl_prev` (absent in summaries written before pitr recorded it).
    pub first_prev: Option<Lsn>,
    /// Start of the last record starting in it.
    pub last_lsn: Option<Lsn>,
    /// End of the last record starting in it.
    pub last_end: Option<Lsn>,
    /// An `XLOG_SWITCH` record ending it (the rest of the segment is padding).
    pub switch_lsn: Option<Lsn>,
}

/// The index's facts from a stored summary; an unreadable summary or a bad time is an error
/// naming `key`.
pub(crate) fn facts_from_summary(json: &[u8], key: &str) -> Result<SegmentFacts, String> {
    let s: SummaryRecord =
        serde_json::from_slice(json).map_err(|e| format!("{key}: unreadable summary: {e}"))?;
    let time = |t: &str| parse_micros(t).ok_or_else(|| format!("{key}: bad time in summary"));
    let mut f = SegmentFacts {
        first_lsn: s.first_lsn,
        first_prev: s.first_prev,
        last_lsn: s.last_lsn,
        last_end: s.last_end,
        switch_lsn: s.switch_lsn,
        ..Default::default()
    };
    for x in &s.xacts {
        f.xacts.push(Xact {
            lsn: x.lsn,
            time: time(&x.time)?,
            xid: x.xid,
            commit: x.kind.is_commit(),
        });
    }
    for p in s.restore_points {
        f.restore_points.push(RestorePoint {
            time: time(&p.time)?,
            lsn: p.lsn,
            name: p.name,
        });
    }
    f.checkpoints = s
        .checkpoints
        .iter()
        .map(|c| CheckpointFact {
            lsn: c.lsn,
            redo: c.redo,
            time_unix: c.time_unix,
        })
        .collect();
    Ok(f)
}

pub(crate) fn facts_from_segment(s: walfmt::SegmentSummary) -> SegmentFacts {
    SegmentFacts {
        xacts: s
            .xacts
            .iter()
            .map(|x| Xact {
                lsn: x.lsn,
                time: x.time.unix_micros(),
                xid: x.xid,
                commit: x.kind.is_commit(),
            })
            .collect(),
        restore_points: s
            .restore_points
            .iter()
            .map(|p| RestorePoint {
                lsn: p.lsn,
                name: p.name.clone(),
                time: p.time.unix_micros(),
            })
            .collect(),
        checkpoints: s
            .checkpoints
            .iter()
            .map(|c| CheckpointFact {
                lsn: c.lsn,
                redo: c.redo,
                time_unix: c.time_unix,
            })
            .collect(),
        first_lsn: s.first_lsn,
        first_prev: s.first_prev,
        last_lsn: s.last_lsn,
        last_end: s.last_end,
        switch_lsn: s.switch_lsn,
    }
}

/// One archived file of a timeline's segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SegFile {
    /// Complete segment.
    Complete {
        /// Object key.
        key: String,
        /// Summary key, when one exists.
        summary: Option<String>,
    },
    /// Partial up to `end` (the newest one).
    Partial {
        /// Object key.
        key: String,
        /// End of the WAL it holds.
        end: Lsn,
    },
}

/// A stretch of one timeline followed by a target timeline: `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PathStep {
    /// Timeline.
    pub tli: TimeLineId,
    /// First LSN on it.
    pub from: Lsn,
    /// Where it was left (`u64::MAX` for the target timeline).
    pub to: Lsn,
}

/// An index of the WAL area, from one listing.
#[derive(Debug, Clone)]
pub(crate) struct WalIndex {
    /// Segment size.
    pub seg: WalSegSize,
    /// System identifier (for decoding).
    pub system_id: u64,
    /// Per timeline, per segment: the file to use.
    pub files: BTreeMap<TimeLineId, BTreeMap<SegNo, SegFile>>,
    /// Parsed history files.
    pub histories: BTreeMap<TimeLineId, TimelineHistory>,
    /// History keys.
    pub history_keys: BTreeMap<TimeLineId, String>,
}

impl WalIndex {
    /// Lists the WAL area and builds the index.
    pub(crate) async fn load(
        repo: &Repo,
        seg: WalSegSize,
        system_id: u64,
    ) -> Result<WalIndex, RepoError> {
        let mut idx = Self::from_names(repo, seg, system_id).await?;
        for (tli, key) in &idx.history_keys {
            let Some(b) = repo.store().get(key).await? else {
                continue;
            };
            let text = String::from_utf8_lossy(&b);
            let h = TimelineHistory::parse(*tli, &text).map_err(|e| RepoError::Corrupt {
                repo: repo.location.clone(),
                message: format!("{key}: {e}"),
            })?;
            idx.histories.insert(*tli, h);
        }
        Ok(idx)
    }

    /// The index from one listing, reading nothing: no history is parsed (`histories` is
    /// empty; a caller that knows a timeline's history, e.g. from the server, inserts it).
    /// What write-only mode (`--recipient` without `--identity`) can know of the WAL area.
    pub(crate) async fn from_names(
        repo: &Repo,
        seg: WalSegSize,
        system_id: u64,
    ) -> Result<WalIndex, RepoError> {
        let listing = repo.store().list("wal/").await?;
        let mut files: BTreeMap<TimeLineId, BTreeMap<SegNo, SegFile>> = BTreeMap::new();
        let mut summaries = BTreeSet::new();
        let mut history_keys = BTreeMap::new();
        for o in &listing {
            match parse_wal_key(&o.key, seg) {
                Some(WalObject::Segment(tli, s)) => {
                    files.entry(tli).or_default().insert(
                        s,
                        SegFile::Complete {
                            key: o.key.clone(),
                            summary: None,
                        },
                    );
                }
                Some(WalObject::Partial(tli, s, end)) => {
                    let m = files.entry(tli).or_default();
                    match m.get(&s) {
                        Some(SegFile::Complete { .. }) => {}
                        Some(SegFile::Partial { end: e, .. }) if *e >= end => {}
                        _ => {
                            m.insert(
                                s,
                                SegFile::Partial {
                                    key: o.key.clone(),
                                    end,
                                },
                            );
                        }
                    }
                }
                Some(WalObject::Summary(tli, s)) => {
                    summaries.insert((tli, s, o.key.clone()));
                }
                Some(WalObject::History(tli)) => {
                    history_keys.insert(tli, o.key.clone());
                }
                None => {}
            }
        }
        for (tli, s, key) in summaries {
            if let Some(SegFile::Complete { summary, .. }) =
                files.get_mut(&tli).and_then(|m| m.get_mut(&s))
            {
                *summary = Some(key);
            }
        }
        Ok(WalIndex {
            seg,
            system_id,
            files,
            histories: BTreeMap::new(),
            history_keys,
        })
    }

    /// Timelines with WAL, oldest first.
    pub(crate) fn timelines(&self) -> Vec<TimeLineId> {
        self.files.keys().copied().collect()
    }

    /// The newest timeline with WAL.
    pub(crate) fn latest_timeline(&self) -> Option<TimeLineId> {
        self.files.keys().next_back().copied()
    }

    /// The stretches of WAL that recovery following `tli` reads, oldest first.
    pub(crate) fn path(&self, tli: TimeLineId) -> Vec<PathStep> {
        match self.histories.get(&tli) {
            Some(h) => history_path(h),
            None => history_path(&TimelineHistory {
                tli,
                ancestors: Vec::new(),
            }),
        }
    }

    /// The timeline whose file recovery reads for `segno` when following `path`: the newest
    /// one that begins at or before that segment (as PostgreSQL's `XLogFileReadAnyTLI`).
    pub(crate) fn tli_for_segment(&self, path: &[PathStep], segno: SegNo) -> TimeLineId {
        path.iter()
            .rev()
            .find(|p| p.from.segment(self.seg) <= segno)
            .or(path.first())
            .map_or(TimeLineId(1), |p| p.tli)
    }

    /// The file for `segno` when following `path`, if archived.
    pub(crate) fn file(&self, path: &[PathStep], segno: SegNo) -> Option<(TimeLineId, &SegFile)> {
        let tli = self.tli_for_segment(path, segno);
        self.files.get(&tli)?.get(&segno).map(|f| (tli, f))
    }

    /// The contiguous WAL following `path` from the segment holding `start`: the end of the
    /// archived WAL (exclusive), and where the first gap begins if the WAL stops before the
    /// newest archived segment of the path.
    pub(crate) fn coverage(&self, path: &[PathStep], start: Lsn) -> Coverage {
        let mut segno = start.segment(self.seg);
        let mut end = None;
        loop {
            match self.file(path, segno) {
                Some((_, SegFile::Complete { .. })) => {
                    end = segno.next().start_lsn(self.seg);
                }
                Some((_, SegFile::Partial { end: e, .. })) => {
                    end = Some(*e);
                    segno = segno.next();
                    break;
                }
                None => break,
            }
            segno = segno.next();
        }
        // Anything archived beyond the contiguous stretch means a gap.
        let last = path.last().map(|p| p.tli);
        let newest = last
            .and_then(|t| self.files.get(&t))
            .and_then(|m| m.keys().next_back().copied());
        let gap = match newest {
            Some(n) if n >= segno => segno.start_lsn(self.seg),
            _ => None,
        };
        Coverage { end, gap }
    }

    /// Gaps on the timeline `tli` itself (missing segments between its first and newest
    /// archived segment): `[from, to)` LSN ranges.
    pub(crate) fn gaps(&self, tli: TimeLineId) -> Vec<(Lsn, Lsn)> {
        let Some(m) = self.files.get(&tli) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut prev: Option<(SegNo, bool)> = None;
        for (s, f) in m {
            if let Some((p, complete)) = prev {
                let partial_mid = !complete;
                if s.0 > p.0 + 1 || partial_mid {
                    let from = match (partial_mid, m.get(&p)) {
                        (true, Some(SegFile::Partial { end, .. })) => Some(*end),
                        _ => p.next().start_lsn(self.seg),
                    };
                    // Segment numbers come from object names, so their starts exist.
                    if let (Some(from), Some(to)) = (from, s.start_lsn(self.seg)) {
                        out.push((from, to));
                    }
                }
            }
            prev = Some((*s, matches!(f, SegFile::Complete { .. })));
        }
        out
    }

    /// What one segment of `path` holds: from its summary when there is one, else by
    /// fetching and decoding it.
    pub(crate) async fn facts(
        &self,
        repo: &Repo,
        path: &[PathStep],
        segno: SegNo,
    ) -> Result<Option<SegmentFacts>, RepoError> {
        let Some((_, file)) = self.file(path, segno) else {
            return Ok(None);
        };
        let corrupt = |message: String| RepoError::Corrupt {
            repo: repo.location.clone(),
            message,
        };
        let (key, partial_end) = match file {
            SegFile::Complete {
                key,
                summary: Some(sk),
            } => {
                // A summary is derived from its segment: an unreadable one is reported by
                // `pitr verify`, and the segment itself is decoded instead.
                if let Some(b) = repo.store().get(sk).await? {
                    match facts_from_summary(&b, sk) {
                        Ok(f) => return Ok(Some(f)),
                        Err(e) => {
                            tracing::warn!(object = %sk, error = %e, "unusable WAL summary: decoding its segment instead (run `pitr verify`)");
                        }
                    }
                }
                (key, None)
            }
            SegFile::Complete { key, .. } => (key, None),
            SegFile::Partial { key, end } => (key, Some(*end)),
        };
        let data = repo
            .read_wal_object(key, segno, partial_end, self.seg)
            .await?
            .ok_or_else(|| corrupt(format!("{key}: listed but missing")))?;
        let cfg = DecoderConfig::for_cluster(self.seg, self.system_id);
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            walfmt::summary::summarize_segment(cfg, segno, &data)
                .map(facts_from_segment)
                .map_err(|e| format!("{key}: {e}"))
        })
        .await
        .map_err(RepoError::task("decoding"))?
        .map(Some)
        .map_err(corrupt)
    }
}

/// The stretches of WAL that recovery following history `h` reads, oldest first: each
/// ancestor up to its switch point, then `h`'s own timeline, open-ended.
pub(crate) fn history_path(h: &TimelineHistory) -> Vec<PathStep> {
    let mut out = Vec::new();
    let mut from = Lsn(0);
    for a in &h.ancestors {
        out.push(PathStep {
            tli: a.tli,
            from,
            to: a.end,
        });
        from = a.end;
    }
    out.push(PathStep {
        tli: h.tli,
        from,
        to: Lsn(u64::MAX),
    });
    out
}

/// Whether `path` reaches `lsn` on timeline `tli` (a backup lies on a timeline's history).
pub(crate) fn on_path(path: &[PathStep], tli: TimeLineId, lsn: Lsn) -> bool {
    path.iter()
        .any(|p| p.tli == tli && p.from <= lsn && lsn < p.to)
}

/// The segment holding the last byte before `end` (the last segment of WAL ending there).
pub(crate) fn last_segment(end: Lsn, seg: WalSegSize) -> SegNo {
    Lsn(end.0.saturating_sub(1)).segment(seg)
}

/// The result of [`WalIndex::coverage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Coverage {
    /// End of the contiguous WAL (`None`: not even the first segment is archived).
    pub end: Option<Lsn>,
    /// Where the contiguous WAL stops although later WAL exists (a gap).
    pub gap: Option<Lsn>,
}

/// A catalog entry that cannot be used: unreadable, or with a field that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct BadEntry {
    /// The object.
    pub key: String,
    /// What is wrong with it.
    pub error: String,
}

/// A backup whose objects exist but which has no catalog entry: it was interrupted (or is
/// still running).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct IncompleteBackup {
    /// Its id (the start time, `YYYYMMDDTHHMMSSZ`, maybe with a `-N` suffix).
    pub id: String,
    /// Objects it left.
    pub objects: usize,
    /// Their stored bytes.
    pub bytes: u64,
    /// Its start time (Unix microseconds), from the id.
    #[serde(skip)]
    pub started_us: Option<i64>,
}

/// What `backups/` holds.
#[derive(Debug, Clone, Default)]
pub(crate) struct BackupScan {
    /// Complete, readable backups, oldest first.
    pub good: Vec<BackupRecord>,
    /// Catalog entries that cannot be used (each named).
    pub bad: Vec<BadEntry>,
    /// Backups without a catalog entry.
    pub incomplete: Vec<IncompleteBackup>,
}

/// The start time encoded in a backup id (`YYYYMMDDTHHMMSSZ[-N]`), Unix microseconds.
pub(crate) fn id_time(id: &str) -> Option<i64> {
    let core = id.get(..16)?;
    let t = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", core).ok()?;
    t.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp().as_microsecond())
}

/// Reads `backups/`: every catalog entry (good or not) and every backup without one. One bad
/// entry never hides the others.
pub(crate) async fn scan_backups(repo: &Repo) -> Result<BackupScan, RepoError> {
    let mut scan = BackupScan::default();
    let listing = repo.store().list("backups/").await?;
    let mut per_id: BTreeMap<String, (usize, u64, bool)> = BTreeMap::new();
    for o in &listing {
        let Some((id, _)) = o
            .key
            .strip_prefix("backups/")
            .and_then(|r| r.split_once('/'))
        else {
            continue;
        };
        let e = per_id.entry(id.to_string()).or_default();
        e.0 += 1;
        e.1 += o.size;
        if o.key.ends_with("/backup.json") {
            e.2 = true;
        }
    }
    for (id, (objects, bytes, has_entry)) in per_id {
        if !has_entry {
            scan.incomplete.push(IncompleteBackup {
                started_us: id_time(&id),
                id,
                objects,
                bytes,
            });
            continue;
        }
        let key = backup_key(&id);
        let Some(b) = repo.store().get(&key).await? else {
            continue; // deleted meanwhile (prune)
        };
        let rec = serde_json::from_slice::<BackupRecord>(&b)
            .map_err(|e| format!("unreadable catalog entry: {e}"))
            .and_then(|r| r.validate().map(|()| r));
        match rec {
            Ok(r) => scan.good.push(r),
            Err(error) => scan.bad.push(BadEntry { key, error }),
        }
    }
    scan.good
        .sort_by(|a, b| (a.end(), &a.id).cmp(&(b.end(), &b.id)));
    Ok(scan)
}

/// Every complete, readable backup in the repo, oldest first. Unusable catalog entries are
/// skipped with a warning naming them (`pitr verify` fails on them).
pub(crate) async fn backups(repo: &Repo) -> Result<Vec<BackupRecord>, RepoError> {
    let scan = scan_backups(repo).await?;
    warn_bad(&scan.bad);
    Ok(scan.good)
}

/// Logs one warning per unusable catalog entry.
pub(crate) fn warn_bad(bad: &[BadEntry]) {
    for b in bad {
        tracing::warn!(object = %b.key, error = %b.error, "skipping an unusable backup catalog entry (run `pitr verify`)");
    }
}

/// Restore points recorded by `pitr mark`, oldest first.
pub(crate) async fn points(repo: &Repo) -> Result<Vec<PointRecord>, RepoError> {
    let mut out = Vec::new();
    for o in repo.store().list("points/").await? {
        let Some(b) = repo.store().get(&o.key).await? else {
            continue;
        };
        let rec: PointRecord = match serde_json::from_slice(&b) {
            Ok(rec) => rec,
            // The shape it always had, with a field the types refuse (an LSN that does not
            // parse): named and skipped, so `list` and `prune` go on and prune keeps it.
            Err(e) if serde_json::from_slice::<StoredPoint>(&b).is_ok() => {
                tracing::warn!(object = %o.key, error = %e, "skipping an unusable restore point");
                continue;
            }
            Err(e) => {
                return Err(RepoError::Corrupt {
                    repo: repo.location.clone(),
                    message: format!("{}: unreadable restore point: {e}", o.key),
                });
            }
        };
        out.push(rec);
    }
    Ok(out)
}

/// A restore point as its fields were always written, before their values are checked.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct StoredPoint {
    name: String,
    lsn: String,
    tli: u32,
    time: String,
}

/// The repo's identity, or an error saying it is not a pitr repo.
pub(crate) async fn identity(repo: &Repo) -> Result<(super::Identity, WalSegSize, u64), RepoError> {
    let corrupt = |message: String| RepoError::Corrupt {
        repo: repo.location.clone(),
        message,
    };
    let id = repo.identity().await?.ok_or_else(|| RepoError::Unusable {
        repo: repo.location.clone(),
        message: "not a pitr repo (no pitr.json): check --repo".into(),
    })?;
    let seg = WalSegSize::new(id.wal_segment_size)
        .map_err(|e| corrupt(format!("pitr.json: wal_segment_size: {e}")))?;
    let sysid = id
        .system_id
        .parse()
        .map_err(|_| corrupt("pitr.json: bad system_id".into()))?;
    Ok((id, seg, sysid))
}

/// Timeline histories that contradict each other, or WAL of a timeline from before it began:
/// signs that two different histories were archived under one timeline ID. Pure: reads only
/// the index.
pub(crate) fn history_problems(idx: &WalIndex) -> Vec<String> {
    let mut out = Vec::new();
    for (t, h) in &idx.histories {
        for (k, a) in h.ancestors.iter().enumerate() {
            let Some(ph) = idx.histories.get(&a.tli) else {
                continue;
            };
            let mine: Vec<(u32, Lsn)> = h.ancestors[..k].iter().map(|e| (e.tli.0, e.end)).collect();
            let theirs: Vec<(u32, Lsn)> = ph.ancestors.iter().map(|e| (e.tli.0, e.end)).collect();
            if mine != theirs {
                out.push(format!(
                    "timeline histories disagree: {} says timeline {} descends from {}, but {} says {}: two different histories use one timeline ID",
                    super::history_key(*t),
                    a.tli,
                    describe_ancestry(&mine),
                    super::history_key(a.tli),
                    describe_ancestry(&theirs)
                ));
            }
        }
        // A timeline's WAL starts in the segment holding its switch point.
        if let (Some(begin), Some(files)) = (h.ancestors.last(), idx.files.get(t))
            && let Some(first) = files.keys().next()
            && *first < begin.end.segment(idx.seg)
        {
            out.push(format!(
                "timeline {t} has WAL in segment {} but began at {} according to {}: WAL of another history is archived under timeline {t}",
                walfmt::names::segment_file_name(*t, *first, idx.seg),
                begin.end,
                super::history_key(*t)
            ));
        }
    }
    out
}

fn describe_ancestry(a: &[(u32, Lsn)]) -> String {
    if a.is_empty() {
        return "no earlier timeline".into();
    }
    a.iter()
        .map(|(t, e)| format!("{t} until {e}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Consecutive complete segments of one timeline whose records do not link (the first record
/// of a segment must point back to the last record starting in the one before): WAL of two
/// histories side by side. Reads the summaries (concurrently); segments without one, or
/// with a summary written before pitr recorded `first_prev`, are not checked here (`pitr
/// verify` decodes everything).
pub(crate) async fn boundary_problems(
    repo: &Repo,
    idx: &WalIndex,
) -> Result<Vec<String>, RepoError> {
    let mut keys = Vec::new();
    for (tli, m) in &idx.files {
        for (s, f) in m {
            if let SegFile::Complete {
                summary: Some(k), ..
            } = f
            {
                keys.push((*tli, *s, k.clone()));
            }
        }
    }
    let mut facts: BTreeMap<(TimeLineId, SegNo), SegmentFacts> = BTreeMap::new();
    for chunk in keys.chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for (tli, s, k) in chunk.iter().cloned() {
            let repo = repo.clone();
            set.spawn(async move {
                let b = repo.store().get(&k).await?;
                Ok::<_, RepoError>((tli, s, k, b))
            });
        }
        while let Some(r) = set.join_next().await {
            let (tli, s, k, b) = r.map_err(RepoError::task("summary"))??;
            // An unreadable summary is `pitr verify`'s to report; its segment is not
            // checked here.
            if let Some(f) = b.and_then(|b| facts_from_summary(&b, &k).ok()) {
                facts.insert((tli, s), f);
            }
        }
    }
    let mut out = Vec::new();
    for ((tli, s), f) in &facts {
        let Some(prev) =
            s.0.checked_sub(1)
                .and_then(|p| facts.get(&(*tli, SegNo(p))))
        else {
            continue;
        };
        let name = walfmt::names::segment_file_name(*tli, *s, idx.seg);
        let first = f
            .first_lsn
            .map_or_else(|| "?".to_string(), |l| l.to_string());
        if let (Some(first_prev), Some(last)) = (f.first_prev, prev.last_lsn)
            && first_prev != last
        {
            out.push(format!(
                "timeline {tli}: the first record of segment {name} (at {first}) points back to {first_prev}, but the record before it starts at {last}: the archive mixes two histories there"
            ));
            continue;
        }
        // Where the record before ends says where the first one here starts.
        let expected = match (prev.switch_lsn, prev.last_lsn, prev.last_end) {
            (Some(sw), Some(last), _) if sw == last => s
                .start_lsn(idx.seg)
                .map(|l| Lsn(l.0 + walfmt::page::SIZE_OF_LONG_PHD as u64)),
            (_, _, Some(end)) => Some(next_record_start(end, idx.seg)),
            _ => None,
        };
        if let (Some(want), Some(got)) = (expected, f.first_lsn)
            && prev
                .last_end
                .is_some_and(|e| e.segment(idx.seg) == *s || prev.switch_lsn.is_some())
            && want != got
        {
            out.push(format!(
                "timeline {tli}: the record before segment {name} ends where the next record would start at {want}, but the first record in {name} starts at {got}: the archive mixes two histories there"
            ));
        }
    }
    Ok(out)
}

/// Where the record after one ending at `end` starts: MAXALIGNed, past a page header when
/// that lands on a page start (PostgreSQL's `XLogRecPtrToBytePos` arithmetic in reverse).
fn next_record_start(end: Lsn, seg: WalSegSize) -> Lsn {
    let p = end.0.next_multiple_of(8);
    let page = u64::from(walfmt::page::DEFAULT_BLCKSZ);
    if !p.is_multiple_of(page) {
        return Lsn(p);
    }
    let header = if p.is_multiple_of(seg.bytes()) {
        walfmt::page::SIZE_OF_LONG_PHD
    } else {
        walfmt::page::SIZE_OF_SHORT_PHD
    };
    Lsn(p + header as u64)
}

/// Hermetic tests of the WAL index: keys in an in-memory store, no PostgreSQL.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::repo::memory::MemoryStore;
    use crate::repo::{partial_key, segment_key, summary_key};

    const MB16: u32 = 16 << 20;

    fn seg() -> WalSegSize {
        WalSegSize::new(MB16).unwrap()
    }

    fn start(s: u64) -> Lsn {
        SegNo(s).start_lsn(seg()).unwrap()
    }

    use crate::test_util::block_on as run;

    /// An index of a repo holding these objects (bodies are never read, except histories).
    fn index(objects: &[(String, &str)]) -> WalIndex {
        run(async {
            let repo = Repo::with_store(Arc::new(MemoryStore::new()));
            for (k, body) in objects {
                repo.put(k, Bytes::from(body.to_string())).await.unwrap();
            }
            WalIndex::load(&repo, seg(), 1).await.unwrap()
        })
    }

    fn complete(tli: u32, s: u64) -> (String, &'static str) {
        (segment_key(TimeLineId(tli), SegNo(s), seg()), "")
    }

    fn partial(tli: u32, s: u64, end: Lsn) -> (String, &'static str) {
        (partial_key(TimeLineId(tli), SegNo(s), end, seg()), "")
    }

    fn history(tli: u32, text: &'static str) -> (String, &'static str) {
        (crate::repo::history_key(TimeLineId(tli)), text)
    }

    #[test]
    fn a_backup_id_tells_its_start_time() {
        let t = id_start_time("20251122T143005Z").unwrap();
        assert_eq!(t.to_string(), "2025-11-22T14:30:05Z");
        assert_eq!(id_start_time("20251122T143005Z-2"), Some(t));
        assert_eq!(id_start_time("b1"), None);
        assert_eq!(id_start_time(""), None);
    }

    #[test]
    fn index_keeps_complete_over_partial_and_the_newest_partial() {
        let idx = index(&[
            complete(1, 2),
            partial(1, 2, Lsn(start(2).0 + 100)),
            partial(1, 3, Lsn(start(3).0 + 100)),
            partial(1, 3, Lsn(start(3).0 + 900)),
            (summary_key(TimeLineId(1), SegNo(2), seg()), ""),
            ("wal/00000001/not-a-wal-key".into(), ""),
        ]);
        let m = &idx.files[&TimeLineId(1)];
        assert_eq!(m.len(), 2);
        assert!(
            matches!(&m[&SegNo(2)], SegFile::Complete { summary: Some(s), .. } if s.ends_with(".summary.json"))
        );
        assert!(
            matches!(&m[&SegNo(3)], SegFile::Partial { end, .. } if *end == Lsn(start(3).0 + 900))
        );
        assert_eq!(idx.timelines(), [TimeLineId(1)]);
        assert_eq!(idx.latest_timeline(), Some(TimeLineId(1)));
    }

    #[test]
    fn coverage_runs_to_the_partial_and_stops_at_a_gap() {
        let idx = index(&[
            complete(1, 2),
            complete(1, 3),
            partial(1, 4, Lsn(start(4).0 + 0x500)),
        ]);
        let path = idx.path(TimeLineId(1));
        let cov = idx.coverage(&path, Lsn(start(2).0 + 0x28));
        assert_eq!(cov.end, Some(Lsn(start(4).0 + 0x500)));
        assert_eq!(cov.gap, None);
        // From a segment not archived: nothing.
        assert_eq!(idx.coverage(&path, start(1)).end, None);
        // A missing segment 4 with 5 archived: coverage ends at 4's start, a gap there.
        let idx = index(&[complete(1, 2), complete(1, 3), complete(1, 5)]);
        let cov = idx.coverage(&idx.path(TimeLineId(1)), start(2));
        assert_eq!(cov.end, Some(start(4)));
        assert_eq!(cov.gap, Some(start(4)));
        assert_eq!(idx.gaps(TimeLineId(1)), [(start(4), start(5))]);
    }

    #[test]
    fn a_partial_between_segments_is_a_gap_from_its_end() {
        let end = Lsn(start(3).0 + 0x1000);
        let idx = index(&[complete(1, 2), partial(1, 3, end), complete(1, 4)]);
        assert_eq!(idx.gaps(TimeLineId(1)), [(end, start(4))]);
        assert!(idx.gaps(TimeLineId(7)).is_empty());
    }

    /// Timeline 2 branched from 1 at 0/3000100: recovery reads 1's segments up to the
    /// switch segment, then 2's (which starts with a copy of it).
    #[test]
    fn the_path_follows_the_history_across_a_switch() {
        let idx = index(&[
            complete(1, 2),
            complete(1, 3),
            complete(1, 4),
            complete(2, 3),
            partial(2, 4, Lsn(start(4).0 + 0x200)),
            history(2, "1\t0/3000100\tno recovery target specified\n"),
        ]);
        let path = idx.path(TimeLineId(2));
        assert_eq!(
            path,
            [
                PathStep {
                    tli: TimeLineId(1),
                    from: Lsn(0),
                    to: Lsn(0x0300_0100)
                },
                PathStep {
                    tli: TimeLineId(2),
                    from: Lsn(0x0300_0100),
                    to: Lsn(u64::MAX)
                }
            ]
        );
        assert_eq!(idx.tli_for_segment(&path, SegNo(2)), TimeLineId(1));
        assert_eq!(idx.tli_for_segment(&path, SegNo(3)), TimeLineId(2));
        assert_eq!(idx.file(&path, SegNo(4)).unwrap().0, TimeLineId(2));
        // Along 2, the WAL runs from 1's segment 2 into 2's partial, not 1's segment 4.
        let cov = idx.coverage(&path, start(2));
        assert_eq!(cov.end, Some(Lsn(start(4).0 + 0x200)));
        assert_eq!(cov.gap, None);
        // Along 1, to its own end.
        assert_eq!(
            idx.coverage(&idx.path(TimeLineId(1)), start(2)).end,
            Some(start(5))
        );
        // A backup on 1 before the switch lies on 2's path; one after it does not.
        assert!(on_path(&path, TimeLineId(1), Lsn(0x0300_0028)));
        assert!(!on_path(&path, TimeLineId(1), Lsn(0x0300_0100)));
        assert!(on_path(&path, TimeLineId(2), Lsn(0x0400_0000)));
        assert!(history_problems(&idx).is_empty());
        assert_eq!(idx.latest_timeline(), Some(TimeLineId(2)));
    }

    #[test]
    fn history_problems_name_contradictions_and_early_wal() {
        let idx = index(&[
            complete(1, 2),
            // Timeline 3's history says it came from 2 at 0/5000000, but 2's own history
            // says 2 came from 1 at 0/3000000 while 3 says 0/4000000.
            history(2, "1\t0/3000000\tx\n"),
            history(3, "1\t0/4000000\tx\n2\t0/5000000\tx\n"),
            // WAL of timeline 3 before it began.
            complete(3, 4),
        ]);
        let p = history_problems(&idx);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("timeline histories disagree"), "{p:?}");
        assert!(p[1].contains("timeline 3 has WAL in segment"), "{p:?}");
    }

    #[test]
    fn an_unreadable_history_is_an_error_naming_it() {
        let err = run(async {
            let repo = Repo::with_store(Arc::new(MemoryStore::new()));
            let (k, _) = history(2, "");
            repo.put(&k, Bytes::from_static(b"garbage\n"))
                .await
                .unwrap();
            WalIndex::load(&repo, seg(), 1).await.unwrap_err()
        });
        assert!(err.to_string().contains("wal/00000002.history"), "{err}");
    }

    #[test]
    fn last_segment_is_the_one_holding_the_byte_before() {
        assert_eq!(last_segment(start(3), seg()), SegNo(2));
        assert_eq!(last_segment(Lsn(start(3).0 + 1), seg()), SegNo(3));
        assert_eq!(last_segment(Lsn(0), seg()), SegNo(0));
    }

    /// A stored summary reads into the index's facts; a corrupt field or time is an error
    /// naming the object, never a default.
    #[test]
    fn summary_facts_are_typed() {
        let key = "wal/00000001/000000010000000000000002.summary.json";
        let json = r#"{"file":"k","first_lsn":"0/2000028","first_prev":"0/1FFFF60","last_lsn":"0/2FFFF00","last_end":"0/3000010","xacts":[{"lsn":"0/2000100","time":"2026-01-01T00:00:00.5Z","xid":740,"kind":"COMMIT"},{"lsn":"0/2000200","time":"2026-01-01T00:00:01Z","xid":741,"kind":"ABORT_PREPARED"}],"restore_points":[{"lsn":"0/2000300","name":"p","time":"2026-01-01T00:00:02Z"}],"checkpoints":[{"lsn":"0/2000400","redo":"0/2000028","timeline":1,"prev_timeline":1,"kind":"online","time_unix":7}]}"#;
        let f = facts_from_summary(json.as_bytes(), key).unwrap();
        assert_eq!(f.first_lsn, Some(Lsn(0x0200_0028)));
        assert_eq!(f.first_prev, Some(Lsn(0x01FF_FF60)));
        assert_eq!(f.last_end, Some(Lsn(0x0300_0010)));
        assert_eq!(f.xacts.len(), 2);
        assert!(f.xacts[0].commit && !f.xacts[1].commit);
        assert_eq!(
            f.xacts[0].time,
            parse_micros("2026-01-01T00:00:00.5Z").unwrap()
        );
        assert_eq!(f.restore_points[0].name, "p");
        assert_eq!(f.checkpoints[0].redo, Lsn(0x0200_0028));
        for (from, to) in [
            ("\"0/2000100\"", "\"zz\""),
            ("\"2026-01-01T00:00:01Z\"", "\"yesterday\""),
            ("\"ABORT_PREPARED\"", "\"MAYBE\""),
        ] {
            let bad = json.replace(from, to);
            let e = facts_from_summary(bad.as_bytes(), key).unwrap_err();
            assert!(e.starts_with(key), "{e}");
        }
    }
}
