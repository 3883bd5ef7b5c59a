//! The physical replication client: connection parameters ([`conninfo`]), the sans-IO codec
//! ([`codec`]), the tokio connection ([`conn`], [`tls`]), and the replication commands
//! ([`commands`]), and the explanation of refused connections ([`explain`](explain())).

pub mod codec;
pub mod commands;
pub mod conn;
pub mod conninfo;
mod explain;
pub mod tls;

pub use explain::{Explained, explain};
