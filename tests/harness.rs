//! The test harness itself, on every major: authentication, standbys and promotion, client
//! tools, and cleanup (no postmaster survives its `Cluster`, even when a test panics).

use std::path::Path;

use testkit::{Auth, Cluster, ClusterOptions, PgInstall};

fn postmaster_running(data_dir: &Path) -> bool {
    // Any process whose command line names this data directory.
    let needle = data_dir.to_str().unwrap();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| {
                String::from_utf8_lossy(&c)
                    .replace('\0', " ")
                    .contains(needle)
            })
            .unwrap_or(false)
    })
}

#[test]
fn clusters_of_every_major_start_answer_and_vanish() {
    for install in PgInstall::for_tests() {
        for tool in [
            "pg_waldump",
            "pg_receivewal",
            "pg_basebackup",
            "pg_verifybackup",
            "pgbench",
            "psql",
            "pg_ctl",
        ] {
            assert!(
                install.tool(tool).is_file(),
                "PostgreSQL {}: {tool} missing",
                install.major
            );
        }
        let (data, base) = {
            let c = Cluster::start(
                &install,
                ClusterOptions::default()
                    .wal_segsize_mb(4)
                    .conf("work_mem = '8MB'"),
            );
            assert_eq!(c.server_version_num() / 10000, install.major);
            assert_eq!(c.psql("SHOW wal_segment_size"), "4MB");
            assert_eq!(c.psql("SHOW work_mem"), "8MB");
            assert_eq!(c.psql("SHOW wal_level"), "replica");
            assert!(
                c.socket_dir()
                    .join(format!(".s.PGSQL.{}", c.port()))
                    .exists()
            );
            assert!(postmaster_running(c.data_dir()));
            (c.data_dir().to_path_buf(), c.base_dir().to_path_buf())
        };
        assert!(
            !postmaster_running(&data),
            "PostgreSQL {}: postmaster survived drop",
            install.major
        );
        assert!(!base.exists(), "directory not removed");
    }
}

/// Alive and not a zombie.
fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[test]
fn a_panicking_test_leaves_no_postmaster() {
    let install = PgInstall::for_tests().remove(0);
    // Checked on the thread that owns the cluster, after the unwind and before the thread
    // exits: this is `Drop` at work, not the parent-death signal.
    std::thread::spawn(move || {
        let mut seen = None;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let c = Cluster::start(&install, ClusterOptions::default());
            seen = c.postmaster_pid().map(|p| (p, c.data_dir().to_path_buf()));
            assert!(pid_alive(seen.as_ref().unwrap().0));
            panic!("test failure inside a cluster's scope");
        }));
        assert!(r.is_err());
        let (pid, data) = seen.unwrap();
        assert!(!pid_alive(pid), "postmaster {pid} survived a panic");
        assert!(!postmaster_running(&data));
    })
    .join()
    .unwrap();
}

#[test]
fn scram_authentication() {
    for install in PgInstall::for_tests() {
        let c = Cluster::start(
            &install,
            ClusterOptions::default().auth(Auth::Scram("s3cret pass".into())),
        );
        assert_eq!(
            c.psql("SELECT current_setting('password_encryption')"),
            "scram-sha-256"
        );
        assert_eq!(c.psql("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'postgres'"), "t");
        // Without the password, the server refuses.
        let out = install
            .command("psql")
            .args([
                "-X",
                "-w",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                "SELECT 1",
                "-p",
            ])
            .arg(c.port().to_string())
            .env_remove("PGPASSWORD")
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("password"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A replication connection with it works.
        let out = install
            .command("psql")
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname=replication replication=true",
                c.port()
            ))
            .args(["-X", "-c", "IDENTIFY_SYSTEM"])
            .env("PGPASSWORD", "s3cret pass")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn standby_from_base_backup_and_promotion() {
    for install in PgInstall::for_tests() {
        let p = Cluster::start(&install, ClusterOptions::default());
        p.psql("CREATE TABLE t AS SELECT 1 AS x");
        let s = Cluster::standby_of(&p, &[]);
        assert_eq!(s.psql("SELECT pg_is_in_recovery()"), "t");
        p.psql("INSERT INTO t VALUES (2)");
        testkit::wait_caught_up(&p, &s);
        assert_eq!(s.psql("SELECT count(*) FROM t"), "2");
        s.promote();
        assert_eq!(s.psql("SELECT pg_is_in_recovery()"), "f");
        assert_eq!(
            s.psql("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"),
            "00000002"
        );
    }
}
