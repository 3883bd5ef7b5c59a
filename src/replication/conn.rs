//! A PostgreSQL connection over tokio: TCP or Unix socket, optional TLS (rustls), startup,
//! authentication (trust, cleartext password, MD5, SCRAM-SHA-256 with or without channel
//! binding), simple queries, and CopyBoth streaming. Framing is in [`super::codec`].
//!
//! Cancellation: [`PgConn::fill`] is cancel-safe (it only appends to the read buffer), so a
//! streaming loop may `select!` on it alongside timers; writes are not, and are awaited whole.
//!
//! A connection can die without closing (a dead NAT entry, a partitioned network): nothing
//! arrives and nothing fails until TCP gives up, which takes about 15 minutes. Hence:
//! - TCP connections get the conninfo's keepalive settings (on by default, as libpq) and
//!   `tcp_user_timeout` ([`super::conninfo::TcpOptions`]);
//! - [`PgConn::set_io_timeout`] bounds every wait for a reply ([`PgConn::next`], so every
//!   command) and every write; past it the call fails with [`ConnError::Unresponsive`], a
//!   transient error, and the connection must be dropped. [`PgConn::fill`] is not bounded: a
//!   streaming loop knows when silence is normal (it stopped reading) and keeps its own clock.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::codec::{Backend, ProtocolError, ServerNotice, decode_backend};
use super::conninfo::{ConnParams, Host, SslMode, TcpOptions};
use super::tls;

/// The least free room in the read buffer before each read of the socket.
const READ_AT_LEAST: usize = 128 * 1024;

/// Why a connection or command failed. Messages never contain the password.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The host could not be reached.
    #[error("cannot connect to {host}: {source}")]
    Connect {
        /// Where.
        host: String,
        /// Why.
        source: io::Error,
    },
    /// Connecting took longer than `connect_timeout`.
    #[error("timed out connecting to {host}")]
    Timeout {
        /// Where.
        host: String,
    },
    /// TLS could not be set up as `sslmode` demands.
    #[error("TLS to {host}: {reason}")]
    Tls {
        /// Where.
        host: String,
        /// Why.
        reason: String,
    },
    /// The server asked for a password and none was given.
    #[error(
        "{host}: the server requires a password for user {user:?} and none was given: set PGPASSWORD, password= in the connection string, or a ~/.pgpass entry"
    )]
    NoPassword {
        /// Where.
        host: String,
        /// Role.
        user: String,
    },
    /// The server refused us (authentication, privileges, limits).
    #[error("{host}: {notice}")]
    Rejected {
        /// Where.
        host: String,
        /// The server's error.
        notice: Box<ServerNotice>,
    },
    /// A command failed on the server.
    #[error("server error: {0}")]
    Server(Box<ServerNotice>),
    /// The server broke the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Reading or writing the socket failed.
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// A reply or a write took longer than the connection's I/O timeout.
    #[error("no answer from {host} within {waited:?}: the connection is presumed dead")]
    Unresponsive {
        /// Where.
        host: String,
        /// How long we waited.
        waited: Duration,
    },
    /// A replication stream received nothing for longer than its receive timeout.
    #[error(
        "no message from the server {host} for {waited:?} (its wal_sender_timeout, or 60 s when that is 0): the connection is presumed dead"
    )]
    Silent {
        /// Where.
        host: String,
        /// How long nothing arrived.
        waited: Duration,
    },
}

impl ConnError {
    /// The SQLSTATE of a server-side error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ConnError::Rejected { notice, .. } | ConnError::Server(notice) => Some(&notice.code),
            _ => None,
        }
    }

    /// Worth retrying later (network trouble, server starting or shutting down, too many
    /// connections), as opposed to a configuration problem that retrying cannot fix.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnError::Connect { .. }
            | ConnError::Timeout { .. }
            | ConnError::Io(_)
            | ConnError::Closed
            | ConnError::Unresponsive { .. }
            | ConnError::Silent { .. } => true,
            ConnError::Rejected { notice, .. } | ConnError::Server(notice) => {
                // 57P0x: admin shutdown, crash shutdown, cannot connect now; 53300 too many
                // connections; 08xxx connection exceptions; 55006 object in use: on a
                // walsender, "replication slot ... is active for PID ..." (slot.c,
                // ReplicationSlotAcquire), which clears once the other process lets go (a
                // rolling update: the old sidecar still streams).
                notice.code.starts_with("57P")
                    || notice.code == "53300"
                    || notice.code.starts_with("08")
                    || notice.code == "55006"
            }
            ConnError::Tls { .. } | ConnError::NoPassword { .. } | ConnError::Protocol(_) => false,
        }
    }
}

/// The byte stream under a connection.
#[derive(Debug)]
pub(crate) enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// Unix socket.
    Unix(UnixStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A simple query's result: column names and text values.
#[derive(Debug, Clone, Default)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows; `None` is NULL.
    pub rows: Vec<Vec<Option<String>>>,
    /// Command tag.
    pub tag: String,
}

impl QueryResult {
    /// The value at `(row, col)`, if present and not NULL.
    pub(crate) fn get(&self, row: usize, col: usize) -> Option<&str> {
        self.rows.get(row)?.get(col)?.as_deref()
    }
}

/// An open, authenticated connection.
#[derive(Debug)]
pub struct PgConn {
    io: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// `server_version` as reported at startup.
    pub server_version: String,
    /// Where we are connected.
    pub host: Host,
    /// Whether TLS is in use.
    pub tls: bool,
    /// Bound on each wait for a reply and each write (`None`: unbounded).
    io_timeout: Option<Duration>,
}

/// The TCP options in force on a connection's socket, as the kernel reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// `SO_KEEPALIVE`.
    pub keepalive: bool,
    /// `TCP_KEEPIDLE`.
    pub keepalive_idle: Duration,
    /// `TCP_KEEPINTVL`.
    pub keepalive_interval: Duration,
    /// `TCP_KEEPCNT`.
    pub keepalive_count: u32,
    /// `TCP_USER_TIMEOUT` (`None`: the system default).
    pub user_timeout: Option<Duration>,
}

/// Applies the conninfo's keepalive settings and `tcp_user_timeout` to a TCP socket, as
/// libpq's `connectDBStart` does after connecting (a failure fails the connection there too).
fn apply_tcp_options(tcp: &TcpStream, o: &TcpOptions) -> io::Result<()> {
    let sock = socket2::SockRef::from(tcp);
    sock.set_keepalive(o.keepalives)?;
    if o.keepalives {
        let mut k = socket2::TcpKeepalive::new();
        if let Some(t) = o.keepalives_idle {
            k = k.with_time(t);
        }
        if let Some(t) = o.keepalives_interval {
            k = k.with_interval(t);
        }
        if let Some(n) = o.keepalives_count {
            k = k.with_retries(n);
        }
        sock.set_tcp_keepalive(&k)?;
    }
    if let Some(t) = o.user_timeout {
        sock.set_tcp_user_timeout(Some(t))?;
    }
    Ok(())
}

impl PgConn {
    /// Connects to the first host that answers. `replication`: open a physical walsender
    /// connection (`replication=true`).
    pub async fn connect(params: &ConnParams, replication: bool) -> Result<PgConn, ConnError> {
        let mut last = None;
        for host in &params.hosts {
            let attempt = Self::connect_one(params, host, replication);
            let res = match params.connect_timeout {
                Some(t) => tokio::time::timeout(t, attempt).await.unwrap_or_else(|_| {
                    Err(ConnError::Timeout {
                        host: host.describe(),
                    })
                }),
                None => attempt.await,
            };
            match res {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ConnError::Closed))
    }

    async fn connect_one(
        params: &ConnParams,
        host: &Host,
        replication: bool,
    ) -> Result<PgConn, ConnError> {
        let hostname = host.describe();
        let connect_err = |source| ConnError::Connect {
            host: hostname.clone(),
            source,
        };
        let (io, tls) = match host {
            Host::Unix(dir, port) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                (
                    Stream::Unix(UnixStream::connect(&path).await.map_err(connect_err)?),
                    false,
                )
            }
            Host::Tcp(h, port) => {
                let tcp = TcpStream::connect((h.as_str(), *port))
                    .await
                    .map_err(connect_err)?;
                let _ = tcp.set_nodelay(true);
                apply_tcp_options(&tcp, &params.tcp).map_err(connect_err)?;
                if params.sslmode == SslMode::Disable {
                    (Stream::Tcp(tcp), false)
                } else {
                    tls::negotiate(tcp, h, params)
                        .await
                        .map_err(|reason| ConnError::Tls {
                            host: hostname.clone(),
                            reason,
                        })?
                }
            }
        };
        let mut conn = PgConn {
            io,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(1024),
            server_version: String::new(),
            host: host.clone(),
            tls,
            io_timeout: None,
        };
        conn.startup(params, replication)
            .await
            .map_err(|e| match e {
                ConnError::Server(notice) => ConnError::Rejected {
                    host: hostname.clone(),
                    notice,
                },
                other => other,
            })?;
        Ok(conn)
    }

    async fn startup(&mut self, params: &ConnParams, replication: bool) -> Result<(), ConnError> {
        let mut kv: Vec<(&str, &str)> = vec![
            ("user", params.user.as_str()),
            (
                "database",
                if replication {
                    "replication"
                } else {
                    params.dbname.as_str()
                },
            ),
            ("application_name", params.application_name.as_str()),
            ("client_encoding", "UTF8"),
        ];
        if replication {
            kv.push(("replication", "true"));
        }
        frontend::startup_message(kv.iter().copied(), &mut self.wbuf).map_err(ConnError::Io)?;
        self.flush().await?;
        let host = self.host.describe();
        let need_password = || {
            params
                .password
                .as_ref()
                .ok_or_else(|| ConnError::NoPassword {
                    host: host.clone(),
                    user: params.user.clone(),
                })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.next().await? {
                Backend::Auth(0, _) => {}
                Backend::Auth(3, _) => {
                    let pw = need_password()?;
                    frontend::password_message(pw.expose().as_bytes(), &mut self.wbuf)
                        .map_err(ConnError::Io)?;
                    self.flush().await?;
                }
                Backend::Auth(5, salt) => {
                    let pw = need_password()?;
                    let salt: [u8; 4] = salt
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| ProtocolError("MD5 salt too short".into()))?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        params.user.as_bytes(),
                        pw.expose().as_bytes(),
                        salt,
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(ConnError::Io)?;
                    self.flush().await?;
                }
                Backend::Auth(10, mechs) => {
                    let pw = need_password()?;
                    let names: Vec<&[u8]> =
                        mechs.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                    let plus = names.contains(&&b"SCRAM-SHA-256-PLUS"[..]);
                    let (mech, binding) = match (plus, self.tls_endpoint()) {
                        (true, Some(hash)) => (
                            "SCRAM-SHA-256-PLUS",
                            ChannelBinding::tls_server_end_point(hash),
                        ),
                        (_, Some(_)) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
                        (_, None) => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                    };
                    if !names.contains(&&b"SCRAM-SHA-256"[..]) && !plus {
                        return Err(ProtocolError(
                            "server offers no SASL mechanism we support (SCRAM-SHA-256)".into(),
                        )
                        .into());
                    }
                    let s = ScramSha256::new(pw.expose().as_bytes(), binding);
                    frontend::sasl_initial_response(mech, s.message(), &mut self.wbuf)
                        .map_err(ConnError::Io)?;
                    self.flush().await?;
                    scram = Some(s);
                }
                Backend::Auth(11, data) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| ProtocolError("SASL continue without SASL start".into()))?;
                    s.update(&data)
                        .map_err(|e| ProtocolError(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf).map_err(ConnError::Io)?;
                    self.flush().await?;
                }
                Backend::Auth(12, data) => {
                    let mut s = scram
                        .take()
                        .ok_or_else(|| ProtocolError("SASL final without SASL start".into()))?;
                    // Verifies the server's signature: a server that does not know the
                    // password cannot complete this.
                    s.finish(&data).map_err(|e| {
                        ProtocolError(format!("SCRAM server verification failed: {e}"))
                    })?;
                }
                Backend::Auth(code, _) => {
                    return Err(ProtocolError(format!("unsupported authentication method (code {code}): use trust, password, md5 or scram-sha-256")).into());
                }
                Backend::ParameterStatus(k, v) => {
                    if k == "server_version" {
                        self.server_version = v;
                    }
                }
                Backend::BackendKeyData | Backend::Notice(_) => {}
                Backend::ReadyForQuery(_) => return Ok(()),
                Backend::Error(n) => return Err(ConnError::Server(Box::new(n))),
                Backend::NegotiateProtocolVersion => {}
                other => {
                    return Err(ProtocolError(format!(
                        "unexpected message during startup: {other:?}"
                    ))
                    .into());
                }
            }
        }
    }

    fn tls_endpoint(&self) -> Option<Vec<u8>> {
        match &self.io {
            Stream::Tls(s) => tls::server_end_point(s),
            _ => None,
        }
    }

    /// The server's major version (`server_version`'s first number; 0 if unreadable).
    pub(crate) fn server_major(&self) -> u32 {
        self.server_version
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Why pitr cannot work with this server, if it cannot (PostgreSQL before 15).
    pub(crate) fn unsupported(&self) -> Option<String> {
        (self.server_major() < 15).then(|| {
            format!(
                "PostgreSQL {} is not supported: pitr needs 15 or later",
                self.server_version
            )
        })
    }

    /// Bounds every later wait for a reply ([`PgConn::next`]) and every write; `None`:
    /// unbounded (the default).
    pub(crate) fn set_io_timeout(&mut self, t: Option<Duration>) {
        self.io_timeout = t;
    }

    /// The TCP options in force (`None` for a Unix socket).
    pub fn socket_options(&self) -> Option<SocketOptions> {
        let tcp = match &self.io {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
            Stream::Unix(_) => return None,
        };
        let sock = socket2::SockRef::from(tcp);
        Some(SocketOptions {
            keepalive: sock.keepalive().ok()?,
            keepalive_idle: sock.tcp_keepalive_time().ok()?,
            keepalive_interval: sock.tcp_keepalive_interval().ok()?,
            keepalive_count: sock.tcp_keepalive_retries().ok()?,
            user_timeout: sock.tcp_user_timeout().ok()?,
        })
    }

    fn unresponsive(&self, waited: Duration) -> ConnError {
        ConnError::Unresponsive {
            host: self.host.describe(),
            waited,
        }
    }

    /// Sends what is buffered (within the I/O timeout, if one is set).
    pub(crate) async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.wbuf.is_empty() {
            let b = self.wbuf.split();
            let io = &mut self.io;
            let write = async {
                io.write_all(&b).await?;
                io.flush().await
            };
            match self.io_timeout {
                Some(t) => match tokio::time::timeout(t, write).await {
                    Ok(r) => r?,
                    Err(_) => return Err(self.unresponsive(t)),
                },
                None => write.await?,
            }
        }
        Ok(())
    }

    /// Queues raw, already-framed bytes and sends them.
    pub(crate) async fn send(&mut self, framed: &[u8]) -> Result<(), ConnError> {
        self.wbuf.extend_from_slice(framed);
        self.flush().await
    }

    /// Reads more bytes into the buffer (at least [`READ_AT_LEAST`] of room). Cancel-safe. Returns the number read (0: EOF).
    pub(crate) async fn fill(&mut self) -> Result<usize, ConnError> {
        // Room for a large read: a base backup or a WAL burst arrives in many CopyData
        // messages, and a nearly full buffer would take the socket a few KiB at a time.
        if self.rbuf.capacity() - self.rbuf.len() < READ_AT_LEAST {
            self.rbuf.reserve(READ_AT_LEAST);
        }
        Ok(self.io.read_buf(&mut self.rbuf).await?)
    }

    /// A complete message already buffered, if any.
    pub(crate) fn try_next(&mut self) -> Result<Option<Backend>, ConnError> {
        Ok(decode_backend(&mut self.rbuf)?)
    }

    /// The next message, reading as needed; each read waits at most the I/O timeout.
    pub(crate) async fn next(&mut self) -> Result<Backend, ConnError> {
        loop {
            if let Some(m) = self.try_next()? {
                return Ok(m);
            }
            let n = match self.io_timeout {
                Some(t) => match tokio::time::timeout(t, self.fill()).await {
                    Ok(r) => r?,
                    Err(_) => return Err(self.unresponsive(t)),
                },
                None => self.fill().await?,
            };
            if n == 0 {
                return Err(ConnError::Closed);
            }
        }
    }

    /// Runs one simple query (`'Q'`); on the replication protocol, one replication command.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, ConnError> {
        frontend::query(sql, &mut self.wbuf).map_err(ConnError::Io)?;
        self.flush().await?;
        let mut res = QueryResult::default();
        let mut err = None;
        loop {
            match self.next().await? {
                Backend::RowDescription(c) => res.columns = c,
                Backend::DataRow(v) => res.rows.push(
                    v.into_iter()
                        .map(|x| x.map(|b| String::from_utf8_lossy(&b).into_owned()))
                        .collect(),
                ),
                Backend::CommandComplete(t) => res.tag = t,
                Backend::Error(n) => err = Some(n),
                Backend::ReadyForQuery(_) => break,
                Backend::CopyOutResponse | Backend::CopyBothResponse | Backend::CopyInResponse => {
                    return Err(ProtocolError(format!("{sql:?} started a COPY")).into());
                }
                _ => {}
            }
        }
        match err {
            Some(n) => Err(ConnError::Server(Box::new(n))),
            None => Ok(res),
        }
    }

    /// Sends Terminate and closes.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }
}
