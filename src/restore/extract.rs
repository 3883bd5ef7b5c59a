//! Safe extraction of one tar archive produced by PostgreSQL's `BASE_BACKUP`.
//!
//! The archives are plain POSIX ustar: regular files, directories, and symlinks only as
//! `pg_tblspc/<oid>`. The [`tar`] crate is used only to walk the entries and read their
//! headers and data; every file, directory and link is written here so that:
//!
//! - no entry lands outside the restore directory (absolute names, `..`, NUL bytes and empty
//!   names are refused);
//! - nothing is ever written through a symlink (an entry whose path crosses an existing
//!   symlink under the destination is refused, and files are created with `O_EXCL`, which
//!   does not follow a symlink at the final component either);
//! - nothing is overwritten (an existing file is an error);
//! - files get mode 0600 and directories 0700, whatever the header says;
//! - `pg_tblspc/<oid>` links point where [`ExtractOptions::tablespaces`] says, never where
//!   the archive says;
//! - hard links, devices, fifos, sparse files and other symlinks are refused.
//!
//! The reader is consumed as a stream (nothing is kept in memory beyond a 256 KiB copy
//! buffer), so the caller can feed decompressed chunks as they arrive. The work is
//! synchronous: async callers run it in `spawn_blocking`.
//!
//! The archive ends at its two zero blocks (anything after them is not read) or, since
//! servers before PostgreSQL 15 omit those blocks, at end of input on a header boundary.
//! End of input anywhere else is [`ExtractError::Corrupt`].

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every directory created.
const DIR_MODE: u32 = 0o700;
/// Mode of every file created.
const FILE_MODE: u32 = 0o600;
/// Size of the copy buffer (reads are gathered to this size before each write).
const COPY_BUF: usize = 256 * 1024;

/// Extraction errors. Display is one line naming the archive and the entry.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry whose path is absolute, contains `..`, is empty, or is otherwise unsafe.
    #[error("{archive}: refusing entry {entry:?}: unsafe path")]
    UnsafePath {
        /// The archive's name.
        archive: String,
        /// The entry's name as recorded in the archive.
        entry: String,
    },
    /// An entry type we do not restore (hard link, device, fifo, symlink outside pg_tblspc/, ...).
    #[error("{archive}: refusing entry {entry:?}: {kind} entries are not restored")]
    UnsupportedEntry {
        /// The archive's name.
        archive: String,
        /// The entry's name as recorded in the archive.
        entry: String,
        /// What the entry is.
        kind: String,
    },
    /// A pg_tblspc/<oid> symlink whose tablespace has no destination in `tablespaces`.
    #[error(
        "{archive}: entry \"pg_tblspc/{oid}\": tablespace {oid} (originally at {original:?}) has no restore destination"
    )]
    UnmappedTablespace {
        /// The archive's name.
        archive: String,
        /// The tablespace OID.
        oid: String,
        /// The link target recorded in the archive.
        original: String,
    },
    /// The target already exists (we never overwrite).
    #[error("{path}: already exists (refusing to overwrite)")]
    Exists {
        /// The existing path.
        path: PathBuf,
    },
    /// Malformed tar.
    #[error("{archive}: corrupt tar: {message}")]
    Corrupt {
        /// The archive's name.
        archive: String,
        /// What is wrong, naming the entry where known.
        message: String,
    },
    /// I/O on the destination.
    #[error("{path}: {source}")]
    Io {
        /// The destination path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// How to extract.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExtractOptions {
    /// Tablespace OID (as in `pg_tblspc/<oid>`) -> the directory where that tablespace is restored. A `pg_tblspc/<oid>` symlink entry becomes a symlink to this path instead of the path recorded in the tar.
    pub tablespaces: HashMap<String, PathBuf>,
}

/// What was extracted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ExtractStats {
    /// Regular files written.
    pub files: u64,
    /// Directory entries processed (the archive root is not counted).
    pub dirs: u64,
    /// Tablespace symlinks created.
    pub links: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Extracts `archive` (a name for messages, e.g. "base.tar") from `r` into `dest` (which must exist).
/// `on_bytes` is called with the number of file bytes written after each file (for a progress bar).
///
/// # Errors
///
/// The first unsafe or unsupported entry, existing target, malformed or truncated archive
/// (errors reading `r` count as [`ExtractError::Corrupt`] too), or I/O failure on `dest`
/// stops the extraction; what was written until then stays in `dest`.
pub(crate) fn extract<R: Read>(
    r: R,
    archive: &str,
    dest: &Path,
    opts: &ExtractOptions,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<ExtractStats, ExtractError> {
    match fs::metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ExtractError::Io {
                path: dest.to_path_buf(),
                source: io::Error::from(io::ErrorKind::NotADirectory),
            });
        }
        Err(source) => {
            return Err(ExtractError::Io {
                path: dest.to_path_buf(),
                source,
            });
        }
    }

    let mut x = Extractor {
        archive,
        dest,
        opts,
        dirs: HashSet::new(),
        buf: vec![0; COPY_BUF],
        stats: ExtractStats::default(),
    };
    let mut tar = tar::Archive::new(r);
    let entries = tar.entries().map_err(|e| x.corrupt(e.to_string()))?;
    let mut last: Option<String> = None;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            x.corrupt(match &last {
                Some(name) => format!("{e} (after entry {name:?})"),
                None => format!("{e} (at the first entry)"),
            })
        })?;
        let name = x.entry(&mut entry, on_bytes)?;
        last = Some(name);
    }
    Ok(x.stats)
}

/// An entry's name after normalisation.
#[derive(Debug, PartialEq, Eq)]
enum Name<'a> {
    /// The archive root (`.`, `./`).
    Root,
    /// A relative path: its components, none empty, `.` or `..`.
    Path(Vec<&'a [u8]>),
}

/// Normalises a raw entry name; `None` if it is unsafe.
///
/// Empty and `.` components are dropped (so `./a//b/` is `a/b`); a name that is empty, is
/// absolute, contains a NUL or has a `..` component is unsafe. A name made only of `.` and
/// `/` (not leading) is the root.
fn normalise(raw: &[u8]) -> Option<Name<'_>> {
    if raw.is_empty() || raw.first() == Some(&b'/') || raw.contains(&0) {
        return None;
    }
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        Some(Name::Root)
    } else {
        Some(Name::Path(parts))
    }
}

/// The OID if `parts` is exactly `pg_tblspc/<digits>`.
fn tablespace_oid<'a>(parts: &[&'a [u8]]) -> Option<&'a str> {
    match parts {
        [dir, oid]
            if *dir == b"pg_tblspc" && !oid.is_empty() && oid.iter().all(u8::is_ascii_digit) =>
        {
            std::str::from_utf8(oid).ok()
        }
        _ => None,
    }
}

/// A name for an entry type we refuse.
fn kind_name(t: tar::EntryType) -> String {
    match t.as_byte() {
        b'1' => "hard link".to_owned(),
        b'2' => "symlink".to_owned(),
        b'3' => "character device".to_owned(),
        b'4' => "block device".to_owned(),
        b'6' => "fifo".to_owned(),
        b'7' => "contiguous file".to_owned(),
        b'S' => "GNU sparse file".to_owned(),
        b'L' | b'K' => "GNU long name".to_owned(),
        b'x' => "pax extended header".to_owned(),
        b if b.is_ascii_graphic() => format!("type '{}'", char::from(b)),
        b => format!("type {b:#04x}"),
    }
}

/// The state of one extraction.
struct Extractor<'a> {
    archive: &'a str,
    dest: &'a Path,
    opts: &'a ExtractOptions,
    /// Paths (relative to `dest`) known to be real directories, not symlinks.
    dirs: HashSet<PathBuf>,
    buf: Vec<u8>,
    stats: ExtractStats,
}

impl Extractor<'_> {
    fn corrupt(&self, message: String) -> ExtractError {
        ExtractError::Corrupt {
            archive: self.archive.to_owned(),
            message,
        }
    }

    fn unsafe_path(&self, entry: &str) -> ExtractError {
        ExtractError::UnsafePath {
            archive: self.archive.to_owned(),
            entry: entry.to_owned(),
        }
    }

    fn unsupported(&self, entry: &str, kind: String) -> ExtractError {
        ExtractError::UnsupportedEntry {
            archive: self.archive.to_owned(),
            entry: entry.to_owned(),
            kind,
        }
    }

    /// Restores one entry; returns its name (for messages about what follows).
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        on_bytes: &mut dyn FnMut(u64),
    ) -> Result<String, ExtractError> {
        let kind = entry.header().entry_type();
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        if kind.is_pax_global_extensions() {
            // Metadata for the archive as a whole (no file); BASE_BACKUP emits none.
            return Ok(name);
        }
        let parts = match normalise(&raw) {
            Some(Name::Path(parts)) => parts,
            Some(Name::Root) if kind.is_dir() => return Ok(name),
            Some(Name::Root) | None => return Err(self.unsafe_path(&name)),
        };
        let rel: PathBuf = parts.iter().map(|p| OsStr::from_bytes(p)).collect();

        match kind.as_byte() {
            b'5' => {
                self.ensure_dirs(&rel, true, &name)?;
                self.stats.dirs += 1;
            }
            b'0' | b'\0' => {
                if raw.last() == Some(&b'/') {
                    // Old tars marked directories this way; BASE_BACKUP never does.
                    return Err(self.unsafe_path(&name));
                }
                if let Some(parent) = rel.parent() {
                    self.ensure_dirs(parent, false, &name)?;
                }
                let n = self.write_file(entry, &rel, &name)?;
                self.stats.files += 1;
                self.stats.bytes += n;
                on_bytes(n);
            }
            b'2' => {
                let Some(oid) = tablespace_oid(&parts) else {
                    return Err(self.unsupported(&name, "symlink outside pg_tblspc/".to_owned()));
                };
                let original = entry
                    .link_name_bytes()
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                let Some(target) = self.opts.tablespaces.get(oid) else {
                    return Err(ExtractError::UnmappedTablespace {
                        archive: self.archive.to_owned(),
                        oid: oid.to_owned(),
                        original,
                    });
                };
                if let Some(parent) = rel.parent() {
                    self.ensure_dirs(parent, false, &name)?;
                }
                let path = self.dest.join(&rel);
                std::os::unix::fs::symlink(target, &path).map_err(|source| {
                    if source.kind() == io::ErrorKind::AlreadyExists {
                        ExtractError::Exists { path: path.clone() }
                    } else {
                        ExtractError::Io {
                            path: path.clone(),
                            source,
                        }
                    }
                })?;
                self.stats.links += 1;
            }
            _ => return Err(self.unsupported(&name, kind_name(kind))),
        }
        Ok(name)
    }

    /// Makes every component of `rel` (under `dest`) a real directory, creating missing ones
    /// with mode 0700. An existing symlink among them is [`ExtractError::UnsafePath`]; an
    /// existing non-directory is [`ExtractError::Exists`] if it is the entry itself (`is_entry`
    /// and last component), else a "not a directory" I/O error.
    fn ensure_dirs(&mut self, rel: &Path, is_entry: bool, name: &str) -> Result<(), ExtractError> {
        let mut prefix = PathBuf::new();
        let mut components = rel.components().peekable();
        while let Some(c) = components.next() {
            prefix.push(c);
            if self.dirs.contains(&prefix) {
                continue;
            }
            let last = components.peek().is_none();
            let path = self.dest.join(&prefix);
            let mut created = false;
            let meta = match fs::symlink_metadata(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match DirBuilder::new().mode(DIR_MODE).create(&path) {
                        Ok(()) => {
                            created = true;
                            None
                        }
                        // Created meanwhile: look at what it is.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            Some(fs::symlink_metadata(&path).map_err(|source| {
                                ExtractError::Io {
                                    path: path.clone(),
                                    source,
                                }
                            })?)
                        }
                        Err(source) => return Err(ExtractError::Io { path, source }),
                    }
                }
                Err(source) => return Err(ExtractError::Io { path, source }),
                Ok(m) => Some(m),
            };
            if let Some(m) = meta {
                let ft = m.file_type();
                if ft.is_symlink() {
                    return Err(self.unsafe_path(name));
                }
                if !ft.is_dir() {
                    return Err(if is_entry && last {
                        ExtractError::Exists { path }
                    } else {
                        ExtractError::Io {
                            path,
                            source: io::Error::from(io::ErrorKind::NotADirectory),
                        }
                    });
                }
            }
            if created {
                // The umask may have narrowed the mode given to mkdir.
                fs::set_permissions(&path, Permissions::from_mode(DIR_MODE))
                    .map_err(|source| ExtractError::Io { path, source })?;
            }
            self.dirs.insert(prefix.clone());
        }
        Ok(())
    }

    /// Creates `rel` (its parent exists) and copies the entry's data into it; returns the
    /// number of bytes written.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        rel: &Path,
        name: &str,
    ) -> Result<u64, ExtractError> {
        let path = self.dest.join(rel);
        // create_new is O_CREAT|O_EXCL: it fails on any existing name, symlinks included,
        // without following them.
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(ExtractError::Exists { path });
            }
            Err(source) => return Err(ExtractError::Io { path, source }),
        };
        let io_err = |path: &Path, source| ExtractError::Io {
            path: path.to_path_buf(),
            source,
        };
        file.set_permissions(Permissions::from_mode(FILE_MODE))
            .map_err(|e| io_err(&path, e))?;

        let expected = entry.size();
        let mut total: u64 = 0;
        loop {
            // Gather a full buffer (the source may hand out small chunks) before writing.
            let mut filled = 0;
            while filled < self.buf.len() {
                match entry.read(&mut self.buf[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(self.corrupt(format!("reading entry {name:?}: {e}")));
                    }
                }
            }
            if filled == 0 {
                break;
            }
            file.write_all(&self.buf[..filled])
                .map_err(|e| io_err(&path, e))?;
            total += filled as u64;
        }
        if total != expected {
            return Err(self.corrupt(format!(
                "entry {name:?} is truncated: {total} of {expected} bytes"
            )));
        }
        Ok(total)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tar::{EntryType, Header};

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// Appends an entry whose name (and link name) bytes are written raw into the header,
    /// bypassing the checks of `Header::set_path`.
    fn raw(b: &mut tar::Builder<Vec<u8>>, name: &[u8], kind: EntryType, data: &[u8], link: &[u8]) {
        let mut h = Header::new_ustar();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        raw(b, name.as_bytes(), EntryType::Regular, data, b"");
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, name: &str) {
        raw(b, name.as_bytes(), EntryType::Directory, b"", b"");
    }

    /// A pax extended header giving the next entry's path.
    fn pax_path(b: &mut tar::Builder<Vec<u8>>, path: &[u8]) {
        let body_len = " path=".len() + path.len() + 1;
        let mut len = body_len + 1;
        while len.to_string().len() + body_len != len {
            len = len.to_string().len() + body_len;
        }
        let mut rec = format!("{len} path=").into_bytes();
        rec.extend_from_slice(path);
        rec.push(b'\n');
        assert_eq!(rec.len(), len);
        raw(b, b"PaxHeaders/x", EntryType::XHeader, &rec, b"");
    }

    fn builder() -> tar::Builder<Vec<u8>> {
        tar::Builder::new(Vec::new())
    }

    fn finish(b: tar::Builder<Vec<u8>>) -> Vec<u8> {
        b.into_inner().unwrap()
    }

    fn run(bytes: &[u8], dest: &Path, opts: &ExtractOptions) -> Result<ExtractStats, ExtractError> {
        extract(bytes, "base.tar", dest, opts, &mut |_| {})
    }

    fn sample() -> Vec<u8> {
        let mut b = builder();
        dir(&mut b, "./");
        file(&mut b, "./PG_VERSION", b"17\n");
        dir(&mut b, "./base/");
        dir(&mut b, "./base/1/");
        file(&mut b, "./base/1/1259", &[7u8; 8192]);
        dir(&mut b, "./pg_wal/");
        dir(&mut b, "./pg_wal/archive_status/");
        dir(&mut b, "global");
        file(&mut b, "global/pg_control", &[1u8; 300]);
        file(&mut b, "empty", b"");
        finish(b)
    }

    #[test]
    fn normal_tree_with_dot_prefix() {
        let d = tempfile::tempdir().unwrap();
        let st = run(&sample(), d.path(), &ExtractOptions::default()).unwrap();
        assert_eq!(
            st,
            ExtractStats {
                files: 4,
                dirs: 5,
                links: 0,
                bytes: 3 + 8192 + 300
            }
        );
        let p = d.path();
        assert_eq!(fs::read(p.join("PG_VERSION")).unwrap(), b"17\n");
        assert_eq!(fs::read(p.join("base/1/1259")).unwrap(), vec![7u8; 8192]);
        assert_eq!(
            fs::read(p.join("global/pg_control")).unwrap(),
            vec![1u8; 300]
        );
        assert_eq!(fs::read(p.join("empty")).unwrap(), b"");
        assert!(p.join("pg_wal/archive_status").is_dir());
        for f in ["PG_VERSION", "base/1/1259", "global/pg_control", "empty"] {
            assert_eq!(mode(&p.join(f)), 0o600, "{f}");
        }
        for dd in [
            "base",
            "base/1",
            "pg_wal",
            "pg_wal/archive_status",
            "global",
        ] {
            assert_eq!(mode(&p.join(dd)), 0o700, "{dd}");
        }
    }

    #[test]
    fn missing_parents_are_created_0700() {
        let d = tempfile::tempdir().unwrap();
        let mut b = builder();
        file(&mut b, "a/b/c", b"x");
        let st = run(&finish(b), d.path(), &ExtractOptions::default()).unwrap();
        assert_eq!(st.files, 1);
        assert_eq!(st.dirs, 0);
        assert_eq!(mode(&d.path().join("a")), 0o700);
        assert_eq!(mode(&d.path().join("a/b")), 0o700);
        assert_eq!(fs::read(d.path().join("a/b/c")).unwrap(), b"x");
    }

    #[test]
    fn long_names_via_gnu_and_pax() {
        let d = tempfile::tempdir().unwrap();
        let long = format!("base/{}/f", "d".repeat(150));
        let mut b = builder();
        let mut h = Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
        pax_path(&mut b, format!("./pg_wal/{}", "w".repeat(120)).as_bytes());
        file(&mut b, "short", b"pax");
        let st = run(&finish(b), d.path(), &ExtractOptions::default()).unwrap();
        assert_eq!(st.files, 2);
        assert_eq!(fs::read(d.path().join(&long)).unwrap(), b"hello");
        let w = d.path().join("pg_wal").join("w".repeat(120));
        assert_eq!(fs::read(w).unwrap(), b"pax");
        assert!(!d.path().join("short").exists());
    }

    fn assert_unsafe(r: Result<ExtractStats, ExtractError>, want: &str) {
        match r {
            Err(ExtractError::UnsafePath { archive, entry }) => {
                assert_eq!(archive, "base.tar");
                assert_eq!(entry, want);
            }
            other => panic!("expected UnsafePath for {want:?}, got {other:?}"),
        }
    }

    #[test]
    fn absolute_path_rejected() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("evil");
        let name = target.to_str().unwrap().to_owned();
        let mut b = builder();
        file(&mut b, &name, b"pwned");
        assert_unsafe(run(&finish(b), d.path(), &ExtractOptions::default()), &name);
        assert!(!target.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn dotdot_rejected() {
        for name in [
            "a/../../x",
            "../x",
            "a/..",
            "./../x",
            "..",
            "a/b/../../../x",
        ] {
            let root = tempfile::tempdir().unwrap();
            let d = root.path().join("dest");
            fs::create_dir(&d).unwrap();
            let mut b = builder();
            file(&mut b, name, b"pwned");
            assert_unsafe(run(&finish(b), &d, &ExtractOptions::default()), name);
            assert!(!root.path().join("x").exists());
            assert_eq!(fs::read_dir(&d).unwrap().count(), 0, "{name}");

            let mut b = builder();
            dir(&mut b, name);
            assert_unsafe(run(&finish(b), &d, &ExtractOptions::default()), name);
        }
    }

    #[test]
    fn dotdot_via_pax_rejected() {
        let d = tempfile::tempdir().unwrap();
        let mut b = builder();
        pax_path(&mut b, b"../../evil");
        file(&mut b, "innocent", b"x");
        assert_unsafe(
            run(&finish(b), d.path(), &ExtractOptions::default()),
            "../../evil",
        );
    }

    #[test]
    fn nul_in_name_rejected() {
        let d = tempfile::tempdir().unwrap();
        let mut b = builder();
        pax_path(&mut b, b"a\0b");
        file(&mut b, "innocent", b"x");
        match run(&finish(b), d.path(), &ExtractOptions::default()) {
            Err(ExtractError::UnsafePath { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn empty_and_root_names() {
        let d = tempfile::tempdir().unwrap();
        // An empty name (the header is otherwise valid).
        let mut b = builder();
        file(&mut b, "", b"x");
        assert_unsafe(run(&finish(b), d.path(), &ExtractOptions::default()), "");
        // The root as a file.
        let mut b = builder();
        file(&mut b, "./", b"");
        assert_unsafe(run(&finish(b), d.path(), &ExtractOptions::default()), "./");
        // The root as a directory, in its spellings, is skipped.
        let mut b = builder();
        dir(&mut b, "./");
        dir(&mut b, ".");
        dir(&mut b, ".//");
        let st = run(&finish(b), d.path(), &ExtractOptions::default()).unwrap();
        assert_eq!(st, ExtractStats::default());
        // A trailing slash on a regular file.
        let mut b = builder();
        file(&mut b, "a/", b"");
        assert_unsafe(run(&finish(b), d.path(), &ExtractOptions::default()), "a/");
    }

    #[test]
    fn normalise_rules() {
        assert_eq!(
            normalise(b"./a//b/"),
            Some(Name::Path(vec![&b"a"[..], b"b"]))
        );
        assert_eq!(normalise(b"./"), Some(Name::Root));
        assert_eq!(normalise(b"."), Some(Name::Root));
        assert_eq!(normalise(b""), None);
        assert_eq!(normalise(b"/a"), None);
        assert_eq!(normalise(b"//a"), None);
        assert_eq!(normalise(b"a/../b"), None);
        assert_eq!(normalise(b"a\0"), None);
        assert_eq!(
            normalise(b"..a/b.."),
            Some(Name::Path(vec![&b"..a"[..], b"b.."]))
        );
        assert_eq!(tablespace_oid(&[b"pg_tblspc", b"16384"]), Some("16384"));
        assert_eq!(tablespace_oid(&[b"pg_tblspc", b"16384x"]), None);
        assert_eq!(tablespace_oid(&[b"pg_tblspc"]), None);
        assert_eq!(tablespace_oid(&[b"x", b"pg_tblspc", b"1"]), None);
    }

    fn assert_unsupported(
        r: Result<ExtractStats, ExtractError>,
        want_entry: &str,
        want_kind: &str,
    ) {
        match r {
            Err(ExtractError::UnsupportedEntry {
                archive,
                entry,
                kind,
            }) => {
                assert_eq!(archive, "base.tar");
                assert_eq!(entry, want_entry);
                assert_eq!(kind, want_kind);
            }
            other => panic!("expected UnsupportedEntry, got {other:?}"),
        }
    }

    #[test]
    fn symlink_outside_pg_tblspc_rejected() {
        for name in [
            "evil",
            "pg_tblspc/abc",
            "pg_tblspc/1/2",
            "x/pg_tblspc/1",
            "./pg_tblspc",
        ] {
            let d = tempfile::tempdir().unwrap();
            let mut b = builder();
            raw(&mut b, name.as_bytes(), EntryType::Symlink, b"", b"/etc");
            let mut opts = ExtractOptions::default();
            opts.tablespaces.insert("1".into(), d.path().join("ts"));
            assert_unsupported(
                run(&finish(b), d.path(), &opts),
                name,
                "symlink outside pg_tblspc/",
            );
            assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0, "{name}");
        }
    }

    #[test]
    fn hardlink_and_specials_rejected() {
        let cases = [
            (EntryType::Link, "hard link"),
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
            (EntryType::Fifo, "fifo"),
            (EntryType::Continuous, "contiguous file"),
            (EntryType::new(b'Z'), "type 'Z'"),
        ];
        for (kind, want) in cases {
            let d = tempfile::tempdir().unwrap();
            let mut b = builder();
            file(&mut b, "a", b"data");
            raw(&mut b, b"b", kind, b"", b"a");
            assert_unsupported(
                run(&finish(b), d.path(), &ExtractOptions::default()),
                "b",
                want,
            );
            assert!(!d.path().join("b").exists());
        }
    }

    fn tablespace_tar() -> Vec<u8> {
        let mut b = builder();
        dir(&mut b, "./pg_tblspc/");
        raw(
            &mut b,
            b"./pg_tblspc/16384",
            EntryType::Symlink,
            b"",
            b"/var/lib/postgresql/ts1",
        );
        file(&mut b, "PG_VERSION", b"17\n");
        finish(b)
    }

    #[test]
    fn tablespace_symlink_mapped() {
        let d = tempfile::tempdir().unwrap();
        let ts = tempfile::tempdir().unwrap();
        let target = ts.path().join("ts1");
        fs::create_dir(&target).unwrap();
        let mut opts = ExtractOptions::default();
        opts.tablespaces.insert("16384".into(), target.clone());
        let st = run(&tablespace_tar(), d.path(), &opts).unwrap();
        assert_eq!(st.links, 1);
        assert_eq!(st.dirs, 1);
        assert_eq!(st.files, 1);
        let link = d.path().join("pg_tblspc/16384");
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read_link(&link).unwrap(), target);
    }

    #[test]
    fn tablespace_unmapped() {
        let d = tempfile::tempdir().unwrap();
        let mut opts = ExtractOptions::default();
        opts.tablespaces
            .insert("99".into(), d.path().join("elsewhere"));
        match run(&tablespace_tar(), d.path(), &opts) {
            Err(e @ ExtractError::UnmappedTablespace { .. }) => {
                let msg = e.to_string();
                let ExtractError::UnmappedTablespace {
                    archive,
                    oid,
                    original,
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(archive, "base.tar");
                assert_eq!(oid, "16384");
                assert_eq!(original, "/var/lib/postgresql/ts1");
                assert!(
                    msg.contains("base.tar") && msg.contains("pg_tblspc/16384"),
                    "{msg}"
                );
                assert!(msg.contains("/var/lib/postgresql/ts1"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!d.path().join("pg_tblspc/16384").exists());
    }

    #[test]
    fn nothing_is_written_through_a_tablespace_link() {
        let d = tempfile::tempdir().unwrap();
        let ts = tempfile::tempdir().unwrap();
        let mut opts = ExtractOptions::default();
        opts.tablespaces
            .insert("16384".into(), ts.path().to_path_buf());
        let mut b = builder();
        raw(&mut b, b"pg_tblspc/16384", EntryType::Symlink, b"", b"/ts");
        file(&mut b, "pg_tblspc/16384/PG_17/x", b"x");
        assert_unsafe(run(&finish(b), d.path(), &opts), "pg_tblspc/16384/PG_17/x");
        assert_eq!(fs::read_dir(ts.path()).unwrap().count(), 0);

        // A second link entry for the same OID is refused too.
        let d = tempfile::tempdir().unwrap();
        let mut b = builder();
        raw(&mut b, b"pg_tblspc/16384", EntryType::Symlink, b"", b"/ts");
        raw(&mut b, b"pg_tblspc/16384", EntryType::Symlink, b"", b"/ts");
        match run(&finish(b), d.path(), &opts) {
            Err(ExtractError::Exists { path }) => {
                assert_eq!(path, d.path().join("pg_tblspc/16384"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn existing_file_is_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("PG_VERSION"), b"mine").unwrap();
        match run(&sample(), d.path(), &ExtractOptions::default()) {
            Err(ExtractError::Exists { path }) => assert_eq!(path, d.path().join("PG_VERSION")),
            other => panic!("{other:?}"),
        }
        assert_eq!(fs::read(d.path().join("PG_VERSION")).unwrap(), b"mine");

        // A directory entry where a file is.
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("base"), b"").unwrap();
        let mut b = builder();
        dir(&mut b, "base/");
        match run(&finish(b), d.path(), &ExtractOptions::default()) {
            Err(ExtractError::Exists { path }) => assert_eq!(path, d.path().join("base")),
            other => panic!("{other:?}"),
        }

        // A file below a file.
        let mut b = builder();
        file(&mut b, "base/1", b"");
        match run(&finish(b), d.path(), &ExtractOptions::default()) {
            Err(ExtractError::Io { path, source }) => {
                assert_eq!(path, d.path().join("base"));
                assert_eq!(source.kind(), io::ErrorKind::NotADirectory);
            }
            other => panic!("{other:?}"),
        }

        // An existing directory is fine.
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("base")).unwrap();
        let mut b = builder();
        dir(&mut b, "base");
        file(&mut b, "base/x", b"x");
        run(&finish(b), d.path(), &ExtractOptions::default()).unwrap();
    }

    #[test]
    fn existing_symlink_at_file_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::os::unix::fs::symlink(&victim, d.path().join("PG_VERSION")).unwrap();
        match run(&sample(), d.path(), &ExtractOptions::default()) {
            Err(ExtractError::Exists { path }) => assert_eq!(path, d.path().join("PG_VERSION")),
            other => panic!("{other:?}"),
        }
        assert!(!victim.exists());
    }

    #[test]
    fn path_through_existing_symlink_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("base")).unwrap();

        let mut b = builder();
        file(&mut b, "base/1/1259", b"x");
        assert_unsafe(
            run(&finish(b), d.path(), &ExtractOptions::default()),
            "base/1/1259",
        );

        let mut b = builder();
        dir(&mut b, "./base/");
        assert_unsafe(
            run(&finish(b), d.path(), &ExtractOptions::default()),
            "./base/",
        );

        let mut b = builder();
        dir(&mut b, "./base/1/");
        assert_unsafe(
            run(&finish(b), d.path(), &ExtractOptions::default()),
            "./base/1/",
        );

        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn truncated_archive_is_corrupt() {
        let bytes = sample();
        // Cut in the middle of base/1/1259's data.
        let cut = bytes.len() / 2;
        let d = tempfile::tempdir().unwrap();
        match run(&bytes[..cut], d.path(), &ExtractOptions::default()) {
            Err(ExtractError::Corrupt { archive, message }) => {
                assert_eq!(archive, "base.tar");
                assert!(message.contains("base/1/1259"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Cut in a header.
        let d = tempfile::tempdir().unwrap();
        match run(&bytes[..512 + 100], d.path(), &ExtractOptions::default()) {
            Err(ExtractError::Corrupt { .. }) => {}
            other => panic!("{other:?}"),
        }
        // Every cut: an error or (at a header boundary, as older servers omit the end
        // blocks, or within the end blocks) success, never a panic.
        for cut in (0..bytes.len())
            .step_by(37)
            .chain([1, 511, 513, 1023, 1024, 1025])
        {
            let d = tempfile::tempdir().unwrap();
            match run(&bytes[..cut], d.path(), &ExtractOptions::default()) {
                // Past the first end block the archive is complete.
                Ok(_) => assert!(cut % 512 == 0 || cut >= bytes.len() - 512, "cut {cut}"),
                Err(ExtractError::Corrupt { .. } | ExtractError::Io { .. }) => {}
                Err(e) => panic!("cut {cut}: {e}"),
            }
        }
    }

    #[test]
    fn garbage_is_corrupt_and_trailing_data_ignored() {
        let d = tempfile::tempdir().unwrap();
        match run(&[0xAB; 2048], d.path(), &ExtractOptions::default()) {
            Err(ExtractError::Corrupt { .. }) => {}
            other => panic!("{other:?}"),
        }
        let mut bytes = sample();
        bytes.extend_from_slice(&[0xAB; 5000]);
        let d = tempfile::tempdir().unwrap();
        let st = run(&bytes, d.path(), &ExtractOptions::default()).unwrap();
        assert_eq!(st.files, 4);
    }

    #[test]
    fn mutated_archives_never_panic() {
        let base = sample();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let mut bytes = base.clone();
            for _ in 0..(next() % 8 + 1) {
                let at = (next() % bytes.len() as u64) as usize;
                bytes[at] = next() as u8;
            }
            let d = tempfile::tempdir().unwrap();
            let _ = run(&bytes, d.path(), &ExtractOptions::default());
        }
    }

    /// A reader that hands out at most `n` bytes per call, like a stream of small chunks.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn on_bytes_totals_match() {
        let big: Vec<u8> = (0..(600 * 1024 + 123)).map(|i| (i % 251) as u8).collect();
        let mut b = builder();
        dir(&mut b, "./base/");
        file(&mut b, "./base/big", &big);
        file(&mut b, "./base/small", b"abc");
        file(&mut b, "./base/none", b"");
        let bytes = finish(b);
        let d = tempfile::tempdir().unwrap();
        let mut calls = Vec::new();
        let st = extract(
            Trickle(&bytes, 1000),
            "base.tar",
            d.path(),
            &ExtractOptions::default(),
            &mut |n| calls.push(n),
        )
        .unwrap();
        assert_eq!(calls, vec![big.len() as u64, 3, 0]);
        assert_eq!(st.bytes, calls.iter().sum::<u64>());
        assert_eq!(st.bytes, big.len() as u64 + 3);
        assert_eq!(fs::read(d.path().join("base/big")).unwrap(), big);
    }

    #[test]
    fn reader_errors_are_corrupt() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("stream broke"))
            }
        }
        let d = tempfile::tempdir().unwrap();
        let r = extract(
            Failing,
            "base.tar",
            d.path(),
            &ExtractOptions::default(),
            &mut |_| {},
        );
        match r {
            Err(ExtractError::Corrupt { message, .. }) => assert!(message.contains("stream broke")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_dest_is_io() {
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("nope");
        match run(&sample(), &dest, &ExtractOptions::default()) {
            Err(ExtractError::Io { path, .. }) => assert_eq!(path, dest),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn display_is_one_line_naming_archive_and_entry() {
        let errs = [
            ExtractError::UnsafePath {
                archive: "base.tar".into(),
                entry: "../x".into(),
            },
            ExtractError::UnsupportedEntry {
                archive: "base.tar".into(),
                entry: "dev/null".into(),
                kind: "character device".into(),
            },
            ExtractError::Corrupt {
                archive: "base.tar".into(),
                message: "entry \"a\" is truncated".into(),
            },
        ];
        for e in errs {
            let s = e.to_string();
            assert!(s.starts_with("base.tar: "), "{s}");
            assert!(!s.contains('\n'), "{s}");
        }
        let e = ExtractError::Exists {
            path: PathBuf::from("/r/PG_VERSION"),
        };
        assert_eq!(
            e.to_string(),
            "/r/PG_VERSION: already exists (refusing to overwrite)"
        );
    }
}
