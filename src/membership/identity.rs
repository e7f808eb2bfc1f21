//! A host's identity: an Ed25519 key of its own, kept in its data directory, whose fingerprint ends the
//! host ID it registers with. The scheduler accepts a registration only with a signature over the
//! connection's session binding by the key the host ID names, so holding the cluster secret is not enough
//! to register as another host, even after the scheduler restarts and forgets who was who.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};

use super::{LoadError, Session};

const CONTEXT: &[u8] = b"shoal/v1/register\0";

/// Hex digits of the key fingerprint that end a host ID (64 bits: a collision needs 2^32 keys).
const FP_HEX: usize = 16;

/// This host's signing key.
pub struct HostIdentity {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for HostIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostIdentity({})", self.fingerprint())
    }
}

/// Why a registration's identity proof was refused (the registering peer's doing).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no identity proof (this scheduler requires one)")]
    Missing,
    #[error("the identity key is not 32 bytes")]
    BadKey,
    #[error("host ID {0:?} does not end with the identity key's fingerprint: it is another host's")]
    NotBound(String),
    #[error("the identity proof does not verify")]
    BadSignature,
}

fn fingerprint_of(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..FP_HEX / 2])
}

fn message(session: &Session, host_id: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 32 + host_id.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(&session.binding);
    m.extend_from_slice(host_id.as_bytes());
    m
}

impl HostIdentity {
    pub fn generate() -> Result<HostIdentity, LoadError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| LoadError::Random)?;
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| LoadError::Random)?;
        Ok(HostIdentity { pair })
    }

    /// The key at `path`, or a new one written there (0600, created exclusively, never through a link).
    pub fn load_or_create(path: &Path) -> Result<HostIdentity, LoadError> {
        let p = || path.display().to_string();
        match std::fs::read(path) {
            Ok(doc) => {
                let pair = Ed25519KeyPair::from_pkcs8(&doc).map_err(|_| LoadError::IdentityInvalid { path: p() })?;
                return Ok(HostIdentity { pair });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(LoadError::IdentityIo { path: p(), source }),
        }
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| LoadError::Random)?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            f.write_all(doc.as_ref())?;
            f.sync_all()
        };
        write().map_err(|source| LoadError::IdentityIo { path: p(), source })?;
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| LoadError::IdentityInvalid { path: p() })?;
        Ok(HostIdentity { pair })
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// 16 hex digits naming the key.
    pub fn fingerprint(&self) -> String {
        fingerprint_of(self.pair.public_key().as_ref())
    }

    /// The host ID this key may register: `name` (e.g. the hostname) and the key's fingerprint.
    pub fn host_id(&self, name: &str) -> String {
        format!("{name}-{}", self.fingerprint())
    }

    /// The signature a registration on `session` carries.
    pub fn prove(&self, session: &Session, host_id: &str) -> Vec<u8> {
        self.pair.sign(&message(session, host_id)).as_ref().to_vec()
    }
}

/// Checks that `host_id` is the key's to register, and that the key signed this very session.
pub fn verify_registration(
    public_key: &[u8],
    proof: &[u8],
    session: &Session,
    host_id: &str,
) -> Result<(), IdentityError> {
    if public_key.is_empty() && proof.is_empty() {
        return Err(IdentityError::Missing);
    }
    if public_key.len() != 32 {
        return Err(IdentityError::BadKey);
    }
    let fp = fingerprint_of(public_key);
    let bound = host_id.strip_suffix(fp.as_str()).is_some_and(|rest| rest.is_empty() || rest.ends_with('-'));
    if !bound {
        return Err(IdentityError::NotBound(host_id.chars().take(200).collect()));
    }
    signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
        .verify(&message(session, host_id), proof)
        .map_err(|_| IdentityError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_a_host_id_names_can_register_it_on_this_session() {
        let (a, b) = (HostIdentity::generate().unwrap(), HostIdentity::generate().unwrap());
        let s = Session { binding: [3; 32] };
        let id = a.host_id("node-a");
        assert!(id.starts_with("node-a-") && id.len() == "node-a-".len() + FP_HEX);
        assert_eq!(verify_registration(&a.public_key(), &a.prove(&s, &id), &s, &id), Ok(()));
        // b holds the cluster secret too, but cannot sign for a's ID with its own key ...
        let e = verify_registration(&b.public_key(), &b.prove(&s, &id), &s, &id);
        assert!(matches!(e, Err(IdentityError::NotBound(_))), "{e:?}");
        // ... nor pass a's key with its own signature, nor reuse a's proof on another session.
        assert_eq!(verify_registration(&a.public_key(), &b.prove(&s, &id), &s, &id), Err(IdentityError::BadSignature));
        let other = Session { binding: [4; 32] };
        assert_eq!(
            verify_registration(&a.public_key(), &a.prove(&s, &id), &other, &id),
            Err(IdentityError::BadSignature)
        );
        assert_eq!(verify_registration(&[], &[], &s, &id), Err(IdentityError::Missing));
        assert_eq!(verify_registration(&[1; 5], &[], &s, &id), Err(IdentityError::BadKey));
        let suffix_only = format!("x{}", a.fingerprint());
        let e = verify_registration(&a.public_key(), &a.prove(&s, &suffix_only), &s, &suffix_only);
        assert!(matches!(e, Err(IdentityError::NotBound(_))), "the fingerprint must be a whole segment");
    }

    #[test]
    fn an_identity_survives_a_restart_and_its_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("identity.key");
        let a = HostIdentity::load_or_create(&p).unwrap();
        assert_eq!(HostIdentity::load_or_create(&p).unwrap().public_key(), a.public_key());
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&p, b"junk").unwrap();
        assert!(matches!(HostIdentity::load_or_create(&p), Err(LoadError::IdentityInvalid { .. })));
    }
}
