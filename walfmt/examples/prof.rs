//! A profiling harness: summarises one segment file 100 times and prints the best time.
//! `cargo build --release -p walfmt --example prof && perf record ./target/release/examples/prof SEGMENT`

#![allow(clippy::unwrap_used)] // a profiling tool: panics are the error reporting

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!(
            "usage: prof SEGMENT_FILE (a plain, full segment; its name gives the segment number)"
        );
        std::process::exit(2);
    };
    let bytes = std::fs::read(&path).expect("read segment");
    let name = std::path::Path::new(&path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_owned();
    let seg = walfmt::WalSegSize::new(bytes.len() as u32).expect("file size is not a segment size");
    let Ok(walfmt::WalFileName::Segment(_, segno)) = walfmt::WalFileName::parse(&name, seg) else {
        eprintln!("{name}: not a segment file name");
        std::process::exit(2);
    };
    let cfg = walfmt::DecoderConfig::new(seg);
    let start = std::time::Instant::now();
    let mut best = f64::MAX;
    let mut records = 0;
    for _ in 0..100 {
        let t = std::time::Instant::now();
        records = walfmt::summarize_segment(cfg, segno, &bytes)
            .expect("decode")
            .records;
        best = best.min(t.elapsed().as_secs_f64());
    }
    let mean = start.elapsed().as_secs_f64() / 100.0;
    let gbps = |s: f64| bytes.len() as f64 / s / 1e9;
    println!(
        "{records} records; best {:.2} ms ({:.2} GB/s), mean {:.2} ms ({:.2} GB/s)",
        best * 1e3,
        gbps(best),
        mean * 1e3,
        gbps(mean)
    );
}
