//! The scheduler's domain types, and their checked conversions from and to the wire messages. Everything
//! read from a socket passes through a `from_proto` here, which refuses what the rest of the code must not
//! see (bad task IDs, unparsable addresses, oversized strings).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::error::StateError;
use super::proto;
use crate::storage::TaskId;

/// Longest host ID, hostname or reason accepted; IDs are map keys, so they are kept small.
pub const MAX_NAME_LEN: usize = 256;
/// Longest URL accepted (signed URLs are long, but not this long).
pub const MAX_URL_LEN: usize = 16 << 10;
/// Most request headers carried for a task, and their total size (names and values).
pub const MAX_HEADERS: usize = 128;
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Most parents a client accepts from one reply.
pub const MAX_PARENTS_ON_WIRE: usize = 64;

/// Who a peer is and where others download from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostInfo {
    /// Stable across restarts of the same daemon (e.g. hostname + data dir); the latest connection wins.
    pub host_id: String,
    pub hostname: String,
    pub ip: IpAddr,
    pub upload_port: u16,
    /// What the host can upload in total; ranking uses what is left of it.
    pub upload_capacity_bytes_per_sec: u64,
    pub is_seed: bool,
}

/// A peer's wish to download a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRequest {
    pub task_id: TaskId,
    /// Exactly what a seed peer must fetch from the origin on this peer's behalf.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub content_length: Option<u64>,
    pub piece_length: Option<u32>,
    /// The request's credentials stay on the requester: no seed fetches on its behalf.
    pub private: bool,
    /// The request carries credentials (headers or credential query parameters): the task is marked for
    /// authorization probes swarm-wide.
    pub credentialed: bool,
}

/// A peer's report that it started a task (0 pieces) or has more pieces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskProgress {
    pub task_id: TaskId,
    pub pieces_complete: u32,
    pub piece_count: Option<u32>,
    pub content_length: Option<u64>,
    pub piece_length: u32,
    /// This peer fetches the task from the origin.
    pub back_to_source: bool,
    /// This peer holds the task for a request with credentials.
    pub credentialed: bool,
}

/// A peer's upload load, last reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerLoad {
    pub upload_bytes_per_sec: u64,
    pub upload_connections: u32,
}

/// A peer to download pieces from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parent {
    pub host_id: String,
    pub ip: IpAddr,
    pub upload_port: u16,
    pub pieces_complete: u32,
    pub is_seed: bool,
    pub finished: bool,
}

impl Parent {
    /// Where the parent's upload server listens.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.upload_port)
    }
}

/// The scheduler's answer to a [`TaskRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Download from these peers (best first).
    Parents(Vec<Parent>),
    /// Fetch from the origin yourself (you are the task's back-to-source peer, or the wait ran out).
    BackToSource,
    /// Another peer is fetching from the origin and has no piece yet: ask again after this long.
    Wait { retry_after: Duration },
}

/// What a task request gets back: the decision, and the content's sha256 once the task's back-to-source
/// peer reported it (what a child holds the pieces it took from peers to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub decision: Decision,
    pub sha256: Option<[u8; 32]>,
    /// The task was asked for or announced for a request with credentials (its copies may be private).
    pub credentialed: bool,
}

/// Sent to a seed peer: fetch this task from the origin with exactly this URL and these headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedTrigger {
    pub task_id: TaskId,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub content_length: Option<u64>,
    pub piece_length: Option<u32>,
}

fn invalid(what: impl Into<String>) -> StateError {
    StateError::Invalid(what.into())
}

/// A task ID from its 32 wire bytes.
pub fn task_id_from(b: &[u8]) -> Result<TaskId, StateError> {
    let a: [u8; 32] = b.try_into().map_err(|_| invalid(format!("task_id must be 32 bytes, got {}", b.len())))?;
    Ok(TaskId(a))
}

fn name(field: &str, s: String, allow_empty: bool) -> Result<String, StateError> {
    if (!allow_empty && s.is_empty()) || s.len() > MAX_NAME_LEN {
        return Err(invalid(format!("{field} must be 1..={MAX_NAME_LEN} bytes")));
    }
    Ok(s)
}

fn port(p: u32) -> Result<u16, StateError> {
    u16::try_from(p).map_err(|_| invalid(format!("port {p} out of range")))
}

fn ip(s: &str) -> Result<IpAddr, StateError> {
    s.parse().map_err(|_| invalid(format!("ip {:?} is not an IP address", truncate(s))))
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn headers_from(h: Vec<proto::Header>) -> Result<Vec<(String, String)>, StateError> {
    if h.len() > MAX_HEADERS {
        return Err(invalid(format!("more than {MAX_HEADERS} headers")));
    }
    if h.iter().map(|h| h.name.len() + h.value.len()).sum::<usize>() > MAX_HEADER_BYTES {
        return Err(invalid(format!("headers larger than {MAX_HEADER_BYTES} bytes")));
    }
    Ok(h.into_iter().map(|h| (h.name, h.value)).collect())
}

fn headers_to(h: &[(String, String)]) -> Vec<proto::Header> {
    h.iter().map(|(n, v)| proto::Header { name: n.clone(), value: v.clone() }).collect()
}

fn url(u: String) -> Result<String, StateError> {
    if u.len() > MAX_URL_LEN {
        return Err(invalid(format!("url longer than {MAX_URL_LEN} bytes")));
    }
    Ok(u)
}

impl HostInfo {
    pub fn to_proto(&self) -> proto::Register {
        proto::Register {
            host_id: self.host_id.clone(),
            hostname: self.hostname.clone(),
            ip: self.ip.to_string(),
            upload_port: self.upload_port.into(),
            upload_capacity_bytes_per_sec: self.upload_capacity_bytes_per_sec,
            is_seed: self.is_seed,
            // Filled in by the client, which signs over its connection's session.
            identity_key: Vec::new(),
            identity_proof: Vec::new(),
        }
    }

    pub fn from_proto(r: proto::Register) -> Result<HostInfo, StateError> {
        Ok(HostInfo {
            host_id: name("host_id", r.host_id, false)?,
            hostname: name("hostname", r.hostname, true)?,
            ip: ip(&r.ip)?,
            upload_port: port(r.upload_port)?,
            upload_capacity_bytes_per_sec: r.upload_capacity_bytes_per_sec,
            is_seed: r.is_seed,
        })
    }
}

impl TaskRequest {
    pub fn to_proto(&self, req_id: u64) -> proto::RequestTask {
        proto::RequestTask {
            req_id,
            task_id: self.task_id.0.to_vec(),
            url: self.url.clone(),
            headers: headers_to(&self.headers),
            content_length: self.content_length,
            piece_length: self.piece_length,
            private: self.private,
            credentialed: self.credentialed,
        }
    }

    pub fn from_proto(r: proto::RequestTask) -> Result<TaskRequest, StateError> {
        Ok(TaskRequest {
            task_id: task_id_from(&r.task_id)?,
            url: url(r.url)?,
            headers: headers_from(r.headers)?,
            content_length: r.content_length,
            piece_length: r.piece_length,
            private: r.private,
            credentialed: r.credentialed,
        })
    }
}

impl TaskProgress {
    pub fn to_proto(&self) -> proto::TaskProgress {
        proto::TaskProgress {
            task_id: self.task_id.0.to_vec(),
            pieces_complete: self.pieces_complete,
            piece_count: self.piece_count,
            content_length: self.content_length,
            piece_length: self.piece_length,
            back_to_source: self.back_to_source,
            credentialed: self.credentialed,
        }
    }

    pub fn from_proto(p: proto::TaskProgress) -> Result<TaskProgress, StateError> {
        if let Some(c) = p.piece_count {
            if p.pieces_complete > c {
                return Err(invalid(format!("{} pieces complete of {c}", p.pieces_complete)));
            }
        }
        Ok(TaskProgress {
            task_id: task_id_from(&p.task_id)?,
            pieces_complete: p.pieces_complete,
            piece_count: p.piece_count,
            content_length: p.content_length,
            piece_length: p.piece_length,
            back_to_source: p.back_to_source,
            credentialed: p.credentialed,
        })
    }
}

impl Parent {
    pub fn to_proto(&self) -> proto::Parent {
        proto::Parent {
            host_id: self.host_id.clone(),
            ip: self.ip.to_string(),
            upload_port: self.upload_port.into(),
            pieces_complete: self.pieces_complete,
            is_seed: self.is_seed,
            finished: self.finished,
        }
    }

    pub fn from_proto(p: proto::Parent) -> Result<Parent, StateError> {
        Ok(Parent {
            host_id: name("parent host_id", p.host_id, false)?,
            ip: ip(&p.ip)?,
            upload_port: port(p.upload_port)?,
            pieces_complete: p.pieces_complete,
            is_seed: p.is_seed,
            finished: p.finished,
        })
    }
}

impl Decision {
    pub fn to_proto(&self) -> proto::request_task_reply::Decision {
        use proto::request_task_reply::Decision as D;
        match self {
            Decision::Parents(ps) => D::Parents(proto::Parents { parents: ps.iter().map(Parent::to_proto).collect() }),
            Decision::BackToSource => D::BackToSource(proto::BackToSource {}),
            Decision::Wait { retry_after } => {
                D::Wait(proto::Wait { retry_after_ms: retry_after.as_millis().try_into().unwrap_or(u32::MAX) })
            }
        }
    }

    /// The retry delay a client honours is clamped, so a broken scheduler cannot park a download for long.
    pub fn from_proto(d: Option<proto::request_task_reply::Decision>) -> Result<Decision, StateError> {
        use proto::request_task_reply::Decision as D;
        match d {
            None => Err(invalid("reply without a decision")),
            Some(D::BackToSource(_)) => Ok(Decision::BackToSource),
            Some(D::Wait(w)) => {
                Ok(Decision::Wait { retry_after: Duration::from_millis(u64::from(w.retry_after_ms).clamp(10, 30_000)) })
            }
            Some(D::Parents(p)) => {
                if p.parents.len() > MAX_PARENTS_ON_WIRE {
                    return Err(invalid(format!("more than {MAX_PARENTS_ON_WIRE} parents")));
                }
                Ok(Decision::Parents(p.parents.into_iter().map(Parent::from_proto).collect::<Result<_, _>>()?))
            }
        }
    }
}

impl SeedTrigger {
    pub fn to_proto(&self) -> proto::TriggerSeed {
        proto::TriggerSeed {
            task_id: self.task_id.0.to_vec(),
            url: self.url.clone(),
            headers: headers_to(&self.headers),
            content_length: self.content_length,
            piece_length: self.piece_length,
        }
    }

    pub fn from_proto(t: proto::TriggerSeed) -> Result<SeedTrigger, StateError> {
        Ok(SeedTrigger {
            task_id: task_id_from(&t.task_id)?,
            url: url(t.url)?,
            headers: headers_from(t.headers)?,
            content_length: t.content_length,
            piece_length: t.piece_length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_input() {
        assert!(task_id_from(&[1; 31]).is_err());
        assert_eq!(task_id_from(&[7; 32]), Ok(TaskId([7; 32])));
        let mut r = HostInfo {
            host_id: "h".into(),
            hostname: "n".into(),
            ip: "127.0.0.1".parse().unwrap(),
            upload_port: 1,
            upload_capacity_bytes_per_sec: 1,
            is_seed: false,
        }
        .to_proto();
        assert!(HostInfo::from_proto(r.clone()).is_ok());
        r.upload_port = 70_000;
        assert!(HostInfo::from_proto(r.clone()).is_err());
        r.upload_port = 1;
        r.ip = "not an ip ¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥¥".into();
        assert!(HostInfo::from_proto(r.clone()).is_err());
        r.ip = "::1".into();
        r.host_id = String::new();
        assert!(HostInfo::from_proto(r).is_err());
        let p = proto::TaskProgress {
            task_id: vec![0; 32],
            pieces_complete: 5,
            piece_count: Some(4),
            ..Default::default()
        };
        assert!(TaskProgress::from_proto(p).is_err());
        assert!(Decision::from_proto(None).is_err());
        let big = proto::Header { name: "x".into(), value: "v".repeat(MAX_HEADER_BYTES) };
        let r = proto::RequestTask { task_id: vec![0; 32], headers: vec![big], ..Default::default() };
        assert!(TaskRequest::from_proto(r).is_err());
        let w =
            Decision::from_proto(Some(proto::request_task_reply::Decision::Wait(proto::Wait { retry_after_ms: 0 })));
        assert_eq!(w, Ok(Decision::Wait { retry_after: Duration::from_millis(10) }));
    }
}
