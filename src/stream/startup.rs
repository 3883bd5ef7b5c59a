//! What happens before the first byte of a run is archived: where to resume along the
//! server's history, whether the server's history and WAL are the repo's, and what to do when
//! the server no longer has the WAL after the repo's tip.
//!
//! # Invariants
//!
//! - Read-only: nothing here writes to the repo or the spool, except [`record_gap`] (the gap
//!   record, written before any WAL after the gap) and, on the server, [`gap_resume`]
//!   (recreating pitr's own slot once its WAL is gone).
//! - Timelines are followed along the **server's** history ([`path_of`]): the repo's WAL of a
//!   timeline counts only up to where the server's history leaves that timeline, so WAL of
//!   another branch (an old primary that ran on after a failover, another cluster line) is
//!   never continued.
//! - Two history files for one timeline ID must agree on every switch (parent timeline and
//!   switch LSN, as PostgreSQL's `readTimeLineHistory` in src/backend/access/transam/timeline.c
//!   reads them). The free-text reason is ignored: recovery never reads it, and two promotions
//!   with the same switches describe the same branch point (a difference after it is caught by
//!   the WAL check).

use bytes::Bytes;
use walfmt::{Lsn, SegNo, TimeLineId, TimelineHistory, WalSegSize};

use super::StreamError;
use super::continuity::Checker;
use crate::replication::codec::ServerNotice;
use crate::replication::commands::quote_ident;
use crate::replication::conn::{ConnError, PgConn};
use crate::repo::gaps::{self, GapRecord};
use crate::repo::{self, Repo};

/// One step of a timeline path: `tli` holds the WAL in `[from, to)`.
pub(crate) type Step = crate::repo::catalog::PathStep;

/// The steps of a history, oldest first; the last is the history's own timeline, open-ended.
pub(crate) fn path_of(h: &TimelineHistory) -> Vec<Step> {
    crate::repo::catalog::history_path(h)
}

/// The server's history of `tli` (`TIMELINE_HISTORY`; timeline 1 has none): parsed, and its
/// raw content to archive.
pub(crate) async fn server_history(
    conn: &mut PgConn,
    tli: TimeLineId,
) -> Result<(TimelineHistory, Option<Vec<u8>>), StreamError> {
    if tli.0 <= 1 {
        return Ok((
            TimelineHistory {
                tli,
                ancestors: Vec::new(),
            },
            None,
        ));
    }
    let (_, content) = conn.timeline_history(tli).await?;
    let h = TimelineHistory::parse(tli, &String::from_utf8_lossy(&content)).map_err(|e| {
        StreamError::Refused(format!(
            "the server's history file of timeline {} is unreadable: {e}",
            tli.0
        ))
    })?;
    Ok((h, Some(content)))
}

fn switches(entries: &[walfmt::HistoryEntry]) -> Vec<(u32, Lsn)> {
    entries.iter().map(|e| (e.tli.0, e.end)).collect()
}

fn describe(entries: &[(u32, Lsn)]) -> String {
    if entries.is_empty() {
        return "no parent".into();
    }
    entries
        .iter()
        .map(|(t, l)| format!("timeline {t} until {l}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compares the server's history `h` with the repo's history files of `h.tli` and of every
/// ancestor they share. `Err(message)` on the first disagreement (a divergence).
pub(crate) fn compare_histories(
    h: &TimelineHistory,
    repo_histories: &[(TimeLineId, TimelineHistory)],
) -> Result<(), String> {
    for (t, theirs) in repo_histories {
        // What the server says timeline `t` descends from.
        let ours: Vec<(u32, Lsn)> = if *t == h.tli {
            switches(&h.ancestors)
        } else if h.ancestors.iter().any(|a| a.tli == *t) {
            switches(&h.ancestors)
                .into_iter()
                .filter(|(a, _)| *a < t.0)
                .collect()
        } else {
            continue;
        };
        let repo = switches(&theirs.ancestors);
        if ours != repo {
            let first = ours
                .iter()
                .zip(&repo)
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len().min(repo.len()));
            let at = ours
                .get(first)
                .or(repo.get(first))
                .map(|(_, l)| *l)
                .unwrap_or(Lsn(0));
            return Err(format!(
                "timeline {}: the server's history of timeline {} ({}) differs from the repo's {} ({}) from {at} on: another cluster line reuses timeline ID {}",
                h.tli.0,
                t.0,
                describe(&ours),
                repo::history_key(*t),
                describe(&repo),
                t.0
            ));
        }
    }
    Ok(())
}

/// The repo's history files of `h.tli` and its ancestors (those it has).
pub(crate) async fn repo_histories(
    r: &Repo,
    h: &TimelineHistory,
) -> Result<Vec<(TimeLineId, TimelineHistory)>, StreamError> {
    let mut out = Vec::new();
    for t in history_tlis(h) {
        let key = repo::history_key(t);
        let got = r
            .retrying("get", std::time::Duration::from_secs(30))
            .store()
            .get(&key)
            .await?;
        if let Some(b) = got {
            let parsed = TimelineHistory::parse(t, &String::from_utf8_lossy(&b)).map_err(|e| {
                repo::RepoError::Corrupt {
                    repo: r.location.clone(),
                    message: format!("{key}: {e}"),
                }
            })?;
            out.push((t, parsed));
        }
    }
    Ok(out)
}

/// The timelines of `h` that have a history file: its ancestors and its own, but timeline 1.
fn history_tlis(h: &TimelineHistory) -> impl Iterator<Item = TimeLineId> + '_ {
    h.ancestors
        .iter()
        .map(|a| a.tli)
        .chain(std::iter::once(h.tli))
        .filter(|t| t.0 > 1)
}

/// Whether the server's history `h` is the repo's: `Ok(Err(why))` is a divergence (see
/// [`compare_histories`]).
///
/// In write-only mode the repo's history files cannot be read: each one the repo holds (of
/// `h.tli` and its ancestors) must hold exactly the bytes of the server's history file of
/// that timeline (`TIMELINE_HISTORY`), by its keyed digest. That is stricter than
/// [`compare_histories`] (a history file with the same switches but another free-text reason
/// is refused too); pitr archives history files as the server sends them, so the same
/// cluster line sends the same bytes.
pub(crate) async fn check_histories(
    r: &Repo,
    conn: &mut PgConn,
    h: &TimelineHistory,
) -> Result<Result<(), String>, StreamError> {
    if r.can_read() {
        let theirs = repo_histories(r, h).await?;
        return Ok(compare_histories(h, &theirs));
    }
    let rr = r.retrying("check a history file", std::time::Duration::from_secs(30));
    for t in history_tlis(h) {
        let key = repo::history_key(t);
        if !rr.exists(&key).await? {
            continue;
        }
        let (_, content) = conn.timeline_history(t).await?;
        match rr.holds(&key, &content).await? {
            Some(true) | None => {}
            Some(false) => {
                return Ok(Err(history_digest_mismatch(h.tli, t, &key)));
            }
        }
    }
    Ok(Ok(()))
}

/// The divergence of a history file in write-only mode (its bytes cannot be compared).
pub(crate) fn history_digest_mismatch(tli: TimeLineId, t: TimeLineId, key: &str) -> String {
    format!(
        "timeline {}: the server's history file of timeline {} is not what the repo's {key} holds (write-only mode compares the object's keyed digest without decrypting it, so it cannot say how they differ): another cluster line reuses timeline ID {}",
        tli.0, t.0, t.0
    )
}

/// A WAL object of the repo, from its name (a complete segment, or a partial up to `end`).
pub(crate) type Obj = repo::ArchivedTip;

/// The repo's WAL objects (complete segments and partials), retrying while storage is down.
pub(crate) async fn objects(r: &Repo, seg: WalSegSize) -> Result<Vec<Obj>, StreamError> {
    Ok(
        r.retrying("list the repo", std::time::Duration::from_secs(10))
            .wal_objects(seg)
            .await?,
    )
}

/// Where the repo's WAL along `path` ends, and where streaming resumes: `(timeline, segment
/// start, archived to)`. `None` when the repo holds nothing on the path.
///
/// From the newest step back: the newest object of the step's timeline within its range; if
/// it reaches the step's switch point, streaming resumes on the next step at the segment of
/// the switch point; otherwise on this timeline at the object's segment (a partial, streamed
/// again) or the next one (a complete segment).
pub(crate) fn resume_along(
    path: &[Step],
    objs: &[Obj],
    seg: WalSegSize,
) -> Option<(TimeLineId, Lsn, Lsn)> {
    for (i, step) in path.iter().enumerate().rev() {
        let lo = step.from.segment(seg);
        let hi = if step.to.0 == u64::MAX {
            SegNo(u64::MAX)
        } else {
            step.to.prev_segment(seg)
        };
        let Some(best) = objs
            .iter()
            .filter(|o| o.tli == step.tli && o.segno >= lo && o.segno <= hi)
            .max_by_key(|o| (o.segno, o.complete, o.end))
        else {
            continue;
        };
        if best.end >= step.to
            && let Some(next) = path.get(i + 1)
        {
            return Some((next.tli, step.to.segment_start(seg), step.to));
        }
        let start = if best.complete {
            best.end
        } else {
            best.segno.start_lsn(seg)?
        };
        return Some((step.tli, start, best.end.min(step.to)));
    }
    None
}

/// What the repo (or the spool) holds of one segment, from its start: the server's bytes
/// there are compared with it.
#[derive(Debug)]
pub(crate) struct Source {
    /// Its bytes, from the segment start.
    pub bytes: Bytes,
    /// What it is, for messages.
    pub what: String,
}

/// A WAL object known by its name only: its key, and how many bytes from its segment's
/// start it holds (a whole segment, or a partial up to its end LSN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Named {
    /// Its key.
    pub key: String,
    /// Bytes from the segment start.
    pub len: u64,
    /// A complete segment.
    pub complete: bool,
    /// A partial's end.
    pub partial_end: Option<Lsn>,
}

/// The newest object of (`tli`, `segno`) by name: a complete segment or the longest partial.
pub(crate) fn newest_named(
    objs: &[Obj],
    tli: TimeLineId,
    segno: SegNo,
    seg: WalSegSize,
) -> Option<Named> {
    let best = objs
        .iter()
        .filter(|o| o.tli == tli && o.segno == segno)
        .max_by_key(|o| (o.complete, o.end))?;
    Some(if best.complete {
        Named {
            key: repo::segment_key(tli, segno, seg),
            len: seg.bytes(),
            complete: true,
            partial_end: None,
        }
    } else {
        Named {
            key: repo::partial_key(tli, segno, best.end, seg),
            len: segno.bytes_until(best.end, seg),
            complete: false,
            partial_end: Some(best.end),
        }
    })
}

/// The newest object of (`tli`, `segno`): a complete segment or the longest partial.
pub(crate) async fn newest_object(
    r: &Repo,
    objs: &[Obj],
    tli: TimeLineId,
    segno: SegNo,
    seg: WalSegSize,
) -> Result<Option<Source>, StreamError> {
    let Some(n) = newest_named(objs, tli, segno, seg) else {
        return Ok(None);
    };
    let got = r
        .retrying("get", std::time::Duration::from_secs(30))
        .read_wal_object(&n.key, segno, n.partial_end, seg)
        .await?;
    let Some(mut data) = got else {
        return Ok(None);
    };
    data.truncate(n.len as usize);
    Ok(Some(Source {
        bytes: Bytes::from(data),
        what: n.key,
    }))
}

/// How a run is checked and streamed.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Where START_REPLICATION begins (the run's start, or the segment before it when that
    /// segment is compared byte for byte).
    pub stream_from: Lsn,
    /// The check.
    pub checker: Checker,
    /// Received bytes below this are only compared, never forwarded as received.
    pub drop_below: Lsn,
    /// Forwarded first once proven: the expected bytes from the run's start.
    pub prefix: Option<Bytes>,
    /// Write-only mode ([`Checker::digest`]): once proven, the collected server bytes are the
    /// run's prefix (they are the run's first bytes, not the segment before it).
    pub digest_prefix: bool,
}

impl Plan {
    /// Nothing to check: stream from `start`.
    pub(crate) fn nothing(start: Lsn) -> Plan {
        Plan {
            stream_from: start,
            checker: Checker::nothing(),
            drop_below: start,
            prefix: None,
            digest_prefix: false,
        }
    }

    /// The server's bytes from `start` must equal `src` (cut at `limit`).
    pub(crate) fn overlap(start: Lsn, src: Source, limit: Lsn) -> Plan {
        let n = (src.bytes.len() as u64).min(limit.bytes_since(start)) as usize;
        let bytes = src.bytes.slice(..n);
        Plan {
            stream_from: start,
            drop_below: Lsn(start.0 + n as u64),
            checker: Checker::bytes(start, bytes.clone(), src.what),
            prefix: Some(bytes),
            digest_prefix: false,
        }
    }

    /// Write-only mode: the server's bytes from `start` (the segment start) must re-make the
    /// repo object `obj` of that segment exactly, by its digest; once proven they are the run's
    /// prefix. `None` when the object reaches past `limit` (where the server's history leaves
    /// its timeline): the server cannot send the object's bytes beyond it, so its digest cannot
    /// be re-made.
    pub(crate) fn sealed_overlap(start: Lsn, obj: &Named, limit: Lsn) -> Option<Plan> {
        if obj.len > limit.bytes_since(start) {
            return None;
        }
        Some(Plan {
            stream_from: start,
            drop_below: Lsn(start.0 + obj.len),
            checker: Checker::digest(start, obj.len, obj.key.clone()),
            prefix: None,
            digest_prefix: true,
        })
    }

    /// Write-only mode: the server's bytes of the complete segment `prev` (before the run at
    /// `start`) must re-make it exactly, by its digest; they are compared only.
    pub(crate) fn sealed_previous(start: Lsn, from: Lsn, prev: &Named) -> Plan {
        Plan {
            stream_from: from,
            drop_below: start,
            checker: Checker::digest(from, prev.len, prev.key.clone()),
            prefix: None,
            digest_prefix: false,
        }
    }
}

/// What a server error means for the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerSays {
    /// The WAL at the requested point is gone (removed segment, invalidated slot).
    WalRemoved {
        /// The segment the server named, if it did.
        segment: Option<String>,
    },
    /// The requested start is beyond the server's flush position.
    Behind {
        /// The server's flush position as it said.
        flush: Option<Lsn>,
    },
    /// Something else.
    Other,
}

/// Classifies a server error of START_REPLICATION or of the stream. The messages are
/// walsender.c's (`StartReplication`: "requested starting point %X/%X is ahead of the WAL
/// flush position of this server %X/%X"; PostgreSQL 18 refuses an invalidated slot with "can
/// no longer access replication slot", DETAIL "This replication slot has been invalidated
/// due to ..."; reading removed WAL: "requested WAL segment %s has already been removed",
/// xlogreader's `WALReadRaiseError`, SQLSTATE 58P01).
pub(crate) fn classify(n: &ServerNotice) -> ServerSays {
    let m = &n.message;
    if m.contains("has already been removed") {
        let segment = m
            .split_whitespace()
            .find(|w| w.len() == 24 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned);
        return ServerSays::WalRemoved { segment };
    }
    let invalidated = n
        .detail
        .as_deref()
        .is_some_and(|d| d.contains("invalidated"))
        || m.contains("has been invalidated");
    if invalidated && (m.contains("replication slot") || n.code == "55000") {
        return ServerSays::WalRemoved { segment: None };
    }
    if m.contains("is ahead of the WAL flush position") {
        let flush = m.split_whitespace().last().and_then(|w| w.parse().ok());
        return ServerSays::Behind { flush };
    }
    ServerSays::Other
}

/// A server error of START_REPLICATION or of the stream that follows it (the walsender
/// answers CopyBoth before it checks the start point), as the run's error: the WAL is gone,
/// or the server is behind, or anything else as it came.
pub(crate) fn server_error(tli: TimeLineId, start: Lsn, e: ConnError) -> StreamError {
    if let ConnError::Server(n) = &e {
        match classify(n) {
            ServerSays::WalRemoved { segment } => {
                return StreamError::WalRemoved {
                    tli,
                    start,
                    segment,
                    reason: n.to_string(),
                };
            }
            ServerSays::Behind { flush } => {
                return StreamError::ServerBehind {
                    tli,
                    start,
                    flush: flush.map_or_else(|| "?".into(), |l| l.to_string()),
                };
            }
            ServerSays::Other => {}
        }
    }
    StreamError::Conn(e)
}

/// After the server said the WAL at the resume point is gone: where archiving can go on.
/// With a slot, the slot failed to keep that WAL (invalidated, dropped and recreated too
/// late): it is dropped and created again with RESERVE_WAL, which reserves from the last
/// checkpoint's redo point (`ReplicationSlotReserveWal` in src/backend/replication/slot.c),
/// WAL the server is guaranteed to still have; archiving resumes at that segment and the new
/// slot holds it from then on. An invalidated physical slot cannot be trusted even where
/// PostgreSQL lets it stream: an invalidated slot retains nothing. Without a slot: the
/// server's current segment.
pub(crate) async fn gap_resume(
    conn: &mut PgConn,
    slot: Option<&str>,
    seg: WalSegSize,
) -> Result<(TimeLineId, Lsn), StreamError> {
    let Some(slot) = slot else {
        let sys = conn.identify_system().await?;
        return Ok((sys.timeline, sys.xlogpos.segment_start(seg)));
    };
    if conn.read_replication_slot(slot).await?.is_some() {
        // Not `WAIT`: another process holding the slot must not hang pitr. Our own previous
        // walsender may take a moment to let go of it after the error (SQLSTATE 55006).
        let drop = format!("DROP_REPLICATION_SLOT {}", quote_ident(slot));
        let mut tries = 0;
        loop {
            match conn.simple_query(&drop).await {
                Ok(_) => break,
                Err(e) if e.sqlstate() == Some("42704") => break,
                Err(e) if e.sqlstate() == Some("55006") && tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        tracing::warn!(slot = %slot, "dropped the replication slot that no longer holds the WAL pitr needs; creating it again");
    }
    conn.create_physical_slot(slot).await?;
    let info = conn.read_replication_slot(slot).await?;
    match info.and_then(|i| Some((i.restart_lsn?, i.restart_tli?))) {
        Some((l, t)) => Ok((t, l.segment_start(seg))),
        None => Err(StreamError::Refused(format!(
            "the replication slot {slot:?} reserves no WAL after it was created with RESERVE_WAL"
        ))),
    }
}

/// Records a gap before anything past it is archived, and makes it loud: one error line, the
/// metrics, `/healthz`, and the scheduler is asked for a base backup now.
pub(crate) async fn record_gap(
    r: &Repo,
    metrics: &crate::metrics::Metrics,
    g: &GapRecord,
) -> Result<(), StreamError> {
    let key = gaps::record(
        &r.retrying("record the gap", std::time::Duration::from_secs(30)),
        g,
    )
    .await?;
    metrics.gap_recorded(g);
    tracing::error!(
        gap = %key,
        reason = %g.reason,
        "{}: the server no longer has it; archiving goes on from {}; backups before the gap restore only up to {}; take a base backup now (pitr backup, or the --backup-every/--backup-at scheduler does it at once)",
        g.describe(),
        g.to,
        g.from
    );
    Ok(())
}

/// Keeps the open-gap state (`/healthz`, `pitr_wal_gap_open`) true to the repo: read at
/// start-up, again every `every` while a gap is open, and when asked (a gap was recorded, a
/// backup completed).
pub(crate) async fn gap_watch(
    r: Repo,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    every: std::time::Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let every = every.max(std::time::Duration::from_millis(200));
    loop {
        let wait = if crate::metrics::refresh_open_gap(&r, &metrics).await {
            every
        } else {
            std::time::Duration::from_secs(3600)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = metrics.gap_recheck.notified() => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MB: u64 = 1 << 20;

    fn seg() -> WalSegSize {
        WalSegSize::new(1 << 20).unwrap()
    }

    fn hist(tli: u32, text: &str) -> TimelineHistory {
        TimelineHistory::parse(TimeLineId(tli), text).unwrap()
    }

    fn partial(t: u32, s: u64, end: u64) -> Obj {
        Obj {
            tli: TimeLineId(t),
            segno: SegNo(s),
            complete: false,
            end: Lsn(end),
        }
    }

    fn complete(t: u32, s: u64) -> Obj {
        Obj {
            tli: TimeLineId(t),
            segno: SegNo(s),
            complete: true,
            end: Lsn((s + 1) * MB),
        }
    }

    #[test]
    fn resume_along_the_servers_history() {
        let one = path_of(&hist(1, ""));
        // Nothing archived.
        assert_eq!(resume_along(&one, &[], seg()), None);
        // A partial: its segment again; a complete segment: the next.
        let objs = [complete(1, 3), partial(1, 4, 4 * MB + 500)];
        assert_eq!(
            resume_along(&one, &objs, seg()),
            Some((TimeLineId(1), Lsn(4 * MB), Lsn(4 * MB + 500)))
        );
        assert_eq!(
            resume_along(&one, &[complete(1, 3)], seg()),
            Some((TimeLineId(1), Lsn(4 * MB), Lsn(4 * MB)))
        );
        // After a failover at 5.5 MB: the old primary's WAL past the switch is not continued.
        let two = path_of(&hist(2, "1\t0/580000\tno recovery target specified\n"));
        let objs = [complete(1, 4), partial(1, 5, 5 * MB + 900_000)];
        assert_eq!(
            resume_along(&two, &objs, seg()),
            Some((TimeLineId(2), Lsn(5 * MB), Lsn(0x58_0000)))
        );
        // The repo lags behind the switch: timeline 1 first.
        let objs = [complete(1, 4), partial(1, 5, 5 * MB + 100)];
        assert_eq!(
            resume_along(&two, &objs, seg()),
            Some((TimeLineId(1), Lsn(5 * MB), Lsn(5 * MB + 100)))
        );
        // Timeline 2 archived too: its tip.
        let objs = [
            complete(1, 4),
            partial(1, 5, 5 * MB + 900_000),
            complete(2, 5),
            partial(2, 6, 6 * MB + 8),
        ];
        assert_eq!(
            resume_along(&two, &objs, seg()),
            Some((TimeLineId(2), Lsn(6 * MB), Lsn(6 * MB + 8)))
        );
        // Another line, timeline 3 from timeline 1 at 3.5 MB: timeline 2 (not on its path) and
        // timeline 1's WAL after 3.5 MB are ignored.
        let three = path_of(&hist(3, "1\t0/380000\tfrom a restore\n"));
        assert_eq!(resume_along(&three, &objs, seg()), None);
        let mut objs = objs.to_vec();
        objs.push(complete(1, 3));
        assert_eq!(
            resume_along(&three, &objs, seg()),
            Some((TimeLineId(3), Lsn(3 * MB), Lsn(0x38_0000)))
        );
        // A switch exactly at a segment boundary.
        let b = path_of(&hist(2, "1\t0/500000\tx\n"));
        assert_eq!(
            resume_along(&b, &[complete(1, 4)], seg()),
            Some((TimeLineId(2), Lsn(5 * MB), Lsn(5 * MB)))
        );
    }

    #[test]
    fn histories_compare_by_switches_only() {
        let server = hist(
            3,
            "1\t0/3000060\tno recovery target specified\n2\t0/5000A00\tat restore point\n",
        );
        let same = hist(3, "# comment\n1\t0/3000060\tother words\n2\t0/5000A00\t\n");
        let two = hist(2, "1\t0/3000060\tanything\n");
        assert_eq!(
            compare_histories(&server, &[(TimeLineId(3), same), (TimeLineId(2), two)]),
            Ok(())
        );
        // Another line's timeline 2, branched elsewhere: refused, naming both switch points.
        let other2 = hist(2, "1\t0/2000028\tno recovery target specified\n");
        let e = compare_histories(&server, &[(TimeLineId(2), other2)]).unwrap_err();
        assert!(
            e.contains("0/3000060") && e.contains("0/2000028") && e.contains("timeline ID 2"),
            "{e}"
        );
        // The repo's history of the server's own timeline with another parent.
        let other3 = hist(3, "1\t0/3000060\tx\n");
        assert!(compare_histories(&server, &[(TimeLineId(3), other3)]).is_err());
        // A repo history of a timeline the server does not descend from is not compared.
        let unrelated = hist(4, "1\t0/1000000\tx\n");
        assert_eq!(
            compare_histories(&server, &[(TimeLineId(4), unrelated)]),
            Ok(())
        );
    }

    fn notice(code: &str, message: &str, detail: Option<&str>) -> ServerNotice {
        ServerNotice {
            severity: "ERROR".into(),
            code: code.into(),
            message: message.into(),
            detail: detail.map(str::to_owned),
            hint: None,
        }
    }

    #[test]
    fn server_errors_are_classified() {
        // Messages as PostgreSQL 15-18 send them (captured from pg_receivewal runs).
        assert_eq!(
            classify(&notice(
                "58P01",
                "requested WAL segment 000000010000000000000005 has already been removed",
                None
            )),
            ServerSays::WalRemoved {
                segment: Some("000000010000000000000005".into())
            }
        );
        assert_eq!(
            classify(&notice(
                "55000",
                "can no longer access replication slot \"pitr\"",
                Some("This replication slot has been invalidated due to \"wal_removed\".")
            )),
            ServerSays::WalRemoved { segment: None }
        );
        assert_eq!(
            classify(&notice(
                "XX000",
                "requested starting point 0/9000000 is ahead of the WAL flush position of this server 0/3001F28",
                None
            )),
            ServerSays::Behind {
                flush: Some(Lsn(0x0300_1F28))
            }
        );
        assert_eq!(
            classify(&notice(
                "42704",
                "replication slot \"x\" does not exist",
                None
            )),
            ServerSays::Other
        );
    }
}
