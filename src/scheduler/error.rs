//! Typed errors of the scheduler subsystem: one enum per side (state, server, client).

use std::net::SocketAddr;
use std::time::Duration;

/// Why the scheduler's state refused a peer's message. The server turns it into an Error frame; the
/// connection stays open unless the variant says the peer cannot go on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("register first")]
    NotRegistered,
    #[error("invalid message: {0}")]
    Invalid(String),
    #[error("host {host} already holds {limit} tasks")]
    TooManyTasks { host: String, limit: usize },
    #[error("the scheduler already knows {limit} tasks")]
    TooManyTasksInAll { limit: usize },
    #[error("the scheduler already has {limit} hosts registered")]
    TooManyHosts { limit: usize },
}

impl StateError {
    /// Whether the connection should be closed after reporting this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, StateError::NotRegistered | StateError::TooManyHosts { .. })
    }
}

/// Failures of the scheduler server itself (not of one connection, which never fails the server).
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// What a [`crate::scheduler::SchedulerClient`] call can fail with. Every variant means "no decision from the
/// scheduler"; the engine's answer to all of them is to go back to the source.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no scheduler address configured")]
    NoSchedulers,
    #[error("cannot resolve scheduler address {addr:?}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("scheduler {addr} unavailable: {reason}")]
    Unavailable { addr: SocketAddr, reason: String },
    #[error("scheduler {addr} did not answer within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("scheduler {addr} refused the request: {message}")]
    Refused { addr: SocketAddr, message: String },
    #[error("scheduler {addr} broke the protocol: {reason}")]
    Protocol { addr: SocketAddr, reason: String },
    #[error("scheduler client is shut down")]
    Closed,
}

/// A frame that cannot be read as an Envelope. Fatal for the connection: after a bad frame nothing that
/// follows on the stream can be trusted.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("empty frame")]
    Empty,
    #[error("unsupported protocol version {got} (this side speaks {ours})")]
    Version { got: u8, ours: u8 },
    #[error("undecodable envelope: {0}")]
    Decode(#[from] prost::DecodeError),
}
