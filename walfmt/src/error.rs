//! Typed errors. Every decoding error carries the LSN where it was found.

use crate::lsn::Lsn;

/// Errors from parsing text or names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not an `X/X` LSN.
    #[error("invalid LSN {0:?}: expected two hex numbers separated by '/', like 0/16B3748")]
    Lsn(String),
    /// Not a valid `wal_segment_size`.
    #[error("invalid WAL segment size {0}: must be a power of two from 1 MiB to 1 GiB")]
    SegSize(u64),
    /// Not a WAL file name.
    #[error("not a WAL file name: {0:?}")]
    FileName(String),
    /// A malformed timeline history file.
    #[error("timeline history, line {line}: {reason}")]
    History {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A malformed `backup_label`.
    #[error("backup_label: {0}")]
    BackupLabel(String),
}

/// Errors that stop decoding: the input is not WAL that this decoder can read, or the caller
/// asked for something impossible. Data that merely ends (zeros, a recycled page, a torn
/// record) is not an error: it is reported as [`crate::EndOfWal`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The first page's magic is not that of a supported PostgreSQL version.
    #[error(
        "at {lsn}: unsupported WAL page magic 0x{magic:04X} (supported: PostgreSQL 15 to 18, little-endian)"
    )]
    UnsupportedMagic {
        /// Where.
        lsn: Lsn,
        /// The magic found.
        magic: u16,
    },
    /// The first page header of the input is not a valid page header.
    #[error("at {lsn}: invalid first page header: {reason}")]
    BadFirstPage {
        /// Where.
        lsn: Lsn,
        /// Why.
        reason: String,
    },
    /// The first page is WAL of another PostgreSQL version than the one expected.
    #[error("at {lsn}: WAL is from PostgreSQL {found}, expected {expected}")]
    VersionMismatch {
        /// Where.
        lsn: Lsn,
        /// Expected major.
        expected: u32,
        /// Found major.
        found: u32,
    },
    /// A segment's long header names a different system than the one expected.
    #[error("at {lsn}: WAL belongs to system {found}, expected {expected}")]
    SystemIdMismatch {
        /// Where.
        lsn: Lsn,
        /// Expected system identifier.
        expected: u64,
        /// Found system identifier.
        found: u64,
    },
    /// Segment or block size in the long header differs from the configuration.
    #[error(
        "at {lsn}: WAL has segment size {found_seg} and block size {found_blk}, expected {expected_seg} and {expected_blk}"
    )]
    SizeMismatch {
        /// Where.
        lsn: Lsn,
        /// Expected segment size.
        expected_seg: u32,
        /// Found segment size.
        found_seg: u32,
        /// Expected block size.
        expected_blk: u32,
        /// Found block size.
        found_blk: u32,
    },
    /// Input was fed out of order or after the decoder stopped.
    #[error("at {lsn}: {reason}")]
    Misuse {
        /// Where.
        lsn: Lsn,
        /// Why.
        reason: &'static str,
    },
}

impl DecodeError {
    /// The LSN the error refers to.
    pub fn lsn(&self) -> Lsn {
        match self {
            DecodeError::UnsupportedMagic { lsn, .. }
            | DecodeError::BadFirstPage { lsn, .. }
            | DecodeError::VersionMismatch { lsn, .. }
            | DecodeError::SystemIdMismatch { lsn, .. }
            | DecodeError::SizeMismatch { lsn, .. }
            | DecodeError::Misuse { lsn, .. } => *lsn,
        }
    }
}
