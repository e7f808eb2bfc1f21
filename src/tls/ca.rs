//! The interception CA on disk: `ca.crt` (PEM, public) and `ca.key` (PEM, mode 0600) in one directory.
//!
//! The key file is created with O_EXCL and mode 0600 in one step, so it is never readable by others, not
//! even for a moment; a replacement (`--force`) is written the same way beside it and renamed over the
//! old one. Loading refuses a key others can read; whether key and certificate belong together is checked
//! by the first user of the CA (leaf.rs), which verifies a throwaway leaf.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::error::TlsError;

pub const CERT_FILE: &str = "ca.crt";
pub const KEY_FILE: &str = "ca.key";

/// How long a new CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86400);

/// A loaded CA: what signs leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

/// The files `init` wrote.
#[derive(Debug)]
pub struct Created {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Creates a CA in `dir` (made 0700 if missing). Refuses when either file exists, unless `force`.
pub fn init(dir: &Path, force: bool) -> Result<Created, TlsError> {
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !force {
        if let Some(p) = [&cert_path, &key_path].into_iter().find(|p| p.symlink_metadata().is_ok()) {
            return Err(TlsError::Exists { path: p.clone() });
        }
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    let key = KeyPair::generate().map_err(|e| TlsError::Generate(e.to_string()))?;
    let params = ca_params(&key, SystemTime::now())?;
    let cert = params.self_signed(&key).map_err(|e| TlsError::Generate(e.to_string()))?;
    // The key first: a certificate without its key is useless, a key without its certificate harmless.
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600, force)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644, force)?;
    Ok(Created { cert: cert_path, key: key_path })
}

fn ca_params(key: &KeyPair, now: SystemTime) -> Result<CertificateParams, TlsError> {
    use sha2::Digest;
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError::Generate(e.to_string()))?;
    // A name that tells one node's CA from another's in a trust store.
    let id = hex::encode(&sha2::Sha256::digest(key.public_key_raw())[..4]);
    p.distinguished_name.push(DnType::OrganizationName, "Shoal");
    p.distinguished_name.push(DnType::CommonName, format!("Shoal interception CA {id}"));
    // Path length 0: it signs leaves only, never another CA.
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    p.not_before = (now - Duration::from_secs(86400)).into();
    p.not_after = (now + CA_VALIDITY).into();
    Ok(p)
}

/// Writes `bytes` to a file created with O_EXCL and `mode` beside `path`, then moves it to `path`: over an
/// existing file only with `replace`.
fn write_new(path: &Path, bytes: &[u8], mode: u32, replace: bool) -> Result<(), TlsError> {
    let tmp = path.with_extension(format!("new-{}", std::process::id()));
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| TlsError::Io { path: p, source }
    };
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io(&tmp))?;
    let written = f.write_all(bytes).and_then(|_| f.sync_all());
    let placed = written.and_then(|_| match replace {
        true => std::fs::rename(&tmp, path),
        // A hard link never replaces an existing file.
        false => std::fs::hard_link(&tmp, path),
    });
    let _ = std::fs::remove_file(&tmp);
    placed.map_err(io(path))
}

impl Ca {
    /// Loads `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Arc<Ca>, TlsError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let read = |p: &Path| std::fs::read_to_string(p).map_err(|source| TlsError::Io { path: p.to_owned(), source });
        let key_pem = read(&key_path)?;
        let mode = std::fs::metadata(&key_path)
            .map_err(|source| TlsError::Io { path: key_path.clone(), source })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(TlsError::KeyExposed { path: key_path, mode: mode & 0o777 });
        }
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Key { path: key_path, reason: e.to_string() })?;
        let cert_pem = read(&cert_path)?;
        let bad_cert = |reason: String| TlsError::Cert { path: cert_path.clone(), reason };
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| bad_cert(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| bad_cert(e.to_string()))?;
        Ok(Arc::new(Ca { issuer, cert }))
    }

    /// The CA's certificate (DER): the trust anchor clients are given.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub(super) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_writes_a_private_key_and_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("nested/ca");
        let made = init(&ca_dir, false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&made.key), 0o600);
        assert_eq!(mode(&ca_dir), 0o700);
        let first = std::fs::read(&made.cert).unwrap();
        assert!(matches!(init(&ca_dir, false), Err(TlsError::Exists { .. })));
        assert_eq!(std::fs::read(&made.cert).unwrap(), first, "refused: nothing changed");
        let again = init(&ca_dir, true).unwrap();
        assert_ne!(std::fs::read(&again.cert).unwrap(), first, "--force: a new CA");
        assert_eq!(mode(&again.key), 0o600);
        let left: Vec<_> = std::fs::read_dir(&ca_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
        Ca::load(&ca_dir).unwrap();
    }

    #[test]
    fn load_refuses_an_exposed_or_unreadable_key() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        init(&a, false).unwrap();
        init(&b, false).unwrap();
        std::fs::set_permissions(b.join(KEY_FILE), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Ca::load(&b), Err(TlsError::KeyExposed { mode: 0o644, .. })));
        std::fs::write(a.join(KEY_FILE), "garbage").unwrap();
        assert!(matches!(Ca::load(&a), Err(TlsError::Key { .. })));
        std::fs::write(b.join(CERT_FILE), "garbage").unwrap();
        std::fs::set_permissions(b.join(KEY_FILE), std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(Ca::load(&b), Err(TlsError::Cert { .. })));
        assert!(matches!(Ca::load(&dir.path().join("none")), Err(TlsError::Io { .. })));
    }
}
