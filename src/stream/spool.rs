//! `--ack spool`: WAL is acknowledged once it is fsync'd in a local spool directory, and
//! uploaded from there.
//!
//! ```text
//! receiver ─mpsc─> SpoolWriter ──(fsync)──> spool/<segment>.spool ──> SpoolReader ─mpsc─> Archiver ─> repo
//!    ^                  │ watch<spooled>                                  (reads back)
//!    └── flush = spooled┘
//! ```
//!
//! # Invariants
//!
//! - The flush position reported to the server (`spooled`) never runs ahead of WAL fsync'd
//!   in the spool: the writer writes, fsyncs the file (and the directory when it created the
//!   file), and only then advances `spooled`. A segment's file is fsync'd before any byte of
//!   the next segment is acknowledged.
//! - Spool files are named `<24-hex segment name>.spool` and hold a prefix of that segment,
//!   written at their offsets (never truncated: a restream after a reconnect rewrites the same
//!   bytes in place).
//! - A spool file is deleted only when its segment is complete in the repo (or, for a
//!   timeline's last, partial segment, once the repo holds a partial up to its end and a newer
//!   timeline is being written). So acknowledged WAL is always in the spool or in the repo.
//! - At start-up the spool is uploaded before streaming resumes ([`drain`]): it may hold WAL
//!   the server has already recycled. Streaming then resumes at the repo's tip.
//! - Memory: reads go to the archiver in chunks of [`CHUNK`] through a bounded channel. Disk:
//!   when the spool holds more than `max_bytes`, the writer stops taking WAL (back-pressure
//!   to the server, as in `--ack repo`).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc, watch};
use walfmt::names::segment_file_name;
use walfmt::{Lsn, SegNo, TimeLineId, WalFileName, WalSegSize};

use super::StreamError;
use super::archiver::{ArchMsg, Durable};
use crate::crashsafe;
use crate::repo::{self, Repo};

/// Bytes per message from the reader to the archiver.
pub(crate) const CHUNK: usize = 256 << 10;

/// Spool settings.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool directory.
    pub dir: PathBuf,
    /// Stop taking WAL above this many spooled bytes.
    pub max_bytes: u64,
}

/// A run of contiguous WAL on one timeline, as spooled.
#[derive(Debug, Clone, Copy)]
struct Run {
    tli: TimeLineId,
    start: Lsn,
    /// fsync'd up to here.
    end: Lsn,
}

/// State shared by the writer and the reader.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    runs: Mutex<Vec<Run>>,
    writer_done: AtomicBool,
    /// Wakes the reader (new data). The writer polls for freed space.
    notify: Notify,
    /// Bytes in spool files.
    pub bytes: AtomicU64,
}

impl Shared {
    /// Where streaming should resume after a reconnect: the last run's timeline and the
    /// segment holding its spooled end. `None` before anything was spooled.
    pub(crate) fn resume_point(&self, seg: WalSegSize) -> Option<(TimeLineId, Lsn)> {
        let runs = self.runs.lock().ok()?;
        let r = runs.last()?;
        Some((r.tli, r.end.segment_start(seg)))
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StreamError {
    StreamError::Spool(format!("{what} {}: {e}", path.display()))
}

fn spool_path(dir: &Path, tli: TimeLineId, segno: SegNo, seg: WalSegSize) -> PathBuf {
    dir.join(format!("{}.spool", segment_file_name(tli, segno, seg)))
}

/// The spool's files: (timeline, segment, length), sorted by timeline then segment.
pub(crate) fn scan(
    dir: &Path,
    seg: WalSegSize,
) -> Result<Vec<(TimeLineId, SegNo, u64)>, StreamError> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| io_err("reading spool", dir, e))?;
    for e in rd {
        let e = e.map_err(|e| io_err("reading spool", dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".spool") else {
            continue;
        };
        if let Ok(WalFileName::Segment(tli, segno)) = WalFileName::parse(stem, seg) {
            let len = e
                .metadata()
                .map_err(|err| io_err("reading", &e.path(), err))?
                .len();
            out.push((tli, segno, len));
        }
    }
    out.sort_by_key(|(t, s, _)| (*t, *s));
    Ok(out)
}

/// Creates the spool directory, checks it is writable and locks it (before connecting). Keep
/// the returned file open for as long as the spool is used: two processes sharing a spool
/// would delete each other's WAL.
pub(crate) fn prepare_dir(dir: &Path) -> Result<File, StreamError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err("creating spool", dir, e))?;
    if let Some(parent) = dir.parent() {
        let _ = crashsafe::fsync_dir(parent);
    }
    let lock_path = dir.join("spool.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_err("writing to spool", dir, e))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StreamError::Spool(format!(
            "{} is in use by another pitr process: give each pitr stream its own --spool-dir",
            dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("locking", &lock_path, e)),
    }
}

/// Records which cluster the spool belongs to (`spool.json`), or checks it: a spool left by
/// another cluster must never be uploaded into this repo.
pub(crate) fn check_identity(
    dir: &Path,
    system_id: u64,
    seg: WalSegSize,
) -> Result<(), StreamError> {
    let path = dir.join("spool.json");
    let want = format!(
        "{{\"system_id\":\"{system_id}\",\"wal_segment_size\":{}}}\n",
        seg.get()
    );
    match std::fs::read_to_string(&path) {
        Ok(have) if have == want => Ok(()),
        Ok(have) => Err(StreamError::Spool(format!(
            "{} belongs to another cluster or segment size ({}), this server is system {system_id}: use another --spool-dir",
            dir.display(),
            have.trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !scan(dir, seg)?.is_empty() {
                return Err(StreamError::Spool(format!(
                    "{} holds WAL files but no spool.json: refusing to upload WAL of unknown origin",
                    dir.display()
                )));
            }
            let tmp = dir.join("spool.json.tmp");
            crashsafe::publish(&tmp, &path, want.as_bytes())
                .map_err(|e| StreamError::Spool(e.to_string()))
        }
        Err(e) => Err(io_err("reading", &path, e)),
    }
}

/// The bytes the spool holds of a segment (from its start), if it has a file for it: what was
/// acknowledged of it. A run restarting there must receive the same bytes again.
pub(crate) fn read_prefix(
    dir: &Path,
    tli: TimeLineId,
    segno: SegNo,
    seg: WalSegSize,
) -> Result<Option<super::startup::Source>, StreamError> {
    let path = spool_path(dir, tli, segno, seg);
    match std::fs::read(&path) {
        Ok(mut b) => {
            b.truncate(seg.bytes() as usize);
            Ok((!b.is_empty()).then(|| super::startup::Source {
                bytes: Bytes::from(b),
                what: path.display().to_string(),
            }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", &path, e)),
    }
}

async fn exists(repo: &Repo, key: &str) -> Result<bool, crate::repo::store::StoreError> {
    Ok(repo.store().list(key).await?.iter().any(|o| o.key == key))
}

fn fsync_dir(dir: &Path) -> Result<(), StreamError> {
    crashsafe::fsync_dir(dir).map_err(|e| io_err("fsync", dir, e))
}

/// Reads spool files in chunks, keeping the current one open (readers move through the
/// files in order).
#[derive(Debug, Default)]
struct ChunkReader {
    open: Option<(PathBuf, File)>,
}

impl ChunkReader {
    fn read(&mut self, path: &Path, off: u64, n: usize) -> Result<Bytes, StreamError> {
        if self.open.as_ref().is_none_or(|(p, _)| p != path) {
            let f = File::open(path).map_err(|e| io_err("opening", path, e))?;
            self.open = Some((path.to_path_buf(), f));
        }
        let mut buf = vec![0u8; n];
        if let Some((_, f)) = &self.open {
            f.read_exact_at(&mut buf, off)
                .map_err(|e| io_err("reading", path, e))?;
        }
        Ok(Bytes::from(buf))
    }
}

async fn send(tx: &mpsc::Sender<ArchMsg>, m: ArchMsg) -> Result<(), StreamError> {
    tx.send(m).await.map_err(|_| StreamError::ArchiverStopped)
}

/// Uploads what the spool holds (left by an earlier run, possibly killed) through the
/// archiver, waits until it is durable in the repo, then empties the spool.
pub(crate) async fn drain(
    dir: &Path,
    seg: WalSegSize,
    repo: &Repo,
    tx: &mpsc::Sender<ArchMsg>,
) -> Result<(), StreamError> {
    let files = scan(dir, seg)?;
    if files.is_empty() {
        return Ok(());
    }
    let mut chunks = ChunkReader::default();
    let mut next: Option<(TimeLineId, Lsn)> = None;
    let mut total = 0u64;
    for &(tli, segno, len) in &files {
        let key = repo::segment_key(tli, segno, seg);
        let done = exists(&repo.retrying("list", Duration::from_secs(30)), &key).await?;
        if done || len == 0 {
            continue;
        }
        let start = segno
            .start_lsn(seg)
            .ok_or_else(|| StreamError::Internal(format!("segment {segno:?} out of range")))?;
        if next != Some((tli, start)) {
            send(tx, ArchMsg::Begin { tli, start }).await?;
        }
        let path = spool_path(dir, tli, segno, seg);
        let len = len.min(seg.bytes());
        let mut off = 0u64;
        while off < len {
            let n = (len - off).min(CHUNK as u64) as usize;
            let data = chunks.read(&path, off, n)?;
            send(
                tx,
                ArchMsg::Wal {
                    start: Lsn(start.0 + off),
                    data,
                },
            )
            .await?;
            off += n as u64;
        }
        total += len;
        next = Some((tli, Lsn(start.0 + len)));
    }
    let (ack, done) = tokio::sync::oneshot::channel();
    send(tx, ArchMsg::Sync(ack)).await?;
    let archived = done.await.map_err(|_| StreamError::ArchiverStopped)?;
    for &(tli, segno, _) in &files {
        let p = spool_path(dir, tli, segno, seg);
        std::fs::remove_file(&p).map_err(|e| io_err("removing", &p, e))?;
    }
    fsync_dir(dir)?;
    tracing::info!(bytes = total, files = files.len(), archived = %archived, "uploaded the spool left by an earlier run");
    Ok(())
}

/// The writer: a blocking thread that appends WAL to spool files and fsyncs.
#[derive(Debug)]
pub(crate) struct SpoolWriter {
    cfg: SpoolConfig,
    seg: WalSegSize,
    shared: Arc<Shared>,
    spooled: watch::Sender<Durable>,
    metrics: Arc<crate::metrics::Metrics>,
    /// An fsync failed: nothing may be acknowledged any more (a retried fsync can report
    /// success for pages whose write-back failed).
    poisoned: bool,
    /// Open file: (timeline, segment, file, its length on disk).
    file: Option<(TimeLineId, SegNo, File, u64)>,
    tli: TimeLineId,
    pos: Lsn,
    dirty: bool,
    dir_dirty: bool,
}

impl SpoolWriter {
    /// A writer over `cfg.dir`.
    pub(crate) fn new(
        cfg: SpoolConfig,
        seg: WalSegSize,
        shared: Arc<Shared>,
        spooled: watch::Sender<Durable>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        SpoolWriter {
            cfg,
            seg,
            shared,
            spooled,
            metrics,
            poisoned: false,
            file: None,
            tli: TimeLineId(1),
            pos: Lsn(0),
            dirty: false,
            dir_dirty: false,
        }
    }

    /// Runs until the channel closes. Call from a blocking thread.
    pub(crate) fn run_blocking(
        mut self,
        mut rx: mpsc::Receiver<ArchMsg>,
    ) -> Result<(), StreamError> {
        let r = self.run_inner(&mut rx);
        if r.is_ok() {
            // A last flush of what was written; never after an error.
            self.flush()?;
        }
        self.shared.writer_done.store(true, Ordering::SeqCst);
        self.shared.notify.notify_one();
        r
    }

    fn run_inner(&mut self, rx: &mut mpsc::Receiver<ArchMsg>) -> Result<(), StreamError> {
        let mut warned = false;
        loop {
            // Disk back-pressure: wait for uploads to free space (or for the end: what is
            // still queued was never acknowledged, so it can be left to the server).
            while self.shared.bytes.load(Ordering::Relaxed) > self.cfg.max_bytes {
                if rx.is_closed() {
                    return Ok(());
                }
                if !warned {
                    tracing::warn!(
                        spool_bytes = self.shared.bytes.load(Ordering::Relaxed),
                        max = self.cfg.max_bytes,
                        "spool full: waiting for uploads (the server keeps the WAL meanwhile)"
                    );
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let Some(m) = rx.blocking_recv() else {
                return Ok(());
            };
            self.handle(m)?;
            // Group commit: take what is already queued, then fsync once.
            while self.shared.bytes.load(Ordering::Relaxed) <= self.cfg.max_bytes {
                match rx.try_recv() {
                    Ok(m) => self.handle(m)?,
                    Err(_) => break,
                }
            }
            self.flush()?;
        }
    }

    fn handle(&mut self, m: ArchMsg) -> Result<(), StreamError> {
        match m {
            ArchMsg::Begin { tli, start } => {
                self.flush()?;
                self.file = None;
                self.tli = tli;
                self.pos = start;
                // A new run: only its own timeline's positions count from now on.
                self.spooled.send_replace((tli, start));
                if let Ok(mut runs) = self.shared.runs.lock() {
                    runs.push(Run {
                        tli,
                        start,
                        end: start,
                    });
                }
                self.shared.notify.notify_one();
            }
            ArchMsg::Wal { start, data } => self.write(start, &data)?,
            ArchMsg::Sync(ack) => {
                self.flush()?;
                let _ = ack.send(self.spooled.borrow().1);
            }
        }
        Ok(())
    }

    fn write(&mut self, start: Lsn, mut data: &[u8]) -> Result<(), StreamError> {
        if start != self.pos {
            return Err(StreamError::Gap {
                expected: self.pos,
                got: start,
            });
        }
        let seg = self.seg;
        while !data.is_empty() {
            let segno = self.pos.segment(seg);
            let off = self.pos.segment_offset(seg);
            let n = data.len().min((seg.bytes() - off) as usize);
            if !matches!(&self.file, Some((t, s, _, _)) if *t == self.tli && *s == segno) {
                let path = spool_path(&self.cfg.dir, self.tli, segno, seg);
                let existed = path.exists();
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(&path)
                    .map_err(|e| io_err("creating", &path, e))?;
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                self.dir_dirty |= !existed;
                self.file = Some((self.tli, segno, f, len));
            }
            if let Some((_, _, f, len)) = self.file.as_mut() {
                f.write_all_at(&data[..n], off).map_err(|e| {
                    io_err(
                        "writing",
                        &spool_path(&self.cfg.dir, self.tli, segno, seg),
                        e,
                    )
                })?;
                let end = off + n as u64;
                if end > *len {
                    self.shared.bytes.fetch_add(end - *len, Ordering::Relaxed);
                    self.metrics
                        .spool_bytes
                        .store(self.shared.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
                    *len = end;
                }
            }
            self.dirty = true;
            self.pos = Lsn(self.pos.0 + n as u64);
            data = &data[n..];
            if self.pos.segment_offset(seg) == 0 {
                // The segment is full: durable before anything of the next is acknowledged.
                self.flush()?;
                self.file = None;
            }
        }
        Ok(())
    }

    /// fsync what was written, then acknowledge it.
    fn flush(&mut self) -> Result<(), StreamError> {
        if self.poisoned {
            return Err(StreamError::Spool("an earlier fsync failed".into()));
        }
        self.poisoned = true;
        if self.dirty {
            if let Some((_, segno, f, _)) = &self.file {
                f.sync_data().map_err(|e| {
                    io_err(
                        "fsync",
                        &spool_path(&self.cfg.dir, self.tli, *segno, self.seg),
                        e,
                    )
                })?;
            }
            self.dirty = false;
        }
        if self.dir_dirty {
            fsync_dir(&self.cfg.dir)?;
            self.dir_dirty = false;
        }
        self.poisoned = false;
        if let Ok(mut runs) = self.shared.runs.lock()
            && let Some(r) = runs.last_mut()
            && self.pos > r.end
        {
            r.end = self.pos;
        }
        let (tli, pos) = (self.tli, self.pos);
        self.spooled.send_if_modified(|cur| {
            if cur.0 == tli && pos > cur.1 {
                cur.1 = pos;
                true
            } else {
                false
            }
        });
        self.shared.notify.notify_one();
        Ok(())
    }
}

/// The reader: forwards spooled WAL to the archiver in order, and deletes spool files once
/// the repo holds them.
#[derive(Debug)]
pub(crate) struct SpoolReader {
    cfg: SpoolConfig,
    seg: WalSegSize,
    shared: Arc<Shared>,
    archived: watch::Receiver<Durable>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Files fully forwarded, deletable once the archive holds them: (path, timeline, end).
    finished: VecDeque<(PathBuf, TimeLineId, Lsn)>,
}

impl SpoolReader {
    /// A reader; `archived` is the archiver's durable position.
    pub(crate) fn new(
        cfg: SpoolConfig,
        seg: WalSegSize,
        shared: Arc<Shared>,
        archived: watch::Receiver<Durable>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        SpoolReader {
            cfg,
            seg,
            shared,
            archived,
            metrics,
            finished: VecDeque::new(),
        }
    }

    /// Deletes forwarded files the archive now holds. The archiver handles messages in order
    /// and publishes a timeline's last partial before it begins the next timeline, so a
    /// durable position on a later timeline covers every file of earlier ones.
    fn collect(&mut self) {
        let (a_tli, a_lsn) = *self.archived.borrow();
        while let Some((p, tli, end)) = self.finished.front() {
            if !(a_tli > *tli || (a_tli == *tli && a_lsn >= *end)) {
                break;
            }
            let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(p) {
                Ok(()) => {
                    let _ =
                        self.shared
                            .bytes
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                                Some(b.saturating_sub(len))
                            });
                    self.metrics
                        .spool_bytes
                        .store(self.shared.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Kept queued: retried on the next pass.
                    tracing::warn!(file = %p.display(), error = %e, "cannot remove a spool file");
                    return;
                }
            }
            self.finished.pop_front();
        }
    }

    /// Runs until the writer is done and everything spooled was forwarded; dropping `tx`
    /// then lets the archiver publish the last partial and stop.
    pub(crate) async fn run(mut self, tx: mpsc::Sender<ArchMsg>) -> Result<(), StreamError> {
        let seg = self.seg;
        let mut idx = 0usize;
        let mut pos: Option<Lsn> = None;
        let mut chunks = ChunkReader::default();
        loop {
            self.collect();
            let (run, next_tli) = {
                let runs = self
                    .shared
                    .runs
                    .lock()
                    .map_err(|_| StreamError::Internal("spool state poisoned".into()))?;
                (runs.get(idx).copied(), runs.get(idx + 1).map(|r| r.tli))
            };
            let done = self.shared.writer_done.load(Ordering::SeqCst);
            let Some(run) = run else {
                if done {
                    return Ok(());
                }
                self.wait().await;
                continue;
            };
            let p = match pos {
                Some(p) => p,
                None => {
                    let (tli, start) = (run.tli, run.start);
                    send(&tx, ArchMsg::Begin { tli, start }).await?;
                    pos = Some(run.start);
                    run.start
                }
            };
            if p < run.end {
                let segno = p.segment(seg);
                let off = p.segment_offset(seg);
                let seg_end = segno.end_lsn(seg).map_or(u64::MAX, |l| l.0);
                let n = (run.end.0.min(seg_end) - p.0).min(CHUNK as u64) as usize;
                let path = spool_path(&self.cfg.dir, run.tli, segno, seg);
                let data = chunks.read(&path, off, n)?;
                send(&tx, ArchMsg::Wal { start: p, data }).await?;
                let np = Lsn(p.0 + n as u64);
                if np.0 == seg_end {
                    self.finished.push_back((path, run.tli, np));
                }
                pos = Some(np);
                continue;
            }
            if let Some(next_tli) = next_tli {
                // The run ended mid-segment. On a new timeline, this file is never written
                // again: delete it once its partial is in the repo. On the same timeline the
                // next run rewrites it from its start, so it stays.
                if next_tli > run.tli && p.segment_offset(seg) != 0 {
                    let path = spool_path(&self.cfg.dir, run.tli, p.segment(seg), seg);
                    self.finished.push_back((path, run.tli, p));
                }
                idx += 1;
                pos = None;
                continue;
            }
            if done {
                return Ok(());
            }
            self.wait().await;
        }
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.shared.notify.notified() => {}
            _ = self.archived.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// After a clean stop: removes spool files whose segment is complete in the repo.
pub(crate) async fn cleanup(dir: &Path, seg: WalSegSize, repo: &Repo) -> Result<u64, StreamError> {
    let mut left = 0;
    for (tli, segno, len) in scan(dir, seg)? {
        let key = repo::segment_key(tli, segno, seg);
        if len == seg.bytes() && exists(repo, &key).await? {
            let p = spool_path(dir, tli, segno, seg);
            std::fs::remove_file(&p).map_err(|e| io_err("removing", &p, e))?;
        } else {
            left += len;
        }
    }
    Ok(left)
}
