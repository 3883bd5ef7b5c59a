//! The WAL workload of the differential tests and the `testdata/` fixtures.
//!
//! It covers what an archiver must decode: many small commits, records spanning pages and
//! segments (full-page images after a checkpoint, and logical messages larger than a 1 MiB
//! segment), aborts, subtransactions, two-phase commit and rollback (with dropped-relation
//! stats inside the prepared transaction), restore points, checkpoints and `pg_switch_wal()`.

use crate::Cluster;

/// Runs the workload. `small_commits` controls the size; 300 fills a few 1 MiB segments.
pub fn run(c: &Cluster, small_commits: u32) {
    c.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE TABLE big (id int, payload bytea);
         CREATE TABLE drop_me (id int);
         CREATE TABLE drop_me_too (id int);",
    );
    // Many small commits, one transaction each.
    c.psql(&format!(
        "DO $$ BEGIN FOR i IN 1..{small_commits} LOOP INSERT INTO t VALUES (i, 'row ' || i); COMMIT; END LOOP; END $$;"
    ));
    c.psql("CHECKPOINT;");
    // After a checkpoint, first touches log full-page images: records longer than a page.
    c.psql(&format!(
        "UPDATE t SET v = v || '!' WHERE id % 7 = 0; INSERT INTO t VALUES ({n}, 'after checkpoint');",
        n = small_commits + 1
    ));
    // A record larger than one 1 MiB segment, and a few spanning pages.
    c.psql(
        "SELECT pg_logical_emit_message(true, 'pitr', repeat('pitr-wal ', 130000));
         SELECT pg_logical_emit_message(false, 'pitr', repeat('y', 20000));
         INSERT INTO big SELECT g, decode(string_agg(md5((g*h)::text), ''), 'hex') FROM generate_series(1, 5) g, generate_series(1, 400) h GROUP BY g;",
    );
    // Aborts and subtransactions.
    c.psql(
        "BEGIN; INSERT INTO t VALUES (-1, 'rolled back'); ROLLBACK;
         BEGIN; INSERT INTO t VALUES (-2, 'sub'); SAVEPOINT a; INSERT INTO t VALUES (-3, 'sub a'); SAVEPOINT b;
           INSERT INTO t VALUES (-4, 'sub b'); ROLLBACK TO b; INSERT INTO t VALUES (-5, 'after rollback to'); COMMIT;
         BEGIN; SAVEPOINT s1; INSERT INTO t VALUES (-6, 'x'); RELEASE s1; SAVEPOINT s2; INSERT INTO t VALUES (-7, 'y'); ROLLBACK;",
    );
    // Two-phase commit, including a prepared transaction that drops tables (dropped stats,
    // relfilelocators and invalidations before the two-phase xid in the commit record).
    c.psql(
        "BEGIN; INSERT INTO t VALUES (-10, '2pc'); PREPARE TRANSACTION 'pitr_gid_1';
         COMMIT PREPARED 'pitr_gid_1';
         BEGIN; INSERT INTO t VALUES (-11, '2pc rollback'); PREPARE TRANSACTION 'pitr_gid_2';
         ROLLBACK PREPARED 'pitr_gid_2';
         BEGIN; DROP TABLE drop_me; SAVEPOINT s; INSERT INTO t VALUES (-12, 'sub in 2pc'); PREPARE TRANSACTION 'pitr_gid_3';
         COMMIT PREPARED 'pitr_gid_3';
         BEGIN; DROP TABLE drop_me_too; PREPARE TRANSACTION 'pitr_gid_4';
         ROLLBACK PREPARED 'pitr_gid_4';",
    );
    c.psql(
        "SELECT pg_create_restore_point('pitr-before-switch');
         CHECKPOINT;
         SELECT pg_switch_wal();",
    );
    c.psql(&format!(
        "DO $$ BEGIN FOR i IN 1..{n} LOOP INSERT INTO t VALUES (100000 + i, 'tail ' || i); COMMIT; END LOOP; END $$;
         SELECT pg_create_restore_point('pitr-tail');
         INSERT INTO t VALUES (-100, 'last');",
        n = small_commits / 3 + 1
    ));
}

/// A fresh 1 MiB-segment cluster of `install` runs the workload; its timeline-1 segment
/// files are copied into `dest`. Returns their names, in order.
pub fn make_wal(
    install: &crate::PgInstall,
    dest: &std::path::Path,
    small_commits: u32,
) -> Vec<String> {
    let c = Cluster::start(
        install,
        crate::ClusterOptions::default()
            .wal_segsize_mb(1)
            .conf("wal_keep_size = '1GB'"),
    );
    run(&c, small_commits);
    crate::copy_wal_segments(&c.wal_dir(), dest, 1)
}
