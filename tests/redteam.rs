//! Red-team findings (round 9): real-life sequences that break restore planning, `--verify`,
//! `pitr verify` and `pitr prune`, against real servers. Each test states what PostgreSQL (or
//! the README) promises and fails on the code it was written against.
//!
//! None of the behaviours is version-specific parsing, so each test runs on one major (the
//! first of `PgInstall::for_tests()`, i.e. the one `PITR_TEST_PG` selects first).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{Cluster, PgInstall};

use crate::restore::{
    ROWS_SQL, backup, restore_dir, restore_verify, run, server_now, text, wait_archived,
};
use crate::stream::{TestRepo, opts, pitr, start_stream, stop, switch_and_wait};

fn one_major() -> PgInstall {
    PgInstall::for_tests().remove(0)
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// `pitr restore --dry-run --json` with these arguments: the plan.
fn plan(repo: &TestRepo, dir: &Path, args: &[&str]) -> serde_json::Value {
    let o = run(repo.apply(
        pitr()
            .args(["restore", "--dry-run", "--json", "-D"])
            .arg(dir)
            .args(args),
    ));
    assert!(o.status.success(), "plan {args:?}: {}", text(&o));
    let v = json(&o);
    v.get("plan").cloned().unwrap_or(v)
}

/// A restore to an instant before the newest backup (the usual "undo yesterday's mistake"),
/// then the restored server becomes the primary, is archived into the same repo and backed
/// up: `pitr prune --keep-full 1` must keep that new backup (the newest one, on the live
/// timeline) and the live timeline's WAL. Before the fix, prune ordered backups by end LSN
/// across timelines: the abandoned timeline's later backup has the higher LSN, so prune kept
/// it, deleted the live timeline's only backup and all WAL below the abandoned backup's start
/// on every timeline, and `restore --to latest` then quietly restored the abandoned history.
#[test]
fn prune_after_a_restore_to_before_the_newest_backup_keeps_the_live_timeline() {
    let install = one_major();
    let major = install.major;
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let c = Cluster::start(&install, opts());
    let s = start_stream(&c, &repo, &tmp.path().join("s1.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY)");
    backup(&c, &repo, "b1");
    c.psql("INSERT INTO t VALUES (1)");
    let before_mistake = server_now(&c);
    c.psql("DROP TABLE t"); // the mistake
    // Business goes on for a while (a few segments), and the nightly backup runs.
    c.psql("CREATE TABLE u AS SELECT g, repeat('x', 300) AS p FROM generate_series(1, 15000) g");
    backup(&c, &repo, "b2-abandoned");
    c.psql("INSERT INTO u VALUES (0, 'after b2')");
    wait_archived(&c, &repo);
    stop(s);
    drop(c);
    // Undo the mistake: timeline 2 branches off well below b2's LSNs.
    let d = restore_dir(tmp.path(), "r1");
    let v = restore_verify(
        &repo,
        &install,
        &d,
        &["--to", &before_mistake],
        &[&format!("{ROWS_SQL} => 1")],
        &[],
    );
    assert_eq!(v["verify"]["achieved_timeline"], 2, "{v:#}");
    let r = Cluster::adopt(&install, &d, &[]);
    r.wait_promoted(60);
    let s2 = start_stream(&r, &repo, &tmp.path().join("s2.log"));
    r.psql("INSERT INTO t VALUES (2)");
    let b3 = backup(&r, &repo, "b3-live");
    r.psql("INSERT INTO t VALUES (3)");
    switch_and_wait(&r, &repo, 2, "timeline 2 archived", 60);
    stop(s2);
    drop(r);
    let b3_id = b3["id"].as_str().unwrap().to_string();
    let o = run(repo.apply(pitr().args(["prune", "--keep-full", "1", "--dry-run", "--json"])));
    assert!(o.status.success(), "{}", text(&o));
    let p = json(&o);
    assert_eq!(
        p["kept"],
        serde_json::json!([b3_id]),
        "PG {major}: prune --keep-full 1 must keep the newest backup, b3 on the live timeline 2, not the abandoned timeline's b2: {p:#}"
    );
    let o = run(repo.apply(pitr().args(["prune", "--keep-full", "1"])));
    assert!(o.status.success(), "{}", text(&o));
    let d2 = restore_dir(tmp.path(), "r2");
    let v = restore_verify(
        &repo,
        &install,
        &d2,
        &["--to", "latest"],
        &[&format!("{ROWS_SQL} => 1,2,3")],
        &[],
    );
    assert_eq!(v["plan"]["timeline"], 2, "PG {major}: {v:#}");
}

/// A commit stamped after the target, but before the backup's start (so it is in the
/// backup's data files, not replayed), must never be restored: `restore --to T` must refuse
/// (no older backup) or use an older backup. The backup's "restorable from" instant was the
/// start checkpoint's time, which PostgreSQL records in whole seconds, raised only by commits
/// in the segment before the start: a commit in the same second, more than one segment of
/// WAL before the start (a bulk load still running, say), slipped in, and `--verify`'s own
/// recovery-point check passed (only the --check-sql caught it).
#[test]
fn a_commit_in_the_backup_stamped_after_the_target_is_never_restored() {
    let install = one_major();
    let major = install.major;
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let c = Cluster::start(&install, opts().conf("track_commit_timestamp = on"));
    let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY)");
    c.psql("CREATE TABLE big (x text)");
    let seg_of = |l: &str| {
        let (hi, lo) = l.split_once('/').unwrap();
        ((u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()) >> 20
    };
    // The sequence needs the backup's checkpoint in the same wall-clock second as the commit;
    // retry a few times if the machine is too slow for that.
    let mut found = None;
    for attempt in 1..=5 {
        // Start at the beginning of a second (the server shares this host's clock).
        let frac = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_micros();
        std::thread::sleep(Duration::from_micros(u64::from(1_000_000 - frac) + 5_000));
        c.psql(&format!("INSERT INTO t VALUES ({attempt})"));
        let lsn_a = c.psql("SELECT pg_current_wal_lsn()");
        // A bulk load still running: 3 MiB of WAL, no commit record yet.
        let mut load = c
            .install()
            .command("psql")
            .args(["-X", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
            .arg(c.port().to_string())
            .args([
                "-c",
                "BEGIN; INSERT INTO big SELECT repeat('x', 1000) FROM generate_series(1, 3000); SELECT pg_sleep(60); COMMIT;",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seg_of(&c.psql("SELECT pg_current_wal_lsn()")) < seg_of(&lsn_a) + 3 {
            assert!(Instant::now() < deadline, "the bulk load wrote no WAL");
            std::thread::sleep(Duration::from_millis(5));
        }
        let b = backup(&c, &repo, &format!("b{attempt}"));
        c.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()");
        let _ = load.wait();
        // T: one microsecond before the commit of row `attempt`.
        let (t_epoch, target) = {
            let r = c.psql(&format!(
                "SELECT floor(extract(epoch FROM ts))::bigint || ' ' || to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM (SELECT pg_xact_commit_timestamp(xmin) - interval '1 microsecond' AS ts FROM t WHERE id = {attempt}) s"
            ));
            let (e, t) = r.split_once(' ').unwrap();
            (e.parse::<i64>().unwrap(), t.to_string())
        };
        let ckpt: i64 = c
            .psql("SELECT extract(epoch FROM checkpoint_time)::bigint FROM pg_control_checkpoint()")
            .parse()
            .unwrap();
        let start_seg = seg_of(b["start_lsn"].as_str().unwrap());
        if ckpt == t_epoch && start_seg >= seg_of(&lsn_a) + 2 {
            found = Some((attempt, target));
            break;
        }
        eprintln!(
            "attempt {attempt}: checkpoint at {ckpt}, target second {t_epoch}, start segment {start_seg:X}: retrying"
        );
    }
    let (attempt, target) = found.expect("could not line the backup up with the commit");
    c.psql("INSERT INTO t VALUES (100)");
    wait_archived(&c, &repo);
    stop(s);
    let d = restore_dir(tmp.path(), "r");
    let o = run(repo.apply(
        pitr()
            .args(["restore", "--json", "--verify", "--verify-user", "postgres"])
            .arg("-D")
            .arg(&d)
            .arg("--pg-bin")
            .arg(install.tool("postgres").parent().unwrap())
            .args(["--to", &target])
            .arg("--check-sql")
            .arg(format!("SELECT count(*) FROM t WHERE id = {attempt} => 0")),
    ));
    let out = text(&o);
    assert!(
        o.status.success() || out.contains("before the earliest restorable point"),
        "PG {major}: restore --to {target} (1 us before row {attempt}'s commit) must refuse or leave row {attempt} out: {out}"
    );
}

/// An inclusive stop on a commit record (`--to-lsn` of a commit, or `--to` the exact time of
/// the last archived commit, which `pitr list` shows as the window's end): PostgreSQL stops
/// after the record without recording its timestamp (xlogrecovery.c, `recoveryStopsAfter`
/// returns on the LSN target before `SetLatestXTime`), so pg_last_xact_replay_timestamp() is
/// the previous transaction's. `--verify` compared it with the stop commit's time and failed
/// a correct restore.
#[test]
fn verify_passes_an_inclusive_stop_on_a_commit_record() {
    let install = one_major();
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let c = Cluster::start(&install, opts());
    let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY)");
    backup(&c, &repo, "base");
    c.psql("INSERT INTO t VALUES (1)");
    c.psql("INSERT INTO t VALUES (2)");
    wait_archived(&c, &repo);
    stop(s);
    let p = plan(&repo, &tmp.path().join("p"), &["--to", "latest"]);
    let last = &p["last_included"];
    let (lsn, time) = (
        last["lsn"].as_str().unwrap().to_string(),
        last["time"].as_str().unwrap().to_string(),
    );
    for (k, target) in [["--to-lsn", &lsn], ["--to", &time]].iter().enumerate() {
        let d = restore_dir(tmp.path(), &format!("r{k}"));
        restore_verify(
            &repo,
            &install,
            &d,
            target,
            &[&format!("{ROWS_SQL} => 1,2")],
            &[],
        );
    }
}

/// `--to-lsn` the backup's own end (the "consistent at" LSN that `list`, the plan and the
/// refusal of an earlier LSN all name): the first record there is the backup's WAL switch,
/// whose end for PostgreSQL is the end of the segment (xlogreader.c moves `EndRecPtr` there
/// for XLOG_SWITCH). pitr predicted the switch record's own length and `--verify` failed.
#[test]
fn verify_passes_an_inclusive_stop_on_a_wal_switch() {
    let install = one_major();
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let c = Cluster::start(&install, opts());
    let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY)");
    c.psql("INSERT INTO t VALUES (1)");
    let b = backup(&c, &repo, "base");
    c.psql("INSERT INTO t VALUES (2)");
    let switch = c.psql("SELECT pg_switch_wal()");
    c.psql("INSERT INTO t VALUES (3)");
    wait_archived(&c, &repo);
    stop(s);
    // pg_switch_wal() returns the end of its switch record; the record starts 24 bytes before.
    let sw: walfmt::Lsn = switch.parse().unwrap();
    let sw_start = walfmt::Lsn(sw.0 - 24).to_string();
    let end = b["end_lsn"].as_str().unwrap().to_string();
    for (k, (lsn, rows)) in [(end, "1"), (sw_start, "1,2")].iter().enumerate() {
        let d = restore_dir(tmp.path(), &format!("r{k}"));
        restore_verify(
            &repo,
            &install,
            &d,
            &["--to-lsn", lsn],
            &[&format!("{ROWS_SQL} => {rows}")],
            &[],
        );
    }
}

/// PostgreSQL reads setting names case-insensitively, but marks an earlier duplicate as
/// overridden only when spelled identically (guc-file.l / guc.c, `ProcessConfigFileInternal`,
/// strcmp). A `Recovery_Target_Time` left in postgresql.conf (or an included file) therefore
/// still applies before pitr's empty `recovery_target = ''`, whose assign hook then refuses
/// "multiple recovery targets specified": the restored server does not start.
#[test]
fn a_recovery_target_spelled_in_another_case_in_postgresql_conf_is_neutralised() {
    let install = one_major();
    let major = install.major;
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let c = Cluster::start(&install, opts());
    let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY)");
    // Left over from an old recovery; the running primary never rereads it.
    let conf = c.data_dir().join("postgresql.conf");
    let mut text_conf = std::fs::read_to_string(&conf).unwrap();
    text_conf.push_str("Recovery_Target_Time = '2020-01-01 00:00:00+00'\n");
    std::fs::write(&conf, text_conf).unwrap();
    backup(&c, &repo, "base");
    c.psql("INSERT INTO t VALUES (1)");
    wait_archived(&c, &repo);
    stop(s);
    let d = restore_dir(tmp.path(), "r");
    let v = restore_verify(
        &repo,
        &install,
        &d,
        &["--to", "latest"],
        &[&format!("{ROWS_SQL} => 1")],
        &[],
    );
    assert_eq!(v["verify"]["ok"], true, "PG {major}: {v:#}");
}

/// Segment summaries are what restore plans from (commit times, restore points), so `pitr
/// verify` must fail on one that is unreadable or that disagrees with its segment. Before the
/// fix it said OK for both, while a truncated summary made `list` and every restore that reads
/// it fail, and a summary missing a commit made `restore --to` include a transaction stamped
/// after the target (only `--verify` noticed).
#[test]
fn pitr_verify_fails_on_a_damaged_or_wrong_summary() {
    let install = one_major();
    let major = install.major;
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let repo = TestRepo::local(&repo_dir);
    let c = Cluster::start(&install, opts());
    let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY)");
    backup(&c, &repo, "base");
    c.psql("INSERT INTO t VALUES (1)");
    c.psql("INSERT INTO t VALUES (2)");
    let seg = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    c.switch_wal();
    c.psql("INSERT INTO t VALUES (3)");
    wait_archived(&c, &repo);
    stop(s);
    let summary = format!("wal/00000001/{seg}.summary.json");
    assert!(repo_dir.join(&summary).exists(), "no {summary}");
    // 1. Truncated.
    let truncated = tmp.path().join("truncated");
    copy_dir(&repo_dir, &truncated);
    let f = truncated.join(&summary);
    let b = std::fs::read(&f).unwrap();
    std::fs::write(&f, &b[..b.len() / 2]).unwrap();
    let t = TestRepo::local(&truncated);
    let o = run(t.apply(pitr().arg("verify")));
    assert_eq!(
        o.status.code(),
        Some(1),
        "PG {major}: verify must fail on a truncated summary: {}",
        text(&o)
    );
    assert!(text(&o).contains(&summary), "{}", text(&o));
    // A derived object: restores can decode the segment instead.
    let o = run(t.apply(pitr().args(["list"])));
    assert!(
        o.status.success(),
        "PG {major}: one bad summary takes `list` down: {}",
        text(&o)
    );
    // 2. A commit missing from it.
    let wrong = tmp.path().join("wrong");
    copy_dir(&repo_dir, &wrong);
    let f = wrong.join(&summary);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
    let xacts = v["xacts"].as_array_mut().unwrap();
    assert!(!xacts.is_empty(), "{v:#}");
    xacts.pop();
    std::fs::write(&f, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = run(TestRepo::local(&wrong).apply(pitr().arg("verify")));
    assert_eq!(
        o.status.code(),
        Some(1),
        "PG {major}: verify must fail on a summary that disagrees with its segment: {}",
        text(&o)
    );
}

/// A history file names every timeline ID its history used, including ancestors whose own
/// history file and WAL the repo does not hold (pitr was not streaming while they existed).
/// A restored server must not take one of those IDs; the plan called timeline 2 "unused in
/// the repo" although 00000003.history names it.
#[test]
fn a_restored_server_never_takes_a_timeline_id_that_a_history_names() {
    let install = one_major();
    let major = install.major;
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let repo = TestRepo::local(&repo_dir);
    let c = Cluster::start(&install, opts());
    let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY)");
    backup(&c, &repo, "base");
    c.psql("INSERT INTO t VALUES (1)");
    let at = c.psql("SELECT pg_current_wal_lsn()");
    wait_archived(&c, &repo);
    stop(s);
    // Timeline 3 descends from 2, which the repo never saw.
    std::fs::write(
        repo_dir.join("wal/00000003.history"),
        format!("1\t{at}\tno recovery target specified\n2\t{at}\tno recovery target specified\n"),
    )
    .unwrap();
    let d = restore_dir(tmp.path(), "r");
    let v = restore_verify(
        &repo,
        &install,
        &d,
        &["--timeline", "1", "--to", "latest"],
        &[&format!("{ROWS_SQL} => 1")],
        &[],
    );
    let to = v["plan"]["promotes_to"].as_u64().unwrap();
    assert!(
        to > 3,
        "PG {major}: promoted to timeline {to}, an ID 00000003.history uses: {v:#}"
    );
}

/// `--standby` writes a restore_command that runs `pitr wal fetch --repo REPO`; PostgreSQL
/// runs it in the data directory, so a repo given as a relative path must be written as an
/// absolute one. It was written as given: every fetch failed ("open repo: No such file or
/// directory") and the standby waited for WAL forever.
#[test]
fn a_standby_restore_names_a_relative_repo_by_its_absolute_path() {
    let install = one_major();
    let major = install.major;
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let repo = TestRepo::local(&repo_dir);
    let c = Cluster::start(&install, opts());
    let s = start_stream(&c, &repo, &tmp.path().join("s.log"));
    backup(&c, &repo, "base");
    c.psql("CREATE TABLE t (id int PRIMARY KEY)");
    wait_archived(&c, &repo);
    stop(s);
    let o = run(pitr().current_dir(tmp.path()).args([
        "restore",
        "--standby",
        "--repo",
        "repo",
        "-D",
        "standby",
    ]));
    assert!(o.status.success(), "{}", text(&o));
    let auto = std::fs::read_to_string(tmp.path().join("standby/postgresql.auto.conf")).unwrap();
    let cmd = auto
        .lines()
        .rfind(|l| l.starts_with("restore_command"))
        .unwrap()
        .to_string();
    assert!(
        cmd.contains(&format!("--repo ''{}''", repo_dir.display())),
        "PG {major}: the standby's restore_command must name the repo by an absolute path: {cmd}"
    );
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
