//! `pitr wal inspect`: summaries of WAL segment files.
//!
//! Files are read in chunks (1 MiB) and fed to [`walfmt::Summarizer`], so memory stays small
//! whatever the segment size. A file that directly continues the previous one (same timeline
//! and system, next segment number, WAL not ended) joins its stream; any other starts a new
//! stream at its segment start. lz4-frame files (magic `04 22 4D 18`) are decompressed on
//! the fly.

pub mod cmd;

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use walfmt::page::{PageHeader, SIZE_OF_LONG_PHD, UnsupportedMagic, major_for_magic};
use walfmt::{DecoderConfig, SegNo, Summarizer, TimeLineId, WalFileName, WalSegSize};

use crate::repo::objects::{EndRecord, SummaryRecord};

use crate::repo::codec::is_lz4_frame;

const CHUNK: usize = 1 << 20;

/// Errors that stop `wal inspect` as a whole.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The result of `inspect`.
#[derive(Debug)]
pub(crate) struct InspectReport {
    /// One per input file, in input order (`--json` prints this list): the repo's summary
    /// record ([`SummaryRecord`]), with the path given as `file`.
    pub files: Vec<SummaryRecord>,
}

impl InspectReport {
    /// The first file with invalid WAL, as one line naming file and LSN.
    pub(crate) fn first_problem(&self) -> Option<String> {
        self.files.iter().find_map(|f| {
            if let Some(e) = &f.error {
                return Some(format!("{}: {e}", f.file));
            }
            if let Some(end) = f.end_of_wal.as_ref().filter(|e| !e.clean) {
                return Some(format!(
                    "{}: invalid WAL at {}: {}",
                    f.file, end.lsn, end.reason
                ));
            }
            f.malformed_records
                .first()
                .map(|m| format!("{}: {m}", f.file))
        })
    }
}

/// Opens a file, transparently decompressing lz4 frames. Returns the reader and whether it
/// was compressed.
fn open(path: &Path) -> io::Result<(Box<dyn Read>, bool)> {
    let mut f = BufReader::new(File::open(path)?);
    let mut magic = [0u8; 4];
    let n = read_full(&mut f, &mut magic)?;
    if &magic[..n] == b"PITR" {
        return open_sealed(path, f, magic);
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let chained = head.chain(f);
    if is_lz4_frame(&magic[..n]) {
        Ok((Box::new(lz4_flex::frame::FrameDecoder::new(chained)), true))
    } else {
        Ok((Box::new(chained), false))
    }
}

/// A sealed object of an encrypted repo (`repo::crypt`), opened with the configured key
/// under its object name: the path from its `wal/` component on.
fn open_sealed(path: &Path, mut f: impl Read, magic: [u8; 4]) -> io::Result<(Box<dyn Read>, bool)> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let key = crate::repo::crypt::configured().ok_or_else(|| {
        bad("an encrypted repo object: pass --encryption-key-file or --identity with the repo's key".into())
    })?;
    let text = path.to_string_lossy();
    let at = text
        .rfind("wal/")
        .ok_or_else(|| bad("an encrypted repo object outside a repo's wal/ directory".into()))?;
    let name = &text[at..];
    let root = Path::new(&text[..at]);
    let mut sealed = magic.to_vec();
    f.read_to_end(&mut sealed)?;
    let plain = crate::repo::crypt::open_file_blocking(&key, root, name, &sealed)
        .map_err(|e| bad(e.to_string()))?;
    let compressed = is_lz4_frame(&plain);
    let r: Box<dyn Read> = if compressed {
        Box::new(lz4_flex::frame::FrameDecoder::new(io::Cursor::new(plain)))
    } else {
        Box::new(io::Cursor::new(plain))
    };
    Ok((r, compressed))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct Identity {
    tli: TimeLineId,
    segno: SegNo,
    seg: WalSegSize,
    sysid: u64,
    pg_major: Option<u32>,
    /// The file is named for a later segment than its header says: a recycled segment that
    /// was never written after recycling. It holds no WAL of its own.
    recycled_from: Option<SegNo>,
}

/// Reads what a segment's first (long) page header says about the file.
fn identify(first: &[u8], path: &Path) -> Result<Identity, String> {
    if first.len() < SIZE_OF_LONG_PHD {
        return Err(format!("not a WAL segment: only {} bytes", first.len()));
    }
    let hdr = PageHeader::parse(first).ok_or("not a WAL segment: no page header")?;
    if major_for_magic(hdr.magic).is_none() {
        if first[..SIZE_OF_LONG_PHD].iter().all(|&b| b == 0) {
            return Err("the file begins with zeros where the first page header should be (a preallocated segment never written?)".into());
        }
        return Err(UnsupportedMagic(hdr.magic).to_string());
    }
    let long = hdr
        .long
        .ok_or("not a WAL segment: its first page has no long header")?;
    let seg = WalSegSize::new(long.seg_size).map_err(|e| e.to_string())?;
    if hdr.pageaddr.segment_offset(seg) != 0 {
        return Err(format!(
            "not the start of a segment: first page address is {}",
            hdr.pageaddr
        ));
    }
    let segno = hdr.pageaddr.segment(seg);
    let pg_major = major_for_magic(hdr.magic);
    // Cross-check the file name when it is a WAL name. It also says which timeline the file
    // belongs to: the first segment of a new timeline starts with pages copied from the
    // parent timeline.
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name = name.strip_suffix(".lz4").unwrap_or(name);
    let mut tli = hdr.tli;
    if let Ok(WalFileName::Segment(t, s) | WalFileName::Partial(t, s)) =
        WalFileName::parse(name, seg)
    {
        if s > segno {
            return Ok(Identity {
                tli: t,
                segno: s,
                seg,
                sysid: long.sysid,
                pg_major,
                recycled_from: Some(segno),
            });
        }
        if s != segno {
            return Err(format!(
                "file name says segment {} but its header says {}",
                name,
                walfmt::names::segment_file_name(t, segno, seg)
            ));
        }
        tli = t;
    }
    Ok(Identity {
        tli,
        segno,
        seg,
        sysid: long.sysid,
        pg_major,
        recycled_from: None,
    })
}

struct Stream {
    sum: Summarizer<'static>,
    tli: TimeLineId,
    seg: WalSegSize,
    sysid: u64,
    next: SegNo,
    /// The last file was fed whole (a full segment): the next one may continue the stream.
    complete: bool,
    files: Vec<(usize, SegNo)>,
}

fn close(stream: Option<Stream>, out: &mut [SummaryRecord]) {
    let Some(st) = stream else { return };
    let summaries = match st.sum.finish() {
        Ok(s) => s,
        Err(e) => {
            if let Some((i, _)) = st.files.last() {
                out[*i].error = Some(e.to_string());
            }
            return;
        }
    };
    for s in summaries {
        if let Some((i, _)) = st.files.iter().find(|(_, n)| *n == s.segno) {
            out[*i].fill(s);
        }
    }
}

/// Summarises the given files.
pub(crate) fn inspect(paths: &[PathBuf]) -> Result<InspectReport, InspectError> {
    let mut out: Vec<SummaryRecord> = paths
        .iter()
        .map(|p| SummaryRecord::empty(p.display().to_string()))
        .collect();
    let mut stream: Option<Stream> = None;
    let mut buf = vec![0u8; CHUNK];
    for (i, path) in paths.iter().enumerate() {
        let io_err = |source| InspectError::Io {
            path: path.clone(),
            source,
        };
        let (mut reader, compressed) = open(path).map_err(io_err)?;
        out[i].compressed = compressed;
        let n = read_full(&mut reader, &mut buf).map_err(io_err)?;
        let id = match identify(&buf[..n], path) {
            Ok(id) => id,
            Err(e) => {
                out[i].error = Some(e);
                continue;
            }
        };
        let f = &mut out[i];
        f.set_identity(id.tli, id.segno, id.seg, id.sysid, id.pg_major);
        if let Some(old) = id.recycled_from {
            f.end_of_wal = f.start_lsn.map(|lsn| EndRecord {
                lsn,
                reason: format!(
                    "recycled segment: its pages still hold old WAL of segment {}",
                    walfmt::names::segment_file_name(id.tli, old, id.seg)
                ),
                clean: true,
            });
            close(stream.take(), &mut out);
            continue;
        }

        let continues = stream.as_ref().is_some_and(|s| {
            s.tli == id.tli
                && s.seg == id.seg
                && s.sysid == id.sysid
                && s.next == id.segno
                && s.complete
                && s.sum.end_of_wal().is_none()
        });
        if !continues {
            close(stream.take(), &mut out);
            let mut cfg = DecoderConfig::new(id.seg);
            cfg.sysid = Some(id.sysid);
            match Summarizer::new(cfg, id.segno) {
                Ok(sum) => {
                    stream = Some(Stream {
                        sum,
                        tli: id.tli,
                        seg: id.seg,
                        sysid: id.sysid,
                        next: id.segno,
                        complete: false,
                        files: Vec::new(),
                    })
                }
                Err(e) => {
                    out[i].error = Some(e.to_string());
                    continue;
                }
            }
        }
        let Some(st) = stream.as_mut() else { continue };
        st.files.push((i, id.segno));
        st.next = id.segno.next();
        // Feed at most one segment's worth, until WAL ends; count every byte of the file to
        // check its size.
        let mut total = 0u64;
        let mut chunk_len = n;
        while chunk_len > 0 {
            let room = id.seg.bytes().saturating_sub(total) as usize;
            total += chunk_len as u64;
            if out[i].error.is_none()
                && room > 0
                && st.sum.end_of_wal().is_none()
                && let Err(e) = st.sum.feed(&buf[..chunk_len.min(room)])
            {
                out[i].error = Some(e.to_string());
            }
            chunk_len = read_full(&mut reader, &mut buf).map_err(io_err)?;
        }
        let partial = path
            .to_str()
            .is_some_and(|p| p.ends_with(".partial") || p.ends_with(".partial.lz4"));
        st.complete = total == id.seg.bytes();
        if total > id.seg.bytes() {
            out[i].error = Some(format!(
                "file is {total} bytes, longer than the {}-byte segment size",
                id.seg.bytes()
            ));
        } else if total < id.seg.bytes() && !partial {
            out[i].error = Some(format!(
                "truncated segment file: {total} of {} bytes",
                id.seg.bytes()
            ));
        }
        if out[i].error.is_some() {
            close(stream.take(), &mut out);
        }
    }
    close(stream.take(), &mut out);
    Ok(InspectReport { files: out })
}

/// Human-readable report.
pub(crate) fn print_text(
    w: &mut impl Write,
    report: &InspectReport,
    xacts: bool,
) -> io::Result<()> {
    for (i, f) in report.files.iter().enumerate() {
        if i > 0 {
            writeln!(w)?;
        }
        writeln!(w, "{}", f.file)?;
        if let Some(e) = &f.error {
            writeln!(w, "  error:         {e}")?;
            if f.segment.is_none() {
                continue;
            }
        }
        writeln!(
            w,
            "  segment:       {} (timeline {}, starts at {}){}",
            f.segment.as_deref().unwrap_or("?"),
            f.timeline.map_or(0, |t| t.0),
            f.start_lsn.map_or_else(|| "?".into(), |l| l.to_string()),
            if f.compressed { ", lz4" } else { "" }
        )?;
        writeln!(
            w,
            "  cluster:       PostgreSQL {}, system {}, {} MiB segments",
            f.pg_version.unwrap_or(0),
            f.system_id.as_deref().unwrap_or("?"),
            f.wal_segment_size.unwrap_or(0) >> 20
        )?;
        match (&f.first_lsn, &f.last_lsn) {
            (Some(a), Some(b)) => writeln!(w, "  records:       {} ({a} .. {b})", f.records)?,
            _ => writeln!(w, "  records:       0")?,
        }
        writeln!(
            w,
            "  transactions:  {} commits, {} aborts",
            f.commits, f.aborts
        )?;
        if let (Some(a), Some(b)) = (&f.min_commit_time, &f.max_commit_time) {
            writeln!(w, "  commit times:  {a} .. {b}")?;
        }
        for r in &f.restore_points {
            writeln!(w, "  restore point: {:?} at {} ({})", r.name, r.lsn, r.time)?;
        }
        for c in &f.checkpoints {
            writeln!(
                w,
                "  checkpoint:    {} at {} (redo {}, timeline {})",
                c.kind.name(),
                c.lsn,
                c.redo,
                c.timeline
            )?;
        }
        for t in &f.timeline_switches {
            writeln!(
                w,
                "  new timeline:  {} (from {}) at {}, {}",
                t.timeline, t.prev_timeline, t.lsn, t.time
            )?;
        }
        if let Some(s) = &f.switch_lsn {
            writeln!(w, "  ends with:     WAL switch at {s}")?;
        }
        if let Some(e) = &f.end_of_wal {
            let what = if e.clean {
                "valid WAL ends"
            } else {
                "INVALID WAL"
            };
            writeln!(w, "  {what}: {}", e.reason)?;
        }
        for m in &f.malformed_records {
            writeln!(w, "  malformed:     {m}")?;
        }
        if xacts {
            for x in &f.xacts {
                writeln!(
                    w,
                    "    {:<16} {:<15} xid {:<10} {}",
                    x.lsn.to_string(),
                    x.kind.name(),
                    x.xid,
                    x.time
                )?;
            }
        }
    }
    Ok(())
}
