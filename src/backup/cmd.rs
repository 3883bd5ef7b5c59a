//! `pitr backup` and `pitr mark` as commands: arguments in, a printed record and an exit
//! code out.
//!
//! Invariants: nothing here decides how a backup is taken (that is [`crate::backup`]); the
//! progress bar is drawn only on a terminal.

use std::io::IsTerminal;
use std::process::ExitCode;

use crate::backup::{self, BackupError, BackupOptions};
use crate::cli::{BackupArgs, Compress, MarkArgs};
use crate::cmd::{OutputError, emit};
use crate::replication::conninfo::{ConnInfoError, ConnParams};
use crate::repo::codec::ChunkCodec;
use crate::repo::{Repo, RepoError};

/// Why `pitr backup` or `pitr mark` failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// A bad `--source`.
    #[error(transparent)]
    ConnInfo(#[from] ConnInfoError),
    /// The repo could not be opened.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The backup or the restore point failed.
    #[error(transparent)]
    Backup(#[from] BackupError),
    /// Printing the result failed.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// `pitr backup`.
pub async fn run(a: BackupArgs) -> Result<ExitCode, CmdError> {
    let source = ConnParams::parse(&a.server.source, true)?;
    let repo = Repo::open(&a.server.repo).await?;
    let opts = BackupOptions {
        source,
        repo,
        label: a.label.clone(),
        server_compression: a.server_compression || a.compress == Compress::ServerLz4,
        codec: match a.compress {
            Compress::Zstd(level) => ChunkCodec::Zstd(level),
            Compress::Lz4 | Compress::ServerLz4 => ChunkCodec::Lz4,
        },
        wal_timeout: a.wal_timeout,
        progress: std::io::stderr().is_terminal(),
        wake: None,
    };
    let rec = backup::run(&opts).await?;
    emit(a.json, &rec, backup::print_summary)?;
    Ok(ExitCode::SUCCESS)
}

/// `pitr mark NAME`.
pub async fn mark(a: MarkArgs) -> Result<ExitCode, CmdError> {
    let source = ConnParams::parse(&a.server.source, false)?;
    let repo = Repo::open_existing(&a.server.repo).await?;
    let rec = backup::mark(&source, &repo, &a.name).await?;
    println!(
        "restore point {:?} created at LSN {} on timeline {} ({}); restore with --to-name {:?}",
        rec.name, rec.lsn, rec.tli, rec.time, rec.name
    );
    Ok(ExitCode::SUCCESS)
}
