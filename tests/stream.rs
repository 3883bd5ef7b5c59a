//! `pitr stream` as a user runs it (the binary, against real servers of every major).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pitr::repo::store::ObjectStore;
use testkit::s3::S3Server;
use testkit::{Cluster, ClusterOptions, PgInstall, wait_for};

/// A repo under test: a local directory or a prefix on a real S3 server on loopback. The
/// helpers below read it through pitr's own store (listings) and the `pitr` binary (fetches).
pub(crate) struct TestRepo {
    /// The `--repo` value.
    spec: String,
    /// Environment for the `pitr` process (S3 credentials).
    env: Vec<(&'static str, String)>,
    /// Extra `pitr stream` arguments (e.g. `--ack spool`).
    stream_args: Vec<String>,
    store: std::sync::Arc<dyn ObjectStore>,
    rt: tokio::runtime::Runtime,
    /// Keeps the S3 server running as long as the repo.
    srv: Option<S3Server>,
}

impl TestRepo {
    pub(crate) fn local(dir: &Path) -> TestRepo {
        let store = pitr::repo::local::LocalStore::open(dir).unwrap();
        TestRepo {
            spec: dir.display().to_string(),
            env: Vec::new(),
            stream_args: Vec::new(),
            store: std::sync::Arc::new(store),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            srv: None,
        }
    }

    pub(crate) fn s3(srv: S3Server, prefix: &str) -> TestRepo {
        let spec = srv.repo_url(prefix);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let loc = pitr::repo::s3::S3Location::parse(spec.strip_prefix("s3://").unwrap()).unwrap();
        let keys = (
            testkit::s3::ACCESS_KEY.to_owned(),
            testkit::s3::SECRET_KEY.to_owned(),
        );
        let store = rt.block_on(pitr::repo::s3::S3Store::open_with(loc, Some(keys)));
        TestRepo {
            spec,
            env: srv.env(),
            stream_args: Vec::new(),
            store: std::sync::Arc::new(store),
            rt,
            srv: Some(srv),
        }
    }

    /// The backends every major is tested with: local, and S3 (s3s-fs or moto, alternating).
    pub(crate) fn both(tmp: &Path, i: usize) -> [TestRepo; 2] {
        let srv = if i.is_multiple_of(2) {
            S3Server::s3s_fs()
        } else {
            S3Server::moto()
        };
        [
            TestRepo::local(&tmp.join("repo")),
            TestRepo::s3(srv, "cluster-a"),
        ]
    }

    pub(crate) fn name(&self) -> &'static str {
        self.srv.as_ref().map_or("local", |s| s.name)
    }

    pub(crate) fn keys(&self, prefix: &str) -> Vec<String> {
        // A stopped S3 server lists as empty (tests poll through outages).
        self.rt
            .block_on(self.store.list(prefix))
            .map(|v| v.into_iter().map(|o| o.key).collect())
            .unwrap_or_default()
    }

    pub(crate) fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.rt
            .block_on(self.store.get(key))
            .unwrap()
            .map(|b| b.to_vec())
    }

    /// The same repo, streamed with `--ack spool` through `dir`.
    pub(crate) fn with_spool(mut self, dir: &Path) -> TestRepo {
        self.stream_args = vec![
            "--ack".into(),
            "spool".into(),
            "--spool-dir".into(),
            dir.display().to_string(),
        ];
        self
    }

    /// The same repo, every `pitr` command given `key` (a key file from `pitr key generate`)
    /// through `PITR_ENCRYPTION_KEY_FILE`.
    pub(crate) fn with_key(mut self, key: &Path) -> TestRepo {
        self.env
            .push(("PITR_ENCRYPTION_KEY_FILE", key.display().to_string()));
        self
    }

    /// The same repo, every `pitr` command given these environment variables as well (e.g.
    /// a KMS key and its endpoint).
    #[cfg(feature = "kms")]
    pub(crate) fn with_env(mut self, vars: Vec<(&'static str, String)>) -> TestRepo {
        self.env.extend(vars);
        self
    }

    /// The directory holding the repo's objects as files: the local repo itself, or the
    /// s3s-fs bucket (one file per object). `None` on moto (objects in memory).
    pub(crate) fn backing_dir(&self) -> Option<PathBuf> {
        match &self.srv {
            None => Some(PathBuf::from(&self.spec)),
            Some(srv) => srv.bucket_dir(),
        }
    }

    /// Applies `--repo` and the environment (and, for `stream`, the extra arguments) to a
    /// `pitr` command.
    pub(crate) fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        let is_stream = cmd.get_args().next().is_some_and(|a| a == "stream");
        if is_stream {
            cmd.args(&self.stream_args);
        }
        cmd.arg("--repo")
            .arg(&self.spec)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
    }
}

/// `testkit::wait_for`, printing pitr's log if the wait times out.
pub(crate) fn wait_logged(
    what: &str,
    timeout: Duration,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("timed out after {timeout:?} waiting for {what}; pitr log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `pitr` binary under test: this build's, or `PITR_TEST_BIN` (to run the same tests
/// against another build, e.g. to show a test fails on the code before a fix).
pub(crate) fn pitr_bin() -> PathBuf {
    std::env::var_os("PITR_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_pitr")))
}

pub(crate) fn pitr() -> Command {
    let mut c = Command::new(pitr_bin());
    c.env("PITR_LOG", "info")
        .env("PITR_METRICS_LISTEN", "off")
        .env_remove("PITR_REPO")
        .env_remove("PITR_SOURCE")
        .env_remove("PITR_ENCRYPTION_KEY_FILE")
        .env_remove("PITR_RECIPIENT")
        .env_remove("PITR_IDENTITY_FILE")
        .env_remove("PITR_KMS_KEY_ID");
    c
}

pub(crate) fn source(c: &Cluster) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        c.port()
    )
}

pub(crate) fn start_stream(c: &Cluster, repo: &TestRepo, log: &Path) -> Child {
    start_stream_src(&source(c), repo, log)
}

/// Spawns a `pitr` command with no stdin and its stderr (the log) in a file.
pub(crate) trait SpawnLogged {
    fn spawn_logged(&mut self, log: impl AsRef<Path>) -> Child;
}

impl SpawnLogged for Command {
    fn spawn_logged(&mut self, log: impl AsRef<Path>) -> Child {
        self.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }
}

pub(crate) fn stop(mut child: Child) {
    unsafe_free_sigterm(child.id());
    let st = wait_exit(&mut child, 30, "pitr stream did not stop on SIGTERM");
    assert!(st.success(), "pitr stream exited with {st}");
}

/// Waits for a child to exit, panicking with `what` after `secs`.
pub(crate) fn wait_exit(child: &mut Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback address.
pub(crate) fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

fn unsafe_free_sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

pub(crate) fn kill9(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Complete segments in the repo for a timeline, as names.
pub(crate) fn repo_segments(repo: &TestRepo, tli: u32) -> Vec<String> {
    let prefix = format!("wal/{tli:08X}/");
    let mut v: Vec<String> = repo
        .keys(&prefix)
        .into_iter()
        .filter_map(|k| {
            k.strip_prefix(&prefix)
                .and_then(|n| n.strip_suffix(".lz4"))
                .filter(|s| s.len() == 24)
                .map(str::to_owned)
        })
        .collect();
    v.sort();
    v
}

pub(crate) fn fetch(repo: &TestRepo, name: &str, dest: &Path) -> Vec<u8> {
    let out = repo
        .apply(pitr().args(["wal", "fetch", name]).arg(dest))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fetch {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(dest).unwrap()
}

/// Every complete segment in the repo equals the server's own copy; segments are contiguous.
pub(crate) fn assert_identical_and_contiguous(
    repo: &TestRepo,
    c: &Cluster,
    tli: u32,
    tmp: &Path,
) -> Vec<String> {
    assert_matches_wal_dir(repo, &c.wal_dir(), tli, tmp)
}

/// [`assert_identical_and_contiguous`] against segment files in `wal_dir`.
fn assert_matches_wal_dir(repo: &TestRepo, wal_dir: &Path, tli: u32, tmp: &Path) -> Vec<String> {
    let segs = repo_segments(repo, tli);
    assert!(!segs.is_empty(), "no segments archived");
    for (i, s) in segs.iter().enumerate() {
        if i > 0 {
            let prev = u64::from_str_radix(&segs[i - 1][8..], 16).unwrap();
            let cur = u64::from_str_radix(&s[8..], 16).unwrap();
            assert_eq!(
                cur,
                prev + 1,
                "gap in the archive between {} and {s}",
                segs[i - 1]
            );
        }
        let got = fetch(repo, s, &tmp.join("fetched"));
        let want =
            std::fs::read(wal_dir.join(s)).unwrap_or_else(|e| panic!("{s} not in pg_wal: {e}"));
        assert!(got == want, "archived {s} differs from the server's copy");
        // Its summary is there and agrees with what walfmt reads.
        if i + 1 < segs.len() {
            let summary = repo.get(&format!("wal/{tli:08X}/{s}.summary.json"));
            assert!(summary.is_some(), "no summary for {s}");
        }
    }
    segs
}

pub(crate) fn pgbench(c: &Cluster, args: &[&str]) -> Child {
    c.install()
        .command("pgbench")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(args)
        .arg("postgres")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub(crate) fn opts() -> ClusterOptions {
    ClusterOptions::default()
        .wal_segsize_mb(1)
        .conf("wal_keep_size = '64MB'")
}

#[test]
fn archives_byte_identical_segments_on_every_major() {
    for (i, install) in PgInstall::for_tests().into_iter().enumerate() {
        let major = install.major;
        let c = Cluster::start(&install, opts());
        let tmp = tempfile::tempdir().unwrap();
        pgbench_ok(&c, &["-i", "-s", "2", "-q"]);
        // Both backends stream the same server at once, each with its own slot.
        let repos = TestRepo::both(tmp.path(), i);
        let children: Vec<Child> = repos
            .iter()
            .map(|r| {
                let log = tmp.path().join(format!("{}.log", r.name()));
                r.apply(pitr().args([
                    "stream",
                    "--partial-every",
                    "200ms",
                    "--slot",
                    &format!("pitr_{}", r.name().replace('-', "_")),
                    "--source",
                    &source(&c),
                ]))
                .spawn_logged(log)
            })
            .collect();
        wait_for("both slots", Duration::from_secs(30), || {
            c.psql("SELECT count(*) FROM pg_replication_slots WHERE active") == "2"
        });
        pgbench_ok(&c, &["-c", "2", "-T", "2"]);
        let last = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        c.switch_wal();
        for r in &repos {
            let log = tmp.path().join(format!("{}.log", r.name()));
            wait_logged(
                "the switched segment",
                Duration::from_secs(60),
                &log,
                || repo_segments(r, 1).contains(&last),
            );
        }
        for child in children {
            stop(child);
        }
        for r in &repos {
            let label = format!("PG {major} on {}", r.name());
            let segs = assert_identical_and_contiguous(r, &c, 1, tmp.path());
            assert!(segs.len() >= 5, "{label}: only {} segments", segs.len());
            // The slot never ran ahead of the archive, and advanced with it.
            let slot = format!("pitr_{}", r.name().replace('-', "_"));
            let restart: String = c.psql(&format!(
                "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"
            ));
            let seg_of_restart = c.psql(&format!("SELECT pg_walfile_name('{restart}')"));
            assert!(
                seg_of_restart >= last,
                "{label}: slot at {restart} did not advance"
            );
            // wal inspect reads the archive (compressed segments), with no invalid WAL.
            assert_inspect_clean(r, &segs, &label);
        }
    }
}

#[test]
fn kill_9_at_random_moments_loses_nothing() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    // On S3: a kill can land between an upload and its acknowledgement.
    let repo = TestRepo::s3(S3Server::s3s_fs(), "k9");
    pgbench_ok(&c, &["-i", "-s", "1", "-q"]);
    let mut load = pgbench(&c, &["-c", "2", "-T", "12"]);
    let mut seed = std::process::id() as u64;
    for round in 0..4 {
        let child = start_stream(&c, &repo, &tmp.path().join(format!("stream{round}.log")));
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(700 + (seed >> 33) % 1500));
        kill9(child);
    }
    assert!(load.wait().unwrap().success());
    let child = start_stream(&c, &repo, &tmp.path().join("final.log"));
    let last = switch_and_wait(&c, &repo, 1, "the last segment", 60);
    stop(child);
    // The slot advanced with the archive.
    let restart = c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'");
    let seg_of_restart = c.psql(&format!("SELECT pg_walfile_name('{restart}')"));
    assert!(seg_of_restart >= last, "slot at {restart} did not advance");
    let segs = assert_identical_and_contiguous(&repo, &c, 1, tmp.path());
    // The first archived segment is where the slot began: nothing before it was skipped.
    assert!(segs.len() >= 4, "{segs:?}");
    // No stray temporary files or undecodable objects.
    assert_inspect_clean(&repo, &segs, "after kill -9");
}

fn one_line_error(args: &[&str], env: &[(&str, &str)], want: &str) {
    let mut cmd = pitr();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("pitr: error: ") || last.starts_with("error:"),
        "{args:?}: {err}"
    );
    assert!(last.contains(want), "{args:?}: expected {want:?} in {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn refusals_are_one_clear_line() {
    let install = PgInstall::for_tests().pop().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let r = repo.to_str().unwrap();
    let c = Cluster::start(
        &install,
        ClusterOptions::default().auth(testkit::Auth::Scram("pw".into())),
    );
    let src = |extra: &str| {
        format!(
            "host=127.0.0.1 port={} user=postgres sslmode=disable {extra}",
            c.port()
        )
    };
    one_line_error(
        &["stream", "--source", &src("password=nope"), "--repo", r],
        &[],
        "password authentication failed",
    );
    one_line_error(
        &[
            "stream",
            "--source",
            "host=127.0.0.1 port=1 sslmode=disable",
            "--repo",
            r,
        ],
        &[],
        "cannot connect to 127.0.0.1:1",
    );
    c.psql("CREATE ROLE norepl LOGIN PASSWORD 'pw2'");
    one_line_error(
        &[
            "stream",
            "--source",
            &format!(
                "host=127.0.0.1 port={} user=norepl password=pw2 sslmode=disable",
                c.port()
            ),
            "--repo",
            r,
        ],
        &[],
        "ALTER ROLE norepl REPLICATION",
    );
    one_line_error(
        &[
            "stream",
            "--source",
            &src("password=pw"),
            "--repo",
            "ftp://x/y",
        ],
        &[],
        "invalid --repo",
    );
    one_line_error(
        &[
            "stream",
            "--source",
            &src("password=pw"),
            "--repo",
            "file://relative",
        ],
        &[],
        "absolute path",
    );
    one_line_error(
        &["stream", "--source", "host=x bogus=1", "--repo", r],
        &[],
        "unknown parameter \"bogus\"",
    );
    one_line_error(
        &[
            "stream",
            "--source",
            &src("password=pw"),
            "--repo",
            r,
            "--partial-every",
            "soon",
        ],
        &[],
        "invalid duration",
    );
    one_line_error(
        &[
            "stream",
            "--source",
            &src("password=pw"),
            "--repo",
            r,
            "--ack",
            "spool",
        ],
        &[],
        "--ack spool needs --spool-dir",
    );
    // Bad S3 credentials, a missing bucket, a malformed S3 URL: caught before connecting.
    let s3 = S3Server::s3s_fs();
    let mut env = s3.env();
    for (k, v) in &mut env {
        if *k == "AWS_SECRET_ACCESS_KEY" {
            *v = "wrong-secret".into();
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let url = s3.repo_url("x");
    one_line_error(
        &["stream", "--source", &src("password=pw"), "--repo", &url],
        &env,
        "S3 rejected the credentials",
    );
    let good_env = s3.env();
    let good_env: Vec<(&str, &str)> = good_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    one_line_error(
        &[
            "stream",
            "--source",
            &src("password=pw"),
            "--repo",
            &url.replace("pitr-test", "no-such-bucket"),
        ],
        &good_env,
        "bucket \"no-such-bucket\" does not exist",
    );
    one_line_error(
        &[
            "stream",
            "--source",
            &src("password=pw"),
            "--repo",
            "s3://B/x",
        ],
        &good_env,
        "bad bucket name",
    );
    // A repo that belongs to another cluster.
    let other = Cluster::start(&install, ClusterOptions::default());
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(
        repo.join("pitr.json"),
        format!(
            r#"{{"format":1,"system_id":"{}","wal_segment_size":16777216,"pg_major":{},"created_by":"test"}}"#,
            other.psql("SELECT system_identifier FROM pg_control_system()"),
            install.major
        ),
    )
    .unwrap();
    one_line_error(
        &["stream", "--source", &src("password=pw"), "--repo", r],
        &[],
        "belongs to database system",
    );
    // wal_level = minimal.
    let minimal = Cluster::start(
        &install,
        ClusterOptions::default()
            .conf("wal_level = minimal")
            .conf("max_wal_senders = 0"),
    );
    one_line_error(
        &[
            "stream",
            "--source",
            &format!(
                "host=127.0.0.1 port={} user=postgres sslmode=disable",
                minimal.port()
            ),
            "--repo",
            tmp.path().join("r2").to_str().unwrap(),
        ],
        &[],
        "wal_level",
    );
}

pub(crate) fn start_stream_src(src: &str, repo: &TestRepo, log: &Path) -> Child {
    repo.apply(pitr().args(["stream", "--partial-every", "200ms", "--source", src]))
        .spawn_logged(log)
}

#[test]
fn failover_to_a_promoted_standby_archives_both_timelines_without_gap() {
    for (i, install) in PgInstall::for_tests().into_iter().enumerate() {
        let major = install.major;
        let p = Cluster::start(&install, opts());
        p.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 5000);");
        let s = Cluster::standby_of(&p, &["wal_keep_size = '64MB'"]);
        let tmp = tempfile::tempdir().unwrap();
        // Local on 15, local with --ack spool on 17, S3 on 16 (moto) and 18 (s3s-fs).
        let repo = match i % 4 {
            1 => TestRepo::s3(S3Server::moto(), "failover"),
            2 => TestRepo::local(&tmp.path().join("repo")).with_spool(&tmp.path().join("spool")),
            3 => TestRepo::s3(S3Server::s3s_fs(), "failover"),
            _ => TestRepo::local(&tmp.path().join("repo")),
        };
        let a = start_stream(&p, &repo, &tmp.path().join("a.log"));
        p.psql("INSERT INTO t SELECT generate_series(1, 20000);");
        let last1 = p.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        p.switch_wal();
        wait_logged(
            "primary segments",
            Duration::from_secs(60),
            &tmp.path().join("a.log"),
            || repo_segments(&repo, 1).contains(&last1),
        );
        // Let the standby catch up, then fail over to it.
        testkit::wait_caught_up(&p, &s);
        stop(a);
        s.promote();
        s.psql(
            "DO $$ BEGIN FOR i IN 1..300 LOOP INSERT INTO t VALUES (-i); COMMIT; END LOOP; END $$;",
        );
        // pitr is pointed at the new primary.
        let b = start_stream_src(
            &format!(
                "host=127.0.0.1 port={} user=postgres sslmode=disable",
                s.port()
            ),
            &repo,
            &tmp.path().join("b.log"),
        );
        let last2 = s.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
        assert!(last2.starts_with("00000002"), "{last2}");
        s.switch_wal();
        wait_for("new-timeline segments", Duration::from_secs(60), || {
            repo_segments(&repo, 2).contains(&last2)
        });
        stop(b);
        let log = std::fs::read_to_string(tmp.path().join("b.log")).unwrap_or_default();
        // The history file, byte for byte.
        let hist = std::fs::read(s.wal_dir().join("00000002.history")).unwrap();
        assert_eq!(
            fetch(&repo, "00000002.history", &tmp.path().join("h")),
            hist,
            "PG {major}"
        );
        // Timeline 1 up to the fork, timeline 2 from the fork's segment on: contiguous, and
        // identical to each server's own files.
        let t1 = assert_identical_and_contiguous(&repo, &p, 1, tmp.path());
        let t2 = assert_identical_and_contiguous(&repo, &s, 2, tmp.path());
        let h =
            walfmt::TimelineHistory::parse(walfmt::TimeLineId(2), &String::from_utf8_lossy(&hist))
                .unwrap();
        let fork = h.ancestors[0].end;
        let fork_seg = fork.0 >> 20;
        let first2 = u64::from_str_radix(&t2[0][8..], 16).unwrap();
        assert_eq!(
            first2, fork_seg,
            "PG {major}: timeline 2 must start at the fork's segment\n{log}"
        );
        let last_t1 = u64::from_str_radix(&t1.last().unwrap()[8..], 16).unwrap();
        assert!(
            last_t1 + 1 >= fork_seg,
            "PG {major}: timeline 1 archive ends before the fork"
        );
        // The fork segment of timeline 1 is kept as a partial when the fork is mid-segment.
        if !fork.0.is_multiple_of(1 << 20) && last_t1 < fork_seg {
            let name = format!("00000001{}", &t2[0][8..]);
            let part = fetch(&repo, &format!("{name}.partial"), &tmp.path().join("p"));
            let off = (fork.0 % (1 << 20)) as usize;
            let p_copy = std::fs::read(p.wal_dir().join(&name)).unwrap();
            assert_eq!(
                &part[..off],
                &p_copy[..off],
                "PG {major}: old-timeline partial differs before the fork"
            );
        }
    }
}

#[test]
fn storage_outage_holds_the_slot_and_catches_up_without_gap() {
    use pitr::repo::local::LocalStore;
    use pitr::repo::memory::FaultyStore;
    use std::sync::Arc;

    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let faulty = FaultyStore::new(LocalStore::open(&dir).unwrap());
    let repo = TestRepo::local(&dir);
    let metrics = Arc::new(pitr::metrics::Metrics::default());
    let (stop_tx, runner) = spawn_in_process(
        &c,
        Arc::new(faulty.clone()),
        metrics,
        Duration::from_secs(1),
    );
    wait_slot_active(&c);
    pgbench_ok(&c, &["-i", "-s", "1", "-q"]);
    switch_and_wait(&c, &repo, 1, "archiving", 30);
    // Outage: storage fails every call for 10 s while the server keeps writing.
    faulty.set_down(true);
    let slot_at_outage =
        c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'");
    let mut load = pgbench(&c, &["-c", "2", "-T", "8"]);
    std::thread::sleep(Duration::from_secs(10));
    assert!(load.wait().unwrap().success());
    let during = c.psql(&format!(
        "SELECT restart_lsn <= '{slot_at_outage}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'"
    ));
    assert_eq!(
        during, "t",
        "the slot advanced while nothing could be archived"
    );
    assert_eq!(
        c.psql("SELECT count(*) FROM pg_stat_replication"),
        "1",
        "the connection stayed up"
    );
    faulty.set_down(false);
    switch_and_wait(&c, &repo, 1, "catching up", 90);
    stop_tx.send(true).unwrap();
    runner.join().unwrap().unwrap();
    assert_identical_and_contiguous(&repo, &c, 1, tmp.path());
}

#[test]
fn ack_spool_gives_rpo_zero_through_an_s3_outage_and_kill_9() {
    let install = PgInstall::for_tests().pop().unwrap();
    // Synchronous replication to pitr: a commit returns only once pitr has flushed it. No
    // wal_keep_size: the server removes WAL as soon as the slot lets it.
    let c = Cluster::start(
        &install,
        ClusterOptions::default()
            .wal_segsize_mb(1)
            .conf("synchronous_standby_names = 'pitr'")
            .conf("max_wal_size = '32MB'")
            .conf("min_wal_size = '2MB'"),
    );
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let saved = tmp.path().join("saved");
    let mut repo = TestRepo::s3(S3Server::s3s_fs(), "spool");
    let start = |repo: &TestRepo, log: &str| {
        repo.apply(pitr().args([
            "stream",
            "--ack",
            "spool",
            "--partial-every",
            "200ms",
            "--source",
            &source(&c),
        ]))
        .arg("--spool-dir")
        .arg(&spool)
        .spawn_logged(tmp.path().join(log))
    };
    let child = start(&repo, "a.log");
    wait_for("a synchronous standby", Duration::from_secs(30), || {
        c.psql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") == "1"
    });
    c.psql("CREATE TABLE t (id int, pad text)");
    // S3 goes down; commits still return (acknowledged from the spool), and pitr's reported
    // flush position covers them.
    repo.srv.as_mut().unwrap().stop();
    let t0 = Instant::now();
    for i in 0..40 {
        c.psql(&format!(
            "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series({}, {}) g",
            i * 1000,
            i * 1000 + 999
        ));
    }
    let took = t0.elapsed();
    let last_commit = c.psql("SELECT pg_current_wal_insert_lsn()");
    assert_eq!(
        c.psql(&format!(
            "SELECT flush_lsn >= '{last_commit}'::pg_lsn FROM pg_stat_replication"
        )),
        "t",
        "pitr did not acknowledge committed WAL while S3 was down"
    );
    assert!(took < Duration::from_secs(30), "commits stalled: {took:?}");
    let first_seg_after = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    c.switch_wal();
    c.psql("INSERT INTO t VALUES (-1, 'after the switch')");
    // Keep the server's copies of what the repo must end up with, then kill pitr and let the
    // server remove the WAL that only the spool now holds.
    testkit::copy_wal_segments(&c.wal_dir(), &saved, 1);
    kill9(child);
    c.psql("CHECKPOINT");
    c.switch_wal();
    c.psql("CHECKPOINT");
    let oldest_on_server =
        c.psql("SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'");
    let spooled = spool::scan_names(&spool);
    assert!(
        spooled
            .iter()
            .any(|n| n.as_str() < oldest_on_server.as_str()),
        "the server still holds all spooled WAL ({oldest_on_server}; spool {spooled:?}): the test proves nothing"
    );
    // S3 is back; pitr restarts, uploads the spool first, then streams on.
    repo.srv.as_mut().unwrap().restart();
    let child = start(&repo, "b.log");
    let last = switch_and_wait(&c, &repo, 1, "the spool and the new WAL", 90);
    stop(child);
    let log = std::fs::read_to_string(tmp.path().join("b.log")).unwrap();
    assert!(
        log.contains("uploaded the spool left by an earlier run"),
        "{log}"
    );
    testkit::copy_wal_segments(&c.wal_dir(), &saved, 1);
    let segs = assert_matches_wal_dir(&repo, &saved, 1, tmp.path());
    assert!(
        segs.contains(&first_seg_after) && segs.contains(&last),
        "{segs:?}"
    );
    // Only the segment after the last archived one may remain (WAL that came after the
    // switch; the next start uploads it).
    let left = spool::scan_names(&spool);
    assert!(
        left.len() <= 1 && left.iter().all(|n| n.as_str() > last.as_str()),
        "the spool kept archived WAL: {left:?}"
    );
}

#[test]
fn a_conflicting_object_stops_pitr_with_one_line_and_no_panic() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let repo = TestRepo::local(&dir);
    let log = tmp.path().join("log");
    let mut child = start_stream(&c, &repo, &log);
    wait_slot_active(&c);
    // Someone else's bytes where pitr's next segment goes: pitr must stop, never overwrite.
    let next = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn() + 1048576)");
    let planted = dir.join(format!("wal/00000001/{next}.lz4"));
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::write(&planted, b"not pitr's").unwrap();
    c.psql("CREATE TABLE t AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 40000) g");
    c.switch_wal();
    let status = wait_exit(&mut child, 60, "pitr kept running after the conflict");
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.contains("exists with different content") && last.contains(&next),
        "{err}"
    );
    assert_eq!(std::fs::read(&planted).unwrap(), b"not pitr's");
}

#[test]
fn sigterm_with_storage_down_exits_0_within_the_deadline() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let mut repo = TestRepo::s3(S3Server::s3s_fs(), "term");
    let child = repo
        .apply(pitr().args([
            "stream",
            "--shutdown-timeout",
            "2s",
            "--source",
            &source(&c),
        ]))
        .spawn_logged(tmp.path().join("log"));
    wait_slot_active(&c);
    repo.srv.as_mut().unwrap().stop();
    // Enough WAL to fill the channel to the stuck archiver: the receiver then holds a
    // pending message when the signal comes.
    c.psql("CREATE TABLE t AS SELECT generate_series(1, 400000) id");
    std::thread::sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    let mut child = child;
    unsafe_free_sigterm(child.id());
    let deadline = t0 + Duration::from_secs(10);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(tmp.path().join("log")).unwrap();
            panic!("pitr stream did not stop within 10 s of SIGTERM:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(tmp.path().join("log")).unwrap();
    assert!(st.success(), "pitr stream exited with {st}:\n{log}");
    assert!(log.contains("did not finish"), "{log}");
    assert!(!log.contains("orderly stop did not finish"), "{log}");
}

mod spool {
    /// Segment names in a spool directory.
    pub fn scan_names(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| n.strip_suffix(".spool").map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Resident memory of a process, in KiB: (current, peak).
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn s3_outage_of_30s_keeps_memory_bounded_and_catches_up_without_gap() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let repo = TestRepo::s3(S3Server::s3s_fs(), "outage");
    let addr = free_addr();
    let log = tmp.path().join("stream.log");
    let child = repo
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
    let pid = child.id();
    wait_slot_active(&c);
    pgbench_ok(&c, &["-i", "-s", "1", "-q"]);
    switch_and_wait(&c, &repo, 1, "archiving", 60);
    let slot_at_outage =
        c.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'");
    // The S3 server goes away for 30 s (connections cut, port closed) under load.
    let mut repo = repo;
    repo.srv.as_mut().unwrap().stop();
    let mut load = pgbench(&c, &["-c", "2", "-T", "25"]);
    let mut peak_lag = 0.0f64;
    let mut peak_rss = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(1));
        let body = http_get(&addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        peak_lag = peak_lag.max(metric(&body, "pitr_server_archive_lag_bytes").unwrap_or(0.0));
        peak_rss = peak_rss.max(rss_kib(pid).0);
    }
    assert!(load.wait().unwrap().success());
    let wal_during = c.psql(&format!(
        "SELECT pg_current_wal_lsn() - '{slot_at_outage}'::pg_lsn"
    ));
    let during = c.psql(&format!(
        "SELECT restart_lsn <= '{slot_at_outage}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'pitr'"
    ));
    assert_eq!(during, "t", "the slot advanced while S3 was down");
    assert_eq!(
        c.psql("SELECT count(*) FROM pg_stat_replication"),
        "1",
        "the replication connection stayed up through the outage"
    );
    assert!(
        peak_lag > 4e6,
        "the growing lag was not exported during the outage: {peak_lag}"
    );
    repo.srv.as_mut().unwrap().restart();
    switch_and_wait(&c, &repo, 1, "catching up after the outage", 120);
    // The lag recovers: the archive is back within a segment of the server.
    wait_logged("the lag to recover", Duration::from_secs(30), &log, || {
        let body = http_get(&addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        metric(&body, "pitr_server_archive_lag_bytes").is_some_and(|l| l < 1_048_576.0)
    });
    let body = http_get(&addr, "/metrics")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let (_, hwm) = rss_kib(pid);
    stop(child);
    let segs = assert_identical_and_contiguous(&repo, &c, 1, tmp.path());
    assert!(metric(&body, "pitr_upload_retries_total").unwrap_or(0.0) > 0.0);
    // Memory stayed bounded: the WAL written during the outage is far larger than what pitr
    // held (it stopped reading; the slot kept the WAL on the server).
    eprintln!(
        "outage: {wal_during} bytes of WAL written, peak lag {peak_lag}, RSS peak during outage {peak_rss} KiB, VmHWM {hwm} KiB, {} segments",
        segs.len()
    );
    assert!(hwm < 64 * 1024, "peak RSS {hwm} KiB over 64 MiB");
}

/// GET over a plain TCP socket: (status, body).
pub(crate) fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let status = r.split_whitespace().nth(1)?.parse().ok()?;
    let body = r
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

pub(crate) fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn metrics_and_health_endpoints() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let addr = free_addr();
    let child = pitr()
        .args([
            "stream",
            "--partial-every",
            "200ms",
            "--metrics-listen",
            &addr,
            "--source",
            &source(&c),
            "--repo",
        ])
        .arg(&repo)
        .spawn_logged(tmp.path().join("log"));
    wait_for("readiness", Duration::from_secs(30), || {
        http_get(&addr, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(http_get(&addr, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(&addr, "/livez").unwrap().0, 200);
    assert_eq!(http_get(&addr, "/nope").unwrap().0, 404);
    c.psql("CREATE TABLE m (x int); INSERT INTO m VALUES (1);");
    let flushed: walfmt::Lsn = c.psql("SELECT pg_current_wal_flush_lsn()").parse().unwrap();
    wait_for("the commit to be archived", Duration::from_secs(30), || {
        http_get(&addr, "/metrics")
            .and_then(|(_, b)| metric(&b, "pitr_archived_lsn_bytes"))
            .is_some_and(|v| v as u64 >= flushed.0)
    });
    let (status, body) = http_get(&addr, "/metrics").unwrap();
    assert_eq!(status, 200);
    for name in [
        "pitr_received_lsn_bytes",
        "pitr_flushed_lsn_bytes",
        "pitr_archive_lag_bytes",
        "pitr_last_archived_commit_timestamp_seconds",
        "pitr_last_archived_commit_age_seconds",
        "pitr_uploads_total",
        "pitr_upload_retries_total",
        "pitr_reconnects_total",
        "pitr_timeline",
        "pitr_server_lsn_bytes",
        "pitr_server_archive_lag_bytes",
        "pitr_server_archive_lag_seconds",
        "pitr_server_position_age_seconds",
        "pitr_repo_other_writers",
    ] {
        assert!(metric(&body, name).is_some(), "{name} missing:\n{body}");
    }
    assert_eq!(metric(&body, "pitr_server_up"), Some(1.0), "{body}");
    assert_eq!(
        metric(&body, "pitr_repo_other_writers"),
        Some(0.0),
        "{body}"
    );
    assert!(body.contains("# TYPE pitr_uploads_total counter"));
    assert_eq!(metric(&body, "pitr_timeline"), Some(1.0));
    assert!(metric(&body, "pitr_uploads_total").unwrap() >= 1.0);
    let age = metric(&body, "pitr_last_archived_commit_age_seconds").unwrap();
    assert!((0.0..120.0).contains(&age), "commit age {age}");
    stop(child);
}

#[test]
fn config_file_precedence_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("pitr.toml");
    std::fs::write(
        &cfg,
        "source = \"host=db user=arch password='s e cret'\"\nrepo = \"/from/file\"\npartial_every = \"2s\"\nslot = \"fileslot\"\nlog_format = \"json\"\n",
    )
    .unwrap();
    let print = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = pitr();
        c.args(["stream", "--print-config", "--config"])
            .arg(&cfg)
            .args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // The file fills what flags and environment leave out; the password never prints.
    let s = print(&[], &[]);
    assert!(
        s.contains("repo = \"/from/file\"") && s.contains("partial_every = \"2000ms\""),
        "{s}"
    );
    assert!(
        s.contains("slot = \"fileslot\"") && s.contains("log_format = \"json\""),
        "{s}"
    );
    assert!(
        s.contains("password=********") && !s.contains("cret"),
        "{s}"
    );
    // PITR_* variables beat the file; flags beat both.
    let s = print(
        &[],
        &[("PITR_PARTIAL_EVERY", "3s"), ("PITR_REPO", "/from/env")],
    );
    assert!(
        s.contains("partial_every = \"3000ms\"") && s.contains("repo = \"/from/env\""),
        "{s}"
    );
    let s = print(
        &[
            "--partial-every",
            "500ms",
            "--repo",
            "/from/flag",
            "--log-format",
            "text",
        ],
        &[("PITR_PARTIAL_EVERY", "3s")],
    );
    assert!(
        s.contains("partial_every = \"500ms\"")
            && s.contains("repo = \"/from/flag\"")
            && s.contains("log_format = \"text\""),
        "{s}"
    );
    // Errors are reported before connecting, naming the file and line.
    std::fs::write(&cfg, "repo = \"/r\"\npartial_evry = \"1s\"\n").unwrap();
    one_line_error(
        &[
            "stream",
            "--print-config",
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
        "line 2: unknown field `partial_evry`",
    );
    std::fs::write(&cfg, "repo = \"/r\"\npartial_every = \"often\"\n").unwrap();
    one_line_error(
        &[
            "stream",
            "--print-config",
            "--config",
            cfg.to_str().unwrap(),
        ],
        &[],
        "partial_every",
    );
    one_line_error(
        &["stream", "--print-config", "--config", "/nonexistent.toml"],
        &[],
        "/nonexistent.toml",
    );
    one_line_error(&["stream", "--print-config"], &[], "no repo");
}

#[test]
fn slot_retention_warning_before_invalidation() {
    use pitr::repo::local::LocalStore;
    use pitr::repo::memory::FaultyStore;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts().conf("max_slot_wal_keep_size = '24MB'"));
    c.psql("CREATE TABLE w (x text)");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let faulty = FaultyStore::new(LocalStore::open(&dir).unwrap());
    let repo = TestRepo::local(&dir);
    let metrics = Arc::new(pitr::metrics::Metrics::default());
    let (stop_tx, runner) = spawn_in_process(
        &c,
        Arc::new(faulty.clone()),
        metrics.clone(),
        Duration::from_millis(300),
    );
    wait_slot_active(&c);
    wait_for(
        "a first safe_wal_size reading",
        Duration::from_secs(20),
        || metrics.slot_safe_known.load(Ordering::Relaxed),
    );
    assert!(!metrics.slot_warning.load(Ordering::Relaxed));
    // Storage down: the slot stops advancing while the server writes WAL, 1 MiB at a time,
    // until less than 20 % of max_slot_wal_keep_size is left (but before invalidation).
    faulty.set_down(true);
    let limit = 24.0 * 1024.0 * 1024.0;
    for _ in 0..200 {
        let safe: f64 = c
            .psql("SELECT safe_wal_size FROM pg_replication_slots WHERE slot_name = 'pitr'")
            .parse()
            .unwrap();
        if safe < limit * 0.15 {
            break;
        }
        c.psql("INSERT INTO w SELECT repeat('x', 1000) FROM generate_series(1, 900)");
    }
    wait_for("pitr's retention warning", Duration::from_secs(10), || {
        metrics.slot_warning.load(Ordering::Relaxed)
    });
    assert_eq!(
        c.psql("SELECT wal_status <> 'lost' FROM pg_replication_slots WHERE slot_name = 'pitr'"),
        "t"
    );
    // Storage back: pitr catches up, the warning clears, and nothing is missing.
    faulty.set_down(false);
    switch_and_wait(&c, &repo, 1, "catching up", 90);
    wait_for("the warning to clear", Duration::from_secs(10), || {
        !metrics.slot_warning.load(Ordering::Relaxed)
    });
    stop_tx.send(true).unwrap();
    runner.join().unwrap().unwrap();
    assert_identical_and_contiguous(&repo, &c, 1, tmp.path());
}

type Runner = std::thread::JoinHandle<Result<(), pitr::stream::StreamError>>;

/// Runs `pitr::stream::run` in-process against `c`, over `store`, on its own runtime thread.
fn spawn_in_process(
    c: &Cluster,
    store: std::sync::Arc<dyn pitr::repo::store::ObjectStore>,
    metrics: std::sync::Arc<pitr::metrics::Metrics>,
    slot_check_every: Duration,
) -> (tokio::sync::watch::Sender<bool>, Runner) {
    let stream_opts = pitr::stream::StreamOptions {
        source: pitr::replication::conninfo::ConnParams::parse(&source(c), true).unwrap(),
        repo: pitr::repo::Repo::with_store(store),
        slot: Some("pitr".into()),
        partial_every: Duration::from_millis(200),
        status_interval: Duration::from_secs(1),
        reconnect_cap: Duration::from_secs(2),
        metrics,
        slot_check_every,
        spool: None,
        shutdown_timeout: Duration::from_secs(20),
        writer_heartbeat: Duration::from_secs(60),
        linger_on_divergence: false,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let runner = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(pitr::stream::run(stream_opts, stop_rx))
    });
    (stop_tx, runner)
}

pub(crate) fn wait_slot_active(c: &Cluster) {
    wait_for("the slot", Duration::from_secs(20), || {
        c.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pitr' AND active")
            == "1"
    });
}

pub(crate) fn pgbench_ok(c: &Cluster, args: &[&str]) {
    assert!(
        pgbench(c, args).wait().unwrap().success(),
        "pgbench {args:?} failed"
    );
}

/// Switches WAL and waits until the segment that held the current position is archived on
/// `tli`. Returns its name. A record is written first: at a segment boundary (after a base
/// backup, which ends with a switch, or an earlier switch) `pg_switch_wal()` does nothing and
/// that segment would never complete.
pub(crate) fn switch_and_wait(
    c: &Cluster,
    repo: &TestRepo,
    tli: u32,
    what: &str,
    secs: u64,
) -> String {
    c.psql("SELECT pg_logical_emit_message(false, 'pitr-test', 'before a switch')");
    // The segment holding the last byte written: at a segment boundary (just after a
    // switch, or a backup's end), PostgreSQL 17+ names the next, empty segment for
    // pg_current_wal_lsn(), which no switch completes (15 and 16 name the previous one).
    let last = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn() - 1)");
    c.switch_wal();
    wait_for(what, Duration::from_secs(secs), || {
        repo_segments(repo, tli).contains(&last)
    });
    last
}

/// `pitr wal inspect` reads the archived segments (downloaded as they are stored, lz4) without
/// finding invalid WAL.
fn assert_inspect_clean(repo: &TestRepo, segs: &[String], label: &str) {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = segs
        .iter()
        .map(|s| {
            let key = format!("wal/00000001/{s}.lz4");
            let path = dir.path().join(format!("{s}.lz4"));
            std::fs::write(&path, repo.get(&key).unwrap()).unwrap();
            path
        })
        .collect();
    let out = pitr()
        .args(["wal", "inspect"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{label}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
