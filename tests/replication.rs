//! The replication client against real servers of every major.

use pitr::replication::commands::{StartOutcome, StreamEvent};
use pitr::replication::conn::{ConnError, PgConn};
use pitr::replication::conninfo::ConnParams;
use testkit::{Auth, Cluster, ClusterOptions, PgInstall};
use walfmt::{Lsn, TimeLineId};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn tcp(c: &Cluster, extra: &str) -> ConnParams {
    ConnParams::parse(
        &format!(
            "host=127.0.0.1 port={} user=postgres sslmode=disable {extra}",
            c.port()
        ),
        true,
    )
    .unwrap()
}

#[test]
fn identify_slot_and_stream_bytes_identical_to_pg_wal() {
    for install in PgInstall::for_tests() {
        let major = install.major;
        let c = Cluster::start(&install, ClusterOptions::default().wal_segsize_mb(1));
        let sysid: u64 = c
            .psql("SELECT system_identifier FROM pg_control_system()")
            .parse()
            .unwrap();
        rt().block_on(async {
            // Unix socket and TCP both work.
            let unix = ConnParams::parse(
                &format!(
                    "host={} port={} user=postgres",
                    c.socket_dir().display(),
                    c.port()
                ),
                true,
            )
            .unwrap();
            let mut u = PgConn::connect(&unix, true).await.unwrap();
            assert_eq!(u.identify_system().await.unwrap().system_id, sysid);
            u.close().await;

            let mut conn = PgConn::connect(&tcp(&c, ""), true).await.unwrap();
            assert!(
                conn.server_version.starts_with(&major.to_string()),
                "{}",
                conn.server_version
            );
            let sys = conn.identify_system().await.unwrap();
            assert_eq!(sys.system_id, sysid);
            assert_eq!(sys.timeline, TimeLineId(1));
            assert_eq!(conn.wal_segment_size().await.unwrap().bytes(), 1 << 20);
            assert_eq!(conn.read_replication_slot("pitr").await.unwrap(), None);
            assert!(conn.create_physical_slot("pitr").await.unwrap());
            assert!(
                !conn.create_physical_slot("pitr").await.unwrap(),
                "second create reports existing"
            );
            let slot = conn.read_replication_slot("pitr").await.unwrap().unwrap();
            let restart = slot.restart_lsn.expect("RESERVE_WAL reserves");
            assert_eq!(slot.restart_tli, Some(TimeLineId(1)));

            // Stream from the start of the segment holding restart_lsn, through a switch.
            let seg = 1u64 << 20;
            let start = Lsn(restart.0 - restart.0 % seg);
            assert_eq!(
                conn.start_replication(Some("pitr"), start, TimeLineId(1))
                    .await
                    .unwrap(),
                StartOutcome::Streaming
            );
            c.psql(
                "CREATE TABLE t AS SELECT generate_series(1, 20000) AS x; SELECT pg_switch_wal();",
            );
            let end: Lsn = c.psql("SELECT pg_current_wal_flush_lsn()").parse().unwrap();
            let mut got: Vec<u8> = Vec::new();
            let mut keepalives = 0;
            while start.0 + (got.len() as u64) < end.0 {
                match conn.next_event().await.unwrap() {
                    StreamEvent::Wal { start: s, data } => {
                        assert_eq!(s.0, start.0 + got.len() as u64, "contiguous XLogData");
                        got.extend_from_slice(&data);
                    }
                    StreamEvent::Keepalive {
                        reply_requested, ..
                    } => {
                        keepalives += 1;
                        if reply_requested {
                            let at = Lsn(start.0 + got.len() as u64);
                            conn.send_status(at, Lsn(0), false).await.unwrap();
                        }
                    }
                    other => panic!("{other:?}"),
                }
            }
            let _ = keepalives;
            // Every byte equals the server's own segment files.
            let mut off = 0usize;
            let mut segno = start.0 / seg;
            while off < got.len() {
                let name = format!("{}{:08X}{:08X}", "00000001", segno / 4096, segno % 4096);
                let file = std::fs::read(c.wal_dir().join(&name))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let n = (got.len() - off).min(seg as usize);
                assert_eq!(
                    &got[off..off + n],
                    &file[..n],
                    "PG {major}: segment {name} differs"
                );
                off += n;
                segno += 1;
            }
            // Reporting flush advances the slot.
            conn.send_status(end, end, false).await.unwrap();
        });
        let mut moved = false;
        for _ in 0..100 {
            if c.psql("SELECT restart_lsn >= pg_current_wal_flush_lsn() - 1000000 FROM pg_replication_slots WHERE slot_name = 'pitr'") == "t" {
                moved = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(moved, "PG {major}: slot did not advance");
    }
}

#[test]
fn authentication_methods_and_refusals() {
    for install in PgInstall::for_tests() {
        let major = install.major;
        let c = Cluster::start(
            &install,
            ClusterOptions::default().auth(Auth::Scram("right pw".into())),
        );
        rt().block_on(async {
            // SCRAM with the right password.
            let ok = tcp(&c, "password='right pw'");
            let mut conn = PgConn::connect(&ok, true).await.unwrap();
            conn.identify_system().await.unwrap();
            // Wrong password: rejected, one clear line, no password in it.
            let e = PgConn::connect(&tcp(&c, "password=wrong-secret"), true)
                .await
                .unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains("password authentication failed"),
                "PG {major}: {msg}"
            );
            assert!(!msg.contains("wrong-secret") && !format!("{e:?}").contains("wrong-secret"));
            assert_eq!(e.sqlstate(), Some("28P01"));
            assert!(!e.is_transient());
            // No password at all.
            let none = ConnParams::parse_with(
                &format!(
                    "host=127.0.0.1 port={} user=postgres sslmode=disable",
                    c.port()
                ),
                true,
                &NoEnv,
            )
            .unwrap();
            let e = PgConn::connect(&none, true).await.unwrap_err();
            assert!(matches!(e, ConnError::NoPassword { .. }), "{e}");
            // A role without REPLICATION.
            let r = ok.clone();
            let mut sql = PgConn::connect(
                &ConnParams {
                    dbname: "postgres".into(),
                    ..r
                },
                false,
            )
            .await
            .unwrap();
            sql.simple_query("CREATE ROLE norepl LOGIN PASSWORD 'pw2'")
                .await
                .unwrap();
            let e = PgConn::connect(&tcp(&c, "user=norepl password=pw2"), true)
                .await
                .unwrap_err();
            assert!(
                e.to_string().to_lowercase().contains("replication"),
                "PG {major}: {e}"
            );
            // Unreachable port.
            let e = PgConn::connect(
                &ConnParams::parse("host=127.0.0.1 port=1 sslmode=disable", true).unwrap(),
                true,
            )
            .await
            .unwrap_err();
            assert!(
                e.is_transient() && e.to_string().contains("127.0.0.1:1"),
                "{e}"
            );
        });
    }
}

struct NoEnv;
impl pitr::replication::conninfo::Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}
