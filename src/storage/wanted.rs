//! Which pieces a client reading a task in order is waiting for right now.
//!
//! The download (engine/pieces.rs) takes pieces in order while a reader waits, so the stream never starves,
//! and rarest-first otherwise: pieces few of its parents hold go first, so they spread before the parents
//! that hold them leave. A reader registers only while it waits, so a reader behind the download costs the
//! swarm nothing, and one that catches up turns the order back at once.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::error::Result;
use super::task::Task;

/// Piece → readers waiting for it.
#[derive(Default)]
pub(super) struct Wanted(Mutex<BTreeMap<u32, u32>>);

impl Wanted {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, u32>> {
        // Each update leaves the map consistent, so poison carries no meaning.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Holds one reader's registration for piece `k`; dropping it (the wait ended or was cancelled) removes it.
struct Waiting<'a> {
    w: &'a Wanted,
    k: u32,
}

impl<'a> Waiting<'a> {
    fn new(w: &'a Wanted, k: u32) -> Waiting<'a> {
        *w.lock().entry(k).or_insert(0) += 1;
        Waiting { w, k }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut m = self.w.lock();
        if let Some(n) = m.get_mut(&self.k) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.k);
            }
        }
    }
}

impl Task {
    /// [`Task::wait_piece`] for a client streaming the task in order: while it waits, piece `k` is what
    /// the download fetches first ([`Task::wanted_piece`]).
    pub async fn wait_piece_for_reader(&self, k: u32) -> Result<()> {
        if self.has_piece(k) {
            return Ok(());
        }
        let _w = Waiting::new(&self.wanted, k);
        self.wait_piece(k).await
    }

    /// The lowest piece a streaming reader waits for, if any reader waits.
    pub fn wanted_piece(&self) -> Option<u32> {
        self.wanted.lock().keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_count_and_vanish_with_their_guards() {
        let w = Wanted::default();
        let first = |w: &Wanted| w.lock().keys().next().copied();
        let a = Waiting::new(&w, 7);
        let b = Waiting::new(&w, 3);
        let c = Waiting::new(&w, 3);
        assert_eq!(first(&w), Some(3));
        drop(b);
        assert_eq!(first(&w), Some(3), "another reader still waits at 3");
        drop(c);
        assert_eq!(first(&w), Some(7));
        drop(a);
        assert_eq!(first(&w), None);
    }
}
