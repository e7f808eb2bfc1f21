//! Turning a task into an HTTP response body that streams pieces as they complete.
//!
//! The body never ends cleanly unless every byte was sent and, for a task with an expected digest, the
//! digest matched: a failure mid-body is a body error, which makes hyper abort the connection, so a client
//! can never mistake a short or wrong body for a whole one.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;

use crate::storage::{StorageError, Task};

pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

struct Cursor {
    task: Arc<Task>,
    next: u32,
    done: bool,
}

/// The task's bytes, piece by piece, waiting for each piece as needed.
pub fn task_body(task: Arc<Task>) -> StreamBody<impl futures_util::Stream<Item = Result<Frame<Bytes>, BodyError>>> {
    let stream = futures_util::stream::unfold(Cursor { task, next: 0, done: false }, |mut c| async move {
        if c.done {
            return None;
        }
        match next_piece(&c.task, c.next).await {
            Ok(Some(b)) => {
                c.next += 1;
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
