//! A Hugging Face–like origin (a hub and its CDN, on two listeners) and runners for the real
//! `huggingface_hub` client (installed by scripts/install-test-deps.sh in [`HF_VENV`]), for end-to-end tests
//! of the daemon's Hugging Face mirror route.
//!
//! The hub answers what `hf_hub_download` and `snapshot_download` of huggingface_hub 2.4.0 ask for:
//! - `HEAD|GET /{repo}/resolve/{rev}/{file}`: an LFS file is a 302 to a signed CDN URL (a fresh signature for
//!   every request) with `X-Repo-Commit`, `X-Linked-Etag: "<sha256>"`, `X-Linked-Size` and the weak `ETag` of
//!   the redirect body; a git-stored file is a 200 with its body, `ETag: "<blob id>"` and `X-Repo-Commit`.
//! - `GET /api/models/{repo}[/revision/{rev}]` (model info: `sha`, `siblings`) and
//!   `GET /api/models/{repo}/tree/{rev}[?recursive=..]` (the file list, with `lfs` for LFS files).
//! - Private repos: no token is 401 with `X-Error-Code: RepoNotFound` (the client raises
//!   `RepositoryNotFoundError`), a wrong one 404 with the same code; unknown revision 404 `RevisionNotFound`,
//!   unknown file 404 `EntryNotFound` (with `X-Repo-Commit`).
//!
//! The CDN serves `GET|HEAD /repos/{xx}/{yy}/{sha256(repo)}/{sha256}?response-content-disposition=..&Expires=..
//! &Policy=..&Signature=..&Key-Pair-Id=..` with Range support (206, 416), and refuses a URL whose signature
//! does not match its path and query, or whose `Expires` has passed, with 403.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// The venv holding huggingface_hub ([`HF_HUB_VERSION`]).
pub const HF_VENV: &str = "/opt/shoal-test-tools/hf-venv";
/// The huggingface_hub version scripts/install-test-deps.sh installs, whose requests this origin answers.
pub const HF_HUB_VERSION: &str = "2.4.0";
/// The CloudFront key pair id the CDN URLs carry.
pub const KEY_PAIR_ID: &str = "K3SHOALTESTKEY";

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, b: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(b.into()).map_err(|never: Infallible| match never {}).boxed());
    *r.status_mut() = status;
    r
}

fn hex_sha256(b: &[u8]) -> String {
    hex::encode(super::sha256(b))
}

/// A file of one commit.
#[derive(Clone)]
struct RepoEntry {
    name: String,
    data: Bytes,
    lfs: bool,
    sha256: String,
    /// Stands in for git's blob sha1 (40 hex digits, derived from the blob the way git frames it).
    blob_id: String,
}

struct Repo {
    private_token: Option<String>,
    main: String,
    commits: HashMap<String, Vec<RepoEntry>>,
}

/// One request as the origin received it.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    pub headers: Vec<(String, String)>,
    /// The status the origin answered with.
    pub status: u16,
}

impl Logged {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct State {
    hub_addr: Mutex<Option<SocketAddr>>,
    cdn_addr: Mutex<Option<SocketAddr>>,
    repos: Mutex<HashMap<String, Repo>>,
    /// CDN objects by sha256.
    blobs: Mutex<HashMap<String, Bytes>>,
    secret: String,
    url_ttl_secs: AtomicU64,
    resolve_cache: AtomicBool,
    hub_log: Mutex<Vec<Logged>>,
    cdn_log: Mutex<Vec<Logged>>,
    /// GETs with a valid signature, by sha256.
    cdn_gets: Mutex<HashMap<String, usize>>,
    cdn_refused: AtomicU64,
    cdn_bytes: AtomicU64,
    cdn_frame_delay_us: AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unpct(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = full(status, v.to_string());
    r.headers_mut().insert("content-type", "application/json; charset=utf-8".parse().unwrap());
    r
}

/// The Hub's error answer: `X-Error-Code`, `X-Error-Message` and `{"error": ..}`.
fn hub_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let mut r = json(status, serde_json::json!({ "error": message }));
    r.headers_mut().insert("x-error-code", code.parse().unwrap());
    r.headers_mut().insert("x-error-message", message.parse().unwrap());
    r
}

fn bearer(req: &Request<hyper::body::Incoming>) -> Option<String> {
    let v = req.headers().get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(str::to_owned)
}

fn log_of(req: &Request<hyper::body::Incoming>) -> Logged {
    Logged {
        method: req.method().to_string(),
        target: req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        status: 0,
    }
}

/// Finds `repo` at `rev` (a branch, "main", or a commit) and checks the token: Ok((commit, files)) or the
/// Hub's refusal.
fn lookup(
    st: &State,
    repo: &str,
    rev: &str,
    token: Option<&str>,
) -> Result<(String, Vec<RepoEntry>), Box<Response<Body>>> {
    let repos = st.repos.lock().unwrap();
    // Like the Hub: 401 to an anonymous client (it cannot tell missing from private), 404 to a known one.
    let status = if token.is_some() { StatusCode::NOT_FOUND } else { StatusCode::UNAUTHORIZED };
    let not_found = || hub_error(status, "RepoNotFound", "Repository not found");
    let Some(r) = repos.get(repo) else { return Err(Box::new(not_found())) };
    if let Some(t) = &r.private_token {
        match token {
            None => {
                return Err(Box::new(hub_error(
                    StatusCode::UNAUTHORIZED,
                    "RepoNotFound",
                    "Invalid username or password.",
                )))
            }
            Some(p) if p != t => {
                return Err(Box::new(hub_error(StatusCode::NOT_FOUND, "RepoNotFound", "Repository not found")))
            }
            Some(_) => {}
        }
    }
    let commit = if rev == "main" { r.main.clone() } else { rev.to_owned() };
    match r.commits.get(&commit) {
        Some(files) => Ok((commit, files.clone())),
        None => Err(Box::new(hub_error(StatusCode::NOT_FOUND, "RevisionNotFound", &format!("Invalid rev id: {rev}")))),
    }
}

fn cdn_path(repo: &str, sha256: &str) -> String {
    let h = hex_sha256(repo.as_bytes());
    format!("/repos/{}/{}/{h}/{sha256}", &h[..2], &h[2..4])
}

/// The signature of a CDN URL: covers its path and the query before `&Signature=`.
fn sign(secret: &str, path: &str, query: &str) -> String {
    hex_sha256(format!("{secret}\n{path}\n{query}").as_bytes())
}

fn signed_cdn_url(st: &State, repo: &str, e: &RepoEntry) -> String {
    let cdn = st.cdn_addr.lock().unwrap().expect("cdn address");
    let path = cdn_path(repo, &e.sha256);
    let base = e.name.rsplit('/').next().unwrap_or(&e.name);
    let disposition = format!("inline; filename*=UTF-8''{}; filename=\"{base}\";", pct(base));
    let expires = now_secs() + st.url_ttl_secs.load(Ordering::Relaxed);
    let policy: u64 = rand::random();
    let query = format!("response-content-disposition={}&Expires={expires}&Policy={policy:016x}", pct(&disposition));
    let sig = sign(&st.secret, &path, &query);
    format!("http://{cdn}{path}?{query}&Signature={sig}&Key-Pair-Id={KEY_PAIR_ID}")
}

async fn hub(st: Arc<State>, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    let mut entry = log_of(&req);
    let r = hub_answer(&st, &req);
    entry.status = r.status().as_u16();
    st.hub_log.lock().unwrap().push(entry);
    Ok(r)
}

fn hub_answer(st: &State, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let token = bearer(req);
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return full(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    if let Some(rest) = path.strip_prefix("/api/models/") {
        return api(st, rest, token.as_deref());
    }
    if let Some(rest) = path.strip_prefix("/api/resolve-cache/models/") {
        // {ns}/{name}/{commit}/{file}
        let parts: Vec<&str> = rest.splitn(4, '/').collect();
        if parts.len() == 4 {
            let repo = format!("{}/{}", parts[0], parts[1]);
            return resolve(st, req, &repo, &unpct(parts[2]), &unpct(parts[3]), token.as_deref(), true);
        }
    }
    // /{ns}/{name}/resolve/{rev}/{file...}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() == 5 && parts[2] == "resolve" {
        let repo = format!("{}/{}", parts[0], parts[1]);
        return resolve(st, req, &repo, &unpct(parts[3]), &unpct(parts[4]), token.as_deref(), false);
    }
    full(StatusCode::NOT_FOUND, "Not Found\n")
}

fn resolve(
    st: &State,
    req: &Request<hyper::body::Incoming>,
    repo: &str,
    rev: &str,
    file: &str,
    token: Option<&str>,
    from_cache_route: bool,
) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let (commit, files) = match lookup(st, repo, rev, token) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Some(e) = files.iter().find(|e| e.name == file) else {
        let mut r = hub_error(StatusCode::NOT_FOUND, "EntryNotFound", "Entry not found");
        r.headers_mut().insert("x-repo-commit", commit.parse().unwrap());
        return r;
    };
    let mut r;
    if e.lfs {
        let loc = signed_cdn_url(st, repo, e);
        let body = format!("Found. Redirecting to {loc}");
        let etag = format!("W/\"{:x}-{}\"", body.len(), &hex_sha256(body.as_bytes())[..27]);
        r = full(StatusCode::FOUND, if head { Bytes::new() } else { Bytes::from(body.clone()) });
        let h = r.headers_mut();
        h.insert("location", loc.parse().unwrap());
        h.insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
        h.insert("content-length", body.len().to_string().parse().unwrap());
        h.insert("etag", etag.parse().unwrap());
        h.insert("x-linked-etag", format!("\"{}\"", e.sha256).parse().unwrap());
        h.insert("x-linked-size", e.data.len().to_string().parse().unwrap());
    } else if !from_cache_route && rev != commit && st.resolve_cache.load(Ordering::Relaxed) {
        // Like the Hub for git-stored files on a branch: a relative redirect to the commit's cached copy.
        let loc = format!("/api/resolve-cache/models/{repo}/{commit}/{}", pct_path(file));
        r = full(StatusCode::TEMPORARY_REDIRECT, if head { Bytes::new() } else { Bytes::from("Temporary Redirect") });
        let h = r.headers_mut();
        h.insert("location", loc.parse().unwrap());
        h.insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
    } else {
        r = full(StatusCode::OK, if head { Bytes::new() } else { e.data.clone() });
        let h = r.headers_mut();
        h.insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
        h.insert("content-length", e.data.len().to_string().parse().unwrap());
        h.insert("etag", format!("\"{}\"", e.blob_id).parse().unwrap());
        h.insert("accept-ranges", "bytes".parse().unwrap());
        h.insert("content-disposition", {
            let base = e.name.rsplit('/').next().unwrap_or(&e.name);
            format!("inline; filename*=UTF-8''{}; filename=\"{base}\";", pct(base)).parse().unwrap()
        });
    }
    let h = r.headers_mut();
    h.insert("x-repo-commit", commit.parse().unwrap());
    h.insert("vary", "Origin, Accept".parse().unwrap());
    h.insert(
        "access-control-expose-headers",
        "X-Repo-Commit,X-Request-Id,X-Error-Code,X-Error-Message,X-Total-Count,ETag,Link,Accept-Ranges,Content-Range,\
         X-Linked-Size,X-Linked-ETag"
            .parse()
            .unwrap(),
    );
    h.insert("x-request-id", format!("Root=1-{:016x}", rand::random::<u64>()).parse().unwrap());
    r
}

/// Percent-encodes a file path segment by segment (slashes kept).
fn pct_path(p: &str) -> String {
    p.split('/').map(pct).collect::<Vec<_>>().join("/")
}

/// `/api/models/` + `{ns}/{name}`, `{ns}/{name}/revision/{rev}` or `{ns}/{name}/tree/{rev}[/{dir}]`.
fn api(st: &State, rest: &str, token: Option<&str>) -> Response<Body> {
    let parts: Vec<&str> = rest.splitn(4, '/').collect();
    if parts.len() < 2 {
        return full(StatusCode::NOT_FOUND, "Not Found\n");
    }
    let repo = format!("{}/{}", parts[0], parts[1]);
    let (kind, rev) = match (parts.get(2), parts.get(3)) {
        (None, _) => ("info", "main".to_owned()),
        (Some(&"revision"), Some(rev)) => ("info", unpct(rev)),
        (Some(&"tree"), Some(rev)) => ("tree", unpct(rev.split('/').next().unwrap_or(rev))),
        _ => return full(StatusCode::NOT_FOUND, "Not Found\n"),
    };
    let (commit, files) = match lookup(st, &repo, &rev, token) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let private = st.repos.lock().unwrap()[&repo].private_token.is_some();
    if kind == "info" {
        let siblings: Vec<_> = files.iter().map(|e| serde_json::json!({ "rfilename": e.name })).collect();
        return json(
            StatusCode::OK,
            serde_json::json!({
                "_id": &hex_sha256(repo.as_bytes())[..24],
                "id": repo,
                "modelId": repo,
                "author": parts[0],
                "sha": commit,
                "lastModified": "2024-01-01T00:00:00.000Z",
                "private": private,
                "disabled": false,
                "gated": false,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "createdAt": "2024-01-01T00:00:00.000Z",
            }),
        );
    }
    let tree: Vec<_> = files
        .iter()
        .map(|e| {
            let mut v = serde_json::json!({
                "type": "file",
                "oid": e.blob_id,
                "size": e.data.len(),
                "path": e.name,
            });
            if e.lfs {
                v["lfs"] = serde_json::json!({ "oid": e.sha256, "size": e.data.len(), "pointerSize": 134 });
            }
            v
        })
        .collect();
    json(StatusCode::OK, serde_json::Value::Array(tree))
}

async fn cdn(st: Arc<State>, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    let mut entry = log_of(&req);
    let r = cdn_answer(&st, &req);
    entry.status = r.status().as_u16();
    st.cdn_log.lock().unwrap().push(entry);
    Ok(r)
}

fn access_denied(why: &str) -> Response<Body> {
    let mut r = full(
        StatusCode::FORBIDDEN,
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>{why}</Message></Error>"),
    );
    r.headers_mut().insert("content-type", "text/xml".parse().unwrap());
    r
}

fn cdn_answer(st: &Arc<State>, req: &Request<hyper::body::Incoming>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        return full(StatusCode::METHOD_NOT_ALLOWED, "");
    }
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let refuse = |why: &str| {
        st.cdn_refused.fetch_add(1, Ordering::Relaxed);
        access_denied(why)
    };
    let Some((signed, after)) = query.split_once("&Signature=") else { return refuse("Missing Key") };
    let sig = after.split('&').next().unwrap_or("");
    if sig != sign(&st.secret, path, signed) {
        return refuse("Invalid signature");
    }
    let expires = signed.split('&').find_map(|kv| kv.strip_prefix("Expires=")?.parse::<u64>().ok());
    if expires.is_none_or(|e| e < now_secs()) {
        return refuse("Request has expired");
    }
    let sha = path.rsplit('/').next().unwrap_or("").to_owned();
    let Some(obj) = st.blobs.lock().unwrap().get(&sha).cloned() else {
        return full(StatusCode::NOT_FOUND, "NoSuchKey");
    };
    let disposition = signed.split('&').find_map(|kv| kv.strip_prefix("response-content-disposition=")).map(unpct);
    let total = obj.len() as u64;
    let mut status = StatusCode::OK;
    let mut body = obj.clone();
    let mut content_range = None;
    if let Some(rv) = req.headers().get("range").and_then(|v| v.to_str().ok()) {
        match parse_range(rv, total) {
            Some((s, e)) => {
                status = StatusCode::PARTIAL_CONTENT;
                body = obj.slice(s as usize..=e as usize);
                content_range = Some(format!("bytes {s}-{e}/{total}"));
            }
            None => {
                let mut r = full(StatusCode::RANGE_NOT_SATISFIABLE, "");
                r.headers_mut().insert("content-range", format!("bytes */{total}").parse().unwrap());
                return r;
            }
        }
    }
    let len = body.len();
    let mut r = if head {
        full(status, Bytes::new())
    } else {
        *st.cdn_gets.lock().unwrap().entry(sha.clone()).or_insert(0) += 1;
        stream_body(st, body, status)
    };
    let h = r.headers_mut();
    h.insert("content-type", "binary/octet-stream".parse().unwrap());
    h.insert("content-length", len.to_string().parse().unwrap());
    h.insert("accept-ranges", "bytes".parse().unwrap());
    h.insert("etag", format!("\"{}\"", &sha[..32]).parse().unwrap());
    h.insert("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT".parse().unwrap());
    h.insert("cache-control", "public, max-age=604800, immutable, s-maxage=604800".parse().unwrap());
    if let Some(d) = disposition.and_then(|d| d.parse().ok()) {
        h.insert("content-disposition", d);
    }
    if let Some(cr) = content_range {
        h.insert("content-range", cr.parse().unwrap());
    }
    r
}

/// A body sent in 256 KiB frames, counted as they leave, each after the CDN's frame delay.
fn stream_body(st: &Arc<State>, body: Bytes, status: StatusCode) -> Response<Body> {
    let len = body.len();
    let delay = Duration::from_micros(st.cdn_frame_delay_us.load(Ordering::Relaxed));
    let frames: Vec<Bytes> =
        (0..len.div_ceil(256 << 10)).map(|i| body.slice(i * (256 << 10)..((i + 1) * (256 << 10)).min(len))).collect();
    let st = st.clone();
    let stream = futures_util::StreamExt::then(futures_util::stream::iter(frames), move |f| {
        let st = st.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            st.cdn_bytes.fetch_add(f.len() as u64, Ordering::Relaxed);
            Ok::<_, std::io::Error>(Frame::data(f))
        }
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    *r.status_mut() = status;
    r
}

fn parse_range(v: &str, total: u64) -> Option<(u64, u64)> {
    let (s, e) = v.strip_prefix("bytes=")?.split_once('-')?;
    let last = total.checked_sub(1)?;
    if s.is_empty() {
        // A suffix range: the last `e` bytes.
        let n: u64 = e.parse().ok()?;
        return (n > 0).then(|| (total.saturating_sub(n), last));
    }
    let s: u64 = s.parse().ok()?;
    let e: u64 = if e.is_empty() { last } else { e.parse::<u64>().ok()?.min(last) };
    (s <= e).then_some((s, e))
}

/// A running hub and CDN; dropped, both stop.
pub struct HfOrigin {
    pub hub_addr: SocketAddr,
    pub cdn_addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HfOrigin {
    /// Starts the hub on `ip_hub` and the CDN on `ip_cdn` (127.0.0.0/8 addresses; different ones make the CDN
    /// another host to the client, as on the real Hub), plain HTTP, on their own thread and runtime.
    pub fn start(ip_hub: &str, ip_cdn: &str) -> HfOrigin {
        let bind = |ip: &str| {
            let l = std::net::TcpListener::bind((ip, 0)).unwrap();
            l.set_nonblocking(true).unwrap();
            l
        };
        let (hl, cl) = (bind(ip_hub), bind(ip_cdn));
        let (hub_addr, cdn_addr) = (hl.local_addr().unwrap(), cl.local_addr().unwrap());
        let state = Arc::new(State {
            secret: format!("hf-cdn-secret-{:016x}", rand::random::<u64>()),
            url_ttl_secs: AtomicU64::new(600),
            ..Default::default()
        });
        *state.hub_addr.lock().unwrap() = Some(hub_addr);
        *state.cdn_addr.lock().unwrap() = Some(cdn_addr);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let hl = tokio::net::TcpListener::from_std(hl).unwrap();
                let cl = tokio::net::TcpListener::from_std(cl).unwrap();
                // Runs until the stop signal.
                loop {
                    let (sock, is_hub) = tokio::select! {
                        _ = &mut rx => break,
                        acc = hl.accept() => match acc { Ok((s, _)) => (s, true), Err(_) => continue },
                        acc = cl.accept() => match acc { Ok((s, _)) => (s, false), Err(_) => continue },
                    };
                    let st = st.clone();
                    tokio::spawn(async move {
                        let io = TokioIo::new(sock);
                        let b = hyper::server::conn::http1::Builder::new();
                        let _ = if is_hub {
                            b.serve_connection(io, service_fn(move |req| hub(st.clone(), req))).await
                        } else {
                            b.serve_connection(io, service_fn(move |req| cdn(st.clone(), req))).await
                        };
                    });
                }
            });
        });
        HfOrigin { hub_addr, cdn_addr, state, stop: Some(tx), thread: Some(thread) }
    }

    /// Publishes a commit of model `repo` ("namespace/name") and points `main` at it; earlier commits stay
    /// resolvable by their id. `files`: (path in the repo, bytes, stored with LFS). A repo with a
    /// `private_token` answers only requests with `Authorization: Bearer <token>` (the token of the first
    /// commit is kept).
    pub fn add_model(
        &self,
        repo: &str,
        revision_commit: &str,
        files: &[(&str, &[u8], bool)],
        private_token: Option<&str>,
    ) {
        assert!(repo.split('/').count() == 2, "repo ids are namespace/name: {repo}");
        assert!(
            revision_commit.len() == 40 && revision_commit.bytes().all(|b| b.is_ascii_hexdigit()),
            "a commit id is 40 hex digits: {revision_commit}"
        );
        let entries: Vec<RepoEntry> = files
            .iter()
            .map(|(name, data, lfs)| {
                let mut framed = format!("blob {}\0", data.len()).into_bytes();
                framed.extend_from_slice(data);
                RepoEntry {
                    name: name.to_string(),
                    data: Bytes::copy_from_slice(data),
                    lfs: *lfs,
                    sha256: hex_sha256(data),
                    blob_id: hex_sha256(&framed)[..40].to_owned(),
                }
            })
            .collect();
        {
            let mut blobs = self.state.blobs.lock().unwrap();
            for e in entries.iter().filter(|e| e.lfs) {
                blobs.insert(e.sha256.clone(), e.data.clone());
            }
        }
        let mut repos = self.state.repos.lock().unwrap();
        let r = repos.entry(repo.to_owned()).or_insert_with(|| Repo {
            private_token: private_token.map(str::to_owned),
            main: String::new(),
            commits: HashMap::new(),
        });
        r.main = revision_commit.to_owned();
        r.commits.insert(revision_commit.to_owned(), entries);
    }

    /// `HF_ENDPOINT` for a client that talks to the hub directly.
    pub fn hub_url(&self) -> String {
        format!("http://{}", self.hub_addr)
    }

    pub fn cdn_url(&self) -> String {
        format!("http://{}", self.cdn_addr)
    }

    /// The path of `sha256`'s object of `repo` on the CDN (without the signed query).
    pub fn cdn_path(&self, repo: &str, sha256: &str) -> String {
        cdn_path(repo, sha256)
    }

    /// A freshly signed CDN URL for `file` of `repo` at `main`, as the hub would redirect to.
    pub fn signed_url(&self, repo: &str, file: &str) -> String {
        let (_, files) =
            lookup(&self.state, repo, "main", None).unwrap_or_else(|_| panic!("{repo}: not a public repo"));
        let e = files.iter().find(|e| e.name == file).expect("no such file");
        signed_cdn_url(&self.state, repo, e)
    }

    /// Lifetime of the signed CDN URLs the hub hands out from now on (default 10 minutes).
    pub fn set_signed_url_ttl(&self, ttl: Duration) {
        self.state.url_ttl_secs.store(ttl.as_secs(), Ordering::Relaxed);
    }

    /// With `on`, a git-stored file asked for by branch name is a relative 307 to
    /// `/api/resolve-cache/models/{repo}/{commit}/{file}` (as the Hub does), which the client follows.
    pub fn set_resolve_cache_redirect(&self, on: bool) {
        self.state.resolve_cache.store(on, Ordering::Relaxed);
    }

    /// Slows the CDN down: a pause before each 256 KiB frame of a body.
    pub fn set_cdn_frame_delay(&self, d: Duration) {
        self.state.cdn_frame_delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// CDN GETs for `sha256` that passed the signature check and started a body (ranged ones included).
    pub fn cdn_gets(&self, sha256: &str) -> usize {
        self.state.cdn_gets.lock().unwrap().get(sha256).copied().unwrap_or(0)
    }

    /// CDN requests refused with 403 (bad, missing or expired signature).
    pub fn cdn_refused(&self) -> u64 {
        self.state.cdn_refused.load(Ordering::Relaxed)
    }

    /// Body bytes the CDN has sent (frames handed to the connection).
    pub fn cdn_bytes_sent(&self) -> u64 {
        self.state.cdn_bytes.load(Ordering::Relaxed)
    }

    /// Hub requests with `method` ("HEAD", "GET", or "" for any) whose path starts with `path_prefix`.
    pub fn hub_requests(&self, method: &str, path_prefix: &str) -> usize {
        self.hub_log()
            .iter()
            .filter(|l| (method.is_empty() || l.method == method) && l.target.starts_with(path_prefix))
            .count()
    }

    /// Every hub request so far, in order.
    pub fn hub_log(&self) -> Vec<Logged> {
        self.state.hub_log.lock().unwrap().clone()
    }

    /// Every CDN request so far, in order.
    pub fn cdn_log(&self) -> Vec<Logged> {
        self.state.cdn_log.lock().unwrap().clone()
    }
}

impl Drop for HfOrigin {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the python client runs: its environment is this and nothing else (no HF_TOKEN, proxy or cache
/// settings leak in from the test's environment).
#[derive(Clone, Debug)]
pub struct HfEnv {
    /// `HF_ENDPOINT`: the hub, or the daemon's mirror route (`http://<proxy addr>/hf`).
    pub endpoint: String,
    /// `HF_TOKEN`, sent by the client as `Authorization: Bearer`.
    pub token: Option<String>,
    /// `HF_HOME` (and `HOME`): the client's cache and config; use a fresh directory per run to start cold.
    pub hf_home: PathBuf,
    /// `HTTP_PROXY` and `HTTPS_PROXY` (e.g. `http://127.0.0.1:65001`); the client does not bypass loopback.
    pub proxy: Option<String>,
    /// More environment, e.g. `SSL_CERT_FILE` or `HF_HUB_ETAG_TIMEOUT`.
    pub extra_env: Vec<(String, String)>,
    /// The run is killed after this long (default 60 s).
    pub timeout: Duration,
}

impl HfEnv {
    pub fn new(endpoint: &str, hf_home: &Path) -> HfEnv {
        HfEnv {
            endpoint: endpoint.to_owned(),
            token: None,
            hf_home: hf_home.to_owned(),
            proxy: None,
            extra_env: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }

    pub fn token(mut self, t: &str) -> HfEnv {
        self.token = Some(t.to_owned());
        self
    }

    pub fn proxy(mut self, p: &str) -> HfEnv {
        self.proxy = Some(p.to_owned());
        self
    }
}

/// The exit code of a run whose download raised; its stderr then has a line
/// `HFERROR <exception class>: <first line of the message>` and the traceback.
pub const HF_ERROR_EXIT: i32 = 3;

const RUNNER: &str = r#"
import json, os, sys, traceback
mode, repo, rev = sys.argv[1], sys.argv[2], sys.argv[3] or None
try:
    import huggingface_hub as hub
    if mode == "file":
        p = hub.hf_hub_download(repo_id=repo, filename=sys.argv[4], revision=rev)
        print(json.dumps({"path": p}))
    else:
        d = hub.snapshot_download(repo_id=repo, revision=rev)
        files = {}
        for root, _, names in os.walk(d):
            for n in names:
                full = os.path.join(root, n)
                files[os.path.relpath(full, d)] = os.path.realpath(full)
        print(json.dumps({"dir": d, "files": files}))
except Exception as e:
    first = (str(e).strip().splitlines() or [""])[0]
    print(f"HFERROR {type(e).__name__}: {first}", file=sys.stderr)
    traceback.print_exc()
    sys.exit(3)
"#;

fn hf_python() -> PathBuf {
    let py = Path::new(HF_VENV).join("bin/python");
    assert!(py.exists(), "{} missing: run scripts/install-test-deps.sh", py.display());
    py
}

fn run_client(env: &HfEnv, args: &[&str]) -> Output {
    std::fs::create_dir_all(&env.hf_home).unwrap();
    let mut c = Command::new(hf_python());
    c.arg("-c").arg(RUNNER).args(args);
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &env.hf_home)
        .env("HF_HOME", &env.hf_home)
        .env("HF_ENDPOINT", &env.endpoint)
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env("HF_HUB_DISABLE_SYMLINKS_WARNING", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = &env.token {
        c.env("HF_TOKEN", t);
    }
    if let Some(p) = &env.proxy {
        c.env("HTTP_PROXY", p).env("HTTPS_PROXY", p);
    }
    for (k, v) in &env.extra_env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let pipe = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = pipe(Box::new(child.stdout.take().unwrap()));
    let err = pipe(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + env.timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = out.join().unwrap();
    let mut stderr = err.join().unwrap();
    if timed_out {
        stderr.extend_from_slice(format!("\nkilled: the client ran longer than {:?}\n", env.timeout).as_bytes());
    }
    Output { status, stdout, stderr }
}

/// Runs `hf_hub_download(repo, filename, revision)` (revision None: "main"); on success stdout is
/// `{"path": <file in the cache>}` (see [`downloaded_path`]).
pub fn hf_download(env: &HfEnv, repo: &str, filename: &str, revision: Option<&str>) -> Output {
    run_client(env, &["file", repo, revision.unwrap_or(""), filename])
}

/// Runs `snapshot_download(repo, revision)`; on success stdout is `{"dir": .., "files": {path in repo: file}}`
/// (see [`snapshot_files`]).
pub fn hf_snapshot(env: &HfEnv, repo: &str, revision: Option<&str>) -> Output {
    run_client(env, &["snapshot", repo, revision.unwrap_or("")])
}

fn result_json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "the huggingface_hub client failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let line = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_owned();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("client output {line:?}: {e}"))
}

/// The file a successful [`hf_download`] left in the cache.
pub fn downloaded_path(o: &Output) -> PathBuf {
    PathBuf::from(result_json(o)["path"].as_str().expect("path"))
}

/// The files of a successful [`hf_snapshot`]: (path in the repo, the file it resolves to), sorted.
pub fn snapshot_files(o: &Output) -> Vec<(String, PathBuf)> {
    let v = result_json(o);
    let mut files: Vec<(String, PathBuf)> = v["files"]
        .as_object()
        .expect("files")
        .iter()
        .map(|(k, p)| (k.clone(), PathBuf::from(p.as_str().unwrap())))
        .collect();
    files.sort();
    files
}

/// The `HFERROR <class>: <message>` line of a failed run, if it raised.
pub fn hf_error(o: &Output) -> Option<String> {
    String::from_utf8_lossy(&o.stderr).lines().find_map(|l| l.strip_prefix("HFERROR ").map(str::to_owned))
}
