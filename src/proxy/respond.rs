//! Turning a task into an HTTP response body that streams pieces as they complete.
//!
//! The body never ends cleanly unless every byte was sent and, for a task with an expected digest, the
//! digest matched: a failure mid-body is a body error, which makes hyper abort the connection, so a client
//! can never mistake a short or wrong body for a whole one.

use std::sync::Arc;

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;

use crate::metrics::{self, Metrics};
use crate::storage::{StorageError, Task};

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Every response body the proxy sends: a task's stream, an upstream's body, or a line of text.
pub type Body = BoxBody<Bytes, BodyError>;

/// A one-line text answer from the proxy itself.
pub fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))).map_err(|n: Infallible| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

struct Cursor {
    task: Arc<Task>,
    /// Registers this body as a client of the task while it streams (held pieces wait for it).
    _reading: crate::storage::Reader,
    /// Piece to send from, and the byte within it.
    next: u32,
    part: u32,
    /// Byte window [start, end) of the content to send; `None` = all of it.
    window: Option<(u64, u64)>,
    done: bool,
    /// The next frame's largest size, and the bytes sent so far.
    slice: u32,
    sent: u64,
}

/// A response's body frames are this large until it has sent [`MAX_SLICE`] bytes; then each next one is
/// twice as large, up to [`MAX_SLICE`]. A frame read from the file is its own buffer until the socket takes
/// it, so this is what a connection holds in memory. Measured with scripts/bench-rss.sh (1,000
/// connections, 1 MiB hits: peak RssAnon) and bench-proxy-hit.sh (a 1 GiB hit: CPU per GiB):
/// fixed 1 MiB frames 585 MiB and 0.34 s; fixed 256 KiB 206 MiB and 0.52 s; doubling from the second
/// frame 408 MiB and 0.28 s; doubling after the first MiB (this) 258 MiB and 0.27 s. Small objects get the
/// small frames, long streams the large ones.
const FIRST_SLICE: u32 = 256 << 10;
const MAX_SLICE: u32 = 1 << 20;

/// The task's bytes in slices of [`FIRST_SLICE`] growing to [`MAX_SLICE`], waiting for each piece as
/// needed. `window` is [start, end) and requires the content length to be known (see [`wait_length`]).
pub fn task_body(
    task: Arc<Task>,
    window: Option<(u64, u64)>,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BodyError>>> {
    let pl = u64::from(task.piece_length().max(1));
    let start = window.map_or(0, |(s, _)| s);
    let (first, part) = ((start / pl) as u32, (start % pl) as u32);
    let empty = window.is_some_and(|(s, e)| s >= e);
    let _reading = task.reader();
    let cursor = Cursor { task, _reading, next: first, part, window, done: empty, slice: FIRST_SLICE, sent: 0 };
    let stream = futures_util::stream::unfold(cursor, move |mut c| async move {
        if c.done {
            return None;
        }
        let k = c.next;
        let slice = async {
            if !wait_piece(&c.task, k).await? {
                return Ok(None);
            }
            let b = c.task.read_piece_slice(k, c.part, c.slice).await?;
            // The last bytes of a range go out only once the whole content is proven right, as the last
            // piece of a whole body does: a range that ends early must not end cleanly with bytes that are
            // later found wrong.
            let off = u64::from(k) * pl + u64::from(c.part);
            let ends_window = c.window.is_some_and(|(_, e)| off + b.len() as u64 >= e);
            if ends_window && c.task.verifies_content() {
                c.task.wait_complete().await?;
            }
            Ok::<_, StorageError>(Some(b))
        };
        match slice.await {
            Ok(Some(b)) => {
                let off = u64::from(k) * pl + u64::from(c.part);
                let end = off + b.len() as u64;
                c.part += b.len() as u32;
                if u64::from(c.part) >= pl || c.task.piece_range(k).is_some_and(|(_, l)| c.part >= l) {
                    c.next += 1;
                    c.part = 0;
                }
                let b = match c.window {
                    None => b,
                    Some((_, e)) => {
                        c.done = end >= e;
                        b.slice(..(e.min(end).saturating_sub(off) as usize))
                    }
                };
                Metrics::add(&metrics::global().bytes_served, b.len() as u64);
                c.sent += b.len() as u64;
                if c.sent >= u64::from(MAX_SLICE) {
                    c.slice = c.slice.saturating_mul(2).min(MAX_SLICE);
                }
                Some((Ok(Frame::data(b)), c))
            }
            Ok(None) => None,
            Err(e) => {
                c.done = true;
                Some((Err(Box::new(e) as BodyError), c))
            }
        }
    });
    StreamBody::new(stream)
}

/// Waits until the task's content length is known (an origin without Content-Length: at its end).
pub async fn wait_length(task: &Arc<Task>) -> Result<u64, StorageError> {
    let mut rx = task.subscribe();
    // Bounded by the task: every change is a piece, the length, completion or failure.
    loop {
        if let Some(len) = task.content_length() {
            return Ok(len);
        }
        if let crate::storage::TaskState::Failed(r) = task.state() {
            return Err(r.into());
        }
        if rx.changed().await.is_err() {
            return Err(crate::storage::FailReason::Dropped.into());
        }
    }
}

/// What a `Range` header asks of content of a known length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable single range: the whole content with 200. Multiple ranges are answered this way too.
    Whole,
    /// Bytes [start, end] inclusive: 206.
    Part(u64, u64),
    /// 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// Parses one `Range` value (RFC 9110 §14.2). Syntax it does not understand is ignored (→ `Whole`), as
/// the RFC allows; a well-formed range that starts past the end is unsatisfiable.
pub fn parse_range(v: &str, len: u64) -> RangeAsk {
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return RangeAsk::Whole };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return RangeAsk::Whole };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| if s.bytes().all(|c| c.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => RangeAsk::Whole,
        (true, false) => match num(b) {
            Some(0) => RangeAsk::Unsatisfiable,
            Some(_) if len == 0 => RangeAsk::Unsatisfiable,
            Some(n) => RangeAsk::Part(len.saturating_sub(n), len - 1),
            None => RangeAsk::Whole,
        },
        (false, _) => {
            let Some(s) = num(a) else { return RangeAsk::Whole };
            let e = if b.is_empty() { Some(u64::MAX) } else { num(b) };
            match e {
                None => RangeAsk::Whole,
                Some(e) if e < s => RangeAsk::Whole,
                Some(_) if s >= len => RangeAsk::Unsatisfiable,
                Some(e) => RangeAsk::Part(s, e.min(len - 1)),
            }
        }
    }
}
/// Waits until piece `k` can be sent; `false` past the end of the content (the body is then complete).
async fn wait_piece(task: &Arc<Task>, k: u32) -> Result<bool, StorageError> {
    match task.wait_piece_for_reader(k).await {
        Ok(()) => {}
        // Past the end of a task whose length became known while streaming: the body is complete, and
        // ends cleanly only if the content is proven right.
        Err(StorageError::PieceOutOfRange { .. }) => {
            if task.verifies_content() {
                task.wait_complete().await?;
            }
            return Ok(false);
        }
        Err(e) => return Err(e),
    }
    let last = task.piece_count().is_some_and(|n| k + 1 == n);
    if last && task.verifies_content() {
        // The final bytes go out only once the whole content is proven right.
        task.wait_complete().await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeAsk::*;
        assert_eq!(parse_range("bytes=0-99", 1000), Part(0, 99));
        assert_eq!(parse_range("bytes=10-", 1000), Part(10, 999));
        assert_eq!(parse_range("bytes=-100", 1000), Part(900, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), Part(0, 999));
        assert_eq!(parse_range("bytes=990-5000", 1000), Part(990, 999));
        assert_eq!(parse_range("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Whole);
        assert_eq!(parse_range("bytes=5-1", 1000), Whole);
        assert_eq!(parse_range("items=0-1", 1000), Whole);
        assert_eq!(parse_range("bytes=x-1", 1000), Whole);
        assert_eq!(parse_range("bytes=+1-2", 1000), Whole);
        assert_eq!(parse_range("bytes=-", 1000), Whole);
    }
}
