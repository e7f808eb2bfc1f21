//! Typed errors of the peer data plane. Callers match on the variant to decide whether to retry the piece
//! elsewhere; the message is for logs.

use std::io;
use std::net::SocketAddr;

use crate::storage::{StorageError, TaskId};

use super::proto::ErrorCode;

/// Why bytes could not be turned into a frame. Every variant is fatal for the connection that sent them.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported frame version {0}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("frame does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("bad field {field}: {reason}")]
    BadField { field: &'static str, reason: &'static str },
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
}

impl FrameError {
    /// The code to put in the Error frame sent before closing.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::Version(_) => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::BadFrame,
        }
    }
}

/// Everything fetching a piece from a parent can fail with.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("connecting to parent {parent}: {source}")]
    Connect {
        parent: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The parent is not a cluster member, or refused this node as one (different cluster secrets).
    #[error("parent {parent}: {source}")]
    Membership {
        parent: SocketAddr,
        #[source]
        source: crate::membership::HandshakeError,
    },
    #[error("parent {parent} did not answer within {secs:.1} s")]
    Timeout { parent: SocketAddr, secs: f64 },
    /// No byte arrived for the stall timeout while a piece was mid-flight; nothing was stored.
    #[error("parent {parent} stalled mid-piece (no bytes for {secs:.1} s)")]
    Stalled { parent: SocketAddr, secs: f64 },
    /// The connection ended (closed, reset, or torn down after another failure); nothing was stored.
    #[error("connection to parent {parent} lost: {reason}")]
    ConnectionLost { parent: SocketAddr, reason: String },
    /// The piece bytes did not match the crc the parent announced; the piece was discarded and the parent
    /// is marked bad for this task.
    #[error("piece {piece} of {task} from {parent} failed its crc32c check (expected {expected:08x}, got {got:08x})")]
    CrcMismatch { parent: SocketAddr, task: TaskId, piece: u32, expected: u32, got: u32 },
    /// An earlier failure marked this parent bad for this task; fetch the piece elsewhere.
    #[error("parent {parent} is marked bad for task {task}")]
    ParentBad { parent: SocketAddr, task: TaskId },
    /// The parent answered the request with an error; the connection stays usable.
    #[error("parent {parent} refused piece {piece}: {code:?} {message}")]
    Refused { parent: SocketAddr, piece: u32, code: ErrorCode, message: String },
    #[error("parent {parent} broke the protocol: {reason}")]
    Protocol { parent: SocketAddr, reason: String },
    /// The parent sent a fatal Error frame.
    #[error("parent {parent} closed the connection: {code:?} {message}")]
    Closed { parent: SocketAddr, code: ErrorCode, message: String },
    /// The local task cannot hold this piece (unknown length, out of range).
    #[error("piece {piece} is not a piece of the local task {task}")]
    NoSuchPiece { task: TaskId, piece: u32 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl TransferError {
    /// True when the connection to the parent is unusable after this error (the pool reconnects next time).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            TransferError::Connect { .. }
                | TransferError::Membership { .. }
                | TransferError::Timeout { .. }
                | TransferError::Stalled { .. }
                | TransferError::ConnectionLost { .. }
                | TransferError::Protocol { .. }
                | TransferError::Closed { .. }
        )
    }
}

/// Why reading from a connection stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream ended mid-{}", if *.mid_piece { "piece" } else { "frame" })]
    Eof { mid_piece: bool },
    #[error("no bytes within the stall timeout")]
    Stalled,
}
