//! What a subscribed child hears of one task: a full availability bitmap first (again whenever the
//! content length becomes known), then the pieces completed since as `Have` frames, until every piece was
//! announced or the task failed.
//!
//! Owns: which pieces were announced to one subscription. Never: touches the socket (the upload server's
//! writer does; this hands it frames). Called by server.rs, once per subscription.

use std::sync::Arc;

use super::frame::{self, Frame};
use super::proto::{Availability, ErrorCode, Have, SubscriptionEnd};
use crate::storage::{Store, Task, TaskId, TaskState};

/// Streams a task's piece availability to one child until the task is complete, fails, or the child
/// unsubscribes (the task is aborted then).
pub(super) async fn announce(store: Arc<Store>, send: impl Fn(Frame) -> bool, tid: TaskId) {
    let end = |code: ErrorCode, message: String| {
        send(Frame::SubscriptionEnd(SubscriptionEnd { task_id: tid.0.to_vec(), code: code as i32, message }));
    };
    let Some(task) = store.get(&tid) else {
        return end(ErrorCode::UnknownTask, String::new());
    };
    let mut changes = task.subscribe();
    let mut sent: Vec<bool> = Vec::new();
    let mut known_len = None;
    // Each turn follows one change of the task; ends when everything was announced or the task fails.
    loop {
        if let TaskState::Failed(reason) = task.state() {
            return end(ErrorCode::TaskFailed, reason.to_string());
        }
        let len = task.content_length();
        let done = task.completed_pieces();
        let ok = if sent.is_empty() || len != known_len {
            known_len = len;
            send(Frame::Availability(snapshot(&task, tid, &done, &mut sent)))
        } else {
            let new: Vec<u32> = done.into_iter().filter(|&k| !mark(&mut sent, k)).collect();
            new.chunks(frame::MAX_HAVE).all(|c| send(Frame::Have(Have { task_id: tid.0.to_vec(), pieces: c.to_vec() })))
        };
        if !ok {
            return;
        }
        if let Some(n) = task.piece_count() {
            if sent.len() >= n as usize && sent.iter().take(n as usize).all(|&b| b) {
                return;
            }
        }
        if changes.changed().await.is_err() {
            return end(ErrorCode::TaskFailed, "task dropped".into());
        }
    }
}

/// A full Availability; records every piece in it as announced.
fn snapshot(task: &Arc<Task>, tid: TaskId, done: &[u32], sent: &mut Vec<bool>) -> Availability {
    let count = task.piece_count().unwrap_or_else(|| done.last().map_or(0, |&k| k + 1));
    sent.clear();
    sent.resize(count.max(1) as usize, false);
    for &k in done {
        mark(sent, k);
    }
    Availability {
        task_id: tid.0.to_vec(),
        content_length: task.content_length(),
        piece_length: task.piece_length(),
        bitmap: frame::bitmap(done, count),
        complete: task.piece_count().is_some_and(|n| done.len() as u32 >= n),
    }
}

/// Marks piece `k` as announced; returns whether it already was.
fn mark(sent: &mut Vec<bool>, k: u32) -> bool {
    let k = k as usize;
    if k >= sent.len() {
        sent.resize(k + 1, false);
    }
    std::mem::replace(&mut sent[k], true)
}
