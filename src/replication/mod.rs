//! The physical replication client: connection parameters ([`conninfo`]), the sans-IO codec
//! ([`codec`]), the tokio connection ([`conn`], [`tls`]), and the replication commands
//! ([`commands`]).

pub mod codec;
pub mod commands;
pub mod conn;
pub mod conninfo;
pub mod tls;
