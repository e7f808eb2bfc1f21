//! Typed errors of the storage engine.

use std::io;
use std::path::PathBuf;

use super::TaskId;

/// Everything the storage engine can fail with. Callers match on the variant; the message is for logs.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk full while writing {path}")]
    DiskFull { path: PathBuf },
    #[error("metadata {path} rejected: {reason}")]
    BadMetadata { path: PathBuf, reason: String },
    #[error("io_uring requested but unavailable: {0}")]
    UringUnavailable(String),
    #[error("task {0} already exists")]
    TaskExists(TaskId),
    #[error("task {0} not found")]
    TaskNotFound(TaskId),
    #[error("piece {piece} out of range (task has {count} pieces)")]
    PieceOutOfRange { piece: u32, count: u32 },
    #[error("piece {piece} has {got} bytes, expected {expected}")]
    PieceLength { piece: u32, got: usize, expected: usize },
    #[error("piece {piece} crc32c mismatch: expected {expected:08x}, got {got:08x}")]
    CrcMismatch { piece: u32, expected: u32, got: u32 },
    #[error("piece {0} is being written by another writer")]
    PieceBusy(u32),
    #[error("piece {0} is not complete")]
    PieceMissing(u32),
    #[error("content length {0} conflicts with the pieces already stored")]
    LengthConflict(u64),
    #[error("content too large: {0} bytes exceeds the piece table of a task with unknown length")]
    TooLarge(u64),
    #[error("content of {len} bytes exceeds the storage limit of {limit} bytes")]
    ExceedsQuota { len: u64, limit: u64 },
    #[error("content digest mismatch: expected sha256:{}, got sha256:{}", hex::encode(expected), hex::encode(got))]
    DigestMismatch { expected: [u8; 32], got: [u8; 32] },
    #[error("task failed: {0}")]
    TaskFailed(FailReason),
    #[error("task is not complete")]
    NotComplete,
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Why a task failed: what its waiters (clients streaming it, children, `shoal get`) are told, and what
/// they match on. The task's own error for a digest mismatch is [`StorageError::DigestMismatch`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FailReason {
    /// The whole content's sha256 is not the one the task is named or held to (the source sent wrong bytes).
    #[error("content digest mismatch: expected sha256:{}, got sha256:{}", hex::encode(expected), hex::encode(got))]
    DigestMismatch { expected: [u8; 32], got: [u8; 32] },
    /// A local I/O step of this node failed (the disk, or a thread that could not start).
    #[error("{op}: {kind}: {message}")]
    Io { op: &'static str, kind: io::ErrorKind, message: String },
    /// The download feeding the task failed; the engine's typed error went to its caller, this is its text
    /// for everyone else waiting on the task.
    #[error("download failed: {0}")]
    Download(String),
    /// GC or an operator removed the task while it was held.
    #[error("removed: {0}")]
    Removed(String),
    /// The task's last handle went away while someone waited on it.
    #[error("task dropped")]
    Dropped,
}

impl FailReason {
    pub(crate) fn io(op: &'static str, e: &io::Error) -> FailReason {
        FailReason::Io { op, kind: e.kind(), message: e.to_string() }
    }
}

impl From<FailReason> for StorageError {
    fn from(r: FailReason) -> StorageError {
        match r {
            FailReason::DigestMismatch { expected, got } => StorageError::DigestMismatch { expected, got },
            other => StorageError::TaskFailed(other),
        }
    }
}

impl StorageError {
    /// Wraps an I/O error, turning ENOSPC/EDQUOT into [`StorageError::DiskFull`] so callers can react to it.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::DiskFull { path },
            _ => StorageError::Io { path, source },
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
