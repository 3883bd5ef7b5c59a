//! Live writers of a repo: each `pitr stream` keeps a heartbeat object in the repo, so a second
//! one on the same repo (a rolling update, or a mistake) is noticed and named.
//!
//! # Objects (see `docs/repo-format.md`)
//!
//! `writers/<AT>-<EVERY>-<WRITER>.json`: `AT` is the heartbeat's time (Unix seconds, 10
//! digits), `EVERY` the writer's heartbeat interval in seconds, `WRITER` the process:
//! `HOST-OWNER-PID-START` (the host name with characters outside `[A-Za-z0-9.]` replaced by
//! `-`, or `sealed` in an encrypted repo, whose object names are in the clear; `OWNER` the machine boot and PID namespace, as in the local store's temporary files
//! ([`crate::repo::local::owner_tag`]); `START` its start, Unix seconds). The body says who it
//! is ([`Heartbeat`]). Liveness is read from the key alone, so one LIST answers it.
//!
//! # Invariants
//!
//! - The repo rules hold: every heartbeat is a new key, created with create-if-absent and
//!   never rewritten (the body is the same for every heartbeat of a process, so a retried put
//!   is identical); the previous one is deleted after the new one is durable.
//! - Bounded requests: one PUT, one DELETE and one LIST per heartbeat (default every 60 s),
//!   plus one GET the first time another writer is seen (none in write-only mode, where other
//!   processes' heartbeats cannot be read: the warning then assumes nothing about their slot).
//! - A heartbeat is live for 3 of its writer's intervals. A `kill -9`'d process stops
//!   renewing its heartbeat, which then expires; one older than [`FORGET_AFTER`] is deleted.
//!   A writer of the same boot and PID namespace whose process is gone is not live (and its
//!   heartbeat is deleted) at once: a restart on the same machine does not warn about its
//!   predecessor. Hosts' clocks are assumed to agree within a heartbeat interval.
//! - Best effort: storage trouble here is logged, never fatal, and never delays WAL.
//! - When `pitr stream` ends (a signal or an error) it deletes its own heartbeat, so a
//!   successor stops counting it at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::repo::Repo;

/// Where heartbeats live.
pub(crate) const PREFIX: &str = "writers/";
/// A heartbeat is live for this many of its writer's intervals.
pub(crate) const LIVE_INTERVALS: u64 = 3;
/// An expired heartbeat older than this is deleted (its process is gone).
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Who writes: the body of a heartbeat object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    /// Host name.
    pub host: String,
    /// Process id (on that host).
    pub pid: u32,
    /// The replication slot it streams from (`None`: no slot).
    pub slot: Option<String>,
    /// When it started (RFC 3339, UTC).
    pub since: String,
    /// Its heartbeat interval, seconds.
    pub every_secs: u64,
    /// The pitr version.
    pub pitr: String,
    /// Its machine boot and PID namespace ([`crate::repo::local::owner_tag`]).
    pub owner: String,
    /// Unix seconds of `since` (part of the writer's name).
    #[serde(skip)]
    start_unix: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

impl Heartbeat {
    /// This process's heartbeat.
    pub(crate) fn of_this_process(slot: Option<String>, every: Duration) -> Heartbeat {
        Heartbeat {
            host: hostname(),
            pid: std::process::id(),
            slot,
            since: jiff::Timestamp::now().to_string(),
            every_secs: every.as_secs().max(1),
            pitr: env!("CARGO_PKG_VERSION").into(),
            owner: crate::repo::local::owner_tag(),
            start_unix: unix_now(),
        }
    }

    /// The writer's name in keys.
    pub(crate) fn writer(&self) -> String {
        self.writer_named(&self.host)
    }

    /// The writer's name in the keys of an encrypted repo: the host name is replaced by
    /// `sealed`, since object names leave the host in the clear and the host name is metadata
    /// (it stays in the sealed body). Only the owner tag and PID are parsed back.
    pub(crate) fn sealed_writer(&self) -> String {
        self.writer_named("sealed")
    }

    fn writer_named(&self, host: &str) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .take(64)
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        };
        format!(
            "{}-{}-{}-{}",
            clean(host),
            self.owner,
            self.pid,
            self.start_unix
        )
    }
}

/// The owner tag and PID in a writer's name.
pub(crate) fn parse_writer(writer: &str) -> Option<(&str, u32)> {
    let mut it = writer.rsplitn(4, '-');
    let _start = it.next()?;
    let pid = it.next()?.parse().ok()?;
    let owner = it.next()?;
    it.next()?;
    Some((owner, pid))
}

/// Whether a writer is known to be gone: it shares this process's boot and PID namespace
/// and its process no longer exists.
fn known_gone(writer: &str, me: &Heartbeat) -> bool {
    match parse_writer(writer) {
        Some((owner, pid)) => {
            owner == me.owner
                && owner != "0000000000000000"
                && pid != me.pid
                && !crate::repo::local::pid_alive(pid)
        }
        None => false,
    }
}

/// The key of a heartbeat.
pub(crate) fn key(at: u64, every_secs: u64, writer: &str) -> String {
    format!("{PREFIX}{at:010}-{every_secs}-{writer}.json")
}

/// Parses a heartbeat key: (at, every, writer).
pub(crate) fn parse_key(key: &str) -> Option<(u64, u64, &str)> {
    let rest = key.strip_prefix(PREFIX)?.strip_suffix(".json")?;
    let (at, rest) = rest.split_once('-')?;
    let (every, writer) = rest.split_once('-')?;
    if writer.is_empty() || at.len() != 10 {
        return None;
    }
    Some((at.parse().ok()?, every.parse().ok()?, writer))
}

/// What a listing says about other writers.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Census {
    /// Other writers with a live heartbeat: writer name and its newest key.
    pub live: BTreeMap<String, String>,
    /// Heartbeats to delete: expired long ago.
    pub forgotten: Vec<String>,
}

/// Sorts a listing of `writers/` (pure): who else is live at `now`, what can go. `gone`: the
/// writer's process is known to have ended.
pub(crate) fn census<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    me: &str,
    now: u64,
    gone: impl Fn(&str) -> bool,
) -> Census {
    let mut c = Census::default();
    for k in keys {
        let Some((at, every, writer)) = parse_key(k) else {
            continue;
        };
        let age = now.saturating_sub(at);
        if age > FORGET_AFTER.as_secs().max(every * LIVE_INTERVALS * 10)
            || (writer != me && gone(writer))
        {
            c.forgotten.push(k.to_owned());
        } else if writer != me && age <= every * LIVE_INTERVALS {
            let newest = c
                .live
                .entry(writer.to_owned())
                .or_insert_with(|| k.to_owned());
            if k > newest.as_str() {
                *newest = k.to_owned();
            }
        }
    }
    c
}

/// Keeps this process's heartbeat until `stop` turns true (then deletes it), and reports
/// other live writers (`pitr_repo_other_writers`, and a warning naming each one when it is
/// first seen).
pub(crate) async fn run(
    repo: Repo,
    me: Heartbeat,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let writer = match repo.keyring() {
        Some(_) => me.sealed_writer(),
        None => me.writer(),
    };
    let body = Bytes::from(serde_json::to_vec(&me).unwrap_or_default());
    let every = Duration::from_secs(me.every_secs);
    let store = repo.store().clone();
    let readable = repo.can_read();
    let mut mine: Option<String> = None;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut warned_storage = false;
    loop {
        let beat = async {
            let now = unix_now();
            let k = key(now, me.every_secs, &writer);
            match store.put_if_absent(&k, body.clone()).await {
                Ok(_) => {
                    if let Some(old) = mine.replace(k.clone())
                        && old != k
                    {
                        let _ = store.delete(&old).await;
                    }
                }
                Err(e) if !warned_storage => {
                    tracing::warn!(error = %e, "cannot record this process in the repo's writers/ (a second pitr stream on this repo would go unnoticed); retrying");
                    warned_storage = true;
                }
                Err(_) => {}
            }
            match store.list(PREFIX).await {
                Ok(list) => {
                    let c = census(list.iter().map(|o| o.key.as_str()), &writer, now, |w| {
                        known_gone(w, &me)
                    });
                    for k in &c.forgotten {
                        let _ = store.delete(k).await;
                    }
                    metrics
                        .other_writers
                        .store(c.live.len() as u64, Ordering::Relaxed);
                    for (other, k) in &c.live {
                        if seen.insert(other.clone()) {
                            warn_about(&store, readable, k, &me).await;
                        }
                    }
                    seen.retain(|w| c.live.contains_key(w));
                }
                Err(e) => tracing::debug!(error = %e, "cannot list writers/"),
            }
        };
        tokio::select! {
            _ = beat => {}
            _ = stop.changed() => break,
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => break,
        }
    }
    if let Some(k) = mine {
        // Bounded: storage may be down at exit; the entry then expires on its own.
        let _ = tokio::time::timeout(Duration::from_secs(1), store.delete(&k)).await;
    }
}

/// Names another live writer. Its slot decides the advice, so a heartbeat that cannot be read
/// (or, in write-only mode, is not read: it is sealed for another process) gets the warning
/// that assumes nothing.
async fn warn_about(
    store: &Arc<dyn crate::repo::store::ObjectStore>,
    readable: bool,
    key: &str,
    me: &Heartbeat,
) {
    let other: Option<Heartbeat> = match readable {
        true => match store.get(key).await {
            Ok(Some(b)) => serde_json::from_slice(&b).ok(),
            _ => None,
        },
        false => None,
    };
    let Some(o) = other else {
        if !readable {
            tracing::warn!(
                heartbeat = key,
                "another pitr stream is writing to this repo (write-only mode cannot read its heartbeat, so whether it streams from the same slot is unknown): if it is not being replaced, stop one of them"
            );
            return;
        }
        tracing::warn!(
            heartbeat = key,
            "another pitr stream is writing to this repo (its heartbeat could not be read)"
        );
        return;
    };
    let slot = o.slot.clone().unwrap_or_else(|| "(none)".into());
    if o.slot == me.slot {
        tracing::warn!(host = %o.host, pid = o.pid, slot = %slot, since = %o.since, heartbeat = key,
            "another pitr stream is writing to this repo with the same slot: only one can stream from it, so this process waits until that one stops (a rolling update); if it is not being replaced, stop one of them");
    } else {
        tracing::warn!(host = %o.host, pid = o.pid, slot = %slot, since = %o.since, heartbeat = key,
            "another pitr stream is writing to this repo with a different slot: both archive the same WAL, and once it stops its slot keeps holding WAL on the server; stop one of them, then drop the unused slot (SELECT pg_drop_replication_slot('{slot}'))");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_odd_names_are_ignored() {
        let k = key(1_764_000_000, 60, "db-1.local-42-1764000000");
        assert_eq!(k, "writers/1764000000-60-db-1.local-42-1764000000.json");
        assert_eq!(
            parse_key(&k),
            Some((1_764_000_000, 60, "db-1.local-42-1764000000"))
        );
        for bad in [
            "writers/x.json",
            "writers/1764000000-60-.json",
            "writers/17640-60-w.json",
            "wal/1764000000-60-w.json",
            "writers/1764000000-sixty-w.json",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
        let mut h = Heartbeat::of_this_process(Some("pitr".into()), Duration::from_secs(60));
        h.host = "pod/with spaces_and:colons".into();
        assert!(
            h.writer().starts_with("pod-with-spaces-and-colons-"),
            "{}",
            h.writer()
        );
        assert!(crate::repo::store::validate_key(&key(1, 60, &h.writer())).is_ok());
        // An encrypted repo's key does not show the host name, and parses the same.
        let sealed = h.sealed_writer();
        assert!(
            sealed.starts_with("sealed-") && !sealed.contains("pod"),
            "{sealed}"
        );
        assert_eq!(parse_writer(&sealed), parse_writer(&h.writer()));
    }

    #[test]
    fn census_counts_live_others_and_forgets_the_long_dead() {
        let now = 10_000u64;
        let keys = [
            key(now - 30, 60, "me-1-1"),
            key(now - 10, 60, "b-2-2"),
            key(now - 70, 60, "b-2-2"),
            key(now - 170, 60, "c-3-3"), // within 3 x 60 s: live
            key(now - 200, 60, "d-4-4"), // expired, not yet forgotten
            key(now - 2, 1, "e-5-5"),
            key(now - 5, 1, "f-6-6"), // 1 s heartbeat, 5 s old: expired
            key(now - 4000, 60, "g-7-7"),
        ];
        let c = census(keys.iter().map(String::as_str), "me-1-1", now, |_| false);
        assert_eq!(
            c.live.keys().map(String::as_str).collect::<Vec<_>>(),
            ["b-2-2", "c-3-3", "e-5-5"]
        );
        assert_eq!(c.live["b-2-2"], key(now - 10, 60, "b-2-2"));
        assert_eq!(c.forgotten, [key(now - 4000, 60, "g-7-7")]);
        // A writer known to be gone (same machine and namespace, no such process) is not
        // counted, and its heartbeats go at once.
        let c = census(keys.iter().map(String::as_str), "me-1-1", now, |w| {
            w == "b-2-2"
        });
        assert!(!c.live.contains_key("b-2-2"));
        assert!(c.forgotten.contains(&key(now - 10, 60, "b-2-2")));
    }

    #[test]
    fn a_writer_of_this_machine_whose_process_is_gone_is_known_gone() {
        let me = Heartbeat::of_this_process(None, Duration::from_secs(60));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut other = me.clone();
        other.pid = pid;
        assert_eq!(
            parse_writer(&other.writer()),
            Some((me.owner.as_str(), pid))
        );
        assert!(known_gone(&other.writer(), &me));
        // Alive (this very process, seen as another start), or of another namespace: unknown.
        let mut alive = me.clone();
        alive.start_unix += 1;
        assert!(!known_gone(&alive.writer(), &me));
        other.owner = "0123456789abcdef".into();
        assert!(!known_gone(&other.writer(), &me));
    }
}
