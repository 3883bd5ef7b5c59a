//! One conformance suite for every repo backend (the contract in `src/repo/store.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pitr::repo::local::LocalStore;
use pitr::repo::memory::{FaultyStore, MemoryStore};
use pitr::repo::store::{ObjectStore, PutOutcome, StoreErrorKind};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn conformance(s: Arc<dyn ObjectStore>) {
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
        assert!(
            s.put_if_absent(k, a.clone()).await.is_err(),
            "{name}: key {k:?} accepted"
        );
    }
    // A large object round-trips.
    let big = Bytes::from(
        (0..20u32 << 20)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    s.put_if_absent("big/obj", big.clone()).await.unwrap();
    assert_eq!(s.get("big/obj").await.unwrap().unwrap(), big);
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
    rt().block_on(conformance(Arc::new(s)));
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
    rt().block_on(conformance(Arc::new(MemoryStore::new())));
}

#[test]
fn faulty_store_with_retries_conforms_and_recovers_lost_acks() {
    rt().block_on(async {
        let f = FaultyStore::new(MemoryStore::new());
        conformance(Arc::new(f.clone())).await;
        // Transient failures are retried until they pass.
        f.fail_next(3);
        let r = pitr::repo::retry("put", Duration::from_millis(5), || {
            f.put_if_absent("r/1", Bytes::from_static(b"v"))
        })
        .await;
        assert_eq!(r.unwrap(), PutOutcome::Created);
        // The write took effect but its acknowledgement was lost: the retry finds the same
        // bytes there and succeeds.
        f.lose_ack_next(1);
        let r = pitr::repo::retry("put", Duration::from_millis(5), || {
            f.put_if_absent("r/2", Bytes::from_static(b"w"))
        })
        .await;
        assert_eq!(r.unwrap(), PutOutcome::AlreadyIdentical);
        // Permanent errors are not retried.
        let r = pitr::repo::retry("put", Duration::from_millis(5), || {
            f.put_if_absent("r/1", Bytes::from_static(b"other"))
        })
        .await;
        assert_eq!(r.unwrap_err().kind, StoreErrorKind::Conflict);
    });
}
