//! Turning a task into an HTTP response body that streams pieces as they complete.
//!
//! The body never ends cleanly unless every byte was sent and, for a task with an expected digest, the
//! digest matched: a failure mid-body is a body error, which makes hyper abort the connection, so a client
//! can never mistake a short or wrong body for a whole one.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;

use crate::metrics::{self, Metrics};
use crate::storage::{StorageError, Task};

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

struct Cursor {
    task: Arc<Task>,
    next: u32,
    /// Byte window [start, end) of the content to send; `None` = all of it.
    window: Option<(u64, u64)>,
    done: bool,
}

/// The task's bytes, piece by piece, waiting for each piece as needed. `window` is [start, end) and
/// requires the content length to be known (see [`wait_length`]).
pub fn task_body(
    task: Arc<Task>,
    window: Option<(u64, u64)>,
) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BodyError>>> {
    let pl = u64::from(task.piece_length().max(1));
    let first = window.map_or(0, |(s, _)| (s / pl) as u32);
    let empty = window.is_some_and(|(s, e)| s >= e);
    let stream =
        futures_util::stream::unfold(Cursor { task, next: first, window, done: empty }, move |mut c| async move {
            if c.done {
                return None;
            }
            match next_piece(&c.task, c.next).await {
                Ok(Some(b)) => {
                    Metrics::add(&metrics::global().bytes_served, b.len() as u64);
                    let k = c.next;
                    c.next += 1;
                    let b = match c.window {
                        None => b,
                        Some((s, e)) => {
                            let off = u64::from(k) * pl;
                            let end = off + b.len() as u64;
                            c.done = end >= e;
                            let from = s.saturating_sub(off).min(b.len() as u64) as usize;
                            let to = (e.min(end).saturating_sub(off) as usize).max(from);
                            b.slice(from..to)
                        }
                    };
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
            return Err(StorageError::TaskFailed(r));
        }
        if rx.changed().await.is_err() {
            return Err(StorageError::TaskFailed("task dropped".into()));
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
async fn next_piece(task: &Arc<Task>, k: u32) -> Result<Option<Bytes>, StorageError> {
    match task.wait_piece(k).await {
        Ok(()) => {}
        // Past the end of a task whose length became known while streaming: the body is complete, and
        // ends cleanly only if the content is proven right.
        Err(StorageError::PieceOutOfRange { .. }) => {
            if task.expected_sha256().is_some() {
                task.wait_complete().await?;
            }
            return Ok(None);
        }
        Err(e) => return Err(e),
    }
    let last = task.piece_count().is_some_and(|n| k + 1 == n);
    if last && task.expected_sha256().is_some() {
        // The final bytes go out only once the whole content is proven right.
        task.wait_complete().await?;
    }
    task.read_piece(k).await.map(Some)
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
