//! Shared helpers: decoding a run of segments into pg_waldump-comparable records.

use testkit::waldump::{OurDetail, OurRecord};
use walfmt::record::{Decoded, rmgr_name};
use walfmt::{DecoderConfig, EndOfWal, Lsn, Poll, Record, StartAt, WalDecoder, WalSegSize};

/// One record in the neutral form `testkit::waldump::assert_same` compares.
pub fn to_ours(r: &Record<'_>) -> OurRecord {
    let layout = r.layout().unwrap_or_else(|e| panic!("{e}"));
    let detail = match r.decode().unwrap_or_else(|e| panic!("{e}")) {
        Decoded::Xact(x) => OurDetail::Xact {
            id: x.kind.name(),
            time: x.time.0,
            xid: x.xid,
        },
        Decoded::RestorePoint(p) => OurDetail::RestorePoint(p.name),
        Decoded::Checkpoint(c) => OurDetail::Checkpoint(c.shutdown, c.redo.to_string(), c.tli.0),
        Decoded::Switch => OurDetail::Switch,
        Decoded::EndOfRecovery(e) => OurDetail::EndOfRecovery(e.tli.0),
        Decoded::Prepare => OurDetail::Prepare,
        _ => OurDetail::Other,
    };
    OurRecord {
        lsn: r.lsn.0,
        rmgr: rmgr_name(r.rmid()),
        tot_len: r.len(),
        rec_len: r.len() - layout.fpi_len,
        prev: r.header.prev.0,
        xid: r.header.xid,
        detail,
    }
}

/// Decodes consecutive segments as one stream, feeding `chunk`-byte pieces.
pub fn decode_segments(
    start: Lsn,
    seg: WalSegSize,
    segments: &[Vec<u8>],
    chunk: usize,
) -> (Vec<OurRecord>, EndOfWal) {
    let mut dec = WalDecoder::new(DecoderConfig::new(seg), StartAt::SegmentStart(start)).unwrap();
    let mut out = Vec::new();
    for bytes in segments {
        for piece in bytes.chunks(chunk) {
            dec.feed(piece);
            loop {
                match dec.poll().unwrap() {
                    Poll::Record(r) => out.push(to_ours(&r)),
                    Poll::NeedMore => break,
                    Poll::End(e) => return (out, e),
                }
            }
        }
    }
    dec.finish();
    match dec.poll().unwrap() {
        Poll::End(e) => (out, e),
        other => panic!("after finish: {other:?}"),
    }
}
