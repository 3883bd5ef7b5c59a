//! `pitr restore` as a command: arguments in, a plan, a restored directory, an optional
//! verification, and an exit code out.
//!
//! Invariants:
//! - Every argument is checked before the repo is opened, and the plan is printed before
//!   anything is written; `--dry-run` stops there.
//! - With `--verify`, the PostgreSQL binaries, or with `--verify-image` the container CLI,
//!   the engine and the image, are found and matched to the backup's major before anything
//!   is written.
//! - SIGINT or SIGTERM during `--verify` stops the verification server (and removes its
//!   container) before pitr exits with status 130.
//! - With `--json`, stdout holds one JSON document and nothing else.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::RestoreArgs;
use crate::repo::{Repo, RepoError};
use crate::restore::target::TimeTargetError;
use crate::restore::textfile::{self, TextfileError};
use crate::restore::verify::{self, VerifyError};
use crate::restore::{self, Mode, Plan, RestoreError, RestoreOptions, TargetSpec, TimelineSel};

/// Why `pitr restore` failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// A `--to` time that is not one.
    #[error(transparent)]
    Time(#[from] TimeTargetError),
    /// `--standby` needs pitr's own path for `restore_command`.
    #[error("--standby: cannot find pitr's own path: {0}")]
    OwnPath(#[source] std::io::Error),
    /// The repo could not be opened.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Planning or restoring failed.
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// `--verify` could not run.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// `--metrics-file` could not be written.
    #[error(transparent)]
    Metrics(#[from] TextfileError),
    /// `--verify` has no PostgreSQL binaries of the backup's major.
    #[error(transparent)]
    Binaries(#[from] crate::pgproc::BinariesError),
    /// A signal stopped `--verify`; the server was stopped first.
    #[error(
        "{0} received during --verify: the verification server was stopped; the restored directory is left as it was"
    )]
    Interrupted(&'static str),
    /// Writing stdout.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Writing JSON.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
}

/// `pitr restore`.
pub async fn run(a: RestoreArgs) -> Result<ExitCode, CmdError> {
    // --metrics-file records every outcome once the arguments are accepted (textfile.rs).
    let textfile = textfile::Recorder::from_args(&a)?;
    let mut report = None;
    let res = restore(a, &mut report).await;
    textfile.finish(res, report.as_ref())
}

/// `pitr restore` but `--metrics-file`; `report` receives the `--verify` report.
async fn restore(
    a: RestoreArgs,
    report: &mut Option<verify::Report>,
) -> Result<ExitCode, CmdError> {
    let opts = options(&a).await?;
    let plan = restore::plan(&opts).await?;
    let mut out = std::io::stdout().lock();
    if a.dry_run {
        restore::check_destination(&plan)?;
        if a.json {
            serde_json::to_writer_pretty(
                &mut out,
                &serde_json::json!({ "plan": plan, "dry_run": true }),
            )?;
            writeln!(out)?;
        } else {
            restore::print_plan(&mut out, &plan)?;
            writeln!(out, "dry run: nothing written")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let check = check_options(&a);
    // Before writing anything: the binaries (or the image) must exist and match the backup.
    let runtime = if a.verify {
        Some(verify::Runtime::find(&check, plan.backup.pg_major)?)
    } else {
        None
    };
    if !a.json {
        restore::print_plan(&mut out, &plan)?;
        out.flush()?;
    }
    let stats = restore::execute(&opts.repo, &plan, opts.progress).await?;
    if !a.json {
        print_stats(&mut out, &plan, &stats)?;
    }
    if let Some(runtime) = &runtime {
        let r = match until_signal(verify::run_server_check(&plan, &stats, &check, runtime)).await {
            Ok(r) => r?,
            Err(e @ CmdError::Interrupted(_)) => {
                eprintln!("pitr: error: {e}");
                return Ok(ExitCode::from(130));
            }
            Err(e) => return Err(e),
        };
        if !a.json {
            r.print(&mut out)?;
        }
        // A passing verification's rates predict the next restore's RTO (bounded: a hung
        // repo must not hold the report).
        if tokio::time::timeout(
            restore::rto::RECORD_TIMEOUT,
            restore::rto::record(&opts.repo, &plan, &stats, &r),
        )
        .await
        .is_err()
        {
            tracing::warn!(timeout = ?restore::rto::RECORD_TIMEOUT, "recording the measured restore rates in the repo timed out; the next plan's RTO estimate uses older ones, or none");
        }
        *report = Some(r);
    }
    if a.json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({ "plan": plan, "restore": stats, "verify": report }),
        )?;
        writeln!(out)?;
    }
    out.flush()?;
    if let Some(r) = report
        && !r.ok
    {
        eprintln!("pitr: error: restore verification failed (see the report above)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// The restore's options from the arguments, checked before the repo is opened.
async fn options(a: &RestoreArgs) -> Result<RestoreOptions, CmdError> {
    let dir = a
        .dir
        .clone()
        .ok_or_else(|| CmdError::Usage("no destination: pass -D DIR (or set PGDATA)".into()))?;
    let target = target(a)?;
    let timeline = match a.timeline.as_str() {
        "latest" => TimelineSel::Latest,
        n => TimelineSel::Id(walfmt::TimeLineId(n.parse().map_err(|_| {
            CmdError::Usage(format!("invalid --timeline {n:?}: use a number or latest"))
        })?)),
    };
    let mut tablespace_map = HashMap::new();
    for m in &a.tablespace_map {
        let (old, new) = m.split_once('=').ok_or_else(|| {
            CmdError::Usage(format!("invalid --tablespace-map {m:?}: use OLDDIR=NEWDIR"))
        })?;
        tablespace_map.insert(old.to_string(), PathBuf::from(new));
    }
    if !a.verify && !a.check_sql.is_empty() {
        return Err(CmdError::Usage(
            "--check-sql runs only with --verify: add --verify".into(),
        ));
    }
    let repo = Repo::open_to_read(&a.repo, "restore").await?;
    let mode = if a.standby {
        let exe = std::env::current_exe().map_err(CmdError::OwnPath)?;
        Mode::Standby {
            restore_command: format!(
                "{} wal fetch %f %p --repo {}{}",
                shell_quote(&exe.display().to_string()),
                shell_quote(&absolute_repo(&a.repo)),
                // An encrypted repo's WAL needs the key: the same option, files by absolute path.
                crate::repo::crypt::configured_args()
                    .iter()
                    .map(|a| format!(" {}", shell_quote(a)))
                    .collect::<String>()
            ),
        }
    } else {
        Mode::Promote
    };
    Ok(RestoreOptions {
        repo,
        dir,
        target,
        timeline,
        tablespace_map,
        progress: std::io::stderr().is_terminal() && !a.json,
        backup: a.backup.clone(),
        mode,
        inclusive: !a.exclusive,
    })
}

/// `--to`, `--to-lsn` or `--to-name` (latest when none is given).
fn target(a: &RestoreArgs) -> Result<TargetSpec, CmdError> {
    Ok(match (&a.to, &a.to_lsn, &a.to_name) {
        (Some(t), _, _) if t.trim() == "latest" => TargetSpec::Latest,
        (Some(t), _, _) => TargetSpec::Time(restore::target::parse_time(
            t,
            a.tz.as_deref(),
            std::env::var("TZ").ok().as_deref(),
        )?),
        (_, Some(l), _) => TargetSpec::Lsn(l.parse().map_err(|_| {
            CmdError::Usage(format!(
                "invalid --to-lsn {l:?}: use the X/X form, like 0/3000148"
            ))
        })?),
        (_, _, Some(n)) => TargetSpec::Name(n.clone()),
        _ => TargetSpec::Latest,
    })
}

/// How long a signal may wait for the verification to notice it (it does at its next await)
/// before the watchdog removes pitr's verification containers itself and exits.
const SIGNAL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `f` unless SIGINT or SIGTERM comes first; then `f` is dropped (which stops the
/// verification server and removes its container) and the error says so. If `f` is stuck
/// in a blocking call and does not notice within [`SIGNAL_GRACE`], a watchdog task removes
/// this process's verification containers and temporary directories and exits 130.
async fn until_signal<T>(f: impl std::future::Future<Output = T>) -> Result<T, CmdError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let (tx, mut rx) = tokio::sync::watch::channel(None::<&'static str>);
    let watchdog = tokio::spawn(async move {
        let sig = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let _ = tx.send(Some(sig));
        tokio::time::sleep(SIGNAL_GRACE).await;
        let _ = tokio::task::spawn_blocking(crate::restore::container::remove_mine).await;
        crate::restore::verify::remove_live_workspaces();
        eprintln!("pitr: error: {}", CmdError::Interrupted(sig));
        std::process::exit(130);
    });
    let mut f = Box::pin(f);
    let sig = tokio::select! {
        r = &mut f => {
            watchdog.abort();
            return Ok(r);
        }
        s = rx.wait_for(Option::is_some) => s.ok().and_then(|s| *s).unwrap_or("a signal"),
    };
    // This path cleans up now: dropping the verification stops its server.
    watchdog.abort();
    drop(f);
    Err(CmdError::Interrupted(sig))
}

/// `--verify`'s options.
fn check_options(a: &RestoreArgs) -> verify::ServerCheckOptions {
    verify::ServerCheckOptions {
        pg_bin: a.pg_bin.clone(),
        image: a.verify_image.clone(),
        checks: a
            .check_sql
            .iter()
            .map(|c| verify::Check::parse(c))
            .collect(),
        dbname: a.check_db.clone(),
        user: a.verify_user.clone(),
        timeout: a.verify_timeout,
    }
}

/// What the restore did, as text.
fn print_stats(
    out: &mut impl Write,
    plan: &Plan,
    stats: &restore::RestoreStats,
) -> std::io::Result<()> {
    for n in &stats.neutralised {
        writeln!(out, "neutralised:    {n}")?;
    }
    for r in &stats.removed {
        writeln!(out, "removed:        {r} from the backup")?;
    }
    writeln!(
        out,
        "restored {} MiB of backup and {} MiB of WAL into {} in {:.1}s; start PostgreSQL on it to recover to the target",
        stats.backup_bytes >> 20,
        stats.wal_bytes >> 20,
        plan.dir.display(),
        stats.seconds
    )?;
    out.flush()
}

/// A repo spec usable from any working directory: PostgreSQL runs `restore_command` in the
/// data directory, so a relative local path is made absolute (URLs are kept).
fn absolute_repo(spec: &str) -> String {
    if spec.contains("://") {
        return spec.to_string();
    }
    std::path::absolute(spec)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| spec.to_string())
}

/// Quotes a word for the shell PostgreSQL runs restore_command with.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
