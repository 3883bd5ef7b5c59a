//! The local-directory backend.
//!
//! Crash-safe publish: the bytes go to a uniquely named temporary file in the target
//! directory, which is fsync'd, then hard-linked to the final name (`link` fails if the name
//! exists: create-if-absent without a race), then the temporary name is removed and the
//! directory fsync'd. New directories are fsync'd along with their parents. When the object
//! already exists with the same bytes (a retry, or another writer), the file and its
//! directory are fsync'd before that is acknowledged: the process that linked it may have died
//! before its own directory fsync. A crash at any point leaves either no object or the whole
//! object, plus at worst a `.tmp-*` file that listings skip.
//!
//! Temporary files are named `.tmp-p<OWNER>-<PID>-<SEQ>-<NAME>`: `OWNER` identifies the
//! machine boot and PID namespace of the writer (16 hex digits, [`owner_tag`]), so another
//! process on the same machine and namespace can tell whether the writer is alive.
//! [`LocalStore`]'s `clean_leftovers` (run when `pitr stream` starts) removes a temporary file
//! only when no live writer can own it: its writer shares our boot and PID namespace and its
//! process is gone, or it is older than [`TEMP_MAX_AGE`] whoever wrote it (another host or
//! container, an older pitr's naming). A live write lasts seconds, never an hour.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::crashsafe::{create_dirs, fsync_dir, fsync_file, publish_new};

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
    StoreError::new(kind_of(&e), op, key, &e).with_source(e)
}

/// A temporary file older than this belongs to no live write.
pub(crate) const TEMP_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// FNV-1a, 64 bits: a stable hash for the owner tag.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// This process's boot and PID namespace, as 16 hex digits: two processes with the same tag
/// see the same PIDs. `0000000000000000` when they cannot be read (then no temporary file is
/// judged by its PID).
pub(crate) fn owner_tag() -> String {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
        let ns = std::fs::read_link("/proc/self/ns/pid");
        match (boot, ns) {
            (Ok(b), Ok(n)) => {
                let h = fnv1a(format!("{}|{}", b.trim(), n.display()).as_bytes());
                format!("{:016x}", h.max(1))
            }
            _ => "0".repeat(16),
        }
    })
    .clone()
}

/// The temporary name for object file `name`, written by `pid` with sequence `seq`.
pub fn temp_name(name: &str, pid: u32, seq: u64) -> String {
    format!(".tmp-p{}-{pid}-{seq}-{name}", owner_tag())
}

/// The owner tag and PID in a temporary name of the current form.
fn temp_owner(file: &str) -> Option<(&str, u32)> {
    let rest = file.strip_prefix(".tmp-p")?;
    let (tag, rest) = rest.split_once('-')?;
    let (pid, rest) = rest.split_once('-')?;
    let (seq, _name) = rest.split_once('-')?;
    let hex = tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (hex && digits(pid) && digits(seq)).then_some((tag, pid.parse().ok()?))
}

/// Whether a leftover temporary file can go (pure): no live writer can own it.
pub(crate) fn temp_is_orphan(
    file: &str,
    age: std::time::Duration,
    our_tag: &str,
    alive: impl Fn(u32) -> bool,
) -> bool {
    if !file.starts_with(".tmp-") {
        return false;
    }
    if age > TEMP_MAX_AGE {
        return true;
    }
    match temp_owner(file) {
        Some((tag, pid)) if tag == our_tag && tag != "0000000000000000" => !alive(pid),
        _ => false,
    }
}

/// Whether process `pid` of this PID namespace exists (a zombie counts as alive).
pub(crate) fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

impl LocalStore {
    /// A store rooted at `root` (created if missing).
    pub fn open(root: &Path) -> Result<LocalStore, StoreError> {
        create_dirs(root).map_err(|e| io_err("open", &root.display().to_string(), e))?;
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
        create_dirs(&dir).map_err(|e| io_err("put", key, e))?;
        if path.exists() {
            return self.compare(key, &path, &dir, data);
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("obj");
        let tmp = dir.join(temp_name(
            name,
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed),
        ));
        match publish_new(&tmp, &path, data) {
            Ok(true) => Ok(PutOutcome::Created),
            Ok(false) => self.compare(key, &path, &dir, data),
            Err(e) => Err(io_err("put", key, e)),
        }
    }

    /// The object exists: identical bytes are acknowledged once the file and its directory
    /// entry are durable (whoever linked it may have crashed before fsyncing the directory).
    fn compare(
        &self,
        key: &str,
        path: &Path,
        dir: &Path,
        data: &[u8],
    ) -> Result<PutOutcome, StoreError> {
        let existing = std::fs::read(path).map_err(|e| io_err("put", key, e))?;
        if existing == data {
            fsync_file(path)
                .and_then(|()| fsync_dir(dir))
                .map_err(|e| io_err("put", key, e))?;
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

impl LocalStore {
    /// Removes temporary files no live writer can own (see the module docs).
    fn clean_sync(&self) -> Result<usize, StoreError> {
        let tag = owner_tag();
        let mut removed = 0;
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("clean", &d.display().to_string(), e)),
            };
            let mut here = 0;
            for e in rd.flatten() {
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(e.path());
                    continue;
                }
                let name = e.file_name();
                let name = name.to_string_lossy();
                if !name.starts_with(".tmp-") {
                    continue;
                }
                let age = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or_default();
                if temp_is_orphan(&name, age, &tag, pid_alive) {
                    match std::fs::remove_file(e.path()) {
                        Ok(()) => here += 1,
                        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                        Err(err) => return Err(io_err("clean", &name, err)),
                    }
                }
            }
            if here > 0 {
                fsync_dir(&d).map_err(|e| io_err("clean", &d.display().to_string(), e))?;
                removed += here;
            }
        }
        Ok(removed)
    }
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> BoxFut<'static, Result<T, StoreError>> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|e| Err(StoreError::task_failed("io", "", e)))
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

    fn clean_leftovers(&self) -> BoxFut<'_, Result<usize, StoreError>> {
        let me = self.clone();
        blocking(move || me.clean_sync())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_existing_identical_object_is_fsyncd_before_it_is_acknowledged() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        assert_eq!(
            store.put_sync("wal/a/obj", b"bytes").unwrap(),
            PutOutcome::Created
        );
        let before = crate::crashsafe::dir_syncs();
        assert_eq!(
            store.put_sync("wal/a/obj", b"bytes").unwrap(),
            PutOutcome::AlreadyIdentical
        );
        let after = crate::crashsafe::dir_syncs();
        assert!(
            after > before,
            "AlreadyIdentical acknowledged without fsyncing the directory"
        );
        let e = store.put_sync("wal/a/obj", b"other").unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Conflict);
    }

    #[test]
    fn only_temporary_files_no_live_writer_owns_are_orphans() {
        let ours = owner_tag();
        let name = |pid| temp_name("000000010000000000000005.lz4", pid, 7);
        let fresh = Duration::from_secs(5);
        let dead = |_| false;
        let alive = |_| true;
        // Our namespace: judged by the process.
        assert!(temp_is_orphan(&name(4242), fresh, &ours, dead));
        assert!(!temp_is_orphan(&name(4242), fresh, &ours, alive));
        // Another machine or container: only by age.
        let other = "0123456789abcdef";
        assert!(!temp_is_orphan(&name(4242), fresh, other, dead));
        assert!(temp_is_orphan(&name(4242), TEMP_MAX_AGE * 2, other, alive));
        // An older pitr's naming, and names with dashes.
        let old = ".tmp-000000010000000000000005.lz4-4242-7";
        assert!(!temp_is_orphan(old, fresh, &ours, dead));
        assert!(temp_is_orphan(old, TEMP_MAX_AGE * 2, &ours, alive));
        let dashed = temp_name("1764000000-60-host-1-2.json", 9, 1);
        assert_eq!(temp_owner(&dashed), Some((ours.as_str(), 9)));
        // Not a temporary file at all.
        assert!(!temp_is_orphan(
            "000000010000000000000005.lz4",
            TEMP_MAX_AGE * 2,
            &ours,
            dead
        ));
        assert_eq!(ours.len(), 16);
    }

    #[test]
    fn clean_leftovers_removes_a_dead_writers_file_and_keeps_a_live_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = LocalStore::open(tmp.path()).unwrap();
        store.put_sync("wal/00000001/x.lz4", b"x").unwrap();
        let dir = tmp.path().join("wal/00000001");
        // A dead process of this namespace: a child that has exited.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = child.id();
        child.wait().unwrap();
        let dead = dir.join(temp_name("y.lz4", dead_pid, 1));
        let live = dir.join(temp_name("z.lz4", std::process::id(), 2));
        std::fs::write(&dead, b"half").unwrap();
        std::fs::write(&live, b"in progress").unwrap();
        assert_eq!(store.clean_sync().unwrap(), 1);
        assert!(!dead.exists() && live.exists());
        assert!(dir.join("x.lz4").exists());
    }
}
