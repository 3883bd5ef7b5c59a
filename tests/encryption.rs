//! Client-side repo encryption (symmetric key mode), as a user runs it: `pitr key generate`,
//! then every repo command with `--encryption-key-file` (or `PITR_ENCRYPTION_KEY_FILE`).
//! The repo holds no plaintext but `pitr.json`; mixing keys and repos is refused in one line;
//! a damaged or swapped object is named.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use testkit::s3::S3Server;
use testkit::{Cluster, PgInstall};

use crate::restore::{backup, list_dir, restore_dir, restore_verify, run, text};
use crate::stream::{
    SpawnLogged, TestRepo, opts, pitr, repo_segments, source, stop, switch_and_wait,
};

/// A row value and a table name no object of an encrypted repo may show.
const SECRET_ROW: &str = "pitr-secret-row-7f3a9c";
const SECRET_TABLE: &str = "zebra_secret_table";

/// The sealed-object header.
const SEALED_MAGIC: &[u8; 7] = b"PITRENC";
/// A key object's magic (`keys/<dk id>.<kek id>.key`: a wrapped data key, no plaintext).
const KEY_OBJECT_MAGIC: &[u8; 7] = b"PITRKEY";

/// `pitr key generate` into `dir/name`, mode 0600; returns the path and the file's text.
fn new_key(dir: &Path, name: &str) -> (PathBuf, String) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let o = run(pitr().args(["key", "generate"]));
    assert!(o.status.success(), "pitr key generate: {}", text(&o));
    let key = String::from_utf8(o.stdout.clone()).expect("the key is text");
    // Opaque text (today a `#` comment naming the key id, then the key line).
    assert!(!key.trim().is_empty(), "{}", text(&o));
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .unwrap();
    f.write_all(key.as_bytes()).unwrap();
    (path, key.trim().to_owned())
}

/// Every file under `dir` (recursively), as (path relative to `dir`, bytes).
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A WAL page header of timeline 1 in the clear: `xlp_magic` (2 bytes, little-endian), the
/// low byte of `xlp_info` (any), its high byte (0), `xlp_tli` = 1. The 2-byte magic alone
/// occurs by chance about once per 64 KiB of ciphertext; these 6 fixed bytes do not.
fn has_wal_page_header(hay: &[u8], magic: [u8; 2]) -> bool {
    hay.windows(8)
        .any(|w| w[0] == magic[0] && w[1] == magic[1] && w[3] == 0 && w[4..8] == [1, 0, 0, 0])
}

/// What plaintext objects of the test's workload show: (what, file) for each hit, over every
/// file under `dir` but `pitr.json`.
fn plaintext_hits(dir: &Path, major: u32) -> Vec<(&'static str, String)> {
    // XLOG_PAGE_MAGIC per major, from walfmt (15 = 0xD110, 16 = 0xD113, 17 = 0xD116,
    // 18 = 0xD118; 16's and 18's checked against their xlog_internal.h).
    let magic = walfmt::PgVersion::from_major(major)
        .expect("a supported major")
        .magic()
        .to_le_bytes();
    // Summary JSON keys (`"commit"` with both quotes never occurs in plaintext: the kinds are
    // upper case, the count is `"commits"`).
    let needles: [(&'static str, &[u8]); 5] = [
        ("the row value", SECRET_ROW.as_bytes()),
        ("the table name", SECRET_TABLE.as_bytes()),
        ("summary JSON \"xid\"", b"\"xid\""),
        ("summary JSON \"commits\"", b"\"commits\""),
        ("summary JSON \"COMMIT\"", b"\"COMMIT\""),
    ];
    let mut hits = Vec::new();
    for (rel, bytes) in files_under(dir) {
        if rel.rsplit('/').next() == Some("pitr.json") {
            continue;
        }
        for (what, n) in needles {
            if contains(&bytes, n) {
                hits.push((what, rel.clone()));
            }
        }
        if has_wal_page_header(&bytes, magic) {
            hits.push(("a WAL page header", rel.clone()));
        }
    }
    hits
}

/// The encrypted repo under `dir`: every object but `pitr.json` sealed, no plaintext of
/// the workload, no line of the key file; `pitr.json` plain JSON with an `encryption` object.
/// Returns the key ids `pitr.json` names.
fn assert_sealed(dir: &Path, major: u32, key_text: &str, label: &str) -> Vec<String> {
    let files = files_under(dir);
    let marker: Vec<&(String, Vec<u8>)> = files
        .iter()
        .filter(|(rel, _)| rel.rsplit('/').next() == Some("pitr.json"))
        .collect();
    assert_eq!(marker.len(), 1, "{label}: one pitr.json in {files:?}");
    let (marker_rel, marker_bytes) = marker[0];
    let marker_text = String::from_utf8_lossy(marker_bytes);
    assert!(
        marker_text.contains("\"encryption\""),
        "{label}: {marker_text}"
    );
    let identity: serde_json::Value = serde_json::from_slice(marker_bytes)
        .unwrap_or_else(|e| panic!("{label}: pitr.json is not plain JSON ({e}): {marker_text}"));
    assert!(identity["encryption"].is_object(), "{label}: {identity:#}");
    let ids = key_ids(&identity);
    let prefix = marker_rel.strip_suffix("pitr.json").unwrap();
    let mut kinds = [false; 3];
    for (rel, bytes) in &files {
        for line in key_text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            assert!(
                !contains(bytes, line.as_bytes()),
                "{label}: {rel} holds a line of the key file"
            );
        }
        let name = rel.rsplit('/').next().unwrap();
        if name == "pitr.json" || name.starts_with(".tmp-") {
            continue;
        }
        let key_object = rel.contains("keys/") && name.ends_with(".key");
        assert!(
            if key_object {
                bytes.starts_with(KEY_OBJECT_MAGIC)
            } else {
                bytes.starts_with(SEALED_MAGIC)
            },
            "{label}: {rel} is not sealed: starts {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
        );
        let key = rel.strip_prefix(prefix).unwrap_or(rel);
        for (k, p) in ["wal/", "backups/", "points/"].iter().enumerate() {
            kinds[k] |= key.starts_with(p);
        }
    }
    assert_eq!(
        kinds,
        [true; 3],
        "{label}: expected WAL, backup and restore-point objects in {:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let hits = plaintext_hits(dir, major);
    assert!(hits.is_empty(), "{label}: plaintext in the repo: {hits:?}");
    ids
}

/// The key ids `pitr.json`'s `encryption` object names: its `key_id` or `key_ids` (any
/// `*id*` field holding a string or strings).
fn key_ids(identity: &serde_json::Value) -> Vec<String> {
    let enc = identity["encryption"].as_object().unwrap();
    let ids: Vec<String> = enc
        .iter()
        .filter(|(k, _)| k.contains("id"))
        .flat_map(|(_, v)| match v {
            serde_json::Value::String(s) => vec![s.clone()],
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        })
        .filter(|id| !id.is_empty())
        .collect();
    assert!(!ids.is_empty(), "no key id in pitr.json: {identity:#}");
    ids
}

/// A refusal: exit 1, stderr's last line is the one `pitr: error:` line, holding every
/// `wants` (and any one of `any_of`, if given) and none of `unwanted`. Returns that line.
fn one_line_refusal(
    code: Option<i32>,
    stderr: &str,
    what: &str,
    wants: &[&str],
    any_of: &[&str],
    unwanted: &[&str],
) -> String {
    assert_eq!(code, Some(1), "{what}: exit {code:?}, stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("pitr: error"))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: one error line wanted:\n{stderr}");
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.starts_with("pitr: error: "),
        "{what}: last line {last:?}:\n{stderr}"
    );
    for w in wants {
        assert!(last.contains(w), "{what}: wanted {w:?} in {last:?}");
    }
    if !any_of.is_empty() {
        assert!(
            any_of.iter().any(|w| last.contains(w)),
            "{what}: wanted one of {any_of:?} in {last:?}"
        );
    }
    for u in unwanted {
        assert!(!last.contains(u), "{what}: {u:?} in {last:?}");
    }
    last.to_owned()
}

/// Runs `cmd`, expects a one-line refusal, and that `dir` (if given) is left as it was.
fn refused(
    cmd: &mut Command,
    dir: Option<&Path>,
    what: &str,
    wants: &[&str],
    any_of: &[&str],
    unwanted: &[&str],
) -> String {
    let before = dir.map(list_dir);
    let o: Output = run(cmd);
    let line = one_line_refusal(
        o.status.code(),
        &String::from_utf8_lossy(&o.stderr),
        what,
        wants,
        any_of,
        unwanted,
    );
    if let Some(d) = dir {
        assert_eq!(Some(list_dir(d)), before, "{what} touched {}", d.display());
    }
    line
}

/// Starts `pitr stream` and expects it to refuse (within 30 s) in one line, writing nothing.
fn stream_refused(
    c: &Cluster,
    repo: &TestRepo,
    extra: &[&str],
    log: &Path,
    what: &str,
    wants: &[&str],
    any_of: &[&str],
) -> String {
    let before = repo.keys("");
    let mut child = repo
        .apply(
            pitr()
                .args([
                    "stream",
                    "--partial-every",
                    "200ms",
                    "--slot",
                    "pitr_refused",
                ])
                .args(extra)
                .arg("--source")
                .arg(source(c)),
        )
        .spawn_logged(log);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: pitr stream still running after 30s:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(log).unwrap();
    let line = one_line_refusal(status.code(), &stderr, what, wants, any_of, &[]);
    assert_eq!(repo.keys(""), before, "{what}: the refused stream wrote");
    line
}

/// The server's commit times of rows 1..=n of the secret table, UTC.
fn secret_commit_times(c: &Cluster, n: usize) -> Vec<String> {
    let out = c.psql(&format!(
        "SELECT string_agg(to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), ',' ORDER BY id) FROM {SECRET_TABLE} WHERE id > 0"
    ));
    let v: Vec<String> = out.split(',').map(str::to_owned).collect();
    assert_eq!(v.len(), n, "{out}");
    v
}

/// Waits until `repo` holds segment `seg` of timeline 1.
fn wait_segment(repo: &TestRepo, seg: &str, what: &str) {
    testkit::wait_for(what, Duration::from_secs(60), || {
        repo_segments(repo, 1).iter().any(|s| s == seg)
    });
}

/// The core PITR loop on an encrypted repo, on the first and the last major tested (local
/// repo on the first, S3 on s3s-fs on the last; one major tested: both on it): stream,
/// backup, commits of a secret row, a restore point, DROP TABLE, `restore --to` a time
/// between two commits with `--verify` proving exactly the rows before it exist; `list`
/// and `verify` pass. Then every object of the repo, read as stored (the local directory,
/// s3s-fs's bucket directory), is sealed and shows neither the row, the table name, a WAL
/// page header nor summary JSON; `pitr.json` names the key. On the local run a plain repo
/// streamed alongside shows all of them: the scan would see plaintext.
#[test]
fn encrypted_repo_core_pitr_on_two_majors_and_both_backends() {
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
        let (key, key_text) = new_key(tmp.path(), "repo.key");
        let (_, other) = new_key(tmp.path(), "other.key");
        assert_ne!(key_text, other, "two generated keys are equal");
        let repo = if on_s3 {
            TestRepo::s3(S3Server::s3s_fs(), &format!("enc{run_no}"))
        } else {
            TestRepo::local(&tmp.path().join("repo"))
        }
        .with_key(&key);
        // The control: the same server, streamed into a plain repo (local run only).
        let control = (!on_s3).then(|| TestRepo::local(&tmp.path().join("plain")));
        let mut repos: Vec<(&TestRepo, &str)> = vec![(&repo, "pitr_enc")];
        if let Some(p) = &control {
            repos.push((p, "pitr_plain"));
        }
        let streams: Vec<_> = repos
            .iter()
            .map(|(r, slot)| {
                r.apply(pitr().args([
                    "stream",
                    "--partial-every",
                    "200ms",
                    "--slot",
                    slot,
                    "--source",
                    &source(&c),
                ]))
                .spawn_logged(tmp.path().join(format!("{slot}.log")))
            })
            .collect();
        // Row 0 before the backup: the secret is in the base backup's heap too.
        c.psql(&format!(
            "CREATE TABLE {SECRET_TABLE} (id int PRIMARY KEY, v text NOT NULL); INSERT INTO {SECRET_TABLE} VALUES (0, '{SECRET_ROW}')"
        ));
        for (r, _) in &repos {
            let b = backup(&c, r, "base");
            assert_eq!(b["pg_major"], major, "{label}: {b:#}");
        }
        for id in 1..=6 {
            c.psql(&format!(
                "INSERT INTO {SECRET_TABLE} VALUES ({id}, '{SECRET_ROW}')"
            ));
            if id == 3 {
                let o = run(repo.apply(
                    pitr()
                        .args(["mark", "after_3"])
                        .arg("--source")
                        .arg(format!("{} dbname=postgres", source(&c))),
                ));
                assert!(o.status.success(), "{label}: mark: {}", text(&o));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let ct = secret_commit_times(&c, 6);
        c.psql(&format!("DROP TABLE {SECRET_TABLE}"));
        let seg = switch_and_wait(&c, &repo, 1, "the encrypted archive", 60);
        if let Some(p) = &control {
            wait_segment(p, &seg, "the plain archive");
        }
        let between_3_4 = c.psql(&format!(
            "SELECT to_char(('{}+00'::timestamptz + ('{}+00'::timestamptz - '{}+00'::timestamptz) / 2) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
            ct[2], ct[3], ct[2]
        ));
        let dir = restore_dir(tmp.path(), "r");
        let check = format!(
            "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), 'none') FROM {SECRET_TABLE} WHERE v = '{SECRET_ROW}' => 0,1,2,3"
        );
        let v = restore_verify(
            &repo,
            &install,
            &dir,
            &["--to", &between_3_4],
            &[&check],
            &[],
        );
        assert_eq!(v["verify"]["checks"][0]["ok"], true, "{label}: {v:#}");
        // list: one backup, timeline 1 with a last commit and no gap, the restore point.
        let o = run(repo.apply(pitr().args(["list", "--json"])));
        assert!(o.status.success(), "{label}: list: {}", text(&o));
        let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(l["backups"].as_array().unwrap().len(), 1, "{label}: {l:#}");
        let t1 = &l["timelines"][0];
        assert!(t1["last_commit_time"].as_str().is_some(), "{label}: {l:#}");
        assert!(t1["gaps"].as_array().unwrap().is_empty(), "{label}: {l:#}");
        let o = run(repo.apply(pitr().arg("list")));
        assert!(o.status.success(), "{label}: list: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("after_3"),
            "{label}: {}",
            text(&o)
        );
        let o = run(repo.apply(pitr().arg("verify")));
        assert!(o.status.success(), "{label}: verify: {}", text(&o));
        if !on_s3 {
            // The option itself (not the environment) opens the repo too.
            let o = run(pitr()
                .args(["list", "--json", "--encryption-key-file"])
                .arg(&key)
                .arg("--repo")
                .arg(tmp.path().join("repo")));
            assert!(
                o.status.success(),
                "{label}: list --encryption-key-file: {}",
                text(&o)
            );
        }
        for s in streams {
            stop(s);
        }
        // The bytes at rest.
        let stored = repo.backing_dir().expect("local or s3s-fs");
        let ids = assert_sealed(&stored, major, &key_text, &label);
        assert_eq!(ids.len(), 1, "{label}: one key made the repo: {ids:?}");
        if let Some(p) = &control {
            let hits = plaintext_hits(&p.backing_dir().unwrap(), major);
            for what in [
                "the row value",
                "the table name",
                "a WAL page header",
                "summary JSON \"xid\"",
                "summary JSON \"commits\"",
            ] {
                assert!(
                    hits.iter().any(|(w, _)| *w == what),
                    "{label}: the scan does not see {what} in a plain repo: {hits:?}"
                );
            }
            // The row value is in the plain base backup as well as in its WAL.
            assert!(
                hits.iter()
                    .any(|(w, f)| *w == "the row value" && f.starts_with("backups/")),
                "{label}: {hits:?}"
            );
        }
    }
}

/// Keys and repos that do not belong together, each refused in one line (exit 1) before
/// anything is written: an encrypted repo without a key (restore, list, verify, stream), a
/// plain repo with a key (list, restore, stream), another generated key on the encrypted
/// repo (names the key id it needs), a key file readable by others. The right key works.
#[test]
fn encryption_mixing_is_refused_in_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = new_key(tmp.path(), "repo.key");
    let (wrong, _) = new_key(tmp.path(), "wrong.key");
    let loose = tmp.path().join("loose.key");
    std::fs::copy(&key, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let enc_dir = tmp.path().join("enc");
    let plain_dir = tmp.path().join("plain");
    let enc = TestRepo::local(&enc_dir).with_key(&key);
    let plain = TestRepo::local(&plain_dir);
    let streams: Vec<_> = [(&enc, "pitr_enc"), (&plain, "pitr_plain")]
        .iter()
        .map(|(r, slot)| {
            r.apply(pitr().args([
                "stream",
                "--partial-every",
                "200ms",
                "--slot",
                slot,
                "--source",
                &source(&c),
            ]))
            .spawn_logged(tmp.path().join(format!("{slot}.log")))
        })
        .collect();
    c.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    backup(&c, &enc, "base");
    backup(&c, &plain, "base");
    c.psql("INSERT INTO t VALUES (2)");
    let seg = switch_and_wait(&c, &enc, 1, "the encrypted archive", 60);
    wait_segment(&plain, &seg, "the plain archive");
    for s in streams {
        stop(s);
    }
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(enc_dir.join("pitr.json")).unwrap()).unwrap();
    let ids = key_ids(&identity);
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let enc_keys = enc.keys("");
    let plain_keys = plain.keys("");
    let missing = tmp.path().join("missing");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let restore = |repo: &Path, key: Option<&Path>, dir: &Path| {
        let mut cmd = pitr();
        cmd.args(["restore", "--to", "latest", "-D"]).arg(dir);
        if let Some(k) = key {
            cmd.arg("--encryption-key-file").arg(k);
        }
        cmd.arg("--repo").arg(repo);
        cmd
    };
    let repo_cmd = |sub: &str, repo: &Path, key: Option<&Path>| {
        let mut cmd = pitr();
        cmd.arg(sub);
        if let Some(k) = key {
            cmd.arg("--encryption-key-file").arg(k);
        }
        cmd.arg("--repo").arg(repo);
        cmd
    };

    // (a) The encrypted repo without a key.
    let nokey = TestRepo::local(&enc_dir);
    for dir in [&missing, &empty] {
        refused(
            &mut restore(&enc_dir, None, dir),
            Some(dir),
            "restore of an encrypted repo without a key",
            &["encrypted"],
            &[],
            &["not encrypted"],
        );
    }
    for sub in ["list", "verify"] {
        refused(
            &mut repo_cmd(sub, &enc_dir, None),
            None,
            &format!("{sub} of an encrypted repo without a key"),
            &["encrypted"],
            &[],
            &["not encrypted"],
        );
    }
    stream_refused(
        &c,
        &nokey,
        &[],
        &tmp.path().join("refused-a.log"),
        "stream into an encrypted repo without a key",
        &["encrypted"],
        &[],
    );

    // (b) The plain repo with a key.
    refused(
        &mut repo_cmd("list", &plain_dir, Some(&key)),
        None,
        "list of a plain repo with a key",
        &["not encrypted"],
        &[],
        &[],
    );
    refused(
        &mut restore(&plain_dir, Some(&key), &missing),
        Some(&missing),
        "restore of a plain repo with a key",
        &["not encrypted"],
        &[],
        &[],
    );
    stream_refused(
        &c,
        &TestRepo::local(&plain_dir).with_key(&key),
        &[],
        &tmp.path().join("refused-b.log"),
        "stream into a plain repo with a key",
        &["not encrypted"],
        &[],
    );

    // (c) Another generated key on the encrypted repo: the error names the key it needs.
    refused(
        &mut restore(&enc_dir, Some(&wrong), &missing),
        Some(&missing),
        "restore with the wrong key",
        &["the repo's key is"],
        &ids,
        &[],
    );
    refused(
        &mut repo_cmd("list", &enc_dir, Some(&wrong)),
        None,
        "list with the wrong key",
        &["the repo's key is"],
        &ids,
        &[],
    );
    // Through the environment too.
    refused(
        TestRepo::local(&enc_dir)
            .with_key(&wrong)
            .apply(pitr().arg("verify")),
        None,
        "verify with the wrong key (PITR_ENCRYPTION_KEY_FILE)",
        &["the repo's key is"],
        &ids,
        &[],
    );
    stream_refused(
        &c,
        &TestRepo::local(&enc_dir).with_key(&wrong),
        &[],
        &tmp.path().join("refused-c.log"),
        "stream with the wrong key",
        &["the repo's key is"],
        &ids,
    );

    // (d) The right key, in a file others can read.
    let loose_s = loose.display().to_string();
    let mode_words = [
        loose_s.as_str(),
        "0600",
        "0644",
        "permission",
        "mode",
        "readable",
    ];
    refused(
        &mut restore(&enc_dir, Some(&loose), &missing),
        Some(&missing),
        "restore with a 0644 key file",
        &[],
        &mode_words,
        &[],
    );
    refused(
        &mut repo_cmd("list", &enc_dir, Some(&loose)),
        None,
        "list with a 0644 key file",
        &[],
        &mode_words,
        &[],
    );
    refused(
        &mut repo_cmd("list", &plain_dir, Some(&loose)),
        None,
        "list of a plain repo with a 0644 key file",
        &[],
        &mode_words,
        &[],
    );

    // Nothing above wrote to either repo.
    assert_eq!(
        enc.keys(""),
        enc_keys,
        "a refused command wrote to the encrypted repo"
    );
    assert_eq!(
        plain.keys(""),
        plain_keys,
        "a refused command wrote to the plain repo"
    );
    // The right key opens it: list, and a restore (without --verify) writes the directory.
    let o = run(&mut repo_cmd("list", &enc_dir, Some(&key)));
    assert!(o.status.success(), "list with the key: {}", text(&o));
    let dir = restore_dir(tmp.path(), "ok");
    let o = run(&mut restore(&enc_dir, Some(&key), &dir));
    assert!(o.status.success(), "restore with the key: {}", text(&o));
    assert!(dir.join("PG_VERSION").exists(), "{}", text(&o));
    // The plain repo still works without one.
    let o = run(&mut repo_cmd("list", &plain_dir, None));
    assert!(o.status.success(), "plain list: {}", text(&o));
}

/// Replaces a (read-only, published) object's bytes.
fn rewrite(path: &Path, bytes: &[u8]) {
    let _ = std::fs::remove_file(path);
    std::fs::write(path, bytes).unwrap();
}

fn copy_repo(from: &Path, to: &Path) {
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap()
            .success()
    );
}

/// Damage to an encrypted repo's objects, each in its own copy of the repo: a flipped bit in
/// a WAL segment, a truncated backup chunk, segment N's object copied over N+1's (sealed
/// objects swapped between names), a flipped bit in a segment summary. `pitr verify` exits
/// non-zero naming the damaged object; `pitr restore --to latest` (except for the summary)
/// fails in one line naming it and leaves no directory behind.
#[test]
fn tampered_encrypted_objects_are_named() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = new_key(tmp.path(), "repo.key");
    let repo_dir = tmp.path().join("repo");
    let repo = TestRepo::local(&repo_dir).with_key(&key);
    let s = crate::stream::start_stream(&c, &repo, &tmp.path().join("s.log"));
    c.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    let b = backup(&c, &repo, "base");
    // Five segments after the backup, each with some rows.
    let mut names = Vec::new();
    for k in 0..5 {
        c.psql(&format!(
            "INSERT INTO t SELECT generate_series(1, 2000) + {k} * 2000"
        ));
        names.push(switch_and_wait(&c, &repo, 1, "a segment", 60));
    }
    stop(s);
    let next = |n: &str| u64::from_str_radix(&n[8..], 16).unwrap();
    assert_eq!(next(&names[4]), next(&names[3]) + 1, "{names:?}");
    let o = run(repo.apply(pitr().arg("verify")));
    assert!(o.status.success(), "the undamaged repo: {}", text(&o));
    let seg_key = |n: &str| format!("wal/00000001/{n}.lz4");
    let chunk = b["archives"][0]["chunks"][0]["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(repo_dir.join(&chunk).exists(), "{chunk} not in the repo");
    type Damage = (&'static str, String, Box<dyn Fn(&Path)>, bool);
    let flipped = seg_key(&names[1]);
    let swapped_from = seg_key(&names[3]);
    let swapped = seg_key(&names[4]);
    let summary = format!("wal/00000001/{}.summary.json", names[2]);
    let damages: Vec<Damage> = vec![
        (
            "a flipped bit in a WAL segment",
            flipped.clone(),
            Box::new({
                let k = flipped.clone();
                move |d: &Path| {
                    let mut b = std::fs::read(d.join(&k)).unwrap();
                    let at = b.len() / 2;
                    b[at] ^= 0x10;
                    rewrite(&d.join(&k), &b);
                }
            }),
            true,
        ),
        (
            "a truncated backup chunk",
            chunk.clone(),
            Box::new({
                let k = chunk.clone();
                move |d: &Path| {
                    let b = std::fs::read(d.join(&k)).unwrap();
                    rewrite(&d.join(&k), &b[..b.len() / 2]);
                }
            }),
            true,
        ),
        (
            "segment N's object under N+1's name",
            swapped.clone(),
            Box::new({
                let (from, to) = (swapped_from.clone(), swapped.clone());
                move |d: &Path| {
                    let b = std::fs::read(d.join(&from)).unwrap();
                    rewrite(&d.join(&to), &b);
                }
            }),
            true,
        ),
        (
            "a flipped bit in a segment summary",
            summary.clone(),
            Box::new({
                let k = summary.clone();
                move |d: &Path| {
                    let mut b = std::fs::read(d.join(&k)).unwrap();
                    let at = b.len() / 2;
                    b[at] ^= 0x01;
                    rewrite(&d.join(&k), &b);
                }
            }),
            false,
        ),
    ];
    for (n, (what, object, damage, restore_reads_it)) in damages.iter().enumerate() {
        let copy = tmp.path().join(format!("damaged{n}"));
        copy_repo(&repo_dir, &copy);
        assert!(
            copy.join(object).exists(),
            "{what}: {object} not in the repo"
        );
        damage(&copy);
        let drepo = TestRepo::local(&copy).with_key(&key);
        let o = run(drepo.apply(pitr().arg("verify")));
        assert_eq!(o.status.code(), Some(1), "{what}: verify: {}", text(&o));
        let out = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            out.contains(object.as_str()),
            "{what}: verify does not name {object}: {}",
            text(&o)
        );
        if *restore_reads_it {
            let missing = tmp.path().join(format!("restored{n}"));
            refused(
                drepo.apply(
                    pitr()
                        .args(["restore", "--to", "latest", "-D"])
                        .arg(&missing),
                ),
                Some(&missing),
                &format!("restore with {what}"),
                &[object.as_str()],
                &[],
                &[],
            );
        }
    }
}

// ---- Red-team regressions (branch encred). Each fails today. ----

/// Write-once false pass: a stored sealed object whose chunks were damaged (header intact)
/// answers a re-upload of the original plaintext with `AlreadyIdentical`, because
/// `EncryptingStore::put_if_absent` compares only the stored header's digest and never
/// authenticates the stored object. A plain LocalStore in the same situation says
/// `Conflict`. A caller (archiver, spool drain) then believes the repo holds that WAL.
#[test]
fn encred_reupload_over_a_damaged_sealed_object_is_not_identical() {
    use bytes::Bytes;
    use pitr::repo::crypt::{EncryptingStore, KeySource, RepoKey};
    use pitr::repo::local::LocalStore;
    use pitr::repo::store::{ObjectStore, PutOutcome};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    let inner: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(&root).unwrap());
    let key = RepoKey::parse(&RepoKey::generate()).unwrap();
    let s = EncryptingStore::new(inner, KeySource::Symmetric(key));
    let name = "wal/00000001/000000010000000000000003.lz4";
    let plain: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert_eq!(
            s.put_if_absent(name, Bytes::from(plain.clone()))
                .await
                .unwrap(),
            PutOutcome::Created
        );
        // Damage the body, keep the 128-byte header.
        let path = root.join(name);
        let mut b = std::fs::read(&path).unwrap();
        for x in &mut b[200..400] {
            *x ^= 0xff;
        }
        rewrite(&path, &b);
        assert!(s.get(name).await.is_err(), "the damage is detected on read");
        let r = s.put_if_absent(name, Bytes::from(plain.clone())).await;
        assert!(
            !matches!(r, Ok(PutOutcome::AlreadyIdentical)),
            "a damaged stored object was reported identical to the upload: {r:?}"
        );
    });
}

/// Downgrade: an attacker with write access removes `encryption` from `pitr.json`. With the
/// key, pitr refuses (good). Without a key, `pitr stream` takes the repo for a plain one and
/// writes plain WAL (row values readable) next to the sealed objects. It should refuse: the
/// repo holds sealed objects (PITRENC), so the marker was altered or the key is missing.
#[test]
fn encred_stream_without_key_on_a_downgraded_marker_writes_nothing() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = new_key(tmp.path(), "repo.key");
    let dir = tmp.path().join("enc");
    let enc = TestRepo::local(&dir).with_key(&key);
    let s = enc
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--slot",
            "pitr_enc",
            "--source",
            &source(&c),
        ]))
        .spawn_logged(tmp.path().join("enc.log"));
    c.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    switch_and_wait(&c, &enc, 1, "the encrypted archive", 60);
    stop(s);
    let p = dir.join("pitr.json");
    let mut id: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    id.as_object_mut().unwrap().remove("encryption");
    rewrite(&p, &serde_json::to_vec(&id).unwrap());
    let nokey = TestRepo::local(&dir);
    stream_refused(
        &c,
        &nokey,
        &[],
        &tmp.path().join("downgraded.log"),
        "stream without a key on a downgraded marker",
        &[],
        &["encrypted", "sealed"],
    );
}

/// The marker deleted (or never written: objects but no pitr.json). `pitr stream` without a
/// key writes a new plain marker and plain WAL into the encrypted repo. It should refuse:
/// the repo is not empty and its objects are sealed.
#[test]
fn encred_stream_without_key_on_a_removed_marker_writes_nothing() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = new_key(tmp.path(), "repo.key");
    let dir = tmp.path().join("enc");
    let enc = TestRepo::local(&dir).with_key(&key);
    let s = enc
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--slot",
            "pitr_enc",
            "--source",
            &source(&c),
        ]))
        .spawn_logged(tmp.path().join("enc.log"));
    c.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    switch_and_wait(&c, &enc, 1, "the encrypted archive", 60);
    stop(s);
    std::fs::remove_file(dir.join("pitr.json")).unwrap();
    let nokey = TestRepo::local(&dir);
    stream_refused(
        &c,
        &nokey,
        &[],
        &tmp.path().join("removed.log"),
        "stream without a key on a repo with sealed objects and no marker",
        &[],
        &[
            "encrypted",
            "sealed",
            "not empty",
            "pitr.json is missing, but the repo holds objects",
        ],
    );
}

/// Downgrade, then `pitr backup` without a key: nothing in the backup path reads a sealed
/// object first, so the base backup (row values, table names) would be stored in the clear
/// next to the sealed WAL. It should refuse, and every object but pitr.json must stay sealed.
#[test]
fn encred_backup_without_key_on_a_downgraded_marker_stores_nothing_plain() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = new_key(tmp.path(), "repo.key");
    let dir = tmp.path().join("enc");
    let enc = TestRepo::local(&dir).with_key(&key);
    let s = enc
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--slot",
            "pitr_enc",
            "--source",
            &source(&c),
        ]))
        .spawn_logged(tmp.path().join("enc.log"));
    c.psql(&format!(
        "CREATE TABLE {SECRET_TABLE} (id int, v text); INSERT INTO {SECRET_TABLE} VALUES (1, '{SECRET_ROW}')"
    ));
    switch_and_wait(&c, &enc, 1, "the encrypted archive", 60);
    let p = dir.join("pitr.json");
    let mut id: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    id.as_object_mut().unwrap().remove("encryption");
    rewrite(&p, &serde_json::to_vec(&id).unwrap());
    // The keyed stream is still running (it checked the marker at start): that too is a gap.
    let nokey = TestRepo::local(&dir);
    let o = run(nokey.apply(
        pitr()
            .args([
                "backup",
                "--json",
                "--label",
                "downgraded",
                "--wal-timeout",
                "30s",
            ])
            .arg("--source")
            .arg(source(&c)),
    ));
    stop(s);
    let plain: Vec<String> = files_under(&dir)
        .into_iter()
        .filter(|(k, b)| {
            k != "pitr.json"
                && !b.starts_with(SEALED_MAGIC)
                && !(k.starts_with("keys/") && b.starts_with(KEY_OBJECT_MAGIC))
        })
        .map(|(k, _)| k)
        .collect();
    assert!(
        plain.is_empty(),
        "plain objects written into an encrypted repo (backup exit {:?}): {plain:?}",
        o.status.code()
    );
    assert!(
        !o.status.success(),
        "pitr backup without a key succeeded on an encrypted repo"
    );
}

/// A plain (forged) restore point planted in an encrypted repo: `pitr list` and `restore`
/// refuse it (NotSealed), so `pitr verify` must not pass the repo.
#[test]
fn encred_verify_names_a_plain_restore_point_in_an_encrypted_repo() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = new_key(tmp.path(), "repo.key");
    let dir = tmp.path().join("enc");
    let enc = TestRepo::local(&dir).with_key(&key);
    let s = enc
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--slot",
            "pitr_enc",
            "--source",
            &source(&c),
        ]))
        .spawn_logged(tmp.path().join("enc.log"));
    c.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    backup(&c, &enc, "base");
    switch_and_wait(&c, &enc, 1, "the encrypted archive", 60);
    stop(s);
    let ok = run(enc.apply(pitr().arg("verify")));
    assert!(ok.status.success(), "verify before planting: {}", text(&ok));
    std::fs::create_dir_all(dir.join("points")).unwrap();
    std::fs::write(
        dir.join("points/00000000FF000000.json"),
        br#"{"name":"forged","lsn":"0/FF000000","time":"2026-12-02T17:00:00Z"}"#,
    )
    .unwrap();
    let l = run(enc.apply(pitr().arg("list")));
    let v = run(enc.apply(pitr().arg("verify")));
    assert!(
        !v.status.success() && text(&v).contains("points/00000000FF000000.json"),
        "verify passed (or did not name the plain point) while list says {:?}:\n{}",
        text(&l),
        text(&v)
    );
}

/// The converse of the removed marker: a plain repo whose pitr.json is gone (deleted, or an
/// S3 listing of objects with the marker not yet readable), streamed with a key. pitr writes
/// an encrypted marker over plain objects, so the repo is then "encrypted" and its plain
/// objects refused. It should refuse to claim a non-empty repo.
#[test]
fn encred_keyed_stream_on_a_plain_repo_without_marker_writes_nothing() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let (key, _) = new_key(tmp.path(), "repo.key");
    let dir = tmp.path().join("plain");
    let plain = TestRepo::local(&dir);
    let s = plain
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--slot",
            "pitr_plain",
            "--source",
            &source(&c),
        ]))
        .spawn_logged(tmp.path().join("plain.log"));
    c.psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)");
    switch_and_wait(&c, &plain, 1, "the plain archive", 60);
    stop(s);
    std::fs::remove_file(dir.join("pitr.json")).unwrap();
    let keyed = TestRepo::local(&dir).with_key(&key);
    stream_refused(
        &c,
        &keyed,
        &[],
        &tmp.path().join("keyed.log"),
        "keyed stream on a plain repo without marker",
        &[],
        &["not encrypted", "not empty", "plain"],
    );
}

/// Concurrent identical uploads through the encrypting store: all succeed, one object stays.
#[test]
fn encred_concurrent_identical_sealed_uploads() {
    use bytes::Bytes;
    use pitr::repo::crypt::{EncryptingStore, KeySource, RepoKey};
    use pitr::repo::local::LocalStore;
    use pitr::repo::store::{ObjectStore, PutOutcome};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let inner: Arc<dyn ObjectStore> = Arc::new(LocalStore::open(&tmp.path().join("repo")).unwrap());
    let key = RepoKey::parse(&RepoKey::generate()).unwrap();
    let s = Arc::new(EncryptingStore::new(inner, KeySource::Symmetric(key)));
    let plain = Bytes::from(
        (0..300_000u32)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let s = s.clone();
            let p = plain.clone();
            set.spawn(async move { s.put_if_absent("wal/x", p).await });
        }
        let mut created = 0;
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(PutOutcome::Created) => created += 1,
                Ok(PutOutcome::AlreadyIdentical) => {}
                other => panic!("concurrent identical upload: {other:?}"),
            }
        }
        assert_eq!(created, 1);
        assert_eq!(s.get("wal/x").await.unwrap().unwrap(), plain);
    });
}

/// Key rotation under a running `pitr stream`, as an operator runs it: the stream (old key)
/// keeps archiving while `pitr key rotate` stores every data key for the new key; a mark is
/// made with the new key; the old key is retired while the stream still runs. Then, with
/// only the new key, `restore --to` a time before the rotation and the mark after it both
/// prove their rows (`--verify`), `verify` reads every object, and the old key is refused by
/// `list` and by a new `stream`, naming the new key. A retire that would strand a data key
/// (a process started with the old key after the rotation) is refused, deleting nothing.
#[test]
fn rotation_under_a_running_stream_keeps_every_object_readable_with_only_the_new_key() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, opts().conf("track_commit_timestamp = on"));
    let tmp = tempfile::tempdir().unwrap();
    let (old, _) = new_key(tmp.path(), "old.key");
    let (new, _) = new_key(tmp.path(), "new.key");
    let dir = tmp.path().join("repo");
    let with_old = TestRepo::local(&dir).with_key(&old);
    let with_new = TestRepo::local(&dir).with_key(&new);
    let stream = with_old
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--slot",
            "pitr_rot",
            "--source",
            &source(&c),
        ]))
        .spawn_logged(tmp.path().join("stream.log"));
    c.psql("CREATE TABLE rot (id int PRIMARY KEY)");
    backup(&c, &with_old, "before");
    c.psql("INSERT INTO rot VALUES (1)");
    switch_and_wait(&c, &with_old, 1, "row 1 archived", 60);
    std::thread::sleep(Duration::from_millis(50));
    let before =
        c.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')");
    std::thread::sleep(Duration::from_millis(50));
    c.psql("INSERT INTO rot VALUES (2)");

    // Rotate while the stream runs: only key objects are written.
    let count = |d: &Path| files_under(d).len();
    let n_before = count(&dir);
    let o = run(with_old.apply(
        pitr()
            .args(["key", "rotate", "--json", "--to-key-file"])
            .arg(&new),
    ));
    assert!(o.status.success(), "rotate: {}", text(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        r["wrapped"].as_u64().unwrap() >= 2,
        "stream and backup data keys: {r:#}"
    );
    let new_objects: Vec<String> = files_under(&dir)
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("keys/"))
        .collect();
    assert!(count(&dir) >= n_before, "nothing removed");
    assert!(new_objects.len() >= 4, "{new_objects:?}");

    // A mark with the new key (its own data key), then more WAL from the old-key stream.
    let o = run(with_new.apply(
        pitr()
            .args(["mark", "after_rotation"])
            .arg("--source")
            .arg(format!("{} dbname=postgres", source(&c))),
    ));
    assert!(o.status.success(), "mark with the new key: {}", text(&o));
    c.psql("INSERT INTO rot VALUES (3)");
    switch_and_wait(&c, &with_old, 1, "row 3 archived by the old-key stream", 60);

    // A process started with the old key after the rotation makes a data key only the old
    // key opens: retiring the old key now is refused and deletes nothing.
    let o = run(with_old.apply(
        pitr()
            .args(["mark", "late_old_key"])
            .arg("--source")
            .arg(format!("{} dbname=postgres", source(&c))),
    ));
    assert!(o.status.success(), "mark with the old key: {}", text(&o));
    let old_id =
        key_ids(&serde_json::from_slice(&std::fs::read(dir.join("pitr.json")).unwrap()).unwrap())
            [0]
        .clone();
    let keys_now = files_under(&dir.join("keys")).len();
    let o = run(with_new.apply(pitr().args(["key", "retire", "--key-id", &old_id])));
    assert!(
        !o.status.success(),
        "retire stranding a data key: {}",
        text(&o)
    );
    assert!(text(&o).contains("only key"), "{}", text(&o));
    assert_eq!(
        files_under(&dir.join("keys")).len(),
        keys_now,
        "deleted on refusal"
    );
    // Rotate again, then retire, while the stream still runs.
    let o = run(with_old.apply(pitr().args(["key", "rotate", "--to-key-file"]).arg(&new)));
    assert!(o.status.success(), "rotate again: {}", text(&o));
    let o = run(with_new.apply(pitr().args(["key", "retire", "--key-id", &old_id])));
    assert!(o.status.success(), "retire: {}", text(&o));
    c.psql("INSERT INTO rot VALUES (4)");
    switch_and_wait(&c, &with_old, 1, "row 4 archived after the retirement", 60);
    stop(stream);

    // Only the new key opens the repo; the old one is refused, naming the new key.
    let o = run(with_new.apply(pitr().args(["key", "list", "--json"])));
    assert!(o.status.success(), "key list: {}", text(&o));
    let l: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(l.as_array().unwrap().len(), 1, "{l:#}");
    let new_id = l[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(l[0]["data_keys"], l[0]["of"], "{l:#}");
    let o = run(with_old.apply(pitr().arg("list")));
    assert!(
        !o.status.success(),
        "list with the retired key: {}",
        text(&o)
    );
    assert!(
        text(&o).contains(&new_id) && text(&o).contains("retired"),
        "{}",
        text(&o)
    );
    let o =
        run(with_old.apply(pitr().args(["stream", "--slot", "pitr_rot", "--source", &source(&c)])));
    assert!(
        !o.status.success(),
        "stream with the retired key: {}",
        text(&o)
    );
    assert!(text(&o).contains(&new_id), "{}", text(&o));
    let o = run(with_new.apply(pitr().arg("verify")));
    assert!(o.status.success(), "verify with the new key: {}", text(&o));

    let check =
        |want: &str| format!("SELECT string_agg(id::text, ',' ORDER BY id) FROM rot => {want}");
    let d = restore_dir(tmp.path(), "before");
    restore_verify(
        &with_new,
        &install,
        &d,
        &["--to", &before],
        &[&check("1")],
        &[],
    );
    let d = restore_dir(tmp.path(), "after");
    restore_verify(
        &with_new,
        &install,
        &d,
        &["--to-name", "after_rotation"],
        &[&check("1,2")],
        &[],
    );
    let d = restore_dir(tmp.path(), "latest");
    restore_verify(
        &with_new,
        &install,
        &d,
        &["--to", "latest"],
        &[&check("1,2,3,4")],
        &[],
    );
}

/// `pitr stream --print-config` shows that encryption is on, with the key's kind, file and id,
/// and never the key itself; with a recipient it shows the (public) recipient and `reads =
/// false`; without a key it says the repo is plain.
#[test]
fn print_config_shows_the_key_kind_and_id_but_never_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, key_text) = new_key(tmp.path(), "repo.key");
    let secret_line = key_text
        .lines()
        .find(|l| !l.starts_with('#'))
        .expect("a key line")
        .to_owned();
    let base = [
        "stream",
        "--print-config",
        "--repo",
        "/tmp/r",
        "--source",
        "host=x",
    ];
    let o = run(pitr().args(base).arg("--encryption-key-file").arg(&key));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("[encryption]"), "{out}");
    assert!(out.contains("key = \"symmetric key\""), "{out}");
    assert!(
        out.contains(&format!("encryption_key_file = \"{}\"", key.display())),
        "{out}"
    );
    assert!(out.contains("# --encryption-key-file"), "{out}");
    let id_line = out.lines().find(|l| l.starts_with("key_id = ")).unwrap();
    assert_eq!(id_line.len(), "key_id = \"\"".len() + 16, "{out}");
    assert!(
        !out.contains(&secret_line),
        "the key itself is shown: {out}"
    );
    assert!(
        !String::from_utf8_lossy(&o.stderr).contains(&secret_line),
        "{}",
        text(&o)
    );
    // From the environment, the source says so.
    let o = run(pitr().args(base).env("PITR_ENCRYPTION_KEY_FILE", &key));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("# PITR_ENCRYPTION_KEY_FILE"), "{}", text(&o));
    // A recipient: public, shown; it cannot read.
    let o = run(pitr().args(["key", "generate", "--recipient"]));
    assert!(o.status.success(), "{}", text(&o));
    let identity = String::from_utf8_lossy(&o.stdout).into_owned();
    let recipient = identity
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("a public key line")
        .trim()
        .to_owned();
    let o = run(pitr().args(base).args(["--recipient", &recipient]));
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("key = \"recipient\""), "{out}");
    assert!(
        out.contains(&format!("recipient = \"{recipient}\"")),
        "{out}"
    );
    assert!(out.contains("reads = false"), "{out}");
    let secret = identity
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .expect("a secret key line");
    assert!(!out.contains(secret), "{out}");
    // No key: plain.
    let o = run(pitr().args(base));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(out.contains("[encryption]\nkey = \"none\""), "{}", text(&o));
}
