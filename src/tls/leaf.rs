//! Leaf certificates for intercepted hosts, issued on the fly by the CA, and the TLS server settings that
//! present them.
//!
//! One leaf per host: SAN the host (an IP SAN for an IP literal), valid for a week and backdated an hour
//! (clients with a slightly slow clock accept it), a fresh P-256 key each. The settings are cached per host,
//! bounded: a full cache drops the entry that is due for renewal first, and an entry is renewed a day
//! before its leaf expires, so no client is ever handed a certificate about to lapse.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::ServerConfig;

use super::ca::Ca;
use super::error::TlsError;

/// How long a leaf is valid from its issue.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 86400);
/// How far before its issue a leaf is valid (clock skew between client and daemon).
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// A cached leaf is replaced this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(86400);
/// Hosts whose settings are kept.
pub const DEFAULT_CAPACITY: usize = 1024;

/// The protocols offered inside an intercepted tunnel: HTTP/1.1 only.
const ALPN: &[&[u8]] = &[b"http/1.1"];

/// Issues leaves and caches the server settings presenting them, per host.
pub struct Leaves {
    ca: Arc<Ca>,
    capacity: usize,
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    config: Arc<ServerConfig>,
    renew_at: SystemTime,
}

impl Leaves {
    /// Checks first that `ca`'s key and certificate belong together: a throwaway leaf must verify against
    /// the certificate, as a client would check it (`dir` names the CA in the error).
    pub fn new(ca: Arc<Ca>, capacity: usize, dir: &std::path::Path) -> Result<Leaves, TlsError> {
        // A name no client asks for: only whether its leaf verifies matters.
        let probe = "shoal-ca-check.invalid";
        let now = SystemTime::now();
        let (leaf, _) = issue(&ca, probe, now)?;
        verify(ca.cert(), &leaf, probe, now).map_err(|reason| TlsError::Mismatch { dir: dir.to_owned(), reason })?;
        Ok(Leaves { ca, capacity: capacity.max(1), cache: Mutex::new(HashMap::new()) })
    }

    /// TLS server settings presenting a leaf for `host` (as a CONNECT names it: a name, an IPv4 literal or
    /// a bracketed IPv6 one), issued now unless a fresh one is cached.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        let host = normalize(host);
        let now = SystemTime::now();
        if let Some(c) = self.lock().get(&host).filter(|c| c.renew_at > now) {
            return Ok(c.config.clone());
        }
        // Issued outside the lock: two first requests for one host may both issue, and either leaf works.
        let (cert, key) = issue(&self.ca, &host, now)?;
        let bad = |e: rustls::Error| TlsError::Issue { host: host.clone(), reason: e.to_string() };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(bad)?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(bad)?;
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        let config = Arc::new(config);
        let mut cache = self.lock();
        if cache.len() >= self.capacity && !cache.contains_key(&host) {
            // Bounded by the cache's capacity.
            if let Some(oldest) = cache.iter().min_by_key(|(_, c)| c.renew_at).map(|(h, _)| h.clone()) {
                cache.remove(&oldest);
            }
        }
        let renew_at = now + LEAF_VALIDITY - RENEW_BEFORE;
        cache.insert(host, Cached { config: config.clone(), renew_at });
        Ok(config)
    }

    /// Hosts cached now.
    pub fn cached(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A host as a certificate names it: lower case, without IPv6 brackets or a trailing dot.
fn normalize(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase()
}

/// A leaf for `host` (already normalized) signed by `ca`, valid from `now - BACKDATE` for
/// [`LEAF_VALIDITY`], and its private key.
pub fn issue(
    ca: &Ca,
    host: &str,
    now: SystemTime,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let bad = |e: rcgen::Error| TlsError::Issue { host: host.to_owned(), reason: e.to_string() };
    // An IP literal becomes an IP SAN, anything else a DNS name (rcgen decides by parsing).
    let mut p = CertificateParams::new(vec![host.to_owned()]).map_err(bad)?;
    p.distinguished_name.push(DnType::CommonName, host);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    p.use_authority_key_identifier_extension = true;
    p.not_before = (now - BACKDATE).into();
    p.not_after = (now + LEAF_VALIDITY).into();
    let key = KeyPair::generate().map_err(bad)?;
    let cert = p.signed_by(&key, ca.issuer()).map_err(bad)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.der().clone(), key))
}

/// Whether `leaf` verifies for `host` at `now` with `ca` as the only trust anchor, as a rustls client
/// would check it. The reason when not.
pub fn verify(ca: &CertificateDer<'_>, leaf: &CertificateDer<'_>, host: &str, now: SystemTime) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone().into_owned()).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let at = UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    verifier.verify_server_cert(leaf, &[], &name, &[], at).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::ca::init;
    use super::*;

    fn new_ca() -> (tempfile::TempDir, Arc<Ca>) {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        let ca = Ca::load(dir.path()).unwrap();
        (dir, ca)
    }

    #[test]
    fn a_leaf_verifies_for_its_host_only_and_only_while_valid() {
        let (_d, ca) = new_ca();
        let now = SystemTime::now();
        for host in ["lfs-origin.test", "127.0.0.2", "::1"] {
            let (leaf, _) = issue(&ca, host, now).unwrap();
            verify(ca.cert(), &leaf, host, now).unwrap_or_else(|e| panic!("{host}: {e}"));
            assert!(verify(ca.cert(), &leaf, "other.test", now).is_err(), "{host}: the SAN is the host alone");
            let early = now - BACKDATE / 2;
            verify(ca.cert(), &leaf, host, early).unwrap_or_else(|e| panic!("backdated a little: {e}"));
            assert!(verify(ca.cert(), &leaf, host, now + LEAF_VALIDITY + Duration::from_secs(60)).is_err());
        }
        // Another CA's leaf does not verify against this one.
        let (_d2, other) = new_ca();
        let (leaf, _) = issue(&other, "lfs-origin.test", now).unwrap();
        assert!(verify(ca.cert(), &leaf, "lfs-origin.test", now).is_err());
    }

    #[test]
    fn settings_are_cached_per_host_and_the_cache_is_bounded() {
        let (_d, ca) = new_ca();
        let leaves = Leaves::new(ca, 2, Path::new("ca")).unwrap();
        let a = leaves.server_config("A.test").unwrap();
        assert_eq!(a.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(Arc::ptr_eq(&a, &leaves.server_config("a.test.").unwrap()), "one entry per host, any spelling");
        leaves.server_config("[::1]").unwrap();
        leaves.server_config("c.test").unwrap();
        assert_eq!(leaves.cached(), 2);
    }

    #[test]
    fn a_key_of_another_ca_is_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        init(&a, false).unwrap();
        init(&b, false).unwrap();
        std::fs::copy(b.join(super::super::KEY_FILE), a.join(super::super::KEY_FILE)).unwrap();
        let ca = Ca::load(&a).unwrap();
        let e = Leaves::new(ca, 8, &a).err().expect("refused");
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e}");
    }
}
