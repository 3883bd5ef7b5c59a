//! Client-side encryption of repo objects: the sealed-object format (version 1) and the
//! [`EncryptingStore`] that applies it to every object but the repo marker.
//!
//! # Format, version 1 (also in `docs/repo-format.md`)
//!
//! ```text
//! header (120 bytes)
//!   magic      7  "PITRENC"
//!   version    1  1
//!   key id     8  which key-encryption key (KEK) wraps the data key
//!   wrap nonce 12 random
//!   wrapped    48 the object's data key (32 random bytes, fresh for every object and
//!                 every version of it), ChaCha20-Poly1305 under the KEK's wrap key, with
//!                 associated data "pitr-v1 dek" || key id || object name
//!   length     8  plaintext bytes, big-endian
//!   digest     32 HMAC-SHA256 under the KEK's digest key of the object name, a 0 byte and
//!                 the plaintext: the identity of the content, comparable without
//!                 decrypting (a retried upload of the same bytes succeeds) and useless to
//!                 anyone without the key
//!   chunk size 4  plaintext bytes per chunk, big-endian (64 KiB)
//! chunks: ChaCha20-Poly1305 under the data key, in the style of age's STREAM: chunk i's
//!   nonce is i as 11 big-endian bytes then a last-chunk flag byte (1 on the final chunk,
//!   else 0), its associated data the whole header then the object name. Every chunk is
//!   full but the last; an empty object is one empty last chunk.
//! ```
//!
//! # Invariants
//!
//! - Only `pitr.json` (format, cluster id, key ids) is stored in the clear; every other
//!   object (WAL, partials, backup chunks, manifests, catalog entries, summaries, restore
//!   points, gap records) is sealed.
//! - Authenticated end to end, each failure named by the object's key: a flipped bit fails a
//!   chunk's tag; a truncation loses the last-chunk flag or the length; reordered chunks
//!   fail their counters; an object's bytes under another name (segment N's under segment
//!   M's, an older partial under a newer partial's name) fail the data key's unwrap, whose
//!   associated data holds the name.
//! - No key and nonce pair is ever reused: each object version has its own random data key.
//! - Write-once survives: `put_if_absent` of bytes whose digest equals the stored object's
//!   is `AlreadyIdentical`; anything else under an existing key is a `Conflict`, and the
//!   stored object is never replaced.
//! - Primitives are ring's (ChaCha20-Poly1305, HMAC-SHA256, the system RNG); nothing is
//!   hand-rolled. Memory: one object, as for unencrypted repos (objects are whole `Bytes`).
//! - Secrets never reach logs, errors or `Debug` output ([`RepoKey`]'s `Debug` shows the id).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::IDENTITY_KEY;
use super::store::{BoxFut, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};

/// The sealed-object format this code writes and reads.
pub(crate) const FORMAT: u8 = 1;
const MAGIC: &[u8; 7] = b"PITRENC";
const HEADER_LEN: usize = 7 + 1 + 8 + 12 + 48 + 8 + 32 + 4;
const TAG_LEN: usize = 16;
/// Plaintext bytes per chunk.
pub(crate) const CHUNK: usize = 64 * 1024;
/// First line of a key file.
const KEY_FILE_PREFIX: &str = "pitr-symmetric-key-v1:";

/// A key-encryption key: 32 secret bytes and the id derived from them.
#[derive(Clone)]
pub struct RepoKey {
    id: [u8; 8],
    /// The wrap key's bytes (a `LessSafeKey` is built per use: it is not `Clone`).
    wrap: [u8; 32],
    digest: hmac::Key,
}

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoKey({})", self.id_hex())
    }
}

/// Why a key could not be loaded, or an object not opened.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CryptError {
    /// The key file is not one.
    #[error("{0}")]
    BadKey(String),
    /// The object was sealed under another key.
    #[error("sealed under key {needs}, and the key given is {have}: pass the key with id {needs}")]
    WrongKey {
        /// The key id the object needs.
        needs: String,
        /// The key id given.
        have: String,
    },
    /// Not a sealed object (a plain object in an encrypted repo).
    #[error("not encrypted, in an encrypted repo: a plain object is refused")]
    NotSealed,
    /// Authentication failed.
    #[error(
        "authentication failed ({0}): the object was altered, truncated, or is another object's bytes"
    )]
    Tampered(&'static str),
}

fn derive(secret: &[u8; 32], label: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&k, label);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl RepoKey {
    fn from_secret(secret: [u8; 32]) -> RepoKey {
        let mut id = [0u8; 8];
        id.copy_from_slice(&derive(&secret, b"pitr-v1 key id")[..8]);
        RepoKey {
            id,
            wrap: derive(&secret, b"pitr-v1 wrap key"),
            digest: hmac::Key::new(hmac::HMAC_SHA256, &derive(&secret, b"pitr-v1 digest key")),
        }
    }

    /// A new random key, as the text of a key file.
    pub fn generate() -> String {
        let mut secret = [0u8; 32];
        // The system RNG failing is not recoverable; ring reports it only as Unspecified.
        SystemRandom::new()
            .fill(&mut secret)
            .unwrap_or_else(|_| panic!("the system random number generator failed"));
        format!(
            "# pitr repo key {}: keep it secret and keep a copy; without it the repo cannot be read\n{KEY_FILE_PREFIX}{}\n",
            RepoKey::from_secret(secret).id_hex(),
            hex(&secret)
        )
    }

    /// Parses a key file's text (comment lines start with `#`).
    pub fn parse(text: &str) -> Result<RepoKey, CryptError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .ok_or_else(|| CryptError::BadKey("the key file holds no key".into()))?;
        let hexkey = line.strip_prefix(KEY_FILE_PREFIX).ok_or_else(|| {
            CryptError::BadKey(format!(
                "not a pitr key file (its key line must start with {KEY_FILE_PREFIX}; make one with `pitr key generate`)"
            ))
        })?;
        let bytes = unhex(hexkey)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| CryptError::BadKey("the key is not 64 hex digits".into()))?;
        let mut secret = [0u8; 32];
        secret.copy_from_slice(&bytes);
        Ok(RepoKey::from_secret(secret))
    }

    /// Reads a key file, refusing one that group or others can read.
    pub fn load(path: &Path) -> Result<RepoKey, CryptError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| {
            CryptError::BadKey(format!("--encryption-key-file {}: {e}", path.display()))
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(CryptError::BadKey(format!(
                "--encryption-key-file {}: readable by group or others (mode {:o}): chmod 600 it",
                path.display(),
                meta.permissions().mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            CryptError::BadKey(format!("--encryption-key-file {}: {e}", path.display()))
        })?;
        RepoKey::parse(&text).map_err(|e| {
            CryptError::BadKey(format!("--encryption-key-file {}: {e}", path.display()))
        })
    }

    /// The key's id, 16 hex digits (safe to show).
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    fn wrap_key(&self) -> LessSafeKey {
        // 32 bytes is ChaCha20-Poly1305's key length: this cannot fail.
        LessSafeKey::new(
            UnboundKey::new(&CHACHA20_POLY1305, &self.wrap).unwrap_or_else(|_| unreachable!()),
        )
    }

    fn digest_of(&self, name: &str, plaintext: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.digest);
        ctx.update(name.as_bytes());
        ctx.update(&[0]);
        ctx.update(plaintext);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

fn chunk_nonce(i: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&i.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

fn dek_aad(id: &[u8], name: &str) -> Vec<u8> {
    let mut a = b"pitr-v1 dek".to_vec();
    a.extend_from_slice(id);
    a.extend_from_slice(name.as_bytes());
    a
}

/// Seals `plaintext` as object `name` under `key`.
pub fn seal(key: &RepoKey, name: &str, plaintext: &[u8]) -> Vec<u8> {
    let rng = SystemRandom::new();
    let mut dek = [0u8; 32];
    let mut wrap_nonce = [0u8; 12];
    rng.fill(&mut dek)
        .and_then(|()| rng.fill(&mut wrap_nonce))
        .unwrap_or_else(|_| panic!("the system random number generator failed"));
    let mut wrapped = dek.to_vec();
    key.wrap_key()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(wrap_nonce),
            Aad::from(dek_aad(&key.id, name)),
            &mut wrapped,
        )
        .unwrap_or_else(|_| unreachable!("sealing 32 bytes cannot fail"));
    let mut out = Vec::with_capacity(sealed_len(plaintext.len()));
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&key.id);
    out.extend_from_slice(&wrap_nonce);
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&(plaintext.len() as u64).to_be_bytes());
    out.extend_from_slice(&key.digest_of(name, plaintext));
    out.extend_from_slice(&(CHUNK as u32).to_be_bytes());
    let mut aad = out.clone();
    aad.extend_from_slice(name.as_bytes());
    let data_key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &dek).unwrap_or_else(|_| unreachable!()),
    );
    let n = plaintext.len().div_ceil(CHUNK).max(1);
    for i in 0..n {
        let part =
            &plaintext[(i * CHUNK).min(plaintext.len())..((i + 1) * CHUNK).min(plaintext.len())];
        let start = out.len();
        out.extend_from_slice(part);
        let tag = data_key
            .seal_in_place_separate_tag(
                chunk_nonce(i as u64, i + 1 == n),
                Aad::from(&aad[..]),
                &mut out[start..],
            )
            .unwrap_or_else(|_| unreachable!("sealing a chunk cannot fail"));
        out.extend_from_slice(tag.as_ref());
    }
    out
}

/// The sealed size of `plain` bytes.
pub(crate) fn sealed_len(plain: usize) -> usize {
    HEADER_LEN + plain + TAG_LEN * plain.div_ceil(CHUNK).max(1)
}

/// The plaintext size of a sealed object of `sealed` bytes (for listings).
pub(crate) fn plain_len(sealed: u64) -> u64 {
    let body = sealed.saturating_sub(HEADER_LEN as u64);
    let chunks = body.div_ceil((CHUNK + TAG_LEN) as u64).max(1);
    body.saturating_sub(chunks * TAG_LEN as u64)
}

/// Whether `bytes` begin as a sealed object.
pub(crate) fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// The parts of a header needed before decrypting.
struct Header<'a> {
    id: &'a [u8],
    digest: &'a [u8],
}

fn header(sealed: &[u8]) -> Result<Header<'_>, CryptError> {
    if sealed.len() < 7 || &sealed[..7] != MAGIC {
        return Err(CryptError::NotSealed);
    }
    if sealed.len() < HEADER_LEN {
        return Err(CryptError::Tampered("truncated header"));
    }
    if sealed[7] != FORMAT {
        return Err(CryptError::Tampered("unknown format version"));
    }
    Ok(Header {
        id: &sealed[8..16],
        digest: &sealed[84..116],
    })
}

/// Opens object `name`'s sealed bytes.
pub fn open(key: &RepoKey, name: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
    let h = header(sealed)?;
    if h.id != key.id {
        return Err(CryptError::WrongKey {
            needs: hex(h.id),
            have: key.id_hex(),
        });
    }
    let wrap_nonce: [u8; 12] = sealed[16..28]
        .try_into()
        .map_err(|_| CryptError::Tampered("header"))?;
    let mut dek = sealed[28..76].to_vec();
    let dek = key
        .wrap_key()
        .open_in_place(
            Nonce::assume_unique_for_key(wrap_nonce),
            Aad::from(dek_aad(&key.id, name)),
            &mut dek,
        )
        .map_err(|_| CryptError::Tampered("data key: not this object's"))?
        .to_vec();
    let len = u64::from_be_bytes(
        sealed[76..84]
            .try_into()
            .map_err(|_| CryptError::Tampered("header"))?,
    );
    let chunk = u32::from_be_bytes(
        sealed[116..120]
            .try_into()
            .map_err(|_| CryptError::Tampered("header"))?,
    ) as usize;
    if chunk != CHUNK {
        return Err(CryptError::Tampered("chunk size"));
    }
    let data_key = LessSafeKey::new(
        UnboundKey::new(&CHACHA20_POLY1305, &dek).map_err(|_| CryptError::Tampered("data key"))?,
    );
    let mut aad = sealed[..HEADER_LEN].to_vec();
    aad.extend_from_slice(name.as_bytes());
    let body = &sealed[HEADER_LEN..];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0u64;
    let mut at = 0usize;
    loop {
        let remaining = body.len() - at;
        let last = remaining <= CHUNK + TAG_LEN;
        if remaining < TAG_LEN {
            return Err(CryptError::Tampered("truncated"));
        }
        let take = if last { remaining } else { CHUNK + TAG_LEN };
        let mut buf = body[at..at + take].to_vec();
        let plain = data_key
            .open_in_place(chunk_nonce(i, last), Aad::from(&aad[..]), &mut buf)
            .map_err(|_| {
                CryptError::Tampered(if last {
                    "a chunk, or the end: truncated or reordered"
                } else {
                    "a chunk"
                })
            })?;
        out.extend_from_slice(plain);
        at += take;
        i += 1;
        if last {
            break;
        }
    }
    if out.len() as u64 != len {
        return Err(CryptError::Tampered("length"));
    }
    if key.digest_of(name, &out) != h.digest {
        return Err(CryptError::Tampered("digest"));
    }
    Ok(out)
}

/// The key configured for this process (`--encryption-key-file`, `PITR_ENCRYPTION_KEY_FILE`),
/// and the file it came from.
static CONFIGURED: OnceLock<Option<(RepoKey, std::path::PathBuf)>> = OnceLock::new();

/// Sets the process's key (once, from the command line, before any repo is opened).
pub fn configure(key: Option<(RepoKey, std::path::PathBuf)>) {
    let _ = CONFIGURED.set(key);
}

/// The process's key, if one was configured.
pub(crate) fn configured() -> Option<RepoKey> {
    CONFIGURED.get().cloned().flatten().map(|(k, _)| k)
}

/// The configured key file, absolute (for a `restore_command` that runs elsewhere).
pub(crate) fn configured_file() -> Option<std::path::PathBuf> {
    let (_, p) = CONFIGURED.get()?.as_ref()?;
    std::path::absolute(p).ok()
}

/// A key-encryption key held outside pitr (a KMS key, [`super::kms`] behind the `kms`
/// feature): it wraps and unwraps the repo's data keys, and pitr never sees it.
pub trait RemoteKek: Send + Sync + std::fmt::Debug {
    /// The key's name as the user gave it (an ARN, a key id or an alias): shown in messages,
    /// never secret.
    fn name(&self) -> &str;
    /// Wraps data key `dk` (32 bytes) whose id is `dk_id` (16 hex digits), binding `dk_id`
    /// (e.g. as the KMS encryption context) so that the blob unwraps only for that id.
    fn wrap<'a>(
        &'a self,
        dk_id: &'a str,
        dk: &'a [u8; 32],
    ) -> BoxFut<'a, Result<Vec<u8>, CryptError>>;
    /// Unwraps a blob [`RemoteKek::wrap`] made for `dk_id`.
    fn unwrap<'a>(
        &'a self,
        dk_id: &'a str,
        blob: &'a [u8],
    ) -> BoxFut<'a, Result<[u8; 32], CryptError>>;
}

/// What a write-only process (a recipient, no identity) knows of the repo's keys: enough to
/// compare a stored object's keyed digest with bytes it holds, never to open the object.
#[derive(Debug)]
pub(crate) struct WriteOnly {}

impl WriteOnly {
    /// Whether the stored object `key` holds `plaintext`, by its header's digest (`None`:
    /// absent).
    pub(crate) async fn holds(
        &self,
        store: &dyn ObjectStore,
        key: &str,
        plaintext: &[u8],
    ) -> Result<Option<bool>, StoreError> {
        let _ = (store, key, plaintext);
        Err(StoreError::new(
            StoreErrorKind::Permanent,
            "get",
            key,
            "write-only mode is not built yet".to_string(),
        ))
    }
}

/// A store that seals every object but `pitr.json` (see the module invariants).
#[derive(Debug)]
pub struct EncryptingStore {
    inner: Arc<dyn ObjectStore>,
    key: RepoKey,
}

impl EncryptingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, key: RepoKey) -> EncryptingStore {
        EncryptingStore { inner, key }
    }
}

fn crypt_error(op: &'static str, key: &str, e: CryptError) -> StoreError {
    StoreError::new(StoreErrorKind::Permanent, op, key, e.to_string())
}

impl ObjectStore for EncryptingStore {
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
    ) -> BoxFut<'a, Result<PutOutcome, StoreError>> {
        Box::pin(async move {
            if key == IDENTITY_KEY {
                return self.inner.put_if_absent(key, data).await;
            }
            let sealed = seal(&self.key, key, &data);
            // The digest seal just computed, read back from its header (not hashed twice).
            let digest = header(&sealed)
                .map(|h| h.digest.to_vec())
                .unwrap_or_default();
            match self.inner.put_if_absent(key, Bytes::from(sealed)).await {
                Err(e) if e.kind == StoreErrorKind::Conflict => {
                    // Identical only if the stored object opens, whole and authentic, to
                    // these bytes: a damaged copy is never taken for this one (the caller
                    // could drop its only good copy). The digest is the cheap first test.
                    let Some(existing) = self.inner.get(key).await? else {
                        return Err(e);
                    };
                    match header(&existing) {
                        Ok(h) if h.id == self.key.id && h.digest == &digest[..] => {
                            match open(&self.key, key, &existing) {
                                Ok(p) if p[..] == data[..] => Ok(PutOutcome::AlreadyIdentical),
                                Ok(_) => Err(e),
                                Err(ce) => Err(StoreError::new(
                                    StoreErrorKind::Conflict,
                                    "put",
                                    key,
                                    format!("the stored object is damaged and is kept: {ce}"),
                                )),
                            }
                        }
                        _ => Err(e),
                    }
                }
                r => r,
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move {
            let Some(b) = self.inner.get(key).await? else {
                return Ok(None);
            };
            if key == IDENTITY_KEY {
                return Ok(Some(b));
            }
            open(&self.key, key, &b)
                .map(|p| Some(Bytes::from(p)))
                .map_err(|e| crypt_error("get", key, e))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StoreError>> {
        Box::pin(async move {
            let mut v = self.inner.list(prefix).await?;
            for o in &mut v {
                if o.key != IDENTITY_KEY {
                    o.size = plain_len(o.size);
                }
            }
            Ok(v)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        self.inner.delete(key)
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn clean_leftovers(&self) -> BoxFut<'_, Result<usize, StoreError>> {
        self.inner.clean_leftovers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RepoKey {
        RepoKey::parse(&RepoKey::generate()).unwrap()
    }

    #[test]
    fn sealed_objects_open_only_under_their_name_and_key() {
        let k = key();
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let p: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            let s = seal(&k, "wal/00000001/000000010000000000000003.lz4", &p);
            assert_eq!(s.len(), sealed_len(n), "{n}");
            assert_eq!(plain_len(s.len() as u64), n as u64, "{n}");
            assert_eq!(
                open(&k, "wal/00000001/000000010000000000000003.lz4", &s).unwrap(),
                p
            );
            // Another object's name: segment N's bytes under segment M's name.
            assert_eq!(
                open(&k, "wal/00000001/000000010000000000000004.lz4", &s),
                Err(CryptError::Tampered("data key: not this object's"))
            );
        }
        let other = key();
        let s = seal(&k, "x", b"y");
        assert!(matches!(
            open(&other, "x", &s),
            Err(CryptError::WrongKey { .. })
        ));
        assert_eq!(
            open(&k, "x", b"{\"plain\": true}"),
            Err(CryptError::NotSealed)
        );
    }

    #[test]
    fn a_flipped_bit_a_truncation_and_swapped_chunks_are_detected() {
        let k = key();
        let p: Vec<u8> = (0..3 * CHUNK + 5).map(|i| (i % 253) as u8).collect();
        let s = seal(&k, "backups/b/0.tar.lz4", &p);
        for at in [
            0usize,
            8,
            20,
            40,
            80,
            90,
            118,
            HEADER_LEN + 3,
            s.len() / 2,
            s.len() - 1,
        ] {
            let mut t = s.clone();
            t[at] ^= 0x10;
            assert!(
                open(&k, "backups/b/0.tar.lz4", &t).is_err(),
                "bit flip at {at}"
            );
        }
        for cut in [
            HEADER_LEN,
            HEADER_LEN + CHUNK + TAG_LEN,
            s.len() - 1,
            s.len() - TAG_LEN - 5,
        ] {
            assert!(
                open(&k, "backups/b/0.tar.lz4", &s[..cut]).is_err(),
                "truncated to {cut}"
            );
        }
        // Chunks 0 and 1 swapped.
        let c = CHUNK + TAG_LEN;
        let mut t = s[..HEADER_LEN].to_vec();
        t.extend_from_slice(&s[HEADER_LEN + c..HEADER_LEN + 2 * c]);
        t.extend_from_slice(&s[HEADER_LEN..HEADER_LEN + c]);
        t.extend_from_slice(&s[HEADER_LEN + 2 * c..]);
        assert_eq!(t.len(), s.len());
        assert!(open(&k, "backups/b/0.tar.lz4", &t).is_err());
        // Appending a chunk after the last one.
        let mut t = s.clone();
        t.extend_from_slice(&s[HEADER_LEN..HEADER_LEN + c]);
        assert!(open(&k, "backups/b/0.tar.lz4", &t).is_err());
    }

    #[test]
    fn the_same_plaintext_seals_differently_but_has_one_digest() {
        let k = key();
        let a = seal(&k, "n", b"same");
        let b = seal(&k, "n", b"same");
        assert_ne!(a, b, "a fresh data key per version");
        assert_eq!(header(&a).unwrap().digest, header(&b).unwrap().digest);
        assert_ne!(
            header(&a).unwrap().digest,
            header(&seal(&k, "n", b"other")).unwrap().digest
        );
    }

    #[test]
    fn key_files_parse_and_never_show_the_secret() {
        let text = RepoKey::generate();
        let k = RepoKey::parse(&text).unwrap();
        let secret = text
            .lines()
            .find(|l| l.starts_with(KEY_FILE_PREFIX))
            .unwrap();
        let secret = secret.strip_prefix(KEY_FILE_PREFIX).unwrap();
        assert!(!format!("{k:?}").contains(secret));
        assert!(text.contains(&k.id_hex()));
        assert!(RepoKey::parse("nonsense").is_err());
        assert!(RepoKey::parse(&format!("{KEY_FILE_PREFIX}abcd")).is_err());
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("k");
        std::fs::write(&f, &text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = RepoKey::load(&f).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(RepoKey::load(&f).unwrap().id_hex(), k.id_hex());
    }

    #[test]
    fn a_retried_upload_is_identical_and_other_bytes_conflict() {
        crate::test_util::block_on(async {
            let inner: Arc<dyn ObjectStore> = Arc::new(super::super::memory::MemoryStore::new());
            let s = EncryptingStore::new(inner.clone(), key());
            let b = Bytes::from_static(b"segment bytes");
            assert_eq!(
                s.put_if_absent("wal/a", b.clone()).await.unwrap(),
                PutOutcome::Created
            );
            assert_eq!(
                s.put_if_absent("wal/a", b.clone()).await.unwrap(),
                PutOutcome::AlreadyIdentical
            );
            let e = s
                .put_if_absent("wal/a", Bytes::from_static(b"other"))
                .await
                .unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Conflict);
            assert_eq!(s.get("wal/a").await.unwrap().unwrap(), b);
            let raw = inner.get("wal/a").await.unwrap().unwrap();
            assert!(
                !raw.windows(8).any(|w| w == b"segment "),
                "stored in the clear"
            );
            assert_eq!(s.list("wal/").await.unwrap()[0].size, b.len() as u64);
            // A damaged stored copy is never "already identical" (red-team finding: it was,
            // as only the header's digest was compared).
            let mut raw = inner.get("wal/a").await.unwrap().unwrap().to_vec();
            let last = raw.len() - 1;
            raw[last] ^= 1;
            inner.delete("wal/a").await.unwrap();
            inner
                .put_if_absent("wal/a", Bytes::from(raw))
                .await
                .unwrap();
            let e = s.put_if_absent("wal/a", b.clone()).await.unwrap_err();
            assert_eq!(e.kind, StoreErrorKind::Conflict);
            assert!(e.message.contains("damaged"), "{e}");
            // The marker stays plain.
            s.put_if_absent(IDENTITY_KEY, Bytes::from_static(b"{}"))
                .await
                .unwrap();
            assert_eq!(&inner.get(IDENTITY_KEY).await.unwrap().unwrap()[..], b"{}");
        });
    }
}
