//! The memory that origin downloads may hold in piece buffers, daemon-wide, and how many origin streams
//! share it: a download's buffers wait for room here, and an extra ranged connection takes a seat only
//! while every stream could still have two pieces of it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Memory for piece buffers of origin downloads, shared by the whole daemon (MiB granularity).
#[derive(Clone)]
pub struct IngestBudget {
    mib: Arc<tokio::sync::Semaphore>,
    total: u32,
    /// Origin streams right now: downloads' first connections and the seats of their extra ones (see
    /// [`IngestBudget::try_widen`]).
    streams: Arc<AtomicUsize>,
}

/// A buffer of `len` bytes in the budget's unit: whole MiB, at least one.
fn mib(len: usize) -> u32 {
    u32::try_from(len.div_ceil(1 << 20)).unwrap_or(u32::MAX).max(1)
}

/// What one origin stream of `len`-byte pieces needs of the budget, in its unit: two pieces (one being
/// filled, one on its way to the disk).
fn per_stream(len: usize) -> usize {
    (mib(len) as usize).saturating_mul(2)
}

/// One origin stream (a download's first connection, or an extra connection's seat) counted in
/// [`IngestBudget`]'s streams while it lives.
pub(super) struct Stream(Arc<AtomicUsize>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A piece buffer's share of the budget, returned when dropped.
pub struct Reservation {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Reservation {
    /// No share at all: a placeholder while a buffer's reservation is handed on with it.
    pub(super) fn none() -> Reservation {
        Reservation { _permit: None }
    }
}

impl IngestBudget {
    /// `bytes` of buffers at once (at least one 4 MiB piece).
    pub fn new(bytes: u64) -> IngestBudget {
        let total = u32::try_from(bytes.div_ceil(1 << 20)).unwrap_or(u32::MAX).max(4);
        let streams = Arc::new(AtomicUsize::new(0));
        IngestBudget { mib: Arc::new(tokio::sync::Semaphore::new(total as usize)), total, streams }
    }

    /// Counts a download's first connection as an origin stream until the guard is dropped. Taken before
    /// its first request, so that downloads arriving together see each other before any widens.
    pub(super) fn count_stream(&self) -> Stream {
        self.streams.fetch_add(1, Ordering::AcqRel);
        Stream(self.streams.clone())
    }

    /// A seat for another connection of a download of `len`-byte pieces, counted as a stream until
    /// dropped: only while every origin stream of the daemon could have two pieces of the budget (one
    /// being filled, one on its way to the disk) with it counted. When many downloads run at once the
    /// budget, not one connection's rate, is what limits them, and each then reads in order on one
    /// connection (see `segments::next_chunk`). Checked and counted at once: two downloads widening at
    /// the same moment cannot both take the last room.
    pub(super) fn try_widen(&self, len: usize) -> Option<Stream> {
        let per_stream = per_stream(len);
        let fits = |n: usize| n.saturating_add(1).saturating_mul(per_stream) <= self.total as usize;
        let update = |n: usize| fits(n).then(|| n + 1);
        self.streams.fetch_update(Ordering::AcqRel, Ordering::Acquire, update).ok()?;
        Some(Stream(self.streams.clone()))
    }

    /// Whether the origin streams of the daemon, each with its two pieces of `len` bytes, now need more
    /// than the budget: an extra connection holding a seat then gives it up before its next chunk.
    pub(super) fn crowded(&self, len: usize) -> bool {
        self.streams.load(Ordering::Acquire).saturating_mul(per_stream(len)) > self.total as usize
    }

    /// Waits for room for one buffer of `len` bytes; a piece larger than the whole budget takes all of it.
    pub(super) async fn reserve(&self, len: usize) -> Reservation {
        let want = mib(len).min(self.total);
        // The semaphore is never closed, so acquiring only waits.
        Reservation { _permit: self.mib.clone().acquire_many_owned(want).await.ok() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_ingest_budget_bounds_buffers_and_never_blocks_a_lone_large_piece() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let b = IngestBudget::new(8 << 20);
            let (one, two) = (b.reserve(4 << 20).await, b.reserve(4 << 20).await);
            let third = tokio::time::timeout(Duration::from_millis(50), b.reserve(4 << 20)).await;
            assert!(third.is_err(), "a third 4 MiB buffer waits while two hold the 8 MiB");
            drop(one);
            let third = tokio::time::timeout(Duration::from_secs(1), b.reserve(4 << 20)).await;
            assert!(third.is_ok(), "and goes once one is returned");
            drop((two, third));
            // A 64 MiB piece takes the whole budget instead of waiting forever.
            let big = tokio::time::timeout(Duration::from_secs(1), b.reserve(64 << 20)).await;
            assert!(big.is_ok());
        });
    }
}
