//! The `BASE_BACKUP` replication command (PostgreSQL 15 to 18, the options-in-parentheses
//! form): the command text ([`BaseBackupCommand`]), a sans-IO decoder of the server's
//! response ([`Decoder`]: backend messages in, [`BackupEvent`]s out) and a thin driver over a
//! [`PgConn`] ([`PgConn::base_backup`], [`BaseBackupStream::next`]).
//!
//! # The response (basebackup_copy.c, `bbsink_copystream_*`)
//!
//! 1. The start position: RowDescription (`recptr`, `tli`), one DataRow, CommandComplete.
//! 2. The tablespaces: RowDescription (`spcoid`, `spclocation`, `size` in kB, NULL without
//!    `PROGRESS`), one DataRow each (the main data directory last, with NULL oid and
//!    location), CommandComplete.
//! 3. CopyOutResponse, then for each archive (tablespaces first, `base` last) a CopyData
//!    `'n'` (archive name, tablespace location; both NUL-terminated) followed by CopyData
//!    `'d'` (tar bytes) and `'p'` (bytes done so far, int64; also sent at each archive's end);
//!    then, with a manifest, a CopyData `'m'` followed by `'d'` (the manifest's bytes); then
//!    CopyDone.
//! 4. The end position: RowDescription (`recptr`, `tli`), one DataRow, CommandComplete.
//! 5. CommandComplete `BASE_BACKUP`, ReadyForQuery.
//!
//! An ErrorResponse may come at any point (a page checksum failure comes after step 4); the
//! server then sends ReadyForQuery and nothing else.
//!
//! # Invariants
//!
//! - The events follow the order above: [`BackupEvent::Started`], [`BackupEvent::Tablespaces`],
//!   then per archive [`BackupEvent::ArchiveStart`], its [`BackupEvent::ArchiveData`] and
//!   [`BackupEvent::ArchiveEnd`], then optionally [`BackupEvent::ManifestStart`] and its
//!   [`BackupEvent::ManifestData`], then [`BackupEvent::Ended`] and [`BackupEvent::Done`].
//!   [`BackupEvent::Progress`] comes only during the COPY, [`BackupEvent::Notice`] anywhere.
//!   Every `ArchiveStart` is closed by an `ArchiveEnd` before anything else starts.
//! - [`BackupEvent::Done`] is yielded only after CommandComplete `BASE_BACKUP` and then
//!   ReadyForQuery, and never after an ErrorResponse: a backup whose stream ends in `Done`
//!   was completed by the server. A server error is reported (as
//!   [`BaseBackupError::Server`]) at the ReadyForQuery that follows it, when the connection
//!   is ready for the next command.
//! - Malformed or out-of-order input is a typed [`BaseBackupError`], never a panic; after an
//!   error, or after `Done`, the decoder accepts nothing more.
//! - Archive names are `base` or a tablespace OID, each with an extension (`base.tar`,
//!   `16385.tar.lz4`): anything else (a path, a dot file) is refused, since the name becomes
//!   part of object keys.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use walfmt::{Lsn, TimeLineId};

use super::codec::{Backend, ServerNotice};
use super::commands::sql_literal;
use super::conn::{ConnError, PgConn};

/// The `BASE_BACKUP` command pitr sends: a labelled backup with progress, a fast checkpoint,
/// no wait for WAL archiving, and a manifest with CRC-32C checksums.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BaseBackupCommand<'a> {
    /// `LABEL`.
    pub label: &'a str,
    /// `COMPRESSION 'lz4'`: the server compresses each archive.
    pub server_lz4: bool,
}

impl BaseBackupCommand<'_> {
    /// The command's text.
    pub(crate) fn sql(&self) -> String {
        let compression = if self.server_lz4 {
            ", COMPRESSION 'lz4'"
        } else {
            ""
        };
        format!(
            "BASE_BACKUP ( LABEL {}, PROGRESS, CHECKPOINT 'fast', WAIT 0, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C'{compression} )",
            sql_literal(self.label)
        )
    }
}

/// One row of the tablespace result set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tablespace {
    /// The tablespace's OID (`None`: the main data directory).
    pub oid: Option<u32>,
    /// Its location on the server (`None`: the main data directory).
    pub location: Option<String>,
    /// Its estimated size in kB (`None` without `PROGRESS`).
    pub size_kb: Option<u64>,
}

/// What the server said, in protocol order (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BackupEvent {
    /// The backup started: its start LSN (the checkpoint's redo point) and timeline.
    Started {
        /// Start LSN.
        start_lsn: Lsn,
        /// Start timeline.
        timeline: TimeLineId,
    },
    /// The tablespaces the archives will hold; the COPY starts.
    Tablespaces(Vec<Tablespace>),
    /// An archive starts.
    ArchiveStart {
        /// The server's file name (`base.tar`, `16385.tar.lz4`).
        name: String,
        /// The name up to its first dot: `base` or the tablespace's OID.
        stem: String,
        /// The tablespace's location on the server (`None` for `base`).
        location: Option<String>,
    },
    /// Bytes of the current archive.
    ArchiveData(Bytes),
    /// The current archive is complete.
    ArchiveEnd,
    /// Bytes sent so far, all archives together.
    Progress(u64),
    /// The manifest starts.
    ManifestStart,
    /// Bytes of the manifest.
    ManifestData(Bytes),
    /// The backup's end: its end LSN and timeline.
    Ended {
        /// End LSN.
        end_lsn: Lsn,
        /// End timeline.
        timeline: TimeLineId,
    },
    /// A notice or warning from the server.
    Notice(ServerNotice),
    /// The server completed the backup (CommandComplete `BASE_BACKUP`, ReadyForQuery).
    Done,
}

/// Why a `BASE_BACKUP` response could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BaseBackupError {
    /// The connection failed (driver only).
    #[error(transparent)]
    Conn(#[from] ConnError),
    /// The server failed the backup; reported at the ReadyForQuery after its error.
    #[error("server error: {0}")]
    Server(Box<ServerNotice>),
    /// A message the protocol does not allow at this point.
    #[error("unexpected {got} {during}")]
    OutOfOrder {
        /// The message.
        got: &'static str,
        /// Where in the response.
        during: &'static str,
    },
    /// A row of a result set that does not parse.
    #[error("malformed {what} row: {row:?}")]
    BadRow {
        /// Which result set.
        what: &'static str,
        /// The row's values, as text.
        row: Vec<Option<String>>,
    },
    /// An archive name that is not `base` or a tablespace OID with an extension.
    #[error("unexpected archive name {0:?}")]
    ArchiveName(String),
    /// An archive header (`'n'`) without its two NUL-terminated strings.
    #[error("malformed archive header")]
    ArchiveHeader,
    /// Archive data (`'d'`) before any archive (`'n'`) or manifest (`'m'`).
    #[error("data before any archive")]
    DataBeforeArchive,
    /// A progress report (`'p'`) that is not one int64.
    #[error("progress report of {0} bytes (expected 8)")]
    Progress(usize),
    /// A CopyData without its type byte.
    #[error("empty CopyData")]
    EmptyCopyData,
    /// A CopyData type this protocol does not have.
    #[error("unknown CopyData type {:?}", *.0 as char)]
    UnknownCopyData(u8),
}

/// Where the decoder is in the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the start position's RowDescription.
    Start,
    /// In the start position's result set (`true`: its row was seen).
    StartRow(bool),
    /// In the tablespace result set, before the COPY.
    TablespaceRows,
    /// In the COPY.
    Copy(Part),
    /// After CopyDone, before the end position's RowDescription.
    AfterCopy,
    /// In the end position's result set (`true`: its row was seen).
    EndRow(bool),
    /// After CommandComplete `BASE_BACKUP`.
    Complete,
    /// After an ErrorResponse: waiting for ReadyForQuery.
    Failed,
    /// Done, or an error was returned: nothing more is accepted.
    Finished,
}

/// What the COPY is carrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Before the first archive.
    Nothing,
    /// An archive.
    Archive,
    /// The manifest.
    Manifest,
}

/// The sans-IO decoder: [`Decoder::feed`] each backend message after sending the command,
/// take the events with [`Decoder::poll`].
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
    tablespaces: Vec<Tablespace>,
    error: Option<Box<ServerNotice>>,
    events: VecDeque<BackupEvent>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

fn text(v: &[Option<Bytes>]) -> Vec<Option<String>> {
    v.iter()
        .map(|x| x.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()))
        .collect()
}

/// `(recptr, tli)` of a position row.
fn position(what: &'static str, v: &[Option<Bytes>]) -> Result<(Lsn, TimeLineId), BaseBackupError> {
    let row = text(v);
    let parsed = match row.as_slice() {
        [Some(lsn), Some(tli)] => lsn.parse().ok().zip(tli.parse().ok().map(TimeLineId)),
        _ => None,
    };
    parsed.ok_or(BaseBackupError::BadRow { what, row })
}

/// `(spcoid, spclocation, size)` of a tablespace row.
fn tablespace(v: &[Option<Bytes>]) -> Result<Tablespace, BaseBackupError> {
    let row = text(v);
    let bad = || BaseBackupError::BadRow {
        what: "tablespace",
        row: row.clone(),
    };
    let [oid, location, size] = row.as_slice() else {
        return Err(bad());
    };
    let oid = match oid {
        Some(s) => Some(s.parse().map_err(|_| bad())?),
        None => None,
    };
    let size_kb = match size {
        Some(s) => Some(s.parse().map_err(|_| bad())?),
        None => None,
    };
    Ok(Tablespace {
        oid,
        location: location.clone(),
        size_kb,
    })
}

/// The two NUL-terminated strings of an `'n'` message, the name validated.
fn archive_start(mut body: Bytes) -> Result<BackupEvent, BaseBackupError> {
    let mut cstr = || -> Result<String, BaseBackupError> {
        let n = body
            .iter()
            .position(|&c| c == 0)
            .ok_or(BaseBackupError::ArchiveHeader)?;
        let s = String::from_utf8_lossy(&body[..n]).into_owned();
        body.advance(n + 1);
        Ok(s)
    };
    let name = cstr()?;
    let location = cstr()?;
    let stem = name.split('.').next().unwrap_or_default().to_string();
    if stem.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\\')
        || !(stem == "base" || stem.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(BaseBackupError::ArchiveName(name));
    }
    Ok(BackupEvent::ArchiveStart {
        name,
        stem,
        location: (!location.is_empty()).then_some(location),
    })
}

/// The message's name, for errors.
fn describe(msg: &Backend) -> &'static str {
    match msg {
        Backend::Auth(..) => "authentication request",
        Backend::ParameterStatus(..) => "ParameterStatus",
        Backend::BackendKeyData => "BackendKeyData",
        Backend::ReadyForQuery(_) => "ReadyForQuery",
        Backend::RowDescription(_) => "RowDescription",
        Backend::DataRow(_) => "DataRow",
        Backend::CommandComplete(_) => "CommandComplete",
        Backend::EmptyQuery => "EmptyQueryResponse",
        Backend::Error(_) => "ErrorResponse",
        Backend::Notice(_) => "NoticeResponse",
        Backend::CopyBothResponse => "CopyBothResponse",
        Backend::CopyOutResponse => "CopyOutResponse",
        Backend::CopyInResponse => "CopyInResponse",
        Backend::CopyData(_) => "CopyData",
        Backend::CopyDone => "CopyDone",
        Backend::NegotiateProtocolVersion => "NegotiateProtocolVersion",
        Backend::Other(_) => "message",
    }
}

impl State {
    /// Where in the response, for errors.
    fn during(self) -> &'static str {
        match self {
            State::Start => "before the start position",
            State::StartRow(_) => "in the start position",
            State::TablespaceRows => "in the tablespace list",
            State::Copy(Part::Nothing) => "before the first archive",
            State::Copy(Part::Archive) => "in an archive",
            State::Copy(Part::Manifest) => "in the manifest",
            State::AfterCopy => "after the archives",
            State::EndRow(_) => "in the end position",
            State::Complete => "after BASE_BACKUP completed",
            State::Failed => "after the server's error",
            State::Finished => "after the end of the response",
        }
    }
}

impl Decoder {
    /// A decoder for the response to a `BASE_BACKUP` just sent.
    pub(crate) fn new() -> Self {
        Decoder {
            state: State::Start,
            tablespaces: Vec::new(),
            error: None,
            events: VecDeque::new(),
        }
    }

    /// The next event, if one is ready.
    pub(crate) fn poll(&mut self) -> Option<BackupEvent> {
        self.events.pop_front()
    }

    /// Whether the response is over (`Done` yielded, or an error returned).
    pub(crate) fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Takes one backend message. An error ends the decoder: later messages are refused.
    pub(crate) fn feed(&mut self, msg: Backend) -> Result<(), BaseBackupError> {
        let r = self.step(msg);
        if r.is_err() {
            self.state = State::Finished;
        }
        r
    }

    fn out_of_order(&self, msg: &Backend) -> BaseBackupError {
        BaseBackupError::OutOfOrder {
            got: describe(msg),
            during: self.state.during(),
        }
    }

    fn step(&mut self, msg: Backend) -> Result<(), BaseBackupError> {
        match (&msg, self.state) {
            (_, State::Finished) => return Err(self.out_of_order(&msg)),
            (Backend::ReadyForQuery(_), State::Failed) => {
                self.state = State::Finished;
                let notice = self.error.take().unwrap_or_default();
                return Err(BaseBackupError::Server(notice));
            }
            (_, State::Failed) => return Ok(()),
            (Backend::Error(n), _) => {
                self.error = Some(Box::new(n.clone()));
                self.state = State::Failed;
                return Ok(());
            }
            (Backend::Notice(n), _) => {
                self.events.push_back(BackupEvent::Notice(n.clone()));
                return Ok(());
            }
            // Asynchronous messages the server may send at any time.
            (Backend::ParameterStatus(..) | Backend::Other(_), _) => return Ok(()),
            _ => {}
        }
        match self.state {
            State::Copy(part) => self.copy(msg, part),
            _ => self.result_sets(msg),
        }
    }

    /// Everything outside the COPY: the three result sets and the end.
    fn result_sets(&mut self, msg: Backend) -> Result<(), BaseBackupError> {
        let next = match (msg, self.state) {
            (Backend::RowDescription(_), State::Start) => State::StartRow(false),
            (Backend::DataRow(v), State::StartRow(false)) => {
                let (start_lsn, timeline) = position("start position", &v)?;
                self.events.push_back(BackupEvent::Started {
                    start_lsn,
                    timeline,
                });
                State::StartRow(true)
            }
            (Backend::CommandComplete(_), s @ State::StartRow(true)) => s,
            (Backend::RowDescription(_), State::StartRow(true)) => State::TablespaceRows,
            (Backend::DataRow(v), State::TablespaceRows) => {
                self.tablespaces.push(tablespace(&v)?);
                State::TablespaceRows
            }
            (Backend::CommandComplete(_), State::TablespaceRows) => State::TablespaceRows,
            (Backend::CopyOutResponse, State::TablespaceRows) => {
                let list = std::mem::take(&mut self.tablespaces);
                self.events.push_back(BackupEvent::Tablespaces(list));
                State::Copy(Part::Nothing)
            }
            (Backend::RowDescription(_), State::AfterCopy) => State::EndRow(false),
            (Backend::DataRow(v), State::EndRow(false)) => {
                let (end_lsn, timeline) = position("end position", &v)?;
                self.events
                    .push_back(BackupEvent::Ended { end_lsn, timeline });
                State::EndRow(true)
            }
            (Backend::CommandComplete(tag), State::EndRow(true)) => {
                if tag == "BASE_BACKUP" {
                    State::Complete
                } else {
                    State::EndRow(true)
                }
            }
            (Backend::ReadyForQuery(_), State::Complete) => {
                self.events.push_back(BackupEvent::Done);
                State::Finished
            }
            (msg, _) => return Err(self.out_of_order(&msg)),
        };
        self.state = next;
        Ok(())
    }

    /// Inside the COPY.
    fn copy(&mut self, msg: Backend, part: Part) -> Result<(), BaseBackupError> {
        let mut body = match msg {
            Backend::CopyData(d) => d,
            Backend::CopyDone => {
                if part == Part::Archive {
                    self.events.push_back(BackupEvent::ArchiveEnd);
                }
                self.state = State::AfterCopy;
                return Ok(());
            }
            msg => return Err(self.out_of_order(&msg)),
        };
        if body.is_empty() {
            return Err(BaseBackupError::EmptyCopyData);
        }
        let kind = body.get_u8();
        let (event, next) = match (kind, part) {
            (b'n', Part::Manifest) => {
                return Err(BaseBackupError::OutOfOrder {
                    got: "archive",
                    during: State::Copy(part).during(),
                });
            }
            (b'n', _) => (archive_start(body)?, Part::Archive),
            (b'd', Part::Nothing) => return Err(BaseBackupError::DataBeforeArchive),
            (b'd', Part::Archive) => (BackupEvent::ArchiveData(body), part),
            (b'd', Part::Manifest) => (BackupEvent::ManifestData(body), part),
            (b'p', _) => {
                let bytes = <[u8; 8]>::try_from(body.as_ref())
                    .map_err(|_| BaseBackupError::Progress(body.len()))?;
                (BackupEvent::Progress(u64::from_be_bytes(bytes)), part)
            }
            (b'm', Part::Manifest) => {
                return Err(BaseBackupError::OutOfOrder {
                    got: "second manifest",
                    during: State::Copy(part).during(),
                });
            }
            (b'm', _) => (BackupEvent::ManifestStart, Part::Manifest),
            (other, _) => return Err(BaseBackupError::UnknownCopyData(other)),
        };
        if part == Part::Archive && matches!(kind, b'n' | b'm') {
            self.events.push_back(BackupEvent::ArchiveEnd);
        }
        self.events.push_back(event);
        self.state = State::Copy(next);
        Ok(())
    }
}

/// A `BASE_BACKUP` in progress on a connection: [`BaseBackupStream::next`] until
/// [`BackupEvent::Done`] or an error.
#[derive(Debug)]
pub(crate) struct BaseBackupStream<'c> {
    conn: &'c mut PgConn,
    decoder: Decoder,
}

impl PgConn {
    /// Sends `BASE_BACKUP`; read its response with [`BaseBackupStream::next`].
    pub(crate) async fn base_backup(
        &mut self,
        cmd: &BaseBackupCommand<'_>,
    ) -> Result<BaseBackupStream<'_>, ConnError> {
        let mut wbuf = BytesMut::new();
        postgres_protocol::message::frontend::query(&cmd.sql(), &mut wbuf)
            .map_err(ConnError::Io)?;
        self.send(&wbuf).await?;
        Ok(BaseBackupStream {
            conn: self,
            decoder: Decoder::new(),
        })
    }
}

impl BaseBackupStream<'_> {
    /// The next event, reading as needed. After [`BackupEvent::Done`] or an error, the
    /// response is over and this fails without reading.
    pub(crate) async fn next(&mut self) -> Result<BackupEvent, BaseBackupError> {
        loop {
            if let Some(ev) = self.decoder.poll() {
                return Ok(ev);
            }
            if self.decoder.is_finished() {
                return Err(BaseBackupError::OutOfOrder {
                    got: "read",
                    during: State::Finished.during(),
                });
            }
            let msg = self.conn.next().await?;
            self.decoder.feed(msg)?;
        }
    }
}

#[cfg(test)]
#[path = "base_backup_tests.rs"]
mod tests;
