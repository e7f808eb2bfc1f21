//! What leaves this node from a task: pieces on their way to peers (from memory when still held, read
//! with O_DIRECT into a pooled buffer when the task was ingested that way, otherwise from the file with
//! sendfile), and byte ranges of complete tasks for the proxy's clients (sendfile).
//!
//! Why not always sendfile: a piece written with O_DIRECT is not in the page cache, and filling it for
//! one send cost the receiving side more CPU than the whole copy did (docs/benchmarks.md).

use std::sync::Arc;

use super::error::{Result, StorageError};
use super::task::Task;
use super::zerocopy::ZeroCopy;

/// Memory for pieces read with O_DIRECT on their way to peers, daemon-wide (MiB granularity): 32 MiB.
static UPLOAD_MIB: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> =
    std::sync::LazyLock::new(|| Arc::new(tokio::sync::Semaphore::new(32)));

/// A share of [`UPLOAD_MIB`] for a `len`-byte piece, if there is room now (none: send from the file).
fn upload_lease(len: u32) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let mib = len.div_ceil(1 << 20).max(1);
    UPLOAD_MIB.clone().try_acquire_many_owned(mib).ok()
}

impl Task {
    /// Piece `k` for a peer: from memory when it is still held; with O_DIRECT ingest, read with O_DIRECT
    /// into a pooled buffer (crc-checked) and sent from there; otherwise from the file with sendfile.
    pub async fn upload_piece(self: &Arc<Self>, k: u32) -> Result<ZeroCopy> {
        let (off, len) = self.stored_range(k).ok_or(StorageError::PieceMissing(k))?;
        let crc = self.meta.piece_crc(k).ok_or(StorageError::PieceMissing(k))?;
        let (mem, lease) = match (self.resident_piece(k), &self.direct) {
            (Some(b), _) => (b, None),
            (None, Some(d)) => match upload_lease(len) {
                Some(lease) => {
                    let b = self
                        .io
                        .read_direct(d, len as usize, off)
                        .await
                        .map_err(|e| StorageError::io(&self.data_path, e))?;
                    self.check_read(k, crc, &b)?;
                    (b, Some(Arc::new(lease)))
                }
                // Every upload buffer in use: from the file.
                None => return self.zero_copy_piece(k).await,
            },
            // Buffered ingest: from the file.
            (None, None) => return self.zero_copy_piece(k).await,
        };
        self.touch();
        let (file, mem, _pin) = (self.data.clone(), Some(mem), self.clone());
        Ok(ZeroCopy { file, offset: off, len: len as u64, mem, _lease: lease, _pin })
    }

    /// The file, offset and length of piece `k` for sendfile/splice. The first request for a piece in this
    /// process reads it once to check its crc (from then on the page cache usually serves sendfile).
    pub async fn zero_copy_piece(self: &Arc<Self>, k: u32) -> Result<ZeroCopy> {
        let (off, len) = self.stored_range(k).ok_or(StorageError::PieceMissing(k))?;
        if !self.has_piece(k) {
            return Err(StorageError::PieceMissing(k));
        }
        if !self.is_verified(k) {
            self.read_piece(k).await?;
        }
        self.touch();
        Ok(ZeroCopy {
            file: self.data.clone(),
            offset: off,
            len: len as u64,
            mem: None,
            _lease: None,
            _pin: self.clone(),
        })
    }

    /// A zero-copy handle for any byte range whose pieces are all complete (proxy Range responses).
    pub async fn zero_copy_range(self: &Arc<Self>, offset: u64, len: u64) -> Result<ZeroCopy> {
        let total = self.content_length().ok_or(StorageError::Invalid("content length unknown".into()))?;
        let end = offset.checked_add(len).filter(|&e| e <= total).ok_or(StorageError::Invalid("range".into()))?;
        if len > 0 {
            let pl = self.meta.piece_length as u64;
            for k in (offset / pl) as u32..=((end - 1) / pl) as u32 {
                self.zero_copy_piece(k).await?;
            }
        }
        Ok(ZeroCopy { file: self.data.clone(), offset, len, mem: None, _lease: None, _pin: self.clone() })
    }
}
