//! Timeline history files (`%08X.history`).
//!
//! The file for timeline N lists every ancestor, one line per switch, oldest first:
//! `<parent tli, decimal>\t<switch point X/X>\t<reason>`. Blank lines and `#` comments are
//! skipped. Parent timelines must strictly increase and be below N. Rules from PostgreSQL's
//! `readTimeLineHistory` (src/backend/access/transam/timeline.c).

use crate::error::ParseError;
use crate::lsn::{Lsn, TimeLineId};

/// One ancestor: timeline `tli` ran from `begin` up to (not including) `end`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub tli: TimeLineId,
    /// Where it began (`0/0` for the first).
    pub begin: Lsn,
    /// The switch point: the first LSN of the next timeline.
    pub end: Lsn,
    /// The free-text reason recovery wrote.
    pub reason: String,
}

/// A parsed history: the ancestors, then the timeline itself, open-ended.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TimelineHistory {
    /// The timeline this file describes.
    pub tli: TimeLineId,
    /// Its ancestors, oldest first.
    pub ancestors: Vec<HistoryEntry>,
}

impl TimelineHistory {
    /// Parses the content of the history file of timeline `tli`.
    pub fn parse(tli: TimeLineId, text: &str) -> Result<TimelineHistory, ParseError> {
        let mut ancestors: Vec<HistoryEntry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let bad = |reason: &str| ParseError::History {
                line: i + 1,
                reason: reason.to_owned(),
            };
            let l = line.trim_start();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let mut parts = l.splitn(3, '\t');
            let t = parts.next().unwrap_or("");
            let sp = parts
                .next()
                .ok_or_else(|| bad("expected <timeline>\\t<switch point>"))?;
            let reason = parts.next().unwrap_or("").trim_end().to_owned();
            let t: u32 = t
                .trim()
                .parse()
                .map_err(|_| bad("timeline id is not a decimal number"))?;
            let end: Lsn = sp
                .trim()
                .parse()
                .map_err(|_| bad("switch point is not an LSN"))?;
            if let Some(last) = ancestors.last() {
                if t <= last.tli.0 {
                    return Err(bad("timeline ids must increase"));
                }
                if end < last.end {
                    return Err(bad("switch points must not go backwards"));
                }
            }
            if t >= tli.0 {
                return Err(bad("ancestor timeline is not below the file's timeline"));
            }
            let begin = ancestors.last().map_or(Lsn(0), |e| e.end);
            ancestors.push(HistoryEntry {
                tli: TimeLineId(t),
                begin,
                end,
                reason,
            });
        }
        Ok(TimelineHistory { tli, ancestors })
    }

    /// The timeline that holds the WAL at `lsn` when following this history
    /// (`tliOfPointInHistory`).
    pub fn timeline_of(&self, lsn: Lsn) -> TimeLineId {
        self.ancestors
            .iter()
            .find(|e| lsn >= e.begin && lsn < e.end)
            .map_or(self.tli, |e| e.tli)
    }

    /// Where this timeline itself begins (the last switch point; `0/0` without ancestors).
    pub fn begin(&self) -> Lsn {
        self.ancestors.last().map_or(Lsn(0), |e| e.end)
    }

    /// The switch point at which `tli` ended, if it is an ancestor.
    pub fn switch_point(&self, tli: TimeLineId) -> Option<Lsn> {
        self.ancestors.iter().find(|e| e.tli == tli).map(|e| e.end)
    }
}
