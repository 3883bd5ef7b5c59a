//! Real-life restore sequences that broke before (issue 9 §1): a disaster-recovery drill
//! (restore, promote, write, back up, restore again), backups of a standby, timeline IDs,
//! `--verify` cases that must fail, duplicate restore point names, a skewed sidecar clock,
//! a damaged catalog entry, an interrupted backup, a gap's suggested LSN, an unwritable
//! destination, and repos that already mix two histories. Against real servers.
//!
//! Most behaviours here are PostgreSQL's recovery code, not version-specific parsing, so each
//! test runs on one or two majors, rotating, so that every major is exercised (see [`majors`]);
//! the differential test and `restore.rs` cover every major.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use testkit::{Cluster, PgInstall};

use crate::restore::{
    ROWS_SQL, backup, list_dir, refused, restore_dir, restore_verify, run, server_now, text,
    wait_archived,
};
use crate::stream::{
    SpawnLogged, TestRepo, opts, pitr, source, start_stream, start_stream_src, stop,
};

/// The installs a test runs on: the ones at these positions of the installed majors.
fn majors(pick: &[usize]) -> Vec<PgInstall> {
    let all = PgInstall::for_tests();
    let mut out: Vec<PgInstall> = pick.iter().map(|i| all[i % all.len()].clone()).collect();
    out.dedup();
    out
}

fn timeline_of(c: &Cluster) -> u32 {
    let h = c.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)");
    u32::from_str_radix(&h, 16).unwrap()
}

/// Settings lines (not comments) of a file that set `name`.
fn set_lines(conf: &str, name: &str) -> usize {
    conf.lines()
        .filter(|l| {
            let t = l.trim_start();
            !t.starts_with('#')
                && t.starts_with(name)
                && t[name.len()..].trim_start().starts_with('=')
        })
        .count()
}

/// Restore, promote, keep writing on the new timeline, archive and back up the new primary
/// into the same repo, restore again. Before the fix the second restore failed ("requested
/// recovery stop point is before consistent recovery point": the first restore's
/// `recovery_target_lsn` came back with the new backup), and a restore of timeline 1 in a repo
/// holding timeline 2 promoted to a second, different timeline 2.
#[test]
fn disaster_recovery_drill_restore_promote_write_back_up_restore_again() {
    for install in majors(&[0, 3]) {
        let major = install.major;
        let tmp = tempfile::tempdir().unwrap();
        let repo = TestRepo::local(&tmp.path().join("repo"));
        let c = Cluster::start(&install, opts());
        let s = start_stream(&c, &repo, &tmp.path().join("s1.log"));
        c.psql("CREATE TABLE t (id int PRIMARY KEY)");
        c.psql("INSERT INTO t VALUES (1)");
        c.psql("INSERT INTO t VALUES (2)");
        backup(&c, &repo, "base");
        c.psql("INSERT INTO t VALUES (3)");
        let after_3 = server_now(&c);
        c.psql("INSERT INTO t VALUES (4)");
        wait_archived(&c, &repo);
        stop(s);
        drop(c); // the primary is lost
        // 1. Restore to just after row 3, proven by --verify.
        let d1 = restore_dir(tmp.path(), "r1");
        let v = restore_verify(
            &repo,
            &install,
            &d1,
            &["--to", &after_3],
            &[&format!("{ROWS_SQL} => 1,2,3")],
            &[],
        );
        assert_eq!(v["verify"]["ok"], true, "PG {major}: {v:#}");
        // 2. It becomes the primary and carries on.
        let r1 = Cluster::adopt(&install, &d1, &[]);
        r1.wait_promoted(60);
        assert_eq!(timeline_of(&r1), 2);
        r1.psql("INSERT INTO t VALUES (5)");
        let s2 = start_stream(&r1, &repo, &tmp.path().join("s2.log"));
        let b2 = backup(&r1, &repo, "after-drill");
        assert_eq!(b2["end_tli"], 2, "{b2:#}");
        r1.psql("INSERT INTO t VALUES (6)");
        let last = r1.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        r1.switch_wal();
        crate::stream::wait_logged(
            "the new primary's WAL in the repo",
            Duration::from_secs(60),
            &tmp.path().join("s2.log"),
            || crate::stream::repo_segments(&repo, 2).contains(&last),
        );
        stop(s2);
        drop(r1);
        // 3. Restore its backup to latest.
        let d2 = restore_dir(tmp.path(), "r2");
        let v = restore_verify(
            &repo,
            &install,
            &d2,
            &["--to", "latest", "--backup", "after-drill"],
            &[&format!("{ROWS_SQL} => 1,2,3,5,6")],
            &[],
        );
        assert_eq!(v["verify"]["achieved_timeline"], 3, "PG {major}: {v:#}");
        // One set of recovery settings: the first restore's lines are commented out, and
        // reported.
        let auto = std::fs::read_to_string(d2.join("postgresql.auto.conf")).unwrap();
        assert_eq!(set_lines(&auto, "recovery_target_lsn"), 1, "{auto}");
        assert_eq!(set_lines(&auto, "recovery_target_timeline"), 1, "{auto}");
        assert!(
            auto.contains("# pitr restore: disabled: recovery_target_lsn"),
            "{auto}"
        );
        let neutralised = v["restore"]["neutralised"].as_array().unwrap();
        assert!(
            neutralised
                .iter()
                .any(|n| n.as_str().unwrap().starts_with("recovery_target_lsn")),
            "{v:#}"
        );
        // 4. Timeline 1 again, from the first backup: the server must not reuse 2 (the
        // repo's; the last restore's 3 was never archived).
        let d3 = restore_dir(tmp.path(), "r3");
        let v = restore_verify(
            &repo,
            &install,
            &d3,
            &["--timeline", "1", "--to", &after_3],
            &[&format!("{ROWS_SQL} => 1,2,3")],
            &[],
        );
        assert_eq!(v["plan"]["promotes_to"], 3, "PG {major}: {v:#}");
        assert_eq!(v["verify"]["achieved_timeline"], 3, "PG {major}: {v:#}");
        let o = run(repo.apply(pitr().arg("verify")));
        assert!(o.status.success(), "PG {major} verify: {}", text(&o));
    }
}

/// Backups taken from a streaming standby (to spare the primary): the restore recovers and
/// promotes instead of streaming from the live primary as a standby (before the fix it kept
/// `standby.signal` and `primary_conninfo`); `--standby` gives a standby on purpose, which
/// follows the repo. pitr streams from the primary in one run and from the standby in the
/// other: the backup's WAL is found either way.
#[test]
fn a_standby_s_backup_restores_and_promotes_and_standby_is_explicit() {
    for (k, install) in majors(&[1, 2]).into_iter().enumerate() {
        let major = install.major;
        let tmp = tempfile::tempdir().unwrap();
        let repo = TestRepo::local(&tmp.path().join("repo"));
        let p = Cluster::start(&install, opts());
        p.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
        let sb = Cluster::standby_of(&p, &[]);
        let from_standby = k % 2 == 1;
        let s = if from_standby {
            start_stream_src(&source(&sb), &repo, &tmp.path().join("s.log"))
        } else {
            start_stream(&p, &repo, &tmp.path().join("s.log"))
        };
        p.psql("INSERT INTO t VALUES (2)");
        testkit::wait_caught_up(&p, &sb);
        let b = backup(&sb, &repo, "from-standby");
        assert_eq!(b["label"], "from-standby");
        p.psql("INSERT INTO t VALUES (3)");
        testkit::wait_caught_up(&p, &sb);
        wait_archived(&p, &repo);
        let d = restore_dir(tmp.path(), "promoted");
        let v = restore_verify(
            &repo,
            &install,
            &d,
            &["--to", "latest"],
            &[&format!("{ROWS_SQL} => 1,2,3")],
            &[],
        );
        assert_eq!(v["verify"]["promoted"], true, "PG {major}: {v:#}");
        let removed = v["restore"]["removed"].as_array().unwrap();
        assert!(
            removed.iter().any(|r| r == "standby.signal"),
            "PG {major}: {v:#}"
        );
        let auto = std::fs::read_to_string(d.join("postgresql.auto.conf")).unwrap();
        assert!(
            auto.contains("# pitr restore: disabled: primary_conninfo"),
            "{auto}"
        );
        assert!(!d.join("standby.signal").exists());
        // --standby: a standby on purpose, which keeps fetching from the repo.
        let ds = restore_dir(tmp.path(), "standby");
        let o = run(repo.apply(pitr().args(["restore", "--standby", "-D"]).arg(&ds)));
        assert!(o.status.success(), "{}", text(&o));
        assert!(ds.join("standby.signal").exists());
        assert!(!ds.join("recovery.signal").exists());
        let st = Cluster::adopt(&install, &ds, &["hot_standby = on"]);
        testkit::wait_for(
            "the standby to be consistent",
            Duration::from_secs(60),
            || st.try_psql("SELECT count(*) FROM t").as_deref() == Ok("3"),
        );
        assert_eq!(st.psql("SELECT pg_is_in_recovery()"), "t");
        p.psql("INSERT INTO t VALUES (4)");
        testkit::wait_caught_up(&p, &sb);
        wait_archived(&p, &repo);
        testkit::wait_for(
            "the repo's standby to replay row 4",
            Duration::from_secs(60),
            || st.try_psql("SELECT count(*) FROM t").as_deref() == Ok("4"),
        );
        assert_eq!(st.psql("SELECT pg_is_in_recovery()"), "t");
        // --standby takes no target and does not combine with --verify.
        let o = run(repo.apply(
            pitr()
                .args(["restore", "--standby", "--verify", "-D"])
                .arg(tmp.path().join("x")),
        ));
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        stop(s);
    }
}

/// `--verify` must fail, not pass, when: the server is still in recovery at the timeout; it
/// runs as a standby; it promotes to a timeline the plan did not predict; or the achieved
/// point is not the predicted one. Each case tampers with a restored directory the way the
/// real failure would leave it, then runs the same check `pitr restore --verify` runs. Also:
/// `--to-name` with a duplicate name stops at the first point, as PostgreSQL does.
#[test]
fn verify_fails_every_false_pass_and_duplicate_names_stop_at_the_first() {
    for install in majors(&[2]) {
        let major = install.major;
        let tmp = tempfile::tempdir().unwrap();
        let repo_dir = tmp.path().join("repo");
        let repo = TestRepo::local(&repo_dir);
        let c = Cluster::start(&install, opts());
        let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
        c.psql("CREATE TABLE t (id int PRIMARY KEY)");
        backup(&c, &repo, "base");
        let mark = |name: &str| {
            let o = run(repo.apply(
                pitr()
                    .args(["mark", name, "--source"])
                    .arg(format!("{} dbname=postgres", source(&c))),
            ));
            assert!(o.status.success(), "mark: {}", text(&o));
        };
        c.psql("INSERT INTO t VALUES (1)");
        let after_1 = c.psql("SELECT pg_current_wal_lsn()");
        mark("dup");
        c.psql("INSERT INTO t VALUES (2)");
        let between_2_3 = server_now(&c);
        mark("dup");
        c.psql("INSERT INTO t VALUES (3)");
        wait_archived(&c, &repo);
        stop(s);
        // Duplicate names: the first one, and the plan says the name is not unique.
        let d = restore_dir(tmp.path(), "dup");
        let v = restore_verify(
            &repo,
            &install,
            &d,
            &["--to-name", "dup"],
            &[&format!("{ROWS_SQL} => 1")],
            &[],
        );
        let notes = v["plan"]["notes"].to_string();
        assert!(notes.contains("not unique"), "PG {major}: {v:#}");
        // A repo with a timeline-2 history (another branch of this cluster): timeline 1
        // restores must promote to 3.
        std::fs::write(
            repo_dir.join("wal/00000002.history"),
            format!("1\t{after_1}\tanother branch\n"),
        )
        .unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let prepo = rt
            .block_on(pitr::repo::Repo::open_existing(
                &repo_dir.display().to_string(),
            ))
            .unwrap();
        let target = pitr::restore::target::parse_time(&between_2_3, None, None).unwrap();
        let vopts = pitr::restore::verify::ServerCheckOptions {
            pg_bin: Some(install.bin.clone()),
            image: None,
            checks: vec![pitr::restore::verify::Check::parse(&format!(
                "{ROWS_SQL} => 1,2"
            ))],
            dbname: "postgres".into(),
            user: Some("postgres".into()),
            timeout: Duration::from_secs(8),
        };
        type Tamper = Box<dyn Fn(&Path)>;
        let cases: Vec<(&str, Tamper, &str)> = vec![
            ("untouched", Box::new(|_: &Path| {}), ""),
            (
                "paused at the target",
                Box::new(|d: &Path| {
                    append(
                        &d.join("postgresql.auto.conf"),
                        "recovery_target_action = 'pause'\n",
                    )
                }),
                "still in recovery",
            ),
            (
                "standby mode",
                Box::new(|d: &Path| std::fs::write(d.join("standby.signal"), "").unwrap()),
                "standby.signal",
            ),
            (
                "an unpredicted timeline",
                Box::new(|d: &Path| {
                    std::fs::remove_file(d.join("pg_wal/00000002.history")).unwrap()
                }),
                "not the predicted 3",
            ),
            (
                "another point",
                Box::new(move |d: &Path| {
                    append(
                        &d.join("postgresql.auto.conf"),
                        &format!("recovery_target_lsn = '{after_1}'\n"),
                    )
                }),
                "not the predicted one",
            ),
        ];
        for (k, (what, tamper, want)) in cases.iter().enumerate() {
            let dir = restore_dir(tmp.path(), &format!("case{k}"));
            let ropts = pitr::restore::RestoreOptions {
                repo: prepo.clone(),
                dir: dir.clone(),
                target: pitr::restore::TargetSpec::Time(target.clone()),
                timeline: pitr::restore::TimelineSel::Id(walfmt::TimeLineId(1)),
                tablespace_map: Default::default(),
                progress: false,
                backup: None,
                mode: pitr::restore::Mode::Promote,
                inclusive: true,
            };
            let plan = rt.block_on(pitr::restore::plan(&ropts)).unwrap();
            assert_eq!(plan.promotes_to, Some(3), "{what}");
            let stats = rt
                .block_on(pitr::restore::execute(&prepo, &plan, false))
                .unwrap();
            tamper(&dir);
            let r = rt
                .block_on(pitr::restore::verify::run_server_check(
                    &plan,
                    &stats,
                    &vopts,
                    &pitr::restore::verify::Runtime::Local(install.bin.clone()),
                ))
                .unwrap();
            let shown = serde_json::to_string_pretty(&r).unwrap();
            if want.is_empty() {
                assert!(r.ok, "PG {major} {what}: {shown}");
                assert_eq!(r.achieved_timeline, Some(3), "{shown}");
            } else {
                assert!(!r.ok, "PG {major} {what}: a false PASS: {shown}");
                assert!(
                    r.failures.iter().any(|f| f.contains(want)),
                    "PG {major} {what}: wanted {want:?} in {shown}"
                );
            }
        }
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// `pitr` under `faketime` (libfaketime from Debian): its clock off by an hour.
fn pitr_at(offset: &str) -> Command {
    let mut c = Command::new("faketime");
    c.arg("-f")
        .arg(offset)
        .arg(crate::stream::pitr_bin())
        .env("PITR_LOG", "info")
        .env("PITR_METRICS_LISTEN", "off")
        .env_remove("PITR_REPO")
        .env_remove("PITR_SOURCE");
    c
}

/// A backup's restorable-from instant comes from the server's clock (the WAL's commit
/// timestamps), so a sidecar whose clock is an hour slow cannot let a commit made after the
/// target into a restore (before the fix: the row committed after the target came back), and
/// one an hour fast does not refuse a target that is restorable.
#[test]
fn a_skewed_sidecar_clock_neither_lets_a_later_commit_in_nor_refuses_a_valid_target() {
    for install in majors(&[1]) {
        let major = install.major;
        let tmp = tempfile::tempdir().unwrap();
        let repo = TestRepo::local(&tmp.path().join("repo"));
        let c = Cluster::start(&install, opts());
        let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
        c.psql("CREATE TABLE t (id int PRIMARY KEY)");
        let before_1 = server_now(&c);
        c.psql("INSERT INTO t VALUES (1)");
        // An hour slow: the catalog says the backup ended an hour ago.
        let o = run(repo.apply(
            pitr_at("-1h")
                .args([
                    "backup",
                    "--json",
                    "--label",
                    "slow",
                    "--wal-timeout",
                    "60s",
                    "--source",
                ])
                .arg(source(&c)),
        ));
        assert!(o.status.success(), "faketime pitr backup: {}", text(&o));
        std::thread::sleep(Duration::from_millis(20));
        c.psql("INSERT INTO t VALUES (2)");
        let after_2 = server_now(&c);
        // An hour fast: the catalog says the backup ends an hour from now.
        let o = run(repo.apply(
            pitr_at("+1h")
                .args([
                    "backup",
                    "--json",
                    "--label",
                    "fast",
                    "--wal-timeout",
                    "60s",
                    "--source",
                ])
                .arg(source(&c)),
        ));
        assert!(o.status.success(), "faketime pitr backup: {}", text(&o));
        std::thread::sleep(Duration::from_millis(20));
        c.psql("INSERT INTO t VALUES (3)");
        wait_archived(&c, &repo);
        stop(s);
        // Before row 1: no backup holds that state (both contain row 1).
        let missing = tmp.path().join("never");
        refused(
            &repo,
            &["--to", &before_1],
            &missing,
            &[],
            "before the earliest restorable point",
        );
        // After row 2, before 3: the "fast" backup serves it although pitr's clock put its
        // end an hour later.
        let d = restore_dir(tmp.path(), "after2");
        let v = restore_verify(
            &repo,
            &install,
            &d,
            &["--to", &after_2],
            &[&format!("{ROWS_SQL} => 1,2")],
            &[],
        );
        assert_eq!(v["plan"]["backup"]["label"], "fast", "PG {major}: {v:#}");
    }
}

/// One unreadable catalog entry, an interrupted backup, and a WAL gap: restores of healthy
/// backups, `list` and `prune` go on (with warnings), `verify` names each problem, `prune`
/// removes the interrupted backup once it is old and leaves no empty directory, the LSN an
/// error suggests is accepted, an unwritable destination is refused before anything is
/// downloaded (also by `--dry-run`), and each error's cause is printed once.
#[test]
fn a_damaged_entry_an_interrupted_backup_and_a_gap_do_not_take_the_repo_down() {
    for install in majors(&[3]) {
        let major = install.major;
        let tmp = tempfile::tempdir().unwrap();
        let repo_dir = tmp.path().join("repo");
        let repo = TestRepo::local(&repo_dir);
        let c = Cluster::start(&install, opts());
        let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
        c.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)");
        let old = backup(&c, &repo, "old");
        c.psql("INSERT INTO t VALUES (2)");
        let new = backup(&c, &repo, "new");
        c.psql("INSERT INTO t VALUES (3)");
        wait_archived(&c, &repo);
        // An interrupted backup: objects without a catalog entry, from two days ago.
        let ghost = repo_dir.join("backups/20200101T000000Z");
        std::fs::create_dir_all(&ghost).unwrap();
        std::fs::write(ghost.join("base.000000.lz4"), b"interrupted").unwrap();
        // The old catalog entry truncated.
        let old_id = old["id"].as_str().unwrap();
        let old_entry = repo_dir.join(format!("backups/{old_id}/backup.json"));
        let body = std::fs::read(&old_entry).unwrap();
        std::fs::write(&old_entry, &body[..body.len() / 2]).unwrap();
        // list: both reported, nothing fails.
        let o = run(repo.apply(pitr().args(["list", "--json"])));
        assert!(o.status.success(), "PG {major} list: {}", text(&o));
        let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(l["backups"].as_array().unwrap().len(), 1, "{l:#}");
        assert!(
            l["unusable_backups"][0]["key"]
                .as_str()
                .unwrap()
                .contains(old_id),
            "{l:#}"
        );
        assert_eq!(
            l["incomplete_backups"][0]["id"], "20200101T000000Z",
            "{l:#}"
        );
        // restore of the healthy backup, and of latest.
        let d = restore_dir(tmp.path(), "latest");
        restore_verify(
            &repo,
            &install,
            &d,
            &["--to", "latest", "--backup", new["id"].as_str().unwrap()],
            &[&format!("{ROWS_SQL} => 1,2,3")],
            &[],
        );
        // verify names the entry (and warns about the interrupted backup).
        let o = run(repo.apply(pitr().args(["verify"])));
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains(&format!("backups/{old_id}/backup.json")),
            "{out}"
        );
        assert!(out.contains("20200101T000000Z"), "{out}");
        // prune works, removes the interrupted backup, leaves no empty directory.
        let o = run(repo.apply(pitr().args(["prune", "--keep-full", "1", "--json"])));
        assert!(o.status.success(), "prune: {}", text(&o));
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["deleted_incomplete"][0], "20200101T000000Z", "{r:#}");
        // The unusable entry's backup may need old WAL: none is deleted while it is there.
        assert_eq!(r["deleted_wal_objects"], 0, "{r:#}");
        assert!(
            r["wal_kept_because"].as_str().unwrap().contains(old_id),
            "{r:#}"
        );
        assert!(!ghost.exists(), "prune left {}", ghost.display());
        // A gap: a segment after the newest backup goes missing.
        c.psql("INSERT INTO t SELECT generate_series(10, 30000)");
        wait_archived(&c, &repo);
        c.psql("INSERT INTO t VALUES (4)");
        wait_archived(&c, &repo);
        stop(s);
        let segs = crate::stream::repo_segments(&repo, 1);
        let victim = &segs[segs.len() - 2];
        std::fs::remove_file(repo_dir.join(format!("wal/00000001/{victim}.lz4"))).unwrap();
        let missing = tmp.path().join("nothing");
        let o = run(repo.apply(
            pitr()
                .args(["restore", "--to", "latest", "-D"])
                .arg(&missing),
        ));
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        let suggested = err
            .split("--to-lsn ")
            .nth(1)
            .and_then(|r| r.split([',', ';', ' ']).next())
            .unwrap_or_else(|| panic!("no --to-lsn suggested: {err}"))
            .to_string();
        let d = restore_dir(tmp.path(), "to-gap");
        restore_verify(
            &repo,
            &install,
            &d,
            &["--to-lsn", &suggested],
            &["SELECT count(*) >= 3 FROM t => t"],
            &[],
        );
        // An unwritable destination: refused by --dry-run, and before any download.
        let ro = tmp.path().join("ro");
        std::fs::create_dir_all(&ro).unwrap();
        let _mount = ReadOnlyMount::new(&ro);
        for dry in [true, false] {
            let mut cmd = pitr();
            cmd.args(["restore", "--to-lsn", &suggested]);
            if dry {
                cmd.arg("--dry-run");
            }
            let o = run(repo.apply(cmd.arg("-D").arg(ro.join("data"))));
            assert_eq!(o.status.code(), Some(1), "{}", text(&o));
            let err = String::from_utf8_lossy(&o.stderr).to_string();
            assert!(err.contains("cannot be written"), "{err}");
            assert_eq!(
                err.matches("Read-only file system").count(),
                1,
                "the cause must be printed once: {err}"
            );
            assert!(!err.contains("restored "), "{err}");
        }
        assert_eq!(list_dir(&ro), Some(vec![]));
    }
}

/// A read-only tmpfs mounted on a directory for the test's life (tests run as root, where
/// permissions alone would not stop a write).
struct ReadOnlyMount(std::path::PathBuf);

impl ReadOnlyMount {
    fn new(dir: &Path) -> ReadOnlyMount {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs -o ro {} (needs root)", dir.display());
        ReadOnlyMount(dir.to_path_buf())
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Repos that already mix two histories (written by an older pitr, or by hand) are detected
/// by `list` and `verify`: a history file that contradicts another, and WAL of a rolled-back
/// primary next to the original's under the same timeline (a broken prev-link at a segment
/// boundary).
#[test]
fn list_and_verify_detect_a_repo_that_mixes_two_histories() {
    for install in majors(&[0]) {
        let major = install.major;
        let tmp = tempfile::tempdir().unwrap();
        let a_dir = tmp.path().join("a");
        let b_dir = tmp.path().join("b");
        let a = TestRepo::local(&a_dir);
        let b = TestRepo::local(&b_dir);
        let mut c = Cluster::start(&install, opts());
        c.psql("CREATE TABLE t (id int PRIMARY KEY, pad text)");
        // Both repos archive the common history and take a backup.
        let sa = start_stream(&c, &a, &tmp.path().join("a.log"));
        let stream_b = |src: String, log: &str| {
            b.apply(
                pitr()
                    .args([
                        "stream",
                        "--partial-every",
                        "200ms",
                        "--slot",
                        "b",
                        "--source",
                    ])
                    .arg(src),
            )
            .spawn_logged(tmp.path().join(log))
        };
        let sb = stream_b(source(&c), "b.log");
        crate::stream::wait_logged(
            "stream b to archive",
            Duration::from_secs(30),
            &tmp.path().join("b.log"),
            || !b.keys("wal/").is_empty(),
        );
        backup(&c, &a, "a");
        backup(&c, &b, "b");
        wait_archived(&c, &a);
        wait_archived(&c, &b);
        stop(sb);
        stop(sa);
        // The "snapshot": the data directory as it is now (a restart gives a new port).
        c.stop();
        let snap = tmp.path().join("snapshot");
        copy_dir(c.data_dir(), &snap);
        c.restart();
        // History 1 goes on into repo a.
        let sa = start_stream(&c, &a, &tmp.path().join("a2.log"));
        c.psql("INSERT INTO t SELECT g, repeat('a', 200) FROM generate_series(1, 8000) g");
        wait_archived(&c, &a);
        stop(sa);
        c.stop();
        // History 2: the snapshot restored and written differently, archived into repo b.
        let data = c.data_dir().to_path_buf();
        std::fs::remove_dir_all(&data).unwrap();
        copy_dir(&snap, &data);
        testkit::chown_tree_to_server(&data);
        c.restart();
        let sb = stream_b(source(&c), "b2.log");
        c.psql("INSERT INTO t SELECT g, repeat('b', 300) FROM generate_series(1, 8000) g");
        wait_archived(&c, &b);
        stop(sb);
        // Mix: a segment of history 2 in place of history 1's, where both have one.
        let sa_segs = crate::stream::repo_segments(&a, 1);
        let sb_segs = crate::stream::repo_segments(&b, 1);
        let obj = |dir: &Path, s: &str| std::fs::read(dir.join(format!("wal/00000001/{s}.lz4")));
        let victim = sa_segs[..sa_segs.len() - 1]
            .iter()
            .find(|s| sb_segs.contains(s) && obj(&a_dir, s).unwrap() != obj(&b_dir, s).unwrap())
            .unwrap_or_else(|| panic!("no segment differs: {sa_segs:?} / {sb_segs:?}"))
            .clone();
        for ext in ["lz4", "summary.json"] {
            let from = b_dir.join(format!("wal/00000001/{victim}.{ext}"));
            let to = a_dir.join(format!("wal/00000001/{victim}.{ext}"));
            if from.exists() {
                std::fs::copy(&from, &to).unwrap();
            }
        }
        let o = run(a.apply(pitr().arg("verify")));
        assert_eq!(o.status.code(), Some(1), "PG {major}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(out.contains("mixes two histories"), "PG {major}: {out}");
        let o = run(a.apply(pitr().args(["list", "--json"])));
        assert!(o.status.success(), "{}", text(&o));
        let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            l["problems"].to_string().contains("mixes two histories"),
            "PG {major}: {l:#}"
        );
        // Contradicting history files.
        std::fs::write(a_dir.join("wal/00000002.history"), "1\t0/5000000\tone\n").unwrap();
        std::fs::write(
            a_dir.join("wal/00000003.history"),
            "1\t0/4000000\tother\n2\t0/6000000\tx\n",
        )
        .unwrap();
        let o = run(a.apply(pitr().args(["list", "--json"])));
        let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(
            l["problems"].to_string().contains("histories disagree"),
            "PG {major}: {l:#}"
        );
        let o = run(a.apply(pitr().arg("verify")));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("histories disagree"),
            "{}",
            text(&o)
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}
