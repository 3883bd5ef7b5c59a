//! Command-line interface (clap derive). `main.rs` parses, runs, and turns errors into one
//! line on stderr and a non-zero exit code.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Point-in-time recovery for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pitr", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Work with WAL segment files.
    #[command(subcommand)]
    Wal(WalCommand),
}

/// `pitr wal ...`
#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Decode WAL segment files and summarise them: records, commits and aborts, the commit
    /// time range, restore points, checkpoints, and where valid WAL ends.
    ///
    /// Files may be plain segments (`000000010000000000000003`), `.partial` segments, or
    /// lz4-frame compressed copies of either. Consecutive segments of one timeline are decoded
    /// as one stream, so records crossing segment boundaries are checked whole; each record
    /// counts in the segment where it starts. Segment size, PostgreSQL version (15-18) and
    /// system identifier are read from each file's first page header.
    ///
    /// Exits 1, naming the file and LSN, when a segment holds invalid WAL (a bad checksum, a
    /// broken header) rather than ending cleanly (zeros, a recycled page, a record continued in
    /// a segment not given).
    Inspect(InspectArgs),
}

/// Arguments of `pitr wal inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Segment files to inspect.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print JSON (one array, an object per file) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also list every commit and abort with its LSN and time (text output).
    #[arg(long)]
    pub xacts: bool,
}
