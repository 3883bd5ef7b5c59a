//! Positions and identifiers: [`Lsn`], [`TimeLineId`], [`SegNo`], [`WalSegSize`].
//!
//! Text forms follow PostgreSQL:
//! - an LSN prints as `%X/%X` (upper-case hex, not zero-padded, as 15–18 print it) and parses
//!   from 1–8 hex digits on each side, either case, so the zero-padded `%X/%08X` of
//!   `pg_waldump` and 19devel is accepted too;
//! - timeline ids are decimal in history files and `backup_label`, hex in file names.
//!
//! With the `serde` feature, an [`Lsn`] serializes as its `X/X` text and deserializes from
//! it (any other value is an error, never a default), and a [`TimeLineId`] as its number.

use std::fmt;
use std::str::FromStr;

use crate::error::ParseError;

/// A byte position in the infinite WAL stream.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`, which PostgreSQL uses for "invalid".
    pub const INVALID: Lsn = Lsn(0);

    /// The segment holding this byte.
    pub fn segment(self, seg: WalSegSize) -> SegNo {
        SegNo(self.0 >> seg.shift())
    }

    /// The segment holding the byte *before* this position (PostgreSQL's `XLByteToPrevSeg`),
    /// which is the right segment for an end pointer.
    pub fn prev_segment(self, seg: WalSegSize) -> SegNo {
        SegNo(self.0.saturating_sub(1) >> seg.shift())
    }

    /// Offset of this byte within its segment.
    pub fn segment_offset(self, seg: WalSegSize) -> u64 {
        self.0 & (seg.bytes() - 1)
    }

    /// Offset of this byte within its WAL page.
    pub fn page_offset(self, blcksz: u32) -> u64 {
        self.0 % u64::from(blcksz)
    }

    /// Rounded up to a multiple of 8 (PostgreSQL's `MAXALIGN` on 64-bit servers).
    pub fn maxalign(self) -> Option<Lsn> {
        self.0.checked_add(7).map(|v| Lsn(v & !7))
    }

    /// `self + n`, or `None` on overflow.
    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    /// The first byte of the segment holding this byte (where streaming of that segment
    /// starts).
    pub fn segment_start(self, seg: WalSegSize) -> Lsn {
        Lsn(self.0 - self.segment_offset(seg))
    }

    /// Bytes of WAL from `earlier` up to this position; 0 when `earlier` is not earlier.
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Lsn({self})")
    }
}

impl FromStr for Lsn {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseError::Lsn(s.to_owned());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        let part = |p: &str| {
            if p.is_empty() || p.len() > 8 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                None
            } else {
                u32::from_str_radix(p, 16).ok()
            }
        };
        let hi = part(hi).ok_or_else(bad)?;
        let lo = part(lo).ok_or_else(bad)?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// A timeline id. Decimal in text, hex in file names.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TimeLineId(pub u32);

impl fmt::Display for TimeLineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = Lsn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an LSN like 0/16B3748")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Lsn, E> {
                v.parse()
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_str(Visit)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for TimeLineId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for TimeLineId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <u32 as serde::Deserialize>::deserialize(d).map(TimeLineId)
    }
}

/// A WAL segment number: `lsn / wal_segment_size`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct SegNo(pub u64);

impl SegNo {
    /// LSN of the first byte of this segment, or `None` on overflow.
    pub fn start_lsn(self, seg: WalSegSize) -> Option<Lsn> {
        (self.0 <= u64::MAX >> seg.shift()).then(|| Lsn(self.0 << seg.shift()))
    }

    /// LSN just past this segment's last byte (the next segment's start), or `None` past
    /// the end of the LSN space.
    pub fn end_lsn(self, seg: WalSegSize) -> Option<Lsn> {
        self.0.checked_add(1).and_then(|n| SegNo(n).start_lsn(seg))
    }

    /// LSN of byte `offset` of this segment (PostgreSQL's `XLogSegNoOffsetToRecPtr`), or
    /// `None` on overflow. An offset past the segment size is not refused: it lands in a
    /// later segment.
    pub fn lsn_at(self, offset: u64, seg: WalSegSize) -> Option<Lsn> {
        self.start_lsn(seg)?.checked_add(offset)
    }

    /// How many bytes of WAL lie from this segment's start up to `end` (not capped at the
    /// segment size); 0 when `end` is before the segment.
    pub fn bytes_until(self, end: Lsn, seg: WalSegSize) -> u64 {
        self.start_lsn(seg).map_or(0, |s| end.bytes_since(s))
    }

    /// The next segment (saturating at the last one).
    pub fn next(self) -> SegNo {
        SegNo(self.0.saturating_add(1))
    }

    /// The segment before, or `None` for segment 0.
    pub fn prev(self) -> Option<SegNo> {
        self.0.checked_sub(1).map(SegNo)
    }
}

/// A `wal_segment_size`: a power of two from 1 MiB to 1 GiB.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct WalSegSize(u32);

impl WalSegSize {
    /// The default, 16 MiB.
    pub const DEFAULT: WalSegSize = WalSegSize(16 * 1024 * 1024);
    /// Smallest size initdb accepts.
    pub const MIN: u32 = 1024 * 1024;
    /// Largest size initdb accepts.
    pub const MAX: u32 = 1024 * 1024 * 1024;

    /// Validates a size in bytes.
    pub fn new(bytes: u32) -> Result<Self, ParseError> {
        if bytes.is_power_of_two() && (Self::MIN..=Self::MAX).contains(&bytes) {
            Ok(WalSegSize(bytes))
        } else {
            Err(ParseError::SegSize(u64::from(bytes)))
        }
    }

    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        u64::from(self.0)
    }

    /// log2 of the size.
    pub fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }

    /// Size in bytes, as `u32`.
    pub fn get(self) -> u32 {
        self.0
    }

    /// Segments per 4 GiB "xlogid" (the middle 8 hex digits of a file name).
    pub fn segments_per_xlogid(self) -> u64 {
        0x1_0000_0000 / self.bytes()
    }
}

impl Default for WalSegSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}
