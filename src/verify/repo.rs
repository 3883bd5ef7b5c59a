//! `pitr verify`: re-reads every object the complete backups need and checks it.
//!
//! - Backup chunks: stored size and CRC-32C against the catalog, decoded size, and
//!   every file of every archive against the server's backup manifest (size and CRC-32C),
//!   plus the manifest's own SHA-256.
//! - WAL: on every timeline, continuity from each backup's start to the newest archived
//!   WAL (following history files across switches), and the WAL itself decoded as one
//!   stream from the timeline's oldest backup (every record's CRC-32C and prev-link, across
//!   segment and timeline boundaries): valid WAL that ends before the archive does means two
//!   histories are mixed there, or an object is damaged.
//! - The catalog: an unreadable catalog entry is a problem; a backup that never completed is
//!   a warning. Timeline history files must agree with each other, and no timeline may have
//!   WAL from before it began.
//!
//! Every problem names the object. The caller exits non-zero if there is any; warnings do
//! not fail the check.

use std::collections::{BTreeSet, HashMap};
use std::io::Read;

use serde::{Deserialize, Serialize};
use walfmt::names::segment_file_name;
use walfmt::{SegNo, TimeLineId};

use crate::repo::catalog::{self, BackupRecord, SegFile, WalIndex};
use crate::repo::{Repo, RepoError};
use crate::restore::{self, RestoreError};

/// What `pitr verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RepoReport {
    /// Backups checked.
    pub backups: usize,
    /// Backup objects read.
    pub backup_objects: usize,
    /// Files checked against manifests.
    pub files_checked: u64,
    /// WAL objects read.
    pub wal_objects: usize,
    /// Uncompressed bytes read.
    pub bytes: u64,
    /// Problems, each naming its object: `verify` fails on any.
    pub problems: Vec<String>,
    /// Things worth knowing that do not make a restore fail (an interrupted backup's
    /// leftovers, ...).
    pub warnings: Vec<String>,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "Files", default)]
    files: Vec<ManifestFile>,
}

#[derive(Deserialize)]
struct ManifestFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks the manifest's own SHA-256 (over every byte before the `"Manifest-Checksum"` key).
fn check_manifest_checksum(text: &[u8]) -> Result<(), String> {
    let needle = b"\"Manifest-Checksum\"";
    let pos = text
        .windows(needle.len())
        .rposition(|w| w == needle)
        .ok_or("no Manifest-Checksum")?;
    let rest = String::from_utf8_lossy(&text[pos + needle.len()..]);
    let want = rest
        .split('"')
        .nth(1)
        .ok_or("unreadable Manifest-Checksum")?
        .to_ascii_lowercase();
    let got = hex(ring::digest::digest(&ring::digest::SHA256, &text[..pos]).as_ref());
    if got != want {
        return Err(format!(
            "manifest checksum mismatch: computed {got}, recorded {want}"
        ));
    }
    Ok(())
}

/// Reads a tar stream and checks each regular file against `expected` (path -> size, CRC-32C
/// as PostgreSQL prints it). Returns (files seen, problems).
fn check_tar(
    r: &mut dyn Read,
    prefix: &str,
    expected: &HashMap<String, (u64, Option<String>)>,
    archive: &str,
) -> Result<(BTreeSet<String>, Vec<String>), String> {
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    let mut ar = tar::Archive::new(r);
    let entries = ar
        .entries()
        .map_err(|e| format!("{archive}: corrupt tar: {e}"))?;
    let mut buf = vec![0u8; 256 << 10];
    for e in entries {
        let mut e = e.map_err(|e| format!("{archive}: corrupt tar: {e}"))?;
        if !e.header().entry_type().is_file() {
            continue;
        }
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let name = format!("{prefix}{}", raw.trim_start_matches("./"));
        let mut crc = 0u32;
        let mut size = 0u64;
        loop {
            let n = e
                .read(&mut buf)
                .map_err(|err| format!("{archive}: {name}: {err}"))?;
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            size += n as u64;
        }
        match expected.get(&name) {
            None if name == "backup_manifest" => {}
            None => problems.push(format!("{archive}: {name} is not in the backup manifest")),
            Some((want_size, want_sum)) => {
                if *want_size != size {
                    problems.push(format!(
                        "{archive}: {name}: {size} bytes, the manifest says {want_size}"
                    ));
                } else if let Some(w) = want_sum
                    && !w.eq_ignore_ascii_case(&hex(&crc.to_le_bytes()))
                    && !w.eq_ignore_ascii_case(&hex(&crc.to_be_bytes()))
                {
                    problems.push(format!(
                        "{archive}: {name}: CRC-32C {:08x} differs from the manifest's {w}",
                        crc
                    ));
                }
            }
        }
        seen.insert(name);
    }
    Ok((seen, problems))
}

async fn check_backup(repo: &Repo, b: &BackupRecord, report: &mut RepoReport) {
    let mut expected: HashMap<String, (u64, Option<String>)> = HashMap::new();
    match &b.manifest {
        None => report
            .problems
            .push(format!("backup {}: no manifest recorded", b.id)),
        Some(m) => match crate::repo::fetch::get_checked(repo, m).await {
            Err(e) => report.problems.push(e.to_string()),
            Ok(text) => {
                report.backup_objects += 1;
                if let Err(e) = check_manifest_checksum(&text) {
                    report.problems.push(format!("{}: {e}", m.key));
                }
                match serde_json::from_slice::<Manifest>(&text) {
                    Err(e) => report
                        .problems
                        .push(format!("{}: unreadable manifest: {e}", m.key)),
                    Ok(man) => {
                        for f in man.files {
                            let path = match (f.path, f.encoded_path) {
                                (Some(p), _) => p,
                                (None, Some(e)) => hex_decode(&e)
                                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                                    .unwrap_or(e),
                                _ => continue,
                            };
                            let sum = match f.algorithm.as_deref() {
                                Some("CRC32C") => f.checksum,
                                _ => None,
                            };
                            expected.insert(path, (f.size, sum));
                        }
                    }
                }
            }
        },
    }
    let expected = std::sync::Arc::new(expected);
    let mut all_seen = BTreeSet::new();
    for a in &b.archives {
        let prefix = if a.name == "base" {
            String::new()
        } else {
            format!("pg_tblspc/{}/", a.name)
        };
        let archive = a
            .chunks
            .first()
            .map(|c| c.key.clone())
            .unwrap_or_else(|| format!("backups/{}/{}", b.id, a.name));
        let exp = expected.clone();
        let name = archive.clone();
        let res = restore::feed_archive(repo, a, move |r| {
            check_tar(r, &prefix, &exp, &name).map_err(RestoreError::Corrupt)
        })
        .await;
        report.backup_objects += a.chunks.len();
        report.bytes += a.bytes;
        match res {
            Ok((seen, problems)) => {
                report.problems.extend(problems);
                all_seen.extend(seen);
            }
            Err(e) => report.problems.push(format!("backup {}: {e}", b.id)),
        }
    }
    if !expected.is_empty() {
        for p in expected.keys() {
            if !all_seen.contains(p) {
                report.problems.push(format!(
                    "backup {}: {p} is in the manifest but in no archive",
                    b.id
                ));
            }
        }
        report.files_checked += all_seen.len() as u64;
    }
}

/// Prints the report for humans.
pub(crate) fn print(out: &mut impl std::io::Write, r: &RepoReport) -> std::io::Result<()> {
    writeln!(
        out,
        "checked {} backup(s): {} backup object(s), {} file(s) against manifests, {} WAL object(s), {} MiB",
        r.backups,
        r.backup_objects,
        r.files_checked,
        r.wal_objects,
        r.bytes >> 20
    )?;
    for p in &r.problems {
        writeln!(out, "PROBLEM: {p}")?;
    }
    for w in &r.warnings {
        writeln!(out, "warning: {w}")?;
    }
    writeln!(
        out,
        "{}",
        if r.problems.is_empty() {
            "verify: OK"
        } else {
            "verify: FAILED"
        }
    )
}

/// Verifies the whole repo.
pub(crate) async fn verify_repo(repo: &Repo) -> Result<RepoReport, RepoError> {
    let (_, seg, sysid) = catalog::identity(repo).await?;
    let scan = catalog::scan_backups(repo).await?;
    let backups = scan.good;
    let idx = WalIndex::load(repo, seg, sysid).await?;
    let mut report = RepoReport {
        backups: backups.len(),
        ..Default::default()
    };
    for b in &scan.bad {
        report.problems.push(format!(
            "{}: {}: this backup cannot be restored (other backups can); remove it or restore the object from a copy",
            b.key, b.error
        ));
    }
    for i in &scan.incomplete {
        report.warnings.push(format!(
            "backups/{}/ holds {} object(s) ({} MiB) of a backup that never completed (no backup.json): nothing restores it; `pitr prune` removes it once it is a day old",
            i.id,
            i.objects,
            i.bytes >> 20
        ));
    }
    if backups.is_empty() {
        report.problems.push(format!(
            "repo {} holds no complete backup: nothing can be restored; take one with `pitr backup`",
            repo.location
        ));
    }
    report.problems.extend(catalog::history_problems(&idx));
    let recorded = match crate::repo::gaps::gaps(repo).await {
        Ok(g) => g,
        Err(e) => {
            report.problems.push(e.to_string());
            Vec::new()
        }
    };
    // Restore points: each must read (in an encrypted repo: open, sealed and authentic) and
    // parse; `list` and `restore --to-name` use them.
    match repo.store().list("points/").await {
        Ok(points) => {
            for o in points {
                match repo.store().get(&o.key).await {
                    Ok(Some(b)) => {
                        if let Err(e) =
                            serde_json::from_slice::<crate::repo::objects::PointRecord>(&b)
                        {
                            report.problems.push(format!("{}: unreadable: {e}", o.key));
                        }
                    }
                    Ok(None) => report
                        .problems
                        .push(format!("{}: listed but missing", o.key)),
                    Err(e) => report.problems.push(e.to_string()),
                }
            }
        }
        Err(e) => report.problems.push(e.to_string()),
    }
    let open = crate::repo::gaps::open_gap_after(&recorded, &backups);
    if let Some(g) = open {
        report.problems.push(g.unrestorable());
    }
    for b in &backups {
        check_backup(repo, b, &mut report).await;
    }
    // WAL: every timeline's path from its oldest backup, decoded as one stream (every
    // record's CRC, every prev-link, across segment boundaries and timeline switches).
    let mut read: BTreeSet<(TimeLineId, SegNo)> = BTreeSet::new();
    for tli in idx.timelines() {
        let path = idx.path(tli);
        // One decode per contiguous run of WAL (a gap starts another), from its oldest backup.
        let mut runs: std::collections::BTreeMap<walfmt::Lsn, walfmt::Lsn> = Default::default();
        for b in &backups {
            if !catalog::on_path(&path, b.end_tli, b.end()) {
                continue;
            }
            let cov = idx.coverage(&path, b.start());
            if let Some(gap) = cov.gap {
                let s = gap.segment(seg);
                // A gap pitr stream recorded, with a backup after it: known and explained;
                // this backup restores up to it.
                let known = recorded.iter().find(|g| g.covers(gap, seg));
                if let Some(g) = known
                    && open.is_none_or(|o| o != g)
                {
                    report.warnings.push(format!(
                        "timeline {tli}: backup {} restores only up to {gap}: {} (recorded {}: {}); later backups restore past it",
                        b.id,
                        g.describe(),
                        g.detected_at,
                        g.reason
                    ));
                    note_run(&mut runs, &cov, b.start());
                    continue;
                }
                report.problems.push(format!(
                    "timeline {tli}: WAL segment {} is missing (a gap from {gap}): restores of backup {} cannot pass it",
                    segment_file_name(idx.tli_for_segment(&path, s), s, seg),
                    b.id
                ));
            }
            if cov.end.is_none() {
                report.problems.push(format!(
                    "backup {}: its first WAL segment is missing on timeline {tli}",
                    b.id
                ));
                continue;
            }
            note_run(&mut runs, &cov, b.start());
        }
        for from in runs.into_values() {
            check_wal_path(repo, &idx, tli, &path, from, &mut read, &mut report).await;
        }
    }
    Ok(report)
}

/// Decodes every record the decoder holds, noting what each segment's records say; `Some`
/// where valid WAL ends.
fn drain(
    dec: &mut walfmt::WalDecoder<'_>,
    seg: walfmt::WalSegSize,
    observed: &mut std::collections::BTreeMap<SegNo, walfmt::SegmentSummary>,
    newest_start: &mut Option<SegNo>,
) -> Result<Option<walfmt::EndOfWal>, walfmt::DecodeError> {
    loop {
        match dec.poll()? {
            walfmt::Poll::Record(r) => {
                let rs = r.lsn.segment(seg);
                *newest_start = Some(rs);
                observed
                    .entry(rs)
                    .or_insert_with(|| walfmt::SegmentSummary::new(rs))
                    .observe(&r);
            }
            walfmt::Poll::NeedMore => return Ok(None),
            walfmt::Poll::End(e) => return Ok(Some(e)),
        }
    }
}

/// Keeps, per end of a contiguous run of WAL, the oldest backup start that reads it.
fn note_run(
    runs: &mut std::collections::BTreeMap<walfmt::Lsn, walfmt::Lsn>,
    cov: &catalog::Coverage,
    start: walfmt::Lsn,
) {
    if let Some(end) = cov.end {
        let e = runs.entry(end).or_insert(start);
        *e = (*e).min(start);
    }
}

/// Decodes the WAL of `path` from `from` through the contiguous archive, reading each object
/// once per path. Any place where valid WAL stops before the archive's end is a problem.
async fn check_wal_path(
    repo: &Repo,
    idx: &WalIndex,
    tli: TimeLineId,
    path: &[catalog::PathStep],
    from: walfmt::Lsn,
    read: &mut BTreeSet<(TimeLineId, SegNo)>,
    report: &mut RepoReport,
) {
    use walfmt::{DecoderConfig, StartAt, WalDecoder};
    let seg = idx.seg;
    let cov = idx.coverage(path, from);
    let Some(end) = cov.end else { return };
    let first = from.segment(seg);
    let Some(start) = first.start_lsn(seg) else {
        return;
    };
    let cfg = DecoderConfig::for_cluster(seg, idx.system_id);
    let Ok(mut dec) = WalDecoder::new(cfg, StartAt::SegmentStart(start)) else {
        return;
    };
    let mut s = first;
    let last = catalog::last_segment(end, seg);
    let mut current = String::new();
    let mut ended = None;
    // What the records starting in each segment say, to check the stored summaries against
    // (restore plans from them: commit times, restore points, checkpoints).
    let mut observed: std::collections::BTreeMap<SegNo, walfmt::SegmentSummary> =
        std::collections::BTreeMap::new();
    let mut summaries: Vec<(SegNo, String)> = Vec::new();
    let mut newest_start: Option<SegNo> = None;
    while s <= last && ended.is_none() {
        let Some((ftli, f)) = idx.file(path, s) else {
            break;
        };
        let (key, pend) = match f {
            SegFile::Complete { key, summary } => {
                if let Some(sk) = summary {
                    summaries.push((s, sk.clone()));
                }
                (key.clone(), None)
            }
            SegFile::Partial { key, end } => (key.clone(), Some(*end)),
        };
        let data = match repo.read_wal_object(&key, s, pend, seg).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                report.problems.push(format!("{key}: listed but missing"));
                return;
            }
            Err(e) => {
                report.problems.push(e.to_string());
                return;
            }
        };
        if read.insert((ftli, s)) {
            report.wal_objects += 1;
            report.bytes += data.len() as u64;
        }
        let upto = pend.map_or(data.len(), |e| {
            e.0.saturating_sub(s.start_lsn(seg).map_or(0, |l| l.0)) as usize
        });
        dec.feed(&data[..upto.min(data.len())]);
        current = key;
        match drain(&mut dec, seg, &mut observed, &mut newest_start) {
            Ok(e) => ended = e,
            Err(e) => {
                report.problems.push(format!("{current}: {e}"));
                return;
            }
        }
        s = s.next();
    }
    if ended.is_none() {
        dec.finish();
        match drain(&mut dec, seg, &mut observed, &mut newest_start) {
            Ok(e) => ended = e,
            Err(e) => {
                report.problems.push(format!("{current}: {e}"));
                return;
            }
        }
    }
    check_summaries(repo, &summaries, observed, newest_start, report).await;
    if let Some(e) = ended
        && !matches!(e.reason, walfmt::EndReason::InputEnded { .. })
    {
        report.problems.push(format!(
            "timeline {tli}: the archived WAL stops being valid at {} ({e}) in {current}, before the archive's end at {end}: the archive mixes two histories here, or an object is damaged; restores past this point replay the wrong WAL or stop early",
            e.lsn
        ));
    }
}

/// Compares each stored summary with what decoding its segment's records found. A segment
/// is compared only once decoding went past it (a record starting in a later segment, or
/// its switch record), so that a record running into WAL not archived yet is no false
/// problem.
async fn check_summaries(
    repo: &Repo,
    summaries: &[(SegNo, String)],
    mut observed: std::collections::BTreeMap<SegNo, walfmt::SegmentSummary>,
    newest_start: Option<SegNo>,
    report: &mut RepoReport,
) {
    for (s, key) in summaries {
        let stored = match repo.store().get(key).await {
            Ok(Some(b)) => b,
            Ok(None) => continue, // removed meanwhile (prune)
            Err(e) => {
                report.problems.push(format!("{key}: {e}"));
                continue;
            }
        };
        let stored = match catalog::facts_from_summary(&stored, key) {
            Ok(f) => f,
            Err(e) => {
                if !report.problems.iter().any(|p| p.starts_with(key.as_str())) {
                    report.problems.push(format!(
                        "{e}: restores decode the segment instead; delete the summary"
                    ));
                }
                continue;
            }
        };
        let obs = observed
            .remove(s)
            .unwrap_or_else(|| walfmt::SegmentSummary::new(*s));
        let decoded_past = obs.switch_lsn.is_some() || newest_start.is_some_and(|n| n > *s);
        if !decoded_past {
            continue;
        }
        let got = catalog::facts_from_segment(obs);
        let mut differs = Vec::new();
        if got.xacts != stored.xacts {
            differs.push(format!(
                "{} commits/aborts in the WAL, {} in the summary",
                got.xacts.len(),
                stored.xacts.len()
            ));
        }
        if got.restore_points != stored.restore_points {
            differs.push("restore points".to_string());
        }
        if got.checkpoints != stored.checkpoints {
            differs.push("checkpoints".to_string());
        }
        if got.first_lsn != stored.first_lsn
            || got.last_lsn != stored.last_lsn
            || (stored.first_prev.is_some() && got.first_prev != stored.first_prev)
            || got.switch_lsn != stored.switch_lsn
        {
            differs.push("record boundaries".to_string());
        }
        if !differs.is_empty() && !report.problems.iter().any(|p| p.starts_with(key.as_str())) {
            report.problems.push(format!(
                "{key} disagrees with its segment ({}): restores plan from it and would stop at the wrong record; delete it (restores then decode the segment)",
                differs.join(", ")
            ));
        }
    }
}
