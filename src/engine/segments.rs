//! Back to source over several ranged connections at once.
//!
//! Owns: the first request's range, splitting the pieces an origin download still needs into contiguous
//! segments (one per connection), and running them. Many origins cap each connection's rate (S3, GCS,
//! CDNs, the storage behind Git LFS servers); a single GET then takes size / cap however fast the links
//! are. The first request asks for a bounded window ([`WINDOW`] from the first missing byte); a 206 whose
//! Content-Range is what was asked proves that the origin serves ranges and says the object's length.
//! That connection keeps the first segment (asking for the rest of it once the window is read), and each
//! other segment gets its own `Range: bytes=a-b` GET. Every request is bounded by what its segment needs,
//! so no connection is cut mid-body and the origin sends each byte once; every segment is held to its
//! range exactly, and the object as a whole to its length and, as ever, to its digest.
//!
//! Never: guesses ranges from a 200 (an origin that ignores Range sends the whole object on one
//! connection, as before), or splits small objects (each connection gets at least [`MIN_PIECES`]).

use std::sync::Arc;

use super::error::EngineError;
use super::source::{stream_pieces, OriginClient, OriginResponse, Streaming};
use super::FetchRequest;
use crate::storage::Task;

/// Fewest pieces worth a connection of their own (a request costs a round trip and a TLS handshake).
pub(super) const MIN_PIECES: u32 = 4;
/// What the first request asks for: a multiple of every automatic piece length (powers of two up to
/// 64 MiB), so the window always ends on a piece boundary.
pub(super) const WINDOW: u64 = crate::storage::layout::MAX_AUTO_PIECE as u64;

/// The range of the first request of a download from `at` (0, or where an interrupted one resumes):
/// a bounded window when several connections are allowed, the rest of the object on one connection
/// when resuming with one, nothing (a plain GET) otherwise.
pub(super) fn first_range(at: Option<u64>, connections: usize, piece_length: u64) -> Option<(u64, Option<u64>)> {
    if connections < 2 {
        return at.map(|at| (at, None));
    }
    let at = at.unwrap_or(0);
    let window = WINDOW.max(piece_length);
    Some((at, Some(at + window - 1)))
}

/// How the rest of the download goes once the first answer is in.
pub(super) struct Plan {
    /// Pieces the first answer's body covers: `[first, window_end)`.
    pub window_end: u32,
    /// The first connection's segment ends here; past the window it asks for `[window_end, first_end)`.
    pub first_end: u32,
    /// Every other connection's segment.
    pub rest: Vec<(u32, u32)>,
}

/// The plan for `resp`'s body into `task` over at most `connections` connections; `None` when the body
/// runs to the end of the object (a 200, or a window that holds the rest): stream it alone.
pub(super) fn plan(task: &Task, resp: &OriginResponse, connections: usize) -> Option<Plan> {
    let (len, pl) = (task.content_length()?, u64::from(task.piece_length()));
    let end = resp.end.filter(|e| resp.range_proven && e + 1 < len)?;
    let count = task.piece_count()?;
    let first = u32::try_from(resp.start / pl).ok()?;
    let window_end = u32::try_from((end + 1) / pl).ok()?;
    if (end + 1) % pl != 0 || window_end <= first || window_end >= count {
        return None;
    }
    let (first_end, rest) = shares(first, window_end, count, u32::try_from(connections).unwrap_or(u32::MAX));
    Some(Plan { window_end, first_end, rest })
}

/// Pieces `[first, count)` over at most `connections`: where the first connection's share ends (at least
/// `window_end`), and the other connections' segments, each at least [`MIN_PIECES`] unless it is all
/// that is left.
fn shares(first: u32, window_end: u32, count: u32, connections: u32) -> (u32, Vec<(u32, u32)>) {
    let n = ((count - first) / MIN_PIECES).clamp(1, connections.max(1));
    let first_end = split(first, count, n)[0].1.max(window_end);
    match count - first_end {
        0 => (count, Vec::new()),
        _ if n == 1 => (count, Vec::new()),
        left => (first_end, split(first_end, count, (left / MIN_PIECES).clamp(1, n - 1))),
    }
}

/// Pieces `[first, count)` in `n` contiguous segments whose sizes differ by at most one piece.
fn split(first: u32, count: u32, n: u32) -> Vec<(u32, u32)> {
    let left = u64::from(count - first);
    let bound = |i: u32| first + (left * u64::from(i) / u64::from(n)) as u32;
    (0..n).map(|i| (bound(i), bound(i + 1))).collect()
}

/// Runs `plan`: `resp`'s window and the rest of the first segment on one connection, every other segment
/// on its own, all at once; the first error ends them all (the task fails and the next request resumes
/// what was stored). Returns the bytes the origin delivered.
pub(super) async fn fetch(
    origin: &OriginClient,
    req: &FetchRequest,
    task: &Arc<Task>,
    resp: OriginResponse,
    plan: &Plan,
    s: &Streaming<'_>,
) -> Result<u64, EngineError> {
    let first = async {
        let mut n = stream_pieces(task, resp, Some(plan.window_end), s).await?;
        if plan.first_end > plan.window_end {
            n += segment(origin, req, task, (plan.window_end, plan.first_end), s).await?;
        }
        Ok(n)
    };
    let others = plan.rest.iter().map(|&seg| segment(origin, req, task, seg, s));
    let (a, b) = futures_util::future::try_join(first, futures_util::future::try_join_all(others)).await?;
    Ok(a + b.iter().sum::<u64>())
}

/// Pieces `[a, b)` over one ranged GET; the last segment asks to the end and is checked whole.
async fn segment(
    origin: &OriginClient,
    req: &FetchRequest,
    task: &Arc<Task>,
    (a, b): (u32, u32),
    s: &Streaming<'_>,
) -> Result<u64, EngineError> {
    let pl = u64::from(task.piece_length());
    let last = task.piece_count().is_none_or(|c| b >= c);
    let to = (!last).then(|| u64::from(b) * pl - 1);
    let r = origin.get(&req.url, &req.headers, Some((u64::from(a) * pl, to))).await?;
    if !r.range_proven {
        // It proved ranges a moment ago; a 200 now would be the whole object on this connection.
        return Err(EngineError::BadRange);
    }
    stream_pieces(task, r, (!last).then_some(b), s).await
}

#[cfg(test)]
mod tests {
    use super::{first_range, shares, split, WINDOW};

    #[test]
    fn shares_give_the_first_connection_its_window_and_the_rest_fair_segments() {
        // 41 pieces, a 16-piece window, 4 connections: 16 on the first, 25 over three more.
        assert_eq!(shares(0, 16, 41, 4), (16, vec![(16, 24), (24, 32), (32, 41)]));
        // 1 GiB: the first connection asks for more after its window, to carry a quarter.
        assert_eq!(shares(0, 16, 256, 4), (64, vec![(64, 128), (128, 192), (192, 256)]));
        // One piece past the window: one more connection for it, never an empty segment.
        assert_eq!(shares(0, 16, 17, 4), (16, vec![(16, 17)]));
        // One connection allowed: the first carries everything.
        assert_eq!(shares(0, 16, 100, 1), (100, vec![]));
        // Resuming at piece 30 of 100: the window runs 30..46.
        let (end, rest) = shares(30, 46, 100, 4);
        assert_eq!(end, 47, "a quarter of the 70 pieces left");
        assert_eq!(rest, vec![(47, 64), (64, 82), (82, 100)]);
        for (first, window_end, count, c) in [(0, 16, 40, 3), (5, 21, 300, 8), (0, 16, 20, 16)] {
            let (end, rest) = shares(first, window_end, count, c);
            assert!(end >= window_end && rest.len() < c as usize);
            let mut at = end;
            for (a, b) in rest {
                assert!(a == at && b > a, "contiguous, non-empty");
                at = b;
            }
            assert_eq!(at, count, "everything is covered");
        }
    }

    #[test]
    fn segments_are_contiguous_cover_the_rest_and_differ_by_at_most_one_piece() {
        for (first, count, n) in [(0, 8, 2), (0, 257, 4), (5, 100, 4), (3, 11, 2), (0, 1 << 20, 16)] {
            let s = split(first, count, n);
            assert_eq!(s.len(), n as usize);
            assert_eq!(s.first().unwrap().0, first);
            assert_eq!(s.last().unwrap().1, count);
            assert!(s.windows(2).all(|w| w[0].1 == w[1].0));
            let sizes: Vec<u32> = s.iter().map(|(a, b)| b - a).collect();
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1, "{sizes:?}");
        }
    }

    #[test]
    fn the_first_request_is_a_bounded_window_only_when_connections_may_follow() {
        let pl = 4u64 << 20;
        assert_eq!(first_range(None, 1, pl), None, "one connection: a plain GET");
        assert_eq!(first_range(Some(8 * pl), 1, pl), Some((8 * pl, None)), "resuming on one: to the end");
        assert_eq!(first_range(None, 4, pl), Some((0, Some(WINDOW - 1))));
        assert_eq!(first_range(Some(8 * pl), 4, pl), Some((8 * pl, Some(8 * pl + WINDOW - 1))));
        assert_eq!(first_range(Some(0), 4, 128 << 20), Some((0, Some((128 << 20) - 1))), "a window holds a piece");
        assert_eq!(WINDOW % (64 << 20), 0);
    }
}
