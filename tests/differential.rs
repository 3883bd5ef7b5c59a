//! The differential test against PostgreSQL's own point-in-time recovery (issue 9 §4).
//!
//! One workload runs on a real server of each major and is archived twice in the same run:
//!
//! - by pitr: `pitr stream` into a local repo, and `pitr backup`;
//! - natively: `pg_receivewal` on its own slot into a directory, and `pg_basebackup -Fp`,
//!   taken back to back with pitr's backup, before the workload, so both reach every target.
//!
//! The workload: concurrent sessions committing, aborting and rolling back to savepoints
//! (plpgsql exception blocks) while one of them creates a restore point and switches WAL, a
//! session doing two-phase commits and rollbacks among them, 2PC left pending across a target
//! and one never finished, a DDL, a transaction with thousands of subtransactions whose
//! commit record is padded (with a non-transactional logical message) to straddle a segment
//! boundary, `pg_switch_wal()`, and a restore point name used twice.
//!
//! The targets are read from the WAL itself (`pg_waldump` of the native archive, parsed by
//! `testkit::waldump`): commit times to the microsecond, record LSNs, segment boundaries,
//! commit-time inversions (a record stamped earlier than the one before it in WAL order) and
//! same-microsecond commits, so they hit the edge cases of issue 9 §1 exactly. For each target
//! the two restores run in parallel:
//!
//! - native: the base copied, `recovery.signal`, `restore_command = 'cp ARCHIVE/%f %p'`,
//!   `recovery_target_time|lsn|name` (with PostgreSQL's default
//!   `recovery_target_inclusive`), `recovery_target_timeline = '1'` (what pitr writes: the repo
//!   has one timeline), `recovery_target_action = 'promote'`;
//! - pitr: `pitr restore --to TIME|latest`, `--to-lsn`, `--to-name` into a fresh directory
//!   (the CLI only; pitr's plan JSON is not looked at).
//!
//! Each directory is started on a private port and socket with `archive_mode = off` until it
//! leaves recovery (or the server stops: recovery failed), then every table of the workload
//! is dumped (row count and md5 of its rows in a fixed order), with the list of tables and of
//! prepared transactions. The verdict ([`verdict`]): where native recovery succeeds, pitr must
//! succeed with an identical dump; where it fails, pitr must fail with one clear `pitr: error`
//! line, or succeed. A table of target / native / pitr is printed for every major, and the test
//! fails while any target mismatches.
//!
//! What native recovery does with each target (src/backend/access/transam/xlogrecovery.c,
//! `recoveryStopsBefore` / `recoveryStopsAfter`, with the default
//! `recovery_target_inclusive = on`): a time stops before the first commit or abort record,
//! in WAL order, stamped after it; an LSN stops after replaying the first record that starts
//! at or after it; a name stops after the first restore point of that name. Each decision is
//! taken once the whole record has been read, so the WAL must hold the end of that record.
//! Commit times are stamped just before the record is inserted (xact.c,
//! `RecordTransactionCommit`; twophase.c, `RecordTransactionCommitPrepared`), so a session
//! that loses the CPU in between leaves a commit-time inversion: rare, hence the rounds.
//!
//! CI time: every target runs on every major (about 12 s a major here: 1 MiB segments, small
//! tables, the two restores of a target in parallel).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::waldump::{self, DumpRecord};
use testkit::{Cluster, PgInstall};

use crate::stream::{TestRepo, opts, pitr, repo_segments, source, start_stream, stop};

/// The workload's WAL segment size (`opts()`: 1 MiB).
const SEG: u64 = 1 << 20;

/// How long a restored directory may take to leave recovery.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

/// A restore target, given to both methods.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Latest,
    /// An instant: µs since 2000-01-01 UTC (PostgreSQL's `TimestampTz`).
    Time(i64),
    Lsn(u64),
    Name(String),
}

fn lsn_text(l: u64) -> String {
    format!("{:X}/{:08X}", l >> 32, l & 0xFFFF_FFFF)
}

/// An instant as RFC 3339 with microseconds and offset, accepted by pitr and PostgreSQL.
fn time_text(pg_micros: i64) -> String {
    let s = waldump::format_pg_timestamp(pg_micros);
    format!(
        "{}+00:00",
        s.strip_suffix(" UTC").unwrap().replacen(' ', "T", 1)
    )
}

impl Target {
    fn pitr_args(&self) -> Vec<String> {
        match self {
            Target::Latest => vec!["--to".into(), "latest".into()],
            Target::Time(t) => vec!["--to".into(), time_text(*t)],
            Target::Lsn(l) => vec!["--to-lsn".into(), lsn_text(*l)],
            Target::Name(n) => vec!["--to-name".into(), n.clone()],
        }
    }

    /// The native recovery setting (none for latest: replay the whole archive).
    fn native_setting(&self) -> Option<String> {
        match self {
            Target::Latest => None,
            Target::Time(t) => Some(format!("recovery_target_time = '{}'", time_text(*t))),
            Target::Lsn(l) => Some(format!("recovery_target_lsn = '{}'", lsn_text(*l))),
            Target::Name(n) => Some(format!("recovery_target_name = '{n}'")),
        }
    }

    fn show(&self) -> String {
        match self {
            Target::Latest => "latest".into(),
            Target::Time(t) => time_text(*t),
            Target::Lsn(l) => format!("LSN {}", lsn_text(*l)),
            Target::Name(n) => format!("name {n:?}"),
        }
    }
}

/// One target of the list.
#[derive(Clone, Debug)]
struct Case {
    /// Which edge case it is (issue 9 §1 numbering where it has one).
    label: String,
    target: Target,
}

/// What a restored directory holds: one line per table (`name rows md5`), the table list, the
/// prepared transactions.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Dump {
    lines: Vec<String>,
    rows: u64,
    prepared: String,
}

impl Dump {
    fn summary(&self) -> String {
        // FNV-1a of the whole dump: equal dumps show the same tag.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.lines.join("\n").bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!(
            "ok {} rows #{:06x} 2pc[{}]",
            self.rows,
            h & 0xFF_FFFF,
            self.prepared
        )
    }
}

/// The result of one restore.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Recovery ended, the server promoted; its contents.
    Recovered(Dump),
    /// The server stopped (or stayed in recovery): its FATAL lines.
    NoRecovery(String),
    /// `pitr restore` exited non-zero: its exit code and its `pitr: error` lines.
    Refused {
        code: Option<i32>,
        errors: Vec<String>,
    },
    /// The server recovered but could not be dumped (the test cannot compare).
    DumpFailed(String),
}

impl Outcome {
    fn show(&self) -> String {
        match self {
            Outcome::Recovered(d) => d.summary(),
            Outcome::NoRecovery(why) => format!("FAILED: {}", fatal(why)),
            Outcome::Refused { code, errors } => format!(
                "REFUSED (exit {code:?}): {}",
                errors
                    .first()
                    .map(String::as_str)
                    .unwrap_or("(no error line)")
            ),
            Outcome::DumpFailed(e) => format!("DUMP FAILED: {}", first_line(e)),
        }
    }
}

/// The first FATAL/PANIC message of a server log excerpt, without the log line prefix.
fn fatal(s: &str) -> &str {
    s.lines()
        .find_map(|l| {
            l.find("FATAL:")
                .or_else(|| l.find("PANIC:"))
                .map(|i| l[i..].trim())
        })
        .unwrap_or_else(|| first_line(s))
}

fn first_line(s: &str) -> &str {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(nothing logged)")
}

/// The comparison rule. `Ok` with a note when pitr behaves as it must, `Err` with the reason.
fn verdict(native: &Outcome, with_pitr: &Outcome) -> Result<&'static str, String> {
    let clear_refusal =
        |code: &Option<i32>, errors: &[String]| *code == Some(1) && errors.len() == 1;
    match (native, with_pitr) {
        (Outcome::Recovered(a), Outcome::Recovered(b)) if a == b => Ok("same"),
        (Outcome::Recovered(a), Outcome::Recovered(b)) => {
            let mut diff = String::new();
            for l in a.lines.iter().filter(|l| !b.lines.contains(l)) {
                let _ = write!(diff, "\n    native only: {l}");
            }
            for l in b.lines.iter().filter(|l| !a.lines.contains(l)) {
                let _ = write!(diff, "\n    pitr only:   {l}");
            }
            Err(format!("different contents:{diff}"))
        }
        (Outcome::Recovered(_), Outcome::Refused { .. }) => {
            Err("pitr refused a target native recovery reaches".into())
        }
        (Outcome::Recovered(_), Outcome::NoRecovery(_)) => {
            Err("pitr restore exited 0 but its directory does not recover".into())
        }
        (Outcome::NoRecovery(_), Outcome::Refused { code, errors })
            if clear_refusal(code, errors) =>
        {
            Ok("both fail (pitr refuses)")
        }
        (Outcome::NoRecovery(_), Outcome::Recovered(_)) => Ok("native fails, pitr recovers"),
        (Outcome::NoRecovery(_), Outcome::NoRecovery(_)) => {
            Err("pitr restore exited 0 for a target that cannot be recovered".into())
        }
        (_, Outcome::Refused { code, errors }) => Err(format!(
            "pitr's refusal is not one clear line (exit {code:?}, {} error line(s))",
            errors.len()
        )),
        (Outcome::DumpFailed(_), _) | (_, Outcome::DumpFailed(_)) => {
            Err("a restored server could not be dumped".into())
        }
        (Outcome::Refused { .. }, _) => Err("native recovery cannot be refused".into()),
    }
}

/// Every table of schema `public` (count and md5 of its rows in text order), the table list,
/// and `pg_prepared_xacts`.
fn dump(c: &Cluster) -> Result<Dump, String> {
    let tables = c.try_psql(
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace",
    )?;
    let mut sql = String::from("SET lock_timeout = '10s';\n");
    for t in tables.split(',').filter(|t| !t.is_empty()) {
        let _ = writeln!(
            sql,
            "SELECT '{t} ' || count(*) || ' ' || md5(coalesce(string_agg(r::text, ',' ORDER BY r::text), '')) FROM public.{t} r;"
        );
    }
    sql.push_str(
        "SELECT 'prepared ' || coalesce(string_agg(gid, ',' ORDER BY gid), '') FROM pg_prepared_xacts;\n",
    );
    let out = c.try_psql(&sql)?;
    let mut lines = vec![format!("tables {tables}")];
    let mut rows = 0;
    let mut prepared = String::new();
    for l in out.lines() {
        if let Some(p) = l.strip_prefix("prepared ") {
            prepared = p.to_owned();
        } else if let Some(n) = l.split(' ').nth(1).and_then(|n| n.parse::<u64>().ok()) {
            rows += n;
        }
        lines.push(l.to_owned());
    }
    Ok(Dump {
        lines,
        rows,
        prepared,
    })
}

/// Starts a restored directory until it leaves recovery, dumps it, stops it.
fn recover_and_dump(install: &PgInstall, dir: &Path) -> Outcome {
    match Cluster::recover(install, dir, &["archive_mode=off"], RECOVERY_TIMEOUT) {
        Err(why) => Outcome::NoRecovery(why),
        Ok(mut c) => {
            let d = dump(&c);
            c.stop();
            match d {
                Ok(d) => Outcome::Recovered(d),
                Err(e) => Outcome::DumpFailed(e),
            }
        }
    }
}

/// Native PITR: the `pg_basebackup` copy, `recovery.signal`, `restore_command` over the
/// `pg_receivewal` archive and the target.
fn native_restore(
    install: &PgInstall,
    base: &Path,
    archive: &Path,
    dest: &Path,
    t: &Target,
) -> Outcome {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(base)
        .arg(dest)
        .status()
        .unwrap()
        .success();
    assert!(ok, "copy the base backup to {}", dest.display());
    std::fs::write(dest.join("recovery.signal"), "").unwrap();
    let mut conf = format!(
        "\n# native PITR (differential test)\nrestore_command = 'cp {}/%f %p'\nrecovery_target_timeline = '1'\nrecovery_target_action = 'promote'\n",
        archive.display()
    );
    if let Some(s) = t.native_setting() {
        conf.push_str(&s);
        conf.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dest.join("postgresql.auto.conf"))
        .unwrap();
    std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
    drop(f);
    recover_and_dump(install, dest)
}

/// pitr: `pitr restore` with the target, then the same start and dump.
fn pitr_restore(install: &PgInstall, repo: &TestRepo, dest: &Path, t: &Target) -> Outcome {
    let o = repo
        .apply(
            pitr()
                .arg("restore")
                .args(t.pitr_args())
                .arg("-D")
                .arg(dest),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if !o.status.success() {
        let errors = String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter(|l| l.starts_with("pitr: error"))
            .map(str::to_owned)
            .collect();
        return Outcome::Refused {
            code: o.status.code(),
            errors,
        };
    }
    recover_and_dump(install, dest)
}

/// A commit or abort record of the workload's WAL.
#[derive(Clone, Debug)]
struct Xact {
    lsn: u64,
    time: i64,
    id: String,
    xid: u32,
    tot_len: u32,
}

/// What the WAL says about the workload: its transaction ends in WAL order, restore points,
/// every record's LSN.
struct Wal {
    records: Vec<DumpRecord>,
    xacts: Vec<Xact>,
}

impl Wal {
    fn read(install: &PgInstall, archive: &Path, segs: &[String]) -> Wal {
        let text = waldump::dump_dir(
            install,
            archive,
            segs.first().unwrap(),
            segs.last().unwrap(),
        );
        let records = waldump::parse(&text);
        let xacts: Vec<Xact> = records
            .iter()
            .filter(|r| {
                r.rmgr == "Transaction"
                    && matches!(
                        r.id.as_str(),
                        "COMMIT" | "ABORT" | "COMMIT_PREPARED" | "ABORT_PREPARED"
                    )
            })
            .map(|r| {
                let (ts, _) = waldump::xact_time_and_xid(&r.desc)
                    .unwrap_or_else(|| panic!("no time in {r:?}"));
                let time = waldump::parse_pg_timestamp(&ts)
                    .unwrap_or_else(|| panic!("cannot parse time {ts:?} of {r:?}"));
                assert_eq!(waldump::format_pg_timestamp(time), ts, "time round trip");
                Xact {
                    lsn: r.lsn,
                    time,
                    id: r.id.clone(),
                    xid: r.xid,
                    tot_len: r.tot_len,
                }
            })
            .collect();
        assert!(xacts.len() > 500, "only {} transaction ends", xacts.len());
        Wal { records, xacts }
    }

    fn commit_of(&self, xid: u32) -> &Xact {
        self.xacts
            .iter()
            .find(|x| x.xid == xid && x.id == "COMMIT")
            .unwrap_or_else(|| panic!("no COMMIT of xid {xid} in the WAL"))
    }

    fn restore_points(&self, name: &str) -> Vec<u64> {
        self.records
            .iter()
            .filter(|r| r.id == "RESTORE_POINT" && r.desc == name)
            .map(|r| r.lsn)
            .collect()
    }

    /// The start of the first record after `lsn`.
    fn next_record(&self, lsn: u64) -> u64 {
        self.records
            .iter()
            .map(|r| r.lsn)
            .find(|&l| l > lsn)
            .unwrap_or_else(|| panic!("no record after {}", lsn_text(lsn)))
    }
}

/// The driver's numbered commits into `ledger` (their xids are read back from `xmin`).
fn mark(c: &Cluster, id: u32, note: &str) {
    c.psql(&format!("INSERT INTO ledger VALUES ({id}, '{note}')"));
}

/// Concurrent sessions per round, and iterations (transactions) each.
const SESSIONS: u32 = 8;
const ITERATIONS: u32 = 2000;
/// Rounds of the concurrent phase at most (it ends after the first round whose WAL holds a
/// commit-time inversion).
const MAX_ROUNDS: u32 = 8;

/// One concurrent session of round `round`: a transaction per iteration, all started at the
/// same instant `start` (so they overlap). Most transactions only take an xid, so their
/// commit records come dense (what makes commit-time inversions likely); every 4th inserts a
/// row, every 5th updates the previous row, every 7th rolls a subtransaction back (a plpgsql
/// exception block: a partial rollback), every 11th aborts. In round 0, session 0 also creates
/// the restore point `rp_unique` and switches WAL on its way.
fn session_sql(s: u32, round: u32, start: &str) -> String {
    let extra = if s == 0 && round == 0 {
        format!(
            "IF i = {a} THEN PERFORM pg_create_restore_point('rp_unique'); END IF;
             IF i = {b} THEN PERFORM pg_switch_wal(); END IF;",
            a = ITERATIONS / 3,
            b = 3 * ITERATIONS / 4
        )
    } else {
        String::new()
    };
    let base = round * ITERATIONS;
    format!(
        "SELECT pg_sleep_until('{start}') IS NULL;
         DO $$ DECLARE k int; BEGIN FOR i IN 1..{ITERATIONS} LOOP
           k := {base} + i;
           IF i % 4 = 0 THEN
             INSERT INTO acct VALUES ({s}, k, 'row ' || k);
           ELSE
             PERFORM pg_current_xact_id();
           END IF;
           IF i % 7 = 0 THEN
             BEGIN
               INSERT INTO acct VALUES ({s}, -k, 'rolled back subxact');
               UPDATE acct SET v = 'never' WHERE sess = {s} AND seq = k - 3;
               RAISE EXCEPTION 'partial rollback';
             EXCEPTION WHEN raise_exception THEN NULL;
             END;
           END IF;
           IF i % 5 = 0 THEN UPDATE acct SET v = v || '+' WHERE sess = {s} AND seq = k - 1 - (i - 1) % 4; END IF;
           {extra}
           IF i % 11 = 0 THEN ROLLBACK; ELSE COMMIT; END IF;
         END LOOP; END $$;"
    )
}

/// A session doing two-phase commits (every 10th rolled back) among the others.
fn twopc_session_sql() -> String {
    let mut sql = String::new();
    for k in 1..=40 {
        let finish = if k % 10 == 0 { "ROLLBACK" } else { "COMMIT" };
        let _ = writeln!(
            sql,
            "BEGIN; INSERT INTO twopc VALUES ('c_{k}', {k}); PREPARE TRANSACTION 'c_{k}'; {finish} PREPARED 'c_{k}';"
        );
    }
    sql
}

/// The large transaction: 5000 subtransactions (every 10th rolled back, so the rest are
/// listed in the commit record: ~18 kB), then, right before COMMIT, a non-transactional
/// logical message sized from `pg_current_wal_insert_lsn()` so that the commit record starts
/// about 6 kB before a segment's end and so ends in the next segment.
fn big_transaction_sql() -> String {
    format!(
        "BEGIN;
         DO $$ BEGIN FOR i IN 1..5000 LOOP
           BEGIN
             INSERT INTO big VALUES (i, 'sub ' || i);
             IF i % 10 = 0 THEN RAISE EXCEPTION 'partial'; END IF;
           EXCEPTION WHEN raise_exception THEN NULL;
           END;
         END LOOP; END $$;
         SELECT pg_logical_emit_message(false, 'pad', repeat('x', (
           SELECT (CASE WHEN left_in_seg > 6000 + 2000 THEN left_in_seg ELSE left_in_seg + {SEG} END
                   - 6000) * 8168 / 8192 - 100
           FROM (SELECT ({SEG} - ((pg_current_wal_insert_lsn() - '0/0'::pg_lsn) % {SEG}))::bigint
                 AS left_in_seg) p)::int)) IS NOT NULL;
         COMMIT;"
    )
}

/// Adjacent commit/abort records between two LSNs of the cluster's own `pg_wal` whose times
/// decrease in WAL order.
fn inversions_in(c: &Cluster, from: &str, to: &str) -> usize {
    let out = c
        .install()
        .command("pg_waldump")
        .arg("-p")
        .arg(c.wal_dir())
        .args(["-r", "Transaction", "-s", from, "-e", to])
        .output()
        .unwrap();
    let times: Vec<i64> = waldump::parse(&String::from_utf8_lossy(&out.stdout))
        .iter()
        .filter(|r| {
            matches!(
                r.id.as_str(),
                "COMMIT" | "ABORT" | "COMMIT_PREPARED" | "ABORT_PREPARED"
            )
        })
        .filter_map(|r| waldump::xact_time_and_xid(&r.desc))
        .filter_map(|(t, _)| waldump::parse_pg_timestamp(&t))
        .collect();
    times.windows(2).filter(|w| w[0] > w[1]).count()
}

/// The full workload, after both backups. Returns the LSN `pg_switch_wal()` returned in the
/// middle of it (target 1b) and an insert LSN taken while the server was idle.
fn workload(c: &Cluster) -> (u64, u64) {
    // Two commits 30 ms apart: a time between them, and the second one's exact time.
    mark(c, 1, "first after the backups");
    std::thread::sleep(Duration::from_millis(30));
    mark(c, 2, "second");
    std::thread::sleep(Duration::from_millis(30));
    mark(c, 3, "third");
    let idle_lsn = parse_lsn(&c.psql("SELECT pg_current_wal_insert_lsn()"));
    // Aborts, savepoints with a partial rollback, 2PC: one committed after a marker commit
    // made while it was prepared, one rolled back, one never finished; a DDL.
    c.psql(
        "BEGIN; INSERT INTO ledger VALUES (-1, 'rolled back'); ROLLBACK;
         BEGIN; INSERT INTO ledger VALUES (10, 'outer'); SAVEPOINT a; INSERT INTO ledger VALUES (11, 'in a');
           SAVEPOINT b; INSERT INTO ledger VALUES (12, 'in b, rolled back'); ROLLBACK TO b;
           INSERT INTO ledger VALUES (13, 'after rollback to b'); RELEASE a; COMMIT;
         BEGIN; INSERT INTO twopc VALUES ('g_commit', 1); PREPARE TRANSACTION 'g_commit';",
    );
    mark(c, 20, "while g_commit is prepared");
    std::thread::sleep(Duration::from_millis(30));
    c.psql(
        "COMMIT PREPARED 'g_commit';
         BEGIN; INSERT INTO twopc VALUES ('g_rollback', 2); PREPARE TRANSACTION 'g_rollback';
         ROLLBACK PREPARED 'g_rollback';
         BEGIN; INSERT INTO twopc VALUES ('g_forever', 3); PREPARE TRANSACTION 'g_forever';
         DROP TABLE doomed;
         SELECT pg_create_restore_point('rp_dup');
         CHECKPOINT;",
    );
    // The concurrent phase, in rounds until one holds a commit-time inversion (they need a
    // session to lose the CPU between stamping its commit and inserting the record: rare).
    let mut round = 0;
    loop {
        let from = c.psql("SELECT pg_current_wal_insert_lsn()");
        let start = c.psql("SELECT clock_timestamp() + interval '300 ms'");
        std::thread::scope(|s| {
            let mut handles = Vec::new();
            for k in 0..SESSIONS {
                let start = &start;
                handles.push(s.spawn(move || c.psql(&session_sql(k, round, start))));
            }
            if round == 0 {
                handles.push(s.spawn(|| c.psql(&twopc_session_sql())));
            }
            for h in handles {
                h.join().unwrap();
            }
        });
        let to = c.psql("SELECT pg_current_wal_insert_lsn()");
        let found = inversions_in(c, &from, &to);
        round += 1;
        eprintln!(
            "PG {}: concurrent round {round}: {found} commit-time inversion(s)",
            c.install().major
        );
        if found > 0 || round == MAX_ROUNDS {
            break;
        }
    }
    // The large commit across a segment boundary, on an idle server.
    mark(c, 30, "before the large commit");
    std::thread::sleep(Duration::from_millis(30));
    c.psql(&big_transaction_sql());
    std::thread::sleep(Duration::from_millis(30));
    mark(c, 31, "after the large commit");
    let switch = parse_lsn(&c.psql("SELECT pg_switch_wal()"));
    mark(c, 32, "after the switch");
    c.psql(
        "SELECT pg_create_restore_point('rp_dup');
         CREATE TABLE created_late AS SELECT generate_series(1, 10) AS id;",
    );
    mark(c, 40, "last");
    (switch, idle_lsn)
}

fn parse_lsn(s: &str) -> u64 {
    let (h, l) = s.trim().split_once('/').unwrap();
    (u64::from_str_radix(h, 16).unwrap() << 32) | u64::from_str_radix(l, 16).unwrap()
}

thread_local! {
    /// The inverted transaction of case 3 (set by [`targets`]).
    static INVERTED_XID: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Chooses the targets from the WAL. Prints what it found (inversions, same-µs commits).
fn targets(c: &Cluster, wal: &Wal, switch: u64, idle_lsn: u64) -> Vec<Case> {
    let xid_of = |id: u32| -> u32 {
        c.psql(&format!("SELECT xmin FROM ledger WHERE id = {id}"))
            .parse()
            .unwrap()
    };
    let m = |id: u32| wal.commit_of(xid_of(id)).clone();
    let (m1, m2, m20, m30, m31) = (m(1), m(2), m(20), m(30), m(31));
    let mut cases = Vec::new();
    let mut add = |label: &str, target: Target| {
        cases.push(Case {
            label: label.to_owned(),
            target,
        });
    };
    add("7 latest", Target::Latest);
    add(
        "2 time between two commits",
        Target::Time((m1.time + m2.time) / 2),
    );
    add("2 a commit's exact time", Target::Time(m2.time));

    // The concurrent phase: between the first rp_dup and marker 30.
    let rp_dup = wal.restore_points("rp_dup");
    assert_eq!(rp_dup.len(), 2, "two restore points named rp_dup");
    let conc: Vec<&Xact> = wal
        .xacts
        .iter()
        .filter(|x| x.lsn > rp_dup[0] && x.lsn < m30.lsn)
        .collect();
    let inversions: Vec<(&Xact, &Xact)> = conc
        .windows(2)
        .filter(|w| w[0].time > w[1].time)
        .map(|w| (w[0], w[1]))
        .collect();
    let mut same_us: Vec<(&Xact, &Xact)> = Vec::new();
    for (i, a) in conc.iter().enumerate() {
        if let Some(b) = conc[i + 1..].iter().find(|b| b.time == a.time) {
            same_us.push((a, b));
        }
    }
    eprintln!(
        "PG {}: {} transaction ends in the concurrent phase, {} commit-time inversions, {} same-microsecond pairs",
        c.install().major,
        conc.len(),
        inversions.len(),
        same_us.len()
    );
    // Case 3: a transaction stamped at or before T whose record follows one stamped after T.
    // Prefer a commit (its rows are what PostgreSQL excludes).
    let inv = inversions
        .iter()
        .filter(|(_, b)| b.id.starts_with("COMMIT"))
        .nth(inversions.len() / 4)
        .or(inversions.first())
        .copied();
    match inv {
        Some((a, b)) => {
            eprintln!(
                "  inversion: {} xid {} at {} ({}) is followed by {} xid {} at {} ({}); target {}",
                a.id,
                a.xid,
                lsn_text(a.lsn),
                time_text(a.time),
                b.id,
                b.xid,
                lsn_text(b.lsn),
                time_text(b.time),
                time_text(b.time)
            );
            add("3 time in a commit-time inversion", Target::Time(b.time));
            INVERTED_XID.with(|x| x.set(Some(b.xid)));
        }
        None => panic!(
            "PG {}: the concurrent phase produced no commit-time inversion ({} transaction ends): the workload must be made more concurrent",
            c.install().major,
            conc.len()
        ),
    }
    // Case 4: cannot be forced; target one if the run produced it.
    match same_us.first() {
        Some((a, b)) => {
            eprintln!(
                "  same microsecond: {} xid {} at {} and {} xid {} at {}, both {}",
                a.id,
                a.xid,
                lsn_text(a.lsn),
                b.id,
                b.xid,
                lsn_text(b.lsn),
                time_text(a.time)
            );
            add("4 same-microsecond commits", Target::Time(a.time));
        }
        None => eprintln!("  no same-microsecond commits in this run: case 4 not targeted"),
    }
    // Case 5: a time while g_commit is prepared (restored with it pending).
    add("5 time while a 2PC is prepared", Target::Time(m20.time));
    // Case 1a: the large commit straddles a segment boundary; a time just before it.
    let big = wal.xacts.iter().max_by_key(|x| x.tot_len).unwrap().clone();
    let after_big = wal.next_record(big.lsn);
    assert!(
        big.lsn > m30.lsn && big.lsn < m31.lsn && big.tot_len > 16_000,
        "the large commit is not where the workload put it: {big:?}"
    );
    assert!(
        after_big / SEG > big.lsn / SEG,
        "the large commit at {} ({} bytes, {} bytes before its segment's end) does not cross into the next segment (next record at {})",
        lsn_text(big.lsn),
        big.tot_len,
        SEG - big.lsn % SEG,
        lsn_text(after_big)
    );
    let before_big = wal
        .xacts
        .iter()
        .filter(|x| x.lsn < big.lsn && x.lsn > m30.lsn)
        .map(|x| x.time)
        .max()
        .unwrap_or(m30.time);
    assert!(before_big < big.time - 1, "{big:?}");
    eprintln!(
        "  large commit: xid {} at {} ({} bytes, starts {} bytes before the end of its segment)",
        big.xid,
        lsn_text(big.lsn),
        big.tot_len,
        SEG - big.lsn % SEG
    );
    add(
        "1a time just before a large commit crossing a segment",
        Target::Time(big.time - 1),
    );
    // Case 1b: the LSN pg_switch_wal() returned.
    assert!(switch > m31.lsn, "switch {}", lsn_text(switch));
    add("1b LSN pg_switch_wal() returned", Target::Lsn(switch));
    // Case 8: LSNs in the middle of the workload and at a segment boundary.
    // A commit of the concurrent phase whose transaction inserted a row (its heap record
    // carries the xid), so including or excluding it shows in the data.
    let wrote: std::collections::HashSet<u32> = wal
        .records
        .iter()
        .filter(|r| r.rmgr == "Heap" && r.id == "INSERT")
        .map(|r| r.xid)
        .collect();
    let mid = conc[conc.len() / 2..]
        .iter()
        .find(|x| x.id == "COMMIT" && wrote.contains(&x.xid))
        .expect("a commit that inserted a row in the concurrent phase");
    add(
        "8 LSN of a commit record that wrote a row",
        Target::Lsn(mid.lsn),
    );
    add("8 LSN taken on an idle server", Target::Lsn(idle_lsn));
    // A segment boundary that no switch made (a record runs into it), in the concurrent phase
    // if there is one there, else elsewhere in the workload.
    let switches: Vec<u64> = wal
        .records
        .iter()
        .filter(|r| r.id == "SWITCH")
        .map(|r| r.lsn / SEG + 1)
        .collect();
    let natural = |from: u64, to: u64| (from / SEG + 1..=to / SEG).find(|s| !switches.contains(s));
    let boundary = natural(conc[0].lsn, conc[conc.len() - 1].lsn)
        .or_else(|| natural(m1.lsn, m31.lsn))
        .map(|s| s * SEG)
        .unwrap_or_else(|| {
            panic!("no segment boundary in the workload that a switch did not make")
        });
    add("8 LSN at a segment boundary", Target::Lsn(boundary));
    add(
        "1b LSN at a segment's end (boundary - 1)",
        Target::Lsn(boundary - 1),
    );
    // Where native recovery fails ("recovery ended before configured recovery target was
    // reached"), pitr must refuse in one line or succeed.
    let last_xact = wal.xacts.iter().map(|x| x.time).max().unwrap();
    add(
        "a time after the last commit (native fails)",
        Target::Time(last_xact + 1_000_000),
    );
    // Case 6: a unique restore point, and a duplicate name (PostgreSQL stops at the first).
    assert_eq!(wal.restore_points("rp_unique").len(), 1);
    add("6 restore point", Target::Name("rp_unique".into()));
    add(
        "6 duplicate restore point name",
        Target::Name("rp_dup".into()),
    );
    cases
}

/// Kills `pitr stream` when the test panics before stopping it (it would retry forever).
struct StreamGuard(Option<std::process::Child>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One major's results: a row per target.
struct Report {
    major: u32,
    rows: Vec<(Case, Outcome, Outcome, Result<&'static str, String>)>,
    note: String,
    secs: f64,
}

fn run_major(install: &PgInstall) -> Report {
    let t0 = Instant::now();
    let major = install.major;
    let c = Cluster::start(
        install,
        opts()
            .conf("autovacuum = off")
            .conf("max_prepared_transactions = 20"),
    );
    let tmp = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let archive = tmp.path().join("native-archive");
    let mut receiver = c.receive_wal(&archive, "native", &tmp.path().join("receivewal.log"));
    let repo = TestRepo::local(&tmp.path().join("repo"));
    let mut stream = StreamGuard(Some(start_stream(
        &c,
        &repo,
        &tmp.path().join("stream.log"),
    )));
    c.psql(
        "CREATE TABLE acct (sess int, seq int, v text, PRIMARY KEY (sess, seq));
         CREATE TABLE ledger (id int PRIMARY KEY, note text);
         CREATE TABLE big (id int, note text);
         CREATE TABLE twopc (gid text, v int);
         CREATE TABLE doomed (id int);
         INSERT INTO ledger VALUES (0, 'before the backups');
         INSERT INTO doomed VALUES (1);",
    );
    // The two backups, back to back.
    let o = repo
        .apply(
            pitr()
                .args([
                    "backup",
                    "--label",
                    "diff",
                    "--wal-timeout",
                    "60s",
                    "--source",
                ])
                .arg(source(&c)),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "pitr backup: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let base = tmp.path().join("native-base");
    c.base_backup_plain(&base);
    let t_backups = t0.elapsed();

    let (switch, idle_lsn) = workload(&c);
    // Both archives complete through the last segment of the workload.
    let last = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    c.switch_wal();
    receiver.wait_for_segment(&last, Duration::from_secs(60));
    testkit::wait_for(
        "pitr to archive the workload",
        Duration::from_secs(60),
        || repo_segments(&repo, 1).contains(&last),
    );
    let segs: Vec<String> = receiver
        .segments(1)
        .into_iter()
        .filter(|s| s.as_str() <= last.as_str())
        .collect();
    let wal = Wal::read(install, receiver.dir(), &segs);
    for id in [
        "COMMIT",
        "ABORT",
        "PREPARE",
        "COMMIT_PREPARED",
        "ABORT_PREPARED",
        "RESTORE_POINT",
        "SWITCH",
    ] {
        assert!(
            wal.records.iter().any(|r| r.id == id),
            "PG {major}: the workload wrote no {id} record"
        );
    }
    let cases = targets(&c, &wal, switch, idle_lsn);
    let t_workload = t0.elapsed();
    // The source is no longer needed: its CPU goes to the restores.
    receiver.stop();
    stop(stream.0.take().unwrap());
    drop(c);

    // pitr names the transaction PostgreSQL excludes although it is stamped at the target.
    if let (Some(xid), Some(case)) = (
        INVERTED_XID.with(std::cell::Cell::take),
        cases.iter().find(|c| c.label.starts_with("3 ")),
    ) {
        let o = repo
            .apply(
                pitr()
                    .args(["restore", "--dry-run", "--json"])
                    .args(case.target.pitr_args())
                    .arg("-D")
                    .arg(tmp.path().join("dry")),
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let named: Vec<u64> = v["plan"]["excluded_despite_time"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|x| x["xid"].as_u64())
            .collect();
        assert!(
            named.contains(&u64::from(xid)),
            "PG {}: the plan must name xid {xid}, stamped at the target but committed after the first excluded transaction: {named:?}",
            install.major
        );
    }
    let mut rows = Vec::new();
    for (k, case) in cases.into_iter().enumerate() {
        let nd = tmp.path().join(format!("native-{k}"));
        let pd = tmp.path().join(format!("pitr-{k}"));
        let (native, with_pitr) = std::thread::scope(|s| {
            let n = s.spawn(|| native_restore(install, &base, &archive, &nd, &case.target));
            let p = s.spawn(|| pitr_restore(install, &repo, &pd, &case.target));
            (n.join().unwrap(), p.join().unwrap())
        });
        let v = verdict(&native, &with_pitr);
        let _ = std::fs::remove_dir_all(&nd);
        let _ = std::fs::remove_dir_all(&pd);
        rows.push((case, native, with_pitr, v));
    }
    let secs = t0.elapsed().as_secs_f64();
    Report {
        major,
        note: format!(
            "{} targets; backups {:.1}s, workload+archive {:.1}s, restores {:.1}s",
            rows.len(),
            t_backups.as_secs_f64(),
            (t_workload - t_backups).as_secs_f64(),
            secs - t_workload.as_secs_f64()
        ),
        rows,
        secs,
    }
}

fn print_report(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== PostgreSQL {}: pitr vs native PITR, {:.1}s ({})",
        r.major, r.secs, r.note
    );
    let _ = writeln!(
        out,
        "{:<56} {:<34} {:<42} {:<42} verdict",
        "target", "value", "native", "pitr"
    );
    for (case, n, p, v) in &r.rows {
        let _ = writeln!(
            out,
            "{:<56} {:<34} {:<42} {:<42} {}",
            case.label,
            case.target.show(),
            n.show(),
            p.show(),
            match v {
                Ok(note) => format!("ok: {note}"),
                Err(e) => format!("MISMATCH: {e}"),
            }
        );
    }
    out
}

/// The permanent differential test: see the module documentation.
#[test]
fn restores_match_native_pitr_on_every_target() {
    let mut reports = Vec::new();
    for install in PgInstall::for_tests() {
        let r = run_major(&install);
        eprint!("{}", print_report(&r));
        reports.push(r);
    }
    let mut failures = String::new();
    for r in &reports {
        for (case, _, _, v) in &r.rows {
            if let Err(e) = v {
                let _ = writeln!(
                    failures,
                    "PG {} {} ({}): {e}",
                    r.major,
                    case.label,
                    case.target.show()
                );
            }
        }
    }
    let tables: String = reports.iter().map(print_report).collect();
    assert!(
        failures.is_empty(),
        "pitr does not match native PITR:\n{failures}{tables}"
    );
}

/// The comparison rule itself, without PostgreSQL.
#[test]
fn differential_verdict_rules() {
    let d = |rows: u64| {
        Outcome::Recovered(Dump {
            lines: vec![format!("t {rows} x")],
            rows,
            prepared: String::new(),
        })
    };
    let refused = |code, n: usize| Outcome::Refused {
        code,
        errors: vec!["pitr: error: x".to_owned(); n],
    };
    let failed = Outcome::NoRecovery("FATAL: x".into());
    assert!(verdict(&d(1), &d(1)).is_ok());
    assert!(
        verdict(&d(1), &d(2))
            .unwrap_err()
            .contains("pitr only:   t 2 x")
    );
    assert!(verdict(&d(1), &refused(Some(1), 1)).is_err());
    assert!(verdict(&d(1), &failed).is_err());
    assert!(verdict(&failed, &refused(Some(1), 1)).is_ok());
    assert!(verdict(&failed, &refused(Some(1), 2)).is_err());
    assert!(verdict(&failed, &refused(Some(101), 1)).is_err());
    assert!(verdict(&failed, &d(1)).is_ok());
    assert!(verdict(&failed, &failed).is_err());
    assert!(verdict(&d(1), &Outcome::DumpFailed("x".into())).is_err());
}
