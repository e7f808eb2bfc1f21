//! Which origins the daemon trusts over TLS, and how a refused certificate is told to a client.
//!
//! Every outbound TLS connection (origin fetches, pass-through, pass-through inside an intercepted tunnel)
//! verifies the origin's certificate against the system's roots (or `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus
//! the optional bundle of `upstream.ca_file`. Nothing falls back to plain HTTP or to an unverified
//! connection: a refused certificate fails the request, and the client reads why in one line.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: no PEM certificate in it")]
    Empty { path: PathBuf },
    #[error("{path}: certificate {index} is not usable as a root: {reason}")]
    BadCertificate { path: PathBuf, index: usize, reason: String },
    #[error("no root certificates: the system has none (see SSL_CERT_FILE) and no upstream.ca_file is set")]
    NoRoots,
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The TLS client settings every outbound client shares: the system's roots, plus the certificates of
/// `extra` (a PEM bundle) when given.
pub fn client_tls(extra: Option<&Path>) -> Result<Arc<ClientConfig>, TrustError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(errors = ?native.errors, "some system root certificates could not be loaded");
    }
    // A system root rustls cannot parse is skipped, as hyper-rustls's own loader does.
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra {
        for (index, cert) in bundle(path)?.into_iter().enumerate() {
            let bad = |reason: String| TrustError::BadCertificate { path: path.to_owned(), index, reason };
            roots.add(cert).map_err(|e| bad(e.to_string()))?;
        }
    }
    if roots.is_empty() {
        return Err(TrustError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The certificates of a PEM file (other PEM sections, such as keys, are skipped).
pub fn bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let pem = std::fs::read(path).map_err(|source| TrustError::Read { path: path.to_owned(), source })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .enumerate()
        .map(|(index, c)| {
            c.map_err(|e| TrustError::BadCertificate { path: path.to_owned(), index, reason: e.to_string() })
        })
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(TrustError::Empty { path: path.to_owned() });
    }
    Ok(certs)
}

/// Why TLS to an origin failed, as the client is told (a 502's one line).
#[derive(Clone, Debug, thiserror::Error)]
pub enum TlsRefusal {
    /// The origin's certificate does not verify (unknown issuer, wrong name, expired...).
    #[error("upstream certificate for {host} not trusted: {error}")]
    Untrusted { host: String, error: rustls::Error },
    /// Any other handshake failure (no common protocol version or cipher, an alert from the origin).
    #[error("TLS handshake with upstream {host} failed: {error}")]
    Handshake { host: String, error: rustls::Error },
}

/// The TLS failure somewhere in an error's chain (hyper wraps the connector's error, which wraps
/// tokio-rustls's `io::Error`, which holds the rustls error), told for `host`.
pub fn tls_refusal_in(host: &str, e: &(dyn std::error::Error + 'static)) -> Option<TlsRefusal> {
    let mut cur = Some(e);
    // Bounded by the error chain's length.
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            let (host, error) = (host.to_owned(), t.clone());
            return Some(match t {
                rustls::Error::InvalidCertificate(_) => TlsRefusal::Untrusted { host, error },
                _ => TlsRefusal::Handshake { host, error },
            });
        }
        // An io::Error's `source()` skips the error it wraps: look at that one itself.
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rustls_error_is_found_through_nested_io_errors() {
        let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, cert);
        let outer = std::io::Error::other(inner);
        let r = tls_refusal_in("o.test", &outer).expect("found");
        assert!(matches!(r, TlsRefusal::Untrusted { .. }));
        assert_eq!(
            r.to_string(),
            "upstream certificate for o.test not trusted: invalid peer certificate: UnknownIssuer"
        );
        let other = std::io::Error::other("connection reset");
        assert!(tls_refusal_in("o.test", &other).is_none());
        let alert = std::io::Error::other(rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure));
        assert!(matches!(tls_refusal_in("o.test", &alert), Some(TlsRefusal::Handshake { .. })));
    }

    #[test]
    fn an_extra_bundle_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        assert!(matches!(client_tls(Some(&empty)), Err(TrustError::Empty { .. })));
        let missing = dir.path().join("missing.pem");
        assert!(matches!(client_tls(Some(&missing)), Err(TrustError::Read { .. })));
    }
}
