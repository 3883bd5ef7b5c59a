//! Replication commands on a walsender connection (POSTGRES_WIRE_AND_WAL.md §1.5), and the
//! CopyBoth stream they start.

use bytes::{Bytes, BytesMut};
use walfmt::{Lsn, TimeLineId, WalSegSize};

use super::codec::{self, Backend, ProtocolError, ReplMessage, decode_repl};
use super::conn::{ConnError, PgConn};

/// `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's system identifier.
    pub system_id: u64,
    /// The server's current timeline.
    pub timeline: TimeLineId,
    /// The server's flush position.
    pub xlogpos: Lsn,
}

/// `READ_REPLICATION_SLOT` of an existing physical slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    /// Where the slot retains WAL from (`None`: nothing reserved).
    pub restart_lsn: Option<Lsn>,
    /// Timeline of `restart_lsn`.
    pub restart_tli: Option<TimeLineId>,
}

fn bad(what: &str) -> ConnError {
    ConnError::Protocol(ProtocolError(format!("unexpected reply to {what}")))
}

/// Quotes a slot name as an identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal (standard_conforming_strings on).
pub(crate) fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl PgConn {
    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, ConnError> {
        let r = self.simple_query("IDENTIFY_SYSTEM").await?;
        let system_id = r
            .get(0, 0)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("IDENTIFY_SYSTEM"))?;
        let timeline = r
            .get(0, 1)
            .and_then(|s| s.parse().ok())
            .map(TimeLineId)
            .ok_or_else(|| bad("IDENTIFY_SYSTEM"))?;
        let xlogpos = r
            .get(0, 2)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("IDENTIFY_SYSTEM"))?;
        Ok(SystemInfo {
            system_id,
            timeline,
            xlogpos,
        })
    }

    /// `SHOW name`.
    pub(crate) async fn show(&mut self, name: &str) -> Result<String, ConnError> {
        let r = self.simple_query(&format!("SHOW {name}")).await?;
        r.get(0, 0).map(str::to_owned).ok_or_else(|| bad("SHOW"))
    }

    /// `SHOW wal_segment_size`, validated.
    pub async fn wal_segment_size(&mut self) -> Result<WalSegSize, ConnError> {
        let s = self.show("wal_segment_size").await?;
        codec::parse_size(&s)
            .and_then(|b| u32::try_from(b).ok())
            .and_then(|b| WalSegSize::new(b).ok())
            .ok_or_else(|| {
                ConnError::Protocol(ProtocolError(format!("unusable wal_segment_size {s:?}")))
            })
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and raw content.
    pub(crate) async fn timeline_history(
        &mut self,
        tli: TimeLineId,
    ) -> Result<(String, Vec<u8>), ConnError> {
        let r = self
            .simple_query(&format!("TIMELINE_HISTORY {}", tli.0))
            .await?;
        let name = r
            .get(0, 0)
            .ok_or_else(|| bad("TIMELINE_HISTORY"))?
            .to_owned();
        let content = r
            .get(0, 1)
            .ok_or_else(|| bad("TIMELINE_HISTORY"))?
            .as_bytes()
            .to_vec();
        let expected = walfmt::names::history_file_name(tli);
        if name != expected {
            return Err(ConnError::Protocol(ProtocolError(format!(
                "TIMELINE_HISTORY {} returned {name}",
                tli.0
            ))));
        }
        Ok((name, content))
    }

    /// `READ_REPLICATION_SLOT` (15+). `None` if there is no such slot.
    pub async fn read_replication_slot(
        &mut self,
        slot: &str,
    ) -> Result<Option<SlotInfo>, ConnError> {
        let r = self
            .simple_query(&format!("READ_REPLICATION_SLOT {}", quote_ident(slot)))
            .await?;
        if r.get(0, 0).is_none() {
            return Ok(None);
        }
        Ok(Some(SlotInfo {
            restart_lsn: r.get(0, 1).and_then(|s| s.parse().ok()),
            restart_tli: r.get(0, 2).and_then(|s| s.parse().ok()).map(TimeLineId),
        }))
    }

    /// `CREATE_REPLICATION_SLOT name PHYSICAL (RESERVE_WAL)`. `Ok(false)` if it already existed.
    pub async fn create_physical_slot(&mut self, slot: &str) -> Result<bool, ConnError> {
        match self
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {} PHYSICAL (RESERVE_WAL)",
                quote_ident(slot)
            ))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.sqlstate() == Some("42710") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `START_REPLICATION [SLOT s] PHYSICAL X/X TIMELINE t`. On success the connection is in
    /// CopyBoth mode; use [`PgConn::next_event`]. If `start` is exactly the end of a historic
    /// timeline the server skips streaming and says where the next timeline starts.
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        tli: TimeLineId,
    ) -> Result<StartOutcome, ConnError> {
        let slot = slot
            .map(|s| format!("SLOT {} ", quote_ident(s)))
            .unwrap_or_default();
        let sql = format!(
            "START_REPLICATION {slot}PHYSICAL {start} TIMELINE {}",
            tli.0
        );
        let mut q = BytesMut::new();
        postgres_protocol::message::frontend::query(&sql, &mut q).map_err(ConnError::Io)?;
        self.send(&q).await?;
        match self.read_timeline_reply(true).await? {
            TimelineReply::CopyBoth => Ok(StartOutcome::Streaming),
            TimelineReply::Next(Some((next_tli, next_start))) => Ok(StartOutcome::TimelineEnded {
                next_tli,
                next_start,
            }),
            TimelineReply::Next(None) => Err(bad("START_REPLICATION")),
        }
    }

    /// Reads the reply to START_REPLICATION or to our CopyDone at a timeline's end: CopyBoth
    /// (when `copy_both_ok`), or the next-timeline result set, up to ReadyForQuery.
    async fn read_timeline_reply(
        &mut self,
        copy_both_ok: bool,
    ) -> Result<TimelineReply, ConnError> {
        let mut next = None;
        let mut err = None;
        loop {
            match self.next().await? {
                Backend::CopyBothResponse if copy_both_ok => return Ok(TimelineReply::CopyBoth),
                Backend::DataRow(v) => next = Some(parse_next_tli(&v)?),
                Backend::Error(n) => err = Some(n),
                Backend::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match err {
            Some(n) => Err(ConnError::Server(Box::new(n))),
            None => Ok(TimelineReply::Next(next)),
        }
    }

    /// The next event of a CopyBoth replication stream.
    pub async fn next_event(&mut self) -> Result<StreamEvent, ConnError> {
        loop {
            if let Some(ev) = self.try_event()? {
                return Ok(ev);
            }
            if self.fill().await? == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    /// A buffered stream event, if one is complete. Cancel-safe companion of [`PgConn::fill`].
    pub(crate) fn try_event(&mut self) -> Result<Option<StreamEvent>, ConnError> {
        while let Some(m) = self.try_next()? {
            match m {
                Backend::CopyData(p) => {
                    return Ok(Some(match decode_repl(p)? {
                        ReplMessage::XLogData {
                            start,
                            server_end,
                            data,
                            ..
                        } => StreamEvent::Wal {
                            start,
                            server_end,
                            data,
                        },
                        ReplMessage::Keepalive {
                            server_end,
                            reply_requested,
                            ..
                        } => StreamEvent::Keepalive {
                            server_end,
                            reply_requested,
                        },
                    }));
                }
                Backend::CopyDone => return Ok(Some(StreamEvent::TimelineEnd)),
                // Shutdown of the primary: "COPY 0" without CopyDone, then EOF (§1.8 c).
                Backend::CommandComplete(_) => return Ok(Some(StreamEvent::ServerStopped)),
                Backend::Error(n) => return Err(ConnError::Server(Box::new(n))),
                Backend::Notice(n) => tracing::info!(server_notice = %n, "notice from server"),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Sends a standby status update.
    pub async fn send_status(
        &mut self,
        write: Lsn,
        flush: Lsn,
        reply: bool,
    ) -> Result<(), ConnError> {
        let mut b = BytesMut::with_capacity(39);
        codec::encode_status(&mut b, write, flush, Lsn(0), reply);
        self.send(&b).await
    }

    /// After the server's CopyDone at the end of a timeline: answer CopyDone and read where
    /// the next timeline starts (§1.8 b). Later XLogData is discarded.
    pub(crate) async fn finish_timeline(&mut self) -> Result<Option<(TimeLineId, Lsn)>, ConnError> {
        let mut b = BytesMut::new();
        codec::encode_copy_done(&mut b);
        self.send(&b).await?;
        match self.read_timeline_reply(false).await? {
            TimelineReply::Next(next) => Ok(next),
            TimelineReply::CopyBoth => Err(bad("CopyDone")),
        }
    }
}

enum TimelineReply {
    CopyBoth,
    Next(Option<(TimeLineId, Lsn)>),
}

fn parse_next_tli(v: &[Option<Bytes>]) -> Result<(TimeLineId, Lsn), ConnError> {
    let s = |i: usize| {
        v.get(i)
            .and_then(|x| x.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let tli = s(0)
        .and_then(|x| x.parse().ok())
        .map(TimeLineId)
        .ok_or_else(|| bad("end of timeline"))?;
    let lsn = s(1)
        .and_then(|x| x.parse().ok())
        .ok_or_else(|| bad("end of timeline"))?;
    Ok((tli, lsn))
}

/// What `START_REPLICATION` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// Streaming (CopyBoth).
    Streaming,
    /// The requested timeline ends exactly at the start position.
    TimelineEnded {
        /// The next timeline.
        next_tli: TimeLineId,
        /// Its start (the switch point).
        next_start: Lsn,
    },
}

/// An event of a replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// WAL bytes at `start`.
    Wal {
        /// LSN of the first byte.
        start: Lsn,
        /// The server's flushed WAL end when it sent this (walsender.c, `XLogSendPhysical`:
        /// `walEnd` is the send request pointer, the server's flush position).
        server_end: Lsn,
        /// The bytes.
        data: Bytes,
    },
    /// A keepalive.
    Keepalive {
        /// The server has sent everything before this (walsender.c, `WalSndKeepalive`:
        /// `sentPtr`).
        server_end: Lsn,
        /// Answer now.
        reply_requested: bool,
    },
    /// The timeline ended (server CopyDone): call [`PgConn::finish_timeline`].
    TimelineEnd,
    /// The server is shutting down and ended the stream.
    ServerStopped,
}
