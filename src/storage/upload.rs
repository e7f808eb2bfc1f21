//! Pieces on their way to peers: from memory when still held, read with O_DIRECT into a pooled buffer
//! when the task was ingested that way, otherwise from the file with sendfile.
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
}
