//! Retries of storage calls, in one place: [`RetryingStore`] wraps any [`ObjectStore`] and
//! retries each call under one [`RetryPolicy`]; [`super::Repo::with_retry`] gives a repo
//! whose every storage call goes through it.
//!
//! # Invariants
//!
//! - Only errors the policy's `retry_if` accepts are retried (by default the transient ones,
//!   [`StoreError::is_transient`]); any other error returns at once, unchanged.
//! - The first retry waits `base`; each wait doubles, up to `cap`. Without `max_elapsed` a
//!   call is retried forever (WAL is never dropped); with it, the whole call, a hung attempt
//!   included, ends when that time has passed, with a [`StoreErrorKind::Exhausted`] error whose
//!   source is the last failure.
//! - The observer sees every failed attempt once, retried or not (the stream's
//!   `pitr_upload_errors_total` and `pitr_upload_retries_total`).
//! - A warning `{label}: storage error, retrying` is logged at the first retry of a call and
//!   at every tenth; the label is the policy's, or the operation's (`upload`, `get`, `list`,
//!   `delete`).
//! - Nothing is spawned and no state outlives a call: dropping the future (a shutdown, a
//!   caller's timeout) stops the retries at once.
//! - Retrying is safe because the store contract makes every call idempotent: a retried
//!   `put_if_absent` whose first attempt landed is `AlreadyIdentical`, a second `delete` of a
//!   key succeeds.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::store::{BoxFut, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};

/// Sees each failed attempt (for metrics).
pub(crate) type Observer = Arc<dyn Fn(&StoreError) + Send + Sync>;

/// How storage calls are retried.
#[derive(Clone)]
pub struct RetryPolicy {
    /// The first wait.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
    /// Give up after this long (`None`: never).
    pub max_elapsed: Option<Duration>,
    /// Which errors are retried.
    pub retry_if: fn(&StoreError) -> bool,
    /// What the log lines call the call (`None`: the operation's name).
    pub label: Option<&'static str>,
    /// Called for every failed attempt.
    pub observer: Option<Observer>,
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("base", &self.base)
            .field("cap", &self.cap)
            .field("max_elapsed", &self.max_elapsed)
            .field("label", &self.label)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

impl RetryPolicy {
    /// Transient errors retried forever, waiting 100 ms doubling to `cap`.
    pub fn forever(cap: Duration) -> Self {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap,
            max_elapsed: None,
            retry_if: StoreError::is_transient,
            label: None,
            observer: None,
        }
    }

    /// Names the calls in the log lines.
    #[must_use]
    pub(crate) fn label(mut self, what: &'static str) -> Self {
        self.label = Some(what);
        self
    }

    /// Gives up once `limit` has passed ([`StoreErrorKind::Exhausted`]).
    #[must_use]
    pub(crate) fn give_up_after(mut self, limit: Duration) -> Self {
        self.max_elapsed = Some(limit);
        self
    }

    /// Reports every failed attempt to `f`.
    #[must_use]
    pub(crate) fn observe(mut self, f: impl Fn(&StoreError) + Send + Sync + 'static) -> Self {
        self.observer = Some(Arc::new(f));
        self
    }

    /// The wait after the `n`th failure (1-based): `base` doubled `n - 1` times, at most `cap`.
    pub(crate) fn delay(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.base
            .checked_mul(1 << doublings)
            .map_or(self.cap, |d| d.min(self.cap))
    }

    /// Runs `call` (operation `op` on `key`, logged as `default_label` unless the policy names
    /// it) under this policy.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        default_label: &'static str,
        op: &'static str,
        key: &str,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let last = Mutex::new(None);
        let label = self.label.unwrap_or(default_label);
        let attempts = self.attempts(label, &last, call);
        let Some(limit) = self.max_elapsed else {
            return attempts.await;
        };
        match tokio::time::timeout(limit, attempts).await {
            Ok(r) => r,
            Err(_) => {
                let mut e = StoreError::new(
                    StoreErrorKind::Exhausted,
                    op,
                    key,
                    format!("still failing after {limit:?} of retries"),
                );
                if let Some(l) = last.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    e = e.with_source(l);
                }
                Err(e)
            }
        }
    }

    async fn attempts<T, F, Fut>(
        &self,
        label: &str,
        last: &Mutex<Option<StoreError>>,
        mut call: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0u32;
        loop {
            let e = match call().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if let Some(o) = &self.observer {
                o(&e);
            }
            if !(self.retry_if)(&e) {
                return Err(e);
            }
            attempt = attempt.saturating_add(1);
            if attempt == 1 || attempt.is_multiple_of(10) {
                tracing::warn!(error = %e, attempt, "{label}: storage error, retrying");
            }
            let wait = self.delay(attempt);
            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            tokio::time::sleep(wait).await;
        }
    }
}

/// A store whose every call is retried under one policy. Leftover cleaning
/// ([`ObjectStore::clean_leftovers`]) is a best-effort start-up chore and is not retried.
#[derive(Debug)]
pub struct RetryingStore<S> {
    inner: S,
    policy: RetryPolicy,
}

impl<S: ObjectStore> RetryingStore<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        RetryingStore { inner, policy }
    }
}

impl<S: ObjectStore> ObjectStore for RetryingStore<S> {
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
    ) -> BoxFut<'a, Result<PutOutcome, StoreError>> {
        Box::pin(self.policy.run("upload", "put", key, move || {
            self.inner.put_if_absent(key, data.clone())
        }))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StoreError>> {
        Box::pin(self.policy.run("get", "get", key, || self.inner.get(key)))
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StoreError>> {
        Box::pin(
            self.policy
                .run("list", "list", prefix, || self.inner.list(prefix)),
        )
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(
            self.policy
                .run("delete", "delete", key, || self.inner.delete(key)),
        )
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn clean_leftovers(&self) -> BoxFut<'_, Result<usize, StoreError>> {
        self.inner.clean_leftovers()
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::repo::Repo;
    use crate::repo::memory::{FaultyStore, MemoryStore};

    use crate::test_util::block_on;

    /// A fast policy and a counter of what its observer saw.
    fn fast() -> (RetryPolicy, Arc<AtomicU64>) {
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        let mut p = RetryPolicy::forever(Duration::from_millis(4)).observe(move |_| {
            s.fetch_add(1, Ordering::SeqCst);
        });
        p.base = Duration::from_millis(1);
        (p, seen)
    }

    fn calls<S>(f: &FaultyStore<S>) -> u64 {
        f.calls.load(Ordering::SeqCst)
    }

    #[test]
    fn transient_errors_are_retried_until_they_pass_each_observed_once() {
        let f = FaultyStore::new(MemoryStore::new());
        let (p, seen) = fast();
        let s = RetryingStore::new(f.clone(), p);
        f.fail_next(3);
        let r = block_on(s.put_if_absent("a/1", Bytes::from_static(b"v")));
        assert_eq!(r.unwrap(), PutOutcome::Created);
        assert_eq!((calls(&f), seen.load(Ordering::SeqCst)), (4, 3));
        f.fail_next(2);
        assert_eq!(block_on(s.get("a/1")).unwrap().as_deref(), Some(&b"v"[..]));
        f.fail_next(1);
        assert_eq!(block_on(s.list("a/")).unwrap().len(), 1);
        f.fail_next(1);
        block_on(s.delete("a/1")).unwrap();
        assert_eq!(seen.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn a_lost_acknowledgement_is_retried_into_already_identical() {
        let f = FaultyStore::new(MemoryStore::new());
        let s = RetryingStore::new(f.clone(), fast().0);
        f.lose_ack_next(1);
        let r = block_on(s.put_if_absent("a/2", Bytes::from_static(b"w")));
        assert_eq!(r.unwrap(), PutOutcome::AlreadyIdentical);
    }

    #[test]
    fn a_conflict_or_a_permanent_error_returns_at_once_after_being_observed() {
        let f = FaultyStore::new(MemoryStore::new());
        let (p, seen) = fast();
        let s = RetryingStore::new(f.clone(), p);
        block_on(s.put_if_absent("a/3", Bytes::from_static(b"one"))).unwrap();
        let before = calls(&f);
        let e = block_on(s.put_if_absent("a/3", Bytes::from_static(b"two"))).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Conflict, "{e}");
        let e = block_on(s.get("../bad")).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Permanent, "{e}");
        assert_eq!(calls(&f) - before, 2, "each tried once");
        assert_eq!(seen.load(Ordering::SeqCst), 2, "and observed");
    }

    #[test]
    fn retry_if_chooses_which_errors_are_retried() {
        let f = FaultyStore::new(MemoryStore::new());
        let mut p = fast().0;
        p.retry_if = |_| false;
        let s = RetryingStore::new(f.clone(), p);
        f.fail_next(1);
        let e = block_on(s.get("a/4")).unwrap_err();
        assert!(e.is_transient(), "returned as it was: {e}");
        assert_eq!(calls(&f), 1);
    }

    #[test]
    fn the_backoff_doubles_from_base_to_cap() {
        let p = RetryPolicy::forever(Duration::from_secs(10));
        let waits: Vec<u64> = [1, 2, 3, 4, 7, 8, 100, u32::MAX]
            .iter()
            .map(|n| p.delay(*n).as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 6400, 10_000, 10_000, 10_000]);
        assert_eq!(p.max_elapsed, None, "forever by default");
        assert!((p.retry_if)(&StoreError::new(
            StoreErrorKind::Transient,
            "get",
            "k",
            "x"
        )));
        for kind in [
            StoreErrorKind::Conflict,
            StoreErrorKind::Permanent,
            StoreErrorKind::Internal,
            StoreErrorKind::Exhausted,
        ] {
            assert!(!(p.retry_if)(&StoreError::new(kind, "get", "k", "x")));
        }
    }

    #[test]
    fn an_outage_longer_than_max_elapsed_is_exhausted_naming_the_last_error() {
        let f = FaultyStore::new(MemoryStore::new());
        let p = fast().0.give_up_after(Duration::from_millis(40));
        let s = RetryingStore::new(f.clone(), p);
        f.set_down(true);
        let e = block_on(s.put_if_absent("a/5", Bytes::from_static(b"v"))).unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Exhausted, "{e}");
        assert!(!e.is_transient());
        assert!(
            e.to_string().starts_with("put a/5: still failing after"),
            "{e}"
        );
        let last = e.source().expect("the last error").to_string();
        assert!(last.contains("injected outage"), "{last}");
        assert!(calls(&f) > 2, "retried meanwhile");
    }

    #[test]
    fn dropping_a_call_stops_its_retries() {
        let f = FaultyStore::new(MemoryStore::new());
        let s = RetryingStore::new(f.clone(), fast().0);
        f.set_down(true);
        block_on(async {
            let r = tokio::time::timeout(Duration::from_millis(30), s.get("a/6")).await;
            assert!(r.is_err(), "still retrying when dropped");
            let then = calls(&f);
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert_eq!(calls(&f), then, "no attempt after the drop");
        });
    }

    #[test]
    fn a_retrying_repo_never_nests_retries() {
        let f = FaultyStore::new(MemoryStore::new());
        let repo = Repo::with_store(Arc::new(f.clone()));
        let (outer, seen_outer) = fast();
        let (inner, seen_inner) = fast();
        let twice = repo.with_retry(outer).with_retry(inner);
        assert_eq!(twice.location, repo.location);
        f.fail_next(1);
        block_on(twice.put("a/7", Bytes::from_static(b"v"))).unwrap();
        assert_eq!(calls(&f), 2, "one failure, one retry");
        assert_eq!(
            seen_outer.load(Ordering::SeqCst),
            0,
            "replaced, not wrapped"
        );
        assert_eq!(seen_inner.load(Ordering::SeqCst), 1);
        // The plain repo does not retry.
        f.fail_next(1);
        assert!(
            block_on(repo.store().get("a/7"))
                .unwrap_err()
                .is_transient()
        );
    }
}
