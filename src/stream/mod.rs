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
//! - Connection loss, server restart or failover: reconnect with capped exponential backoff.

pub mod archiver;
pub mod monitor;
pub mod spool;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
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
            self.opts
                .metrics
                .streaming
                .store(true, std::sync::atomic::Ordering::Relaxed);
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
        let mut last_status = tokio::time::Instant::now();
        let mut reported = (Lsn(0), Lsn(0));
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Drain buffered events while the archiver takes them.
            while pending.is_none() {
                match self.conn.try_event()? {
                    Some(StreamEvent::Wal { start: s, data, .. }) => {
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
                        reply_requested, ..
                    }) => {
                        if reply_requested {
                            self.status(received, &mut reported, true).await?;
                            last_status = tokio::time::Instant::now();
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
                }
                r = self.conn.fill(), if pending.is_none() => {
                    if r? == 0 {
                        return Err(StreamError::Conn(ConnError::Closed));
                    }
                }
                _ = self.archived.changed() => {
                    self.status(received, &mut reported, false).await?;
                    last_status = tokio::time::Instant::now();
                }
                _ = tick.tick() => {
                    if last_status.elapsed() >= self.opts.status_interval {
                        self.status(received, &mut reported, true).await?;
                        last_status = tokio::time::Instant::now();
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

    /// Sends write = received, flush = durable (never beyond received).
    async fn status(
        &mut self,
        received: Lsn,
        reported: &mut (Lsn, Lsn),
        force: bool,
    ) -> Result<(), StreamError> {
        let archived = self.durable(received);
        if force || (received, archived) != *reported {
            self.conn.send_status(received, archived, false).await?;
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
    opts: StreamOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), StreamError> {
    let user = opts.source.user.clone();
    let mut conn = PgConn::connect(&opts.source, true)
        .await
        .map_err(|e| explain(e, &user))?;
    let prep = prepare(&mut conn, &opts).await.map_err(|e| match e {
        StreamError::Conn(c) => explain(c, &user),
        other => other,
    })?;
    let seg = prep.seg;
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
    // Listed once here; later sessions list again (the archiver has moved the tip since).
    let mut first_tip = Some(tip_retrying(&opts.repo, seg).await?);
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
    if let Some(slot) = &opts.slot {
        tokio::spawn(monitor::run(
            opts.source.clone(),
            slot.clone(),
            opts.metrics.clone(),
            opts.slot_check_every,
            shutdown.clone(),
        ));
    }
    let mut backoff = Duration::from_millis(500);
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
                Ok(c) => conn = c,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot reconnect");
                    if backoff_wait(&mut shutdown, &mut backoff, opts.reconnect_cap).await {
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
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "reconnected but could not prepare");
                    if backoff_wait(&mut shutdown, &mut backoff, opts.reconnect_cap).await {
                        break Ok(());
                    }
                    continue;
                }
                Err(e) => break Err(e),
            }
        }
        first = false;
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
        opts.metrics
            .streaming
            .store(false, std::sync::atomic::Ordering::Relaxed);
        match r {
            Ok(SessionEnd::Shutdown) => break Ok(()),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "stream interrupted");
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
                if backoff_wait(&mut shutdown, &mut backoff, opts.reconnect_cap).await {
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
    result
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

/// Sleeps `backoff` (then doubles it, up to `cap`), unless shutdown comes first (true).
async fn backoff_wait(
    shutdown: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
    cap: Duration,
) -> bool {
    let d = *backoff;
    *backoff = (d * 2).min(cap);
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.changed() => true,
    }
}
