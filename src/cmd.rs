//! What every command's entry point (`<job>::cmd::run`) shares: printing a result as text or
//! JSON.
//!
//! Invariants:
//! - Commands print their results to stdout only through [`emit`] (or their own writer),
//!   and their errors keep the I/O or JSON error as the source, so `main` can tell a closed
//!   stdout (`| head`), which is not an error worth reporting, from a real failure.

use std::io::Write;

/// Printing a result failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Writing stdout.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Serialising JSON (or writing it).
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// Prints `v` to stdout as pretty JSON, or with `text`.
pub(crate) fn emit<T: serde::Serialize>(
    json: bool,
    v: &T,
    text: impl FnOnce(&mut std::io::StdoutLock<'static>, &T) -> std::io::Result<()>,
) -> Result<(), OutputError> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, v)?;
        writeln!(out)?;
    } else {
        text(&mut out, v)?;
    }
    out.flush()?;
    Ok(())
}
