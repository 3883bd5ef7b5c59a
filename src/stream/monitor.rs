//! Slot retention monitor: warns before the server invalidates pitr's slot.
//!
//! With `max_slot_wal_keep_size` set, a slot whose `restart_lsn` falls that far behind is
//! invalidated and the WAL it held is removed: the archive would get a gap. While the repo is
//! slow or down, pitr's slot does fall behind (by design: it never acknowledges WAL the repo
//! lacks), so this task watches `pg_replication_slots.safe_wal_size` over its own SQL
//! connection, every 5 s, and
//! - warns when less than 20 % of `max_slot_wal_keep_size` is left,
//! - reports an error when the slot is `lost` (WAL is gone: take a new base backup),
//! - exports `pitr_slot_safe_wal_size_bytes` and `pitr_slot_retention_warning`,
//! - reads the server's WAL position, for `pitr_server_lsn_bytes` and
//!   `pitr_server_archive_lag_bytes` (what the repo lacks of what the server has written,
//!   which keeps growing during a storage outage while pitr has stopped reading).
//!
//! It is best effort: if the role cannot open a normal connection (pg_hba may allow only
//! replication), it says so once and stops.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use crate::replication::conn::PgConn;
use crate::replication::conninfo::ConnParams;
use crate::server::Metrics;

/// Fraction of `max_slot_wal_keep_size` left below which pitr warns.
pub const WARN_FRACTION: f64 = 0.2;

/// Runs until shutdown.
pub async fn run(
    params: ConnParams,
    slot: String,
    metrics: Arc<Metrics>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn: Option<PgConn> = None;
    let mut warned_connect = false;
    let mut warned_low = false;
    loop {
        if conn.is_none() {
            let mut p = params.clone();
            if p.dbname.is_empty() || p.dbname == "replication" {
                p.dbname = "postgres".into();
            }
            match PgConn::connect(&p, false).await {
                Ok(c) => conn = Some(c),
                Err(e) if !warned_connect => {
                    tracing::info!(error = %e, "slot retention monitoring unavailable (needs a normal connection to database {}); archiving is not affected", p.dbname);
                    warned_connect = true;
                }
                Err(_) => {}
            }
        }
        if let Some(c) = conn.as_mut() {
            let sql = format!(
                "SELECT s.wal_status, s.safe_wal_size, (SELECT setting::bigint * 1024 * 1024 FROM pg_settings WHERE name = 'max_slot_wal_keep_size' AND setting <> '-1'), \
                 (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END) - '0/0'::pg_lsn \
                 FROM pg_replication_slots s WHERE s.slot_name = '{}'",
                slot.replace('\'', "''")
            );
            match c.simple_query(&sql).await {
                Ok(r) => {
                    let status = r.get(0, 0).unwrap_or("").to_owned();
                    let safe: Option<i64> = r.get(0, 1).and_then(|v| v.parse().ok());
                    let limit: Option<i64> = r.get(0, 2).and_then(|v| v.parse().ok());
                    if let Some(pos) = r.get(0, 3).and_then(|v| v.parse::<u64>().ok()) {
                        metrics.server_lsn.store(pos, Ordering::Relaxed);
                    }
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
                Err(e) => {
                    tracing::debug!(error = %e, "slot retention query failed; reconnecting");
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
