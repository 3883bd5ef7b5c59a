//! `pitr wal fetch` and `pitr wal inspect` as commands.
//!
//! Invariants:
//! - `wal fetch` writes DEST atomically (a temporary file, fsync'd, renamed) and exits 1,
//!   writing nothing, when the file is not in the repo, as `restore_command` must.
//! - `wal inspect` prints every file's summary before it exits 1 for the first problem.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{FetchArgs, InspectArgs};
use crate::cmd::OutputError;
use crate::repo::{Repo, RepoError};

/// Why a `pitr wal` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The repo could not be read.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The repo has no identity.
    #[error("{0} is not a pitr repo (no pitr.json)")]
    NotARepo(String),
    /// The repo's segment size is invalid.
    #[error(transparent)]
    SegSize(#[from] walfmt::ParseError),
    /// DEST could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// DEST.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be inspected.
    #[error(transparent)]
    Inspect(#[from] crate::wal::InspectError),
    /// Printing the result failed.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// `pitr wal fetch NAME DEST`.
pub async fn fetch(a: FetchArgs) -> Result<ExitCode, CmdError> {
    let repo = Repo::open(&a.repo).await?;
    let id = repo
        .identity()
        .await?
        .ok_or_else(|| CmdError::NotARepo(repo.location.to_string()))?;
    let seg = walfmt::WalSegSize::new(id.wal_segment_size)?;
    let Some(data) = repo.fetch_wal(&a.name, seg).await? else {
        eprintln!("pitr: {}: not in the repo", a.name);
        return Ok(ExitCode::from(1));
    };
    let tmp = a.dest.with_extension("pitr-tmp");
    // PostgreSQL reads the file as soon as restore_command returns: the rename need not be
    // durable, so no directory fsync (crashsafe::publish would add one).
    let res =
        crate::crashsafe::write_synced(&tmp, &data).and_then(|()| std::fs::rename(&tmp, &a.dest));
    if let Err(source) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(CmdError::Write {
            path: a.dest.clone(),
            source,
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// `pitr wal inspect FILE...`.
pub fn inspect(args: InspectArgs) -> Result<ExitCode, CmdError> {
    let report = crate::wal::inspect(&args.files)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let printed = (|| -> Result<(), OutputError> {
        if args.json {
            serde_json::to_writer_pretty(&mut out, &report.files)?;
            writeln!(out)?;
        } else {
            crate::wal::print_text(&mut out, &report, args.xacts)?;
        }
        out.flush()?;
        Ok(())
    })();
    printed?;
    if let Some(problem) = report.first_problem() {
        eprintln!("pitr: error: {problem}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
