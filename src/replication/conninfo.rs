//! Connection parameters, as libpq reads them.
//!
//! Sources, highest precedence first: the connection string (key/value `host=db port=5432` or
//! a `postgresql://user@host:port/db?sslmode=require` URI), then `PG*` environment variables
//! (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`, `PGSSLMODE`,
//! `PGSSLROOTCERT`, `PGCONNECT_TIMEOUT`, `PGPASSFILE`), then defaults (Unix socket in
//! `/var/run/postgresql`, then `/tmp`; port 5432; the OS user). A password missing from both
//! comes from the password file (`PGPASSFILE`, default `~/.pgpass`), matched as libpq does,
//! with database `replication` for replication connections.
//!
//! TCP keepalives are on by default, as in libpq (`keepalives=1`); `keepalives_idle`,
//! `keepalives_interval`, `keepalives_count` (0: the system default) and `tcp_user_timeout`
//! (milliseconds, 0: the system default) are honoured for TCP connections and ignored for
//! Unix sockets, as libpq does (`fe-connect.c`: `useKeepalives`, `setKeepalivesIdle`,
//! `setKeepalivesInterval`, `setKeepalivesCount`, `setTCPUserTimeout`). libpq has no
//! environment variables for them. Unlike libpq, which takes a negative value as 0, a value
//! that is negative, not an integer or beyond what Linux accepts is refused here.
//!
//! The password is a [`Password`]: it prints as `********` in `Debug` and has no `Display`,
//! so it cannot reach logs, errors or metrics by accident.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A password that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// The secret itself, for the authentication exchange only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("********")
    }
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, without verifying it (libpq's default).
    Prefer,
    /// TLS or fail, without verifying the server (unless a root certificate is given, then as
    /// `VerifyCa`, like libpq).
    Require,
    /// TLS, server certificate signed by the root certificate.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, ConnInfoError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(ConnInfoError(
                    "sslmode=allow is not supported: use prefer (TLS when offered) or disable"
                        .into(),
                ));
            }
            other => {
                return Err(ConnInfoError(format!(
                    "invalid sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
                )));
            }
        })
    }

    /// The libpq spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where to connect.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Host {
    /// TCP to this host name or address.
    Tcp(String, u16),
    /// A Unix socket: directory and port (the socket is `DIR/.s.PGSQL.PORT`).
    Unix(PathBuf, u16),
}

impl Host {
    /// `host:port` or the socket path, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Host::Tcp(h, p) if h.contains(':') => format!("[{h}]:{p}"),
            Host::Tcp(h, p) => format!("{h}:{p}"),
            Host::Unix(d, p) => format!("{}", d.join(format!(".s.PGSQL.{p}")).display()),
        }
    }
}

/// A bad connection string or parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid connection string: {0}")]
pub struct ConnInfoError(pub String);

/// Resolved connection parameters.
#[derive(Clone, Debug)]
pub struct ConnParams {
    /// Hosts to try, in order.
    pub hosts: Vec<Host>,
    /// Role name.
    pub user: String,
    /// Password, if any was given (string, `PGPASSWORD` or password file).
    pub password: Option<Password>,
    /// Database name (ignored by physical replication connections).
    pub dbname: String,
    /// `application_name` (matched against `synchronous_standby_names`).
    pub application_name: String,
    /// TLS policy.
    pub sslmode: SslMode,
    /// Root certificate file for verify-ca / verify-full (`system`: the OS roots).
    pub sslrootcert: Option<PathBuf>,
    /// Connection timeout.
    pub connect_timeout: Option<Duration>,
    /// TCP keepalives and user timeout (TCP connections only).
    pub tcp: TcpOptions,
}

/// libpq's `keepalives`, `keepalives_idle`, `keepalives_interval`, `keepalives_count` and
/// `tcp_user_timeout`. `None`: the operating system's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOptions {
    /// `SO_KEEPALIVE` (libpq's default: on).
    pub keepalives: bool,
    /// Idle time before the first probe (`TCP_KEEPIDLE`).
    pub keepalives_idle: Option<Duration>,
    /// Time between probes (`TCP_KEEPINTVL`).
    pub keepalives_interval: Option<Duration>,
    /// Probes lost before the connection is dropped (`TCP_KEEPCNT`).
    pub keepalives_count: Option<u32>,
    /// How long sent data may stay unacknowledged (`TCP_USER_TIMEOUT`).
    pub user_timeout: Option<Duration>,
}

impl Default for TcpOptions {
    fn default() -> Self {
        TcpOptions {
            keepalives: true,
            keepalives_idle: None,
            keepalives_interval: None,
            keepalives_count: None,
            user_timeout: None,
        }
    }
}

/// Linux's limits (`net/ipv4/tcp.c`: `MAX_TCP_KEEPIDLE`, `MAX_TCP_KEEPINTVL`,
/// `MAX_TCP_KEEPCNT`); `setsockopt` refuses larger values.
const MAX_KEEPALIVE_SECS: u64 = 32767;
const MAX_KEEPALIVE_COUNT: u64 = 127;

/// An integer parameter: whitespace around it allowed, as libpq's `parse_int_param`.
fn int_param(key: &str, v: &str, unit: &str, max: u64) -> Result<u64, ConnInfoError> {
    let n: i64 = v.trim().parse().map_err(|_| {
        ConnInfoError(format!(
            "{key} {v:?} is not an integer: give {unit} (0 for the system default)"
        ))
    })?;
    if n < 0 || n as u64 > max {
        return Err(ConnInfoError(format!(
            "{key} {v:?} is out of range: give 0 (the system default) to {max} {unit}"
        )));
    }
    Ok(n as u64)
}

impl TcpOptions {
    /// Reads the five parameters from a parsed connection string.
    fn parse(kv: &BTreeMap<String, String>) -> Result<TcpOptions, ConnInfoError> {
        let get = |k: &str| {
            kv.get(k)
                .map(String::as_str)
                .filter(|v| !v.trim().is_empty())
        };
        let mut t = TcpOptions::default();
        if let Some(v) = get("keepalives") {
            // libpq: any integer, non-zero is on.
            let n: i64 = v.trim().parse().map_err(|_| {
                ConnInfoError(format!(
                    "keepalives {v:?} is not an integer: use 1 (on, the default) or 0 (off)"
                ))
            })?;
            t.keepalives = n != 0;
        }
        let secs = |k: &str| -> Result<Option<Duration>, ConnInfoError> {
            match get(k) {
                None => Ok(None),
                Some(v) => Ok(Some(int_param(k, v, "seconds", MAX_KEEPALIVE_SECS)?)
                    .filter(|n| *n > 0)
                    .map(Duration::from_secs)),
            }
        };
        t.keepalives_idle = secs("keepalives_idle")?;
        t.keepalives_interval = secs("keepalives_interval")?;
        t.keepalives_count = match get("keepalives_count") {
            None => None,
            Some(v) => Some(int_param(
                "keepalives_count",
                v,
                "probes",
                MAX_KEEPALIVE_COUNT,
            )?)
            .filter(|n| *n > 0)
            .map(|n| n as u32),
        };
        t.user_timeout = match get("tcp_user_timeout") {
            None => None,
            Some(v) => Some(int_param(
                "tcp_user_timeout",
                v,
                "milliseconds",
                i32::MAX as u64,
            )?)
            .filter(|n| *n > 0)
            .map(Duration::from_millis),
        };
        Ok(t)
    }
}

fn parse_keyword_value(s: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ConnInfoError(format!("missing \"=\" after {key:?}")));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(e) => val.push(e),
                        None => break,
                    },
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => val.push(c),
                }
            }
            if !closed {
                return Err(ConnInfoError(format!(
                    "unterminated quoted value for {key:?}"
                )));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(e) = chars.next() {
                        val.push(e);
                    }
                } else {
                    val.push(c);
                }
            }
        }
        out.insert(key, val);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, ConnInfoError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| ConnInfoError(format!("bad percent-encoding in {s:?}")))?;
            let v = u8::from_str_radix(hex, 16)
                .map_err(|_| ConnInfoError(format!("bad percent-encoding in {s:?}")))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ConnInfoError(format!("percent-encoding in {s:?} is not UTF-8")))
}

fn parse_uri(s: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .ok_or_else(|| ConnInfoError("URI must start with postgresql:// or postgres://".into()))?;
    let mut out = BTreeMap::new();
    let (rest, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, h)) => {
            let (u, p) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !u.is_empty() {
                out.insert("user".into(), percent_decode(u)?);
            }
            if let Some(p) = p {
                out.insert("password".into(), percent_decode(p)?);
            }
            h
        }
        None => authority,
    };
    if !hostspec.is_empty() {
        let (mut hosts, mut ports) = (Vec::new(), Vec::new());
        for part in hostspec.split(',') {
            let (h, p) = if let Some(r) = part.strip_prefix('[') {
                let (h, after) = r
                    .split_once(']')
                    .ok_or_else(|| ConnInfoError(format!("unclosed [ in {part:?}")))?;
                (h.to_owned(), after.strip_prefix(':').unwrap_or(""))
            } else {
                match part.rsplit_once(':') {
                    Some((h, p)) => (h.to_owned(), p),
                    None => (part.to_owned(), ""),
                }
            };
            hosts.push(percent_decode(&h)?);
            ports.push(p.to_owned());
        }
        out.insert("host".into(), hosts.join(","));
        if ports.iter().any(|p| !p.is_empty()) {
            out.insert("port".into(), ports.join(","));
        }
    }
    if let Some(p) = path.filter(|p| !p.is_empty()) {
        out.insert("dbname".into(), percent_decode(p)?);
    }
    if let Some(q) = query {
        for kv in q.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ConnInfoError(format!("URI parameter {kv:?} has no value")))?;
            out.insert(percent_decode(k)?, percent_decode(v)?);
        }
    }
    Ok(out)
}

const KNOWN: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "application_name",
    "sslmode",
    "sslrootcert",
    "connect_timeout",
    "passfile",
    "replication",
    "options",
    "fallback_application_name",
    "target_session_attrs",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
];

/// Environment access, injectable for tests.
pub trait Env {
    /// A variable's value.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl ConnParams {
    /// Resolves a connection string with the process environment.
    pub fn parse(conninfo: &str, replication: bool) -> Result<ConnParams, ConnInfoError> {
        ConnParams::parse_with(conninfo, replication, &ProcessEnv)
    }

    /// Resolves a connection string with the given environment.
    pub fn parse_with(
        conninfo: &str,
        replication: bool,
        env: &dyn Env,
    ) -> Result<ConnParams, ConnInfoError> {
        let kv = parse_pairs(conninfo)?;
        let get = |k: &str, envname: &str| {
            kv.get(k)
                .cloned()
                .filter(|v| !v.is_empty())
                .or_else(|| env.var(envname))
        };
        let user = get("user", "PGUSER")
            .or_else(|| env.var("USER"))
            .unwrap_or_else(|| "postgres".into());
        let dbname = get("dbname", "PGDATABASE").unwrap_or_else(|| user.clone());
        let application_name = get("application_name", "PGAPPNAME")
            .or_else(|| kv.get("fallback_application_name").cloned())
            .unwrap_or_else(|| "pitr".into());
        let sslmode =
            SslMode::parse(&get("sslmode", "PGSSLMODE").unwrap_or_else(|| "prefer".into()))?;
        let sslrootcert = get("sslrootcert", "PGSSLROOTCERT")
            .map(PathBuf::from)
            .or_else(|| {
                let home = env.var("HOME")?;
                let p = Path::new(&home).join(".postgresql/root.crt");
                p.is_file().then_some(p)
            });
        let connect_timeout = parse_connect_timeout(get("connect_timeout", "PGCONNECT_TIMEOUT"))?;
        let tcp = TcpOptions::parse(&kv)?;
        let hoststr = get("host", "PGHOST").or_else(|| get("hostaddr", "PGHOSTADDR"));
        let portstr = get("port", "PGPORT").unwrap_or_else(|| "5432".into());
        let hosts = parse_hosts(hoststr, &portstr)?;
        let mut password = get("password", "PGPASSWORD").map(Password);
        if password.is_none() {
            let passfile = get("passfile", "PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| env.var("HOME").map(|h| Path::new(&h).join(".pgpass")));
            if let Some(pf) = passfile {
                let db = if replication {
                    "replication"
                } else {
                    dbname.as_str()
                };
                password = password_from_file(&pf, &hosts[0], db, &user).map(Password);
            }
        }
        Ok(ConnParams {
            hosts,
            user,
            password,
            dbname,
            application_name,
            sslmode,
            sslrootcert,
            connect_timeout,
            tcp,
        })
    }
}

/// Splits a connection string (URI or `key=value` pairs) into its parameters, all known.
fn parse_pairs(conninfo: &str) -> Result<BTreeMap<String, String>, ConnInfoError> {
    let s = conninfo.trim();
    let kv = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
        parse_uri(s)?
    } else if let Some((scheme, _)) = s
        .split_once("://")
        .filter(|(sch, _)| sch.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return Err(ConnInfoError(format!(
            "unsupported URI scheme {scheme:?}: use postgresql://user@host/db or key=value pairs"
        )));
    } else {
        parse_keyword_value(s)?
    };
    for k in kv.keys() {
        if !KNOWN.contains(&k.as_str()) {
            return Err(ConnInfoError(format!("unknown parameter {k:?}")));
        }
    }
    Ok(kv)
}

/// `connect_timeout` in seconds, as libpq: 0 means none, and less than 2 s counts as 2 s.
fn parse_connect_timeout(t: Option<String>) -> Result<Option<Duration>, ConnInfoError> {
    match t {
        Some(t) => {
            let secs: u64 = t.trim().parse().map_err(|_| {
                ConnInfoError(format!("connect_timeout {t:?} is not a number of seconds"))
            })?;
            Ok((secs > 0).then(|| Duration::from_secs(secs.max(2))))
        }
        None => Ok(None),
    }
}

/// The hosts to try from `host` (or `hostaddr`) and `port`, both comma-separated lists; no
/// host: the first Unix socket directory that holds the port's socket.
fn parse_hosts(hoststr: Option<String>, portstr: &str) -> Result<Vec<Host>, ConnInfoError> {
    let ports: Vec<u16> = portstr
        .split(',')
        .map(|p| {
            let p = if p.is_empty() { "5432" } else { p };
            p.trim()
                .parse::<u16>()
                .map_err(|_| ConnInfoError(format!("invalid port {p:?}")))
        })
        .collect::<Result<_, _>>()?;
    let hosts: Vec<Host> = match hoststr {
        None => {
            let port = ports[0];
            let dir = ["/var/run/postgresql", "/tmp"]
                .into_iter()
                .find(|d| Path::new(d).join(format!(".s.PGSQL.{port}")).exists())
                .unwrap_or("/var/run/postgresql");
            vec![Host::Unix(PathBuf::from(dir), port)]
        }
        Some(h) => {
            let names: Vec<&str> = h.split(',').collect();
            if ports.len() != 1 && ports.len() != names.len() {
                return Err(ConnInfoError(format!(
                    "{} hosts but {} ports",
                    names.len(),
                    ports.len()
                )));
            }
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let port = if ports.len() == 1 { ports[0] } else { ports[i] };
                    if n.starts_with('/') || n.starts_with('@') {
                        Host::Unix(PathBuf::from(n), port)
                    } else if n.is_empty() {
                        Host::Unix(PathBuf::from("/var/run/postgresql"), port)
                    } else {
                        Host::Tcp((*n).to_owned(), port)
                    }
                })
                .collect()
        }
    };
    Ok(hosts)
}

/// Splits a `.pgpass` line into its five fields (`\:` and `\\` escapes).
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(e), Some(f)) = (chars.next(), fields.last_mut()) {
                    f.push(e);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c);
                }
            }
        }
    }
    fields
}

/// Looks up a password as libpq's `passwordFromFile` does. Unix-socket hosts match
/// `localhost`. Files readable by group or others are ignored, with a warning.
pub(crate) fn password_from_file(path: &Path, host: &Host, db: &str, user: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            file = %path.display(),
            "password file has group or world access; permissions should be u=rw (0600) or less: ignored"
        );
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let (hostname, port) = match host {
        Host::Tcp(h, p) => (h.as_str(), *p),
        Host::Unix(_, p) => ("localhost", *p),
    };
    let port = port.to_string();
    for line in text.lines() {
        let l = line.trim_end_matches('\r');
        if l.trim_start().starts_with('#') || l.trim().is_empty() {
            continue;
        }
        let f = pgpass_fields(l);
        if f.len() != 5 {
            continue;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        if m(&f[0], hostname) && m(&f[1], &port) && m(&f[2], db) && m(&f[3], user) {
            return Some(f[4].clone());
        }
    }
    None
}
