//! The repo's object codec: lz4 frames (the LZ4 Frame Format, v1.6.x), with the content
//! size and a content checksum (xxHash32) in every frame pitr writes.
//!
//! # Invariants
//!
//! - [`compress`] always writes the content size and the content checksum, in 256 KiB
//!   blocks: a reader detects any corruption of the uncompressed bytes, and knows their size
//!   before decoding.
//! - [`decompress`] trusts nothing in the header: the content size only sizes the output
//!   buffer (capped at [`PREALLOC_MAX`]); the decoder checks the frame and its checksum.
//! - Frame-header layout is known here only ([`frame_content_size`]); everything else goes
//!   through `lz4_flex`'s frame encoder and decoder.

use std::io::{Read, Write};

use bytes::Bytes;

/// The first four bytes of an lz4 frame (`0x184D2204`, little-endian).
pub(crate) const LZ4_FRAME_MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];

/// The largest output buffer allocated up front from a frame's declared content size.
pub(crate) const PREALLOC_MAX: u64 = 64 << 20;

/// `FLG` bit: the frame descriptor carries the content size.
const FLG_CONTENT_SIZE: u8 = 0x08;

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

/// lz4-frame compresses with content size and content checksum (xxHash32), so a reader
/// detects any corruption of the uncompressed bytes.
pub(crate) fn compress(data: &[u8]) -> Bytes {
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

/// Decompresses and verifies an object written by [`compress`]; `key` names it in the
/// error.
pub(crate) fn decompress(data: &[u8], key: &str) -> Result<Vec<u8>, String> {
    // An empty or foreign body is never one of pitr's objects (every one starts with a frame
    // header); the frame decoder would read an empty input as an empty stream.
    if !is_lz4_frame(data) {
        return Err(format!("{key}: corrupt object: not an lz4 frame"));
    }
    // Sized from the frame's content size when present, so the buffer is allocated once
    // instead of doubling.
    let cap = frame_content_size(data)
        .filter(|n| *n <= PREALLOC_MAX)
        .unwrap_or(0) as usize;
    let mut out = Vec::with_capacity(cap);
    lz4_flex::frame::FrameDecoder::new(data)
        .read_to_end(&mut out)
        .map_err(|e| format!("{key}: corrupt object: {e}"))?;
    Ok(out)
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
        assert_eq!(decompress(&z, "k").unwrap(), data);
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
            assert_eq!(e, "wal/x.lz4: corrupt object: not an lz4 frame");
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
}
