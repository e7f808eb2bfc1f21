//! `shoal ls` and `shoal stat TASK`: what a running daemon has cached, read from its metrics endpoint
//! (`/tasks`), never from the store's files (they belong to the daemon while it runs).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::metrics::tasks::TaskView;

#[derive(Debug, thiserror::Error)]
pub enum TasksError {
    #[error("cannot reach the daemon's metrics endpoint at {addr}: {reason} (is `shoal daemon` running? see --metrics-addr)")]
    Daemon { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Answer(String),
    #[error("the daemon's answer is not a task listing: {0}")]
    Decode(String),
}

/// GET `path` on the daemon's metrics endpoint; (status, body).
async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, Vec<u8>), TasksError> {
    let err = |e: &dyn std::fmt::Display| TasksError::Daemon { addr, reason: e.to_string() };
    let fetch = async {
        let sock = tokio::net::TcpStream::connect(addr).await.map_err(|e| err(&e))?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.map_err(|e| err(&e))?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .map_err(|e| err(&e))?;
        let resp = tx.send_request(req).await.map_err(|e| err(&e))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| err(&e))?.to_bytes();
        Ok((status, body.to_vec()))
    };
    tokio::time::timeout(Duration::from_secs(10), fetch).await.map_err(|_| err(&"no answer within 10s"))?
}

/// Every task the daemon has, oldest access last.
pub async fn list(addr: SocketAddr) -> Result<Vec<TaskView>, TasksError> {
    let (status, body) = get(addr, "/tasks").await?;
    if status != StatusCode::OK {
        return Err(TasksError::Answer(format!("daemon answered {status}: {}", String::from_utf8_lossy(&body).trim())));
    }
    let mut v: Vec<TaskView> = serde_json::from_slice(&body).map_err(|e| TasksError::Decode(e.to_string()))?;
    v.sort_by(|a, b| b.last_access_unix_ms.cmp(&a.last_access_unix_ms).then(a.id.cmp(&b.id)));
    Ok(v)
}

/// One task by ID or unique prefix.
pub async fn stat(addr: SocketAddr, key: &str) -> Result<TaskView, TasksError> {
    // Only a valid key reaches the URL path.
    if !crate::metrics::tasks::valid_key(key) {
        return Err(TasksError::Answer(crate::metrics::tasks::BAD_KEY.into()));
    }
    let (status, body) = get(addr, &format!("/tasks/{key}")).await?;
    match status {
        StatusCode::OK => serde_json::from_slice(&body).map_err(|e| TasksError::Decode(e.to_string())),
        StatusCode::NOT_FOUND => Err(TasksError::Answer(format!("no task {key} on this node"))),
        _ => Err(TasksError::Answer(String::from_utf8_lossy(&body).trim().to_owned())),
    }
}

/// Bytes in binary units with one decimal ("64.0 MiB").
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut u) = (n as f64, 0);
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "3m ago" style age of a Unix-ms timestamp.
pub fn ago(unix_ms: u64, now: SystemTime) -> String {
    let now_ms = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let s = now_ms.saturating_sub(unix_ms) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn when(unix_ms: u64, now: SystemTime) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(unix_ms);
    format!("{} ({})", humantime::format_rfc3339_seconds(t), ago(unix_ms, now))
}

fn size_of(t: &TaskView) -> String {
    t.content_length.map_or_else(|| "unknown".to_owned(), human_size)
}

fn pieces_of(t: &TaskView) -> String {
    match t.piece_count {
        Some(n) => format!("{}/{n}", t.pieces_complete),
        None => format!("{}/?", t.pieces_complete),
    }
}

/// The `shoal ls` table: one line per task, short IDs (any unique prefix works with `shoal stat`).
pub fn render_list(tasks: &[TaskView], now: SystemTime) -> String {
    let mut out =
        format!("{:<16}  {:<11}  {:>10}  {:>9}  {:<12}  {}\n", "TASK", "STATE", "SIZE", "PIECES", "LAST ACCESS", "URL");
    let mut total = 0;
    for t in tasks {
        total += t.content_length.unwrap_or(0);
        out.push_str(&format!(
            "{:<16}  {:<11}  {:>10}  {:>9}  {:<12}  {}\n",
            t.id.get(..16).unwrap_or(&t.id),
            t.state,
            size_of(t),
            pieces_of(t),
            ago(t.last_access_unix_ms, now),
            t.url
        ));
    }
    out.push_str(&format!("{} task(s), {}\n", tasks.len(), human_size(total)));
    out
}

/// The `shoal stat` page.
pub fn render_stat(t: &TaskView, now: SystemTime) -> String {
    let mut rows = vec![
        ("Task", t.id.clone()),
        ("URL", t.url.clone()),
        ("State", t.failure.as_ref().map_or_else(|| t.state.clone(), |f| format!("{} ({f})", t.state))),
        ("Size", t.content_length.map_or_else(|| "unknown".to_owned(), |n| format!("{n} bytes ({})", human_size(n)))),
        ("Pieces", format!("{} complete, {} each", pieces_of(t), human_size(u64::from(t.piece_length)))),
        ("SHA-256", t.sha256.clone().unwrap_or_else(|| "(not verified yet)".into())),
        ("Created", when(t.created_unix_ms, now)),
        ("Last access", when(t.last_access_unix_ms, now)),
        ("Data file", t.data_file.clone()),
    ];
    rows.retain(|(_, v)| !v.is_empty());
    rows.iter().map(|(k, v)| format!("{:<12} {v}\n", format!("{k}:"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_like_a_human_wrote_them() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(64 << 20), "64.0 MiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        let now = UNIX_EPOCH + Duration::from_secs(100_000);
        assert_eq!(ago(100_000_000 - 5_000, now), "5s ago");
        assert_eq!(ago(100_000_000 - 7_200_000, now), "2h ago");
        assert_eq!(ago(200_000_000, now), "0s ago");
    }
}
