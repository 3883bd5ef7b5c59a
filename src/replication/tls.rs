//! TLS for PostgreSQL connections, libpq-style: an SSLRequest, then a rustls handshake.
//!
//! | sslmode | TLS | server certificate checked |
//! |---|---|---|
//! | disable | never | - |
//! | prefer | if the server accepts | no |
//! | require | yes, or fail | no, unless `sslrootcert` is given (then as verify-ca, like libpq) |
//! | verify-ca | yes, or fail | chain to `sslrootcert` |
//! | verify-full | yes, or fail | chain to `sslrootcert`, and the host name |
//!
//! `sslrootcert=system` uses the operating system's roots. Exactly one byte is read after
//! the SSLRequest before the handshake starts (CVE-2021-23222).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::conn::Stream;
use super::conninfo::{ConnParams, SslMode};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any certificate (prefer/require without a root certificate, as libpq does).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Checks the chain but not the name (verify-ca).
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end: &CertificateDer<'_>,
        inter: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self.0.verify_server_cert(end, inter, name, ocsp, now) {
            Err(TlsError::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(TlsError::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn roots(params: &ConnParams) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let path = params.sslrootcert.as_ref().ok_or_else(|| {
        format!(
            "sslmode={} needs a root certificate: set sslrootcert=/path/to/root.crt (or sslrootcert=system), or put one in ~/.postgresql/root.crt",
            params.sslmode.as_str()
        )
    })?;
    if path.as_os_str() == "system" {
        let certs = rustls_native_certs::load_native_certs();
        for c in certs.certs {
            let _ = store.add(c);
        }
        if store.is_empty() {
            return Err("sslrootcert=system: no system root certificates found".into());
        }
        return Ok(store);
    }
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    for c in certs {
        store
            .add(c)
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    }
    if store.is_empty() {
        return Err(format!(
            "sslrootcert {} holds no certificate",
            path.display()
        ));
    }
    Ok(store)
}

fn config(params: &ConnParams) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verify = match params.sslmode {
        SslMode::VerifyFull | SslMode::VerifyCa => true,
        SslMode::Require => params.sslrootcert.is_some(),
        SslMode::Prefer | SslMode::Disable => false,
    };
    let cfg = if !verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    } else {
        let roots = Arc::new(roots(params)?);
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| e.to_string())?;
        if params.sslmode == SslMode::VerifyFull {
            builder.with_webpki_verifier(webpki).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                .with_no_client_auth()
        }
    };
    Ok(cfg)
}

/// Sends SSLRequest and, if the server agrees, runs the handshake. Returns the stream and
/// whether it is encrypted.
pub(crate) async fn negotiate(
    mut tcp: TcpStream,
    host: &str,
    params: &ConnParams,
) -> Result<(Stream, bool), String> {
    let cfg = config(params)?;
    let mut req = bytes::BytesMut::new();
    postgres_protocol::message::frontend::ssl_request(&mut req);
    tcp.write_all(&req).await.map_err(|e| e.to_string())?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| format!("reading the answer to SSLRequest: {e}"))?;
    match answer[0] {
        b'S' => {}
        b'N' if params.sslmode == SslMode::Prefer => return Ok((Stream::Tcp(tcp), false)),
        b'N' => {
            return Err(format!(
                "the server does not support TLS, but sslmode={} requires it",
                params.sslmode.as_str()
            ));
        }
        _ => return Err("the server answered SSLRequest with an error".into()),
    }
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("invalid server name {host:?}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    Ok((Stream::Tls(Box::new(tls)), true))
}

/// The `tls-server-end-point` channel-binding value (RFC 5929): a hash of the server's
/// certificate with its signature's hash algorithm (SHA-256 for MD5 and SHA-1). `None` when
/// the algorithm has no defined binding (e.g. Ed25519): SCRAM then runs without binding.
pub(crate) fn server_end_point(s: &tokio_rustls::client::TlsStream<TcpStream>) -> Option<Vec<u8>> {
    let (_, conn) = s.get_ref();
    let cert = conn.peer_certificates()?.first()?;
    let alg = match signature_oid(cert.as_ref())? {
        // md5WithRSA, sha1WithRSA, sha256WithRSA, ecdsa-with-SHA1, ecdsa-with-SHA256, RSASSA-PSS (assume SHA-256)
        o if o == OID_MD5_RSA
            || o == OID_SHA1_RSA
            || o == OID_SHA256_RSA
            || o == OID_ECDSA_SHA1
            || o == OID_ECDSA_SHA256 =>
        {
            &ring::digest::SHA256
        }
        o if o == OID_SHA384_RSA || o == OID_ECDSA_SHA384 => &ring::digest::SHA384,
        o if o == OID_SHA512_RSA || o == OID_ECDSA_SHA512 => &ring::digest::SHA512,
        _ => return None,
    };
    Some(ring::digest::digest(alg, cert.as_ref()).as_ref().to_vec())
}

const OID_MD5_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x04];
const OID_SHA1_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x05];
const OID_SHA256_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0B];
const OID_SHA384_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0C];
const OID_SHA512_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x0D];
const OID_ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01];
const OID_ECDSA_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
const OID_ECDSA_SHA384: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03];
const OID_ECDSA_SHA512: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x04];

/// One DER TLV at the start of `b`: (tag, content, rest).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, hdr) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut l = 0usize;
        for i in 0..n {
            l = (l << 8) | *b.get(2 + i)? as usize;
        }
        (l, 2 + n)
    };
    let content = b.get(hdr..hdr.checked_add(len)?)?;
    Some((tag, content, &b[hdr + len..]))
}

/// The OID of a certificate's `signatureAlgorithm`.
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = der(cert)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der(body)? else {
        return None;
    };
    let (0x30, alg, _) = der(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der(alg)? else {
        return None;
    };
    Some(oid)
}
