//! The incremental WAL decoder: feed bytes, poll records.
//!
//! [`WalDecoder`] consumes a contiguous run of raw WAL bytes (whole segments, or arbitrary
//! pieces of the replication stream) and yields records in LSN order. It validates every page
//! header it crosses, reassembles records split across pages and segments, and checks every
//! record's CRC-32C.
//!
//! # Invariants
//!
//! - `pos` is the LSN of the next unconsumed input byte; input must be fed contiguously.
//! - A record that fits on one page is returned as a slice of the input buffer (no copy).
//!   A record that spans pages is copied into a reassembly buffer as its pages arrive, so the
//!   cost of decoding is linear in the input whatever the chunking.
//! - Memory is the unconsumed input plus the largest record being reassembled; the reassembly
//!   buffer grows only with bytes that passed continuation-header checks, so a corrupt length
//!   field cannot make it allocate.
//! - Every loop step either consumes input, changes phase, or returns, so `poll` terminates.
//! - Where PostgreSQL's own reader would say "end of WAL" (a zero length, a recycled page, a
//!   bad CRC, a broken prev-link ...), the decoder returns [`Poll::End`] with the position and
//!   the reason. [`EndOfWal::is_clean`] tells the ordinary tails (zeros, recycled pages, input
//!   that stops mid-record) from invalid data. Only input that cannot be this cluster's WAL at
//!   all (unsupported magic on the first page, a different system identifier or segment size)
//!   is a [`DecodeError`].
//!
//! Checks follow PostgreSQL's `XLogReaderValidatePageHeader`, `ValidXLogRecordHeader` and
//! `XLogDecodeNextRecord` (src/backend/access/transam/xlogreader.c).

use std::borrow::Cow;

use crate::error::DecodeError;
use crate::lsn::{Lsn, TimeLineId, WalSegSize};
use crate::page::{
    DEFAULT_BLCKSZ, PageHeader, PgVersion, SIZE_OF_LONG_PHD, XLP_ALL_FLAGS, XLP_LONG_HEADER,
    header_size_at,
};
use crate::record::{Record, RecordHeader, SIZE_OF_XLOG_RECORD, is_valid_rmid};

/// PostgreSQL's `XLogRecordMaxSize`: no valid record is longer.
pub const MAX_RECORD_SIZE: u32 = 1020 * 1024 * 1024;

const RM_XLOG_ID: u8 = 0;
const XLOG_SWITCH: u8 = 0x40;

/// Decoder settings.
#[derive(Clone, Copy, Debug)]
pub struct DecoderConfig {
    /// The cluster's `wal_segment_size`.
    pub seg_size: WalSegSize,
    /// The cluster's `wal_block_size` (8192 unless built otherwise).
    pub blcksz: u32,
    /// The expected major version. `None`: learn it from the first page header.
    pub version: Option<PgVersion>,
    /// The expected system identifier. `None`: learn it from the first long header.
    pub sysid: Option<u64>,
}

impl DecoderConfig {
    /// Default block size, learn version and system id from the WAL.
    pub fn new(seg_size: WalSegSize) -> Self {
        DecoderConfig {
            seg_size,
            blcksz: DEFAULT_BLCKSZ,
            version: None,
            sysid: None,
        }
    }

    /// Default block size, learn the version, and expect this cluster's system id.
    pub fn for_cluster(seg_size: WalSegSize, sysid: u64) -> Self {
        DecoderConfig {
            sysid: Some(sysid),
            ..DecoderConfig::new(seg_size)
        }
    }
}

/// Where decoding begins.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StartAt {
    /// The first byte of a segment. A record continued from the previous segment is skipped
    /// (PostgreSQL's `XLogFindNextRecord`).
    SegmentStart(Lsn),
    /// A known record boundary (e.g. a checkpoint's redo pointer, or where an earlier decoder
    /// stopped). Requires [`DecoderConfig::version`].
    Record(Lsn),
}

/// Why valid WAL ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EndReason {
    /// A record length of zero, or a page of zeros: WAL was never written here.
    Zeroed,
    /// A page whose `xlp_pageaddr` belongs to an older position: a recycled segment.
    RecycledPage {
        /// The page address found.
        found: Lsn,
    },
    /// The input stopped ([`WalDecoder::finish`]) before the next complete record; the rest
    /// may come in the next segment or message.
    InputEnded {
        /// The input ends inside a record (rather than before one, or in switch padding).
        mid_record: bool,
    },
    /// A record length below the 24-byte header size.
    InvalidRecordLength {
        /// The length found.
        len: u32,
    },
    /// A record length above `XLogRecordMaxSize`.
    RecordTooLong {
        /// The length found.
        len: u32,
    },
    /// An unknown resource manager id.
    InvalidRmgr {
        /// The id found.
        rmid: u8,
    },
    /// `xl_prev` does not point at the previous record.
    BadPrevLink {
        /// The link found.
        found: Lsn,
        /// The previous record's start (or, at a random start, an upper bound).
        expected: Lsn,
    },
    /// The record's CRC-32C does not match its content.
    BadCrc {
        /// CRC stored in the record.
        stored: u32,
        /// CRC computed over the record.
        computed: u32,
    },
    /// A page header with the wrong magic.
    BadMagic {
        /// The magic found.
        magic: u16,
        /// At this page.
        page: Lsn,
    },
    /// A page header with unknown flag bits, or a long-header flag where it does not belong.
    BadPageInfo {
        /// The flags found.
        info: u16,
        /// At this page.
        page: Lsn,
    },
    /// A page's timeline is lower than an earlier page's.
    TimelineWentBack {
        /// The timeline found.
        found: TimeLineId,
        /// The highest timeline seen before.
        previous: TimeLineId,
        /// At this page.
        page: Lsn,
    },
    /// A record continues onto a page that does not say it holds a continuation.
    MissingContrecord {
        /// At this page.
        page: Lsn,
    },
    /// The continuation length on a page does not match the record being reassembled.
    BadContrecordLength {
        /// `xlp_rem_len` found.
        found: u32,
        /// Bytes still expected.
        expected: u32,
        /// At this page.
        page: Lsn,
    },
    /// A record was expected at a page start, but the page says it begins with a continuation.
    UnexpectedContrecord {
        /// At this page.
        page: Lsn,
    },
}

/// The end of valid WAL: the position where the next record would have started, and why it
/// could not be read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EndOfWal {
    /// Where the unreadable record (or page) starts. All WAL before it was valid.
    pub lsn: Lsn,
    /// Why.
    pub reason: EndReason,
}

impl EndOfWal {
    /// True for the ordinary tails of WAL: never-written zeros, a recycled page, or input
    /// that stopped mid-record. False for data that is present but invalid (a bad CRC, a bad
    /// header), which in the middle of an archive means corruption.
    pub fn is_clean(&self) -> bool {
        matches!(
            self.reason,
            EndReason::Zeroed | EndReason::RecycledPage { .. } | EndReason::InputEnded { .. }
        )
    }
}

impl std::fmt::Display for EndOfWal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = self.lsn;
        match self.reason {
            EndReason::Zeroed => write!(f, "end of WAL at {at}: zeroed"),
            EndReason::RecycledPage { found } => {
                write!(
                    f,
                    "end of WAL at {at}: recycled page (page address {found})"
                )
            }
            EndReason::InputEnded { mid_record: true } => {
                write!(f, "end of input inside the record at {at}")
            }
            EndReason::InputEnded { mid_record: false } => write!(f, "end of input at {at}"),
            EndReason::InvalidRecordLength { len } => {
                write!(
                    f,
                    "invalid record length at {at}: expected at least 24, got {len}"
                )
            }
            EndReason::RecordTooLong { len } => write!(f, "record length {len} at {at} too long"),
            EndReason::InvalidRmgr { rmid } => {
                write!(f, "invalid resource manager ID {rmid} at {at}")
            }
            EndReason::BadPrevLink { found, expected } => {
                write!(
                    f,
                    "record with incorrect prev-link {found} at {at} (expected {expected})"
                )
            }
            EndReason::BadCrc { stored, computed } => write!(
                f,
                "incorrect resource manager data checksum in record at {at} (stored {stored:08X}, computed {computed:08X})"
            ),
            EndReason::BadMagic { magic, page } => {
                write!(f, "invalid magic number {magic:04X} in page at {page}")
            }
            EndReason::BadPageInfo { info, page } => {
                write!(f, "invalid info bits {info:04X} in page at {page}")
            }
            EndReason::TimelineWentBack {
                found,
                previous,
                page,
            } => write!(
                f,
                "out-of-sequence timeline ID {found} (after {previous}) in page at {page}"
            ),
            EndReason::MissingContrecord { page } => {
                write!(f, "there is no contrecord flag at {page} (record at {at})")
            }
            EndReason::BadContrecordLength {
                found,
                expected,
                page,
            } => write!(
                f,
                "invalid contrecord length {found} (expected {expected}) at {page} (record at {at})"
            ),
            EndReason::UnexpectedContrecord { page } => {
                write!(f, "contrecord is requested by {page}")
            }
        }
    }
}

/// What [`WalDecoder::poll`] found.
#[derive(Debug)]
pub enum Poll<'a> {
    /// The next record.
    Record(Record<'a>),
    /// More input is needed (call [`WalDecoder::feed`], or [`WalDecoder::finish`] if none will come).
    NeedMore,
    /// Valid WAL ended. Every later poll returns the same.
    End(EndOfWal),
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Skipping `remaining` bytes of a record continued from before the start.
    /// `None` until the first page header says how many.
    SkipCont {
        remaining: Option<u32>,
    },
    /// At a record start.
    RecordStart,
    /// Reassembling a record in `rec_buf`.
    InRecord {
        start: Lsn,
        tot_len: u32,
        got: u32,
        header_checked: bool,
    },
    /// After an `XLOG_SWITCH`: the rest of the segment is padding.
    SwitchPadding,
    Ended(EndOfWal),
    Failed,
}

/// The incremental decoder. See the module docs.
#[derive(Debug)]
pub struct WalDecoder<'a> {
    cfg: DecoderConfig,
    buf: Cow<'a, [u8]>,
    rd: usize,
    pos: Lsn,
    skip: u64,
    phase: Phase,
    rec_buf: Vec<u8>,
    prev: Option<Lsn>,
    tli: Option<TimeLineId>,
    seen_page: bool,
    input_done: bool,
    error: Option<DecodeError>,
    overwritten: Vec<Lsn>,
}

impl<'a> WalDecoder<'a> {
    /// A decoder that expects input starting at `start`.
    pub fn new(cfg: DecoderConfig, start: StartAt) -> Result<Self, DecodeError> {
        let (pos, phase) = match start {
            StartAt::SegmentStart(lsn) => {
                if lsn.segment_offset(cfg.seg_size) != 0 {
                    return Err(DecodeError::Misuse {
                        lsn,
                        reason: "segment start is not at a segment boundary",
                    });
                }
                (lsn, Phase::SkipCont { remaining: None })
            }
            StartAt::Record(lsn) => {
                if cfg.version.is_none() {
                    return Err(DecodeError::Misuse {
                        lsn,
                        reason: "starting at a record boundary needs the PostgreSQL version",
                    });
                }
                if lsn.0 % 8 != 0 {
                    return Err(DecodeError::Misuse {
                        lsn,
                        reason: "record start is not 8-byte aligned",
                    });
                }
                let off = lsn.page_offset(cfg.blcksz);
                if off != 0 && off < header_size_at(lsn.segment_offset(cfg.seg_size)) as u64 {
                    return Err(DecodeError::Misuse {
                        lsn,
                        reason: "record start is inside a page header",
                    });
                }
                (lsn, Phase::RecordStart)
            }
        };
        if pos.0 >= Self::limit(cfg.seg_size) {
            return Err(DecodeError::Misuse {
                lsn: pos,
                reason: "start is in the last possible WAL segment",
            });
        }
        if !cfg.blcksz.is_power_of_two() || !(1024..=65536).contains(&cfg.blcksz) {
            return Err(DecodeError::Misuse {
                lsn: pos,
                reason: "block size must be a power of two from 1 kB to 64 kB",
            });
        }
        Ok(WalDecoder {
            cfg,
            buf: Cow::Borrowed(&[]),
            rd: 0,
            pos,
            skip: 0,
            phase,
            rec_buf: Vec::new(),
            prev: None,
            tli: None,
            seen_page: false,
            input_done: false,
            error: None,
            overwritten: Vec::new(),
        })
    }

    /// The highest LSN input may reach: the start of the last segment below 2^64 (a segment
    /// there could not end), so position arithmetic never overflows.
    fn limit(seg: WalSegSize) -> u64 {
        u64::MAX - seg.bytes() + 1
    }

    /// How many of `n` more bytes fit below [`WalDecoder::limit`].
    fn room(&self, n: usize) -> usize {
        let left = Self::limit(self.cfg.seg_size).saturating_sub(self.fed_up_to().0);
        n.min(usize::try_from(left).unwrap_or(usize::MAX))
    }

    /// Appends input (copied). Bytes must follow the previously fed ones without gap.
    pub fn feed(&mut self, bytes: &[u8]) {
        let bytes = &bytes[..self.room(bytes.len())];
        if self.rd == self.buf.len() && matches!(self.buf, Cow::Borrowed(_)) {
            self.buf = Cow::Owned(Vec::new());
            self.rd = 0;
        }
        let buf = self.buf.to_mut();
        if self.rd > 0 && (self.rd >= buf.len() / 2 || self.rd > 1 << 20) {
            buf.drain(..self.rd);
            self.rd = 0;
        }
        buf.extend_from_slice(bytes);
    }

    /// Appends input without copying it when all earlier input is consumed (e.g. a whole
    /// segment read into memory); otherwise copies like [`WalDecoder::feed`].
    pub fn feed_borrowed(&mut self, bytes: &'a [u8]) {
        let bytes = &bytes[..self.room(bytes.len())];
        if self.rd == self.buf.len() {
            self.buf = Cow::Borrowed(bytes);
            self.rd = 0;
        } else {
            self.feed(bytes);
        }
    }

    /// Declares that no more input will come: a record left incomplete ends decoding with
    /// [`EndReason::InputEnded`].
    pub fn finish(&mut self) {
        self.input_done = true;
    }

    /// LSN of the next input byte the decoder will consume.
    pub fn position(&self) -> Lsn {
        self.pos
    }

    /// LSN up to which input has been fed.
    pub fn fed_up_to(&self) -> Lsn {
        Lsn(self.pos.0 + (self.buf.len() - self.rd) as u64)
    }

    /// Start of a record being reassembled, if any.
    pub fn pending_record(&self) -> Option<Lsn> {
        match self.phase {
            Phase::InRecord { start, .. } => Some(start),
            _ => None,
        }
    }

    /// The PostgreSQL version, once known.
    pub fn version(&self) -> Option<PgVersion> {
        self.cfg.version
    }

    /// The system identifier, once known.
    pub fn system_id(&self) -> Option<u64> {
        self.cfg.sysid
    }

    /// Start LSNs of records that a crash cut short and recovery overwrote
    /// (`XLP_FIRST_IS_OVERWRITE_CONTRECORD`). They are skipped, as PostgreSQL skips them.
    pub fn overwritten_records(&self) -> &[Lsn] {
        &self.overwritten
    }

    fn avail(&self) -> usize {
        self.buf.len() - self.rd
    }

    fn consume(&mut self, n: usize) {
        self.rd += n;
        self.pos = Lsn(self.pos.0 + n as u64);
    }

    fn end(&mut self, lsn: Lsn, reason: EndReason) -> EndOfWal {
        let e = EndOfWal { lsn, reason };
        self.phase = Phase::Ended(e);
        e
    }

    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.phase = Phase::Failed;
        self.error = Some(e.clone());
        e
    }

    /// Where the record being read (or about to be read) starts, for end-of-WAL reports.
    fn record_anchor(&self) -> Lsn {
        match self.phase {
            Phase::InRecord { start, .. } => start,
            _ => self.pos,
        }
    }

    /// Decodes the next record, if the input holds it.
    #[inline]
    pub fn poll(&mut self) -> Result<Poll<'_>, DecodeError> {
        let blcksz = u64::from(self.cfg.blcksz);
        let page_mask = blcksz - 1;
        loop {
            match self.phase {
                Phase::Ended(e) => return Ok(Poll::End(e)),
                Phase::Failed => {
                    return Err(self.error.clone().unwrap_or(DecodeError::Misuse {
                        lsn: self.pos,
                        reason: "decoder failed earlier",
                    }));
                }
                _ => {}
            }
            if self.skip > 0 {
                let n = self.skip.min(self.avail() as u64) as usize;
                if n == 0 {
                    return Ok(self.need_more());
                }
                self.consume(n);
                self.skip -= n as u64;
                continue;
            }
            if matches!(self.phase, Phase::SwitchPadding) {
                self.phase = Phase::RecordStart;
            }
            if self.pos.0 & page_mask == 0 {
                match self.page_header()? {
                    Some(p) => return Ok(p),
                    None => continue,
                }
            }
            let page_left = (blcksz - (self.pos.0 & page_mask)) as usize;
            match self.phase {
                Phase::SkipCont { remaining } => {
                    let Some(rem) = remaining else {
                        // Only reachable if the start was mid-page, which `new` forbids.
                        self.phase = Phase::RecordStart;
                        continue;
                    };
                    let on_page = (rem as usize).min(page_left);
                    let n = on_page.min(self.avail());
                    if n == 0 && on_page > 0 {
                        return Ok(self.need_more());
                    }
                    self.consume(n);
                    let rem = rem - n as u32;
                    if rem == 0 {
                        self.phase = Phase::RecordStart;
                        let aligned = self.pos.maxalign().unwrap_or(self.pos);
                        self.skip = aligned.0 - self.pos.0;
                    } else {
                        self.phase = Phase::SkipCont {
                            remaining: Some(rem),
                        };
                    }
                }
                Phase::RecordStart => {
                    if self.avail() < 4 {
                        return Ok(self.need_more());
                    }
                    let start = self.pos;
                    let b = &self.buf[self.rd..];
                    let tot_len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    if tot_len == 0 {
                        return Ok(Poll::End(self.end(start, EndReason::Zeroed)));
                    }
                    if (tot_len as usize) < SIZE_OF_XLOG_RECORD {
                        return Ok(Poll::End(
                            self.end(start, EndReason::InvalidRecordLength { len: tot_len }),
                        ));
                    }
                    if tot_len > MAX_RECORD_SIZE {
                        return Ok(Poll::End(
                            self.end(start, EndReason::RecordTooLong { len: tot_len }),
                        ));
                    }
                    if page_left >= SIZE_OF_XLOG_RECORD {
                        if self.avail() < SIZE_OF_XLOG_RECORD {
                            return Ok(self.need_more());
                        }
                        let hdr =
                            RecordHeader::parse(&self.buf[self.rd..self.rd + SIZE_OF_XLOG_RECORD]);
                        if let Some(reason) = self.check_header(start, &hdr) {
                            return Ok(Poll::End(self.end(start, reason)));
                        }
                    }
                    if tot_len as usize <= page_left {
                        let len = tot_len as usize;
                        if self.avail() < len {
                            return Ok(self.need_more());
                        }
                        let from = self.rd;
                        return self.finish_record(start, from, len, true);
                    }
                    // The record continues on the next page(s).
                    let n = page_left.min(self.avail());
                    self.rec_buf.clear();
                    self.rec_buf
                        .extend_from_slice(&self.buf[self.rd..self.rd + n]);
                    self.consume(n);
                    self.phase = Phase::InRecord {
                        start,
                        tot_len,
                        got: n as u32,
                        header_checked: page_left >= SIZE_OF_XLOG_RECORD,
                    };
                }
                Phase::InRecord {
                    start,
                    tot_len,
                    got,
                    header_checked,
                } => {
                    let want = ((tot_len - got) as usize).min(page_left);
                    let n = want.min(self.avail());
                    if n == 0 {
                        return Ok(self.need_more());
                    }
                    self.rec_buf
                        .extend_from_slice(&self.buf[self.rd..self.rd + n]);
                    self.consume(n);
                    let got = got + n as u32;
                    let mut header_checked = header_checked;
                    if !header_checked && got as usize >= SIZE_OF_XLOG_RECORD {
                        let hdr = RecordHeader::parse(&self.rec_buf[..SIZE_OF_XLOG_RECORD]);
                        if let Some(reason) = self.check_header(start, &hdr) {
                            return Ok(Poll::End(self.end(start, reason)));
                        }
                        header_checked = true;
                    }
                    if got == tot_len {
                        return self.finish_record(start, 0, tot_len as usize, false);
                    }
                    self.phase = Phase::InRecord {
                        start,
                        tot_len,
                        got,
                        header_checked,
                    };
                }
                Phase::SwitchPadding | Phase::Ended(_) | Phase::Failed => {}
            }
        }
    }

    fn need_more(&mut self) -> Poll<'static> {
        if self.input_done {
            let at = self.record_anchor();
            let mid_record = matches!(self.phase, Phase::InRecord { .. }) || self.avail() > 0;
            Poll::End(self.end(at, EndReason::InputEnded { mid_record }))
        } else {
            Poll::NeedMore
        }
    }

    /// Header checks of `ValidXLogRecordHeader`. Returns the reason to stop, if any.
    #[inline]
    fn check_header(&self, start: Lsn, hdr: &RecordHeader) -> Option<EndReason> {
        if !is_valid_rmid(hdr.rmid) {
            return Some(EndReason::InvalidRmgr { rmid: hdr.rmid });
        }
        match self.prev {
            Some(prev) if hdr.prev != prev => Some(EndReason::BadPrevLink {
                found: hdr.prev,
                expected: prev,
            }),
            None if hdr.prev >= start => Some(EndReason::BadPrevLink {
                found: hdr.prev,
                expected: start,
            }),
            _ => None,
        }
    }

    /// Verifies the CRC of a complete record and returns it. `in_buf`: the record is
    /// `buf[from..from+len]` and still unconsumed; otherwise it is `rec_buf`.
    #[inline(always)]
    fn finish_record(
        &mut self,
        start: Lsn,
        from: usize,
        len: usize,
        in_buf: bool,
    ) -> Result<Poll<'_>, DecodeError> {
        let bytes: &[u8] = if in_buf {
            &self.buf[from..from + len]
        } else {
            &self.rec_buf[..len]
        };
        let hdr = RecordHeader::parse(&bytes[..SIZE_OF_XLOG_RECORD]);
        let computed = crate::record::record_crc(bytes);
        if computed != hdr.crc {
            return Ok(Poll::End(self.end(
                start,
                EndReason::BadCrc {
                    stored: hdr.crc,
                    computed,
                },
            )));
        }
        if in_buf {
            self.consume(len);
        }
        let end = self.pos;
        self.prev = Some(start);
        let seg = self.cfg.seg_size;
        if hdr.rmid == RM_XLOG_ID && hdr.info & 0xF0 == XLOG_SWITCH {
            // The rest of the segment is padding, page headers included (zeros since PG 18;
            // never to be parsed). The next record starts at the next segment.
            let next_seg = end.prev_segment(seg).0 + 1;
            let target = next_seg.saturating_mul(seg.bytes());
            self.skip = target.saturating_sub(end.0);
            self.phase = Phase::SwitchPadding;
        } else {
            let aligned = end.maxalign().unwrap_or(end);
            let pad = (aligned.0 - end.0) as usize;
            // Consume the alignment padding now when it is there (the common case).
            if in_buf && self.avail() >= pad {
                self.consume(pad);
            } else {
                self.skip = pad as u64;
            }
            self.phase = Phase::RecordStart;
        }
        let data: &[u8] = if in_buf {
            &self.buf[from..from + len]
        } else {
            &self.rec_buf[..len]
        };
        Ok(Poll::Record(Record {
            lsn: start,
            end,
            header: hdr,
            data,
            version: self.cfg.version,
        }))
    }

    /// Reads and validates the page header at `pos` (a page boundary). `Ok(Some(_))` to
    /// return, `Ok(None)` to go on.
    fn page_header(&mut self) -> Result<Option<Poll<'static>>, DecodeError> {
        let page = self.pos;
        let seg_off = page.segment_offset(self.cfg.seg_size);
        let hsize = header_size_at(seg_off);
        let anchor = self.record_anchor();
        if self.avail() < hsize {
            // A zero page can be recognised from its first bytes even when short.
            if self.avail() >= 2
                && self.buf[self.rd] == 0
                && self.buf[self.rd + 1] == 0
                && self.input_done
            {
                return Ok(Some(Poll::End(self.end(anchor, EndReason::Zeroed))));
            }
            return Ok(Some(self.need_more()));
        }
        let raw = &self.buf[self.rd..self.rd + hsize];
        // Short fields always; long fields only where a long header belongs (segment start).
        // A long-header flag elsewhere is caught by the flag check below, never by waiting
        // for bytes that are not part of this header.
        let Some(mut hdr) = PageHeader::parse_short(raw) else {
            return Ok(Some(self.need_more()));
        };
        if seg_off == 0 {
            hdr = PageHeader::parse(raw).unwrap_or(hdr);
        }
        let first = !self.seen_page;
        // Magic.
        match self.cfg.version {
            None => match PgVersion::from_magic(hdr.magic) {
                Some(v) => self.cfg.version = Some(v),
                None if hdr.magic == 0 && raw.iter().all(|&b| b == 0) => {
                    return Ok(Some(Poll::End(self.end(anchor, EndReason::Zeroed))));
                }
                None => {
                    return Err(self.fail(DecodeError::UnsupportedMagic {
                        lsn: page,
                        magic: hdr.magic,
                    }));
                }
            },
            Some(v) if v.magic() != hdr.magic => {
                if raw.iter().all(|&b| b == 0) {
                    return Ok(Some(Poll::End(self.end(anchor, EndReason::Zeroed))));
                }
                if first {
                    return Err(self.fail(match PgVersion::from_magic(hdr.magic) {
                        Some(found) => DecodeError::VersionMismatch {
                            lsn: page,
                            expected: v.major(),
                            found: found.major(),
                        },
                        None => DecodeError::UnsupportedMagic {
                            lsn: page,
                            magic: hdr.magic,
                        },
                    }));
                }
                return Ok(Some(Poll::End(self.end(
                    anchor,
                    EndReason::BadMagic {
                        magic: hdr.magic,
                        page,
                    },
                ))));
            }
            Some(_) => {}
        }
        // Flag bits, and the long header exactly at segment starts.
        if hdr.info & !XLP_ALL_FLAGS != 0 || ((hdr.info & XLP_LONG_HEADER != 0) != (seg_off == 0)) {
            return Ok(Some(Poll::End(self.end(
                anchor,
                EndReason::BadPageInfo {
                    info: hdr.info,
                    page,
                },
            ))));
        }
        if let Some(long) = hdr.long {
            match self.cfg.sysid {
                None => self.cfg.sysid = Some(long.sysid),
                Some(expected) if expected != long.sysid => {
                    return Err(self.fail(DecodeError::SystemIdMismatch {
                        lsn: page,
                        expected,
                        found: long.sysid,
                    }));
                }
                Some(_) => {}
            }
            if long.seg_size != self.cfg.seg_size.get() || long.blcksz != self.cfg.blcksz {
                return Err(self.fail(DecodeError::SizeMismatch {
                    lsn: page,
                    expected_seg: self.cfg.seg_size.get(),
                    found_seg: long.seg_size,
                    expected_blk: self.cfg.blcksz,
                    found_blk: long.blcksz,
                }));
            }
        }
        if hdr.pageaddr != page {
            return Ok(Some(Poll::End(self.end(
                anchor,
                EndReason::RecycledPage {
                    found: hdr.pageaddr,
                },
            ))));
        }
        if let Some(prev) = self.tli
            && hdr.tli < prev
        {
            return Ok(Some(Poll::End(self.end(
                anchor,
                EndReason::TimelineWentBack {
                    found: hdr.tli,
                    previous: prev,
                    page,
                },
            ))));
        }
        self.tli = Some(hdr.tli);
        self.seen_page = true;
        debug_assert!(hsize <= SIZE_OF_LONG_PHD);
        self.consume(hsize);

        match self.phase {
            Phase::InRecord {
                start,
                tot_len,
                got,
                ..
            } => {
                if hdr.is_overwrite_contrecord() {
                    // The record was cut short by a crash; recovery overwrote its tail.
                    self.overwritten.push(start);
                    self.rec_buf.clear();
                    self.phase = Phase::RecordStart;
                } else if !hdr.is_contrecord() {
                    return Ok(Some(Poll::End(
                        self.end(start, EndReason::MissingContrecord { page }),
                    )));
                } else if hdr.rem_len != tot_len - got {
                    return Ok(Some(Poll::End(self.end(
                        start,
                        EndReason::BadContrecordLength {
                            found: hdr.rem_len,
                            expected: tot_len - got,
                            page,
                        },
                    ))));
                }
            }
            Phase::SkipCont { remaining: None } => {
                if hdr.is_contrecord() && !hdr.is_overwrite_contrecord() {
                    self.phase = Phase::SkipCont {
                        remaining: Some(hdr.rem_len),
                    };
                } else {
                    self.phase = Phase::RecordStart;
                }
            }
            Phase::SkipCont {
                remaining: Some(rem),
            } => {
                if hdr.is_overwrite_contrecord() || !hdr.is_contrecord() || hdr.rem_len != rem {
                    // Not the continuation we were skipping: start reading records here.
                    self.phase = Phase::RecordStart;
                }
            }
            Phase::RecordStart => {
                if hdr.is_contrecord() {
                    return Ok(Some(Poll::End(
                        self.end(page, EndReason::UnexpectedContrecord { page }),
                    )));
                }
            }
            Phase::SwitchPadding | Phase::Ended(_) | Phase::Failed => {}
        }
        Ok(None)
    }
}
