//! WAL gaps: stretches of WAL the repo will never hold, recorded explicitly.
//!
//! When the server no longer has the WAL after the repo's tip (its slot was invalidated by
//! `max_slot_wal_keep_size` or `idle_replication_slot_timeout`, the slot was dropped, or pitr
//! streams without a slot), `pitr stream` records a gap **before** it archives anything past
//! it, then archives on from the oldest WAL the server still guarantees. Readers (`list`,
//! `verify`, `restore`) use these records to tell a known, accepted gap from damage, and to stop
//! recovery before it.
//!
//! # Object
//!
//! `gaps/<TTTTTTTT>-<FROM>-<TO>.json` ([`key`]): `TTTTTTTT` the timeline archiving resumed on
//! (8 upper-case hex digits), `FROM` and `TO` the gap's bounds as 16 upper-case hex digits. The
//! content is a [`GapRecord`]. Written once, create-if-absent; never rewritten.
//!
//! # Invariants
//!
//! - WAL in `[from, to)` is missing from the repo; `to` is a segment start, the first byte
//!   archived after the gap, on `timeline`. `from` is the end of the WAL the repo held on
//!   `from_timeline` when the gap was found.
//! - A record is written before any WAL at or after `to` is archived, so a repo never holds WAL
//!   past a gap without its record.
//! - Readers get typed values ([`GapRecord::from_lsn`], [`GapRecord::to_lsn`],
//!   [`GapRecord::tli`]); a corrupt field is an error naming the object, never a default.
//! - A gap is "open" while no complete backup starts at or after its end ([`open_gap`]): until
//!   then nothing after the gap can be restored.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use walfmt::{Lsn, TimeLineId};

use super::{Repo, RepoError};

/// The format of gap records this code writes and reads.
pub(crate) const GAP_FORMAT: u32 = 1;

/// Where gap records live.
pub(crate) const PREFIX: &str = "gaps/";

/// A recorded gap (`gaps/<TTTTTTTT>-<FROM>-<TO>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GapRecord {
    /// Record format, [`GAP_FORMAT`].
    pub format: u32,
    /// The timeline archiving resumed on, at `to`.
    pub timeline: u32,
    /// The timeline of the WAL the repo held before the gap (usually `timeline`).
    pub from_timeline: u32,
    /// End of the WAL the repo held (`X/X`): the first missing byte.
    pub from: String,
    /// Where archiving resumed (`X/X`, a segment start): the first byte after the gap.
    pub to: String,
    /// When pitr found it (RFC 3339, UTC).
    pub detected_at: String,
    /// What the server said.
    pub reason: String,
    /// The pitr version that wrote it.
    pub created_by: String,
}

/// Key of a gap record.
pub(crate) fn key(tli: TimeLineId, from: Lsn, to: Lsn) -> String {
    format!("{PREFIX}{:08X}-{:016X}-{:016X}.json", tli.0, from.0, to.0)
}

/// Parses a gap record's key: (timeline, from, to).
pub(crate) fn parse_key(key: &str) -> Option<(TimeLineId, Lsn, Lsn)> {
    let rest = key.strip_prefix(PREFIX)?.strip_suffix(".json")?;
    let mut it = rest.split('-');
    let (t, f, to) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || t.len() != 8 || f.len() != 16 || to.len() != 16 {
        return None;
    }
    Some((
        TimeLineId(u32::from_str_radix(t, 16).ok()?),
        Lsn(u64::from_str_radix(f, 16).ok()?),
        Lsn(u64::from_str_radix(to, 16).ok()?),
    ))
}

impl GapRecord {
    /// A new record (format [`GAP_FORMAT`], detected now).
    pub(crate) fn new(
        tli: TimeLineId,
        from_tli: TimeLineId,
        from: Lsn,
        to: Lsn,
        reason: impl Into<String>,
    ) -> GapRecord {
        let now = jiff::Timestamp::now();
        let now = jiff::Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now);
        GapRecord {
            format: GAP_FORMAT,
            timeline: tli.0,
            from_timeline: from_tli.0,
            from: from.to_string(),
            to: to.to_string(),
            detected_at: now.to_string(),
            reason: reason.into(),
            created_by: format!("pitr {}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn field<T>(&self, name: &str, v: Option<T>) -> Result<T, RepoError> {
        v.ok_or_else(|| RepoError::Corrupt {
            repo: String::new(),
            message: format!(
                "gap record (timeline {}, {} to {}): bad {name}",
                self.timeline, self.from, self.to
            ),
        })
    }

    /// The first missing byte.
    #[allow(clippy::wrong_self_convention)] // the record's `from` field, typed
    pub(crate) fn from_lsn(&self) -> Result<Lsn, RepoError> {
        self.field("from", self.from.parse().ok())
    }

    /// The first byte archived after the gap.
    pub(crate) fn to_lsn(&self) -> Result<Lsn, RepoError> {
        self.field("to", self.to.parse().ok())
    }

    /// The timeline archiving resumed on.
    pub(crate) fn tli(&self) -> Result<TimeLineId, RepoError> {
        self.field(
            "timeline",
            (self.timeline > 0).then_some(TimeLineId(self.timeline)),
        )
    }

    /// The timeline of the WAL before the gap.
    #[allow(clippy::wrong_self_convention)] // the record's `from` field, typed
    pub(crate) fn from_tli(&self) -> Result<TimeLineId, RepoError> {
        self.field(
            "from_timeline",
            (self.from_timeline > 0).then_some(TimeLineId(self.from_timeline)),
        )
    }

    /// Checks every field and that `key` is this record's key.
    pub(crate) fn validate(&self, key_found: &str) -> Result<(), String> {
        if self.format != GAP_FORMAT {
            return Err(format!(
                "{key_found}: gap record format {} is not supported (format {GAP_FORMAT})",
                self.format
            ));
        }
        let bad = |what: &str| format!("{key_found}: bad {what}");
        let from = self.from_lsn().map_err(|_| bad("from"))?;
        let to = self.to_lsn().map_err(|_| bad("to"))?;
        let tli = self.tli().map_err(|_| bad("timeline"))?;
        self.from_tli().map_err(|_| bad("from_timeline"))?;
        if to <= from {
            return Err(format!(
                "{key_found}: gap ends at {to}, not after its start {from}"
            ));
        }
        if self.detected_at.parse::<jiff::Timestamp>().is_err() {
            return Err(bad("detected_at"));
        }
        let want = key(tli, from, to);
        if key_found != want {
            return Err(format!(
                "{key_found}: holds the gap {from}..{to} on timeline {}, whose key is {want}",
                tli.0
            ));
        }
        Ok(())
    }

    /// Whether the WAL missing at `at` (a segment's start, as a listing shows a gap) is
    /// this gap: from the segment holding `from` to `to`.
    pub(crate) fn covers(&self, at: Lsn, seg: walfmt::WalSegSize) -> bool {
        matches!((self.from_lsn(), self.to_lsn()), (Ok(f), Ok(t)) if f.segment(seg) <= at.segment(seg) && at < t)
    }

    /// What an open gap means, for `list` and `verify`.
    pub(crate) fn unrestorable(&self) -> String {
        format!(
            "{}: no complete backup starts after it, so nothing after {} can be restored; take a base backup (pitr backup)",
            self.describe(),
            self.to
        )
    }

    /// The one-line description used in logs and `/healthz`.
    pub(crate) fn describe(&self) -> String {
        format!(
            "WAL gap: the repo lacks WAL from {} (timeline {}) to {} (timeline {})",
            self.from, self.from_timeline, self.to, self.timeline
        )
    }
}

/// Records a gap (create-if-absent: recording the same gap again is harmless).
pub(crate) async fn record(repo: &Repo, g: &GapRecord) -> Result<String, RepoError> {
    let k = key(g.tli()?, g.from_lsn()?, g.to_lsn()?);
    let body = serde_json::to_vec_pretty(g).unwrap_or_default();
    repo.put(&k, Bytes::from(body)).await?;
    Ok(k)
}

/// Every recorded gap, ordered by where archiving resumed. A record that does not parse or
/// does not match its key is an error naming it.
pub(crate) async fn gaps(repo: &Repo) -> Result<Vec<GapRecord>, RepoError> {
    let corrupt = |message: String| RepoError::Corrupt {
        repo: repo.location.clone(),
        message,
    };
    let mut out = Vec::new();
    for o in repo.store().list(PREFIX).await? {
        if !o.key.ends_with(".json") {
            continue;
        }
        let Some(b) = repo.store().get(&o.key).await? else {
            continue;
        };
        let g: GapRecord = serde_json::from_slice(&b)
            .map_err(|e| corrupt(format!("{}: unreadable gap record: {e}", o.key)))?;
        g.validate(&o.key).map_err(corrupt)?;
        out.push((g.to_lsn()?, g));
    }
    out.sort_by_key(|(to, g)| (*to, g.timeline));
    Ok(out.into_iter().map(|(_, g)| g).collect())
}

/// The gap that leaves the archive without a restorable future, if any: the newest gap (by
/// `to`) when no complete backup starts at or after its end on its timeline or a later one.
/// `backups` are (start LSN, start timeline) of complete backups. Older gaps are closed by
/// any backup after the newest one.
pub(crate) fn open_gap<'a>(
    gaps: &'a [GapRecord],
    backups: &[(Lsn, TimeLineId)],
) -> Option<&'a GapRecord> {
    let newest = gaps
        .iter()
        .filter_map(|g| Some((g.to_lsn().ok()?, g.tli().ok()?, g)))
        .max_by_key(|(to, tli, _)| (*to, *tli))?;
    let (to, tli, g) = newest;
    let closed = backups
        .iter()
        .any(|(start, btli)| *start >= to && *btli >= tli);
    (!closed).then_some(g)
}

/// [`open_gap`] given the complete backups.
pub(crate) fn open_gap_after<'a>(
    gaps: &'a [GapRecord],
    backups: &[super::catalog::BackupRecord],
) -> Option<&'a GapRecord> {
    let starts: Vec<(Lsn, TimeLineId)> = backups.iter().map(|b| (b.start(), b.start_tli)).collect();
    open_gap(gaps, &starts)
}

/// The newest gap while no complete backup starts after it.
pub(crate) async fn read_open_gap(r: &Repo) -> Result<Option<GapRecord>, RepoError> {
    let all = gaps(r).await?;
    if all.is_empty() {
        return Ok(None);
    }
    let backups = super::catalog::backups(r).await?;
    Ok(open_gap_after(&all, &backups).cloned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn gap(tli: u32, from: u64, to: u64) -> GapRecord {
        GapRecord::new(TimeLineId(tli), TimeLineId(tli), Lsn(from), Lsn(to), "test")
    }

    #[test]
    fn keys_and_validation() {
        let g = gap(1, 0x0500_1234, 0x0900_0000);
        let k = key(TimeLineId(1), Lsn(0x0500_1234), Lsn(0x0900_0000));
        assert_eq!(k, "gaps/00000001-0000000005001234-0000000009000000.json");
        assert_eq!(
            parse_key(&k),
            Some((TimeLineId(1), Lsn(0x0500_1234), Lsn(0x0900_0000)))
        );
        for bad in [
            "gaps/1-2-3.json",
            "gaps/x.json",
            &k.replace(".json", ".tmp"),
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
        assert_eq!(g.validate(&k), Ok(()));
        assert_eq!(g.from_lsn().unwrap(), Lsn(0x0500_1234));
        assert_eq!(g.to_lsn().unwrap(), Lsn(0x0900_0000));
        // A record under another key, a corrupt field, a backwards gap: errors, never defaults.
        assert!(
            g.validate("gaps/00000002-0000000005001234-0000000009000000.json")
                .is_err()
        );
        let mut bad = g.clone();
        bad.to = "nonsense".into();
        assert!(bad.to_lsn().is_err());
        assert!(bad.validate(&k).unwrap_err().contains("bad to"));
        let mut bad = g.clone();
        bad.timeline = 0;
        assert!(bad.tli().is_err());
        let back = gap(1, 0x0900_0000, 0x0500_0000);
        assert!(
            back.validate(&key(TimeLineId(1), Lsn(0x0900_0000), Lsn(0x0500_0000)))
                .is_err()
        );
        let mut future = g.clone();
        future.format = 2;
        assert!(future.validate(&k).unwrap_err().contains("not supported"));
        let json = serde_json::to_string(&g).unwrap();
        let back: GapRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, g);
    }

    #[test]
    fn a_gap_is_open_until_a_backup_starts_after_it() {
        let gaps = vec![gap(1, 0x100, 0x0300_0000), gap(1, 0x0400_0100, 0x0600_0000)];
        // No backup, or only backups before the newest gap: open (the newest).
        assert_eq!(open_gap(&gaps, &[]).unwrap().to, "0/6000000");
        assert_eq!(
            open_gap(&gaps, &[(Lsn(0x0500_0000), TimeLineId(1))])
                .unwrap()
                .to,
            "0/6000000"
        );
        // A backup starting exactly at the end of the gap closes it (and every older gap).
        assert!(open_gap(&gaps, &[(Lsn(0x0600_0000), TimeLineId(1))]).is_none());
        assert!(open_gap(&gaps, &[(Lsn(0x0700_0028), TimeLineId(1))]).is_none());
        // A backup of an older timeline does not.
        let g2 = vec![gap(2, 0x100, 0x0300_0000)];
        assert!(open_gap(&g2, &[(Lsn(0x0400_0000), TimeLineId(1))]).is_some());
        assert!(open_gap(&g2, &[(Lsn(0x0400_0000), TimeLineId(3))]).is_none());
        assert!(open_gap(&[], &[]).is_none());
    }
}
