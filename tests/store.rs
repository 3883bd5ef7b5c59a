//! One conformance suite for every repo backend (the contract in `src/repo/store.rs`): one
//! named test per behaviour and backend, `store::<backend>::<behaviour>`, so a failure names
//! both.
//!
//! Every behaviour gets a fresh store (local, memory) or its own key namespace in a shared
//! S3 server (s3s-fs in-process, moto as a child process, each started once while tests use
//! it), at the bucket root and under a prefix, which listings must strip.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use pitr::repo::crypt::{EncryptingStore, KeySource, RepoKey};
use pitr::repo::local::LocalStore;
use pitr::repo::memory::{FaultyStore, MemoryStore};
use pitr::repo::retrying::{RetryPolicy, RetryingStore};
use pitr::repo::store::{ObjectStore, PutOutcome, StoreErrorKind};
use testkit::s3::S3Server;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A store under test, with what keeps it alive.
struct Backend {
    s: Arc<dyn ObjectStore>,
    /// Every key of the behaviour lives under this (the S3 servers are shared).
    ns: String,
    name: String,
    _keep: Box<dyn std::any::Any + Send>,
}

impl Backend {
    fn new(s: Arc<dyn ObjectStore>, ns: &str, keep: impl std::any::Any + Send) -> Backend {
        let name = format!("{} ({ns})", s.describe());
        Backend {
            s,
            ns: ns.to_owned(),
            name,
            _keep: Box::new(keep),
        }
    }

    /// `key` in this behaviour's namespace.
    fn k(&self, key: &str) -> String {
        format!("{}/{key}", self.ns)
    }
}

async fn local(ns: &str) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(&dir.path().join("repo")).unwrap();
    Backend::new(Arc::new(s), ns, dir)
}

async fn memory(ns: &str) -> Backend {
    Backend::new(Arc::new(MemoryStore::new()), ns, ())
}

/// The fault-injecting wrapper with no fault armed.
async fn faulty(ns: &str) -> Backend {
    Backend::new(Arc::new(FaultyStore::new(MemoryStore::new())), ns, ())
}

/// The retrying store over the fault-injecting one, whose first calls fail transiently.
async fn faulty_retrying(ns: &str) -> Backend {
    let f = FaultyStore::new(MemoryStore::new());
    f.fail_next(3);
    let mut policy = RetryPolicy::forever(Duration::from_millis(5));
    policy.base = Duration::from_millis(1);
    Backend::new(Arc::new(RetryingStore::new(f, policy)), ns, ())
}

/// A store that seals every object ([`pitr::repo::crypt`]) over `inner`, with a fresh key.
fn sealed(inner: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    let key = RepoKey::parse(&RepoKey::generate()).unwrap();
    Arc::new(EncryptingStore::new(inner, KeySource::Symmetric(key)))
}

/// The encrypting store over the memory store.
async fn encrypted_memory(ns: &str) -> Backend {
    Backend::new(sealed(Arc::new(MemoryStore::new())), ns, ())
}

/// The encrypting store over the local store.
async fn encrypted_local(ns: &str) -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(&dir.path().join("repo")).unwrap();
    Backend::new(sealed(Arc::new(s)), ns, dir)
}

/// One server of a kind while tests use it; it stops when the last of them ends.
fn shared(slot: &'static Mutex<Weak<S3Server>>, start: fn() -> S3Server) -> Arc<S3Server> {
    let mut g = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = g.upgrade() {
        return s;
    }
    let s = Arc::new(start());
    *g = Arc::downgrade(&s);
    s
}

static S3S: Mutex<Weak<S3Server>> = Mutex::new(Weak::new());
static MOTO: Mutex<Weak<S3Server>> = Mutex::new(Weak::new());

async fn s3_backend(srv: Arc<S3Server>, prefix: &str, ns: &str) -> Backend {
    let s = s3_store(&srv, prefix).await;
    Backend::new(Arc::new(s), ns, srv)
}

async fn s3s_fs_root(ns: &str) -> Backend {
    s3_backend(shared(&S3S, S3Server::s3s_fs), "", ns).await
}

async fn s3s_fs_prefixed(ns: &str) -> Backend {
    s3_backend(shared(&S3S, S3Server::s3s_fs), "some/prefix", ns).await
}

async fn moto_root(ns: &str) -> Backend {
    s3_backend(shared(&MOTO, S3Server::moto), "", ns).await
}

async fn moto_prefixed(ns: &str) -> Backend {
    s3_backend(shared(&MOTO, S3Server::moto), "p", ns).await
}

/// The encrypting store over moto's S3, under a prefix.
async fn encrypted_moto_prefixed(ns: &str) -> Backend {
    let b = s3_backend(shared(&MOTO, S3Server::moto), "enc", ns).await;
    Backend {
        s: sealed(b.s.clone()),
        ..b
    }
}

/// The behaviours, each against one backend.
mod behaviour {
    use super::*;

    pub async fn get_of_a_missing_key_is_none(b: &Backend) {
        let got = b.s.get(&b.k("wal/00000001/x")).await.unwrap();
        assert_eq!(got, None, "{}: missing is None", b.name);
    }

    pub async fn put_if_absent_creates_and_get_reads_it_back(b: &Backend) {
        let (k, a) = (b.k("wal/00000001/x"), Bytes::from_static(b"first content"));
        let r = b.s.put_if_absent(&k, a.clone()).await.unwrap();
        assert_eq!(r, PutOutcome::Created, "{}", b.name);
        assert_eq!(b.s.get(&k).await.unwrap(), Some(a), "{}", b.name);
    }

    /// A retried upload of the same bytes succeeds.
    pub async fn an_identical_reupload_is_already_identical(b: &Backend) {
        let (k, a) = (b.k("wal/00000001/x"), Bytes::from_static(b"first content"));
        b.s.put_if_absent(&k, a.clone()).await.unwrap();
        let r = b.s.put_if_absent(&k, a).await.unwrap();
        assert_eq!(r, PutOutcome::AlreadyIdentical, "{}", b.name);
    }

    /// Different bytes never replace an object, and the error names it.
    pub async fn different_bytes_conflict_and_nothing_is_overwritten(b: &Backend) {
        let k = b.k("wal/00000001/x");
        let a = Bytes::from_static(b"first content");
        b.s.put_if_absent(&k, a.clone()).await.unwrap();
        let e =
            b.s.put_if_absent(&k, Bytes::from_static(b"other content"))
                .await
                .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Conflict, "{}: {e}", b.name);
        assert!(e.to_string().contains(&k), "names the object: {e}");
        assert_eq!(b.s.get(&k).await.unwrap(), Some(a), "{}: untouched", b.name);
    }

    /// Listing: sorted, by prefix, with sizes; an empty prefix lists nothing.
    pub async fn list_is_sorted_by_prefix_with_sizes(b: &Backend) {
        let v = Bytes::from_static(b"other content");
        for k in [
            "wal/00000002/b",
            "wal/00000001/y",
            "pitr.json",
            "wal/00000002/a",
            "wal/00000001/x",
        ] {
            b.s.put_if_absent(&b.k(k), v.clone()).await.unwrap();
        }
        let keys: Vec<String> =
            b.s.list(&b.k("wal/"))
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect();
        let want: Vec<String> = [
            "wal/00000001/x",
            "wal/00000001/y",
            "wal/00000002/a",
            "wal/00000002/b",
        ]
        .iter()
        .map(|k| b.k(k))
        .collect();
        assert_eq!(keys, want, "{}", b.name);
        let l = b.s.list(&b.k("wal/00000002/")).await.unwrap();
        assert_eq!(l.len(), 2, "{}", b.name);
        assert!(l.iter().all(|o| o.size == v.len() as u64), "{}", b.name);
        assert!(b.s.list(&b.k("nothing/")).await.unwrap().is_empty());
    }

    /// More keys than one S3 listing page (1000): the listing follows the continuation.
    pub async fn list_pages_through_more_than_a_thousand_keys(b: &Backend) {
        let s = b.s.clone();
        let keys: Vec<String> = (0..1003).map(|i| b.k(&format!("many/{i:05}"))).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for chunk in keys.chunks(126) {
            let (s, chunk) = (s.clone(), chunk.to_vec());
            tasks.spawn(async move {
                for k in chunk {
                    s.put_if_absent(&k, Bytes::from_static(b"m")).await.unwrap();
                }
            });
        }
        while let Some(t) = tasks.join_next().await {
            t.unwrap();
        }
        let listed: Vec<String> =
            b.s.list(&b.k("many/"))
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect();
        assert_eq!(listed, keys, "{}", b.name);
    }

    /// Delete, and delete of a missing key.
    pub async fn delete_removes_and_a_missing_key_is_fine(b: &Backend) {
        let (k, v) = (b.k("wal/00000002/a"), Bytes::from_static(b"v"));
        b.s.put_if_absent(&k, v).await.unwrap();
        b.s.delete(&k).await.unwrap();
        b.s.delete(&k).await.unwrap();
        assert_eq!(b.s.get(&k).await.unwrap(), None, "{}", b.name);
        assert!(b.s.list(&k).await.unwrap().is_empty(), "{}", b.name);
    }

    pub async fn bad_keys_are_refused_as_permanent(b: &Backend) {
        for k in ["", "/abs", "a/../b", "a//b", "a/./b", "sp ace"] {
            let e =
                b.s.put_if_absent(k, Bytes::from_static(b"first content"))
                    .await
                    .unwrap_err();
            let name = &b.name;
            assert_eq!(e.kind, StoreErrorKind::Permanent, "{name}: key {k:?}: {e}");
        }
    }

    fn big() -> Bytes {
        Bytes::from(
            (0..20u32 << 20)
                .map(|i| (i * 7 % 251) as u8)
                .collect::<Vec<u8>>(),
        )
    }

    /// A large object (multipart on S3) round-trips.
    pub async fn a_large_object_round_trips(b: &Backend) {
        let (k, big) = (b.k("big/obj"), big());
        b.s.put_if_absent(&k, big.clone()).await.unwrap();
        assert!(b.s.get(&k).await.unwrap().unwrap() == big, "{}", b.name);
    }

    /// ... and, being large, keeps the create-if-absent contract.
    pub async fn a_large_object_is_never_overwritten(b: &Backend) {
        let (k, big) = (b.k("big/obj"), big());
        b.s.put_if_absent(&k, big.clone()).await.unwrap();
        assert_eq!(
            b.s.put_if_absent(&k, big.clone()).await.unwrap(),
            PutOutcome::AlreadyIdentical,
            "{}",
            b.name
        );
        let mut other = big.to_vec();
        other[12 << 20] ^= 1;
        let e = b.s.put_if_absent(&k, Bytes::from(other)).await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Conflict, "{}: {e}", b.name);
        assert!(b.s.get(&k).await.unwrap().unwrap() == big, "{}", b.name);
    }

    /// Racing creators of one key: exactly one wins, the others are told. Only for backends
    /// that serialise creators: s3s-fs 0.14 checks `If-None-Match` and then writes
    /// (`put_object` in its `s3.rs`), so two racing creators can both succeed there; AWS S3,
    /// moto, and our local and memory stores serialise them.
    pub async fn racing_creators_exactly_one_wins(b: &Backend) {
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let (s, k) = (b.s.clone(), b.k("race/k"));
            tasks.push(tokio::spawn(async move {
                s.put_if_absent(&k, Bytes::from(vec![i; 1000])).await
            }));
        }
        let mut created = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(PutOutcome::Created) => created += 1,
                Ok(PutOutcome::AlreadyIdentical) => {
                    panic!("{}: different bytes reported identical", b.name)
                }
                Err(e) => assert_eq!(e.kind, StoreErrorKind::Conflict, "{e}"),
            }
        }
        assert_eq!(created, 1, "{}: exactly one creator", b.name);
    }
}

/// `conformance!(backend, [extra, ...])`: one test `store::backend::behaviour` for each common
/// behaviour and each extra one.
macro_rules! conformance {
    ($backend:ident, [$($extra:ident),* $(,)?]) => {
        conformance!(@tests $backend, [
            get_of_a_missing_key_is_none,
            put_if_absent_creates_and_get_reads_it_back,
            an_identical_reupload_is_already_identical,
            different_bytes_conflict_and_nothing_is_overwritten,
            list_is_sorted_by_prefix_with_sizes,
            delete_removes_and_a_missing_key_is_fine,
            bad_keys_are_refused_as_permanent,
            a_large_object_round_trips,
            a_large_object_is_never_overwritten,
            $($extra,)*
        ]);
    };
    (@tests $backend:ident, [$($behaviour:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[test]
                fn $behaviour() {
                    super::rt().block_on(async {
                        let b = super::$backend(stringify!($behaviour)).await;
                        super::behaviour::$behaviour(&b).await;
                    });
                }
            )*
        }
    };
}

// Listing pages exist only on S3 (1000 keys each); the paging test runs there under a prefix
// (continuation and prefix stripping together) and on the memory store.
conformance!(local, [racing_creators_exactly_one_wins]);
conformance!(
    memory,
    [
        racing_creators_exactly_one_wins,
        list_pages_through_more_than_a_thousand_keys
    ]
);
conformance!(faulty, [racing_creators_exactly_one_wins]);
conformance!(encrypted_memory, [racing_creators_exactly_one_wins]);
conformance!(encrypted_local, [racing_creators_exactly_one_wins]);
conformance!(encrypted_moto_prefixed, [racing_creators_exactly_one_wins]);
conformance!(faulty_retrying, [racing_creators_exactly_one_wins]);
conformance!(moto_root, [racing_creators_exactly_one_wins]);
conformance!(
    moto_prefixed,
    [
        racing_creators_exactly_one_wins,
        list_pages_through_more_than_a_thousand_keys
    ]
);
// s3s-fs does not serialise racing creators (see `racing_creators_exactly_one_wins`).
conformance!(s3s_fs_root, []);
conformance!(
    s3s_fs_prefixed,
    [list_pages_through_more_than_a_thousand_keys]
);

#[test]
fn local_store_leaves_no_temporary_files_and_lists_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalStore::open(&dir.path().join("repo")).unwrap();
    rt().block_on(async {
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        s.put_if_absent("wal/00000001/x", a.clone()).await.unwrap();
        s.put_if_absent("wal/00000001/x", a).await.unwrap();
        s.put_if_absent("wal/00000001/x", b).await.unwrap_err();
        s.put_if_absent("big/obj", Bytes::from(vec![7u8; 20 << 20]))
            .await
            .unwrap();
    });
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
fn faulty_store_with_retries_recovers_failures_and_lost_acks() {
    rt().block_on(async {
        let f = FaultyStore::new(MemoryStore::new());
        let retrying =
            RetryingStore::new(f.clone(), RetryPolicy::forever(Duration::from_millis(5)));
        // Transient failures are retried until they pass.
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

async fn s3_store(srv: &S3Server, prefix: &str) -> pitr::repo::s3::S3Store {
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

/// The prefix isolates: the root store sees the prefixed objects under their full key.
#[test]
fn s3s_fs_a_prefix_isolates_its_objects() {
    let srv = S3Server::s3s_fs();
    rt().block_on(async {
        let p = s3_store(&srv, "some/prefix").await;
        p.put_if_absent("pitr.json", Bytes::from_static(b"{}"))
            .await
            .unwrap();
        let keys: Vec<String> = p
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["pitr.json"], "listed without the prefix");
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
}

/// A 20 MiB object goes up in parts (its ETag is a multipart one, "...-3"), and no multipart
/// upload is left open, not even by the re-upload and the conflicting upload (aborted).
#[test]
fn s3s_fs_a_large_object_goes_up_in_parts_and_leaves_no_upload_open() {
    let srv = S3Server::s3s_fs();
    rt().block_on(async {
        let s = s3_store(&srv, "").await;
        let big = Bytes::from(
            (0..20u32 << 20)
                .map(|i| (i * 7 % 251) as u8)
                .collect::<Vec<u8>>(),
        );
        s.put_if_absent("big/obj", big.clone()).await.unwrap();
        s.put_if_absent("big/obj", big.clone()).await.unwrap();
        let mut other = big.to_vec();
        other[12 << 20] ^= 1;
        s.put_if_absent("big/obj", Bytes::from(other))
            .await
            .unwrap_err();
    });
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

/// A refused S3 repo is the same one line as before the causes were kept: the SDK's bare
/// "service error" label is not appended to a message that already says everything.
#[test]
fn a_missing_bucket_is_one_line_without_the_sdk_label() {
    let s3 = S3Server::s3s_fs();
    let url = s3.repo_url("x").replace("pitr-test", "no-such-bucket");
    let out = crate::stream::pitr()
        .args(["list", "--repo", &url])
        .envs(s3.env())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("pitr: error: repo ")
            && last.contains("bucket \"no-such-bucket\" does not exist")
            && last.ends_with("create it, or fix --repo"),
        "{err}"
    );
}
