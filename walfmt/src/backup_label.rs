//! `backup_label` and `.backup` history files.
//!
//! Lines of `KEY: value`, as written by PostgreSQL's `build_backup_content()`:
//! `START WAL LOCATION: 0/2000028 (file 000000010000000000000002)`, `CHECKPOINT LOCATION`,
//! `BACKUP METHOD`, `BACKUP FROM`, `START TIME`, `LABEL`, `START TIMELINE`, and in `.backup`
//! files `STOP WAL LOCATION`, `STOP TIME`, `STOP TIMELINE`; 17+ incremental backups add
//! `INCREMENTAL FROM LSN` and `INCREMENTAL FROM TLI`. Times are in the server's log time zone
//! with an abbreviation and are kept as text, not parsed.

use crate::error::ParseError;
use crate::lsn::{Lsn, TimeLineId};

/// A parsed `backup_label` (or `.backup` file).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct BackupLabel {
    /// `START WAL LOCATION`: the checkpoint's redo pointer, where recovery begins.
    pub start_lsn: Lsn,
    /// The segment file named next to the start location.
    pub start_file: Option<String>,
    /// `CHECKPOINT LOCATION`.
    pub checkpoint_lsn: Lsn,
    /// `BACKUP METHOD`.
    pub method: Option<String>,
    /// `BACKUP FROM` (`primary` or `standby`).
    pub from: Option<String>,
    /// `START TIME`, as text.
    pub start_time: Option<String>,
    /// `LABEL`.
    pub label: Option<String>,
    /// `START TIMELINE`.
    pub start_tli: Option<TimeLineId>,
    /// `STOP WAL LOCATION` (`.backup` files).
    pub stop_lsn: Option<Lsn>,
    /// `STOP TIME` (`.backup` files).
    pub stop_time: Option<String>,
    /// `STOP TIMELINE` (`.backup` files).
    pub stop_tli: Option<TimeLineId>,
    /// `INCREMENTAL FROM LSN` (17+).
    pub incremental_from_lsn: Option<Lsn>,
    /// `INCREMENTAL FROM TLI` (17+).
    pub incremental_from_tli: Option<TimeLineId>,
}

fn lsn_with_file(v: &str) -> Result<(Lsn, Option<String>), ParseError> {
    let bad = || ParseError::BackupLabel(format!("bad WAL location {v:?}"));
    let (l, rest) = match v.split_once(' ') {
        Some((l, r)) => (l, Some(r)),
        None => (v, None),
    };
    let lsn: Lsn = l.parse().map_err(|_| bad())?;
    let file = match rest {
        Some(r) => Some(
            r.trim()
                .strip_prefix("(file ")
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(bad)?
                .to_owned(),
        ),
        None => None,
    };
    Ok((lsn, file))
}

fn tli(v: &str) -> Result<TimeLineId, ParseError> {
    v.trim()
        .parse()
        .map(TimeLineId)
        .map_err(|_| ParseError::BackupLabel(format!("bad timeline {v:?}")))
}

impl BackupLabel {
    /// Parses the file content. `START WAL LOCATION` and `CHECKPOINT LOCATION` are required.
    pub fn parse(text: &str) -> Result<BackupLabel, ParseError> {
        let mut b = BackupLabel::default();
        let (mut have_start, mut have_ckpt) = (false, false);
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((k, v)) = line.split_once(": ") else {
                return Err(ParseError::BackupLabel(format!(
                    "line without \"KEY: value\": {line:?}"
                )));
            };
            match k {
                "START WAL LOCATION" => {
                    let (l, f) = lsn_with_file(v)?;
                    b.start_lsn = l;
                    b.start_file = f;
                    have_start = true;
                }
                "STOP WAL LOCATION" => b.stop_lsn = Some(lsn_with_file(v)?.0),
                "CHECKPOINT LOCATION" => {
                    b.checkpoint_lsn = lsn_with_file(v)?.0;
                    have_ckpt = true;
                }
                "BACKUP METHOD" => b.method = Some(v.to_owned()),
                "BACKUP FROM" => b.from = Some(v.to_owned()),
                "START TIME" => b.start_time = Some(v.to_owned()),
                "STOP TIME" => b.stop_time = Some(v.to_owned()),
                "LABEL" => b.label = Some(v.to_owned()),
                "START TIMELINE" => b.start_tli = Some(tli(v)?),
                "STOP TIMELINE" => b.stop_tli = Some(tli(v)?),
                "INCREMENTAL FROM LSN" => b.incremental_from_lsn = Some(lsn_with_file(v)?.0),
                "INCREMENTAL FROM TLI" => b.incremental_from_tli = Some(tli(v)?),
                _ => {} // Unknown keys from newer versions are ignored, as PostgreSQL does.
            }
        }
        if !have_start {
            return Err(ParseError::BackupLabel("missing START WAL LOCATION".into()));
        }
        if !have_ckpt {
            return Err(ParseError::BackupLabel(
                "missing CHECKPOINT LOCATION".into(),
            ));
        }
        Ok(b)
    }
}
