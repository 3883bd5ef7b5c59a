//! Sans-IO protocol codec: backend message framing, replication sub-messages inside CopyData,
//! and the client messages we send. No sockets here: bytes in, typed values out.
//!
//! Frontend messages (startup, password, SASL, query, CopyData, CopyDone, Terminate) are
//! written with `postgres-protocol`. Backend messages are framed here, because
//! `postgres-protocol` 0.6 cannot parse CopyBothResponse (`'W'`), which every replication
//! stream begins with (POSTGRES_WIRE_AND_WAL.md §6.1).
//!
//! Wire integers are big-endian. Replication sub-messages (§1.6):
//! - XLogData `'w'`: start LSN u64, server WAL end u64, send time i64, WAL bytes;
//! - keepalive `'k'`: server WAL end u64, send time i64, reply-requested u8;
//! - standby status update `'r'` (ours): write, flush, apply u64, client time i64, reply u8.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use walfmt::Lsn;

/// Frames larger than this are refused (PostgreSQL's own limit for most messages is 1 GiB;
/// XLogData is at most 128 KiB of WAL).
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// A malformed or unexpected server message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol error: {0}")]
pub struct ProtocolError(pub String);

fn perr(s: impl Into<String>) -> ProtocolError {
    ProtocolError(s.into())
}

/// A server error or notice, with its fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerNotice {
    /// `ERROR`, `FATAL`, `WARNING`, ...
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Detail, if any.
    pub detail: Option<String>,
    /// Hint, if any.
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // `BackendKeyData` is the protocol's own name
pub(crate) enum Backend {
    /// `'R'`: authentication request (code, rest of the body).
    Auth(i32, Bytes),
    /// `'S'`.
    ParameterStatus(String, String),
    /// `'K'`.
    BackendKeyData,
    /// `'Z'` with the transaction status.
    ReadyForQuery(u8),
    /// `'T'`: column names.
    RowDescription(Vec<String>),
    /// `'D'`: values as text (`None` for NULL).
    DataRow(Vec<Option<Bytes>>),
    /// `'C'`: the command tag.
    CommandComplete(String),
    /// `'I'`.
    EmptyQuery,
    /// `'E'`.
    Error(ServerNotice),
    /// `'N'`.
    Notice(ServerNotice),
    /// `'W'`.
    CopyBothResponse,
    /// `'H'`.
    CopyOutResponse,
    /// `'G'`.
    CopyInResponse,
    /// `'d'`: the payload.
    CopyData(Bytes),
    /// `'c'`.
    CopyDone,
    /// `'v'`.
    NegotiateProtocolVersion,
    /// Anything else we do not act on (`'n'`, `'s'`, ...), by tag.
    Other(u8),
}

fn cstr(b: &mut Bytes) -> Result<String, ProtocolError> {
    let n = b
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| perr("unterminated string"))?;
    let s = String::from_utf8_lossy(&b[..n]).into_owned();
    b.advance(n + 1);
    Ok(s)
}

fn notice(mut b: Bytes) -> Result<ServerNotice, ProtocolError> {
    let mut n = ServerNotice::default();
    while b.has_remaining() {
        let t = b.get_u8();
        if t == 0 {
            break;
        }
        let v = cstr(&mut b)?;
        match t {
            b'V' => n.severity = v,
            b'S' if n.severity.is_empty() => n.severity = v,
            b'C' => n.code = v,
            b'M' => n.message = v,
            b'D' => n.detail = Some(v),
            b'H' => n.hint = Some(v),
            _ => {}
        }
    }
    Ok(n)
}

/// Takes one complete message off the front of `buf`, if it holds one.
pub(crate) fn decode_backend(buf: &mut BytesMut) -> Result<Option<Backend>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > MAX_FRAME {
        return Err(perr(format!(
            "message {:?} with invalid length {len}",
            tag as char
        )));
    }
    let total = 1 + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total).freeze();
    frame.advance(5);
    let mut b = frame;
    let need = |b: &Bytes, n: usize| {
        if b.remaining() < n {
            Err(perr("message too short"))
        } else {
            Ok(())
        }
    };
    Ok(Some(match tag {
        b'R' => {
            need(&b, 4)?;
            let code = b.get_i32();
            Backend::Auth(code, b)
        }
        b'S' => {
            let k = cstr(&mut b)?;
            let v = cstr(&mut b)?;
            Backend::ParameterStatus(k, v)
        }
        b'K' => Backend::BackendKeyData,
        b'Z' => {
            need(&b, 1)?;
            Backend::ReadyForQuery(b.get_u8())
        }
        b'T' => {
            need(&b, 2)?;
            let n = b.get_i16();
            let mut cols = Vec::new();
            for _ in 0..n.max(0) {
                cols.push(cstr(&mut b)?);
                need(&b, 18)?;
                b.advance(18);
            }
            Backend::RowDescription(cols)
        }
        b'D' => {
            need(&b, 2)?;
            let n = b.get_i16();
            let mut vals = Vec::new();
            for _ in 0..n.max(0) {
                need(&b, 4)?;
                let l = b.get_i32();
                if l < 0 {
                    vals.push(None);
                } else {
                    need(&b, l as usize)?;
                    vals.push(Some(b.split_to(l as usize)));
                }
            }
            Backend::DataRow(vals)
        }
        b'C' => Backend::CommandComplete(cstr(&mut b)?),
        b'I' => Backend::EmptyQuery,
        b'E' => Backend::Error(notice(b)?),
        b'N' => Backend::Notice(notice(b)?),
        b'W' => Backend::CopyBothResponse,
        b'H' => Backend::CopyOutResponse,
        b'G' => Backend::CopyInResponse,
        b'd' => Backend::CopyData(b),
        b'c' => Backend::CopyDone,
        b'v' => Backend::NegotiateProtocolVersion,
        other => Backend::Other(other),
    }))
}

/// A replication sub-message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplMessage {
    /// `'w'`: WAL bytes starting at `start`.
    XLogData {
        /// LSN of the first byte.
        start: Lsn,
        /// The server's WAL end when it sent this.
        server_end: Lsn,
        /// Server clock (µs since 2000-01-01).
        send_time: i64,
        /// The WAL bytes.
        data: Bytes,
    },
    /// `'k'`.
    Keepalive {
        /// Everything before this has been sent.
        server_end: Lsn,
        /// Server clock.
        send_time: i64,
        /// The server wants a status update now.
        reply_requested: bool,
    },
}

/// Parses a CopyData payload of a physical replication stream.
pub(crate) fn decode_repl(mut p: Bytes) -> Result<ReplMessage, ProtocolError> {
    if p.is_empty() {
        return Err(perr("empty CopyData"));
    }
    match p.get_u8() {
        b'w' => {
            if p.remaining() < 24 {
                return Err(perr("XLogData too short"));
            }
            let start = Lsn(p.get_u64());
            let server_end = Lsn(p.get_u64());
            let send_time = p.get_i64();
            Ok(ReplMessage::XLogData {
                start,
                server_end,
                send_time,
                data: p,
            })
        }
        b'k' => {
            if p.remaining() < 17 {
                return Err(perr("keepalive too short"));
            }
            Ok(ReplMessage::Keepalive {
                server_end: Lsn(p.get_u64()),
                send_time: p.get_i64(),
                reply_requested: p.get_u8() != 0,
            })
        }
        t => Err(perr(format!(
            "unexpected replication message type {:?}",
            t as char
        ))),
    }
}

/// Microseconds since 2000-01-01 UTC, now.
pub(crate) fn pg_now() -> i64 {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    us - walfmt::time::PG_EPOCH_OFFSET_MICROS
}

/// Appends a CopyData frame carrying a standby status update (`'r'`).
pub(crate) fn encode_status(
    buf: &mut BytesMut,
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    reply_requested: bool,
) {
    buf.put_u8(b'd');
    buf.put_i32(4 + 34);
    buf.put_u8(b'r');
    buf.put_u64(write.0);
    buf.put_u64(flush.0);
    buf.put_u64(apply.0);
    buf.put_i64(pg_now());
    buf.put_u8(u8::from(reply_requested));
}

/// Appends a CopyDone.
pub(crate) fn encode_copy_done(buf: &mut BytesMut) {
    postgres_protocol::message::frontend::copy_done(buf);
}

/// Parses `SHOW wal_segment_size` output (`16MB`, `1GB`, `1048576`...) into bytes.
pub(crate) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parses `SHOW` output of a time setting (`60s`, `1min`, `500ms`, `2h`, `1d`, `0`; a bare
/// number is in milliseconds, the unit of `wal_sender_timeout`). PostgreSQL prints times with
/// the largest unit that divides them (guc.c, `convert_int_from_base_unit`): `us`, `ms`, `s`,
/// `min`, `h`, `d`.
pub(crate) fn parse_time_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit.trim() {
        "us" => return Some(n / 1000),
        "" | "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_settings_as_show_prints_them() {
        assert_eq!(parse_time_ms("1min"), Some(60_000));
        assert_eq!(parse_time_ms("60s"), Some(60_000));
        assert_eq!(parse_time_ms("4s"), Some(4_000));
        assert_eq!(parse_time_ms("1500ms"), Some(1_500));
        assert_eq!(parse_time_ms("2h"), Some(7_200_000));
        assert_eq!(parse_time_ms("1d"), Some(86_400_000));
        assert_eq!(parse_time_ms("0"), Some(0));
        assert_eq!(parse_time_ms("250"), Some(250));
        assert_eq!(parse_time_ms("soon"), None);
        assert_eq!(parse_time_ms("5 fortnights"), None);
        assert_eq!(parse_time_ms(""), None);
    }
}
