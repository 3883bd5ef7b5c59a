//! `pitr wal inspect`, as a user runs it: on the committed fixtures, on fresh WAL from real
//! servers of every major (checked against that version's pg_waldump), and on bad input.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use testkit::PgInstall;
use testkit::waldump::{self, DumpRecord};

fn pitr(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pitr"))
        .args(args)
        .output()
        .expect("run pitr")
}

fn fixture_dir(major: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("testdata/wal/pg{major}"))
}

fn fixture_segments(major: u32) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixture_dir(major))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 28 && n.ends_with(".lz4"))
        })
        .collect();
    v.sort();
    v
}

/// The segment name of a fixture file (`<segment>.lz4`).
fn seg_name(path: &Path) -> String {
    path.file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(".lz4")
        .to_owned()
}

fn unlz4(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    lz4_flex::frame::FrameDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn inspect_json(files: &[PathBuf]) -> (Vec<Value>, Output) {
    let mut args = vec!["wal", "inspect", "--json"];
    let s: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    args.extend(s.iter().map(String::as_str));
    let out = pitr(&args);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bad JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (v.as_array().unwrap().clone(), out)
}

/// Per-file JSON agrees with pg_waldump's records grouped by segment: counts, each commit's
/// LSN and time, restore points, the switch.
fn assert_agrees(label: &str, files: &[Value], theirs: &[DumpRecord], seg_size: u64) {
    let mut by_seg: BTreeMap<u64, Vec<&DumpRecord>> = BTreeMap::new();
    for t in theirs {
        by_seg.entry(t.lsn / seg_size).or_default().push(t);
    }
    let mut total = 0;
    for f in files {
        let segno = f["segno"].as_u64().unwrap();
        let recs = by_seg.remove(&segno).unwrap_or_default();
        let ctx = format!("{label}, {}", f["segment"]);
        total += recs.len();
        assert_eq!(
            f["records"].as_u64().unwrap() as usize,
            recs.len(),
            "{ctx}: records"
        );
        let commits: Vec<&&DumpRecord> = recs
            .iter()
            .filter(|t| t.rmgr == "Transaction" && t.id.starts_with("COMMIT"))
            .collect();
        let aborts = recs
            .iter()
            .filter(|t| t.rmgr == "Transaction" && t.id.starts_with("ABORT"))
            .count();
        assert_eq!(
            f["commits"].as_u64().unwrap() as usize,
            commits.len(),
            "{ctx}: commits"
        );
        assert_eq!(
            f["aborts"].as_u64().unwrap() as usize,
            aborts,
            "{ctx}: aborts"
        );
        let ours: Vec<(String, String)> = f["xacts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["kind"].as_str().unwrap().starts_with("COMMIT"))
            .map(|x| {
                (
                    x["lsn"].as_str().unwrap().to_owned(),
                    x["time"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let expect: Vec<(String, String)> = commits
            .iter()
            .map(|t| {
                let ts = waldump::xact_time_and_xid(&t.desc).unwrap().0; // "YYYY-MM-DD HH:MM:SS.ffffff UTC"
                let rfc = format!("{}Z", ts.trim_end_matches(" UTC").replacen(' ', "T", 1));
                (format!("{:X}/{:X}", t.lsn >> 32, t.lsn & 0xFFFF_FFFF), rfc)
            })
            .collect();
        assert_eq!(ours, expect, "{ctx}: commits (lsn, time)");
        let rps: Vec<&str> = f["restore_points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        let expect_rps: Vec<&str> = recs
            .iter()
            .filter(|t| t.id == "RESTORE_POINT")
            .map(|t| t.desc.as_str())
            .collect();
        assert_eq!(rps, expect_rps, "{ctx}: restore points");
        let switched = recs.iter().any(|t| t.id == "SWITCH");
        assert_eq!(f["switch_lsn"].is_string(), switched, "{ctx}: switch");
        assert!(f["error"].is_null(), "{ctx}: {}", f["error"]);
        assert!(
            f["end_of_wal"].is_null() || f["end_of_wal"]["clean"] == true,
            "{ctx}: {}",
            f["end_of_wal"]
        );
    }
    assert_eq!(
        total,
        theirs.len(),
        "{label}: every pg_waldump record is counted once"
    );
}

#[test]
fn inspect_json_on_fixtures_agrees_with_pg_waldump() {
    for major in [15, 16, 17, 18] {
        let files = fixture_segments(major);
        let (json, out) = inspect_json(&files);
        assert!(
            out.status.success(),
            "pg{major}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(json.len(), files.len());
        assert_eq!(json[0]["pg_version"], major);
        assert_eq!(json[0]["compressed"], true);
        let dump =
            String::from_utf8(unlz4(&fixture_dir(major).join("pg_waldump.txt.lz4"))).unwrap();
        assert_agrees(
            &format!("fixture pg{major}"),
            &json,
            &waldump::parse(&dump),
            1 << 20,
        );
    }
}

#[test]
fn inspect_json_on_live_wal_agrees_with_pg_waldump() {
    for install in PgInstall::for_tests() {
        let major = install.major;
        let tmp = tempfile::tempdir().unwrap();
        let names = testkit::workload::make_wal(&install, tmp.path(), 60);
        let dump = waldump::dump_dir(&install, tmp.path(), &names[0], &names[names.len() - 1]);
        let theirs = waldump::parse(&dump);
        // Only the segments pg_waldump read (the rest of pg_wal is recycled or preallocated).
        let last_seg = theirs.last().unwrap().lsn >> 20;
        let files: Vec<PathBuf> = names.iter().map(|n| tmp.path().join(n)).collect();
        let (json, out) = inspect_json(&files);
        assert!(
            out.status.success(),
            "PG {major}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read: Vec<Value> = json
            .into_iter()
            .filter(|f| f["segno"].as_u64().unwrap() <= last_seg)
            .collect();
        assert_agrees(&format!("live PG {major}"), &read, &theirs, 1 << 20);
    }
}

#[test]
fn text_output_reads_well() {
    let files = fixture_segments(17);
    let out = pitr(&[
        "wal",
        "inspect",
        files[0].to_str().unwrap(),
        files[1].to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "segment:",
        "PostgreSQL 17",
        "1 MiB segments",
        "records:",
        "commits",
        "commit times:",
        "checkpoint:",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

fn write_tmp(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn corrupt_segment_fails_naming_file_and_lsn() {
    let tmp = tempfile::tempdir().unwrap();
    let files = fixture_segments(16);
    let name = seg_name(&files[0]);
    let mut seg = unlz4(&files[0]);
    // Flip a bit well inside the valid WAL of the first segment.
    seg[300_000] ^= 0x10;
    let p = write_tmp(tmp.path(), &name, &seg);
    let out = pitr(&["wal", "inspect", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&name) && err.contains("invalid WAL at "),
        "{err}"
    );
    // The LSN named is at or before the damaged byte.
    let lsn_text = err
        .split("invalid WAL at ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    let (hi, lo) = lsn_text.split_once('/').unwrap();
    let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
    let seg_start = u64::from_str_radix(&name[16..24], 16).unwrap() << 20;
    assert!(
        lsn <= seg_start + 300_000 && lsn > seg_start + 290_000,
        "{err}"
    );
}

#[test]
fn bad_input_gives_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (tmp.path().join("missing"), "No such file"),
        (
            write_tmp(tmp.path(), "text.txt", &[b'x'; 100_000]),
            "not a PostgreSQL 15-18 WAL segment",
        ),
        (write_tmp(tmp.path(), "short", b"abc"), "not a WAL segment"),
        (
            write_tmp(tmp.path(), "000000010000000000000009", &vec![0u8; 1 << 20]),
            "begins with zeros",
        ),
    ];
    for (path, want) in cases {
        let out = pitr(&["wal", "inspect", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{}", path.display());
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("pitr: error: ") && err.contains(want),
            "{err}"
        );
        assert!(
            err.contains(path.file_name().unwrap().to_str().unwrap()),
            "names the file: {err}"
        );
    }
    // Misnamed: file name says one segment, header another.
    let files = fixture_segments(15);
    let seg = unlz4(&files[1]);
    let p = write_tmp(tmp.path(), "000000010000000000000001", &seg);
    let out = pitr(&["wal", "inspect", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("its header says"));
    // Usage errors exit 2.
    assert_eq!(pitr(&["wal", "inspect"]).status.code(), Some(2));
    assert_eq!(pitr(&["wal", "nope"]).status.code(), Some(2));
}

#[test]
fn plain_and_compressed_and_recycled_files() {
    let tmp = tempfile::tempdir().unwrap();
    let files = fixture_segments(18);
    let plain: Vec<PathBuf> = files
        .iter()
        .map(|f| write_tmp(tmp.path(), &seg_name(f), &unlz4(f)))
        .collect();
    let (a, _) = inspect_json(&plain);
    let (b, _) = inspect_json(&files);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["records"], y["records"]);
        assert_eq!(x["xacts"], y["xacts"]);
        assert_eq!(x["compressed"], false);
    }
    // A recycled file (old content under a later name) holds no WAL of its own.
    let last = plain
        .last()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let next = format!(
        "{}{:08X}",
        &last[..16],
        u32::from_str_radix(&last[16..], 16).unwrap() + 5
    );
    let recycled = write_tmp(tmp.path(), &next, &unlz4(&files[0]));
    let (j, out) = inspect_json(&[recycled]);
    assert!(out.status.success());
    assert_eq!(j[0]["records"], 0);
    assert_eq!(j[0]["end_of_wal"]["clean"], true);
    assert!(
        j[0]["end_of_wal"]["reason"]
            .as_str()
            .unwrap()
            .contains("recycled")
    );
}

#[test]
fn help_explains() {
    let out = pitr(&["wal", "inspect", "--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("--json") && text.contains("lz4") && text.contains("Exits 1"),
        "{text}"
    );
}

#[test]
fn truncated_files_fail_unless_partial() {
    let tmp = tempfile::tempdir().unwrap();
    let files = fixture_segments(17);
    let name = seg_name(&files[0]);
    let seg = unlz4(&files[0]);
    let cut = write_tmp(tmp.path(), &name, &seg[..300_000]);
    let out = pitr(&["wal", "inspect", cut.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truncated segment file: 300000 of 1048576 bytes") && err.contains(&name),
        "{err}"
    );
    // A .partial may be short: it is a segment still being written.
    let part = write_tmp(tmp.path(), &format!("{name}.partial"), &seg[..300_000]);
    let out = pitr(&["wal", "inspect", part.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A truncated file does not run on into the next one.
    let next = seg_name(&files[1]);
    let n = write_tmp(tmp.path(), &next, &unlz4(&files[1]));
    let (j, out) = inspect_json(&[cut, n]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        j[1]["error"].is_null() && j[1]["end_of_wal"]["clean"] != false,
        "{}",
        j[1]
    );
}

#[test]
fn first_segment_of_a_new_timeline_is_named_by_its_file() {
    let tmp = tempfile::tempdir().unwrap();
    let files = fixture_segments(16);
    // The same bytes filed under timeline 2 (as PostgreSQL does at promotion).
    let renamed: Vec<PathBuf> = files[..2]
        .iter()
        .map(|f| {
            let n = seg_name(f);
            write_tmp(tmp.path(), &format!("00000002{}", &n[8..]), &unlz4(f))
        })
        .collect();
    let (j, out) = inspect_json(&renamed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(j[0]["timeline"], 2);
    assert!(j[0]["segment"].as_str().unwrap().starts_with("00000002"));
    // Decoded as one stream: no record is left unchecked at the boundary.
    assert!(j[0]["end_of_wal"].is_null(), "{}", j[0]["end_of_wal"]);
}

#[test]
fn a_header_in_the_last_possible_segment_is_an_error_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let mut seg = unlz4(&fixture_segments(15)[0]);
    seg[8..16].copy_from_slice(&0xFFFF_FFFF_FFF0_0000u64.to_le_bytes());
    let p = write_tmp(tmp.path(), "odd-name", &seg);
    let out = pitr(&["wal", "inspect", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("last possible WAL segment"));
}

/// The README's first command (the main job) works as written: its glob expanded as a shell
/// does, every file it names is a segment `wal inspect` accepts.
#[test]
fn readme_first_command_works() {
    // The README's first command is the tour: build pitr, stream a throwaway server under
    // load, show the archive. Run it as written, on one installed major.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let first = readme
        .lines()
        .skip_while(|l| !l.starts_with("```sh"))
        .nth(1)
        .expect("README's first command");
    let cmd = first.split('#').next().unwrap().trim();
    assert_eq!(
        cmd, "./scripts/tour.sh",
        "the README's first command changed"
    );
    let install = testkit::PgInstall::for_tests().pop().unwrap();
    let out = std::process::Command::new(root.join("scripts/tour.sh"))
        .env("PITR_TOUR_PG_BIN", install.tool("initdb").parent().unwrap())
        .env("PITR_TOUR_SECONDS", "2")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} failed:\n{text}");
    for want in [
        "restore point: \"tour\"",
        "pitr_archive_lag_bytes",
        "exit 0",
        "verify: PASSED",
        "the orders are back: 1 coffee, 2 tea, 3 croissant, 4 bagel, 5 juice",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}
