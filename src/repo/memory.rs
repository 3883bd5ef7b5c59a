//! In-memory backend and a fault-injecting wrapper, for tests. Both follow the
//! [`super::store`] contract; the wrapper can fail the next N operations transiently, fail
//! everything (an outage), or fail after the write took effect (a lost acknowledgement).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;

use super::store::{
    BoxFut, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind, validate_key,
};

/// Objects in a map.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    objects: Arc<Mutex<BTreeMap<String, Bytes>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Bytes>> {
        self.objects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ObjectStore for MemoryStore {
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
    ) -> BoxFut<'a, Result<PutOutcome, StoreError>> {
        Box::pin(async move {
            validate_key(key)?;
            let mut m = self.map();
            match m.get(key) {
                Some(old) if *old == data => Ok(PutOutcome::AlreadyIdentical),
                Some(_) => Err(StoreError::new(
                    StoreErrorKind::Conflict,
                    "put",
                    key,
                    "exists with different content; not replaced",
                )),
                None => {
                    m.insert(key.to_owned(), data);
                    Ok(PutOutcome::Created)
                }
            }
        })
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move {
            validate_key(key)?;
            Ok(self.map().get(key).cloned())
        })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .map()
                .range(prefix.to_owned()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| ObjectMeta {
                    key: k.clone(),
                    size: v.len() as u64,
                })
                .collect())
        })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            validate_key(key)?;
            self.map().remove(key);
            Ok(())
        })
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

/// Wraps a store and injects faults.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    fail_next: Arc<AtomicU64>,
    down: Arc<AtomicBool>,
    lose_ack_next: Arc<AtomicU64>,
    /// Operations attempted (including failed ones).
    pub calls: Arc<AtomicU64>,
}

impl<S: ObjectStore> FaultyStore<S> {
    /// Wraps `inner`, with no faults yet.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            fail_next: Arc::default(),
            down: Arc::default(),
            lose_ack_next: Arc::default(),
            calls: Arc::default(),
        }
    }
    /// The next `n` operations fail transiently without effect.
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::SeqCst);
    }
    /// Every operation fails transiently until `set_down(false)` (a storage outage).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
    /// The next `n` puts take effect but report a transient failure.
    pub fn lose_ack_next(&self, n: u64) {
        self.lose_ack_next.store(n, Ordering::SeqCst);
    }
    fn fault(&self, op: &'static str, key: &str) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::new(
                StoreErrorKind::Transient,
                op,
                key,
                "injected outage",
            ));
        }
        if take_one(&self.fail_next) {
            return Err(StoreError::new(
                StoreErrorKind::Transient,
                op,
                key,
                "injected failure",
            ));
        }
        Ok(())
    }
}

impl<S: ObjectStore> ObjectStore for FaultyStore<S> {
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
    ) -> BoxFut<'a, Result<PutOutcome, StoreError>> {
        Box::pin(async move {
            self.fault("put", key)?;
            let r = self.inner.put_if_absent(key, data).await?;
            if take_one(&self.lose_ack_next) {
                return Err(StoreError::new(
                    StoreErrorKind::Transient,
                    "put",
                    key,
                    "injected lost acknowledgement",
                ));
            }
            Ok(r)
        })
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move {
            self.fault("get", key)?;
            self.inner.get(key).await
        })
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StoreError>> {
        Box::pin(async move {
            self.fault("list", prefix)?;
            self.inner.list(prefix).await
        })
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.fault("delete", key)?;
            self.inner.delete(key).await
        })
    }
    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }
}

/// Counts one down from a budget of injected faults; true if there was one.
fn take_one(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}
