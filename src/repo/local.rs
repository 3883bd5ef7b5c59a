//! The local-directory backend.
//!
//! Crash-safe publish: the bytes go to a uniquely named temporary file in the target
//! directory, which is fsync'd, then hard-linked to the final name (`link` fails if the name
//! exists: create-if-absent without a race), then the temporary name is removed and the
//! directory fsync'd. New directories are fsync'd along with their parents. A crash at any
//! point leaves either no object or the whole object, plus at worst a `.tmp-*` file that
//! listings skip and a later publish cleans up.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::store::{
    BoxFut, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind, validate_key,
};

/// A repo in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

fn kind_of(e: &std::io::Error) -> StoreErrorKind {
    use std::io::ErrorKind::*;
    match e.kind() {
        Interrupted | WouldBlock | TimedOut => StoreErrorKind::Transient,
        // A full disk or quota may clear up; keep retrying rather than dying.
        StorageFull | QuotaExceeded => StoreErrorKind::Transient,
        _ => StoreErrorKind::Permanent,
    }
}

fn io_err(op: &'static str, key: &str, e: std::io::Error) -> StoreError {
    StoreError::new(kind_of(&e), op, key, e)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// `create_dir_all`, fsyncing each created directory's parent.
fn create_dirs_durably(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs_durably(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

impl LocalStore {
    /// A store rooted at `root` (created if missing).
    pub fn open(root: &Path) -> Result<LocalStore, StoreError> {
        create_dirs_durably(root).map_err(|e| io_err("open", &root.display().to_string(), e))?;
        Ok(LocalStore {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn put_sync(&self, key: &str, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let path = self.path(key)?;
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        create_dirs_durably(&dir).map_err(|e| io_err("put", key, e))?;
        if path.exists() {
            return self.compare(key, &path, data);
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("obj");
        let tmp = dir.join(format!(
            ".tmp-{name}-{}-{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let res = (|| -> std::io::Result<bool> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            drop(f);
            let created = match std::fs::hard_link(&tmp, &path) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            };
            std::fs::remove_file(&tmp)?;
            fsync_dir(&dir)?;
            Ok(created)
        })();
        match res {
            Ok(true) => Ok(PutOutcome::Created),
            Ok(false) => self.compare(key, &path, data),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(io_err("put", key, e))
            }
        }
    }

    fn compare(&self, key: &str, path: &Path, data: &[u8]) -> Result<PutOutcome, StoreError> {
        let existing = std::fs::read(path).map_err(|e| io_err("put", key, e))?;
        if existing == data {
            Ok(PutOutcome::AlreadyIdentical)
        } else {
            Err(StoreError::new(
                StoreErrorKind::Conflict,
                "put",
                key,
                format!(
                    "exists with different content ({} bytes, new {} bytes); not replaced",
                    existing.len(),
                    data.len()
                ),
            ))
        }
    }

    /// After a delete: removes the directories it left empty, up to (not including) the
    /// root, so pruning leaves no empty directories. Best effort: a directory that is not
    /// empty (or just got a new object) stays.
    fn remove_empty_parents(&self, path: &Path) {
        let mut d = path.parent();
        while let Some(dir) = d {
            if dir == self.root || !dir.starts_with(&self.root) {
                break;
            }
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
            if let Some(p) = dir.parent() {
                let _ = fsync_dir(p);
            }
            d = dir.parent();
        }
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("list", prefix, e)),
            };
            for e in rd {
                let e = e.map_err(|e| io_err("list", prefix, e))?;
                let p = e.path();
                let ft = e.file_type().map_err(|e| io_err("list", prefix, e))?;
                let name = e.file_name();
                if name.to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file() {
                    let rel = p
                        .strip_prefix(&self.root)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .replace('\\', "/");
                    if rel.starts_with(prefix) {
                        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                        out.push(ObjectMeta { key: rel, size });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> BoxFut<'static, Result<T, StoreError>> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
            Err(StoreError::new(
                StoreErrorKind::Transient,
                "io",
                "",
                format!("I/O task failed: {e}"),
            ))
        })
    })
}

impl ObjectStore for LocalStore {
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
    ) -> BoxFut<'a, Result<PutOutcome, StoreError>> {
        let me = self.clone();
        let key = key.to_owned();
        blocking(move || me.put_sync(&key, &data))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StoreError>> {
        let path = self.path(key);
        let key = key.to_owned();
        blocking(move || match std::fs::read(path?) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("get", &key, e)),
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StoreError>> {
        let me = self.clone();
        let prefix = prefix.to_owned();
        blocking(move || me.list_sync(&prefix))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        let path = self.path(key);
        let key = key.to_owned();
        let me = self.clone();
        blocking(move || {
            let path = path?;
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    if let Some(d) = path.parent() {
                        fsync_dir(d).map_err(|e| io_err("delete", &key, e))?;
                    }
                    me.remove_empty_parents(&path);
                    Ok(())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("delete", &key, e)),
            }
        })
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}
