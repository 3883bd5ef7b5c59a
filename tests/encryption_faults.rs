//! An encrypted repo under faults, through the CLI and raw file access only (no knowledge of
//! the sealed format beyond the documented 64 KiB chunk + 16-byte tag): `pitr stream` killed
//! with SIGKILL while partials are re-uploaded, an older partial's bytes under a newer
//! partial's name, and two chunks swapped inside a stored object. `verify` and `restore`
//! either pass with every row, or fail naming the object and leaving nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use testkit::s3::S3Server;
use testkit::{Cluster, PgInstall};

use crate::restore::{backup, list_dir, restore_dir, restore_verify, run, text};
use crate::stream::{
    SpawnLogged, TestRepo, assert_identical_and_contiguous, kill9, opts, pgbench, pgbench_ok, pitr,
    source, stop, switch_and_wait,
};

/// Plaintext bytes per sealed chunk, and its tag (docs/repo-format.md, "Encryption").
const CHUNK: usize = 65536;
const TAG: usize = 16;

/// `pitr key generate` into `dir/name`, mode 0600 (as tests/encryption.rs does).
fn new_key(dir: &Path, name: &str) -> PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let o = run(pitr().args(["key", "generate"]));
    assert!(o.status.success(), "pitr key generate: {}", text(&o));
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap()
        .write_all(&o.stdout)
        .unwrap();
    path
}

/// Replaces a (read-only, published) object's bytes.
fn rewrite(path: &Path, bytes: &[u8]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).unwrap();
}

/// `pitr stream` into `repo` with its own slot, re-publishing partials every 100 ms.
fn stream(c: &Cluster, repo: &TestRepo, slot: &str, log: &Path) -> Child {
    repo.apply(pitr().args([
        "stream",
        "--partial-every",
        "100ms",
        "--slot",
        slot,
        "--source",
        &source(c),
    ]))
    .spawn_logged(log)
}

/// Keys of the partials of timeline 1 in `repo`, sorted (by segment, then end LSN).
fn partials(repo: &TestRepo) -> Vec<String> {
    let mut v: Vec<String> = repo
        .keys("wal/00000001/")
        .into_iter()
        .filter(|k| k.contains(".partial."))
        .collect();
    v.sort();
    v
}

/// Every `.tmp-*` file under `dir`.
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(&p, out);
            } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

fn output(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `pitr verify` fails (exit 1) naming `object`.
fn verify_names(repo: &TestRepo, object: &str, what: &str) {
    let o = run(repo.apply(pitr().arg("verify")));
    eprintln!("{what}: verify: {}", output(&o).trim_end());
    assert_eq!(o.status.code(), Some(1), "{what}: verify: {}", text(&o));
    assert!(
        output(&o).contains(object),
        "{what}: verify does not name {object}: {}",
        text(&o)
    );
}

/// `pitr restore --to latest` into a new directory fails in one error line naming `object`,
/// and leaves no directory behind.
fn restore_names(repo: &TestRepo, tmp: &Path, object: &str, what: &str) {
    let dest = restore_dir(tmp, "restored");
    let o = run(repo.apply(pitr().args(["restore", "--to", "latest", "-D"]).arg(&dest)));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{what}: restore: {}", text(&o));
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pitr: error"))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: one error line wanted:\n{stderr}");
    eprintln!("{what}: restore: {}", errors[0]);
    assert!(
        errors[0].contains(object),
        "{what}: restore does not name {object}: {}",
        errors[0]
    );
    assert_eq!(
        list_dir(&dest),
        None,
        "{what}: the failed restore left {}",
        dest.display()
    );
}

/// Polls `f` every 20 ms until it returns `Some`, panicking with `what` after `secs`.
fn poll<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pitr stream` into an encrypted local repo and an encrypted S3 repo (s3s-fs), both
/// SIGKILLed three times while pgbench and WAL switches make them publish a partial every
/// 100 ms (each kill lands just after a new partial appeared), each restarted with the same
/// key. After a marker row and a last switch: no temporary file is left in the local repo,
/// `verify` (which reads and authenticates every object from the backup on) passes, `list`
/// shows no gap, every archived segment fetches (decrypts) equal to the server's copy and
/// the segments are contiguous, and `restore --verify` finds the marker with a clean report.
#[test]
fn encrypted_stream_killed_with_sigkill_resumes_without_gap_or_undecryptable_object() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let key = new_key(tmp.path(), "repo.key");
    let local_dir = tmp.path().join("repo");
    let repos = [
        (TestRepo::local(&local_dir).with_key(&key), "pitr_local"),
        (
            TestRepo::s3(S3Server::s3s_fs(), "k9enc").with_key(&key),
            "pitr_s3",
        ),
    ];
    let start_all = |round: usize| -> Vec<Child> {
        repos
            .iter()
            .map(|(r, slot)| stream(&c, r, slot, &tmp.path().join(format!("{slot}-{round}.log"))))
            .collect()
    };
    let mut children = start_all(0);
    c.psql("CREATE TABLE marker (id int PRIMARY KEY)");
    for (r, _) in &repos {
        backup(&c, r, "base");
    }
    pgbench_ok(&c, &["-i", "-s", "1", "-q"]);
    let mut load = pgbench(&c, &["-c", "2", "-T", "10"]);
    let mut seed = u64::from(std::process::id());
    for round in 1..=3 {
        // Each stream is publishing: a partial it had not shown before appears in both.
        let before: Vec<Vec<String>> = repos.iter().map(|(r, _)| partials(r)).collect();
        if round == 2 {
            c.switch_wal();
        }
        for ((r, _), seen) in repos.iter().zip(&before) {
            poll("a new partial", 30, || {
                partials(r).iter().any(|p| !seen.contains(p)).then_some(())
            });
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(30 + (seed >> 33) % 150));
        for child in children {
            kill9(child);
        }
        c.switch_wal();
        children = start_all(round);
    }
    assert!(load.wait().unwrap().success(), "pgbench failed");
    c.psql("INSERT INTO marker VALUES (42)");
    for (r, slot) in &repos {
        switch_and_wait(&c, r, 1, &format!("{slot}: the marker's segment"), 60);
    }
    for child in children {
        stop(child);
    }
    let left = temp_files(&local_dir);
    assert!(
        left.is_empty(),
        "the killed streams' temporary files are still in the repo: {left:?}"
    );
    for (n, (r, slot)) in repos.iter().enumerate() {
        let o = run(r.apply(pitr().arg("verify")));
        assert!(o.status.success(), "{slot}: verify: {}", text(&o));
        let o = run(r.apply(pitr().args(["list", "--json"])));
        assert!(o.status.success(), "{slot}: list: {}", text(&o));
        let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let t1 = &l["timelines"][0];
        assert!(
            t1["gaps"].as_array().is_some_and(Vec::is_empty),
            "{slot}: gaps: {l:#}"
        );
        let segs = assert_identical_and_contiguous(r, &c, 1, tmp.path());
        assert!(segs.len() >= 5, "{slot}: {segs:?}");
        let dir = restore_dir(tmp.path(), &format!("r{n}"));
        let v = restore_verify(
            r,
            &install,
            &dir,
            &["--to", "latest"],
            &["SELECT coalesce(max(id), 0) FROM marker => 42"],
            &[],
        );
        assert_eq!(v["verify"]["checks"][0]["ok"], true, "{slot}: {v:#}");
        assert!(
            v["verify"]["failures"]
                .as_array()
                .is_some_and(Vec::is_empty),
            "{slot}: {v:#}"
        );
    }
}

/// Two partials of one segment (the older one's bytes read while it was the newest): the
/// older partial's sealed bytes copied over the newer partial's file. The sealed object is
/// bound to its name (the end LSN), so `verify` and a `restore --to latest` (which needs that
/// WAL) fail naming the newer partial's key, and the restore leaves nothing behind.
#[test]
fn a_partial_replaced_by_an_older_version_of_itself_is_named() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let key = new_key(tmp.path(), "repo.key");
    let dir = tmp.path().join("repo");
    let repo = TestRepo::local(&dir).with_key(&key);
    let s = stream(&c, &repo, "pitr", &tmp.path().join("s.log"));
    c.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    backup(&c, &repo, "base");
    c.psql("INSERT INTO t VALUES (2)");
    // The backup ended with a switch: the partial is of the segment after its end.
    let (older, older_bytes) = poll("a first partial", 30, || {
        let k = partials(&repo).pop()?;
        std::fs::read(dir.join(&k)).ok().map(|b| (k, b))
    });
    let segment = older.split(".partial.").next().unwrap().to_owned();
    c.psql("INSERT INTO t SELECT generate_series(3, 500)");
    let newer = poll("a newer partial of the same segment", 30, || {
        let p = partials(&repo);
        (p.len() == 1 && p[0] != older && p[0].starts_with(&format!("{segment}.partial.")))
            .then(|| p[0].clone())
    });
    stop(s);
    // What the stopped stream left: one partial of that segment, not the older one.
    let p = partials(&repo);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with(&format!("{segment}.partial.")), "{p:?}");
    assert!(p[0] > older, "{p:?} is not newer than {older}");
    let newer = if p[0] == newer { newer } else { p[0].clone() };
    let o = run(repo.apply(pitr().arg("verify")));
    assert!(o.status.success(), "the undamaged repo: {}", text(&o));
    let path = dir.join(&newer);
    let newer_len = std::fs::metadata(&path).unwrap().len();
    rewrite(&path, &older_bytes);
    eprintln!(
        "{older} ({} bytes) copied over {newer} ({newer_len} bytes)",
        older_bytes.len()
    );
    let what = "an older partial under a newer partial's name";
    verify_names(&repo, &newer, what);
    restore_names(&repo, tmp.path(), &newer, what);
}

/// Two full chunks swapped inside a large sealed backup chunk (same length: no size check
/// can see it; each chunk is intact, so only its position, the nonce's counter, tells).
/// The chunk boundaries come from the documented 64 KiB + 16-byte tag chunks and the
/// catalog's plaintext size (`stored`): header = file length - plaintext - tags. `verify`
/// and `restore` fail naming the object; the restore leaves nothing behind.
#[test]
fn chunks_swapped_within_a_stored_object_are_named() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let key = new_key(tmp.path(), "repo.key");
    let dir = tmp.path().join("repo");
    let repo = TestRepo::local(&dir).with_key(&key);
    let s = stream(&c, &repo, "pitr", &tmp.path().join("s.log"));
    c.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000)");
    let b = backup(&c, &repo, "base");
    switch_and_wait(&c, &repo, 1, "a segment after the backup", 60);
    stop(s);
    let o = run(repo.apply(pitr().arg("verify")));
    assert!(o.status.success(), "the undamaged repo: {}", text(&o));
    // The backup's largest chunk.
    let chunk = b["archives"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["chunks"].as_array().unwrap().iter())
        .max_by_key(|ch| ch["stored"].as_u64().unwrap())
        .unwrap();
    let object = chunk["key"].as_str().unwrap().to_owned();
    let plain = usize::try_from(chunk["stored"].as_u64().unwrap()).unwrap();
    let path = dir.join(&object);
    let mut bytes = std::fs::read(&path).unwrap();
    let chunks = plain.div_ceil(CHUNK).max(1);
    assert_ne!(
        plain % CHUNK,
        0,
        "{object}: plaintext a multiple of a chunk"
    );
    let tags = chunks * TAG;
    assert!(
        bytes.len() > plain + tags,
        "{object}: {} stored bytes for {plain} plaintext bytes",
        bytes.len()
    );
    let header = bytes.len() - plain - tags;
    assert!(header <= 4096, "{object}: a {header}-byte header?");
    assert!(chunks > 3, "{object}: only {chunks} chunks");
    // The last two full chunks before the (short, flagged) last one.
    let span = CHUNK + TAG;
    let (i, j) = (chunks - 3, chunks - 2);
    let (a, bpos) = (header + i * span, header + j * span);
    assert_ne!(bytes[a..a + span], bytes[bpos..bpos + span]);
    let first: Vec<u8> = bytes[a..a + span].to_vec();
    bytes.copy_within(bpos..bpos + span, a);
    bytes[bpos..bpos + span].copy_from_slice(&first);
    let len = std::fs::metadata(&path).unwrap().len();
    rewrite(&path, &bytes);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    eprintln!("{object}: {len} bytes, header {header}, chunks {i} and {j} of {chunks} swapped");
    let what = "two chunks swapped inside a backup chunk";
    verify_names(&repo, &object, what);
    restore_names(&repo, tmp.path(), &object, what);
}
