//! walfmt against each version's own `pg_waldump`, on WAL freshly made by a real server
//! (see `testkit::workload`). Under `CI=true` all four majors must be installed.

use std::collections::BTreeMap;

use testkit::waldump;
use testkit::{Cluster, ClusterOptions, PgInstall};
use walfmt::{DecoderConfig, Summarizer, WalFileName, WalSegSize};

use crate::common::decode_segments;

fn differential(major: u32) {
    let Some(install) = PgInstall::for_tests()
        .into_iter()
        .find(|i| i.major == major)
    else {
        eprintln!("PostgreSQL {major} not in PITR_TEST_PG: skipped");
        return;
    };
    let label = format!("PostgreSQL {major}");
    let tmp = tempfile::tempdir().unwrap();
    let names = {
        let c = Cluster::start(
            &install,
            ClusterOptions::default()
                .wal_segsize_mb(1)
                .conf("wal_keep_size = '1GB'"),
        );
        assert_eq!(c.server_version_num() / 10000, major);
        testkit::workload::run(&c, 300);
        testkit::copy_wal_segments(&c.wal_dir(), tmp.path(), 1)
    };
    let seg = WalSegSize::new(1 << 20).unwrap();
    let dump = waldump::dump_dir(&install, tmp.path(), &names[0], &names[names.len() - 1]);
    let theirs = waldump::parse(&dump);
    waldump::assert_coverage(&label, &theirs, seg.bytes());

    let WalFileName::Segment(_, first) = WalFileName::parse(&names[0], seg).unwrap() else {
        unreachable!()
    };
    let segments: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(tmp.path().join(n)).unwrap())
        .collect();
    // Whole segments, and odd-sized pieces that split headers and records anywhere.
    for chunk in [seg.bytes() as usize, 7919, 13] {
        let (ours, end) = decode_segments(first.start_lsn(seg).unwrap(), seg, &segments, chunk);
        waldump::assert_same(&format!("{label}, {chunk}-byte feeds"), &ours, &theirs);
        assert!(end.is_clean(), "{label}: WAL ended with {end}");
    }

    // Per segment: the summarizer agrees with pg_waldump's records grouped by the segment of
    // their start LSN: record, commit and abort counts, each commit's time, min and max.
    let mut sum = Summarizer::new(DecoderConfig::new(seg), first).unwrap();
    for s in &segments {
        sum.feed(s).unwrap();
    }
    let summaries = sum.finish().unwrap();
    let mut by_seg: BTreeMap<u64, (u64, u64, u64, Vec<String>)> = BTreeMap::new();
    for t in &theirs {
        let e = by_seg.entry(t.lsn / seg.bytes()).or_default();
        e.0 += 1;
        if t.rmgr == "Transaction" && t.id.starts_with("COMMIT") {
            e.1 += 1;
            e.3.push(waldump::xact_time_and_xid(&t.desc).unwrap().0);
        }
        if t.rmgr == "Transaction" && t.id.starts_with("ABORT") {
            e.2 += 1;
        }
    }
    for s in &summaries {
        let (records, commits, aborts, times) = by_seg.remove(&s.segno.0).unwrap_or_default();
        assert_eq!(
            (s.records, s.commits, s.aborts),
            (records, commits, aborts),
            "{label}, segment {:?}",
            s.segno
        );
        let f = |t: walfmt::PgTimestamp| waldump::format_pg_timestamp(t.0);
        let ours: Vec<String> = s
            .xacts
            .iter()
            .filter(|x| x.kind.is_commit())
            .map(|x| f(x.time))
            .collect();
        assert_eq!(ours, times, "{label}, segment {:?}: commit times", s.segno);
        assert_eq!(
            s.min_commit_time.map(f).as_ref(),
            times.iter().min(),
            "{label}: min commit time"
        );
        assert_eq!(
            s.max_commit_time.map(f).as_ref(),
            times.iter().max(),
            "{label}: max commit time"
        );
    }
    assert!(
        by_seg.is_empty(),
        "{label}: segments pg_waldump saw but we did not: {:?}",
        by_seg.keys()
    );
}

#[test]
fn matches_pg_waldump_pg15() {
    differential(15);
}

#[test]
fn matches_pg_waldump_pg16() {
    differential(16);
}

#[test]
fn matches_pg_waldump_pg17() {
    differential(17);
}

#[test]
fn matches_pg_waldump_pg18() {
    differential(18);
}
