//! `pitr restore --verify --metrics-file FILE`: the restore test's result as Prometheus text
//! exposition, for node_exporter's textfile collector (`--collector.textfile.directory`), so
//! that a failed restore test, or none passing for days, can be alerted on
//! (docs/prometheus-alerts.yml, `PitrRestoreTestFailed`, `PitrRestoreTestStale`).
//!
//! # Invariants
//!
//! - **Written on every outcome once the arguments are accepted**: a passing run writes
//!   `pitr_restore_verify_success 1`; every failure after that (the repo cannot be opened, the
//!   plan is refused, the restore or the verify setup fails, a check fails, stdout cannot be
//!   written, SIGINT or SIGTERM during `--verify`: exit 130) writes `0`. So a failure never
//!   leaves an earlier success in place. Refused arguments (a usage error, a `--to` that is not
//!   a time) write nothing: no test ran. A process killed outright writes nothing either.
//! - **Atomic and durable**: the text goes to `.NAME.PID.tmp` in FILE's directory (not
//!   `*.prom`, so the collector never reads it half-written), mode 0644 whatever the umask (the
//!   collector runs as another user), fsync'd, renamed over FILE, directory fsync'd
//!   ([`crate::crashsafe::publish_with_mode`]). A crash leaves the old file, or the new one.
//! - **`pitr_restore_verify_last_success_timestamp_seconds` is never made up**: it is this run's
//!   end when this run passed; after a failure it is carried over from the previous FILE only
//!   from the exact line pitr writes for the same `repo` label, with a finite time after 0 and
//!   not in the future. An absent, unreadable, oversized or corrupt previous file, or another
//!   repo's, carries nothing over: the metric is then absent, which `PitrRestoreTestStale`
//!   alerts on (pessimistic: a lost success alerts, a made-up one would hide a failure).
//! - The per-run figures (RTO, recovery time, WAL replayed) are exported only when `--verify`
//!   produced a report, for this run: never a value left over from an earlier run.
//! - The `repo` label never holds credentials: of a URL only the scheme, host and path are
//!   kept (no user info, no `?options`); a local repo is its absolute path.
//! - Bounded: at most [`MAX_PREVIOUS`] bytes of the previous file are read.
//!
//! Rendering and the carry-over are pure functions ([`render`], [`carried_success`]),
//! unit-tested below; [`Recorder`] does the I/O.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::cli::RestoreArgs;
use crate::crashsafe;
use crate::restore::cmd::CmdError;
use crate::restore::verify::Report;

/// Most bytes read from the previous file (pitr writes well under 2 KiB).
pub(crate) const MAX_PREVIOUS: u64 = 1 << 20;

/// The metric whose value is carried over from the previous file after a failure.
const LAST_SUCCESS: &str = "pitr_restore_verify_last_success_timestamp_seconds";

/// Why the metrics file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TextfileError {
    /// FILE's directory does not take a new file (checked before anything is restored).
    #[error("--metrics-file: cannot create a file in {}", dir.display())]
    Probe {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Writing FILE failed (a [`crate::crashsafe`] publish error: which step, which path).
    #[error("--metrics-file")]
    Publish(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One run's result, as the file states it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    /// The `repo` label ([`repo_label`]).
    pub(crate) repo: String,
    /// The run passed.
    pub(crate) success: bool,
    /// When the run ended (Unix seconds).
    pub(crate) run_at: f64,
    /// When a run last passed (Unix seconds), if known.
    pub(crate) last_success: Option<f64>,
    /// This run's figures, when `--verify` produced a report.
    pub(crate) figures: Option<Figures>,
}

/// The figures of a `--verify` report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Figures {
    /// Restore plus recovery.
    pub(crate) rto_seconds: f64,
    /// Starting PostgreSQL to the end of recovery.
    pub(crate) recovery_seconds: f64,
    /// WAL replayed.
    pub(crate) wal_replayed_bytes: u64,
}

impl Figures {
    fn of(r: &Report) -> Figures {
        Figures {
            rto_seconds: r.rto_seconds,
            recovery_seconds: r.recovery_seconds,
            wal_replayed_bytes: r.wal_replayed_bytes,
        }
    }
}

/// `--metrics-file`, checked; records the outcome of `pitr restore` ([`Recorder::finish`]).
#[derive(Debug)]
pub(crate) struct Recorder {
    /// FILE and the repo label; `None` without `--metrics-file`.
    target: Option<(PathBuf, String)>,
}

impl Recorder {
    /// Checks `--metrics-file` (before anything else is done): a `*.prom` name, and a
    /// directory that takes a new file (clap has checked that `--verify` is given and
    /// `--dry-run` is not; both are checked again here for callers that build the arguments).
    pub(crate) fn from_args(a: &RestoreArgs) -> Result<Recorder, CmdError> {
        let Some(file) = &a.metrics_file else {
            return Ok(Recorder { target: None });
        };
        if !a.verify || a.dry_run {
            return Err(CmdError::Usage(
                "--metrics-file records the result of a restore test: add --verify, without --dry-run".into(),
            ));
        }
        if file.extension().is_none_or(|e| e != "prom") {
            return Err(CmdError::Usage(format!(
                "--metrics-file {}: node_exporter's textfile collector reads only *.prom files: name it like pitr-restore.prom",
                file.display()
            )));
        }
        let dir = parent_dir(file);
        if !dir.is_dir() {
            return Err(CmdError::Usage(format!(
                "--metrics-file {}: no directory {} (point it into the textfile collector's directory)",
                file.display(),
                dir.display()
            )));
        }
        // A directory the run cannot write in would only show after the whole restore.
        let tmp = tmp_path(file);
        std::fs::File::create(&tmp)
            .and_then(|_| std::fs::remove_file(&tmp))
            .map_err(|source| TextfileError::Probe {
                dir: dir.to_path_buf(),
                source,
            })?;
        Ok(Recorder {
            target: Some((file.clone(), repo_label(&a.repo))),
        })
    }

    /// Writes FILE for the outcome `res` of the run (and its `--verify` report, if it got
    /// that far), then returns `res`; a failure to write FILE fails a run that had passed,
    /// and is logged when the run had failed anyway (its own error is the one to report).
    pub(crate) fn finish(
        &self,
        res: Result<ExitCode, CmdError>,
        report: Option<&Report>,
    ) -> Result<ExitCode, CmdError> {
        let Some((file, repo)) = &self.target else {
            return res;
        };
        if matches!(res, Err(CmdError::Usage(_) | CmdError::Time(_))) {
            return res; // the arguments were refused: no test ran
        }
        let success = res.is_ok() && report.is_some_and(|r| r.ok);
        let now = unix_now();
        let last_success = if success {
            Some(now)
        } else {
            previous(file).and_then(|text| carried_success(&text, repo, now))
        };
        let sample = Sample {
            repo: repo.clone(),
            success,
            run_at: now,
            last_success,
            figures: report.map(Figures::of),
        };
        let tmp = tmp_path(file);
        let written = crashsafe::publish_with_mode(&tmp, file, render(&sample).as_bytes(), 0o644);
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        match (written, res) {
            (Ok(()), res) => {
                tracing::info!(file = %file.display(), success, "wrote the restore test's metrics");
                res
            }
            (Err(e), Ok(_)) => Err(TextfileError::Publish(Box::new(e)).into()),
            (Err(e), Err(err)) => {
                tracing::error!(file = %file.display(), error = %e, "could not write the failed restore test's metrics");
                Err(err)
            }
        }
    }
}

/// The previous file's text (`None` when absent, unreadable, not UTF-8 or too large).
fn previous(file: &Path) -> Option<String> {
    let f = std::fs::File::open(file).ok()?;
    let mut text = String::new();
    f.take(MAX_PREVIOUS + 1).read_to_string(&mut text).ok()?;
    (text.len() as u64 <= MAX_PREVIOUS).then_some(text)
}

/// The last success recorded in a previous file's `text` for `repo`, if it is one pitr wrote
/// (the exact line, the same label) and a plausible time: finite, after 0, not after `now`.
pub(crate) fn carried_success(text: &str, repo: &str, now: f64) -> Option<f64> {
    let prefix = format!("{LAST_SUCCESS}{{repo=\"{}\"}} ", escape(repo));
    let mut found = text.lines().filter_map(|l| l.strip_prefix(&prefix));
    let v: f64 = found.next()?.trim().parse().ok()?;
    if found.next().is_some() {
        return None; // two values: not a file pitr wrote
    }
    (v.is_finite() && v > 0.0 && v <= now).then_some(v)
}

/// The file's text: each metric with HELP and TYPE, labelled with the repo.
pub(crate) fn render(s: &Sample) -> String {
    let label = format!("{{repo=\"{}\"}}", escape(&s.repo));
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{label} {v}"
        );
    };
    gauge(
        "pitr_restore_verify_success",
        "1 if the last pitr restore --verify passed, 0 if it failed.",
        u8::from(s.success).to_string(),
    );
    gauge(
        "pitr_restore_verify_last_run_timestamp_seconds",
        "When the last pitr restore --verify ended, passed or not (Unix time).",
        secs(s.run_at),
    );
    if let Some(t) = s.last_success {
        gauge(
            LAST_SUCCESS,
            "When a pitr restore --verify last passed (Unix time; absent until one has).",
            secs(t),
        );
    }
    if let Some(f) = s.figures {
        gauge(
            "pitr_restore_verify_rto_seconds",
            "Restore plus recovery time of the last run: the measured RTO.",
            secs(f.rto_seconds),
        );
        gauge(
            "pitr_restore_verify_recovery_seconds",
            "Seconds from starting PostgreSQL to the end of recovery in the last run.",
            secs(f.recovery_seconds),
        );
        gauge(
            "pitr_restore_verify_wal_replayed_bytes",
            "WAL replayed by the last run's recovery.",
            f.wal_replayed_bytes.to_string(),
        );
    }
    out
}

/// The `repo` label of a `--repo` spec: a URL without user info or `?options`; a local path
/// made absolute; no trailing `/`.
pub(crate) fn repo_label(spec: &str) -> String {
    let spec = spec.trim();
    let local = |p: &str| {
        let abs =
            std::path::absolute(p).map_or_else(|_| p.to_string(), |a| a.display().to_string());
        match abs.trim_end_matches('/') {
            "" => "/".to_string(),
            t => t.to_string(),
        }
    };
    if let Some(p) = spec.strip_prefix("file://") {
        return local(p);
    }
    let Some((scheme, rest)) = spec.split_once("://") else {
        return local(spec);
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match path.trim_matches('/') {
        "" => format!("{scheme}://{host}"),
        p => format!("{scheme}://{host}/{p}"),
    }
}

/// A label value escaped for the text format.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Seconds, to the millisecond.
fn secs(v: f64) -> String {
    format!("{v:.3}")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `.NAME.PID.tmp` next to FILE: hidden, not `*.prom`, one per process.
fn tmp_path(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map_or_else(|| "metrics".into(), |n| n.to_string_lossy());
    parent_dir(file).join(format!(".{name}.{}.tmp", std::process::id()))
}

/// The directory holding `file` (`.` for a bare name).
fn parent_dir(file: &Path) -> &Path {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(success: bool, last_success: Option<f64>, figures: Option<Figures>) -> Sample {
        Sample {
            repo: "s3://backups/db1".into(),
            success,
            run_at: 1_764_691_200.5,
            last_success,
            figures,
        }
    }

    const FIG: Figures = Figures {
        rto_seconds: 12.25,
        recovery_seconds: 3.5,
        wal_replayed_bytes: 50_331_648,
    };

    #[test]
    fn a_passing_run_renders_every_metric_with_help_type_and_the_repo() {
        let text = render(&sample(true, Some(1_764_691_200.5), Some(FIG)));
        assert_eq!(
            text,
            "\
# HELP pitr_restore_verify_success 1 if the last pitr restore --verify passed, 0 if it failed.
# TYPE pitr_restore_verify_success gauge
pitr_restore_verify_success{repo=\"s3://backups/db1\"} 1
# HELP pitr_restore_verify_last_run_timestamp_seconds When the last pitr restore --verify ended, passed or not (Unix time).
# TYPE pitr_restore_verify_last_run_timestamp_seconds gauge
pitr_restore_verify_last_run_timestamp_seconds{repo=\"s3://backups/db1\"} 1764691200.500
# HELP pitr_restore_verify_last_success_timestamp_seconds When a pitr restore --verify last passed (Unix time; absent until one has).
# TYPE pitr_restore_verify_last_success_timestamp_seconds gauge
pitr_restore_verify_last_success_timestamp_seconds{repo=\"s3://backups/db1\"} 1764691200.500
# HELP pitr_restore_verify_rto_seconds Restore plus recovery time of the last run: the measured RTO.
# TYPE pitr_restore_verify_rto_seconds gauge
pitr_restore_verify_rto_seconds{repo=\"s3://backups/db1\"} 12.250
# HELP pitr_restore_verify_recovery_seconds Seconds from starting PostgreSQL to the end of recovery in the last run.
# TYPE pitr_restore_verify_recovery_seconds gauge
pitr_restore_verify_recovery_seconds{repo=\"s3://backups/db1\"} 3.500
# HELP pitr_restore_verify_wal_replayed_bytes WAL replayed by the last run's recovery.
# TYPE pitr_restore_verify_wal_replayed_bytes gauge
pitr_restore_verify_wal_replayed_bytes{repo=\"s3://backups/db1\"} 50331648
"
        );
    }

    #[test]
    fn a_failure_without_a_report_exports_no_figures_and_no_unknown_success() {
        let text = render(&sample(false, None, None));
        assert!(text.contains("pitr_restore_verify_success{repo=\"s3://backups/db1\"} 0\n"));
        assert!(text.contains("pitr_restore_verify_last_run_timestamp_seconds{"));
        for absent in [LAST_SUCCESS, "_rto_", "_recovery_", "_wal_replayed_"] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = sample(true, None, None);
        s.repo = "/srv/a\"b\\c\nd".into();
        let text = render(&s);
        assert!(
            text.contains(r#"pitr_restore_verify_success{repo="/srv/a\"b\\c\nd"} 1"#),
            "{text}"
        );
        // And a carried-over value is found under the escaped label.
        let mut s2 = s.clone();
        s2.last_success = Some(100.0);
        assert_eq!(carried_success(&render(&s2), &s.repo, 200.0), Some(100.0));
    }

    #[test]
    fn the_last_success_is_carried_over_from_a_file_pitr_wrote_for_the_same_repo() {
        let now = 1_764_691_200.5;
        let passed = render(&sample(true, Some(now - 86_400.0), Some(FIG)));
        assert_eq!(
            carried_success(&passed, "s3://backups/db1", now),
            Some(now - 86_400.0)
        );
        // A failed run's file carries its own carried-over value on.
        let failed = render(&sample(false, Some(now - 7.0 * 86_400.0), None));
        assert_eq!(
            carried_success(&failed, "s3://backups/db1", now),
            Some(now - 7.0 * 86_400.0)
        );
        // Another repo's success is not this one's.
        assert_eq!(carried_success(&passed, "s3://backups/db2", now), None);
    }

    #[test]
    fn an_absent_corrupt_or_implausible_previous_file_carries_nothing_over() {
        let repo = "s3://backups/db1";
        let now = 1_000_000.0;
        let line = |v: &str| format!("{LAST_SUCCESS}{{repo=\"{repo}\"}} {v}\n");
        for (why, text) in [
            ("empty", String::new()),
            ("binary junk", "\u{0}\u{1}garbage".to_string()),
            ("no such line", render(&sample(false, None, None))),
            ("not a number", line("yesterday")),
            ("NaN", line("NaN")),
            ("infinite", line("+Inf")),
            ("zero", line("0")),
            ("negative", line("-5")),
            ("in the future", line("1000001")),
            ("truncated", line("").trim_end().to_string()),
            ("twice", format!("{}{}", line("10"), line("20"))),
            (
                "other labels",
                format!("{LAST_SUCCESS}{{repo=\"{repo}\",x=\"y\"}} 10\n"),
            ),
        ] {
            assert_eq!(carried_success(&text, repo, now), None, "{why}");
        }
        assert_eq!(
            carried_success(&line("999999.5"), repo, now),
            Some(999_999.5)
        );
    }

    #[test]
    fn repo_labels_hold_no_credentials() {
        for (spec, want) in [
            ("s3://backups/db1", "s3://backups/db1"),
            ("s3://backups/db1/", "s3://backups/db1"),
            ("s3://backups", "s3://backups"),
            (
                "s3://backups/db1?endpoint=http://key:secret@minio:9000&region=x",
                "s3://backups/db1",
            ),
            ("s3://AKIA:secret@backups/db1", "s3://backups/db1"),
            ("gs://user:pw@bucket/p#frag", "gs://bucket/p"),
            ("file:///var/lib/pitr/", "/var/lib/pitr"),
            ("/var/lib/pitr", "/var/lib/pitr"),
            (" /var/lib/pitr// ", "/var/lib/pitr"),
            ("/", "/"),
        ] {
            assert_eq!(repo_label(spec), want, "{spec}");
        }
        let rel = repo_label("some/repo");
        assert!(rel.starts_with('/') && rel.ends_with("/some/repo"), "{rel}");
    }

    #[test]
    fn previous_reads_at_most_the_bound() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.prom");
        assert_eq!(previous(&f), None, "absent");
        std::fs::write(&f, "x".repeat(MAX_PREVIOUS as usize + 1)).unwrap();
        assert_eq!(previous(&f), None, "oversized");
        std::fs::write(&f, [0xff, 0xfe]).unwrap();
        assert_eq!(previous(&f), None, "not UTF-8");
        std::fs::write(&f, "ok").unwrap();
        assert_eq!(previous(&f).as_deref(), Some("ok"));
    }

    fn args(extra: &[&str]) -> RestoreArgs {
        use clap::Parser as _;
        let argv = ["pitr", "restore", "--repo", "/srv/repo", "-D", "/tmp/r"];
        let cli = crate::cli::Cli::try_parse_from(argv.iter().chain(extra)).unwrap();
        match cli.command {
            crate::cli::Command::Restore(a) => a,
            c => panic!("{c:?}"),
        }
    }

    fn report(ok: bool) -> Report {
        Report {
            target: "latest".into(),
            target_utc: None,
            backup: "b".into(),
            timeline: 1,
            expected_last: None,
            achieved_last: None,
            replay_end_lsn: None,
            target_matched: ok,
            promoted: true,
            expected_timeline: Some(2),
            achieved_timeline: Some(2),
            failures: if ok {
                vec![]
            } else {
                vec!["a check failed".into()]
            },
            restore_seconds: 1.0,
            recovery_seconds: 2.0,
            rto_seconds: 3.0,
            predicted_rto_seconds: None,
            wal_replayed_bytes: 4096,
            checks: vec![],
            ok,
            postgres: "PostgreSQL 17".into(),
        }
    }

    fn value(text: &str, metric: &str) -> Option<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{metric}{{repo=\"/srv/repo\"}} ")))
            .map(str::to_owned)
    }

    #[test]
    fn metrics_file_arguments_are_checked_before_anything_runs() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pitr.prom").display().to_string();
        let usage = |extra: &[&str]| match Recorder::from_args(&args(extra)) {
            Err(CmdError::Usage(m)) => m,
            other => panic!("{extra:?}: {other:?}"),
        };
        // clap refuses it without --verify, and with --dry-run.
        use clap::Parser as _;
        use clap::error::ErrorKind;
        for (extra, kind) in [
            (
                &["--metrics-file", &f][..],
                ErrorKind::MissingRequiredArgument,
            ),
            (
                &["--verify", "--dry-run", "--metrics-file", &f],
                ErrorKind::ArgumentConflict,
            ),
        ] {
            let argv = ["pitr", "restore", "--repo", "/r", "-D", "/d"];
            let e = crate::cli::Cli::try_parse_from(argv.iter().chain(extra)).unwrap_err();
            assert_eq!(e.kind(), kind, "{extra:?}");
        }
        let mut a = args(&["--metrics-file", &f, "--verify"]);
        a.verify = false;
        assert!(matches!(Recorder::from_args(&a), Err(CmdError::Usage(_))));
        let txt = d.path().join("pitr.txt").display().to_string();
        assert!(usage(&["--verify", "--metrics-file", &txt]).contains("*.prom"));
        let nodir = d.path().join("no").join("pitr.prom").display().to_string();
        assert!(usage(&["--verify", "--metrics-file", &nodir]).contains("no directory"));
        assert!(Recorder::from_args(&args(&[])).unwrap().target.is_none());
        let r = Recorder::from_args(&args(&["--verify", "--metrics-file", &f])).unwrap();
        assert_eq!(r.target, Some((PathBuf::from(&f), "/srv/repo".to_string())));
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert!(names.is_empty(), "the probe leaves nothing: {names:?}");
    }

    #[test]
    fn every_outcome_is_written_and_a_failure_keeps_the_last_success() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pitr.prom");
        let r = Recorder::from_args(&args(&[
            "--verify",
            "--metrics-file",
            &f.display().to_string(),
        ]))
        .unwrap();
        // Refused arguments write nothing.
        assert!(r.finish(Err(CmdError::Usage("bad".into())), None).is_err());
        assert!(!f.exists());
        // A pass.
        let code = r
            .finish(Ok(ExitCode::SUCCESS), Some(&report(true)))
            .unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let passed = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            value(&passed, "pitr_restore_verify_success").as_deref(),
            Some("1")
        );
        let t0 = value(&passed, LAST_SUCCESS).unwrap();
        assert_eq!(
            value(&passed, "pitr_restore_verify_rto_seconds").as_deref(),
            Some("3.000")
        );
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o644
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        // A failed check: success 0, the figures of this run, the earlier success kept.
        let code = r
            .finish(Ok(ExitCode::from(1)), Some(&report(false)))
            .unwrap();
        assert_eq!(code, ExitCode::from(1));
        let failed = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            value(&failed, "pitr_restore_verify_success").as_deref(),
            Some("0")
        );
        assert_eq!(value(&failed, LAST_SUCCESS), Some(t0.clone()));
        assert_ne!(
            value(&failed, "pitr_restore_verify_last_run_timestamp_seconds"),
            Some(t0.clone())
        );
        // A restore error (no report): success 0, no figures, the success still kept.
        let err = std::io::Error::other("repo down");
        assert!(r.finish(Err(CmdError::Io(err)), None).is_err());
        let errored = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            value(&errored, "pitr_restore_verify_success").as_deref(),
            Some("0")
        );
        assert_eq!(value(&errored, LAST_SUCCESS), Some(t0));
        assert_eq!(value(&errored, "pitr_restore_verify_rto_seconds"), None);
        // Interrupted during --verify (exit 130, no report): a failure.
        assert_eq!(
            r.finish(Ok(ExitCode::from(130)), None).unwrap(),
            ExitCode::from(130)
        );
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            value(&text, "pitr_restore_verify_success").as_deref(),
            Some("0")
        );
        // A corrupt previous file: the failure is written, with no success.
        std::fs::write(&f, "garbage").unwrap();
        let err = std::io::Error::other("repo down");
        assert!(r.finish(Err(CmdError::Io(err)), None).is_err());
        let text = std::fs::read_to_string(&f).unwrap();
        assert_eq!(
            value(&text, "pitr_restore_verify_success").as_deref(),
            Some("0")
        );
        assert_eq!(value(&text, LAST_SUCCESS), None);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["pitr.prom"], "no temporary file is left");
    }

    #[test]
    fn a_file_that_cannot_be_written_fails_a_passing_run() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pitr.prom");
        let r = Recorder::from_args(&args(&[
            "--verify",
            "--metrics-file",
            &f.display().to_string(),
        ]))
        .unwrap();
        // FILE became a directory: the rename cannot replace it.
        std::fs::create_dir(&f).unwrap();
        let e = r
            .finish(Ok(ExitCode::SUCCESS), Some(&report(true)))
            .unwrap_err();
        assert!(
            matches!(e, CmdError::Metrics(TextfileError::Publish(_))),
            "{e:?}"
        );
        // A failed run keeps its own error.
        let e = r
            .finish(Err(CmdError::Usage("x".into())), None)
            .unwrap_err();
        assert!(matches!(e, CmdError::Usage(_)));
        let e = r
            .finish(Err(CmdError::Io(std::io::Error::other("down"))), None)
            .unwrap_err();
        assert!(matches!(e, CmdError::Io(_)), "{e:?}");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["pitr.prom"], "no temporary file is left");
    }

    #[test]
    fn temporary_files_are_hidden_and_not_read_by_the_collector() {
        let t = tmp_path(Path::new("/var/lib/node_exporter/textfile/pitr.prom"));
        let name = t.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            t.parent().unwrap(),
            Path::new("/var/lib/node_exporter/textfile")
        );
        assert!(
            name.starts_with(".pitr.prom.") && name.ends_with(".tmp"),
            "{name}"
        );
        assert_eq!(
            tmp_path(Path::new("x.prom")).parent().unwrap(),
            Path::new(".")
        );
    }
}
