//! What clients streaming a task read: slices of its pieces, from memory while they are held, and the
//! bookkeeping that lets a held piece go once the hash and every streaming client ([`Reader`]) have it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::error::{Result, StorageError};
use super::task::Task;

/// A client streaming a task: while it lives, a held piece leaves memory only once this client has read
/// it too (or the cap makes room), so clients that stream the same download side by side all read it from
/// memory.
pub struct Reader(Arc<Task>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Task {
    /// Bytes `[from, from + max)` of complete piece `k` (fewer at the piece's end), so a client stream
    /// holds a slice rather than a whole piece per connection. A piece this process has not checked yet is
    /// read and crc-checked whole first.
    pub async fn read_piece_slice(&self, k: u32, from: u32, max: u32) -> Result<Bytes> {
        let (off, len) = self.stored_range(k).ok_or(StorageError::PieceMissing(k))?;
        if from >= len {
            return Err(StorageError::Invalid(format!("piece {k} has {len} bytes; slice at {from}")));
        }
        let n = max.min(len - from);
        if let Some(b) = self.resident_piece(k) {
            self.touch();
            if from + n == len {
                self.consumed(k);
            }
            return Ok(b.slice(from as usize..(from + n) as usize));
        }
        if !self.is_verified(k) || !self.has_piece(k) {
            let whole = self.read_piece(k).await?;
            return Ok(whole.slice(from as usize..(from + n) as usize));
        }
        let v = self
            .io
            .read_exact_at(&self.data, n as usize, off + u64::from(from))
            .await
            .map_err(|e| StorageError::io(&self.data_path, e))?;
        self.touch();
        Ok(Bytes::from(v))
    }

    /// Piece `k`'s bytes if they are still in memory and the piece is still complete (a piece found
    /// corrupt on disk and cleared must not be served from memory either).
    pub(super) fn resident_piece(&self, k: u32) -> Option<Bytes> {
        let (_, len) = self.stored_range(k)?;
        self.held.get(k).filter(|b| self.has_piece(k) && b.len() == len as usize)
    }

    /// Whether piece `k` is still held in memory (what the tests of the release policy observe).
    pub fn in_memory(&self, k: u32) -> bool {
        self.resident_piece(k).is_some()
    }

    pub(super) fn keep_in_memory(&self, k: u32, data: Bytes) {
        self.held.keep(k, data, self.hashed_pieces());
    }

    /// A client has read the last byte of piece `k` from memory; once the hash and every other streaming
    /// client have it too, it need not stay there.
    fn consumed(&self, k: u32) {
        self.held.consumed(k, self.hashed_pieces(), self.readers.load(Ordering::Acquire));
    }

    /// The hash has taken every piece before `next`: pieces every streaming client has read too leave
    /// memory.
    pub(super) fn hashed_through(&self, next: u32) {
        self.held.hashed(next, self.readers.load(Ordering::Acquire));
    }

    /// Registers a client streaming this task (see [`Reader`]).
    pub fn reader(self: &Arc<Self>) -> Reader {
        self.readers.fetch_add(1, Ordering::AcqRel);
        Reader(self.clone())
    }

    /// Lets every piece in memory go (the task is complete, failed or gone): the buffers return to the pool.
    pub(super) fn release_resident(&self) {
        self.held.clear();
    }
}
