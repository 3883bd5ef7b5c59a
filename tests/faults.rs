//! Fault tests of `pitr stream` against real servers (issue 9): a connection that goes silent
//! without closing, a full repo, repeated server restarts, a second writer on one repo and a
//! rolling update of the sidecar, and what `kill -9` leaves in a local repo.
//!
//! What is under test here is pitr's own connection handling and storage, not anything that
//! differs between PostgreSQL majors, so each test runs on one major (the newest installed) to
//! keep the CI run short; the stream tests in `stream.rs` cover every major.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::time::{Duration, Instant};

use testkit::{Cluster, PgInstall};

use crate::stream::{
    SpawnLogged, TestRepo, assert_identical_and_contiguous, free_addr, http_get, kill9, metric,
    opts, pgbench, pgbench_ok, pitr, stop, switch_and_wait, wait_logged,
};

/// A TCP proxy on loopback between pitr and the server: it forwards both ways until frozen,
/// then stops reading (and so forwarding) without closing anything, as a dead NAT entry or a
/// partitioned network does. New connections are accepted while frozen, and hang the same way.
/// The target port can change (the test harness restarts servers on a fresh port).
pub(crate) struct Proxy {
    /// The port pitr connects to.
    pub(crate) port: u16,
    target: Arc<AtomicU16>,
    frozen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    pub(crate) fn start(target_port: u16) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let target = Arc::new(AtomicU16::new(target_port));
        let frozen = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (t, f, s) = (target.clone(), frozen.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                // A server that is down: the client sees its connection closed.
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", t.load(Ordering::SeqCst)))
                else {
                    continue;
                };
                let pairs = [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ];
                for (from, to) in pairs {
                    let (f, s) = (f.clone(), s.clone());
                    std::thread::spawn(move || pump(from, to, &f, &s));
                }
            }
        });
        Proxy {
            port,
            target,
            frozen,
            stop,
        }
    }

    pub(crate) fn set_target(&self, port: u16) {
        self.target.store(port, Ordering::SeqCst);
    }

    pub(crate) fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }

    /// A conninfo for `pitr --source` through the proxy.
    pub(crate) fn source(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres sslmode=disable {extra}",
            self.port
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool, stop: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        if frozen.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

fn metrics(addr: &str) -> String {
    http_get(addr, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default()
}

fn readyz(addr: &str) -> (u16, String) {
    http_get(addr, "/readyz").unwrap_or((0, String::new()))
}

fn log_text(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn a_connection_that_goes_silent_is_noticed_and_streaming_resumes_without_gap() {
    let install = PgInstall::for_tests().pop().unwrap();
    // The server gives up on a silent standby after 4 s; pitr takes its receive timeout from
    // the same setting, so the test waits seconds, not the ~15 minutes TCP would take.
    let c = Cluster::start(&install, opts().conf("wal_sender_timeout = '4s'"));
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let proxy = Proxy::start(c.port());
    let addr = free_addr();
    let log = tmp.path().join("stream.log");
    pgbench_ok(&c, &["-i", "-s", "1", "-q"]);
    let child = repo
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--metrics-listen",
            &addr,
            "--source",
            &proxy.source("connect_timeout=2"),
        ]))
        .spawn_logged(&log);
    wait_logged("readiness", Duration::from_secs(30), &log, || {
        readyz(&addr).0 == 200
    });
    // A light write load all along.
    let mut load = pgbench(&c, &["-c", "1", "-R", "20", "-T", "30"]);
    std::thread::sleep(Duration::from_secs(2));
    proxy.freeze(true);
    let t0 = Instant::now();
    wait_logged(
        "pitr to notice the silent connection (2 x wal_sender_timeout)",
        Duration::from_secs(8),
        &log,
        || metric(&metrics(&addr), "pitr_streaming") == Some(0.0),
    );
    let noticed = t0.elapsed();
    let (status, why) = readyz(&addr);
    assert_eq!(status, 503, "/readyz while the connection is dead: {why}");
    // While frozen: the server's position is unknown, so no lag is computed from the last
    // reading taken before the connection died (it would say "0 behind").
    let mut m = String::new();
    wait_logged(
        "the server position to be reported unknown",
        Duration::from_secs(10),
        &log,
        || {
            m = metrics(&addr);
            metric(&m, "pitr_server_up") == Some(0.0)
        },
    );
    let frozen_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < frozen_until {
        let m = metrics(&addr);
        for name in [
            "pitr_server_archive_lag_bytes",
            "pitr_server_archive_lag_seconds",
            "pitr_server_lsn_bytes",
        ] {
            assert!(
                metric(&m, name).is_none(),
                "{name} exported while the server cannot be reached:\n{m}"
            );
        }
        assert_eq!(metric(&m, "pitr_server_up"), Some(0.0), "{m}");
        assert_eq!(readyz(&addr).0, 503);
        std::thread::sleep(Duration::from_millis(200));
    }
    // The network heals: pitr reconnects and archives what the slot kept.
    proxy.freeze(false);
    wait_logged(
        "streaming and ready again",
        Duration::from_secs(30),
        &log,
        || {
            let m = metrics(&addr);
            metric(&m, "pitr_streaming") == Some(1.0)
                && metric(&m, "pitr_server_up") == Some(1.0)
                && readyz(&addr).0 == 200
        },
    );
    assert!(metric(&metrics(&addr), "pitr_reconnects_total").unwrap() >= 1.0);
    assert!(load.wait().unwrap().success());
    switch_and_wait(&c, &repo, 1, "archiving after the freeze", 60);
    stop(child);
    let text = log_text(&log);
    assert!(
        text.contains("no message from the server"),
        "the log does not say why the connection was dropped:\n{text}"
    );
    assert_identical_and_contiguous(&repo, &c, 1, tmp.path());
    eprintln!("silent connection noticed after {noticed:?}");
}

/// A tmpfs mounted for one test, unmounted on drop (also when the test panics).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs failed (the tests run as root)");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system under `dir` to the last byte.
fn fill_up(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        if f.write_all(&chunk).and_then(|()| f.flush()).is_err() {
            break;
        }
    }
    // The last partial chunk too.
    for _ in 0..64 {
        if f.write_all(&chunk[..1024]).is_err() {
            break;
        }
    }
}

#[test]
fn a_full_repo_fails_readiness_holds_the_slot_and_catches_up() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let _fs = Tmpfs::mount(&dir, "48m");
    let repo = TestRepo::local(&dir);
    let addr = free_addr();
    let log = tmp.path().join("stream.log");
    pgbench_ok(&c, &["-i", "-s", "1", "-q"]);
    // Small readiness limits, so a few MiB of WAL are enough to be "behind".
    let child = repo
        .apply(
            pitr()
                .args([
                    "stream",
                    "--partial-every",
                    "200ms",
                    "--metrics-listen",
                    &addr,
                    "--source",
                    &crate::stream::source(&c),
                ])
                .env("PITR_READY_MAX_LAG", "2MB")
                .env("PITR_READY_MAX_LAG_TIME", "30s"),
        )
        .spawn_logged(&log);
    wait_logged("readiness", Duration::from_secs(30), &log, || {
        readyz(&addr).0 == 200
    });
    switch_and_wait(&c, &repo, 1, "archiving", 30);
    // The repo's file system fills up; the server goes on writing.
    let filler = dir.join("filler");
    fill_up(&filler);
    let slot_at_full =
        c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'");
    pgbench_ok(&c, &["-c", "2", "-T", "5"]);
    // Enough WAL to exceed the 2 MB limit even when a loaded machine makes pgbench slow
    // (about 8 MB: 50,000 rows of 100 bytes).
    c.psql("CREATE TABLE lag_filler AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 50000) g");
    let mut why = String::new();
    wait_logged(
        "/readyz to fail because the archive trails the server",
        Duration::from_secs(20),
        &log,
        || {
            let (s, b) = readyz(&addr);
            why = b;
            s == 503 && why.contains("trails the server")
        },
    );
    let m = metrics(&addr);
    assert!(
        metric(&m, "pitr_server_archive_lag_bytes").unwrap() > 2e6,
        "{m}"
    );
    assert_eq!(metric(&m, "pitr_streaming"), Some(1.0), "{m}");
    assert_eq!(
        c.psql(&format!(
            "SELECT restart_lsn <= '{slot_at_full}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'"
        )),
        "t",
        "the slot advanced while the repo was full"
    );
    // Space comes back: pitr catches up with no gap and is ready again.
    std::fs::remove_file(&filler).unwrap();
    switch_and_wait(&c, &repo, 1, "catching up", 90);
    wait_logged("readiness again", Duration::from_secs(30), &log, || {
        readyz(&addr).0 == 200
    });
    stop(child);
    assert_identical_and_contiguous(&repo, &c, 1, tmp.path());
    eprintln!("while full: /readyz said {why:?}");
}

#[test]
fn repeated_server_restarts_reconnect_within_seconds_without_gap() {
    let install = PgInstall::for_tests().pop().unwrap();
    let mut c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    // The harness restarts a server on a fresh port; the proxy keeps pitr's address stable.
    let proxy = Proxy::start(c.port());
    let addr = free_addr();
    let log = tmp.path().join("stream.log");
    c.psql("CREATE TABLE r (x int)");
    let child = repo
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--metrics-listen",
            &addr,
            "--source",
            &proxy.source(""),
        ]))
        .spawn_logged(&log);
    wait_logged("streaming", Duration::from_secs(30), &log, || {
        metric(&metrics(&addr), "pitr_streaming") == Some(1.0)
    });
    let mut delays = Vec::new();
    for round in 1..=7u32 {
        c.psql(&format!(
            "INSERT INTO r SELECT generate_series(1, {round}000)"
        ));
        c.restart();
        proxy.set_target(c.port());
        let back = Instant::now();
        wait_logged(
            &format!("reconnect {round}"),
            Duration::from_secs(45),
            &log,
            || {
                let m = metrics(&addr);
                metric(&m, "pitr_reconnects_total").unwrap_or(0.0) >= f64::from(round)
                    && metric(&m, "pitr_streaming") == Some(1.0)
            },
        );
        delays.push(back.elapsed());
    }
    eprintln!("reconnected after each restart in {delays:?}");
    for (i, d) in delays.iter().enumerate() {
        assert!(
            *d < Duration::from_secs(5),
            "restart {}: pitr took {d:?} to stream again (all: {delays:?})",
            i + 1
        );
    }
    switch_and_wait(&c, &repo, 1, "archiving after the restarts", 60);
    stop(child);
    assert_identical_and_contiguous(&repo, &c, 1, tmp.path());
}

/// The live writers a `pitr stream` reports, from its metrics.
fn other_writers(addr: &str) -> Option<f64> {
    metric(&metrics(addr), "pitr_repo_other_writers")
}

#[test]
fn a_second_writer_is_reported_and_a_rolling_update_waits_for_the_slot() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let start = |slot: &str, name: &str, addr: &str| {
        repo.apply(
            pitr()
                .args([
                    "stream",
                    "--partial-every",
                    "200ms",
                    "--slot",
                    slot,
                    "--metrics-listen",
                    addr,
                    "--source",
                    &crate::stream::source(&c),
                ])
                .env("PITR_WRITER_HEARTBEAT", "1s"),
        )
        .spawn_logged(tmp.path().join(name))
    };
    let (addr_a, addr_b, addr_c) = (free_addr(), free_addr(), free_addr());
    let a = start("old_slot", "a.log", &addr_a);
    let a_pid = a.id();
    wait_logged(
        "a streaming",
        Duration::from_secs(30),
        &tmp.path().join("a.log"),
        || metric(&metrics(&addr_a), "pitr_streaming") == Some(1.0),
    );
    // A second stream on the same repo with another slot: both say so.
    let b = start("pitr", "b.log", &addr_b);
    let b_log = tmp.path().join("b.log");
    wait_logged("b to warn about a", Duration::from_secs(15), &b_log, || {
        let t = log_text(&b_log);
        t.contains("another pitr stream") && t.contains(&format!("pid={a_pid}"))
    });
    let t = log_text(&b_log);
    assert!(
        t.contains("old_slot"),
        "the warning does not name a's slot:\n{t}"
    );
    wait_logged("b's gauge", Duration::from_secs(10), &b_log, || {
        other_writers(&addr_b) == Some(1.0)
    });
    wait_logged(
        "a's gauge",
        Duration::from_secs(10),
        &tmp.path().join("a.log"),
        || other_writers(&addr_a) == Some(1.0),
    );
    // a is killed: b stops counting it (a process of this machine that is gone: at once; one
    // elsewhere: once its heartbeat is 3 intervals old).
    kill9(a);
    wait_logged(
        "a's entry to expire",
        Duration::from_secs(10),
        &b_log,
        || other_writers(&addr_b) == Some(0.0),
    );
    // A rolling update of b: the new sidecar (same slot) overlaps the old one. The slot can
    // be active in one walsender only, so it waits (without exiting) until b has stopped.
    let new = start("pitr", "new.log", &addr_c);
    let new_log = tmp.path().join("new.log");
    wait_logged(
        "the new one to see b",
        Duration::from_secs(15),
        &new_log,
        || other_writers(&addr_c) == Some(1.0),
    );
    std::thread::sleep(Duration::from_secs(3));
    let mut new = new;
    assert!(
        new.try_wait().unwrap().is_none(),
        "the new sidecar exited while the old one held the slot:\n{}",
        log_text(&new_log)
    );
    assert_eq!(metric(&metrics(&addr_c), "pitr_streaming"), Some(0.0));
    c.psql("CREATE TABLE during_update AS SELECT generate_series(1, 50000) x");
    let t0 = Instant::now();
    stop(b);
    wait_logged(
        "the new one to stream",
        Duration::from_secs(15),
        &new_log,
        || metric(&metrics(&addr_c), "pitr_streaming") == Some(1.0),
    );
    eprintln!(
        "the new sidecar took over {:?} after the old one stopped",
        t0.elapsed()
    );
    // b removed its own entry on the way out.
    wait_logged("b's entry gone", Duration::from_secs(10), &new_log, || {
        other_writers(&addr_c) == Some(0.0)
    });
    switch_and_wait(&c, &repo, 1, "archiving by the new sidecar", 60);
    stop(new);
    assert_identical_and_contiguous(&repo, &c, 1, tmp.path());
    // The heartbeat objects stay few: at most two per writer, and none of a stopped one.
    let entries = repo.keys("writers/");
    assert!(entries.len() <= 2, "{entries:?}");
}

/// `.tmp-*` files anywhere under `root`.
fn temp_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn kill_9_leftovers_in_a_local_repo_are_cleaned_at_start_up() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let repo = TestRepo::local(&dir);
    pgbench_ok(&c, &["-i", "-s", "1", "-q"]);
    let mut load = pgbench(&c, &["-c", "2", "-T", "8"]);
    for round in 0..4 {
        let child =
            crate::stream::start_stream(&c, &repo, &tmp.path().join(format!("stream{round}.log")));
        std::thread::sleep(Duration::from_millis(900 + 300 * round));
        kill9(child);
    }
    assert!(load.wait().unwrap().success());
    let wal_dir = dir.join("wal/00000001");
    // A temporary file left two hours ago by a writer pitr cannot see (another host or
    // container): old enough that no live write can own it.
    let ancient = wal_dir.join(".tmp-000000010000000000000001.lz4-4242-7");
    std::fs::write(&ancient, b"half an object").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&ancient)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    // One written a moment ago by such a writer: it may be live, it stays.
    let foreign = wal_dir.join(".tmp-000000010000000000000002.lz4-4243-9");
    std::fs::write(&foreign, b"a write in progress elsewhere").unwrap();
    // One of a process of this machine that is gone (as a kill -9 leaves it), and one of a
    // process that is alive (a write in progress).
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    let dead = wal_dir.join(pitr::repo::local::temp_name(
        "000000010000000000000003.lz4",
        gone_pid,
        1,
    ));
    std::fs::write(&dead, b"half an object").unwrap();
    let mut writer = std::process::Command::new("sleep")
        .arg("120")
        .spawn()
        .unwrap();
    let live = wal_dir.join(pitr::repo::local::temp_name(
        "000000010000000000000004.lz4",
        writer.id(),
        2,
    ));
    std::fs::write(&live, b"a write in progress here").unwrap();
    let before = temp_files(&dir);
    let child = crate::stream::start_stream(&c, &repo, &tmp.path().join("final.log"));
    let last = switch_and_wait(&c, &repo, 1, "archiving", 60);
    stop(child);
    let after = temp_files(&dir);
    let _ = writer.kill();
    let _ = writer.wait();
    eprintln!("temporary files before the last start: {before:?}; after: {after:?}");
    assert!(
        !after.contains(&ancient),
        "an ancient temporary file survived"
    );
    assert!(
        !after.contains(&dead),
        "a dead writer's temporary file survived"
    );
    // Only the two that may belong to a live write are left: whatever the kill -9 rounds left
    // (their processes are gone) was removed too.
    let mut kept = vec![foreign.clone(), live.clone()];
    kept.sort();
    assert_eq!(
        after, kept,
        "possibly live writes removed, or leftovers kept"
    );
    assert!(repo_has(&repo, &last));
    assert_identical_and_contiguous(&repo, &c, 1, tmp.path());
}

fn repo_has(repo: &TestRepo, seg: &str) -> bool {
    crate::stream::repo_segments(repo, 1)
        .iter()
        .any(|s| s == seg)
}

#[test]
fn readiness_thresholds_and_heartbeat_are_settings_like_any_other() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("pitr.toml");
    std::fs::write(
        &cfg,
        "repo = \"/r\"\nready_max_lag = \"64MB\"\nready_max_lag_time = \"30s\"\nwriter_heartbeat = \"2m\"\n",
    )
    .unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = pitr();
        c.args(["stream", "--print-config", "--config"])
            .arg(&cfg)
            .args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let out = run(&[], &[]);
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("ready_max_lag = 67108864")
            && s.contains("ready_max_lag_time = \"30000ms\"")
            && s.contains("writer_heartbeat = \"120000ms\""),
        "{s}"
    );
    // PITR_* beats the file, a flag beats both.
    let out = run(
        &["--ready-max-lag-time", "5s"],
        &[
            ("PITR_READY_MAX_LAG", "1GB"),
            ("PITR_READY_MAX_LAG_TIME", "9s"),
        ],
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("ready_max_lag = 1073741824") && s.contains("ready_max_lag_time = \"5000ms\""),
        "{s}"
    );
    // Bad values: one line naming the setting.
    for (file, want) in [
        ("ready_max_lag = \"lots\"\n", "ready_max_lag"),
        ("ready_max_lag_time = \"soon\"\n", "ready_max_lag_time"),
        ("writer_heartbeat = \"100ms\"\n", "writer_heartbeat"),
    ] {
        std::fs::write(&cfg, format!("repo = \"/r\"\n{file}")).unwrap();
        let out = run(&[], &[]);
        assert!(!out.status.success(), "{file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{file}: {err}");
    }
    // A bad keepalive setting in the conninfo stops pitr before it connects, in one line.
    let out = pitr()
        .args([
            "stream",
            "--repo",
            tmp.path().join("repo").to_str().unwrap(),
            "--source",
            "host=127.0.0.1 port=1 keepalives_idle=-1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim().lines().count() == 1 && err.contains("keepalives_idle"),
        "{err}"
    );
}
