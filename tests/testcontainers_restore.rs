//! What a user's CI does with testcontainers (docs/ci-restore-check.md, "Testcontainers"):
//! `pitr restore --to T` without `--verify`, then PostgreSQL started by the `testcontainers`
//! crate on the restored directory recovers to `T` on its own, with neither pitr nor the
//! repo, and holds exactly the rows committed at or before `T`.
//!
//! Runs under the private engine with the local images (`tests/docker.rs`); skips loudly
//! without them, fails under `CI=true`. testcontainers-rs has no reaper container (no Ryuk):
//! the containers go when their handle is dropped, so the test refuses to run when
//! `TESTCONTAINERS_COMMAND=keep` (which keeps them), labels its container, and removes what
//! carries its label when it panics.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use testcontainers::core::{AccessMode, CmdWaitFor, ExecCommand, Mount, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};
use testkit::{Cluster, PgInstall};

use crate::docker::{self, Engine};
use crate::restore::{ROWS_SQL, backup, commit_times, restore_dir, rows, run, text};
use crate::stream::{TestRepo, free_addr, opts, pitr, start_stream, stop, switch_and_wait};

/// The label every container of this test carries (value: unique per container).
const LABEL: &str = "pitr-test.testcontainers";

/// testcontainers removes a container when its handle is dropped, unless
/// `TESTCONTAINERS_COMMAND=keep`: then this test would leave its containers behind.
fn containers_are_removed() -> bool {
    let keep = std::env::var("TESTCONTAINERS_COMMAND").is_ok_and(|v| v.trim() == "keep");
    if !keep {
        return true;
    }
    let what = "TESTCONTAINERS_COMMAND=keep would leave this test's containers behind: unset it";
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{what} (CI=true: the container tests must run)"
    );
    eprintln!("******** SKIPPED: {what} ********");
    false
}

/// Removes the containers that carry `LABEL=value`, on every exit of the test: a panic, or a
/// container testcontainers created but never handed back (its start failed).
struct Leftovers<'a> {
    engine: &'a Engine,
    value: String,
}

impl Drop for Leftovers<'_> {
    fn drop(&mut self) {
        for name in self
            .engine
            .containers_labelled(&format!("{LABEL}={}", self.value))
        {
            if std::thread::panicking()
                && let Ok(o) = self
                    .engine
                    .docker(&["logs", "--tail", "40", &name])
                    .output()
            {
                eprintln!(
                    "container {name}'s log:\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            let _ = self.engine.docker(&["rm", "-f", "-v", &name]).output();
        }
    }
}

/// `psql -At -c sql` run in the container (the runner needs no PostgreSQL client) over the
/// host's loopback.
fn psql(pg: &Container<GenericImage>, port: u16, sql: &str) -> String {
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let mut r = pg
        .exec(
            ExecCommand::new(["psql", "-XAtq", "-d", &conninfo, "-c", sql])
                .with_cmd_ready_condition(CmdWaitFor::exit()),
        )
        .unwrap();
    let out = String::from_utf8(r.stdout_to_vec().unwrap()).unwrap();
    let err = String::from_utf8_lossy(&r.stderr_to_vec().unwrap()).into_owned();
    assert_eq!(r.exit_code().unwrap(), Some(0), "psql {sql:?}: {err}");
    out.trim().to_owned()
}

/// Stream, backup, five commits at known instants, DROP TABLE; `pitr restore --to` a time
/// between the third and the fourth commit into `dir`. Returns the target and the time of
/// the last commit recovery must replay (`plan.last_included.time`).
fn restore_between_3_and_4(install: &PgInstall, tmp: &Path, dir: &Path) -> (String, String) {
    let c = Cluster::start(install, opts().conf("track_commit_timestamp = on"));
    let repo_dir = tmp.join("repo");
    let repo = TestRepo::local(&repo_dir);
    let s = start_stream(&c, &repo, &tmp.join("stream.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY)");
    backup(&c, &repo, "base");
    for id in 1..=5 {
        c.psql(&format!("INSERT INTO t VALUES ({id})"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let ct = commit_times(&c, 5);
    c.psql("DROP TABLE t");
    c.psql("CREATE TABLE after_drop AS SELECT 1 AS x");
    switch_and_wait(&c, &repo, 1, "archive", 60);
    stop(s);
    let target = c.psql(&format!(
        "SELECT to_char(('{}+00'::timestamptz + ('{}+00'::timestamptz - '{}+00'::timestamptz) / 2) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
        ct[2], ct[3], ct[2]
    ));
    drop(c);
    let o = run(repo.apply(
        pitr()
            .args(["restore", "--json", "--to", &target])
            .arg("-D")
            .arg(dir),
    ));
    assert!(o.status.success(), "pitr restore: {}", text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let last = report["plan"]["last_included"]["time"]
        .as_str()
        .unwrap_or_else(|| panic!("no plan.last_included.time: {report:#}"))
        .to_owned();
    // The container recovers from the directory alone: no repo, no source server.
    drop(repo);
    std::fs::remove_dir_all(&repo_dir).unwrap();
    (target, last)
}

/// PostgreSQL `major` in `pitr-test/postgres:<major>`, started by testcontainers on
/// the restored `dir`, exactly as docs/ci-restore-check.md shows it; checks the rows.
fn recover_in_a_container(engine: &Engine, major: u32, dir: &Path, last: &str) {
    let image = docker::pg_image(major);
    let (name, tag) = image.rsplit_once(':').unwrap();
    let port: u16 = free_addr().rsplit_once(':').unwrap().1.parse().unwrap();
    let unique = format!(
        "pitr-tc-{major}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let _leftovers = Leftovers {
        engine,
        value: unique.clone(),
    };

    // The user's code, as docs/ci-restore-check.md shows it.
    let hba = dir.with_file_name("pitr-hba.conf"); // throwaway server only
    std::fs::write(&hba, "host all all 127.0.0.1/32 trust\n").unwrap();
    let owner = std::fs::metadata(dir).unwrap(); // run as the files' owner
    let pg = GenericImage::new(name, tag)
        // Logged once recovery has ended and the server accepts writes (a recovering server
        // logs "ready to accept read-only connections" first).
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_network("host") // no port mapping: the server listens on the host's loopback
        .with_env_var("PGDATA", "/var/lib/postgresql/data")
        .with_mount(Mount::bind_mount(
            dir.to_str().unwrap(),
            "/var/lib/postgresql/data",
        ))
        .with_mount(
            Mount::bind_mount(hba.to_str().unwrap(), "/etc/pitr-hba.conf")
                .with_access_mode(AccessMode::ReadOnly),
        )
        .with_user(format!("{}:{}", owner.uid(), owner.gid()))
        .with_cmd([
            "postgres",
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("port={port}"),
            "-c",
            "hba_file=/etc/pitr-hba.conf",
            "-c",
            "archive_mode=off",
            "-c",
            "ssl=off",
            "-c",
            "logging_collector=off",
            "-c",
            "log_destination=stderr",
            "-c",
            "unix_socket_directories=/var/run/postgresql",
        ])
        .with_startup_timeout(Duration::from_secs(120))
        .with_label(LABEL, &unique)
        .with_container_name(&unique)
        .start()
        .unwrap_or_else(|e| panic!("PG {major}: the container did not start: {e}"));

    // Recovery is over, it ended on the last commit at or before the target, and exactly the
    // rows committed by then are there (the DROP TABLE and what followed are not).
    let got = psql(
        &pg,
        port,
        &format!(
            "SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp() = '{last}'::timestamptz, ({ROWS_SQL}), to_regclass('after_drop') IS NULL"
        ),
    );
    assert_eq!(
        got,
        format!("f|t|{}|t", rows(3)),
        "PG {major} (recovery ending on {last})"
    );
    // Promoted: it takes writes.
    psql(&pg, port, "INSERT INTO t VALUES (100)");

    // Dropping the handle removes the container.
    drop(pg);
    let left = engine.containers_labelled(&format!("{LABEL}={unique}"));
    assert!(left.is_empty(), "PG {major}: left behind: {left:?}");
}

/// issue 11 §3: on every major, `pitr restore --to <between two commits>` (no `--verify`),
/// then a `pitr-test/postgres:<major>` container started with testcontainers on the restored
/// directory recovers to the target, promotes, and holds exactly the rows committed at or
/// before it; no container is left behind.
#[test]
fn testcontainers_postgres_recovers_a_pitr_restore_to_the_target_on_every_major() {
    let installs = PgInstall::for_tests();
    let images: Vec<String> = installs.iter().map(|i| docker::pg_image(i.major)).collect();
    let Some(engine) = docker::engine(&images) else {
        return;
    };
    if !containers_are_removed() {
        return;
    }
    for install in &installs {
        let began = Instant::now();
        let tmp = tempfile::tempdir().unwrap();
        let dir = restore_dir(tmp.path(), "restored");
        let (target, last) = restore_between_3_and_4(install, tmp.path(), &dir);
        let restored = began.elapsed();
        recover_in_a_container(&engine, install.major, &dir, &last);
        eprintln!(
            "PG {}: restored to {target} in {:.1}s, recovered in a container in {:.1}s",
            install.major,
            restored.as_secs_f64(),
            (began.elapsed() - restored).as_secs_f64()
        );
    }
}
