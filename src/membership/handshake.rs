//! The membership handshake: before any protocol frame, both ends of a scheduler or peer connection prove
//! that they hold the cluster secret, without sending it.
//!
//! Wire (all lengths fixed, so a bounded read of exact sizes is the whole parser):
//!
//! ```text
//! listener → dialler   "SHOALMB1" ‖ Ns (32 random bytes)
//! dialler  → listener  "SHOALMB1" ‖ Nc (32 random bytes) ‖ HMAC-SHA256(K, "shoal/v1/dialler\0"  ‖ role ‖ Ns ‖ Nc)
//! listener → dialler   0x00 ‖ HMAC-SHA256(K, "shoal/v1/listener\0" ‖ role ‖ Ns ‖ Nc)     (accepted)
//!                      0x01                                                               (refused; closes)
//! ```
//!
//! Each side's fresh nonce makes every proof single-use (a recorded handshake cannot be replayed), the
//! distinct labels stop a proof from being reflected back, and `role` (`scheduler` or `upload`) stops a
//! scheduler handshake from opening an upload connection. The session binding,
//! HMAC(K, "shoal/v1/session\0" ‖ role ‖ Ns ‖ Nc), is what a host signs to register (identity.rs), so a
//! registration cannot be moved to another connection.

use std::path::Path;
use std::time::Duration;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::LoadError;

const MAGIC: &[u8; 8] = b"SHOALMB1";
const NONCE: usize = 32;
const TAG: usize = 32;
const ACCEPTED: u8 = 0;
const REFUSED: u8 = 1;

/// How long either side waits for the whole handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which listener a connection is for; part of every proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Scheduler,
    Upload,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler",
            Role::Upload => "upload",
        }
    }
}

/// The cluster secret as an HMAC key. Its Debug output never shows the secret.
#[derive(Clone)]
pub struct ClusterKey {
    key: hmac::Key,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Shortest secret accepted: 32 characters of a generated secret carry 128 bits or more, out of
    /// reach of an offline guess at a recorded handshake.
    pub const MIN_LEN: usize = 32;

    pub fn from_secret(secret: &[u8]) -> Result<ClusterKey, String> {
        let s = secret.trim_ascii();
        if s.len() < Self::MIN_LEN {
            return Err(format!("{} bytes; at least {} are needed (shoal secret generate)", s.len(), Self::MIN_LEN));
        }
        Ok(ClusterKey { key: hmac::Key::new(hmac::HMAC_SHA256, s) })
    }

    /// Reads the secret from a file; surrounding white space (a trailing newline) is not part of it.
    pub fn load(path: &Path) -> Result<ClusterKey, LoadError> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| LoadError::SecretRead { path: p.clone(), source })?;
        ClusterKey::from_secret(&bytes).map_err(|reason| LoadError::SecretInvalid { path: p, reason })
    }

    /// A fresh random key, for a single node whose scheduler and upload server only it talks to.
    pub fn generate() -> Result<ClusterKey, LoadError> {
        ClusterKey::from_secret(generate_secret()?.as_bytes()).map_err(|_| LoadError::Random)
    }

    fn tag(&self, label: &[u8], role: Role, ns: &[u8; NONCE], nc: &[u8; NONCE]) -> hmac::Tag {
        let mut c = hmac::Context::with_key(&self.key);
        for part in [label, b"\0", role.name().as_bytes(), ns, nc] {
            c.update(part);
        }
        c.sign()
    }

    fn verify(&self, label: &[u8], role: Role, ns: &[u8; NONCE], nc: &[u8; NONCE], tag: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(label.len() + 1 + 16 + 2 * NONCE);
        for part in [label, b"\0", role.name().as_bytes(), ns, nc] {
            msg.extend_from_slice(part);
        }
        // Constant-time comparison (ring's verify), so timing says nothing about the expected tag.
        hmac::verify(&self.key, &msg, tag).is_ok()
    }
}

/// 64 hex digits from the system's randomness: what `shoal secret generate` prints.
pub fn generate_secret() -> Result<String, LoadError> {
    let mut b = [0u8; 32];
    SystemRandom::new().fill(&mut b).map_err(|_| LoadError::Random)?;
    Ok(hex::encode(b))
}

/// What an authenticated connection carries forward: the value a host signs to register on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub binding: [u8; 32],
}

/// Why a handshake failed, and whose doing it was.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The other side sent something that is not this handshake (another service, an old Shoal, junk).
    #[error("the other side does not speak Shoal's membership handshake")]
    NotShoal,
    /// The dialler's proof did not verify: it does not hold this cluster's secret.
    #[error("the dialler's proof does not verify: not a member of this cluster (wrong cluster secret)")]
    DiallerNotMember,
    /// The listener refused this side's proof: the two sides hold different cluster secrets.
    #[error("refused by the listener: this node's cluster secret is not the listener's")]
    Refused,
    /// The listener's proof did not verify: whoever answered does not hold the cluster secret.
    #[error("the listener's proof does not verify: it is not a member of this cluster")]
    ListenerNotMember,
    #[error("the handshake did not finish within {0:?}")]
    Timeout(Duration),
    #[error("handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("no system randomness")]
    Random,
}

fn nonce() -> Result<[u8; NONCE], HandshakeError> {
    let mut n = [0u8; NONCE];
    SystemRandom::new().fill(&mut n).map_err(|_| HandshakeError::Random)?;
    Ok(n)
}

fn session(key: &ClusterKey, role: Role, ns: &[u8; NONCE], nc: &[u8; NONCE]) -> Session {
    let mut binding = [0u8; 32];
    binding.copy_from_slice(key.tag(b"shoal/v1/session", role, ns, nc).as_ref());
    Session { binding }
}

async fn bounded<T>(
    within: Duration,
    f: impl std::future::Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    tokio::time::timeout(within, f).await.map_err(|_| HandshakeError::Timeout(within))?
}

/// The listener's side. On a bad proof it answers "refused" before failing, so the dialler can say why.
pub async fn accept<S>(s: &mut S, key: &ClusterKey, role: Role, within: Duration) -> Result<Session, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded(within, async {
        let ns = nonce()?;
        let mut hello = [0u8; 8 + NONCE];
        hello[..8].copy_from_slice(MAGIC);
        hello[8..].copy_from_slice(&ns);
        s.write_all(&hello).await?;
        s.flush().await?;
        let mut m = [0u8; 8 + NONCE + TAG];
        s.read_exact(&mut m).await?;
        if &m[..8] != MAGIC {
            return Err(HandshakeError::NotShoal);
        }
        let nc: [u8; NONCE] = m[8..8 + NONCE].try_into().map_err(|_| HandshakeError::NotShoal)?;
        if !key.verify(b"shoal/v1/dialler", role, &ns, &nc, &m[8 + NONCE..]) {
            let _ = s.write_all(&[REFUSED]).await;
            let _ = s.flush().await;
            return Err(HandshakeError::DiallerNotMember);
        }
        let mut ok = [0u8; 1 + TAG];
        ok[0] = ACCEPTED;
        ok[1..].copy_from_slice(key.tag(b"shoal/v1/listener", role, &ns, &nc).as_ref());
        s.write_all(&ok).await?;
        s.flush().await?;
        Ok(session(key, role, &ns, &nc))
    })
    .await
}

/// The dialler's side: proves membership, then checks the listener's proof.
pub async fn connect<S>(s: &mut S, key: &ClusterKey, role: Role, within: Duration) -> Result<Session, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded(within, async {
        let mut hello = [0u8; 8 + NONCE];
        s.read_exact(&mut hello).await?;
        if &hello[..8] != MAGIC {
            return Err(HandshakeError::NotShoal);
        }
        let ns: [u8; NONCE] = hello[8..].try_into().map_err(|_| HandshakeError::NotShoal)?;
        let nc = nonce()?;
        let mut m = [0u8; 8 + NONCE + TAG];
        m[..8].copy_from_slice(MAGIC);
        m[8..8 + NONCE].copy_from_slice(&nc);
        m[8 + NONCE..].copy_from_slice(key.tag(b"shoal/v1/dialler", role, &ns, &nc).as_ref());
        s.write_all(&m).await?;
        s.flush().await?;
        let mut status = [0u8; 1];
        s.read_exact(&mut status).await.map_err(|_| HandshakeError::Refused)?;
        if status[0] != ACCEPTED {
            return Err(HandshakeError::Refused);
        }
        let mut tag = [0u8; TAG];
        s.read_exact(&mut tag).await?;
        if !key.verify(b"shoal/v1/listener", role, &ns, &nc, &tag) {
            return Err(HandshakeError::ListenerNotMember);
        }
        Ok(session(key, role, &ns, &nc))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClusterKey {
        ClusterKey::from_secret(s.as_bytes()).unwrap()
    }

    async fn run(
        a: &ClusterKey,
        ra: Role,
        d: &ClusterKey,
        rd: Role,
    ) -> (Result<Session, HandshakeError>, Result<Session, HandshakeError>) {
        let (mut x, mut y) = tokio::io::duplex(256);
        let t = Duration::from_secs(2);
        tokio::join!(accept(&mut x, a, ra, t), connect(&mut y, d, rd, t))
    }

    const K1: &str = "0123456789abcdef0123456789abcdef-one";
    const K2: &str = "0123456789abcdef0123456789abcdef-two";

    #[tokio::test]
    async fn members_agree_on_one_binding_and_outsiders_are_told_apart() {
        let (l, d) = run(&key(K1), Role::Upload, &key(K1), Role::Upload).await;
        let (l, d) = (l.unwrap(), d.unwrap());
        assert_eq!(l, d);
        let (l2, _) = run(&key(K1), Role::Upload, &key(K1), Role::Upload).await;
        assert_ne!(l2.unwrap(), l, "fresh nonces make every session's binding new");
        let (l, d) = run(&key(K1), Role::Scheduler, &key(K2), Role::Scheduler).await;
        assert!(matches!(l, Err(HandshakeError::DiallerNotMember)), "{l:?}");
        assert!(matches!(d, Err(HandshakeError::Refused)), "{d:?}");
        let (l, d) = run(&key(K1), Role::Scheduler, &key(K1), Role::Upload).await;
        assert!(matches!(l, Err(HandshakeError::DiallerNotMember)), "a proof for one role opens no other: {l:?}");
        assert!(d.is_err());
    }

    #[tokio::test]
    async fn a_listener_without_the_secret_is_found_out() {
        let (mut x, mut y) = tokio::io::duplex(256);
        let t = Duration::from_secs(2);
        let fake = async {
            // Speaks the protocol, accepts any proof, and answers with a tag it cannot compute.
            x.write_all(b"SHOALMB1").await.unwrap();
            x.write_all(&[7u8; 32]).await.unwrap();
            let mut m = [0u8; 72];
            x.read_exact(&mut m).await.unwrap();
            x.write_all(&[0u8; 33]).await.unwrap();
        };
        let k = key(K1);
        let (_, d) = tokio::join!(fake, connect(&mut y, &k, Role::Upload, t));
        assert!(matches!(d, Err(HandshakeError::ListenerNotMember)), "{d:?}");
    }

    #[tokio::test]
    async fn junk_and_silence_fail_within_the_bound() {
        let (mut x, mut y) = tokio::io::duplex(256);
        let junk = async {
            let mut b = [0u8; 40];
            y.read_exact(&mut b).await.unwrap();
            y.write_all(&[b'G'; 72]).await.unwrap();
        };
        let k = key(K1);
        let (l, _) = tokio::join!(accept(&mut x, &k, Role::Upload, Duration::from_secs(2)), junk);
        assert!(matches!(l, Err(HandshakeError::NotShoal)), "{l:?}");
        let (mut x, _y) = tokio::io::duplex(256);
        let l = accept(&mut x, &key(K1), Role::Upload, Duration::from_millis(50)).await;
        assert!(matches!(l, Err(HandshakeError::Timeout(_))), "{l:?}");
    }

    #[test]
    fn short_secrets_are_refused_and_white_space_is_not_part_of_one() {
        assert!(ClusterKey::from_secret(b"too short").is_err());
        assert!(ClusterKey::from_secret(format!("  {K1}\n").as_bytes()).is_ok());
        assert_eq!(format!("{:?}", key(K1)), "ClusterKey(..)");
        let s = generate_secret().unwrap();
        assert_eq!(s.len(), 64);
        assert_ne!(s, generate_secret().unwrap());
    }
}
