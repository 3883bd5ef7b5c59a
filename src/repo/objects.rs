//! What the repo stores: one typed, versioned model of every JSON object, defined once.
//!
//! | key | type |
//! |---|---|
//! | `pitr.json` | [`Identity`] (the repo marker) |
//! | `backups/<id>/backup.json` | [`BackupRecord`] (the catalog entry, with its [`ArchiveRecord`]s and [`ChunkRecord`]s) |
//! | `points/<LSN>.json` | [`PointRecord`] (a restore point made by `pitr mark`) |
//! | `wal/TTTTTTTT/<segment>.summary.json` | [`SummaryRecord`] (a segment summary, also what `pitr wal inspect --json` prints per file) |
//! | `gaps/TTTTTTTT-<FROM>-<TO>.json` | [`super::gaps::GapRecord`] |
//! | `stats/rto/<UTC time>-<random>.json` | [`RtoSample`] (what a passing `restore --verify` measured) |
//!
//! # Invariants
//!
//! - The JSON is repo format 1 ([`super::FORMAT`]) exactly as earlier pitr versions wrote it:
//!   same field names and order, LSNs as PostgreSQL's `X/X` text, timelines as numbers,
//!   system identifiers as strings (64 bits do not survive JSON numbers). Existing repos are
//!   read unchanged, and a repo written by this code is readable by them.
//! - Fields are typed ([`Lsn`], [`TimeLineId`], [`XactKind`]): a field that does not parse
//!   makes the whole object unreadable, an error naming the object's key; it never becomes a
//!   default. Fields added after format 1 was first written are optional (`None` when
//!   absent).
//! - A [`BackupRecord`] is usable only once [`BackupRecord::validate`] passed (the catalog
//!   scan does it); its accessors rely on that.
//! - A transaction end exists in two forms only: [`XactRecord`], the stored one (time as
//!   PostgreSQL prints it, the exact kind), and [`super::catalog::Xact`], the index's (time
//!   in Unix microseconds, commit or abort), made from either a record or walfmt's entry.

use serde::{Deserialize, Serialize};
use walfmt::{EndOfWal, Lsn, SegNo, SegmentSummary, TimeLineId, WalSegSize, XactKind};

/// The catalog-entry format this code writes and reads ([`BackupRecord::format`]).
pub(crate) const BACKUP_FORMAT: u32 = 1;

/// The catalog-entry format of a backup whose chunks are zstd frames (`compression` is
/// `zstd`): the same fields as [`BACKUP_FORMAT`], numbered apart so that a pitr that knows
/// only lz4 refuses the entry in one line instead of failing on its first chunk.
pub(crate) const BACKUP_FORMAT_ZSTD: u32 = 2;

/// `pitr.json`: the repo marker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    /// Repo format version.
    pub format: u32,
    /// The cluster's system identifier (a string: JSON numbers lose 64-bit precision).
    pub system_id: String,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: u32,
    /// The PostgreSQL major version when the repo was made.
    pub pg_major: u32,
    /// The pitr version that made it.
    pub created_by: String,
    /// Set when every other object is sealed ([`super::crypt`]); absent in a plain repo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionMarker>,
}

/// `pitr.json`'s `encryption`: the sealed-object format and the ids of the keys that may
/// open the repo's objects (never the keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EncryptionMarker {
    /// [`super::crypt::FORMAT`].
    pub format: u8,
    /// Key ids (16 hex digits each).
    pub key_ids: Vec<String>,
}

/// One stored object of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// Object key.
    pub key: String,
    /// Bytes it holds once decompressed (for `.srv` chunks: stored bytes).
    pub bytes: u64,
    /// Stored (compressed) size.
    pub stored: u64,
    /// CRC-32C of the stored bytes.
    pub crc32c: u32,
}

/// One tar archive of a backup: the data directory, or a tablespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRecord {
    /// `base` or the tablespace OID.
    pub name: String,
    /// The tablespace's location on the source server (`None` for `base`).
    pub location: Option<String>,
    /// Uncompressed tar bytes.
    pub bytes: u64,
    /// Server-side compression of the stored stream (`lz4`), `None`: pitr's lz4 per chunk.
    pub server_compression: Option<String>,
    /// Chunks in order.
    pub chunks: Vec<ChunkRecord>,
}

/// A backup's catalog entry (`backups/<id>/backup.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// Catalog format.
    pub format: u32,
    /// Identifier (start time, `YYYYMMDDTHHMMSSZ`).
    pub id: String,
    /// `--label`.
    pub label: String,
    /// Redo pointer of the backup checkpoint (`START WAL LOCATION`).
    pub start_lsn: Lsn,
    /// Start timeline.
    pub start_tli: TimeLineId,
    /// End LSN (end of the backup-end record): the backup is consistent from here.
    pub end_lsn: Lsn,
    /// End timeline.
    pub end_tli: TimeLineId,
    /// When `BASE_BACKUP` was sent (RFC 3339, UTC).
    pub start_time: String,
    /// When it ended (RFC 3339, UTC): the earliest instant this backup can restore to.
    pub end_time: String,
    /// `server_version` of the source.
    pub pg_version: String,
    /// Its major version.
    pub pg_major: u32,
    /// System identifier (a string: 64 bits do not survive JSON numbers).
    pub system_id: String,
    /// `lz4` (pitr, per chunk) or `server-lz4`.
    pub compression: String,
    /// Archives: tablespaces first, `base` last (the server's order).
    pub archives: Vec<ArchiveRecord>,
    /// The backup manifest object.
    pub manifest: Option<ChunkRecord>,
    /// Uncompressed bytes in all archives.
    pub bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// The pitr version that took it.
    pub created_by: String,
    /// The role the backup connected as (tried first by `restore --verify`).
    #[serde(default)]
    pub source_user: Option<String>,
    /// The earliest instant this backup restores to, on the server's clock (the latest
    /// commit or abort time in the WAL before its end; see `restore::plan::restorable_from`),
    /// as computed when the backup completed. Informational: restore recomputes it from the
    /// WAL. RFC 3339, UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restorable_from: Option<String>,
}

impl BackupRecord {
    /// Start LSN.
    pub(crate) fn start(&self) -> Lsn {
        self.start_lsn
    }

    /// End LSN.
    pub(crate) fn end(&self) -> Lsn {
        self.end_lsn
    }

    /// End time, Unix microseconds (a validated entry always has one).
    pub(crate) fn end_micros(&self) -> i64 {
        super::catalog::parse_micros(&self.end_time).unwrap_or(i64::MAX)
    }

    /// Checks what the types cannot: an error names the field. An entry of another format
    /// is unusable here (it is never read as if it were this one).
    pub(crate) fn validate(&self) -> Result<(), String> {
        let zstd = self.compression == "zstd";
        if self.format != BACKUP_FORMAT && self.format != BACKUP_FORMAT_ZSTD {
            return Err(format!(
                "catalog entry format {} is not supported by this pitr (formats {BACKUP_FORMAT} and {BACKUP_FORMAT_ZSTD})",
                self.format
            ));
        }
        if zstd != (self.format == BACKUP_FORMAT_ZSTD) {
            return Err(format!(
                "compression {:?} does not go with catalog entry format {}",
                self.compression, self.format
            ));
        }
        if self.start_lsn > self.end_lsn {
            return Err(format!(
                "start_lsn {} is after end_lsn {}",
                self.start_lsn, self.end_lsn
            ));
        }
        if self.start_tli.0 == 0 || self.end_tli.0 == 0 {
            return Err("timeline 0".into());
        }
        if super::catalog::parse_micros(&self.end_time).is_none() {
            return Err(format!("bad end_time {:?}", self.end_time));
        }
        if self.archives.is_empty() || !self.archives.iter().any(|a| a.name == "base") {
            return Err("no base archive".into());
        }
        Ok(())
    }
}

/// The RTO-sample format this code writes and reads ([`RtoSample::format`]).
pub(crate) const SAMPLE_FORMAT: u32 = 1;

/// What one passing `restore --verify` measured (`stats/rto/<id>.json`), from which the
/// next restore predicts its RTO (`crate::restore::rto`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RtoSample {
    /// Sample format ([`SAMPLE_FORMAT`]).
    pub format: u32,
    /// When it was measured (RFC 3339, UTC).
    pub at: String,
    /// The backup restored.
    pub backup: String,
    /// Bytes written into the data directory: the backup's and the WAL's.
    pub written_bytes: u64,
    /// Seconds the restore took (download, check, extract, place WAL).
    pub restore_seconds: f64,
    /// WAL PostgreSQL replayed, bytes (from the backup's start to the replay end).
    pub wal_bytes: u64,
    /// Seconds from starting PostgreSQL to the end of recovery.
    pub recovery_seconds: f64,
    /// The PostgreSQL that replayed it (binaries' directory or image).
    pub postgres: String,
    /// The pitr that measured it.
    pub created_by: String,
}

/// A restore point made by `pitr mark` (`points/<LSN>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PointRecord {
    /// Its name.
    pub name: String,
    /// LSN returned by `pg_create_restore_point`.
    pub lsn: Lsn,
    /// Timeline.
    pub tli: TimeLineId,
    /// When it was made (RFC 3339, UTC).
    pub time: String,
}

/// A segment summary (`wal/TTTTTTTT/<segment>.summary.json`, with the object key as `file`),
/// and what `pitr wal inspect --json` prints for one file (with the path given as `file`).
/// Absent fields read as empty: summaries only ever gained fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct SummaryRecord {
    /// The path given, or the object key.
    pub file: String,
    /// Canonical segment name (from the page header).
    pub segment: Option<String>,
    /// Timeline of the first page.
    pub timeline: Option<TimeLineId>,
    /// Segment number.
    pub segno: Option<u64>,
    /// LSN of the segment's first byte.
    pub start_lsn: Option<Lsn>,
    /// PostgreSQL major version (from the page magic).
    pub pg_version: Option<u32>,
    /// System identifier (a string: it does not fit a JSON double).
    pub system_id: Option<String>,
    /// `wal_segment_size` in bytes.
    pub wal_segment_size: Option<u32>,
    /// lz4-compressed input?
    pub compressed: bool,
    /// First record starting in this segment.
    pub first_lsn: Option<Lsn>,
    /// Its `xl_prev` (the start of the record before it): links this segment to the one
    /// before, so a mix of two histories shows at the boundary.
    pub first_prev: Option<Lsn>,
    /// Last record starting in this segment.
    pub last_lsn: Option<Lsn>,
    /// End of that record.
    pub last_end: Option<Lsn>,
    /// Records starting in this segment.
    pub records: u64,
    /// Commits (plain and prepared).
    pub commits: u64,
    /// Aborts (plain and prepared).
    pub aborts: u64,
    /// Earliest commit time (RFC 3339, UTC).
    pub min_commit_time: Option<String>,
    /// Latest commit time (RFC 3339, UTC).
    pub max_commit_time: Option<String>,
    /// Every commit and abort, in LSN order.
    pub xacts: Vec<XactRecord>,
    /// Restore points.
    pub restore_points: Vec<RestorePointRecord>,
    /// Checkpoints.
    pub checkpoints: Vec<CheckpointRecord>,
    /// Timeline switches (end-of-recovery records).
    pub timeline_switches: Vec<TimelineSwitchRecord>,
    /// LSN of an `XLOG_SWITCH` ending the segment.
    pub switch_lsn: Option<Lsn>,
    /// Where valid WAL ended, if in this segment.
    pub end_of_wal: Option<EndRecord>,
    /// Records with a valid checksum whose body could not be interpreted.
    pub malformed_records: Vec<String>,
    /// Why this file could not be decoded at all.
    pub error: Option<String>,
}

/// A commit or abort, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct XactRecord {
    /// Record start.
    pub lsn: Lsn,
    /// `xact_time`, RFC 3339 UTC (as walfmt prints a PostgreSQL timestamp).
    pub time: String,
    /// Transaction id.
    pub xid: u32,
    /// `COMMIT`, `COMMIT_PREPARED`, `ABORT` or `ABORT_PREPARED`.
    pub kind: XactKind,
}

/// A restore point record in the WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RestorePointRecord {
    /// Record start.
    pub lsn: Lsn,
    /// Name.
    pub name: String,
    /// Creation time, RFC 3339 UTC.
    pub time: String,
}

/// `online` or `shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CheckpointKind {
    /// An online checkpoint.
    Online,
    /// A shutdown checkpoint.
    Shutdown,
}

impl CheckpointKind {
    /// The stored text.
    pub(crate) fn name(self) -> &'static str {
        match self {
            CheckpointKind::Online => "online",
            CheckpointKind::Shutdown => "shutdown",
        }
    }
}

/// A checkpoint record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CheckpointRecord {
    /// Record start.
    pub lsn: Lsn,
    /// Redo pointer.
    pub redo: Lsn,
    /// Timeline.
    pub timeline: TimeLineId,
    /// Previous timeline.
    pub prev_timeline: TimeLineId,
    /// Online or shutdown.
    pub kind: CheckpointKind,
    /// Checkpoint time (Unix seconds).
    pub time_unix: i64,
}

/// A timeline switch (end-of-recovery record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TimelineSwitchRecord {
    /// Record start.
    pub lsn: Lsn,
    /// New timeline.
    pub timeline: TimeLineId,
    /// Parent.
    pub prev_timeline: TimeLineId,
    /// When.
    pub time: String,
}

/// Where WAL ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EndRecord {
    /// Position.
    pub lsn: Lsn,
    /// Why, in words.
    pub reason: String,
    /// An ordinary tail (zeros, recycled page, record continued elsewhere) rather than invalid data.
    pub clean: bool,
}

impl From<&EndOfWal> for EndRecord {
    fn from(e: &EndOfWal) -> Self {
        EndRecord {
            lsn: e.lsn,
            reason: e.to_string(),
            clean: e.is_clean(),
        }
    }
}

impl SummaryRecord {
    /// An empty summary of `file`.
    pub(crate) fn empty(file: String) -> SummaryRecord {
        SummaryRecord {
            file,
            ..Default::default()
        }
    }

    /// Fills the fields that identify the segment.
    pub(crate) fn set_identity(
        &mut self,
        tli: TimeLineId,
        segno: SegNo,
        seg: WalSegSize,
        system_id: u64,
        pg_version: Option<u32>,
    ) {
        self.segment = Some(walfmt::names::segment_file_name(tli, segno, seg));
        self.timeline = Some(tli);
        self.segno = Some(segno.0);
        self.start_lsn = segno.start_lsn(seg);
        self.system_id = Some(system_id.to_string());
        self.wal_segment_size = Some(seg.get());
        self.pg_version = pg_version;
    }

    /// Fills what walfmt found in the segment.
    pub(crate) fn fill(&mut self, s: SegmentSummary) {
        self.first_lsn = s.first_lsn;
        self.first_prev = s.first_prev;
        self.last_lsn = s.last_lsn;
        self.last_end = s.last_end;
        self.records = s.records;
        self.commits = s.commits;
        self.aborts = s.aborts;
        self.min_commit_time = s.min_commit_time.map(|t| t.to_string());
        self.max_commit_time = s.max_commit_time.map(|t| t.to_string());
        self.xacts = s
            .xacts
            .iter()
            .map(|x| XactRecord {
                lsn: x.lsn,
                time: x.time.to_string(),
                xid: x.xid,
                kind: x.kind,
            })
            .collect();
        self.restore_points = s
            .restore_points
            .iter()
            .map(|r| RestorePointRecord {
                lsn: r.lsn,
                name: r.name.clone(),
                time: r.time.to_string(),
            })
            .collect();
        self.checkpoints = s
            .checkpoints
            .iter()
            .map(|c| CheckpointRecord {
                lsn: c.lsn,
                redo: c.redo,
                timeline: c.tli,
                prev_timeline: c.prev_tli,
                kind: if c.shutdown {
                    CheckpointKind::Shutdown
                } else {
                    CheckpointKind::Online
                },
                time_unix: c.time_unix,
            })
            .collect();
        self.timeline_switches = s
            .timeline_switches
            .iter()
            .map(|t| TimelineSwitchRecord {
                lsn: t.lsn,
                timeline: t.tli,
                prev_timeline: t.prev_tli,
                time: t.time.to_string(),
            })
            .collect();
        self.switch_lsn = s.switch_lsn;
        self.end_of_wal = s.end_of_wal.as_ref().map(EndRecord::from);
        self.malformed_records = s.malformed.iter().map(|m| m.to_string()).collect();
    }

    /// The summary the archiver stores for a complete segment under `key`.
    pub(crate) fn of_segment(
        key: &str,
        tli: TimeLineId,
        seg: WalSegSize,
        pg_version: Option<u32>,
        system_id: u64,
        s: SegmentSummary,
    ) -> SummaryRecord {
        let mut f = SummaryRecord::empty(key.to_string());
        f.set_identity(tli, s.segno, seg, system_id, pg_version);
        f.fill(s);
        f
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Format 2 is format 1 with zstd chunks: each format goes only with its compression,
    /// and a format this pitr does not know is refused naming both it knows.
    #[test]
    fn a_zstd_entry_is_format_2_and_formats_go_with_their_compression() {
        let text = r#"{"format":1,"id":"20260101T000000Z","label":"b","start_lsn":"0/6000028","start_tli":1,"end_lsn":"0/7000000","end_tli":1,"start_time":"2026-01-01T00:00:00Z","end_time":"2026-01-01T00:00:05Z","pg_version":"17.2","pg_major":17,"system_id":"7400000000000000001","compression":"lz4","archives":[{"name":"base","location":null,"bytes":1,"server_compression":null,"chunks":[{"key":"backups/20260101T000000Z/base.000000.lz4","bytes":1,"stored":2,"crc32c":3}]}],"manifest":null,"bytes":1,"stored_bytes":2,"created_by":"pitr 0.1.0","source_user":null}"#;
        let lz4: BackupRecord = serde_json::from_str(text).unwrap();
        lz4.validate().unwrap();
        let zstd = BackupRecord {
            format: BACKUP_FORMAT_ZSTD,
            compression: "zstd".into(),
            ..lz4.clone()
        };
        zstd.validate().unwrap();
        let mismatched = [
            BackupRecord {
                format: BACKUP_FORMAT_ZSTD,
                ..lz4.clone()
            },
            BackupRecord {
                format: BACKUP_FORMAT,
                ..zstd.clone()
            },
        ];
        for r in mismatched {
            let e = r.validate().unwrap_err();
            assert!(e.contains("does not go with catalog entry format"), "{e}");
        }
        let e = BackupRecord { format: 3, ..zstd }.validate().unwrap_err();
        assert_eq!(
            e,
            "catalog entry format 3 is not supported by this pitr (formats 1 and 2)"
        );
    }

    /// A catalog entry as format 1 wrote it: it reads into typed fields and writes back to
    /// the same JSON, field for field.
    #[test]
    fn a_backup_record_round_trips_format_1() {
        let text = r#"{"format":1,"id":"20260101T000000Z","label":"b","start_lsn":"0/6000028","start_tli":1,"end_lsn":"1/A0000120","end_tli":2,"start_time":"2026-01-01T00:00:00Z","end_time":"2026-01-01T00:00:05Z","pg_version":"17.2","pg_major":17,"system_id":"7400000000000000001","compression":"lz4","archives":[{"name":"base","location":null,"bytes":1,"server_compression":null,"chunks":[{"key":"backups/20260101T000000Z/base.000000.lz4","bytes":1,"stored":2,"crc32c":3}]}],"manifest":null,"bytes":1,"stored_bytes":2,"created_by":"pitr 0.1.0","source_user":null}"#;
        let r: BackupRecord = serde_json::from_str(text).unwrap();
        assert_eq!(r.start(), Lsn(0x0600_0028));
        assert_eq!(r.end(), Lsn(0x1_A000_0120));
        assert_eq!(r.end_tli, TimeLineId(2));
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
        let mut future = r.clone();
        future.format = 3;
        assert!(future.validate().unwrap_err().contains("not supported"));
    }

    /// A corrupt LSN or timeline is an error, never a default.
    #[test]
    fn a_corrupt_field_is_an_error() {
        let good = serde_json::json!({"name": "p", "lsn": "0/16B3748", "tli": 1, "time": "2026-01-01T00:00:00Z"});
        let p: PointRecord = serde_json::from_value(good.clone()).unwrap();
        assert_eq!(p.lsn, Lsn(0x16B_3748));
        for (field, bad) in [
            ("lsn", serde_json::json!("nonsense")),
            ("lsn", serde_json::json!(12)),
            ("tli", serde_json::json!("1")),
        ] {
            let mut v = good.clone();
            v[field] = bad;
            assert!(serde_json::from_value::<PointRecord>(v).is_err(), "{field}");
        }
        let x = serde_json::json!({"lsn": "0/1", "time": "t", "xid": 1, "kind": "COMMITTED"});
        assert!(serde_json::from_value::<XactRecord>(x).is_err());
    }

    /// The stored summary's fields, in format 1's order (readers of older pitr versions and
    /// `pitr wal inspect --json` users see the same object).
    #[test]
    fn summary_fields_keep_their_order() {
        let v = serde_json::to_string(&SummaryRecord::default()).unwrap();
        let keys: Vec<&str> = v
            .split('"')
            .skip(1)
            .step_by(2)
            .filter(|k| !k.is_empty())
            .collect();
        assert_eq!(
            keys,
            [
                "file",
                "segment",
                "timeline",
                "segno",
                "start_lsn",
                "pg_version",
                "system_id",
                "wal_segment_size",
                "compressed",
                "first_lsn",
                "first_prev",
                "last_lsn",
                "last_end",
                "records",
                "commits",
                "aborts",
                "min_commit_time",
                "max_commit_time",
                "xacts",
                "restore_points",
                "checkpoints",
                "timeline_switches",
                "switch_lsn",
                "end_of_wal",
                "malformed_records",
                "error"
            ]
        );
    }

    /// A summary written before `first_prev` existed still reads (absent: `None`); every
    /// field reads back as written.
    #[test]
    fn summaries_read_old_and_new() {
        let old = r#"{"file":"k","first_lsn":"0/1000028","last_lsn":"0/1FFFF00","records":3,"xacts":[{"lsn":"0/1000100","time":"2026-01-01T00:00:00.5Z","xid":740,"kind":"COMMIT_PREPARED"}],"checkpoints":[{"lsn":"0/1000200","redo":"0/1000028","timeline":1,"prev_timeline":1,"kind":"shutdown","time_unix":5}]}"#;
        let s: SummaryRecord = serde_json::from_str(old).unwrap();
        assert_eq!(s.first_prev, None);
        assert_eq!(s.xacts[0].kind, XactKind::CommitPrepared);
        assert_eq!(s.checkpoints[0].kind, CheckpointKind::Shutdown);
        let again: SummaryRecord =
            serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(again, s);
        let bad = old.replace("\"0/1FFFF00\"", "\"0/zz\"");
        assert!(serde_json::from_str::<SummaryRecord>(&bad).is_err());
    }
}
