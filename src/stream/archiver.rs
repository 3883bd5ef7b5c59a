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
//! - The segment being filled is published as `…partial.<END>.lz4` at most every
//!   `partial_every`, when it grew; the previous partial of that segment is deleted only
//!   after the newer object is durable. A complete segment replaces its partials the same way.
//!   A run that begins in a segment the repo already holds a partial of does not publish it
//!   again: the receiver proved those bytes equal before the run began
//!   ([`super::continuity`]).
//! - Storage errors are retried forever with backoff (the channel then fills and the
//!   receiver stops reading: back-pressure, not data loss); a conflict (different bytes under
//!   a name) stops archiving with an error.
//! - Memory: one segment buffer plus its compressed copy, whatever the WAL rate.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, watch};
use walfmt::{DecoderConfig, Lsn, SegNo, Summarizer, TimeLineId, WalSegSize};

use crate::repo::store::StoreError;
use crate::repo::{self, Repo};

use super::StreamError;

/// A durable position: WAL of this timeline up to this LSN is safe (in the repo, or in the
/// spool for `--ack spool`).
pub type Durable = (TimeLineId, Lsn);

/// Messages from the receiver.
#[derive(Debug)]
pub enum ArchMsg {
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

/// Archiver settings.
#[derive(Debug, Clone)]
pub struct ArchiverConfig {
    /// Segment size.
    pub seg: WalSegSize,
    /// Partial publish interval.
    pub partial_every: Duration,
    /// Cap of the retry backoff.
    pub retry_cap: Duration,
    /// The cluster, for the summaries' decoder.
    pub system_id: u64,
    /// Shared metrics.
    pub metrics: std::sync::Arc<crate::server::Metrics>,
}

/// The archiver's state.
#[derive(Debug)]
pub struct Archiver {
    repo: Repo,
    cfg: ArchiverConfig,
    tli: TimeLineId,
    segno: SegNo,
    seg_start: Lsn,
    buf: BytesMut,
    /// Bytes of `buf` durable in the repo (as a partial or, when full, the segment).
    published_len: usize,
    /// Partials of the current segment to delete once superseded (key, end).
    stale: Vec<(String, Lsn)>,
    summarizer: Option<Summarizer<'static>>,
    archived: watch::Sender<Durable>,
    active: bool,
}

impl Archiver {
    /// A new archiver; `archived` starts at what the repo already holds.
    pub fn new(repo: Repo, cfg: ArchiverConfig, archived: watch::Sender<Durable>) -> Self {
        Archiver {
            repo,
            cfg,
            tli: TimeLineId(1),
            segno: SegNo(0),
            seg_start: Lsn(0),
            buf: BytesMut::new(),
            published_len: 0,
            stale: Vec::new(),
            summarizer: None,
            archived,
            active: false,
        }
    }

    fn advance(&self, to: Lsn) {
        use std::sync::atomic::Ordering::Relaxed;
        self.cfg.metrics.archived_lsn.fetch_max(to.0, Relaxed);
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
    pub async fn run(mut self, mut rx: mpsc::Receiver<ArchMsg>) -> Result<(), StreamError> {
        let mut tick = tokio::time::interval(self.cfg.partial_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => {
                        self.publish_partial().await?;
                        return Ok(());
                    }
                    Some(m) => self.handle(m).await?,
                },
                _ = tick.tick() => self.publish_partial().await?,
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
        self.buf = BytesMut::with_capacity(seg.bytes() as usize);
        self.stale = self.partials_of(tli, self.segno).await?;
        // The repo already holds its newest partial of this segment, and the receiver proved
        // the server's bytes there are the same before the run began: not published again.
        self.published_len = self
            .stale
            .iter()
            .map(|(_, e)| e.0.saturating_sub(start.0))
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
    async fn summarizer_from(
        &self,
        tli: TimeLineId,
        segno: SegNo,
    ) -> Result<Option<Summarizer<'static>>, StreamError> {
        let seg = self.cfg.seg;
        let mut missing = Vec::new();
        let mut s = segno.0;
        while s > 0 && missing.len() < 8 {
            s -= 1;
            let prev = SegNo(s);
            let store = self.repo.store();
            let sum_key = repo::summary_key(tli, prev, seg);
            let seg_key = repo::segment_key(tli, prev, seg);
            // The small summary first: the segment is downloaded only when it lacks one.
            let has_sum = self.retried("get", || store.get(&sum_key)).await?;
            if has_sum.is_some() {
                break;
            }
            let has_seg = self.retried("get", || store.get(&seg_key)).await?;
            let Some(body) = has_seg else { break };
            missing.push((prev, body));
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
        Ok(self
            .retried("list", || self.repo.partials(tli, segno, self.cfg.seg))
            .await?)
    }

    async fn append(&mut self, start: Lsn, mut data: Bytes) -> Result<(), StreamError> {
        if !self.active {
            return Err(StreamError::Internal("WAL before Begin".into()));
        }
        let expected = Lsn(self.seg_start.0 + self.buf.len() as u64);
        if start != expected {
            return Err(StreamError::Gap {
                expected,
                got: start,
            });
        }
        let seg_len = self.cfg.seg.bytes() as usize;
        while !data.is_empty() {
            let n = data.len().min(seg_len - self.buf.len());
            let piece = data.split_to(n);
            if let Some(s) = self.summarizer.as_mut() {
                // A decode error only affects summaries, never the archived bytes.
                if let Err(e) = s.feed(&piece) {
                    tracing::warn!(error = %e, "WAL summary: decoding failed; summaries stop for this run");
                    self.summarizer = None;
                }
            }
            self.buf.extend_from_slice(&piece);
            if self.buf.len() == seg_len {
                self.complete_segment().await?;
            }
        }
        Ok(())
    }

    /// Every storage call of the archiver: retried while transient, counted in the metrics
    /// (`pitr_upload_retries_total`, `pitr_upload_errors_total`) whatever the operation.
    async fn retried<T, F, Fut>(&self, what: &str, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.cfg.metrics;
        let on_err = |e: &StoreError| {
            m.errors.fetch_add(1, Relaxed);
            if e.is_transient() {
                m.retries.fetch_add(1, Relaxed);
            }
        };
        repo::retry_observed(what, self.cfg.retry_cap, on_err, op).await
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), StreamError> {
        self.retried("upload", || self.repo.put(key, body.clone()))
            .await?;
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
            self.retried("delete", || self.repo.store().delete(&k))
                .await?;
        }
        Ok(())
    }

    async fn complete_segment(&mut self) -> Result<(), StreamError> {
        let seg = self.cfg.seg;
        let key = repo::segment_key(self.tli, self.segno, seg);
        let body = repo::compress(&self.buf);
        self.put(&key, body).await?;
        let end = Lsn(self.seg_start.0 + seg.bytes());
        self.advance(end);
        tracing::info!(segment = %walfmt::names::segment_file_name(self.tli, self.segno, seg), "archived segment");
        self.delete_stale(end).await?;
        self.publish_summaries().await?;
        self.segno = SegNo(self.segno.0 + 1);
        self.seg_start = end;
        self.buf.clear();
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
        if self.buf.len() <= self.published_len {
            if self.buf.len() == self.published_len && self.published_len > 0 {
                // Durable already (published, or held by the repo when the run began).
                self.advance(Lsn(self.seg_start.0 + self.buf.len() as u64));
            }
            return Ok(());
        }
        let end = Lsn(self.seg_start.0 + self.buf.len() as u64);
        let key = repo::partial_key(self.tli, self.segno, end, self.cfg.seg);
        let body = repo::compress(&self.buf);
        self.put(&key, body).await?;
        self.published_len = self.buf.len();
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
        let metrics: std::sync::Arc<crate::server::Metrics> = Default::default();
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
}
