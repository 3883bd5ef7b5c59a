//! Checked fetch of backup objects: an object comes back only if it is exactly what the
//! catalog recorded.
//!
//! # Invariants
//!
//! - [`get_raw`] returns the stored bytes only when their length and CRC-32C match the
//!   [`ChunkRecord`]; a missing object is an error naming it, never an empty body.
//! - [`get_checked`] additionally decompresses a pitr chunk (lz4 or zstd) and checks its
//!   decoded size against the record (and the frame's content checksum where it has one).
//! - Transient storage errors are retried (capped backoff); permanent ones return as
//!   [`FetchError::Repo`].

use std::time::Duration;

use bytes::Bytes;

use super::catalog::ChunkRecord;
use super::{Repo, RepoError};

/// Why a backup object could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Storage failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The catalog names an object the repo does not hold.
    #[error("{key}: missing from the repo (the backup is damaged)")]
    Missing {
        /// The object.
        key: String,
    },
    /// The stored bytes are not the ones the catalog recorded.
    #[error(
        "{key}: checksum mismatch ({len} bytes, CRC-32C {crc:08x}; the catalog says {want_len} bytes, {want_crc:08x}): the object is corrupt"
    )]
    Checksum {
        /// The object.
        key: String,
        /// Stored length found.
        len: u64,
        /// CRC-32C found.
        crc: u32,
        /// Length recorded.
        want_len: u64,
        /// CRC-32C recorded.
        want_crc: u32,
    },
    /// The lz4 frame does not decode (the message names the object).
    #[error("{0}")]
    Decompress(String),
}

/// Fetches one backup object as stored and checks its size and CRC-32C.
pub(crate) async fn get_raw(repo: &Repo, c: &ChunkRecord) -> Result<Bytes, FetchError> {
    let raw = repo
        .retrying("fetch backup object", Duration::from_secs(10))
        .store()
        .get(&c.key)
        .await
        .map_err(RepoError::from)?
        .ok_or_else(|| FetchError::Missing { key: c.key.clone() })?;
    let crc = crc32c::crc32c(&raw);
    if raw.len() as u64 != c.stored || crc != c.crc32c {
        return Err(FetchError::Checksum {
            key: c.key.clone(),
            len: raw.len() as u64,
            crc,
            want_len: c.stored,
            want_crc: c.crc32c,
        });
    }
    Ok(raw)
}

/// Fetches one backup object, checks its CRC-32C and decompresses it (an lz4 chunk or the
/// manifest).
pub(crate) async fn get_checked(repo: &Repo, c: &ChunkRecord) -> Result<Vec<u8>, FetchError> {
    get_checked_into(repo, c, Vec::new()).await
}

/// [`get_checked`], decoding into `buf` (its allocation reused).
pub(crate) async fn get_checked_into(
    repo: &Repo,
    c: &ChunkRecord,
    mut buf: Vec<u8>,
) -> Result<Vec<u8>, FetchError> {
    let raw = get_raw(repo, c).await?;
    let (key, want) = (c.key.clone(), c.bytes);
    tokio::task::spawn_blocking(move || {
        super::codec::decompress_into(&raw, &key, &mut buf)?;
        let out = buf;
        // The catalog's size too: a chunk's frame has no content checksum of its own.
        if out.len() as u64 != want {
            return Err(format!(
                "{key}: corrupt object: decodes to {} bytes, the catalog says {want}",
                out.len()
            ));
        }
        Ok(out)
    })
    .await
    .map_err(RepoError::task("decompression"))?
    .map_err(FetchError::Decompress)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::repo::memory::MemoryStore;

    use crate::test_util::block_on as run;

    fn record(key: &str, stored: &[u8]) -> ChunkRecord {
        ChunkRecord {
            key: key.into(),
            bytes: 0,
            stored: stored.len() as u64,
            crc32c: crc32c::crc32c(stored),
        }
    }

    #[test]
    fn only_the_recorded_bytes_come_back() {
        run(async {
            let repo = Repo::with_store(Arc::new(MemoryStore::new()));
            let body = super::super::compress(b"tar bytes");
            repo.put("backups/b/base.000000.lz4", body.clone())
                .await
                .unwrap();
            let good = ChunkRecord {
                bytes: 9,
                ..record("backups/b/base.000000.lz4", &body)
            };
            assert_eq!(get_checked(&repo, &good).await.unwrap(), b"tar bytes");
            // Another decoded size in the catalog.
            let longer = ChunkRecord {
                bytes: 10,
                ..good.clone()
            };
            let e = get_checked(&repo, &longer).await.unwrap_err();
            assert_eq!(
                e.to_string(),
                "backups/b/base.000000.lz4: corrupt object: decodes to 9 bytes, the catalog says 10"
            );
            assert_eq!(get_raw(&repo, &good).await.unwrap(), body);
            // Another CRC in the catalog: a mismatch naming the object.
            let mut other = good.clone();
            other.crc32c ^= 1;
            let e = get_checked(&repo, &other).await.unwrap_err();
            assert!(matches!(e, FetchError::Checksum { .. }), "{e}");
            assert!(
                e.to_string()
                    .starts_with("backups/b/base.000000.lz4: checksum mismatch")
            );
            // Not in the repo.
            let e = get_raw(&repo, &record("backups/b/base.000001.lz4", b""))
                .await
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "backups/b/base.000001.lz4: missing from the repo (the backup is damaged)"
            );
            // Intact as stored, but a truncated lz4 frame.
            let cut = body.slice(..body.len() - 4);
            repo.put("backups/b/x.lz4", cut.clone()).await.unwrap();
            let e = get_checked(&repo, &record("backups/b/x.lz4", &cut))
                .await
                .unwrap_err();
            assert!(
                matches!(e, FetchError::Decompress(ref m) if m.starts_with("backups/b/x.lz4")),
                "{e}"
            );
        });
    }
}
