//! Parsing `pg_waldump` output (15–18), for differential tests.
//!
//! Record lines look like (src/bin/pg_waldump/pg_waldump.c, `XLogDumpDisplayRecord`):
//! `rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/01000060, prev 0/01000028, desc: COMMIT 2025-11-21 19:00:00.123456 UTC`
//! `tot` is `xl_tot_len`; `rec` is `tot` minus full-page-image bytes. Timestamps print in the
//! `TZ` of the process: the helpers here run pg_waldump with `TZ=UTC`.

use std::path::Path;

use crate::PgInstall;

/// One record line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpRecord {
    /// rmgr name.
    pub rmgr: String,
    /// `rec` length.
    pub rec_len: u32,
    /// `tot` length.
    pub tot_len: u32,
    /// `tx:`.
    pub xid: u32,
    /// `lsn:` as a number.
    pub lsn: u64,
    /// `prev` as a number.
    pub prev: u64,
    /// The record type name (first word of `desc:`).
    pub id: String,
    /// The rest of the description.
    pub desc: String,
}

fn parse_lsn(s: &str) -> Option<u64> {
    let (h, l) = s.split_once('/')?;
    Some((u64::from_str_radix(h, 16).ok()? << 32) | u64::from_str_radix(l, 16).ok()?)
}

/// Parses one record line; `None` for anything else.
pub fn parse_line(line: &str) -> Option<DumpRecord> {
    let rest = line.strip_prefix("rmgr: ")?;
    let (rmgr, rest) = rest.split_once(" len (rec/tot):")?;
    let (lens, rest) = rest.split_once(", tx:")?;
    let (rec_len, tot_len) = lens.split_once('/')?;
    let (tx, rest) = rest.split_once(", lsn: ")?;
    let (lsn, rest) = rest.split_once(", prev ")?;
    let (prev, rest) = rest.split_once(", desc: ")?;
    let (id, desc) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(DumpRecord {
        rmgr: rmgr.trim().to_owned(),
        rec_len: rec_len.trim().parse().ok()?,
        tot_len: tot_len.trim().parse().ok()?,
        xid: tx.trim().parse().ok()?,
        lsn: parse_lsn(lsn.trim())?,
        prev: parse_lsn(prev.trim())?,
        id: id.to_owned(),
        desc: desc.trim_end().to_owned(),
    })
}

/// Parses a whole dump.
pub fn parse(text: &str) -> Vec<DumpRecord> {
    text.lines().filter_map(parse_line).collect()
}

/// The transaction-end timestamp in a COMMIT/ABORT desc, as printed
/// (`2025-11-21 19:00:00.123456 UTC`), and the prepared xid prefix if any.
pub fn xact_time_and_xid(desc: &str) -> Option<(String, Option<u32>)> {
    let (xid, rest) = match desc.split_once(": ") {
        Some((x, r)) if x.bytes().all(|b| b.is_ascii_digit()) && !x.is_empty() => {
            (x.parse().ok(), r)
        }
        _ => (None, desc),
    };
    let ts = rest.split(';').next()?.trim();
    Some((ts.to_owned(), xid))
}

/// A key's value in a `k v; k v` desc (e.g. `redo` or `tli` of a checkpoint).
pub fn desc_field<'a>(desc: &'a str, key: &str) -> Option<&'a str> {
    desc.split("; ")
        .find_map(|part| part.strip_prefix(key)?.strip_prefix(' '))
}

/// Runs this version's `pg_waldump` over `dir`, from the start of segment file `first` to the
/// end of `last` or of valid WAL. Returns stdout, then
/// stderr (which holds the line saying why it stopped).
pub fn dump_dir(install: &PgInstall, dir: &Path, first: &str, last: &str) -> String {
    let out = install
        .command("pg_waldump")
        .arg("-p")
        .arg(dir)
        .arg(first)
        .arg(last)
        .output()
        .expect("run pg_waldump");
    // pg_waldump exits non-zero at the end of valid WAL; the records printed are what counts.
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    text
}

/// Formats a `TimestampTz` (µs since 2000-01-01 UTC) as pg_waldump prints it with `TZ=UTC`.
pub fn format_pg_timestamp(pg_micros: i64) -> String {
    let us = pg_micros + 946_684_800_000_000;
    let secs = us.div_euclid(1_000_000);
    let frac = pg_micros % 1_000_000;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // days-to-civil (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{frac:06} UTC",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// Parses a timestamp as pg_waldump prints it with `TZ=UTC`
/// (`2025-11-21 19:00:00.123456 UTC`) into a `TimestampTz` (µs since 2000-01-01 UTC): the
/// inverse of [`format_pg_timestamp`].
pub fn parse_pg_timestamp(s: &str) -> Option<i64> {
    let s = s.strip_suffix(" UTC")?;
    let (date, time) = s.split_once(' ')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.')?;
    if frac.len() != 6 {
        return None;
    }
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let frac: i64 = frac.parse().ok()?;
    // days-from-civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let unix = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some((unix - 946_684_800) * 1_000_000 + frac)
}

/// A decoded record in neutral terms, so test crates can compare their decoder's output
/// with `pg_waldump` without this crate depending on the decoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OurRecord {
    /// Start LSN.
    pub lsn: u64,
    /// rmgr name as pg_waldump prints it.
    pub rmgr: String,
    /// `xl_tot_len`.
    pub tot_len: u32,
    /// `xl_tot_len` minus full-page-image bytes.
    pub rec_len: u32,
    /// `xl_prev`.
    pub prev: u64,
    /// `xl_xid`.
    pub xid: u32,
    /// What the decoder made of it.
    pub detail: OurDetail,
}

/// The decoded details pg_waldump also prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OurDetail {
    /// Commit or abort: pg_waldump's id (`COMMIT`...), `xact_time`, and the transaction.
    Xact {
        /// `COMMIT`, `COMMIT_PREPARED`, `ABORT` or `ABORT_PREPARED`.
        id: &'static str,
        /// µs since 2000-01-01 UTC.
        time: i64,
        /// The transaction (the prepared one's for the prepared kinds).
        xid: u32,
    },
    /// `XLOG_RESTORE_POINT`.
    RestorePoint(String),
    /// A checkpoint: shutdown?, redo LSN as text, timeline.
    Checkpoint(bool, String, u32),
    /// `XLOG_SWITCH`.
    Switch,
    /// `XLOG_END_OF_RECOVERY` with the new timeline.
    EndOfRecovery(u32),
    /// `XLOG_XACT_PREPARE`.
    Prepare,
    /// Not interpreted.
    Other,
}

/// Asserts that `ours` is exactly what pg_waldump printed: the same records in the same
/// order, with the same LSN, rmgr, lengths, prev-link and xid, and the same decoded details.
pub fn assert_same(label: &str, ours: &[OurRecord], theirs: &[DumpRecord]) {
    for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
        let ctx = || format!("{label}, record #{i}: ours {o:?}\n pg_waldump {t:?}");
        assert_eq!(
            (o.lsn, o.rmgr.as_str(), o.tot_len, o.rec_len, o.prev, o.xid),
            (t.lsn, t.rmgr.as_str(), t.tot_len, t.rec_len, t.prev, t.xid),
            "{}",
            ctx()
        );
        match &o.detail {
            OurDetail::Xact { id, time, xid } => {
                assert_eq!(*id, t.id, "{}", ctx());
                let (ts, pxid) = xact_time_and_xid(&t.desc).unwrap_or_else(|| panic!("{}", ctx()));
                assert_eq!(format_pg_timestamp(*time), ts, "{}", ctx());
                if let Some(p) = pxid {
                    assert_eq!(*xid, p, "prepared xid: {}", ctx());
                }
            }
            OurDetail::RestorePoint(name) => {
                assert_eq!(t.id, "RESTORE_POINT", "{}", ctx());
                assert_eq!(name, &t.desc, "{}", ctx());
            }
            OurDetail::Checkpoint(shutdown, redo, tli) => {
                assert_eq!(
                    t.id,
                    if *shutdown {
                        "CHECKPOINT_SHUTDOWN"
                    } else {
                        "CHECKPOINT_ONLINE"
                    },
                    "{}",
                    ctx()
                );
                assert_eq!(
                    Some(redo.as_str()),
                    desc_field(&t.desc, "redo"),
                    "{}",
                    ctx()
                );
                assert_eq!(
                    Some(tli.to_string().as_str()),
                    desc_field(&t.desc, "tli"),
                    "{}",
                    ctx()
                );
            }
            OurDetail::Switch => assert_eq!(t.id, "SWITCH", "{}", ctx()),
            OurDetail::EndOfRecovery(tli) => {
                assert_eq!(t.id, "END_OF_RECOVERY", "{}", ctx());
                assert_eq!(
                    Some(tli.to_string().as_str()),
                    desc_field(&t.desc, "tli"),
                    "{}",
                    ctx()
                );
            }
            OurDetail::Prepare => assert_eq!(t.id, "PREPARE", "{}", ctx()),
            OurDetail::Other => {
                let interpreted = matches!(
                    (t.rmgr.as_str(), t.id.as_str()),
                    (
                        "Transaction",
                        "COMMIT" | "ABORT" | "COMMIT_PREPARED" | "ABORT_PREPARED" | "PREPARE"
                    ) | (
                        "XLOG",
                        "SWITCH"
                            | "RESTORE_POINT"
                            | "CHECKPOINT_ONLINE"
                            | "CHECKPOINT_SHUTDOWN"
                            | "END_OF_RECOVERY"
                    )
                );
                assert!(!interpreted, "not decoded: {}", ctx());
            }
        }
    }
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{label}: we decoded {} records, pg_waldump {}",
        ours.len(),
        theirs.len()
    );
}

/// Asserts the dump contains what the workload is meant to exercise, so a differential test
/// cannot pass vacuously.
pub fn assert_coverage(label: &str, theirs: &[DumpRecord], seg_size: u64) {
    assert!(theirs.len() > 500, "{label}: only {} records", theirs.len());
    let has = |id: &str| theirs.iter().any(|t| t.id == id);
    for id in [
        "COMMIT",
        "ABORT",
        "COMMIT_PREPARED",
        "ABORT_PREPARED",
        "PREPARE",
        "RESTORE_POINT",
        "CHECKPOINT_ONLINE",
        "SWITCH",
    ] {
        assert!(has(id), "{label}: workload has no {id} record");
    }
    assert!(
        theirs.iter().any(|t| u64::from(t.tot_len) > seg_size),
        "{label}: no record longer than a segment"
    );
    assert!(
        theirs.iter().any(|t| t.rec_len < t.tot_len),
        "{label}: no full-page image"
    );
    assert!(
        theirs.iter().any(|t| t.desc.contains("subxacts")),
        "{label}: no subtransactions"
    );
    assert!(
        theirs
            .iter()
            .any(|t| t.id == "COMMIT_PREPARED" && t.desc.contains("dropped stats")),
        "{label}: no COMMIT_PREPARED with dropped stats"
    );
}
