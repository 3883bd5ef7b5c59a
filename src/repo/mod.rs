//! The repo: where WAL (and, later, base backups) are kept. See `docs/repo-format.md`.
//!
//! # Object layout (format 1)
//!
//! | key | content |
//! |---|---|
//! | `pitr.json` | identity ([`Identity`]): format version, system identifier, segment size. Written once; a repo never mixes clusters |
//! | `wal/TTTTTTTT/<segment>.lz4` | a complete WAL segment, lz4 frame with content size and checksum |
//! | `wal/TTTTTTTT/<segment>.partial.<END>.lz4` | the segment's first bytes up to LSN `END` (16 hex digits), while it is being filled |
//! | `wal/TTTTTTTT/<segment>.summary.json` | walfmt's summary of a complete segment (commits with LSN and time, restore points...), an [`objects::SummaryRecord`] |
//! | `wal/TTTTTTTT.history` | a timeline history file, as the server sent it |
//! | `gaps/TTTTTTTT-<FROM>-<TO>.json` | a WAL gap the repo will never fill ([`gaps`]) |
//!
//! `TTTTTTTT` is the timeline in hex. Names are unique per content (a partial's name carries
//! its end LSN), so no object is ever rewritten with different bytes: every publish is a
//! create-if-absent ([`store::ObjectStore::put_if_absent`]).

pub(crate) mod aws;
pub(crate) mod catalog;
pub(crate) mod codec;
pub mod crypt;
pub(crate) mod fetch;
pub(crate) mod gaps;
#[cfg(feature = "kms")]
pub mod kms;
pub mod local;
pub mod memory;
pub(crate) mod objects;
pub mod prune;
pub mod retrying;
pub mod s3;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use walfmt::names::segment_file_name;
use walfmt::{Lsn, SegNo, TimeLineId, WalFileName, WalSegSize};

pub(crate) use codec::{compress, decompress};
pub(crate) use objects::Identity;
use store::{ObjectStore, PutOutcome, StoreError, StoreErrorKind};

/// The repo format this code writes and reads.
pub(crate) const FORMAT: u32 = 1;
/// The identity object.
pub(crate) const IDENTITY_KEY: &str = "pitr.json";

/// Repo-level errors.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A bad `--repo` value.
    #[error("invalid --repo {0:?}: {1}")]
    BadSpec(String, String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The repo was made for another cluster.
    #[error(
        "repo {repo} belongs to database system {repo_system}, but the server is system {server_system}: use another --repo (a repo never mixes two clusters)"
    )]
    OtherCluster {
        /// Repo location.
        repo: String,
        /// Its system id.
        repo_system: u64,
        /// The server's.
        server_system: u64,
    },
    /// The repo cannot be used (credentials, permissions, missing bucket).
    #[error("repo {repo}: {message}")]
    Unusable {
        /// Repo location.
        repo: String,
        /// Why, and what to do.
        message: String,
    },
    /// The store refused the repo (credentials, permissions, a missing bucket when it is
    /// opened) or stayed unavailable longer than the caller waits; the store's error is the
    /// source.
    #[error("repo {repo}: {message}")]
    Rejected {
        /// Repo location.
        repo: String,
        /// Why, and what to do.
        message: String,
        /// The backend's error.
        #[source]
        source: Option<store::Cause>,
    },
    /// One of pitr's own tasks panicked: a bug, never the data's fault.
    #[error(transparent)]
    Internal(#[from] store::TaskFailed),
    /// The repo's identity or an object is unreadable or inconsistent.
    #[error("repo {repo}: {message}")]
    Corrupt {
        /// Repo location.
        repo: String,
        /// What is wrong, naming the object.
        message: String,
    },
}

impl RepoError {
    /// For `map_err` on a joined task of pitr's own: a panic is a bug, reported as one
    /// ("internal error: a {what} task panicked"), never as a corrupt object.
    pub(crate) fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> RepoError {
        move |e| RepoError::Internal(store::TaskFailed::new(what, e))
    }
}

/// An object of the WAL area, parsed from its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalObject {
    /// A complete segment.
    Segment(TimeLineId, SegNo),
    /// A partial segment holding WAL up to the LSN.
    Partial(TimeLineId, SegNo, Lsn),
    /// A segment summary.
    Summary(TimeLineId, SegNo),
    /// A history file.
    History(TimeLineId),
}

/// Key of a complete segment.
pub(crate) fn segment_key(tli: TimeLineId, segno: SegNo, seg: WalSegSize) -> String {
    format!(
        "wal/{:08X}/{}.lz4",
        tli.0,
        segment_file_name(tli, segno, seg)
    )
}

/// Key of a partial segment ending at `end`.
pub(crate) fn partial_key(tli: TimeLineId, segno: SegNo, end: Lsn, seg: WalSegSize) -> String {
    format!(
        "wal/{:08X}/{}.partial.{:016X}.lz4",
        tli.0,
        segment_file_name(tli, segno, seg),
        end.0
    )
}

/// Key of a segment summary.
pub(crate) fn summary_key(tli: TimeLineId, segno: SegNo, seg: WalSegSize) -> String {
    format!(
        "wal/{:08X}/{}.summary.json",
        tli.0,
        segment_file_name(tli, segno, seg)
    )
}

/// Key of a history file.
pub(crate) fn history_key(tli: TimeLineId) -> String {
    format!("wal/{:08X}.history", tli.0)
}

/// Parses a WAL-area key.
pub fn parse_wal_key(key: &str, seg: WalSegSize) -> Option<WalObject> {
    let rest = key.strip_prefix("wal/")?;
    if let Some(h) = rest.strip_suffix(".history") {
        return u32::from_str_radix(h, 16)
            .ok()
            .filter(|_| h.len() == 8)
            .map(|t| WalObject::History(TimeLineId(t)));
    }
    let (_, file) = rest.split_once('/')?;
    let name = file.get(..24)?;
    let WalFileName::Segment(tli, segno) = WalFileName::parse(name, seg).ok()? else {
        return None;
    };
    match &file[24..] {
        ".lz4" => Some(WalObject::Segment(tli, segno)),
        ".summary.json" => Some(WalObject::Summary(tli, segno)),
        r => {
            let hex = r.strip_prefix(".partial.")?.strip_suffix(".lz4")?;
            (hex.len() == 16)
                .then(|| u64::from_str_radix(hex, 16).ok())
                .flatten()
                .map(|e| WalObject::Partial(tli, segno, Lsn(e)))
        }
    }
}

/// Where archiving should resume: the newest WAL the repo holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArchivedTip {
    /// Timeline.
    pub tli: TimeLineId,
    /// Segment.
    pub segno: SegNo,
    /// Complete segment (resume at the next), or partial (resume at its start).
    pub complete: bool,
    /// End of the archived WAL.
    pub end: Lsn,
}

/// The ids of the keys that open an encrypted repo: those with key objects, or, before the
/// first object is written, those `pitr.json` names.
async fn repo_keys(raw: &dyn ObjectStore, id: &Identity) -> Result<Vec<String>, StoreError> {
    let keks = crypt::repo_keks(raw).await?;
    if !keks.is_empty() {
        return Ok(keks.into_iter().collect());
    }
    Ok(id
        .encryption
        .as_ref()
        .map(|m| m.key_ids.clone())
        .unwrap_or_default())
}

/// Refuses a key on a plain repo, no key on an encrypted one, and a key that opens none of
/// the repo's data keys, each in one line.
async fn check_encryption(
    repo: &str,
    raw: &dyn ObjectStore,
    id: &Identity,
    key: Option<&crypt::KeySource>,
) -> Result<(), RepoError> {
    let message = match (&id.encryption, key) {
        (None, None) => return Ok(()),
        (Some(m), _) if m.format != crypt::FORMAT => format!(
            "the repo's objects are sealed in encryption format {}, which this pitr does not know (it knows {})",
            m.format,
            crypt::FORMAT
        ),
        (Some(_), None) => format!(
            "the repo is encrypted (key {}): pass --encryption-key-file, --identity or --kms-key-id with that key (or --recipient, to only write)",
            repo_keys(raw, id).await?.join(" or ")
        ),
        (None, Some(k)) => format!(
            "the repo is not encrypted: it cannot be used with a {} (to encrypt, start a new repo with the key)",
            k.kind_name()
        ),
        (Some(_), Some(k)) => {
            let keys = repo_keys(raw, id).await?;
            if keys.contains(&k.id_hex()) {
                return Ok(());
            }
            if k.can_read() {
                // A KMS key's id derives from its ARN: show the ARN too.
                let given = match k {
                    crypt::KeySource::Remote(r) => format!("{} ({})", k.id_hex(), r.name()),
                    _ => k.id_hex(),
                };
                format!(
                    "the repo's key is {}, and the {} given is {given} (a retired key, or another repo's)",
                    keys.join(" or "),
                    k.kind_name(),
                )
            } else {
                format!(
                    "the recipient given ({}) is not one of the repo's keys ({}): add it with `pitr key rotate --to-recipient` run with a key that opens the repo",
                    k.id_hex(),
                    keys.join(", ")
                )
            }
        }
    };
    Err(RepoError::Unusable {
        repo: repo.to_string(),
        message,
    })
}

/// A repo: a store plus the layout. A repo's storage calls are retried only if it was made
/// with [`Repo::with_retry`]; retries never nest (a retrying repo wraps the plain store).
#[derive(Debug, Clone)]
pub struct Repo {
    store: Arc<dyn ObjectStore>,
    /// The store without retries.
    plain: Arc<dyn ObjectStore>,
    /// Where it is (for messages).
    pub location: String,
    /// The keys objects are sealed with, in an encrypted repo ([`crypt`]).
    keyring: Option<Arc<crypt::Keyring>>,
}

impl Repo {
    /// Opens `--repo`: a path, `file:///path`, or `s3://bucket/prefix[?options]` (see
    /// [`s3`]). An S3 repo is checked with one request: permanent problems (credentials,
    /// missing bucket) fail here, before anything else starts; a server that is down only
    /// logs a warning, since the callers retry.
    pub(crate) async fn open(spec: &str) -> Result<Repo, RepoError> {
        Self::open_mode(spec, true).await
    }

    /// Opens a repo that must already exist (for `restore`, `list`, `verify`, `prune`): a
    /// missing local directory is an error instead of being created.
    pub async fn open_existing(spec: &str) -> Result<Repo, RepoError> {
        Self::open_mode(spec, false).await
    }

    async fn open_mode(spec: &str, create: bool) -> Result<Repo, RepoError> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Err(RepoError::BadSpec(
                spec.into(),
                "empty: give a directory, file:///path or s3://bucket/prefix".into(),
            ));
        }
        if let Some(rest) = spec.strip_prefix("s3://") {
            let loc =
                s3::S3Location::parse(rest).map_err(|m| RepoError::BadSpec(spec.into(), m))?;
            let store = s3::S3Store::open(loc).await;
            match store.check().await {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!(repo = %store.describe(), error = %e, "S3 is not reachable yet; will retry");
                }
                Err(e) => {
                    return Err(RepoError::Rejected {
                        repo: store.describe(),
                        message: e.message,
                        source: e.source,
                    });
                }
            }
            return Repo::encrypted_if_keyed(Arc::new(store)).await;
        }
        let path = if let Some(p) = spec.strip_prefix("file://") {
            if !p.starts_with('/') {
                return Err(RepoError::BadSpec(
                    spec.into(),
                    "file:// URLs need an absolute path, like file:///var/lib/pitr".into(),
                ));
            }
            p
        } else if spec.contains("://") {
            return Err(RepoError::BadSpec(
                spec.into(),
                "unknown scheme: use a path, file:///path or s3://bucket/prefix".into(),
            ));
        } else {
            spec
        };
        if !create && !std::path::Path::new(path).join(IDENTITY_KEY).exists() {
            return Err(RepoError::Unusable {
                repo: path.into(),
                message: if std::path::Path::new(path).exists() {
                    "not a pitr repo (no pitr.json): check --repo".into()
                } else {
                    "no such directory: check --repo".into()
                },
            });
        }
        let store = local::LocalStore::open(std::path::Path::new(path))?;
        Repo::encrypted_if_keyed(Arc::new(store)).await
    }

    /// The repo over `store`, sealed with the process's key ([`crypt::configured`]) when
    /// one is given. Mixing is refused, in one line, when `pitr.json` can be read: an
    /// encrypted repo without its key, a plain repo with a key, the wrong key. (When it
    /// cannot be read yet, e.g. S3 is down, [`Repo::claim`] checks again.)
    async fn encrypted_if_keyed(store: Arc<dyn ObjectStore>) -> Result<Repo, RepoError> {
        let key = crypt::configured();
        if let Ok(Some(marker)) = store.get(IDENTITY_KEY).await
            && let Ok(id) = serde_json::from_slice::<Identity>(&marker)
        {
            check_encryption(&store.describe(), store.as_ref(), &id, key.as_ref()).await?;
        }
        let Some(key) = key else {
            return Ok(Repo::with_store(store));
        };
        let sealed = crypt::EncryptingStore::new(store, key);
        let keyring = sealed.keyring().clone();
        let mut repo = Repo::with_store(Arc::new(sealed));
        repo.keyring = Some(keyring);
        Ok(repo)
    }

    /// Opens a repo that must exist, to read it (`restore`, `list`, `verify`, `prune`):
    /// write-only mode (`--recipient` alone) is refused here, before anything is read.
    pub async fn open_to_read(spec: &str, command: &str) -> Result<Repo, RepoError> {
        let repo = Self::open_existing(spec).await?;
        if !repo.can_read() {
            return Err(RepoError::Unusable {
                repo: repo.location.clone(),
                message: format!(
                    "--recipient only writes: `pitr {command}` reads the repo, so it needs --identity FILE (the private key of that recipient)"
                ),
            });
        }
        Ok(repo)
    }

    /// The keyring of an encrypted repo.
    pub(crate) fn keyring(&self) -> Option<&Arc<crypt::Keyring>> {
        self.keyring.as_ref()
    }

    /// A repo over any store.
    pub fn with_store(store: Arc<dyn ObjectStore>) -> Repo {
        let location = store.describe();
        Repo {
            plain: store.clone(),
            store,
            location,
            keyring: None,
        }
    }

    /// The same repo, each storage call retried under `policy` ([`retrying`]).
    pub(crate) fn with_retry(&self, policy: retrying::RetryPolicy) -> Repo {
        Repo {
            store: Arc::new(retrying::RetryingStore::new(self.plain.clone(), policy)),
            plain: self.plain.clone(),
            location: self.location.clone(),
            keyring: self.keyring.clone(),
        }
    }

    /// The same repo, transient errors retried forever with backoff capped at `cap`, logged
    /// as `what`.
    pub(crate) fn retrying(&self, what: &'static str, cap: Duration) -> Repo {
        self.with_retry(retrying::RetryPolicy::forever(cap).label(what))
    }

    /// The store.
    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Reads `pitr.json`.
    pub(crate) async fn identity(&self) -> Result<Option<Identity>, RepoError> {
        let Some(b) = self.store.get(IDENTITY_KEY).await? else {
            return Ok(None);
        };
        let id: Identity = serde_json::from_slice(&b).map_err(|e| RepoError::Corrupt {
            repo: self.location.clone(),
            message: format!("{IDENTITY_KEY} is unreadable: {e}"),
        })?;
        if id.format != FORMAT {
            return Err(RepoError::Corrupt {
                repo: self.location.clone(),
                message: format!(
                    "repo format {} is not supported by this pitr (format {FORMAT})",
                    id.format
                ),
            });
        }
        Ok(Some(id))
    }

    /// Makes the repo this cluster's, or checks that it is.
    pub(crate) async fn claim(
        &self,
        system_id: u64,
        seg: WalSegSize,
        pg_major: u32,
    ) -> Result<Identity, RepoError> {
        if let Some(id) = self.identity().await? {
            self.no_sealed_objects_in_a_plain_repo(&id).await?;
            return self.check(id, system_id, seg).await;
        }
        // No marker: pitr makes one only for an empty repo. Objects without it mean the marker
        // was deleted (or never written); a new one would mislabel them, plain or sealed.
        for prefix in ["wal/", "backups/", "points/"] {
            if let Some(o) = self.store.list(prefix).await?.first() {
                return Err(RepoError::Unusable {
                    repo: self.location.clone(),
                    message: format!(
                        "{IDENTITY_KEY} is missing, but the repo holds objects ({}): restore {IDENTITY_KEY} from a copy; pitr makes one only for an empty repo",
                        o.key
                    ),
                });
            }
        }
        let id = Identity {
            format: FORMAT,
            system_id: system_id.to_string(),
            wal_segment_size: seg.get(),
            pg_major,
            created_by: format!("pitr {}", env!("CARGO_PKG_VERSION")),
            encryption: self.keyring.as_ref().map(|k| objects::EncryptionMarker {
                format: crypt::FORMAT,
                key_ids: vec![k.source().id_hex()],
            }),
        };
        let body = serde_json::to_vec_pretty(&id).unwrap_or_default();
        match self
            .store
            .put_if_absent(IDENTITY_KEY, Bytes::from(body))
            .await
        {
            Ok(_) => Ok(id),
            // Someone else claimed it meanwhile: check theirs.
            Err(e) if e.kind == StoreErrorKind::Conflict => match self.identity().await? {
                Some(other) => self.check(other, system_id, seg).await,
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Before writing to a repo whose marker says plain, without a key: one small object
    /// (a catalog entry, else a WAL summary) must not be sealed. A sealed one means the
    /// marker was altered (its `encryption` removed) or the key is missing; writing on would
    /// put plaintext beside ciphertext.
    async fn no_sealed_objects_in_a_plain_repo(&self, id: &Identity) -> Result<(), RepoError> {
        if id.encryption.is_some() || self.keyring.is_some() {
            return Ok(());
        }
        let mut sample = None;
        // Catalog entries first: that listing is short, the WAL's can be long.
        for (prefix, suffix) in [("backups/", "/backup.json"), ("wal/", ".summary.json")] {
            sample = self
                .store
                .list(prefix)
                .await?
                .into_iter()
                .find(|o| o.key.ends_with(suffix));
            if sample.is_some() {
                break;
            }
        }
        let Some(o) = sample else {
            return Ok(());
        };
        if let Some(b) = self.store.get(&o.key).await?
            && crypt::is_sealed(&b)
        {
            return Err(RepoError::Unusable {
                repo: self.location.clone(),
                message: format!(
                    "{IDENTITY_KEY} says the repo is not encrypted, but {} is sealed: {IDENTITY_KEY} was altered, or pass --encryption-key-file with the repo's key",
                    o.key
                ),
            });
        }
        Ok(())
    }

    async fn check(
        &self,
        id: Identity,
        system_id: u64,
        seg: WalSegSize,
    ) -> Result<Identity, RepoError> {
        let raw = self.keyring.as_ref().map_or(&self.plain, |k| k.inner());
        let source = self.keyring.as_ref().map(|k| k.source());
        check_encryption(&self.location, raw.as_ref(), &id, source).await?;
        let repo_system: u64 = id.system_id.parse().map_err(|_| RepoError::Corrupt {
            repo: self.location.clone(),
            message: format!("{IDENTITY_KEY}: bad system_id {:?}", id.system_id),
        })?;
        if repo_system != system_id {
            return Err(RepoError::OtherCluster {
                repo: self.location.clone(),
                repo_system,
                server_system: system_id,
            });
        }
        if id.wal_segment_size != seg.get() {
            return Err(RepoError::Corrupt {
                repo: self.location.clone(),
                message: format!(
                    "made for {}-byte WAL segments, the server uses {}",
                    id.wal_segment_size,
                    seg.get()
                ),
            });
        }
        Ok(id)
    }

    /// Whether this process can read the repo's sealed objects. `false` in write-only mode
    /// (`--recipient` without `--identity`): objects this process did not write in this run
    /// cannot be opened, so callers must use [`Repo::exists`] and [`Repo::holds`] instead of
    /// reading them.
    pub(crate) fn can_read(&self) -> bool {
        self.keyring.as_ref().is_none_or(|k| k.source().can_read())
    }

    /// Whether object `key` exists (from a listing: nothing is read or decrypted).
    pub(crate) async fn exists(&self, key: &str) -> Result<bool, RepoError> {
        Ok(self.store.list(key).await?.iter().any(|o| o.key == key))
    }

    /// Whether the stored object `key` holds exactly `plaintext` (the bytes once put), or
    /// `None` when it is absent. A process that cannot read compares the keyed digest in the
    /// object's header (see [`crypt`]); one that can reads and compares the bytes.
    pub(crate) async fn holds(
        &self,
        key: &str,
        plaintext: &[u8],
    ) -> Result<Option<bool>, RepoError> {
        if let Some(k) = &self.keyring {
            return Ok(k.holds(key, plaintext).await?);
        }
        Ok(self.store.get(key).await?.map(|b| b[..] == plaintext[..]))
    }

    /// Publishes an object (create-if-absent; identical re-upload is fine).
    pub(crate) async fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        self.store.put_if_absent(key, data).await
    }

    /// Every complete segment and partial in the WAL area, from one listing (each as the
    /// tip it would be).
    pub(crate) async fn wal_objects(&self, seg: WalSegSize) -> Result<Vec<ArchivedTip>, RepoError> {
        Ok(self
            .store
            .list("wal/")
            .await?
            .into_iter()
            .filter_map(|o| match parse_wal_key(&o.key, seg)? {
                WalObject::Segment(tli, segno) => Some(ArchivedTip {
                    tli,
                    segno,
                    complete: true,
                    end: segno.end_lsn(seg).unwrap_or(Lsn(u64::MAX)),
                }),
                WalObject::Partial(tli, segno, end) => Some(ArchivedTip {
                    tli,
                    segno,
                    complete: false,
                    end,
                }),
                _ => None,
            })
            .collect())
    }

    /// The newest archived WAL: highest segment, then highest timeline, complete before partial.
    pub(crate) async fn tip(&self, seg: WalSegSize) -> Result<Option<ArchivedTip>, RepoError> {
        Ok(self
            .wal_objects(seg)
            .await?
            .into_iter()
            .max_by_key(|a| (a.segno, a.tli, a.complete, a.end)))
    }

    /// The partial objects of one segment: (key, end LSN).
    pub(crate) async fn partials(
        &self,
        tli: TimeLineId,
        segno: SegNo,
        seg: WalSegSize,
    ) -> Result<Vec<(String, Lsn)>, StoreError> {
        let prefix = format!(
            "wal/{:08X}/{}.partial.",
            tli.0,
            segment_file_name(tli, segno, seg)
        );
        Ok(self
            .store
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|o| match parse_wal_key(&o.key, seg) {
                Some(WalObject::Partial(_, _, end)) => Some((o.key, end)),
                _ => None,
            })
            .collect())
    }

    /// Reads one WAL object by key, decompressed and checked: a complete segment must hold
    /// exactly a segment; a partial ending at `partial_end` exactly the bytes from the
    /// segment's start to that LSN. Partials come back zero-padded to the segment size.
    pub(crate) async fn read_wal_object(
        &self,
        key: &str,
        segno: SegNo,
        partial_end: Option<Lsn>,
        seg: WalSegSize,
    ) -> Result<Option<Vec<u8>>, RepoError> {
        let corrupt = |message: String| RepoError::Corrupt {
            repo: self.location.clone(),
            message,
        };
        let Some(b) = self.store.get(key).await? else {
            return Ok(None);
        };
        let mut data = decompress(&b, key).map_err(corrupt)?;
        let expect = match partial_end {
            Some(end) => segno.bytes_until(end, seg),
            None => seg.bytes(),
        };
        if data.len() as u64 != expect {
            return Err(corrupt(format!(
                "{key}: {} bytes, expected {expect}",
                data.len()
            )));
        }
        data.resize(seg.bytes() as usize, 0);
        Ok(Some(data))
    }

    /// Fetches a WAL file by its PostgreSQL name (segment, `.partial` or `.history`),
    /// decompressed and verified. Partial segments come back zero-padded to the segment size.
    /// A plain segment name is served only from a complete segment, never from a partial.
    pub(crate) async fn fetch_wal(
        &self,
        name: &str,
        seg: WalSegSize,
    ) -> Result<Option<Vec<u8>>, RepoError> {
        match WalFileName::parse(name, seg)
            .map_err(|e| RepoError::BadSpec(name.into(), e.to_string()))?
        {
            WalFileName::History(tli) => {
                Ok(self.store.get(&history_key(tli)).await?.map(|b| b.to_vec()))
            }
            WalFileName::Segment(tli, segno) => {
                self.read_wal_object(&segment_key(tli, segno, seg), segno, None, seg)
                    .await
            }
            WalFileName::Partial(tli, segno) => {
                let newest = self
                    .partials(tli, segno, seg)
                    .await?
                    .into_iter()
                    .max_by_key(|(_, end)| *end);
                match newest {
                    Some((key, end)) => self.read_wal_object(&key, segno, Some(end), seg).await,
                    None => Ok(None),
                }
            }
            WalFileName::Backup(..) => Err(RepoError::BadSpec(
                name.into(),
                ".backup files are not archived".into(),
            )),
        }
    }
}
