//! AWS KMS as a key-encryption key (`--kms-key-id KEY`, behind the cargo feature `kms`): the
//! [`RemoteKek`] that wraps and unwraps the repo's data keys by calling KMS. pitr never sees
//! the KMS key; a key object of kind 3 (`docs/repo-format.md`) holds the KMS ciphertext.
//!
//! # Configuration
//!
//! - `KEY`: a key id, a key ARN, an alias (`alias/name`) or an alias ARN. It is resolved
//!   once, with `DescribeKey`, to the key's ARN: the KEK id (in `pitr.json` and the key
//!   objects' names) derives from that ARN, so the same key given as an alias, an id or an
//!   ARN is the same KEK. An alias pointed at another key is another KEK.
//! - Credentials and region come from the standard AWS chain (`AWS_ACCESS_KEY_ID` /
//!   `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, `AWS_PROFILE`, web identity, ECS and
//!   EC2 metadata; `AWS_REGION`). A key ARN names its region, which is then used.
//! - The endpoint: `AWS_ENDPOINT_URL_KMS`, else `AWS_ENDPOINT_URL` (aws-config's
//!   service-specific endpoints), else the region's KMS.
//!
//! # The calls, and the permissions they need
//!
//! - Start: `DescribeKey` (`kms:DescribeKey`): the key exists in that region, is enabled,
//!   and is a symmetric (`SYMMETRIC_DEFAULT`) `ENCRYPT_DECRYPT` key; else one line naming
//!   what to change.
//! - Wrap, once per process that writes: `Encrypt` (`kms:Encrypt`) of its data key with the
//!   encryption context `{"pitr-data-key": <dk id>}`.
//! - Unwrap, once per data key a process opens: `Decrypt` (`kms:Decrypt`) with that key id
//!   and the same context, so a key object's ciphertext opens only as the data key its name
//!   says; the plaintext must be 32 bytes.
//!
//! Errors are classified: timeouts, network failures, throttling and KMS's own 5xx are
//! [`CryptError::Unavailable`] (a transient storage error, retried by the retrying store);
//! a missing, disabled or wrong key, denied access and bad credentials are permanent, with
//! the permission or setting to fix. Neither data keys nor KMS plaintexts ever reach an
//! error or a log line (the SDK redacts them in its `Debug` output too).

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::timeout::TimeoutConfig;
use aws_sdk_kms::config::{BehaviorVersion, Region};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyState, KeyUsageType};

use super::crypt::{CryptError, RemoteKek};
use super::store::BoxFut;

/// The encryption context key; its value is the data key's id (16 hex digits).
pub const CONTEXT_KEY: &str = "pitr-data-key";

/// Where KMS is and who calls it, instead of the AWS chain's (for embedding and tests,
/// which must not depend on the process environment). Default: everything from the chain.
#[derive(Debug, Clone, Default)]
pub struct KmsOptions {
    /// The endpoint URL (else `AWS_ENDPOINT_URL_KMS`, `AWS_ENDPOINT_URL`, the region's).
    pub endpoint: Option<String>,
    /// The region (else the key ARN's, else `AWS_REGION` and the chain's).
    pub region: Option<String>,
    /// Static credentials (access key, secret) instead of the chain's.
    pub keys: Option<(String, String)>,
}

/// The KMS call being made, for messages.
#[derive(Debug, Clone, Copy)]
enum Call {
    DescribeKey,
    Encrypt,
    Decrypt,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::DescribeKey => "DescribeKey",
            Call::Encrypt => "Encrypt",
            Call::Decrypt => "Decrypt",
        }
    }
}

/// A checked KMS key.
struct KmsKek {
    /// As the user gave it.
    given: String,
    /// Its ARN (the KEK's name).
    arn: String,
    region: String,
    endpoint: Option<String>,
    conf: aws_sdk_kms::Config,
}

impl std::fmt::Debug for KmsKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KmsKek({})", self.arn)
    }
}

/// `--kms-key-id KEY`: the key, from the AWS chain's configuration, checked with one
/// `DescribeKey` call.
pub async fn open(key: &str) -> Result<Arc<dyn RemoteKek>, CryptError> {
    open_with(key, &KmsOptions::default()).await
}

/// [`open`] with explicit options.
pub async fn open_with(key: &str, opts: &KmsOptions) -> Result<Arc<dyn RemoteKek>, CryptError> {
    let key = key.trim();
    if key.is_empty() {
        return Err(CryptError::BadKey(
            "--kms-key-id needs a value: a KMS key id, key ARN or alias (alias/name)".into(),
        ));
    }
    let (conf, region, endpoint) = config(key, opts).await?;
    let mut kek = KmsKek {
        given: key.to_owned(),
        arn: key.to_owned(),
        region,
        endpoint,
        conf,
    };
    kek.arn = kek.describe().await?;
    tracing::debug!(kms_key = %kek.arn, region = %kek.region, "KMS key checked");
    Ok(Arc::new(kek))
}

/// A KMS client with `opts` (the region from them or the chain), for tooling and tests
/// (creating keys); pitr itself uses [`open`].
pub async fn client(opts: &KmsOptions) -> Result<aws_sdk_kms::Client, CryptError> {
    let (conf, _, _) = config("", opts).await?;
    Ok(aws_sdk_kms::Client::from_conf(conf))
}

/// The region an ARN names (`arn:PARTITION:kms:REGION:ACCOUNT:key/ID` or `...:alias/NAME`).
fn arn_region(key: &str) -> Option<&str> {
    let mut parts = key.split(':');
    (parts.next() == Some("arn")).then_some(())?;
    let _partition = parts.next()?;
    (parts.next() == Some("kms")).then_some(())?;
    parts.next().filter(|r| !r.is_empty())
}

async fn config(
    key: &str,
    opts: &KmsOptions,
) -> Result<(aws_sdk_kms::Config, String, Option<String>), CryptError> {
    let shared = super::aws::load(opts.region.as_deref(), opts.keys.clone()).await;
    let region = opts
        .region
        .clone()
        .or_else(|| arn_region(key).map(str::to_owned))
        .or_else(|| shared.region().map(|r| r.to_string()))
        .ok_or_else(|| {
            CryptError::BadKey(format!(
                "KMS key {key}: no AWS region: set AWS_REGION (or give the key as an ARN, which names its region)"
            ))
        })?;
    let mut b = aws_sdk_kms::config::Builder::from(&shared)
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.clone()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(30))
                .build(),
        )
        // A few quick retries inside the SDK; the retrying store handles longer outages.
        .retry_config(RetryConfig::standard().with_max_attempts(3));
    if let Some(e) = &opts.endpoint {
        b = b.endpoint_url(e);
    }
    let conf = b.build();
    // For messages only (the SDK resolves the same, and a profile's `endpoint_url` too).
    let endpoint = opts
        .endpoint
        .clone()
        .or_else(|| std::env::var("AWS_ENDPOINT_URL_KMS").ok())
        .or_else(|| shared.endpoint_url().map(str::to_owned))
        .filter(|e| !e.is_empty());
    Ok((conf, region, endpoint))
}

impl KmsKek {
    /// A client with its own HTTP connections. Each call makes one: pitr calls KMS a few
    /// times per process, and a client's pooled connections belong to the runtime that
    /// opened them (the key is checked in a short-lived runtime before the command's own).
    fn client(&self) -> aws_sdk_kms::Client {
        aws_sdk_kms::Client::from_conf(
            self.conf
                .to_builder()
                .http_client(super::aws::http_client())
                .build(),
        )
    }

    /// Where, for messages: the region, and the endpoint when one is set.
    fn at(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("region {} at {e}", self.region),
            None => format!("region {}", self.region),
        }
    }

    /// `DescribeKey`: the key's ARN, once it is known to be usable.
    async fn describe(&self) -> Result<String, CryptError> {
        let out = self
            .client()
            .describe_key()
            .key_id(&self.given)
            .send()
            .await
            .map_err(|e| self.error(Call::DescribeKey, e))?;
        let key = &self.given;
        let m = out.key_metadata().ok_or_else(|| {
            CryptError::BadKey(format!(
                "KMS key {key}: DescribeKey returned no key metadata ({})",
                self.at()
            ))
        })?;
        match m.key_state() {
            Some(KeyState::Enabled) | None => {}
            Some(KeyState::Disabled) => {
                return Err(CryptError::BadKey(format!(
                    "KMS key {key}: disabled: enable it (aws kms enable-key --key-id {key}) or pass another key"
                )));
            }
            Some(KeyState::PendingDeletion | KeyState::PendingReplicaDeletion) => {
                return Err(CryptError::BadKey(format!(
                    "KMS key {key}: pending deletion: cancel it (aws kms cancel-key-deletion --key-id {key}) and enable it, or pass another key"
                )));
            }
            Some(s) => {
                return Err(CryptError::BadKey(format!(
                    "KMS key {key}: not usable in state {}: pass an enabled key",
                    s.as_str()
                )));
            }
        }
        if !m.enabled() {
            return Err(CryptError::BadKey(format!(
                "KMS key {key}: disabled: enable it (aws kms enable-key --key-id {key}) or pass another key"
            )));
        }
        if let Some(u) = m.key_usage()
            && *u != KeyUsageType::EncryptDecrypt
        {
            return Err(CryptError::BadKey(format!(
                "KMS key {key}: key usage {}, and pitr needs ENCRYPT_DECRYPT: pass a symmetric encryption key",
                u.as_str()
            )));
        }
        if let Some(s) = m.key_spec()
            && *s != KeySpec::SymmetricDefault
        {
            return Err(CryptError::BadKey(format!(
                "KMS key {key}: key spec {}, and pitr needs a symmetric key (SYMMETRIC_DEFAULT)",
                s.as_str()
            )));
        }
        Ok(m.arn().unwrap_or(key).to_owned())
    }

    /// One line for a failed call, classified.
    fn error<E>(
        &self,
        call: Call,
        e: SdkError<E, aws_sdk_kms::config::http::HttpResponse>,
    ) -> CryptError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let key = &self.given;
        let op = call.name();
        let at = self.at();
        let detail = || aws_sdk_kms::error::DisplayErrorContext(&e).to_string();
        match &e {
            SdkError::TimeoutError(_) => {
                return CryptError::Unavailable(format!("KMS key {key}: {op} timed out ({at})"));
            }
            SdkError::DispatchFailure(d) => {
                let detail = detail();
                return if d.is_io() || d.is_timeout() {
                    CryptError::Unavailable(format!(
                        "KMS key {key}: {op}: cannot reach KMS ({at}): {detail}"
                    ))
                } else if detail.contains("credentials") {
                    CryptError::BadKey(format!(
                        "KMS key {key}: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE ({detail})"
                    ))
                } else {
                    CryptError::Unavailable(format!("KMS key {key}: {op} failed ({at}): {detail}"))
                };
            }
            SdkError::ResponseError(_) => {
                return CryptError::Unavailable(format!(
                    "KMS key {key}: {op}: bad response ({at}): {}",
                    detail()
                ));
            }
            SdkError::ConstructionFailure(_) => {
                return CryptError::BadKey(format!(
                    "KMS key {key}: {op}: bad request: {}",
                    detail()
                ));
            }
            _ => {}
        }
        let status = e.raw_response().map_or(0, |r| r.status().as_u16());
        let code = e.code().unwrap_or("");
        let msg = e.message().unwrap_or("");
        let what = if msg.is_empty() {
            format!("HTTP {status} {code}")
        } else {
            format!("HTTP {status} {code}: {msg}")
        };
        match code {
            "NotFoundException" => CryptError::BadKey(format!(
                "KMS key {key}: not found in {at}: check the key id, alias or ARN and AWS_REGION"
            )),
            "DisabledException" => CryptError::BadKey(format!(
                "KMS key {key}: disabled: enable it (aws kms enable-key --key-id {key}) or pass another key"
            )),
            "KMSInvalidStateException" => CryptError::BadKey(format!(
                "KMS key {key}: not usable in its state (pending deletion or import?): {what}"
            )),
            "AccessDeniedException" | "AccessDenied" => CryptError::BadKey(format!(
                "KMS key {key}: access denied: the caller needs kms:{op} on the key (IAM policy or key policy) ({what})"
            )),
            "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "InvalidClientTokenId"
            | "ExpiredTokenException"
            | "ExpiredToken" => CryptError::BadKey(format!(
                "KMS key {key}: KMS rejected the AWS credentials ({what}): check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )),
            "InvalidKeyUsageException" => CryptError::BadKey(format!(
                "KMS key {key}: not a symmetric ENCRYPT_DECRYPT key ({what})"
            )),
            // The ciphertext is not for this key, or for another encryption context (another
            // data key's key object under this one's name), or was altered.
            "InvalidCiphertextException" | "IncorrectKeyException" => CryptError::Tampered(
                "key object: KMS does not open it with this key and data key id",
            ),
            "ThrottlingException"
            | "LimitExceededException"
            | "KMSInternalException"
            | "DependencyTimeoutException"
            | "KeyUnavailableException" => CryptError::Unavailable(format!(
                "KMS key {key}: {op}: KMS is unavailable or throttling ({what})"
            )),
            _ if status == 429 || status >= 500 => {
                CryptError::Unavailable(format!("KMS key {key}: {op}: KMS is unavailable ({what})"))
            }
            _ if status == 403 => CryptError::BadKey(format!(
                "KMS key {key}: access denied: the caller needs kms:{op} on the key ({what})"
            )),
            _ => CryptError::BadKey(format!("KMS key {key}: {op} refused ({at}): {what}")),
        }
    }
}

impl RemoteKek for KmsKek {
    fn name(&self) -> &str {
        &self.arn
    }

    fn wrap<'a>(
        &'a self,
        dk_id: &'a str,
        dk: &'a [u8; 32],
    ) -> BoxFut<'a, Result<Vec<u8>, CryptError>> {
        Box::pin(async move {
            let out = self
                .client()
                .encrypt()
                .key_id(&self.arn)
                .plaintext(Blob::new(dk.to_vec()))
                .encryption_context(CONTEXT_KEY, dk_id)
                .send()
                .await
                .map_err(|e| self.error(Call::Encrypt, e))?;
            match out.ciphertext_blob {
                Some(b) if !b.as_ref().is_empty() => Ok(b.into_inner()),
                _ => Err(CryptError::Unavailable(format!(
                    "KMS key {}: Encrypt returned no ciphertext ({})",
                    self.given,
                    self.at()
                ))),
            }
        })
    }

    fn unwrap<'a>(
        &'a self,
        dk_id: &'a str,
        blob: &'a [u8],
    ) -> BoxFut<'a, Result<[u8; 32], CryptError>> {
        Box::pin(async move {
            if blob.is_empty() {
                return Err(CryptError::Tampered("key object: no KMS ciphertext"));
            }
            let out = self
                .client()
                .decrypt()
                .key_id(&self.arn)
                .ciphertext_blob(Blob::new(blob.to_vec()))
                .encryption_context(CONTEXT_KEY, dk_id)
                .send()
                .await
                .map_err(|e| self.error(Call::Decrypt, e))?;
            let plain = out.plaintext.ok_or(CryptError::Tampered(
                "key object: KMS returned no plaintext",
            ))?;
            <[u8; 32]>::try_from(plain.as_ref()).map_err(|_| {
                CryptError::Tampered("key object: KMS plaintext is not a data key (32 bytes)")
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::arn_region;

    #[test]
    fn an_arn_names_its_region_and_nothing_else_does() {
        assert_eq!(
            arn_region(
                "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
            ),
            Some("eu-west-1")
        );
        assert_eq!(
            arn_region("arn:aws-cn:kms:cn-north-1:111122223333:alias/pitr"),
            Some("cn-north-1")
        );
        assert_eq!(arn_region("alias/pitr"), None);
        assert_eq!(arn_region("1234abcd-12ab-34cd-56ef-1234567890ab"), None);
        assert_eq!(arn_region("arn:aws:s3:::bucket"), None);
        assert_eq!(arn_region("arn:aws:kms::111122223333:key/x"), None);
    }
}
