//! Segment summaries: what an archiver records per segment so it can answer "which instants
//! are restorable" without reading WAL again.
//!
//! A record belongs to the segment holding its **start** LSN (the convention of
//! `recovery_target_lsn`). Commit timestamps are not in LSN order (`xact_time` is taken before
//! the commit record is inserted), so a summary keeps both each commit's LSN and time, and the
//! min/max of the times.

use std::collections::BTreeMap;

use crate::decoder::{DecoderConfig, EndOfWal, Poll, StartAt, WalDecoder};
use crate::error::DecodeError;
use crate::lsn::{Lsn, SegNo, TimeLineId, WalSegSize};
use crate::page::PgVersion;
use crate::record::{Decoded, Record, RecordFormatError, XactKind};
use crate::time::PgTimestamp;

/// Cheap pre-filter: can [`Record::decode`] return anything but `Other` for this record?
#[inline]
fn interesting(rmid: u8, info: u8) -> bool {
    match rmid {
        0 => !matches!(info & 0xF0, 0x20 | 0x30 | 0x60 | 0x80 | 0xA0 | 0xB0),
        1 => matches!(info & 0x70, 0x00 | 0x10 | 0x20 | 0x30 | 0x40),
        _ => false,
    }
}

/// One transaction end, as recovery targets see it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct XactEntry {
    /// Start LSN of the commit/abort record (recovery stops *before* it when excluded).
    pub lsn: Lsn,
    /// `xact_time`.
    pub time: PgTimestamp,
    /// The transaction.
    pub xid: u32,
    /// Which kind.
    pub kind: XactKind,
}

/// A named restore point.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RestorePointEntry {
    /// Record start.
    pub lsn: Lsn,
    /// Name.
    pub name: String,
    /// When it was created.
    pub time: PgTimestamp,
}

/// A checkpoint record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CheckpointEntry {
    /// Record start.
    pub lsn: Lsn,
    /// The redo pointer.
    pub redo: Lsn,
    /// Timeline.
    pub tli: TimeLineId,
    /// Previous timeline (differs from `tli` on the first checkpoint of a new timeline).
    pub prev_tli: TimeLineId,
    /// Shutdown checkpoint?
    pub shutdown: bool,
    /// Unix seconds.
    pub time_unix: i64,
}

/// A timeline switch seen in WAL (`XLOG_END_OF_RECOVERY`).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TimelineSwitchEntry {
    /// Record start.
    pub lsn: Lsn,
    /// New timeline.
    pub tli: TimeLineId,
    /// Parent timeline.
    pub prev_tli: TimeLineId,
    /// When.
    pub time: PgTimestamp,
}

/// What one segment holds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SegmentSummary {
    /// The segment.
    pub segno: SegNo,
    /// Start LSN of the first record starting in this segment.
    pub first_lsn: Option<Lsn>,
    /// That record's `xl_prev`: the start of the record before it (in this segment's
    /// predecessor, when the first record here is not preceded by one starting here). Two
    /// consecutive segments belong to one history only if this equals the predecessor's
    /// [`SegmentSummary::last_lsn`].
    pub first_prev: Option<Lsn>,
    /// Start LSN of the last record starting in this segment.
    pub last_lsn: Option<Lsn>,
    /// End of the last record starting here (may lie in the next segment).
    pub last_end: Option<Lsn>,
    /// Records starting here.
    pub records: u64,
    /// Commits (plain and prepared).
    pub commits: u64,
    /// Aborts (plain and prepared).
    pub aborts: u64,
    /// Earliest commit time in the segment.
    pub min_commit_time: Option<PgTimestamp>,
    /// Latest commit time in the segment.
    pub max_commit_time: Option<PgTimestamp>,
    /// Every commit and abort, in LSN order.
    pub xacts: Vec<XactEntry>,
    /// Restore points.
    pub restore_points: Vec<RestorePointEntry>,
    /// Checkpoints.
    pub checkpoints: Vec<CheckpointEntry>,
    /// Timeline switches.
    pub timeline_switches: Vec<TimelineSwitchEntry>,
    /// LSN of an `XLOG_SWITCH` record that ends this segment.
    pub switch_lsn: Option<Lsn>,
    /// Where valid WAL ended, if it ended in this segment.
    pub end_of_wal: Option<EndOfWal>,
    /// Records whose body could not be interpreted although their CRC was valid.
    pub malformed: Vec<RecordFormatError>,
}

impl SegmentSummary {
    /// An empty summary.
    pub fn new(segno: SegNo) -> Self {
        SegmentSummary {
            segno,
            first_lsn: None,
            first_prev: None,
            last_lsn: None,
            last_end: None,
            records: 0,
            commits: 0,
            aborts: 0,
            min_commit_time: None,
            max_commit_time: None,
            xacts: Vec::new(),
            restore_points: Vec::new(),
            checkpoints: Vec::new(),
            timeline_switches: Vec::new(),
            switch_lsn: None,
            end_of_wal: None,
            malformed: Vec::new(),
        }
    }

    /// Adds one record.
    pub fn observe(&mut self, rec: &Record<'_>) {
        self.records += 1;
        if self.first_lsn.is_none() {
            self.first_lsn = Some(rec.lsn);
            self.first_prev = Some(rec.header.prev);
        }
        self.last_lsn = Some(rec.lsn);
        self.last_end = Some(rec.end);
        if !interesting(rec.header.rmid, rec.header.info) {
            return;
        }
        let decoded = match rec.decode() {
            Ok(d) => d,
            Err(e) => {
                self.malformed.push(e);
                return;
            }
        };
        match decoded {
            Decoded::Other
            | Decoded::Prepare
            | Decoded::CheckpointRedo
            | Decoded::BackupEnd { .. } => {}
            Decoded::Xact(x) => {
                if x.kind.is_commit() {
                    self.commits += 1;
                    self.min_commit_time =
                        Some(self.min_commit_time.map_or(x.time, |m| m.min(x.time)));
                    self.max_commit_time =
                        Some(self.max_commit_time.map_or(x.time, |m| m.max(x.time)));
                } else {
                    self.aborts += 1;
                }
                self.xacts.push(XactEntry {
                    lsn: rec.lsn,
                    time: x.time,
                    xid: x.xid,
                    kind: x.kind,
                });
            }
            Decoded::Switch => self.switch_lsn = Some(rec.lsn),
            Decoded::Checkpoint(c) => self.checkpoints.push(CheckpointEntry {
                lsn: rec.lsn,
                redo: c.redo,
                tli: c.tli,
                prev_tli: c.prev_tli,
                shutdown: c.shutdown,
                time_unix: c.time_unix,
            }),
            Decoded::RestorePoint(r) => self.restore_points.push(RestorePointEntry {
                lsn: rec.lsn,
                name: r.name,
                time: r.time,
            }),
            Decoded::EndOfRecovery(e) => self.timeline_switches.push(TimelineSwitchEntry {
                lsn: rec.lsn,
                tli: e.tli,
                prev_tli: e.prev_tli,
                time: e.time,
            }),
            Decoded::OverwriteContrecord { .. } => {}
        }
    }
}

/// Summarises a run of consecutive segments decoded as one stream, so records crossing
/// segment boundaries are reassembled and CRC-checked. Feed the segments in order.
#[derive(Debug)]
pub struct Summarizer<'a> {
    dec: WalDecoder<'a>,
    seg: WalSegSize,
    /// The newest commit seen (in LSN order): its LSN and time.
    last_commit: Option<(Lsn, PgTimestamp)>,
    /// The segment records are currently landing in (the hot path avoids the map).
    current: SegmentSummary,
    done: BTreeMap<SegNo, SegmentSummary>,
    end: Option<EndOfWal>,
}

impl<'a> Summarizer<'a> {
    /// Starts at the beginning of segment `first`.
    pub fn new(cfg: DecoderConfig, first: SegNo) -> Result<Self, DecodeError> {
        let start = first.start_lsn(cfg.seg_size).ok_or(DecodeError::Misuse {
            lsn: Lsn(u64::MAX),
            reason: "segment number out of range",
        })?;
        let dec = WalDecoder::new(cfg, StartAt::SegmentStart(start))?;
        Ok(Summarizer {
            dec,
            seg: cfg.seg_size,
            last_commit: None,
            current: SegmentSummary::new(first),
            done: BTreeMap::new(),
            end: None,
        })
    }

    /// Feeds the next bytes (copied) and summarises every record they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let from = self.dec.fed_up_to();
        self.dec.feed(bytes);
        self.note_fed(from);
        self.drain()
    }

    /// Like [`Summarizer::feed`], without copying when possible.
    pub fn feed_borrowed(&mut self, bytes: &'a [u8]) -> Result<(), DecodeError> {
        let from = self.dec.fed_up_to();
        self.dec.feed_borrowed(bytes);
        self.note_fed(from);
        self.drain()
    }

    /// Every segment fed gets a summary, even one where no record starts.
    fn note_fed(&mut self, from: Lsn) {
        let to = self.dec.fed_up_to();
        if to > from {
            for s in from.segment(self.seg).0..=to.prev_segment(self.seg).0 {
                if s != self.current.segno.0 {
                    self.done
                        .entry(SegNo(s))
                        .or_insert_with(|| SegmentSummary::new(SegNo(s)));
                }
            }
        }
    }

    fn switch_to(&mut self, segno: SegNo) {
        switch_segment(&mut self.current, &mut self.done, segno);
    }

    fn drain(&mut self) -> Result<(), DecodeError> {
        if self.end.is_some() {
            return Ok(());
        }
        loop {
            match self.dec.poll()? {
                Poll::Record(rec) => {
                    let segno = rec.lsn.segment(self.seg);
                    if segno != self.current.segno {
                        // Field-level, not `self.switch_to`: `rec` borrows the decoder.
                        switch_segment(&mut self.current, &mut self.done, segno);
                    }
                    let before = self.current.commits;
                    self.current.observe(&rec);
                    if self.current.commits != before
                        && let Some(x) = self.current.xacts.last()
                    {
                        self.last_commit = Some((x.lsn, x.time));
                    }
                }
                Poll::NeedMore => return Ok(()),
                Poll::End(e) => {
                    self.end = Some(e);
                    let segno = e.lsn.segment(self.seg);
                    if segno != self.current.segno {
                        self.switch_to(segno);
                    }
                    self.current.end_of_wal = Some(e);
                    return Ok(());
                }
            }
        }
    }

    /// Takes the summaries that can no longer change: those of segments before the one where
    /// the next (or pending) record starts. For streaming, where input never finishes.
    pub fn take_complete(&mut self) -> Vec<SegmentSummary> {
        if self.end.is_some() {
            return Vec::new();
        }
        let frontier = self
            .dec
            .pending_record()
            .unwrap_or(self.dec.position())
            .segment(self.seg);
        let keep = self.done.split_off(&frontier);
        let mut out: Vec<SegmentSummary> = std::mem::replace(&mut self.done, keep)
            .into_values()
            .collect();
        if self.current.segno < frontier {
            let next = self
                .done
                .remove(&frontier)
                .unwrap_or_else(|| SegmentSummary::new(frontier));
            out.push(std::mem::replace(&mut self.current, next));
        }
        out.sort_by_key(|s| s.segno);
        out
    }

    /// No more input: returns the summaries of every segment fed, in order.
    pub fn finish(mut self) -> Result<Vec<SegmentSummary>, DecodeError> {
        self.dec.finish();
        self.drain()?;
        let cur = self.current;
        self.done.insert(cur.segno, cur);
        Ok(self.done.into_values().collect())
    }

    /// The PostgreSQL version, once known.
    pub fn version(&self) -> Option<PgVersion> {
        self.dec.version()
    }

    /// The system identifier, once known.
    pub fn system_id(&self) -> Option<u64> {
        self.dec.system_id()
    }

    /// Where valid WAL ended, once it has.
    pub fn end_of_wal(&self) -> Option<EndOfWal> {
        self.end
    }

    /// The last commit (plain or prepared) decoded so far, in LSN order: LSN and time.
    pub fn last_commit(&self) -> Option<(Lsn, PgTimestamp)> {
        self.last_commit
    }
}

/// Files `current` away in `done` and makes `segno`'s summary current.
fn switch_segment(
    current: &mut SegmentSummary,
    done: &mut BTreeMap<SegNo, SegmentSummary>,
    segno: SegNo,
) {
    let next = done
        .remove(&segno)
        .unwrap_or_else(|| SegmentSummary::new(segno));
    let prev = std::mem::replace(current, next);
    done.insert(prev.segno, prev);
}

/// Summarises one standalone segment (its leading continuation is skipped; a record
/// running into the next segment ends it with [`crate::EndReason::InputEnded`]).
pub fn summarize_segment(
    cfg: DecoderConfig,
    segno: SegNo,
    bytes: &[u8],
) -> Result<SegmentSummary, DecodeError> {
    let mut s = Summarizer::new(cfg, segno)?;
    s.feed_borrowed(bytes)?;
    let mut all = s.finish()?;
    let mut out = all
        .iter()
        .position(|x| x.segno == segno)
        .map(|i| all.swap_remove(i))
        .unwrap_or_else(|| SegmentSummary::new(segno));
    // An end beyond the input (the zero-length tail of a full segment) belongs here too.
    if out.end_of_wal.is_none() {
        out.end_of_wal = all.into_iter().find_map(|x| x.end_of_wal);
    }
    Ok(out)
}
