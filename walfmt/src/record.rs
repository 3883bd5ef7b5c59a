//! WAL records: the 24-byte `XLogRecord` header, CRC-32C, the block-reference walk that
//! finds the main data, and typed decoding of the records an archiver needs.
//!
//! Header layout (little-endian): `xl_tot_len u32 @0`, `xl_xid u32 @4`, `xl_prev u64 @8`,
//! `xl_info u8 @16`, `xl_rmid u8 @17`, 2 padding bytes, `xl_crc u32 @20`.
//!
//! The CRC covers the record body `[24..tot_len)` first, then the header's first 20 bytes.
//!
//! Decoding here is total: any byte string gives a value or a [`RecordFormatError`], never a
//! panic. Reads are bounds-checked `from_le_bytes` on slices, never casts.

use crate::lsn::{Lsn, TimeLineId};
use crate::page::PgVersion;
use crate::time::PgTimestamp;

/// Size of `XLogRecord`.
pub const SIZE_OF_XLOG_RECORD: usize = 24;

/// Resource manager ids of 15–18 (`rmgrlist.h`), as `pg_waldump` names them.
pub const RMGR_NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

/// `RM_XLOG_ID`.
pub const RM_XLOG_ID: u8 = 0;
/// `RM_XACT_ID`.
pub const RM_XACT_ID: u8 = 1;
/// Highest built-in rmgr id.
pub const RM_MAX_BUILTIN_ID: u8 = 21;
/// Lowest custom rmgr id (15+).
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// XLOG rmgr info codes (`info & 0xF0`).
pub mod xlog_info {
    /// `XLOG_CHECKPOINT_SHUTDOWN`.
    pub const CHECKPOINT_SHUTDOWN: u8 = 0x00;
    /// `XLOG_CHECKPOINT_ONLINE`.
    pub const CHECKPOINT_ONLINE: u8 = 0x10;
    /// `XLOG_NOOP`.
    pub const NOOP: u8 = 0x20;
    /// `XLOG_NEXTOID`.
    pub const NEXTOID: u8 = 0x30;
    /// `XLOG_SWITCH`.
    pub const SWITCH: u8 = 0x40;
    /// `XLOG_BACKUP_END`.
    pub const BACKUP_END: u8 = 0x50;
    /// `XLOG_PARAMETER_CHANGE`.
    pub const PARAMETER_CHANGE: u8 = 0x60;
    /// `XLOG_RESTORE_POINT`.
    pub const RESTORE_POINT: u8 = 0x70;
    /// `XLOG_FPW_CHANGE`.
    pub const FPW_CHANGE: u8 = 0x80;
    /// `XLOG_END_OF_RECOVERY`.
    pub const END_OF_RECOVERY: u8 = 0x90;
    /// `XLOG_FPI_FOR_HINT`.
    pub const FPI_FOR_HINT: u8 = 0xA0;
    /// `XLOG_FPI`.
    pub const FPI: u8 = 0xB0;
    /// `XLOG_OVERWRITE_CONTRECORD`.
    pub const OVERWRITE_CONTRECORD: u8 = 0xD0;
    /// `XLOG_CHECKPOINT_REDO` (17+).
    pub const CHECKPOINT_REDO: u8 = 0xE0;
}

/// Transaction rmgr info codes (`info & 0x70`).
pub mod xact_info {
    /// `XLOG_XACT_COMMIT`.
    pub const COMMIT: u8 = 0x00;
    /// `XLOG_XACT_PREPARE`.
    pub const PREPARE: u8 = 0x10;
    /// `XLOG_XACT_ABORT`.
    pub const ABORT: u8 = 0x20;
    /// `XLOG_XACT_COMMIT_PREPARED`.
    pub const COMMIT_PREPARED: u8 = 0x30;
    /// `XLOG_XACT_ABORT_PREPARED`.
    pub const ABORT_PREPARED: u8 = 0x40;
    /// `XLOG_XACT_ASSIGNMENT`.
    pub const ASSIGNMENT: u8 = 0x50;
    /// `XLOG_XACT_INVALIDATIONS`.
    pub const INVALIDATIONS: u8 = 0x60;
    /// `XLOG_XACT_OPMASK`.
    pub const OPMASK: u8 = 0x70;
    /// `XLOG_XACT_HAS_INFO`.
    pub const HAS_INFO: u8 = 0x80;
}

const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILELOCATORS: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
const XACT_XINFO_HAS_ORIGIN: u32 = 1 << 5;
const XACT_XINFO_HAS_GID: u32 = 1 << 7;
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;

/// True for the rmgr ids PostgreSQL 15–18 accept (built-in or custom).
pub fn is_valid_rmid(rmid: u8) -> bool {
    rmid <= RM_MAX_BUILTIN_ID || rmid >= RM_MIN_CUSTOM_ID
}

/// The name `pg_waldump` prints for an rmgr id.
pub fn rmgr_name(rmid: u8) -> String {
    match RMGR_NAMES.get(rmid as usize) {
        Some(n) => (*n).to_owned(),
        None => format!("custom{rmid:03}"),
    }
}

/// The CRC-32C of a complete record, as PostgreSQL computes it.
#[inline]
pub fn record_crc(rec: &[u8]) -> u32 {
    let body = rec.get(SIZE_OF_XLOG_RECORD..).unwrap_or(&[]);
    let head = rec.get(..20).unwrap_or(rec);
    crate::crc::two_part(0, body, head)
}

/// The fixed record header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordHeader {
    /// `xl_tot_len`.
    pub tot_len: u32,
    /// `xl_xid`.
    pub xid: u32,
    /// `xl_prev`.
    pub prev: Lsn,
    /// `xl_info`.
    pub info: u8,
    /// `xl_rmid`.
    pub rmid: u8,
    /// `xl_crc`.
    pub crc: u32,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}
fn i64_at(b: &[u8], off: usize) -> Option<i64> {
    Some(i64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

impl RecordHeader {
    /// Decodes a header from exactly (at least) 24 bytes; missing bytes read as zero.
    pub fn parse(b: &[u8]) -> RecordHeader {
        RecordHeader {
            tot_len: u32_at(b, 0).unwrap_or(0),
            xid: u32_at(b, 4).unwrap_or(0),
            prev: Lsn(u64_at(b, 8).unwrap_or(0)),
            info: b.get(16).copied().unwrap_or(0),
            rmid: b.get(17).copied().unwrap_or(0),
            crc: u32_at(b, 20).unwrap_or(0),
        }
    }
}

/// A complete, CRC-checked record.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    /// Start LSN (where `pg_waldump` says `lsn:`).
    pub lsn: Lsn,
    /// LSN just past the record's last byte (PostgreSQL's `EndRecPtr`).
    pub end: Lsn,
    /// The header.
    pub header: RecordHeader,
    /// The whole record, header included, page headers removed.
    pub data: &'a [u8],
    /// The version whose format the record is in, if known.
    pub version: Option<PgVersion>,
}

/// The structure of a record body: where main data is, and how much is full-page images.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlockLayout {
    /// Number of block references.
    pub blocks: u32,
    /// Sum of the stored image lengths (`pg_waldump`'s `tot - rec`).
    pub fpi_len: u32,
    /// Offset of the main data in the record.
    pub main_off: usize,
    /// Length of the main data.
    pub main_len: usize,
}

/// A record whose body does not follow the layout rules (`DecodeXLogRecord`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed record at {lsn}: {reason}")]
pub struct RecordFormatError {
    /// The record's start.
    pub lsn: Lsn,
    /// What is wrong.
    pub reason: &'static str,
}

impl<'a> Record<'a> {
    /// `xl_rmid`.
    pub fn rmid(&self) -> u8 {
        self.header.rmid
    }

    /// `xl_info`.
    pub fn info(&self) -> u8 {
        self.header.info
    }

    /// `xl_tot_len`.
    pub fn len(&self) -> u32 {
        self.header.tot_len
    }

    /// Never true: a record has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Walks the block references (`DecodeXLogRecord`) to find the main data.
    pub fn layout(&self) -> Result<BlockLayout, RecordFormatError> {
        let err = |reason| RecordFormatError {
            lsn: self.lsn,
            reason,
        };
        let rec = self.data;
        let tot = (self.header.tot_len as usize).min(rec.len());
        // Fast path: no block references, short main data (every commit record).
        if tot >= SIZE_OF_XLOG_RECORD + 2
            && rec[SIZE_OF_XLOG_RECORD] == XLR_BLOCK_ID_DATA_SHORT
            && SIZE_OF_XLOG_RECORD + 2 + rec[SIZE_OF_XLOG_RECORD + 1] as usize == tot
        {
            let main_len = rec[SIZE_OF_XLOG_RECORD + 1] as usize;
            return Ok(BlockLayout {
                blocks: 0,
                fpi_len: 0,
                main_off: tot - main_len,
                main_len,
            });
        }
        let mut off = SIZE_OF_XLOG_RECORD;
        let mut remaining = tot
            .checked_sub(SIZE_OF_XLOG_RECORD)
            .ok_or(err("shorter than its header"))?;
        let mut datatotal: usize = 0;
        let mut main_len: usize = 0;
        let mut blocks = 0u32;
        let mut fpi_len = 0u32;
        let mut last_block: Option<u8> = None;
        let mut have_rel = false;
        let take = |off: &mut usize,
                    remaining: &mut usize,
                    n: usize|
         -> Result<usize, RecordFormatError> {
            if *remaining < n {
                return Err(err("block header runs past the record"));
            }
            let at = *off;
            *off += n;
            *remaining -= n;
            Ok(at)
        };
        while remaining > datatotal {
            let at = take(&mut off, &mut remaining, 1)?;
            let id = rec[at];
            match id {
                XLR_BLOCK_ID_DATA_SHORT => {
                    let at = take(&mut off, &mut remaining, 1)?;
                    main_len = rec[at] as usize;
                    datatotal += main_len;
                    break;
                }
                XLR_BLOCK_ID_DATA_LONG => {
                    let at = take(&mut off, &mut remaining, 4)?;
                    main_len = u32_at(rec, at).ok_or(err("truncated"))? as usize;
                    datatotal += main_len;
                    break;
                }
                XLR_BLOCK_ID_ORIGIN => {
                    take(&mut off, &mut remaining, 2)?;
                }
                XLR_BLOCK_ID_TOPLEVEL_XID => {
                    take(&mut off, &mut remaining, 4)?;
                }
                0..=XLR_MAX_BLOCK_ID => {
                    if last_block.is_some_and(|l| id <= l) {
                        return Err(err("out-of-order block_id"));
                    }
                    last_block = Some(id);
                    blocks += 1;
                    let at = take(&mut off, &mut remaining, 3)?;
                    let fork_flags = rec[at];
                    let data_len = u16_at(rec, at + 1).ok_or(err("truncated"))? as usize;
                    let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
                    if has_data != (data_len > 0) {
                        return Err(err("BKPBLOCK_HAS_DATA does not match the data length"));
                    }
                    datatotal += data_len;
                    if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                        let at = take(&mut off, &mut remaining, 5)?;
                        let bimg_len = u16_at(rec, at).ok_or(err("truncated"))?;
                        let bimg_info = rec[at + 4];
                        if bimg_info & BKPIMAGE_HAS_HOLE != 0
                            && bimg_info & BKPIMAGE_COMPRESSED != 0
                        {
                            take(&mut off, &mut remaining, 2)?;
                        }
                        if bimg_len == 0 {
                            return Err(err("block image with zero length"));
                        }
                        datatotal += bimg_len as usize;
                        fpi_len += u32::from(bimg_len);
                    }
                    if fork_flags & BKPBLOCK_SAME_REL == 0 {
                        take(&mut off, &mut remaining, 12)?;
                        have_rel = true;
                    } else if !have_rel {
                        return Err(err("BKPBLOCK_SAME_REL set but no previous rel"));
                    }
                    take(&mut off, &mut remaining, 4)?;
                }
                _ => return Err(err("invalid block_id")),
            }
        }
        if remaining != datatotal {
            return Err(err("record length does not match its block headers"));
        }
        let main_off = tot - main_len;
        Ok(BlockLayout {
            blocks,
            fpi_len,
            main_off,
            main_len,
        })
    }

    /// The main data (the last `main_len` bytes).
    pub fn main_data(&self) -> Result<&'a [u8], RecordFormatError> {
        let l = self.layout()?;
        Ok(&self.data[l.main_off..l.main_off + l.main_len])
    }

    /// Decodes the record types an archiver cares about.
    pub fn decode(&self) -> Result<Decoded, RecordFormatError> {
        let rmid = self.header.rmid;
        if rmid != RM_XLOG_ID && rmid != RM_XACT_ID {
            return Ok(Decoded::Other);
        }
        let err = |reason| RecordFormatError {
            lsn: self.lsn,
            reason,
        };
        let info = self.header.info;
        if rmid == RM_XLOG_ID {
            let code = info & 0xF0;
            if code == xlog_info::SWITCH {
                return Ok(Decoded::Switch);
            }
            let interesting = matches!(
                code,
                xlog_info::CHECKPOINT_SHUTDOWN
                    | xlog_info::CHECKPOINT_ONLINE
                    | xlog_info::RESTORE_POINT
                    | xlog_info::END_OF_RECOVERY
                    | xlog_info::OVERWRITE_CONTRECORD
                    | xlog_info::CHECKPOINT_REDO
                    | xlog_info::BACKUP_END
            );
            if !interesting {
                return Ok(Decoded::Other);
            }
            let m = self.main_data()?;
            let short = || err("main data too short");
            return Ok(match code {
                xlog_info::CHECKPOINT_SHUTDOWN | xlog_info::CHECKPOINT_ONLINE => {
                    Decoded::Checkpoint(Checkpoint {
                        shutdown: code == xlog_info::CHECKPOINT_SHUTDOWN,
                        redo: Lsn(u64_at(m, 0).ok_or_else(short)?),
                        tli: TimeLineId(u32_at(m, 8).ok_or_else(short)?),
                        prev_tli: TimeLineId(u32_at(m, 12).ok_or_else(short)?),
                        full_page_writes: *m.get(16).ok_or_else(short)? != 0,
                        next_xid: u64_at(m, 24).ok_or_else(short)?,
                        next_oid: u32_at(m, 32).ok_or_else(short)?,
                        time_unix: i64_at(m, 64).ok_or_else(short)?,
                        oldest_active_xid: u32_at(m, 80).ok_or_else(short)?,
                    })
                }
                xlog_info::RESTORE_POINT => {
                    let time = PgTimestamp(i64_at(m, 0).ok_or_else(short)?);
                    let raw = m.get(8..).ok_or_else(short)?;
                    let raw = &raw[..raw.len().min(64)];
                    let n = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                    Decoded::RestorePoint(RestorePoint {
                        time,
                        name: String::from_utf8_lossy(&raw[..n]).into_owned(),
                    })
                }
                xlog_info::END_OF_RECOVERY => Decoded::EndOfRecovery(EndOfRecovery {
                    time: PgTimestamp(i64_at(m, 0).ok_or_else(short)?),
                    tli: TimeLineId(u32_at(m, 8).ok_or_else(short)?),
                    prev_tli: TimeLineId(u32_at(m, 12).ok_or_else(short)?),
                }),
                xlog_info::OVERWRITE_CONTRECORD => Decoded::OverwriteContrecord {
                    overwritten: Lsn(u64_at(m, 0).ok_or_else(short)?),
                    time: PgTimestamp(i64_at(m, 8).ok_or_else(short)?),
                },
                xlog_info::CHECKPOINT_REDO => Decoded::CheckpointRedo,
                _ => Decoded::BackupEnd {
                    start: Lsn(u64_at(m, 0).ok_or_else(short)?),
                },
            });
        }
        let op = info & xact_info::OPMASK;
        let kind = match op {
            xact_info::COMMIT => XactKind::Commit,
            xact_info::COMMIT_PREPARED => XactKind::CommitPrepared,
            xact_info::ABORT => XactKind::Abort,
            xact_info::ABORT_PREPARED => XactKind::AbortPrepared,
            xact_info::PREPARE => return Ok(Decoded::Prepare),
            _ => return Ok(Decoded::Other),
        };
        let m = self.main_data()?;
        Ok(Decoded::Xact(
            parse_xact(m, info, kind, self.header.xid, self.version)
                .ok_or_else(|| err("transaction record too short"))?,
        ))
    }
}

/// Walks `xl_xact_commit` / `xl_xact_abort` as `ParseCommitRecord`/`ParseAbortRecord` do
/// (src/backend/access/rmgrdesc/xactdesc.c).
fn parse_xact(
    m: &[u8],
    info: u8,
    kind: XactKind,
    header_xid: u32,
    version: Option<PgVersion>,
) -> Option<XactEnd> {
    let time = PgTimestamp(i64_at(m, 0)?);
    let mut off = 8usize;
    let xinfo = if info & xact_info::HAS_INFO != 0 {
        let x = u32_at(m, off)?;
        off += 4;
        x
    } else {
        0
    };
    let count = |off: &mut usize, item: usize| -> Option<u32> {
        let n = u32_at(m, *off)?;
        let n_i = i32::try_from(n).ok().filter(|n| *n >= 0)? as usize;
        *off = off.checked_add(4)?.checked_add(n_i.checked_mul(item)?)?;
        if *off > m.len() {
            return None;
        }
        Some(n)
    };
    let mut subxacts = 0;
    let mut twophase_xid = None;
    let mut gid = None;
    // Parsing past the dropped-stats array needs its item size, which changed in 18.
    let mut complete = true;
    if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
        off += 8;
    }
    if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
        subxacts = count(&mut off, 4)?;
    }
    if xinfo & XACT_XINFO_HAS_RELFILELOCATORS != 0 {
        count(&mut off, 12)?;
    }
    if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        match version {
            Some(PgVersion::V18) => {
                count(&mut off, 16)?;
            }
            Some(_) => {
                count(&mut off, 12)?;
            }
            None => complete = false,
        }
    }
    if complete {
        let is_commit = matches!(kind, XactKind::Commit | XactKind::CommitPrepared);
        if is_commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
            count(&mut off, 16)?;
        }
        if xinfo & XACT_XINFO_HAS_TWOPHASE != 0 {
            twophase_xid = Some(u32_at(m, off)?);
            off += 4;
            if xinfo & XACT_XINFO_HAS_GID != 0 {
                let rest = m.get(off..)?;
                let n = rest.iter().position(|&b| b == 0)?;
                gid = Some(String::from_utf8_lossy(&rest[..n]).into_owned());
                off += n + 1;
            }
        }
        if xinfo & XACT_XINFO_HAS_ORIGIN != 0 {
            m.get(off..off.checked_add(16)?)?;
        }
    }
    let xid = match kind {
        XactKind::CommitPrepared | XactKind::AbortPrepared => twophase_xid.unwrap_or(0),
        _ => header_xid,
    };
    Some(XactEnd {
        kind,
        time,
        xid,
        subxacts,
        gid,
    })
}

/// Typed content of the records an archiver needs.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Decoded {
    /// `XLOG_SWITCH`: the rest of the segment is padding.
    Switch,
    /// A checkpoint record.
    Checkpoint(Checkpoint),
    /// `XLOG_CHECKPOINT_REDO` (17+): its LSN is an online checkpoint's redo pointer.
    CheckpointRedo,
    /// `XLOG_RESTORE_POINT`.
    RestorePoint(RestorePoint),
    /// `XLOG_END_OF_RECOVERY`: a promotion started a new timeline.
    EndOfRecovery(EndOfRecovery),
    /// `XLOG_OVERWRITE_CONTRECORD`: a record cut by a crash was abandoned.
    OverwriteContrecord {
        /// The abandoned record's start.
        overwritten: Lsn,
        /// When.
        time: PgTimestamp,
    },
    /// `XLOG_BACKUP_END`.
    BackupEnd {
        /// The backup's start (redo) LSN.
        start: Lsn,
    },
    /// A commit or abort, plain or prepared.
    Xact(XactEnd),
    /// `XLOG_XACT_PREPARE` (not a commit; recovery targets ignore it).
    Prepare,
    /// Anything else.
    Other,
}

/// The main fields of `CheckPoint`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Checkpoint {
    /// Shutdown (true) or online checkpoint.
    pub shutdown: bool,
    /// The redo pointer.
    pub redo: Lsn,
    /// `ThisTimeLineID`.
    pub tli: TimeLineId,
    /// `PrevTimeLineID`; differs from `tli` at the start of a new timeline.
    pub prev_tli: TimeLineId,
    /// `fullPageWrites`.
    pub full_page_writes: bool,
    /// `nextXid` (full, epoch in the high half).
    pub next_xid: u64,
    /// `nextOid`.
    pub next_oid: u32,
    /// `time`: Unix seconds (a `pg_time_t`, not a `TimestampTz`).
    pub time_unix: i64,
    /// `oldestActiveXid`.
    pub oldest_active_xid: u32,
}

/// `xl_restore_point`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RestorePoint {
    /// When it was created.
    pub time: PgTimestamp,
    /// Its name.
    pub name: String,
}

/// `xl_end_of_recovery`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EndOfRecovery {
    /// When recovery ended.
    pub time: PgTimestamp,
    /// The new timeline.
    pub tli: TimeLineId,
    /// The timeline it branched from.
    pub prev_tli: TimeLineId,
}

/// Which kind of transaction end.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum XactKind {
    /// `COMMIT`.
    Commit,
    /// `COMMIT PREPARED`.
    CommitPrepared,
    /// `ABORT`.
    Abort,
    /// `ROLLBACK PREPARED`.
    AbortPrepared,
}

impl XactKind {
    /// True for the two commit kinds.
    pub fn is_commit(self) -> bool {
        matches!(self, XactKind::Commit | XactKind::CommitPrepared)
    }

    /// The name `pg_waldump` prints.
    pub fn name(self) -> &'static str {
        match self {
            XactKind::Commit => "COMMIT",
            XactKind::CommitPrepared => "COMMIT_PREPARED",
            XactKind::Abort => "ABORT",
            XactKind::AbortPrepared => "ABORT_PREPARED",
        }
    }
}

/// With the `serde` feature: the [`XactKind::name`] text (`COMMIT`, `COMMIT_PREPARED`,
/// `ABORT`, `ABORT_PREPARED`); any other text is an error.
#[cfg(feature = "serde")]
impl serde::Serialize for XactKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for XactKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["COMMIT", "COMMIT_PREPARED", "ABORT", "ABORT_PREPARED"];
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        [
            XactKind::Commit,
            XactKind::CommitPrepared,
            XactKind::Abort,
            XactKind::AbortPrepared,
        ]
        .into_iter()
        .find(|k| k.name() == s)
        .ok_or_else(|| serde::de::Error::unknown_variant(&s, NAMES))
    }
}

/// A commit or abort record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct XactEnd {
    /// Commit or abort, plain or prepared.
    pub kind: XactKind,
    /// `xact_time`: what `recovery_target_time` compares against.
    pub time: PgTimestamp,
    /// The transaction that ended (the prepared one's xid for the prepared kinds; 0 if it
    /// could not be read).
    pub xid: u32,
    /// Number of subtransactions.
    pub subxacts: u32,
    /// The GID of a prepared transaction, if recorded.
    pub gid: Option<String>,
}
