//! The committed segments in `testdata/wal/pgNN/` against the stored output of that version's
//! own pg_waldump. Runs without PostgreSQL.

use std::io::Read;
use std::path::{Path, PathBuf};

use testkit::waldump;
use walfmt::{DecoderConfig, PgVersion, SegNo, WalFileName, WalSegSize, summarize_segment};

use crate::common::decode_segments;

/// `testdata/wal`.
pub fn fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/wal")
}

/// Decompresses an lz4-frame file.
pub fn unlz4(path: &Path) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    lz4_flex::frame::FrameDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// The fixture of one major: (segment names in order, their bytes, the pg_waldump text).
pub fn load(major: u32) -> (Vec<String>, Vec<Vec<u8>>, String) {
    let dir = fixture_root().join(format!("pg{major}"));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| {
            n.strip_suffix(".lz4")
                .filter(|s| s.len() == 24)
                .map(str::to_owned)
        })
        .collect();
    names.sort();
    let segs = names
        .iter()
        .map(|n| unlz4(&dir.join(format!("{n}.lz4"))))
        .collect();
    let dump = String::from_utf8(unlz4(&dir.join("pg_waldump.txt.lz4"))).unwrap();
    (names, segs, dump)
}

const SEG: u32 = 1 << 20;

fn check(major: u32) {
    let seg = WalSegSize::new(SEG).unwrap();
    let (names, segs, dump) = load(major);
    let label = format!("fixture pg{major}");
    let theirs = waldump::parse(&dump);
    waldump::assert_coverage(&label, &theirs, seg.bytes());
    let WalFileName::Segment(_, first) = WalFileName::parse(&names[0], seg).unwrap() else {
        unreachable!()
    };
    for chunk in [SEG as usize, 8192, 1000, 1] {
        if chunk == 1 && major != 17 {
            continue; // byte-at-a-time once is enough, and slow in debug builds
        }
        let (ours, end) = decode_segments(first.start_lsn(seg).unwrap(), seg, &segs, chunk);
        waldump::assert_same(&format!("{label}, {chunk}-byte feeds"), &ours, &theirs);
        assert!(end.is_clean(), "{label}: {end}");
    }
    // The version is recognised from the page magic.
    let mut cfg = DecoderConfig::new(seg);
    let s = summarize_segment(cfg, first, &segs[0]).unwrap();
    assert!(s.records > 0);
    cfg.version = Some(PgVersion::from_major(major).unwrap());
    summarize_segment(cfg, first, &segs[0]).unwrap();
    // Standalone summaries: each segment alone gives every record that starts and ends in it.
    for (i, bytes) in segs.iter().enumerate() {
        let segno = SegNo(first.0 + i as u64);
        let s = summarize_segment(DecoderConfig::new(seg), segno, bytes).unwrap();
        let starting_here: Vec<_> = theirs
            .iter()
            .filter(|t| t.lsn / seg.bytes() == segno.0)
            .collect();
        let complete = starting_here
            .iter()
            .filter(|t| {
                // pg_waldump's records that end inside this segment (approximate end: the next
                // record's start), i.e. those a standalone decode can check.
                theirs
                    .iter()
                    .find(|n| n.lsn > t.lsn)
                    .is_none_or(|n| n.lsn / seg.bytes() == segno.0)
            })
            .count() as u64;
        assert!(
            s.records == complete || s.records == complete + 1,
            "{label}: segment {i} alone: {} records, expected {complete} (+1)",
            s.records
        );
        assert!(
            s.end_of_wal.is_none_or(|e| e.is_clean()),
            "{label}: segment {i} alone ended with {:?}",
            s.end_of_wal
        );
    }
}

#[test]
fn fixture_pg15() {
    check(15);
}

#[test]
fn fixture_pg16() {
    check(16);
}

#[test]
fn fixture_pg17() {
    check(17);
}

#[test]
fn fixture_pg18() {
    check(18);
}

#[test]
fn wrong_expected_version_or_system_is_an_error() {
    let seg = WalSegSize::new(SEG).unwrap();
    let (names, segs, _) = load(16);
    let WalFileName::Segment(_, first) = WalFileName::parse(&names[0], seg).unwrap() else {
        unreachable!()
    };
    let mut cfg = DecoderConfig::new(seg);
    cfg.sysid = Some(42);
    let e = summarize_segment(cfg, first, &segs[0]).unwrap_err();
    assert!(
        matches!(
            e,
            walfmt::DecodeError::SystemIdMismatch { expected: 42, .. }
        ),
        "{e}"
    );
    assert_eq!(e.lsn(), first.start_lsn(seg).unwrap());
    let big = WalSegSize::new(16 << 20).unwrap();
    let e = summarize_segment(DecoderConfig::new(big), SegNo(0), &segs[0]).unwrap_err();
    assert!(matches!(e, walfmt::DecodeError::SizeMismatch { .. }), "{e}");
    let mut cfg = DecoderConfig::new(seg);
    cfg.version = Some(PgVersion::V17);
    let e = summarize_segment(cfg, first, &segs[0]).unwrap_err();
    assert!(
        matches!(
            e,
            walfmt::DecodeError::VersionMismatch {
                expected: 17,
                found: 16,
                ..
            }
        ),
        "{e}"
    );
}
