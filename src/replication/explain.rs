//! One home for explaining a refused connection: the server's error for a missing WAL
//! sender, a role without `REPLICATION`, or a missing `pg_hba.conf` line becomes a one-line
//! reason with its fix. Every job that connects (`pitr stream`, `pitr backup`, `pitr mark`)
//! goes through [`explain`].
//!
//! # Invariants
//!
//! - Only errors the server sent (with a SQLSTATE) are explained; anything else comes back
//!   unchanged as [`Explained::Conn`], so its retry classification
//!   ([`ConnError::is_transient`]) is kept.
//! - The texts are the user interface: tests match them, change them only on purpose.

use super::conn::ConnError;

/// A connection failure, explained.
#[derive(Debug)]
pub(crate) enum Explained {
    /// The server refused for a reason a setting fixes: the one-line reason with the fix.
    Refused(String),
    /// Any other failure, unchanged.
    Conn(ConnError),
}

/// Turns a refusal at connect time into a one-line reason with the fix (`user`: the role we
/// connected as).
pub(crate) fn explain(e: ConnError, user: &str) -> Explained {
    if let Some(code) = e.sqlstate() {
        let msg = e.to_string();
        if code == "53300" && msg.contains("max_wal_senders") {
            let zero = msg.contains("(currently 0)");
            return Explained::Refused(if zero {
                "the server has max_wal_senders = 0 (wal_level = minimal?): set wal_level = replica and max_wal_senders > 0, then restart it".into()
            } else {
                format!("no free WAL sender on the server ({msg}): raise max_wal_senders")
            });
        }
        if code == "42501" && msg.to_lowercase().contains("replication") {
            return Explained::Refused(format!(
                "role {user:?} may not start a WAL sender: ALTER ROLE {user} REPLICATION (or use a role that has it)"
            ));
        }
        if code == "28000" && msg.contains("pg_hba.conf") {
            return Explained::Refused(format!(
                "{msg}: add a pg_hba.conf line for database \"replication\" (the keyword all does not cover replication connections)"
            ));
        }
    }
    Explained::Conn(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::codec::ServerNotice;

    fn server(code: &str, message: &str) -> ConnError {
        ConnError::Rejected {
            host: "db:5432".into(),
            notice: Box::new(ServerNotice {
                severity: "FATAL".into(),
                code: code.into(),
                message: message.into(),
                ..ServerNotice::default()
            }),
        }
    }

    fn refused(e: ConnError) -> String {
        match explain(e, "alice") {
            Explained::Refused(m) => m,
            Explained::Conn(e) => panic!("not explained: {e}"),
        }
    }

    #[test]
    fn wal_senders_exhausted_or_disabled() {
        let m = refused(server(
            "53300",
            "number of requested standby connections exceeds max_wal_senders (currently 0)",
        ));
        assert!(m.contains("max_wal_senders = 0"), "{m}");
        let m = refused(server(
            "53300",
            "number of requested standby connections exceeds max_wal_senders (currently 10)",
        ));
        assert!(m.starts_with("no free WAL sender"), "{m}");
    }

    #[test]
    fn role_without_replication_and_missing_hba_line() {
        let m = refused(server(
            "42501",
            "permission denied to start WAL sender: Only roles with the REPLICATION attribute may start a WAL sender process.",
        ));
        assert!(m.contains("ALTER ROLE alice REPLICATION"), "{m}");
        let m = refused(server(
            "28000",
            "no pg_hba.conf entry for replication connection from host \"10.0.0.1\"",
        ));
        assert!(
            m.ends_with("does not cover replication connections)"),
            "{m}"
        );
    }

    #[test]
    fn other_errors_come_back_unchanged() {
        assert!(matches!(
            explain(server("53300", "sorry, too many clients already"), "u"),
            Explained::Conn(e) if e.is_transient()
        ));
        assert!(matches!(
            explain(ConnError::Closed, "u"),
            Explained::Conn(ConnError::Closed)
        ));
    }
}
