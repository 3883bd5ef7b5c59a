//! walfmt against each version's own `pg_waldump`, on WAL from a real server.

use std::collections::BTreeMap;
use std::path::Path;

use testkit::waldump::{self, DumpRecord};
use testkit::{Cluster, ClusterOptions, PgInstall};
use walfmt::record::{Decoded, rmgr_name};
use walfmt::{DecoderConfig, Lsn, Poll, SegNo, StartAt, Summarizer, WalDecoder, WalSegSize};

/// The install of `major` if this run covers it (`None`: narrowed away by `PITR_TEST_PG`).
pub fn wanted(major: u32) -> Option<PgInstall> {
    PgInstall::for_tests()
        .into_iter()
        .find(|i| i.major == major)
}

/// Runs the workload on a fresh 1 MiB-segment cluster and copies its WAL into `dest`.
/// Returns the segment names, in order.
pub fn make_wal(install: &PgInstall, dest: &Path, commits: u32) -> Vec<String> {
    let c = Cluster::start(
        install,
        ClusterOptions::default()
            .wal_segsize_mb(1)
            .conf("wal_keep_size = '1GB'"),
    );
    testkit::workload::run(&c, commits);
    testkit::copy_wal_segments(&c.wal_dir(), dest, 1)
}

struct Ours {
    lsn: Lsn,
    rmgr: String,
    tot_len: u32,
    rec_len: u32,
    prev: Lsn,
    xid: u32,
    decoded: Decoded,
}

fn decode_all(dir: &Path, names: &[String], seg: WalSegSize) -> (Vec<Ours>, walfmt::EndOfWal) {
    let first = walfmt::WalFileName::parse(&names[0], seg).unwrap();
    let start = first.start_lsn(seg).unwrap();
    let mut dec = WalDecoder::new(DecoderConfig::new(seg), StartAt::SegmentStart(start)).unwrap();
    let mut out = Vec::new();
    let mut expect_seg = start.segment(seg).0;
    for n in names {
        let f = walfmt::WalFileName::parse(n, seg).unwrap();
        let walfmt::WalFileName::Segment(_, s) = f else {
            panic!("{n}")
        };
        if s.0 != expect_seg {
            break; // a gap in pg_wal: pg_waldump stops there too
        }
        expect_seg += 1;
        // Feed in odd-sized chunks to exercise reassembly across feeds.
        let bytes = std::fs::read(dir.join(n)).unwrap();
        for chunk in bytes.chunks(7919) {
            dec.feed(chunk);
            loop {
                match dec.poll().unwrap() {
                    Poll::Record(r) => {
                        let layout = r.layout().unwrap_or_else(|e| panic!("{e}"));
                        out.push(Ours {
                            lsn: r.lsn,
                            rmgr: rmgr_name(r.rmid()),
                            tot_len: r.len(),
                            rec_len: r.len() - layout.fpi_len,
                            prev: r.header.prev,
                            xid: r.header.xid,
                            decoded: r.decode().unwrap_or_else(|e| panic!("{e}")),
                        });
                    }
                    Poll::NeedMore => break,
                    Poll::End(e) => return (out, e),
                }
            }
        }
    }
    dec.finish();
    loop {
        match dec.poll().unwrap() {
            Poll::End(e) => return (out, e),
            Poll::Record(_) => panic!("record after finish"),
            Poll::NeedMore => panic!("NeedMore after finish"),
        }
    }
}

/// Compares every record, and every decoded detail pg_waldump prints.
pub fn compare(major: u32, ours: &[Ours], theirs: &[DumpRecord]) {
    assert!(
        theirs.len() > 1000,
        "PG {major}: workload produced only {} records",
        theirs.len()
    );
    for (i, (o, t)) in ours.iter().zip(theirs).enumerate() {
        let ctx = || {
            format!(
                "PG {major}, record #{i} at {}: ours {:?} vs pg_waldump {t:?}",
                o.lsn,
                (&o.rmgr, o.tot_len, o.rec_len, o.prev, o.xid)
            )
        };
        assert_eq!(o.lsn.0, t.lsn, "{}", ctx());
        assert_eq!(o.rmgr, t.rmgr, "{}", ctx());
        assert_eq!(o.tot_len, t.tot_len, "{}", ctx());
        assert_eq!(o.rec_len, t.rec_len, "{}", ctx());
        assert_eq!(o.prev.0, t.prev, "{}", ctx());
        assert_eq!(o.xid, t.xid, "{}", ctx());
        match &o.decoded {
            Decoded::Xact(x) => {
                assert_eq!(x.kind.name(), t.id, "{}", ctx());
                let (ts, pxid) =
                    waldump::xact_time_and_xid(&t.desc).unwrap_or_else(|| panic!("{}", ctx()));
                assert_eq!(waldump::format_pg_timestamp(x.time.0), ts, "{}", ctx());
                if let Some(p) = pxid {
                    assert_eq!(x.xid, p, "prepared xid: {}", ctx());
                }
            }
            Decoded::RestorePoint(r) => {
                assert_eq!(t.id, "RESTORE_POINT", "{}", ctx());
                assert_eq!(r.name, t.desc, "{}", ctx());
            }
            Decoded::Checkpoint(c) => {
                assert_eq!(
                    t.id,
                    if c.shutdown {
                        "CHECKPOINT_SHUTDOWN"
                    } else {
                        "CHECKPOINT_ONLINE"
                    },
                    "{}",
                    ctx()
                );
                assert_eq!(
                    Some(c.redo.to_string().as_str()),
                    waldump::desc_field(&t.desc, "redo"),
                    "{}",
                    ctx()
                );
                assert_eq!(
                    Some(c.tli.0.to_string().as_str()),
                    waldump::desc_field(&t.desc, "tli"),
                    "{}",
                    ctx()
                );
            }
            Decoded::Switch => assert_eq!(t.id, "SWITCH", "{}", ctx()),
            Decoded::EndOfRecovery(e) => {
                assert_eq!(t.id, "END_OF_RECOVERY", "{}", ctx());
                assert_eq!(
                    Some(e.tli.0.to_string().as_str()),
                    waldump::desc_field(&t.desc, "tli"),
                    "{}",
                    ctx()
                );
            }
            Decoded::Prepare => assert_eq!(t.id, "PREPARE", "{}", ctx()),
            _ => {
                assert!(
                    !matches!(
                        t.id.as_str(),
                        "COMMIT"
                            | "ABORT"
                            | "COMMIT_PREPARED"
                            | "ABORT_PREPARED"
                            | "SWITCH"
                            | "RESTORE_POINT"
                    ) || t.rmgr != "Transaction" && t.rmgr != "XLOG",
                    "undecoded {}",
                    ctx()
                );
            }
        }
    }
    assert_eq!(
        ours.len(),
        theirs.len(),
        "PG {major}: we decoded {} records, pg_waldump {}",
        ours.len(),
        theirs.len()
    );
}

/// The workload must have produced what the test claims to cover.
fn assert_coverage(major: u32, theirs: &[DumpRecord], seg: u64) {
    let has = |id: &str| theirs.iter().any(|t| t.id == id);
    for id in [
        "COMMIT",
        "ABORT",
        "COMMIT_PREPARED",
        "ABORT_PREPARED",
        "PREPARE",
        "RESTORE_POINT",
        "CHECKPOINT_ONLINE",
        "SWITCH",
    ] {
        assert!(has(id), "PG {major}: workload has no {id} record");
    }
    assert!(
        theirs.iter().any(|t| u64::from(t.tot_len) > seg),
        "PG {major}: no record longer than a segment"
    );
    assert!(
        theirs.iter().any(|t| t.rec_len < t.tot_len),
        "PG {major}: no full-page image"
    );
    assert!(
        theirs.iter().any(|t| t.desc.contains("subxacts")),
        "PG {major}: no subtransactions"
    );
    assert!(
        theirs
            .iter()
            .any(|t| t.id == "COMMIT_PREPARED" && t.desc.contains("dropped stats")),
        "PG {major}: no COMMIT_PREPARED with dropped stats"
    );
}

fn differential(major: u32) {
    let Some(install) = wanted(major) else {
        eprintln!("PostgreSQL {major} not in PITR_TEST_PG: skipped");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let names = make_wal(&install, tmp.path(), 300);
    let seg = WalSegSize::new(1 << 20).unwrap();
    let dump = waldump::dump_dir(&install, tmp.path(), &names[0], &names[names.len() - 1]);
    let theirs = waldump::parse(&dump);
    eprintln!(
        "PG {major}: {} records, segments {names:?}, {}",
        theirs.len(),
        dump.lines().last().unwrap_or("")
    );
    assert_coverage(major, &theirs, seg.bytes());
    let (ours, end) = decode_all(tmp.path(), &names, seg);
    compare(major, &ours, &theirs);
    assert!(end.is_clean(), "PG {major}: WAL ended with {end}");

    // Per segment: the multi-segment summarizer agrees with pg_waldump's records grouped by
    // the segment of their start LSN.
    let first = walfmt::WalFileName::parse(&names[0], seg).unwrap();
    let walfmt::WalFileName::Segment(_, first_seg) = first else {
        unreachable!()
    };
    let mut sum = Summarizer::new(DecoderConfig::new(seg), first_seg).unwrap();
    for n in &names {
        sum.feed(&std::fs::read(tmp.path().join(n)).unwrap())
            .unwrap();
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
            "PG {major}, segment {:?}",
            s.segno
        );
        let ours: Vec<String> = s
            .xacts
            .iter()
            .filter(|x| x.kind.is_commit())
            .map(|x| waldump::format_pg_timestamp(x.time.0))
            .collect();
        assert_eq!(
            ours, times,
            "PG {major}, segment {:?}: commit times",
            s.segno
        );
        if let (Some(min), Some(max)) = (s.min_commit_time, s.max_commit_time) {
            let f = |t: walfmt::PgTimestamp| waldump::format_pg_timestamp(t.0);
            assert_eq!(Some(&f(min)), times.iter().min(), "min commit time");
            assert_eq!(Some(&f(max)), times.iter().max(), "max commit time");
        }
    }
    assert!(
        by_seg.is_empty(),
        "PG {major}: segments pg_waldump saw but we did not: {:?}",
        by_seg.keys()
    );
    let _ = SegNo(0);
}

#[test]
fn decode_matches_pg_waldump_pg15() {
    differential(15);
}

#[test]
fn decode_matches_pg_waldump_pg16() {
    differential(16);
}

#[test]
fn decode_matches_pg_waldump_pg17() {
    differential(17);
}

#[test]
fn decode_matches_pg_waldump_pg18() {
    differential(18);
}
