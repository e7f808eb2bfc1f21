//! An origin HTTP server for tests: serves registered objects, counts the bytes it sends, and comes in the
//! four flavours that matter to back-to-source — with or without Range support, with Content-Length or
//! chunked — plus error paths (`/status/404`, `/status/500`) and a body that breaks off mid-way.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flavour {
    pub ranges: bool,
    pub content_length: bool,
}

pub const FLAVOURS: [Flavour; 4] = [
    Flavour { ranges: true, content_length: true },
    Flavour { ranges: false, content_length: true },
    Flavour { ranges: true, content_length: false },
    Flavour { ranges: false, content_length: false },
];

#[derive(Default)]
struct State {
    objects: Mutex<HashMap<String, Bytes>>,
    /// TCP connections accepted.
    connections: AtomicU64,
    bytes_sent: AtomicU64,
    requests: AtomicU64,
    /// Paths whose body is cut after this many bytes (then the connection is dropped).
    truncate: Mutex<HashMap<String, usize>>,
    /// Pause before each 256 KiB frame, in microseconds: a slow origin.
    frame_delay_us: AtomicU64,
    /// Paths whose next body stalls (sends nothing more, keeps the connection) after this many bytes.
    stall_once: Mutex<HashMap<String, usize>>,
    /// Paths readable only with one of these tokens (see [`Origin::require_tokens`]).
    tokens: Mutex<HashMap<String, Vec<String>>>,
    /// HEAD requests answered, and GETs for a single byte (authorization probes).
    heads: AtomicU64,
    one_byte_gets: AtomicU64,
    /// Every Range header received, in order.
    ranges: Mutex<Vec<String>>,
    /// How many times each path was put: its ETag changes with every version after the first.
    versions: Mutex<HashMap<String, u64>>,
    /// Paths whose object is replaced by this one right after its next request is answered.
    replace_after_next: Mutex<HashMap<String, Bytes>>,
    /// Paths answered with a redirect: (status, Location).
    redirects: Mutex<HashMap<String, (u16, String)>>,
    /// Every request's path and its Authorization header, in order.
    authorizations: Mutex<Vec<(String, Option<String>)>>,
}

/// The token a request presents: `?token=`, `?X-Amz-Signature=` or `Authorization: Bearer`.
fn presented_token(req: &Request<hyper::body::Incoming>) -> Option<String> {
    let q = req.uri().query().unwrap_or("");
    let param = |name: &str| q.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=').map(str::to_owned));
    let bearer = || {
        let v = req.headers().get("authorization")?.to_str().ok()?;
        v.strip_prefix("Bearer ").map(str::to_owned)
    };
    param("token").or_else(|| param("X-Amz-Signature")).or_else(bearer)
}

/// A per-token origin's verdict on a request for a protected path: None when it may read, else the
/// answer (401 without a token, 403 for a wrong or expired one, or a HEAD on a signed URL).
fn refusal(req: &Request<hyper::body::Incoming>, allowed: &[String]) -> Option<Response<Body>> {
    let q = req.uri().query().unwrap_or("");
    let expires = q.split('&').find_map(|kv| kv.strip_prefix("Expires=")?.parse::<u64>().ok());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    if expires.is_some_and(|e| e < now) {
        return Some(full(StatusCode::FORBIDDEN, Bytes::from_static(b"signature expired\n")));
    }
    if q.contains("X-Amz-Signature=") && req.method() == http::Method::HEAD {
        // Presigned URLs are signed for one method: S3 refuses a HEAD on a GET URL.
        return Some(full(StatusCode::FORBIDDEN, Bytes::new()));
    }
    match presented_token(req) {
        None => {
            let mut r = full(StatusCode::UNAUTHORIZED, Bytes::from_static(b"who are you?\n"));
            r.headers_mut().insert("www-authenticate", "Bearer realm=\"origin.test\"".parse().unwrap());
            Some(r)
        }
        Some(t) if allowed.contains(&t) => None,
        Some(_) => Some(full(StatusCode::FORBIDDEN, Bytes::from_static(b"not yours\n"))),
    }
}

/// A running origin; dropped, it stops.
pub struct Origin {
    pub addr: SocketAddr,
    pub flavour: Flavour,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Body = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(status: StatusCode, b: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(b).map_err(|never: Infallible| match never {}).boxed());
    *r.status_mut() = status;
    r
}

async fn handle(
    st: Arc<State>,
    fl: Flavour,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    st.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(r) = req.headers().get("range").and_then(|v| v.to_str().ok()) {
        st.ranges.lock().unwrap().push(r.to_owned());
    }
    if req.method() == http::Method::HEAD {
        st.heads.fetch_add(1, Ordering::Relaxed);
    } else if req.headers().get("range").is_some_and(|v| v.as_bytes() == b"bytes=0-0") {
        st.one_byte_gets.fetch_add(1, Ordering::Relaxed);
    }
    let path = req.uri().path().to_owned();
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    st.authorizations.lock().unwrap().push((path.clone(), auth));
    if let Some((code, to)) = st.redirects.lock().unwrap().get(&path).cloned() {
        let mut r = full(StatusCode::from_u16(code).unwrap(), Bytes::new());
        r.headers_mut().insert("location", to.parse().unwrap());
        return Ok(r);
    }
    if path.starts_with("/no-head/") {
        // Accepts the request and never answers (until the origin stops).
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
    if let Some(code) = path.strip_prefix("/status/").and_then(|c| c.split('/').next()?.parse::<u16>().ok()) {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = full(status, Bytes::from(format!("origin says {code}\n")));
        r.headers_mut().insert("x-origin-error", "yes".parse().unwrap());
        return Ok(r);
    }
    let Some(obj) = st.objects.lock().unwrap().get(&path).cloned() else {
        return Ok(full(StatusCode::NOT_FOUND, Bytes::from_static(b"no such object\n")));
    };
    let etag = match st.versions.lock().unwrap().get(&path).copied().unwrap_or(1) {
        1 => "\"test-etag\"".to_owned(),
        v => format!("\"test-etag-v{v}\""),
    };
    if let Some(next) = st.replace_after_next.lock().unwrap().remove(&path) {
        // This request is answered with the old version; every later one sees the new.
        put_version(&st, &path, next);
    }
    if let Some(allowed) = st.tokens.lock().unwrap().get(&path).cloned() {
        if let Some(r) = refusal(&req, &allowed) {
            return Ok(r);
        }
    }
    let total = obj.len() as u64;
    if req.method() == http::Method::HEAD {
        let mut r = full(StatusCode::OK, Bytes::new());
        r.headers_mut().insert("content-length", total.to_string().parse().unwrap());
        return Ok(r);
    }
    let mut status = StatusCode::OK;
    let mut body = obj.clone();
    let mut content_range = None;
    if fl.ranges {
        // If-Range naming another version than the current one: the whole current one (RFC 9110 13.1.5).
        let same = req.headers().get("if-range").is_none_or(|v| v.as_bytes() == etag.as_bytes());
        if let Some((s, e)) = req
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_range(v, total))
            .filter(|_| same)
        {
            status = StatusCode::PARTIAL_CONTENT;
            body = obj.slice(s as usize..=e as usize);
            content_range = Some(format!("bytes {s}-{e}/{total}"));
        }
    }
    let cut = st.truncate.lock().unwrap().get(&path).copied();
    let stall = st.stall_once.lock().unwrap().remove(&path);
    let len = body.len();
    let st2 = st.clone();
    // Sent in 256 KiB frames, counted as they leave (below), so a client that goes away mid-body is
    // charged only what it was handed.
    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..len.div_ceil(256 << 10))
        .map(|i| body.slice(i * (256 << 10)..((i + 1) * (256 << 10)).min(len)))
        .scan(0usize, move |sent, c| {
            if cut.is_some_and(|cut| *sent >= cut) {
                return Some(Err(std::io::Error::other("origin breaks off")));
            }
            *sent += c.len();
            Some(Ok(Frame::data(c)))
        })
        .collect();
    // Before breaking off, pause so what was sent is flushed (a real origin dies mid-body, not before it).
    let delay = std::time::Duration::from_micros(st.frame_delay_us.load(Ordering::Relaxed));
    let sent_before = std::sync::Arc::new(AtomicU64::new(0));
    let stream = futures_util::StreamExt::then(futures_util::stream::iter(chunks), move |item| {
        let (sent_before, st2) = (sent_before.clone(), st2.clone());
        async move {
            if let (Some(after), Ok(f)) = (stall, &item) {
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                if sent_before.fetch_add(n, Ordering::Relaxed) >= after as u64 {
                    tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                }
            }
            if item.is_err() {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            } else if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if let Ok(f) = &item {
                st2.bytes_sent.fetch_add(f.data_ref().map_or(0, |d| d.len() as u64), Ordering::Relaxed);
            }
            item
        }
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", "application/octet-stream".parse().unwrap());
    h.insert("etag", etag.parse().unwrap());
    if fl.content_length {
        h.insert("content-length", len.to_string().parse().unwrap());
    }
    if fl.ranges {
        h.insert("accept-ranges", "bytes".parse().unwrap());
    }
    if let Some(cr) = content_range {
        h.insert("content-range", cr.parse().unwrap());
    }
    Ok(r)
}

fn put_version(st: &State, path: &str, data: Bytes) {
    st.objects.lock().unwrap().insert(path.to_owned(), data);
    *st.versions.lock().unwrap().entry(path.to_owned()).or_insert(0) += 1;
}

fn parse_range(v: &str, total: u64) -> Option<(u64, u64)> {
    let (s, e) = v.strip_prefix("bytes=")?.split_once('-')?;
    let s: u64 = s.parse().ok()?;
    let e: u64 = if e.is_empty() { total.checked_sub(1)? } else { e.parse::<u64>().ok()?.min(total.checked_sub(1)?) };
    (s <= e).then_some((s, e))
}

impl Origin {
    /// Starts an origin on `ip` (a 127.0.0.0/8 address) on its own thread and runtime.
    pub fn start(ip: &str, flavour: Flavour) -> Origin {
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                // Runs until the stop signal.
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        acc = l.accept() => {
                            let Ok((sock, _)) = acc else { continue };
                            st.connections.fetch_add(1, Ordering::Relaxed);
                            let st = st.clone();
                            tokio::spawn(async move {
                                let svc = service_fn(move |req| handle(st.clone(), flavour, req));
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(sock), svc)
                                    .await;
                            });
                        }
                    }
                }
            });
        });
        Origin { addr, flavour, state, stop: Some(tx), thread: Some(thread) }
    }

    /// Answers requests for `path` with `status` and `Location: to`.
    pub fn redirect(&self, path: &str, status: u16, to: &str) {
        self.state.redirects.lock().unwrap().insert(path.to_owned(), (status, to.to_owned()));
    }

    /// The Authorization header of every request for `path` so far (None where there was none).
    pub fn authorizations(&self, path: &str) -> Vec<Option<String>> {
        let all = self.state.authorizations.lock().unwrap();
        all.iter().filter(|(p, _)| p == path).map(|(_, a)| a.clone()).collect()
    }

    pub fn put(&self, path: &str, data: Bytes) {
        put_version(&self.state, path, data);
    }

    /// Replaces the object at `path` with `data` (a new version, a new ETag) right after the next request
    /// for it is answered.
    pub fn replace_after_next_request(&self, path: &str, data: Bytes) {
        self.state.replace_after_next.lock().unwrap().insert(path.to_owned(), data);
    }

    /// Puts `len` deterministic bytes (see `content`) where Git LFS keeps them, named by their sha256:
    /// (bytes, oid in hex, URL).
    pub fn put_lfs(&self, seed: u64, len: usize) -> (Bytes, String, String) {
        let obj = Bytes::from(super::content(seed, len));
        let oid = hex::encode(super::sha256(&obj));
        let path = format!("/lfs/objects/{oid}");
        self.put(&path, obj.clone());
        (obj, oid, self.url(&path))
    }

    /// Makes `path` break off after `after` bytes.
    pub fn truncate(&self, path: &str, after: usize) {
        self.state.truncate.lock().unwrap().insert(path.to_owned(), after);
    }

    /// Makes the next body of `path` stall after `after` bytes: headers and those bytes sent, then nothing,
    /// with the connection kept open.
    pub fn stall_once(&self, path: &str, after: usize) {
        self.state.stall_once.lock().unwrap().insert(path.to_owned(), after);
    }

    /// Makes `path` readable only with one of `tokens` (presented as `?token=`, `?X-Amz-Signature=` or
    /// `Authorization: Bearer`): no token gets 401 with WWW-Authenticate, another one 403. Any request
    /// with `Expires=` in the past gets 403, and a HEAD with `X-Amz-Signature` too (signed for GET).
    pub fn require_tokens(&self, path: &str, tokens: &[&str]) {
        let t = tokens.iter().map(|t| t.to_string()).collect();
        self.state.tokens.lock().unwrap().insert(path.to_owned(), t);
    }

    /// HEAD requests received.
    pub fn heads(&self) -> u64 {
        self.state.heads.load(Ordering::Relaxed)
    }

    /// GETs that asked for the first byte alone (`Range: bytes=0-0`: authorization probes of signed URLs).
    pub fn one_byte_gets(&self) -> u64 {
        self.state.one_byte_gets.load(Ordering::Relaxed)
    }

    /// Requests other than authorization probes (HEADs and one-byte GETs): the fetches of the content.
    pub fn body_requests(&self) -> u64 {
        self.requests() - self.heads() - self.one_byte_gets()
    }

    /// The Range headers of every request so far, in order.
    pub fn ranges(&self) -> Vec<String> {
        self.state.ranges.lock().unwrap().clone()
    }

    pub fn remove(&self, path: &str) {
        self.state.objects.lock().unwrap().remove(path);
    }

    /// Slows every body down: a pause before each 256 KiB frame.
    pub fn set_frame_delay(&self, d: std::time::Duration) {
        self.state.frame_delay_us.store(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn bytes_sent(&self) -> u64 {
        self.state.bytes_sent.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
