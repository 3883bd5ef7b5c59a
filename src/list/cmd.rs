//! `pitr list` as a command.
//!
//! Invariants: the repo is opened read-only (never created); the listing is printed as text
//! or, with `--json`, as one JSON document.

use std::process::ExitCode;

use crate::cli::ListArgs;
use crate::cmd::{OutputError, emit};
use crate::repo::{Repo, RepoError};

/// Why `pitr list` failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The repo could not be read.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Printing the result failed.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// `pitr list`.
pub async fn run(a: ListArgs) -> Result<ExitCode, CmdError> {
    let repo = Repo::open_to_read(&a.repo.repo, "list").await?;
    let l = crate::list::list(&repo).await?;
    emit(a.repo.json, &l, crate::list::print)?;
    Ok(ExitCode::SUCCESS)
}
