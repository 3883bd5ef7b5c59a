//! `pitr stream` settings from flags, `PITR_*` variables and an optional TOML file.
//!
//! Precedence, highest first: command-line flags, `PITR_*` environment variables, the
//! `--config` file, built-in defaults. Unknown keys and bad values in the file are errors,
//! reported (with the file name) before anything connects.

use std::path::Path;
use std::time::Duration;

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::{Deserialize, Serialize};

use crate::cli::{LogFormat, StreamArgs, parse_bytes, parse_duration};

/// The file's keys (all optional).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamFile {
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
    /// Metrics address or "off".
    pub metrics_listen: String,
    /// "repo" or "spool".
    pub ack: String,
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
    pub log_format: String,
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}ms", d.as_millis()))
}

/// A configuration problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn from_user(m: &ArgMatches, id: &str) -> bool {
    matches!(
        m.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Merges flags/env (`args`, with their sources in `m`), the file, and defaults.
pub fn resolve(
    args: &StreamArgs,
    m: &ArgMatches,
    log_format: LogFormat,
    log_from_user: bool,
) -> Result<StreamSettings, ConfigError> {
    let file = match &args.config {
        Some(p) => load(p)?,
        None => StreamFile::default(),
    };
    let where_ = |k: &str| {
        format!(
            "{}: {k}",
            args.config
                .as_ref()
                .map_or_else(String::new, |p| p.display().to_string())
        )
    };
    let pick = |id: &str, flag: String, f: Option<String>| {
        if from_user(m, id) {
            flag
        } else {
            f.unwrap_or(flag)
        }
    };
    let source = pick("source", args.source.clone(), file.source.clone());
    let repo = match (&args.repo, &file.repo) {
        (Some(r), _) => r.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => {
            return Err(ConfigError(
                "no repo: give --repo, PITR_REPO, or repo = \"...\" in the --config file".into(),
            ));
        }
    };
    let no_slot = if from_user(m, "no_slot") {
        args.no_slot
    } else {
        file.no_slot.unwrap_or(args.no_slot)
    };
    let slot_name = pick("slot", args.slot.clone(), file.slot.clone());
    let dur = |id: &str, flag: Duration, f: &Option<String>| -> Result<Duration, ConfigError> {
        match f {
            Some(v) if !from_user(m, id) => {
                parse_duration(v).map_err(|e| ConfigError(format!("{}: {e}", where_(id))))
            }
            _ => Ok(flag),
        }
    };
    let partial_every = dur("partial_every", args.partial_every, &file.partial_every)?;
    let status_interval = dur(
        "status_interval",
        args.status_interval,
        &file.status_interval,
    )?;
    let shutdown_timeout = dur(
        "shutdown_timeout",
        args.shutdown_timeout,
        &file.shutdown_timeout,
    )?;
    let ack = pick("ack", args.ack.clone(), file.ack.clone());
    if ack != "repo" && ack != "spool" {
        return Err(ConfigError(format!(
            "{}: {ack:?} is not repo or spool",
            where_("ack")
        )));
    }
    let spool_dir = match (&args.spool_dir, &file.spool_dir) {
        (Some(d), _) => Some(d.display().to_string()),
        (None, d) => d.clone(),
    };
    let spool_max = match &file.spool_max {
        Some(v) if !from_user(m, "spool_max") => {
            parse_bytes(v).map_err(|e| ConfigError(format!("{}: {e}", where_("spool_max"))))?
        }
        _ => args.spool_max,
    };
    let ready_max_lag = match &file.ready_max_lag {
        Some(v) if !from_user(m, "ready_max_lag") => {
            parse_bytes(v).map_err(|e| ConfigError(format!("{}: {e}", where_("ready_max_lag"))))?
        }
        _ => args.ready_max_lag,
    };
    let ready_max_lag_time = dur(
        "ready_max_lag_time",
        args.ready_max_lag_time,
        &file.ready_max_lag_time,
    )?;
    let writer_heartbeat = dur(
        "writer_heartbeat",
        args.writer_heartbeat,
        &file.writer_heartbeat,
    )?;
    if writer_heartbeat < Duration::from_secs(1) {
        return Err(ConfigError(format!(
            "writer_heartbeat {writer_heartbeat:?} is too short: give at least 1s (--writer-heartbeat, PITR_WRITER_HEARTBEAT)"
        )));
    }
    if ack == "spool" && spool_dir.is_none() {
        return Err(ConfigError(
            "--ack spool needs --spool-dir DIR (a persistent local directory)".into(),
        ));
    }
    if ack == "spool" && no_slot {
        return Err(ConfigError(
            "--ack spool needs a replication slot: drop --no-slot".into(),
        ));
    }
    let metrics_listen = pick(
        "metrics_listen",
        args.metrics_listen.clone(),
        file.metrics_listen.clone(),
    );
    let log_format = match (&file.log_format, log_from_user) {
        (Some(f), false) => match f.as_str() {
            "text" | "json" => f.clone(),
            other => {
                return Err(ConfigError(format!(
                    "{}: {other:?} is not text or json",
                    where_("log_format")
                )));
            }
        },
        _ => match log_format {
            LogFormat::Text => "text".into(),
            LogFormat::Json => "json".into(),
        },
    };
    Ok(StreamSettings {
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
    })
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

/// The settings as TOML, with any password in the connection string masked.
pub fn render(s: &StreamSettings) -> String {
    let mut shown = s.clone();
    shown.source = mask_password(&s.source);
    toml::to_string(&shown).unwrap_or_default()
}

/// Masks `password=...` in a key/value string and the password of a URI.
pub fn mask_password(conninfo: &str) -> String {
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
