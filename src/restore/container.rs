//! The `--verify` server in a container (`pitr restore --verify --verify-image IMAGE`), for a
//! CI runner that has Docker but not the PostgreSQL binaries of the backup's major.
//!
//! # Why the `docker` CLI and not a Docker API client
//!
//! pitr drives the container with the `docker` command-line program (or any program with
//! its interface: `PITR_CONTAINER_CLI=podman`), not with `bollard`:
//! - the CLI already reads everything users configure Docker with (`DOCKER_HOST`,
//!   `DOCKER_CONTEXT`, `~/.docker/config.json`, TLS settings, rootless sockets), so
//!   `--verify-image` talks to exactly the engine `docker run` would;
//! - Podman's compatible CLI works unchanged (rootful; rootless engines map uids, so the
//!   restored directory's owner is not the container's user), which a Docker API client
//!   would reach only through Podman's emulated socket;
//! - it adds no dependency tree (bollard brings its own HTTP stack, API models and
//!   versioning) for a few commands (`version`, `image inspect`, `pull`, `run`, `inspect`,
//!   `logs`, `stop`, `rm`, `ps`), whose output pitr reads only in stable `--format`
//!   templates.
//!
//! # Invariants
//!
//! - Checked before anything is written ([`check_image`]): the CLI exists, the engine
//!   answers, the image is present (pulled once if not), and its `postgres --version`
//!   names the backup's major. Each failure is one line saying what to do.
//! - The container has no network (`--network none`): the server listens on no TCP address
//!   (`listen_addresses=''`) and only on a unix socket in pitr's private directory, which
//!   is bind-mounted at the same path; so the connection rules are the same as with local
//!   binaries. The restored directory, its tablespaces and the private directory are
//!   bind-mounted at their own paths, and the server runs as the restored directory's
//!   owner (`--user UID:GID`).
//! - The image that runs is the one checked: its id, taken after the check (a tag moved
//!   meanwhile changes nothing).
//! - Every CLI call has a time limit (30 s; `pull` 15 min; `stop` 150 s) and runs in its own
//!   process group: a hung engine is a one-line error, never a wait without end, and a
//!   terminal's Ctrl-C reaches pitr, which cleans up, not a half-done `docker run`.
//! - Removal is checked: a container that is still there afterwards, or a server that left
//!   `postmaster.pid`, fails the verification, naming the container and how to remove it (a
//!   server left running would share the directory with the user's own).
//! - No container outlives the check: [`Container`]'s `Drop` stops (SIGINT: PostgreSQL's
//!   fast shutdown, leaving the directory shut down cleanly) and removes it, on success,
//!   failure, timeout, panic, and when `restore` is interrupted by SIGINT/SIGTERM (the
//!   verification future is dropped; if it is stuck in a call, a watchdog removes this
//!   process's containers by label after 5 s and exits 130: [`remove_mine`]). Its anonymous
//!   volumes go with it. Only a SIGKILL of pitr can leave one behind; it
//!   carries the labels `pitr.verify=PID` (pitr's process), `pitr.verify.host=HOSTNAME` and
//!   `pitr.verify.dir=DIR` (the restored directory), and the next `--verify-image` run on
//!   the same host removes every such container whose pitr process is gone
//!   ([`remove_orphans`]); by hand: `docker rm -f $(docker ps -aq --filter label=pitr.verify)`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Why `--verify-image` cannot run. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// The CLI is not installed.
    #[error(
        "--verify-image needs the docker CLI, and {cli:?} was not found, could not run or did not finish ({source}): install or start Docker, or set PITR_CONTAINER_CLI to a compatible CLI (podman)"
    )]
    NoCli {
        /// The program tried.
        cli: String,
        /// Why it could not run.
        #[source]
        source: std::io::Error,
    },
    /// The engine does not answer.
    #[error(
        "--verify-image: the container engine does not answer ({cli} version: {detail}): start Docker, or check DOCKER_HOST"
    )]
    NoEngine {
        /// The program.
        cli: String,
        /// Its error, one line.
        detail: String,
    },
    /// The image is neither present nor pullable.
    #[error(
        "--verify-image: image {image} is not present and could not be pulled ({detail}): build or pull it first, or name another image"
    )]
    NoImage {
        /// The image.
        image: String,
        /// The pull error, one line.
        detail: String,
    },
    /// `postgres --version` did not run in the image.
    #[error(
        "--verify-image: {image} has no usable postgres on its PATH ({detail}): use a PostgreSQL image such as postgres:{major}"
    )]
    NoPostgres {
        /// The image.
        image: String,
        /// The error, one line.
        detail: String,
        /// The backup's major.
        major: u32,
    },
    /// The image's major is not the backup's.
    #[error(
        "--verify-image: {image} runs {found}, but the backup is of PostgreSQL {major}: use an image of major {major} (e.g. postgres:{major})"
    )]
    WrongMajor {
        /// The image.
        image: String,
        /// Its `postgres --version` line.
        found: String,
        /// The backup's major.
        major: u32,
    },
    /// `docker run` failed.
    #[error("--verify-image: the container did not start ({detail})")]
    Run {
        /// The error, one line.
        detail: String,
    },
}

/// The container CLI: `PITR_CONTAINER_CLI`, else `docker`.
#[derive(Debug, Clone)]
pub(crate) struct Cli {
    program: OsString,
}

impl Cli {
    /// From the environment.
    pub(crate) fn from_env() -> Cli {
        Cli {
            program: std::env::var_os("PITR_CONTAINER_CLI")
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "docker".into()),
        }
    }

    fn name(&self) -> String {
        self.program.to_string_lossy().into_owned()
    }

    fn command(&self) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(&self.program);
        // Its own process group: a terminal's Ctrl-C reaches pitr, which cleans up, and not a
        // half-done `docker run` (which could leave a created container behind).
        c.stdin(Stdio::null()).process_group(0);
        c
    }

    /// Runs the CLI with `args` (at most `limit`; killed after that), capturing its output.
    fn output(&self, args: &[&str], limit: Duration) -> Result<Output, ContainerError> {
        let mut cmd = self.command();
        cmd.args(args);
        run_within(&mut cmd, limit).map_err(|source| ContainerError::NoCli {
            cli: self.name(),
            source,
        })
    }
}

/// Time limits of the CLI calls: a hung engine is an error, never a wait without end.
const QUICK: Duration = Duration::from_secs(30);
/// `docker pull` of a missing image.
const PULL: Duration = Duration::from_secs(900);
/// `docker stop --time 120` (fast shutdown, then SIGKILL) plus the CLI's own time.
const STOP: Duration = Duration::from_secs(150);

/// Runs `cmd` with its output captured, killing it after `limit` (then the error is
/// `TimedOut`). Output is drained by threads, so a large `docker logs` cannot block it.
fn run_within(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    use std::io::Read;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}s", limit.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The last non-empty line of a program's stderr (or stdout), for one-line errors.
fn last_line(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    let out = String::from_utf8_lossy(&o.stdout);
    err.lines()
        .chain(out.lines())
        .map(str::trim)
        .filter(|l| !(l.starts_with("Run '") || l.starts_with("See '")))
        .rfind(|l| !l.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("exit {}", o.status))
}

/// An image checked to run the backup's major.
#[derive(Debug, Clone)]
pub struct CheckedImage {
    cli: Cli,
    /// The image as given.
    pub(crate) image: String,
    /// The image's id when it was checked: what runs, so a tag moved meanwhile changes
    /// nothing.
    id: String,
    /// Its `postgres --version` line.
    pub(crate) version: String,
}

impl CheckedImage {
    /// For the report: the image and its server version.
    pub(crate) fn describe(&self) -> String {
        format!("image {} ({})", self.image, self.version)
    }
}

/// The id of `image` in the engine, if present.
fn image_id(cli: &Cli, image: &str) -> Result<Option<String>, ContainerError> {
    let o = cli.output(&["image", "inspect", "--format", "{{.Id}}", image], QUICK)?;
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    Ok((o.status.success() && !id.is_empty()).then_some(id))
}

/// Checks, before anything is written, that `image` can run the `--verify` server of
/// PostgreSQL `major` (see the module's invariants).
pub(crate) fn check_image(image: &str, major: u32) -> Result<CheckedImage, ContainerError> {
    let cli = Cli::from_env();
    let v = match cli.output(&["version", "--format", "{{.Server.Version}}"], QUICK) {
        Err(ContainerError::NoCli { source, .. })
            if source.kind() == std::io::ErrorKind::TimedOut =>
        {
            return Err(ContainerError::NoEngine {
                cli: cli.name(),
                detail: source.to_string(),
            });
        }
        r => r?,
    };
    if !v.status.success() {
        return Err(ContainerError::NoEngine {
            cli: cli.name(),
            detail: last_line(&v),
        });
    }
    let id = match image_id(&cli, image)? {
        Some(id) => id,
        None => {
            let pulled = cli.output(&["pull", "--quiet", image], PULL)?;
            if !pulled.status.success() {
                return Err(ContainerError::NoImage {
                    image: image.into(),
                    detail: last_line(&pulled),
                });
            }
            image_id(&cli, image)?.ok_or_else(|| ContainerError::NoImage {
                image: image.into(),
                detail: "pulled, but not in the engine afterwards".into(),
            })?
        }
    };
    let o = cli.output(
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            "pitr.verify=version",
            "--entrypoint",
            "postgres",
            &id,
            "--version",
        ],
        QUICK,
    )?;
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if !o.status.success() || text.is_empty() {
        return Err(ContainerError::NoPostgres {
            image: image.into(),
            detail: last_line(&o),
            major,
        });
    }
    let found = crate::pgproc::major_of_version_line(&text);
    if found != major {
        return Err(ContainerError::WrongMajor {
            image: image.into(),
            found: text,
            major,
        });
    }
    Ok(CheckedImage {
        cli,
        image: image.into(),
        id,
        version: text,
    })
}

/// What the container runs: PostgreSQL on `data_dir`, as `user`, with `args`.
pub(crate) struct RunSpec<'a> {
    /// The restored directory (absolute).
    pub(crate) data_dir: &'a Path,
    /// pitr's private directory (socket, `pg_hba.conf`, log).
    pub(crate) private_dir: &'a Path,
    /// The data directory's owner.
    pub(crate) user: (u32, u32),
    /// `postgres`'s arguments after `-D DIR`.
    pub(crate) args: Vec<String>,
}

/// A running (or exited) verification container; stopped and removed when dropped.
#[derive(Debug)]
pub(crate) struct Container {
    cli: Cli,
    name: String,
    data_dir: PathBuf,
    removed: bool,
}

/// The directories a restored data directory's tablespace links point to.
fn tablespace_dirs(data_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("pg_tblspc")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|p| p.is_absolute())
        .collect()
}

/// This host's name, for the `pitr.verify.host` label.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// Removes the verification containers a killed pitr left on this host: those labelled
/// with this host's name and the pid of a process that no longer exists.
fn remove_orphans(cli: &Cli) {
    let host = hostname();
    let Ok(o) = cli.output(
        &[
            "ps",
            "--all",
            "--filter",
            "label=pitr.verify",
            "--filter",
            &format!("label=pitr.verify.host={host}"),
            "--format",
            "{{.Names}} {{.Label \"pitr.verify\"}}",
        ],
        QUICK,
    ) else {
        return;
    };
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let Some((name, pid)) = line.split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.trim().parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::warn!(
                container = name,
                pid,
                "removing a verification container left by a pitr that was killed"
            );
            let _ = cli.output(&["rm", "--force", "--volumes", name], QUICK);
        }
    }
}

/// Stops and removes every verification container of this process (by its
/// `pitr.verify=PID` label): the signal watchdog's last resort when the verification is
/// stuck in a blocking call.
pub(crate) fn remove_mine() {
    let cli = Cli::from_env();
    let Ok(o) = cli.output(
        &[
            "ps",
            "--all",
            "--filter",
            &format!("label=pitr.verify={}", std::process::id()),
            "--format",
            "{{.Names}}",
        ],
        QUICK,
    ) else {
        return;
    };
    for name in String::from_utf8_lossy(&o.stdout).lines() {
        let _ = cli.output(&["stop", "--time", "10", name], QUICK);
        let _ = cli.output(&["rm", "--force", "--volumes", name], QUICK);
    }
}

/// A `--mount` argument binding `p` at its own path. The fields are CSV-quoted, so a path
/// may hold `:` or `,` (which `-v SRC:DST` cannot).
fn same_path_mount(p: &Path) -> String {
    let q = |f: String| format!("\"{}\"", f.replace('"', "\"\""));
    format!(
        "type=bind,{},{}",
        q(format!("source={}", p.display())),
        q(format!("target={}", p.display()))
    )
}

impl Container {
    /// `docker run -d` of the checked image on the restored directory.
    pub(crate) fn start(
        image: &CheckedImage,
        spec: &RunSpec<'_>,
    ) -> Result<Container, ContainerError> {
        remove_orphans(&image.cli);
        let name = format!(
            "pitr-verify-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond() % 1_000_000_000
        );
        let mut args: Vec<String> = vec![
            "run".into(),
            "--detach".into(),
            "--name".into(),
            name.clone(),
            "--label".into(),
            format!("pitr.verify={}", std::process::id()),
            "--label".into(),
            format!("pitr.verify.host={}", hostname()),
            "--label".into(),
            format!("pitr.verify.dir={}", spec.data_dir.display()),
            "--network".into(),
            "none".into(),
            "--shm-size".into(),
            "256m".into(),
            "--stop-signal".into(),
            "SIGINT".into(),
            "--stop-timeout".into(),
            "120".into(),
            "--user".into(),
            format!("{}:{}", spec.user.0, spec.user.1),
            "--mount".into(),
            same_path_mount(spec.data_dir),
            "--mount".into(),
            same_path_mount(spec.private_dir),
        ];
        for t in tablespace_dirs(spec.data_dir) {
            args.extend(["--mount".into(), same_path_mount(&t)]);
        }
        args.extend([
            "--entrypoint".into(),
            "postgres".into(),
            image.id.clone(),
            "-D".into(),
            spec.data_dir.display().to_string(),
        ]);
        args.extend(spec.args.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Named before it is known to exist: a half-created container is removed too.
        let mut c = Container {
            cli: image.cli.clone(),
            name,
            data_dir: spec.data_dir.to_path_buf(),
            removed: false,
        };
        let o = image.cli.output(&args, QUICK)?;
        if !o.status.success() {
            let detail = last_line(&o);
            if let Err(e) = c.remove() {
                return Err(ContainerError::Run {
                    detail: format!("{detail}; and {e}"),
                });
            }
            return Err(ContainerError::Run { detail });
        }
        Ok(c)
    }

    /// The container's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether PostgreSQL still runs in it.
    pub(crate) fn running(&self) -> bool {
        self.cli
            .output(
                &["inspect", "--format", "{{.State.Running}}", &self.name],
                QUICK,
            )
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "true"
            })
    }

    /// Its output so far (PostgreSQL's log: stderr with logging_collector off).
    pub(crate) fn logs(&self) -> String {
        match self.cli.output(&["logs", &self.name], QUICK) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => e.to_string(),
        }
    }

    /// Stops PostgreSQL (fast shutdown; killed after 120 s), removes the container and its
    /// anonymous volumes, and checks that it is gone and that the server shut down (no
    /// `postmaster.pid` left). An error says what is left and how to remove it: the
    /// directory must not be started while a server may still run on it.
    pub(crate) fn remove(&mut self) -> Result<(), String> {
        if self.removed {
            return Ok(());
        }
        // Tried once: a failure is reported, not retried by Drop.
        self.removed = true;
        let stop = self
            .cli
            .output(&["stop", "--time", "120", &self.name], STOP);
        let _ = self
            .cli
            .output(&["rm", "--force", "--volumes", &self.name], QUICK);
        let gone = self
            .cli
            .output(&["inspect", "--format", "{{.Id}}", &self.name], QUICK)
            .is_ok_and(|o| !o.status.success());
        if !gone {
            return Err(format!(
                "the verification container {0} could not be removed (docker stop: {1}): a server may still run on {2}; remove it with `docker rm -f {0}` before starting PostgreSQL there",
                self.name,
                match &stop {
                    Ok(o) if o.status.success() => "ok".to_string(),
                    Ok(o) => last_line(o),
                    Err(e) => e.to_string(),
                },
                self.data_dir.display()
            ));
        }
        if self.data_dir.join("postmaster.pid").exists() {
            return Err(format!(
                "the server in the verification container did not shut down cleanly ({} remains)",
                self.data_dir.join("postmaster.pid").display()
            ));
        }
        Ok(())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::error!("{e}");
            eprintln!("pitr: error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_cli_is_one_line_naming_the_program() {
        let cli = Cli {
            program: "/nonexistent/docker".into(),
        };
        let e = cli.output(&["version"], QUICK).unwrap_err().to_string();
        assert!(e.contains("\"/nonexistent/docker\" was not found"), "{e}");
        assert!(e.contains("PITR_CONTAINER_CLI"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn tablespace_links_are_mounted_at_their_own_paths() {
        let d = tempfile::tempdir().unwrap();
        let ts = d.path().join("ts");
        std::fs::create_dir_all(d.path().join("pg_tblspc")).unwrap();
        std::fs::create_dir_all(&ts).unwrap();
        std::os::unix::fs::symlink(&ts, d.path().join("pg_tblspc/16384")).unwrap();
        assert_eq!(tablespace_dirs(d.path()), vec![ts.clone()]);
        assert_eq!(
            same_path_mount(&ts),
            format!(r#"type=bind,"source={0}","target={0}""#, ts.display())
        );
        assert_eq!(
            same_path_mount(Path::new(r#"/a:b,"c"#)),
            r#"type=bind,"source=/a:b,""c","target=/a:b,""c""#
        );
        assert!(tablespace_dirs(&d.path().join("nothing")).is_empty());
    }
}
