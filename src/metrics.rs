//! Metrics of `pitr stream`, kept in atomics and rendered as Prometheus text.
//!
//! Names follow Prometheus conventions (`_bytes`, `_seconds`, `_total`, base units). LSNs are
//! exported as byte positions, so `pitr_archive_lag_bytes` =
//! `pitr_received_lsn_bytes - pitr_archived_lsn_bytes`.
//!
//! # The server's position
//!
//! Readiness is about how far the archive trails the *server*, not what pitr happened to
//! receive (back-pressure keeps that small while the server runs far ahead). The server's WAL
//! position comes from two sources, whichever is newer: the SQL poll of the monitor
//! ([`crate::stream::monitor`]) and the replication stream itself (the `walEnd` of each
//! XLogData and keepalive). Each reading is kept with its time ([`ServerTrack`]), which gives
//! both the byte lag and a time lag: "the server was where the archive is now N seconds ago".
//!
//! Invariants:
//! - The position is **unknown** when no reading is younger than [`SERVER_POSITION_MAX_AGE`],
//!   or when none was taken since the replication connection was last lost: a reading from
//!   before the connection died proves nothing about now. While unknown, no server position,
//!   byte lag or time lag is exported (never a stale 0), `pitr_server_up` is 0 and `/readyz`
//!   fails.
//! - The server position used is never below what pitr received (the server had it).
//! - Memory is bounded: at most [`MAX_SAMPLES`] readings are kept, spaced so they cover
//!   twice the time threshold.
//! - [`readiness`] is a pure function of a snapshot, unit-tested below.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

/// Default of `--ready-max-lag`: readiness fails when the archive trails the server by more.
pub(crate) const READY_MAX_LAG_BYTES: u64 = 256 << 20;
/// Default of `--ready-max-lag-time`: readiness fails when the server was where the archive
/// is now longer ago than this.
pub(crate) const READY_MAX_LAG_TIME: Duration = Duration::from_secs(60);
/// A reading of the server's position older than this is stale: the position is unknown.
/// Readings come every few seconds (the monitor polls every 5 s; the stream asks the server
/// for a keepalive at least every 5 s), so this tolerates two missed readings.
pub(crate) const SERVER_POSITION_MAX_AGE: Duration = Duration::from_secs(15);
/// Most readings kept for the time lag.
pub(crate) const MAX_SAMPLES: usize = 512;

/// The readiness thresholds (`--ready-max-lag`, `--ready-max-lag-time`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadyPolicy {
    /// Bytes the archive may trail the server by.
    pub max_lag_bytes: u64,
    /// How long ago the server may have been where the archive is now.
    pub max_lag_time: Duration,
}

impl Default for ReadyPolicy {
    fn default() -> Self {
        ReadyPolicy {
            max_lag_bytes: READY_MAX_LAG_BYTES,
            max_lag_time: READY_MAX_LAG_TIME,
        }
    }
}

/// Readings of the server's WAL position over time (unix microseconds, byte position).
#[derive(Debug, Default, Clone)]
pub(crate) struct ServerTrack {
    /// Oldest first; positions never decrease; consecutive readings at one position are
    /// merged into the latest time the server was still there.
    samples: VecDeque<(i64, u64)>,
    /// Readings taken before this time do not count (the replication connection was lost).
    invalid_before: i64,
}

impl ServerTrack {
    /// Records that the server was at `lsn` at `now`. `spacing`: readings closer than this
    /// are merged, so every two kept readings span at least `spacing`.
    pub(crate) fn observe(&mut self, now: i64, lsn: u64, spacing: Duration) {
        let spacing = spacing.as_micros() as i64;
        // Positions only move forward: a reading below the newest one is older news (the two
        // sources race, and a message can wait in a socket buffer) and must not make the
        // newest look fresher than it is.
        if self.samples.back().is_some_and(|&(_, last)| lsn < last) {
            return;
        }
        let n = self.samples.len();
        let second_newest = n
            .checked_sub(2)
            .and_then(|i| self.samples.get(i))
            .map(|s| s.0);
        match self.samples.back_mut() {
            // Still there: the server was at this position until now.
            Some(b) if b.1 == lsn => b.0 = b.0.max(now),
            // Moved on, and the two newest readings would be within the spacing: the newest
            // one moves instead (at most two readings per spacing, and the one before keeps
            // saying until when the server was at its position).
            Some(b) if second_newest.is_some_and(|t| now - t < spacing) => *b = (now, lsn),
            _ => self.samples.push_back((now, lsn)),
        }
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// A (re)connection found the server at `lsn`. Below the newest reading (a failover to a
    /// server that had not received everything): the readings so far describe another
    /// server's history and are dropped.
    pub(crate) fn connected(&mut self, now: i64, lsn: u64) {
        if self.samples.back().is_some_and(|&(_, last)| lsn < last) {
            self.samples.clear();
        }
        self.observe(now, lsn, Duration::ZERO);
    }

    /// Readings before `now` no longer count (the connection they came over was lost).
    pub(crate) fn invalidate(&mut self, now: i64) {
        self.invalid_before = now;
    }

    /// The newest reading, if it still counts: (time, position).
    pub(crate) fn current(&self, now: i64) -> Option<(i64, u64)> {
        let &(t, lsn) = self.samples.back()?;
        let fresh = now - t <= SERVER_POSITION_MAX_AGE.as_micros() as i64;
        (t >= self.invalid_before && fresh).then_some((t, lsn))
    }

    /// Age of the newest reading, valid or not.
    pub(crate) fn age(&self, now: i64) -> Option<Duration> {
        self.samples
            .back()
            .map(|&(t, _)| Duration::from_micros((now - t).max(0) as u64))
    }

    /// How long ago the server was where the archive is (`archived`): zero when the archive
    /// holds everything the server had at its newest reading; at least the age of the oldest
    /// reading when none is that old.
    pub(crate) fn time_lag(&self, now: i64, archived: u64) -> Duration {
        let Some(&(_, newest)) = self.samples.back() else {
            return Duration::ZERO;
        };
        if archived >= newest {
            return Duration::ZERO;
        }
        // The latest time at which the server was no further than the archive is now.
        let at = self
            .samples
            .iter()
            .rev()
            .find(|&&(_, l)| l <= archived)
            .or(self.samples.front())
            .map_or(now, |&(t, _)| t);
        Duration::from_micros((now - at).max(0) as u64)
    }
}

/// What readiness is decided from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadySnapshot {
    /// The archiver failed for good.
    pub failed: bool,
    /// Streaming now.
    pub streaming: bool,
    /// The server's position, if known, and the age of the newest reading (known or not).
    pub server: Option<u64>,
    /// Age of the newest reading of the server's position (`None`: never read).
    pub server_age: Option<Duration>,
    /// End of WAL received.
    pub received: u64,
    /// End of WAL durable in the repo.
    pub archived: u64,
    /// How long ago the server was where the archive is.
    pub time_lag: Duration,
}

/// Readiness: `Ok` when the archive is current, else why not (one line).
pub(crate) fn readiness(s: &ReadySnapshot, p: &ReadyPolicy) -> Result<(), String> {
    if s.failed {
        return Err("archiving has failed; see the log".into());
    }
    if !s.streaming {
        return Err("not streaming (connecting or reconnecting)".into());
    }
    let Some(server) = s.server else {
        return Err(match s.server_age {
            Some(a) => format!(
                "the server's WAL position is unknown (no current reading; the last is {:.0}s old): cannot tell how far the archive trails it",
                a.as_secs_f64()
            ),
            None => "the server's WAL position is unknown (not read yet): cannot tell how far the archive trails it".into(),
        });
    };
    let lag = server.max(s.received).saturating_sub(s.archived);
    if lag > p.max_lag_bytes {
        return Err(format!(
            "the archive trails the server by {lag} bytes (limit {}, --ready-max-lag)",
            p.max_lag_bytes
        ));
    }
    if s.time_lag > p.max_lag_time {
        return Err(format!(
            "the archive trails the server by {:.1}s: the server was where the archive is {:.1}s ago (limit {:?}, --ready-max-lag-time)",
            s.time_lag.as_secs_f64(),
            s.time_lag.as_secs_f64(),
            p.max_lag_time
        ));
    }
    Ok(())
}

/// Counters and gauges shared by the receiver, the archiver and the HTTP server.
#[derive(Debug, Default)]
pub struct Metrics {
    /// End of WAL received from the server.
    pub received_lsn: AtomicU64,
    /// Flush position last reported to the server.
    pub flushed_lsn: AtomicU64,
    /// End of WAL durable in the repo.
    pub archived_lsn: AtomicU64,
    /// Woken each time `archived_lsn` advances, for in-process waiters (a scheduled backup
    /// waiting for its end WAL), so they need not poll the repo.
    pub archived_wake: tokio::sync::Notify,
    /// Bytes in the `--ack spool` spool.
    pub spool_bytes: AtomicU64,
    /// Readings of the server's WAL position (see the module docs).
    server: Mutex<ServerTrack>,
    /// Readiness thresholds.
    pub ready: ReadyPolicy,
    /// Other `pitr stream` processes seen writing to the repo (heartbeats in `writers/`).
    pub other_writers: AtomicU64,
    /// Unix microseconds of the last archived commit (0: none yet).
    pub last_commit_unix_us: AtomicI64,
    /// Objects uploaded.
    pub uploads: AtomicU64,
    /// Storage retries after transient errors.
    pub retries: AtomicU64,
    /// Storage errors (transient included).
    pub errors: AtomicU64,
    /// Reconnections to the server.
    pub reconnects: AtomicU64,
    /// Current timeline.
    pub timeline: AtomicU64,
    /// Streaming right now.
    pub streaming: AtomicBool,
    /// The archiver has failed (permanently).
    pub failed: AtomicBool,
    /// `safe_wal_size` of the slot, when known.
    pub slot_safe_wal_size: AtomicU64,
    /// `slot_safe_wal_size` has been read.
    pub slot_safe_known: AtomicBool,
    /// The slot is close to (or past) `max_slot_wal_keep_size`.
    pub slot_warning: AtomicBool,
    /// Scheduled backups completed.
    pub backups: AtomicU64,
    /// Scheduled backups that failed.
    pub backup_failures: AtomicU64,
    /// Unix microseconds of the end of the last complete scheduled backup (0: none).
    pub last_backup_unix_us: AtomicI64,
    /// The server's history differs from the repo's: the one-line refusal (nothing is archived).
    pub divergence: Mutex<Option<String>>,
    /// The server's flush position was behind the repo's tip at the last start attempt.
    pub server_behind: AtomicBool,
    /// WAL gaps this process recorded.
    pub wal_gaps: AtomicU64,
    /// The newest gap while no complete backup starts after it: its one-line description.
    pub open_gap: Mutex<Option<String>>,
    /// Wakes the scheduler for a base backup now (a gap opened).
    pub backup_now: Notify,
    /// Asks for the open-gap state to be read again from the repo (a backup completed).
    pub gap_recheck: Notify,
    /// Write-only mode: (start LSN, start timeline) of the backups this process completed,
    /// the only ones whose start it knows (catalog entries cannot be read).
    backups_here: Mutex<Vec<(walfmt::Lsn, walfmt::TimeLineId)>>,
    /// Write-only mode: the warning that the gap state cannot be read was logged.
    gap_unread_warned: AtomicBool,
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Metrics {
    /// Metrics with these readiness thresholds.
    pub(crate) fn new(ready: ReadyPolicy) -> Metrics {
        Metrics {
            ready,
            ..Metrics::default()
        }
    }

    fn track(&self) -> std::sync::MutexGuard<'_, ServerTrack> {
        self.server.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a reading of the server's WAL position (from SQL or the replication stream).
    pub(crate) fn observe_server(&self, lsn: u64) {
        // Every two readings span at least `spacing`: MAX_SAMPLES of them cover at least
        // twice the time threshold.
        let spacing =
            (self.ready.max_lag_time * 4 / MAX_SAMPLES as u32).max(Duration::from_secs(1));
        self.track().observe(now_us(), lsn, spacing);
    }

    /// A replication connection found the server at `lsn` (IDENTIFY_SYSTEM).
    pub(crate) fn server_connected(&self, lsn: u64) {
        self.track().connected(now_us(), lsn);
    }

    /// Streaming starts or stops. On a stop, readings taken so far no longer count.
    pub(crate) fn set_streaming(&self, on: bool) {
        if !on {
            self.track().invalidate(now_us());
        }
        self.streaming.store(on, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ReadySnapshot {
        let now = now_us();
        let archived = self.archived_lsn.load(Ordering::Relaxed);
        let received = self.received_lsn.load(Ordering::Relaxed);
        let t = self.track();
        ReadySnapshot {
            failed: self.failed.load(Ordering::Relaxed),
            streaming: self.streaming.load(Ordering::Relaxed),
            server: t.current(now).map(|(_, l)| l),
            server_age: t.age(now),
            received,
            archived,
            time_lag: t.time_lag(now, archived),
        }
    }

    /// Archive lag in bytes.
    pub(crate) fn lag(&self) -> u64 {
        self.received_lsn
            .load(Ordering::Relaxed)
            .saturating_sub(self.archived_lsn.load(Ordering::Relaxed))
    }

    /// Liveness.
    pub(crate) fn health(&self) -> Result<(), String> {
        // The refusal says more than "failed"; an open gap says less.
        if let Some(d) = self.divergence.lock().ok().and_then(|d| d.clone()) {
            return Err(d);
        }
        if self.failed.load(Ordering::Relaxed) {
            return Err("archiving has failed; see the log".into());
        }
        self.integrity()
    }

    /// The repo's integrity as seen by the stream: a divergence (nothing is archived), or an
    /// open WAL gap (nothing after it can be restored until a base backup starts after it).
    pub(crate) fn integrity(&self) -> Result<(), String> {
        if let Some(d) = self.divergence.lock().ok().and_then(|d| d.clone()) {
            return Err(d);
        }
        if let Some(g) = self.open_gap.lock().ok().and_then(|g| g.clone()) {
            return Err(format!(
                "{g}: no complete base backup starts after it yet; take one (pitr backup)"
            ));
        }
        Ok(())
    }

    /// Records the refusal of a server whose history is not the repo's.
    pub(crate) fn set_divergence(&self, line: &str) {
        if let Ok(mut d) = self.divergence.lock() {
            *d = Some(line.to_owned());
        }
        self.streaming.store(false, Ordering::Relaxed);
    }

    /// A gap was recorded by this process: counted, open, and a backup is due now.
    pub(crate) fn gap_recorded(&self, g: &crate::repo::gaps::GapRecord) {
        self.wal_gaps.fetch_add(1, Ordering::Relaxed);
        self.set_open_gap(Some(g.describe()));
        self.backup_now.notify_one();
        self.gap_recheck.notify_one();
    }

    /// Write-only mode: a backup this process completed, starting at `start` on `tli`.
    pub(crate) fn backup_completed_here(&self, start: walfmt::Lsn, tli: walfmt::TimeLineId) {
        if let Ok(mut b) = self.backups_here.lock() {
            b.push((start, tli));
        }
    }

    /// Sets or clears the open gap.
    pub(crate) fn set_open_gap(&self, g: Option<String>) {
        if let Ok(mut cur) = self.open_gap.lock() {
            *cur = g;
        }
    }

    /// A gap is open.
    pub(crate) fn gap_open(&self) -> bool {
        self.open_gap.lock().is_ok_and(|g| g.is_some())
    }

    /// Readiness: the repo's integrity first (a divergence or an open gap), then see
    /// [`readiness`].
    pub(crate) fn readiness(&self) -> Result<(), String> {
        self.integrity()?;
        readiness(&self.snapshot(), &self.ready)
    }

    /// Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        self.render_positions(&mut s);
        self.render_activity(&mut s);
        self.render_state(&mut s);
        s
    }

    /// Positions and lag: received, flushed, archived, the server's, the newest commit.
    fn render_positions(&self, s: &mut String) {
        let mut g = |name: &str, kind: &str, help: &str, v: String| metric(s, name, kind, help, v);
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        g(
            "pitr_received_lsn_bytes",
            "gauge",
            "End of WAL received from the server, as a byte position.",
            l(&self.received_lsn),
        );
        g(
            "pitr_flushed_lsn_bytes",
            "gauge",
            "Flush position last reported to the server.",
            l(&self.flushed_lsn),
        );
        g(
            "pitr_archived_lsn_bytes",
            "gauge",
            "End of WAL durable in the repo.",
            l(&self.archived_lsn),
        );
        g(
            "pitr_archive_lag_bytes",
            "gauge",
            "WAL received but not yet durable in the repo.",
            self.lag().to_string(),
        );
        let snap = self.snapshot();
        g(
            "pitr_server_up",
            "gauge",
            "1 while the server's WAL position is known (read within the last 15 s, since the replication connection was last lost).",
            u8::from(snap.server.is_some()).to_string(),
        );
        if let Some(age) = snap.server_age {
            g(
                "pitr_server_position_age_seconds",
                "gauge",
                "Seconds since the server's WAL position was last read (over SQL or the replication stream).",
                format!("{:.3}", age.as_secs_f64()),
            );
        }
        if let Some(server) = snap.server {
            let server = server.max(snap.received);
            g(
                "pitr_server_lsn_bytes",
                "gauge",
                "The server's current WAL position (exported only while known).",
                server.to_string(),
            );
            g(
                "pitr_server_archive_lag_bytes",
                "gauge",
                "WAL the server has written that is not yet durable in the repo (exported only while the server's position is known).",
                server.saturating_sub(snap.archived).to_string(),
            );
            g(
                "pitr_server_archive_lag_seconds",
                "gauge",
                "How long ago the server was where the archive is now (exported only while the server's position is known).",
                format!("{:.3}", snap.time_lag.as_secs_f64()),
            );
        }
        g(
            "pitr_repo_other_writers",
            "gauge",
            "Other pitr stream processes with a live heartbeat in the repo (writers/).",
            l(&self.other_writers),
        );
        let last = self.last_commit_unix_us.load(Ordering::Relaxed);
        if last > 0 {
            g(
                "pitr_last_archived_commit_timestamp_seconds",
                "gauge",
                "Commit time of the newest commit durable in the repo.",
                format!("{:.6}", last as f64 / 1e6),
            );
            g(
                "pitr_last_archived_commit_age_seconds",
                "gauge",
                "Seconds since the newest commit durable in the repo was made.",
                format!("{:.3}", (now_us() - last).max(0) as f64 / 1e6),
            );
        }
    }

    /// Counters of work done: uploads, retries, errors, reconnects, scheduled backups.
    fn render_activity(&self, s: &mut String) {
        let mut g = |name: &str, kind: &str, help: &str, v: String| metric(s, name, kind, help, v);
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        g(
            "pitr_uploads_total",
            "counter",
            "Objects written to the repo.",
            l(&self.uploads),
        );
        g(
            "pitr_upload_retries_total",
            "counter",
            "Storage operations retried after a transient error.",
            l(&self.retries),
        );
        g(
            "pitr_upload_errors_total",
            "counter",
            "Storage operations that failed (retried or not).",
            l(&self.errors),
        );
        g(
            "pitr_reconnects_total",
            "counter",
            "Reconnections to the server.",
            l(&self.reconnects),
        );
        g(
            "pitr_timeline",
            "gauge",
            "Timeline being archived.",
            l(&self.timeline),
        );
        g(
            "pitr_spool_bytes",
            "gauge",
            "WAL in the local spool (--ack spool) not yet removed after upload.",
            l(&self.spool_bytes),
        );
        if self.backups.load(Ordering::Relaxed) + self.backup_failures.load(Ordering::Relaxed) > 0 {
            g(
                "pitr_backups_total",
                "counter",
                "Scheduled base backups completed (--backup-every / --backup-at).",
                l(&self.backups),
            );
            g(
                "pitr_backup_failures_total",
                "counter",
                "Scheduled base backups that failed.",
                l(&self.backup_failures),
            );
        }
        let lb = self.last_backup_unix_us.load(Ordering::Relaxed);
        if lb > 0 {
            g(
                "pitr_last_backup_timestamp_seconds",
                "gauge",
                "When the newest complete base backup ended.",
                format!("{:.6}", lb as f64 / 1e6),
            );
        }
    }

    /// State flags: streaming, divergence, a server behind the repo, WAL gaps.
    fn render_state(&self, s: &mut String) {
        let mut g = |name: &str, kind: &str, help: &str, v: String| metric(s, name, kind, help, v);
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        g(
            "pitr_streaming",
            "gauge",
            "1 while streaming from the server.",
            u8::from(self.streaming.load(Ordering::Relaxed)).to_string(),
        );
        let flag = |b: bool| u8::from(b).to_string();
        g(
            "pitr_history_diverged",
            "gauge",
            "1 when the server's history or WAL differs from the repo's (nothing is archived).",
            flag(self.divergence.lock().is_ok_and(|d| d.is_some())),
        );
        g(
            "pitr_server_behind_repo",
            "gauge",
            "1 while the server's WAL ends before the repo's tip (a lagging standby, or a rollback).",
            flag(self.server_behind.load(Ordering::Relaxed)),
        );
        g(
            "pitr_wal_gaps_total",
            "counter",
            "WAL gaps recorded in the repo by this process (WAL the server no longer had).",
            l(&self.wal_gaps),
        );
        g(
            "pitr_wal_gap_open",
            "gauge",
            "1 while no complete base backup starts after the repo's newest WAL gap.",
            flag(self.gap_open()),
        );
        g(
            "pitr_slot_retention_warning",
            "gauge",
            "1 while the slot is close to (or past) max_slot_wal_keep_size: the server may soon drop WAL the repo lacks.",
            flag(self.slot_warning.load(Ordering::Relaxed)),
        );
        if self.slot_safe_known.load(Ordering::Relaxed) {
            g(
                "pitr_slot_safe_wal_size_bytes",
                "gauge",
                "WAL the server can still write before the slot is invalidated (pg_replication_slots.safe_wal_size; exported once read, when max_slot_wal_keep_size is set).",
                l(&self.slot_safe_wal_size),
            );
        }
    }
}

/// Appends one metric: its HELP and TYPE lines and its value.
fn metric(s: &mut String, name: &str, kind: &str, help: &str, v: String) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
}

/// Reads the open-gap state from the repo into `metrics` (logging a change); true while a
/// gap is open. A gap found newly open asks the scheduler for a backup now. On a storage error
/// the state is left as it was.
pub(crate) async fn refresh_open_gap(r: &crate::repo::Repo, metrics: &Metrics) -> bool {
    if !r.can_read() {
        return refresh_open_gap_unread(r, metrics).await;
    }
    match crate::repo::gaps::read_open_gap(r).await {
        Ok(open) => {
            let was = metrics.gap_open();
            match &open {
                Some(g) if !was => {
                    tracing::error!(
                        "{}: no complete base backup starts after it; take one (pitr backup)",
                        g.describe()
                    );
                    metrics.backup_now.notify_one();
                }
                None if was => {
                    tracing::info!(
                        "a complete base backup starts after the newest WAL gap: the archive is restorable past it again"
                    );
                }
                _ => {}
            }
            metrics.set_open_gap(open.map(|g| g.describe()));
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the repo's gap records and backups"),
    }
    metrics.gap_open()
}

/// [`refresh_open_gap`] in write-only mode, where gap records and catalog entries cannot be
/// read: the newest gap comes from the records' names, and only backups this process
/// completed are known to start after it. A gap this process recorded stays open until one
/// of them does; an older one (recorded by an earlier process) is not shown as open, since
/// a backup after it may exist: one warning says so, and that `pitr list --identity` tells.
async fn refresh_open_gap_unread(r: &crate::repo::Repo, metrics: &Metrics) -> bool {
    let newest = match r.store().list(crate::repo::gaps::PREFIX).await {
        Ok(l) => l
            .iter()
            .filter_map(|o| {
                crate::repo::gaps::parse_key(&o.key).map(|(t, _, to)| (to, t, o.key.clone()))
            })
            .max(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the repo's gap records");
            return metrics.gap_open();
        }
    };
    let Some((to, tli, key)) = newest else {
        metrics.set_open_gap(None);
        return false;
    };
    let closed = metrics
        .backups_here
        .lock()
        .is_ok_and(|b| b.iter().any(|(s, t)| *s >= to && *t >= tli));
    if closed {
        if metrics.gap_open() {
            tracing::info!(
                "a complete base backup starts after the newest WAL gap: the archive is restorable past it again"
            );
        }
        metrics.set_open_gap(None);
    } else if !metrics.gap_open() && !metrics.gap_unread_warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(gap = %key, "write-only mode: the repo records WAL gaps, and whether a complete base backup starts after the newest cannot be read here; check with pitr list --identity FILE (a backup taken now makes sure)");
    }
    metrics.gap_open()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const S: i64 = 1_000_000;

    fn snap(server: Option<u64>, archived: u64, time_lag: u64) -> ReadySnapshot {
        ReadySnapshot {
            failed: false,
            streaming: true,
            server,
            server_age: server.map(|_| Duration::from_secs(1)),
            received: archived,
            archived,
            time_lag: Duration::from_secs(time_lag),
        }
    }

    #[test]
    fn readiness_follows_the_server_not_what_was_received() {
        let p = ReadyPolicy {
            max_lag_bytes: 1000,
            max_lag_time: Duration::from_secs(60),
        };
        assert_eq!(readiness(&snap(Some(5000), 4500, 1), &p), Ok(()));
        // Received = archived (back-pressure), but the server is far ahead.
        let e = readiness(&snap(Some(50_000), 4500, 1), &p).unwrap_err();
        assert!(e.contains("trails the server by 45500 bytes"), "{e}");
        // Few bytes, but old: the server was there 2 minutes ago.
        let e = readiness(&snap(Some(4600), 4500, 120), &p).unwrap_err();
        assert!(e.contains("120.0s"), "{e}");
        // Unknown server position: not ready, whatever else says.
        let e = readiness(&snap(None, 4500, 0), &p).unwrap_err();
        assert!(e.contains("unknown"), "{e}");
        // What was received counts as the server's position (the server had it).
        let mut s = snap(Some(100), 100, 0);
        s.received = 5000;
        assert!(readiness(&s, &p).is_err());
        let mut s = snap(Some(5000), 0, 0);
        s.streaming = false;
        assert!(readiness(&s, &p).unwrap_err().contains("not streaming"));
        s.failed = true;
        assert!(readiness(&s, &p).unwrap_err().contains("failed"));
    }

    #[test]
    fn a_reading_from_before_the_connection_was_lost_does_not_count() {
        let mut t = ServerTrack::default();
        t.observe(10 * S, 1000, Duration::from_secs(1));
        assert_eq!(t.current(11 * S), Some((10 * S, 1000)));
        // Stale after the maximum age.
        assert_eq!(t.current(10 * S + 16 * S), None);
        assert_eq!(t.age(26 * S), Some(Duration::from_secs(16)));
        // Lost connection: unknown at once, until a new reading.
        t.invalidate(12 * S);
        assert_eq!(t.current(12 * S), None);
        t.observe(13 * S, 1200, Duration::from_secs(1));
        assert_eq!(t.current(13 * S), Some((13 * S, 1200)));
        // Positions never go back (the two sources race), and an older position does not
        // refresh the newest one.
        t.observe(14 * S, 1100, Duration::from_secs(1));
        assert_eq!(t.current(14 * S), Some((13 * S, 1200)));
        // A failover to a server that is behind: the old history goes.
        t.connected(15 * S, 900);
        assert_eq!(t.current(15 * S), Some((15 * S, 900)));
        assert_eq!(t.samples.len(), 1);
        t.connected(16 * S, 950);
        assert_eq!(t.current(16 * S), Some((16 * S, 950)));
    }

    #[test]
    fn time_lag_is_how_long_ago_the_server_was_where_the_archive_is() {
        let mut t = ServerTrack::default();
        let sp = Duration::from_secs(1);
        // Idle at 1000 from t=0 to t=30 (merged into one reading), then writing.
        for i in 0..=30 {
            t.observe(i * S, 1000, sp);
        }
        for i in 31..=40 {
            t.observe(i * S, 1000 + 100 * (i as u64 - 30), sp);
        }
        assert!(t.samples.len() <= 12, "{:?}", t.samples);
        // Archive at 1000: the server was there until t=30; at t=40 that is 10 s ago.
        assert_eq!(t.time_lag(40 * S, 1000), Duration::from_secs(10));
        // Archive at 1500 (the server passed it at t=35): 5 s.
        assert_eq!(t.time_lag(40 * S, 1500), Duration::from_secs(5));
        // Caught up: no lag.
        assert_eq!(t.time_lag(40 * S, 2000), Duration::ZERO);
        // The archive is behind every reading: at least as old as the oldest one (the end of
        // the idle stretch).
        assert_eq!(t.time_lag(40 * S, 10), Duration::from_secs(10));
    }

    #[test]
    fn readings_are_bounded_whatever_their_rate() {
        let mut t = ServerTrack::default();
        for i in 0..100_000i64 {
            t.observe(i * 1000, i as u64, Duration::from_millis(1));
        }
        assert_eq!(t.samples.len(), MAX_SAMPLES);
        // Many readings within the spacing collapse.
        let mut t = ServerTrack::default();
        for i in 0..10_000i64 {
            t.observe(i * 10, i as u64, Duration::from_secs(1));
        }
        assert!(t.samples.len() <= 2, "{}", t.samples.len());
    }

    /// Both slot metrics the README lists are exported (they were collected but not rendered
    /// before): the warning always, the safe size once it has been read.
    #[test]
    fn slot_retention_is_exported() {
        let m = Metrics::default();
        let body = m.render();
        assert!(body.contains("pitr_slot_retention_warning 0\n"), "{body}");
        assert!(!body.contains("pitr_slot_safe_wal_size_bytes"), "{body}");
        m.slot_safe_wal_size.store(5 << 20, Ordering::Relaxed);
        m.slot_safe_known.store(true, Ordering::Relaxed);
        m.slot_warning.store(true, Ordering::Relaxed);
        let body = m.render();
        assert!(body.contains("pitr_slot_retention_warning 1\n"), "{body}");
        assert!(
            body.contains(&format!("pitr_slot_safe_wal_size_bytes {}\n", 5 << 20)),
            "{body}"
        );
    }

    #[test]
    fn no_server_lag_is_exported_while_the_position_is_unknown() {
        let m = Metrics::default();
        m.set_streaming(true);
        m.archived_lsn.store(1000, Ordering::Relaxed);
        m.observe_server(1000);
        let body = m.render();
        assert!(body.contains("pitr_server_up 1"), "{body}");
        assert!(body.contains("pitr_server_archive_lag_bytes 0"), "{body}");
        m.set_streaming(false);
        let body = m.render();
        assert!(body.contains("pitr_server_up 0"), "{body}");
        assert!(!body.contains("pitr_server_archive_lag_bytes"), "{body}");
        assert!(!body.contains("pitr_server_lsn_bytes"), "{body}");
        assert!(body.contains("pitr_server_position_age_seconds"), "{body}");
    }

    #[test]
    fn health_reports_divergence_then_failure_then_an_open_gap() {
        let m = Metrics::default();
        assert_eq!(m.health(), Ok(()));
        assert!(m.render().contains("pitr_history_diverged 0\n"));
        assert!(m.render().contains("pitr_wal_gap_open 0\n"));
        let g = crate::repo::gaps::GapRecord::new(
            walfmt::TimeLineId(1),
            walfmt::TimeLineId(1),
            walfmt::Lsn(0x700000),
            walfmt::Lsn(0x1200000),
            "test",
        );
        m.gap_recorded(&g);
        let why = m.health().unwrap_err();
        assert!(
            why.contains("0/1200000") && why.contains("pitr backup"),
            "{why}"
        );
        assert!(m.render().contains("pitr_wal_gap_open 1\n"));
        assert!(m.render().contains("pitr_wal_gaps_total 1\n"));
        m.failed.store(true, Ordering::Relaxed);
        assert_eq!(m.health().unwrap_err(), "archiving has failed; see the log");
        m.set_divergence("timeline 1: differs");
        assert_eq!(m.health().unwrap_err(), "timeline 1: differs");
        assert_eq!(m.readiness().unwrap_err(), "timeline 1: differs");
        assert!(m.render().contains("pitr_history_diverged 1\n"));
        m.set_open_gap(None);
        assert!(!m.gap_open());
    }
}
