//! What the AWS clients (S3 in [`super::s3`], KMS in `super::kms` behind the `kms` feature)
//! share: one HTTP client setup (rustls with ring, no native-tls, no aws-lc) and the
//! configuration from the standard AWS chain (credentials, region, `AWS_ENDPOINT_URL` and
//! the per-service `AWS_ENDPOINT_URL_<SERVICE>`).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::{Credentials, SharedHttpClient};
use aws_smithy_http_client::tls;

/// A new HTTPS (and HTTP) client: rustls with ring, hyper's connection pool. A client's
/// pooled connections belong to the tokio runtime that opened them.
pub(crate) fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// The shared configuration from the AWS chain, with `region` (when given) instead of the
/// chain's, and static `keys` (access key, secret) instead of the chain's credentials (for
/// embedding and tests, which must not depend on the process environment).
pub(crate) async fn load(region: Option<&str>, keys: Option<(String, String)>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http_client());
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_owned()));
    }
    if let Some((ak, sk)) = keys {
        loader = loader.credentials_provider(Credentials::new(ak, sk, None, None, "pitr"));
    }
    loader.load().await
}
