//! TLS to PostgreSQL, with libpq's `sslmode` and `sslrootcert`.
//!
//! The `postgres` crate reads `sslmode` as `disable`, `prefer` or
//! `require`, leaves checking the server's certificate to the TLS
//! connector, and refuses `verify-ca`, `verify-full` and `sslrootcert`. So
//! those two parameters are taken out of the URL here and turned into a
//! rustls connector that means what libpq means by them:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (the default) | when the server offers it | not checked |
//! | `require` | always | not checked; with `sslrootcert`, as `verify-ca` |
//! | `verify-ca` | always | signed by `sslrootcert` (or a Mozilla root) |
//! | `verify-full` | always | that, and issued for the host connected to |
//!
//! Only `verify-full` stops a man in the middle; `prefer` and `require`
//! only keep the traffic from being read on the way.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use postgres::config::SslMode;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verify {
    /// Nothing: TLS only against eavesdropping (`prefer`, `require`).
    Nothing,
    /// The chain up to a trusted root, not the name (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    Full,
}

/// The TLS settings of a store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    /// For the `postgres` crate: whether TLS is tried, or required.
    pub(crate) mode: SslMode,
    pub(crate) verify: Verify,
    /// The roots to trust (PEM), instead of the Mozilla roots.
    pub(crate) root: Option<PathBuf>,
}

impl Default for TlsSettings {
    /// libpq's default: TLS when the server offers it, unchecked.
    fn default() -> TlsSettings {
        TlsSettings {
            mode: SslMode::Prefer,
            verify: Verify::Nothing,
            root: None,
        }
    }
}

impl TlsSettings {
    /// The settings of `sslmode` and `sslrootcert` (either may be absent),
    /// or what is wrong with them.
    pub(crate) fn from_params(
        sslmode: Option<&str>,
        sslrootcert: Option<&str>,
    ) -> Result<TlsSettings, String> {
        let root = sslrootcert.map(PathBuf::from);
        let (mode, verify) = match sslmode.unwrap_or("prefer") {
            "disable" => (SslMode::Disable, Verify::Nothing),
            "prefer" => (SslMode::Prefer, Verify::Nothing),
            // As libpq: a root certificate given makes `require` check
            // the chain.
            "require" if root.is_some() => (SslMode::Require, Verify::Chain),
            "require" => (SslMode::Require, Verify::Nothing),
            "verify-ca" => (SslMode::Require, Verify::Chain),
            "verify-full" => (SslMode::Require, Verify::Full),
            "allow" => {
                return Err(
                    "sslmode `allow` (plaintext first) is not supported: use `prefer`".to_owned(),
                );
            }
            other => {
                return Err(format!(
                    "unknown sslmode `{other}`: use disable, prefer, require, verify-ca or verify-full"
                ));
            }
        };
        if let Some(root) = &root {
            if mode == SslMode::Disable {
                return Err("sslrootcert is given but sslmode is `disable`".to_owned());
            }
            roots(Some(root))?;
        }
        Ok(TlsSettings { mode, verify, root })
    }

    /// The connector for these settings: certificates read now, so a
    /// broken `sslrootcert` shows at start, not at a reconnection.
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let config = match self.verify {
            Verify::Nothing => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unchecked(
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth(),
            Verify::Chain => {
                let webpki = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(self.root.as_deref())?),
                    provider,
                )
                .build()
                .map_err(|e| format!("TLS: {e}"))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(webpki)))
                    .with_no_client_auth()
            }
            Verify::Full => builder
                .with_root_certificates(roots(self.root.as_deref())?)
                .with_no_client_auth(),
        };
        Ok(MakeRustlsConnect::new(config))
    }
}

/// The certificates of the PEM file `path`, or the Mozilla roots.
fn roots(path: Option<&Path>) -> Result<RootCertStore, String> {
    let Some(path) = path else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let bad = |e: &dyn std::fmt::Display| format!("sslrootcert {}: {e}", path.display());
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        store.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if store.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    Ok(store)
}

/// Takes any certificate (`prefer`, `require`), but still checks that the
/// server holds its key: the handshake's signatures are verified.
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Checks the chain and not the name (`verify-ca`). The web PKI verifier
/// checks the name last, once the chain is good: a name error means the
/// chain passed.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_means_what_libpq_means() {
        let settings = |mode: Option<&str>| TlsSettings::from_params(mode, None).unwrap();
        assert_eq!(settings(None), TlsSettings::default());
        assert_eq!(settings(Some("disable")).mode, SslMode::Disable);
        let require = settings(Some("require"));
        assert_eq!(
            (require.mode, require.verify),
            (SslMode::Require, Verify::Nothing)
        );
        let ca = settings(Some("verify-ca"));
        assert_eq!((ca.mode, ca.verify), (SslMode::Require, Verify::Chain));
        let full = settings(Some("verify-full"));
        assert_eq!((full.mode, full.verify), (SslMode::Require, Verify::Full));
    }

    #[test]
    fn a_bad_sslmode_or_sslrootcert_is_refused_with_the_reason() {
        let err = TlsSettings::from_params(Some("verify_full"), None).unwrap_err();
        assert!(err.contains("unknown sslmode `verify_full`"), "{err}");
        let err = TlsSettings::from_params(Some("allow"), None).unwrap_err();
        assert!(err.contains("`allow`"), "{err}");
        let err =
            TlsSettings::from_params(Some("verify-full"), Some("/no/such/ca.pem")).unwrap_err();
        assert!(err.contains("sslrootcert /no/such/ca.pem"), "{err}");
        let err = TlsSettings::from_params(Some("disable"), Some("/no/such/ca.pem")).unwrap_err();
        assert!(err.contains("`disable`"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsSettings::from_params(Some("verify-ca"), empty.to_str()).unwrap_err();
        assert!(err.contains("no certificate"), "{err}");
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let settings = TlsSettings::from_params(Some("require"), ca.to_str()).unwrap();
        assert_eq!(settings.verify, Verify::Chain);
        assert!(settings.connector().is_ok());
    }
}
