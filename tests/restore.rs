//! `pitr backup`, `restore --to`, `--verify`, `list`, `verify`, `prune` and `demo`, as a user
//! runs them, against real servers of every major and both repo backends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use testkit::s3::S3Server;
use testkit::{Cluster, PgInstall};

use crate::stream::{
    SpawnLogged, TestRepo, opts, pgbench, pgbench_ok, pitr, repo_segments, source, start_stream,
    stop, switch_and_wait,
};

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.stdin(std::process::Stdio::null()).output().unwrap()
}

pub(crate) fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `pitr backup` into `repo` (a stream must be running); returns the catalog entry.
pub(crate) fn backup(c: &Cluster, repo: &TestRepo, label: &str) -> serde_json::Value {
    backup_with(c, repo, label, &[])
}

pub(crate) fn backup_with(
    c: &Cluster,
    repo: &TestRepo,
    label: &str,
    extra: &[&str],
) -> serde_json::Value {
    let o = run(repo.apply(
        pitr()
            .args(["backup", "--json", "--label", label, "--wal-timeout", "60s"])
            .args(extra)
            .arg("--source")
            .arg(source(c)),
    ));
    assert!(o.status.success(), "pitr backup: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A fresh directory the server's user can reach (tests run as root in CI).
pub(crate) fn restore_dir(tmp: &Path, name: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp.join(name)
}

/// `pitr restore ... --verify --json` with checks; returns the JSON report.
pub(crate) fn restore_verify(
    repo: &TestRepo,
    install: &PgInstall,
    dir: &Path,
    target: &[&str],
    checks: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut cmd = pitr();
    cmd.args(["restore", "--json", "--verify", "--verify-user", "postgres"])
        .arg("-D")
        .arg(dir)
        .arg("--pg-bin")
        .arg(install.tool("postgres").parent().unwrap())
        .args(target)
        .envs(env.iter().copied());
    for c in checks {
        cmd.arg("--check-sql").arg(c);
    }
    let o = run(repo.apply(&mut cmd));
    assert!(
        o.status.success(),
        "restore {target:?} on {}: {}",
        repo.name(),
        text(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["verify"]["ok"], true, "{v:#}");
    assert_eq!(v["verify"]["target_matched"], true, "{v:#}");
    v
}

/// A restore's RTO prediction: with rates measured by an earlier passing `--verify` on the
/// repo (`measured`), the plan predicts seconds from them and the report sets that against
/// the actual RTO (same order of magnitude: the model is linear and errs long); without,
/// the plan still gives the sizes and says the time is unknown.
pub(crate) fn assert_rto_prediction(v: &serde_json::Value, measured: bool, what: &str) {
    let rto = &v["plan"]["rto"];
    for size in ["download_bytes", "write_bytes", "replay_bytes"] {
        assert!(
            rto[size].as_u64().is_some_and(|b| b > 0),
            "{what}: {size}: {v:#}"
        );
    }
    let predicted = &v["verify"]["predicted_rto_seconds"];
    if !measured {
        assert!(
            rto["seconds"].is_null() && predicted.is_null(),
            "{what}: {v:#}"
        );
        return;
    }
    let p = rto["seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: no prediction: {v:#}"));
    assert_eq!(predicted.as_f64(), Some(p), "{what}: {v:#}");
    assert!(rto["measured_at"].is_string(), "{what}: {v:#}");
    let actual = v["verify"]["rto_seconds"].as_f64().unwrap();
    assert!(
        p > 0.0 && p / actual < 20.0 && actual / p < 20.0,
        "{what}: predicted {p} s, actual {actual} s: {v:#}"
    );
}

/// The server's clock, RFC 3339 UTC with microseconds.
pub(crate) fn server_now(c: &Cluster) -> String {
    c.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

/// Waits until the repo holds WAL through the server's current position.
pub(crate) fn wait_archived(c: &Cluster, repo: &TestRepo) {
    switch_and_wait(c, repo, 1, "archive to catch up", 60);
}

/// Commit timestamps of rows 1..=n of `t`, UTC, as `YYYY-MM-DD HH:MM:SS.ffffff`.
pub(crate) fn commit_times(c: &Cluster, n: usize) -> Vec<String> {
    let out = c.psql(
        "SELECT string_agg(to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), ',' ORDER BY id) FROM t",
    );
    let v: Vec<String> = out.split(',').map(str::to_owned).collect();
    assert_eq!(v.len(), n, "{out}");
    v
}

pub(crate) fn rows(n: usize) -> String {
    (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

pub(crate) const ROWS_SQL: &str =
    "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), 'none') FROM t";

/// The core PITR test, on every major and both backends: rows committed at known instants,
/// a backup, more commits, DROP TABLE; restores to a time between two commits, to a commit's
/// exact time, to a time in a non-UTC zone, to an LSN, to a named restore point, and to
/// latest, each started by `--verify`, which proves exactly the rows committed at or before
/// the target exist. Also `pg_verifybackup` on a restored base, `list` and `verify`.
#[test]
fn restore_to_a_point_in_time_on_every_major_and_backend() {
    for (i, install) in PgInstall::for_tests().into_iter().enumerate() {
        let major = install.major;
        let c = Cluster::start(&install, opts().conf("track_commit_timestamp = on"));
        let tmp = tempfile::tempdir().unwrap();
        let repos = TestRepo::both(tmp.path(), i);
        let streams: Vec<Child> = repos
            .iter()
            .enumerate()
            .map(|(k, r)| {
                // One slot per repo.
                r.apply(pitr().args([
                    "stream",
                    "--partial-every",
                    "200ms",
                    "--slot",
                    &format!("pitr_{k}"),
                    "--source",
                    &source(&c),
                ]))
                .spawn_logged(tmp.path().join(format!("stream{k}.log")))
            })
            .collect();
        c.psql("CREATE TABLE t (id int PRIMARY KEY)");
        for r in &repos {
            let b = backup(&c, r, "base");
            assert_eq!(b["pg_major"], major);
        }
        // Ten commits, one row each; a restore point after the fifth; an LSN after the seventh.
        let mut lsn7 = String::new();
        for id in 1..=10 {
            c.psql(&format!("INSERT INTO t VALUES ({id})"));
            if id == 5 {
                let o = run(repos[1].apply(
                    pitr()
                        .args(["mark", "after_5"])
                        .arg("--source")
                        .arg(format!("{} dbname=postgres", source(&c))),
                ));
                assert!(o.status.success(), "mark: {}", text(&o));
            }
            if id == 7 {
                lsn7 = c.psql("SELECT pg_current_wal_lsn()");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let ct = commit_times(&c, 10);
        c.psql("DROP TABLE t");
        c.psql("CREATE TABLE after_drop AS SELECT 1 AS x");
        // One switch, then both archives hold the segment.
        let last = switch_and_wait(&c, &repos[0], 1, "local archive", 60);
        testkit::wait_for("S3 archive", Duration::from_secs(60), || {
            repo_segments(&repos[1], 1).contains(&last)
        });
        let between_3_4 = c.psql(&format!(
            "SELECT to_char(('{}+00'::timestamptz + ('{}+00'::timestamptz - '{}+00'::timestamptz) / 2) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
            ct[2], ct[3], ct[2]
        ));
        let between_8_9_kolkata = c.psql(&format!(
            "SELECT to_char(('{}+00'::timestamptz + ('{}+00'::timestamptz - '{}+00'::timestamptz) / 2) AT TIME ZONE 'Asia/Kolkata', 'YYYY-MM-DD HH24:MI:SS.US')",
            ct[7], ct[8], ct[7]
        ));
        let exact_6 = format!("{}+00", ct[5]);
        type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, String);
        let cases: Vec<Case> = vec![
            (vec!["--to".into(), between_3_4.clone()], vec![], rows(3)),
            (vec!["--to".into(), exact_6.clone()], vec![], rows(6)),
            (
                vec!["--to".into(), between_8_9_kolkata.clone()],
                vec![("TZ", "Asia/Kolkata")],
                rows(8),
            ),
            (vec!["--to-lsn".into(), lsn7.clone()], vec![], rows(7)),
            (vec!["--to-name".into(), "after_5".into()], vec![], rows(5)),
        ];
        for (k, (target, env, want)) in cases.iter().enumerate() {
            let repo = &repos[(k + i) % 2];
            let dir = restore_dir(tmp.path(), &format!("r{k}"));
            let target: Vec<&str> = target.iter().map(String::as_str).collect();
            let check = format!("{ROWS_SQL} => {want}");
            let v = restore_verify(repo, &install, &dir, &target, &[&check], env);
            assert_eq!(
                v["verify"]["checks"][0]["ok"], true,
                "PG {major} {target:?}: {v:#}"
            );
            assert_rto_prediction(&v, k >= 2, &format!("PG {major} {target:?}"));
        }
        // Latest: the table is gone, the later table exists.
        let dir = restore_dir(tmp.path(), "latest");
        restore_verify(
            &repos[i % 2],
            &install,
            &dir,
            &["--to", "latest"],
            &[
                "SELECT to_regclass('t') IS NULL => t",
                "SELECT count(*) FROM after_drop => 1",
            ],
            &[],
        );
        // pg_verifybackup accepts a restored base before recovery.
        let dir = restore_dir(tmp.path(), "plain");
        let o = run(repos[0].apply(
            pitr()
                .args(["restore", "--to", &between_3_4])
                .arg("-D")
                .arg(&dir),
        ));
        assert!(o.status.success(), "{}", text(&o));
        // The plan predicts the RTO from the rates the verifications above recorded.
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.lines().any(|l| l.starts_with("RTO estimate:   ~")
                && l.contains("of WAL to replay at")
                && l.contains("at the rates the --verify of")),
            "{out}"
        );
        let o = run(install.command("pg_verifybackup").arg(&dir));
        assert!(
            o.status.success(),
            "PG {major} pg_verifybackup: {}",
            text(&o)
        );
        // list: one backup, timeline 1 restorable up to the last commit, no gap.
        for r in &repos {
            let o = run(r.apply(pitr().args(["list", "--json"])));
            assert!(o.status.success(), "{}", text(&o));
            let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(l["backups"].as_array().unwrap().len(), 1, "{l:#}");
            let t1 = &l["timelines"][0];
            assert!(
                t1["earliest"].as_str().unwrap().ends_with("+00:00"),
                "{l:#}"
            );
            assert!(t1["last_commit_time"].as_str().is_some(), "{l:#}");
            assert!(t1["gaps"].as_array().unwrap().is_empty(), "{l:#}");
            let o = run(r.apply(pitr().args(["verify"])));
            assert!(o.status.success(), "PG {major} verify: {}", text(&o));
        }
        let text_list = run(repos[1].apply(pitr().args(["list"])));
        let shown = String::from_utf8_lossy(&text_list.stdout).to_string();
        assert!(shown.contains("after_5"), "{shown}");
        for s in streams {
            stop(s);
        }
    }
}

/// One line on stderr, non-zero exit, and `dir` left as it was.
pub(crate) fn refused(
    repo: &TestRepo,
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
    want: &str,
) {
    let before = list_dir(dir);
    let o = run(repo.apply(
        pitr()
            .arg("restore")
            .args(args)
            .arg("-D")
            .arg(dir)
            .envs(env.iter().copied()),
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("pitr: error"))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}: {err}");
    assert!(
        lines[0].contains(want),
        "{args:?}: wanted {want:?} in {err}"
    );
    assert_eq!(list_dir(dir), before, "{args:?} touched {}", dir.display());
}

pub(crate) fn list_dir(dir: &Path) -> Option<Vec<String>> {
    std::fs::read_dir(dir).ok().map(|it| {
        let mut v: Vec<String> = it
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    })
}

/// Bad input and damaged repos: each gives one clear line, a non-zero exit, and leaves the
/// destination untouched; a flipped bit makes `verify` and `restore` name the object.
#[test]
fn bad_targets_and_a_damaged_repo_are_refused_naming_the_problem() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
    // The server's clock before the commits the backup contains: no restore can reach it.
    let before = c.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    );
    c.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    let b = backup(&c, &repo, "base");
    c.psql("INSERT INTO t VALUES (2)");
    wait_archived(&c, &repo);
    c.psql("INSERT INTO t SELECT generate_series(1, 20000)");
    wait_archived(&c, &repo);
    c.psql("INSERT INTO t VALUES (3)");
    wait_archived(&c, &repo);
    stop(s);
    // Without a stream, a backup's WAL never reaches the repo: a clear error, and the backup
    // is not catalogued.
    let o = run(repo.apply(
        pitr()
            .args([
                "backup",
                "--label",
                "orphan",
                "--wal-timeout",
                "2s",
                "--source",
            ])
            .arg(source(&c)),
    ));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("is not in the repo after 2s: run `pitr stream`"),
        "{}",
        text(&o)
    );
    let catalogued = repo
        .keys("backups/")
        .into_iter()
        .filter(|k| k.ends_with("/backup.json"))
        .count();
    assert_eq!(catalogued, 1, "the orphan backup must not be catalogued");
    let missing = tmp.path().join("new");
    let nonempty = tmp.path().join("nonempty");
    std::fs::create_dir_all(&nonempty).unwrap();
    std::fs::write(nonempty.join("keep.txt"), "x").unwrap();
    refused(
        &repo,
        &["--to", &before],
        &missing,
        &[],
        "before the earliest restorable point",
    );
    refused(
        &repo,
        &["--to", "2999-01-01 00:00"],
        &missing,
        &[],
        "after the last archived commit",
    );
    refused(&repo, &["--to", "latest"], &nonempty, &[], "is not empty");
    refused(
        &repo,
        &["--to", "2025-03-30 02:30", "--tz", "Europe/Paris"],
        &missing,
        &[],
        "does not exist",
    );
    refused(
        &repo,
        &["--to", "2025-10-26 02:30"],
        &missing,
        &[("TZ", "Europe/Paris")],
        "+01:00",
    );
    refused(
        &repo,
        &["--to", "yesterday-ish"],
        &missing,
        &[],
        "yesterday-ish",
    );
    refused(
        &repo,
        &["--to-name", "nope"],
        &missing,
        &[],
        "no restore point named \"nope\"",
    );
    refused(
        &repo,
        &["--timeline", "9"],
        &missing,
        &[],
        "timeline 9 is not in the repo",
    );
    refused(
        &repo,
        &["--to-lsn", "FF/0"],
        &missing,
        &[],
        "after the last archived WAL",
    );
    let o = run(pitr()
        .args(["restore", "--repo", "/nonexistent/repo", "-D"])
        .arg(&missing));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/repo"),
        "{}",
        text(&o)
    );
    assert!(!missing.exists());

    // A copy with one flipped bit in a backup chunk: verify and restore name the object.
    let damaged = tmp.path().join("damaged");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(tmp.path().join("repo"))
            .arg(&damaged)
            .status()
            .unwrap()
            .success()
    );
    let chunk = b["archives"][0]["chunks"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    flip_bit(&damaged.join(&chunk));
    let drepo = TestRepo::local(&damaged);
    let o = run(drepo.apply(pitr().arg("verify")));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&chunk),
        "{}",
        text(&o)
    );
    refused(&drepo, &["--to", "latest"], &missing, &[], &chunk);

    // A copy missing a WAL segment in the middle: verify reports the gap; a target after it
    // is refused as being in a gap.
    let gappy = tmp.path().join("gappy");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(tmp.path().join("repo"))
            .arg(&gappy)
            .status()
            .unwrap()
            .success()
    );
    let segs = repo_segments(&repo, 1);
    let victim = &segs[segs.len() - 2];
    std::fs::remove_file(gappy.join(format!("wal/00000001/{victim}.lz4"))).unwrap();
    let grepo = TestRepo::local(&gappy);
    let o = run(grepo.apply(pitr().arg("verify")));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(victim.as_str()),
        "{}",
        text(&o)
    );
    refused(&grepo, &["--to", "latest"], &missing, &[], "gap");
    refused(&grepo, &["--to", "2999-01-01 00:00"], &missing, &[], "gap");

    // A flipped bit in a WAL segment.
    let walbad = tmp.path().join("walbad");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(tmp.path().join("repo"))
            .arg(&walbad)
            .status()
            .unwrap()
            .success()
    );
    let seg_key = format!("wal/00000001/{}.lz4", segs[segs.len() - 2]);
    flip_bit(&walbad.join(&seg_key));
    let o = run(TestRepo::local(&walbad).apply(pitr().arg("verify")));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&seg_key),
        "{}",
        text(&o)
    );
}

fn flip_bit(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    let at = b.len() / 2;
    b[at] ^= 0x10;
    // Objects are read-only once published.
    let _ = std::fs::remove_file(path);
    std::fs::write(path, b).unwrap();
}

/// A backup taken while pgbench runs, with a tablespace, restored elsewhere with
/// --tablespace-map; `pg_verifybackup` accepts the base, and `--verify` finds the data.
#[test]
fn backup_under_pgbench_with_a_tablespace_restores_and_verifies() {
    for (i, install) in PgInstall::for_tests().into_iter().enumerate() {
        let major = install.major;
        let c = Cluster::start(&install, opts());
        let tmp = tempfile::tempdir().unwrap();
        let ts = restore_dir(tmp.path(), "ts");
        std::fs::create_dir_all(&ts).unwrap();
        testkit::chown_tree_to_server(&ts);
        c.psql(&format!(
            "CREATE TABLESPACE extra LOCATION '{}'",
            ts.display()
        ));
        c.psql("CREATE TABLE spaced TABLESPACE extra AS SELECT generate_series(1, 1000) AS id");
        let repo = if i % 2 == 0 {
            TestRepo::local(&tmp.path().join("repo"))
        } else {
            TestRepo::s3(S3Server::s3s_fs(), "ts")
        };
        let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
        pgbench_ok(&c, &["-i", "-s", "1", "-q"]);
        let mut load = pgbench(&c, &["-T", "4", "-c", "2"]);
        std::thread::sleep(Duration::from_millis(500));
        // Server-side lz4 where the server is built with it (Debian's 15; the PyPI builds of
        // 16-18 are not).
        // The second major: pitr's zstd chunks (catalog entry format 2).
        let server_lz4 = i == 0;
        let zstd = i == 1;
        let extra: &[&str] = if server_lz4 {
            &["--server-compression"]
        } else if zstd {
            &["--compress", "zstd:5"]
        } else {
            &[]
        };
        let b = backup_with(&c, &repo, "under-load", extra);
        assert_eq!(b["archives"].as_array().unwrap().len(), 2, "{b:#}");
        if server_lz4 {
            assert_eq!(b["compression"], "server-lz4", "{b:#}");
        }
        if zstd {
            assert_eq!(
                (&b["compression"], &b["format"]),
                (&"zstd".into(), &2.into()),
                "{b:#}"
            );
            for a in b["archives"].as_array().unwrap() {
                for ch in a["chunks"].as_array().unwrap() {
                    assert!(ch["key"].as_str().unwrap().ends_with(".zst"), "{b:#}");
                }
            }
            assert!(b["stored_bytes"].as_u64() < b["bytes"].as_u64(), "{b:#}");
        }
        assert!(load.wait().unwrap().success());
        c.psql("INSERT INTO spaced VALUES (-1)");
        let total = c.psql("SELECT sum(abalance) FROM pgbench_accounts");
        wait_archived(&c, &repo);
        stop(s);
        let dir = restore_dir(tmp.path(), "restored");
        let newts = restore_dir(tmp.path(), "ts-restored");
        let map = format!("{}={}", ts.display(), newts.display());
        // Base alone first: pg_verifybackup accepts it before recovery.
        let plain = restore_dir(tmp.path(), "plain");
        let plain_ts = restore_dir(tmp.path(), "plain-ts");
        let o = run(repo.apply(
            pitr()
                .args(["restore", "--to", "latest", "-T"])
                .arg(format!("{}={}", ts.display(), plain_ts.display()))
                .arg("-D")
                .arg(&plain),
        ));
        assert!(o.status.success(), "{}", text(&o));
        let o = run(install.command("pg_verifybackup").arg(&plain));
        assert!(
            o.status.success(),
            "PG {major} pg_verifybackup: {}",
            text(&o)
        );
        restore_verify(
            &repo,
            &install,
            &dir,
            &["--to", "latest", "-T", &map],
            &[
                "SELECT count(*) FROM spaced => 1001",
                &format!("SELECT sum(abalance) FROM pgbench_accounts => {total}"),
                "SELECT count(*) FROM pgbench_accounts => 100000",
            ],
            &[],
        );
        let link = std::fs::read_link(
            dir.join("pg_tblspc")
                .join(c.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'extra'")),
        )
        .unwrap();
        assert_eq!(link, newts, "PG {major}");
        // verify reads every chunk back, whichever the codec.
        let o = run(repo.apply(pitr().args(["verify"])));
        assert!(o.status.success(), "PG {major} verify: {}", text(&o));
    }
}

/// A restore across a failover: the backup is on timeline 1, the target on timeline 2.
#[test]
fn restore_across_a_timeline_switch() {
    for (i, install) in PgInstall::for_tests().into_iter().enumerate() {
        if i % 2 == 1 {
            continue; // two majors: CI time
        }
        let major = install.major;
        let p = Cluster::start(&install, opts().conf("track_commit_timestamp = on"));
        p.psql("CREATE TABLE t (id int)");
        let s = Cluster::standby_of(
            &p,
            &["wal_keep_size = '64MB'", "track_commit_timestamp = on"],
        );
        let tmp = tempfile::tempdir().unwrap();
        let repo = if i == 0 {
            TestRepo::local(&tmp.path().join("repo"))
        } else {
            TestRepo::s3(S3Server::moto(), "tl")
        };
        let a = start_stream(&p, &repo, &tmp.path().join("a.log"));
        backup(&p, &repo, "tl1");
        p.psql("INSERT INTO t VALUES (1), (2)");
        switch_and_wait(&p, &repo, 1, "timeline 1", 60);
        testkit::wait_caught_up(&p, &s);
        stop(a);
        s.promote();
        s.psql("INSERT INTO t VALUES (3)");
        std::thread::sleep(Duration::from_millis(50));
        s.psql("INSERT INTO t VALUES (4)");
        let ct4 = s.psql(
            "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM t WHERE id = 3",
        );
        std::thread::sleep(Duration::from_millis(50));
        s.psql("INSERT INTO t VALUES (5)");
        let b = crate::stream::start_stream_src(
            &format!(
                "host=127.0.0.1 port={} user=postgres sslmode=disable",
                s.port()
            ),
            &repo,
            &tmp.path().join("b.log"),
        );
        switch_and_wait(&s, &repo, 2, "timeline 2", 60);
        stop(b);
        let dir = restore_dir(tmp.path(), "r");
        let v = restore_verify(
            &repo,
            &install,
            &dir,
            &["--to", &format!("{ct4}+00"), "--timeline", "2"],
            &[&format!("{ROWS_SQL} => 1,2,3")],
            &[],
        );
        assert_eq!(v["plan"]["timeline"], 2, "PG {major}");
        let wal: Vec<String> = v["plan"]["wal"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_string())
            .collect();
        assert!(wal.iter().any(|w| w.starts_with("00000001")), "{wal:?}");
        assert!(wal.iter().any(|w| w.starts_with("00000002")), "{wal:?}");
        // Latest on timeline 1 ends before the fork: rows 1 and 2.
        let dir = restore_dir(tmp.path(), "r1");
        restore_verify(
            &repo,
            &install,
            &dir,
            &["--timeline", "1"],
            &[&format!("{ROWS_SQL} => 1,2")],
            &[],
        );
    }
}

/// Retention never deletes WAL a kept backup needs: prune to two backups, then restore
/// from the oldest kept one to a point just after it.
#[test]
fn prune_keeps_what_kept_backups_need() {
    let install = PgInstall::for_tests().remove(0);
    let c = Cluster::start(&install, opts().conf("track_commit_timestamp = on"));
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY)");
    let mut ids = Vec::new();
    for k in 1..=3 {
        let b = backup(&c, &repo, &format!("b{k}"));
        ids.push(b["id"].as_str().unwrap().to_string());
        c.psql(&format!("INSERT INTO t VALUES ({k})"));
        c.psql("SELECT pg_switch_wal()");
        std::thread::sleep(Duration::from_millis(1100)); // distinct backup ids
    }
    wait_archived(&c, &repo);
    stop(s);
    let before = repo_segments(&repo, 1);
    let o = run(repo.apply(pitr().args(["prune", "--keep-full", "2", "--dry-run", "--json"])));
    assert!(o.status.success(), "{}", text(&o));
    let dry: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(dry["deleted_backups"][0], ids[0].as_str(), "{dry:#}");
    assert_eq!(repo_segments(&repo, 1), before, "dry run deleted WAL");
    let o = run(repo.apply(pitr().args(["prune", "--keep-full", "2", "--json"])));
    assert!(o.status.success(), "{}", text(&o));
    let after = repo_segments(&repo, 1);
    assert!(after.len() < before.len(), "nothing pruned: {after:?}");
    assert!(repo.keys(&format!("backups/{}/", ids[0])).is_empty());
    // Restore from the oldest kept backup, to just after its first commit.
    let dir = restore_dir(tmp.path(), "r");
    restore_verify(
        &repo,
        &install,
        &dir,
        &["--backup", &ids[1], "--to", "latest"],
        &[&format!("{ROWS_SQL} => 1,2,3")],
        &[],
    );
    let o = run(repo.apply(pitr().arg("verify")));
    assert!(o.status.success(), "{}", text(&o));
}

/// `pitr demo` runs the whole loop on a throwaway server and shows the rows are back.
#[test]
fn demo_shows_the_rows_come_back() {
    let install = PgInstall::for_tests().pop().unwrap();
    let o = run(pitr()
        .arg("demo")
        .arg("--pg-bin")
        .arg(install.tool("postgres").parent().unwrap()));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        out.contains("the orders are back: 1 coffee, 2 tea, 3 croissant, 4 bagel, 5 juice"),
        "{out}"
    );
    assert!(out.contains("verify: PASSED"), "{out}");
}

/// `pitr stream --backup-every` takes backups inside the sidecar and `--keep-full` prunes
/// after each; the metrics count them.
#[test]
fn stream_takes_scheduled_backups_and_applies_retention() {
    let install = PgInstall::for_tests().remove(0);
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let addr = crate::stream::free_addr();
    let s = repo
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--backup-every",
            "2s",
            "--keep-full",
            "1",
            "--metrics-listen",
            &addr,
            "--source",
            &source(&c),
        ]))
        .spawn_logged(tmp.path().join("s.log"));
    let backups_total = || {
        crate::stream::http_get(&addr, "/metrics")
            .and_then(|(_, body)| crate::stream::metric(&body, "pitr_backups_total"))
            .unwrap_or(0.0)
    };
    testkit::wait_for("three scheduled backups", Duration::from_secs(90), || {
        c.psql("SELECT pg_switch_wal()");
        backups_total() >= 3.0
    });
    stop(s);
    let log = std::fs::read_to_string(tmp.path().join("s.log")).unwrap();
    let catalog: Vec<String> = repo
        .keys("backups/")
        .into_iter()
        .filter(|k| k.ends_with("/backup.json"))
        .collect();
    assert!(
        (1..=2).contains(&catalog.len()),
        "retention kept {catalog:?}\n{log}"
    );
    assert!(log.contains("retention applied"), "{log}");
    let o = run(repo.apply(pitr().arg("verify")));
    assert!(o.status.success(), "{}", text(&o));
}
