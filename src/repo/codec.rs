//! The repo's object codec: lz4 frames (the LZ4 Frame Format, v1.6.x), with the content
//! size and a content checksum (xxHash32) in every frame pitr writes.
//!
//! # Invariants
//!
//! - [`compress`] always writes the content size and the content checksum, in independent
//!   256 KiB blocks: a reader detects any corruption of the uncompressed bytes, and knows
//!   their size before decoding. Backup chunks and manifests ([`compress_chunk`]) leave the
//!   content checksum out: the catalog's CRC-32C of their stored bytes covers them. Any lz4 frame decoder reads it (the `lz4` command, and
//!   every earlier pitr).
//! - The same bytes always compress to the same object, and [`FramedCompressor`] gives
//!   exactly [`compress`]'s bytes for what was pushed into it while compressing each block
//!   once (the WAL archiver's partials cost only their tail block). This is codec revision
//!   2; revision 1 ([`compress_revision1`], lz4_flex's frame encoder) made other bytes in
//!   the same format.
//! - [`decompress`] trusts nothing in the header: the content size only sizes the output
//!   buffer (capped at [`PREALLOC_MAX`]); the decoder checks the frame and its checksum.
//! - Frame layout is known here only ([`frame_content_size`], the encoder's header and
//!   blocks); decoding goes through `lz4_flex`'s frame decoder.
//! - Backup chunks may instead be zstd frames (`pitr backup --compress zstd[:LEVEL]`, libzstd
//!   through the `zstd` crate), always with their content size and checksum;
//!   [`decompress`] tells the two apart by their magic number, and decodes a zstd frame
//!   only into the size it declares (at most [`PREALLOC_MAX`]).

use std::io::{Read, Write};

use bytes::Bytes;

/// The first four bytes of an lz4 frame (`0x184D2204`, little-endian).
pub(crate) const LZ4_FRAME_MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];

/// The largest output buffer allocated up front from a frame's declared content size.
pub(crate) const PREALLOC_MAX: u64 = 64 << 20;

/// `FLG` bit: the frame descriptor carries the content size.
const FLG_CONTENT_SIZE: u8 = 0x08;

/// The first four bytes of a zstd frame (`0xFD2FB528`, little-endian).
pub(crate) const ZSTD_FRAME_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// zstd levels `--compress zstd:LEVEL` accepts: above 9, libzstd's tables for an 8 MiB chunk
/// pass 64 MiB per chunk compressed at once, which the backup's memory bound does not allow.
pub(crate) const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=9;

/// zstd's level when none is given (libzstd's default).
pub(crate) const ZSTD_DEFAULT_LEVEL: i32 = 3;

/// How pitr compresses a backup chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkCodec {
    /// lz4 frame ([`compress`]), the default.
    Lz4,
    /// A zstd frame at this level (in [`ZSTD_LEVELS`]).
    Zstd(i32),
}

impl ChunkCodec {
    /// Compresses one chunk.
    pub(crate) fn compress(self, data: &[u8]) -> Bytes {
        match self {
            ChunkCodec::Lz4 => compress_chunk(data),
            ChunkCodec::Zstd(level) => {
                let mut c = zstd::bulk::Compressor::new(level)
                    .expect("a level in ZSTD_LEVELS is valid (checked when parsed)");
                // The content size (for the decoder's bound) and a checksum of the content.
                let _ = c.include_contentsize(true);
                let _ = c.include_checksum(true);
                Bytes::from(
                    c.compress(data)
                        .expect("compressing into a growing buffer does not fail"),
                )
            }
        }
    }

    /// The chunk object's extension.
    pub(crate) fn ext(self) -> &'static str {
        match self {
            ChunkCodec::Lz4 => "lz4",
            ChunkCodec::Zstd(_) => "zst",
        }
    }

    /// What the catalog entry's `compression` says.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ChunkCodec::Lz4 => "lz4",
            ChunkCodec::Zstd(_) => "zstd",
        }
    }
}

/// Whether `data` starts with a zstd frame's magic number.
pub(crate) fn is_zstd_frame(data: &[u8]) -> bool {
    data.starts_with(&ZSTD_FRAME_MAGIC)
}

/// Decodes one zstd frame into exactly the size it declares (at most [`PREALLOC_MAX`]).
fn decompress_zstd(data: &[u8], key: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let size = match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n <= PREALLOC_MAX => n as usize,
        Ok(Some(n)) => {
            return Err(format!(
                "{key}: corrupt object: a zstd frame declaring {n} bytes (more than pitr writes)"
            ));
        }
        _ => {
            return Err(format!(
                "{key}: corrupt object: a zstd frame without its content size"
            ));
        }
    };
    out.clear();
    out.reserve_exact(size);
    zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(data, out))
        .map_err(|e| format!("{key}: corrupt object: {e}"))?;
    if out.len() != size {
        return Err(format!(
            "{key}: corrupt object: a zstd frame declaring {size} bytes holds {}",
            out.len()
        ));
    }
    Ok(())
}

/// Whether `data` starts with an lz4 frame's magic number.
pub(crate) fn is_lz4_frame(data: &[u8]) -> bool {
    data.starts_with(&LZ4_FRAME_MAGIC)
}

/// The uncompressed size an lz4 frame declares, if its header carries one.
///
/// Frame header: magic (4 bytes), `FLG` (1), `BD` (1), then, when `FLG` has the
/// content-size bit (0x08), the content size as 8 bytes little-endian (offsets 6..14).
pub(crate) fn frame_content_size(frame: &[u8]) -> Option<u64> {
    let flg = *frame.get(4)?;
    if flg & FLG_CONTENT_SIZE == 0 {
        return None;
    }
    let size: [u8; 8] = frame.get(6..14)?.try_into().ok()?;
    Some(u64::from_le_bytes(size))
}

/// Raw bytes per lz4 block of an object ([`compress`]): the frame's maximum block size.
pub(crate) const BLOCK_RAW: usize = 256 << 10;

/// Frame descriptor `FLG`: version 01, independent blocks, content size, content checksum.
const FLG: u8 = 0x40 | 0x20 | FLG_CONTENT_SIZE | 0x04;
/// Frame descriptor `BD`: 256 KiB maximum block size.
const BD: u8 = 5 << 4;
/// A block stored uncompressed (its size field's high bit).
const UNCOMPRESSED: u32 = 0x8000_0000;

/// `FLG` of a backup chunk's frame ([`compress_chunk`]): [`FLG`] without the content checksum.
const FLG_CHUNK: u8 = FLG & !0x04;

/// Appends a frame header declaring `len` content bytes.
fn push_header(len: u64, out: &mut Vec<u8>) {
    push_header_flg(FLG, len, out);
}

/// Appends a frame header with this `FLG` declaring `len` content bytes.
fn push_header_flg(flg: u8, len: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&LZ4_FRAME_MAGIC);
    let at = out.len();
    out.push(flg);
    out.push(BD);
    out.extend_from_slice(&len.to_le_bytes());
    // Header checksum: the second byte of xxHash32 (seed 0) of the descriptor.
    let hc = (twox_hash::XxHash32::oneshot(0, &out[at..]) >> 8) as u8;
    out.push(hc);
}

/// Appends one independent block of `raw` (at most [`BLOCK_RAW`] bytes), compressed when
/// that makes it smaller, else stored.
fn push_block(raw: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.resize(
        at + 4 + lz4_flex::block::get_maximum_output_size(raw.len()),
        0,
    );
    match lz4_flex::block::compress_into(raw, &mut out[at + 4..]) {
        Ok(n) if n < raw.len() => {
            out[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
            out.truncate(at + 4 + n);
        }
        _ => {
            out.truncate(at);
            out.extend_from_slice(&(raw.len() as u32 | UNCOMPRESSED).to_le_bytes());
            out.extend_from_slice(raw);
        }
    }
}

/// Appends the end mark and the content checksum.
fn push_end(checksum: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&checksum.to_le_bytes());
}

/// Compresses `data` into the repo's object codec (revision 2): one lz4 frame with the
/// content size and content checksum, in independent blocks of [`BLOCK_RAW`] bytes each
/// compressed on its own. The result depends only on the bytes (write-only mode re-makes an
/// object from the server's bytes to compare its keyed digest), and a growing input can be
/// compressed incrementally to the very same bytes ([`FramedCompressor`]).
pub(crate) fn compress(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    push_header(data.len() as u64, &mut out);
    for block in data.chunks(BLOCK_RAW) {
        push_block(block, &mut out);
    }
    push_end(twox_hash::XxHash32::oneshot(0, data), &mut out);
    Bytes::from(out)
}

/// Compresses a backup chunk (or manifest): [`compress`]'s frame without the content
/// checksum. The catalog entry records the CRC-32C of the stored bytes, which restore and
/// `verify` check before decoding, so an xxHash32 of the same content would be a second pass
/// over every byte (it cost more than compressing: BENCHMARKS.md, "lz4 and zstd codecs"),
/// as pg_basebackup's lz4 frames also skip it. WAL objects, which nothing else checks end to
/// end, keep theirs.
pub(crate) fn compress_chunk(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    push_header_flg(FLG_CHUNK, data.len() as u64, &mut out);
    for block in data.chunks(BLOCK_RAW) {
        push_block(block, &mut out);
    }
    out.extend_from_slice(&0u32.to_le_bytes());
    Bytes::from(out)
}

/// Codec revision 1 (lz4_flex's frame encoder over the whole input, 256 KiB blocks): what
/// pitr wrote before revision 2. The same frame format, other bytes. Kept only so that
/// write-only mode can re-make an object an older pitr wrote and compare its digest.
pub(crate) fn compress_revision1(data: &[u8]) -> Bytes {
    let mut info = lz4_flex::frame::FrameInfo::new();
    info.content_checksum = true;
    info.content_size = Some(data.len() as u64);
    info.block_size = lz4_flex::frame::BlockSize::Max256KB;
    let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(
        info,
        Vec::with_capacity(data.len() / 2 + 64),
    );
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(data);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// [`compress`] of a growing input, paying for each byte once: every complete block is
/// compressed when it fills and kept, with the content checksum's running state; an
/// [`FramedCompressor::object`] adds only the tail block (less than [`BLOCK_RAW`]), the end
/// mark and the checksum. The raw bytes are not kept beyond that tail, so memory is the
/// compressed blocks plus one block of input.
#[derive(Clone, Default)]
pub(crate) struct FramedCompressor {
    /// The complete blocks, each with its size field.
    blocks: Vec<u8>,
    /// Raw bytes after them (shorter than [`BLOCK_RAW`]).
    tail: Vec<u8>,
    /// xxHash32 (seed 0) of the complete blocks' content.
    hasher: twox_hash::XxHash32,
    /// Raw bytes pushed in all.
    len: usize,
}

impl std::fmt::Debug for FramedCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedCompressor")
            .field("len", &self.len)
            .field("compressed", &self.blocks.len())
            .finish()
    }
}

impl FramedCompressor {
    /// Raw bytes pushed since the start (or the last [`FramedCompressor::reset`]).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn block(&mut self, raw: &[u8]) {
        use std::hash::Hasher;
        self.hasher.write(raw);
        push_block(raw, &mut self.blocks);
    }

    /// Appends raw bytes.
    pub(crate) fn push(&mut self, mut data: &[u8]) {
        self.len += data.len();
        while !data.is_empty() {
            let n = data.len().min(BLOCK_RAW - self.tail.len());
            let (now, rest) = data.split_at(n);
            data = rest;
            if self.tail.is_empty() && n == BLOCK_RAW {
                self.block(now);
                continue;
            }
            self.tail.extend_from_slice(now);
            if self.tail.len() == BLOCK_RAW {
                let tail = std::mem::take(&mut self.tail);
                self.block(&tail);
                self.tail = tail;
                self.tail.clear();
            }
        }
    }

    /// The object of everything pushed: equal to [`compress`] of those bytes.
    pub(crate) fn object(&self) -> Bytes {
        use std::hash::Hasher;
        let mut out = Vec::with_capacity(
            15 + self.blocks.len()
                + 4
                + lz4_flex::block::get_maximum_output_size(self.tail.len())
                + 8,
        );
        push_header(self.len as u64, &mut out);
        out.extend_from_slice(&self.blocks);
        let mut hasher = self.hasher.clone();
        if !self.tail.is_empty() {
            hasher.write(&self.tail);
            push_block(&self.tail, &mut out);
        }
        push_end(hasher.finish() as u32, &mut out);
        Bytes::from(out)
    }

    /// Starts again from nothing.
    pub(crate) fn reset(&mut self) {
        self.blocks.clear();
        self.tail.clear();
        self.hasher = twox_hash::XxHash32::with_seed(0);
        self.len = 0;
    }
}

/// Decompresses and verifies an object written by [`compress`]; `key` names it in the
/// error.
pub(crate) fn decompress(data: &[u8], key: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    decompress_into(data, key, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out` (cleared first; its allocation is reused when large enough), so
/// that a restore decodes chunk after chunk into the same few buffers.
pub(crate) fn decompress_into(data: &[u8], key: &str, out: &mut Vec<u8>) -> Result<(), String> {
    if is_zstd_frame(data) {
        return decompress_zstd(data, key, out);
    }
    // An empty or foreign body is never one of pitr's objects (every one starts with a frame
    // header); the frame decoder would read an empty input as an empty stream.
    if !is_lz4_frame(data) {
        return Err(format!("{key}: corrupt object: not an lz4 or zstd frame"));
    }
    // Sized from the frame's content size when present, so the buffer is allocated once
    // instead of doubling.
    let cap = frame_content_size(data)
        .filter(|n| *n <= PREALLOC_MAX)
        .unwrap_or(0) as usize;
    out.clear();
    out.reserve_exact(cap);
    lz4_flex::frame::FrameDecoder::new(data)
        .read_to_end(out)
        .map_err(|e| format!("{key}: corrupt object: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_declares_its_content_size_and_round_trips() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let z = compress(&data);
        assert!(is_lz4_frame(&z));
        assert_eq!(frame_content_size(&z), Some(data.len() as u64));
        assert!(decompress(&z, "k").unwrap() == data);
        // Revision 1 objects are the same format and decode the same way.
        assert!(decompress(&compress_revision1(&data), "k").unwrap() == data);
    }

    #[test]
    fn objects_grow_incrementally_to_the_same_bytes_and_any_frame_decoder_reads_them() {
        // Compressible, incompressible (stored blocks) and mixed data.
        let mut data: Vec<u8> = (0..(2 * BLOCK_RAW) as u32)
            .map(|i| ((i / 7) % 251) as u8)
            .collect();
        let mut x: u32 = 12345;
        data.extend((0..BLOCK_RAW + 12_345).map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }));
        let whole = compress(&data);
        assert_eq!(frame_content_size(&whole), Some(data.len() as u64));
        assert!(decompress(&whole, "k").unwrap() == data, "round trip");
        // lz4_flex's own frame decoder, as a pitr of codec revision 1 reads it.
        let mut out = Vec::new();
        lz4_flex::frame::FrameDecoder::new(&whole[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out == data, "read by the frame decoder");
        // Pushed in uneven pieces, with objects taken on the way: each equals compress() of
        // the bytes so far, and the last equals the whole.
        let mut c = FramedCompressor::default();
        assert_eq!(c.object(), compress(b""));
        assert!(decompress(&c.object(), "k").unwrap().is_empty());
        let mut at = 0;
        for step in [
            1,
            4095,
            BLOCK_RAW - 4096,
            BLOCK_RAW,
            3,
            BLOCK_RAW + 7,
            12_335,
        ] {
            let end = (at + step).min(data.len());
            c.push(&data[at..end]);
            at = end;
            assert_eq!(c.len(), at);
            assert!(c.object() == compress(&data[..at]), "after {at} bytes");
            assert!(
                decompress(&c.object(), "k").unwrap() == data[..at],
                "after {at} bytes"
            );
        }
        assert_eq!(at, data.len());
        assert!(c.object() == whole);
        c.reset();
        assert_eq!(c.len(), 0);
        assert_eq!(c.object(), compress(b""));
        // Compression pays: the compressible part shrinks; stored blocks cost 4 bytes.
        assert!(compress(&data[..2 * BLOCK_RAW]).len() < BLOCK_RAW / 4);
        let stored = &data[2 * BLOCK_RAW..3 * BLOCK_RAW];
        assert_eq!(compress(stored).len(), BLOCK_RAW + 15 + 4 + 4 + 4);
        // Damage anywhere is found.
        for at in [5, 20, whole.len() / 2, whole.len() - 2] {
            let mut bad = whole.to_vec();
            bad[at] ^= 0x40;
            assert!(decompress(&bad, "k").is_err(), "flip at {at}");
        }
        assert!(decompress(&whole[..whole.len() - 1], "k").is_err());
    }

    /// Odd push patterns (empty pushes, single bytes, pieces ending exactly on a block
    /// boundary, pieces spanning several blocks) at the block-size edges: every object
    /// equals `compress` of the bytes so far, and lz4_flex's frame decoder reads it.
    #[test]
    fn odd_push_patterns_at_block_edges_give_compress_bytes() {
        let mut x: u32 = 0xDEAD_BEEF;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        // Half compressible, half not, so both block kinds occur.
        let data: Vec<u8> = (0..4 * BLOCK_RAW + 3)
            .map(|i| {
                if (i / BLOCK_RAW).is_multiple_of(2) {
                    (i % 13) as u8
                } else {
                    rnd() as u8
                }
            })
            .collect();
        for len in [
            0,
            1,
            BLOCK_RAW - 1,
            BLOCK_RAW,
            BLOCK_RAW + 1,
            2 * BLOCK_RAW,
            data.len(),
        ] {
            let whole = compress(&data[..len]);
            let mut out = Vec::new();
            lz4_flex::frame::FrameDecoder::new(&whole[..])
                .read_to_end(&mut out)
                .unwrap();
            assert!(out == data[..len], "{len}");
            assert_eq!(frame_content_size(&whole), Some(len as u64));
            // Blocks never exceed the frame's 256 KiB maximum, stored or compressed.
            let mut at = 15;
            loop {
                let size = u32::from_le_bytes(whole[at..at + 4].try_into().unwrap());
                if size == 0 {
                    break;
                }
                assert!((size & !UNCOMPRESSED) as usize <= BLOCK_RAW, "{len}");
                at += 4 + (size & !UNCOMPRESSED) as usize;
            }
            assert_eq!(at + 8, whole.len(), "{len}");
            for pattern in 0..4 {
                let mut c = FramedCompressor::default();
                let mut at = 0;
                while at < len {
                    let step = match pattern {
                        0 => 1 + rnd() as usize % 70_000,
                        1 => BLOCK_RAW,
                        2 => [0, 1, BLOCK_RAW - 1, BLOCK_RAW + 1][rnd() as usize % 4],
                        _ => 3 * BLOCK_RAW,
                    };
                    let end = (at + step).min(len);
                    c.push(&data[at..end]);
                    at = end;
                    if rnd().is_multiple_of(4) {
                        assert!(c.object() == compress(&data[..at]), "{len} {pattern} {at}");
                    }
                }
                c.push(&[]);
                assert!(c.object() == whole, "{len} {pattern}");
            }
        }
    }

    #[test]
    fn a_frame_without_a_content_size_declares_none() {
        let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
        enc.write_all(b"hello").unwrap();
        let z = enc.finish().unwrap();
        assert!(is_lz4_frame(&z));
        assert_eq!(frame_content_size(&z), None);
        assert_eq!(decompress(&z, "k").unwrap(), b"hello");
        assert_eq!(frame_content_size(&z[..3]), None);
    }

    #[test]
    fn an_empty_or_foreign_body_is_corrupt_not_empty() {
        for body in [&b""[..], b"garbage bytes", &[0x04, 0x22]] {
            let e = decompress(body, "wal/x.lz4").unwrap_err();
            assert_eq!(e, "wal/x.lz4: corrupt object: not an lz4 or zstd frame");
        }
    }

    #[test]
    fn a_corrupt_object_is_named_in_the_error() {
        let mut z = compress(b"some bytes that matter").to_vec();
        let last = z.len() - 1;
        z[last] ^= 0xFF;
        let e = decompress(&z, "wal/00000001/x.lz4").unwrap_err();
        assert!(e.starts_with("wal/00000001/x.lz4: corrupt object: "), "{e}");
        assert!(!is_lz4_frame(b"\x04\x22\x4d"));
        assert!(decompress(b"not lz4", "k").is_err());
    }

    #[test]
    fn zstd_chunks_round_trip_and_are_told_apart_by_their_magic() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 1013) as u8).collect();
        for level in [1, ZSTD_DEFAULT_LEVEL, *ZSTD_LEVELS.end()] {
            let z = ChunkCodec::Zstd(level).compress(&data);
            assert!(is_zstd_frame(&z) && !is_lz4_frame(&z));
            assert!(z.len() < data.len() / 10, "level {level}: {}", z.len());
            assert_eq!(decompress(&z, "k").unwrap(), data);
        }
        let l = ChunkCodec::Lz4.compress(&data);
        assert!(is_lz4_frame(&l));
        assert_eq!(decompress(&l, "k").unwrap(), data);
        assert_eq!(
            (ChunkCodec::Lz4.ext(), ChunkCodec::Zstd(3).ext()),
            ("lz4", "zst")
        );
        // Empty chunks too (an empty archive is one empty chunk).
        let e = ChunkCodec::Zstd(3).compress(b"");
        assert_eq!(decompress(&e, "k").unwrap(), b"");
    }

    #[test]
    fn a_damaged_zstd_chunk_is_named_never_decoded() {
        let data: Vec<u8> = (0..500_000u32).map(|i| (i % 97) as u8).collect();
        let z = ChunkCodec::Zstd(3).compress(&data).to_vec();
        let key = "backups/b/base.000000.zst";
        // A flipped bit anywhere after the magic, a cut, trailing bytes, a second frame.
        let mut cases = Vec::new();
        for at in [5, z.len() / 2, z.len() - 1] {
            let mut d = z.clone();
            d[at] ^= 0x10;
            cases.push(d);
        }
        cases.push(z[..z.len() - 3].to_vec());
        cases.push([&z[..], b"x"].concat());
        cases.push([&z[..], &z[..]].concat());
        for d in cases {
            match decompress(&d, key) {
                Err(e) => assert!(e.starts_with(&format!("{key}: corrupt object")), "{e}"),
                Ok(out) => panic!("decoded {} bytes from a damaged frame", out.len()),
            }
        }
        // A frame that declares more than pitr ever writes is refused before decoding.
        let big = zstd::bulk::compress(&vec![0u8; (PREALLOC_MAX + 1) as usize], 1).unwrap();
        let e = decompress(&big, key).unwrap_err();
        assert!(e.contains("more than pitr writes"), "{e}");
    }

    #[test]
    fn a_chunk_frame_has_no_content_checksum_and_any_decoder_reads_it() {
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 313) as u8).collect();
        let z = compress_chunk(&data);
        assert_eq!(z[4], FLG_CHUNK);
        assert_eq!(z[4] & 0x04, 0, "no content checksum");
        assert_eq!(frame_content_size(&z), Some(data.len() as u64));
        assert_eq!(decompress(&z, "k").unwrap(), data);
        // The same blocks as compress, without the 4-byte checksum; lz4_flex's frame decoder
        // (what earlier pitr versions use) reads it.
        assert_eq!(z.len() + 4, compress(&data).len());
        let mut out = Vec::new();
        lz4_flex::frame::FrameDecoder::new(&z[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        assert_eq!(decompress(&compress_chunk(b""), "k").unwrap(), b"");
    }
}
