//! Whole-task download from one parent: follow its availability stream and keep a window of piece
//! requests outstanding. The engine's multi-parent logic can replace this; it is also what tests and the
//! benchmark drive.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use super::client::{Pool, SubEvent};
use super::error::TransferError;
use crate::storage::Task;

/// What [`Pool::download`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownloadReport {
    pub pieces: u32,
    pub bytes: u64,
}

impl Pool {
    /// Downloads every piece of `task` that `parent` has or gets, keeping `pieces_in_flight` requests
    /// outstanding, until the local task holds every piece. Any failure is returned at once (the engine
    /// decides where to go next); pieces already stored stay stored.
    pub async fn download(
        self: &Arc<Self>,
        parent: SocketAddr,
        task: &Arc<Task>,
    ) -> Result<DownloadReport, TransferError> {
        let mut sub = self.subscribe(parent, task.id()).await?;
        let mut queue: VecDeque<u32> = VecDeque::new();
        let mut queued: HashSet<u32> = HashSet::new();
        let mut running = tokio::task::JoinSet::new();
        let mut report = DownloadReport::default();
        let width = self.config().pieces_in_flight.max(1) as usize;
        let mut sub_open = true;
        // Each turn handles one event or one finished piece; ends when the task is whole or on error, and a
        // turn with nothing happening for request_timeout fails.
        loop {
            while running.len() < width {
                let Some(k) = queue.pop_front() else { break };
                if task.has_piece(k) {
                    continue;
                }
                let (pool, task) = (self.clone(), task.clone());
                running
                    .spawn(async move { pool.fetch_piece(parent, &task, k).await.map(|()| (k, task.piece_range(k))) });
            }
            if running.is_empty() && is_whole(task) {
                return Ok(report);
            }
            tokio::select! {
                ev = sub.next(), if sub_open => match ev? {
                    Some(SubEvent::Snapshot { content_length, piece_length, pieces, .. }) => {
                        check_geometry(parent, task, content_length, piece_length)?;
                        queue.extend(pieces.into_iter().filter(|&k| wanted(task, k) && queued.insert(k)));
                    }
                    Some(SubEvent::Have(pieces)) => {
                        queue.extend(pieces.into_iter().filter(|&k| wanted(task, k) && queued.insert(k)))
                    }
                    Some(SubEvent::Ended { code, message }) => {
                        sub_open = false;
                        if running.is_empty() && queue.is_empty() && !is_whole(task) {
                            return Err(TransferError::Refused { parent, piece: 0, code, message });
                        }
                    }
                    None => sub_open = false,
                },
                done = running.join_next(), if !running.is_empty() => match done {
                    Some(Ok(Ok((_, range)))) => {
                        report.pieces += 1;
                        report.bytes += range.map_or(0, |(_, l)| l as u64);
                    }
                    Some(Ok(Err(e))) => return Err(e),
                    Some(Err(e)) => return Err(TransferError::ConnectionLost { parent, reason: format!("piece task: {e}") }),
                    None => {}
                },
                _ = tokio::time::sleep(self.config().request_timeout) => {
                    return Err(TransferError::Timeout { parent, secs: self.config().request_timeout.as_secs_f64() });
                }
            }
            if !sub_open && running.is_empty() && queue.is_empty() && !is_whole(task) {
                return Err(TransferError::ConnectionLost { parent, reason: "availability stream ended early".into() });
            }
        }
    }
}

/// A piece the parent advertises that the local task can hold and lacks (a parent's bogus numbers are ignored).
fn wanted(task: &Task, k: u32) -> bool {
    task.piece_range(k).is_some() && !task.has_piece(k)
}

fn is_whole(task: &Task) -> bool {
    task.piece_count().is_some_and(|n| (0..n).all(|k| task.has_piece(k)))
}

/// The local task must have the parent's geometry, or piece numbers would mean different bytes.
fn check_geometry(
    parent: SocketAddr,
    task: &Arc<Task>,
    len: Option<u64>,
    piece_length: u32,
) -> Result<(), TransferError> {
    if piece_length != task.piece_length() {
        return Err(TransferError::Protocol {
            parent,
            reason: format!("piece length {piece_length} != local {}", task.piece_length()),
        });
    }
    match (len, task.content_length()) {
        (Some(a), Some(b)) if a != b => {
            Err(TransferError::Protocol { parent, reason: format!("content length {a} != local {b}") })
        }
        (Some(a), None) => task.set_content_length(a).map_err(TransferError::from),
        _ => Ok(()),
    }
}
