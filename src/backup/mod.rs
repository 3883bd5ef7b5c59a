//! `pitr backup`: a base backup streamed straight into the repo.
//!
//! `BASE_BACKUP ( LABEL, PROGRESS, CHECKPOINT 'fast', WAIT 0, MANIFEST 'yes', ... )` on a
//! replication connection; the protocol (the command, the response's order, its decoding
//! into events) is [`crate::replication::base_backup`]'s. This module decides what to do with
//! the events: the tar stream of each archive (tablespaces first, `base` last) is
//! cut into chunks of [`CHUNK_BYTES`], each compressed on the blocking pool and uploaded while
//! the next is received. At most [`IN_FLIGHT`] chunks are held, so memory is bounded whatever
//! the database size, and nothing is staged on local disk.
//!
//! # Invariants
//!
//! - The backup is good only after the final `CommandComplete "BASE_BACKUP"` (checksum
//!   failures arrive after the data).
//! - The catalog entry (`backups/<id>/backup.json`) is written last, after every chunk and the
//!   manifest are durable and the WAL from the start to the end LSN is in the repo (written by
//!   `pitr stream`; we wait for it with `--wal-timeout`). A backup interrupted at any point
//!   therefore never looks complete.

pub mod cmd;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use walfmt::{Lsn, TimeLineId, WalSegSize};

use crate::progress::progress_bar;
use crate::replication::base_backup::{
    BackupEvent, BaseBackupCommand, BaseBackupError, BaseBackupStream,
};
use crate::replication::codec::ServerNotice;
use crate::replication::commands::{SystemInfo, sql_literal};
use crate::replication::conn::{ConnError, PgConn};
use crate::replication::conninfo::ConnParams;
use crate::replication::{Explained, explain};
use crate::repo::catalog::{
    self, ArchiveRecord, BackupRecord, CHUNK_BYTES, ChunkRecord, PointRecord, WalIndex,
};
use crate::repo::codec::ChunkCodec;
use crate::repo::{self, Repo, RepoError};

/// Chunks compressed or uploading at once (memory: about twice this many chunk sizes).
pub(crate) const IN_FLIGHT: usize = 4;

/// Backup errors.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The connection failed.
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The server refused, with the fix.
    #[error("{0}")]
    Refused(String),
    /// The repo failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The server sent something unexpected.
    #[error("BASE_BACKUP: {0}")]
    Protocol(String),
    /// The server's response to `BASE_BACKUP` broke the protocol.
    #[error("BASE_BACKUP: {0}")]
    Stream(#[source] BaseBackupError),
    /// The WAL the backup needs did not reach the repo.
    #[error(
        "backup {id}: the WAL from {start} to {end} (timeline {tli}) is not in the repo after {waited:?}: run `pitr stream` for this server and repo (or take backups with `pitr stream --backup-every`); the backup's data is uploaded but it is not complete (no catalog entry)"
    )]
    WalTimeout {
        /// Backup id.
        id: String,
        /// Start LSN.
        start: Lsn,
        /// End LSN.
        end: Lsn,
        /// Timeline.
        tli: TimeLineId,
        /// How long we waited.
        waited: Duration,
    },
}

/// `pitr backup` settings.
#[derive(Debug, Clone)]
pub(crate) struct BackupOptions {
    /// The server (replication connection).
    pub source: ConnParams,
    /// The repo.
    pub repo: Repo,
    /// `--label`.
    pub label: String,
    /// Ask the server to lz4-compress (`COMPRESSION 'lz4'`) instead of compressing here.
    pub server_compression: bool,
    /// How pitr compresses the chunks (without `server_compression`).
    pub codec: ChunkCodec,
    /// How long to wait for the backup's WAL to reach the repo.
    pub wal_timeout: Duration,
    /// Draw a progress bar (stderr is a terminal).
    pub progress: bool,
    /// In the sidecar: the stream's metrics, whose `archived_wake` says when WAL reached the
    /// repo, so the wait for the backup's end WAL checks the repo then instead of polling.
    pub wake: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

struct ArchiveWriter {
    id: String,
    name: String,
    location: Option<String>,
    server_compressed: bool,
    codec: ChunkCodec,
    buf: BytesMut,
    n: usize,
    bytes: u64,
    chunks: Vec<JoinHandle<Result<ChunkRecord, RepoError>>>,
}

impl ArchiveWriter {
    fn new(
        id: &str,
        name: String,
        location: Option<String>,
        server_compressed: bool,
        codec: ChunkCodec,
    ) -> Self {
        ArchiveWriter {
            id: id.into(),
            name,
            location,
            server_compressed,
            codec,
            buf: BytesMut::with_capacity(CHUNK_BYTES),
            n: 0,
            bytes: 0,
            chunks: Vec::new(),
        }
    }

    async fn push(&mut self, data: &[u8], repo: &Repo, sem: &Arc<Semaphore>) {
        let mut rest = data;
        while !rest.is_empty() {
            let take = (CHUNK_BYTES - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            self.bytes += take as u64;
            if self.buf.len() >= CHUNK_BYTES {
                self.cut(repo, sem).await;
            }
        }
    }

    async fn cut(&mut self, repo: &Repo, sem: &Arc<Semaphore>) {
        let data = std::mem::replace(&mut self.buf, BytesMut::with_capacity(CHUNK_BYTES)).freeze();
        let ext = if self.server_compressed {
            "srv"
        } else {
            self.codec.ext()
        };
        let key = catalog::chunk_key(&self.id, &self.name, self.n, ext);
        let codec = self.codec;
        self.n += 1;
        // Back-pressure: wait for a slot before taking more from the socket.
        let permit = sem.clone().acquire_owned().await;
        let repo = repo.clone();
        let raw = self.server_compressed;
        let handle = tokio::spawn(async move {
            let _permit = permit;
            let bytes = data.len() as u64;
            let stored = if raw {
                data
            } else {
                tokio::task::spawn_blocking(move || codec.compress(&data))
                    .await
                    .map_err(RepoError::task("compression"))?
            };
            upload(&repo, &key, stored.clone()).await?;
            Ok(ChunkRecord {
                key,
                bytes,
                stored: stored.len() as u64,
                crc32c: crc32c::crc32c(&stored),
            })
        });
        self.chunks.push(handle);
    }

    async fn finish(
        mut self,
        repo: &Repo,
        sem: &Arc<Semaphore>,
    ) -> Result<ArchiveRecord, BackupError> {
        if !self.buf.is_empty() || self.n == 0 {
            self.cut(repo, sem).await;
        }
        let mut chunks = Vec::with_capacity(self.chunks.len());
        for handle in self.chunks {
            let rec = handle.await.map_err(RepoError::task("upload"))??;
            chunks.push(rec);
        }
        Ok(ArchiveRecord {
            name: self.name,
            location: self.location,
            bytes: self.bytes,
            server_compression: self.server_compressed.then(|| "lz4".to_string()),
            chunks,
        })
    }
}

/// Uploads with retries on transient errors for up to 10 minutes.
async fn upload(repo: &Repo, key: &str, data: Bytes) -> Result<(), RepoError> {
    let policy = repo::retrying::RetryPolicy::forever(Duration::from_secs(10))
        .label("upload backup chunk")
        .give_up_after(Duration::from_secs(600));
    match repo.with_retry(policy).put(key, data).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind == repo::store::StoreErrorKind::Exhausted => Err(RepoError::Rejected {
            repo: repo.location.clone(),
            message: format!("{key}: storage unavailable for 10 minutes; backup abandoned"),
            source: Some(std::sync::Arc::new(e)),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Now, at PostgreSQL's precision (microseconds), so recorded times can be pasted into `--to`.
fn now_micros() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now)
}

fn backup_id(now: jiff::Timestamp) -> String {
    now.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// Takes a base backup into the repo; returns its catalog entry once complete.
pub(crate) async fn run(opts: &BackupOptions) -> Result<BackupRecord, BackupError> {
    let mut conn = PgConn::connect(&opts.source, true)
        .await
        .map_err(|e| explain(e, &opts.source.user))?;
    let res = take(&mut conn, opts).await;
    // Write-only mode cannot read the repo's history files: the server's history of the
    // backup's timeline tells which WAL the backup needs (the stream archives a timeline only
    // once the repo's history file of it is proven to hold the server's).
    let server_history = match &res {
        Ok((rec, _)) if !opts.repo.can_read() && rec.end_tli.0 > 1 => {
            Some(server_history(&mut conn, rec.end_tli).await)
        }
        _ => None,
    };
    conn.close().await;
    let (mut rec, seg) = res?;
    let server_history = server_history.transpose()?;
    wait_for_wal(opts, &rec, seg, server_history.as_ref()).await?;
    check_objects(&opts.repo, &rec).await?;
    // Write-only mode cannot read the WAL to compute it; restore computes it again anyway.
    if opts.repo.can_read() {
        rec.restorable_from = server_restorable_from(&opts.repo, &rec, seg).await;
    }
    let body = serde_json::to_vec_pretty(&rec).unwrap_or_default();
    upload(&opts.repo, &catalog::backup_key(&rec.id), Bytes::from(body)).await?;
    Ok(rec)
}

impl From<BaseBackupError> for BackupError {
    fn from(e: BaseBackupError) -> Self {
        match e {
            BaseBackupError::Conn(e) => BackupError::Conn(e),
            BaseBackupError::Server(n) => server_failed(n),
            other => BackupError::Stream(other),
        }
    }
}

/// The server failed the backup: the known causes with their fix.
fn server_failed(n: Box<ServerNotice>) -> BackupError {
    let msg = n.message.clone();
    if msg.contains("checksum verification failure") {
        return BackupError::Refused(format!(
            "the server found page checksum failures during the backup ({msg}): the backup is not usable; check the server's log and storage"
        ));
    }
    if msg.contains("does not support compression") {
        return BackupError::Refused(format!(
            "the server cannot compress ({msg}): drop --server-compression (pitr then compresses with lz4 itself)"
        ));
    }
    ConnError::Server(n).into()
}

/// A connection failure explained by [`crate::replication::explain`].
impl From<Explained> for BackupError {
    fn from(e: Explained) -> Self {
        match e {
            Explained::Refused(m) => BackupError::Refused(m),
            Explained::Conn(e) => BackupError::Conn(e),
        }
    }
}

/// What the server sent for a backup it completed; the archives are uploaded.
struct Received {
    start: (Lsn, TimeLineId),
    end: (Lsn, TimeLineId),
    archives: Vec<ArchiveRecord>,
    manifest: Option<Vec<u8>>,
}

async fn take(
    conn: &mut PgConn,
    opts: &BackupOptions,
) -> Result<(BackupRecord, WalSegSize), BackupError> {
    let sys = conn.identify_system().await?;
    let seg = conn.wal_segment_size().await?;
    let major = conn.server_major();
    if let Some(why) = conn.unsupported() {
        return Err(BackupError::Refused(why));
    }
    opts.repo
        .retrying("claim the repo", Duration::from_secs(10))
        .claim(sys.system_id, seg, major)
        .await?;
    let start_time = now_micros();
    let id = fresh_id(&opts.repo, start_time).await?;
    let cmd = BaseBackupCommand {
        label: &opts.label,
        server_lz4: opts.server_compression,
    };
    let mut stream = conn.base_backup(&cmd).await?;
    tracing::info!(id = %id, label = %opts.label, "base backup started (fast checkpoint)");
    let began = Instant::now();
    let got = receive(&mut stream, opts, &id).await?;
    let manifest = match &got.manifest {
        Some(m) => Some(upload_manifest(&opts.repo, &id, m).await?),
        None => None,
    };
    let ((start_lsn, _), (end_lsn, _)) = (got.start, got.end);
    let rec = record(opts, id, start_time, conn, &sys, got, manifest);
    let secs = began.elapsed().as_secs_f64().max(0.001);
    tracing::info!(
        id = %rec.id,
        mb = rec.bytes >> 20,
        stored_mb = rec.stored_bytes >> 20,
        seconds = format!("{secs:.1}"),
        mb_per_s = format!("{:.1}", rec.bytes as f64 / secs / 1048576.0),
        start = %start_lsn,
        end = %end_lsn,
        "base backup data uploaded"
    );
    Ok((rec, seg))
}

/// The backup's id: the second it started, with `-N` appended while the repo already holds
/// a backup of that id.
async fn fresh_id(repo: &Repo, start_time: jiff::Timestamp) -> Result<String, BackupError> {
    let mut id = backup_id(start_time);
    for n in 1.. {
        let taken = !repo
            .store()
            .list(&format!("backups/{id}/"))
            .await
            .map_err(RepoError::from)?
            .is_empty();
        if !taken {
            break;
        }
        id = format!("{}-{n}", backup_id(start_time));
    }
    Ok(id)
}

/// Receives the backup: each archive cut into chunks and uploaded (at most [`IN_FLIGHT`] at
/// once), the manifest kept in memory, progress shown. Returns once the server completed it.
async fn receive(
    stream: &mut BaseBackupStream<'_>,
    opts: &BackupOptions,
    id: &str,
) -> Result<Received, BackupError> {
    let sem = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut start = None;
    let mut end = None;
    let mut total_kb: u64 = 0;
    let mut archive: Option<ArchiveWriter> = None;
    let mut archives = Vec::new();
    let mut manifest: Option<Vec<u8>> = None;
    let mut pb = progress_bar(0, false);
    let mut last_log = Instant::now();
    loop {
        let event = match stream.next().await {
            Err(e @ BaseBackupError::Server(_)) => {
                pb.finish_and_clear();
                return Err(e.into());
            }
            r => r?,
        };
        match event {
            BackupEvent::Started {
                start_lsn,
                timeline,
            } => start = Some((start_lsn, timeline)),
            BackupEvent::Tablespaces(list) => {
                total_kb = list.iter().filter_map(|t| t.size_kb).sum();
                pb = progress_bar(total_kb * 1024, opts.progress);
                pb.set_message(format!("backup {id}"));
            }
            BackupEvent::ArchiveStart {
                name,
                stem,
                location,
            } => {
                let loc = location.as_deref().unwrap_or_default();
                tracing::info!(archive = %name, location = %loc, "receiving archive");
                archive = Some(ArchiveWriter::new(
                    id,
                    stem,
                    location,
                    opts.server_compression,
                    opts.codec,
                ));
            }
            BackupEvent::ArchiveData(data) => {
                if let Some(a) = archive.as_mut() {
                    a.push(&data, &opts.repo, &sem).await;
                }
            }
            BackupEvent::ArchiveEnd => {
                if let Some(a) = archive.take() {
                    archives.push(a.finish(&opts.repo, &sem).await?);
                }
            }
            BackupEvent::Progress(done_bytes) => {
                pb.set_position(done_bytes);
                if !opts.progress && last_log.elapsed() >= Duration::from_secs(10) {
                    last_log = Instant::now();
                    tracing::info!(
                        done_mb = done_bytes >> 20,
                        total_mb = (total_kb * 1024) >> 20,
                        "backup progress"
                    );
                }
            }
            BackupEvent::ManifestStart => manifest = Some(Vec::new()),
            BackupEvent::ManifestData(data) => {
                if let Some(m) = manifest.as_mut() {
                    m.extend_from_slice(&data);
                }
            }
            BackupEvent::Ended { end_lsn, timeline } => end = Some((end_lsn, timeline)),
            BackupEvent::Notice(n) => {
                tracing::warn!(severity = %n.severity, "server: {}", n.message);
            }
            BackupEvent::Done => break,
        }
    }
    pb.finish_and_clear();
    let (Some(start), Some(end)) = (start, end) else {
        return Err(BackupError::Protocol(
            "no start or end position received".into(),
        ));
    };
    Ok(Received {
        start,
        end,
        archives,
        manifest,
    })
}

/// Compresses and uploads the backup manifest.
async fn upload_manifest(repo: &Repo, id: &str, m: &[u8]) -> Result<ChunkRecord, BackupError> {
    let key = catalog::manifest_key(id);
    let stored = repo::codec::compress_chunk(m);
    upload(repo, &key, stored.clone()).await?;
    Ok(ChunkRecord {
        key,
        bytes: m.len() as u64,
        stored: stored.len() as u64,
        crc32c: crc32c::crc32c(&stored),
    })
}

/// The catalog entry of a backup whose data and manifest are uploaded.
fn record(
    opts: &BackupOptions,
    id: String,
    start_time: jiff::Timestamp,
    conn: &PgConn,
    sys: &SystemInfo,
    got: Received,
    manifest: Option<ChunkRecord>,
) -> BackupRecord {
    let ((start_lsn, start_tli), (end_lsn, end_tli)) = (got.start, got.end);
    let archives = got.archives;
    let bytes = archives.iter().map(|a| a.bytes).sum();
    let stored_bytes = archives
        .iter()
        .flat_map(|a| a.chunks.iter().map(|c| c.stored))
        .sum::<u64>()
        + manifest.as_ref().map_or(0, |m| m.stored);
    BackupRecord {
        format: if opts.codec == ChunkCodec::Lz4 || opts.server_compression {
            catalog::BACKUP_FORMAT
        } else {
            catalog::BACKUP_FORMAT_ZSTD
        },
        id,
        label: opts.label.clone(),
        start_lsn,
        start_tli,
        end_lsn,
        end_tli,
        start_time: start_time.to_string(),
        end_time: now_micros().to_string(),
        pg_version: conn.server_version.clone(),
        pg_major: conn.server_major(),
        system_id: sys.system_id.to_string(),
        compression: if opts.server_compression {
            "server-lz4".into()
        } else {
            opts.codec.name().into()
        },
        archives,
        manifest,
        bytes,
        stored_bytes,
        created_by: format!("pitr {}", env!("CARGO_PKG_VERSION")),
        source_user: Some(opts.source.user.clone()),
        restorable_from: None,
    }
}

/// The backup's restorable-from instant on the server's clock, from the WAL now archived
/// (`None` if it cannot be read: restore computes it again anyway).
async fn server_restorable_from(
    repo: &Repo,
    rec: &BackupRecord,
    seg: WalSegSize,
) -> Option<String> {
    let sysid: u64 = rec.system_id.parse().ok()?;
    let idx = WalIndex::load(repo, seg, sysid).await.ok()?;
    let path = idx.path(rec.end_tli);
    let input = crate::restore::RepoInput { repo, idx: &idx };
    let (t, from_wal) = crate::restore::plan::restorable_from(&input, &path, rec, seg)
        .await
        .ok()?;
    from_wal.then(|| catalog::micros_rfc3339(t))
}

/// Before the catalog entry makes the backup count: every object it names is still in the
/// repo with its size (a prune of an interrupted-looking backup, or anything else that
/// removed one, fails the backup instead of cataloguing a broken one).
async fn check_objects(repo: &Repo, rec: &BackupRecord) -> Result<(), BackupError> {
    let prefix = format!("backups/{}/", rec.id);
    let listed: std::collections::HashMap<String, u64> = repo
        .retrying("list the backup's objects", Duration::from_secs(10))
        .store()
        .list(&prefix)
        .await
        .map_err(repo::RepoError::from)?
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect();
    let objects = rec
        .archives
        .iter()
        .flat_map(|a| a.chunks.iter())
        .chain(rec.manifest.iter());
    for c in objects {
        if listed.get(&c.key) != Some(&c.stored) {
            return Err(BackupError::Protocol(format!(
                "{} is missing from the repo (or has the wrong size) although it was uploaded: the backup is not catalogued; take it again",
                c.key
            )));
        }
    }
    Ok(())
}

/// The server's history file of `tli`, parsed.
async fn server_history(
    conn: &mut PgConn,
    tli: TimeLineId,
) -> Result<walfmt::TimelineHistory, BackupError> {
    let (_, content) = conn.timeline_history(tli).await?;
    walfmt::TimelineHistory::parse(tli, &String::from_utf8_lossy(&content)).map_err(|e| {
        BackupError::Protocol(format!(
            "the server's history file of timeline {} is unreadable: {e}",
            tli.0
        ))
    })
}

/// Waits until the repo holds the WAL from the backup's start to its end. In write-only
/// mode from object names alone, following `server_history` (the server's history of the
/// backup's end timeline; `None` for timeline 1).
async fn wait_for_wal(
    opts: &BackupOptions,
    rec: &BackupRecord,
    seg: WalSegSize,
    server_history: Option<&walfmt::TimelineHistory>,
) -> Result<(), BackupError> {
    let began = Instant::now();
    let sysid: u64 = rec.system_id.parse().unwrap_or(0);
    let tli = rec.end_tli;
    let mut logged = false;
    loop {
        // Armed before the repo is read, so an advance during the read is not missed.
        let woken = opts.wake.as_ref().map(|m| m.archived_wake.notified());
        tokio::pin!(woken);
        if let Some(w) = woken.as_mut().as_pin_mut() {
            w.enable();
        }
        let idx = if opts.repo.can_read() {
            WalIndex::load(&opts.repo, seg, sysid).await
        } else {
            WalIndex::from_names(&opts.repo, seg, sysid)
                .await
                .map(|mut idx| {
                    if let Some(h) = server_history {
                        idx.histories.insert(h.tli, h.clone());
                    }
                    idx
                })
        };
        if let Ok(idx) = idx {
            let path = idx.path(tli);
            let cov = idx.coverage(&path, rec.start());
            if cov.end.is_some_and(|e| e >= rec.end()) {
                tracing::info!(id = %rec.id, "the backup's WAL is in the repo");
                return Ok(());
            }
        }
        if began.elapsed() >= opts.wal_timeout {
            return Err(BackupError::WalTimeout {
                id: rec.id.clone(),
                start: rec.start(),
                end: rec.end(),
                tli,
                waited: opts.wal_timeout,
            });
        }
        if !logged && began.elapsed() >= Duration::from_secs(5) {
            logged = true;
            tracing::info!(end = %rec.end(), "waiting for `pitr stream` to archive the backup's WAL");
        }
        match woken.as_mut().as_pin_mut() {
            // The sidecar: the next advance of the stream (or a second, should the stream
            // be reconnecting to another timeline).
            Some(w) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), w).await;
            }
            // `pitr backup` alone: another process archives, and neither PostgreSQL nor the
            // storage can notify this one, so it polls the repo.
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// `pitr mark NAME`: creates a named restore point on the server and records it.
pub(crate) async fn mark(
    source: &ConnParams,
    repo: &Repo,
    name: &str,
) -> Result<PointRecord, BackupError> {
    if name.is_empty() || name.len() >= 64 {
        return Err(BackupError::Refused(format!(
            "invalid restore point name {name:?}: use 1 to 63 characters"
        )));
    }
    let mut conn = PgConn::connect(source, false)
        .await
        .map_err(|e| explain(e, &source.user))?;
    let r = conn
        .simple_query(&format!(
            "SELECT pg_create_restore_point({})::text, (SELECT timeline_id FROM pg_control_checkpoint())::text",
            sql_literal(name)
        ))
        .await;
    conn.close().await;
    let r = r?;
    let lsn: Lsn = r
        .get(0, 0)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| BackupError::Protocol("pg_create_restore_point returned nothing".into()))?;
    let tli = r.get(0, 1).and_then(|s| s.parse().ok()).unwrap_or(1);
    let rec = PointRecord {
        name: name.into(),
        lsn,
        tli: TimeLineId(tli),
        time: now_micros().to_string(),
    };
    let body = serde_json::to_vec_pretty(&rec).unwrap_or_default();
    upload(repo, &catalog::point_key(lsn), Bytes::from(body)).await?;
    Ok(rec)
}

/// Prints a one-line summary of a finished backup.
pub(crate) fn print_summary(w: &mut impl Write, rec: &BackupRecord) -> std::io::Result<()> {
    writeln!(
        w,
        "backup {} ({}) complete: {} MiB ({} MiB stored), WAL {} to {} on timeline {}, restorable from {}",
        rec.id,
        rec.label,
        rec.bytes >> 20,
        rec.stored_bytes >> 20,
        rec.start_lsn,
        rec.end_lsn,
        rec.end_tli,
        rec.restorable_from.as_deref().unwrap_or(&rec.end_time)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(message: &str) -> Box<ServerNotice> {
        Box::new(ServerNotice {
            severity: "ERROR".into(),
            code: "XX000".into(),
            message: message.into(),
            ..ServerNotice::default()
        })
    }

    #[test]
    fn server_failures_are_explained_with_their_fix() {
        let e = BackupError::from(BaseBackupError::Server(notice(
            "checksum verification failure during base backup",
        )));
        assert!(matches!(&e, BackupError::Refused(_)), "{e:?}");
        assert!(e.to_string().contains("page checksum failures"), "{e}");
        let e = BackupError::from(BaseBackupError::Server(notice(
            "this build does not support compression with lz4",
        )));
        assert!(e.to_string().contains("drop --server-compression"), "{e}");
        let e = BackupError::from(BaseBackupError::Server(notice("out of disk")));
        assert!(
            matches!(&e, BackupError::Conn(ConnError::Server(n)) if n.message == "out of disk"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "server error: out of disk");
    }

    #[test]
    fn protocol_errors_keep_their_text_and_source() {
        let e = BackupError::from(BaseBackupError::UnknownCopyData(b'x'));
        assert_eq!(e.to_string(), "BASE_BACKUP: unknown CopyData type 'x'");
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("unknown CopyData type 'x'"));
        let e = BackupError::from(BaseBackupError::DataBeforeArchive);
        assert_eq!(e.to_string(), "BASE_BACKUP: data before any archive");
    }
}
