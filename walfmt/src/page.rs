//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData`) for PostgreSQL 15–18.
//!
//! Layout, little-endian (the native order of x86-64 and aarch64 servers):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 2 | `xlp_magic` (per major version, [`PgVersion`]) |
//! | 2 | 2 | `xlp_info` (flags, [`XLP_FIRST_IS_CONTRECORD`] ...) |
//! | 4 | 4 | `xlp_tli` |
//! | 8 | 8 | `xlp_pageaddr`: LSN of the page's first byte |
//! | 16 | 4 | `xlp_rem_len`: bytes of a continued record still to come |
//! | 20 | 4 | padding (short header is 24 bytes) |
//! | 24 | 8 | `xlp_sysid` (long header only) |
//! | 32 | 4 | `xlp_seg_size` (long header only) |
//! | 36 | 4 | `xlp_xlog_blcksz` (long header only; long header is 40 bytes) |
//!
//! The long header is used on the first page of every segment and only there.

use crate::lsn::{Lsn, TimeLineId, WalSegSize};

/// Size of the short page header.
pub const SIZE_OF_SHORT_PHD: usize = 24;
/// Size of the long page header.
pub const SIZE_OF_LONG_PHD: usize = 40;
/// Page data begins with the rest of a record from an earlier page.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// The 40-byte header (first page of a segment).
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// Full-page images on this page may be removable. Ignored.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// The continuation that was expected here was lost in a crash and overwritten.
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// Every flag 15–18 know.
pub const XLP_ALL_FLAGS: u16 = 0x000F;
/// The default and by far most common WAL block size.
pub const DEFAULT_BLCKSZ: u32 = 8192;

/// A PostgreSQL major version, as identified by its WAL page magic.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum PgVersion {
    /// PostgreSQL 15 (magic 0xD110).
    V15,
    /// PostgreSQL 16 (magic 0xD113).
    V16,
    /// PostgreSQL 17 (magic 0xD116).
    V17,
    /// PostgreSQL 18 (magic 0xD118).
    V18,
}

impl PgVersion {
    /// Every supported version, oldest first.
    pub const ALL: [PgVersion; 4] = [
        PgVersion::V15,
        PgVersion::V16,
        PgVersion::V17,
        PgVersion::V18,
    ];

    /// The `XLOG_PAGE_MAGIC` of this version.
    pub fn magic(self) -> u16 {
        match self {
            PgVersion::V15 => 0xD110,
            PgVersion::V16 => 0xD113,
            PgVersion::V17 => 0xD116,
            PgVersion::V18 => 0xD118,
        }
    }

    /// The version whose WAL carries this magic.
    pub fn from_magic(magic: u16) -> Option<PgVersion> {
        PgVersion::ALL.into_iter().find(|v| v.magic() == magic)
    }

    /// The major version number.
    pub fn major(self) -> u32 {
        match self {
            PgVersion::V15 => 15,
            PgVersion::V16 => 16,
            PgVersion::V17 => 17,
            PgVersion::V18 => 18,
        }
    }

    /// The version with this major number.
    pub fn from_major(major: u32) -> Option<PgVersion> {
        PgVersion::ALL.into_iter().find(|v| v.major() == major)
    }
}

/// The major version whose WAL carries this page magic (`XLOG_PAGE_MAGIC`), if supported.
pub fn major_for_magic(magic: u16) -> Option<u32> {
    PgVersion::from_magic(magic).map(PgVersion::major)
}

/// A page magic no supported version writes. Displays as a sentence naming the supported
/// versions and their magics, from the table above.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UnsupportedMagic(pub u16);

impl std::fmt::Display for UnsupportedMagic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all = PgVersion::ALL;
        let (first, last) = (all[0].major(), all[all.len() - 1].major());
        write!(
            f,
            "not a PostgreSQL {first}-{last} WAL segment: page magic 0x{:04X} (expected ",
            self.0
        )?;
        for (i, v) in all.iter().enumerate() {
            let sep = match i {
                0 => "",
                i if i + 1 == all.len() => " or ",
                _ => ", ",
            };
            write!(f, "{sep}0x{:04X}", v.magic())?;
        }
        f.write_str(")")
    }
}

/// Where the record after one ending at `end` starts, with `blcksz`-byte pages: `end`
/// MAXALIGNed, then past the page header when that lands on a page start (the long header
/// at a segment start). `None` on overflow.
pub fn next_record_start(end: Lsn, seg: WalSegSize, blcksz: u32) -> Option<Lsn> {
    let p = end.maxalign()?;
    if p.page_offset(blcksz) != 0 {
        return Some(p);
    }
    p.checked_add(header_size_at(p.segment_offset(seg)) as u64)
}

/// A decoded page header (short fields always; long fields when `XLP_LONG_HEADER`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PageHeader {
    /// `xlp_magic`.
    pub magic: u16,
    /// `xlp_info`.
    pub info: u16,
    /// `xlp_tli`.
    pub tli: TimeLineId,
    /// `xlp_pageaddr`.
    pub pageaddr: Lsn,
    /// `xlp_rem_len`.
    pub rem_len: u32,
    /// `(xlp_sysid, xlp_seg_size, xlp_xlog_blcksz)` of a long header.
    pub long: Option<LongFields>,
}

/// The extra fields of a long page header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct LongFields {
    /// `xlp_sysid`: the cluster's system identifier.
    pub sysid: u64,
    /// `xlp_seg_size`.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`.
    pub blcksz: u32,
}

impl PageHeader {
    /// Decodes a header from the start of `page`. `None` if `page` is too short for the header
    /// its flags announce.
    pub fn parse(page: &[u8]) -> Option<PageHeader> {
        let mut hdr = PageHeader::parse_short(page)?;
        if hdr.info & XLP_LONG_HEADER != 0 {
            hdr.long = Some(LongFields {
                sysid: u64::from_le_bytes(page.get(24..32)?.try_into().ok()?),
                seg_size: u32::from_le_bytes(page.get(32..36)?.try_into().ok()?),
                blcksz: u32::from_le_bytes(page.get(36..40)?.try_into().ok()?),
            });
        }
        Some(hdr)
    }

    /// Decodes only the 24-byte short header fields (`long` is `None` whatever the flags say).
    pub fn parse_short(page: &[u8]) -> Option<PageHeader> {
        let b = page.get(..crate::page::SIZE_OF_SHORT_PHD)?;
        Some(PageHeader {
            magic: u16::from_le_bytes([b[0], b[1]]),
            info: u16::from_le_bytes([b[2], b[3]]),
            tli: TimeLineId(u32::from_le_bytes([b[4], b[5], b[6], b[7]])),
            pageaddr: Lsn(u64::from_le_bytes([
                b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15],
            ])),
            rem_len: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
            long: None,
        })
    }

    /// Header size in bytes: 40 for a long header, 24 otherwise.
    pub fn size(&self) -> usize {
        if self.info & XLP_LONG_HEADER != 0 {
            SIZE_OF_LONG_PHD
        } else {
            SIZE_OF_SHORT_PHD
        }
    }

    /// The record data on this page starts with a continuation.
    pub fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    /// A crash cut a record short; this page restarts decoding.
    pub fn is_overwrite_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
    }

    /// The PostgreSQL version whose magic this header carries.
    pub fn version(&self) -> Option<PgVersion> {
        PgVersion::from_magic(self.magic)
    }
}

/// Number of header bytes needed at a page starting at segment offset `seg_offset`.
pub fn header_size_at(seg_offset: u64) -> usize {
    if seg_offset == 0 {
        SIZE_OF_LONG_PHD
    } else {
        SIZE_OF_SHORT_PHD
    }
}
