//! WAL file names.
//!
//! | kind | format | example |
//! |---|---|---|
//! | segment | `TTTTTTTTXXXXXXXXYYYYYYYY` (24 upper-case hex digits) | `000000010000000000000003` |
//! | partial segment | segment name + `.partial` | `000000010000000000000003.partial` |
//! | timeline history | `TTTTTTTT.history` | `00000002.history` |
//! | backup history | segment name + `.OOOOOOOO.backup` (offset of the start LSN) | `000000010000000000000002.00000028.backup` |
//!
//! `T` is the timeline in hex, `X` is `segno / segments_per_xlogid`, `Y` is `segno % segments_per_xlogid`
//! (`segments_per_xlogid = 4 GiB / wal_segment_size`). Parsing accepts upper- and lower-case hex
//! and rejects a `Y` part that cannot exist for the given segment size.

use std::fmt;

use crate::error::ParseError;
use crate::lsn::{Lsn, SegNo, TimeLineId, WalSegSize};

/// A parsed WAL-related file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum WalFileName {
    /// A complete segment.
    Segment(TimeLineId, SegNo),
    /// A segment that was still being written (`.partial`).
    Partial(TimeLineId, SegNo),
    /// A timeline history file.
    History(TimeLineId),
    /// A backup history file: the segment of the start LSN, and the start LSN's offset in it.
    Backup(TimeLineId, SegNo, u32),
}

/// Formats a segment file name.
pub fn segment_file_name(tli: TimeLineId, segno: SegNo, seg: WalSegSize) -> String {
    let per = seg.segments_per_xlogid();
    format!("{:08X}{:08X}{:08X}", tli.0, segno.0 / per, segno.0 % per)
}

/// Formats a timeline history file name.
pub fn history_file_name(tli: TimeLineId) -> String {
    format!("{:08X}.history", tli.0)
}

impl WalFileName {
    /// Parses a bare file name (no directory).
    pub fn parse(name: &str, seg: WalSegSize) -> Result<WalFileName, ParseError> {
        let bad = || ParseError::FileName(name.to_owned());
        if !name.is_ascii() {
            return Err(bad());
        }
        let hex8 = |s: &str| -> Option<u32> {
            (s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(s, 16).ok())
                .flatten()
        };
        if let Some(t) = name.strip_suffix(".history") {
            let tli = hex8(t).ok_or_else(bad)?;
            return Ok(WalFileName::History(TimeLineId(tli)));
        }
        let base = name.get(..24).ok_or_else(bad)?;
        let rest = &name[24..];
        let tli = hex8(&base[..8]).ok_or_else(bad)?;
        let log = hex8(&base[8..16]).ok_or_else(bad)?;
        let off = hex8(&base[16..24]).ok_or_else(bad)?;
        let per = seg.segments_per_xlogid();
        if u64::from(off) >= per {
            return Err(bad());
        }
        let segno = SegNo(u64::from(log) * per + u64::from(off));
        let tli = TimeLineId(tli);
        match rest {
            "" => Ok(WalFileName::Segment(tli, segno)),
            ".partial" => Ok(WalFileName::Partial(tli, segno)),
            r => {
                let o = r
                    .strip_prefix('.')
                    .and_then(|r| r.strip_suffix(".backup"))
                    .and_then(hex8)
                    .ok_or_else(bad)?;
                if u64::from(o) >= seg.bytes() {
                    return Err(bad());
                }
                Ok(WalFileName::Backup(tli, segno, o))
            }
        }
    }

    /// The name as PostgreSQL writes it.
    pub fn to_string_with(&self, seg: WalSegSize) -> String {
        match *self {
            WalFileName::Segment(t, s) => segment_file_name(t, s, seg),
            WalFileName::Partial(t, s) => format!("{}.partial", segment_file_name(t, s, seg)),
            WalFileName::History(t) => history_file_name(t),
            WalFileName::Backup(t, s, o) => {
                format!("{}.{:08X}.backup", segment_file_name(t, s, seg), o)
            }
        }
    }

    /// The start LSN of a segment, partial segment or backup-start position.
    pub fn start_lsn(&self, seg: WalSegSize) -> Option<Lsn> {
        match *self {
            WalFileName::Segment(_, s) | WalFileName::Partial(_, s) => s.start_lsn(seg),
            WalFileName::Backup(_, s, o) => s.start_lsn(seg)?.checked_add(u64::from(o)),
            WalFileName::History(_) => None,
        }
    }
}

impl fmt::Display for WalFileName {
    /// Prints with the default 16 MiB segment size; use [`WalFileName::to_string_with`] for others.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_with(WalSegSize::DEFAULT))
    }
}
