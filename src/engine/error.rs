//! Typed errors of the engine.

use http::{HeaderMap, StatusCode};

use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The origin answered with a non-success status: passed to the client as is, never cached.
    #[error("origin answered {status}")]
    OriginStatus { status: StatusCode, headers: Box<HeaderMap> },
    /// The destination policy refuses the origin's address (the requester's fault, not the origin's).
    #[error(transparent)]
    Denied(crate::upstream::Denied),
    #[error("origin unreachable: {0}")]
    OriginConnect(String),
    /// TLS to the origin failed: most often its certificate is not trusted. Never retried without
    /// verification; the client reads the reason.
    #[error(transparent)]
    OriginTls(crate::upstream::TlsRefusal),
    #[error("origin sent no response head within {0:?}")]
    OriginHeadTimeout(std::time::Duration),
    #[error("origin body stalled: no byte for {idle:?} after {received} bytes")]
    OriginStalled { received: u64, idle: std::time::Duration },
    #[error("origin body failed after {received} bytes: {reason}")]
    OriginBody { received: u64, reason: String },
    /// The origin's answer broke HTTP/1.1 (a malformed head, conflicting lengths): its fault, never cached.
    #[error("origin broke HTTP/1.1: {0}")]
    OriginProtocol(String),
    #[error("origin body ended after {got} of {expected} bytes")]
    Truncated { expected: u64, got: u64 },
    #[error("origin sent more than the {expected} bytes it announced")]
    TooLong { expected: u64 },
    #[error("origin answered a range request with an inconsistent Content-Range")]
    BadRange,
    #[error("origin redirected more than {0} times")]
    TooManyRedirects(usize),
    #[error("origin redirected to {to} from https: refused (never a silent downgrade)")]
    Downgrade { to: String },
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid header {0:?}")]
    InvalidHeader(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the task disappeared while it was being fetched")]
    Vanished,
}
