//! Property tests: random and mutated WAL never panics or hangs, and damage ends decoding
//! at the damaged record (or page) with every earlier record intact.

use proptest::prelude::*;
use walfmt::record::{Record, RecordHeader};
use walfmt::{
    BackupLabel, DecoderConfig, EndOfWal, Lsn, PgVersion, Poll, StartAt, TimeLineId,
    TimelineHistory, WalDecoder, WalSegSize,
};

use crate::fixtures::load;

const SEG: u32 = 1 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Rec {
    lsn: Lsn,
    end: Lsn,
    crc: u32,
}

/// Decodes one buffer fed in `chunk`-byte pieces. Returns records, then the end (or the error).
fn run(
    start: Lsn,
    bytes: &[u8],
    chunk: usize,
    version: Option<PgVersion>,
) -> (Vec<Rec>, Result<EndOfWal, walfmt::DecodeError>) {
    let mut cfg = DecoderConfig::new(WalSegSize::new(SEG).unwrap());
    cfg.version = version;
    let mut dec = match WalDecoder::new(cfg, StartAt::SegmentStart(start)) {
        Ok(d) => d,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut out = Vec::new();
    let mut pieces = bytes.chunks(chunk.max(1));
    // Each poll consumes input or returns: bound the loop by the input size to catch a hang.
    let mut budget = bytes.len() * 4 + 1000;
    loop {
        budget -= 1;
        assert!(budget > 0, "decoder does not make progress");
        match dec.poll() {
            Ok(Poll::Record(r)) => {
                let _ = r.decode();
                let _ = r.layout();
                out.push(Rec {
                    lsn: r.lsn,
                    end: r.end,
                    crc: r.header.crc,
                });
            }
            Ok(Poll::NeedMore) => match pieces.next() {
                Some(p) => dec.feed(p),
                None => dec.finish(),
            },
            Ok(Poll::End(e)) => return (out, Ok(e)),
            Err(e) => return (out, Err(e)),
        }
    }
}

fn fixture_segment() -> (Lsn, Vec<u8>) {
    let (names, mut segs, _) = load(17);
    let seg = WalSegSize::new(SEG).unwrap();
    let walfmt::WalFileName::Segment(_, s) = walfmt::WalFileName::parse(&names[0], seg).unwrap()
    else {
        unreachable!()
    };
    (s.start_lsn(seg).unwrap(), segs.swap_remove(0))
}

/// Damage at byte offset `x` (LSN `at`) must end decoding at the start of the record that
/// holds it, or at the page whose header holds it, with every record before intact.
fn check_damage(orig: &[Rec], got: &[Rec], end: &Result<EndOfWal, walfmt::DecodeError>, at: Lsn) {
    if got.len() == orig.len() && got == orig {
        return; // the damage hit bytes no check covers (alignment or header padding)
    }
    let end = match end {
        Ok(e) => *e,
        Err(e) => {
            assert!(e.lsn() <= at, "error {e} after the damage at {at}");
            return;
        }
    };
    // Some page-header fields are covered by no checksum, in PostgreSQL's format itself:
    // `xlp_tli` (a raised timeline shows only at the next page, where it seems to go back)
    // and the `XLP_FIRST_IS_OVERWRITE_CONTRECORD` flag (which abandons the record in
    // progress, as PostgreSQL's reader does). For those, the guarantee is: every record that
    // ended before the damaged page is intact, and decoding stops within the next page.
    let page_off = at.0 % 8192;
    let page = at.0 - page_off;
    if (2..8).contains(&page_off) && end.lsn > at {
        assert!(end.lsn.0 <= page + 2 * 8192, "{end}");
        let intact: Vec<&Rec> = orig.iter().filter(|r| r.end.0 <= page).collect();
        assert!(
            got.len() >= intact.len(),
            "records before the damaged page lost ({end})"
        );
        for (g, o) in got.iter().zip(intact) {
            assert_eq!(g, o);
        }
        return;
    }
    assert!(
        end.lsn <= at,
        "decoding went past the damage at {at}: {end}"
    );
    let before: Vec<&Rec> = orig.iter().filter(|r| r.lsn < end.lsn).collect();
    assert_eq!(
        got.len(),
        before.len(),
        "records before {} lost or invented ({end})",
        end.lsn
    );
    for (g, o) in got.iter().zip(before) {
        assert_eq!(g, o);
    }
    let holder = orig
        .iter()
        .find(|r| r.lsn <= at && at < r.end.maxalign().unwrap());
    let page = Lsn(at.0 - at.0 % 8192);
    assert!(
        holder.is_some_and(|h| h.lsn == end.lsn)
            || end.lsn == page
            || end.lsn >= page && end.lsn <= at,
        "end {end} is neither the damaged record ({holder:?}) nor the damaged page {page}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..20_000), chunk in 1usize..5000) {
        let _ = run(Lsn(0), &bytes, chunk, None);
        let _ = run(Lsn(0), &bytes, chunk, Some(PgVersion::V18));
    }

    #[test]
    fn random_body_after_valid_header_never_panics(body in proptest::collection::vec(any::<u8>(), 0..40_000), seed in any::<u64>()) {
        let (start, seg) = fixture_segment();
        let mut bytes = seg[..40].to_vec();
        bytes.extend_from_slice(&body);
        // Also sprinkle plausible page headers so decoding gets past page boundaries.
        for p in (8192..bytes.len().saturating_sub(24)).step_by(8192) {
            if seed & (1 << (p / 8192 % 64)) != 0 {
                bytes[p..p + 24].copy_from_slice(&seg[p..p + 24]);
            }
        }
        let _ = run(start, &bytes, 4096, None);
    }

    #[test]
    fn flipped_bit_ends_at_the_damaged_record(pos in 40usize..(SEG as usize), bit in 0u8..8) {
        let (start, seg) = fixture_segment();
        let (orig, _) = run(start, &seg, SEG as usize, None);
        let last_end = orig.last().unwrap().end;
        // Only damage inside valid WAL is interesting; beyond it is the zero tail.
        let pos = pos % (last_end.0 - start.0) as usize;
        let mut bad = seg.clone();
        bad[pos] ^= 1 << bit;
        let (got, end) = run(start, &bad, 65536, None);
        check_damage(&orig, &got, &end, Lsn(start.0 + pos as u64));
    }

    #[test]
    fn bogus_length_ends_at_that_record(k in 0usize..2000, len in any::<u32>()) {
        let (start, seg) = fixture_segment();
        let (orig, _) = run(start, &seg, SEG as usize, None);
        let r = &orig[k % orig.len()];
        let off = (r.lsn.0 - start.0) as usize;
        let mut bad = seg.clone();
        bad[off..off + 4].copy_from_slice(&len.to_le_bytes());
        let (got, end) = run(start, &bad, 65536, None);
        if len != u32::from_le_bytes(seg[off..off + 4].try_into().unwrap()) {
            let end = end.unwrap();
            prop_assert_eq!(end.lsn, r.lsn, "{}", end);
            prop_assert_eq!(got.len(), orig.iter().filter(|o| o.lsn < r.lsn).count());
        }
    }

    #[test]
    fn truncation_ends_cleanly_at_the_cut_record(cut in 0usize..(SEG as usize), chunk in 1usize..100_000) {
        let (start, seg) = fixture_segment();
        let (orig, _) = run(start, &seg, SEG as usize, None);
        let cut = cut % ((orig.last().unwrap().end.0 - start.0) as usize + 1);
        let (got, end) = run(start, &seg[..cut], chunk, None);
        let at = Lsn(start.0 + cut as u64);
        let end = end.unwrap();
        prop_assert!(end.is_clean(), "{}", end);
        let complete: Vec<Rec> = orig.iter().filter(|r| r.end <= at).cloned().collect();
        prop_assert_eq!(&got, &complete);
        prop_assert!(end.lsn <= at);
    }

    #[test]
    fn zeroed_page_ends_at_that_page(page in 1usize..128) {
        let (start, seg) = fixture_segment();
        let (orig, _) = run(start, &seg, SEG as usize, None);
        let off = page * 8192;
        let mut bad = seg.clone();
        bad[off..off + 8192].fill(0);
        let (got, end) = run(start, &bad, 8192, None);
        check_damage(&orig, &got, &end, Lsn(start.0 + off as u64));
    }

    #[test]
    fn record_parsers_are_total(data in proptest::collection::vec(any::<u8>(), 0..600), rmid in 0u8..2, info in any::<u8>(), v in 0usize..4) {
        let mut data = data;
        let tot = data.len().max(24) as u32;
        data.resize(tot as usize, 0);
        data[..4].copy_from_slice(&tot.to_le_bytes());
        data[16] = info;
        data[17] = rmid;
        let rec = Record {
            lsn: Lsn(0x1000),
            end: Lsn(0x1000 + u64::from(tot)),
            header: RecordHeader::parse(&data),
            data: &data,
            version: Some(PgVersion::ALL[v]),
        };
        let _ = rec.layout();
        let _ = rec.decode();
    }

    #[test]
    fn text_parsers_are_total(s in ".{0,400}", t in "[0-9\t/A-Fa-f#\n x]{0,200}") {
        let _ = TimelineHistory::parse(TimeLineId(5), &s);
        let _ = TimelineHistory::parse(TimeLineId(5), &t);
        let _ = BackupLabel::parse(&s);
        let _ = s.parse::<Lsn>();
        let _ = walfmt::WalFileName::parse(&s, WalSegSize::DEFAULT);
    }
}

#[test]
fn long_header_flag_mid_segment_ends_decoding_there() {
    // Review finding: a long-header flag on a mid-segment page once made the decoder wait
    // for header bytes forever and report a clean end.
    let (start, seg) = fixture_segment();
    let (orig, _) = run(start, &seg, SEG as usize, None);
    let mut bad = seg.clone();
    let page = 5 * 8192;
    bad[page + 2] |= 0x02;
    for chunk in [SEG as usize, 8192, 100] {
        let (got, end) = run(start, &bad, chunk, None);
        let end = end.unwrap();
        assert!(
            matches!(end.reason, walfmt::EndReason::BadPageInfo { .. }),
            "{end}"
        );
        assert!(!end.is_clean());
        let page_lsn = Lsn(start.0 + page as u64);
        assert!(end.lsn <= page_lsn);
        assert_eq!(got.len(), orig.iter().filter(|r| r.lsn < end.lsn).count());
    }
}

#[test]
fn the_last_segment_below_2_pow_64_is_refused_not_overflowed() {
    let seg = WalSegSize::new(SEG).unwrap();
    let last = Lsn(u64::MAX - u64::from(SEG) + 1);
    let cfg = DecoderConfig::new(seg);
    assert!(WalDecoder::new(cfg, StartAt::SegmentStart(last)).is_err());
    assert!(walfmt::Summarizer::new(cfg, walfmt::SegNo(u64::MAX >> 20)).is_err());
    // The segment before it decodes, and input past the limit is not accepted.
    let before = Lsn(last.0 - u64::from(SEG));
    let mut d = WalDecoder::new(cfg, StartAt::SegmentStart(before)).unwrap();
    d.feed(&vec![0u8; 3 * SEG as usize]);
    assert_eq!(d.fed_up_to(), last);
    d.finish();
    assert!(matches!(d.poll().unwrap(), Poll::End(_)));
}

#[test]
fn input_that_stops_before_a_record_is_not_called_mid_record() {
    let (start, seg) = fixture_segment();
    let (orig, _) = run(start, &seg, SEG as usize, None);
    let r = &orig[10];
    let cut = (r.end.maxalign().unwrap().0 - start.0) as usize;
    let (_, end) = run(start, &seg[..cut], SEG as usize, None);
    let end = end.unwrap();
    assert_eq!(
        end.reason,
        walfmt::EndReason::InputEnded { mid_record: false },
        "{end}"
    );
    let (_, end) = run(start, &seg[..cut + 5], SEG as usize, None);
    assert_eq!(
        end.unwrap().reason,
        walfmt::EndReason::InputEnded { mid_record: true }
    );
}
