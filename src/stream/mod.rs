//! `pitr stream`: continuous WAL archiving over the replication protocol.
//!
//! Two tasks, split where data becomes durable:
//!
//! ```text
//! socket ──(receiver: this module)──mpsc(32)──> archiver ──> repo
//!    ^                                             │
//!    └──── standby status: flush = archived <──────┘ (watch<Lsn>)
//! ```
//!
//! - The receiver owns the connection: it answers keepalives and sends status updates on a
//!   timer whatever the archiver is doing. When the channel is full it stops reading the
//!   socket (the server then buffers, and the slot retains), so memory stays bounded.
//! - `--ack spool` puts a spool between the receiver and the archiver (see [`spool`]): the
//!   flush position reported is then what is fsync'd in the spool.
//! - `--ack repo` (the default): the flush position reported never runs ahead of
//!   WAL durable in the repo. A crash of pitr at any moment loses nothing: the slot still
//!   holds what the repo lacks, and streaming resumes from the repo's newest object.
//! - Resume point: the repo's newest WAL (a complete segment: the next one; a partial: its
//!   segment start), else the slot's `restart_lsn`, else the server's position. Streaming
//!   always starts at a segment boundary, on the repo's timeline, and follows timeline
//!   switches (history files are archived) as pg_receivewal does.
//! - Connection loss, server restart or failover: reconnect with capped exponential backoff,
//!   reset to its start after a session that streamed (it received WAL, or lasted
//!   [`STREAMED_AFTER`]): a process that lived through many brief restarts does not wait the
//!   cap after the next one. A slot still active in another walsender (the old sidecar of a
//!   rolling update) is retried every [`SLOT_BUSY_RETRY`] at most.
//! - A connection that dies without closing is noticed: the receive timeout is the server's
//!   `wal_sender_timeout` (60 s when 0). The server only pings a standby that has been silent
//!   for half of it (walsender.c, `WalSndKeepaliveIfNecessary`), and pitr is never that
//!   silent, so pitr asks: every [`ping_interval`] a status update requests a reply, which the
//!   server answers with a keepalive (walsender.c, `ProcessStandbyReplyMessage`). Nothing at
//!   all received for the timeout while pitr is reading ends the session with
//!   [`ConnError::Silent`] (transient: reconnect). While back-pressure stops the reading,
//!   silence is expected and not counted. Every command and write on the connection is
//!   bounded by the same timeout ([`PgConn::set_io_timeout`]), and connecting by
//!   `connect_timeout` (default here [`DEFAULT_CONNECT_TIMEOUT`]).
//! - The server's position, read from each XLogData and keepalive, feeds the metrics'
//!   readiness (see [`crate::server::metrics`]).

pub mod archiver;
pub mod monitor;
pub mod spool;
pub mod writers;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use walfmt::{Lsn, TimeLineId, TimelineHistory, WalSegSize};

use crate::replication::commands::{StartOutcome, StreamEvent};
use crate::replication::conn::{ConnError, PgConn};
use crate::replication::conninfo::ConnParams;
use crate::repo::store::StoreError;
use crate::repo::{self, Repo, RepoError};
use archiver::{ArchMsg, Archiver, ArchiverConfig};

/// Why streaming stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Connecting or talking to the server failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The repo refused.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// Storage failed permanently.
    #[error("repo: {0}")]
    Store(#[from] StoreError),
    /// The `--ack spool` directory failed.
    #[error("spool: {0}")]
    Spool(String),
    /// The server cannot serve a physical archiver, and why.
    #[error("{0}")]
    Refused(String),
    /// The server sent WAL that does not continue what we have.
    #[error("WAL gap: expected data at {expected}, got {got}")]
    Gap {
        /// Where data should have continued.
        expected: Lsn,
        /// Where it did.
        got: Lsn,
    },
    /// The archiving pipeline stopped; its own error says why (see `first_error`).
    #[error("internal error: archiver stopped")]
    ArchiverStopped,
    /// A bug or impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl StreamError {
    /// A reconnect may help.
    pub fn is_transient(&self) -> bool {
        match self {
            StreamError::Conn(e) => e.is_transient(),
            StreamError::Store(e) => e.is_transient(),
            StreamError::Repo(RepoError::Store(e)) => e.is_transient(),
            StreamError::Gap { .. } => true,
            _ => false,
        }
    }
}

/// Longest wait for a connection when the conninfo sets no `connect_timeout` (libpq would wait
/// forever; a sidecar must not).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Receive timeout when the server's `wal_sender_timeout` is 0 (disabled), and the bound on
/// commands before it is known.
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most time between two reply requests (the server's answer is also a reading of its
/// position, see [`crate::server::metrics::SERVER_POSITION_MAX_AGE`]).
pub const PING_MAX: Duration = Duration::from_secs(5);
/// First reconnection delay, and the delay after a session that streamed.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// A session that lasted this long streamed successfully, even without WAL.
pub const STREAMED_AFTER: Duration = Duration::from_secs(5);
/// Longest wait between attempts while the slot is active in another walsender.
pub const SLOT_BUSY_RETRY: Duration = Duration::from_secs(2);

/// The receive timeout for a server's `SHOW wal_sender_timeout`: that value (at least 1 s),
/// or [`DEFAULT_RECEIVE_TIMEOUT`] when it is 0 or unreadable.
pub fn receive_timeout(show: &str) -> Duration {
    match crate::replication::codec::parse_time_ms(show) {
        Some(0) | None => DEFAULT_RECEIVE_TIMEOUT,
        Some(ms) => Duration::from_millis(ms).max(Duration::from_secs(1)),
    }
}

/// How often a status update asks the server for a reply: often enough that a live server
/// answers three times per receive timeout, and at least every [`PING_MAX`].
pub fn ping_interval(status_interval: Duration, receive_timeout: Duration) -> Duration {
    status_interval.min(receive_timeout / 3).min(PING_MAX)
}

/// How a connection attempt or session ended, for the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// It failed (could not connect, prepare, or stream).
    Failed,
    /// The slot is active in another walsender.
    SlotBusy,
    /// It streamed (received WAL, or lasted [`STREAMED_AFTER`]) before it ended.
    Streamed,
}

/// The wait before the next attempt and the backoff after it: doubling up to `cap` while
/// attempts fail, back to [`INITIAL_BACKOFF`] after one that streamed, and at most
/// [`SLOT_BUSY_RETRY`] while the slot is busy.
pub fn next_backoff(current: Duration, a: Attempt, cap: Duration) -> (Duration, Duration) {
    let current = match a {
        Attempt::Streamed => INITIAL_BACKOFF,
        _ => current,
    };
    let wait = match a {
        Attempt::SlotBusy => current.min(SLOT_BUSY_RETRY),
        _ => current,
    };
    (wait, (current * 2).min(cap))
}

/// `pitr stream` settings.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// The server to archive.
    pub source: ConnParams,
    /// The repo.
    pub repo: Repo,
    /// Physical slot name (created with RESERVE_WAL when missing); `None`: no slot.
    pub slot: Option<String>,
    /// How often the segment being filled is published.
    pub partial_every: Duration,
    /// How often a status update is sent without being asked.
    pub status_interval: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_cap: Duration,
    /// Shared metrics (served by `--metrics-listen`).
    pub metrics: std::sync::Arc<crate::server::Metrics>,
    /// How often slot retention is checked.
    pub slot_check_every: Duration,
    /// `--ack spool`: acknowledge WAL once fsync'd here; `None`: `--ack repo`.
    pub spool: Option<spool::SpoolConfig>,
    /// On shutdown, how long to wait for in-flight uploads.
    pub shutdown_timeout: Duration,
    /// How often this process records itself in the repo's `writers/` (see [`writers`]).
    pub writer_heartbeat: Duration,
}

/// Turns a refusal at connect time into a one-line reason with the fix.
pub(crate) fn explain(e: ConnError, user: &str) -> StreamError {
    if let Some(code) = e.sqlstate() {
        let msg = e.to_string();
        if code == "53300" && msg.contains("max_wal_senders") {
            let zero = msg.contains("(currently 0)");
            return StreamError::Refused(if zero {
                "the server has max_wal_senders = 0 (wal_level = minimal?): set wal_level = replica and max_wal_senders > 0, then restart it".into()
            } else {
                format!("no free WAL sender on the server ({msg}): raise max_wal_senders")
            });
        }
        if code == "42501" && msg.to_lowercase().contains("replication") {
            return StreamError::Refused(format!(
                "role {user:?} may not start a WAL sender: ALTER ROLE {user} REPLICATION (or use a role that has it)"
            ));
        }
        if code == "28000" && msg.contains("pg_hba.conf") {
            return StreamError::Refused(format!(
                "{msg}: add a pg_hba.conf line for database \"replication\" (the keyword all does not cover replication connections)"
            ));
        }
    }
    StreamError::Conn(e)
}

/// What the server and repo agreed on at connect time.
#[derive(Debug, Clone, Copy)]
struct Prepared {
    system_id: u64,
    seg: WalSegSize,
    server_tli: TimeLineId,
    server_pos: Lsn,
}

async fn prepare(conn: &mut PgConn, opts: &StreamOptions) -> Result<Prepared, StreamError> {
    let sys = conn.identify_system().await?;
    let seg = conn.wal_segment_size().await?;
    let major = conn.server_major();
    if let Some(why) = conn.unsupported() {
        return Err(StreamError::Refused(why));
    }
    let level = conn.show("wal_level").await?;
    if level == "minimal" {
        return Err(StreamError::Refused(
            "the server has wal_level = minimal: set wal_level = replica and restart it".into(),
        ));
    }
    // Storage trouble is retried here (a repo that is down must not stop the sidecar);
    // another cluster's repo or a corrupt identity is returned at once.
    repo::retry("claim the repo", Duration::from_secs(10), || {
        opts.repo.claim(sys.system_id, seg, major)
    })
    .await?;
    if let Some(slot) = &opts.slot
        && conn.read_replication_slot(slot).await?.is_none()
    {
        match conn.create_physical_slot(slot).await {
            Ok(_) => {
                tracing::info!(slot = %slot, "created physical replication slot (RESERVE_WAL)")
            }
            Err(e) if e.sqlstate() == Some("53400") => {
                return Err(StreamError::Refused(format!(
                    "cannot create replication slot {slot:?}: all replication slots are in use: raise max_replication_slots or drop an unused slot"
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Prepared {
        system_id: sys.system_id,
        seg,
        server_tli: sys.timeline,
        server_pos: sys.xlogpos,
    })
}

/// Where to start: the repo's tip (`tip`, as just listed), else the slot, else the server
/// position (§1.9).
async fn start_point(
    conn: &mut PgConn,
    opts: &StreamOptions,
    p: &Prepared,
    tip: Option<repo::ArchivedTip>,
) -> Result<(TimeLineId, Lsn), StreamError> {
    let seg = p.seg;
    let seg_start = |l: Lsn| Lsn(l.0 - l.segment_offset(seg));
    if let Some(tip) = tip {
        let start = if tip.complete {
            walfmt::SegNo(tip.segno.0 + 1)
        } else {
            tip.segno
        };
        return Ok((tip.tli, start.start_lsn(seg).unwrap_or(Lsn(0))));
    }
    if let Some(slot) = &opts.slot
        && let Some(info) = conn.read_replication_slot(slot).await?
        && let (Some(l), Some(t)) = (info.restart_lsn, info.restart_tli)
    {
        return Ok((t, seg_start(l)));
    }
    Ok((p.server_tli, seg_start(p.server_pos)))
}

async fn archive_history(
    conn: &mut PgConn,
    opts: &StreamOptions,
    tli: TimeLineId,
) -> Result<(), StreamError> {
    if tli.0 <= 1 {
        return Ok(());
    }
    let key = repo::history_key(tli);
    let store = opts.repo.store();
    if repo::retry("get", Duration::from_secs(30), || store.get(&key))
        .await?
        .is_some()
    {
        return Ok(());
    }
    let (_, content) = conn.timeline_history(tli).await?;
    repo::retry("upload", Duration::from_secs(30), || {
        opts.repo.put(&key, bytes::Bytes::from(content.clone()))
    })
    .await?;
    tracing::info!(timeline = tli.0, "archived timeline history");
    Ok(())
}

/// How a streaming session ended.
enum SessionEnd {
    Shutdown,
}

struct Session<'a> {
    conn: &'a mut PgConn,
    opts: &'a StreamOptions,
    tx: &'a mpsc::Sender<ArchMsg>,
    /// The durable position (repo or spool) reported as flushed, for the current timeline.
    archived: &'a mut watch::Receiver<archiver::Durable>,
    shutdown: &'a mut watch::Receiver<bool>,
    seg: WalSegSize,
    /// The run being streamed: its timeline and start.
    run: (TimeLineId, Lsn),
    /// Nothing received for this long while reading: the connection is dead.
    receive_timeout: Duration,
    /// When streaming began (START_REPLICATION answered), if it did.
    streaming_since: Option<Instant>,
    /// WAL arrived in this session.
    received_wal: bool,
}

impl Session<'_> {
    async fn send_arch(&mut self, m: ArchMsg) -> Result<(), StreamError> {
        self.tx
            .send(m)
            .await
            .map_err(|_| StreamError::ArchiverStopped)
    }

    /// Streams from `start` on `tli`, following timeline switches, until shutdown or error.
    async fn run(
        &mut self,
        mut tli: TimeLineId,
        mut start: Lsn,
    ) -> Result<SessionEnd, StreamError> {
        loop {
            archive_history(self.conn, self.opts, tli).await?;
            match self
                .conn
                .start_replication(self.opts.slot.as_deref(), start, tli)
                .await
            {
                Ok(StartOutcome::Streaming) => {}
                Ok(StartOutcome::TimelineEnded {
                    next_tli,
                    next_start,
                }) => {
                    tracing::info!(from = tli.0, to = next_tli.0, at = %next_start, "timeline ends at the start position; following");
                    tli = next_tli;
                    start = Lsn(next_start.0 - next_start.segment_offset(self.seg));
                    continue;
                }
                Err(ConnError::Server(n)) if n.message.contains("not in this server's history") => {
                    // The repo has WAL of `tli` past where this server forked from it (the
                    // old primary ran on after a failover). Continue on the server's line
                    // from the fork point.
                    let (next, fork) = self.fork_point(tli).await?;
                    tracing::warn!(timeline = tli.0, fork = %fork, next = next.0, "repo timeline diverges from the server's history; continuing on the server's timeline from the fork point");
                    tli = next;
                    start = Lsn(fork.0 - fork.segment_offset(self.seg));
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            tracing::info!(timeline = tli.0, start = %start, "streaming");
            self.run = (tli, start);
            self.send_arch(ArchMsg::Begin { tli, start }).await?;
            self.opts
                .metrics
                .timeline
                .store(u64::from(tli.0), std::sync::atomic::Ordering::Relaxed);
            self.opts.metrics.set_streaming(true);
            self.streaming_since.get_or_insert_with(Instant::now);
            match self.stream(start).await? {
                Some((next_tli, next_start, received)) => {
                    if next_tli <= tli || next_start > received {
                        return Err(StreamError::Internal(format!(
                            "server switched from timeline {} to {} at {next_start}, beyond what it sent ({received})",
                            tli.0, next_tli.0
                        )));
                    }
                    self.sync().await?;
                    tracing::info!(from = tli.0, to = next_tli.0, at = %next_start, "timeline switch");
                    tli = next_tli;
                    start = Lsn(next_start.0 - next_start.segment_offset(self.seg));
                }
                None => return Ok(SessionEnd::Shutdown),
            }
        }
    }

    async fn fork_point(&mut self, tli: TimeLineId) -> Result<(TimeLineId, Lsn), StreamError> {
        let sys = self.conn.identify_system().await?;
        let (_, content) = self.conn.timeline_history(sys.timeline).await?;
        let h = TimelineHistory::parse(sys.timeline, &String::from_utf8_lossy(&content))
            .map_err(|e| StreamError::Internal(e.to_string()))?;
        let idx = h.ancestors.iter().position(|e| e.tli == tli).ok_or_else(|| {
            StreamError::Refused(format!("the repo's timeline {} is not in the server's history: is this the same cluster line?", tli.0))
        })?;
        let fork = h.ancestors[idx].end;
        let next = h.ancestors.get(idx + 1).map_or(sys.timeline, |e| e.tli);
        Ok((next, fork))
    }

    async fn sync(&mut self) -> Result<Lsn, StreamError> {
        let (ack, done) = oneshot::channel();
        self.send_arch(ArchMsg::Sync(ack)).await?;
        done.await.map_err(|_| StreamError::ArchiverStopped)
    }

    /// One CopyBoth stream. `Some(next timeline, its start, received end)` at the end of a
    /// timeline; `None` on shutdown.
    async fn stream(&mut self, start: Lsn) -> Result<Option<(TimeLineId, Lsn, Lsn)>, StreamError> {
        let mut received = start;
        let mut pending: Option<ArchMsg> = None;
        let mut last_status = Instant::now();
        let mut reported = (Lsn(0), Lsn(0));
        // Silence counts only while reading (back-pressure stops the reading).
        let mut last_heard = Instant::now();
        let ping_every = ping_interval(self.opts.status_interval, self.receive_timeout);
        let mut last_ping = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Drain buffered events while the archiver takes them.
            while pending.is_none() {
                match self.conn.try_event()? {
                    Some(StreamEvent::Wal {
                        start: s,
                        server_end,
                        data,
                    }) => {
                        self.received_wal = true;
                        self.opts.metrics.observe_server(server_end.0);
                        if s != received {
                            return Err(StreamError::Gap {
                                expected: received,
                                got: s,
                            });
                        }
                        received = Lsn(received.0 + data.len() as u64);
                        self.opts
                            .metrics
                            .received_lsn
                            .fetch_max(received.0, std::sync::atomic::Ordering::Relaxed);
                        match self.tx.try_send(ArchMsg::Wal { start: s, data }) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(m)) => pending = Some(m),
                            Err(mpsc::error::TrySendError::Closed(_)) => {
                                return Err(StreamError::ArchiverStopped);
                            }
                        }
                    }
                    Some(StreamEvent::Keepalive {
                        server_end,
                        reply_requested,
                    }) => {
                        self.opts.metrics.observe_server(server_end.0);
                        if reply_requested {
                            self.status(received, &mut reported, true, false).await?;
                            last_status = Instant::now();
                        }
                    }
                    Some(StreamEvent::TimelineEnd) => {
                        if let Some(m) = pending.take() {
                            self.send_arch(m).await?;
                        }
                        return match self.conn.finish_timeline().await? {
                            Some((t, l)) => Ok(Some((t, l, received))),
                            None => Err(StreamError::Internal(
                                "timeline ended without a next timeline".into(),
                            )),
                        };
                    }
                    Some(StreamEvent::ServerStopped) => {
                        return Err(StreamError::Conn(ConnError::Closed));
                    }
                    None => break,
                }
            }
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => {
                    // The pending message and the sync share the deadline: with storage down
                    // the channel stays full, and what was never acknowledged can stay on the
                    // server.
                    let pending = pending.take();
                    let limit = self.opts.shutdown_timeout;
                    let finish = async {
                        if let Some(m) = pending {
                            self.send_arch(m).await?;
                        }
                        self.sync().await
                    };
                    match tokio::time::timeout(limit, finish).await {
                        Ok(r) => {
                            r?;
                            tracing::info!(durable = %self.durable(received), "stopping: everything received is safe");
                        }
                        Err(_) => {
                            tracing::warn!(timeout = ?self.opts.shutdown_timeout, durable = %self.durable(received), "stopping: uploads did not finish in time; the server keeps what is not archived");
                        }
                    }
                    let flush = self.durable(received);
                    self.conn.send_status(received, flush, false).await?;
                    return Ok(None);
                }
                permit = self.tx.reserve(), if pending.is_some() => {
                    let permit = permit.map_err(|_| StreamError::ArchiverStopped)?;
                    if let Some(m) = pending.take() {
                        permit.send(m);
                    }
                    // Reading again: silence counts from now.
                    last_heard = Instant::now();
                }
                r = self.conn.fill(), if pending.is_none() => {
                    if r? == 0 {
                        return Err(StreamError::Conn(ConnError::Closed));
                    }
                    last_heard = Instant::now();
                }
                _ = self.archived.changed() => {
                    self.status(received, &mut reported, false, false).await?;
                    last_status = Instant::now();
                }
                _ = tick.tick() => {
                    if pending.is_none() && last_heard.elapsed() >= self.receive_timeout {
                        return Err(StreamError::Conn(ConnError::Silent {
                            host: self.conn.host.describe(),
                            waited: last_heard.elapsed(),
                        }));
                    }
                    if last_ping.elapsed() >= ping_every {
                        self.status(received, &mut reported, true, true).await?;
                        last_ping = Instant::now();
                        last_status = last_ping;
                    } else if last_status.elapsed() >= self.opts.status_interval {
                        self.status(received, &mut reported, true, false).await?;
                        last_status = Instant::now();
                    }
                }
            }
        }
    }

    /// What may be reported as flushed: the durable position if it is of the timeline being
    /// streamed, else the run's start; never beyond `received`.
    fn durable(&self, received: Lsn) -> Lsn {
        let (t, l) = *self.archived.borrow();
        let l = if t == self.run.0 { l } else { self.run.1 };
        l.min(received)
    }

    /// Sends write = received, flush = durable (never beyond received); `reply`: ask the
    /// server to answer at once.
    async fn status(
        &mut self,
        received: Lsn,
        reported: &mut (Lsn, Lsn),
        force: bool,
        reply: bool,
    ) -> Result<(), StreamError> {
        let archived = self.durable(received);
        if force || (received, archived) != *reported {
            self.conn.send_status(received, archived, reply).await?;
            self.opts
                .metrics
                .flushed_lsn
                .fetch_max(archived.0, std::sync::atomic::Ordering::Relaxed);
            *reported = (received, archived);
        }
        Ok(())
    }
}

/// Runs `pitr stream` until `shutdown` turns true. Errors before the first successful start
/// (bad configuration, refusals) are returned; afterwards, connection trouble is retried.
pub async fn run(
    mut opts: StreamOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StreamError> {
    opts.source
        .connect_timeout
        .get_or_insert(DEFAULT_CONNECT_TIMEOUT);
    let user = opts.source.user.clone();
    let mut conn = PgConn::connect(&opts.source, true)
        .await
        .map_err(|e| explain(e, &user))?;
    conn.set_io_timeout(Some(DEFAULT_RECEIVE_TIMEOUT));
    let prep = prepare(&mut conn, &opts).await.map_err(|e| match e {
        StreamError::Conn(c) => explain(c, &user),
        other => other,
    })?;
    let seg = prep.seg;
    opts.metrics.server_connected(prep.server_pos.0);
    if let Some(sc) = &opts.spool {
        if sc.max_bytes < 2 * seg.bytes() {
            return Err(StreamError::Refused(format!(
                "--spool-max {} is too small: give at least two WAL segments ({} bytes)",
                sc.max_bytes,
                2 * seg.bytes()
            )));
        }
        spool::check_identity(&sc.dir, prep.system_id, seg)?;
    }
    // Temporary files a killed pitr left in a local repo (none of a live writer).
    let store = opts.repo.store().clone();
    tokio::spawn(async move {
        match store.clean_leftovers().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                files = n,
                "removed temporary files left by interrupted writes"
            ),
            Err(e) => tracing::warn!(error = %e, "could not clean up temporary files in the repo"),
        }
    });
    // Listed once here; later sessions list again (the archiver has moved the tip since).
    let mut first_tip = Some(tip_retrying(&opts.repo, seg).await?);
    if let Some(Some(t)) = &first_tip {
        // What the repo already holds is archived: readiness measures from there.
        opts.metrics
            .archived_lsn
            .fetch_max(t.end.0, std::sync::atomic::Ordering::Relaxed);
    }
    let durable_of =
        |t: Option<repo::ArchivedTip>| t.map_or((TimeLineId(0), Lsn(0)), |t| (t.tli, t.end));
    let (archived_tx, archived_rx) = watch::channel(durable_of(first_tip.flatten()));
    let (arch_tx, arch_rx) = mpsc::channel(32);
    let arch = Archiver::new(
        opts.repo.clone(),
        ArchiverConfig {
            seg,
            partial_every: opts.partial_every,
            retry_cap: Duration::from_secs(30),
            system_id: prep.system_id,
            metrics: opts.metrics.clone(),
        },
        archived_tx,
    );
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(arch.run(arch_rx));
    // `tx` takes the receiver's messages; `flush_rx` is the position reported as flushed.
    let (tx, mut flush_rx, spool_shared) = match &opts.spool {
        None => (arch_tx, archived_rx, None),
        Some(sc) => {
            // WAL acknowledged by an earlier run may exist only in the spool: upload it first.
            if let Err(e) = spool::drain(&sc.dir, seg, &opts.repo, &arch_tx).await {
                drop(arch_tx);
                // The archiver's own error says more than "archiver stopped".
                return Err(match first_error(tasks).await {
                    Err(real) => real,
                    Ok(()) => e,
                });
            }
            first_tip = Some(tip_retrying(&opts.repo, seg).await?);
            let shared = std::sync::Arc::new(spool::Shared::default());
            let (spooled_tx, spooled_rx) = watch::channel(durable_of(first_tip.flatten()));
            let (wtx, wrx) = mpsc::channel(32);
            let writer = spool::SpoolWriter::new(
                sc.clone(),
                seg,
                shared.clone(),
                spooled_tx,
                opts.metrics.clone(),
            );
            tasks.spawn_blocking(move || writer.run_blocking(wrx));
            let reader = spool::SpoolReader::new(
                sc.clone(),
                seg,
                shared.clone(),
                archived_rx,
                opts.metrics.clone(),
            );
            tasks.spawn(reader.run(arch_tx));
            (wtx, spooled_rx, Some(shared))
        }
    };
    let mut arch_task = tokio::spawn(first_error(tasks));
    tokio::spawn(monitor::run(
        opts.source.clone(),
        opts.slot.clone(),
        opts.metrics.clone(),
        opts.slot_check_every,
        shutdown.clone(),
    ));
    // The heartbeat lasts as long as this function, whatever ends it.
    let (heartbeat_stop, heartbeat_stop_rx) = watch::channel(false);
    let heartbeat = tokio::spawn(writers::run(
        opts.repo.clone(),
        writers::Heartbeat::of_this_process(opts.slot.clone(), opts.writer_heartbeat),
        opts.metrics.clone(),
        heartbeat_stop_rx,
    ));
    let mut backoff = INITIAL_BACKOFF;
    let mut first = true;
    let mut arch_done = false;
    let stop_backstop = shutdown.clone();
    let deadline = opts.shutdown_timeout;
    let result = loop {
        if !first {
            tracing::info!("reconnecting");
            opts.metrics
                .reconnects
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            match PgConn::connect(&opts.source, true).await {
                Ok(mut c) => {
                    c.set_io_timeout(Some(DEFAULT_RECEIVE_TIMEOUT));
                    conn = c;
                }
                Err(e) => {
                    let (wait, next) = next_backoff(backoff, Attempt::Failed, opts.reconnect_cap);
                    backoff = next;
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot reconnect");
                    if backoff_wait(&mut shutdown, wait).await {
                        break Ok(());
                    }
                    continue;
                }
            }
            match prepare(&mut conn, &opts).await {
                Ok(p) if p.system_id != prep.system_id => {
                    break Err(StreamError::Repo(RepoError::OtherCluster {
                        repo: opts.repo.location.clone(),
                        repo_system: prep.system_id,
                        server_system: p.system_id,
                    }));
                }
                Ok(p) => opts.metrics.server_connected(p.server_pos.0),
                Err(e) if e.is_transient() => {
                    let (wait, next) = next_backoff(backoff, Attempt::Failed, opts.reconnect_cap);
                    backoff = next;
                    tracing::warn!(error = %e, retry_in = ?wait, "reconnected but could not prepare");
                    if backoff_wait(&mut shutdown, wait).await {
                        break Ok(());
                    }
                    continue;
                }
                Err(e) => break Err(e),
            }
        }
        first = false;
        // The receive timeout follows the server's wal_sender_timeout; it also bounds every
        // command and write on this connection.
        let receive = match conn.show("wal_sender_timeout").await {
            Ok(v) => receive_timeout(&v),
            Err(e) if e.is_transient() => {
                let (wait, next) = next_backoff(backoff, Attempt::Failed, opts.reconnect_cap);
                backoff = next;
                tracing::warn!(error = %e, retry_in = ?wait, "reconnected but could not prepare");
                if backoff_wait(&mut shutdown, wait).await {
                    break Ok(());
                }
                continue;
            }
            Err(e) => break Err(e.into()),
        };
        conn.set_io_timeout(Some(receive));
        let spooled_at = spool_shared.as_ref().and_then(|s| s.resume_point(seg));
        let tip = match (first_tip.take(), spooled_at) {
            // Reconnecting in spool mode: resume where the spool is (the repo may lag).
            (_, Some((tli, at))) => Some(repo::ArchivedTip {
                tli,
                segno: at.segment(seg),
                complete: false,
                end: at,
            }),
            (Some(t), None) => t,
            (None, None) => match tip_retrying(&opts.repo, seg).await {
                Ok(t) => t,
                Err(e) => break Err(e),
            },
        };
        let (tli, start) = match start_point(&mut conn, &opts, &prep, tip).await {
            Ok(x) => x,
            Err(e) => break Err(e),
        };
        let mut session = Session {
            conn: &mut conn,
            opts: &opts,
            tx: &tx,
            archived: &mut flush_rx,
            shutdown: &mut shutdown,
            seg,
            run: (tli, start),
            receive_timeout: receive,
            streaming_since: None,
            received_wal: false,
        };
        // Backstop: whatever the session is waiting on (a full channel while storage is down),
        // a shutdown request ends it within the deadline. Nothing unacknowledged is lost: the
        // slot keeps it on the server.
        let mut stop = stop_backstop.clone();
        let backstop = async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            tokio::time::sleep(deadline + Duration::from_secs(1)).await;
        };
        let r = tokio::select! {
            r = session.run(tli, start) => r,
            _ = backstop => {
                tracing::warn!("stopping: the session did not finish in time");
                break Ok(());
            }
            a = &mut arch_task => {
                // The pipeline (archiver, spool) ended: always fatal.
                arch_done = true;
                break Err(match a {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => StreamError::Internal("archiver ended".into()),
                    Err(e) => StreamError::Internal(format!("archiver task failed: {e}")),
                });
            }
        };
        let streamed = session_streamed(
            session.streaming_since.map(|t| t.elapsed()),
            session.received_wal,
            r.as_ref().err(),
        );
        opts.metrics.set_streaming(false);
        match r {
            Ok(SessionEnd::Shutdown) => break Ok(()),
            Err(e) if e.is_transient() => {
                let attempt = if streamed {
                    Attempt::Streamed
                } else if e_is_slot_busy(&e) {
                    Attempt::SlotBusy
                } else {
                    Attempt::Failed
                };
                let (wait, next) = next_backoff(backoff, attempt, opts.reconnect_cap);
                backoff = next;
                if attempt == Attempt::SlotBusy {
                    tracing::warn!(error = %e, retry_in = ?wait, "the replication slot is in use by another connection (the previous pitr of a rolling update, or a second pitr stream with the same slot); waiting for it to be released");
                } else {
                    tracing::warn!(error = %e, retry_in = ?wait, "stream interrupted");
                }
                // Publish what we have before reconnecting (RPO), then resume; a storage outage
                // must not make this wait outlive a shutdown request.
                let (ack, done) = oneshot::channel();
                let publish = async {
                    if tx.send(ArchMsg::Sync(ack)).await.is_ok() {
                        let _ = done.await;
                    }
                };
                tokio::select! {
                    _ = publish => {}
                    _ = shutdown.changed() => break Ok(()),
                    _ = tokio::time::sleep(opts.reconnect_cap) => {}
                }
                if backoff_wait(&mut shutdown, wait).await {
                    break Ok(());
                }
            }
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    if result.is_err() {
        opts.metrics
            .failed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    // Finish in-flight uploads (and, with a spool, what it holds) within the deadline.
    let mut result = result;
    if !arch_done {
        match tokio::time::timeout(opts.shutdown_timeout, &mut arch_task).await {
            Ok(Ok(Err(e))) => {
                // The pipeline's error explains an "archiver stopped" seen by the session.
                if result.is_ok() || matches!(&result, Err(StreamError::ArchiverStopped)) {
                    result = Err(e);
                }
            }
            Ok(_) => {}
            Err(_) => {
                arch_task.abort();
                tracing::warn!(timeout = ?opts.shutdown_timeout, "uploads did not finish before the shutdown deadline; the rest is uploaded at the next start");
            }
        }
    }
    if result.is_err() {
        opts.metrics
            .failed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(sc) = &opts.spool {
        match spool::cleanup(&sc.dir, seg, &opts.repo).await {
            Ok(0) => {}
            Ok(left) => {
                tracing::info!(bytes = left, dir = %sc.dir.display(), "WAL left in the spool; the next start uploads it")
            }
            Err(e) => tracing::warn!(error = %e, "spool cleanup"),
        }
    }
    conn.close().await;
    // The heartbeat removes this process's entry from the repo on the way out (bounded).
    let _ = heartbeat_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), heartbeat).await;
    result
}

/// Whether a session streamed successfully, for the backoff (pure): it streamed for
/// [`STREAMED_AFTER`], or it received WAL and then lost the connection (a server restart).
/// A session that fails right after it starts for any other reason (a gap, a protocol or
/// server error) keeps the backoff growing, so a persistent problem is not retried in a
/// tight loop.
pub fn session_streamed(
    streaming_for: Option<Duration>,
    received_wal: bool,
    end: Option<&StreamError>,
) -> bool {
    let Some(d) = streaming_for else {
        return false;
    };
    let lost = |e: &StreamError| {
        matches!(
            e,
            StreamError::Conn(
                ConnError::Closed
                    | ConnError::Io(_)
                    | ConnError::Silent { .. }
                    | ConnError::Unresponsive { .. }
            )
        ) || matches!(e, StreamError::Conn(c) if c.sqlstate().is_some_and(|s| s.starts_with("57P")))
    };
    d >= STREAMED_AFTER || (received_wal && end.is_none_or(lost))
}

/// The slot is active in another walsender (SQLSTATE 55006 on START_REPLICATION).
fn e_is_slot_busy(e: &StreamError) -> bool {
    matches!(e, StreamError::Conn(c) if c.sqlstate() == Some("55006"))
}

/// The repo's tip, retrying while storage is unreachable.
async fn tip_retrying(
    repo: &Repo,
    seg: WalSegSize,
) -> Result<Option<repo::ArchivedTip>, StreamError> {
    Ok(repo::retry("list the repo", Duration::from_secs(10), || repo.tip(seg)).await?)
}

/// Waits for the pipeline's tasks; returns the first real error (an "archiver stopped" from
/// a neighbour only if nothing better comes), or Ok once all ended.
async fn first_error(
    mut tasks: tokio::task::JoinSet<Result<(), StreamError>>,
) -> Result<(), StreamError> {
    let mut fallback = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(StreamError::ArchiverStopped)) => {
                fallback.get_or_insert(StreamError::ArchiverStopped);
            }
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(StreamError::Internal(format!("task failed: {e}"))),
        }
    }
    fallback.map_or(Ok(()), Err)
}

/// Sleeps `d`, unless shutdown comes first (true).
async fn backoff_wait(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.changed() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_resets_after_a_session_that_streamed() {
        let cap = Duration::from_secs(30);
        let mut b = INITIAL_BACKOFF;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let (w, n) = next_backoff(b, Attempt::Failed, cap);
            waits.push(w.as_millis());
            b = n;
        }
        // Repeated failures: doubling, capped.
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        // A session that streamed: the next wait is the initial one again, then it grows.
        let (w, n) = next_backoff(b, Attempt::Streamed, cap);
        assert_eq!((w, n), (INITIAL_BACKOFF, INITIAL_BACKOFF * 2));
        // A busy slot: retried often, however long it stays busy.
        let (w, _) = next_backoff(Duration::from_secs(30), Attempt::SlotBusy, cap);
        assert_eq!(w, SLOT_BUSY_RETRY);
        let (w, _) = next_backoff(INITIAL_BACKOFF, Attempt::SlotBusy, cap);
        assert_eq!(w, INITIAL_BACKOFF);
    }

    #[test]
    fn a_session_streamed_if_it_lasted_or_lost_its_connection_after_wal() {
        let short = Some(Duration::from_secs(1));
        let closed = StreamError::Conn(ConnError::Closed);
        let gap = StreamError::Gap {
            expected: Lsn(1),
            got: Lsn(2),
        };
        // A server restart after some WAL: streamed.
        assert!(session_streamed(short, true, Some(&closed)));
        // Never reached streaming, or no WAL before the loss: not.
        assert!(!session_streamed(None, true, Some(&closed)));
        assert!(!session_streamed(short, false, Some(&closed)));
        // A failure right after the start that is not a lost connection: not, so it is not
        // retried in a tight loop.
        assert!(!session_streamed(short, true, Some(&gap)));
        // Long enough, whatever ended it.
        assert!(session_streamed(Some(STREAMED_AFTER), false, Some(&gap)));
    }

    #[test]
    fn receive_timeout_follows_wal_sender_timeout() {
        assert_eq!(receive_timeout("4s"), Duration::from_secs(4));
        assert_eq!(receive_timeout("1min"), Duration::from_secs(60));
        assert_eq!(receive_timeout("0"), DEFAULT_RECEIVE_TIMEOUT);
        assert_eq!(receive_timeout("garbage"), DEFAULT_RECEIVE_TIMEOUT);
        assert_eq!(receive_timeout("100ms"), Duration::from_secs(1));
        // Three replies per timeout, at least every PING_MAX, never less often than status.
        let s = Duration::from_secs(10);
        assert_eq!(
            ping_interval(s, Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(ping_interval(s, Duration::from_secs(60)), PING_MAX);
        assert_eq!(
            ping_interval(Duration::from_secs(2), Duration::from_secs(60)),
            Duration::from_secs(2)
        );
    }
}
