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
    let names = testkit::workload::make_wal(&install, tmp.path(), 300);
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

/// A standby promoted to timeline 2: its WAL (with the switch inside the first segment, pages
/// of timelines 1 then 2, and END_OF_RECOVERY) against pg_waldump; the real history file and
/// backup_label against what the WAL says.
fn timeline_switch(major: u32) {
    let Some(install) = PgInstall::for_tests()
        .into_iter()
        .find(|i| i.major == major)
    else {
        return;
    };
    let label = format!("PostgreSQL {major}, timeline 2");
    let seg = WalSegSize::new(1 << 20).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let opts = || {
        ClusterOptions::default()
            .wal_segsize_mb(1)
            .conf("wal_keep_size = '1GB'")
    };
    let (names1, names2, history, backup_label) = {
        let p = Cluster::start(&install, opts());
        p.psql("CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 1000);");
        let s = Cluster::standby_of(&p, &["wal_keep_size = '1GB'"]);
        p.psql("INSERT INTO t VALUES (-1); SELECT pg_switch_wal();");
        // Let the standby catch up, then promote it.
        testkit::wait_caught_up(&p, &s);
        s.promote();
        s.psql(
            "DO $$ BEGIN FOR i IN 1..200 LOOP INSERT INTO t VALUES (i); COMMIT; END LOOP; END $$;
             SELECT pg_create_restore_point('on-timeline-2');",
        );
        let d1 = tmp.path().join("tli1");
        let d2 = tmp.path().join("tli2");
        let names1 = testkit::copy_wal_segments(&p.wal_dir(), &d1, 1);
        let names2 = testkit::copy_wal_segments(&s.wal_dir(), &d2, 2);
        let history = std::fs::read_to_string(s.wal_dir().join("00000002.history")).unwrap();
        let backup_label = std::fs::read_to_string(s.data_dir().join("backup_label.old")).unwrap();
        (names1, names2, history, backup_label)
    };
    let d1 = tmp.path().join("tli1");
    let d2 = tmp.path().join("tli2");

    // Timeline 2's WAL, from the segment holding the switch point.
    let dump = waldump::dump_dir(&install, &d2, &names2[0], &names2[names2.len() - 1]);
    let theirs = waldump::parse(&dump);
    assert!(
        theirs.iter().any(|t| t.id == "END_OF_RECOVERY"),
        "{label}: no END_OF_RECOVERY in\n{dump}"
    );
    let WalFileName::Segment(_, first) = WalFileName::parse(&names2[0], seg).unwrap() else {
        unreachable!()
    };
    let segments: Vec<Vec<u8>> = names2
        .iter()
        .map(|n| std::fs::read(d2.join(n)).unwrap())
        .collect();
    let (ours, end) = decode_segments(first.start_lsn(seg).unwrap(), seg, &segments, 4096);
    waldump::assert_same(&label, &ours, &theirs);
    assert!(end.is_clean(), "{label}: {end}");

    // The history file says where timeline 1 ended: at or before END_OF_RECOVERY.
    let h = walfmt::TimelineHistory::parse(walfmt::TimeLineId(2), &history).unwrap();
    assert_eq!(h.ancestors.len(), 1, "{history}");
    assert_eq!(h.ancestors[0].tli, walfmt::TimeLineId(1));
    let eor = theirs.iter().find(|t| t.id == "END_OF_RECOVERY").unwrap();
    assert!(
        h.ancestors[0].end.0 <= eor.lsn,
        "{label}: switch point {} after END_OF_RECOVERY",
        h.ancestors[0].end
    );
    assert_eq!(h.timeline_of(walfmt::Lsn(eor.lsn)), walfmt::TimeLineId(2));
    assert_eq!(
        h.timeline_of(walfmt::Lsn(h.ancestors[0].end.0 - 1)),
        walfmt::TimeLineId(1)
    );

    // pg_basebackup's backup_label: its checkpoint record is in the primary's WAL, with the
    // label's start LSN as redo pointer.
    let b = walfmt::BackupLabel::parse(&backup_label).unwrap();
    assert_eq!(b.start_tli, Some(walfmt::TimeLineId(1)));
    assert_eq!(b.from.as_deref(), Some("primary"));
    let WalFileName::Segment(_, f1) = WalFileName::parse(&names1[0], seg).unwrap() else {
        unreachable!()
    };
    let segs1: Vec<Vec<u8>> = names1
        .iter()
        .map(|n| std::fs::read(d1.join(n)).unwrap())
        .collect();
    let (recs1, _) = decode_segments(
        f1.start_lsn(seg).unwrap(),
        seg,
        &segs1,
        seg.bytes() as usize,
    );
    let ckpt = recs1
        .iter()
        .find(|r| r.lsn == b.checkpoint_lsn.0)
        .unwrap_or_else(|| panic!("{label}: no record at {}", b.checkpoint_lsn));
    match &ckpt.detail {
        testkit::waldump::OurDetail::Checkpoint(_, redo, tli) => {
            assert_eq!(redo, &b.start_lsn.to_string());
            assert_eq!(*tli, 1);
        }
        other => panic!("{label}: CHECKPOINT LOCATION points at {other:?}"),
    }
}

#[test]
fn timeline_switch_pg15() {
    timeline_switch(15);
}

#[test]
fn timeline_switch_pg16() {
    timeline_switch(16);
}

#[test]
fn timeline_switch_pg17() {
    timeline_switch(17);
}

#[test]
fn timeline_switch_pg18() {
    timeline_switch(18);
}
