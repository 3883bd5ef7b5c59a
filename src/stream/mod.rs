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
//!   readiness (see [`crate::metrics`]).
//! - Never two histories in one repo: before the first byte of a run reaches the archiver (or
//!   the spool), and before any flush position is reported for it, the server's history
//!   files must agree with the repo's and its WAL must continue the repo's ([`continuity`],
//!   [`startup`]). Otherwise nothing is written, the refusal is one line (log, `/healthz`,
//!   `pitr_history_diverged`), and the process waits for SIGTERM (exit 1) when it serves
//!   metrics, or exits 1 at once.
//! - WAL gaps: when the server no longer has the WAL after the repo's tip, the gap is recorded
//!   in the repo ([`crate::repo::gaps`]) before archiving goes on from the oldest WAL the
//!   server still guarantees; `/healthz` and `pitr_wal_gap_open` show it until a base backup
//!   starts after it, and the scheduler takes one at once.

pub(crate) mod archiver;
pub mod cmd;
pub(crate) mod continuity;
pub(crate) mod monitor;
pub(crate) mod spool;
pub(crate) mod startup;
pub(crate) mod writers;

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use walfmt::{Lsn, SegNo, TimeLineId, TimelineHistory, WalSegSize};

use crate::replication::commands::{StartOutcome, StreamEvent};
use crate::replication::conn::{ConnError, PgConn};
use crate::replication::conninfo::ConnParams;
use crate::replication::{Explained, explain};
use crate::repo::store::StoreError;
use crate::repo::{self, Repo, RepoError};
use archiver::{ArchMsg, Archiver, ArchiverConfig};
use continuity::{Checker, Verdict};
use startup::Plan;

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
    /// The server's history or WAL is not the repo's: the one-line refusal. Nothing of it was
    /// written or acknowledged.
    #[error("{0}")]
    Diverged(String),
    /// The server's WAL ends before where streaming must resume (a standby catching up, or a
    /// server rolled back, caught once its WAL reaches the repo's).
    #[error(
        "timeline {}: the server's WAL ends at {flush}, before the repo's tip at {start}: a standby that is catching up, or a server restored from an earlier snapshot (then pitr refuses it once its WAL reaches the repo's); retrying",
        tli.0
    )]
    ServerBehind {
        /// Timeline.
        tli: TimeLineId,
        /// Where streaming must start.
        start: Lsn,
        /// The server's flush position, as it said.
        flush: String,
    },
    /// The server no longer has the WAL where streaming must resume.
    #[error("timeline {}: the server no longer has the WAL at {start}: {reason}", tli.0)]
    WalRemoved {
        /// Timeline.
        tli: TimeLineId,
        /// Where streaming started.
        start: Lsn,
        /// The segment the server named, if any.
        segment: Option<String>,
        /// What the server said.
        reason: String,
    },
    /// The run could not be proven to continue the repo before it ended, or was proven but
    /// its bytes were not kept: it is streamed again.
    #[error("{0}")]
    Unproven(String),
    /// The archiving pipeline stopped; its own error says why (see `first_error`).
    #[error("internal error: archiver stopped")]
    ArchiverStopped,
    /// A bug or impossible state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl StreamError {
    /// A reconnect may help.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            StreamError::Conn(e) => e.is_transient(),
            StreamError::Store(e) => e.is_transient(),
            StreamError::Repo(RepoError::Store(e)) => e.is_transient(),
            StreamError::Gap { .. }
            | StreamError::ServerBehind { .. }
            | StreamError::Unproven(_) => true,
            _ => false,
        }
    }
}

/// Longest wait for a connection when the conninfo sets no `connect_timeout` (libpq would wait
/// forever; a sidecar must not).
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Receive timeout when the server's `wal_sender_timeout` is 0 (disabled), and the bound on
/// commands before it is known.
pub(crate) const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// The most time between two reply requests (the server's answer is also a reading of its
/// position, see [`crate::metrics::SERVER_POSITION_MAX_AGE`]).
pub(crate) const PING_MAX: Duration = Duration::from_secs(5);
/// First reconnection delay, and the delay after a session that streamed.
pub(crate) const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// A session that lasted this long streamed successfully, even without WAL.
pub(crate) const STREAMED_AFTER: Duration = Duration::from_secs(5);
/// Longest wait between attempts while the slot is active in another walsender.
pub(crate) const SLOT_BUSY_RETRY: Duration = Duration::from_secs(2);
/// Longest wait between the archiver's retries of a storage call.
pub(crate) const ARCHIVER_RETRY_CAP: Duration = Duration::from_secs(30);
/// How often a session checks for silence and due status updates.
const SESSION_TICK: Duration = Duration::from_millis(500);
/// Past the shutdown deadline, how long a session may still take before it is abandoned.
const BACKSTOP_GRACE: Duration = Duration::from_secs(1);
/// How long the heartbeat may take to remove this process's entry on the way out.
const HEARTBEAT_EXIT_WAIT: Duration = Duration::from_secs(2);

/// The receive timeout for a server's `SHOW wal_sender_timeout`: that value (at least 1 s),
/// or [`DEFAULT_RECEIVE_TIMEOUT`] when it is 0 or unreadable.
pub(crate) fn receive_timeout(show: &str) -> Duration {
    match crate::replication::codec::parse_time_ms(show) {
        Some(0) | None => DEFAULT_RECEIVE_TIMEOUT,
        Some(ms) => Duration::from_millis(ms).max(Duration::from_secs(1)),
    }
}

/// How often a status update asks the server for a reply: often enough that a live server
/// answers three times per receive timeout, and at least every [`PING_MAX`].
pub(crate) fn ping_interval(status_interval: Duration, receive_timeout: Duration) -> Duration {
    status_interval.min(receive_timeout / 3).min(PING_MAX)
}

/// How a connection attempt or session ended, for the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempt {
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
pub(crate) fn next_backoff(current: Duration, a: Attempt, cap: Duration) -> (Duration, Duration) {
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
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// How often slot retention is checked.
    pub slot_check_every: Duration,
    /// `--ack spool`: acknowledge WAL once fsync'd here; `None`: `--ack repo`.
    pub spool: Option<spool::SpoolConfig>,
    /// On shutdown, how long to wait for in-flight uploads.
    pub shutdown_timeout: Duration,
    /// How often this process records itself in the repo's `writers/` (see [`writers`]).
    pub writer_heartbeat: Duration,
    /// After refusing a server whose history is not the repo's, stay up (serving the metric
    /// and `/healthz`) until shutdown instead of returning at once.
    pub linger_on_divergence: bool,
}

/// A connection failure explained by [`crate::replication::explain`].
impl From<Explained> for StreamError {
    fn from(e: Explained) -> Self {
        match e {
            Explained::Refused(m) => StreamError::Refused(m),
            Explained::Conn(e) => StreamError::Conn(e),
        }
    }
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
    opts.repo
        .retrying("claim the repo", Duration::from_secs(10))
        .claim(sys.system_id, seg, major)
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

/// Where a session starts, and how far the repo's WAL reaches there.
#[derive(Debug, Clone, Copy)]
struct Start {
    tli: TimeLineId,
    /// A segment start.
    start: Lsn,
    /// End of the WAL the repo (or, reconnecting with `--ack spool`, the spool) holds on the
    /// server's path.
    archived_to: Lsn,
}

/// Where to start: along the server's history `hist`, the repo's newest WAL (a complete
/// segment: the next one; a partial: its segment start), else the slot, else the server
/// position (§1.9). Reconnecting with `--ack spool`: where the spool is (`spooled`).
async fn start_point(
    conn: &mut PgConn,
    opts: &StreamOptions,
    p: &Prepared,
    hist: &TimelineHistory,
    spooled: Option<(TimeLineId, Lsn)>,
) -> Result<Start, StreamError> {
    let seg = p.seg;
    let seg_start = |l: Lsn| Lsn(l.0 - l.segment_offset(seg));
    if let Some((tli, at)) = spooled {
        return Ok(Start {
            tli,
            start: seg_start(at),
            archived_to: at,
        });
    }
    let objs = startup::objects(&opts.repo, seg).await?;
    if let Some((tli, start, archived_to)) =
        startup::resume_along(&startup::path_of(hist), &objs, seg)
    {
        return Ok(Start {
            tli,
            start,
            archived_to,
        });
    }
    let at = |tli: TimeLineId, l: Lsn| Start {
        tli,
        start: seg_start(l),
        archived_to: seg_start(l),
    };
    if let Some(slot) = &opts.slot
        && let Some(info) = conn.read_replication_slot(slot).await?
        && let (Some(l), Some(t)) = (info.restart_lsn, info.restart_tli)
    {
        return Ok(at(t, l));
    }
    Ok(at(p.server_tli, p.server_pos))
}

/// The refusal of a server whose history is not the repo's: one line, with the way on.
fn refusal(r: &Repo, why: String) -> StreamError {
    StreamError::Diverged(format!(
        "{why}; nothing was written: stream this server into a new repo (--repo with a new directory or S3 prefix) and take a base backup there; the repo {} is unchanged and restorable up to its tip",
        r.location
    ))
}

/// Write-only mode, when the server no longer has the segment the repo ends in: only a
/// prev-link could prove that the server's WAL continues the repo's, and it needs the repo's
/// bytes. One line, with the ways on.
fn write_only_unprovable(tli: TimeLineId, start: Lsn, key: &str, repo: &str) -> String {
    format!(
        "timeline {}: the server no longer has the WAL before {start}, so the WAL it sends from there can only be proven to continue the repo's by decoding {key}, which write-only mode (--recipient without --identity) cannot read; nothing was written: run pitr stream once with --identity FILE to prove it (then go on with --recipient alone), or stream this server into a new repo; the repo {repo} is unchanged",
        tli.0
    )
}

/// After the server said the WAL at the resume point is gone: records the gap and says where
/// archiving goes on (see [`startup::gap_resume`]). A server whose history files disagree
/// with the repo's is refused first: nothing, not even a gap record, is written for it.
async fn after_gap(
    conn: &mut PgConn,
    opts: &StreamOptions,
    p: &Prepared,
    hist: &TimelineHistory,
    spooled: Option<(TimeLineId, Lsn)>,
    reason: &str,
) -> Result<Start, StreamError> {
    if let Err(why) = startup::check_histories(&opts.repo, conn, hist).await? {
        return Err(refusal(&opts.repo, why));
    }
    let before = start_point(conn, opts, p, hist, spooled).await?;
    let (tli, to) = startup::gap_resume(conn, opts.slot.as_deref(), p.seg).await?;
    if to <= before.archived_to {
        tracing::warn!(start = %before.start, oldest = %to, "the server said the WAL at the resume point is gone, yet it guarantees WAL from before it; retrying there");
        return Ok(before);
    }
    let g = repo::gaps::GapRecord::new(tli, before.tli, before.archived_to, to, reason);
    startup::record_gap(&opts.repo, &opts.metrics, &g).await?;
    Ok(Start {
        tli,
        start: to,
        archived_to: to,
    })
}

/// Most bytes held back while a run's continuity is being proven (a record spanning the
/// repo's tip can be long); past it they are dropped, and once proven the run is streamed
/// again without a second check.
const HOLD_MAX: usize = 64 << 20;

/// What earlier sessions of this process learnt about runs.
#[derive(Debug, Default)]
struct Hints {
    /// A run proven to continue the repo whose bytes were not kept: stream it unchecked.
    proven: Option<(TimeLineId, Lsn)>,
    /// A run whose previous segment the server no longer has: prove it by prev-link.
    link_only: Option<(TimeLineId, Lsn)>,
}

/// The run being checked: what is compared, and what waits for the proof.
struct Gate {
    checker: Checker,
    /// Bytes below this are compared only; the expected bytes (`prefix`) stand for them.
    drop_below: Lsn,
    /// Forwarded first once proven, from the run's start.
    prefix: Option<Bytes>,
    /// Write-only mode: the bytes collected for the digest check become `prefix` once proven.
    digest_prefix: bool,
    /// Received at or after `drop_below`, waiting for the proof.
    held: Vec<(Lsn, Bytes)>,
    held_bytes: usize,
    /// Held bytes overflowed [`HOLD_MAX`] and were dropped.
    overflow: bool,
    /// The history file of the run's timeline, archived once proven.
    history: Option<Vec<u8>>,
    /// Proven, and the run begun in the archiver.
    open: bool,
}

impl Gate {
    fn closed() -> Gate {
        Gate {
            checker: Checker::nothing(),
            drop_below: Lsn(0),
            prefix: None,
            digest_prefix: false,
            held: Vec::new(),
            held_bytes: 0,
            overflow: false,
            history: None,
            open: false,
        }
    }
}

/// A CopyBoth stream's position: what was received, what waits for the archiver, and what
/// was last reported to the server.
struct Flow {
    received: Lsn,
    pending: Option<ArchMsg>,
    last_status: Instant,
    reported: (Lsn, Lsn),
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
    /// The server's newest known history: its timelines and where they switch.
    hist: TimelineHistory,
    /// The current run's check.
    gate: Gate,
    hints: &'a mut Hints,
    system_id: u64,
}

impl Session<'_> {
    async fn send_arch(&mut self, m: ArchMsg) -> Result<(), StreamError> {
        self.tx
            .send(m)
            .await
            .map_err(|_| StreamError::ArchiverStopped)
    }

    /// The refusal: one line, with what to do.
    fn refuse(&self, why: String) -> StreamError {
        refusal(&self.opts.repo, why)
    }

    /// Streams from `start` on `tli`, following timeline switches, until shutdown or error.
    async fn run(
        &mut self,
        mut tli: TimeLineId,
        mut start: Lsn,
    ) -> Result<SessionEnd, StreamError> {
        loop {
            let (h, content) = startup::server_history(self.conn, tli).await?;
            if h.tli > self.hist.tli {
                self.hist = h;
            }
            if let Err(why) =
                startup::check_histories(&self.opts.repo, self.conn, &self.hist).await?
            {
                return Err(self.refuse(why));
            }
            let plan = self.plan(tli, start).await?;
            match self
                .conn
                .start_replication(self.opts.slot.as_deref(), plan.stream_from, tli)
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
                Err(e) => return Err(startup::server_error(tli, plan.stream_from, e)),
            }
            let check = plan.checker.what().to_owned();
            tracing::info!(timeline = tli.0, start = %start, from = %plan.stream_from, check = %check, "streaming");
            self.run = (tli, start);
            let stream_from = plan.stream_from;
            self.gate = Gate {
                checker: plan.checker,
                drop_below: plan.drop_below,
                prefix: plan.prefix,
                digest_prefix: plan.digest_prefix,
                held: Vec::new(),
                held_bytes: 0,
                overflow: false,
                history: content,
                open: false,
            };
            if self.gate.checker.is_proven() {
                self.open_run().await?;
            }
            self.opts
                .metrics
                .timeline
                .store(u64::from(tli.0), std::sync::atomic::Ordering::Relaxed);
            self.opts.metrics.set_streaming(true);
            self.streaming_since.get_or_insert_with(Instant::now);
            match self.stream(stream_from).await? {
                Some((next_tli, next_start, received)) => {
                    if next_tli <= tli || next_start > received {
                        return Err(StreamError::Internal(format!(
                            "server switched from timeline {} to {} at {next_start}, beyond what it sent ({received})",
                            tli.0, next_tli.0
                        )));
                    }
                    if !self.gate.open {
                        return Err(StreamError::Unproven(format!(
                            "timeline {} ended at {next_start} before its WAL was proven to continue the repo's; streaming it again",
                            tli.0
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

    /// How the run (`tli`, `start`) is checked before its first byte is archived (see
    /// [`continuity`]): the bytes the repo or the spool holds of its first segment, else the
    /// segment before it (byte for byte while the slot guarantees the server still has it,
    /// else by prev-link), else nothing. In write-only mode see [`Session::sealed_plan`].
    async fn plan(&mut self, tli: TimeLineId, start: Lsn) -> Result<Plan, StreamError> {
        let seg = self.seg;
        if self.hints.proven.take() == Some((tli, start)) {
            return Ok(Plan::nothing(start));
        }
        let link_only = self.hints.link_only.take() == Some((tli, start));
        if !self.opts.repo.can_read() {
            return self.sealed_plan(tli, start, link_only).await;
        }
        let segno = start.segment(seg);
        let r = &self.opts.repo;
        let objs = startup::objects(r, seg).await?;
        let end_of = |t: TimeLineId| self.hist.switch_point(t).unwrap_or(Lsn(u64::MAX));
        // The run's first segment: the spool (what was acknowledged) or the repo's newest object.
        let mut own = startup::newest_object(r, &objs, tli, segno, seg).await?;
        if let Some(sc) = &self.opts.spool
            && let Some(src) = spool::read_prefix(&sc.dir, tli, segno, seg)?
            && own.as_ref().is_none_or(|o| o.bytes.len() < src.bytes.len())
        {
            own = Some(src);
        }
        if let Some(src) = own {
            return Ok(Plan::overlap(start, src, end_of(tli)));
        }
        // The segment of a switch point: its first part is the parent timeline's.
        let holder = self.hist.timeline_of(start);
        if holder != tli
            && let Some(src) = startup::newest_object(r, &objs, holder, segno, seg).await?
        {
            return Ok(Plan::overlap(start, src, end_of(holder)));
        }
        // The complete segment before.
        let Some(prev) = segno.0.checked_sub(1).map(SegNo) else {
            return Ok(Plan::nothing(start));
        };
        let ptli = self.hist.timeline_of(Lsn(start.0.saturating_sub(1)));
        let Some(src) = startup::newest_object(r, &objs, ptli, prev, seg)
            .await?
            .filter(|s| s.bytes.len() as u64 == seg.bytes())
        else {
            return Ok(Plan::nothing(start));
        };
        let guaranteed = match &self.opts.slot {
            Some(slot) if ptli == tli && !link_only => self
                .conn
                .read_replication_slot(slot)
                .await?
                .and_then(|i| i.restart_lsn)
                .is_some_and(|l| l.segment(seg) <= prev),
            _ => false,
        };
        if guaranteed && let Some(from) = prev.start_lsn(seg) {
            return Ok(Plan {
                stream_from: from,
                checker: Checker::bytes(from, src.bytes, src.what),
                drop_below: start,
                prefix: None,
                digest_prefix: false,
            });
        }
        let cfg = walfmt::DecoderConfig::for_cluster(seg, self.system_id);
        match Checker::link(cfg, &src.bytes, start, src.what) {
            Ok(checker) => Ok(Plan {
                stream_from: start,
                checker,
                drop_below: start,
                prefix: None,
                digest_prefix: false,
            }),
            Err(why) => {
                tracing::warn!(timeline = tli.0, start = %start, "cannot check that the server's WAL continues the repo's: {why}; streaming on without that check");
                Ok(Plan::nothing(start))
            }
        }
    }

    /// [`Session::plan`] in write-only mode, where the repo's objects cannot be read: the
    /// same choices by object names, each proven by digest ([`continuity::Checker::digest`]):
    /// the run's first segment (the spool's bytes when it holds at least as much as the repo,
    /// else the repo's newest object of it, streamed from the segment start and re-made), else
    /// the complete segment before it, streamed from its start whether or not a slot
    /// guarantees it (the server says so when it no longer has it). What only a prev-link
    /// could prove (the server no longer has the segment the repo ends in) is refused: the
    /// link needs the repo's bytes, and no WAL is archived unproven.
    async fn sealed_plan(
        &mut self,
        tli: TimeLineId,
        start: Lsn,
        link_only: bool,
    ) -> Result<Plan, StreamError> {
        let seg = self.seg;
        let segno = start.segment(seg);
        let objs = startup::objects(&self.opts.repo, seg).await?;
        let end_of = |t: TimeLineId| self.hist.switch_point(t).unwrap_or(Lsn(u64::MAX));
        let own = startup::newest_named(&objs, tli, segno, seg);
        if let Some(sc) = &self.opts.spool
            && let Some(src) = spool::read_prefix(&sc.dir, tli, segno, seg)?
            && own.as_ref().is_none_or(|o| o.len <= src.bytes.len() as u64)
        {
            return Ok(Plan::overlap(start, src, end_of(tli)));
        }
        let mut unusable = None;
        if let Some(o) = own {
            match Plan::sealed_overlap(start, &o, end_of(tli)) {
                Some(p) => return Ok(p),
                None => unusable = Some(o.key),
            }
        }
        let holder = self.hist.timeline_of(start);
        if holder != tli
            && let Some(o) = startup::newest_named(&objs, holder, segno, seg)
        {
            match Plan::sealed_overlap(start, &o, end_of(holder)) {
                Some(p) => return Ok(p),
                None => unusable = Some(o.key),
            }
        }
        if let Some(key) = &unusable {
            tracing::info!(timeline = tli.0, start = %start, object = %key, "write-only mode: the repo's object reaches past where the server's history leaves its timeline, so the server cannot send all of it; checking the segment before instead");
        }
        let Some(prev) = segno.0.checked_sub(1).map(SegNo) else {
            return Ok(Plan::nothing(start));
        };
        let ptli = self.hist.timeline_of(Lsn(start.0.saturating_sub(1)));
        let Some(p) = startup::newest_named(&objs, ptli, prev, seg).filter(|n| n.complete) else {
            // Readable, the first part of that object would have been compared.
            if let Some(key) = unusable {
                return Err(StreamError::Refused(format!(
                    "timeline {}: the repo's {key} reaches past where the server's history leaves its timeline, and write-only mode (--recipient without --identity) can prove only a whole object, with no complete segment before it to prove instead; nothing was written: run pitr stream once with --identity FILE, or stream this server into a new repo; the repo {} is unchanged",
                    tli.0, self.opts.repo.location
                )));
            }
            return Ok(Plan::nothing(start));
        };
        if link_only {
            return Err(StreamError::Refused(write_only_unprovable(
                tli,
                start,
                &p.key,
                &self.opts.repo.location,
            )));
        }
        match prev.start_lsn(seg) {
            Some(from) => Ok(Plan::sealed_previous(start, from, &p)),
            None => Ok(Plan::nothing(start)),
        }
    }

    /// Write-only mode: the run's collected bytes re-make the stored object's plaintext
    /// (`repo::compress`, as the archiver wrote it), and the repo says whether the object
    /// holds exactly that. Proven: the bytes become the run's prefix when they are the run's.
    /// An object gone meanwhile (another writer completed or removed it) is planned again.
    async fn check_digest(&mut self) -> Result<Verdict, StreamError> {
        let key = self.gate.checker.what().to_owned();
        let Some((_, raw)) = self.gate.checker.take_collected() else {
            return Ok(self.gate.checker.verdict().clone());
        };
        let compress = |raw: Vec<u8>, f: fn(&[u8]) -> Bytes| async move {
            tokio::task::spawn_blocking(move || {
                let z = f(&raw);
                (raw, z)
            })
            .await
            .map_err(|e| StreamError::Internal(format!("compressing for the digest check: {e}")))
        };
        let (raw, stored) = compress(raw, repo::compress).await?;
        let repo = self
            .opts
            .repo
            .retrying("check an object's digest", Duration::from_secs(30));
        let mut held = repo.holds(&key, &stored).await?;
        let raw = if held == Some(false) {
            // Written by a pitr of codec revision 1 (lz4_flex's frame encoder)?
            let (raw, revision1) = compress(raw, repo::codec::compress_revision1).await?;
            if revision1 != stored {
                held = repo.holds(&key, &revision1).await?;
            }
            raw
        } else {
            raw
        };
        let Some(held) = held else {
            return Err(StreamError::Unproven(format!(
                "{key} is no longer in the repo (another writer replaced or removed it); checking again"
            )));
        };
        if self.gate.checker.settle(held) == &Verdict::Proven && self.gate.digest_prefix {
            self.gate.prefix = Some(Bytes::from(raw));
        }
        Ok(self.gate.checker.verdict().clone())
    }

    /// The run is proven: its history file is archived and the archiver (or spool) begins it.
    async fn open_run(&mut self) -> Result<(), StreamError> {
        let (tli, start) = self.run;
        if let Some(content) = self.gate.history.take() {
            let key = repo::history_key(tli);
            let r = self
                .opts
                .repo
                .with_retry(repo::retrying::RetryPolicy::forever(Duration::from_secs(
                    30,
                )));
            // A listing, not a read: the same answer, and it works in write-only mode.
            if !r.exists(&key).await? {
                r.put(&key, Bytes::from(content)).await?;
                tracing::info!(timeline = tli.0, "archived timeline history");
            }
        }
        self.send_arch(ArchMsg::Begin { tli, start }).await?;
        self.gate.open = true;
        self.opts
            .metrics
            .server_behind
            .store(false, std::sync::atomic::Ordering::Relaxed);
        if !self.gate.checker.what().is_empty() {
            tracing::info!(timeline = tli.0, start = %start, against = %self.gate.checker.what(), "the server's WAL continues the repo's");
        }
        Ok(())
    }

    /// Passes received WAL through the run's check: `Some` to forward now; `None` while it is
    /// held (or compared only) until proven. A divergence ends the session, nothing written.
    async fn admit(&mut self, s: Lsn, data: Bytes) -> Result<Option<(Lsn, Bytes)>, StreamError> {
        if self.gate.open {
            return Ok(Some((s, data)));
        }
        let g = &mut self.gate;
        let end = Lsn(s.0 + data.len() as u64);
        if !g.overflow && end > g.drop_below {
            let from = s.max(g.drop_below);
            let piece = data.slice((from.0 - s.0) as usize..);
            g.held_bytes += piece.len();
            g.held.push((from, piece));
            if g.held_bytes > HOLD_MAX {
                tracing::warn!(
                    held = g.held_bytes,
                    "a long record spans the repo's tip: proving continuity first, then streaming the run again"
                );
                g.held = Vec::new();
                g.held_bytes = 0;
                g.overflow = true;
            }
        }
        let mut verdict = g.checker.feed(s, &data).clone();
        if verdict == Verdict::Collected {
            verdict = self.check_digest().await?;
        }
        match verdict {
            Verdict::Pending | Verdict::Collected => Ok(None),
            Verdict::Diverged(d) => {
                let (tli, _) = self.run;
                Err(self.refuse(format!(
                        "timeline {}: the server's WAL is not the repo's from {} on ({}): the server was restored from an earlier snapshot or volume, or another cluster line reuses this timeline ID",
                    tli.0, d.at, d.detail
                )))
            }
            Verdict::Proven => {
                if self.gate.overflow {
                    self.hints.proven = Some(self.run);
                    return Err(StreamError::Unproven(format!(
                        "timeline {}: the server's WAL from {} continues the repo's; streaming it again",
                        self.run.0.0, self.run.1
                    )));
                }
                self.open_run().await?;
                if let Some(p) = self.gate.prefix.take() {
                    let start = self.run.1;
                    self.send_arch(ArchMsg::Wal { start, data: p }).await?;
                }
                for (start, data) in std::mem::take(&mut self.gate.held) {
                    self.send_arch(ArchMsg::Wal { start, data }).await?;
                }
                self.gate.held_bytes = 0;
                Ok(None)
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
        let mut f = Flow {
            received: start,
            pending: None,
            last_status: Instant::now(),
            reported: (Lsn(0), Lsn(0)),
        };
        // Silence counts only while reading (back-pressure stops the reading).
        let mut last_heard = Instant::now();
        let ping_every = ping_interval(self.opts.status_interval, self.receive_timeout);
        let mut last_ping = Instant::now();
        let mut tick = tokio::time::interval(SESSION_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(end) = self.drain(&mut f).await? {
                return Ok(Some(end));
            }
            tokio::select! {
                biased;
                _ = self.shutdown.changed() => {
                    self.stop(f.pending.take(), f.received).await?;
                    return Ok(None);
                }
                permit = self.tx.reserve(), if f.pending.is_some() => {
                    let permit = permit.map_err(|_| StreamError::ArchiverStopped)?;
                    if let Some(m) = f.pending.take() {
                        permit.send(m);
                    }
                    // Reading again: silence counts from now.
                    last_heard = Instant::now();
                }
                r = self.conn.fill(), if f.pending.is_none() => {
                    if r? == 0 {
                        return Err(StreamError::Conn(ConnError::Closed));
                    }
                    last_heard = Instant::now();
                }
                _ = self.archived.changed() => {
                    self.status(f.received, &mut f.reported, false, false).await?;
                    f.last_status = Instant::now();
                }
                _ = tick.tick() => {
                    if f.pending.is_none() && last_heard.elapsed() >= self.receive_timeout {
                        return Err(StreamError::Conn(ConnError::Silent {
                            host: self.conn.host.describe(),
                            waited: last_heard.elapsed(),
                        }));
                    }
                    if last_ping.elapsed() >= ping_every {
                        self.status(f.received, &mut f.reported, true, true).await?;
                        last_ping = Instant::now();
                        f.last_status = last_ping;
                    } else if f.last_status.elapsed() >= self.opts.status_interval {
                        self.status(f.received, &mut f.reported, true, false).await?;
                        f.last_status = Instant::now();
                    }
                }
            }
        }
    }

    /// Drains buffered events while the archiver takes them (a message it cannot take yet
    /// waits in `f.pending`). `Some(next timeline, its start, received end)` when the
    /// timeline ended.
    async fn drain(&mut self, f: &mut Flow) -> Result<Option<(TimeLineId, Lsn, Lsn)>, StreamError> {
        while f.pending.is_none() {
            let (tli, run_start) = self.run;
            match self
                .conn
                .try_event()
                .map_err(|e| startup::server_error(tli, run_start, e))?
            {
                Some(StreamEvent::Wal {
                    start: s,
                    server_end,
                    data,
                }) => {
                    self.received_wal = true;
                    self.opts.metrics.observe_server(server_end.0);
                    if s != f.received {
                        return Err(StreamError::Gap {
                            expected: f.received,
                            got: s,
                        });
                    }
                    f.received = Lsn(f.received.0 + data.len() as u64);
                    self.opts
                        .metrics
                        .received_lsn
                        .fetch_max(f.received.0, std::sync::atomic::Ordering::Relaxed);
                    let Some((s, data)) = self.admit(s, data).await? else {
                        continue;
                    };
                    match self.tx.try_send(ArchMsg::Wal { start: s, data }) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(m)) => f.pending = Some(m),
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
                        self.status(f.received, &mut f.reported, true, false)
                            .await?;
                        f.last_status = Instant::now();
                    }
                }
                Some(StreamEvent::TimelineEnd) => {
                    if let Some(m) = f.pending.take() {
                        self.send_arch(m).await?;
                    }
                    return match self.conn.finish_timeline().await? {
                        Some((t, l)) => Ok(Some((t, l, f.received))),
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
        Ok(None)
    }

    /// On shutdown: hands the archiver what is pending and waits for it to be durable,
    /// within the shutdown deadline, then reports the final position to the server.
    async fn stop(&mut self, pending: Option<ArchMsg>, received: Lsn) -> Result<(), StreamError> {
        // The pending message and the sync share the deadline: with storage down the channel
        // stays full, and what was never acknowledged can stay on the server.
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
        Ok(())
    }

    /// What may be reported as flushed: nothing (`0/0`, which leaves the slot alone) until the
    /// run is proven to continue the repo; then the durable position if it is of the timeline
    /// being streamed, else the run's start; never beyond `received`.
    fn durable(&self, received: Lsn) -> Lsn {
        if !self.gate.open {
            return Lsn(0);
        }
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

/// Runs `pitr stream` until `shutdown` (a [`crate::shutdown::Shutdown`], or the
/// `watch::Receiver<bool>` under one). Errors before the first successful start (bad
/// configuration, refusals) are returned; afterwards, connection trouble is retried.
///
/// Three phases: start-up (`connect_first`, `start_pipeline`, `start_background`), the
/// session loop (`Sessions::attempt`, once per connection), and shutdown (`finish`).
pub async fn run(
    mut opts: StreamOptions,
    shutdown: impl Into<crate::shutdown::Shutdown>,
) -> Result<(), StreamError> {
    let shutdown = shutdown.into().watch();
    let (mut conn, prep) = connect_first(&mut opts).await?;
    let mut pipe = start_pipeline(&opts, &prep).await?;
    let heartbeat = start_background(&opts, &shutdown);
    let mut sessions = Sessions {
        opts: &opts,
        shutdown,
        backoff: INITIAL_BACKOFF,
        first: prep,
        cur: prep,
        hints: Hints::default(),
        gap: None,
    };
    let mut reconnect = false;
    let result = loop {
        match sessions.attempt(&mut conn, &mut pipe, reconnect).await {
            Retry::Again => reconnect = true,
            Retry::Stop(r) => break r,
        }
    };
    let mut shutdown = sessions.shutdown;
    finish(&opts, pipe, conn, result, &mut shutdown, heartbeat).await
}

/// Start-up: connects, checks the server and claims the repo (refusals explained with their
/// fix), checks the spool, and removes a killed pitr's temporary files in the background.
async fn connect_first(opts: &mut StreamOptions) -> Result<(PgConn, Prepared), StreamError> {
    opts.source
        .connect_timeout
        .get_or_insert(DEFAULT_CONNECT_TIMEOUT);
    let user = opts.source.user.clone();
    let mut conn = PgConn::connect(&opts.source, true)
        .await
        .map_err(|e| explain(e, &user))?;
    conn.set_io_timeout(Some(DEFAULT_RECEIVE_TIMEOUT));
    let prep = prepare(&mut conn, opts).await.map_err(|e| match e {
        StreamError::Conn(c) => explain(c, &user).into(),
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
    Ok((conn, prep))
}

/// The pipeline between the sessions and the repo: the archiver and, with `--ack spool`, the
/// spool's writer and reader.
struct Pipeline {
    /// Takes the sessions' messages.
    tx: mpsc::Sender<ArchMsg>,
    /// The position reported as flushed.
    flush_rx: watch::Receiver<archiver::Durable>,
    /// The spool's shared state, with `--ack spool`.
    spool: Option<std::sync::Arc<spool::Shared>>,
    /// The pipeline's tasks, ending with their first error.
    task: tokio::task::JoinHandle<Result<(), StreamError>>,
    /// `task` has ended (and was awaited).
    done: bool,
    /// The cluster's segment size.
    seg: WalSegSize,
}

/// Start-up: the archiver, whose durable position starts at the repo's tip, and with
/// `--ack spool` the spool (WAL acknowledged by an earlier run is uploaded from it first).
async fn start_pipeline(opts: &StreamOptions, prep: &Prepared) -> Result<Pipeline, StreamError> {
    let seg = prep.seg;
    // Sessions report nothing as flushed before their run is proven, whatever this says.
    let first_tip = tip_retrying(&opts.repo, seg).await?;
    if let Some(t) = &first_tip {
        // What the repo already holds is archived: readiness measures from there.
        opts.metrics
            .archived_lsn
            .fetch_max(t.end.0, std::sync::atomic::Ordering::Relaxed);
    }
    let durable_of =
        |t: Option<repo::ArchivedTip>| t.map_or((TimeLineId(0), Lsn(0)), |t| (t.tli, t.end));
    let (archived_tx, archived_rx) = watch::channel(durable_of(first_tip));
    let (arch_tx, arch_rx) = mpsc::channel(32);
    let arch = Archiver::new(
        opts.repo.clone(),
        ArchiverConfig {
            seg,
            partial_every: opts.partial_every,
            retry_cap: ARCHIVER_RETRY_CAP,
            system_id: prep.system_id,
            metrics: opts.metrics.clone(),
        },
        archived_tx,
    );
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(arch.run(arch_rx));
    let (tx, flush_rx, spool_shared) = match &opts.spool {
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
            let tip = tip_retrying(&opts.repo, seg).await?;
            let shared = std::sync::Arc::new(spool::Shared::default());
            let (spooled_tx, spooled_rx) = watch::channel(durable_of(tip));
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
    Ok(Pipeline {
        tx,
        flush_rx,
        spool: spool_shared,
        task: tokio::spawn(first_error(tasks)),
        done: false,
        seg,
    })
}

/// The writer heartbeat: stopped last, whatever ends the run.
struct HeartbeatTask {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Start-up: the tasks beside the sessions (slot and server monitoring, the open-gap state
/// behind `/healthz` and `pitr_wal_gap_open`, the writer heartbeat).
fn start_background(opts: &StreamOptions, shutdown: &watch::Receiver<bool>) -> HeartbeatTask {
    tokio::spawn(monitor::run(
        opts.source.clone(),
        opts.slot.clone(),
        opts.metrics.clone(),
        opts.slot_check_every,
        shutdown.clone(),
    ));
    // The open-gap state follows the repo's gap records and backups.
    tokio::spawn(startup::gap_watch(
        opts.repo.clone(),
        opts.metrics.clone(),
        opts.slot_check_every,
        shutdown.clone(),
    ));
    // The heartbeat lasts as long as the run, whatever ends it.
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(writers::run(
        opts.repo.clone(),
        writers::Heartbeat::of_this_process(opts.slot.clone(), opts.writer_heartbeat),
        opts.metrics.clone(),
        stop_rx,
    ));
    HeartbeatTask { stop, task }
}

/// What the session loop does after an attempt.
enum Retry {
    /// Reconnect and try again.
    Again,
    /// End the run with this.
    Stop(Result<(), StreamError>),
}

/// The session loop's state across reconnections.
struct Sessions<'a> {
    opts: &'a StreamOptions,
    shutdown: watch::Receiver<bool>,
    backoff: Duration,
    /// The first connection's server: every later one must be the same cluster.
    first: Prepared,
    /// The current connection's server.
    cur: Prepared,
    hints: Hints,
    /// The server said the WAL at the resume point is gone: handled after reconnecting.
    gap: Option<String>,
}

impl Sessions<'_> {
    /// One connection's worth: (re)connect when `reconnect`, find where to resume, stream,
    /// and decide what comes next.
    ///
    /// Reconnecting and finding the resume point read and write the repo (with retries that
    /// can last tens of seconds while storage is down): a shutdown request cuts them short.
    /// Nothing is lost: they hold no WAL, each repo write is atomic, and the session (which
    /// does hold WAL) has its own deadline.
    async fn attempt(&mut self, conn: &mut PgConn, pipe: &mut Pipeline, reconnect: bool) -> Retry {
        let mut stop = self.shutdown.clone();
        let before = async {
            if reconnect {
                self.reconnect(conn).await?;
            }
            self.resume_point(conn, pipe).await
        };
        let (receive, hist, start) = tokio::select! {
            r = before => match r {
                Ok(v) => v,
                Err(next) => return next,
            },
            _ = stop.wait_for(|s| *s) => {
                tracing::info!("stopping before the session started");
                return Retry::Stop(Ok(()));
            }
        };
        match self.session(conn, pipe, receive, hist, start).await {
            Ok(next) | Err(next) => next,
        }
    }

    /// After a failed step: a transient error is logged and waited out (then `Again`, unless
    /// shutdown came first); any other error ends the run.
    async fn failed(&mut self, e: StreamError, what: &str) -> Retry {
        if !e.is_transient() {
            return Retry::Stop(Err(e));
        }
        self.wait_out(&e, what).await
    }

    /// Logs `e` and waits the next backoff: `Again`, or `Stop(Ok)` on shutdown.
    async fn wait_out(&mut self, e: &(dyn std::fmt::Display + Sync), what: &str) -> Retry {
        let cap = self.opts.reconnect_cap;
        if failed_wait(&mut self.shutdown, &mut self.backoff, cap, e, what).await {
            Retry::Stop(Ok(()))
        } else {
            Retry::Again
        }
    }

    /// Connects again and checks it is the same cluster.
    async fn reconnect(&mut self, conn: &mut PgConn) -> Result<(), Retry> {
        let opts = self.opts;
        tracing::info!("reconnecting");
        opts.metrics
            .reconnects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match PgConn::connect(&opts.source, true).await {
            Ok(mut c) => {
                c.set_io_timeout(Some(DEFAULT_RECEIVE_TIMEOUT));
                *conn = c;
            }
            Err(e) => return Err(self.wait_out(&e, "cannot reconnect").await),
        }
        match prepare(conn, opts).await {
            Ok(p) if p.system_id != self.first.system_id => Err(Retry::Stop(Err(
                StreamError::Repo(RepoError::OtherCluster {
                    repo: opts.repo.location.clone(),
                    repo_system: self.first.system_id,
                    server_system: p.system_id,
                }),
            ))),
            Ok(p) => {
                opts.metrics.server_connected(p.server_pos.0);
                self.cur = p;
                Ok(())
            }
            Err(e) => Err(self.failed(e, "reconnected but could not prepare").await),
        }
    }

    /// Where this connection's session starts: the receive timeout (the server's
    /// `wal_sender_timeout`, which also bounds every command and write on it), the server's
    /// history, and the start (after a gap: recorded, and past it).
    async fn resume_point(
        &mut self,
        conn: &mut PgConn,
        pipe: &Pipeline,
    ) -> Result<(Duration, TimelineHistory, Start), Retry> {
        let show = match conn.show("wal_sender_timeout").await {
            Ok(v) => v,
            Err(e) => {
                return Err(self
                    .failed(e.into(), "reconnected but could not prepare")
                    .await);
            }
        };
        let receive = receive_timeout(&show);
        conn.set_io_timeout(Some(receive));
        let spooled_at = pipe
            .spool
            .as_ref()
            .and_then(|s| s.resume_point(self.first.seg));
        let hist = match startup::server_history(conn, self.cur.server_tli).await {
            Ok((h, _)) => h,
            Err(e) => {
                let what = "reconnected but could not read the server's history";
                return Err(self.failed(e, what).await);
            }
        };
        let (opts, cur) = (self.opts, self.cur);
        let st = match self.gap.take() {
            Some(reason) => after_gap(conn, opts, &cur, &hist, spooled_at, &reason).await,
            None => start_point(conn, opts, &cur, &hist, spooled_at).await,
        };
        match st {
            Ok(st) => Ok((receive, hist, st)),
            Err(e) => Err(self.failed(e, "could not find where to resume").await),
        }
    }

    /// Streams one session, bounded by the shutdown backstop and the pipeline's health, and
    /// decides what comes next.
    async fn session(
        &mut self,
        conn: &mut PgConn,
        pipe: &mut Pipeline,
        receive: Duration,
        hist: TimelineHistory,
        Start { tli, start, .. }: Start,
    ) -> Result<Retry, Retry> {
        let opts = self.opts;
        // Backstop: whatever the session is waiting on (a full channel while storage is
        // down), a shutdown request ends it within the deadline. Nothing unacknowledged is
        // lost: the slot keeps it on the server.
        let mut stop = self.shutdown.clone();
        let deadline = opts.shutdown_timeout;
        let backstop = async move {
            while !*stop.borrow_and_update() {
                if stop.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            tokio::time::sleep(deadline + BACKSTOP_GRACE).await;
        };
        let mut session = Session {
            conn,
            opts,
            tx: &pipe.tx,
            archived: &mut pipe.flush_rx,
            shutdown: &mut self.shutdown,
            seg: self.first.seg,
            run: (tli, start),
            receive_timeout: receive,
            streaming_since: None,
            received_wal: false,
            hist,
            gate: Gate::closed(),
            hints: &mut self.hints,
            system_id: self.first.system_id,
        };
        let r = tokio::select! {
            r = session.run(tli, start) => r,
            _ = backstop => {
                tracing::warn!("stopping: the session did not finish in time");
                return Ok(Retry::Stop(Ok(())));
            }
            a = &mut pipe.task => {
                // The pipeline (archiver, spool) ended: always fatal.
                pipe.done = true;
                return Ok(Retry::Stop(Err(match a {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => StreamError::Internal("archiver ended".into()),
                    Err(e) => StreamError::Internal(format!("archiver task failed: {e}")),
                })));
            }
        };
        let streamed = session_streamed(
            session.streaming_since.map(|t| t.elapsed()),
            session.received_wal,
            r.as_ref().err(),
        );
        opts.metrics.set_streaming(false);
        let r = self.classify(r);
        Ok(self.after(r, streamed, &pipe.tx).await)
    }

    /// Turns the ends that teach the next session something into their retry: WAL the
    /// server no longer has (a gap to record, or a prev-link proof), a server behind the
    /// repo (shown in the metrics).
    fn classify(&mut self, r: Result<SessionEnd, StreamError>) -> Result<SessionEnd, StreamError> {
        let seg = self.first.seg;
        match r {
            Err(StreamError::WalRemoved {
                tli,
                start,
                segment,
                reason,
            }) => {
                let named = segment
                    .as_deref()
                    .and_then(|n| walfmt::WalFileName::parse(n, seg).ok());
                if let Some(walfmt::WalFileName::Segment(_, s)) = named
                    && s < start.segment(seg)
                {
                    // The segment before the run (to be compared byte for byte) is gone: the
                    // run itself is there; prove it by prev-link instead.
                    self.hints.link_only = Some((tli, start));
                    Err(StreamError::Unproven(format!(
                        "timeline {}: the server no longer has the segment before {start}; checking the prev-link instead",
                        tli.0
                    )))
                } else {
                    tracing::warn!(timeline = tli.0, start = %start, reason = %reason, "the server no longer has the WAL to resume from");
                    self.gap = Some(reason);
                    Err(StreamError::Unproven(format!(
                        "timeline {}: the server no longer has the WAL at {start}",
                        tli.0
                    )))
                }
            }
            Err(e @ StreamError::ServerBehind { .. }) => {
                self.opts
                    .metrics
                    .server_behind
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(e)
            }
            other => other,
        }
    }

    /// After a session: stop on shutdown or a lasting error; after a transient one, publish
    /// what was received (RPO) and wait the backoff.
    async fn after(
        &mut self,
        r: Result<SessionEnd, StreamError>,
        streamed: bool,
        tx: &mpsc::Sender<ArchMsg>,
    ) -> Retry {
        let e = match r {
            Ok(SessionEnd::Shutdown) => return Retry::Stop(Ok(())),
            Err(e) if e.is_transient() => e,
            Err(e) => return Retry::Stop(Err(e)),
        };
        let cap = self.opts.reconnect_cap;
        let attempt = if streamed {
            Attempt::Streamed
        } else if e_is_slot_busy(&e) {
            Attempt::SlotBusy
        } else {
            Attempt::Failed
        };
        let (wait, next) = next_backoff(self.backoff, attempt, cap);
        self.backoff = next;
        if attempt == Attempt::SlotBusy {
            tracing::warn!(error = %e, retry_in = ?wait, "the replication slot is in use by another connection (the previous pitr of a rolling update, or a second pitr stream with the same slot); waiting for it to be released");
        } else {
            tracing::warn!(error = %e, retry_in = ?wait, "stream interrupted");
        }
        // Publish what we have before reconnecting (RPO), then resume; a storage outage must
        // not make this wait outlive a shutdown request.
        let (ack, done) = oneshot::channel();
        let publish = async {
            if tx.send(ArchMsg::Sync(ack)).await.is_ok() {
                let _ = done.await;
            }
        };
        tokio::select! {
            _ = publish => {}
            _ = self.shutdown.wait_for(|s| *s) => return Retry::Stop(Ok(())),
            _ = tokio::time::sleep(cap) => {}
        }
        if backoff_wait(&mut self.shutdown, wait).await {
            return Retry::Stop(Ok(()));
        }
        Retry::Again
    }
}

/// Shutdown: finishes in-flight uploads (and, with a spool, what it holds) within the
/// deadline, leaves the spool tidy, shows a divergence (and, serving metrics, waits for
/// SIGTERM with it), and removes this process's heartbeat from the repo.
async fn finish(
    opts: &StreamOptions,
    mut pipe: Pipeline,
    conn: PgConn,
    result: Result<(), StreamError>,
    shutdown: &mut watch::Receiver<bool>,
    heartbeat: HeartbeatTask,
) -> Result<(), StreamError> {
    drop(pipe.tx);
    if result.is_err() {
        opts.metrics
            .failed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let mut result = result;
    if !pipe.done {
        match tokio::time::timeout(opts.shutdown_timeout, &mut pipe.task).await {
            Ok(Ok(Err(e))) => {
                // The pipeline's error explains an "archiver stopped" seen by the session.
                if result.is_ok() || matches!(&result, Err(StreamError::ArchiverStopped)) {
                    result = Err(e);
                }
            }
            Ok(_) => {}
            Err(_) => {
                pipe.task.abort();
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
        // Bounded like the rest of the stop: with storage unreachable its checks could take
        // as long as their retries; what it leaves, the next start uploads or removes.
        let cleanup = spool::cleanup(&sc.dir, pipe.seg, &opts.repo);
        match tokio::time::timeout(opts.shutdown_timeout, cleanup).await {
            Ok(Ok(0)) => {}
            Ok(Ok(left)) => {
                tracing::info!(bytes = left, dir = %sc.dir.display(), "WAL left in the spool; the next start uploads it")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "spool cleanup"),
            Err(_) => {
                tracing::warn!(dir = %sc.dir.display(), "spool cleanup did not finish before the shutdown deadline; the next start finishes it")
            }
        }
    }
    conn.close().await;
    if let Err(StreamError::Diverged(line)) = &result {
        opts.metrics.set_divergence(line);
        tracing::error!("{line}");
        if opts.linger_on_divergence {
            tracing::info!(
                "refusing to archive; /healthz and /metrics say why until SIGTERM (then exit 1)"
            );
            let _ = shutdown.wait_for(|s| *s).await;
        }
    }
    // The heartbeat removes this process's entry from the repo on the way out (bounded).
    let _ = heartbeat.stop.send(true);
    let _ = tokio::time::timeout(HEARTBEAT_EXIT_WAIT, heartbeat.task).await;
    result
}

/// After a failed attempt (connecting, preparing, finding where to resume): logs it and
/// waits the next backoff. True if shutdown came first.
async fn failed_wait(
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
    cap: Duration,
    e: &(dyn std::fmt::Display + Sync),
    what: &str,
) -> bool {
    let (wait, next) = next_backoff(*backoff, Attempt::Failed, cap);
    *backoff = next;
    tracing::warn!(error = %e, retry_in = ?wait, "{what}");
    backoff_wait(shutdown, wait).await
}

/// Whether a session streamed successfully, for the backoff (pure): it streamed for
/// [`STREAMED_AFTER`], or it received WAL and then lost the connection (a server restart).
/// A session that fails right after it starts for any other reason (a gap, a protocol or
/// server error) keeps the backoff growing, so a persistent problem is not retried in a
/// tight loop.
pub(crate) fn session_streamed(
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
    Ok(repo
        .retrying("list the repo", Duration::from_secs(10))
        .tip(seg)
        .await?)
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
        // The current value, not only a change: the session may have seen the request.
        _ = shutdown.wait_for(|s| *s) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shutdown the session already saw (its `changed()` consumed it) still cuts every later
    /// wait short: `Shutdown::on_signals` keeps its trigger alive, so `changed()` would never
    /// fire again and a session that ended in a transient error after SIGTERM would reconnect
    /// (before the refactor the signal task dropped its sender: `changed()` failed at once).
    #[tokio::test]
    async fn a_shutdown_already_seen_still_ends_the_backoff() {
        let (trigger, s) = crate::shutdown::Shutdown::new();
        let mut rx = s.watch();
        trigger.fire();
        rx.changed().await.unwrap();
        let waited = tokio::time::timeout(
            Duration::from_secs(2),
            backoff_wait(&mut rx, Duration::from_secs(30)),
        )
        .await;
        assert_eq!(waited, Ok(true));
        drop(trigger);
    }

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
