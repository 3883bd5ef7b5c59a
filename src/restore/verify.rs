//! Proving a restore (`pitr restore --verify`).
//!
//! - [`run_server_check`]: starts a throwaway PostgreSQL on the
//!   restored directory (loopback port and a private socket directory, its own `pg_hba.conf`
//!   trusting only that socket, archiving off), waits for recovery to end, checks that the
//!   last replayed transaction is the one the index predicted, runs the `--check-sql`
//!   queries, and stops the server, leaving the directory ready.

use crate::pgproc::find_binaries;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::pgproc::{BinariesError, chown_tree, euid};
use crate::replication::conn::PgConn;
use crate::replication::conninfo::ConnParams;
use crate::restore::container::{self, CheckedImage, Container, ContainerError, RunSpec};
use crate::restore::{Plan, RestoreStats, Stop};

/// Verification errors (setup problems; a failed check is a report with `ok = false`).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// PostgreSQL binaries unusable.
    #[error(transparent)]
    Binaries(#[from] BinariesError),
    /// `--verify-image` cannot run.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The server did not come up or recover.
    #[error("{0}")]
    Server(String),
    /// I/O.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// A `--check-sql` query, with an optional expected value (`SQL => VALUE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The query.
    pub sql: String,
    /// The first column of the first row must equal this (as text).
    pub expect: Option<String>,
}

impl Check {
    /// Parses `SQL` or `SQL => VALUE`.
    pub fn parse(s: &str) -> Check {
        match s.rsplit_once(" => ") {
            Some((sql, v)) => Check {
                sql: sql.trim().into(),
                expect: Some(v.trim().into()),
            },
            None => Check {
                sql: s.trim().into(),
                expect: None,
            },
        }
    }
}

/// A check's result.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The query.
    pub sql: String,
    /// Expected value.
    pub expect: Option<String>,
    /// What it returned (first column of the first row), or the error.
    pub got: Option<String>,
    /// Error, if it failed.
    pub error: Option<String>,
    /// Passed.
    pub ok: bool,
}

/// `--verify` settings.
#[derive(Debug, Clone)]
pub struct ServerCheckOptions {
    /// `--pg-bin`.
    pub pg_bin: Option<PathBuf>,
    /// `--verify-image`: run the server in a container of this image instead.
    pub image: Option<String>,
    /// Checks.
    pub checks: Vec<Check>,
    /// Database the checks run in.
    pub dbname: String,
    /// Role to connect as (default: the backup's source role, then `postgres`, then $USER).
    pub user: Option<String>,
    /// How long recovery may take.
    pub timeout: Duration,
}

/// The `--verify` report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target as given.
    pub target: String,
    /// Target in UTC.
    pub target_utc: Option<String>,
    /// Backup used.
    pub backup: String,
    /// Timeline followed.
    pub timeline: u32,
    /// The last transaction the index predicted recovery would replay.
    pub expected_last: Option<String>,
    /// The last transaction time PostgreSQL reports having replayed.
    pub achieved_last: Option<String>,
    /// Where replay ended.
    pub replay_end_lsn: Option<String>,
    /// Achieved point equals the prediction.
    pub target_matched: bool,
    /// Recovery ended and the server promoted (left recovery) within the timeout.
    pub promoted: bool,
    /// The timeline the plan predicted the server would promote to.
    pub expected_timeline: Option<u32>,
    /// The timeline it is on after promotion.
    pub achieved_timeline: Option<u32>,
    /// Every condition that failed, in words.
    pub failures: Vec<String>,
    /// Seconds to download and assemble the directory.
    pub restore_seconds: f64,
    /// Seconds from starting PostgreSQL to the end of recovery.
    pub recovery_seconds: f64,
    /// Restore plus recovery: the measured RTO.
    pub rto_seconds: f64,
    /// The RTO the plan predicted (`None`: no rates measured before).
    pub predicted_rto_seconds: Option<f64>,
    /// WAL replayed, bytes (from the backup's start to the replay end).
    pub wal_replayed_bytes: u64,
    /// Checks.
    pub checks: Vec<CheckResult>,
    /// Everything passed.
    pub ok: bool,
    /// PostgreSQL's binaries used: their directory, or `image NAME (postgres --version)`.
    pub postgres: String,
}

impl Report {
    /// Prints the report for humans.
    pub(crate) fn print(&self, w: &mut impl std::io::Write) -> std::io::Result<()> {
        let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
        writeln!(w, "verify: {}", if self.ok { "PASSED" } else { "FAILED" })?;
        writeln!(
            w,
            "  [{}] recovery ended and the server promoted to timeline {} (expected {})",
            mark(self.promoted && self.expected_timeline == self.achieved_timeline),
            self.achieved_timeline
                .map_or_else(|| "?".to_string(), |t| t.to_string()),
            self.expected_timeline
                .map_or_else(|| "?".to_string(), |t| t.to_string())
        )?;
        writeln!(
            w,
            "  [{}] recovery point: expected last transaction {}, PostgreSQL replayed {} (replay ended at {})",
            mark(self.target_matched),
            self.expected_last.as_deref().unwrap_or("none"),
            self.achieved_last.as_deref().unwrap_or("none"),
            self.replay_end_lsn.as_deref().unwrap_or("?")
        )?;
        for c in &self.checks {
            writeln!(
                w,
                "  [{}] {}{}: {}",
                mark(c.ok),
                c.sql,
                c.expect
                    .as_deref()
                    .map(|e| format!(" (expect {e})"))
                    .unwrap_or_default(),
                c.error
                    .as_deref()
                    .or(c.got.as_deref())
                    .unwrap_or("(no rows)")
            )?;
        }
        for f in &self.failures {
            writeln!(w, "  FAILED: {f}")?;
        }
        writeln!(
            w,
            "  restore {:.1}s + recovery {:.1}s = RTO {:.1}s ({}); WAL replayed {} MiB; {}",
            self.restore_seconds,
            self.recovery_seconds,
            self.rto_seconds,
            self.predicted_rto_seconds.map_or_else(
                || "no prediction: no measured rates were read from the repo".to_string(),
                |p| format!("predicted {p:.1}s")
            ),
            self.wal_replayed_bytes >> 20,
            self.postgres
        )
    }
}

fn free_port() -> Result<u16, VerifyError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| VerifyError::Io("binding a loopback port".into(), e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| VerifyError::Io("loopback port".into(), e))
}

/// Where the verification server's programs come from.
#[derive(Debug, Clone)]
pub enum Runtime {
    /// Local binaries (`--pg-bin`, PATH, `pg_config`): `pg_ctl` starts the server.
    Local(PathBuf),
    /// `--verify-image`: the server runs in a container of this image.
    Image(CheckedImage),
}

impl Runtime {
    /// Finds and checks the programs for PostgreSQL `major`, before anything is written.
    pub fn find(opts: &ServerCheckOptions, major: u32) -> Result<Runtime, VerifyError> {
        Ok(match &opts.image {
            Some(image) => Runtime::Image(container::check_image(image, major)?),
            None => Runtime::Local(find_binaries(opts.pg_bin.as_deref(), major)?),
        })
    }

    /// For the report.
    fn describe(&self) -> String {
        match self {
            Runtime::Local(bin) => bin.display().to_string(),
            Runtime::Image(i) => i.describe(),
        }
    }
}

struct Server {
    runtime: Runtime,
    dir: PathBuf,
    log: PathBuf,
    run_as: Option<(u32, u32)>,
    started: bool,
    container: Option<Container>,
}

impl Server {
    fn pg_ctl(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin.join("pg_ctl"));
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((u, g)) = self.run_as {
            use std::os::unix::process::CommandExt;
            c.uid(u).gid(g);
        }
        c
    }

    fn running(&self) -> bool {
        match (&self.runtime, &self.container) {
            (Runtime::Local(bin), _) => self
                .pg_ctl(bin)
                .arg("status")
                .arg("-D")
                .arg(&self.dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
            (Runtime::Image(_), Some(c)) => c.running(),
            (Runtime::Image(_), None) => false,
        }
    }

    fn log_tail(&self) -> String {
        if let Some(c) = &self.container {
            // The container's output is the server's log: keep it where keep_log looks.
            let _ = std::fs::write(&self.log, c.logs());
        }
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .rfind(|l| l.contains("FATAL") || l.contains("PANIC") || l.contains("ERROR"))
            .map(|l| l.trim().to_string())
            .unwrap_or_else(|| {
                text.lines()
                    .last()
                    .map(|l| l.trim().to_string())
                    .unwrap_or_default()
            })
    }

    /// Stops the server; an error says what may still be running (the check then fails).
    fn stop(&mut self) -> Result<(), String> {
        if !self.started {
            return Ok(());
        }
        self.started = false;
        match &self.runtime {
            Runtime::Local(bin) => {
                let _ = self
                    .pg_ctl(bin)
                    .args(["stop", "-m", "fast", "-w", "-t", "120", "-D"])
                    .arg(&self.dir)
                    .status();
                Ok(())
            }
            Runtime::Image(_) => match self.container.take() {
                Some(mut c) => c.remove(),
                None => Ok(()),
            },
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!("{e}");
            eprintln!("pitr: error: {e}");
        }
    }
}

/// Starts PostgreSQL on the restored directory, checks the achieved point and the queries,
/// and stops it.
/// `runtime` is what [`Runtime::find`] returned before the restore wrote anything.
pub async fn run_server_check(
    plan: &Plan,
    stats: &RestoreStats,
    opts: &ServerCheckOptions,
    runtime: &Runtime,
) -> Result<Report, VerifyError> {
    if plan.standby {
        return Err(VerifyError::Server(
            "--verify proves a restore that recovers and promotes; a --standby restore never promotes".into(),
        ));
    }
    let mut failures = signal_file_failures(plan);
    // Declared before the server: the directory is removed after the server stopped.
    let ws = Workspace::create(plan)?;
    let port = free_port()?;
    let mut server = Server {
        runtime: runtime.clone(),
        dir: plan.dir.clone(),
        log: ws.log.clone(),
        run_as: ws.run_as,
        started: false,
        container: None,
    };
    let began = start_server(&mut server, &ws, port, plan, opts).await?;
    let users = candidate_users(plan, opts);
    let waited = wait_for_promotion(
        &server,
        &ws.sock,
        port,
        &users,
        began,
        opts.timeout,
        failures.is_empty(),
    )
    .await?;
    let recovery_seconds = began.elapsed().as_secs_f64();
    if !waited.promoted && failures.is_empty() {
        failures.push(format!(
            "the server was still in recovery after --verify-timeout {:?}{}: it did not reach the target and promote ({})",
            opts.timeout,
            if waited.last_err.is_empty() {
                String::new()
            } else {
                format!(" ({})", waited.last_err)
            },
            server.log_tail()
        ));
    }
    let Some((mut c, user)) = waited.conn else {
        if let Err(e) = server.stop() {
            failures.push(e);
        }
        return Ok(failed_report(
            plan,
            stats,
            recovery_seconds,
            runtime,
            failures,
        ));
    };
    let point = recovery_point(&mut c, plan, waited.promoted, &mut failures).await?;
    c.close().await;
    let checks = run_checks(&ws.sock, port, &user, opts).await;
    if let Err(e) = server.stop() {
        failures.push(e);
    }
    let fmt = |us: Option<i64>| us.map(crate::restore::target::format_micros);
    let ok = failures.is_empty()
        && point.promoted
        && point.target_matched
        && checks.iter().all(|c| c.ok);
    Ok(Report {
        achieved_last: fmt(point.achieved_us),
        replay_end_lsn: point.replay_end,
        target_matched: point.target_matched,
        promoted: point.promoted,
        achieved_timeline: point.achieved_timeline,
        recovery_seconds,
        rto_seconds: stats.seconds + recovery_seconds,
        wal_replayed_bytes: point.wal_replayed_bytes,
        checks,
        ok,
        failures,
        ..failed_report(plan, stats, recovery_seconds, runtime, Vec::new())
    })
}

/// The signal files a promoting recovery needs (and must not have), as failures.
fn signal_file_failures(plan: &Plan) -> Vec<String> {
    let mut failures = Vec::new();
    if plan.dir.join("standby.signal").exists() {
        failures.push(format!(
            "{} holds standby.signal: the server would stay a standby and never promote",
            plan.dir.display()
        ));
    }
    if !plan.dir.join("recovery.signal").exists() {
        failures.push(format!(
            "{} has no recovery.signal: the server would not recover to the target",
            plan.dir.display()
        ));
    }
    failures
}

/// The verification server's private directory: its socket directory, its own
/// `pg_hba.conf` (trusting only that socket) and its log. Removed when dropped.
struct Workspace {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    hba: PathBuf,
    log: PathBuf,
    /// As root: the user the server runs as (the restored directory's owner).
    run_as: Option<(u32, u32)>,
}

impl Workspace {
    fn create(plan: &Plan) -> Result<Workspace, VerifyError> {
        let work = tempfile::Builder::new()
            .prefix("pitr-verify-")
            .tempdir()
            .map_err(|e| VerifyError::Io("creating a temporary directory".into(), e))?;
        let sock = work.path().to_path_buf();
        let hba = sock.join("pg_hba.conf");
        std::fs::write(&hba, "local all all trust\n")
            .map_err(|e| VerifyError::Io(hba.display().to_string(), e))?;
        let log = sock.join("postgres.log");
        // As root, the server runs as the user the restore handed the directory to.
        let run_as = if euid() == Some(0) {
            use std::os::unix::fs::MetadataExt;
            let owner = std::fs::metadata(&plan.dir)
                .map_err(|e| VerifyError::Io(plan.dir.display().to_string(), e))?;
            if owner.uid() == 0 {
                return Err(VerifyError::Server(format!(
                    "running as root, and {} is owned by root: PostgreSQL cannot run as root; create a \"postgres\" user, or run pitr as the database's owner",
                    plan.dir.display()
                )));
            }
            let (u, g) = (owner.uid(), owner.gid());
            chown_tree(&sock, u, g).map_err(|e| VerifyError::Io(sock.display().to_string(), e))?;
            Some((u, g))
        } else {
            None
        };
        if let Ok(mut live) = LIVE_WORKSPACES.lock() {
            live.push(sock.clone());
        }
        Ok(Workspace {
            _dir: work,
            sock,
            hba,
            log,
            run_as,
        })
    }
}

/// The workspaces of this process not yet dropped: what [`remove_live_workspaces`] removes
/// when a signal's watchdog ends the process without unwinding (a verification stuck in a
/// blocking call).
static LIVE_WORKSPACES: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

impl Drop for Workspace {
    fn drop(&mut self) {
        // The directory itself goes with `_dir`, dropped after this.
        if let Ok(mut live) = LIVE_WORKSPACES.lock() {
            live.retain(|p| p != &self.sock);
        }
    }
}

/// Removes every workspace this process still has (best effort): for the signal watchdog,
/// which exits without running destructors.
pub(crate) fn remove_live_workspaces() {
    let dirs = match LIVE_WORKSPACES.lock() {
        Ok(mut live) => std::mem::take(&mut *live),
        Err(_) => return,
    };
    for d in dirs {
        let _ = std::fs::remove_dir_all(&d);
    }
}

/// `pg_ctl start` on the restored directory (loopback port, private socket, archiving
/// off). Returns when the server was started, the instant recovery began.
async fn start_server(
    server: &mut Server,
    ws: &Workspace,
    port: u16,
    plan: &Plan,
    opts: &ServerCheckOptions,
) -> Result<Instant, VerifyError> {
    let mut settings = vec![
        ("listen_addresses", String::new()),
        ("port", port.to_string()),
        ("unix_socket_directories", ws.sock.display().to_string()),
        ("hba_file", ws.hba.display().to_string()),
        ("archive_mode", "off".into()),
        ("hot_standby", "on".into()),
        ("logging_collector", "off".into()),
        ("ssl", "off".into()),
    ];
    // Debian-style servers keep postgresql.conf outside the data directory.
    if !plan.dir.join("postgresql.conf").exists() {
        let empty = ws.sock.join("postgresql.conf");
        std::fs::write(&empty, "").map_err(|e| VerifyError::Io(empty.display().to_string(), e))?;
        settings.push(("config_file", empty.display().to_string()));
    }
    let began = Instant::now();
    let started = match server.runtime.clone() {
        Runtime::Local(bin) => start_local(server, &bin, ws, plan, opts, &settings)?,
        Runtime::Image(image) => start_container(server, &image, ws, plan, opts, &settings).await?,
    };
    if !started {
        return Err(VerifyError::Server(format!(
            "PostgreSQL did not start on the restored directory: {} (log: {})",
            server.log_tail(),
            keep_log(&ws.log)
        )));
    }
    Ok(began)
}

/// `pg_ctl start -w` with the settings; whether the server started.
fn start_local(
    server: &mut Server,
    bin: &Path,
    ws: &Workspace,
    plan: &Plan,
    opts: &ServerCheckOptions,
    settings: &[(&str, String)],
) -> Result<bool, VerifyError> {
    let opts_str = settings
        .iter()
        .map(|(k, v)| format!("-c {k}='{v}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = server
        .pg_ctl(bin)
        .args(["start", "-w", "-t"])
        .arg(opts.timeout.as_secs().max(1).to_string())
        .arg("-D")
        .arg(&plan.dir)
        .arg("-l")
        .arg(&ws.log)
        .arg("-o")
        .arg(&opts_str)
        .output()
        .map_err(|e| VerifyError::Io(bin.join("pg_ctl").display().to_string(), e))?;
    server.started = out.status.success();
    Ok(server.started)
}

/// `postgres` in a container of the image, as the directory's owner; waits (like
/// `pg_ctl start -w`) until its socket exists. Whether the server started.
async fn start_container(
    server: &mut Server,
    image: &CheckedImage,
    ws: &Workspace,
    plan: &Plan,
    opts: &ServerCheckOptions,
    settings: &[(&str, String)],
) -> Result<bool, VerifyError> {
    use std::os::unix::fs::MetadataExt;
    // Mounted at its own path: that must be absolute (a relative -D works with local
    // binaries, so it must here too).
    let data_dir = std::fs::canonicalize(&plan.dir)
        .map_err(|e| VerifyError::Io(plan.dir.display().to_string(), e))?;
    let meta = std::fs::metadata(&data_dir)
        .map_err(|e| VerifyError::Io(plan.dir.display().to_string(), e))?;
    let args = settings
        .iter()
        .flat_map(|(k, v)| ["-c".to_string(), format!("{k}={v}")])
        .collect();
    let spec = RunSpec {
        data_dir: &data_dir,
        private_dir: &ws.sock,
        user: (meta.uid(), meta.gid()),
        args,
    };
    let c = Container::start(image, &spec)?;
    tracing::info!(container = c.name(), image = %image.image, "verification server started in a container");
    server.container = Some(c);
    server.started = true;
    let port = settings
        .iter()
        .find(|(k, _)| *k == "port")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let socket = ws.sock.join(format!(".s.PGSQL.{port}"));
    let deadline = Instant::now() + opts.timeout;
    while Instant::now() < deadline {
        if socket.exists() {
            return Ok(true);
        }
        if !server.running() {
            return Ok(false);
        }
        // Async: a SIGINT meanwhile drops this future and so removes the container.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(socket.exists())
}

/// The roles tried, in order: `--user`, else `postgres`, the backup's source role, `$USER`.
fn candidate_users(plan: &Plan, opts: &ServerCheckOptions) -> Vec<String> {
    match &opts.user {
        Some(u) => vec![u.clone()],
        None => {
            let mut v = vec!["postgres".to_string()];
            if let Some(u) = &plan.backup.source_user {
                v.push(u.clone());
            }
            if let Ok(u) = std::env::var("USER") {
                v.push(u);
            }
            v
        }
    }
}

/// What waiting for the end of recovery found.
struct Waited {
    /// A connection, and the role it is for.
    conn: Option<(PgConn, String)>,
    /// The last connection or query error.
    last_err: String,
    /// The server left recovery.
    promoted: bool,
}

/// Waits until recovery ends (the server leaves recovery: it promoted), at most `timeout`
/// from `began`; not at all unless `wait`. A server that stops meanwhile is an error.
async fn wait_for_promotion(
    server: &Server,
    sock: &Path,
    port: u16,
    users: &[String],
    began: Instant,
    timeout: Duration,
    wait: bool,
) -> Result<Waited, VerifyError> {
    let mut conn = None;
    let mut last_err = String::new();
    let mut promoted = false;
    while wait && began.elapsed() < timeout {
        if !server.running() {
            return Err(VerifyError::Server(format!(
                "PostgreSQL stopped during recovery: {} (log: {})",
                server.log_tail(),
                keep_log(&server.log)
            )));
        }
        if conn.is_none() {
            for u in users {
                let ci = format!(
                    "host={} port={port} user={u} dbname=postgres",
                    sock.display()
                );
                let Ok(params) = ConnParams::parse(&ci, false) else {
                    continue;
                };
                match PgConn::connect(&params, false).await {
                    Ok(c) => {
                        conn = Some((c, u.clone()));
                        break;
                    }
                    Err(e) => last_err = e.to_string(),
                }
            }
        }
        if let Some((c, _)) = conn.as_mut() {
            match c.simple_query("SELECT pg_is_in_recovery()").await {
                Ok(r) if r.get(0, 0) == Some("f") => {
                    promoted = true;
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    last_err = e.to_string();
                    conn = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Waited {
        conn,
        last_err,
        promoted,
    })
}

/// Where recovery stopped, against the plan's prediction.
struct Point {
    achieved_us: Option<i64>,
    replay_end: Option<String>,
    /// Promoted, and no longer in recovery when asked.
    promoted: bool,
    achieved_timeline: Option<u32>,
    target_matched: bool,
    wal_replayed_bytes: u64,
}

/// Asks the recovered server where replay stopped and on which timeline it is, and compares
/// that with the plan (each mismatch is pushed to `failures`).
async fn recovery_point(
    c: &mut PgConn,
    plan: &Plan,
    promoted: bool,
    failures: &mut Vec<String>,
) -> Result<Point, VerifyError> {
    let mut promoted = promoted;
    let r = c
        .simple_query(
            "SELECT to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), pg_last_wal_replay_lsn()::text, pg_is_in_recovery()::text, CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
        )
        .await
        .map_err(|e| VerifyError::Server(format!("querying the recovered server: {e}")))?;
    let achieved = r.get(0, 0).map(str::to_string);
    let replay_end = r.get(0, 1).map(str::to_string);
    if r.get(0, 2) != Some("false") {
        promoted = false;
    }
    let achieved_timeline = r.get(0, 3).and_then(|h| u32::from_str_radix(h, 16).ok());
    if promoted && achieved_timeline != plan.promotes_to {
        failures.push(format!(
            "the server promoted to timeline {}, not the predicted {}: the repo's timeline history is not what the plan assumed",
            achieved_timeline.map_or_else(|| "?".to_string(), |t| t.to_string()),
            plan.promotes_to.map_or_else(|| "?".to_string(), |t| t.to_string())
        ));
    }
    let achieved_us = achieved
        .as_deref()
        .and_then(crate::repo::catalog::parse_micros);
    let expected_us = plan.last_timestamped.as_ref().map(|x| x.micros);
    let end_lsn = replay_end
        .as_deref()
        .and_then(|s| s.parse::<walfmt::Lsn>().ok());
    let target_matched = achieved_us == expected_us && point_ok(plan, end_lsn);
    if !target_matched {
        failures.push(format!(
            "the achieved point is not the predicted one: last transaction {} (expected {}), replay ended at {} (stop {:?}{})",
            achieved_us.map_or_else(|| "none".to_string(), crate::restore::target::format_micros),
            expected_us.map_or_else(|| "none".to_string(), crate::restore::target::format_micros),
            replay_end.as_deref().unwrap_or("?"),
            plan.stop,
            plan.stop_record
                .map(|r| format!(", stop record {}..{}", r.start, r.end))
                .unwrap_or_default()
        ));
    }
    let wal_replayed_bytes = end_lsn.map_or(0, |l| l.bytes_since(plan.backup.start()));
    Ok(Point {
        achieved_us,
        replay_end,
        promoted,
        achieved_timeline,
        target_matched,
        wal_replayed_bytes,
    })
}

/// Whether replay ended where the plan's stop says it must.
fn point_ok(plan: &Plan, end_lsn: Option<walfmt::Lsn>) -> bool {
    match (plan.stop, end_lsn) {
        // Replay must have stopped before the first excluded record...
        (Stop::Before(l), Some(end)) => end <= l && end >= plan.backup.end(),
        // ... or exactly after the included one.
        // (PostgreSQL's EndRecPtr is MAXALIGNed.)
        (Stop::After(_), Some(end)) => plan
            .stop_record
            .is_none_or(|r| r.end.maxalign() == Some(end)),
        // ... or at the end of the WAL placed: at most its end, or, when that end is inside
        // a segment (a partial), that segment's end, which is where PostgreSQL says replay
        // ended after a WAL switch record (the rest of the segment is consumed by it; pitr
        // placed nothing beyond).
        (Stop::EndOfWal, Some(end)) => {
            end >= plan.backup.end()
                && (end <= plan.wal_end || Some(end) == segment_end_after(plan.wal_end, plan.seg))
        }
        (_, None) => false,
    }
}

/// The end of the segment `l` is inside (`None` at a segment boundary: nothing to round up).
fn segment_end_after(l: walfmt::Lsn, seg: walfmt::WalSegSize) -> Option<walfmt::Lsn> {
    (l.segment_offset(seg) != 0).then(|| walfmt::Lsn((l.segment(seg).0 + 1) * seg.bytes()))
}

/// Runs the `--check-sql` queries in the requested database, as `user`.
async fn run_checks(
    sock: &Path,
    port: u16,
    user: &str,
    opts: &ServerCheckOptions,
) -> Vec<CheckResult> {
    let mut checks = Vec::new();
    if opts.checks.is_empty() {
        return checks;
    }
    let ci = format!(
        "host={} port={port} user={user} dbname={}",
        sock.display(),
        opts.dbname
    );
    let conn = match ConnParams::parse(&ci, false) {
        Ok(p) => PgConn::connect(&p, false).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match conn {
        Ok(mut c) => {
            for ch in &opts.checks {
                let res = c.simple_query(&ch.sql).await;
                let (got, error) = match res {
                    Ok(r) => (r.get(0, 0).map(str::to_string), None),
                    Err(e) => (None, Some(e.to_string())),
                };
                let ok = error.is_none()
                    && ch
                        .expect
                        .as_ref()
                        .is_none_or(|e| got.as_deref() == Some(e.as_str()));
                checks.push(CheckResult {
                    sql: ch.sql.clone(),
                    expect: ch.expect.clone(),
                    got,
                    error,
                    ok,
                });
            }
            c.close().await;
        }
        Err(e) => {
            for ch in &opts.checks {
                checks.push(CheckResult {
                    sql: ch.sql.clone(),
                    expect: ch.expect.clone(),
                    got: None,
                    error: Some(format!("cannot connect to database {}: {e}", opts.dbname)),
                    ok: false,
                });
            }
        }
    }
    checks
}

/// A report for a verification that failed before it could query the server.
fn failed_report(
    plan: &Plan,
    stats: &RestoreStats,
    recovery_seconds: f64,
    runtime: &Runtime,
    failures: Vec<String>,
) -> Report {
    Report {
        target: plan.target.clone(),
        target_utc: plan.target_utc.clone(),
        backup: plan.backup.id.clone(),
        timeline: plan.timeline,
        expected_last: plan.last_included.as_ref().map(|x| {
            format!(
                "{} of xid {} at {} (LSN {})",
                x.kind,
                x.xid,
                crate::restore::target::format_micros(x.micros),
                x.lsn
            )
        }),
        achieved_last: None,
        replay_end_lsn: None,
        target_matched: false,
        promoted: false,
        expected_timeline: plan.promotes_to,
        achieved_timeline: None,
        failures,
        restore_seconds: stats.seconds,
        recovery_seconds,
        rto_seconds: stats.seconds + recovery_seconds,
        predicted_rto_seconds: plan.rto.as_ref().and_then(|e| e.seconds),
        wal_replayed_bytes: 0,
        checks: Vec::new(),
        ok: false,
        postgres: runtime.describe(),
    }
}

/// Keeps the server log of a failed verification next to the temporary directory's removal.
fn keep_log(log: &Path) -> String {
    let now = jiff::Timestamp::now();
    let dest = std::env::temp_dir().join(format!(
        "pitr-verify-{}-{}-{}.log",
        now.as_second(),
        std::process::id(),
        now.subsec_nanosecond()
    ));
    match std::fs::copy(log, &dest) {
        Ok(_) => dest.display().to_string(),
        Err(_) => log.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walfmt::{Lsn, WalSegSize};

    /// Replay that ends at a partial's segment end (after a WAL switch record) is the end of
    /// the WAL placed; past that segment, or at a boundary already, it is not.
    #[test]
    fn a_switch_record_ends_replay_at_the_partial_s_segment_end() {
        let mb = WalSegSize::new(1 << 20).unwrap();
        assert_eq!(segment_end_after(Lsn(0xAE_0000), mb), Some(Lsn(0xB0_0000)));
        assert_eq!(segment_end_after(Lsn(0xB0_0000), mb), None);
        assert_eq!(
            segment_end_after(Lsn(0x0300_0001), WalSegSize::DEFAULT),
            Some(Lsn(0x0400_0000))
        );
    }
}
