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

#[test]
fn starting_at_a_record_boundary_gives_the_same_tail() {
    use walfmt::{Poll, StartAt, WalDecoder};
    let seg = WalSegSize::new(SEG).unwrap();
    let (names, segs, _) = load(17);
    let WalFileName::Segment(_, first) = WalFileName::parse(&names[0], seg).unwrap() else {
        unreachable!()
    };
    let start = first.start_lsn(seg).unwrap();
    let (all, _) = decode_segments(start, seg, &segs, SEG as usize);
    let whole: Vec<u8> = segs.concat();
    // Start at several records, including one right after a page header and a late one.
    for k in [1, all.len() / 3, all.len() / 2, all.len() - 2] {
        let r = &all[k];
        let mut cfg = DecoderConfig::new(seg);
        cfg.version = Some(PgVersion::V17);
        let mut dec = WalDecoder::new(cfg, StartAt::Record(walfmt::Lsn(r.lsn))).unwrap();
        dec.feed(&whole[(r.lsn - start.0) as usize..]);
        dec.finish();
        let mut got = Vec::new();
        while let Poll::Record(rec) = dec.poll().unwrap() {
            got.push(crate::common::to_ours(&rec));
        }
        assert_eq!(
            got,
            all[k..],
            "starting at record #{k} ({})",
            walfmt::Lsn(r.lsn)
        );
    }
    // Without the version, or unaligned, or inside a page header: refused.
    let cfg = DecoderConfig::new(seg);
    assert!(WalDecoder::new(cfg, StartAt::Record(walfmt::Lsn(all[5].lsn))).is_err());
    let mut cfg = DecoderConfig::new(seg);
    cfg.version = Some(PgVersion::V17);
    assert!(WalDecoder::new(cfg, StartAt::Record(walfmt::Lsn(all[5].lsn + 4))).is_err());
    assert!(WalDecoder::new(cfg, StartAt::Record(walfmt::Lsn(start.0 + 8192 + 8))).is_err());
}

/// Builds a valid record: header + `XLR_BLOCK_ID_DATA_SHORT` main data, with its CRC.
fn craft_record(rmid: u8, info: u8, prev: u64, main: &[u8]) -> Vec<u8> {
    let hdr = if main.len() > 255 { 5 } else { 2 };
    let tot = 24 + hdr + main.len();
    let mut r = vec![0u8; 24];
    r[0..4].copy_from_slice(&(tot as u32).to_le_bytes());
    r[8..16].copy_from_slice(&prev.to_le_bytes());
    r[16] = info;
    r[17] = rmid;
    if main.len() > 255 {
        r.push(254);
        r.extend_from_slice(&(main.len() as u32).to_le_bytes());
    } else {
        r.push(255);
        r.push(main.len() as u8);
    }
    r.extend_from_slice(main);
    let crc = walfmt::record::record_crc(&r);
    r[20..24].copy_from_slice(&crc.to_le_bytes());
    r
}

/// A crash cut a record that spans a page boundary; recovery wrote XLOG_OVERWRITE_CONTRECORD
/// at the next page and flagged it `XLP_FIRST_IS_OVERWRITE_CONTRECORD`. The decoder must drop
/// the partial record, as PostgreSQL's reader does, and go on.
#[test]
fn overwrite_contrecord_abandons_the_cut_record() {
    use walfmt::record::Decoded;
    use walfmt::{Poll, StartAt, WalDecoder};
    let seg = WalSegSize::new(SEG).unwrap();
    let (names, segs, _) = load(18);
    let WalFileName::Segment(_, first) = WalFileName::parse(&names[0], seg).unwrap() else {
        unreachable!()
    };
    let start = first.start_lsn(seg).unwrap();
    let (all, _) = decode_segments(start, seg, &segs, SEG as usize);
    // A record that starts on one page and continues on the next, within the first segment.
    let (k, cut) = all
        .iter()
        .enumerate()
        .find(|(_, r)| {
            r.lsn / 8192 != (r.lsn + u64::from(r.tot_len)) / 8192
                && (r.lsn - start.0) > 16384
                && r.tot_len < 4000
        })
        .map(|(k, r)| (k, r.clone()))
        .expect("a record crossing a page");
    let page = (cut.lsn / 8192 + 1) * 8192;
    let off = (page - start.0) as usize;
    let mut bytes = segs[0].clone();
    // Page header: overwrite flag instead of the continuation, no remaining length.
    let info = u16::from_le_bytes([bytes[off + 2], bytes[off + 3]]);
    bytes[off + 2..off + 4].copy_from_slice(&((info & !0x0001) | 0x0008).to_le_bytes());
    bytes[off + 16..off + 20].copy_from_slice(&0u32.to_le_bytes());
    // XLOG_OVERWRITE_CONTRECORD: overwritten LSN, time; prev-link to the last good record.
    let prev_good = all[k - 1].lsn;
    let mut main = cut.lsn.to_le_bytes().to_vec();
    main.extend_from_slice(&123_456_789i64.to_le_bytes());
    let rec = craft_record(0, 0xD0, prev_good, &main);
    let body = off + 24;
    bytes[body..body + rec.len()].copy_from_slice(&rec);
    bytes[body + rec.len()..off + 8192].fill(0);
    let mut cfg = DecoderConfig::new(seg);
    cfg.version = None;
    let mut dec = WalDecoder::new(cfg, StartAt::SegmentStart(start)).unwrap();
    dec.feed(&bytes);
    dec.finish();
    let mut got = Vec::new();
    let mut overwrite = None;
    let end = loop {
        match dec.poll().unwrap() {
            Poll::Record(r) => {
                if let Ok(Decoded::OverwriteContrecord { overwritten, time }) = r.decode() {
                    overwrite = Some((r.lsn, overwritten, time));
                }
                got.push(r.lsn.0);
            }
            Poll::End(e) => break e,
            Poll::NeedMore => unreachable!(),
        }
    };
    let expect: Vec<u64> = all[..k].iter().map(|r| r.lsn).chain([page + 24]).collect();
    assert_eq!(
        got, expect,
        "records before the cut one, then the overwrite record"
    );
    assert_eq!(
        overwrite,
        Some((
            walfmt::Lsn(page + 24),
            walfmt::Lsn(cut.lsn),
            walfmt::PgTimestamp(123_456_789)
        ))
    );
    assert_eq!(dec.overwritten_records(), &[walfmt::Lsn(cut.lsn)]);
    assert!(end.is_clean(), "{end}");
    assert_eq!(end.lsn.0, page + 24 + ((rec.len() as u64 + 7) & !7));
}

#[test]
fn switch_record_ending_exactly_at_a_page_boundary() {
    // neon#1991: an XLOG_SWITCH whose end is a page boundary must not make the decoder read
    // the next page's header; the next record is at the next segment.
    use walfmt::{Poll, StartAt, WalDecoder};
    let seg = WalSegSize::new(SEG).unwrap();
    let (names, segs, _) = load(15);
    let WalFileName::Segment(_, first) = WalFileName::parse(&names[0], seg).unwrap() else {
        unreachable!()
    };
    let start = first.start_lsn(seg).unwrap();
    let (all, _) = decode_segments(start, seg, &segs, SEG as usize);
    // Put a switch record so that it ends exactly at the end of page 3 of segment 0, with the
    // rest of the segment zeroed (headers included), and the real second segment after it.
    let k = all
        .iter()
        .position(|r| r.lsn - start.0 > 3 * 8192 + 24)
        .unwrap();
    let mut bytes = segs[0].clone();
    let page_end = 4 * 8192usize;
    let pos = (all[k].lsn - start.0) as usize;
    // Fill from the chosen record to the switch with one crafted record whose length lands the
    // switch's end on the page boundary: pad with an XLOG_NOOP carrying main data.
    let switch_at = page_end - 24;
    let noop_len = switch_at - pos;
    assert!(
        noop_len > 29 + 255 && noop_len.is_multiple_of(8),
        "{noop_len}"
    );
    let noop = craft_record(0, 0x20, all[k - 1].lsn, &vec![7u8; noop_len - 29]);
    assert_eq!(noop.len(), noop_len);
    bytes[pos..pos + noop.len()].copy_from_slice(&noop);
    let switch = craft_record(0, 0x40, all[k].lsn, &[]);
    // A switch has no main data: rebuild it header-only.
    let mut sw = switch[..24].to_vec();
    sw[0..4].copy_from_slice(&24u32.to_le_bytes());
    let crc = walfmt::record::record_crc(&sw);
    sw[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes[switch_at..page_end].copy_from_slice(&sw);
    bytes[page_end..].fill(0);
    let mut dec = WalDecoder::new(DecoderConfig::new(seg), StartAt::SegmentStart(start)).unwrap();
    dec.feed(&bytes);
    dec.feed(&segs[1]);
    dec.finish();
    let mut lsns = Vec::new();
    while let Poll::Record(r) = dec.poll().unwrap() {
        lsns.push(r.lsn.0);
    }
    assert_eq!(lsns[k], all[k].lsn, "the noop");
    assert_eq!(lsns[k + 1], start.0 + switch_at as u64, "the switch");
    // Decoding resumes at the next segment (the zeroed pages were skipped, not parsed) and
    // stops there: the fixture's second segment begins with the continuation of a record we
    // replaced (or, if it does not, its first record links to one).
    let end = match dec.poll().unwrap() {
        Poll::End(e) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(lsns.len(), k + 2);
    let next_seg = start.0 + SEG as u64;
    let next_seg_first = all.iter().find(|r| r.lsn >= next_seg).unwrap().lsn;
    match end.reason {
        walfmt::EndReason::UnexpectedContrecord { page } => assert_eq!(page.0, next_seg, "{end}"),
        walfmt::EndReason::BadPrevLink { .. } => assert_eq!(end.lsn.0, next_seg_first, "{end}"),
        _ => panic!("unexpected end: {end}"),
    }
}
