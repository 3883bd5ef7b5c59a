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
//! - Errors say whether a retry can help ([`StoreError::is_transient`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

/// A boxed future, so backends can be chosen at run time.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
}

/// A storage error, naming the object.
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
}

impl StoreError {
    /// A retry may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == StoreErrorKind::Transient
    }

    /// Builds an error.
    pub fn new(
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
        }
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

/// Checks a key: relative, `/`-separated, no `..`, no empty parts, printable ASCII.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
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
