//! CRC-32C (Castagnoli), as PostgreSQL computes WAL record checksums.
//!
//! WAL is mostly small records (a commit is 34 bytes), where the per-call overhead of a
//! general CRC library dominates. Short inputs use the SSE4.2 `crc32` instruction directly
//! (8 bytes per step) when the CPU has it; long inputs and other CPUs use the `crc32c` crate,
//! which interleaves three streams for long buffers and has a table fallback.

/// Inputs at least this long go to the `crc32c` crate.
const LONG: usize = 512;

/// CRC-32C of `a` followed by `b` (PostgreSQL checksums a record's body, then its header).
#[inline]
pub fn two_part(crc: u32, a: &[u8], b: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if a.len() < LONG && std::arch::is_x86_feature_detected!("sse4.2") {
            return sse42::two_part(crc, a, b);
        }
    }
    crc32c::crc32c_append(crc32c::crc32c_append(crc, a), b)
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod sse42 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64};

    #[inline]
    pub fn two_part(crc: u32, a: &[u8], b: &[u8]) -> u32 {
        // SAFETY: only called after `is_x86_feature_detected!("sse4.2")` returned true.
        unsafe { run(crc, a, b) }
    }

    #[target_feature(enable = "sse4.2")]
    fn run(crc: u32, a: &[u8], b: &[u8]) -> u32 {
        !update(update(!crc, a), b)
    }

    #[target_feature(enable = "sse4.2")]
    #[inline]
    fn update(c: u32, data: &[u8]) -> u32 {
        let mut c = u64::from(c);
        let mut rest = data;
        while let Some((w, r)) = rest.split_first_chunk::<8>() {
            c = _mm_crc32_u64(c, u64::from_le_bytes(*w));
            rest = r;
        }
        let mut c = c as u32;
        if let Some((w, r)) = rest.split_first_chunk::<4>() {
            c = _mm_crc32_u32(c, u32::from_le_bytes(*w));
            rest = r;
        }
        if let Some((w, r)) = rest.split_first_chunk::<2>() {
            c = _mm_crc32_u16(c, u16::from_le_bytes(*w));
            rest = r;
        }
        if let Some(&x) = rest.first() {
            c = _mm_crc32_u8(c, x);
        }
        c
    }
}
