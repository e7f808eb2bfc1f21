//! Membership on peer connections: the upload server admits only children that prove they hold the
//! cluster secret, and a child talks only to parents that prove it back (src/membership's handshake, role
//! `upload`). Without a configured secret both sides skip it (in-process tests only).

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::error::TransferError;
use crate::membership::{self, ClusterKey, Role};

/// The parent's side. `false`: the child is not a member; it has been logged and counted, and the caller
/// drops the connection without a frame.
pub(super) async fn admit_child(sock: &mut TcpStream, key: Option<&ClusterKey>, peer: SocketAddr) -> bool {
    let Some(key) = key else { return true };
    match membership::accept(sock, key, Role::Upload, membership::HANDSHAKE_TIMEOUT).await {
        Ok(_) => true,
        Err(e) => {
            membership::count_refused(Role::Upload);
            tracing::warn!(%peer, reason = %e, "upload connection refused: not a cluster member");
            false
        }
    }
}

/// The child's side: proves membership and holds the parent to it.
pub(super) async fn prove_to_parent(
    sock: &mut TcpStream,
    key: Option<&ClusterKey>,
    parent: SocketAddr,
) -> Result<(), TransferError> {
    let Some(key) = key else { return Ok(()) };
    membership::connect(sock, key, Role::Upload, membership::HANDSHAKE_TIMEOUT).await.map(|_| ()).map_err(|source| {
        membership::count_refused(Role::Upload);
        tracing::warn!(%parent, reason = %source, "parent failed the membership handshake");
        TransferError::Membership { parent, source }
    })
}
