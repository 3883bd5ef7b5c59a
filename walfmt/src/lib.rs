//! # walfmt: PostgreSQL WAL formats, sans-IO
//!
//! Bytes in, typed values out. No I/O, no async, no panics on any input, no unbounded loops.
//! Every piece of PostgreSQL format knowledge that pitr needs lives here:
//!
//! - [`Lsn`], [`TimeLineId`], [`SegNo`], [`WalSegSize`]: positions and identifiers, with
//!   PostgreSQL's text forms;
//! - [`names`]: segment, `.partial`, `.history` and `.backup` file names;
//! - [`page`]: page headers of PostgreSQL 15–18 ([`PgVersion`] by page magic);
//! - [`WalDecoder`]: the incremental decoder (feed bytes, poll records), which reassembles
//!   records across pages and segments, checks every CRC-32C, and tells the end of valid WAL
//!   ([`EndOfWal`]) from input that is not WAL at all ([`DecodeError`]);
//! - [`record`]: record headers, the block-reference walk, and typed decoding of switches,
//!   checkpoints, commits/aborts (plain and prepared) with their `xact_time`, restore points
//!   and end-of-recovery records;
//! - [`summary`]: per-segment summaries (commit times and LSNs, restore points, checkpoints,
//!   where valid WAL ends), the basis of pitr's commit-time index;
//! - [`history`] and [`backup_label`]: the two text formats recovery reads.
//!
//! With the optional `serde` feature, [`Lsn`] (as its `X/X` text), [`TimeLineId`] (a number)
//! and [`XactKind`] (its `pg_waldump` name) are `Serialize` and `Deserialize`.
//!
//! Only little-endian WAL from 64-bit servers (x86-64, aarch64) is supported; a big-endian
//! segment is reported as an unsupported magic.

pub mod backup_label;
pub mod crc;
pub mod decoder;
pub mod error;
pub mod history;
pub mod lsn;
pub mod names;
pub mod page;
pub mod record;
pub mod summary;
pub mod time;

pub use backup_label::BackupLabel;
pub use decoder::{DecoderConfig, EndOfWal, EndReason, Poll, StartAt, WalDecoder};
pub use error::{DecodeError, ParseError};
pub use history::{HistoryEntry, TimelineHistory};
pub use lsn::{Lsn, SegNo, TimeLineId, WalSegSize};
pub use names::WalFileName;
pub use page::PgVersion;
pub use record::{Decoded, Record, XactKind};
pub use summary::{SegmentSummary, Summarizer, summarize_segment};
pub use time::PgTimestamp;
