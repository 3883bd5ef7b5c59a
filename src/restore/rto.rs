//! The restore-time (RTO) prediction: what `pitr restore` prints before it writes anything,
//! from the plan's sizes and the rates the last passing `restore --verify` on this repo
//! measured (kept in the repo as an [`RtoSample`]).
//!
//! Invariants:
//! - [`estimate`] is a pure function of the plan's sizes and at most one sample; without a
//!   sample the estimate says which sizes it knows and that the time is unknown, never a
//!   guessed rate.
//! - The model is linear, and errs long: a sample's restore and recovery times include fixed
//!   costs (connecting, PostgreSQL's start-up), charged again per byte when more bytes are
//!   predicted than were measured; a recovery is never predicted shorter than the smaller of
//!   the sample's recovery time and [`RECOVERY_FLOOR`].
//! - Only a verification that passed records a sample (a failed one did not show how long
//!   recovery takes), and a sample that cannot be written (read-only credentials) costs a
//!   warning, never the restore's result.
//! - Samples are written once each, under their own name (`stats/rto/<UTC time>-<random>.json`);
//!   the newest is used. Recording one removes the oldest beyond [`KEEP`], best effort.

use serde::Serialize;

use crate::repo::Repo;
pub(crate) use crate::repo::objects::{RtoSample, SAMPLE_FORMAT};
use crate::restore::RestoreStats;
use crate::restore::plan::Plan;
use crate::restore::verify::Report;

/// Where samples are kept.
pub(crate) const PREFIX: &str = "stats/rto/";

/// Samples kept when a new one is recorded.
pub(crate) const KEEP: usize = 16;

/// How long recording a sample may take before `restore --verify` gives up on it.
pub(crate) const RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The time in a sample's key (`stats/rto/YYYYMMDDTHHMMSS.ffffffZ-<8 hex>.json`), as its
/// sortable `YYYYMMDDTHHMMSS.ffffff` text; `None` for any other name.
pub(crate) fn key_time(key: &str) -> Option<&str> {
    let name = key.strip_prefix(PREFIX)?.strip_suffix(".json")?;
    let (time, rand) = name.split_once("Z-")?;
    let ok = time.len() == 22
        && time.as_bytes()[8] == b'T'
        && time.as_bytes()[15] == b'.'
        && time
            .bytes()
            .enumerate()
            .all(|(i, b)| matches!(i, 8 | 15) || b.is_ascii_digit())
        && rand.len() == 8
        && rand.bytes().all(|b| b.is_ascii_hexdigit());
    ok.then_some(time)
}

/// The key of the sample to use (pure): the newest well-formed name not after `now` (plus a
/// minute of clock skew), so a name from a clock far ahead cannot pin the estimate.
pub(crate) fn pick<'a>(keys: impl IntoIterator<Item = &'a str>, now: &str) -> Option<&'a str> {
    keys.into_iter()
        .filter_map(|k| key_time(k).map(|t| (t, k)))
        .filter(|(t, _)| *t <= now)
        .max()
        .map(|(_, k)| k)
}

/// `now` plus a minute, in [`key_time`]'s form.
fn now_key_time() -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60);
    format!(
        "{}.{:06}",
        t.strftime("%Y%m%dT%H%M%S"),
        t.subsec_microsecond()
    )
}

/// The shortest recovery predicted when the sample's own was longer: PostgreSQL's start-up
/// and the promotion poll alone take about this long.
pub(crate) const RECOVERY_FLOOR: f64 = 1.0;

/// The prediction printed with the plan (and in `--json` as `plan.rto`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RtoEstimate {
    /// Bytes to download: the backup's stored bytes (the WAL's stored size is not in the
    /// plan; `write_bytes` bounds it).
    pub download_bytes: u64,
    /// Bytes to write: the backup's and the planned WAL segments'.
    pub write_bytes: u64,
    /// WAL PostgreSQL replays: from the backup's start to the end of the planned WAL.
    pub replay_bytes: u64,
    /// Predicted restore seconds (`None`: no sample).
    pub restore_seconds: Option<f64>,
    /// Predicted recovery seconds (`None`: no sample).
    pub recovery_seconds: Option<f64>,
    /// Their sum.
    pub seconds: Option<f64>,
    /// The sample's restore rate, bytes written per second.
    pub restore_rate: Option<f64>,
    /// The sample's replay rate, WAL bytes per second (start-up included).
    pub replay_rate: Option<f64>,
    /// When the sample was measured.
    pub measured_at: Option<String>,
}

/// The sizes a plan implies (pure).
pub(crate) fn sizes(p: &Plan) -> (u64, u64, u64) {
    let seg = p.seg.bytes();
    let wal_write = p.wal.len() as u64 * seg;
    let replay = p.wal_end.bytes_since(p.backup.start());
    (p.backup.stored_bytes, p.backup.bytes + wal_write, replay)
}

/// The prediction for a plan of these sizes from a sample (pure; see the module's rules).
pub(crate) fn estimate(
    (download_bytes, write_bytes, replay_bytes): (u64, u64, u64),
    sample: Option<&RtoSample>,
) -> RtoEstimate {
    let mut e = RtoEstimate {
        download_bytes,
        write_bytes,
        replay_bytes,
        restore_seconds: None,
        recovery_seconds: None,
        seconds: None,
        restore_rate: None,
        replay_rate: None,
        measured_at: None,
    };
    let Some(s) = sample else { return e };
    let usable = |secs: f64| secs.is_finite() && secs > 0.0;
    if !usable(s.restore_seconds) || !usable(s.recovery_seconds) {
        return e;
    }
    // Per byte, with at least one byte: a sample of nothing still measured its fixed costs.
    let restore_rate = s.written_bytes.max(1) as f64 / s.restore_seconds;
    let replay_rate = s.wal_bytes.max(1) as f64 / s.recovery_seconds;
    let restore = write_bytes.max(1) as f64 / restore_rate;
    let recovery =
        (replay_bytes.max(1) as f64 / replay_rate).max(s.recovery_seconds.min(RECOVERY_FLOOR));
    e.restore_seconds = Some(restore);
    e.recovery_seconds = Some(recovery);
    e.seconds = Some(restore + recovery);
    e.restore_rate = Some(restore_rate);
    e.replay_rate = Some(replay_rate);
    e.measured_at = Some(s.at.clone());
    e
}

/// The plan's line, for humans.
pub(crate) fn describe(e: &RtoEstimate) -> String {
    let mib = |b: u64| format!("{} MiB", b.div_ceil(1 << 20));
    let rate = |r: f64| format!("{:.0} MiB/s", r / f64::from(1u32 << 20));
    match (e.seconds, e.restore_seconds, e.recovery_seconds) {
        (Some(total), Some(restore), Some(recovery)) => format!(
            "~{total:.1}s: restore {restore:.1}s ({} to write at {}, {} to download) + recovery {recovery:.1}s ({} of WAL to replay at {}), at the rates the --verify of {} measured",
            mib(e.write_bytes),
            rate(e.restore_rate.unwrap_or(0.0)),
            mib(e.download_bytes),
            mib(e.replay_bytes),
            rate(e.replay_rate.unwrap_or(0.0)),
            e.measured_at.as_deref().unwrap_or("?")
        ),
        _ => format!(
            "unknown: {} to write ({} to download), {} of WAL to replay; no restore --verify has measured this repo's rates yet (one that passes records them)",
            mib(e.write_bytes),
            mib(e.download_bytes),
            mib(e.replay_bytes)
        ),
    }
}

/// The newest sample in the repo: `None` if there is none, or if it cannot be read (with a
/// warning: a prediction is never worth failing a restore).
pub(crate) async fn newest(repo: &Repo) -> Option<RtoSample> {
    let listed = match repo.store().list(PREFIX).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the measured restore rates; the RTO estimate is left unknown");
            return None;
        }
    };
    let keys: Vec<String> = listed.into_iter().map(|o| o.key).collect();
    let key = pick(keys.iter().map(String::as_str), &now_key_time())?.to_string();
    let read = async {
        let body = repo
            .store()
            .get(&key)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "listed but missing".to_string())?;
        let s: RtoSample = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if s.format != SAMPLE_FORMAT {
            return Err(format!("sample format {} is not {SAMPLE_FORMAT}", s.format));
        }
        Ok(s)
    };
    match read.await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "cannot read the measured restore rates; the RTO estimate is left unknown");
            None
        }
    }
}

/// The sample a passing verification makes (pure).
pub(crate) fn sample_of(p: &Plan, stats: &RestoreStats, r: &Report, at: &str) -> RtoSample {
    RtoSample {
        format: SAMPLE_FORMAT,
        at: at.to_string(),
        backup: p.backup.id.clone(),
        written_bytes: stats.backup_bytes + stats.wal_bytes,
        restore_seconds: r.restore_seconds,
        wal_bytes: r.wal_replayed_bytes,
        recovery_seconds: r.recovery_seconds,
        postgres: r.postgres.clone(),
        created_by: format!("pitr {}", env!("CARGO_PKG_VERSION")),
    }
}

/// Records a passing verification's sample and removes the oldest beyond [`KEEP`]; a
/// failure is a warning.
pub(crate) async fn record(repo: &Repo, p: &Plan, stats: &RestoreStats, r: &Report) {
    if !r.ok {
        return;
    }
    let now = jiff::Timestamp::now();
    let at = crate::repo::catalog::micros_rfc3339(now.as_microsecond());
    let sample = sample_of(p, stats, r, &at);
    let key = format!(
        "{PREFIX}{}.{:06}Z-{:08x}.json",
        now.strftime("%Y%m%dT%H%M%S"),
        now.subsec_microsecond(),
        rand_u32()
    );
    let body = match serde_json::to_vec_pretty(&sample) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode the measured restore rates");
            return;
        }
    };
    if let Err(e) = repo.put(&key, body.into()).await {
        tracing::warn!(key = %key, error = %e, "cannot record the measured restore rates in the repo (the next plan's RTO estimate uses older ones, or none)");
        return;
    }
    let Ok(listed) = repo.store().list(PREFIX).await else {
        return;
    };
    // Only well-formed names count and go, oldest first.
    let mut keys: Vec<String> = listed
        .into_iter()
        .map(|o| o.key)
        .filter(|k| key_time(k).is_some())
        .collect();
    keys.sort();
    let extra = keys.len().saturating_sub(KEEP);
    for k in &keys[..extra] {
        if let Err(e) = repo.store().delete(k).await {
            tracing::debug!(key = %k, error = %e, "cannot remove an old restore-rate sample");
        }
    }
}

fn rand_u32() -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u32::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(written: u64, restore: f64, wal: u64, recovery: f64) -> RtoSample {
        RtoSample {
            format: SAMPLE_FORMAT,
            at: "2026-12-03T15:00:00Z".into(),
            backup: "20261203T140000Z".into(),
            written_bytes: written,
            restore_seconds: restore,
            wal_bytes: wal,
            recovery_seconds: recovery,
            postgres: "/usr/lib/postgresql/15/bin".into(),
            created_by: "pitr test".into(),
        }
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn without_a_sample_the_sizes_are_known_and_the_time_is_not() {
        let e = estimate((100 * MIB, 300 * MIB, 50 * MIB), None);
        assert_eq!(
            (e.download_bytes, e.write_bytes, e.replay_bytes),
            (100 * MIB, 300 * MIB, 50 * MIB)
        );
        assert_eq!(
            (e.seconds, e.restore_rate, e.measured_at.clone()),
            (None, None, None)
        );
        let line = describe(&e);
        assert!(
            line.starts_with("unknown: 300 MiB to write (100 MiB to download), 50 MiB of WAL"),
            "{line}"
        );
    }

    #[test]
    fn the_sample_rates_scale_linearly_with_the_plan() {
        // Measured: 800 MiB written in 2 s (400 MiB/s), 160 MiB replayed in 4 s (40 MiB/s).
        let s = sample(800 * MIB, 2.0, 160 * MIB, 4.0);
        let e = estimate((500 * MIB, 1600 * MIB, 400 * MIB), Some(&s));
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        assert!(close(e.restore_seconds, 4.0), "{e:?}");
        assert!(close(e.recovery_seconds, 10.0), "{e:?}");
        assert!(close(e.seconds, 14.0), "{e:?}");
        assert!(close(e.replay_rate, 40.0 * MIB as f64), "{e:?}");
        let line = describe(&e);
        assert!(line.starts_with("~14.0s: restore 4.0s (1600 MiB to write at 400 MiB/s, 500 MiB to download) + recovery 10.0s (400 MiB of WAL to replay at 40 MiB/s)"), "{line}");
        assert!(
            line.ends_with("the --verify of 2026-12-03T15:00:00Z measured"),
            "{line}"
        );
    }

    #[test]
    fn recovery_is_never_predicted_below_the_start_up_floor() {
        // Measured 3 s for 300 MiB; a plan with almost no WAL still pays the start-up.
        let s = sample(MIB, 0.1, 300 * MIB, 3.0);
        let e = estimate((MIB, MIB, 1024), Some(&s));
        assert_eq!(e.recovery_seconds, Some(RECOVERY_FLOOR));
        // A sample faster than the floor bounds it instead.
        let quick = sample(MIB, 0.1, 300 * MIB, 0.4);
        let e = estimate((MIB, MIB, 1024), Some(&quick));
        assert_eq!(e.recovery_seconds, Some(0.4));
    }

    #[test]
    fn a_sample_of_nothing_or_of_no_time_is_handled() {
        // No WAL replayed: the whole recovery counts as the cost of one byte (errs long).
        let s = sample(0, 0.5, 0, 1.5);
        let e = estimate((MIB, 2 * MIB, 16 * MIB), Some(&s));
        assert!(
            e.seconds.unwrap().is_finite() && e.seconds.unwrap() > 1.5,
            "{e:?}"
        );
        // Zero or non-finite durations give no rate: unknown, not infinitely fast.
        for bad in [sample(MIB, 0.0, MIB, 1.0), sample(MIB, 1.0, MIB, f64::NAN)] {
            assert_eq!(estimate((MIB, MIB, MIB), Some(&bad)).seconds, None);
        }
    }

    #[test]
    fn a_sample_round_trips_through_its_json() {
        let s = sample(800 * MIB, 2.0, 160 * MIB, 4.0);
        let j = serde_json::to_vec(&s).unwrap();
        assert_eq!(serde_json::from_slice::<RtoSample>(&j).unwrap(), s);
    }

    #[test]
    fn the_newest_well_formed_sample_not_from_the_future_is_used() {
        let keys = [
            "stats/rto/20261203T150000.000001Z-0a1b2c3d.json",
            "stats/rto/20261203T160000.123456Z-deadbeef.json",
            "stats/rto/99991231T235959.999999Z-00000000.json",
            "stats/rto/zzzz.json",
            "stats/rto/20261203T170000.000000Z-nothex!!.json",
            "stats/other/20261203T170000.000000Z-00000000.json",
        ];
        let now = "20261203T163000.000000";
        assert_eq!(pick(keys, now), Some(keys[1]));
        assert_eq!(pick(keys, "20261203T150000.000001"), Some(keys[0]));
        assert_eq!(pick(keys, "20261203T140000.000000"), None);
        assert_eq!(key_time(keys[0]), Some("20261203T150000.000001"));
        for bad in &keys[3..] {
            assert_eq!(key_time(bad), None, "{bad}");
        }
    }
}
