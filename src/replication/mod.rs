//! The physical replication client: connection parameters ([`conninfo`]), the sans-IO codec
//! ([`codec`]), the tokio connection ([`conn`], [`tls`]), the replication commands
//! ([`commands`]), the `BASE_BACKUP` protocol ([`base_backup`]), and the explanation of
//! refused connections ([`explain`](explain())).

pub(crate) mod base_backup;
pub(crate) mod codec;
pub mod commands;
pub mod conn;
pub mod conninfo;
mod explain;
pub(crate) mod tls;

pub(crate) use explain::{Explained, explain};
