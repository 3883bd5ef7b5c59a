//! Benchmark: decode + CRC-32C + segment summary of a real 16 MiB segment full of small
//! commits, and the same segment through that version's `pg_waldump` in the same run.
//!
//! `cargo bench --bench walfmt_decode` (scripts/bench-walfmt.sh runs it with the setup).
//! The segment is produced once by a real PostgreSQL (newest installed major, or
//! `PITR_BENCH_PG=N`) and cached in `target/bench-data/`. The comparison lines at the end
//! print the medians and the ratio; BENCHMARKS.md records them.

#![allow(clippy::unwrap_used)] // benchmarks: panics are the error reporting

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use testkit::{Cluster, ClusterOptions, PgInstall};
use walfmt::{DecoderConfig, Poll, SegNo, StartAt, WalDecoder, WalSegSize, summarize_segment};

const SEG: usize = 16 << 20;

fn install() -> PgInstall {
    let want: Option<u32> = std::env::var("PITR_BENCH_PG")
        .ok()
        .and_then(|v| v.parse().ok());
    let all: Vec<PgInstall> = testkit::SUPPORTED_MAJORS
        .iter()
        .filter_map(|m| PgInstall::find(*m))
        .collect();
    match want {
        Some(m) => all
            .into_iter()
            .find(|i| i.major == m)
            .expect("PITR_BENCH_PG major not installed"),
        None => all
            .into_iter()
            .last()
            .expect("no PostgreSQL installed: run scripts/install-test-deps.sh"),
    }
}

/// A full 16 MiB segment written entirely by a loop of one-row commits. Returns its path.
fn segment(inst: &PgInstall) -> (PathBuf, SegNo) {
    let dir = testkit::workspace_root().join(format!("target/bench-data/pg{}", inst.major));
    if let Some(found) = std::fs::read_dir(&dir).ok().and_then(|rd| {
        rd.flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.len() == 24))
    }) {
        let name = found.file_name().unwrap().to_str().unwrap().to_owned();
        return (found, SegNo(u64::from_str_radix(&name[16..], 16).unwrap()));
    }
    eprintln!(
        "bench: generating a 16 MiB segment of small commits with PostgreSQL {}",
        inst.major
    );
    let c = Cluster::start(
        inst,
        ClusterOptions::default().conf("wal_keep_size = '1GB'"),
    );
    c.psql("CREATE TABLE t (id int, v text)");
    let start: String = c.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())");
    // ~120 bytes of WAL per commit: 200k commits fill more than one whole segment.
    c.psql("DO $$ BEGIN FOR i IN 1..200000 LOOP INSERT INTO t VALUES (i, 'x'); COMMIT; END LOOP; END $$;");
    c.psql("SELECT pg_switch_wal()");
    // The first segment after the one where the loop started is entirely loop commits.
    let segno = u64::from_str_radix(&start[16..], 16).unwrap() + 1;
    let name = format!("{}{:08X}", &start[..16], segno);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(c.wal_dir().join(&name), dir.join(&name)).unwrap();
    (dir.join(name), SegNo(segno))
}

fn decode_only(bytes: &[u8], segno: SegNo) -> u64 {
    let seg = WalSegSize::DEFAULT;
    let mut d = WalDecoder::new(
        DecoderConfig::new(seg),
        StartAt::SegmentStart(segno.start_lsn(seg).unwrap()),
    )
    .unwrap();
    d.feed(bytes);
    d.finish();
    let mut n = 0;
    while let Ok(Poll::Record(r)) = d.poll() {
        n += u64::from(r.len());
    }
    n
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time_cmd(mut make: impl FnMut() -> Command, runs: usize) -> Duration {
    let mut v = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = make().output().expect("run");
        v.push(t.elapsed());
        assert!(!out.stdout.is_empty() || !out.stderr.is_empty());
    }
    median(v)
}

fn main() {
    let inst = install();
    let (path, segno) = segment(&inst);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), SEG);
    let cfg = DecoderConfig::new(WalSegSize::DEFAULT);
    let s = summarize_segment(cfg, segno, &bytes).unwrap();
    eprintln!(
        "bench: {} (PostgreSQL {}): {} records, {} commits",
        path.display(),
        inst.major,
        s.records,
        s.commits
    );
    assert!(
        s.commits > 50_000,
        "segment should be full of small commits"
    );

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(30)
        .measurement_time(Duration::from_secs(6));
    let mut g = c.benchmark_group("walfmt");
    g.throughput(Throughput::Bytes(SEG as u64));
    g.bench_function("decode+crc+summary/16MiB-small-commits", |b| {
        b.iter(|| black_box(summarize_segment(cfg, segno, black_box(&bytes)).unwrap()))
    });
    g.bench_function("decode+crc/16MiB-small-commits", |b| {
        b.iter(|| black_box(decode_only(black_box(&bytes), segno)))
    });
    g.finish();

    // Same run: our median vs pg_waldump's, on the same file.
    let ours = median(
        (0..15)
            .map(|_| {
                let t = Instant::now();
                black_box(summarize_segment(cfg, segno, &bytes).unwrap());
                t.elapsed()
            })
            .collect(),
    );
    let dir: &Path = path.parent().unwrap();
    let name = path.file_name().unwrap().to_str().unwrap().to_owned();
    let dump = || {
        let mut c = inst.command("pg_waldump");
        c.arg("-p").arg(dir).arg(&name);
        c
    };
    let stats = || {
        let mut c = inst.command("pg_waldump");
        c.arg("--stats").arg("-p").arg(dir).arg(&name);
        c
    };
    let theirs = time_cmd(dump, 5);
    let theirs_stats = time_cmd(stats, 5);
    let gbps = |d: Duration| SEG as f64 / d.as_secs_f64() / 1e9;
    println!();
    println!(
        "== walfmt vs pg_waldump, PostgreSQL {}, one 16 MiB segment of {} commits ==",
        inst.major, s.commits
    );
    println!(
        "walfmt decode+crc+summary   {:>9.2} ms  {:>6.2} GB/s",
        ours.as_secs_f64() * 1e3,
        gbps(ours)
    );
    println!(
        "pg_waldump (text to pipe)   {:>9.2} ms  {:>6.2} GB/s  walfmt is {:.1}x faster",
        theirs.as_secs_f64() * 1e3,
        gbps(theirs),
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
    println!(
        "pg_waldump --stats          {:>9.2} ms  {:>6.2} GB/s  walfmt is {:.1}x faster",
        theirs_stats.as_secs_f64() * 1e3,
        gbps(theirs_stats),
        theirs_stats.as_secs_f64() / ours.as_secs_f64()
    );
}
