//! Durable-filesystem helpers: the one place pitr spells out fsync sequences.
//!
//! # Invariants
//!
//! - A file's bytes are durable once [`fsync_file`] returned; a new, renamed or removed
//!   directory entry is durable once [`fsync_dir`] returned on the directory holding it
//!   (POSIX makes no promise about entries without the directory fsync).
//! - [`publish`] is atomic and durable: readers see either no file (or the old one) or the
//!   whole new file, never a prefix. The bytes go to a temporary file in the same directory
//!   (so the rename cannot cross filesystems), which is fsync'd before it is renamed over the
//!   final name; the directory is fsync'd last. A crash leaves at worst the temporary file.
//! - [`publish_new`] is the create-if-absent form: it never replaces an existing name (a
//!   hard link fails if the name exists), and a crash leaves no object or the whole object.
//! - [`create_dirs`] is `create_dir_all` whose every new directory is durable in its parent.
//! - [`publish_with_mode`] is [`publish`] whose new file has exactly the given permission
//!   bits, whatever the umask (a file another user's process must read).
//!
//! Errors say which step failed ([`PublishError`]), keeping the I/O error as the source, so
//! callers word their messages as before.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[cfg(test)]
thread_local! {
    static DIR_SYNCS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Directory fsyncs made by this thread so far (tests count them to prove a sequence fsyncs).
#[cfg(test)]
pub(crate) fn dir_syncs() -> u64 {
    DIR_SYNCS.with(std::cell::Cell::get)
}

/// fsyncs a directory: its entries (files created, renamed or removed in it) are durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    DIR_SYNCS.with(|c| c.set(c.get() + 1));
    File::open(dir)?.sync_all()
}

/// fsyncs a file by path (data and metadata).
pub(crate) fn fsync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// `create_dir_all`, fsyncing each created directory's parent. An existing directory is
/// left as it is (nothing is fsync'd).
pub(crate) fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// A failed [`publish`]: which step, on which path.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// Writing, fsyncing or renaming the temporary file failed: the final name is untouched.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The final path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file is in place, but fsyncing its directory failed: the rename may not survive
    /// a crash.
    #[error("fsync {}: {source}", dir.display())]
    SyncDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Atomically and durably replaces `path` with `data`, through the temporary file `tmp`
/// (which must be in the same directory): write `tmp`, fsync it, rename it to `path`,
/// fsync the directory.
pub(crate) fn publish(tmp: &Path, path: &Path, data: &[u8]) -> Result<(), PublishError> {
    write_synced(tmp, data)
        .and_then(|()| std::fs::rename(tmp, path))
        .map_err(|source| PublishError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    let dir = parent_dir(path);
    fsync_dir(dir).map_err(|source| PublishError::SyncDir {
        dir: dir.to_path_buf(),
        source,
    })
}

/// Durably creates `path` with `data` unless the name exists (create-if-absent without a
/// race), through the new temporary file `tmp` in the same directory: write `tmp`, fsync
/// it, hard-link it to `path` (`link` fails if the name exists), remove `tmp`, fsync the
/// directory. Returns whether this call created `path`; `false` leaves the existing file
/// untouched (compare it: it may hold other bytes). On error `tmp` is removed (best
/// effort).
pub(crate) fn publish_new(tmp: &Path, path: &Path, data: &[u8]) -> io::Result<bool> {
    let res = (|| -> io::Result<bool> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        let created = match std::fs::hard_link(tmp, path) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e),
        };
        std::fs::remove_file(tmp)?;
        fsync_dir(parent_dir(path))?;
        Ok(created)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    res
}

/// [`publish`], the new file getting exactly the permission bits `mode` (e.g. 0o644), whatever
/// the process's umask: the temporary file is created and chmod'ed first, and [`publish`]
/// truncates it, which keeps its mode.
pub(crate) fn publish_with_mode(
    tmp: &Path,
    path: &Path,
    data: &[u8],
    mode: u32,
) -> Result<(), PublishError> {
    use std::os::unix::fs::PermissionsExt;
    File::create(tmp)
        .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(mode)))
        .map_err(|source| PublishError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    publish(tmp, path, data)
}

/// Creates (or truncates) `path`, writes `data` and fsyncs it.
pub(crate) fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The directory holding `path` (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_replaces_the_file_and_fsyncs_its_directory() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("x.json");
        let tmp = d.path().join("x.json.tmp");
        std::fs::write(&path, b"old").unwrap();
        let before = dir_syncs();
        publish(&tmp, &path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!tmp.exists(), "the temporary file is renamed away");
        assert_eq!(dir_syncs(), before + 1);
    }

    #[test]
    fn a_failed_publish_names_the_final_path_and_keeps_the_cause() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("missing").join("x.json");
        let tmp = d.path().join("missing").join("x.json.tmp");
        let e = publish(&tmp, &path, b"new").unwrap_err();
        assert!(matches!(e, PublishError::Write { .. }));
        assert!(
            e.to_string()
                .starts_with(&format!("writing {}: ", path.display())),
            "{e}"
        );
        let src = std::error::Error::source(&e).unwrap();
        assert!(src.downcast_ref::<io::Error>().is_some());
    }

    #[test]
    fn publish_new_creates_once_and_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("obj");
        let before = dir_syncs();
        assert!(publish_new(&d.path().join(".tmp-1"), &path, b"first").unwrap());
        assert_eq!(dir_syncs(), before + 1, "the new name is durable");
        assert!(!publish_new(&d.path().join(".tmp-2"), &path, b"second").unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["obj"], "no temporary file is left");
        // A failure removes the temporary file.
        let nodir = d.path().join("nodir").join("obj");
        assert!(publish_new(&d.path().join(".tmp-3"), &nodir, b"x").is_err());
        assert!(!d.path().join(".tmp-3").exists());
    }

    #[test]
    fn create_dirs_makes_every_level_and_fsyncs_each_parent() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a").join("b").join("c");
        let before = dir_syncs();
        create_dirs(&deep).unwrap();
        assert!(deep.is_dir());
        assert_eq!(dir_syncs(), before + 3);
        // Existing: nothing to do.
        create_dirs(&deep).unwrap();
        assert_eq!(dir_syncs(), before + 3);
    }

    #[test]
    fn publish_with_mode_sets_the_mode_whatever_the_previous_files() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("m.prom");
        let tmp = d.path().join(".m.prom.tmp");
        // A leftover temporary file and an old file, both private: the result is 0644.
        for p in [&path, &tmp] {
            std::fs::write(p, b"old").unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let before = dir_syncs();
        publish_with_mode(&tmp, &path, b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
        assert!(!tmp.exists());
        assert_eq!(dir_syncs(), before + 1);
    }

    #[test]
    fn fsync_helpers_report_a_missing_path() {
        let d = tempfile::tempdir().unwrap();
        let gone = d.path().join("gone");
        assert_eq!(
            fsync_dir(&gone).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            fsync_file(&gone).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        std::fs::write(&gone, b"x").unwrap();
        fsync_file(&gone).unwrap();
        fsync_dir(d.path()).unwrap();
    }
}
