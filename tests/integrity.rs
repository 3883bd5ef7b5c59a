//! Never mix two histories, and survive WAL gaps: `pitr stream` against servers whose WAL is
//! not the WAL the repo holds (a primary rolled back to a snapshot, another cluster line that
//! reuses a timeline ID), and servers that no longer have the WAL after the repo's tip (an
//! invalidated or dropped slot).
//!
//! The checks are not version-specific in their logic (byte comparison, history files), so the
//! expensive scenarios run on one or two majors; the prev-link proof decodes WAL and is unit
//! tested on the fixtures of every major (`src/stream/continuity.rs`). The gap scenarios run on
//! the first and the last major of the run: PostgreSQL 18 refuses START_REPLICATION on an
//! invalidated slot, 15-17 fail later with "requested WAL segment ... has already been removed".

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use testkit::{Cluster, ClusterOptions, PgInstall};
use walfmt::Lsn;

use crate::stream::{
    SpawnLogged, TestRepo, free_addr, http_get, metric, opts, pitr, repo_segments, source,
    start_stream, stop, switch_and_wait, wait_exit, wait_logged, wait_slot_active,
};

/// Every object of the repo with its bytes.
fn objects(repo: &TestRepo) -> BTreeMap<String, Vec<u8>> {
    repo.keys("")
        .into_iter()
        .map(|k| {
            let v = repo.get(&k).unwrap_or_default();
            (k, v)
        })
        .collect()
}

/// Files of a directory (names and bytes), for the spool.
fn dir_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read(e.path()).unwrap_or_default(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn cp_a(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// Stops the server, puts the data directory back to `snap` (a copy taken while it was
/// stopped cleanly), and starts it again: a volume-snapshot rollback.
fn roll_back(c: &mut Cluster, snap: &Path) {
    c.stop();
    cp_a(snap, c.data_dir());
    c.restart();
}

/// The newest WAL object of the repo: (key, end LSN, complete).
fn tip(repo: &TestRepo) -> (String, Lsn, bool) {
    let seg = walfmt::WalSegSize::new(1 << 20).unwrap();
    repo.keys("wal/")
        .into_iter()
        .filter_map(|k| match pitr::repo::parse_wal_key(&k, seg)? {
            pitr::repo::WalObject::Segment(t, s) => {
                Some(((s, t, true), k, walfmt::SegNo(s.0 + 1).start_lsn(seg)?))
            }
            pitr::repo::WalObject::Partial(t, s, end) => Some(((s, t, false), k, end)),
            _ => None,
        })
        .max_by_key(|(o, _, e)| (*o, *e))
        .map(|((_, _, complete), k, e)| (k, e, complete))
        .expect("the repo holds WAL")
}

fn lsn_now(c: &Cluster) -> Lsn {
    c.psql("SELECT pg_current_wal_lsn()").parse().unwrap()
}

/// LSNs written as X/X in a line.
fn lsns_in(line: &str) -> Vec<Lsn> {
    line.split(|ch: char| !(ch.is_ascii_hexdigit() || ch == '/'))
        .filter(|w| w.contains('/'))
        .filter_map(|w| w.parse().ok())
        .collect()
}

fn healthz(addr: &str) -> Option<(u16, String)> {
    http_get(addr, "/healthz")
}

fn metric_at(addr: &str, name: &str) -> Option<f64> {
    http_get(addr, "/metrics").and_then(|(_, b)| metric(&b, name))
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits for `what` while the child runs; panics with the log if it exits first.
fn wait_running(
    child: &mut Child,
    what: &str,
    secs: u64,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) {
    wait_logged(what, Duration::from_secs(secs), log, || {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "pitr exited ({st}) while waiting for {what}:\n{}",
                log_of(log)
            );
        }
        ready()
    });
}

/// After a refusal: one error line naming the timeline and an LSN in `lsn_range`, the metric
/// and both health endpoints red, and on SIGTERM exit 1 with that line.
fn assert_refused(
    child: &mut Child,
    addr: &str,
    log: &Path,
    tli: u32,
    lsn_range: (Lsn, Lsn),
) -> String {
    let what = "pitr to refuse";
    // Both, in either order: /healthz can turn red a moment before the metric is rendered.
    wait_running(child, what, 90, log, || {
        healthz(addr).is_some_and(|(s, _)| s == 503)
            && metric_at(addr, "pitr_history_diverged") == Some(1.0)
    });
    let (_, body) = healthz(addr).unwrap();
    assert_eq!(http_get(addr, "/readyz").unwrap().0, 503);
    assert_eq!(metric_at(addr, "pitr_history_diverged"), Some(1.0));
    // It stays up, in that state, until told to stop.
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "{}", log_of(log));
    sigterm(child);
    let st = wait_exit(child, 30, "pitr did not stop after SIGTERM");
    let text = log_of(log);
    assert_eq!(st.code(), Some(1), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    let last = text.lines().last().unwrap_or("").to_owned();
    eprintln!("refused: {last}");
    assert!(last.starts_with("pitr: error: "), "{text}");
    assert!(last.contains(&format!("timeline {tli}")), "{last}");
    assert!(
        body.trim() == last.trim_start_matches("pitr: error: ").trim(),
        "/healthz said {body:?}, the error is {last:?}"
    );
    let (lo, hi) = lsn_range;
    assert!(
        lsns_in(&last).iter().any(|l| *l >= lo && *l <= hi),
        "no LSN within {lo}..{hi} in {last:?}"
    );
    assert!(
        last.contains("new repo") || last.contains("--repo"),
        "{last}"
    );
    last
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tip {
    Partial,
    Complete,
}

/// A primary rolled back to a snapshot of its volume: same system id, same timeline, different
/// WAL at LSNs the repo already holds.
fn rollback_case(install: &PgInstall, tip_kind: Tip, slot_in_snapshot: bool, spool: bool) {
    let label = format!(
        "PG {} tip {tip_kind:?} slot {slot_in_snapshot} spool {spool}",
        install.major
    );
    eprintln!("--- {label}");
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(install, opts());
    let spool_dir = tmp.path().join("spool");
    let mut repo = TestRepo::local(&tmp.path().join("repo"));
    if spool {
        repo = repo.with_spool(&spool_dir);
    }
    c.psql("CREATE TABLE t (id int, v text)");
    // pitr runs once before the snapshot: the slot (and the repo) exist in it.
    let a = start_stream(&c, &repo, &tmp.path().join("0.log"));
    wait_slot_active(&c);
    switch_and_wait(&c, &repo, 1, "a first segment", 60);
    stop(a);
    c.stop();
    let snap = tmp.path().join("snap");
    cp_a(c.data_dir(), &snap);
    c.restart();
    let snap_end = lsn_now(&c);
    // History A, archived.
    let log1 = tmp.path().join("1.log");
    let a = start_stream(&c, &repo, &log1);
    c.psql("INSERT INTO t SELECT g, repeat('a', 100) FROM generate_series(1, 20000) g");
    switch_and_wait(&c, &repo, 1, "history A", 60);
    // A normal restart resumes (at a complete segment, then at a partial) without complaint.
    stop(a);
    let log2 = tmp.path().join("2.log");
    let a = start_stream(&c, &repo, &log2);
    c.psql("INSERT INTO t SELECT g, repeat('a', 100) FROM generate_series(1, 3000) g");
    let want = lsn_now(&c);
    wait_logged(
        "a partial after a normal restart",
        Duration::from_secs(30),
        &log2,
        || tip(&repo).1 >= want,
    );
    stop(a);
    let log3 = tmp.path().join("3.log");
    let a = start_stream(&c, &repo, &log3);
    c.psql("INSERT INTO t SELECT g, repeat('a', 100) FROM generate_series(1, 3000) g");
    match tip_kind {
        Tip::Partial => {
            let want = lsn_now(&c);
            wait_logged("the newest partial", Duration::from_secs(30), &log3, || {
                tip(&repo).1 >= want
            });
            stop(a);
        }
        Tip::Complete => {
            // Stop right after a segment is complete, before anything of the next is published.
            let mut a = Some(a);
            for _ in 0..5 {
                switch_and_wait(&c, &repo, 1, "a complete segment", 60);
                stop(a.take().unwrap());
                if tip(&repo).2 {
                    break;
                }
                a = Some(start_stream(&c, &repo, &tmp.path().join("3.log")));
            }
            assert!(
                a.is_none() && tip(&repo).2,
                "{label}: could not stop at a complete segment"
            );
        }
    }
    let (tip_key, tip_end, complete) = tip(&repo);
    assert_eq!(complete, tip_kind == Tip::Complete, "{tip_key}");
    let before = objects(&repo);
    let spool_before = dir_files(&spool_dir);
    // The rollback.
    roll_back(&mut c, &snap);
    assert!(
        lsn_now(&c) < tip_end,
        "{label}: the snapshot is not behind the repo"
    );
    // History B: other rows, of another size, past the repo's tip.
    let history_b = |c: &Cluster| {
        c.psql("INSERT INTO t SELECT g, repeat('b', 300) FROM generate_series(1, 20000) g");
        c.switch_wal();
        assert!(lsn_now(c) > tip_end);
    };
    let slot_before = if slot_in_snapshot {
        Some(c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'"))
    } else {
        // A snapshot without pitr's slot, taken long ago: the slot pitr creates reserves WAL
        // from after the repo's tip, so the segment before it may be gone from the server and
        // only the prev-link of the server's next record can tell.
        c.psql("SELECT pg_drop_replication_slot('pitr')");
        history_b(&c);
        c.psql("CHECKPOINT");
        None
    };
    let addr = free_addr();
    let log = tmp.path().join("rolled-back.log");
    let mut child = repo
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--metrics-listen",
            &addr,
            "--source",
            &source(&c),
        ]))
        .spawn_logged(&log);
    if slot_in_snapshot {
        // The server is behind the repo: pitr says so and waits, writing nothing.
        wait_running(&mut child, "the server-behind state", 30, &log, || {
            metric_at(&addr, "pitr_server_behind_repo") == Some(1.0)
        });
        history_b(&c);
    }
    let last = assert_refused(
        &mut child,
        &addr,
        &log,
        1,
        (snap_end, Lsn(tip_end.0 + 8192)),
    );
    let how = match (tip_kind, slot_in_snapshot) {
        (Tip::Complete, false) => "does not continue",
        _ => "differs from",
    };
    assert!(last.contains(how), "{label}: expected {how:?}: {last}");
    assert!(
        objects(&repo) == before,
        "{label}: the repo changed:\n{}",
        log_of(&log)
    );
    // The spool: nothing new, nothing rewritten. (The start-up upload of what an earlier run
    // left may remove files whose bytes the repo holds.)
    let spool_after = dir_files(&spool_dir);
    for (name, bytes) in &spool_after {
        assert!(
            spool_before.get(name) == Some(bytes),
            "{label}: spool file {name} was written: before {:?}, after {:?}",
            spool_before.keys().collect::<Vec<_>>(),
            spool_after.keys().collect::<Vec<_>>()
        );
    }
    if let Some(b) = slot_before {
        let now = c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'");
        assert_eq!(now, b, "{label}: the slot moved");
    }
    // The operator's way on: a new repo archives this server (and the old one stays as it was).
    let fresh = TestRepo::local(&tmp.path().join("repo2"));
    let b = start_stream(&c, &fresh, &tmp.path().join("fresh.log"));
    c.psql("INSERT INTO t VALUES (0, 'into the new repo')");
    switch_and_wait(&c, &fresh, 1, "archiving into a new repo", 60);
    stop(b);
    assert!(objects(&repo) == before);
}

#[test]
fn snapshot_rollback_of_the_primary_is_refused_and_nothing_is_written() {
    let installs = PgInstall::for_tests();
    let first = installs.first().unwrap();
    let last = installs.last().unwrap();
    // The repo's tip is a partial: the server's bytes over it must be the partial's bytes.
    rollback_case(first, Tip::Partial, true, false);
    // The same through --ack spool: nothing reaches the spool before the check.
    rollback_case(last, Tip::Partial, true, true);
}

#[test]
fn snapshot_rollback_is_refused_when_the_repo_tip_is_a_complete_segment() {
    let installs = PgInstall::for_tests();
    let first = installs.first().unwrap();
    let last = installs.last().unwrap();
    // The slot of the snapshot still holds the repo's last segment: it is compared byte for byte.
    rollback_case(first, Tip::Complete, true, false);
    // No slot: only the prev-link of the server's next record (and CRCs) can prove continuity.
    rollback_case(last, Tip::Complete, false, false);
}

#[test]
fn another_cluster_line_claiming_an_archived_timeline_id_is_refused() {
    // Not version-specific: history files and the start-up check. One major.
    let install = PgInstall::for_tests().pop().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut p = Cluster::start(&install, opts());
    p.psql("CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g;");
    let s1 = Cluster::standby_of(&p, &["wal_keep_size = '64MB'"]);
    let mut s2 = Cluster::standby_of(&p, &["wal_keep_size = '64MB'"]);
    testkit::wait_caught_up(&p, &s2);
    // s2 stops following early: its timeline 2 will branch at another point.
    s2.stop();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let a = start_stream(&p, &repo, &tmp.path().join("a.log"));
    p.psql("INSERT INTO t SELECT g, repeat('p', 200) FROM generate_series(1, 10000) g");
    switch_and_wait(&p, &repo, 1, "timeline 1", 60);
    testkit::wait_caught_up(&p, &s1);
    stop(a);
    p.stop();
    s1.promote();
    s1.psql("INSERT INTO t SELECT g, repeat('s', 200) FROM generate_series(1, 5000) g");
    let b = crate::stream::start_stream_src(&source(&s1), &repo, &tmp.path().join("b.log"));
    switch_and_wait(&s1, &repo, 2, "timeline 2", 60);
    stop(b);
    let repo_history = String::from_utf8(repo.get("wal/00000002.history").unwrap()).unwrap();
    // The other line: s2 promoted without its primary, to its own timeline 2.
    s2.restart();
    s2.promote();
    let other_history = s2.psql("SELECT pg_read_file('pg_wal/00000002.history')");
    assert_ne!(
        repo_history.trim(),
        other_history.trim(),
        "both promotions branched at the same point"
    );
    s2.psql("INSERT INTO t SELECT g, repeat('o', 300) FROM generate_series(1, 30000) g");
    s2.switch_wal();
    let (_, tip_end, _) = tip(&repo);
    assert!(
        lsn_now(&s2) > tip_end,
        "the other line must reach past the repo's tip"
    );
    let before = objects(&repo);
    let addr = free_addr();
    let log = tmp.path().join("c.log");
    let mut child = repo
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--metrics-listen",
            &addr,
            "--source",
            &source(&s2),
        ]))
        .spawn_logged(&log);
    let switch = |h: &str| -> Lsn {
        walfmt::TimelineHistory::parse(walfmt::TimeLineId(2), h)
            .unwrap()
            .ancestors[0]
            .end
    };
    let (a_sw, b_sw) = (switch(&repo_history), switch(&other_history));
    let last = assert_refused(&mut child, &addr, &log, 2, (a_sw.min(b_sw), a_sw.max(b_sw)));
    // Both switch points are named.
    let named = lsns_in(&last);
    assert!(named.contains(&a_sw) && named.contains(&b_sw), "{last}");
    assert!(
        objects(&repo) == before,
        "the repo changed:\n{}",
        log_of(&log)
    );
    drop(s1);
}

/// Waits for exactly one gap record and returns it.
fn the_gap(repo: &TestRepo, child: &mut Child, log: &Path) -> (String, serde_json::Value) {
    wait_running(child, "a gap record", 60, log, || {
        !repo.keys("gaps/").is_empty()
    });
    let keys = repo.keys("gaps/");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let v: serde_json::Value = serde_json::from_slice(&repo.get(&keys[0]).unwrap()).unwrap();
    (keys[0].clone(), v)
}

fn backup_cli(c: &Cluster, repo: &TestRepo) -> serde_json::Value {
    let o = repo
        .apply(
            pitr()
                .args(["backup", "--json", "--wal-timeout", "60s", "--source"])
                .arg(source(c)),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pitr backup: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn gap_cluster(install: &PgInstall) -> Cluster {
    // No wal_keep_size: the server removes WAL as soon as no slot holds it.
    Cluster::start(
        install,
        ClusterOptions::default()
            .wal_segsize_mb(1)
            .conf("max_slot_wal_keep_size = '4MB'"),
    )
}

/// Writes about 10 MiB of WAL and checkpoints twice, so that WAL no slot holds is removed.
fn write_past_the_slot(c: &Cluster) {
    for _ in 0..10 {
        c.psql("INSERT INTO w SELECT repeat('x', 1000) FROM generate_series(1, 1000)");
    }
    c.psql("CHECKPOINT");
    c.switch_wal();
    c.psql("CHECKPOINT");
}

fn check_gap_record(v: &serde_json::Value, key: &str, tip_end: Lsn, server_now: Lsn) -> Lsn {
    assert_eq!(v["format"], 1, "{v}");
    assert_eq!(v["timeline"], 1, "{v}");
    let from: Lsn = v["from"].as_str().unwrap().parse().unwrap();
    let to: Lsn = v["to"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        from, tip_end,
        "the gap starts where the repo's WAL ended: {v}"
    );
    assert!(
        to > from && to.0.is_multiple_of(1 << 20) && to <= server_now,
        "{v}"
    );
    assert_eq!(
        key,
        format!("gaps/00000001-{:016X}-{:016X}.json", from.0, to.0)
    );
    assert!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
    assert!(
        v["detected_at"]
            .as_str()
            .is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
        "{v}"
    );
    to
}

#[test]
fn an_invalidated_slot_records_a_gap_resumes_archiving_and_a_new_backup_closes_it() {
    let installs = PgInstall::for_tests();
    let mut majors = vec![installs.first().unwrap().clone()];
    if installs.len() > 1 {
        majors.push(installs.last().unwrap().clone());
    }
    for install in &majors {
        let tmp = tempfile::tempdir().unwrap();
        let c = gap_cluster(install);
        c.psql("CREATE TABLE w (x text)");
        let repo = TestRepo::local(&tmp.path().join("repo"));
        let a = start_stream(&c, &repo, &tmp.path().join("a.log"));
        wait_slot_active(&c);
        switch_and_wait(&c, &repo, 1, "archiving", 60);
        let before_gap = backup_cli(&c, &repo);
        stop(a);
        let (_, tip_end, _) = tip(&repo);
        write_past_the_slot(&c);
        assert_eq!(
            c.psql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'pitr'"),
            "lost",
            "PG {}: the slot was not invalidated",
            install.major
        );
        let addr = free_addr();
        let log = tmp.path().join("b.log");
        let mut child = repo
            .apply(pitr().args([
                "stream",
                "--partial-every",
                "200ms",
                "--metrics-listen",
                &addr,
                "--source",
                &source(&c),
            ]))
            .spawn_logged(&log);
        let (key, v) = the_gap(&repo, &mut child, &log);
        let to = check_gap_record(&v, &key, tip_end, lsn_now(&c));
        // Archiving goes on past the gap, with the gap shown.
        c.psql("INSERT INTO w SELECT 'after the gap'");
        let seg = switch_and_wait(&c, &repo, 1, "WAL after the gap", 60);
        assert!(u64::from_str_radix(&seg[8..], 16).unwrap() >= to.0 >> 20);
        let (status, body) = healthz(&addr).unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains("gap") && body.contains(&v["to"].as_str().unwrap().to_string()),
            "{body}"
        );
        assert_eq!(metric_at(&addr, "pitr_wal_gaps_total"), Some(1.0));
        assert_eq!(metric_at(&addr, "pitr_wal_gap_open"), Some(1.0));
        let text = log_of(&log);
        // One loud line (the slot monitor's own error about the lost slot aside).
        let loud: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ERROR") && l.contains("WAL gap:"))
            .collect();
        assert_eq!(loud.len(), 1, "{text}");
        // list and verify show the gap, open: nothing after it is restorable yet.
        let o = crate::restore::run(repo.apply(pitr().args(["list", "--json"])));
        assert!(o.status.success(), "{}", crate::restore::text(&o));
        let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(l["recorded_gaps"].as_array().unwrap().len(), 1, "{l:#}");
        assert!(
            l["problems"]
                .to_string()
                .contains("no complete backup starts after it"),
            "{l:#}"
        );
        let o = crate::restore::run(repo.apply(pitr().arg("verify")));
        assert_eq!(o.status.code(), Some(1), "{}", crate::restore::text(&o));
        // A base backup after the gap can be taken, and closes it.
        let after = backup_cli(&c, &repo);
        let start: Lsn = after["start_lsn"].as_str().unwrap().parse().unwrap();
        assert!(start >= to, "{after}");
        wait_running(&mut child, "/healthz to turn green", 30, &log, || {
            healthz(&addr).is_some_and(|(s, _)| s == 200)
        });
        assert_eq!(metric_at(&addr, "pitr_wal_gap_open"), Some(0.0));
        c.psql("INSERT INTO w SELECT 'after the new backup'");
        switch_and_wait(&c, &repo, 1, "WAL after the new backup", 60);
        stop(child);
        // verify passes (the gap is known and a backup follows it), saying what it means.
        let o = crate::restore::run(repo.apply(pitr().arg("verify")));
        assert!(o.status.success(), "{}", crate::restore::text(&o));
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            out.contains("restores only up to") && out.contains("recorded"),
            "{out}"
        );
        // The backup before the gap: refused past it, naming the recorded gap; restorable up
        // to it with the LSN the error suggests.
        let before_id = before_gap["id"].as_str().unwrap();
        let o = crate::restore::run(
            repo.apply(
                pitr()
                    .args(["restore", "--to", "latest", "--backup", before_id, "-D"])
                    .arg(tmp.path().join("never")),
            ),
        );
        assert_eq!(o.status.code(), Some(1), "{}", crate::restore::text(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(err.contains("recorded"), "{err}");
        let suggested = err
            .split("--to-lsn ")
            .nth(1)
            .and_then(|r| r.split([',', ';', ' ']).next())
            .unwrap_or_else(|| panic!("no --to-lsn suggested: {err}"))
            .to_string();
        let d = crate::restore::restore_dir(tmp.path(), "before-gap");
        crate::restore::restore_verify(
            &repo,
            install,
            &d,
            &["--backup", before_id, "--to-lsn", &suggested],
            &["SELECT count(*) FROM w WHERE x = 'after the gap' => 0"],
            &[],
        );
        // Latest, from the backup after the gap.
        let d = crate::restore::restore_dir(tmp.path(), "latest");
        crate::restore::restore_verify(
            &repo,
            install,
            &d,
            &["--to", "latest"],
            &["SELECT count(*) FROM w WHERE x LIKE 'after%' => 2"],
            &[],
        );
        assert_eq!(repo.keys("gaps/").len(), 1, "a second gap was recorded");
        // Both backups are in the catalog; the segments after the gap are contiguous.
        assert_ne!(before_gap["id"], after["id"]);
        let segs = repo_segments(&repo, 1);
        assert!(
            segs.iter()
                .any(|s| u64::from_str_radix(&s[8..], 16).unwrap() == to.0 >> 20),
            "{segs:?}"
        );
    }
}

#[test]
fn a_dropped_slot_records_a_gap_and_the_scheduler_takes_a_backup_at_once() {
    // One major: the dropped slot is recreated by pitr, and the missing WAL is reported the same
    // way on every version.
    let install = PgInstall::for_tests().remove(0);
    let tmp = tempfile::tempdir().unwrap();
    let c = gap_cluster(&install);
    c.psql("CREATE TABLE w (x text)");
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let stream = |log: &str, addr: &str| {
        repo.apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--backup-every",
            "1h",
            "--metrics-listen",
            addr,
            "--source",
            &source(&c),
        ]))
        .spawn_logged(tmp.path().join(log))
    };
    let catalog = || -> Vec<String> {
        repo.keys("backups/")
            .into_iter()
            .filter(|k| k.ends_with("/backup.json"))
            .collect()
    };
    let addr = free_addr();
    let mut a = stream("a.log", &addr);
    // No backup yet: the scheduler takes one at once.
    wait_running(
        &mut a,
        "the first scheduled backup",
        90,
        &tmp.path().join("a.log"),
        || catalog().len() == 1,
    );
    // (A backup ends with a WAL switch: write something, or the next switch does nothing.)
    c.psql("INSERT INTO w VALUES ('before the gap')");
    let last = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    c.switch_wal();
    wait_running(&mut a, "archiving", 60, &tmp.path().join("a.log"), || {
        repo_segments(&repo, 1).contains(&last)
    });
    stop(a);
    let (_, tip_end, _) = tip(&repo);
    c.psql("SELECT pg_drop_replication_slot('pitr')");
    write_past_the_slot(&c);
    let next = c.psql(&format!("SELECT pg_walfile_name('{tip_end}'::pg_lsn + 1)"));
    assert_eq!(
        c.psql(&format!(
            "SELECT count(*) FROM pg_ls_waldir() WHERE name = '{next}'"
        )),
        "0",
        "the WAL after the repo's tip is still on the server: the test proves nothing"
    );
    let addr = free_addr();
    let log = tmp.path().join("b.log");
    let mut b = stream("b.log", &addr);
    let (key, v) = the_gap(&repo, &mut b, &log);
    let to = check_gap_record(&v, &key, tip_end, lsn_now(&c));
    // The newest backup is recent (--backup-every 1h), yet one is taken at once: the gap.
    wait_running(&mut b, "a backup after the gap", 90, &log, || {
        catalog().len() == 2
    });
    wait_running(&mut b, "/healthz to turn green", 30, &log, || {
        healthz(&addr).is_some_and(|(s, _)| s == 200)
    });
    stop(b);
    let text = log_of(&log);
    let newest = catalog().into_iter().max().unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&repo.get(&newest).unwrap()).unwrap();
    let start: Lsn = rec["start_lsn"].as_str().unwrap().parse().unwrap();
    assert!(start >= to, "{rec}\n{text}");
    assert_eq!(repo.keys("gaps/").len(), 1, "{text}");
}
