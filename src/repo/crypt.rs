//! Client-side encryption of repo objects: the sealed-object format (version 2), the key
//! objects that make rotation and write-only archiving possible, and the
//! [`EncryptingStore`] that applies them to every object but the repo marker.
//!
//! # Three layers of keys (envelope encryption)
//!
//! - A **key-encryption key** (KEK) is what the user holds: a symmetric key file
//!   (`--encryption-key-file`), an X25519 recipient (`--recipient`, public) and its identity
//!   (`--identity`, private), or a KMS key (`--kms-key-id`, behind the `kms` feature). Its
//!   id (8 bytes, 16 hex digits) is derived from it and safe to show.
//! - A **data key** (DK, 32 random bytes) is made by each process the first time it writes,
//!   and kept only in its memory. Its id is derived from it. It is stored once per KEK that
//!   may open it, as a small **key object** `keys/<dk id>.<kek id>.key`.
//! - An **object key** (32 random bytes) is fresh for every object and every version of it,
//!   wrapped under the DK in the object's header. Chunks are sealed under it.
//!
//! Rotation (`pitr key rotate`) unwraps each DK with a KEK the caller has and stores it again
//! under the new KEK: a few small key objects, never the data. Retiring a KEK
//! (`pitr key retire`) deletes its key objects, and only once every DK has another one, which
//! the caller's key opens.
//! Write-only mode: a process that holds only a recipient wraps its DK to that recipient and
//! cannot unwrap any other process's DK, so it cannot read what earlier runs wrote.
//!
//! # Sealed object, format 2 (also in `docs/repo-format.md`)
//!
//! ```text
//! header (128 bytes)
//!   magic      7  "PITRENC"
//!   version    1  2
//!   dk id      8  the data key whose key objects open this object
//!   digest id  8  the key of the digest below: the KEK's id (symmetric, recipient), or
//!                 the DK's id (KMS)
//!   wrap nonce 12 random
//!   wrapped    48 the object key, ChaCha20-Poly1305 under the DK's wrap key, with
//!                 associated data "pitr-v2 object key" || dk id || object name
//!   length     8  plaintext bytes, big-endian
//!   digest     32 HMAC-SHA256 of the object name, a 0 byte and the plaintext: the identity
//!                 of the content, comparable without decrypting (a retried upload of the
//!                 same bytes succeeds, in write-only mode too)
//!   chunk size 4  plaintext bytes per chunk, big-endian (64 KiB)
//! chunks: ChaCha20-Poly1305 under the object key, in the style of age's STREAM: chunk i's
//!   nonce is i as 11 big-endian bytes then a last-chunk flag byte (1 on the final chunk,
//!   else 0), its associated data the whole header then the object name. Every chunk is
//!   full but the last; an empty object is one empty last chunk.
//! ```
//!
//! # Key object `keys/<dk id>.<kek id>.key`
//!
//! ```text
//!   magic "PITRKEY" (7), version 2 (1), kind (1: 1 symmetric, 2 X25519 recipient, 3 KMS),
//!   dk id (8), kek id (8), then the wrapped DK:
//!     kind 1: nonce (12) and ChaCha20-Poly1305 of the DK under the KEK's wrap key, with
//!             the 25 bytes before it as associated data
//!     kind 2: an age file (X25519 stanza) of the DK
//!     kind 3: the KMS ciphertext of the DK, encryption context {"pitr-data-key": dk id}
//! ```
//!
//! A DK is accepted only if its derived id is the one in the key object's name and header:
//! a key object copied under another name, or from another repo, opens nothing.
//!
//! # Invariants
//!
//! - Only `pitr.json` (format, cluster id, key ids) is stored in the clear; every other
//!   object (WAL, partials, backup chunks, manifests, catalog entries, summaries, restore
//!   points, gap records) is sealed, and key objects hold only wrapped keys.
//! - Authenticated end to end, each failure named by the object's key: a flipped bit fails a
//!   chunk's tag (the header is in every chunk's associated data); a truncation loses the
//!   last-chunk flag or the length; reordered chunks fail their counters; an object's bytes
//!   under another name (segment N's under segment M's, an older partial under a newer
//!   partial's name) fail the object key's unwrap, whose associated data holds the name.
//! - No key and nonce pair is ever reused: each object version has its own random key.
//! - Write-once survives: `put_if_absent` of bytes equal to the stored object's plaintext is
//!   `AlreadyIdentical`; anything else under an existing key is a `Conflict`, and the stored
//!   object is never replaced. A process that can read compares the opened bytes; a
//!   write-only one compares the keyed digest.
//! - A data key is never lost: its key object is stored before the first object sealed
//!   under it, and `retire` never deletes the last key object of a data key: it deletes a
//!   KEK's key objects only once the caller's own key object of each of those data keys
//!   opens (unwrapped, not found by name).
//! - Primitives are ring's (ChaCha20-Poly1305, HMAC-SHA256, the system RNG) and, for
//!   recipients, the `age` crate's X25519 wrapping only; nothing is hand-rolled.
//! - Secrets never reach logs, errors or `Debug` output (keys show their ids).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::IDENTITY_KEY;
use super::store::{BoxFut, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind};

/// The sealed-object format this code writes and reads.
pub(crate) const FORMAT: u8 = 2;
const MAGIC: &[u8; 7] = b"PITRENC";
const KEY_MAGIC: &[u8; 7] = b"PITRKEY";
const HEADER_LEN: usize = 7 + 1 + 8 + 8 + 12 + 48 + 8 + 32 + 4;
const TAG_LEN: usize = 16;
/// Plaintext bytes per chunk.
pub(crate) const CHUNK: usize = 64 * 1024;
/// First line of a key file.
const KEY_FILE_PREFIX: &str = "pitr-symmetric-key-v1:";
/// Where key objects live.
pub(crate) const KEYS_PREFIX: &str = "keys/";

/// Why a key could not be loaded, or an object not opened.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CryptError {
    /// The key file is not one, or a key source failed.
    #[error("{0}")]
    BadKey(String),
    /// A remote key source (KMS) could not be reached or asked to slow down: retrying may
    /// help (a transient storage error).
    #[error("{0}")]
    Unavailable(String),
    /// The object's data key is not wrapped for the key given.
    #[error(
        "sealed under data key {dk}, which only key {needs} opens, and the key given is {have}: pass one of those keys"
    )]
    WrongKey {
        /// The object's data key id.
        dk: String,
        /// The KEK ids that open it.
        needs: String,
        /// The key id given.
        have: String,
    },
    /// The object's data key has no key object at all.
    #[error("its data key {0} has no key object (keys/{0}.*): the repo lost it")]
    NoKeyObject(String),
    /// Write-only mode: this process cannot open what another process wrote.
    #[error(
        "this process holds only the recipient {0} (write-only): it cannot read what other runs wrote; pass --identity with the matching identity to read"
    )]
    WriteOnly(String),
    /// Not a sealed object (a plain object in an encrypted repo).
    #[error("not encrypted, in an encrypted repo: a plain object is refused")]
    NotSealed,
    /// Authentication failed.
    #[error(
        "authentication failed ({0}): the object was altered, truncated, or is another object's bytes"
    )]
    Tampered(&'static str),
}

fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&k, label);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn id8(secret: &[u8], label: &[u8]) -> [u8; 8] {
    let mut id = [0u8; 8];
    id.copy_from_slice(&derive(secret, label)[..8]);
    id
}

pub(crate) fn hex(b: &[u8]) -> String {
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

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // The system RNG failing is not recoverable; ring reports it only as Unspecified.
    SystemRandom::new()
        .fill(&mut b)
        .unwrap_or_else(|_| panic!("the system random number generator failed"));
    b
}

fn aead(key: &[u8; 32]) -> LessSafeKey {
    // 32 bytes is ChaCha20-Poly1305's key length: this cannot fail.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).unwrap_or_else(|_| unreachable!()))
}

fn hmac_key(secret: &[u8], label: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, &derive(secret, label))
}

/// Reads a secret file, refusing one that group or others can read.
fn read_secret_file(path: &Path, option: &str) -> Result<String, CryptError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| CryptError::BadKey(format!("{option} {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(CryptError::BadKey(format!(
            "{option} {}: readable by group or others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| CryptError::BadKey(format!("{option} {}: {e}", path.display())))
}

fn key_line(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
}

/// A symmetric key-encryption key: 32 secret bytes and what is derived from them.
#[derive(Clone)]
pub struct RepoKey {
    id: [u8; 8],
    wrap: [u8; 32],
    digest: hmac::Key,
}

impl std::fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RepoKey({})", self.id_hex())
    }
}

impl RepoKey {
    fn from_secret(secret: [u8; 32]) -> RepoKey {
        RepoKey {
            id: id8(&secret, b"pitr-v1 key id"),
            wrap: derive(&secret, b"pitr-v2 key wrap"),
            digest: hmac_key(&secret, b"pitr-v1 digest key"),
        }
    }

    /// A new random key, as the text of a key file.
    pub fn generate() -> String {
        let secret = random::<32>();
        format!(
            "# pitr repo key {}: keep it secret and keep a copy; without it the repo cannot be read\n{KEY_FILE_PREFIX}{}\n",
            RepoKey::from_secret(secret).id_hex(),
            hex(&secret)
        )
    }

    /// Parses a key file's text (comment lines start with `#`).
    pub fn parse(text: &str) -> Result<RepoKey, CryptError> {
        let line =
            key_line(text).ok_or_else(|| CryptError::BadKey("the key file holds no key".into()))?;
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
        let text = read_secret_file(path, "--encryption-key-file")?;
        RepoKey::parse(&text).map_err(|e| {
            CryptError::BadKey(format!("--encryption-key-file {}: {e}", path.display()))
        })
    }

    /// The key's id, 16 hex digits (safe to show).
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }
}

/// A key-encryption key, as configured: what a process can wrap data keys for, and whether
/// it can unwrap them.
#[derive(Clone)]
pub enum KeySource {
    /// `--encryption-key-file`: wraps and unwraps.
    Symmetric(RepoKey),
    /// `--recipient`: wraps only (write-only mode).
    Recipient(age::x25519::Recipient),
    /// `--identity`: unwraps, and wraps for its own recipient.
    Identity(Arc<age::x25519::Identity>),
    /// `--kms-key-id`: wraps and unwraps by calling the KMS.
    Remote(Arc<dyn RemoteKek>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySource({} {})", self.kind_name(), self.id_hex())
    }
}

/// A recipient's text (`age1...`), from the value itself or a file holding it.
pub fn parse_recipient(given: &str) -> Result<age::x25519::Recipient, CryptError> {
    // A secret given as the value itself is refused without showing it (the value would be
    // echoed below as a file name).
    let upper = given.to_ascii_uppercase();
    if upper.contains("AGE-SECRET-KEY-") {
        return Err(CryptError::BadKey(
            "--recipient: this is an identity (a private key), not shown here: give the sidecar only its recipient (the `# public key: age1...` line), and keep the identity for --identity".into(),
        ));
    }
    if upper.contains(&KEY_FILE_PREFIX.to_ascii_uppercase()) {
        return Err(CryptError::BadKey(
            "--recipient: this is a symmetric key, not shown here: give it with --encryption-key-file FILE, or give --recipient an X25519 recipient (age1...)".into(),
        ));
    }
    let text = if given.trim_start().starts_with("age1") {
        given.to_string()
    } else {
        std::fs::read_to_string(given).map_err(|e| {
            CryptError::BadKey(format!(
                "--recipient {given}: neither a recipient (age1...) nor a readable file: {e}"
            ))
        })?
    };
    if text.to_ascii_uppercase().contains("AGE-SECRET-KEY-") {
        return Err(CryptError::BadKey(format!(
            "--recipient {given}: this is an identity (a private key): give the sidecar only its recipient (the `# public key: age1...` line), and keep the identity for --identity"
        )));
    }
    let line = key_line(&text).unwrap_or("");
    line.parse::<age::x25519::Recipient>().map_err(|e| {
        CryptError::BadKey(format!(
            "--recipient {given}: not an X25519 recipient (age1...): {e}"
        ))
    })
}

impl KeySource {
    /// `--identity FILE`: an age X25519 identity file, refused if group or others can read it.
    pub fn load_identity(path: &Path) -> Result<KeySource, CryptError> {
        let text = read_secret_file(path, "--identity")?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .ok_or_else(|| {
                CryptError::BadKey(format!(
                    "--identity {}: holds no AGE-SECRET-KEY-1... line (make one with `pitr key generate --recipient`)",
                    path.display()
                ))
            })?;
        let id = line.parse::<age::x25519::Identity>().map_err(|e| {
            CryptError::BadKey(format!(
                "--identity {}: not an X25519 identity: {e}",
                path.display()
            ))
        })?;
        Ok(KeySource::Identity(Arc::new(id)))
    }

    /// A new identity file's text (`pitr key generate --recipient`) and its recipient.
    pub fn generate_identity() -> (String, String) {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let recipient = id.to_public().to_string();
        let text = format!(
            "# pitr identity (private key) {}: keep it secret and keep a copy; restore, verify and list need it\n# public key: {recipient}\n{}\n",
            hex(&recipient_id(&id.to_public())),
            id.to_string().expose_secret()
        );
        (text, recipient)
    }

    /// The recipient an identity wraps for (`None` for other sources).
    pub fn recipient(&self) -> Option<age::x25519::Recipient> {
        match self {
            KeySource::Recipient(r) => Some(r.clone()),
            KeySource::Identity(i) => Some(i.to_public()),
            _ => None,
        }
    }

    /// The KEK's id.
    pub fn id(&self) -> [u8; 8] {
        match self {
            KeySource::Symmetric(k) => k.id,
            KeySource::Recipient(_) | KeySource::Identity(_) => {
                recipient_id(&self.recipient().unwrap_or_else(|| unreachable!()))
            }
            KeySource::Remote(r) => id8(r.name().as_bytes(), b"pitr-v2 kms key id"),
        }
    }

    /// The KEK's id, 16 hex digits (safe to show).
    pub fn id_hex(&self) -> String {
        hex(&self.id())
    }

    /// What kind of key it is, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            KeySource::Symmetric(_) => "symmetric key",
            KeySource::Recipient(_) => "recipient",
            KeySource::Identity(_) => "identity",
            KeySource::Remote(_) => "KMS key",
        }
    }

    /// Whether it can unwrap data keys (false only for a bare recipient).
    pub fn can_read(&self) -> bool {
        !matches!(self, KeySource::Recipient(_))
    }

    fn kind(&self) -> u8 {
        match self {
            KeySource::Symmetric(_) => 1,
            KeySource::Recipient(_) | KeySource::Identity(_) => 2,
            KeySource::Remote(_) => 3,
        }
    }

    /// The digest key that stays the same across this KEK's data keys, with its id; `None`
    /// for a KMS key (there the DK's own digest key is used).
    fn stable_digest(&self) -> Option<([u8; 8], hmac::Key)> {
        match self {
            KeySource::Symmetric(k) => Some((k.id, k.digest.clone())),
            KeySource::Recipient(_) | KeySource::Identity(_) => {
                let r = self.recipient()?;
                Some((
                    recipient_id(&r),
                    hmac_key(r.to_string().as_bytes(), b"pitr-v2 recipient digest key"),
                ))
            }
            KeySource::Remote(_) => None,
        }
    }

    /// The key object that stores `dk` for this KEK.
    async fn wrap_dk(&self, dk: &DataKey) -> Result<Vec<u8>, CryptError> {
        let mut out = KEY_MAGIC.to_vec();
        out.push(FORMAT);
        out.push(self.kind());
        out.extend_from_slice(&dk.id);
        out.extend_from_slice(&self.id());
        match self {
            KeySource::Symmetric(k) => {
                let nonce = random::<12>();
                let mut wrapped = dk.secret.to_vec();
                aead(&k.wrap)
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(out.clone()),
                        &mut wrapped,
                    )
                    .unwrap_or_else(|_| unreachable!("sealing 32 bytes cannot fail"));
                out.extend_from_slice(&nonce);
                out.extend_from_slice(&wrapped);
            }
            KeySource::Recipient(_) | KeySource::Identity(_) => {
                let r = self.recipient().unwrap_or_else(|| unreachable!());
                let blob = age::encrypt(&r, &dk.secret).map_err(|e| {
                    CryptError::BadKey(format!("wrapping a data key for the recipient: {e}"))
                })?;
                out.extend_from_slice(&blob);
            }
            KeySource::Remote(r) => {
                out.extend_from_slice(&r.wrap(&dk.id_hex(), &dk.secret).await?);
            }
        }
        Ok(out)
    }

    /// The data key a key object stores, checked against the id in its name.
    async fn unwrap_dk(&self, dk_id: [u8; 8], obj: &[u8]) -> Result<DataKey, CryptError> {
        const H: usize = 7 + 1 + 1 + 8 + 8;
        if obj.len() < H || &obj[..7] != KEY_MAGIC {
            return Err(CryptError::Tampered("not a key object"));
        }
        if obj[7] != FORMAT {
            return Err(CryptError::Tampered("key object: unknown format version"));
        }
        if obj[8] != self.kind() || obj[9..17] != dk_id || obj[17..25] != self.id() {
            return Err(CryptError::Tampered("key object: not this key's"));
        }
        let body = &obj[H..];
        let secret: [u8; 32] = match self {
            KeySource::Symmetric(k) => {
                if body.len() != 12 + 48 {
                    return Err(CryptError::Tampered("key object: length"));
                }
                let nonce: [u8; 12] = body[..12]
                    .try_into()
                    .map_err(|_| CryptError::Tampered("key object"))?;
                let mut w = body[12..].to_vec();
                let p = aead(&k.wrap)
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&obj[..H]),
                        &mut w,
                    )
                    .map_err(|_| CryptError::Tampered("key object: does not open"))?;
                p.try_into()
                    .map_err(|_| CryptError::Tampered("key object: length"))?
            }
            KeySource::Identity(i) => {
                let p = age::decrypt(i.as_ref(), body)
                    .map_err(|_| CryptError::Tampered("key object: does not open"))?;
                p.try_into()
                    .map_err(|_| CryptError::Tampered("key object: length"))?
            }
            KeySource::Recipient(_) => return Err(CryptError::WriteOnly(self.id_hex())),
            KeySource::Remote(r) => r.unwrap(&hex(&dk_id), body).await?,
        };
        let dk = DataKey::from_secret(secret);
        if dk.id != dk_id {
            return Err(CryptError::Tampered("key object: another data key's"));
        }
        Ok(dk)
    }
}

fn recipient_id(r: &age::x25519::Recipient) -> [u8; 8] {
    id8(r.to_string().as_bytes(), b"pitr-v2 recipient id")
}

/// A key-encryption key held outside pitr (a KMS key, `repo::kms` behind the `kms`
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

/// A data key: its secret and what is derived from it.
#[derive(Clone)]
struct DataKey {
    id: [u8; 8],
    secret: [u8; 32],
    wrap: [u8; 32],
    digest: hmac::Key,
}

impl DataKey {
    fn from_secret(secret: [u8; 32]) -> DataKey {
        DataKey {
            id: id8(&secret, b"pitr-v2 data key id"),
            secret,
            wrap: derive(&secret, b"pitr-v2 object key wrap"),
            digest: hmac_key(&secret, b"pitr-v2 data key digest"),
        }
    }

    fn id_hex(&self) -> String {
        hex(&self.id)
    }
}

/// The name of the key object storing data key `dk` for KEK `kek`.
pub(crate) fn key_object_name(dk: &[u8; 8], kek: &[u8; 8]) -> String {
    format!("{KEYS_PREFIX}{}.{}.key", hex(dk), hex(kek))
}

/// `(dk id, kek id)` from a key object's name.
pub(crate) fn parse_key_object_name(name: &str) -> Option<([u8; 8], [u8; 8])> {
    let rest = name.strip_prefix(KEYS_PREFIX)?.strip_suffix(".key")?;
    let (dk, kek) = rest.split_once('.')?;
    let dk: [u8; 8] = unhex(dk)?.try_into().ok()?;
    let kek: [u8; 8] = unhex(kek)?.try_into().ok()?;
    Some((dk, kek))
}

fn digest_with(key: &hmac::Key, name: &str, plaintext: &[u8]) -> [u8; 32] {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(name.as_bytes());
    ctx.update(&[0]);
    ctx.update(plaintext);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

fn chunk_nonce(i: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&i.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::assume_unique_for_key(n)
}

fn object_key_aad(dk: &[u8], name: &str) -> Vec<u8> {
    let mut a = b"pitr-v2 object key".to_vec();
    a.extend_from_slice(dk);
    a.extend_from_slice(name.as_bytes());
    a
}

/// Seals `plaintext` as object `name` under data key `dk`, with digest `digest` (id, key).
fn seal(dk: &DataKey, digest: (&[u8; 8], &hmac::Key), name: &str, plaintext: &[u8]) -> Vec<u8> {
    let object_key = random::<32>();
    let wrap_nonce = random::<12>();
    let mut wrapped = object_key.to_vec();
    aead(&dk.wrap)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(wrap_nonce),
            Aad::from(object_key_aad(&dk.id, name)),
            &mut wrapped,
        )
        .unwrap_or_else(|_| unreachable!("sealing 32 bytes cannot fail"));
    let mut out = Vec::with_capacity(sealed_len(plaintext.len()));
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&dk.id);
    out.extend_from_slice(digest.0);
    out.extend_from_slice(&wrap_nonce);
    out.extend_from_slice(&wrapped);
    out.extend_from_slice(&(plaintext.len() as u64).to_be_bytes());
    out.extend_from_slice(&digest_with(digest.1, name, plaintext));
    out.extend_from_slice(&(CHUNK as u32).to_be_bytes());
    let mut aad = out.clone();
    aad.extend_from_slice(name.as_bytes());
    let key = aead(&object_key);
    let n = plaintext.len().div_ceil(CHUNK).max(1);
    for i in 0..n {
        let part =
            &plaintext[(i * CHUNK).min(plaintext.len())..((i + 1) * CHUNK).min(plaintext.len())];
        let start = out.len();
        out.extend_from_slice(part);
        let tag = key
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
    dk: [u8; 8],
    digest_id: [u8; 8],
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
    let dk: [u8; 8] = sealed[8..16]
        .try_into()
        .map_err(|_| CryptError::Tampered("header"))?;
    let digest_id: [u8; 8] = sealed[16..24]
        .try_into()
        .map_err(|_| CryptError::Tampered("header"))?;
    Ok(Header {
        dk,
        digest_id,
        digest: &sealed[92..124],
    })
}

/// Opens object `name`'s sealed bytes with its data key (whose id the header names).
fn open_with(dk: &DataKey, name: &str, sealed: &[u8]) -> Result<Vec<u8>, CryptError> {
    open_in_place(dk, name, sealed.to_vec())
}

/// Opens object `name`'s sealed bytes `buf` in place: each chunk is opened where it lies and
/// its plaintext moved down to `i * CHUNK`, so the plaintext is returned in `buf`'s own
/// allocation, with no second buffer of the object's size.
fn open_in_place(dk: &DataKey, name: &str, mut buf: Vec<u8>) -> Result<Vec<u8>, CryptError> {
    if header(&buf)?.dk != dk.id {
        return Err(CryptError::Tampered("data key id"));
    }
    let wrap_nonce: [u8; 12] = buf[24..36]
        .try_into()
        .map_err(|_| CryptError::Tampered("header"))?;
    let mut ok = buf[36..84].to_vec();
    let object_key: [u8; 32] = aead(&dk.wrap)
        .open_in_place(
            Nonce::assume_unique_for_key(wrap_nonce),
            Aad::from(object_key_aad(&dk.id, name)),
            &mut ok,
        )
        .map_err(|_| CryptError::Tampered("object key: not this object's"))?
        .try_into()
        .map_err(|_| CryptError::Tampered("object key"))?;
    let len = u64::from_be_bytes(
        buf[84..92]
            .try_into()
            .map_err(|_| CryptError::Tampered("header"))?,
    );
    let chunk = u32::from_be_bytes(
        buf[124..128]
            .try_into()
            .map_err(|_| CryptError::Tampered("header"))?,
    ) as usize;
    if chunk != CHUNK {
        return Err(CryptError::Tampered("chunk size"));
    }
    let key = aead(&object_key);
    let mut aad = buf[..HEADER_LEN].to_vec();
    aad.extend_from_slice(name.as_bytes());
    // The plaintext of chunk i moves to i * CHUNK, always below where chunk i was read (at
    // HEADER_LEN + i * (CHUNK + TAG_LEN)), so nothing not yet opened is overwritten.
    let mut i = 0u64;
    let mut at = HEADER_LEN;
    let mut end = 0usize;
    loop {
        let remaining = buf.len() - at;
        let last = remaining <= CHUNK + TAG_LEN;
        if remaining < TAG_LEN {
            return Err(CryptError::Tampered("truncated"));
        }
        let take = if last { remaining } else { CHUNK + TAG_LEN };
        let n = key
            .open_in_place(
                chunk_nonce(i, last),
                Aad::from(&aad[..]),
                &mut buf[at..at + take],
            )
            .map_err(|_| {
                CryptError::Tampered(if last {
                    "a chunk, or the end: truncated or reordered"
                } else {
                    "a chunk"
                })
            })?
            .len();
        buf.copy_within(at..at + n, end);
        end += n;
        at += take;
        i += 1;
        if last {
            break;
        }
    }
    buf.truncate(end);
    if buf.len() as u64 != len {
        return Err(CryptError::Tampered("length"));
    }
    // The digest is not recomputed: every chunk's tag covers the header, digest included,
    // and the plaintext; the digest serves only to compare contents without decrypting.
    Ok(buf)
}

/// The process's key source and the data keys it has made or opened. One per repo store.
pub struct Keyring {
    source: KeySource,
    /// The store without sealing: key objects are read and written here.
    inner: Arc<dyn ObjectStore>,
    /// This process's data key, made (and its key object stored) at the first write.
    session: tokio::sync::OnceCell<DataKey>,
    /// Data keys opened so far, by id.
    opened: Mutex<HashMap<[u8; 8], DataKey>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({:?})", self.source)
    }
}

impl Keyring {
    /// A keyring over `inner` (the unsealed store) for `source`.
    pub fn new(inner: Arc<dyn ObjectStore>, source: KeySource) -> Keyring {
        Keyring {
            source,
            inner,
            session: tokio::sync::OnceCell::new(),
            opened: Mutex::new(HashMap::new()),
        }
    }

    /// The key source.
    pub fn source(&self) -> &KeySource {
        &self.source
    }

    /// The store without sealing (where key objects live).
    pub(crate) fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// This process's data key: made, and its key object stored, on first use.
    async fn session(&self) -> Result<&DataKey, StoreError> {
        self.session
            .get_or_try_init(|| async {
                let dk = DataKey::from_secret(random::<32>());
                let name = key_object_name(&dk.id, &self.source.id());
                let obj = self
                    .source
                    .wrap_dk(&dk)
                    .await
                    .map_err(|e| crypt_error("put", &name, e))?;
                self.inner.put_if_absent(&name, Bytes::from(obj)).await?;
                tracing::debug!(data_key = %dk.id_hex(), kek = %self.source.id_hex(), "stored this process's data key");
                Ok(dk)
            })
            .await
    }

    /// The data key `id`, opened with this process's KEK.
    async fn data_key(&self, id: [u8; 8], object: &str) -> Result<DataKey, StoreError> {
        if let Some(s) = self.session.get()
            && s.id == id
        {
            return Ok(s.clone());
        }
        if let Some(k) = self
            .opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
        {
            return Ok(k.clone());
        }
        if !self.source.can_read() {
            return Err(crypt_error(
                "get",
                object,
                CryptError::WriteOnly(self.source.id_hex()),
            ));
        }
        let name = key_object_name(&id, &self.source.id());
        let Some(obj) = self.inner.get(&name).await? else {
            let prefix = format!("{KEYS_PREFIX}{}.", hex(&id));
            let keks: Vec<String> = self
                .inner
                .list(&prefix)
                .await?
                .iter()
                .filter_map(|o| parse_key_object_name(&o.key))
                .map(|(_, k)| hex(&k))
                .collect();
            let e = if keks.is_empty() {
                CryptError::NoKeyObject(hex(&id))
            } else {
                CryptError::WrongKey {
                    dk: hex(&id),
                    needs: keks.join(" or "),
                    have: self.source.id_hex(),
                }
            };
            return Err(crypt_error("get", object, e));
        };
        let dk = self
            .source
            .unwrap_dk(id, &obj)
            .await
            .map_err(|e| crypt_error("get", &name, e))?;
        self.opened
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, dk.clone());
        Ok(dk)
    }

    /// The digest key and id a new object is sealed with.
    fn digest_for(&self, dk: &DataKey) -> ([u8; 8], hmac::Key) {
        self.source
            .stable_digest()
            .unwrap_or_else(|| (dk.id, dk.digest.clone()))
    }

    /// Seals `plaintext` as `name` with this process's data key.
    pub(crate) async fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let dk = self.session().await?;
        let (id, key) = self.digest_for(dk);
        Ok(seal(dk, (&id, &key), name, plaintext))
    }

    /// Opens `name`'s sealed bytes.
    pub(crate) async fn open(&self, name: &str, sealed: &[u8]) -> Result<Vec<u8>, StoreError> {
        let h = header(sealed).map_err(|e| crypt_error("get", name, e))?;
        let dk = self.data_key(h.dk, name).await?;
        open_with(&dk, name, sealed).map_err(|e| crypt_error("get", name, e))
    }

    /// Opens `name`'s sealed bytes in their own buffer (no copy when `sealed` is the only
    /// reference to it, as a store's `get` returns it).
    async fn open_owned(&self, name: &str, sealed: Bytes) -> Result<Vec<u8>, StoreError> {
        let h = header(&sealed).map_err(|e| crypt_error("get", name, e))?;
        let dk = self.data_key(h.dk, name).await?;
        open_in_place(&dk, name, Vec::from(sealed)).map_err(|e| crypt_error("get", name, e))
    }

    /// Whether the sealed bytes `stored` of `name` hold `plaintext`: by opening them when this
    /// process can, else by the keyed digest. A damaged stored object is a `Conflict` when
    /// it can be opened.
    async fn stored_holds(
        &self,
        name: &str,
        stored: &[u8],
        plaintext: &[u8],
    ) -> Result<bool, StoreError> {
        let h = header(stored).map_err(|e| crypt_error("get", name, e))?;
        let readable = self.source.can_read() || self.session.get().is_some_and(|s| s.id == h.dk);
        if readable {
            return match self.open(name, stored).await {
                Ok(p) => Ok(p[..] == plaintext[..]),
                Err(e) if e.kind == StoreErrorKind::Permanent => Err(StoreError::new(
                    StoreErrorKind::Conflict,
                    "put",
                    name,
                    format!(
                        "the stored object is damaged or unreadable and is kept: {}",
                        e.message
                    ),
                )),
                Err(e) => Err(e),
            };
        }
        match self.source.stable_digest() {
            Some((id, key)) if id == h.digest_id => {
                let same = digest_with(&key, name, plaintext) == h.digest;
                // The chunks cannot be checked without the key, but their number and sizes
                // can: a stored object cut (even at a chunk boundary) or extended is never
                // taken for these bytes.
                let whole = stored.len() == sealed_len(plaintext.len())
                    && stored[84..92] == (plaintext.len() as u64).to_be_bytes();
                if same && !whole {
                    return Err(StoreError::new(
                        StoreErrorKind::Conflict,
                        "put",
                        name,
                        format!(
                            "the stored object is damaged (cut or extended: {} bytes, {} expected) and is kept",
                            stored.len(),
                            sealed_len(plaintext.len())
                        ),
                    ));
                }
                Ok(same)
            }
            Some((id, _)) => Err(crypt_error(
                "get",
                name,
                CryptError::BadKey(format!(
                    "write-only mode compares a stored object by its keyed digest, and this one's is of key {} (a key of the repo before a rotation), not of the recipient given ({}): run this command once with --identity (the private key of a current repo key), after which the recipient alone works again",
                    hex(&h.digest_id),
                    hex(&id)
                )),
            )),
            None => Err(crypt_error(
                "get",
                name,
                CryptError::WriteOnly(self.source.id_hex()),
            )),
        }
    }

    /// Whether the stored object `name` holds `plaintext` (`None`: absent).
    pub(crate) async fn holds(
        &self,
        name: &str,
        plaintext: &[u8],
    ) -> Result<Option<bool>, StoreError> {
        let Some(stored) = self.inner.get(name).await? else {
            return Ok(None);
        };
        self.stored_holds(name, &stored, plaintext).await.map(Some)
    }
}

fn crypt_error(op: &'static str, key: &str, e: CryptError) -> StoreError {
    let kind = match e {
        CryptError::Unavailable(_) => StoreErrorKind::Transient,
        _ => StoreErrorKind::Permanent,
    };
    StoreError::new(kind, op, key, e.to_string())
}

/// The repo's key objects, by data key: which KEKs open each.
pub(crate) async fn key_objects(
    inner: &dyn ObjectStore,
) -> Result<BTreeMap<[u8; 8], BTreeSet<[u8; 8]>>, StoreError> {
    let mut out: BTreeMap<[u8; 8], BTreeSet<[u8; 8]>> = BTreeMap::new();
    for o in inner.list(KEYS_PREFIX).await? {
        if let Some((dk, kek)) = parse_key_object_name(&o.key) {
            out.entry(dk).or_default().insert(kek);
        }
    }
    Ok(out)
}

/// The KEKs that open at least one of the repo's data keys.
pub(crate) async fn repo_keks(inner: &dyn ObjectStore) -> Result<BTreeSet<String>, StoreError> {
    Ok(key_objects(inner)
        .await?
        .into_values()
        .flatten()
        .map(|k| hex(&k))
        .collect())
}

/// What `pitr key rotate` did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RotateReport {
    /// The new KEK's id.
    pub to: String,
    /// Data keys now stored for it (newly).
    pub wrapped: usize,
    /// Data keys it already opened.
    pub already: usize,
}

/// Stores every data key of the repo for `to` as well, unwrapping each with `keyring`'s key.
/// Checks first that every data key opens, and writes nothing if one does not. A key object
/// of `to` that exists but does not open (when `to` can unwrap) is stored again.
pub(crate) async fn rotate(keyring: &Keyring, to: &KeySource) -> Result<RotateReport, StoreError> {
    let all = key_objects(keyring.inner.as_ref()).await?;
    let mine = keyring.source.id();
    let target = to.id();
    let mut todo = Vec::new();
    let mut damaged = BTreeSet::new();
    let mut already = 0;
    for (dk, keks) in &all {
        if keks.contains(&target) {
            // Counted only if it opens, when the new key can tell: a damaged key object of
            // the new key (found by name) is stored again below.
            let name = key_object_name(dk, &target);
            let opens = !to.can_read()
                || target == mine
                || match keyring.inner.get(&name).await? {
                    Some(obj) => match to.unwrap_dk(*dk, &obj).await {
                        Ok(_) => true,
                        Err(CryptError::Tampered(_)) => false,
                        Err(e) => return Err(crypt_error("get", &name, e)),
                    },
                    None => false,
                };
            if opens {
                already += 1;
                continue;
            }
            damaged.insert(*dk);
        }
        if !keks.contains(&mine) {
            return Err(StoreError::new(
                StoreErrorKind::Permanent,
                "rotate",
                &key_object_name(dk, &mine),
                format!(
                    "data key {} is stored only for key {}, not for the key given ({}): nothing was changed; rotate with one of those keys",
                    hex(dk),
                    keks.iter().map(|k| hex(k)).collect::<Vec<_>>().join(" or "),
                    keyring.source.id_hex()
                ),
            ));
        }
        todo.push(*dk);
    }
    let mut opened = Vec::new();
    for dk in &todo {
        opened.push(keyring.data_key(*dk, &key_object_name(dk, &mine)).await?);
    }
    for dk in &opened {
        let name = key_object_name(&dk.id, &target);
        let obj = to
            .wrap_dk(dk)
            .await
            .map_err(|e| crypt_error("put", &name, e))?;
        if damaged.contains(&dk.id) {
            keyring.inner.delete(&name).await?;
        }
        keyring.inner.put_if_absent(&name, Bytes::from(obj)).await?;
    }
    Ok(RotateReport {
        to: hex(&target),
        wrapped: opened.len(),
        already,
    })
}

/// Deletes KEK `retired`'s key objects, once every data key has another that `keyring`'s
/// key opens (unwrapped here, not only found by name: a damaged or planted key object does
/// not count). Refuses, deleting nothing, when one has not.
pub(crate) async fn retire(keyring: &Keyring, retired: &str) -> Result<usize, StoreError> {
    let inner = keyring.inner.as_ref();
    let all = key_objects(inner).await?;
    let Some(r) = unhex(retired).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
        return Err(StoreError::new(
            StoreErrorKind::Permanent,
            "retire",
            KEYS_PREFIX,
            format!("{retired:?} is not a key id (16 hex digits, as `pitr key list` shows)"),
        ));
    };
    let only: Vec<String> = all
        .iter()
        .filter(|(_, keks)| keks.contains(&r) && keks.len() == 1)
        .map(|(dk, _)| hex(dk))
        .collect();
    if !only.is_empty() {
        return Err(StoreError::new(
            StoreErrorKind::Permanent,
            "retire",
            KEYS_PREFIX,
            format!(
                "key {retired} is the only key of data key(s) {}: nothing was deleted; run `pitr key rotate` with key {retired} first (a process started with it since the last rotation made a new one)",
                only.join(", ")
            ),
        ));
    }
    let mine = keyring.source.id();
    let refuse = |dk: &[u8; 8], why: String| {
        StoreError::new(
            StoreErrorKind::Permanent,
            "retire",
            &key_object_name(dk, &mine),
            format!("{why}: nothing was deleted"),
        )
    };
    if !keyring.source.can_read() {
        return Err(StoreError::new(
            StoreErrorKind::Permanent,
            "retire",
            KEYS_PREFIX,
            format!(
                "the recipient given ({}) opens no data key, so it cannot check that the repo stays readable without key {retired}: nothing was deleted; retire with a key that opens the repo (--identity, --encryption-key-file, --kms-key-id)",
                keyring.source.id_hex()
            ),
        ));
    }
    for (dk, keks) in all.iter().filter(|(_, k)| k.contains(&r)) {
        if !keks.contains(&mine) {
            return Err(refuse(
                dk,
                format!(
                    "data key {} is stored for key {}, not for the key given ({}), which so cannot check that it still opens without key {retired}; run `pitr key rotate` with key {retired} to the key given first",
                    hex(dk),
                    keks.iter()
                        .map(|k| hex(k))
                        .collect::<Vec<_>>()
                        .join(" and "),
                    keyring.source.id_hex()
                ),
            ));
        }
        if let Err(e) = keyring.data_key(*dk, &key_object_name(dk, &r)).await {
            return Err(refuse(
                dk,
                format!(
                    "data key {} does not open with the key given ({e}); it may need key {retired}",
                    hex(dk)
                ),
            ));
        }
    }
    let mut n = 0;
    for dk in all.iter().filter(|(_, k)| k.contains(&r)).map(|(d, _)| d) {
        inner.delete(&key_object_name(dk, &r)).await?;
        n += 1;
    }
    if n == 0 {
        return Err(StoreError::new(
            StoreErrorKind::Permanent,
            "retire",
            KEYS_PREFIX,
            format!("key {retired} opens none of the repo's data keys: nothing to retire"),
        ));
    }
    Ok(n)
}

/// Opens a sealed file of a local repo outside any store (`pitr wal inspect`): the data key
/// comes from the repo's `keys/` directory next to `pitr.json`.
pub(crate) fn open_file_blocking(
    source: &KeySource,
    repo_root: &Path,
    name: &str,
    sealed: &[u8],
) -> Result<Vec<u8>, CryptError> {
    let h = header(sealed)?;
    let key_file = repo_root.join(key_object_name(&h.dk, &source.id()));
    let obj = std::fs::read(&key_file).map_err(|_| CryptError::WrongKey {
        dk: hex(&h.dk),
        needs: "another key".into(),
        have: source.id_hex(),
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CryptError::BadKey(e.to_string()))?;
    let dk = rt.block_on(source.unwrap_dk(h.dk, &obj))?;
    open_with(&dk, name, sealed)
}

/// The key source configured for this process (`--encryption-key-file`, `--recipient`,
/// `--identity`, `--kms-key-id`), and the option that reproduces it for a child process.
static CONFIGURED: OnceLock<Option<(KeySource, Vec<String>)>> = OnceLock::new();

/// Sets the process's key source (once, from the command line, before any repo is opened),
/// with the command-line options that give it to another pitr process.
pub fn configure(source: Option<(KeySource, Vec<String>)>) {
    let _ = CONFIGURED.set(source);
}

/// The process's key source, if one was configured.
pub(crate) fn configured() -> Option<KeySource> {
    CONFIGURED.get().cloned().flatten().map(|(k, _)| k)
}

/// Options for a `pitr` child process (a standby's `restore_command`) to use the same key.
pub(crate) fn configured_args() -> Vec<String> {
    CONFIGURED
        .get()
        .and_then(|c| c.as_ref())
        .map(|(_, a)| a.clone())
        .unwrap_or_default()
}

/// A store that seals every object but `pitr.json` (see the module invariants). Key
/// objects (`keys/`) are the keyring's: they are neither listed nor written through it.
#[derive(Debug)]
pub struct EncryptingStore {
    inner: Arc<dyn ObjectStore>,
    keys: Arc<Keyring>,
}

impl EncryptingStore {
    /// Seals `inner`'s objects with `source`.
    pub fn new(inner: Arc<dyn ObjectStore>, source: KeySource) -> EncryptingStore {
        let keys = Arc::new(Keyring::new(inner.clone(), source));
        EncryptingStore { inner, keys }
    }

    /// The keyring.
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keys
    }
}

fn refuse_key_object(op: &'static str, key: &str) -> Option<StoreError> {
    key.starts_with(KEYS_PREFIX).then(|| {
        StoreError::new(
            StoreErrorKind::Permanent,
            op,
            key,
            "key objects are managed by `pitr key` only".to_string(),
        )
    })
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
            if let Some(e) = refuse_key_object("put", key) {
                return Err(e);
            }
            let sealed = self.keys.seal(key, &data).await?;
            match self.inner.put_if_absent(key, Bytes::from(sealed)).await {
                Err(e) if e.kind == StoreErrorKind::Conflict => {
                    // Identical only if the stored object holds these bytes: opened, whole
                    // and authentic, when this process can (a damaged copy is never taken
                    // for this one: the caller could drop its only good copy), else by the
                    // keyed digest.
                    let Some(existing) = self.inner.get(key).await? else {
                        return Err(e);
                    };
                    if !is_sealed(&existing) {
                        return Err(e);
                    }
                    match self.keys.stored_holds(key, &existing, &data).await {
                        Ok(true) => Ok(PutOutcome::AlreadyIdentical),
                        Ok(false) => Err(e),
                        Err(ce) => Err(StoreError::new(
                            StoreErrorKind::Conflict,
                            "put",
                            key,
                            ce.message,
                        )),
                    }
                }
                r => r,
            }
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move {
            if let Some(e) = refuse_key_object("get", key) {
                return Err(e);
            }
            let Some(b) = self.inner.get(key).await? else {
                return Ok(None);
            };
            if key == IDENTITY_KEY {
                return Ok(Some(b));
            }
            self.keys
                .open_owned(key, b)
                .await
                .map(|p| Some(Bytes::from(p)))
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StoreError>> {
        Box::pin(async move {
            let mut v = self.inner.list(prefix).await?;
            v.retain(|o| !o.key.starts_with(KEYS_PREFIX));
            for o in &mut v {
                if o.key != IDENTITY_KEY {
                    o.size = plain_len(o.size);
                }
            }
            Ok(v)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        if let Some(e) = refuse_key_object("delete", key) {
            return Box::pin(async move { Err(e) });
        }
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
    use super::super::memory::MemoryStore;
    use super::*;

    fn sym() -> KeySource {
        KeySource::Symmetric(RepoKey::parse(&RepoKey::generate()).unwrap())
    }

    fn identity() -> KeySource {
        let (text, _) = KeySource::generate_identity();
        let line = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap();
        KeySource::Identity(Arc::new(line.parse().unwrap()))
    }

    fn mem() -> Arc<dyn ObjectStore> {
        Arc::new(MemoryStore::new())
    }

    fn store(inner: &Arc<dyn ObjectStore>, k: &KeySource) -> EncryptingStore {
        EncryptingStore::new(inner.clone(), k.clone())
    }

    const SEG: &str = "wal/00000001/000000010000000000000003.lz4";

    #[test]
    fn sealed_objects_open_only_under_their_name_and_with_a_key_that_opens_their_data_key() {
        crate::test_util::block_on(async {
            let inner = mem();
            let k = sym();
            let s = store(&inner, &k);
            for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
                let p: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
                let name = format!("wal/x/{n}");
                s.put_if_absent(&name, Bytes::from(p.clone()))
                    .await
                    .unwrap();
                let raw = inner.get(&name).await.unwrap().unwrap();
                assert_eq!(raw.len(), sealed_len(n), "{n}");
                assert_eq!(plain_len(raw.len() as u64), n as u64, "{n}");
                // A new process (its own keyring) with the same key opens it.
                assert_eq!(store(&inner, &k).get(&name).await.unwrap().unwrap(), p);
                // Segment N's bytes under segment M's name.
                inner.put_if_absent(SEG, raw.clone()).await.unwrap();
                let e = s.get(SEG).await.unwrap_err();
                assert!(e.message.contains("not this object's"), "{e}");
                inner.delete(SEG).await.unwrap();
            }
            // Another key opens none of its data keys, and says which key would.
            inner
                .put_if_absent("wal/y", inner.get("wal/x/1").await.unwrap().unwrap())
                .await
                .unwrap();
            let other = sym();
            let e = store(&inner, &other).get("wal/x/1").await.unwrap_err();
            assert!(
                e.message.contains(&k.id_hex()) && e.message.contains(&other.id_hex()),
                "{e}"
            );
            // A plain object is refused.
            inner
                .put_if_absent("wal/plain", Bytes::from_static(b"{\"plain\": true}"))
                .await
                .unwrap();
            let e = s.get("wal/plain").await.unwrap_err();
            assert!(e.message.contains("not encrypted"), "{e}");
            // Key objects are not listed, read, written or deleted through the sealing store.
            assert!(
                s.list("")
                    .await
                    .unwrap()
                    .iter()
                    .all(|o| !o.key.starts_with(KEYS_PREFIX))
            );
            assert!(
                inner.list(KEYS_PREFIX).await.unwrap().len() == 1,
                "one data key per process"
            );
            let ko = inner.list(KEYS_PREFIX).await.unwrap()[0].key.clone();
            assert!(s.get(&ko).await.is_err());
            assert!(s.delete(&ko).await.is_err());
            assert!(s.put_if_absent("keys/x", Bytes::new()).await.is_err());
        });
    }

    #[test]
    fn a_flipped_bit_a_truncation_and_swapped_chunks_are_detected() {
        crate::test_util::block_on(async {
            let inner = mem();
            let k = sym();
            let s = store(&inner, &k);
            let name = "backups/b/0.tar.lz4";
            let p: Vec<u8> = (0..3 * CHUNK + 5).map(|i| (i % 253) as u8).collect();
            s.put_if_absent(name, Bytes::from(p)).await.unwrap();
            let good = inner.get(name).await.unwrap().unwrap().to_vec();
            let check = |t: Vec<u8>, what: String| {
                let inner = inner.clone();
                let k = k.clone();
                async move {
                    inner.delete("t").await.unwrap();
                    inner.put_if_absent("t", Bytes::from(t)).await.unwrap();
                    // Opened under the original name by a fresh process.
                    let fresh = store(&inner, &k);
                    let raw = inner.get("t").await.unwrap().unwrap();
                    assert!(fresh.keys.open(name, &raw).await.is_err(), "{what}");
                }
            };
            for at in [
                0usize,
                8,
                20,
                30,
                40,
                86,
                100,
                126,
                HEADER_LEN + 3,
                good.len() / 2,
                good.len() - 1,
            ] {
                let mut t = good.clone();
                t[at] ^= 0x10;
                check(t, format!("bit flip at {at}")).await;
            }
            for cut in [
                HEADER_LEN,
                HEADER_LEN + CHUNK + TAG_LEN,
                good.len() - 1,
                good.len() - TAG_LEN - 5,
            ] {
                check(good[..cut].to_vec(), format!("truncated to {cut}")).await;
            }
            let c = CHUNK + TAG_LEN;
            let mut t = good[..HEADER_LEN].to_vec();
            t.extend_from_slice(&good[HEADER_LEN + c..HEADER_LEN + 2 * c]);
            t.extend_from_slice(&good[HEADER_LEN..HEADER_LEN + c]);
            t.extend_from_slice(&good[HEADER_LEN + 2 * c..]);
            assert_eq!(t.len(), good.len());
            check(t, "chunks 0 and 1 swapped".into()).await;
            let mut t = good.clone();
            t.extend_from_slice(&good[HEADER_LEN..HEADER_LEN + c]);
            check(t, "a chunk appended".into()).await;
            let fresh = store(&inner, &k);
            assert!(fresh.keys.open(name, &good).await.is_ok());
        });
    }

    #[test]
    fn the_same_plaintext_seals_differently_but_has_one_digest() {
        crate::test_util::block_on(async {
            let k = sym();
            let ring = Keyring::new(mem(), k.clone());
            let a = ring.seal("n", b"same").await.unwrap();
            let b = Keyring::new(mem(), k).seal("n", b"same").await.unwrap();
            assert_ne!(a, b, "a fresh object key per version");
            assert_eq!(header(&a).unwrap().digest, header(&b).unwrap().digest);
            let c = ring.seal("n", b"other").await.unwrap();
            assert_ne!(header(&a).unwrap().digest, header(&c).unwrap().digest);
        });
    }

    #[test]
    fn key_files_and_identities_parse_and_never_show_the_secret() {
        let text = RepoKey::generate();
        let k = RepoKey::parse(&text).unwrap();
        let secret = text
            .lines()
            .find(|l| l.starts_with(KEY_FILE_PREFIX))
            .unwrap();
        let secret = secret.strip_prefix(KEY_FILE_PREFIX).unwrap();
        assert!(!format!("{k:?}").contains(secret));
        assert!(!format!("{:?}", KeySource::Symmetric(k.clone())).contains(secret));
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
        // Identities: the same rules; the recipient is its public line.
        let (idtext, recipient) = KeySource::generate_identity();
        let f = d.path().join("id");
        std::fs::write(&f, &idtext).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(
            KeySource::load_identity(&f)
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let id = KeySource::load_identity(&f).unwrap();
        let r = parse_recipient(&recipient).unwrap();
        assert_eq!(KeySource::Recipient(r).id_hex(), id.id_hex());
        assert!(idtext.contains(&format!("# public key: {recipient}")));
        let sk = idtext
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap();
        assert!(!format!("{id:?}").contains(sk));
        // An identity given as a recipient is refused, not used.
        let e = parse_recipient(f.to_str().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("identity"), "{e}");
        let rf = d.path().join("r");
        std::fs::write(&rf, format!("{recipient}\n")).unwrap();
        assert!(parse_recipient(rf.to_str().unwrap()).is_ok());
        assert!(parse_recipient("age1nonsense").is_err());
    }

    #[test]
    fn a_retried_upload_is_identical_and_other_bytes_conflict() {
        crate::test_util::block_on(async {
            let inner = mem();
            let k = sym();
            let s = store(&inner, &k);
            let b = Bytes::from_static(b"segment bytes");
            assert_eq!(
                s.put_if_absent("wal/a", b.clone()).await.unwrap(),
                PutOutcome::Created
            );
            assert_eq!(
                s.put_if_absent("wal/a", b.clone()).await.unwrap(),
                PutOutcome::AlreadyIdentical
            );
            // From another process (another data key) too.
            assert_eq!(
                store(&inner, &k)
                    .put_if_absent("wal/a", b.clone())
                    .await
                    .unwrap(),
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
            // A damaged stored copy is never "already identical".
            let mut raw = raw.to_vec();
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

    #[test]
    fn rotation_rewraps_data_keys_and_retirement_keeps_the_last_key_object() {
        crate::test_util::block_on(async {
            let inner = mem();
            let (old, new) = (sym(), sym());
            let before = store(&inner, &old);
            before
                .put_if_absent("wal/1", Bytes::from_static(b"one"))
                .await
                .unwrap();
            // The old key's process is still running across the rotation.
            let r = rotate(before.keyring(), &new).await.unwrap();
            assert_eq!((r.wrapped, r.already), (1, 0));
            assert_eq!(
                rotate(before.keyring(), &new).await.unwrap().already,
                1,
                "idempotent"
            );
            before
                .put_if_absent("wal/2", Bytes::from_static(b"two"))
                .await
                .unwrap();
            let after = store(&inner, &new);
            after
                .put_if_absent("wal/3", Bytes::from_static(b"three"))
                .await
                .unwrap();
            // A process started with the old key after the rotation makes a data key only the
            // old key opens: retiring the old key is refused until rotate runs again.
            let late = store(&inner, &old);
            late.put_if_absent("wal/4", Bytes::from_static(b"four"))
                .await
                .unwrap();
            let e = retire(after.keyring(), &old.id_hex()).await.unwrap_err();
            assert!(e.message.contains("only key"), "{e}");
            assert_eq!(
                key_objects(inner.as_ref()).await.unwrap().len(),
                3,
                "nothing deleted"
            );
            rotate(late.keyring(), &new).await.unwrap();
            assert_eq!(retire(after.keyring(), &old.id_hex()).await.unwrap(), 2);
            // Only the new key now: every object opens with it, none with the old.
            let fresh_new = store(&inner, &new);
            for (n, v) in [
                ("wal/1", "one"),
                ("wal/2", "two"),
                ("wal/3", "three"),
                ("wal/4", "four"),
            ] {
                assert_eq!(&fresh_new.get(n).await.unwrap().unwrap()[..], v.as_bytes());
                assert!(
                    store(&inner, &old).get(n).await.is_err(),
                    "{n} opens with the retired key"
                );
            }
            assert_eq!(
                repo_keks(inner.as_ref())
                    .await
                    .unwrap()
                    .into_iter()
                    .collect::<Vec<_>>(),
                vec![new.id_hex()]
            );
            // Retiring the last key is refused.
            let e = retire(after.keyring(), &new.id_hex()).await.unwrap_err();
            assert!(e.message.contains("only key"), "{e}");
            // Rotating needs a key that opens every data key, and writes nothing otherwise.
            let stranger = store(&inner, &sym());
            assert!(rotate(stranger.keyring(), &old).await.is_err());
            assert_eq!(repo_keks(inner.as_ref()).await.unwrap().len(), 1);
        });
    }

    #[test]
    fn a_recipient_writes_what_only_the_identity_reads() {
        crate::test_util::block_on(async {
            let inner = mem();
            let id = identity();
            let recipient = KeySource::Recipient(id.recipient().unwrap());
            let w = store(&inner, &recipient);
            w.put_if_absent("wal/1", Bytes::from_static(b"one"))
                .await
                .unwrap();
            // Its own run's objects it can read back; nothing else.
            assert_eq!(&w.get("wal/1").await.unwrap().unwrap()[..], b"one");
            let w2 = store(&inner, &recipient);
            let e = w2.get("wal/1").await.unwrap_err();
            assert!(
                e.message.contains("write-only") && e.message.contains("--identity"),
                "{e}"
            );
            // Yet a retried upload after a restart is identical by the keyed digest, and other
            // bytes conflict.
            assert_eq!(
                w2.put_if_absent("wal/1", Bytes::from_static(b"one"))
                    .await
                    .unwrap(),
                PutOutcome::AlreadyIdentical
            );
            assert_eq!(
                w2.put_if_absent("wal/1", Bytes::from_static(b"uno"))
                    .await
                    .unwrap_err()
                    .kind,
                StoreErrorKind::Conflict
            );
            assert_eq!(
                w2.keyring().holds("wal/1", b"one").await.unwrap(),
                Some(true)
            );
            assert_eq!(
                w2.keyring().holds("wal/1", b"uno").await.unwrap(),
                Some(false)
            );
            assert_eq!(w2.keyring().holds("wal/none", b"x").await.unwrap(), None);
            w2.put_if_absent("wal/2", Bytes::from_static(b"two"))
                .await
                .unwrap();
            // The identity reads both runs' objects; a symmetric key does not.
            let r = store(&inner, &id);
            assert_eq!(&r.get("wal/1").await.unwrap().unwrap()[..], b"one");
            assert_eq!(&r.get("wal/2").await.unwrap().unwrap()[..], b"two");
            assert!(store(&inner, &sym()).get("wal/1").await.is_err());
            // Rotation to a new recipient, with the identity.
            let id2 = identity();
            rotate(r.keyring(), &KeySource::Recipient(id2.recipient().unwrap()))
                .await
                .unwrap();
            retire(store(&inner, &id2).keyring(), &id.id_hex())
                .await
                .unwrap();
            assert_eq!(
                &store(&inner, &id2).get("wal/2").await.unwrap().unwrap()[..],
                b"two"
            );
            assert!(store(&inner, &id).get("wal/2").await.is_err());
        });
    }

    #[test]
    fn a_key_object_under_another_name_opens_nothing() {
        crate::test_util::block_on(async {
            let inner = mem();
            let k = sym();
            store(&inner, &k)
                .put_if_absent("wal/1", Bytes::from_static(b"one"))
                .await
                .unwrap();
            store(&inner, &k)
                .put_if_absent("wal/2", Bytes::from_static(b"two"))
                .await
                .unwrap();
            let ks: Vec<String> = inner
                .list(KEYS_PREFIX)
                .await
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect();
            assert_eq!(ks.len(), 2);
            let a = inner.get(&ks[0]).await.unwrap().unwrap();
            inner.delete(&ks[1]).await.unwrap();
            inner.put_if_absent(&ks[1], a).await.unwrap();
            let s = store(&inner, &k);
            let (ok, bad): (Vec<_>, Vec<_>) = [s.get("wal/1").await, s.get("wal/2").await]
                .into_iter()
                .partition(Result::is_ok);
            assert_eq!((ok.len(), bad.len()), (1, 1));
            let e = bad.into_iter().next().unwrap().unwrap_err();
            assert!(e.message.contains("key object"), "{e}");
        });
    }
}
