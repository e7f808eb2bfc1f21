//! Back to source over several ranged connections at once.
//!
//! Owns: the first request's range, cutting the pieces an origin download still needs into chunks, and
//! running up to `engine.origin_connections` connections over them. Many origins cap each connection's
//! rate (S3, GCS, CDNs, the storage behind Git LFS servers); a single GET then takes size / cap however
//! fast the links are. The first request asks for a bounded window ([`WINDOW`] from the first missing
//! byte); a 206 whose Content-Range is what was asked proves that the origin serves ranges and says the
//! object's length. That connection reads its window, and it and the others then take the next chunk
//! ([`CHUNK`], in order, each a `Range: bytes=a-b` GET on a pooled connection) until none is left.
//! Extra connections join one at a time, each only if it raised the download's rate (pace.rs); where
//! none did, the first connection takes the rest of the object in one request.
//!
//! Why chunks in order rather than one long segment per connection: the whole-object sha256 is one
//! sequential pass. With contiguous quarters, three quarters arrive before the hash may read them and
//! are hashed after the last byte (measured: 1.18x a direct GET at 1 Gbit with no cap, against 0.99x
//! for one connection); with chunks handed out in order, pieces complete nearly in order and the hash
//! follows the download. Every request is bounded by its chunk, so no connection is cut mid-body and
//! the origin sends each byte once; every chunk is held to its range exactly, and the object as a whole
//! to its length and, as ever, to its digest.
//!
//! Never: guesses ranges from a 200 (an origin that ignores Range sends the whole object on one
//! connection, as before).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::budget::Stream;
use super::error::EngineError;
use super::pace::{Lane, Pace};
use super::source::{drain, stream_pieces_on, OriginClient, OriginResponse, Streaming, Writes};
use super::FetchRequest;
use crate::storage::buf::HOLD_CAP;
use crate::storage::{Task, TaskState};

/// What one chunk request asks for (rounded to whole pieces): long enough that a request's round trip
/// is small beside its transfer, short enough that the hash never trails far behind the download: the
/// pieces other connections fetch ahead of the hash wait in memory for it (storage's hold cap, 32 MiB),
/// and with 4 connections of 8 MiB they fit; 32 MiB chunks ran 96 MiB ahead and most pieces had to be
/// read back from the file to be hashed (docs/benchmarks.md).
pub(super) const CHUNK: u64 = 8 << 20;
/// What the first request asks for (at least one piece): a power of two, so with power-of-two piece
/// lengths the window always ends on a piece boundary.
pub(super) const WINDOW: u64 = 16 << 20;

/// The range of the first request of a download from `at` (0, or where an interrupted one resumes, with
/// the end of the gap there if pieces after it are stored): a bounded window when several connections
/// are allowed, the rest of the object on one connection when resuming with one, nothing (a plain GET)
/// otherwise.
pub(super) fn first_range(
    at: Option<(u64, Option<u64>)>,
    connections: usize,
    piece_length: u64,
) -> Option<(u64, Option<u64>)> {
    if connections < 2 {
        return at.map(|(at, _)| (at, None));
    }
    let (at, gap_end) = at.unwrap_or((0, None));
    let end = at + WINDOW.max(piece_length);
    Some((at, Some(gap_end.filter(|&g| g > at).map_or(end, |g| g.min(end)) - 1)))
}

/// How the rest of the download goes once the first answer is in.
pub(super) struct Plan {
    /// Pieces the first answer's body covers end here; chunks start here.
    pub window_end: u32,
    pub count: u32,
    /// Pieces per chunk.
    pub chunk: u32,
    /// Connections in all, the first one included.
    pub connections: u32,
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
    let chunk = u32::try_from((CHUNK / pl).max(1)).ok()?;
    let chunks = (count - window_end).div_ceil(chunk);
    let connections = (chunks + 1).min(u32::try_from(connections).unwrap_or(u32::MAX));
    Some(Plan { window_end, count, chunk, connections })
}

/// Hands out chunks in order: `[a, b)` of pieces, the last one cut at the piece count.
struct Chunks {
    /// Wider than a piece index, so that taking past the end never wraps around.
    next: AtomicU64,
    count: u32,
    chunk: u32,
}

impl Chunks {
    fn new(start: u32, count: u32, chunk: u32) -> Chunks {
        Chunks { next: AtomicU64::new(u64::from(start)), count, chunk }
    }

    fn is_empty(&self) -> bool {
        self.next.load(Ordering::Relaxed) >= u64::from(self.count)
    }

    /// Everything not taken yet, as one chunk.
    fn take_rest(&self) -> Option<(u32, u32)> {
        let a = self.next.swap(u64::from(self.count), Ordering::Relaxed);
        let a = u32::try_from(a).ok().filter(|&a| a < self.count)?;
        Some((a, self.count))
    }

    fn take(&self) -> Option<(u32, u32)> {
        let a = self.next.fetch_add(u64::from(self.chunk), Ordering::Relaxed);
        let a = u32::try_from(a).ok().filter(|&a| a < self.count)?;
        Some((a, a.saturating_add(self.chunk).min(self.count)))
    }
}

/// Waits (up to `limit`) until chunk `[a, b)` ends within what storage keeps in memory ahead of the
/// whole-object hash ([`HOLD_CAP`]): a connection that ran farther ahead would store pieces that have
/// to be read back from the file to be hashed (a disk read beside the writes, and a hash pass over
/// bytes no longer in cache; through the page cache, as it once was, more CPU than the hash). The
/// hash follows the first connection's pieces within milliseconds, so this only keeps connections from
/// racing a slow one; a stalled download is ended by the idle bound on the connection it waits for.
async fn near_the_hash(task: &Task, (_, b): (u32, u32), chunk: u32, limit: std::time::Duration) {
    let pl = u64::from(task.piece_length()).max(1);
    let ahead = u32::try_from(HOLD_CAP as u64 / pl).unwrap_or(u32::MAX).max(chunk);
    let deadline = tokio::time::Instant::now() + limit;
    // Bounded by the deadline.
    while b > task.hashed_pieces().saturating_add(ahead)
        && tokio::time::Instant::now() < deadline
        && matches!(task.state(), TaskState::InProgress)
    {
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// An extra connection's right to take chunks: a seat in the ingest budget and, when the download is
/// probed, a lane within the width the probe found pays ([`Pace`]).
type Seat<'a> = (Stream, Option<Lane<'a>>);

/// The next chunk for a connection. The first one (`seat` is `None`: its stream is counted by the caller)
/// always takes it; an extra one only while it holds a seat: a lane within the probe's width (extra
/// connections join one at a time while each raises the download's rate; where this node is the limit
/// they do not), and room in the ingest budget ([`super::budget::IngestBudget::try_widen`]). The seat is
/// given up before a chunk when the width narrows or the budget has become crowded, so that when many
/// downloads run at once each reads in order on one connection: its pieces are then hashed as
/// they arrive instead of waiting in memory, or being read back, for the gaps before them. Measured with
/// 8 concurrent cold 1 GiB downloads (loopback, 2 cores, two runs each against the previous code): the
/// daemon's CPU 1.42-1.54 s/GiB against 1.76-1.82, peak RssAnon 86-94 MiB against 113-114, and a capped
/// origin's single download still took 0.24x a direct GET (scripts/bench-origin-cap.sh). Meanwhile it
/// waits, until the first connection has taken every chunk or `live` says the download ended.
async fn next_chunk<'a>(
    chunks: &Chunks,
    seat: Option<&mut Option<Seat<'a>>>,
    piece_length: usize,
    s: &Streaming<'a>,
    live: impl Fn() -> bool,
) -> Option<(u32, u32)> {
    let first = seat.is_none();
    if let Some(seat) = seat {
        let over = s.pace.is_some_and(|p| p.over());
        if seat.is_some() && (over || s.budget.crowded(piece_length)) {
            *seat = None;
        }
        // Bounded by the first connection, which takes a chunk every round or ends the download.
        while seat.is_none() && !chunks.is_empty() && live() {
            *seat = take_seat(s, piece_length);
            if seat.is_none() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    // A failed download's other connections would only ask the origin for bytes no one stores.
    (first || live()).then(|| chunks.take()).flatten()
}

/// Whether the first connection should take the rest of the object in one request: the probe settled on
/// one connection, and nothing after the next chunk is stored (a resumed download keeps its chunks,
/// which skip what is stored). Alone, chunks only cost a request and a round trip every 8 MiB.
fn alone(task: &Task, chunks: &Chunks, s: &Streaming<'_>) -> bool {
    let from = u32::try_from(chunks.next.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
    s.pace.is_some_and(Pace::alone) && (from..chunks.count).all(|k| !task.has_piece(k))
}

/// A lane (when probed), then a seat in the budget; neither is kept without the other.
fn take_seat<'a>(s: &Streaming<'a>, piece_length: usize) -> Option<Seat<'a>> {
    let lane = match s.pace {
        Some(p) => Some(p.join()?),
        None => None,
    };
    Some((s.budget.try_widen(piece_length)?, lane))
}

/// The part of chunk `[a, b)` from its first missing piece to its last one, if any is missing.
fn missing_within(task: &Task, (a, b): (u32, u32)) -> Option<(u32, u32)> {
    let lo = (a..b).find(|&k| !task.has_piece(k))?;
    let hi = (lo..b).rev().find(|&k| !task.has_piece(k))?;
    Some((lo, hi + 1))
}

/// Runs `plan`: the first connection reads `resp`'s window, then every connection takes chunks in order
/// until none is left; the first error ends them all (the task fails; a digest-named one resumes from
/// what was stored at the next request). Returns the bytes the origin delivered.
pub(super) async fn fetch(
    origin: &OriginClient,
    req: &FetchRequest,
    task: &Arc<Task>,
    resp: OriginResponse,
    plan: &Plan,
    s: &Streaming<'_>,
) -> Result<u64, EngineError> {
    let chunks = Chunks::new(plan.window_end, plan.count, plan.chunk);
    let pace = Pace::new(plan.connections);
    // A resumed download: its window starts past pieces an earlier attempt stored.
    let resumed = resp.start > 0;
    let s = &Streaming { pace: Some(&pace), ..*s };
    // Every chunk must be of the representation the window was: a new version uploaded meanwhile would
    // make a mixed object that, named by its URL, no digest could catch. If-Range turns that into a 200.
    let validator = validator(&resp.headers);
    let validator = validator.as_ref();
    let worker = |window: Option<OriginResponse>| {
        let chunks = &chunks;
        async move {
            // An extra connection's seat; the first one's is its download's.
            let (first, mut seat) = (window.is_some(), None);
            // This connection's piece writes, carried from one chunk to the next.
            let mut writes = Writes::new();
            let mut n = match window {
                Some(resp) => stream_pieces_on(task, resp, Some(plan.window_end), s, &mut writes).await?,
                None => 0,
            };
            // Bounded: every round takes a chunk, and there are finitely many.
            let live = || matches!(task.state(), TaskState::InProgress);
            let pl = task.piece_length() as usize;
            loop {
                let c = if first && alone(task, chunks, s) {
                    chunks.take_rest()
                } else {
                    let c = next_chunk(chunks, (!first).then_some(&mut seat), pl, s, live).await;
                    // A resumed download never waits for the hash, which first reads back what the
                    // earlier attempt stored: what this one stores past the hold meanwhile is read back
                    // after it (O_DIRECT, little CPU). A wait would leave the link idle for the stored
                    // part's hash (about a second of a resumed 1 GiB download's 5.5 s at 1 Gbit), and
                    // its windows would tell the probe the hash's rate, not the origin's.
                    if let Some(c) = c.filter(|_| !resumed) {
                        near_the_hash(task, c, plan.chunk, s.idle).await;
                    }
                    c
                };
                let Some(c) = c else { break };
                // A resumed download asks only for what is missing: a chunk already stored is skipped,
                // and one partly stored is narrowed to the pieces between its first and last gap.
                if let Some(c) = missing_within(task, c) {
                    n += segment(origin, req, task, c, validator, s, &mut writes).await?;
                }
            }
            drain(&mut writes).await?;
            Ok::<u64, EngineError>(n)
        }
    };
    let others = (1..plan.connections).map(|_| worker(None));
    let (a, b) = futures_util::future::try_join(worker(Some(resp)), futures_util::future::try_join_all(others)).await?;
    Ok(a + b.iter().sum::<u64>())
}

/// Whether a proven 206 window that stops short of the object's end cannot be joined with later ranges
/// into one object: its total length is unknown, or nothing would hold those ranges to the window's
/// version (no digest named up front, no validator for `If-Range`). The caller then asks for the whole
/// object on one connection instead.
pub(super) fn unjoinable(headers: &http::HeaderMap, total: Option<u64>, end: Option<u64>, digest_named: bool) -> bool {
    let Some(end) = end else { return false };
    match total {
        None => true,
        Some(t) if end + 1 >= t => false,
        Some(_) => !digest_named && validator(headers).is_none(),
    }
}

/// What names the representation of an answer for `If-Range`: a strong ETag, else Last-Modified.
fn validator(h: &http::HeaderMap) -> Option<http::HeaderValue> {
    let strong = h.get(http::header::ETAG).filter(|v| !v.as_bytes().starts_with(b"W/"));
    strong.or_else(|| h.get(http::header::LAST_MODIFIED)).cloned()
}

/// Pieces `[a, b)` over one ranged GET; the last segment asks to the end and is checked whole.
async fn segment(
    origin: &OriginClient,
    req: &FetchRequest,
    task: &Arc<Task>,
    (a, b): (u32, u32),
    validator: Option<&http::HeaderValue>,
    s: &Streaming<'_>,
    writes: &mut Writes,
) -> Result<u64, EngineError> {
    let pl = u64::from(task.piece_length());
    let last = task.piece_count().is_none_or(|c| b >= c);
    let to = (!last).then(|| u64::from(b) * pl - 1);
    let r = origin.get_if(&req.url, &req.headers, Some((u64::from(a) * pl, to)), validator).await?;
    if !r.range_proven {
        // It proved ranges a moment ago: a 200 now is the whole object (changed since, or the origin
        // stopped honouring ranges). The download fails; the next request starts afresh.
        return Err(EngineError::BadRange);
    }
    stream_pieces_on(task, r, (!last).then_some(b), s, writes).await
}

#[cfg(test)]
mod tests {
    use super::super::budget::IngestBudget;
    use super::super::pace::Pace;
    use super::super::source::Streaming;
    use super::{first_range, next_chunk, unjoinable, Chunks, WINDOW};
    use std::time::Duration;

    fn streaming<'a>(budget: &'a IngestBudget, pace: Option<&'a Pace>) -> Streaming<'a> {
        Streaming { in_flight: 4, idle: Duration::from_secs(1), budget, pace }
    }

    #[test]
    fn extra_connections_join_only_within_the_width_the_probe_found_pays() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (pl, b, p) = (4usize << 20, IngestBudget::new(32 << 20), Pace::new(4));
            let s = streaming(&b, Some(&p));
            let c = Chunks::new(0, 64, 2);
            let _download = b.count_stream();
            let (mut one, mut two) = (None, None);
            let wait = Duration::from_millis(100);
            let early = tokio::time::timeout(wait, next_chunk(&c, Some(&mut one), pl, &s, || true));
            assert!(early.await.is_err(), "nothing measured yet: the first connection runs alone");
            assert!(one.is_none(), "and the extra holds no seat");
            p.settle_at(2);
            assert_eq!(next_chunk(&c, Some(&mut one), pl, &s, || true).await, Some((0, 2)), "a second one pays");
            let third = tokio::time::timeout(wait, next_chunk(&c, Some(&mut two), pl, &s, || true));
            assert!(third.await.is_err(), "a third does not fit the width");
            p.settle_at(1);
            let later = next_chunk(&c, Some(&mut one), pl, &s, || true);
            let (got, ()) = tokio::join!(later, async {
                tokio::time::sleep(Duration::from_millis(60)).await;
                p.settle_at(2);
            });
            assert_eq!(got, Some((2, 4)), "it left the narrowed width before its next chunk, then came back");
            assert!(one.is_some());
        });
    }

    #[test]
    fn a_second_connection_joins_only_while_the_budget_has_two_pieces_for_every_stream() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (pl, budget) = (4usize << 20, IngestBudget::new(32 << 20));
            let b = &streaming(&budget, None);
            let c = Chunks::new(0, 64, 2);
            let _download = budget.count_stream();
            let mut seat = None;
            let got = next_chunk(&c, Some(&mut seat), pl, b, || true).await;
            assert_eq!(got, Some((0, 2)), "alone, it joins at once");
            assert!(seat.is_some(), "and holds a seat");
            // Two more downloads arrive: four streams at 2 x 4 MiB each fill 32 MiB.
            let more: Vec<_> = (0..2).map(|_| budget.count_stream()).collect();
            let mut other = None;
            let waiting =
                tokio::time::timeout(Duration::from_millis(100), next_chunk(&c, Some(&mut other), pl, b, || true));
            assert!(waiting.await.is_err(), "a fifth stream would leave less than two pieces each");
            assert!(other.is_none(), "and it took no seat");
            assert_eq!(next_chunk(&c, None, pl, b, || true).await, Some((2, 4)), "the first never waits");
            // One more: the extra connection gives its seat up before its next chunk, and waits...
            let fifth = budget.count_stream();
            let later = next_chunk(&c, Some(&mut seat), pl, b, || true);
            let (got, ()) = tokio::join!(later, async {
                tokio::time::sleep(Duration::from_millis(60)).await;
                // ...until a stream ends.
                drop(fifth);
            });
            assert_eq!(got, Some((4, 6)));
            assert!(seat.is_some(), "it sits again");
            drop(seat);
            let _full: Vec<_> = (0..2).map(|_| budget.count_stream()).collect();
            let mut late = None;
            let gone = tokio::time::timeout(Duration::from_secs(2), next_chunk(&c, Some(&mut late), pl, b, || false));
            assert_eq!(gone.await.ok(), Some(None), "an ended download stops waiting and takes nothing");
            assert_eq!(next_chunk(&c, None, pl, b, || false).await, Some((6, 8)), "the first reports the end itself");
            // Bounded by the count.
            while c.take().is_some() {}
            let none = tokio::time::timeout(Duration::from_secs(2), next_chunk(&c, Some(&mut late), pl, b, || true));
            assert_eq!(none.await.ok(), Some(None), "nothing left: it ends");
            drop(more);
        });
    }

    #[test]
    fn seats_are_checked_and_counted_at_once() {
        let b = IngestBudget::new(32 << 20);
        let pl = 4usize << 20;
        let _first = b.count_stream();
        let seats: Vec<_> = (0..8).filter_map(|_| b.try_widen(pl)).collect();
        assert_eq!(seats.len(), 3, "32 MiB holds four streams of two 4 MiB pieces");
        assert!(!b.crowded(pl));
        let _another = b.count_stream();
        assert!(b.crowded(pl), "a fifth stream crowds the budget");
        drop(seats);
        assert!(!b.crowded(pl) && b.try_widen(pl).is_some(), "seats given back are free again");
    }

    #[test]
    fn a_window_is_joined_with_later_ranges_only_when_they_can_be_held_to_its_version() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = http::HeaderMap::new();
            for (n, v) in pairs {
                m.insert(http::header::HeaderName::from_bytes(n.as_bytes()).unwrap(), v.parse().unwrap());
            }
            m
        };
        let (none, strong, weak) = (h(&[]), h(&[("etag", "\"a\"")]), h(&[("etag", "W/\"a\"")]));
        let dated = h(&[("last-modified", "Fri, 04 Dec 2026 10:00:00 GMT")]);
        let (w, t) = (Some(99), Some(1000));
        assert!(!unjoinable(&none, t, None, false), "a 200 is the whole object");
        assert!(!unjoinable(&none, Some(100), w, false), "a window that reaches the end is the whole object");
        assert!(unjoinable(&strong, None, w, true), "no total length: nothing to plan around");
        assert!(!unjoinable(&none, t, w, true), "the digest named up front holds the joined whole");
        assert!(!unjoinable(&strong, t, w, false) && !unjoinable(&dated, t, w, false), "If-Range holds each range");
        assert!(unjoinable(&none, t, w, false) && unjoinable(&weak, t, w, false), "nothing holds them: one GET");
    }

    #[test]
    fn chunks_come_in_order_cover_the_rest_and_end_at_the_piece_count() {
        for (start, count, chunk) in [(16, 41, 8), (16, 17, 8), (0, 1, 4), (30, 1000, 8), (5, 5 + 64, 8)] {
            let c = Chunks::new(start, count, chunk);
            let mut at = start;
            // Bounded by the count.
            while let Some((a, b)) = c.take() {
                assert!(a == at && b > a && b - a <= chunk, "({a}, {b}) after {at}");
                at = b;
            }
            assert_eq!(at, count);
            assert_eq!(c.take(), None, "and stays empty");
        }
        let c = Chunks::new(u32::MAX - 3, u32::MAX, 8);
        assert_eq!(c.take(), Some((u32::MAX - 3, u32::MAX)), "cut at the count");
        assert_eq!((c.take(), c.take()), (None, None), "taking past the end never wraps around");
    }

    #[test]
    fn the_first_request_is_a_bounded_window_only_when_connections_may_follow() {
        let pl = 4u64 << 20;
        assert_eq!(first_range(None, 1, pl), None, "one connection: a plain GET");
        assert_eq!(first_range(Some((8 * pl, None)), 1, pl), Some((8 * pl, None)), "resuming on one: to the end");
        assert_eq!(first_range(None, 4, pl), Some((0, Some(WINDOW - 1))));
        assert_eq!(first_range(Some((8 * pl, None)), 4, pl), Some((8 * pl, Some(8 * pl + WINDOW - 1))));
        assert_eq!(first_range(Some((8 * pl, Some(9 * pl))), 4, pl), Some((8 * pl, Some(9 * pl - 1))));
        assert_eq!(
            first_range(Some((0, None)), 4, 128 << 20),
            Some((0, Some((128 << 20) - 1))),
            "a window holds a piece"
        );
        assert!(WINDOW.is_power_of_two() && WINDOW >= u64::from(crate::storage::layout::MIN_AUTO_PIECE));
    }
}
