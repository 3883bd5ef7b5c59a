//! `pitr verify`: proving a repo. [`repo`] re-reads every object the kept backups need
//! (chunks, manifests, WAL, summaries, histories) and names each problem; [`cmd`] is the
//! command. Proving a restore (`pitr restore --verify`) is [`crate::restore::verify`].
//!
//! # Invariants
//!
//! - Pessimistic: a repo passes only when every check ran and found nothing; an object that
//!   cannot be read is a problem, never skipped.
//! - Read-only: nothing is written to the repo.

pub mod cmd;
pub(crate) mod repo;
