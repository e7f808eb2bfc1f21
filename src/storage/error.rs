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
    #[error("content digest mismatch: expected {expected}, got {got}")]
    DigestMismatch { expected: String, got: String },
    #[error("task failed: {0}")]
    TaskFailed(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
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
