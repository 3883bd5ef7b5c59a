//! `pitr restore --verify --metrics-file`: the restore test's result for node_exporter's
//! textfile collector, written by real restore tests on a real PostgreSQL (the first major
//! of `PITR_TEST_PG`), each file checked by `promtool check metrics`.

use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::{Cluster, PgInstall};

use crate::restore::{ROWS_SQL, backup, restore_dir, run, text, wait_archived};
use crate::stream::{TestRepo, opts, pitr, start_stream, stop};

/// promtool from scripts/install-test-deps.sh (or PATH), as scripts/check-ops-files.sh finds
/// it. Missing: `None` after a loud SKIPPED line; under CI=true a failure.
fn promtool() -> Option<PathBuf> {
    let cached = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/prometheus/usr/bin/promtool");
    if cached.is_file() {
        return Some(cached);
    }
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some("promtool".into());
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("no promtool (CI=true: run scripts/install-test-deps.sh)");
    }
    eprintln!(
        "******** SKIPPED: promtool check metrics: no promtool (scripts/install-test-deps.sh) ********"
    );
    None
}

/// `promtool check metrics` on the file: valid exposition, HELP and TYPE, naming lint.
fn promtool_check(promtool: Option<&Path>, file: &Path) {
    let Some(p) = promtool else { return };
    let o = Command::new(p)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(file).unwrap())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics {}: {}\n{}",
        file.display(),
        text(&o),
        std::fs::read_to_string(file).unwrap()
    );
}

/// The file's samples: metric name (labels included) to value.
fn samples(file: &Path) -> Vec<(String, f64)> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn value(s: &[(String, f64)], metric: &str, repo: &str) -> Option<f64> {
    let key = format!("{metric}{{repo=\"{repo}\"}}");
    s.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// A passing restore test writes success 1 (with its RTO, recovery time and WAL replayed); a
/// failing one (a `--check-sql` that does not hold, exit 1) writes success 0 and keeps the
/// earlier success's time; so does a restore that fails before verifying (a non-empty -D),
/// without figures; refused arguments leave the file as it was. Every file passes `promtool
/// check metrics`, is 0644, and no temporary file is left in the collector's directory.
#[test]
fn restore_tests_write_their_result_for_the_textfile_collector() {
    use std::os::unix::fs::PermissionsExt;
    let promtool = promtool();
    let install = PgInstall::for_tests().remove(0);
    let c = Cluster::start(&install, opts().conf("track_commit_timestamp = on"));
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let repo = TestRepo::local(&repo_dir);
    let s = start_stream(&c, &repo, &tmp.path().join("stream.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY)");
    backup(&c, &repo, "base");
    c.psql("INSERT INTO t VALUES (1), (2)");
    wait_archived(&c, &repo);
    stop(s);
    let collector = tmp.path().join("textfile");
    std::fs::create_dir(&collector).unwrap();
    let prom = collector.join("pitr-restore.prom");
    let label = repo_dir.display().to_string();
    let restore = |dir: &str, check: &str| {
        let mut cmd = pitr();
        cmd.args(["restore", "--verify", "--verify-user", "postgres"])
            .arg("-D")
            .arg(restore_dir(tmp.path(), dir))
            .arg("--pg-bin")
            .arg(install.tool("postgres").parent().unwrap())
            .arg("--check-sql")
            .arg(check)
            .arg("--metrics-file")
            .arg(&prom);
        run(repo.apply(&mut cmd))
    };

    // Passes.
    let o = restore("pass", &format!("{ROWS_SQL} => 1,2"));
    assert!(o.status.success(), "{}", text(&o));
    promtool_check(promtool.as_deref(), &prom);
    let passed = samples(&prom);
    let v = |s: &[(String, f64)], m: &str| value(s, m, &label);
    assert_eq!(
        v(&passed, "pitr_restore_verify_success"),
        Some(1.0),
        "{passed:?}"
    );
    let success_at = v(
        &passed,
        "pitr_restore_verify_last_success_timestamp_seconds",
    )
    .unwrap();
    assert_eq!(
        v(&passed, "pitr_restore_verify_last_run_timestamp_seconds"),
        Some(success_at)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        success_at <= now && success_at > now - 600.0,
        "{success_at} vs {now}"
    );
    assert!(v(&passed, "pitr_restore_verify_rto_seconds").unwrap() > 0.0);
    assert!(v(&passed, "pitr_restore_verify_recovery_seconds").unwrap() > 0.0);
    assert!(v(&passed, "pitr_restore_verify_wal_replayed_bytes").unwrap() > 0.0);
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    std::thread::sleep(std::time::Duration::from_millis(20));

    // A failed check: exit 1, success 0, the earlier success kept, this run's figures.
    let o = restore("fail", "SELECT 1 => 2");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    promtool_check(promtool.as_deref(), &prom);
    let failed = samples(&prom);
    assert_eq!(
        v(&failed, "pitr_restore_verify_success"),
        Some(0.0),
        "{failed:?}"
    );
    assert_eq!(
        v(
            &failed,
            "pitr_restore_verify_last_success_timestamp_seconds"
        ),
        Some(success_at)
    );
    assert!(v(&failed, "pitr_restore_verify_last_run_timestamp_seconds").unwrap() > success_at);
    assert!(v(&failed, "pitr_restore_verify_rto_seconds").is_some());

    // A restore that fails before verifying (the destination is not empty): success 0, the
    // success still kept, no figures (none of this run's).
    let o = restore("pass", "SELECT 1");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    promtool_check(promtool.as_deref(), &prom);
    let errored = samples(&prom);
    assert_eq!(v(&errored, "pitr_restore_verify_success"), Some(0.0));
    assert_eq!(
        v(
            &errored,
            "pitr_restore_verify_last_success_timestamp_seconds"
        ),
        Some(success_at)
    );
    assert_eq!(
        v(&errored, "pitr_restore_verify_rto_seconds"),
        None,
        "{errored:?}"
    );

    // Refused arguments (no --verify): one line, exit 2, the file untouched.
    let before = std::fs::read(&prom).unwrap();
    let o = run(repo.apply(
        pitr()
            .args(["restore", "-D"])
            .arg(restore_dir(tmp.path(), "usage"))
            .arg("--metrics-file")
            .arg(&prom),
    ));
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--verify"), "{err}");
    assert_eq!(std::fs::read(&prom).unwrap(), before);

    let names: Vec<_> = std::fs::read_dir(&collector)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["pitr-restore.prom"], "no temporary file is left");
}
