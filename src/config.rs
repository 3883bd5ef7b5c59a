//! `pitr stream` settings from flags, `PITR_*` variables and an optional TOML file, resolved
//! once into typed [`StreamSettings`].
//!
//! Invariants:
//! - Every setting of `pitr stream` goes through [`resolve`], with one precedence, highest
//!   first: command-line flags, `PITR_*` environment variables, the `--config` file, built-in
//!   defaults. Each resolved setting records where it came from ([`Source`]), and
//!   `--print-config` ([`render`]) shows it.
//! - Unknown keys and bad values in the file are errors, reported (with the file name) before
//!   anything connects; so are bad combinations (`--ack spool` without a spool directory,
//!   retention without a schedule). Values are parsed here, once: the rest of the program
//!   sees enums, durations and addresses, never the strings.
//! - The process-wide timeouts the stream uses that are not settings are the constants below.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::{Deserialize, Serialize};

use crate::cli::{LogFormat, StreamArgs, parse_bytes, parse_duration};
use crate::repo::prune::Retention;
use crate::server::schedule::{Schedule, parse_at};

/// Longest wait between reconnection attempts of `pitr stream`.
pub(crate) const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// How often `pitr stream` checks its slot's retention and the repo's gap state.
pub(crate) const SLOT_CHECK_EVERY: Duration = Duration::from_secs(5);
/// How long a scheduled backup waits for the stream to archive its WAL.
pub(crate) const SCHEDULED_BACKUP_WAL_TIMEOUT: Duration = Duration::from_secs(600);
/// The label of scheduled backups.
pub(crate) const SCHEDULED_BACKUP_LABEL: &str = "scheduled";

/// The file's keys (all optional).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamFile {
    /// `--source`.
    pub source: Option<String>,
    /// `--repo`.
    pub repo: Option<String>,
    /// `--slot`.
    pub slot: Option<String>,
    /// `--no-slot`.
    pub no_slot: Option<bool>,
    /// `--partial-every`, e.g. "1s".
    pub partial_every: Option<String>,
    /// `--status-interval`.
    pub status_interval: Option<String>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<String>,
    /// `--ack`: "repo" or "spool".
    pub ack: Option<String>,
    /// `--spool-dir`.
    pub spool_dir: Option<String>,
    /// `--spool-max`, e.g. "4GB".
    pub spool_max: Option<String>,
    /// `--shutdown-timeout`, e.g. "20s".
    pub shutdown_timeout: Option<String>,
    /// `--ready-max-lag`, e.g. "256MB".
    pub ready_max_lag: Option<String>,
    /// `--ready-max-lag-time`, e.g. "1m".
    pub ready_max_lag_time: Option<String>,
    /// `--writer-heartbeat`, e.g. "60s".
    pub writer_heartbeat: Option<String>,
    /// `--log-format`: "text" or "json".
    pub log_format: Option<String>,
    /// `--backup-every`, e.g. "24h".
    pub backup_every: Option<String>,
    /// `--backup-at`, e.g. "02:00".
    pub backup_at: Option<String>,
    /// `--keep-full`.
    pub keep_full: Option<usize>,
    /// `--keep-within`, e.g. "7d".
    pub keep_within: Option<String>,
}

/// When WAL counts as safe (`--ack`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ack {
    /// Once durable in the repo.
    Repo,
    /// Once fsync'd in the local spool.
    Spool,
}

/// Where `/metrics` and the probes are served (`--metrics-listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// Not served ("off", or empty).
    Off,
    /// Served on this address.
    On(SocketAddr),
}

impl MetricsListen {
    /// Parses `HOST:PORT` or `off` (an empty value is off too).
    pub(crate) fn parse(s: &str) -> Result<MetricsListen, ConfigError> {
        match s {
            "off" | "" => Ok(MetricsListen::Off),
            s => s.parse().map(MetricsListen::On).map_err(|_| {
                ConfigError(format!(
                    "invalid --metrics-listen {s:?}: use HOST:PORT, like 127.0.0.1:9188, or off"
                ))
            }),
        }
    }

    /// The address, when served.
    pub(crate) fn addr(self) -> Option<SocketAddr> {
        match self {
            MetricsListen::Off => None,
            MetricsListen::On(a) => Some(a),
        }
    }
}

impl Serialize for MetricsListen {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            MetricsListen::Off => s.serialize_str("off"),
            MetricsListen::On(a) => s.serialize_str(&a.to_string()),
        }
    }
}

/// `--backup-at`: a daily wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupAt {
    /// Hour, 0-23.
    pub hour: i8,
    /// Minute, 0-59.
    pub minute: i8,
}

impl Serialize for BackupAt {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:02}:{:02}", self.hour, self.minute))
    }
}

/// Where a resolved setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// A `PITR_*` environment variable (its name).
    Env(String),
    /// The `--config` file.
    File,
    /// The built-in default.
    Default,
}

/// How the user gave a flag's value, as clap saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    /// On the command line.
    Flag,
    /// In its `PITR_*` variable.
    Env,
}

/// Resolved settings.
#[derive(Debug, Clone, Serialize)]
pub struct StreamSettings {
    /// Connection string (printed with any password removed).
    pub source: String,
    /// Repo.
    pub repo: String,
    /// Slot, if any.
    pub slot: Option<String>,
    /// Partial publish interval.
    #[serde(serialize_with = "ser_duration")]
    pub partial_every: Duration,
    /// Status interval.
    #[serde(serialize_with = "ser_duration")]
    pub status_interval: Duration,
    /// Metrics address, or off.
    pub metrics_listen: MetricsListen,
    /// When WAL counts as safe.
    pub ack: Ack,
    /// Spool directory (with ack = "spool").
    pub spool_dir: Option<String>,
    /// Spool limit in bytes.
    pub spool_max: u64,
    /// Shutdown deadline.
    #[serde(serialize_with = "ser_duration")]
    pub shutdown_timeout: Duration,
    /// Readiness: most bytes the archive may trail the server by.
    pub ready_max_lag: u64,
    /// Readiness: how long ago the server may have been where the archive is.
    #[serde(serialize_with = "ser_duration")]
    pub ready_max_lag_time: Duration,
    /// Heartbeat interval in the repo's `writers/`.
    #[serde(serialize_with = "ser_duration")]
    pub writer_heartbeat: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Scheduled backups: this long after the last one.
    #[serde(
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub backup_every: Option<Duration>,
    /// Scheduled backups: daily at this time (when `backup_every` is not set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup_at: Option<BackupAt>,
    /// Retention after each scheduled backup: the newest N backups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_full: Option<usize>,
    /// Retention after each scheduled backup: what restores within this window.
    #[serde(
        serialize_with = "ser_opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_within: Option<Duration>,
    /// Where each setting came from, by key (shown by `--print-config`).
    #[serde(skip)]
    pub sources: BTreeMap<&'static str, Source>,
    /// The `--config` file, if any.
    #[serde(skip)]
    pub config_file: Option<std::path::PathBuf>,
}

impl StreamSettings {
    /// The backup schedule, if any (`--backup-every` wins over `--backup-at`).
    pub(crate) fn schedule(&self) -> Option<Schedule> {
        match (self.backup_every, self.backup_at) {
            (Some(d), _) => Some(Schedule::Every(d)),
            (None, Some(at)) => Some(Schedule::At(at.hour, at.minute)),
            (None, None) => None,
        }
    }

    /// Retention after each scheduled backup, if any.
    pub(crate) fn retention(&self) -> Option<Retention> {
        (self.keep_full.is_some() || self.keep_within.is_some()).then_some(Retention {
            keep_full: self.keep_full,
            keep_within: self.keep_within,
        })
    }

    /// The spool directory, with `--ack spool`.
    pub(crate) fn spool(&self) -> Option<std::path::PathBuf> {
        match (self.ack, &self.spool_dir) {
            (Ack::Spool, Some(d)) => Some(std::path::PathBuf::from(d)),
            _ => None,
        }
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

fn ser_opt_duration<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// How clap says the user gave each flag of `pitr stream` (`top`: the whole command line,
/// for the global `--log-format`; `sub`: the `stream` subcommand's matches).
pub fn given_by<'a>(
    top: &'a ArgMatches,
    sub: &'a ArgMatches,
) -> impl Fn(&str) -> Option<Given> + 'a {
    move |id: &str| {
        let of = |m: &ArgMatches| match m.value_source(id) {
            Some(ValueSource::CommandLine) => Some(Given::Flag),
            Some(ValueSource::EnvVariable) => Some(Given::Env),
            _ => None,
        };
        of(sub).or_else(|| if id == "log_format" { of(top) } else { None })
    }
}

/// Merges the layers of one setting at a time, recording where each came from.
struct Merge<'a> {
    given: &'a dyn Fn(&str) -> Option<Given>,
    file: Option<&'a Path>,
    sources: BTreeMap<&'static str, Source>,
}

impl Merge<'_> {
    /// `FILE: key`, the prefix of a bad value in the file.
    fn where_(&self, k: &str) -> String {
        format!(
            "{}: {k}",
            self.file
                .map_or_else(String::new, |p| p.display().to_string())
        )
    }

    /// Whether the user gave `id` (flag or variable); records that source.
    fn user(&mut self, id: &'static str) -> bool {
        match (self.given)(id) {
            Some(Given::Flag) => {
                self.sources.insert(id, Source::Flag);
                true
            }
            Some(Given::Env) => {
                self.sources
                    .insert(id, Source::Env(format!("PITR_{}", id.to_uppercase())));
                true
            }
            None => false,
        }
    }

    /// The flag's value when the user gave it, else the file's (parsed), else the flag's
    /// default.
    fn pick<T, F: ?Sized>(
        &mut self,
        id: &'static str,
        flag: T,
        file: Option<&F>,
        parse: impl Fn(&F) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        if self.user(id) {
            return Ok(flag);
        }
        match file {
            Some(v) => {
                self.sources.insert(id, Source::File);
                parse(v).map_err(|e| ConfigError(format!("{}: {e}", self.where_(id))))
            }
            None => {
                self.sources.insert(id, Source::Default);
                Ok(flag)
            }
        }
    }

    fn duration(
        &mut self,
        id: &'static str,
        flag: Duration,
        file: &Option<String>,
    ) -> Result<Duration, ConfigError> {
        self.pick(id, flag, file.as_deref(), parse_duration)
    }

    fn bytes(
        &mut self,
        id: &'static str,
        flag: u64,
        file: &Option<String>,
    ) -> Result<u64, ConfigError> {
        self.pick(id, flag, file.as_deref(), parse_bytes)
    }

    fn string(&mut self, id: &'static str, flag: &str, file: &Option<String>) -> String {
        let keep = |v: &str| Ok::<_, String>(v.to_owned());
        self.pick(id, flag.to_owned(), file.as_deref(), keep)
            .unwrap_or_else(|_| flag.to_owned())
    }
}

/// Merges flags/env (`args`; `given` says which the user gave, see [`given_by`]), the file,
/// and defaults. `log_format` is the global flag's value.
pub fn resolve(
    args: &StreamArgs,
    given: &dyn Fn(&str) -> Option<Given>,
    log_format: LogFormat,
) -> Result<StreamSettings, ConfigError> {
    let file = match &args.config {
        Some(p) => load(p)?,
        None => StreamFile::default(),
    };
    let mut m = Merge {
        given,
        file: args.config.as_deref(),
        sources: BTreeMap::new(),
    };
    let source = m.string("source", &args.source, &file.source);
    let repo = match (&args.repo, &file.repo) {
        (Some(r), _) => {
            m.user("repo");
            r.clone()
        }
        (None, Some(r)) => {
            m.sources.insert("repo", Source::File);
            r.clone()
        }
        (None, None) => {
            return Err(ConfigError(
                "no repo: give --repo, PITR_REPO, or repo = \"...\" in the --config file".into(),
            ));
        }
    };
    let no_slot = m.pick("no_slot", args.no_slot, file.no_slot.as_ref(), |b| Ok(*b))?;
    let slot_name = m.string("slot", &args.slot, &file.slot);
    let partial_every = m.duration("partial_every", args.partial_every, &file.partial_every)?;
    let status_interval = m.duration(
        "status_interval",
        args.status_interval,
        &file.status_interval,
    )?;
    let shutdown_timeout = m.duration(
        "shutdown_timeout",
        args.shutdown_timeout,
        &file.shutdown_timeout,
    )?;
    let (ack, spool_dir) = ack_and_spool(&mut m, args, &file)?;
    let spool_max = m.bytes("spool_max", args.spool_max, &file.spool_max)?;
    let ready_max_lag = m.bytes("ready_max_lag", args.ready_max_lag, &file.ready_max_lag)?;
    let ready_max_lag_time = m.duration(
        "ready_max_lag_time",
        args.ready_max_lag_time,
        &file.ready_max_lag_time,
    )?;
    let writer_heartbeat = m.duration(
        "writer_heartbeat",
        args.writer_heartbeat,
        &file.writer_heartbeat,
    )?;
    check_combinations(writer_heartbeat, ack, spool_dir.is_some(), no_slot)?;
    let listen_s = m.string("metrics_listen", &args.metrics_listen, &file.metrics_listen);
    let log_format = m.pick(
        "log_format",
        log_format,
        file.log_format.as_deref(),
        |f| match f {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("{other:?} is not text or json")),
        },
    )?;
    let metrics_listen = MetricsListen::parse(&listen_s)?;
    let (backup_every, backup_at) = schedule(&mut m, args, &file)?;
    let (keep_full, keep_within) = retention(&mut m, args, &file)?;
    let settings = StreamSettings {
        source,
        repo,
        slot: (!no_slot).then_some(slot_name),
        partial_every,
        status_interval,
        metrics_listen,
        ack,
        spool_dir,
        spool_max,
        shutdown_timeout,
        ready_max_lag,
        ready_max_lag_time,
        writer_heartbeat,
        log_format,
        backup_every,
        backup_at,
        keep_full,
        keep_within,
        sources: m.sources,
        config_file: args.config.clone(),
    };
    check_retention(&settings)?;
    Ok(settings)
}

/// `--ack` and `--spool-dir`.
fn ack_and_spool(
    m: &mut Merge<'_>,
    args: &StreamArgs,
    file: &StreamFile,
) -> Result<(Ack, Option<String>), ConfigError> {
    let ack_s = m.string("ack", &args.ack, &file.ack);
    let ack = match ack_s.as_str() {
        "repo" => Ack::Repo,
        "spool" => Ack::Spool,
        _ => {
            return Err(ConfigError(format!(
                "{}: {ack_s:?} is not repo or spool",
                m.where_("ack")
            )));
        }
    };
    let spool_dir = match (&args.spool_dir, &file.spool_dir) {
        (Some(d), _) => {
            m.user("spool_dir");
            Some(d.display().to_string())
        }
        (None, d) => {
            let from = if d.is_some() {
                Source::File
            } else {
                Source::Default
            };
            m.sources.insert("spool_dir", from);
            d.clone()
        }
    };
    Ok((ack, spool_dir))
}

/// `--keep-full` and `--keep-within`.
fn retention(
    m: &mut Merge<'_>,
    args: &StreamArgs,
    file: &StreamFile,
) -> Result<(Option<usize>, Option<Duration>), ConfigError> {
    let keep_full = m.pick("keep_full", args.keep_full, file.keep_full.as_ref(), |n| {
        Ok(Some(*n))
    })?;
    let keep_within = m.pick(
        "keep_within",
        args.keep_within,
        file.keep_within.as_deref(),
        |v| parse_duration(v).map(Some),
    )?;
    Ok((keep_full, keep_within))
}

/// The settings that must agree with each other.
fn check_combinations(
    writer_heartbeat: Duration,
    ack: Ack,
    spool_dir: bool,
    no_slot: bool,
) -> Result<(), ConfigError> {
    if writer_heartbeat < Duration::from_secs(1) {
        return Err(ConfigError(format!(
            "writer_heartbeat {writer_heartbeat:?} is too short: give at least 1s (--writer-heartbeat, PITR_WRITER_HEARTBEAT)"
        )));
    }
    if ack == Ack::Spool && !spool_dir {
        return Err(ConfigError(
            "--ack spool needs --spool-dir DIR (a persistent local directory)".into(),
        ));
    }
    if ack == Ack::Spool && no_slot {
        return Err(ConfigError(
            "--ack spool needs a replication slot: drop --no-slot".into(),
        ));
    }
    Ok(())
}

/// `--backup-every` / `--backup-at`, one setting: a schedule the user gives (flag or
/// variable) replaces the file's, whichever key each uses.
fn schedule(
    m: &mut Merge<'_>,
    args: &StreamArgs,
    file: &StreamFile,
) -> Result<(Option<Duration>, Option<BackupAt>), ConfigError> {
    let at = |s: &str| parse_at(s).map(|(hour, minute)| BackupAt { hour, minute });
    let from_user = m.user("backup_every") | m.user("backup_at");
    if from_user {
        let every = args.backup_every;
        let at = args
            .backup_at
            .as_deref()
            .map(at)
            .transpose()
            .map_err(ConfigError)?;
        return Ok((every, at));
    }
    let every = m.pick("backup_every", None, file.backup_every.as_deref(), |v| {
        parse_duration(v).map(Some)
    })?;
    let at = m.pick("backup_at", None, file.backup_at.as_deref(), |v| {
        at(v).map(Some)
    })?;
    Ok((every, at))
}

/// Retention applies after scheduled backups only, and keeps at least one.
fn check_retention(s: &StreamSettings) -> Result<(), ConfigError> {
    if s.keep_full == Some(0) {
        return Err(ConfigError("--keep-full must be at least 1".into()));
    }
    if s.retention().is_some() && s.schedule().is_none() {
        return Err(ConfigError(
            "--keep-full/--keep-within in pitr stream apply after scheduled backups: add --backup-every or --backup-at (or run pitr prune)".into(),
        ));
    }
    Ok(())
}

fn load(path: &Path) -> Result<StreamFile, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("--config {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let msg = e.message().to_owned();
        let at = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        match at {
            Some(line) => ConfigError(format!("--config {}, line {line}: {msg}", path.display())),
            None => ConfigError(format!("--config {}: {msg}", path.display())),
        }
    })
}

/// The settings as TOML, with any password in the connection string masked, each line
/// followed by a comment saying where its value came from.
pub fn render(s: &StreamSettings) -> String {
    let mut shown = s.clone();
    shown.source = mask_password(&s.source);
    let text = toml::to_string(&shown).unwrap_or_default();
    let mut out = String::with_capacity(text.len() * 2);
    for line in text.lines() {
        out.push_str(line);
        let key = line.split_once(" = ").map(|(k, _)| k.trim());
        if let Some(src) = key.and_then(|k| s.sources.get(k)) {
            let flag = key.unwrap_or_default().replace('_', "-");
            let from = match src {
                Source::Flag => format!("--{flag}"),
                Source::Env(v) => v.clone(),
                Source::File => match &s.config_file {
                    Some(p) => format!("--config {}", p.display()),
                    None => "--config".to_owned(),
                },
                Source::Default => "default".to_owned(),
            };
            out.push_str("  # ");
            out.push_str(&from);
        }
        out.push('\n');
    }
    out
}

/// Masks `password=...` in a key/value string and the password of a URI.
pub(crate) fn mask_password(conninfo: &str) -> String {
    if let Some(rest) = conninfo
        .strip_prefix("postgresql://")
        .or_else(|| conninfo.strip_prefix("postgres://"))
    {
        let scheme = &conninfo[..conninfo.len() - rest.len()];
        if let Some((userinfo, tail)) = rest.split_once('@')
            && let Some((user, _)) = userinfo.split_once(':')
        {
            return format!("{scheme}{user}:********@{tail}");
        }
        return conninfo.to_owned();
    }
    let mut out = Vec::new();
    let mut skip_quoted = false;
    for tok in conninfo.split_whitespace() {
        if skip_quoted {
            if tok.ends_with('\'') && !tok.ends_with("\\'") {
                skip_quoted = false;
            }
            continue;
        }
        if let Some(v) = tok.strip_prefix("password=") {
            out.push("password=********".to_owned());
            skip_quoted = v.starts_with('\'') && (v.len() == 1 || !v.ends_with('\''));
        } else {
            out.push(tok.to_owned());
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::{CommandFactory, FromArgMatches};

    /// Resolves `pitr stream ARGS` with `file` as the `--config` file; `env` names the flags
    /// whose value stands for a `PITR_*` variable (clap reads the real environment, which a
    /// test must not change).
    fn resolve_with(
        args: &[&str],
        file: Option<&str>,
        env: &[&str],
    ) -> Result<StreamSettings, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut argv = vec!["pitr".to_owned(), "stream".to_owned()];
        if let Some(text) = file {
            let p = dir.path().join("pitr.toml");
            std::fs::write(&p, text).unwrap();
            argv.push("--config".into());
            argv.push(p.display().to_string());
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        let matches = Cli::command().try_get_matches_from(&argv).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let Command::Stream(a) = cli.command else {
            unreachable!()
        };
        let sub = matches.subcommand_matches("stream").unwrap();
        let real = given_by(&matches, sub);
        let given = |id: &str| match real(id) {
            Some(_) if env.contains(&id) => Some(Given::Env),
            g => g,
        };
        resolve(&a, &given, cli.log_format)
    }

    fn err(args: &[&str], file: &str) -> String {
        let e = resolve_with(args, Some(file), &[]).unwrap_err().to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    }

    #[test]
    fn the_file_fills_what_flags_leave_out_and_defaults_the_rest() {
        let s = resolve_with(
            &[],
            Some(
                "repo = \"/f\"\npartial_every = \"2s\"\nslot = \"fileslot\"\nack = \"spool\"\nspool_dir = \"/sp\"\nbackup_every = \"24h\"\nkeep_full = 3\nkeep_within = \"7d\"\nlog_format = \"json\"\n",
            ),
            &[],
        )
        .unwrap();
        assert_eq!(s.repo, "/f");
        assert_eq!(s.partial_every, Duration::from_secs(2));
        assert_eq!(s.slot.as_deref(), Some("fileslot"));
        assert_eq!(s.ack, Ack::Spool);
        assert_eq!(s.spool().unwrap(), Path::new("/sp"));
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(
            s.schedule(),
            Some(Schedule::Every(Duration::from_secs(86400)))
        );
        let r = s.retention().unwrap();
        assert_eq!(r.keep_full, Some(3));
        assert_eq!(r.keep_within, Some(Duration::from_secs(7 * 86400)));
        for k in [
            "repo",
            "partial_every",
            "slot",
            "ack",
            "backup_every",
            "keep_full",
        ] {
            assert_eq!(s.sources[k], Source::File, "{k}");
        }
        // Defaults where nobody said anything.
        assert_eq!(s.status_interval, Duration::from_secs(10));
        assert_eq!(
            s.metrics_listen,
            MetricsListen::On("127.0.0.1:9188".parse().unwrap())
        );
        assert_eq!(s.sources["status_interval"], Source::Default);
        assert_eq!(s.sources["metrics_listen"], Source::Default);
    }

    #[test]
    fn flags_and_variables_beat_the_file() {
        let file = "repo = \"/f\"\npartial_every = \"2s\"\nready_max_lag = \"64MB\"\nkeep_full = 3\nbackup_every = \"1h\"\nlog_format = \"json\"\n";
        let s = resolve_with(
            &[
                "--partial-every",
                "500ms",
                "--ready-max-lag",
                "1GB",
                "--keep-full",
                "5",
                "--repo",
                "/flag",
                "--log-format",
                "text",
            ],
            Some(file),
            &["ready_max_lag", "keep_full"],
        )
        .unwrap();
        assert_eq!(s.partial_every, Duration::from_millis(500));
        assert_eq!(s.sources["partial_every"], Source::Flag);
        assert_eq!(s.ready_max_lag, 1 << 30);
        assert_eq!(
            s.sources["ready_max_lag"],
            Source::Env("PITR_READY_MAX_LAG".into())
        );
        assert_eq!(s.keep_full, Some(5));
        assert_eq!(s.sources["keep_full"], Source::Env("PITR_KEEP_FULL".into()));
        assert_eq!(s.repo, "/flag");
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.sources["log_format"], Source::Flag);
    }

    #[test]
    fn a_schedule_given_by_the_user_replaces_the_files() {
        let file = "repo = \"/f\"\nbackup_every = \"24h\"\n";
        let s = resolve_with(&["--backup-at", "02:30"], Some(file), &[]).unwrap();
        assert_eq!(s.schedule(), Some(Schedule::At(2, 30)));
        assert_eq!(s.backup_every, None);
        let s = resolve_with(&[], Some("repo = \"/f\"\nbackup_at = \"03:00\"\n"), &[]).unwrap();
        assert_eq!(s.schedule(), Some(Schedule::At(3, 0)));
        let s = resolve_with(&["--backup-every", "6h"], Some(file), &["backup_every"]).unwrap();
        assert_eq!(
            s.schedule(),
            Some(Schedule::Every(Duration::from_secs(6 * 3600)))
        );
        assert_eq!(
            s.sources["backup_every"],
            Source::Env("PITR_BACKUP_EVERY".into())
        );
    }

    #[test]
    fn bad_values_and_combinations_are_one_line_errors() {
        let e = err(&[], "repo = \"/r\"\npartial_evry = \"1s\"\n");
        assert!(e.contains("line 2: unknown field `partial_evry`"), "{e}");
        let e = err(&[], "repo = \"/r\"\npartial_every = \"often\"\n");
        assert!(
            e.contains("pitr.toml: partial_every: invalid duration"),
            "{e}"
        );
        let e = err(&[], "repo = \"/r\"\nack = \"sometimes\"\n");
        assert!(
            e.ends_with(": ack: \"sometimes\" is not repo or spool"),
            "{e}"
        );
        let e = err(&[], "repo = \"/r\"\nlog_format = \"xml\"\n");
        assert!(
            e.ends_with(": log_format: \"xml\" is not text or json"),
            "{e}"
        );
        let e = err(&[], "repo = \"/r\"\nspool_max = \"lots\"\n");
        assert!(e.contains("spool_max: invalid size"), "{e}");
        let e = err(&[], "repo = \"/r\"\nbackup_at = \"25:00\"\n");
        assert!(
            e.ends_with("backup_at: invalid --backup-at \"25:00\": use HH:MM, like 02:00"),
            "{e}"
        );
        let e = err(&["--backup-at", "7"], "repo = \"/r\"\n");
        assert_eq!(e, "invalid --backup-at \"7\": use HH:MM, like 02:00");
        let e = err(&[], "repo = \"/r\"\nbackup_every = \"1h\"\nkeep_full = 0\n");
        assert_eq!(e, "--keep-full must be at least 1");
        let e = err(&["--keep-within", "7d"], "repo = \"/r\"\n");
        assert!(
            e.starts_with("--keep-full/--keep-within in pitr stream apply after scheduled backups"),
            "{e}"
        );
        let e = err(&[], "repo = \"/r\"\nmetrics_listen = \"nowhere\"\n");
        assert_eq!(
            e,
            "invalid --metrics-listen \"nowhere\": use HOST:PORT, like 127.0.0.1:9188, or off"
        );
        let e = err(&[], "repo = \"/r\"\nack = \"spool\"\n");
        assert_eq!(
            e,
            "--ack spool needs --spool-dir DIR (a persistent local directory)"
        );
        let e = err(&[], "repo = \"/r\"\nwriter_heartbeat = \"100ms\"\n");
        assert!(e.starts_with("writer_heartbeat 100ms is too short"), "{e}");
        let e = resolve_with(&[], None, &[]).unwrap_err().to_string();
        assert!(e.starts_with("no repo"), "{e}");
    }

    #[test]
    fn print_config_shows_each_setting_with_its_source() {
        let file = "source = \"host=db password='s e cret'\"\nrepo = \"/f\"\nbackup_at = \"02:00\"\nkeep_within = \"7d\"\nmetrics_listen = \"off\"\n";
        let s = resolve_with(
            &["--partial-every", "500ms", "--ready-max-lag", "1GB"],
            Some(file),
            &["ready_max_lag"],
        )
        .unwrap();
        let out = render(&s);
        let cfg = s.config_file.as_ref().unwrap().display().to_string();
        for want in [
            format!("source = \"host=db password=********\"  # --config {cfg}"),
            format!("repo = \"/f\"  # --config {cfg}"),
            "partial_every = \"500ms\"  # --partial-every".to_owned(),
            "ready_max_lag = 1073741824  # PITR_READY_MAX_LAG".to_owned(),
            "status_interval = \"10000ms\"  # default".to_owned(),
            format!("metrics_listen = \"off\"  # --config {cfg}"),
            "ack = \"repo\"  # default".to_owned(),
            "log_format = \"text\"  # default".to_owned(),
            format!("backup_at = \"02:00\"  # --config {cfg}"),
            format!("keep_within = \"604800000ms\"  # --config {cfg}"),
        ] {
            assert!(out.lines().any(|l| l == want), "{want:?} not in:\n{out}");
        }
        assert!(
            !out.contains("cret") && !out.contains("backup_every"),
            "{out}"
        );
        // Still TOML: it parses back (comments ignored).
        let back: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(back["slot"].as_str(), Some("pitr"));
    }
}
