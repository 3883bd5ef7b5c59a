//! Names, LSNs, timeline history, backup_label, timestamps.

use proptest::prelude::*;
use walfmt::names::{history_file_name, segment_file_name};
use walfmt::{
    BackupLabel, Lsn, PgTimestamp, SegNo, TimeLineId, TimelineHistory, WalFileName, WalSegSize,
};

#[test]
fn lsn_text_forms() {
    assert_eq!(Lsn(0x1_6B37_4D48).to_string(), "1/6B374D48");
    assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
    assert_eq!("0/16B3748".parse::<Lsn>().unwrap(), Lsn(0x16B3748));
    assert_eq!(
        "0/016b3748".parse::<Lsn>().unwrap(),
        Lsn(0x16B3748),
        "zero-padded, lower case"
    );
    assert_eq!("FFFFFFFF/FFFFFFFF".parse::<Lsn>().unwrap(), Lsn(u64::MAX));
    for bad in [
        "",
        "0",
        "/1",
        "1/",
        "0/123456789",
        "g/1",
        "0/1/2",
        "-1/0",
        "0x1/0",
    ] {
        assert!(bad.parse::<Lsn>().is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn lsn_arithmetic_matches_the_worked_example() {
    // POSTGRES_WIRE_AND_WAL.md §3.1: 1/6B374D48 with 16 MiB segments.
    let lsn: Lsn = "1/6B374D48".parse().unwrap();
    let seg = WalSegSize::DEFAULT;
    assert_eq!(lsn.segment(seg), SegNo(363));
    assert_eq!(
        segment_file_name(TimeLineId(1), lsn.segment(seg), seg),
        "00000001000000010000006B"
    );
    assert_eq!(lsn.segment_offset(seg), 0x374D48);
    assert_eq!(lsn.page_offset(8192), 3400);
    // End pointers use the previous segment when exactly on a boundary.
    assert_eq!(Lsn(0x2000000).prev_segment(seg), SegNo(1));
    assert_eq!(Lsn(0x2000001).prev_segment(seg), SegNo(2));
    assert_eq!(Lsn(13).maxalign(), Some(Lsn(16)));
    assert_eq!(Lsn(u64::MAX).maxalign(), None);
}

#[test]
fn segment_sizes() {
    for shift in 20..=30 {
        assert!(WalSegSize::new(1 << shift).is_ok());
    }
    for bad in [0, 1 << 19, (1 << 20) + 1, 3 << 20, 1 << 31] {
        assert!(WalSegSize::new(bad).is_err(), "{bad}");
    }
}

#[test]
fn file_names_of_every_kind() {
    let seg = WalSegSize::DEFAULT;
    assert_eq!(
        WalFileName::parse("000000010000000000000003", seg).unwrap(),
        WalFileName::Segment(TimeLineId(1), SegNo(3))
    );
    assert_eq!(
        WalFileName::parse("0000000A00000001000000FF.partial", seg).unwrap(),
        WalFileName::Partial(TimeLineId(10), SegNo(0x1FF))
    );
    assert_eq!(
        WalFileName::parse("0000000A.history", seg).unwrap(),
        WalFileName::History(TimeLineId(10))
    );
    assert_eq!(history_file_name(TimeLineId(10)), "0000000A.history");
    let b = WalFileName::parse("000000010000000000000002.00000028.backup", seg).unwrap();
    assert_eq!(b, WalFileName::Backup(TimeLineId(1), SegNo(2), 0x28));
    assert_eq!(b.start_lsn(seg), Some(Lsn(0x2000028)));
    assert_eq!(
        b.to_string_with(seg),
        "000000010000000000000002.00000028.backup"
    );
    // 256 segments per xlogid at 16 MiB: a low part of 0x100 cannot exist.
    assert!(WalFileName::parse("000000010000000000000100", seg).is_err());
    for bad in [
        "00000001000000000000000",
        "0000000100000000000000031",
        "00000001000000000000000G",
        "x.history",
        "000000010000000000000002.28.backup",
        "ÿ00000010000000000000003",
    ] {
        assert!(WalFileName::parse(bad, seg).is_err(), "{bad:?}");
    }
    // Lower-case hex is accepted.
    assert_eq!(
        WalFileName::parse("0000000a00000001000000fe", seg).unwrap(),
        WalFileName::Segment(TimeLineId(10), SegNo(0x1FE))
    );
}

proptest! {
    #[test]
    fn lsn_round_trips(v in any::<u64>()) {
        prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
    }

    #[test]
    fn segment_names_round_trip_for_every_size(shift in 20u32..=30, tli in 1u32.., seg_hi in 0u64..0xFFFF_FFFF, pick in any::<u64>()) {
        let seg = WalSegSize::new(1 << shift).unwrap();
        let per = seg.segments_per_xlogid();
        let segno = SegNo(seg_hi * per + pick % per);
        for f in [WalFileName::Segment(TimeLineId(tli), segno), WalFileName::Partial(TimeLineId(tli), segno)] {
            let name = f.to_string_with(seg);
            prop_assert_eq!(WalFileName::parse(&name, seg).unwrap(), f);
        }
        let start = segno.start_lsn(seg).unwrap();
        prop_assert_eq!(start.segment(seg), segno);
    }
}

#[test]
fn timeline_history_as_recovery_writes_it() {
    // Reasons with a timestamp end in an extra newline (a blank line follows).
    let text = "1\t0/5000160\tno recovery target specified\n\n2\t0/90000D8\tbefore 2025-03-01 12:00:00.123456+00\n\n# comment\n";
    let h = TimelineHistory::parse(TimeLineId(3), text).unwrap();
    assert_eq!(h.ancestors.len(), 2);
    assert_eq!(h.ancestors[0].tli, TimeLineId(1));
    assert_eq!(h.ancestors[0].begin, Lsn(0));
    assert_eq!(h.ancestors[0].end, Lsn(0x5000160));
    assert_eq!(h.ancestors[1].begin, Lsn(0x5000160));
    assert_eq!(
        h.ancestors[1].reason,
        "before 2025-03-01 12:00:00.123456+00"
    );
    assert_eq!(h.timeline_of(Lsn(0x100)), TimeLineId(1));
    assert_eq!(h.timeline_of(Lsn(0x5000160)), TimeLineId(2));
    assert_eq!(h.timeline_of(Lsn(0x90000D8)), TimeLineId(3));
    assert_eq!(h.begin(), Lsn(0x90000D8));
    assert_eq!(h.switch_point(TimeLineId(2)), Some(Lsn(0x90000D8)));
    // Errors name the line.
    let e = TimelineHistory::parse(TimeLineId(3), "2\t0/1\tx\n1\t0/2\ty\n").unwrap_err();
    assert_eq!(
        e.to_string(),
        "timeline history, line 2: timeline ids must increase"
    );
    assert!(
        TimelineHistory::parse(TimeLineId(2), "2\t0/1\tx\n").is_err(),
        "ancestor must be below the file's tli"
    );
    assert!(
        TimelineHistory::parse(TimeLineId(2), "1 0/1 x\n").is_err(),
        "fields are tab-separated"
    );
    assert!(TimelineHistory::parse(TimeLineId(2), "1\tzz\tx\n").is_err());
    assert_eq!(
        TimelineHistory::parse(TimeLineId(1), "").unwrap().ancestors,
        vec![]
    );
}

#[test]
fn backup_label_and_backup_history_file() {
    let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                 CHECKPOINT LOCATION: 0/2000060\n\
                 BACKUP METHOD: streamed\n\
                 BACKUP FROM: primary\n\
                 START TIME: 2025-03-01 12:00:00 CET\n\
                 LABEL: pre-migration: step 1\n\
                 START TIMELINE: 1\n";
    let b = BackupLabel::parse(label).unwrap();
    assert_eq!(b.start_lsn, Lsn(0x2000028));
    assert_eq!(b.start_file.as_deref(), Some("000000010000000000000002"));
    assert_eq!(b.checkpoint_lsn, Lsn(0x2000060));
    assert_eq!(b.label.as_deref(), Some("pre-migration: step 1"));
    assert_eq!(b.start_tli, Some(TimeLineId(1)));
    assert_eq!(b.from.as_deref(), Some("primary"));
    let hist = format!(
        "{label}STOP WAL LOCATION: 0/2000138 (file 000000010000000000000002)\nSTOP TIME: 2025-03-01 12:00:01 CET\nSTOP TIMELINE: 1\n\
         INCREMENTAL FROM LSN: 0/1000028\nINCREMENTAL FROM TLI: 1\n"
    );
    let h = BackupLabel::parse(&hist).unwrap();
    assert_eq!(h.stop_lsn, Some(Lsn(0x2000138)));
    assert_eq!(h.stop_tli, Some(TimeLineId(1)));
    assert_eq!(h.incremental_from_lsn, Some(Lsn(0x1000028)));
    assert!(BackupLabel::parse("CHECKPOINT LOCATION: 0/1\n").is_err());
    assert!(BackupLabel::parse("START WAL LOCATION: 0/1 (file x)\n").is_err());
    assert!(BackupLabel::parse("START WAL LOCATION: zz\nCHECKPOINT LOCATION: 0/1\n").is_err());
}

#[test]
fn timestamps() {
    assert_eq!(PgTimestamp(0).to_string(), "2000-01-01T00:00:00.000000Z");
    assert_eq!(PgTimestamp(-1).to_string(), "1999-12-31T23:59:59.999999Z");
    // 2025-11-22 14:30:05.123456 UTC
    let t = PgTimestamp::from_unix_micros(1_763_821_805_123_456);
    assert_eq!(t.to_string(), "2025-11-22T14:30:05.123456Z");
    assert_eq!(t.unix_micros(), 1_763_821_805_123_456);
    assert_eq!(
        PgTimestamp::from_unix_micros(951_782_400_000_000).to_string(),
        "2000-02-29T00:00:00.000000Z"
    );
    let _ = PgTimestamp(i64::MIN).to_string();
    let _ = PgTimestamp(i64::MAX).to_string();
}

/// With the `serde` feature an LSN is its `X/X` text and a timeline its number; a value that
/// is not an LSN is an error.
#[cfg(feature = "serde")]
#[test]
fn serde_forms() {
    assert_eq!(
        serde_json::to_string(&Lsn(0x1_6B37_4D48)).unwrap(),
        "\"1/6B374D48\""
    );
    assert_eq!(
        serde_json::from_str::<Lsn>("\"0/016b3748\"").unwrap(),
        Lsn(0x16B3748)
    );
    for bad in ["\"\"", "\"nonsense\"", "12", "null"] {
        assert!(serde_json::from_str::<Lsn>(bad).is_err(), "{bad}");
    }
    assert_eq!(serde_json::to_string(&TimeLineId(3)).unwrap(), "3");
    assert_eq!(
        serde_json::from_str::<TimeLineId>("3").unwrap(),
        TimeLineId(3)
    );
    assert!(serde_json::from_str::<TimeLineId>("\"3\"").is_err());
    for k in [
        walfmt::XactKind::Commit,
        walfmt::XactKind::CommitPrepared,
        walfmt::XactKind::Abort,
        walfmt::XactKind::AbortPrepared,
    ] {
        let text = serde_json::to_string(&k).unwrap();
        assert_eq!(text, format!("\"{}\"", k.name()));
        assert_eq!(serde_json::from_str::<walfmt::XactKind>(&text).unwrap(), k);
    }
    assert!(serde_json::from_str::<walfmt::XactKind>("\"COMMITTED\"").is_err());
}
