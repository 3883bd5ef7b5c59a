//! PostgreSQL's programs and the user they run as: the process helpers `restore`, `verify`
//! and `demo` share.
//!
//! # Invariants
//!
//! - Binary discovery never guesses a major version: a directory is used only when its
//!   `postgres --version` names the major asked for ([`find_binaries`]).
//! - Candidates come from `--pg-bin` when given, else every `PATH` directory holding the
//!   program, then `pg_config --bindir`, in that order ([`path_dirs_with`],
//!   [`pg_config_bindir`]).
//! - Users and ids are read from `/proc/self/status` and `/etc/passwd`, never from the
//!   environment; [`chown_tree`] never follows a symlink.

use std::path::{Path, PathBuf};
use std::process::Command;

/// No usable PostgreSQL binaries of the major asked for. The message lists what was tried
/// and says what to pass.
#[derive(Debug, thiserror::Error)]
#[error(
    "no PostgreSQL {major} binaries found ({tried}): pass --pg-bin with PostgreSQL {major}'s bin directory"
)]
pub struct BinariesError {
    /// The major version asked for.
    pub major: u32,
    /// What was tried, in words.
    pub tried: String,
}

/// Every `PATH` directory holding `program`, in `PATH` order.
pub(crate) fn path_dirs_with(program: &str) -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .filter(|d| d.join(program).is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// `pg_config --bindir`, when `pg_config` runs.
pub(crate) fn pg_config_bindir() -> Option<PathBuf> {
    let o = Command::new("pg_config").arg("--bindir").output().ok()?;
    o.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string()))
}

/// Locates `postgres`/`pg_ctl` of the right major: `--pg-bin`, then PATH, then `pg_config`.
pub(crate) fn find_binaries(pg_bin: Option<&Path>, major: u32) -> Result<PathBuf, BinariesError> {
    let mut tried = Vec::new();
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(b) = pg_bin {
        candidates.push(b.to_path_buf());
    } else {
        candidates.extend(path_dirs_with("postgres"));
        candidates.extend(pg_config_bindir());
    }
    for d in candidates {
        match postgres_version(&d) {
            Some((found, _)) if found == major => return Ok(d),
            Some((_, text)) => tried.push(format!("{} is {text}", d.display())),
            None => tried.push(format!("{}: no usable postgres", d.display())),
        }
    }
    Err(BinariesError {
        major,
        tried: if tried.is_empty() {
            "none on PATH or from pg_config".to_string()
        } else {
            tried.join("; ")
        },
    })
}

/// `postgres --version` in `dir`: (major, the version line).
pub(crate) fn postgres_version(dir: &Path) -> Option<(u32, String)> {
    let o = Command::new(dir.join("postgres"))
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
    Some((major_of_version_line(&text), text))
}

/// The major of a `postgres --version` line (`postgres (PostgreSQL) 17.2` is 17, and so is
/// `postgres (PostgreSQL) 17.2 (Debian 17.2-1.pgdg120+1)`): the word after `(PostgreSQL)`,
/// else the last word; 0 when it names none.
pub(crate) fn major_of_version_line(text: &str) -> u32 {
    let words: Vec<&str> = text.split_whitespace().collect();
    let version = words
        .iter()
        .position(|w| *w == "(PostgreSQL)")
        .and_then(|i| words.get(i + 1))
        .or(words.last());
    version
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// The effective uid, from /proc (0 = root).
pub(crate) fn euid() -> Option<u32> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    uid_line_euid(&s)
}

/// The effective uid in the text of `/proc/<pid>/status` (the second id of its `Uid:` line).
fn uid_line_euid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// uid and gid of a local user, from /etc/passwd.
pub(crate) fn uid_gid_of(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd_lookup(&passwd, user)
}

/// uid and gid of `user` in the text of a passwd file.
fn passwd_lookup(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// `chown -R` without following symlinks.
pub(crate) fn chown_tree(p: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    let md = std::fs::symlink_metadata(p)?;
    if md.is_dir() {
        for e in std::fs::read_dir(p)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_major_comes_from_the_version_line() {
        assert_eq!(major_of_version_line("postgres (PostgreSQL) 17.2"), 17);
        assert_eq!(
            major_of_version_line("postgres (PostgreSQL) 18beta1"),
            0,
            "no dotted version: no major"
        );
        assert_eq!(
            major_of_version_line("postgres (PostgreSQL) 15.10 (Debian 15.10-1)"),
            15
        );
        assert_eq!(
            major_of_version_line("postgres (PostgreSQL) 17.2 (Debian 17.2-1.pgdg120+1)"),
            17,
            "the official image's line: the word after (PostgreSQL)"
        );
        assert_eq!(major_of_version_line(""), 0);
    }

    #[test]
    fn the_effective_uid_is_the_second_id() {
        let status = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(uid_line_euid(status), Some(0));
        assert_eq!(uid_line_euid("Name:\tx\n"), None);
    }

    #[test]
    fn a_user_is_found_by_exact_name() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\npostgres2:x:7:7::/:/bin/sh\npostgres:x:70:71::/var/lib/postgresql:/bin/sh\n";
        assert_eq!(passwd_lookup(passwd, "postgres"), Some((70, 71)));
        assert_eq!(passwd_lookup(passwd, "nobody"), None);
        assert_eq!(passwd_lookup("bad:x:notanumber:1::/:/\n", "bad"), None);
    }

    #[test]
    fn missing_binaries_say_what_was_tried_and_what_to_pass() {
        let d = tempfile::tempdir().unwrap();
        let e = find_binaries(Some(d.path()), 17).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "no PostgreSQL 17 binaries found ({}: no usable postgres): pass --pg-bin with PostgreSQL 17's bin directory",
                d.path().display()
            )
        );
    }

    #[test]
    fn chown_tree_reaches_every_entry_without_following_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/nonexistent", d.path().join("link")).unwrap();
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(d.path()).unwrap();
        // To the owner it already has: allowed for anyone, and the dangling symlink is not
        // followed (that would fail).
        chown_tree(d.path(), md.uid(), md.gid()).unwrap();
    }
}
