//! `pitr restore --verify --verify-image IMAGE`: the verification server in a container of
//! the locally built PostgreSQL images (`scripts/docker-test-images.sh`), under our private
//! engine. The same checks and report as with local binaries; refusals before anything is
//! written; no container left behind, on success, on failure and on SIGINT.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Cluster, PgInstall};

use crate::docker::{self, Engine};
use crate::restore::{ROWS_SQL, backup, commit_times, restore_dir, run, text, wait_archived};
use crate::stream::{TestRepo, opts, pitr, start_stream, stop};

/// The label every verification container carries (src/restore/container.rs).
const LABEL: &str = "pitr.verify";

/// `pitr restore --json --verify --verify-image IMAGE` into `dir`, with the engine's
/// DOCKER_HOST; `extra` goes last.
fn restore_in_image(
    repo: &TestRepo,
    engine: &Engine,
    image: &str,
    dir: &Path,
    extra: &[&str],
) -> Command {
    let mut cmd = pitr();
    cmd.args(["restore", "--json", "--verify", "--verify-user", "postgres"])
        .args(["--verify-image", image])
        .arg("-D")
        .arg(dir)
        .args(extra)
        .env("DOCKER_HOST", &engine.host)
        .env_remove("PITR_PG_BIN");
    repo.apply(&mut cmd);
    cmd
}

/// A restore verified in a container on every major: the report is the one local binaries
/// give (promoted to the predicted timeline, the predicted last transaction, the checks),
/// names the image, and no container remains (and one a killed pitr left is removed); a
/// failing check fails the same way and also leaves none.
#[test]
fn verify_image_proves_a_restore_in_a_container_and_leaves_nothing_behind() {
    for install in PgInstall::for_tests() {
        let major = install.major;
        let image = docker::pg_image(major);
        let Some(engine) = docker::engine(std::slice::from_ref(&image)) else {
            return;
        };
        let c = Cluster::start(&install, opts().conf("track_commit_timestamp = on"));
        let tmp = tempfile::tempdir().unwrap();
        let repo = TestRepo::local(&tmp.path().join("repo"));
        let s = start_stream(&c, &repo, &tmp.path().join("stream.log"));
        c.psql("CREATE TABLE t (id int PRIMARY KEY)");
        backup(&c, &repo, "image");
        for id in 1..=4 {
            c.psql(&format!("INSERT INTO t VALUES ({id})"));
            std::thread::sleep(Duration::from_millis(20));
        }
        let ct = commit_times(&c, 4);
        c.psql("DROP TABLE t");
        wait_archived(&c, &repo);
        stop(s);
        let target = ct[2].clone(); // the third commit's exact time: rows 1..3

        // A container a killed pitr left behind (a dead pid, this host): removed by this run.
        let dead = {
            let mut p = Command::new("true").spawn().unwrap();
            p.wait().unwrap();
            p.id()
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let orphan = format!("pitr-verify-orphan-{}", std::process::id());
        let o = engine
            .docker(&["run", "--detach", "--name", &orphan, "--network", "none"])
            .args(["--label", &format!("{LABEL}={dead}")])
            .args(["--label", &format!("{LABEL}.host={}", host.trim())])
            .args(["--entrypoint", "sleep", &image, "600"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

        let dir = restore_dir(tmp.path(), "restored");
        let o = run(&mut restore_in_image(
            &repo,
            &engine,
            &image,
            &dir,
            &[
                "--to",
                &target,
                "--check-sql",
                &format!("{ROWS_SQL} => 1,2,3"),
            ],
        ));
        assert!(o.status.success(), "PG {major}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let r = &v["verify"];
        assert_eq!(r["ok"], true, "PG {major}: {v:#}");
        assert_eq!(r["promoted"], true, "{r:#}");
        assert_eq!(r["target_matched"], true, "{r:#}");
        assert_eq!(r["achieved_timeline"], r["expected_timeline"], "{r:#}");
        assert_eq!(r["checks"][0]["ok"], true, "{r:#}");
        let pg = r["postgres"].as_str().unwrap();
        assert!(
            pg.starts_with(&format!("image {image} (postgres (PostgreSQL) {major}.")),
            "the report names the image and its version: {pg}"
        );
        let mine = |d: &Path| engine.containers_labelled(&format!("{LABEL}.dir={}", d.display()));
        assert!(
            mine(&dir).is_empty(),
            "PG {major}: a verification container remains: {:?}",
            mine(&dir)
        );
        let left = engine
            .docker(&[
                "ps",
                "--all",
                "--filter",
                &format!("name={orphan}"),
                "--format",
                "{{.Names}}",
            ])
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&left.stdout).trim().is_empty() {
            let _ = engine.docker(&["rm", "--force", &orphan]).output();
            panic!("PG {major}: the orphaned verification container was not removed");
        }
        // Shut down cleanly: the directory is ready for the user's own server.
        assert!(!dir.join("postmaster.pid").exists(), "PG {major}");

        // A failing check fails the restore the same way, and also leaves no container.
        let dir2 = restore_dir(tmp.path(), "restored-2");
        let o = run(&mut restore_in_image(
            &repo,
            &engine,
            &image,
            &dir2,
            &[
                "--to",
                &target,
                "--check-sql",
                &format!("{ROWS_SQL} => 1,2,3,4"),
            ],
        ));
        assert_eq!(o.status.code(), Some(1), "PG {major}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["verify"]["ok"], false, "{v:#}");
        assert_eq!(v["verify"]["checks"][0]["got"], "1,2,3", "{v:#}");
        assert!(mine(&dir2).is_empty(), "PG {major}");
    }
}

/// One line, exit 1, and nothing written, when the CLI is missing, the engine does not
/// answer, the image is missing, or the image's major is not the backup's; usage errors
/// for `--verify-image` without `--verify` and with `--pg-bin`.
#[test]
fn verify_image_refuses_before_writing_anything() {
    let installs = PgInstall::for_tests();
    let install = installs.last().unwrap();
    let major = install.major;
    let other = if major == 15 { 16 } else { 15 };
    let Some(engine) = docker::engine(&[docker::pg_image(other)]) else {
        return;
    };
    let c = Cluster::start(install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let s = start_stream(&c, &repo, &tmp.path().join("stream.log"));
    backup(&c, &repo, "refusals");
    wait_archived(&c, &repo);
    stop(s);
    let dir = restore_dir(tmp.path(), "never");
    let wrong = docker::pg_image(other);
    type Env = Vec<(&'static str, &'static str)>;
    let cases: Vec<(&str, String, Env, String)> = vec![
        (
            "wrong major",
            wrong.clone(),
            vec![],
            format!("{wrong} runs postgres (PostgreSQL) {other}."),
        ),
        (
            "missing image",
            "pitr-test/no-such-image:1".into(),
            vec![],
            "image pitr-test/no-such-image:1 is not present and could not be pulled".into(),
        ),
        (
            "no CLI",
            docker::pg_image(major),
            vec![("PITR_CONTAINER_CLI", "/nonexistent/docker")],
            "\"/nonexistent/docker\" was not found".into(),
        ),
        (
            "no engine",
            docker::pg_image(major),
            vec![("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
            "the container engine does not answer".into(),
        ),
    ];
    for (what, image, env, want) in cases {
        let o = run(
            restore_in_image(&repo, &engine, &image, &dir, &["--to", "latest"])
                .envs(env.iter().copied()),
        );
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert_eq!(o.status.code(), Some(1), "{what}: {}", text(&o));
        assert!(
            last.contains(&want),
            "{what}: want {want:?} in {last:?}\n{}",
            text(&o)
        );
        assert!(
            last.starts_with("pitr: error: --verify-image"),
            "{what}: {last}"
        );
        assert!(!dir.exists(), "{what}: the destination was written");
    }
    // Usage: --verify-image needs --verify, and is not --pg-bin.
    for args in [
        vec!["restore", "--verify-image", "x", "-D"],
        vec![
            "restore",
            "--verify",
            "--verify-image",
            "x",
            "--pg-bin",
            "/usr",
            "-D",
        ],
    ] {
        let o = run(repo.apply(pitr().args(&args).arg(&dir)));
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(!dir.exists());
    }
}

/// SIGINT while the verification server runs in its container: pitr stops and removes the
/// container, leaves the directory shut down, and exits 130.
#[test]
fn verify_image_interrupted_leaves_no_container() {
    let installs = PgInstall::for_tests();
    let install = &installs[0];
    let image = docker::pg_image(install.major);
    let Some(engine) = docker::engine(std::slice::from_ref(&image)) else {
        return;
    };
    let c = Cluster::start(install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let s = start_stream(&c, &repo, &tmp.path().join("stream.log"));
    backup(&c, &repo, "interrupted");
    wait_archived(&c, &repo);
    stop(s);
    let dir = restore_dir(tmp.path(), "restored");
    let mut child = restore_in_image(
        &repo,
        &engine,
        &image,
        &dir,
        &["--to", "latest", "--check-sql", "SELECT pg_sleep(120)"],
    )
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(tmp.path().join("restore.log")).unwrap())
    .spawn()
    .unwrap();
    // Wait until its container runs and the check has begun (the server answers).
    let label = format!("{LABEL}={}", child.id());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = std::fs::read_to_string(tmp.path().join("restore.log")).unwrap_or_default();
        if !engine.containers_labelled(&label).is_empty()
            && dir.join("postmaster.pid").exists()
            && log.contains("verification server started")
        {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "restore ended early: {log}"
        );
        assert!(
            Instant::now() < deadline,
            "no verification container: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3)); // into recovery, or the pg_sleep check
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let st = crate::stream::wait_exit(&mut child, 150, "restore did not stop on SIGINT");
    let log = std::fs::read_to_string(tmp.path().join("restore.log")).unwrap_or_default();
    assert_eq!(st.code(), Some(130), "{log}");
    assert!(
        log.contains("SIGINT received during --verify: the verification server was stopped"),
        "{log}"
    );
    let mine = engine.containers_labelled(&format!("{LABEL}.dir={}", dir.display()));
    assert!(
        mine.is_empty(),
        "a container remains after SIGINT: {mine:?}"
    );
    assert!(
        !dir.join("postmaster.pid").exists(),
        "the server was not shut down"
    );
}

/// A stand-in for the docker CLI: a shell script in `dir` that runs `body` (with "$@" being
/// docker's arguments) and otherwise passes everything to the real `docker`.
fn wrapper_cli(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\nexec docker \"$@\"\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// A repo with one backup of `install`'s server, for the tests below.
fn small_repo(install: &PgInstall, tmp: &Path) -> TestRepo {
    let c = Cluster::start(install, opts());
    let repo = TestRepo::local(&tmp.join("repo"));
    let s = start_stream(&c, &repo, &tmp.join("stream.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
    backup(&c, &repo, "small");
    wait_archived(&c, &repo);
    stop(s);
    repo
}

/// Red-team findings, each failed before its fix: (1) when the container could not be
/// stopped or removed, the check still PASSED with exit 0 while a server ran on the
/// directory (a user's own server could then start beside it); (2) a relative `-D` and a
/// path holding `:` failed only after the restore was written, with docker's useless
/// "Run 'docker run --help'" as the error.
#[test]
fn verify_image_a_failed_cleanup_fails_the_check_and_paths_are_mounted_as_given() {
    let installs = PgInstall::for_tests();
    let install = installs.last().unwrap();
    let image = docker::pg_image(install.major);
    let Some(engine) = docker::engine(std::slice::from_ref(&image)) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = small_repo(install, tmp.path());

    // (1) `stop` and `rm` fail: the container stays, so the check must fail, naming it.
    let cli = wrapper_cli(
        tmp.path(),
        "failing-rm",
        r#"case "$1" in stop|rm) echo "Error response from daemon: transient" >&2; exit 1;; esac"#,
    );
    let dir = restore_dir(tmp.path(), "cleanup");
    let o = run(
        restore_in_image(&repo, &engine, &image, &dir, &["--to", "latest"])
            .env("PITR_CONTAINER_CLI", &cli),
    );
    let left = engine.containers_labelled(&format!("{LABEL}.dir={}", dir.display()));
    for c in &left {
        let _ = engine.docker(&["rm", "--force", "--volumes", c]).output();
    }
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verify"]["ok"], false, "{v:#}");
    let failures = v["verify"]["failures"].to_string();
    assert!(
        failures.contains("could not be removed") && failures.contains("docker rm -f pitr-verify-"),
        "{failures}"
    );
    assert_eq!(left.len(), 1, "the wrapper kept the container: {left:?}");

    // (2) A relative -D holding ':' and ','.
    let o = run(restore_in_image(
        &repo,
        &engine,
        &image,
        Path::new("rel:dir,x"),
        &["--to", "latest"],
    )
    .current_dir(tmp.path()));
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verify"]["ok"], true, "{v:#}");
}

/// Red-team findings, each failed before its fix: (1) an engine whose socket accepts but
/// never answers made `restore --verify-image` wait forever (now: a one-line refusal
/// within the CLI time limit, nothing written); (2) SIGTERM while a docker call was stuck
/// was acted on only when the call returned (now: within seconds, exit 130, and pitr's
/// containers are removed).
#[test]
fn verify_image_a_hung_engine_or_docker_call_does_not_hold_pitr() {
    let installs = PgInstall::for_tests();
    let install = &installs[0];
    let image = docker::pg_image(install.major);
    let Some(engine) = docker::engine(std::slice::from_ref(&image)) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = small_repo(install, tmp.path());

    // (1) A socket that accepts and never answers.
    let sock = tmp.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming() {
            held.push(c);
        }
    });
    let dir = restore_dir(tmp.path(), "never");
    let t = Instant::now();
    let o = run(
        restore_in_image(&repo, &engine, &image, &dir, &["--to", "latest"])
            .env("DOCKER_HOST", format!("unix://{}", sock.display())),
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        err.lines()
            .last()
            .unwrap_or_default()
            .contains("the container engine does not answer"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "took {:?}",
        t.elapsed()
    );
    assert!(!dir.exists(), "the destination was written");

    // (2) `docker run --detach` stuck for 60 s; SIGTERM arrives meanwhile.
    let mark = tmp.path().join("in-run");
    let cli = wrapper_cli(
        tmp.path(),
        "slow-run",
        &format!(
            r#"if [ "$1" = run ] && [ "$2" = --detach ]; then touch '{}'; sleep 60; fi"#,
            mark.display()
        ),
    );
    let dir = restore_dir(tmp.path(), "slow");
    // Its own TMPDIR: the watchdog's exit must not leave the verification's directory.
    let vtmp = restore_dir(tmp.path(), "verify-tmp");
    std::fs::create_dir(&vtmp).unwrap();
    let mut child = restore_in_image(&repo, &engine, &image, &dir, &["--to", "latest"])
        .env("PITR_CONTAINER_CLI", &cli)
        .env("TMPDIR", &vtmp)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("slow.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !mark.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "ended before docker run"
        );
        assert!(Instant::now() < deadline, "never reached docker run");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t = Instant::now();
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let st = crate::stream::wait_exit(&mut child, 90, "restore did not stop on SIGTERM");
    let took = t.elapsed();
    let log = std::fs::read_to_string(tmp.path().join("slow.log")).unwrap_or_default();
    assert_eq!(st.code(), Some(130), "{log}");
    assert!(
        took < Duration::from_secs(20),
        "SIGTERM acted on only after {took:?}: {log}"
    );
    assert!(log.contains("SIGTERM received during --verify"), "{log}");
    let mine = engine.containers_labelled(&format!("{LABEL}.dir={}", dir.display()));
    assert!(mine.is_empty(), "{mine:?}");
    let left: Vec<_> = std::fs::read_dir(&vtmp)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in TMPDIR: {left:?}");
}
