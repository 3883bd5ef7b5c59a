//! The archiver task: turns the WAL byte stream into repo objects.
//!
//! # Invariants
//!
//! - `archived` (a watch channel of [`Durable`]) only ever holds a (timeline, LSN) up to which
//!   WAL of that timeline is durable in the repo; the receiver reports it to the server as the
//!   flush position (`--ack repo`) only while it streams that same timeline, so the slot
//!   keeps every byte the repo does not yet hold.
//! - Within a run it never decreases. A `Begin` resets it to the run's (timeline, start):
//!   after a failover the new timeline may restart below what the old one reached, and an
//!   LSN of the old timeline says nothing about the new one.
//! - The segment being filled is published as `…partial.<END>.lz4` as soon as new WAL
//!   arrives: [`COALESCE`] after the first byte not yet published, and never sooner than
//!   `partial_every` after the previous partial publish (a bounded rate of object writes;
//!   an idle server makes none). The previous partial of that segment is deleted only
//!   after the newer object is durable. A complete segment replaces its partials the same way.
//!   A run that begins in a segment the repo already holds a partial of does not publish it
//!   again: the receiver proved those bytes equal before the run began
//!   ([`super::continuity`]).
//! - Storage errors are retried forever with backoff (the channel then fills and the
//!   receiver stops reading: back-pressure, not data loss); a conflict (different bytes under
//!   a name) stops archiving with an error.
//! - Memory: the segment's compressed blocks plus one block of raw WAL
//!   ([`repo::codec::FramedCompressor`]), and one copy of them per object in flight,
//!   whatever the WAL rate. Each byte is compressed once; a partial costs only its tail
//!   block, and a complete segment is the same blocks (the same bytes as compressing the
//!   whole segment at once).

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use walfmt::{DecoderConfig, Lsn, SegNo, Summarizer, TimeLineId, WalSegSize};

use crate::repo::codec::FramedCompressor;
use crate::repo::store::StoreError;
use crate::repo::{self, Repo};

use super::StreamError;

/// A durable position: WAL of this timeline up to this LSN is safe (in the repo, or in the
/// spool for `--ack spool`).
pub(crate) type Durable = (TimeLineId, Lsn);

/// How long new WAL waits for more before it is published, so that a burst of messages
/// (one transaction's records arrive in several) makes one object, not one per message.
pub(crate) const COALESCE: Duration = Duration::from_millis(10);

/// Messages from the receiver.
#[derive(Debug)]
pub(crate) enum ArchMsg {
    /// WAL bytes at `start` (contiguous with what came before since the last `Begin`).
    Wal {
        /// LSN of the first byte.
        start: Lsn,
        /// The bytes.
        data: Bytes,
    },
    /// A new run of WAL begins at this segment start on this timeline (after a (re)connect
    /// or a timeline switch). What is buffered is published first.
    Begin {
        /// Timeline.
        tli: TimeLineId,
        /// A segment start.
        start: Lsn,
    },
    /// Publish what is buffered now; answers with the archived LSN once durable.
    Sync(oneshot::Sender<Lsn>),
}

/// Every storage call of the archiver: retried while transient, counted in the metrics
/// (`pitr_upload_retries_total`, `pitr_upload_errors_total`) whatever the operation.
fn retry_policy(cfg: &ArchiverConfig) -> repo::retrying::RetryPolicy {
    use std::sync::atomic::Ordering::Relaxed;
    let m = cfg.metrics.clone();
    repo::retrying::RetryPolicy::forever(cfg.retry_cap).observe(move |e: &StoreError| {
        m.errors.fetch_add(1, Relaxed);
        if e.is_transient() {
            m.retries.fetch_add(1, Relaxed);
        }
    })
}

/// Archiver settings.
#[derive(Debug, Clone)]
pub(crate) struct ArchiverConfig {
    /// Segment size.
    pub seg: WalSegSize,
    /// The shortest interval between two partial publishes (`--partial-every`).
    pub partial_every: Duration,
    /// Cap of the retry backoff.
    pub retry_cap: Duration,
    /// The cluster, for the summaries' decoder.
    pub system_id: u64,
    /// Shared metrics.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// The archiver's state.
#[derive(Debug)]
pub(crate) struct Archiver {
    repo: Repo,
    cfg: ArchiverConfig,
    tli: TimeLineId,
    segno: SegNo,
    seg_start: Lsn,
    /// The segment being filled, compressed as it arrives.
    comp: FramedCompressor,
    /// Bytes of the segment durable in the repo (as a partial or, when full, the segment).
    published_len: usize,
    /// Partials of the current segment to delete once superseded (key, end).
    stale: Vec<(String, Lsn)>,
    summarizer: Option<Summarizer<'static>>,
    archived: watch::Sender<Durable>,
    active: bool,
}

impl Archiver {
    /// A new archiver; `archived` starts at what the repo already holds.
    pub(crate) fn new(repo: Repo, cfg: ArchiverConfig, archived: watch::Sender<Durable>) -> Self {
        Archiver {
            repo: repo.with_retry(retry_policy(&cfg)),
            cfg,
            tli: TimeLineId(1),
            segno: SegNo(0),
            seg_start: Lsn(0),
            comp: FramedCompressor::default(),
            published_len: 0,
            stale: Vec::new(),
            summarizer: None,
            archived,
            active: false,
        }
    }

    fn advance(&self, to: Lsn) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.cfg.metrics.archived_lsn.fetch_max(to.0, Relaxed) < to.0 {
            self.cfg.metrics.archived_wake.notify_waiters();
        }
        if let Some((_, t)) = self.summarizer.as_ref().and_then(|s| s.last_commit()) {
            self.cfg
                .metrics
                .last_commit_unix_us
                .fetch_max(t.unix_micros(), Relaxed);
        }
        let tli = self.tli;
        self.archived.send_if_modified(|cur| {
            if cur.0 == tli && to > cur.1 {
                cur.1 = to;
                true
            } else {
                false
            }
        });
    }

    /// Runs until the channel closes (publishing what is buffered) or an error.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<ArchMsg>) -> Result<(), StreamError> {
        use tokio::time::Instant;
        // When the next partial publish is due (`None`: nothing waits to be published).
        let mut due: Option<Instant> = None;
        // The last partial publish of this segment (`None`: none yet, no rate to keep).
        let mut last_publish: Option<Instant> = None;
        loop {
            let wait = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                // A due publish goes first, so a flood of WAL cannot postpone it.
                biased;
                _ = tokio::time::sleep_until(wait), if due.is_some() => {
                    due = None;
                    // What already waits in the channel goes into this publish (a segment it
                    // completes is published whole, with no partial of it first); at most
                    // what the channel holds, so a flood cannot postpone the publish.
                    for _ in 0..rx.max_capacity() {
                        match rx.try_recv() {
                            Ok(m) => self.handle(m).await?,
                            Err(_) => break,
                        }
                    }
                    last_publish = Some(Instant::now());
                    self.publish_partial().await?;
                }
                msg = rx.recv() => match msg {
                    None => {
                        self.publish_partial().await?;
                        return Ok(());
                    }
                    Some(m) => {
                        let segment = (self.tli, self.segno);
                        self.handle(m).await?;
                        if (self.tli, self.segno) != segment {
                            // A new segment (or run) starts its own rate.
                            last_publish = None;
                        }
                        if self.comp.len() > self.published_len {
                            if due.is_none() {
                                let soonest = Instant::now() + COALESCE;
                                due = Some(last_publish.map_or(soonest, |t| soonest.max(t + self.cfg.partial_every)));
                            }
                        } else {
                            due = None;
                            // The server's bytes reached what the repo already held when the
                            // run began (a resumed partial): durable, so reported now, with no
                            // upload. Waiting for newer WAL could wait forever on an idle
                            // server, with a synchronous commit waiting on this flush.
                            self.publish_partial().await?;
                        }
                    }
                },
            }
        }
    }

    async fn handle(&mut self, m: ArchMsg) -> Result<(), StreamError> {
        match m {
            ArchMsg::Begin { tli, start } => {
                self.publish_partial().await?;
                self.begin(tli, start).await?;
            }
            ArchMsg::Wal { start, data } => self.append(start, data).await?,
            ArchMsg::Sync(ack) => {
                self.publish_partial().await?;
                let _ = ack.send(self.archived.borrow().1);
            }
        }
        Ok(())
    }

    async fn begin(&mut self, tli: TimeLineId, start: Lsn) -> Result<(), StreamError> {
        let seg = self.cfg.seg;
        if start.segment_offset(seg) != 0 {
            return Err(StreamError::Internal(format!(
                "archiving must start at a segment boundary, not {start}"
            )));
        }
        self.tli = tli;
        self.segno = start.segment(seg);
        self.seg_start = start;
        self.comp.reset();
        self.stale = self.partials_of(tli, self.segno).await?;
        // The repo already holds its newest partial of this segment, and the receiver proved
        // the server's bytes there are the same before the run began: not published again.
        self.published_len = self
            .stale
            .iter()
            .map(|(_, e)| e.bytes_since(start))
            .max()
            .unwrap_or(0)
            .min(seg.bytes()) as usize;
        self.summarizer = self.summarizer_from(tli, self.segno).await?;
        self.active = true;
        // Everything before the run's start is in the repo (that is why it starts there).
        self.archived.send_replace((tli, start));
        Ok(())
    }

    /// A summarizer positioned at `segno`. If complete segments just before it lack their
    /// summary (pitr died between uploading a segment and its summary, which is written once
    /// the next segment shows where its last record ends), it starts at the oldest of those
    /// (up to 8 back) and replays them from the repo, so their summaries get written.
    ///
    /// Whether they exist is read from listings. In write-only mode the segments cannot be
    /// read back: they are not downloaded, a warning names them, and they stay without a
    /// summary (`restore`, `verify` and `list`, which hold the identity, decode such a
    /// segment instead).
    async fn summarizer_from(
        &self,
        tli: TimeLineId,
        segno: SegNo,
    ) -> Result<Option<Summarizer<'static>>, StreamError> {
        let seg = self.cfg.seg;
        let readable = self.repo.can_read();
        let mut missing = Vec::new();
        let mut unread = Vec::new();
        let mut s = segno.0;
        while s > 0 && missing.len() + unread.len() < 8 {
            s -= 1;
            let prev = SegNo(s);
            let sum_key = repo::summary_key(tli, prev, seg);
            let seg_key = repo::segment_key(tli, prev, seg);
            // The small summary first: the segment is downloaded only when it lacks one.
            if self.repo.exists(&sum_key).await? {
                break;
            }
            if !readable {
                if !self.repo.exists(&seg_key).await? {
                    break;
                }
                unread.push(walfmt::names::segment_file_name(tli, prev, seg));
                continue;
            }
            let has_seg = self.repo.store().get(&seg_key).await?;
            let Some(body) = has_seg else { break };
            missing.push((prev, body));
        }
        if !unread.is_empty() {
            unread.reverse();
            tracing::warn!(segments = %unread.join(", "), "write-only mode: these complete segments have no summary, and this process cannot read them back to write one; they stay without (restore, verify and list decode a segment that lacks its summary)");
        }
        let first = missing.last().map_or(segno, |(s, _)| *s);
        let dc = DecoderConfig::for_cluster(seg, self.cfg.system_id);
        let Ok(mut sum) = Summarizer::new(dc, first) else {
            return Ok(None);
        };
        for (s, body) in missing.iter().rev() {
            let data = repo::decompress(body, &repo::segment_key(tli, *s, seg))
                .map_err(StreamError::Internal)?;
            if sum.feed(&data).is_err() {
                return Ok(None);
            }
            tracing::info!(segment = %walfmt::names::segment_file_name(tli, *s, seg), "rebuilding a missing summary");
        }
        Ok(Some(sum))
    }

    async fn partials_of(
        &self,
        tli: TimeLineId,
        segno: SegNo,
    ) -> Result<Vec<(String, Lsn)>, StreamError> {
        Ok(self.repo.partials(tli, segno, self.cfg.seg).await?)
    }

    async fn append(&mut self, start: Lsn, mut data: Bytes) -> Result<(), StreamError> {
        if !self.active {
            return Err(StreamError::Internal("WAL before Begin".into()));
        }
        let expected = Lsn(self.seg_start.0 + self.comp.len() as u64);
        if start != expected {
            return Err(StreamError::Gap {
                expected,
                got: start,
            });
        }
        let seg_len = self.cfg.seg.bytes() as usize;
        while !data.is_empty() {
            let n = data.len().min(seg_len - self.comp.len());
            let piece = data.split_to(n);
            if let Some(s) = self.summarizer.as_mut() {
                // A decode error only affects summaries, never the archived bytes.
                if let Err(e) = s.feed(&piece) {
                    tracing::warn!(error = %e, "WAL summary: decoding failed; summaries stop for this run");
                    self.summarizer = None;
                }
            }
            self.comp.push(&piece);
            if self.comp.len() == seg_len {
                self.complete_segment().await?;
            }
        }
        Ok(())
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StreamError> {
        self.repo.put(key, body).await?;
        self.cfg
            .metrics
            .uploads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn delete_stale(&mut self, upto: Lsn) -> Result<(), StreamError> {
        let (gone, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.stale)
            .into_iter()
            .partition(|(_, e)| *e <= upto);
        self.stale = keep;
        for (k, _) in gone {
            self.repo.store().delete(&k).await?;
        }
        Ok(())
    }

    async fn complete_segment(&mut self) -> Result<(), StreamError> {
        let seg = self.cfg.seg;
        let key = repo::segment_key(self.tli, self.segno, seg);
        let body = self.comp.object();
        self.put(&key, body).await?;
        let end = Lsn(self.seg_start.0 + seg.bytes());
        self.advance(end);
        tracing::info!(segment = %walfmt::names::segment_file_name(self.tli, self.segno, seg), "archived segment");
        self.delete_stale(end).await?;
        self.publish_summaries().await?;
        self.segno = self.segno.next();
        self.seg_start = end;
        self.comp.reset();
        self.published_len = 0;
        self.stale = self.partials_of(self.tli, self.segno).await?;
        Ok(())
    }

    async fn publish_summaries(&mut self) -> Result<(), StreamError> {
        let Some(s) = self.summarizer.as_mut() else {
            return Ok(());
        };
        let version = s.version().map(|v| v.major());
        for summary in s.take_complete() {
            let key = repo::summary_key(self.tli, summary.segno, self.cfg.seg);
            let json = crate::repo::objects::SummaryRecord::of_segment(
                &key,
                self.tli,
                self.cfg.seg,
                version,
                self.cfg.system_id,
                summary,
            );
            let body = Bytes::from(serde_json::to_vec(&json).unwrap_or_default());
            self.put(&key, body).await?;
        }
        Ok(())
    }

    /// Publishes the segment being filled, if it grew since the last publish.
    async fn publish_partial(&mut self) -> Result<(), StreamError> {
        if !self.active {
            return Ok(());
        }
        let len = self.comp.len();
        if len <= self.published_len {
            if len == self.published_len && self.published_len > 0 {
                // Durable already (published, or held by the repo when the run began).
                self.advance(Lsn(self.seg_start.0 + len as u64));
            }
            return Ok(());
        }
        let end = Lsn(self.seg_start.0 + len as u64);
        let key = repo::partial_key(self.tli, self.segno, end, self.cfg.seg);
        let body = self.comp.object();
        self.put(&key, body).await?;
        self.published_len = len;
        self.advance(end);
        self.delete_stale(Lsn(end.0 - 1)).await?;
        self.stale.push((key, end));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::repo::memory::MemoryStore;

    fn keys(repo: &Repo, rt: &tokio::runtime::Runtime) -> Vec<String> {
        rt.block_on(repo.store().list("wal/"))
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect()
    }

    #[test]
    fn a_resumed_partial_is_not_published_again() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let repo = Repo::with_store(std::sync::Arc::new(MemoryStore::new()));
        let seg = WalSegSize::new(1 << 20).unwrap();
        let tli = TimeLineId(1);
        let s = Lsn(5 << 20);
        let wal: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let old = repo::partial_key(tli, SegNo(5), Lsn(s.0 + 200_000), seg);
        rt.block_on(repo.put(&old, repo::compress(&wal[..200_000])))
            .unwrap();
        let (tx, rx) = watch::channel((TimeLineId(0), Lsn(0)));
        let metrics: std::sync::Arc<crate::metrics::Metrics> = Default::default();
        let uploads = || metrics.uploads.load(std::sync::atomic::Ordering::Relaxed);
        let cfg = ArchiverConfig {
            seg,
            partial_every: Duration::from_secs(3600),
            retry_cap: Duration::from_millis(10),
            system_id: 1,
            metrics: metrics.clone(),
        };
        let mut a = Archiver::new(repo.clone(), cfg, tx);
        rt.block_on(async {
            a.handle(ArchMsg::Begin { tli, start: s }).await.unwrap();
            // The bytes the repo's partial already holds: not published again, yet durable.
            let data = Bytes::from(wal[..200_000].to_vec());
            a.handle(ArchMsg::Wal { start: s, data }).await.unwrap();
            a.publish_partial().await.unwrap();
        });
        assert_eq!(keys(&repo, &rt), vec![old.clone()]);
        assert_eq!(uploads(), 0, "the repo's partial was uploaded again");
        assert_eq!(*rx.borrow(), (tli, Lsn(s.0 + 200_000)));
        // Beyond them: a newer partial, and the old one goes.
        rt.block_on(async {
            let data = Bytes::from(wal[200_000..].to_vec());
            let start = Lsn(s.0 + 200_000);
            a.handle(ArchMsg::Wal { start, data }).await.unwrap();
            a.publish_partial().await.unwrap();
        });
        let new = repo::partial_key(tli, SegNo(5), Lsn(s.0 + 300_000), seg);
        assert_eq!(keys(&repo, &rt), vec![new]);
        assert_eq!(uploads(), 1);
        assert_eq!(*rx.borrow(), (tli, Lsn(s.0 + 300_000)));
    }

    // The archiver against the in-memory store behind the fault-injecting wrapper, driven
    // through its channel as the receiver drives it: no PostgreSQL, no sockets.

    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;

    use crate::repo::memory::FaultyStore;
    use crate::repo::store::{ObjectStore, StoreErrorKind};

    const SEG: u64 = 1 << 20;
    const TLI: TimeLineId = TimeLineId(1);
    /// Where the runs begin: segment 5.
    const START: Lsn = Lsn(5 * SEG);

    fn seg() -> WalSegSize {
        WalSegSize::new(SEG as u32).unwrap()
    }

    /// `n` bytes that compress poorly and are not WAL (so no summaries are written).
    fn wal(n: usize) -> Vec<u8> {
        let mut x: u32 = 0x9E37_79B9;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// A running archiver: the store behind it (`mem` without the faults), its channel and
    /// its durable position.
    struct Rig {
        mem: MemoryStore,
        faulty: Arc<FaultyStore<MemoryStore>>,
        metrics: Arc<crate::metrics::Metrics>,
        tx: mpsc::Sender<ArchMsg>,
        archived: watch::Receiver<Durable>,
        task: tokio::task::JoinHandle<Result<(), StreamError>>,
    }

    /// The archiver is started. With `partial_every` an hour, a segment's first partial goes
    /// out 10 ms after its WAL and no other partial is published unless a test asks.
    async fn rig(mem: MemoryStore) -> Rig {
        rig_every(mem, Duration::from_secs(3600)).await
    }

    async fn rig_every(mem: MemoryStore, partial_every: Duration) -> Rig {
        let faulty = Arc::new(FaultyStore::new(mem.clone()));
        let repo = Repo::with_store(faulty.clone());
        let metrics: Arc<crate::metrics::Metrics> = Default::default();
        let cfg = ArchiverConfig {
            seg: seg(),
            partial_every,
            retry_cap: Duration::from_millis(10),
            system_id: 1,
            metrics: metrics.clone(),
        };
        let (dtx, archived) = watch::channel((TimeLineId(0), Lsn(0)));
        let (tx, rx) = mpsc::channel(32);
        let task = tokio::spawn(Archiver::new(repo, cfg, dtx).run(rx));
        tokio::time::sleep(Duration::from_millis(20)).await;
        Rig {
            mem,
            faulty,
            metrics,
            tx,
            archived,
            task,
        }
    }

    impl Rig {
        async fn begin(&self, tli: TimeLineId, start: Lsn) {
            self.tx.send(ArchMsg::Begin { tli, start }).await.unwrap();
        }

        /// Sends `data` at `start` in XLogData-sized pieces.
        async fn wal(&self, start: Lsn, data: &[u8]) {
            for (i, piece) in data.chunks(128 << 10).enumerate() {
                let start = Lsn(start.0 + (i as u64) * (128 << 10));
                let data = Bytes::copy_from_slice(piece);
                self.tx.send(ArchMsg::Wal { start, data }).await.unwrap();
            }
        }

        /// Publishes what is buffered; the archived LSN (`None`: the archiver stopped).
        async fn sync(&self) -> Option<Lsn> {
            let (ack, done) = oneshot::channel();
            self.tx.send(ArchMsg::Sync(ack)).await.ok()?;
            done.await.ok()
        }

        /// The WAL objects (summaries aside), straight from the store.
        async fn keys(&self) -> Vec<String> {
            self.mem
                .list("wal/")
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .filter(|k| !k.ends_with(".summary.json"))
                .collect()
        }

        /// An object's decompressed bytes, straight from the store.
        async fn bytes(&self, key: &str) -> Option<Vec<u8>> {
            let body = self.mem.get(key).await.unwrap()?;
            Some(repo::decompress(&body, key).unwrap())
        }

        async fn stop(self) -> Result<(), StreamError> {
            drop(self.tx);
            self.task.await.unwrap()
        }
    }

    fn segment(segno: u64) -> String {
        repo::segment_key(TLI, SegNo(segno), seg())
    }

    fn partial(segno: u64, end: Lsn) -> String {
        repo::partial_key(TLI, SegNo(segno), end, seg())
    }

    /// The bytes of segment `segno` within `data`, which starts at [`START`].
    fn slice(data: &[u8], from: Lsn, to: Lsn) -> &[u8] {
        &data[(from.0 - START.0) as usize..(to.0 - START.0) as usize]
    }

    /// New WAL is published [`COALESCE`] after it arrives, not at the next tick; then no
    /// sooner than `partial_every` after the previous publish; an idle archiver writes
    /// nothing. (Virtual time: tokio's clock only moves when every task waits.)
    #[tokio::test(start_paused = true)]
    async fn new_wal_is_published_at_once_then_at_a_bounded_rate_and_idle_costs_nothing() {
        use tokio::time::{Instant, sleep};
        let every = Duration::from_millis(200);
        let r = rig_every(MemoryStore::new(), every).await;
        let uploads = || r.metrics.uploads.load(std::sync::atomic::Ordering::Relaxed);
        let data = wal(SEG as usize);
        r.begin(TLI, START).await;
        let t0 = Instant::now();
        let a = Lsn(START.0 + 1000);
        r.wal(START, slice(&data, START, a)).await;
        sleep(COALESCE / 2).await;
        assert!(
            r.keys().await.is_empty(),
            "published before the coalescing window"
        );
        sleep(COALESCE).await;
        assert_eq!(r.keys().await, vec![partial(5, a)]);
        assert_eq!(*r.archived.borrow(), (TLI, a));
        // More WAL right after: it waits for the rate bound, then goes at once.
        let b = Lsn(START.0 + 3000);
        r.wal(a, slice(&data, a, b)).await;
        sleep(every / 2).await;
        assert_eq!(
            r.keys().await,
            vec![partial(5, a)],
            "the rate bound was not kept"
        );
        sleep(t0 + COALESCE + every + COALESCE - Instant::now()).await;
        assert_eq!(r.keys().await, vec![partial(5, b)]);
        assert_eq!(*r.archived.borrow(), (TLI, b));
        assert_eq!(
            r.bytes(&partial(5, b)).await.unwrap(),
            slice(&data, START, b)
        );
        // Idle: nothing more is written, however long.
        let n = uploads();
        sleep(Duration::from_secs(60)).await;
        assert_eq!(uploads(), n, "an idle archiver uploaded");
        // A new segment publishes its first WAL without waiting for the old rate.
        let end = Lsn(START.0 + SEG);
        r.wal(b, slice(&data, b, end)).await;
        let c = Lsn(end.0 + 10);
        let more = wal(10);
        r.tx.send(ArchMsg::Wal {
            start: end,
            data: Bytes::from(more),
        })
        .await
        .unwrap();
        sleep(COALESCE * 2).await;
        assert_eq!(r.keys().await, vec![segment(5), partial(6, c)]);
        r.stop().await.unwrap();
    }

    /// A run resumed at a partial the repo holds: once the server's bytes reach its end they
    /// are durable, and the flush position says so even when no newer WAL comes (an idle
    /// server after a restart of pitr; a synchronous commit waits on exactly this). The old
    /// 1 s tick advanced it; the event-driven publish must too, without an upload.
    #[tokio::test(start_paused = true)]
    async fn a_resumed_partial_is_reported_durable_while_the_server_is_idle() {
        let mem = MemoryStore::new();
        let data = wal(SEG as usize);
        let e = Lsn(START.0 + 300_000);
        mem.put_if_absent(&partial(5, e), repo::compress(slice(&data, START, e)))
            .await
            .unwrap();
        let r = rig_every(mem, Duration::from_millis(200)).await;
        r.begin(TLI, START).await;
        r.wal(START, slice(&data, START, e)).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            *r.archived.borrow(),
            (TLI, e),
            "bytes the repo holds were never reported durable"
        );
        assert_eq!(r.metrics.uploads.load(Relaxed), 0, "re-uploaded");
        assert_eq!(r.keys().await, vec![partial(5, e)]);
        r.stop().await.unwrap();
    }

    #[tokio::test]
    async fn publishes_whole_segments_and_partials_under_their_keys() {
        let r = rig(MemoryStore::new()).await;
        let data = wal(3 * SEG as usize);
        r.begin(TLI, START).await;
        let mid = Lsn(START.0 + 5 * SEG / 2);
        r.wal(START, slice(&data, START, mid)).await;
        assert_eq!(r.sync().await, Some(mid));
        assert_eq!(*r.archived.borrow(), (TLI, mid));
        assert_eq!(
            r.keys().await,
            vec![segment(5), segment(6), partial(7, mid)]
        );
        let s6 = Lsn(6 * SEG);
        let s7 = Lsn(7 * SEG);
        assert_eq!(r.bytes(&segment(5)).await.unwrap(), slice(&data, START, s6));
        assert_eq!(r.bytes(&segment(6)).await.unwrap(), slice(&data, s6, s7));
        assert_eq!(
            r.bytes(&partial(7, mid)).await.unwrap(),
            slice(&data, s7, mid)
        );
        // The segment completes: it replaces its partial.
        let end = Lsn(8 * SEG);
        r.wal(mid, slice(&data, mid, end)).await;
        assert_eq!(r.sync().await, Some(end));
        assert_eq!(r.keys().await, vec![segment(5), segment(6), segment(7)]);
        assert_eq!(r.bytes(&segment(7)).await.unwrap(), slice(&data, s7, end));
        r.stop().await.unwrap();
    }

    /// Write-only mode re-makes a WAL object's stored plaintext from the server's bytes: a
    /// partial's is `compress` of the bytes from its segment's start to the end in its name,
    /// a complete segment's `compress` of the segment.
    #[tokio::test]
    async fn the_stored_plaintext_is_the_compressed_bytes_named_by_the_key() {
        let r = rig(MemoryStore::new()).await;
        let data = wal(2 * SEG as usize);
        r.begin(TLI, START).await;
        let mid = Lsn(START.0 + 3 * SEG / 2);
        r.wal(START, slice(&data, START, mid)).await;
        assert_eq!(r.sync().await, Some(mid));
        let repo = Repo::with_store(Arc::new(r.mem.clone()));
        for key in r.keys().await {
            let (segno, len) = match repo::parse_wal_key(&key, seg()) {
                Some(repo::WalObject::Segment(_, s)) => (s, SEG),
                Some(repo::WalObject::Partial(_, s, end)) => (s, s.bytes_until(end, seg())),
                o => panic!("{key}: {o:?}"),
            };
            let from = segno.start_lsn(seg()).unwrap();
            let raw = slice(&data, from, Lsn(from.0 + len));
            assert_eq!(
                repo.holds(&key, &repo::compress(raw)).await.unwrap(),
                Some(true),
                "{key}"
            );
            let mut bent = raw.to_vec();
            bent[len as usize / 2] ^= 1;
            assert_eq!(
                repo.holds(&key, &repo::compress(&bent)).await.unwrap(),
                Some(false),
                "{key}"
            );
        }
        assert_eq!(repo.holds(&segment(9), b"x").await.unwrap(), None);
        r.stop().await.unwrap();
    }

    #[tokio::test]
    async fn survives_injected_faults_through_the_retries_and_ends_with_the_right_bytes() {
        let r = rig(MemoryStore::new()).await;
        let data = wal(3 * SEG as usize);
        // Failures at the start (the listing and lookups of Begin), and lost acknowledgements
        // of the first uploads (the object is there, the archiver is told it failed).
        r.faulty.fail_next(3);
        r.faulty.lose_ack_next(2);
        r.begin(TLI, START).await;
        let mid = Lsn(START.0 + 3 * SEG / 2);
        r.wal(START, slice(&data, START, mid)).await;
        assert_eq!(r.sync().await, Some(mid));
        // An outage while the next segment completes and its partial is deleted.
        r.faulty.set_down(true);
        let end = Lsn(8 * SEG);
        r.wal(mid, slice(&data, mid, end)).await;
        let faulty = r.faulty.clone();
        let heal = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            faulty.set_down(false);
        });
        assert_eq!(r.sync().await, Some(end));
        heal.await.unwrap();
        assert_eq!(r.keys().await, vec![segment(5), segment(6), segment(7)]);
        for (n, key) in [(5, segment(5)), (6, segment(6)), (7, segment(7))] {
            let (from, to) = (Lsn(n * SEG), Lsn((n + 1) * SEG));
            assert_eq!(
                r.bytes(&key).await.unwrap(),
                slice(&data, from, to),
                "{key}"
            );
        }
        assert!(r.metrics.retries.load(Relaxed) >= 5);
        r.stop().await.unwrap();
    }

    #[tokio::test]
    async fn never_replaces_an_object_with_different_bytes() {
        let mem = MemoryStore::new();
        let other = repo::compress(&wal(SEG as usize + 1)[1..]);
        mem.put_if_absent(&segment(5), other.clone()).await.unwrap();
        let r = rig(mem).await;
        r.begin(TLI, START).await;
        r.wal(START, &wal(SEG as usize)).await;
        assert_eq!(
            r.sync().await,
            None,
            "the archiver went on after a conflict"
        );
        assert_eq!(*r.archived.borrow(), (TLI, START));
        assert_eq!(r.mem.get(&segment(5)).await.unwrap(), Some(other));
        match r.stop().await {
            Err(StreamError::Store(e)) => assert_eq!(e.kind, StoreErrorKind::Conflict),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn reports_its_durable_position_only_after_the_store_acknowledged() {
        let mut r = rig(MemoryStore::new()).await;
        let data = wal(SEG as usize + 1000);
        r.begin(TLI, START).await;
        assert_eq!(r.sync().await, Some(START));
        r.faulty.set_down(true);
        r.wal(START, &data).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Nothing is in the store, so nothing is durable.
        assert_eq!(r.keys().await, Vec::<String>::new());
        assert_eq!(*r.archived.borrow_and_update(), (TLI, START));
        assert_eq!(r.metrics.uploads.load(Relaxed), 0);
        // The store comes back, but the first acknowledgement is lost: the object is there,
        // and the position moves only once a retry is acknowledged.
        r.faulty.lose_ack_next(1);
        r.faulty.set_down(false);
        r.archived.changed().await.unwrap();
        let (tli, at) = *r.archived.borrow_and_update();
        assert_eq!((tli, at), (TLI, Lsn(6 * SEG)));
        assert_eq!(r.keys().await, vec![segment(5)]);
        assert!(r.metrics.uploads.load(Relaxed) >= 1);
        let end = Lsn(START.0 + data.len() as u64);
        assert_eq!(r.sync().await, Some(end));
        assert_eq!(r.keys().await, vec![segment(5), partial(6, end)]);
        r.stop().await.unwrap();
    }

    #[tokio::test]
    async fn a_new_run_on_another_timeline_restarts_the_durable_position() {
        let r = rig(MemoryStore::new()).await;
        let data = wal(SEG as usize);
        r.begin(TLI, START).await;
        r.wal(START, &data).await;
        assert_eq!(r.sync().await, Some(Lsn(6 * SEG)));
        // A failover: timeline 2 begins below what timeline 1 reached.
        let tli2 = TimeLineId(2);
        r.begin(tli2, START).await;
        assert_eq!(r.sync().await, Some(START));
        assert_eq!(*r.archived.borrow(), (tli2, START));
        r.wal(START, &data[..1000]).await;
        assert_eq!(r.sync().await, Some(Lsn(START.0 + 1000)));
        let key = repo::partial_key(tli2, SegNo(5), Lsn(START.0 + 1000), seg());
        assert_eq!(r.bytes(&key).await.unwrap(), &data[..1000]);
        r.stop().await.unwrap();
    }
}
