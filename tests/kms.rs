//! AWS KMS as the repo's key source (`--kms-key-id`, cargo feature `kms`), against moto's
//! real KMS API on loopback: the wrap and unwrap calls and their encryption context, the
//! start-up check (unknown, disabled, non-symmetric keys, an unreachable KMS), a sealed store
//! over KMS, and the CLI end to end (stream, backup, restore, verify, rotation between a
//! key file and KMS keys, a wrong KMS key refused) with a real PostgreSQL.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use pitr::repo::crypt::{CryptError, EncryptingStore, KeySource, RemoteKek};
use pitr::repo::kms::{self, KmsOptions};
use pitr::repo::memory::MemoryStore;
use pitr::repo::store::{ObjectStore, StoreErrorKind};
use testkit::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use testkit::{Cluster, PgInstall};

use crate::restore::{backup, restore_dir, restore_verify, run, text};
use crate::stream::{SpawnLogged, TestRepo, opts, pitr, source, stop, switch_and_wait};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn options(srv: &S3Server) -> KmsOptions {
    KmsOptions {
        endpoint: Some(srv.endpoint()),
        region: Some("us-east-1".into()),
        keys: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
    }
}

/// A new symmetric encryption key on the server; returns its ARN.
async fn create_key(srv: &S3Server) -> String {
    let c = kms::client(&options(srv)).await.unwrap();
    let out = c
        .create_key()
        .description("pitr test")
        .send()
        .await
        .unwrap();
    out.key_metadata().unwrap().arn().unwrap().to_owned()
}

async fn open(srv: &S3Server, key: &str) -> Result<Arc<dyn RemoteKek>, CryptError> {
    kms::open_with(key, &options(srv)).await
}

#[test]
fn kms_wraps_and_unwraps_a_data_key_bound_to_its_id() {
    let srv = S3Server::moto();
    rt().block_on(async {
        let arn = create_key(&srv).await;
        let kek = open(&srv, &arn).await.unwrap();
        assert_eq!(kek.name(), arn);
        let dk = [7u8; 32];
        let blob = kek.wrap("0011223344556677", &dk).await.unwrap();
        assert!(!blob.is_empty());
        assert!(
            !blob.windows(32).any(|w| w == dk),
            "the data key is in the KMS ciphertext"
        );
        assert_eq!(kek.unwrap("0011223344556677", &blob).await.unwrap(), dk);
        // The encryption context binds the ciphertext to the data key id.
        let e = kek.unwrap("8899aabbccddeeff", &blob).await.unwrap_err();
        assert!(matches!(e, CryptError::Tampered(_)), "{e:?}");
        // An altered ciphertext opens nothing either.
        let mut bad = blob.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = kek.unwrap("0011223344556677", &bad).await.unwrap_err();
        assert!(matches!(e, CryptError::Tampered(_)), "{e:?}");
        // The same key by alias and by bare id: the same KEK (its id derives from the ARN).
        let c = kms::client(&options(&srv)).await.unwrap();
        c.create_alias()
            .alias_name("alias/pitr-test")
            .target_key_id(&arn)
            .send()
            .await
            .unwrap();
        let by_alias = open(&srv, "alias/pitr-test").await.unwrap();
        let bare = arn.rsplit('/').next().unwrap();
        let by_id = open(&srv, bare).await.unwrap();
        let id = KeySource::Remote(kek.clone()).id_hex();
        assert_eq!(KeySource::Remote(by_alias.clone()).id_hex(), id);
        assert_eq!(KeySource::Remote(by_id).id_hex(), id);
        assert_eq!(
            by_alias.unwrap("0011223344556677", &blob).await.unwrap(),
            dk
        );
        // Another key: another KEK id, and it does not open the first key's ciphertext.
        let other = open(&srv, &create_key(&srv).await).await.unwrap();
        assert_ne!(KeySource::Remote(other.clone()).id_hex(), id);
        assert!(other.unwrap("0011223344556677", &blob).await.is_err());
    });
}

#[test]
fn kms_unknown_disabled_and_unfit_keys_are_refused_in_one_line() {
    let srv = S3Server::moto();
    rt().block_on(async {
        for key in ["alias/no-such-key", "3f6a0a5e-52c4-4a5e-9c1c-9a1e7d4c2b10"] {
            let e = open(&srv, key).await.unwrap_err();
            let m = e.to_string();
            assert!(matches!(e, CryptError::BadKey(_)), "{e:?}");
            assert!(
                m.contains(&format!("KMS key {key}: not found in region us-east-1")),
                "{m}"
            );
            assert!(!m.contains('\n'), "{m}");
        }
        let arn = create_key(&srv).await;
        let c = kms::client(&options(&srv)).await.unwrap();
        // moto's DisableKey and EnableKey take the bare key id only.
        let bare = arn.rsplit('/').next().unwrap();
        c.disable_key().key_id(bare).send().await.unwrap();
        let e = open(&srv, &arn).await.unwrap_err();
        assert!(matches!(e, CryptError::BadKey(_)), "{e:?}");
        let m = e.to_string();
        assert!(m.contains(&format!("KMS key {arn}: disabled")), "{m}");
        assert!(m.contains("enable-key"), "{m}");
        c.enable_key().key_id(bare).send().await.unwrap();
        open(&srv, &arn).await.unwrap();
        // An asymmetric key, and an HMAC key: not what pitr wraps with.
        let rsa = c
            .create_key()
            .key_spec(aws_sdk_kms::types::KeySpec::Rsa2048)
            .key_usage(aws_sdk_kms::types::KeyUsageType::EncryptDecrypt)
            .send()
            .await
            .unwrap();
        let rsa = rsa.key_metadata().unwrap().arn().unwrap().to_owned();
        let m = open(&srv, &rsa).await.unwrap_err().to_string();
        assert!(
            m.contains("key spec RSA_2048") && m.contains("SYMMETRIC_DEFAULT"),
            "{m}"
        );
        let sign = c
            .create_key()
            .key_spec(aws_sdk_kms::types::KeySpec::EccNistP256)
            .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
            .send()
            .await
            .unwrap();
        let sign = sign.key_metadata().unwrap().arn().unwrap().to_owned();
        let m = open(&srv, &sign).await.unwrap_err().to_string();
        assert!(m.contains("key usage SIGN_VERIFY"), "{m}");
        // No value at all.
        let m = open(&srv, " ").await.unwrap_err().to_string();
        assert!(m.contains("--kms-key-id needs a value"), "{m}");
    });
}

#[test]
fn kms_unreachable_is_transient_and_names_the_endpoint() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = KmsOptions {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("eu-west-1".into()),
        keys: Some((ACCESS_KEY.into(), SECRET_KEY.into())),
    };
    let e = rt().block_on(kms::open_with("alias/x", &o)).unwrap_err();
    assert!(matches!(e, CryptError::Unavailable(_)), "{e:?}");
    let m = e.to_string();
    assert!(
        m.contains("KMS key alias/x: DescribeKey")
            && m.contains(&format!("region eu-west-1 at http://127.0.0.1:{port}")),
        "{m}"
    );
}

#[test]
fn kms_sealed_store_reads_back_across_processes_and_refuses_another_key() {
    let srv = S3Server::moto();
    rt().block_on(async {
        let a = open(&srv, &create_key(&srv).await).await.unwrap();
        let b = open(&srv, &create_key(&srv).await).await.unwrap();
        let inner: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let first = EncryptingStore::new(inner.clone(), KeySource::Remote(a.clone()));
        let plain = Bytes::from_static(b"wal segment bytes, secret-kms-row");
        first
            .put_if_absent("wal/00000001/x.lz4", plain.clone())
            .await
            .unwrap();
        assert_eq!(
            first.get("wal/00000001/x.lz4").await.unwrap().unwrap(),
            plain
        );
        // At rest: sealed, and one key object of kind 3 (KMS) holding the KMS ciphertext.
        let raw = inner.get("wal/00000001/x.lz4").await.unwrap().unwrap();
        assert!(raw.starts_with(b"PITRENC"));
        assert!(!raw.windows(14).any(|w| w == b"secret-kms-row"));
        let keys = inner.list("keys/").await.unwrap();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let ko = inner.get(&keys[0].key).await.unwrap().unwrap();
        assert!(ko.starts_with(b"PITRKEY"));
        assert_eq!(ko[8], 3, "kind 3: KMS");
        let a_id = KeySource::Remote(a.clone()).id_hex();
        assert!(keys[0].key.ends_with(&format!(".{a_id}.key")), "{keys:?}");
        // Another process with the same KMS key (a new data key of its own) reads it, and
        // its own writes.
        let second = EncryptingStore::new(inner.clone(), KeySource::Remote(a.clone()));
        assert_eq!(
            second.get("wal/00000001/x.lz4").await.unwrap().unwrap(),
            plain
        );
        second
            .put_if_absent("wal/00000001/y.lz4", Bytes::from_static(b"y"))
            .await
            .unwrap();
        // A retried identical upload is identical; other bytes are a conflict.
        assert!(
            second
                .put_if_absent("wal/00000001/x.lz4", plain.clone())
                .await
                .is_ok()
        );
        let e = second
            .put_if_absent("wal/00000001/x.lz4", Bytes::from_static(b"other"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Conflict, "{e}");
        // Another KMS key is refused, naming the key id that opens the object.
        let wrong = EncryptingStore::new(inner.clone(), KeySource::Remote(b.clone()));
        let e = wrong.get("wal/00000001/x.lz4").await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
        let m = e.to_string();
        assert!(
            m.contains(&format!("which only key {a_id} opens"))
                && m.contains(&KeySource::Remote(b).id_hex()),
            "{m}"
        );
    });
}

/// The environment a `pitr` process needs for moto's KMS: credentials, region, and the
/// KMS-only endpoint variable (the repo itself is local).
fn kms_env(srv: &S3Server) -> Vec<(&'static str, String)> {
    srv.env()
        .into_iter()
        .map(|(k, v)| match k {
            "AWS_ENDPOINT_URL" => ("AWS_ENDPOINT_URL_KMS", v),
            _ => (k, v),
        })
        .collect()
}

/// `pitr key generate` into `path`, mode 0600.
fn new_key_file(path: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let o = run(pitr().args(["key", "generate"]));
    assert!(o.status.success(), "pitr key generate: {}", text(&o));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap()
        .write_all(&o.stdout)
        .unwrap();
}

/// `pitr` on the repo at `dir` with the KMS environment and `key_args`; asserts success.
fn pitr_ok(srv: &S3Server, dir: &Path, key_args: &[&str], args: &[&str]) -> String {
    let o = run(pitr()
        .envs(kms_env(srv))
        .args(key_args)
        .args(args)
        .arg("--repo")
        .arg(dir));
    assert!(
        o.status.success(),
        "pitr {key_args:?} {args:?}: {}",
        text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `pitr` on the repo at `dir`, expected to fail in one line; returns stderr.
fn pitr_refused(srv: &S3Server, dir: &Path, key_args: &[&str], args: &[&str]) -> String {
    let o = run(pitr()
        .envs(kms_env(srv))
        .env("PITR_LOG", "off")
        .args(key_args)
        .args(args)
        .arg("--repo")
        .arg(dir));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    String::from_utf8_lossy(&o.stderr).trim().to_owned()
}

/// The user's path, on one major: `pitr stream` and `pitr backup` with `--kms-key-id`
/// (through `PITR_KMS_KEY_ID`, the endpoint through `AWS_ENDPOINT_URL_KMS` only), `pitr
/// restore --verify` and `pitr verify` with it; then rotation from KMS key A to a key file,
/// from the file to KMS key B, the old keys retired, and everything written under A
/// restored with B alone; A, a retired key, and an unknown KMS key are refused in one line.
#[test]
fn kms_cli_stream_backup_restore_verify_and_rotation() {
    let install = PgInstall::for_tests().pop().unwrap();
    let srv = S3Server::moto();
    let (a, b, a_id, b_id) = rt().block_on(async {
        let a = create_key(&srv).await;
        let b = create_key(&srv).await;
        let a_id = KeySource::Remote(open(&srv, &a).await.unwrap()).id_hex();
        let b_id = KeySource::Remote(open(&srv, &b).await.unwrap()).id_hex();
        (a, b, a_id, b_id)
    });
    let c = Cluster::start(&install, opts());
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("repo");
    let repo = TestRepo::local(&dir).with_env({
        let mut e = kms_env(&srv);
        e.push(("PITR_KMS_KEY_ID", a.clone()));
        e
    });
    let s = repo
        .apply(pitr().args([
            "stream",
            "--partial-every",
            "200ms",
            "--slot",
            "pitr_kms",
            "--source",
            &source(&c),
        ]))
        .spawn_logged(tmp.path().join("stream.log"));
    c.psql("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL); INSERT INTO t VALUES (0, 'kms-secret-row')");
    let entry = backup(&c, &repo, "base");
    assert_eq!(entry["pg_major"], install.major, "{entry:#}");
    c.psql("INSERT INTO t SELECT g, 'kms-secret-row' FROM generate_series(1, 5) g");
    switch_and_wait(&c, &repo, 1, "the KMS-encrypted archive", 60);
    stop(s);
    let check = "SELECT count(*) FROM t WHERE v = 'kms-secret-row' => 6";
    let v = restore_verify(
        &repo,
        &install,
        &restore_dir(tmp.path(), "r1"),
        &[],
        &[check],
        &[],
    );
    assert_eq!(v["verify"]["checks"][0]["ok"], true, "{v:#}");
    let o = run(repo.apply(pitr().arg("verify")));
    assert!(o.status.success(), "verify: {}", text(&o));
    // At rest: every key object is of kind 3 and for A; no plaintext row anywhere.
    let mut key_objects = 0;
    for e in walk(&dir) {
        let bytes = std::fs::read(&e).unwrap();
        assert!(
            !bytes.windows(14).any(|w| w == b"kms-secret-row"),
            "{} holds the row",
            e.display()
        );
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".key") {
            key_objects += 1;
            assert!(name.ends_with(&format!(".{a_id}.key")), "{name}");
            assert_eq!(bytes[8], 3, "{name}: kind 3 (KMS)");
        }
    }
    assert!(key_objects >= 2, "stream and backup each stored a data key");

    // Rotation: A -> key file -> B, retiring A and the file.
    let kf = tmp.path().join("repo.key");
    new_key_file(&kf);
    let kf = kf.display().to_string();
    let a_args = ["--kms-key-id", a.as_str()];
    let b_args = ["--kms-key-id", b.as_str()];
    let f_args = ["--encryption-key-file", kf.as_str()];
    pitr_ok(
        &srv,
        &dir,
        &a_args,
        &["key", "rotate", "--to-key-file", &kf],
    );
    pitr_ok(&srv, &dir, &f_args, &["verify"]);
    let out = pitr_ok(
        &srv,
        &dir,
        &f_args,
        &["key", "rotate", "--to-kms-key-id", &b],
    );
    assert!(
        out.contains(&format!("key {b_id} now opens every data key")),
        "{out}"
    );
    let listed = pitr_ok(&srv, &dir, &b_args, &["key", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed:#}");
    pitr_ok(&srv, &dir, &b_args, &["key", "retire", "--key-id", &a_id]);
    let f_id = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_owned())
        .find(|id| *id != a_id && *id != b_id)
        .unwrap();
    pitr_ok(&srv, &dir, &b_args, &["key", "retire", "--key-id", &f_id]);
    // Only B now: everything A's processes wrote restores with it.
    let repo_b = TestRepo::local(&dir).with_env({
        let mut e = kms_env(&srv);
        e.push(("PITR_KMS_KEY_ID", b.clone()));
        e
    });
    let v = restore_verify(
        &repo_b,
        &install,
        &restore_dir(tmp.path(), "r2"),
        &[],
        &[check],
        &[],
    );
    assert_eq!(v["verify"]["checks"][0]["ok"], true, "{v:#}");
    pitr_ok(&srv, &dir, &b_args, &["verify"]);
    // A (retired) and an unknown KMS key are refused in one line, naming the key needed.
    let m = pitr_refused(&srv, &dir, &a_args, &["list"]);
    assert!(
        m.contains(&format!(
            "the repo's key is {b_id}, and the KMS key given is {a_id} ({a})"
        )),
        "{m}"
    );
    assert_eq!(m.lines().count(), 1, "{m}");
    let m = pitr_refused(&srv, &dir, &["--kms-key-id", "alias/nope"], &["list"]);
    assert!(
        m.contains("KMS key alias/nope: not found in region us-east-1"),
        "{m}"
    );
    assert_eq!(m.lines().count(), 1, "{m}");
}

fn walk(d: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// KMS going away after the start: sealing a new object (whose data key `Encrypt` wraps) is a
/// transient storage error, which the retrying store retries, never a permanent one; the
/// message names the key and the call, and holds no key material.
#[test]
fn kms_outage_after_start_is_a_transient_store_error() {
    let srv = S3Server::moto();
    let r = rt();
    let kek = r.block_on(async { open(&srv, &create_key(&srv).await).await.unwrap() });
    let arn = kek.name().to_owned();
    drop(srv);
    r.block_on(async {
        let inner: Arc<dyn ObjectStore> = Arc::new(MemoryStore::new());
        let sealed = EncryptingStore::new(inner.clone(), KeySource::Remote(kek));
        let e = sealed
            .put_if_absent("wal/00000001/x.lz4", Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Transient, "{e}");
        let m = e.to_string();
        assert!(m.contains(&format!("KMS key {arn}: Encrypt")), "{m}");
        assert!(inner.list("").await.unwrap().is_empty(), "nothing stored");
    });
}
