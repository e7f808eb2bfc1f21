//! A client of the node daemon: download one URL into a file, through the local daemon's proxy, or, when
//! no daemon listens, with an engine in this process that caches in the same data directory.
//!
//! Used by `shoal get` and by the git-lfs transfer agent (`lfs`). Owns: the output file's life (bytes go
//! to `FILE.shoal-part`, are synced, then renamed; any failure removes the part file, so the file appears
//! only when every byte arrived and matched the digest) and the data-directory lock that keeps two
//! in-process engines (several git-lfs workers) from opening one store at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

pub mod import;
mod scheme;

#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("invalid URL {0:?}: need an absolute http(s) URL")]
    Url(String),
    #[error("invalid --digest (want sha256:<64 hex>)")]
    Digest,
    #[error("invalid --filtered-query-param {0:?} (want a parameter name)")]
    Param(String),
    #[error("invalid header {0:?} (want 'Name: value')")]
    Header(String),
    #[error("cannot reach the daemon at {addr}: {source}")]
    Unreachable { addr: String, source: std::io::Error },
    #[error("cannot reach the daemon at {addr}: {reason}")]
    Daemon { addr: String, reason: String },
    #[error("server answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("download failed after {got} bytes: {reason}")]
    Body { got: u64, reason: String },
    #[error("content digest mismatch: got sha256:{0}")]
    Mismatch(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("writing {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Embedded(String),
    #[error(transparent)]
    DataDir(#[from] crate::storage::DirLockError),
}

#[derive(Clone)]
pub struct GetOptions {
    pub url: String,
    /// Where the content goes; `None` discards it (preheating the daemon's cache).
    pub output: Option<PathBuf>,
    pub daemon: String,
    /// Where an embedded engine keeps its cache when no daemon answers.
    pub data_dir: PathBuf,
    pub digest: Option<String>,
    pub headers: Vec<String>,
    /// Query parameters left out of the task ID, besides the built-in ones.
    pub filtered_query_params: Vec<String>,
    pub timeout: Duration,
    /// Called with the bytes written so far, as they land (progress bars, git-lfs progress events).
    pub progress: Option<Progress>,
    /// Hash the bytes here too, against `digest`. The daemon ends a body cleanly only once it verified
    /// it; a caller whose own consumer hashes the file again (git-lfs does) skips this third pass.
    pub hash_here: bool,
}

/// A progress callback: total bytes so far.
pub type Progress = std::sync::Arc<dyn Fn(u64) + Send + Sync>;

/// What a finished download reports.
pub struct GetReport {
    pub bytes: u64,
    pub source: String,
    pub task_id: String,
}

fn part_path(out: &Path) -> PathBuf {
    let mut p = out.as_os_str().to_owned();
    p.push(".shoal-part");
    PathBuf::from(p)
}

pub async fn run(o: &GetOptions) -> Result<GetReport, GetError> {
    let part = o.output.as_deref().map(part_path);
    let work = async {
        let r = scheme::resolve(&o.url, o.digest.clone(), o.headers.clone()).await?;
        let o = &GetOptions { url: r.url, digest: r.digest, headers: r.headers, ..o.clone() };
        match fetch(o, part.as_deref()).await {
            // Nobody listens there: a laptop without a daemon; do the download in this process.
            Err(GetError::Unreachable { source, .. }) if source.kind() == std::io::ErrorKind::ConnectionRefused => {
                embedded(o, part.as_deref()).await
            }
            r => r,
        }
    };
    let r = tokio::time::timeout(o.timeout, work).await.unwrap_or(Err(GetError::Timeout(o.timeout)));
    if let (Err(_), Some(p)) = (&r, &part) {
        let _ = tokio::fs::remove_file(p).await;
    }
    r
}

/// The part file a download writes, or nothing when the content is discarded.
struct Sink(Option<(tokio::fs::File, PathBuf)>, Flushed);

/// Writeback started as the file grows, so the sync that ends a download does not find the whole file
/// dirty: with 16 downloads of 256 MiB ending together on one disk, that final sync alone was seconds.
#[derive(Default)]
struct Flushed {
    written: u64,
    started: u64,
}

/// Writeback is started every this many bytes, one chunk behind the writes (tokio's file may still be
/// writing the latest chunk).
const WRITEBACK_CHUNK: u64 = 8 << 20;

impl Sink {
    /// A stale part file of an earlier run goes (a link is removed, not followed); the new one is created
    /// exclusively and never through a symlink planted in its place.
    async fn open(part: Option<&Path>) -> Result<Sink, GetError> {
        let Some(part) = part else { return Ok(Sink(None, Flushed::default())) };
        let _ = tokio::fs::remove_file(part).await;
        let f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(part)
            .await
            .map_err(|source| GetError::File { path: part.to_owned(), source })?;
        Ok(Sink(Some((f, part.to_owned())), Flushed::default()))
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), GetError> {
        let Some((f, p)) = self.0.as_mut() else { return Ok(()) };
        f.write_all(data).await.map_err(|source| GetError::File { path: p.clone(), source })?;
        let w = &mut self.1;
        w.written += data.len() as u64;
        if w.written >= w.started + 2 * WRITEBACK_CHUNK {
            // A hint only; it never fails the download.
            let _ = crate::storage::start_writeback(f, w.started, WRITEBACK_CHUNK as usize);
            w.started += WRITEBACK_CHUNK;
        }
        Ok(())
    }

    /// Synced, then renamed to `out`: the file appears whole or not at all.
    async fn finish(self, out: Option<&Path>) -> Result<(), GetError> {
        let (Sink(Some((f, part)), _), Some(out)) = (self, out) else { return Ok(()) };
        f.sync_all().await.map_err(|source| GetError::File { path: part.clone(), source })?;
        drop(f);
        tokio::fs::rename(&part, out).await.map_err(|source| GetError::File { path: out.to_owned(), source })
    }
}

/// The proxy request for `o`: its URL, its headers, and ours (the digest, the extra filtered names).
fn proxy_request(o: &GetOptions) -> Result<Request<Empty<bytes::Bytes>>, GetError> {
    let uri: Uri = o.url.parse().map_err(|_| GetError::Url(o.url.clone()))?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
        return Err(GetError::Url(o.url.clone()));
    }
    let mut req =
        Request::get(uri.clone()).body(Empty::<bytes::Bytes>::new()).map_err(|_| GetError::Url(o.url.clone()))?;
    if let Some(host) = uri.authority().and_then(|a| http::HeaderValue::from_str(a.as_str()).ok()) {
        req.headers_mut().insert(http::header::HOST, host);
    }
    for h in &o.headers {
        let (n, v) = h.split_once(':').ok_or_else(|| GetError::Header(h.clone()))?;
        let n = http::HeaderName::from_bytes(n.trim().as_bytes()).map_err(|_| GetError::Header(h.clone()))?;
        let v = http::HeaderValue::from_str(v.trim()).map_err(|_| GetError::Header(h.clone()))?;
        req.headers_mut().append(n, v);
    }
    if let Some(d) = &o.digest {
        let v = http::HeaderValue::from_str(d).map_err(|_| GetError::Digest)?;
        req.headers_mut().insert("x-shoal-digest", v);
    }
    // Always sent, even empty: it asks the daemon to make this URL a task even when no proxy rule names it.
    let list = extra_filtered(o)?.join(",");
    let v = http::HeaderValue::from_str(&list).map_err(|_| GetError::Param(list.clone()))?;
    req.headers_mut().insert("x-shoal-filtered-query-params", v);
    Ok(req)
}

async fn fetch(o: &GetOptions, part: Option<&Path>) -> Result<GetReport, GetError> {
    let digest = parse_digest(o.digest.as_deref())?;
    let req = proxy_request(o)?;
    let daemon_err = |reason: String| GetError::Daemon { addr: o.daemon.clone(), reason };
    let sock = tokio::net::TcpStream::connect(&o.daemon)
        .await
        .map_err(|source| GetError::Unreachable { addr: o.daemon.clone(), source })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(sock)).await.map_err(|e| daemon_err(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| daemon_err(e.to_string()))?;
    let (parts, mut body) = resp.into_parts();
    let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if parts.status != StatusCode::OK {
        let msg = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let message = String::from_utf8_lossy(&msg).lines().next().unwrap_or("").to_owned();
        return Err(GetError::Status { status: parts.status, message });
    }
    let expected_len: Option<u64> = header("content-length").parse().ok();
    let mut f = Sink::open(part).await?;
    let mut hasher = digest.filter(|_| o.hash_here).map(|_| Sha256::new());
    let mut got = 0u64;
    let bar = progress_bar(expected_len, &header("x-shoal-source"));
    // Bounded by the body.
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| GetError::Body { got, reason: e.to_string() })?;
        if let Ok(data) = frame.into_data() {
            if let Some(h) = hasher.as_mut() {
                h.update(&data);
            }
            f.write(&data).await?;
            got += data.len() as u64;
            if let Some(b) = &bar {
                b.set_position(got);
            }
            if let Some(p) = &o.progress {
                p(got);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(exp) = expected_len.filter(|&e| e != got) {
        return Err(GetError::Body { got, reason: format!("expected {exp} bytes") });
    }
    if let (Some(h), Some(d)) = (hasher, digest) {
        let actual: [u8; 32] = h.finalize().into();
        if actual != d {
            return Err(GetError::Mismatch(hex::encode(actual)));
        }
    }
    f.finish(o.output.as_deref()).await?;
    conn.abort();
    Ok(GetReport { bytes: got, source: header("x-shoal-source"), task_id: header("x-shoal-task-id") })
}

/// A progress bar on a terminal (bytes, rate, ETA, where the daemon gets the bytes); none when piped.
fn progress_bar(len: Option<u64>, source: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let b = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    let template = "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}";
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        b.set_style(style);
    }
    b.set_message(format!("from {}", if source.is_empty() { "?" } else { source }));
    Some(b)
}

/// The --filtered-query-param names, checked as the proxy checks them.
fn extra_filtered(o: &GetOptions) -> Result<Vec<String>, GetError> {
    for p in &o.filtered_query_params {
        if crate::proxy::rules::parse_extra_filtered(p).is_none_or(|v| v.len() != 1) {
            return Err(GetError::Param(p.clone()));
        }
    }
    Ok(o.filtered_query_params.clone())
}

fn parse_digest(d: Option<&str>) -> Result<Option<[u8; 32]>, GetError> {
    let Some(d) = d else { return Ok(None) };
    let hex = d.strip_prefix("sha256:").ok_or(GetError::Digest)?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).map_err(|_| GetError::Digest)?;
    Ok(Some(out))
}

/// The data directory for this process's engine. Another in-process engine (a sibling git-lfs worker) is
/// waited for, bounded by the caller's timeout; a daemon holding it is an error at once (it should have
/// answered at the proxy address: the client is pointed at the wrong one).
async fn lock_data_dir(dir: &Path) -> Result<crate::storage::DirLock, GetError> {
    use crate::storage::{DirLock, Holder};
    loop {
        match DirLock::try_acquire(dir, &Holder::Embedded) {
            Err(e) if !e.held_by_daemon() && matches!(e, crate::storage::DirLockError::Busy { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            r => return r.map_err(Into::into),
        }
    }
}

/// Downloads with an engine in this process (no scheduler: straight from the origin), caching in
/// `data_dir`, then copies the task file to the output.
async fn embedded(o: &GetOptions, part: Option<&Path>) -> Result<GetReport, GetError> {
    use crate::engine::{Engine, EngineConfig, FetchRequest};
    use crate::storage::{Store, StoreConfig};
    let uri: Uri = o.url.parse().map_err(|_| GetError::Url(o.url.clone()))?;
    let extra = extra_filtered(o)?;
    let id = crate::proxy::rules::identify_with(&uri, crate::proxy::rules::DEFAULT_FILTERED_PARAMS, &extra, true)
        .ok_or_else(|| GetError::Url(o.url.clone()))?;
    let digest = parse_digest(o.digest.as_deref())?.or(id.digest);
    let task_id = match (id.digest, digest) {
        (None, Some(d)) => crate::storage::TaskId(d),
        _ => id.task_id,
    };
    let mut headers = Vec::new();
    for h in &o.headers {
        let (n, v) = h.split_once(':').ok_or_else(|| GetError::Header(h.clone()))?;
        headers.push((n.trim().to_owned(), v.trim().to_owned()));
    }
    let emb = |e: &dyn std::fmt::Display| GetError::Embedded(e.to_string());
    let _lock = lock_data_dir(&o.data_dir).await?;
    let (store, _) = Store::open(StoreConfig::new(&o.data_dir)).map_err(|e| emb(&e))?;
    let pool = crate::transfer::Pool::new(crate::transfer::ClientConfig::default());
    let engine = Engine::new(store, pool, None, EngineConfig::default()).map_err(|e| emb(&e))?;
    let dropped = |n: &str| {
        crate::engine::identity::filtered(n, crate::proxy::rules::DEFAULT_FILTERED_PARAMS)
            || crate::engine::identity::filtered(n, &extra)
    };
    let credentials = crate::engine::credentials(&uri, &headers, dropped);
    let url = o.url.clone();
    let req = FetchRequest { task_id, url, headers, display_url: id.display_url, expected_sha256: digest, credentials };
    let status = |e: &crate::engine::EngineError| match e {
        crate::engine::EngineError::OriginStatus { status, .. } => {
            GetError::Status { status: *status, message: format!("origin answered {status}") }
        }
        other => emb(other),
    };
    let f = engine.fetch(req.clone()).await.map_err(|e| status(&e))?;
    // A copy in this store that was fetched with credentials is exported only if the origin agrees.
    engine.authorize(&req, crate::engine::Authorize::Auto, &f).await.map_err(|e| status(&e))?;
    f.task.wait_complete().await.map_err(|e| match e {
        crate::storage::StorageError::DigestMismatch { got, .. } => GetError::Mismatch(hex::encode(got)),
        other => emb(&other),
    })?;
    if let (Some(part), Some(out)) = (part, &o.output) {
        let _ = std::fs::remove_file(part);
        f.task.export_to(part).map_err(|e| emb(&e))?;
        std::fs::rename(part, out).map_err(|source| GetError::File { path: out.clone(), source })?;
    }
    if let Some(p) = &o.progress {
        p(f.task.content_length().unwrap_or(0));
    }
    Ok(GetReport {
        bytes: f.task.content_length().unwrap_or(0),
        source: format!("{} (embedded)", f.source.as_str()),
        task_id: f.task.id().to_hex(),
    })
}
