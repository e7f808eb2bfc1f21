//! The daemon's cached tasks as JSON: `/tasks` (all) and `/tasks/<id or prefix>` (one), read by
//! `shoal ls` and `shoal stat`.
//!
//! Why an endpoint and not the store itself: the store's files belong to the running daemon (its mmap'd
//! metadata, its GC), so another process reads them through the daemon rather than opening them.

use serde::{Deserialize, Serialize};

use crate::storage::{TaskInfo, TaskState};

/// One task as the endpoint shows it (stable field names: scripts read them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// 64 hex digits.
    pub id: String,
    /// The source URL without volatile query parameters.
    pub url: String,
    /// `in_progress`, `complete` or `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub content_length: Option<u64>,
    pub piece_length: u32,
    pub pieces_complete: u32,
    pub piece_count: Option<u32>,
    /// Milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    pub last_access_unix_ms: u64,
    /// Hex, once the content is complete and verified.
    pub sha256: Option<String>,
    pub data_file: String,
}

impl From<&TaskInfo> for TaskView {
    fn from(t: &TaskInfo) -> TaskView {
        let (state, failure) = match &t.state {
            TaskState::InProgress => ("in_progress", None),
            TaskState::Complete => ("complete", None),
            TaskState::Failed(why) => ("failed", Some(why.to_string())),
        };
        TaskView {
            id: t.id.to_hex(),
            url: t.url.clone(),
            state: state.to_owned(),
            failure,
            content_length: t.content_length,
            piece_length: t.piece_length,
            pieces_complete: t.pieces_complete,
            piece_count: t.piece_count,
            created_unix_ms: t.created_ms,
            last_access_unix_ms: t.last_access_ms,
            sha256: t.sha256.map(hex::encode),
            data_file: t.data_path.display().to_string(),
        }
    }
}

/// What `/tasks/<key>` finds: the key is a full ID or a prefix of at least 4 hex digits.
pub enum Lookup {
    One(TaskView),
    None,
    /// A prefix that several tasks share.
    Ambiguous(usize),
    BadKey,
}

/// What is wrong with a key that is not a task ID or prefix.
pub const BAD_KEY: &str = "a task ID is 64 hex digits (a prefix of at least 4 will do)";

/// A full task ID or a prefix of at least 4 hex digits (nothing else reaches a lookup or a URL path).
pub fn valid_key(key: &str) -> bool {
    (4..=64).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn lookup(tasks: Vec<TaskView>, key: &str) -> Lookup {
    if !valid_key(key) {
        return Lookup::BadKey;
    }
    let key = key.to_ascii_lowercase();
    let mut found: Vec<TaskView> = tasks.into_iter().filter(|t| t.id.starts_with(&key)).collect();
    match found.len() {
        0 => Lookup::None,
        1 => found.pop().map_or(Lookup::None, Lookup::One),
        n => Lookup::Ambiguous(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str) -> TaskView {
        TaskView {
            id: id.to_owned(),
            url: String::new(),
            state: "complete".into(),
            failure: None,
            content_length: Some(1),
            piece_length: 4 << 20,
            pieces_complete: 1,
            piece_count: Some(1),
            created_unix_ms: 0,
            last_access_unix_ms: 0,
            sha256: None,
            data_file: String::new(),
        }
    }

    #[test]
    fn lookup_by_id_or_unique_prefix() {
        let a = format!("abcd{}", "0".repeat(60));
        let b = format!("abce{}", "0".repeat(60));
        let all = || vec![view(&a), view(&b)];
        assert!(matches!(lookup(all(), &a), Lookup::One(t) if t.id == a));
        assert!(matches!(lookup(all(), "ABCE"), Lookup::One(t) if t.id == b));
        assert!(matches!(lookup(all(), "abc"), Lookup::BadKey));
        assert!(matches!(lookup(all(), "abcz"), Lookup::BadKey));
        assert!(matches!(lookup(all(), "../x"), Lookup::BadKey));
        assert!(matches!(lookup(all(), "ffff"), Lookup::None));
        let c = format!("abcd{}", "1".repeat(60));
        assert!(matches!(lookup(vec![view(&a), view(&c)], "abcd"), Lookup::Ambiguous(2)));
    }
}
