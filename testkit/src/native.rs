//! PostgreSQL's own archiving and recovery, for differential tests against pitr.
//!
//! - [`WalReceiver`]: `pg_receivewal` on its own physical slot, archiving a cluster's WAL into
//!   a directory (complete segments under their names, the one being filled as `.partial`).
//! - [`Cluster::base_backup_plain`]: `pg_basebackup -Fp -X stream` into a directory.
//! - [`Cluster::recover`]: a postmaster on an existing data directory (a copied base backup
//!   with `recovery.signal`, or what `pitr restore` wrote), waiting until recovery has ended
//!   and the server accepts writes, or reporting why it stopped.
//!
//! # Invariants
//!
//! - Every process is a child of the test process that dies with it (`PR_SET_PDEATHSIG`), as
//!   for [`Cluster::start`]; `Drop` stops it.
//! - A recovered cluster's data directory is the caller's: dropping the cluster stops the
//!   server and removes its socket and log directory, never the data directory.
//! - [`Cluster::recover`] is pessimistic: it succeeds only once `pg_is_in_recovery()` is false.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{
    Cluster, PgInstall, as_server_user, chown_to_server, chown_tree_to_server, die_with_parent,
    run_checked, tail,
};

/// A running `pg_receivewal` into a directory. Killed on drop; [`WalReceiver::stop`] ends it
/// cleanly.
#[derive(Debug)]
pub struct WalReceiver {
    child: Option<Child>,
    dir: PathBuf,
    log: PathBuf,
}

impl WalReceiver {
    /// The archive directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Waits until the complete segment `name` is in the archive (`.partial` does not count:
    /// native recovery cannot use it); panics with the receiver's log after `timeout`.
    pub fn wait_for_segment(&mut self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.dir.join(name).is_file() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none(),
                "pg_receivewal exited ({exited:?}) before {name} was complete:\n{}",
                tail(&self.log, 20)
            );
            assert!(
                Instant::now() < deadline,
                "pg_receivewal did not complete {name} in {timeout:?}:\n{}",
                tail(&self.log, 20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The complete segment files of timeline `tli` in the archive, in order.
    pub fn segments(&self, tli: u32) -> Vec<String> {
        let prefix = format!("{tli:08X}");
        let mut v: Vec<String> = fs::read_dir(&self.dir)
            .expect("read the pg_receivewal archive")
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n.len() == 24 && n.starts_with(&prefix) && n.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .collect();
        v.sort();
        v
    }

    /// Stops it with SIGINT (pg_receivewal's documented way: it flushes and exits) and waits.
    pub fn stop(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for WalReceiver {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cluster {
    /// Creates the physical slot `slot` (reserving WAL now) and starts `pg_receivewal` on it
    /// into `dir` (created, handed to the server user), logging to `log`. Returns once it
    /// streams (the slot is active).
    pub fn receive_wal(&self, dir: &Path, slot: &str, log: &Path) -> WalReceiver {
        self.psql(&format!(
            "SELECT pg_create_physical_replication_slot('{slot}', true)"
        ));
        fs::create_dir_all(dir).expect("create the pg_receivewal archive");
        chown_to_server(dir);
        let logf = fs::File::create(log).expect("create the pg_receivewal log");
        chown_to_server(log);
        let mut cmd = Command::new(self.install.tool("pg_receivewal"));
        cmd.arg("-D")
            .arg(dir)
            .args(["-S", slot, "--no-loop", "-w", "-v", "-U", "postgres", "-h"])
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup log"))
            .stderr(logf);
        if let Some(pw) = self.password() {
            cmd.env("PGPASSWORD", pw);
        }
        as_server_user(&mut cmd);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn pg_receivewal");
        let mut r = WalReceiver {
            child: Some(child),
            dir: dir.to_path_buf(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.psql(&format!(
            "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
        )) != "t"
        {
            let exited = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "pg_receivewal did not start streaming ({exited:?}):\n{}",
                tail(log, 20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// `pg_basebackup -Fp -X stream -c fast` of this cluster into `dest` (created empty,
    /// owned by the server user, mode 0700): a data directory to recover from.
    pub fn base_backup_plain(&self, dest: &Path) {
        fs::create_dir_all(dest).expect("create the base backup directory");
        fs::set_permissions(dest, fs::Permissions::from_mode(0o700)).expect("chmod");
        chown_to_server(dest);
        let mut bb = Command::new(self.install.tool("pg_basebackup"));
        bb.arg("-D")
            .arg(dest)
            .args([
                "-F", "p", "-X", "stream", "-c", "fast", "-U", "postgres", "-h",
            ])
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(pw) = self.password() {
            bb.env("PGPASSWORD", pw);
        }
        run_checked(as_server_user(&mut bb), "pg_basebackup");
    }

    /// Starts a postmaster of `install` on the existing data directory `data` (handed to the
    /// server user, mode 0700; its parents must be reachable by that user), with `settings`
    /// as extra `-c name=value` options and its own port, socket and log, and waits until
    /// recovery is over: `pg_is_in_recovery()` is false. `Err` with the server's FATAL/PANIC
    /// lines (or its log tail) when the server stops first or `timeout` passes: recovery
    /// failed. The cluster owns only its socket/log directory, not `data`.
    pub fn recover(
        install: &PgInstall,
        data: &Path,
        settings: &[&str],
        timeout: Duration,
    ) -> Result<Cluster, String> {
        chown_tree_to_server(data);
        fs::set_permissions(data, fs::Permissions::from_mode(0o700)).expect("chmod data");
        let dir = tempfile::Builder::new()
            .prefix("pitr-pg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        chown_to_server(dir.path());
        let mut c = Cluster {
            install: install.clone(),
            dir: Some(dir),
            data: data.to_path_buf(),
            port: 0,
            auth: crate::Auth::Trust,
            child: None,
        };
        let settings: Vec<String> = settings.iter().map(|s| (*s).to_owned()).collect();
        let start = Instant::now();
        let why = |c: &Cluster| {
            let log = fs::read_to_string(c.log_path()).unwrap_or_default();
            let bad: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("FATAL:") || l.contains("PANIC:"))
                // Not the refusals of our own connection attempts.
                .filter(|l| !l.contains("the database system is"))
                .collect();
            if bad.is_empty() {
                tail(&c.log_path(), 8)
            } else {
                bad.join("\n")
            }
        };
        if let Err(e) = c.launch_with(&settings, timeout) {
            let w = why(&c);
            return Err(if w.is_empty() { e } else { w });
        }
        loop {
            if !c.is_running() {
                let w = why(&c);
                c.child = None;
                return Err(w);
            }
            if c.try_psql("SELECT pg_is_in_recovery()").as_deref() == Ok("f") {
                return Ok(c);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "still in recovery after {timeout:?}:\n{}",
                    tail(&c.log_path(), 8)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
