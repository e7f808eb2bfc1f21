//! Cluster membership: who may talk to a scheduler or an upload server, and who a registered host is.
//!
//! Owns: the cluster secret (read from a file, or generated in memory for a single node), the
//! challenge-response handshake that opens every scheduler and peer connection (handshake.rs), each host's
//! signing identity and the proof that binds a registration to it (identity.rs), and the count of
//! connections refused for want of membership.
//! Never: sends the secret, or anything that lets a listener replay a handshake; encrypts or authenticates
//! the bytes after the handshake (piece bytes are held to digests instead); decides what a member may do.
//! Called by: the scheduler's server and client and the peer data plane's server and pool (handshakes),
//! the daemon and main.rs (loading the secret and the host identity).
//!
//! Why a shared secret and HMAC rather than mutual TLS: every node of a cluster is equally a member (the
//! chart mounts one Secret everywhere), the handshake costs two round trips of 73 bytes and two HMACs, and
//! nothing needs a CA. A member's *identity* (which host it is) is an Ed25519 key of its own, so a member
//! that holds the cluster secret still cannot register as another host.

mod handshake;
mod identity;

use std::sync::atomic::{AtomicU64, Ordering};

pub use handshake::{accept, connect, generate_secret, ClusterKey, HandshakeError, Role, Session, HANDSHAKE_TIMEOUT};
pub use identity::{verify_registration, HostIdentity, IdentityError};

/// Why the cluster secret or a host identity could not be loaded (at start-up; the operator's to fix).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cluster secret {path}: {source}")]
    SecretRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster secret {path}: {reason}")]
    SecretInvalid { path: String, reason: String },
    #[error("host identity {path}: {source}")]
    IdentityIo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("host identity {path}: not an Ed25519 PKCS#8 key (delete it to make a new identity)")]
    IdentityInvalid { path: String },
    #[error("no system randomness")]
    Random,
}

static REFUSED_SCHEDULER: AtomicU64 = AtomicU64::new(0);
static REFUSED_UPLOAD: AtomicU64 = AtomicU64::new(0);

/// Counts one connection refused for want of membership (either side of the handshake).
pub fn count_refused(role: Role) {
    let c = match role {
        Role::Scheduler => &REFUSED_SCHEDULER,
        Role::Upload => &REFUSED_UPLOAD,
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// Connections this process refused (or was refused by) for want of membership, since it started.
pub fn refused(role: Role) -> u64 {
    match role {
        Role::Scheduler => REFUSED_SCHEDULER.load(Ordering::Relaxed),
        Role::Upload => REFUSED_UPLOAD.load(Ordering::Relaxed),
    }
}
