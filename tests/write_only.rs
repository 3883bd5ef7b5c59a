//! Write-only encryption (`--recipient` without `--identity`), as a sidecar runs it: `pitr
//! stream` and `pitr backup` seal everything for an X25519 recipient and read back nothing
//! an earlier process wrote. A restarted stream proves that the server's WAL continues the
//! repo's by the objects' digests; reading the repo (`restore`, `verify`, `list`) is refused
//! without `--identity`, and works with it.
//!
//! The CLI (`pitr key generate --recipient`, `--recipient`, `PITR_RECIPIENT`, `--identity`,
//! `PITR_IDENTITY_FILE`) is the key layer's (src/repo/crypt.rs).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::s3::S3Server;
use testkit::{Cluster, PgInstall};

use crate::restore::{list_dir, restore_dir, restore_verify, run, text};
use crate::stream::{SpawnLogged, TestRepo, opts, pitr, source, stop, switch_and_wait};

/// A row value no object of the repo may show.
const SECRET_ROW: &str = "pitr-write-only-row-5be1d2";

/// `pitr key generate --recipient` into `dir/id.key` (mode 0600): the identity file's path,
/// its text, and the recipient (`age1...`) its `# public key:` comment names.
fn new_identity(dir: &Path) -> (PathBuf, String, String) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let o = run(pitr().args(["key", "generate", "--recipient"]));
    assert!(
        o.status.success(),
        "pitr key generate --recipient: {}",
        text(&o)
    );
    let id = String::from_utf8(o.stdout.clone()).expect("the identity is text");
    let recipient = id
        .lines()
        .find_map(|l| l.trim().strip_prefix("# public key:"))
        .map(|r| r.trim().to_owned())
        .unwrap_or_else(|| panic!("no `# public key:` line: {}", text(&o)));
    assert!(recipient.starts_with("age1"), "{recipient}");
    assert!(
        id.lines().any(|l| l.starts_with("AGE-SECRET-KEY-1")),
        "{}",
        text(&o)
    );
    let path = dir.join("id.key");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(id.as_bytes()).unwrap();
    (path, id, recipient)
}

/// A command that reads the repo, refused in write-only mode: a non-zero exit, one
/// `pitr: error:` line naming `--identity`, nothing written to the repo or to `dest`.
fn refused_without_identity(repo: &TestRepo, cmd: &mut Command, dest: Option<&Path>, what: &str) {
    let keys = repo.keys("");
    let before = dest.map(list_dir);
    let o = run(repo.apply(cmd));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{what}: succeeded: {}", text(&o));
    assert!(!stderr.contains("panicked"), "{what}: {}", text(&o));
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pitr: error"))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: one error line: {}", text(&o));
    assert!(errors[0].contains("--identity"), "{what}: {}", errors[0]);
    assert_eq!(repo.keys(""), keys, "{what} wrote to the repo");
    if let Some(d) = dest {
        assert_eq!(Some(list_dir(d)), before, "{what} touched {}", d.display());
    }
}

/// Every file under `dir` but `pitr.json` that shows `needle`.
fn files_showing(dir: &Path, needle: &[u8]) -> Vec<String> {
    fn walk(d: &Path, needle: &[u8], out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, needle, out);
            } else if p.file_name().is_some_and(|n| n != "pitr.json") {
                let b = std::fs::read(&p).unwrap();
                if b.windows(needle.len()).any(|w| w == needle) {
                    out.push(p.display().to_string());
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, needle, &mut out);
    out
}

/// On the first and the last major tested (a local repo on the first, S3 on s3s-fs on the
/// last): `pitr stream --recipient age1...` and `pitr backup --recipient FILE` into a new
/// repo, commits; the stream restarted as a new process (`PITR_RECIPIENT`), which proves
/// continuity by digest, more commits and a mark row; `restore`, `verify` and `list` with
/// the recipient only are refused in one line, writing nothing; with `--identity` (or
/// `PITR_IDENTITY_FILE`) they work, and the restore has the mark row.
#[test]
fn write_only_stream_and_backup_restore_with_the_identity() {
    let mut installs = PgInstall::for_tests();
    let last = installs.pop().unwrap();
    let first = if installs.is_empty() {
        last.clone()
    } else {
        installs.swap_remove(0)
    };
    for (run_no, (install, on_s3)) in [(first, false), (last, true)].into_iter().enumerate() {
        let major = install.major;
        let label = format!("PG {major} {}", if on_s3 { "s3s-fs" } else { "local" });
        let c = Cluster::start(&install, opts().conf("track_commit_timestamp = on"));
        let tmp = tempfile::tempdir().unwrap();
        let (identity, id_text, recipient) = new_identity(tmp.path());
        let recipient_file = tmp.path().join("recipient.txt");
        std::fs::write(&recipient_file, format!("{recipient}\n")).unwrap();
        let repo = if on_s3 {
            TestRepo::s3(S3Server::s3s_fs(), &format!("wo{run_no}"))
        } else {
            TestRepo::local(&tmp.path().join("repo"))
        };
        let stream_cmd = || {
            let mut cmd = pitr();
            cmd.args([
                "stream",
                "--partial-every",
                "200ms",
                "--slot",
                "pitr_wo",
                "--source",
                &source(&c),
            ]);
            cmd
        };
        let log1 = tmp.path().join("stream1.log");
        let s1 = repo
            .apply(&mut stream_cmd())
            .args(["--recipient", &recipient])
            .spawn_logged(&log1);
        c.psql(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL); INSERT INTO t VALUES (1, '{SECRET_ROW}')"
        ));
        let o = run(repo
            .apply(pitr().args([
                "backup",
                "--json",
                "--label",
                "base",
                "--wal-timeout",
                "60s",
                "--source",
                &source(&c),
            ]))
            .arg("--recipient")
            .arg(&recipient_file));
        assert!(
            o.status.success(),
            "{label}: backup --recipient: {}",
            text(&o)
        );
        let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(b["pg_major"], major, "{label}: {b:#}");
        for id in 2..=3 {
            c.psql(&format!("INSERT INTO t VALUES ({id}, '{SECRET_ROW}')"));
        }
        switch_and_wait(&c, &repo, 1, "the first stream's archive", 60);
        // Some WAL in a partial too: the restarted stream resumes in it.
        c.psql(&format!("INSERT INTO t VALUES (4, '{SECRET_ROW}')"));
        std::thread::sleep(Duration::from_millis(600));
        stop(s1);
        // A new process, with the recipient from the environment: it cannot read what the
        // first one wrote, so it proves continuity by the objects' digests.
        let log2 = tmp.path().join("stream2.log");
        let s2 = repo
            .apply(&mut stream_cmd())
            .env("PITR_RECIPIENT", &recipient)
            .spawn_logged(&log2);
        for id in 5..=6 {
            c.psql(&format!("INSERT INTO t VALUES ({id}, '{SECRET_ROW}')"));
        }
        c.psql("INSERT INTO t VALUES (99, 'mark')");
        // The instant halfway between rows 6 and 99 committed, then the table dropped: the
        // core PITR sequence, restored to that instant below.
        let between_6_99 = c.psql(
            "SELECT to_char((a + (b - a) / 2) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM (SELECT pg_xact_commit_timestamp(xmin) AS a FROM t WHERE id = 6) x, (SELECT pg_xact_commit_timestamp(xmin) AS b FROM t WHERE id = 99) y",
        );
        c.psql("DROP TABLE t");
        switch_and_wait(&c, &repo, 1, "the restarted stream's archive", 60);
        let log = std::fs::read_to_string(&log2).unwrap();
        assert!(
            log.contains("the server's WAL continues the repo's"),
            "{label}: the restarted stream proved nothing:\n{log}"
        );
        for bad in ["cannot check", "panicked", "ERROR"] {
            assert!(!log.contains(bad), "{label}: {bad:?} in:\n{log}");
        }
        stop(s2);
        // Reading with the recipient only: refused, nothing written.
        let dir = restore_dir(tmp.path(), "r");
        refused_without_identity(
            &repo,
            pitr()
                .args(["restore", "--to", "latest", "-D"])
                .arg(&dir)
                .arg("--pg-bin")
                .arg(install.tool("postgres").parent().unwrap())
                .args(["--recipient", &recipient]),
            Some(tmp.path()),
            &format!("{label}: restore --recipient"),
        );
        assert!(!dir.exists(), "{label}: the refused restore made {dir:?}");
        for sub in ["verify", "list"] {
            refused_without_identity(
                &repo,
                pitr().arg(sub).env("PITR_RECIPIENT", &recipient),
                None,
                &format!("{label}: {sub} with PITR_RECIPIENT"),
            );
        }
        // With the identity: restored to the instant between rows 6 and 99, before the drop.
        let id_env = identity.display().to_string();
        let v = restore_verify(
            &repo,
            &install,
            &dir,
            &["--to", &between_6_99],
            &[
                "SELECT max(id)::text FROM t => 6",
                "SELECT count(*)::text FROM t => 6",
            ],
            &[("PITR_IDENTITY_FILE", &id_env)],
        );
        assert_eq!(v["verify"]["checks"][0]["ok"], true, "{label}: {v:#}");
        assert_eq!(v["verify"]["checks"][1]["ok"], true, "{label}: {v:#}");
        let o = run(repo
            .apply(pitr().args(["list", "--json"]))
            .arg("--identity")
            .arg(&identity));
        assert!(o.status.success(), "{label}: list --identity: {}", text(&o));
        let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(l["backups"].as_array().unwrap().len(), 1, "{label}: {l:#}");
        assert!(
            l["timelines"][0]["gaps"].as_array().unwrap().is_empty(),
            "{label}: {l:#}"
        );
        let o = run(repo
            .apply(pitr().arg("verify"))
            .arg("--identity")
            .arg(&identity));
        assert!(
            o.status.success(),
            "{label}: verify --identity: {}",
            text(&o)
        );
        // At rest: no object shows the row or a line of the identity file.
        let stored = repo.backing_dir().expect("local or s3s-fs");
        let hits = files_showing(&stored, SECRET_ROW.as_bytes());
        assert!(hits.is_empty(), "{label}: the row in the clear: {hits:?}");
        for line in id_text
            .lines()
            .filter(|l| l.starts_with("AGE-SECRET-KEY-1"))
        {
            let hits = files_showing(&stored, line.as_bytes());
            assert!(hits.is_empty(), "{label}: the identity in {hits:?}");
        }
    }
}
