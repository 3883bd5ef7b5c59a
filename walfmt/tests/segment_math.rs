//! The named LSN, segment and page arithmetic, against PostgreSQL's macros.

use proptest::prelude::*;
use walfmt::page::{
    PgVersion, SIZE_OF_LONG_PHD, SIZE_OF_SHORT_PHD, UnsupportedMagic, major_for_magic,
    next_record_start,
};
use walfmt::{Lsn, SegNo, WalSegSize};

const MIB16: WalSegSize = WalSegSize::DEFAULT;

#[test]
fn a_segment_starts_and_ends_on_its_boundaries() {
    let s = SegNo(3);
    assert_eq!(s.start_lsn(MIB16), Some(Lsn(0x300_0000)));
    assert_eq!(s.end_lsn(MIB16), Some(Lsn(0x400_0000)));
    assert_eq!(s.end_lsn(MIB16), s.next().start_lsn(MIB16));
    assert_eq!(s.lsn_at(0x28, MIB16), Some(Lsn(0x300_0028)));
    assert_eq!(SegNo(u64::MAX).end_lsn(MIB16), None);
    let last = Lsn(u64::MAX).segment(MIB16);
    assert_eq!(last.end_lsn(MIB16), None, "past the end of the LSN space");
    assert_eq!(last.lsn_at(MIB16.bytes(), MIB16), None);
}

#[test]
fn next_and_prev_segments() {
    assert_eq!(SegNo(7).next(), SegNo(8));
    assert_eq!(SegNo(u64::MAX).next(), SegNo(u64::MAX), "saturates");
    assert_eq!(SegNo(7).prev(), Some(SegNo(6)));
    assert_eq!(SegNo(0).prev(), None);
}

#[test]
fn bytes_of_a_segment_up_to_an_end() {
    let s = SegNo(3);
    assert_eq!(s.bytes_until(Lsn(0x300_1000), MIB16), 0x1000);
    assert_eq!(
        s.bytes_until(Lsn(0x200_0000), MIB16),
        0,
        "before the segment"
    );
    assert_eq!(
        s.bytes_until(Lsn(0x500_0000), MIB16),
        0x200_0000,
        "not capped at the segment size"
    );
    assert_eq!(Lsn(10).bytes_since(Lsn(4)), 6);
    assert_eq!(Lsn(4).bytes_since(Lsn(10)), 0);
}

#[test]
fn the_segment_start_of_a_position() {
    assert_eq!(Lsn(0x300_1234).segment_start(MIB16), Lsn(0x300_0000));
    assert_eq!(Lsn(0x300_0000).segment_start(MIB16), Lsn(0x300_0000));
    assert_eq!(Lsn(0).segment_start(MIB16), Lsn(0));
}

#[test]
fn the_next_record_starts_past_a_page_header() {
    let b = 8192;
    // Mid-page: MAXALIGNed only.
    assert_eq!(
        next_record_start(Lsn(0x300_0101), MIB16, b),
        Some(Lsn(0x300_0108))
    );
    // On a page start: past the short header...
    assert_eq!(
        next_record_start(Lsn(0x300_1FFA), MIB16, b),
        Some(Lsn(0x300_2000 + SIZE_OF_SHORT_PHD as u64))
    );
    // ... and past the long header at a segment start.
    assert_eq!(
        next_record_start(Lsn(0x3FF_FFFC), MIB16, b),
        Some(Lsn(0x400_0000 + SIZE_OF_LONG_PHD as u64))
    );
    assert_eq!(next_record_start(Lsn(u64::MAX - 2), MIB16, b), None);
}

#[test]
fn a_page_magic_names_its_major() {
    for v in PgVersion::ALL {
        assert_eq!(major_for_magic(v.magic()), Some(v.major()));
    }
    assert_eq!(major_for_magic(0xD106), None);
    assert_eq!(
        UnsupportedMagic(0xD106).to_string(),
        "not a PostgreSQL 15-18 WAL segment: page magic 0xD106 (expected 0xD110, 0xD113, 0xD116 or 0xD118)"
    );
}

proptest! {
    #[test]
    fn segment_arithmetic_agrees_with_postgresql(lsn in any::<u64>(), shift in 20u32..=30) {
        let seg = WalSegSize::new(1 << shift).unwrap();
        let l = Lsn(lsn);
        let s = l.segment(seg);
        // XLByteToSeg, XLogSegmentOffset, XLogSegNoOffsetToRecPtr.
        prop_assert_eq!(s.lsn_at(l.segment_offset(seg), seg), Some(l));
        prop_assert_eq!(Some(l.segment_start(seg)), s.start_lsn(seg));
        prop_assert_eq!(s.bytes_until(l, seg), l.segment_offset(seg));
        if let Some(end) = s.end_lsn(seg) {
            prop_assert!(l < end);
            prop_assert_eq!(end.bytes_since(l.segment_start(seg)), seg.bytes());
            prop_assert_eq!(end.prev_segment(seg), s);
        }
    }
}
