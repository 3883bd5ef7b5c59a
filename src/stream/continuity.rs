//! Proof that the server's WAL continues the repo's, before anything of a run is archived.
//!
//! A run starts at a segment boundary `S` on a timeline (after a (re)connect, a timeline
//! switch, a gap). Before its first byte reaches the archiver (or the spool), and before any
//! flush position is reported, the bytes the server sends are checked against what the repo
//! already holds at that point, by one of:
//!
//! - [`Checker::bytes`]: the repo (or the spool) holds bytes of this stretch — the partial
//!   segment pitr resumes at, or the complete segment before `S` when the server still has it:
//!   the server's bytes must be the same, byte for byte.
//! - [`Checker::link`]: the repo holds the complete segment before `S`, but the server may no
//!   longer have it: the repo's segment is decoded and the server's bytes are fed after it. The
//!   first record that starts at or after `S`, or a record spanning `S`, must decode: its
//!   `xl_prev` must point at the repo's last record and a record spanning `S` must pass its
//!   CRC-32C over the repo's first part and the server's rest (the rules of PostgreSQL's own
//!   reader, `XLogReaderValidatePageHeader` / `ValidXLogRecordHeader` / `XLogDecodeNextRecord`
//!   in src/backend/access/transam/xlogreader.c, as implemented by [`walfmt::WalDecoder`]).
//!   This is weaker than a byte comparison: a different history whose last record in the
//!   segment starts at the same LSN, with no record spanning the boundary, is not detected.
//!   The byte comparison is used whenever the server still holds that segment.
//! - [`Checker::nothing`]: the repo holds nothing just before or at `S` (a new repo, a new
//!   timeline's first segment after the repo's gap): nothing to contradict.
//! - [`Checker::digest`]: write-only mode (`--recipient` without `--identity`), where the
//!   repo's objects cannot be read: the server's bytes of the stretch the object holds (from
//!   its segment's start to its length, known from its name) are collected
//!   ([`Verdict::Collected`]); the caller re-makes the object's stored plaintext from them
//!   (`repo::compress` is deterministic) and asks the repo whether the object holds exactly
//!   that (the keyed digest in its sealed header), then [`Checker::settle`]s the check. As
//!   strong as [`Checker::bytes`], except that a difference cannot be located. There is no
//!   write-only counterpart of [`Checker::link`]: decoding needs the repo's bytes.
//!
//! # Invariants
//!
//! - Pure: bytes in, a [`Verdict`] out; no I/O. Feeding is contiguous from the start given.
//! - A verdict, once reached, never changes: later input is ignored.
//! - Memory: the expected bytes (at most one segment), the collected bytes (at most one
//!   segment), or the decoder with the repo's segment and the record being reassembled.

use bytes::Bytes;
use walfmt::{DecoderConfig, Lsn, Poll, StartAt, WalDecoder};

/// Where the server's WAL stops being the repo's WAL, and how we know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Divergence {
    /// The first LSN at which the server's WAL is not the repo's.
    pub at: Lsn,
    /// What differs (the repo object and the decoder's finding).
    pub detail: String,
}

/// What the check says so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not decided: more of the server's WAL is needed.
    Pending,
    /// [`Checker::digest`]: the server's bytes of the stretch are all here; the caller takes
    /// them ([`Checker::take_collected`]), checks them against the stored object's digest and
    /// [`Checker::settle`]s.
    Collected,
    /// The server's WAL continues the repo's.
    Proven,
    /// It does not.
    Diverged(Divergence),
}

#[derive(Debug)]
enum Expect {
    Nothing,
    Bytes {
        from: Lsn,
        bytes: Bytes,
    },
    Link {
        decoder: Box<WalDecoder<'static>>,
        from: Lsn,
    },
    Digest {
        from: Lsn,
        len: u64,
        got: Vec<u8>,
    },
}

/// The check of one run. See the module docs.
#[derive(Debug)]
pub(crate) struct Checker {
    expect: Expect,
    /// Which repo object the server's WAL is checked against (for messages).
    what: String,
    verdict: Verdict,
}

impl Checker {
    /// Nothing in the repo to check against: proven at once.
    pub(crate) fn nothing() -> Checker {
        Checker {
            expect: Expect::Nothing,
            what: String::new(),
            verdict: Verdict::Proven,
        }
    }

    /// The server's bytes from `from` must equal `bytes` (`what` names their origin).
    pub(crate) fn bytes(from: Lsn, bytes: Bytes, what: impl Into<String>) -> Checker {
        let verdict = if bytes.is_empty() {
            Verdict::Proven
        } else {
            Verdict::Pending
        };
        Checker {
            expect: Expect::Bytes { from, bytes },
            what: what.into(),
            verdict,
        }
    }

    /// The server's WAL from `from` must continue `segment`, the repo's complete segment that
    /// ends at `from`. `Err` when the repo's segment itself is not valid WAL of this cluster
    /// (then nothing can be proven from it).
    pub(crate) fn link(
        cfg: DecoderConfig,
        segment: &[u8],
        from: Lsn,
        what: impl Into<String>,
    ) -> Result<Checker, String> {
        let what = what.into();
        let len = segment.len() as u64;
        let seg_start = Lsn(from.0.checked_sub(len).ok_or("segment before 0/0")?);
        if len != u64::from(cfg.seg_size.get()) {
            return Err(format!("{what}: {len} bytes, not a whole segment"));
        }
        let mut d = WalDecoder::new(cfg, StartAt::SegmentStart(seg_start))
            .map_err(|e| format!("{what}: {e}"))?;
        d.feed(segment);
        let mut records = 0u64;
        loop {
            match d.poll().map_err(|e| format!("{what}: {e}"))? {
                Poll::Record(_) => records += 1,
                Poll::NeedMore => break,
                Poll::End(e) => return Err(format!("{what} is not valid WAL to its end: {e}")),
            }
        }
        if records == 0 {
            return Err(format!(
                "{what} holds no record start (one record spans it): its successor cannot be linked to it"
            ));
        }
        Ok(Checker {
            expect: Expect::Link {
                decoder: Box::new(d),
                from,
            },
            what,
            verdict: Verdict::Pending,
        })
    }

    /// Write-only mode: the server's `len` bytes from `from` (a segment start) are collected,
    /// to be checked against the digest of `what`, the repo object holding that stretch.
    pub(crate) fn digest(from: Lsn, len: u64, what: impl Into<String>) -> Checker {
        Checker {
            expect: Expect::Digest {
                from,
                len,
                got: Vec::new(),
            },
            what: what.into(),
            verdict: Verdict::Pending,
        }
    }

    /// The verdict so far.
    pub(crate) fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// Once [`Verdict::Collected`]: the server's bytes of the stretch, from its start (once;
    /// `None` before, after, or for another kind of check).
    pub(crate) fn take_collected(&mut self) -> Option<(Lsn, Vec<u8>)> {
        match (&self.verdict, &mut self.expect) {
            (Verdict::Collected, Expect::Digest { from, got, .. }) => {
                Some((*from, std::mem::take(got)))
            }
            _ => None,
        }
    }

    /// Ends a [`Verdict::Collected`] check with the digest comparison's answer: the stored
    /// object holds exactly the plaintext re-made from the collected bytes (proven) or not
    /// (diverged: where cannot be said). No effect in any other state.
    pub(crate) fn settle(&mut self, holds: bool) -> &Verdict {
        if self.verdict != Verdict::Collected {
            return &self.verdict;
        }
        let Expect::Digest { from, len, .. } = &self.expect else {
            return &self.verdict;
        };
        self.verdict = if holds {
            Verdict::Proven
        } else {
            Verdict::Diverged(Divergence {
                at: *from,
                detail: format!(
                    "its WAL from {from} to {} is not what {} holds: write-only mode compares the object's keyed digest without decrypting it, so it cannot say where they differ (an object written by a pitr whose lz4 encoder differs would not match either: run once with --identity to compare the bytes)",
                    Lsn(from.0 + len),
                    self.what
                ),
            })
        };
        &self.verdict
    }

    /// True once proven.
    pub(crate) fn is_proven(&self) -> bool {
        self.verdict == Verdict::Proven
    }

    /// The repo object checked against.
    pub(crate) fn what(&self) -> &str {
        &self.what
    }

    /// Feeds the server's WAL at `at` (contiguous with what was fed before).
    pub(crate) fn feed(&mut self, at: Lsn, data: &[u8]) -> &Verdict {
        if self.verdict != Verdict::Pending {
            return &self.verdict;
        }
        let what = &self.what;
        self.verdict = match &mut self.expect {
            Expect::Nothing => Verdict::Proven,
            Expect::Bytes { from, bytes } => compare(*from, bytes, at, data, what),
            Expect::Link { decoder, from } => {
                decoder.feed(data);
                link_verdict(decoder, *from, what)
            }
            Expect::Digest { from, len, got } => collect(*from, *len, got, at, data),
        };
        &self.verdict
    }
}

/// Appends the part of `data` (at `at`, contiguous with what came before) that falls in
/// `[from, from + len)`: [`Verdict::Collected`] once all of it is there.
fn collect(from: Lsn, len: u64, got: &mut Vec<u8>, at: Lsn, data: &[u8]) -> Verdict {
    let end = from.0 + len;
    let lo = at.0.max(from.0 + got.len() as u64);
    let hi = (at.0 + data.len() as u64).min(end);
    if lo < hi {
        if got.is_empty() {
            got.reserve_exact(len as usize);
        }
        got.extend_from_slice(&data[(lo - at.0) as usize..(hi - at.0) as usize]);
    }
    if from.0 + got.len() as u64 >= end {
        Verdict::Collected
    } else {
        Verdict::Pending
    }
}

fn compare(from: Lsn, bytes: &[u8], at: Lsn, data: &[u8], what: &str) -> Verdict {
    let end = from.0 + bytes.len() as u64;
    let lo = at.0.max(from.0);
    let hi = (at.0 + data.len() as u64).min(end);
    if lo < hi {
        let got = &data[(lo - at.0) as usize..(hi - at.0) as usize];
        let want = &bytes[(lo - from.0) as usize..(hi - from.0) as usize];
        if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
            return Verdict::Diverged(Divergence {
                at: Lsn(lo + i as u64),
                detail: format!("its WAL differs from {what} at this LSN"),
            });
        }
    }
    if at.0 + data.len() as u64 >= end {
        Verdict::Proven
    } else {
        Verdict::Pending
    }
}

fn link_verdict(d: &mut WalDecoder<'static>, from: Lsn, what: &str) -> Verdict {
    loop {
        match d.poll() {
            Ok(Poll::Record(r)) => {
                if r.lsn >= from || r.end > from {
                    return Verdict::Proven;
                }
            }
            Ok(Poll::NeedMore) => return Verdict::Pending,
            Ok(Poll::End(e)) => {
                return Verdict::Diverged(Divergence {
                    at: e.lsn,
                    detail: format!("its WAL does not continue {what}: {e}"),
                });
            }
            Err(e) => {
                return Verdict::Diverged(Divergence {
                    at: e.lsn(),
                    detail: format!("its WAL does not continue {what}: {e}"),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read;
    use walfmt::WalSegSize;

    fn fixture(major: u32, name: &str) -> Vec<u8> {
        let p = format!(
            "{}/testdata/wal/pg{major}/{name}.lz4",
            env!("CARGO_MANIFEST_DIR")
        );
        let raw = std::fs::read(&p).unwrap();
        let mut out = Vec::new();
        lz4_flex::frame::FrameDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// The first three consecutive segments of each major's fixtures.
    fn segments(major: u32) -> Vec<(Lsn, Vec<u8>)> {
        let first = match major {
            15 => 6,
            16 | 17 => 5,
            _ => 7,
        };
        (first..first + 3)
            .map(|n: u64| {
                (
                    Lsn(n << 20),
                    fixture(major, &format!("0000000100000000000000{n:02X}")),
                )
            })
            .collect()
    }

    fn cfg() -> DecoderConfig {
        DecoderConfig::new(WalSegSize::new(1 << 20).unwrap())
    }

    #[test]
    fn bytes_equal_prove_and_the_first_difference_is_named() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let from = Lsn(0x0300_0000);
        let mut c = Checker::bytes(from, Bytes::from(data[..6000].to_vec()), "wal/x.partial");
        // Fed in pieces: pending until the whole expected stretch has arrived.
        assert_eq!(c.feed(from, &data[..4000]), &Verdict::Pending);
        assert_eq!(c.feed(Lsn(from.0 + 4000), &data[4000..]), &Verdict::Proven);
        // Later input does not change a verdict.
        assert_eq!(c.feed(Lsn(from.0 + 10_000), b"zzzz"), &Verdict::Proven);
        let mut other = data.clone();
        other[5123] ^= 1;
        let mut c = Checker::bytes(from, Bytes::from(data[..6000].to_vec()), "wal/x.partial");
        assert_eq!(c.feed(from, &other[..5000]), &Verdict::Pending);
        match c.feed(Lsn(from.0 + 5000), &other[5000..]) {
            Verdict::Diverged(d) => {
                assert_eq!(d.at, Lsn(from.0 + 5123));
                assert!(d.detail.contains("wal/x.partial"), "{}", d.detail);
            }
            v => panic!("{v:?}"),
        }
        // Input that starts before the compared stretch (the segment before it) is skipped.
        let mut c = Checker::bytes(Lsn(from.0 + 100), Bytes::from(data[100..200].to_vec()), "x");
        assert_eq!(c.feed(from, &data[..300]), &Verdict::Proven);
        assert!(Checker::bytes(from, Bytes::new(), "x").is_proven());
        assert!(Checker::nothing().is_proven());
    }

    #[test]
    fn a_digest_check_collects_the_stretch_then_settles_once() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let from = Lsn(0x0300_0000);
        let key = "wal/00000001/000000010000000000000003.partial.0000000003001770.lz4";
        let mut c = Checker::digest(from, 6000, key);
        assert_eq!(c.what(), key);
        // Nothing to take or settle before the stretch is all here.
        assert_eq!(c.feed(from, &data[..10]), &Verdict::Pending);
        assert_eq!(c.take_collected(), None);
        assert_eq!(c.settle(true), &Verdict::Pending);
        // Fed in pieces, one beyond the stretch: exactly the stretch is collected.
        assert_eq!(c.feed(Lsn(from.0 + 10), &data[10..4000]), &Verdict::Pending);
        assert_eq!(
            c.feed(Lsn(from.0 + 4000), &data[4000..]),
            &Verdict::Collected
        );
        // Later input changes nothing.
        assert_eq!(c.feed(Lsn(from.0 + 10_000), b"zz"), &Verdict::Collected);
        assert_eq!(c.take_collected(), Some((from, data[..6000].to_vec())));
        assert!(!c.is_proven());
        assert_eq!(c.settle(true), &Verdict::Proven);
        assert!(c.is_proven());
        // Settled once: a second answer does not change it.
        assert_eq!(c.settle(false), &Verdict::Proven);
        assert_eq!(c.take_collected(), None);
        // A digest that does not match: diverged from the stretch's start, naming the object
        // and saying that write-only mode cannot locate the difference.
        let mut c = Checker::digest(from, 6000, key);
        assert_eq!(c.feed(from, &data), &Verdict::Collected);
        assert!(c.take_collected().is_some());
        match c.settle(false).clone() {
            Verdict::Diverged(d) => {
                assert_eq!(d.at, from);
                assert!(d.detail.contains(key), "{}", d.detail);
                assert!(d.detail.contains("0/3001770"), "{}", d.detail);
                assert!(d.detail.contains("cannot say where"), "{}", d.detail);
                assert!(d.detail.contains("--identity"), "{}", d.detail);
            }
            v => panic!("{v:?}"),
        }
        assert!(matches!(
            c.feed(Lsn(from.0 + 10_000), b"x"),
            Verdict::Diverged(_)
        ));
        // Other kinds of checks never collect.
        let mut b = Checker::bytes(from, Bytes::from(data[..10].to_vec()), "x");
        assert_eq!(b.feed(from, &data[..10]), &Verdict::Proven);
        assert_eq!(b.take_collected(), None);
        assert_eq!(b.settle(false), &Verdict::Proven);
    }

    /// The stored plaintext of a WAL object is `compress(raw)`: write-only mode re-makes it
    /// from the server's bytes, so the same bytes must compress to the same frame, and a
    /// one-byte change to another.
    #[test]
    fn compression_is_deterministic_so_the_stored_plaintext_can_be_remade() {
        for major in [15, 17] {
            let segs = segments(major);
            let (_, a) = &segs[0];
            let z1 = crate::repo::compress(a);
            let z2 = crate::repo::compress(&a.clone());
            assert_eq!(z1, z2, "PG {major}");
            // A partial's prefix, as the archiver publishes it.
            let n = 123_456;
            assert_eq!(
                crate::repo::compress(&a[..n]),
                crate::repo::compress(&a.clone()[..n])
            );
            let mut bent = a.clone();
            bent[n / 2] ^= 1;
            assert_ne!(crate::repo::compress(&bent), z1, "PG {major}");
        }
    }

    #[test]
    fn the_next_segment_of_the_same_history_links_on_every_major() {
        for major in [15, 16, 17, 18] {
            let segs = segments(major);
            for w in segs.windows(2) {
                let (s0, ref a) = w[0];
                let (s1, ref b) = w[1];
                assert_eq!(s0.0 + (1 << 20), s1.0);
                let mut c = Checker::link(cfg(), a, s1, "repo segment").unwrap();
                // Byte by byte at first (a record header split anywhere), then the rest.
                let mut v = Verdict::Pending;
                for (i, byte) in b.iter().enumerate().take(64) {
                    v = c
                        .feed(Lsn(s1.0 + i as u64), std::slice::from_ref(byte))
                        .clone();
                }
                if v == Verdict::Pending {
                    v = c.feed(Lsn(s1.0 + 64), &b[64..]).clone();
                }
                assert_eq!(v, Verdict::Proven, "PG {major} at {s1}");
            }
        }
    }

    #[test]
    fn another_history_after_the_repo_segment_is_refused_on_every_major() {
        for major in [15, 16, 17, 18] {
            let segs = segments(major);
            let (_, a) = &segs[0];
            let (s1, b) = &segs[1];
            let (_, c2) = &segs[2];
            // The segment after the next, relabelled as the next (page addresses rewritten):
            // valid-looking WAL that is not the continuation.
            let mut fake = c2.clone();
            for page in (0..fake.len()).step_by(8192) {
                fake[page + 8..page + 16].copy_from_slice(&(s1.0 + page as u64).to_le_bytes());
            }
            let mut c = Checker::link(cfg(), a, *s1, "repo segment").unwrap();
            match c.feed(*s1, &fake) {
                // At the first record that fails: one spanning into the fake segment (it
                // starts in the repo's), or the fake's first record.
                Verdict::Diverged(d) => {
                    assert!(
                        d.at > segs[0].0 && d.at < Lsn(s1.0 + 8192),
                        "PG {major}: {d:?}"
                    )
                }
                v => panic!("PG {major}: {v:?}"),
            }
            // The true next segment with one byte changed in its first record (inside the
            // record spanning the boundary, or the first record's header): refused.
            let mut bent = b.clone();
            bent[40] ^= 0x40; // the first byte after the long page header
            let mut c = Checker::link(cfg(), a, *s1, "repo segment").unwrap();
            assert!(
                matches!(c.feed(*s1, &bent), Verdict::Diverged(_)),
                "PG {major}: a changed first record passed"
            );
        }
    }

    #[test]
    fn an_invalid_repo_segment_cannot_prove_anything() {
        let segs = segments(17);
        let (s0, a) = &segs[0];
        let mut bad = a.clone();
        bad[50_000] ^= 0xFF;
        let e =
            Checker::link(cfg(), &bad, Lsn(s0.0 + (1 << 20)), "wal/00000001/x.lz4").unwrap_err();
        assert!(e.contains("not valid WAL"), "{e}");
        assert!(Checker::link(cfg(), &a[..1000], Lsn(s0.0 + 1000), "x").is_err());
    }
}
