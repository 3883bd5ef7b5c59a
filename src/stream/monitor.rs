//! The server monitor: the server's WAL position, and warnings before the server invalidates
//! pitr's slot.
//!
//! Every `every` (5 s), over its own normal (SQL) connection, it reads
//! - the server's WAL position, for `pitr_server_lsn_bytes`, `pitr_server_archive_lag_bytes`
//!   and `pitr_server_archive_lag_seconds` (what the repo lacks of what the server has
//!   written, which keeps growing during a storage outage while pitr has stopped reading):
//!   see [`crate::metrics`], which also takes readings from the replication stream;
//! - with a slot, `pg_replication_slots.safe_wal_size`: with `max_slot_wal_keep_size` set, a
//!   slot whose `restart_lsn` falls that far behind is invalidated and the WAL it held is
//!   removed (the archive would get a gap). While the repo is slow or down, pitr's slot does
//!   fall behind (by design: it never acknowledges WAL the repo lacks). It
//!   - warns when less than 20 % of `max_slot_wal_keep_size` is left,
//!   - reports an error when the slot is `lost` (WAL is gone: take a new base backup),
//!   - exports `pitr_slot_safe_wal_size_bytes` and `pitr_slot_retention_warning`.
//!
//! Invariants: connecting and each query are bounded by [`QUERY_TIMEOUT`], so a server that
//! cannot be reached never leaves an old reading looking current: a reading is only ever
//! recorded when a query answered, and readings age out (the position is then unknown, not 0
//! and not the old value). It is best effort: if the role cannot open a normal connection
//! (pg_hba may allow only replication), it says so once and the position comes from the
//! replication stream alone.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::replication::conn::PgConn;
use crate::replication::conninfo::ConnParams;

/// Fraction of `max_slot_wal_keep_size` left below which pitr warns.
pub(crate) const WARN_FRACTION: f64 = 0.2;

/// Longest wait for a connection or an answer.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The poll's query: the server's position first, then (with a slot) the slot's retention.
fn query(slot: Option<&str>) -> String {
    let pos = "(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END) - '0/0'::pg_lsn";
    match slot {
        None => format!("SELECT {pos}"),
        Some(slot) => format!(
            "SELECT {pos}, s.wal_status, s.safe_wal_size, (SELECT setting::bigint * 1024 * 1024 FROM pg_settings WHERE name = 'max_slot_wal_keep_size' AND setting <> '-1') \
             FROM (SELECT 1) AS one LEFT JOIN pg_replication_slots s ON s.slot_name = '{}'",
            slot.replace('\'', "''")
        ),
    }
}

/// Runs until shutdown.
pub(crate) async fn run(
    params: ConnParams,
    slot: Option<String>,
    metrics: Arc<Metrics>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn: Option<PgConn> = None;
    let mut warned_connect = false;
    let mut warned_low = false;
    let mut p = params;
    if p.dbname.is_empty() || p.dbname == "replication" {
        p.dbname = "postgres".into();
    }
    p.connect_timeout = Some(
        p.connect_timeout
            .map_or(QUERY_TIMEOUT, |t| t.min(QUERY_TIMEOUT)),
    );
    let sql = query(slot.as_deref());
    loop {
        if conn.is_none() {
            match PgConn::connect(&p, false).await {
                Ok(mut c) => {
                    c.set_io_timeout(Some(QUERY_TIMEOUT));
                    conn = Some(c);
                }
                Err(e) if !warned_connect && !e.is_transient() => {
                    tracing::info!(error = %e, "server monitoring over SQL unavailable (needs a normal connection to database {}); the server's position comes from the replication stream only, slot retention is not watched; archiving is not affected", p.dbname);
                    warned_connect = true;
                }
                Err(e) => tracing::debug!(error = %e, "server monitor cannot connect"),
            }
        }
        if let Some(c) = conn.as_mut() {
            match c.simple_query(&sql).await {
                Ok(r) => {
                    if let Some(pos) = r.get(0, 0).and_then(|v| v.parse::<u64>().ok()) {
                        metrics.observe_server(pos);
                    }
                    if let Some(slot) = &slot {
                        let status = r.get(0, 1).unwrap_or("").to_owned();
                        let safe: Option<i64> = r.get(0, 2).and_then(|v| v.parse().ok());
                        let limit: Option<i64> = r.get(0, 3).and_then(|v| v.parse().ok());
                        if let Some(s) = safe {
                            metrics
                                .slot_safe_wal_size
                                .store(s.max(0) as u64, Ordering::Relaxed);
                            metrics.slot_safe_known.store(true, Ordering::Relaxed);
                        }
                        if status == "lost" {
                            metrics.slot_warning.store(true, Ordering::Relaxed);
                            tracing::error!(slot = %slot, "the server invalidated the replication slot (max_slot_wal_keep_size): WAL it held is gone, the archive has a gap; take a new base backup");
                        } else if let (Some(s), Some(l)) = (safe, limit) {
                            let low = (s as f64) < (l as f64) * WARN_FRACTION;
                            metrics.slot_warning.store(low, Ordering::Relaxed);
                            if low && !warned_low {
                                tracing::warn!(slot = %slot, safe_wal_size = s, max_slot_wal_keep_size = l, archive_lag_bytes = metrics.lag(),
                                    "replication slot is close to max_slot_wal_keep_size: the server will invalidate it if archiving does not catch up");
                            }
                            warned_low = low;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "server monitor query failed; reconnecting");
                    conn = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}
