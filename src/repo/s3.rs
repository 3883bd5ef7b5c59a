//! The S3 backend (`--repo s3://bucket/prefix`), for AWS S3 and S3-compatible servers.
//!
//! # Configuration
//!
//! - Credentials and region come from the standard AWS chain: `AWS_ACCESS_KEY_ID` /
//!   `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, `AWS_PROFILE` and the shared config files,
//!   web identity (EKS), ECS and EC2 instance metadata. Without a region, `us-east-1`.
//! - The endpoint: `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`), or `endpoint=` in the repo
//!   URL. Path-style addressing is used when an endpoint is set (what MinIO, Ceph, s3s and
//!   moto expect) unless `path_style=false`; `path_style=true` forces it for AWS.
//!   Example: `s3://backups/prod?endpoint=http://minio:9000&region=eu-west-1`.
//!
//! # How the store contract is met
//!
//! - Create-if-absent: `PutObject` (or `CompleteMultipartUpload`) with `If-None-Match: *`.
//!   The server answers 412 when the key exists; we then read the object and compare: equal
//!   bytes mean a retried upload whose first attempt landed (`AlreadyIdentical`), different
//!   bytes are a [`StoreErrorKind::Conflict`]. An object is never overwritten.
//! - Integrity: every upload carries its CRC-32C (`x-amz-checksum-crc32c`), computed here, so
//!   the server rejects corrupted bodies. SDK-default checksums (aws-chunked trailers) are
//!   off, because several S3-compatible servers reject them.
//! - Objects larger than [`MULTIPART_PART`] go up as a multipart upload of parts of that
//!   size, each with its CRC-32C; a failed multipart upload is aborted.
//! - Timeouts: 5 s to connect, 120 s per attempt, so a hung server becomes a transient error
//!   instead of a stall. Errors are classified: network failures, timeouts, 5xx, 429 and 409
//!   are transient; credentials, permissions and missing buckets are permanent, with a hint.

use std::time::Duration;

use aws_sdk_s3::config::Region;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::store::{
    BoxFut, ObjectMeta, ObjectStore, PutOutcome, StoreError, StoreErrorKind, validate_key,
};

/// Part size of multipart uploads; smaller objects are one `PutObject`.
pub(crate) const MULTIPART_PART: usize = 8 << 20;

/// Where an S3 repo is, parsed from `s3://bucket/prefix?options`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket.
    pub bucket: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// `endpoint=` from the URL.
    pub endpoint: Option<String>,
    /// `region=` from the URL.
    pub region: Option<String>,
    /// `path_style=` from the URL.
    pub path_style: Option<bool>,
}

impl S3Location {
    /// Parses what follows `s3://`.
    pub fn parse(rest: &str) -> Result<S3Location, String> {
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !bucket_ok {
            return Err(format!(
                "bad bucket name {bucket:?}: 3-63 characters of a-z, 0-9, '-' and '.', like s3://my-backups/prod"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if !prefix.is_empty() && validate_key(prefix).is_err() {
            return Err(format!(
                "bad prefix {prefix:?}: use printable characters separated by '/', without '..'"
            ));
        }
        let mut loc = S3Location {
            bucket: bucket.into(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            endpoint: None,
            region: None,
            path_style: None,
        };
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "endpoint" => {
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(format!("endpoint={v:?} must be an http:// or https:// URL"));
                    }
                    loc.endpoint = Some(v.into());
                }
                "region" if !v.is_empty() => loc.region = Some(v.into()),
                "path_style" => {
                    loc.path_style = Some(match v {
                        "true" | "1" | "yes" | "" => true,
                        "false" | "0" | "no" => false,
                        _ => return Err(format!("path_style={v:?}: use true or false")),
                    })
                }
                _ => {
                    return Err(format!(
                        "unknown option {k:?}: the options are endpoint=, region= and path_style="
                    ));
                }
            }
        }
        Ok(loc)
    }
}

/// A repo in an S3 bucket.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    loc: S3Location,
    describe: String,
}

impl S3Store {
    /// Builds a client from the AWS environment plus the URL's options. Does not contact
    /// the server; see [`S3Store::check`].
    pub(crate) async fn open(loc: S3Location) -> S3Store {
        S3Store::open_with(loc, None).await
    }

    /// [`S3Store::open`] with explicit static credentials (access key, secret) instead of the
    /// AWS chain; for embedding and tests, which must not depend on the process environment.
    pub async fn open_with(loc: S3Location, keys: Option<(String, String)>) -> S3Store {
        let shared = super::aws::load(loc.region.as_deref(), keys).await;
        let mut b = aws_sdk_s3::config::Builder::from(&shared)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            )
            // A few quick retries inside the SDK; the retrying store (`repo::retrying`,
            // backoff capped at 10-30 s) handles longer outages.
            .retry_config(RetryConfig::standard().with_max_attempts(3));
        if shared.region().is_none() || loc.region.is_some() {
            b = b.region(Region::new(
                loc.region.clone().unwrap_or_else(|| "us-east-1".into()),
            ));
        }
        if let Some(e) = &loc.endpoint {
            b = b.endpoint_url(e);
        }
        let custom_endpoint = loc.endpoint.is_some() || shared.endpoint_url().is_some();
        b = b.force_path_style(loc.path_style.unwrap_or(custom_endpoint));
        let endpoint = loc
            .endpoint
            .clone()
            .or_else(|| shared.endpoint_url().map(str::to_owned));
        let describe = match endpoint {
            Some(e) => format!("s3://{}/{} at {e}", loc.bucket, loc.prefix),
            None => format!("s3://{}/{}", loc.bucket, loc.prefix),
        };
        S3Store {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            loc,
            describe,
        }
    }

    /// One cheap request that proves the bucket is reachable with these credentials.
    pub async fn check(&self) -> Result<(), StoreError> {
        self.client
            .list_objects_v2()
            .bucket(&self.loc.bucket)
            .prefix(&self.loc.prefix)
            .max_keys(1)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.error("list", "", e))
    }

    fn full(&self, key: &str) -> Result<String, StoreError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.loc.prefix))
    }

    fn error<E, R>(&self, op: &'static str, key: &str, e: SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
        R: std::fmt::Debug + HasStatus + Send + Sync + 'static,
    {
        let (kind, message) = classify(&e, &self.loc.bucket);
        StoreError::new(kind, op, &format!("{}{key}", self.loc.prefix), message)
            .with_source(SdkCause(Box::new(e)))
    }

    async fn put(&self, key: &str, data: Bytes) -> Result<PutOutcome, StoreError> {
        let full = self.full(key)?;
        let created = if data.len() > MULTIPART_PART {
            self.put_multipart(key, &full, &data).await?
        } else {
            let r = self
                .client
                .put_object()
                .bucket(&self.loc.bucket)
                .key(&full)
                .if_none_match("*")
                .checksum_crc32_c(crc32c_b64(&data))
                .body(ByteStream::from(data.clone()))
                .send()
                .await;
            match r {
                Ok(_) => true,
                Err(e) if exists_status(&e) => false,
                Err(e) => return Err(self.error("put", key, e)),
            }
        };
        if created {
            return Ok(PutOutcome::Created);
        }
        // The key exists: ours from an earlier attempt, or someone else's bytes.
        match self.get_full(key, &full).await? {
            Some(have) if have == data => Ok(PutOutcome::AlreadyIdentical),
            Some(_) => Err(StoreError::new(
                StoreErrorKind::Conflict,
                "put",
                &full,
                "exists with different content (never overwritten)",
            )),
            None => Err(StoreError::new(
                StoreErrorKind::Transient,
                "put",
                &full,
                "precondition failed but the object is gone; retrying",
            )),
        }
    }

    /// Returns whether the object was created (false: it already existed).
    async fn put_multipart(&self, key: &str, full: &str, data: &Bytes) -> Result<bool, StoreError> {
        let up = self
            .client
            .create_multipart_upload()
            .bucket(&self.loc.bucket)
            .key(full)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C)
            .send()
            .await
            .map_err(|e| self.error("put", key, e))?;
        let Some(id) = up.upload_id().map(str::to_owned) else {
            return Err(StoreError::new(
                StoreErrorKind::Transient,
                "put",
                full,
                "CreateMultipartUpload returned no upload id",
            ));
        };
        let res = self.upload_parts(key, full, &id, data).await;
        match res {
            Ok(created) => Ok(created),
            Err(e) => {
                self.abort(full, &id).await;
                Err(e)
            }
        }
    }

    /// Best effort: an abandoned upload only costs storage until a lifecycle rule
    /// (AbortIncompleteMultipartUpload) removes it.
    async fn abort(&self, full: &str, id: &str) {
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(&self.loc.bucket)
            .key(full)
            .upload_id(id)
            .send()
            .await;
    }

    async fn upload_parts(
        &self,
        key: &str,
        full: &str,
        id: &str,
        data: &Bytes,
    ) -> Result<bool, StoreError> {
        let mut parts = Vec::new();
        for (i, start) in (0..data.len()).step_by(MULTIPART_PART).enumerate() {
            let n = i32::try_from(i + 1).unwrap_or(i32::MAX);
            let chunk = data.slice(start..(start + MULTIPART_PART).min(data.len()));
            let r = self
                .client
                .upload_part()
                .bucket(&self.loc.bucket)
                .key(full)
                .upload_id(id)
                .part_number(n)
                .checksum_crc32_c(crc32c_b64(&chunk))
                .body(ByteStream::from(chunk))
                .send()
                .await
                .map_err(|e| self.error("put", key, e))?;
            parts.push(
                CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(r.e_tag().map(str::to_owned))
                    .set_checksum_crc32_c(r.checksum_crc32_c().map(str::to_owned))
                    .build(),
            );
        }
        let r = self
            .client
            .complete_multipart_upload()
            .bucket(&self.loc.bucket)
            .key(full)
            .upload_id(id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if exists_status(&e) => {
                self.abort(full, id).await;
                Ok(false)
            }
            Err(e) => Err(self.error("put", key, e)),
        }
    }

    async fn get_full(&self, key: &str, full: &str) -> Result<Option<Bytes>, StoreError> {
        let r = self
            .client
            .get_object()
            .bucket(&self.loc.bucket)
            .key(full)
            .send()
            .await;
        let out = match r {
            Ok(o) => o,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) if status_of(&e) == Some(404) && e.code() != Some("NoSuchBucket") => {
                return Ok(None);
            }
            Err(e) => return Err(self.error("get", key, e)),
        };
        let body = out.body.collect().await.map_err(|e| {
            StoreError::new(
                StoreErrorKind::Transient,
                "get",
                full,
                format!("reading the body: {e}"),
            )
            .with_source(e)
        })?;
        Ok(Some(body.into_bytes()))
    }

    async fn list_all(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        let full = format!("{}{prefix}", self.loc.prefix);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let r = self
                .client
                .list_objects_v2()
                .bucket(&self.loc.bucket)
                .prefix(&full)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.error("list", prefix, e))?;
            for o in r.contents() {
                let Some(k) = o.key().and_then(|k| k.strip_prefix(&self.loc.prefix)) else {
                    continue;
                };
                out.push(ObjectMeta {
                    key: k.to_owned(),
                    size: u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
                });
            }
            match (r.is_truncated(), r.next_continuation_token()) {
                (Some(true), Some(t)) => token = Some(t.to_owned()),
                (Some(true), None) => {
                    return Err(StoreError::new(
                        StoreErrorKind::Transient,
                        "list",
                        &full,
                        "truncated listing without a continuation token",
                    ));
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

impl ObjectStore for S3Store {
    fn put_if_absent<'a>(
        &'a self,
        key: &'a str,
        data: Bytes,
    ) -> BoxFut<'a, Result<PutOutcome, StoreError>> {
        Box::pin(self.put(key, data))
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move {
            let full = self.full(key)?;
            self.get_full(key, &full).await
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFut<'a, Result<Vec<ObjectMeta>, StoreError>> {
        Box::pin(self.list_all(prefix))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let full = self.full(key)?;
            self.client
                .delete_object()
                .bucket(&self.loc.bucket)
                .key(&full)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| self.error("delete", key, e))
        })
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

/// The HTTP status of a raw response, whatever its type.
pub(crate) trait HasStatus {
    /// The status code.
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn status_of<E, R: HasStatus>(e: &SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(HasStatus::status_code)
}

/// 412 (or 304 on some servers): the object already exists.
fn exists_status<E, R: HasStatus>(e: &SdkError<E, R>) -> bool {
    matches!(status_of(e), Some(412 | 304))
}

/// The SDK's error behind a [`StoreError`] of this backend, kept as its source (it shows in
/// the error's `Debug` form, with every detail the SDK has). It prints as nothing and ends
/// the printed chain:
/// [`classify`] has already rendered it into the message (its code and text, or the SDK's
/// whole context), and its own text is a bare category ("service error", "timeout error")
/// that would only be appended to a one-line error that already says everything.
#[derive(Debug)]
pub(crate) struct SdkCause(
    #[allow(dead_code)] // read by the derived Debug only, which is its purpose
    Box<dyn std::error::Error + Send + Sync>,
);

impl std::fmt::Display for SdkCause {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        Ok(())
    }
}

impl std::error::Error for SdkCause {}

fn classify<E, R>(e: &SdkError<E, R>, bucket: &str) -> (StoreErrorKind, String)
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus,
{
    use StoreErrorKind::{Permanent, Transient};
    let detail = aws_sdk_s3::error::DisplayErrorContext(e).to_string();
    match e {
        SdkError::TimeoutError(_) => (Transient, "timed out".into()),
        SdkError::DispatchFailure(d) => {
            // Identity (credentials) problems surface here as non-IO dispatch failures.
            if d.is_io() || d.is_timeout() {
                (Transient, format!("cannot reach the server: {detail}"))
            } else if detail.contains("credentials") {
                (
                    Permanent,
                    format!(
                        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE ({detail})"
                    ),
                )
            } else {
                (Transient, format!("request failed: {detail}"))
            }
        }
        SdkError::ResponseError(_) => (Transient, format!("bad response: {detail}")),
        SdkError::ConstructionFailure(_) => (Permanent, format!("bad request: {detail}")),
        _ => {
            let status = status_of(e).unwrap_or(0);
            let code = e.code().unwrap_or("");
            let msg = e.message().unwrap_or("");
            let what = if msg.is_empty() {
                format!("HTTP {status} {code}")
            } else {
                format!("HTTP {status} {code}: {msg}")
            };
            match (status, code) {
                (
                    _,
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "InvalidToken"
                    | "ExpiredToken",
                ) => (
                    Permanent,
                    format!(
                        "S3 rejected the credentials ({what}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
                    ),
                ),
                (_, "NoSuchBucket") => (
                    Permanent,
                    format!("bucket {bucket:?} does not exist ({what}): create it, or fix --repo"),
                ),
                (403, _) | (_, "AccessDenied") => (
                    Permanent,
                    format!(
                        "access denied to bucket {bucket:?} ({what}): the credentials need s3:GetObject, s3:PutObject, s3:ListBucket and s3:DeleteObject"
                    ),
                ),
                (301, _) | (_, "PermanentRedirect" | "AuthorizationHeaderMalformed") => (
                    Permanent,
                    format!(
                        "wrong region for bucket {bucket:?} ({what}): set AWS_REGION or region= in --repo"
                    ),
                ),
                (501, _) | (_, "NotImplemented") => (
                    Permanent,
                    format!(
                        "the S3 server does not support a request pitr needs ({what}): it must support conditional writes (If-None-Match)"
                    ),
                ),
                (_, "RequestTimeTooSkewed") => (
                    Permanent,
                    format!(
                        "this machine's clock is too far from the S3 server's ({what}): fix the clock (NTP)"
                    ),
                ),
                // A body damaged in transit (what the checksum is for), or a multipart upload
                // the server forgot: the whole put is retried.
                (
                    _,
                    "BadDigest" | "XAmzContentChecksumMismatch" | "InvalidDigest" | "NoSuchUpload",
                ) => (Transient, what),
                (408 | 409 | 429, _) | (500..=599, _) | (_, "SlowDown" | "RequestTimeout") => {
                    (Transient, what)
                }
                _ => (Permanent, what),
            }
        }
    }
}

/// Base64 of the big-endian CRC-32C, as `x-amz-checksum-crc32c` wants it.
fn crc32c_b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let c = crc32c::crc32c(data).to_be_bytes();
    let n = u32::from_be_bytes([0, c[0], c[1], c[2]]);
    let mut s = String::with_capacity(8);
    for shift in [18, 12, 6, 0] {
        s.push(T[((n >> shift) & 63) as usize] as char);
    }
    // The 4th byte: one more group of 6+2 bits, then padding.
    let m = u32::from(c[3]) << 16;
    s.push(T[((m >> 18) & 63) as usize] as char);
    s.push(T[((m >> 12) & 63) as usize] as char);
    s.push_str("==");
    s
}
