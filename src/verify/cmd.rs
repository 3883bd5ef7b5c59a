//! `pitr verify` as a command.
//!
//! Invariants: the report is printed whole before the exit code says whether it found
//! problems (1, naming the first on stderr).

use std::process::ExitCode;

use crate::cli::RepoArgs;
use crate::cmd::{OutputError, emit};
use crate::repo::{Repo, RepoError};

/// Why `pitr verify` could not check the repo.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The repo could not be read.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Printing the report failed.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// `pitr verify`.
pub async fn run(a: RepoArgs) -> Result<ExitCode, CmdError> {
    let repo = Repo::open_to_read(&a.repo, "verify").await?;
    let r = crate::verify::repo::verify_repo(&repo).await?;
    emit(a.json, &r, crate::verify::repo::print)?;
    if let Some(p) = r.problems.first() {
        eprintln!("pitr: error: {} problem(s); first: {p}", r.problems.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
