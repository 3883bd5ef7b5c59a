//! lz4 and zstd on the same data, one core: what pitr's backup chunks and WAL objects cost to
//! compress and decompress with each candidate (issue 13 §4 and §5).
//!
//! ```sh
//! PITR_BENCH_CODEC_INPUT=base.tar cargo bench --bench codecs                       # lz4_flex safe (pitr's default build)
//! PITR_BENCH_CODEC_INPUT=base.tar cargo bench --bench codecs --no-default-features # lz4_flex unsafe
//! ```
//!
//! The input is any file (a base backup's tar, or WAL segments concatenated); without one,
//! the bench says so and exits 1. It is cut into 8 MiB chunks (pitr's backup chunk), and
//! each codec compresses every chunk, then decompresses every result, `ROUNDS` times; the
//! best round is reported (MB/s of uncompressed bytes), with the ratio. Also the two checksum
//! passes a backup chunk costs (xxHash32 of the content inside the lz4 frame, CRC-32C of the
//! stored bytes). Codecs:
//!
//! - `lz4_flex block 256K`: what pitr's lz4 frames hold (`lz4_flex::block`, independent
//!   256 KiB blocks), safe or unsafe as built;
//! - `liblz4 block 256K`: the C library (the `lz4` crate) on the same blocks, level 0;
//! - `zstd N`: libzstd (the `zstd` crate) on the whole chunk, as `--compress zstd:N` does.

#![allow(clippy::unwrap_used)] // benchmarks: panics are the error reporting

use std::time::Instant;

const CHUNK: usize = 8 << 20;
const BLOCK: usize = 256 << 10;
const ROUNDS: usize = 3;

type Compress = Box<dyn Fn(&[u8]) -> Vec<Vec<u8>>>;
type Decompress = Box<dyn Fn(&[Vec<u8>], usize) -> usize>;

fn main() {
    let Some(path) = std::env::var_os("PITR_BENCH_CODEC_INPUT") else {
        eprintln!(
            "codecs: error: set PITR_BENCH_CODEC_INPUT to a file (a base backup's tar, or WAL segments concatenated)"
        );
        std::process::exit(1);
    };
    let data = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("codecs: error: {}: {e}", path.to_string_lossy());
        std::process::exit(1);
    });
    let safe = if cfg!(feature = "lz4-safe") {
        "safe"
    } else {
        "unsafe"
    };
    println!(
        "input: {} ({:.1} MB) in {} chunks of 8 MiB; best of {ROUNDS} rounds, one core; lz4_flex {safe}",
        path.to_string_lossy(),
        data.len() as f64 / 1e6,
        data.len().div_ceil(CHUNK)
    );
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    let mut codecs: Vec<(String, Compress, Decompress)> = Vec::new();
    codecs.push((
        format!("lz4_flex block 256K ({safe})"),
        Box::new(|c: &[u8]| c.chunks(BLOCK).map(lz4_flex::block::compress).collect()),
        Box::new(|blocks: &[Vec<u8>], raw: usize| {
            let mut out = vec![0u8; BLOCK];
            let mut n = 0;
            for b in blocks {
                n += lz4_flex::block::decompress_into(b, &mut out).unwrap();
            }
            assert_eq!(n, raw);
            n
        }),
    ));
    codecs.push((
        "liblz4 block 256K (level 0)".into(),
        Box::new(|c: &[u8]| {
            c.chunks(BLOCK)
                .map(|b| lz4::block::compress(b, None, false).unwrap())
                .collect()
        }),
        Box::new(|blocks: &[Vec<u8>], raw: usize| {
            let mut out = vec![0u8; BLOCK];
            let mut n = 0;
            for b in blocks {
                n += lz4::block::decompress_to_buffer(b, Some(BLOCK as i32), &mut out).unwrap();
            }
            assert_eq!(n, raw);
            n
        }),
    ));
    for level in [1, 3, 6, 9] {
        codecs.push((
            format!("zstd {level}"),
            Box::new(move |c: &[u8]| vec![zstd::bulk::compress(c, level).unwrap()]),
            Box::new(|z: &[Vec<u8>], raw: usize| {
                let out = zstd::bulk::decompress(&z[0], CHUNK).unwrap();
                assert_eq!(out.len(), raw);
                out.len()
            }),
        ));
    }
    println!();
    println!("| codec | compress MB/s | decompress MB/s | ratio | stored MB |");
    println!("|---|---|---|---|---|");
    for (name, compress, decompress) in &codecs {
        let mut best_c = f64::MAX;
        let mut best_d = f64::MAX;
        let mut stored = 0usize;
        for _ in 0..ROUNDS {
            let t = Instant::now();
            let z: Vec<Vec<Vec<u8>>> = chunks.iter().map(|c| compress(c)).collect();
            best_c = best_c.min(t.elapsed().as_secs_f64());
            stored = z.iter().flatten().map(Vec::len).sum();
            let t = Instant::now();
            for (blocks, raw) in z.iter().zip(&chunks) {
                std::hint::black_box(decompress(blocks, raw.len()));
            }
            best_d = best_d.min(t.elapsed().as_secs_f64());
        }
        let mb = data.len() as f64 / 1e6;
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.1} |",
            mb / best_c,
            mb / best_d,
            data.len() as f64 / stored.max(1) as f64,
            stored as f64 / 1e6
        );
    }
    let mb = data.len() as f64 / 1e6;
    let time = |f: &dyn Fn() -> u32| {
        (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(f());
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let xxh = time(&|| twox_hash::XxHash32::oneshot(0, &data));
    let crc = time(&|| crc32c::crc32c(&data));
    println!();
    println!(
        "checksums over the uncompressed bytes: xxHash32 {:.0} MB/s, CRC-32C {:.0} MB/s",
        mb / xxh,
        mb / crc
    );
}
