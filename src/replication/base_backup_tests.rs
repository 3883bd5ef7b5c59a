//! Hermetic tests of the `BASE_BACKUP` decoder: hand-built message sequences, as
//! PostgreSQL 15 to 18 send them, and each way they can be malformed or out of order.

use super::*;

fn row(vals: &[Option<&str>]) -> Backend {
    Backend::DataRow(
        vals.iter()
            .map(|v| v.map(|s| Bytes::copy_from_slice(s.as_bytes())))
            .collect(),
    )
}

fn cols(names: &[&str]) -> Backend {
    Backend::RowDescription(names.iter().map(|s| s.to_string()).collect())
}

fn copy(kind: u8, body: &[u8]) -> Backend {
    let mut v = vec![kind];
    v.extend_from_slice(body);
    Backend::CopyData(Bytes::from(v))
}

fn archive(name: &str, location: &str) -> Backend {
    copy(b'n', format!("{name}\0{location}\0").as_bytes())
}

fn progress(n: u64) -> Backend {
    copy(b'p', &n.to_be_bytes())
}

fn complete(tag: &str) -> Backend {
    Backend::CommandComplete(tag.into())
}

/// Start position and a tablespace list of `spcs` (oid, location, size) plus `base`.
fn preamble(spcs: &[(&str, &str, &str)]) -> Vec<Backend> {
    let mut v = vec![
        cols(&["recptr", "tli"]),
        row(&[Some("0/2000028"), Some("1")]),
        complete("SELECT"),
        cols(&["spcoid", "spclocation", "size"]),
    ];
    for (oid, loc, size) in spcs {
        v.push(row(&[Some(oid), Some(loc), Some(size)]));
    }
    v.push(row(&[None, None, Some("30000")]));
    v.push(complete("SELECT"));
    v.push(Backend::CopyOutResponse);
    v
}

fn epilogue() -> Vec<Backend> {
    vec![
        Backend::CopyDone,
        cols(&["recptr", "tli"]),
        row(&[Some("0/2000100"), Some("1")]),
        complete("SELECT"),
        complete("BASE_BACKUP"),
        Backend::ReadyForQuery(b'I'),
    ]
}

/// Feeds everything; the events, or the first error.
fn run(msgs: Vec<Backend>) -> Result<Vec<BackupEvent>, BaseBackupError> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    for m in msgs {
        d.feed(m)?;
        while let Some(ev) = d.poll() {
            out.push(ev);
        }
    }
    Ok(out)
}

fn data(b: &str) -> Bytes {
    Bytes::copy_from_slice(b.as_bytes())
}

#[test]
fn two_tablespaces_a_manifest_and_progress() {
    let mut msgs = preamble(&[("16385", "/srv/a", "100"), ("16386", "/srv/b", "200")]);
    msgs.extend([
        archive("16385.tar", "/srv/a"),
        copy(b'd', b"tar-a-1"),
        progress(7),
        copy(b'd', b"tar-a-2"),
        progress(14),
        archive("16386.tar", "/srv/b"),
        copy(b'd', b"tar-b"),
        Backend::Notice(ServerNotice {
            severity: "WARNING".into(),
            message: "careful".into(),
            ..ServerNotice::default()
        }),
        progress(19),
        archive("base.tar", ""),
        copy(b'd', b"tar-base"),
        progress(27),
        copy(b'm', b""),
        copy(b'd', b"{\"PostgreSQL-Backup-Manifest-Version\": 1,"),
        copy(b'd', b"}"),
    ]);
    msgs.extend(epilogue());
    let events = run(msgs).unwrap();
    let archive_start = |name: &str, stem: &str, loc: Option<&str>| BackupEvent::ArchiveStart {
        name: name.into(),
        stem: stem.into(),
        location: loc.map(String::from),
    };
    let expected = vec![
        BackupEvent::Started {
            start_lsn: Lsn(0x2000028),
            timeline: TimeLineId(1),
        },
        BackupEvent::Tablespaces(vec![
            Tablespace {
                oid: Some(16385),
                location: Some("/srv/a".into()),
                size_kb: Some(100),
            },
            Tablespace {
                oid: Some(16386),
                location: Some("/srv/b".into()),
                size_kb: Some(200),
            },
            Tablespace {
                oid: None,
                location: None,
                size_kb: Some(30000),
            },
        ]),
        archive_start("16385.tar", "16385", Some("/srv/a")),
        BackupEvent::ArchiveData(data("tar-a-1")),
        BackupEvent::Progress(7),
        BackupEvent::ArchiveData(data("tar-a-2")),
        BackupEvent::Progress(14),
        BackupEvent::ArchiveEnd,
        archive_start("16386.tar", "16386", Some("/srv/b")),
        BackupEvent::ArchiveData(data("tar-b")),
        BackupEvent::Notice(ServerNotice {
            severity: "WARNING".into(),
            message: "careful".into(),
            ..ServerNotice::default()
        }),
        BackupEvent::Progress(19),
        BackupEvent::ArchiveEnd,
        archive_start("base.tar", "base", None),
        BackupEvent::ArchiveData(data("tar-base")),
        BackupEvent::Progress(27),
        BackupEvent::ArchiveEnd,
        BackupEvent::ManifestStart,
        BackupEvent::ManifestData(data("{\"PostgreSQL-Backup-Manifest-Version\": 1,")),
        BackupEvent::ManifestData(data("}")),
        BackupEvent::Ended {
            end_lsn: Lsn(0x2000100),
            timeline: TimeLineId(1),
        },
        BackupEvent::Done,
    ];
    assert_eq!(events, expected);
}

#[test]
fn without_manifest_the_last_archive_ends_at_copy_done() {
    let mut msgs = preamble(&[]);
    msgs.extend([archive("base.tar.lz4", ""), copy(b'd', b"x")]);
    msgs.extend(epilogue());
    let events = run(msgs).unwrap();
    let tail: Vec<_> = events.iter().rev().take(3).rev().cloned().collect();
    assert!(matches!(
        tail.as_slice(),
        [
            BackupEvent::ArchiveEnd,
            BackupEvent::Ended { .. },
            BackupEvent::Done
        ]
    ));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, BackupEvent::ArchiveStart { stem, .. } if stem == "base"))
    );
}

#[test]
fn command_text_is_unchanged() {
    let cmd = BaseBackupCommand {
        label: "it's",
        server_lz4: false,
    };
    assert_eq!(
        cmd.sql(),
        "BASE_BACKUP ( LABEL 'it''s', PROGRESS, CHECKPOINT 'fast', WAIT 0, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C' )"
    );
    let cmd = BaseBackupCommand {
        label: "x",
        server_lz4: true,
    };
    assert!(
        cmd.sql()
            .ends_with("MANIFEST_CHECKSUMS 'CRC32C', COMPRESSION 'lz4' )")
    );
}

#[test]
fn a_server_error_is_reported_at_ready_for_query_and_never_done() {
    let mut msgs = preamble(&[]);
    msgs.extend([archive("base.tar", ""), copy(b'd', b"x")]);
    let mut with_error = msgs.clone();
    with_error.extend([
        Backend::CopyDone,
        cols(&["recptr", "tli"]),
        row(&[Some("0/2000100"), Some("1")]),
        complete("SELECT"),
        Backend::Error(ServerNotice {
            severity: "ERROR".into(),
            code: "XX001".into(),
            message: "checksum verification failure during base backup".into(),
            ..ServerNotice::default()
        }),
    ]);
    let mut d = Decoder::new();
    for m in with_error {
        d.feed(m).unwrap();
    }
    let events: Vec<_> = std::iter::from_fn(|| d.poll()).collect();
    assert!(!events.contains(&BackupEvent::Done));
    let err = d.feed(Backend::ReadyForQuery(b'I')).unwrap_err();
    match err {
        BaseBackupError::Server(n) => assert!(n.message.contains("checksum verification")),
        other => panic!("{other}"),
    }
    assert!(d.is_finished());
    assert!(d.poll().is_none());
    assert!(matches!(
        d.feed(Backend::ReadyForQuery(b'I')),
        Err(BaseBackupError::OutOfOrder { .. })
    ));
}

#[test]
fn ready_for_query_before_command_complete_is_not_done() {
    let mut msgs = preamble(&[]);
    msgs.extend([
        archive("base.tar", ""),
        Backend::CopyDone,
        cols(&["recptr", "tli"]),
        row(&[Some("0/2000100"), Some("1")]),
        complete("SELECT"),
        Backend::ReadyForQuery(b'I'),
    ]);
    let err = run(msgs).unwrap_err();
    assert!(
        matches!(
            err,
            BaseBackupError::OutOfOrder {
                got: "ReadyForQuery",
                ..
            }
        ),
        "{err}"
    );
}

/// The preamble and one archive, then `tail`: the error.
fn copy_error(tail: Vec<Backend>) -> BaseBackupError {
    let mut msgs = preamble(&[]);
    msgs.push(archive("base.tar", ""));
    msgs.extend(tail);
    run(msgs).unwrap_err()
}

#[test]
fn unknown_copy_data_type() {
    let err = copy_error(vec![copy(b'x', b"?")]);
    assert_eq!(err.to_string(), "unknown CopyData type 'x'");
}

#[test]
fn empty_copy_data() {
    assert!(matches!(
        copy_error(vec![Backend::CopyData(Bytes::new())]),
        BaseBackupError::EmptyCopyData
    ));
}

#[test]
fn progress_of_the_wrong_size() {
    assert!(matches!(
        copy_error(vec![copy(b'p', &[0, 1, 2])]),
        BaseBackupError::Progress(3)
    ));
}

#[test]
fn data_before_any_archive() {
    let mut msgs = preamble(&[]);
    msgs.push(copy(b'd', b"x"));
    let err = run(msgs).unwrap_err();
    assert_eq!(err.to_string(), "data before any archive");
}

#[test]
fn unsafe_or_unknown_archive_names() {
    for name in [
        "../base.tar",
        ".tar",
        "pg_wal.tar",
        "base/x.tar",
        "1\\2.tar",
        "",
    ] {
        let mut msgs = preamble(&[]);
        msgs.push(archive(name, ""));
        let err = run(msgs).unwrap_err();
        assert!(
            matches!(&err, BaseBackupError::ArchiveName(n) if n == name),
            "{name:?}: {err}"
        );
    }
}

#[test]
fn archive_header_without_its_strings() {
    let mut msgs = preamble(&[]);
    msgs.push(copy(b'n', b"base.tar\0"));
    assert!(matches!(
        run(msgs).unwrap_err(),
        BaseBackupError::ArchiveHeader
    ));
}

#[test]
fn archive_or_second_manifest_after_the_manifest() {
    for tail in [archive("base.tar", ""), copy(b'm', b"")] {
        let err = copy_error(vec![copy(b'm', b""), tail]);
        assert!(matches!(err, BaseBackupError::OutOfOrder { .. }), "{err}");
    }
}

#[test]
fn malformed_positions_and_tablespace_rows() {
    let start = |r: Backend| run(vec![cols(&["recptr", "tli"]), r]).unwrap_err();
    for r in [
        row(&[Some("not-an-lsn"), Some("1")]),
        row(&[Some("0/1"), None]),
        row(&[Some("0/1")]),
    ] {
        assert!(matches!(
            start(r),
            BaseBackupError::BadRow {
                what: "start position",
                ..
            }
        ));
    }
    let mut msgs = preamble(&[]);
    msgs.truncate(4);
    msgs.push(row(&[Some("oid?"), Some("/x"), None]));
    assert!(matches!(
        run(msgs).unwrap_err(),
        BaseBackupError::BadRow {
            what: "tablespace",
            ..
        }
    ));
    let mut msgs = preamble(&[]);
    msgs.push(archive("base.tar", ""));
    msgs.extend([
        Backend::CopyDone,
        cols(&["recptr", "tli"]),
        row(&[Some("0/1"), Some("one")]),
    ]);
    assert!(matches!(
        run(msgs).unwrap_err(),
        BaseBackupError::BadRow {
            what: "end position",
            ..
        }
    ));
}

#[test]
fn out_of_order_messages() {
    let cases: Vec<Vec<Backend>> = vec![
        // Data before the COPY started.
        vec![cols(&["recptr", "tli"]), copy(b'd', b"x")],
        // The COPY before the start position.
        vec![Backend::CopyOutResponse],
        // Two start rows.
        vec![
            cols(&["recptr", "tli"]),
            row(&[Some("0/1"), Some("1")]),
            row(&[Some("0/1"), Some("1")]),
        ],
        // A row description in the COPY.
        {
            let mut v = preamble(&[]);
            v.push(cols(&["x"]));
            v
        },
        // Done before the end position.
        {
            let mut v = preamble(&[]);
            v.extend([Backend::CopyDone, complete("BASE_BACKUP")]);
            v
        },
        // A second COPY.
        {
            let mut v = preamble(&[]);
            v.extend([Backend::CopyDone, Backend::CopyOutResponse]);
            v
        },
    ];
    for (i, msgs) in cases.into_iter().enumerate() {
        let err = run(msgs).unwrap_err();
        assert!(
            matches!(err, BaseBackupError::OutOfOrder { .. }),
            "case {i}: {err}"
        );
    }
}

#[test]
fn nothing_is_accepted_after_done_or_an_error() {
    let mut d = Decoder::new();
    let mut msgs = preamble(&[]);
    msgs.push(archive("base.tar", ""));
    msgs.extend(epilogue());
    for m in msgs {
        d.feed(m).unwrap();
    }
    assert!(d.is_finished());
    assert!(d.feed(Backend::CopyDone).is_err());
    let mut d = Decoder::new();
    assert!(d.feed(Backend::CopyDone).is_err());
    assert!(d.feed(cols(&["recptr", "tli"])).is_err());
}

#[test]
fn notices_and_parameter_status_anywhere() {
    let mut msgs = vec![Backend::ParameterStatus("a".into(), "b".into())];
    msgs.extend(preamble(&[]));
    msgs.push(Backend::Notice(ServerNotice::default()));
    msgs.push(archive("base.tar", ""));
    msgs.extend(epilogue());
    let events = run(msgs).unwrap();
    assert_eq!(events.last(), Some(&BackupEvent::Done));
    assert!(events.iter().any(|e| matches!(e, BackupEvent::Notice(_))));
}
