//! `pitr prune` as a command.
//!
//! Invariants: at least one rule is given and `--keep-full` keeps at least one backup,
//! checked before the repo is opened.

use std::process::ExitCode;

use crate::cli::PruneArgs;
use crate::cmd::{OutputError, emit};
use crate::repo::prune::{self, Retention};
use crate::repo::{Repo, RepoError};

/// Why `pitr prune` failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(&'static str),
    /// The repo could not be read or changed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Printing the report failed.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// `pitr prune`.
pub async fn run(a: PruneArgs) -> Result<ExitCode, CmdError> {
    if a.keep_full.is_none() && a.keep_within.is_none() {
        return Err(CmdError::Usage(
            "pitr prune needs --keep-full N and/or --keep-within DURATION",
        ));
    }
    if a.keep_full == Some(0) {
        return Err(CmdError::Usage("--keep-full must be at least 1"));
    }
    let repo = Repo::open_to_read(&a.repo.repo, "prune").await?;
    let retention = Retention {
        keep_full: a.keep_full,
        keep_within: a.keep_within,
    };
    let r = prune::prune(&repo, retention, a.dry_run).await?;
    emit(a.repo.json, &r, prune::print)?;
    Ok(ExitCode::SUCCESS)
}
