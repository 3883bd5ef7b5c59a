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
                    StreamEvent::Wal { start: s, data, .. } => {
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

/// A CA and a server certificate for `localhost`/127.0.0.1, made with the openssl CLI.
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=pitr-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
}

#[test]
fn tls_modes_as_libpq() {
    // The PyPI builds of 16 and 18 lack SSL: use a major built with OpenSSL (15 or 17).
    let Some(install) = PgInstall::for_tests().into_iter().rev().find(|i| {
        std::process::Command::new(i.tool("pg_config"))
            .arg("--configure")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("openssl"))
    }) else {
        assert!(
            std::env::var("CI").is_err(),
            "no PostgreSQL built with OpenSSL among the tested majors"
        );
        return;
    };
    let certs = tempfile::tempdir().unwrap();
    make_certs(certs.path());
    let c = Cluster::start(
        &install,
        ClusterOptions::default().auth(Auth::Scram("tls pw".into())),
    );
    for f in ["server.crt", "server.key"] {
        let dst = c.data_dir().join(f);
        std::fs::copy(certs.path().join(f), &dst).unwrap();
        std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        testkit::chown_tree_to_server(&dst);
    }
    c.psql("ALTER SYSTEM SET ssl = on; SELECT pg_reload_conf();");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let ca = certs.path().join("ca.crt");
    let p = |host: &str, extra: &str| {
        ConnParams::parse(
            &format!(
                "host={host} port={} user=postgres password='tls pw' {extra}",
                c.port()
            ),
            true,
        )
        .unwrap()
    };
    rt().block_on(async {
        for mode in ["prefer", "require"] {
            let conn = PgConn::connect(&p("127.0.0.1", &format!("sslmode={mode}")), true)
                .await
                .unwrap();
            assert!(conn.tls, "sslmode={mode} should use TLS when offered");
        }
        // verify-full: the CA signs the certificate, and it names localhost and 127.0.0.1.
        let mut conn = PgConn::connect(
            &p(
                "localhost",
                &format!("sslmode=verify-full sslrootcert={}", ca.display()),
            ),
            true,
        )
        .await
        .unwrap();
        assert!(conn.tls);
        conn.identify_system().await.unwrap(); // SCRAM-SHA-256-PLUS (channel binding) over TLS
        PgConn::connect(
            &p(
                "127.0.0.1",
                &format!("sslmode=verify-ca sslrootcert={}", ca.display()),
            ),
            true,
        )
        .await
        .unwrap();
        // A wrong root: refused, clearly.
        let other = tempfile::tempdir().unwrap();
        make_certs(other.path());
        let e = PgConn::connect(
            &p(
                "localhost",
                &format!(
                    "sslmode=verify-full sslrootcert={}",
                    other.path().join("ca.crt").display()
                ),
            ),
            true,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("TLS") && !e.is_transient(), "{e}");
        // verify-* without a root certificate: told what to do.
        let e = PgConn::connect(
            &ConnParams::parse_with(
                &format!(
                    "host=localhost port={} user=postgres password=x sslmode=verify-full",
                    c.port()
                ),
                true,
                &NoEnv,
            )
            .unwrap(),
            true,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        let conn = PgConn::connect(&p("127.0.0.1", "sslmode=disable"), true)
            .await
            .unwrap();
        assert!(!conn.tls);
    });
    // A server without TLS: prefer falls back, require refuses.
    let plain = Cluster::start(&install, ClusterOptions::default());
    rt().block_on(async {
        let base = format!("host=127.0.0.1 port={} user=postgres", plain.port());
        let conn = PgConn::connect(
            &ConnParams::parse(&format!("{base} sslmode=prefer"), true).unwrap(),
            true,
        )
        .await
        .unwrap();
        assert!(!conn.tls);
        let e = PgConn::connect(
            &ConnParams::parse(&format!("{base} sslmode=require"), true).unwrap(),
            true,
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("does not support TLS"), "{e}");
    });
}

#[test]
fn md5_and_cleartext_password_methods() {
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, ClusterOptions::default());
    c.psql(
        "SET password_encryption = 'md5'; CREATE ROLE r_md5 LOGIN REPLICATION PASSWORD 'md5 pw';",
    );
    c.psql("CREATE ROLE r_clear LOGIN REPLICATION PASSWORD 'clear pw';");
    let hba = format!(
        "host replication r_md5 127.0.0.1/32 md5\nhost replication r_clear 127.0.0.1/32 password\n{}",
        std::fs::read_to_string(c.data_dir().join("pg_hba.conf")).unwrap()
    );
    std::fs::write(c.data_dir().join("pg_hba.conf"), hba).unwrap();
    c.psql("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(300));
    rt().block_on(async {
        for (user, pw) in [("r_md5", "md5 pw"), ("r_clear", "clear pw")] {
            let mut conn = PgConn::connect(&tcp(&c, &format!("user={user} password='{pw}'")), true)
                .await
                .unwrap();
            conn.identify_system().await.unwrap();
            let e = PgConn::connect(&tcp(&c, &format!("user={user} password=bad")), true)
                .await
                .unwrap_err();
            assert_eq!(e.sqlstate(), Some("28P01"), "{user}: {e}");
        }
    });
}

struct MapEnv(Vec<(&'static str, String)>);
impl pitr::replication::conninfo::Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
}

#[test]
fn connection_strings_env_and_pgpass_as_libpq() {
    use pitr::replication::conninfo::{Host, SslMode};
    // URI with percent-encoding, several hosts, query parameters.
    let p = ConnParams::parse_with(
        "postgresql://arch%40iver:p%3Ass@db1:5433,[::1]:5434/mydb?sslmode=verify-full&application_name=pitr-x",
        true,
        &NoEnv,
    )
    .unwrap();
    assert_eq!(p.user, "arch@iver");
    assert_eq!(p.password.as_ref().unwrap().expose(), "p:ss");
    assert_eq!(
        p.hosts,
        vec![Host::Tcp("db1".into(), 5433), Host::Tcp("::1".into(), 5434)]
    );
    assert_eq!(p.dbname, "mydb");
    assert_eq!(p.sslmode, SslMode::VerifyFull);
    assert_eq!(p.application_name, "pitr-x");
    assert_eq!(
        format!("{:?}", p.password),
        "Some(********)",
        "the password never prints"
    );
    assert!(!format!("{p:?}").contains("p:ss"));
    // Key/value with quoting; a Unix socket directory.
    let p = ConnParams::parse_with(
        r"host=/run/pg port=6000 user='o\'brien' password='a b'",
        true,
        &NoEnv,
    )
    .unwrap();
    assert_eq!(p.hosts, vec![Host::Unix("/run/pg".into(), 6000)]);
    assert_eq!(p.user, "o'brien");
    // Environment fills what the string leaves out; the string wins.
    let env = MapEnv(vec![
        ("PGHOST", "envhost".into()),
        ("PGPORT", "7000".into()),
        ("PGUSER", "envuser".into()),
        ("PGSSLMODE", "require".into()),
        ("PGPASSWORD", "envpw".into()),
    ]);
    let p = ConnParams::parse_with("port=7001", true, &env).unwrap();
    assert_eq!(p.hosts, vec![Host::Tcp("envhost".into(), 7001)]);
    assert_eq!((p.user.as_str(), p.sslmode), ("envuser", SslMode::Require));
    assert_eq!(p.password.unwrap().expose(), "envpw");
    // .pgpass: replication connections match the database "replication"; escapes; first match wins.
    let dir = tempfile::tempdir().unwrap();
    let pass = dir.path().join("pgpass");
    std::fs::write(&pass, "# comment\ndb1:5432:mydb:arch:wrong\ndb1:5432:replication:arch:right\\:pw\n*:*:*:*:fallback\n").unwrap();
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let env = MapEnv(vec![("PGPASSFILE", pass.display().to_string())]);
    let p = ConnParams::parse_with("host=db1 user=arch dbname=mydb", true, &env).unwrap();
    assert_eq!(p.password.unwrap().expose(), "right:pw");
    let p = ConnParams::parse_with("host=db1 user=arch dbname=mydb", false, &env).unwrap();
    assert_eq!(p.password.unwrap().expose(), "wrong");
    let p = ConnParams::parse_with("host=other user=x", true, &env).unwrap();
    assert_eq!(p.password.unwrap().expose(), "fallback");
    // A password file others can read is ignored, as libpq does.
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let p = ConnParams::parse_with("host=db1 user=arch", true, &env).unwrap();
    assert!(p.password.is_none());
    // Bad input: one clear message.
    for (s, want) in [
        ("host", "missing \"=\""),
        ("sslmode=sometimes", "invalid sslmode"),
        ("port=http", "invalid port"),
        ("nosuch=1", "unknown parameter"),
        ("password='open", "unterminated"),
        ("mysql://x", "unsupported URI scheme"),
        ("keepalives=yes", "keepalives \"yes\" is not an integer"),
        (
            "keepalives_idle=-5",
            "keepalives_idle \"-5\" is out of range",
        ),
        (
            "keepalives_interval=1.5",
            "keepalives_interval \"1.5\" is not an integer",
        ),
        (
            "keepalives_count=1000",
            "keepalives_count \"1000\" is out of range",
        ),
        (
            "tcp_user_timeout=soon",
            "tcp_user_timeout \"soon\" is not an integer",
        ),
    ] {
        let e = ConnParams::parse_with(s, true, &NoEnv).unwrap_err();
        assert!(e.to_string().contains(want), "{s}: {e}");
    }
}

#[test]
fn keepalive_options_as_libpq() {
    use pitr::replication::conninfo::TcpOptions;
    use std::time::Duration;
    // Default: keepalives on, every value the system's.
    let p = ConnParams::parse_with("host=db", true, &NoEnv).unwrap();
    assert_eq!(p.tcp, TcpOptions::default());
    assert!(p.tcp.keepalives);
    let p = ConnParams::parse_with(
        "host=db keepalives=1 keepalives_idle=7 keepalives_interval=3 keepalives_count=4 tcp_user_timeout=9000",
        true,
        &NoEnv,
    )
    .unwrap();
    assert_eq!(
        p.tcp,
        TcpOptions {
            keepalives: true,
            keepalives_idle: Some(Duration::from_secs(7)),
            keepalives_interval: Some(Duration::from_secs(3)),
            keepalives_count: Some(4),
            user_timeout: Some(Duration::from_millis(9000)),
        }
    );
    // In a URI too; 0 means the system default; keepalives=0 turns them off.
    let p = ConnParams::parse_with(
        "postgresql://db/x?keepalives=0&keepalives_idle=0&tcp_user_timeout=0",
        true,
        &NoEnv,
    )
    .unwrap();
    assert_eq!(
        p.tcp,
        TcpOptions {
            keepalives: false,
            ..TcpOptions::default()
        }
    );
}

#[test]
fn keepalive_options_reach_the_socket() {
    use std::time::Duration;
    // Socket options are the client's and the same on every major: one server is enough.
    let install = PgInstall::for_tests().pop().unwrap();
    let c = Cluster::start(&install, ClusterOptions::default());
    rt().block_on(async {
        let conn = PgConn::connect(
            &tcp(
                &c,
                "keepalives_idle=7 keepalives_interval=3 keepalives_count=4 tcp_user_timeout=9000",
            ),
            true,
        )
        .await
        .unwrap();
        let o = conn.socket_options().unwrap();
        assert!(o.keepalive);
        assert_eq!(o.keepalive_idle, Duration::from_secs(7));
        assert_eq!(o.keepalive_interval, Duration::from_secs(3));
        assert_eq!(o.keepalive_count, 4);
        assert_eq!(o.user_timeout, Some(Duration::from_millis(9000)));
        // libpq's default: keepalives on.
        let conn = PgConn::connect(&tcp(&c, ""), true).await.unwrap();
        assert!(conn.socket_options().unwrap().keepalive);
        let conn = PgConn::connect(&tcp(&c, "keepalives=0"), true)
            .await
            .unwrap();
        assert!(!conn.socket_options().unwrap().keepalive);
        // Unix sockets have none, as in libpq.
        let unix = ConnParams::parse(
            &format!(
                "host={} port={} user=postgres",
                c.socket_dir().display(),
                c.port()
            ),
            true,
        )
        .unwrap();
        let conn = PgConn::connect(&unix, true).await.unwrap();
        assert!(conn.socket_options().is_none());
    });
}
