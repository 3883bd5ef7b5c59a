//! The storage trait every repo backend implements, and its errors.
//!
//! # Contract (checked by the conformance suite in `tests/store.rs` for every backend)
//!
//! - `put_if_absent(key, bytes)` publishes atomically: a reader sees the whole object or
//!   nothing. If the key exists with the same bytes it succeeds (`AlreadyIdentical`), so a
//!   retried upload is harmless; with different bytes it fails with [`StoreErrorKind::Conflict`]
//!   and the existing object is untouched. An object is never replaced.
//! - Once `put_if_absent` returns, the object is durable where the backend promises (local:
//!   fsync'd file and directory; S3: acknowledged by the service).
//! - `get` of a missing key is `Ok(None)`; `list(prefix)` returns every key under it, sorted.
//! - `delete` of a missing key succeeds.
//! - Errors say whether a retry can help ([`StoreError::is_transient`]). The class is decided
//!   where the failure is understood (the backend); the backend's own error (an SDK error, an
//!   `io::Error`) stays attached as the [`std::error::Error::source`], never only as text.
//! - A panicked task of pitr's own is a bug ([`StoreErrorKind::Internal`], [`TaskFailed`]),
//!   never reported as corruption or retried.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

/// A boxed future, so backends can be chosen at run time.
pub(crate) type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What `put_if_absent` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The object was created.
    Created,
    /// It already existed with exactly these bytes.
    AlreadyIdentical,
}

/// An object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key, relative to the repo root.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
}

/// How a storage operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// Worth retrying: timeouts, throttling, 5xx, a server that is down.
    Transient,
    /// The key exists with different bytes.
    Conflict,
    /// Retrying cannot help: permissions, bad credentials, no such bucket, a full disk.
    Permanent,
    /// A bug in pitr (a storage task panicked): not retried, never blamed on the data.
    Internal,
    /// A retry policy's time limit passed while the errors stayed transient; the last one is
    /// the source ([`super::retrying::RetryPolicy::max_elapsed`]).
    Exhausted,
}

/// The underlying error of a [`StoreError`], shared so the error stays cheap to clone.
pub(crate) type Cause = Arc<dyn Error + Send + Sync + 'static>;

/// A storage error, naming the object. Its text is `{op} {key}: {message}`; the backend's
/// own error, when there is one, is the source (the message may already quote it: pitr
/// prints each cause once).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op} {key}: {message}")]
pub struct StoreError {
    /// The class.
    pub kind: StoreErrorKind,
    /// The operation (`put`, `get`, ...).
    pub op: &'static str,
    /// The object key.
    pub key: String,
    /// What happened.
    pub message: String,
    /// The backend's error behind it.
    #[source]
    pub source: Option<Cause>,
}

impl StoreError {
    /// A retry may succeed.
    pub(crate) fn is_transient(&self) -> bool {
        self.kind == StoreErrorKind::Transient
    }

    /// Builds an error.
    pub(crate) fn new(
        kind: StoreErrorKind,
        op: &'static str,
        key: &str,
        message: impl fmt::Display,
    ) -> Self {
        StoreError {
            kind,
            op,
            key: key.to_owned(),
            message: message.to_string(),
            source: None,
        }
    }

    /// The same error, caused by `source`.
    #[must_use]
    pub(crate) fn with_source(mut self, source: impl Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// A storage task that did not finish: a panic is a bug ([`StoreErrorKind::Internal`]);
    /// a task cancelled because the runtime is shutting down is transient, as before.
    pub(crate) fn task_failed(op: &'static str, key: &str, e: tokio::task::JoinError) -> Self {
        let failed = TaskFailed::new("storage", e);
        if failed.panicked() {
            StoreError::new(StoreErrorKind::Internal, op, key, &failed).with_source(failed)
        } else {
            let msg = format!("I/O task failed: {}", failed.source);
            StoreError::new(StoreErrorKind::Transient, op, key, msg).with_source(failed.source)
        }
    }
}

/// One of pitr's own tasks (a storage call, a decompression) did not finish: a bug, reported
/// as one ("internal error: ..."), never as corrupt data.
#[derive(Debug, thiserror::Error)]
#[error("internal error: a {what} task {how}: {source}", how = if source.is_panic() { "panicked" } else { "was cancelled" })]
pub struct TaskFailed {
    /// What the task did.
    pub what: &'static str,
    /// Why it did not finish.
    #[source]
    pub source: tokio::task::JoinError,
}

impl TaskFailed {
    /// Wraps a join error.
    pub(crate) fn new(what: &'static str, source: tokio::task::JoinError) -> Self {
        TaskFailed { what, source }
    }

    /// The task panicked (rather than being cancelled).
    pub(crate) fn panicked(&self) -> bool {
        self.source.is_panic()
    }
}

/// A repo backend.
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Publishes `data` at `key` unless it exists (see the module contract).
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
    ) -> BoxFut<'a, Result<PutOutcome, StoreError>>;
    /// Reads an object.
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StoreError>>;
    /// Lists keys under a prefix, sorted.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StoreError>>;
    /// Deletes an object (missing is fine).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StoreError>>;
    /// Where this store is, for messages (never with credentials).
    fn describe(&self) -> String;
    /// Removes what interrupted writes left behind and no live writer can own (the local
    /// store's temporary files); returns how many. Called at `pitr stream` start-up.
    fn clean_leftovers(&self) -> BoxFut<'_, Result<usize, StoreError>> {
        Box::pin(async { Ok(0) })
    }
}

impl<T: ObjectStore + ?Sized> ObjectStore for Arc<T> {
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
    ) -> BoxFut<'a, Result<PutOutcome, StoreError>> {
        (**self).put_if_absent(key, data)
    }
    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StoreError>> {
        (**self).get(key)
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StoreError>> {
        (**self).list(prefix)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        (**self).delete(key)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn clean_leftovers(&self) -> BoxFut<'_, Result<usize, StoreError>> {
        (**self).clean_leftovers()
    }
}

/// Checks a key: relative, `/`-separated, no `..`, no empty parts, printable ASCII.
pub(crate) fn validate_key(key: &str) -> Result<(), StoreError> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
        && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(StoreError::new(
            StoreErrorKind::Permanent,
            "key",
            key,
            "invalid object key",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backend_error_is_the_source_and_the_text_is_unchanged() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = StoreError::new(StoreErrorKind::Permanent, "put", "wal/x", &io).with_source(io);
        assert_eq!(e.to_string(), "put wal/x: denied");
        let src = e.source().expect("a source");
        assert_eq!(src.to_string(), "denied");
        // Cloning keeps it.
        assert_eq!(
            e.clone().source().map(|s| s.to_string()),
            Some("denied".into())
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn a_panicked_storage_task_is_a_bug_not_corruption_and_not_retried() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let join = rt
            .block_on(async { tokio::task::spawn_blocking(|| panic!("boom")).await })
            .unwrap_err();
        let e = StoreError::task_failed("get", "k", join);
        assert_eq!(e.kind, StoreErrorKind::Internal);
        assert!(!e.is_transient());
        let text = e.to_string();
        assert!(
            text.starts_with("get k: internal error: a storage task panicked"),
            "{text}"
        );
        assert!(!text.to_lowercase().contains("corrupt"), "{text}");
        // The chain goes down to tokio's join error.
        let cause = e.source().expect("the task error");
        assert!(cause.source().is_some(), "{cause}");
        // Outside the store too (decompression, extraction): an internal error.
        let join = rt
            .block_on(async { tokio::task::spawn(async { panic!("boom") }).await })
            .unwrap_err();
        let e = crate::repo::RepoError::task("decompression")(join);
        let text = e.to_string();
        assert!(
            text.starts_with("internal error: a decompression task panicked"),
            "{text}"
        );
        assert!(e.source().is_some(), "keeps the join error");
    }
}
