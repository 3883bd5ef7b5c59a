//! One conformance suite for every repo backend (the contract in `src/repo/store.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pitr::repo::local::LocalStore;
use pitr::repo::memory::{FaultyStore, MemoryStore};
use pitr::repo::retrying::{RetryPolicy, RetryingStore};
use pitr::repo::store::{ObjectStore, PutOutcome, StoreErrorKind};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `atomic_create`: whether concurrent creators of one key are serialised by the server.
/// s3s-fs 0.14 checks `If-None-Match` and then writes (`put_object` in its `s3.rs`), so two
/// racing creators can both succeed there; AWS S3, moto, and our local and memory stores
/// serialise them.
async fn conformance(s: Arc<dyn ObjectStore>, atomic_create: bool) {
    let name = s.describe();
    let a = Bytes::from_static(b"first content");
    let b = Bytes::from_static(b"other content");
    assert_eq!(
        s.get("wal/00000001/x").await.unwrap(),
        None,
        "{name}: missing is None"
    );
    assert_eq!(
        s.put_if_absent("wal/00000001/x", a.clone()).await.unwrap(),
        PutOutcome::Created
    );
    assert_eq!(s.get("wal/00000001/x").await.unwrap(), Some(a.clone()));
    // A retried upload of the same bytes succeeds; different bytes never replace.
    assert_eq!(
        s.put_if_absent("wal/00000001/x", a.clone()).await.unwrap(),
        PutOutcome::AlreadyIdentical
    );
    let e = s
        .put_if_absent("wal/00000001/x", b.clone())
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Conflict, "{name}: {e}");
    assert!(
        e.to_string().contains("wal/00000001/x"),
        "names the object: {e}"
    );
    assert_eq!(
        s.get("wal/00000001/x").await.unwrap(),
        Some(a.clone()),
        "{name}: untouched"
    );
    // Listing: sorted, by prefix, sizes.
    for k in [
        "wal/00000002/b",
        "wal/00000001/y",
        "pitr.json",
        "wal/00000002/a",
    ] {
        s.put_if_absent(k, b.clone()).await.unwrap();
    }
    let keys: Vec<String> = s
        .list("wal/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(
        keys,
        [
            "wal/00000001/x",
            "wal/00000001/y",
            "wal/00000002/a",
            "wal/00000002/b"
        ],
        "{name}"
    );
    let l = s.list("wal/00000002/").await.unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].size, b.len() as u64);
    assert!(s.list("nothing/").await.unwrap().is_empty());
    // Delete, and delete of a missing key.
    s.delete("wal/00000002/a").await.unwrap();
    s.delete("wal/00000002/a").await.unwrap();
    assert_eq!(s.get("wal/00000002/a").await.unwrap(), None);
    // Bad keys are refused.
    for k in ["", "/abs", "a/../b", "a//b", "a/./b", "sp ace"] {
        let e = s.put_if_absent(k, a.clone()).await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Permanent, "{name}: key {k:?}: {e}");
    }
    // A large object round-trips.
    let big = Bytes::from(
        (0..20u32 << 20)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    s.put_if_absent("big/obj", big.clone()).await.unwrap();
    assert_eq!(s.get("big/obj").await.unwrap().unwrap(), big);
    // ... and, being large (multipart on S3), keeps the create-if-absent contract.
    assert_eq!(
        s.put_if_absent("big/obj", big.clone()).await.unwrap(),
        PutOutcome::AlreadyIdentical,
        "{name}"
    );
    let mut other = big.to_vec();
    other[12 << 20] ^= 1;
    let e = s
        .put_if_absent("big/obj", Bytes::from(other))
        .await
        .unwrap_err();
    assert_eq!(e.kind, StoreErrorKind::Conflict, "{name}: {e}");
    assert_eq!(s.get("big/obj").await.unwrap().unwrap(), big, "{name}");
    if !atomic_create {
        return;
    }
    // Racing creators of one key: exactly one wins, the other is told.
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.put_if_absent("race/k", Bytes::from(vec![i; 1000])).await
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(PutOutcome::Created) => created += 1,
            Ok(PutOutcome::AlreadyIdentical) => {
                panic!("{name}: different bytes reported identical")
            }
            Err(e) => assert_eq!(e.kind, StoreErrorKind::Conflict, "{e}"),
        }
    }
    assert_eq!(created, 1, "{name}: exactly one creator");
}

#[test]
fn local_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(&dir.path().join("repo")).unwrap();
    rt().block_on(conformance(Arc::new(s), true));
    // No temporary files are left behind, and they would not be listed anyway.
    let leftovers: Vec<_> = walk(&dir.path().join("repo"))
        .into_iter()
        .filter(|p| p.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::write(dir.path().join("repo/wal/.tmp-crashed-1"), b"x").unwrap();
    let s = LocalStore::open(&dir.path().join("repo")).unwrap();
    let keys = rt().block_on(s.list("wal/")).unwrap();
    assert!(keys.iter().all(|o| !o.key.contains(".tmp-")));
}

fn walk(d: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[test]
fn memory_store_conforms() {
    rt().block_on(conformance(Arc::new(MemoryStore::new()), true));
}

#[test]
fn faulty_store_with_retries_conforms_and_recovers_lost_acks() {
    rt().block_on(async {
        let f = FaultyStore::new(MemoryStore::new());
        conformance(Arc::new(f.clone()), true).await;
        // Transient failures are retried until they pass.
        let retrying =
            RetryingStore::new(f.clone(), RetryPolicy::forever(Duration::from_millis(5)));
        f.fail_next(3);
        let r = retrying
            .put_if_absent("r/1", Bytes::from_static(b"v"))
            .await;
        assert_eq!(r.unwrap(), PutOutcome::Created);
        // The write took effect but its acknowledgement was lost: the retry finds the same
        // bytes there and succeeds.
        f.lose_ack_next(1);
        let r = retrying
            .put_if_absent("r/2", Bytes::from_static(b"w"))
            .await;
        assert_eq!(r.unwrap(), PutOutcome::AlreadyIdentical);
        // Permanent errors are not retried.
        let r = retrying
            .put_if_absent("r/1", Bytes::from_static(b"other"))
            .await;
        assert_eq!(r.unwrap_err().kind, StoreErrorKind::Conflict);
    });
}

async fn s3_store(srv: &testkit::s3::S3Server, prefix: &str) -> pitr::repo::s3::S3Store {
    let url = srv.repo_url(prefix);
    let loc = pitr::repo::s3::S3Location::parse(url.strip_prefix("s3://").unwrap()).unwrap();
    let keys = (
        testkit::s3::ACCESS_KEY.to_owned(),
        testkit::s3::SECRET_KEY.to_owned(),
    );
    let s = pitr::repo::s3::S3Store::open_with(loc, Some(keys)).await;
    s.check().await.unwrap();
    s
}

#[test]
fn s3s_fs_store_conforms() {
    let srv = testkit::s3::S3Server::s3s_fs();
    rt().block_on(async {
        // Twice: at the bucket root and under a prefix, which listings must strip.
        conformance(Arc::new(s3_store(&srv, "").await), false).await;
        conformance(Arc::new(s3_store(&srv, "some/prefix").await), false).await;
        // The prefix isolates: the root store sees the prefixed objects under their full key.
        let root = s3_store(&srv, "").await;
        let keys: Vec<String> = root
            .list("some/")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert!(
            keys.contains(&"some/prefix/pitr.json".to_owned()),
            "{keys:?}"
        );
    });
    // The 20 MiB object went up in parts (its ETag is a multipart one, "...-3"), and no
    // multipart upload was left open.
    let dir = srv.bucket_dir().unwrap();
    assert!(dir.join("big/obj").exists());
    let root = dir.parent().unwrap();
    let mut etag_multipart = false;
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".upload-"),
            "open multipart upload: {name}"
        );
        // s3s-fs names its metadata files by the base64 of the key ("big/obj").
        if name.ends_with("YmlnL29iag.internal.json") {
            let info = std::fs::read_to_string(e.path()).unwrap();
            etag_multipart |= info.contains("-3");
        }
    }
    assert!(etag_multipart, "big/obj was not a 3-part upload");
}

#[test]
fn moto_store_conforms() {
    let srv = testkit::s3::S3Server::moto();
    rt().block_on(async {
        conformance(Arc::new(s3_store(&srv, "").await), true).await;
        conformance(Arc::new(s3_store(&srv, "p").await), true).await;
    });
}

#[test]
fn s3_errors_are_classified() {
    let mut srv = testkit::s3::S3Server::s3s_fs();
    rt().block_on(async {
        let url = srv.repo_url("x");
        let loc = pitr::repo::s3::S3Location::parse(url.strip_prefix("s3://").unwrap()).unwrap();
        // Wrong secret: permanent, and says what to check.
        let bad = pitr::repo::s3::S3Store::open_with(
            loc.clone(),
            Some((testkit::s3::ACCESS_KEY.into(), "wrong".into())),
        )
        .await;
        let e = bad.check().await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
        assert!(e.to_string().contains("credentials"), "{e}");
        // A missing bucket: permanent, named.
        let mut nob = loc.clone();
        nob.bucket = "no-such-bucket".into();
        let keys = Some((
            testkit::s3::ACCESS_KEY.to_owned(),
            testkit::s3::SECRET_KEY.to_owned(),
        ));
        let e = pitr::repo::s3::S3Store::open_with(nob, keys.clone())
            .await
            .check()
            .await
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
        assert!(e.to_string().contains("no-such-bucket"), "{e}");
        // The server down: transient.
        let good = pitr::repo::s3::S3Store::open_with(loc, keys).await;
        good.check().await.unwrap();
        srv.stop();
        let e = good
            .put_if_absent("k", Bytes::from_static(b"v"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Transient, "{e}");
        srv.restart();
        assert_eq!(
            good.put_if_absent("k", Bytes::from_static(b"v"))
                .await
                .unwrap(),
            PutOutcome::Created
        );
    });
}

#[test]
fn s3_repo_urls() {
    use pitr::repo::s3::S3Location;
    let l = S3Location::parse("my-backups/prod/db1/?region=eu-west-1&path_style=false").unwrap();
    assert_eq!(
        (l.bucket.as_str(), l.prefix.as_str()),
        ("my-backups", "prod/db1/")
    );
    assert_eq!(l.region.as_deref(), Some("eu-west-1"));
    assert_eq!(l.path_style, Some(false));
    for bad in [
        "",
        "ab",
        "Upper",
        "b/../x",
        "bucket?colour=red",
        "bucket?endpoint=minio:9000",
    ] {
        let e = S3Location::parse(bad).unwrap_err();
        assert!(!e.contains('\n'), "{e}");
    }
}
