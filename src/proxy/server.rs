//! The forward-proxy listener: one SO_REUSEPORT listener per core, HTTP/1.1 with keep-alive.
//!
//! Owns: connection settings (header size limit, header/idle timeout), routing of each request (rules.rs
//! decides P2P or pass-through; forward.rs does pass-through and CONNECT) and the P2P response: status,
//! headers (sent as soon as the task exists) and Range handling. The body streams as pieces complete
//! (respond.rs). Complete local hits skip hyper and go out with sendfile (hit.rs) unless `zero_copy` is off.
//!
//! Errors: an origin's error status passes through; a Shoal-side failure is 502 with a one-line reason;
//! a request that is not a proxy request (origin-form, non-http scheme) is 400.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, IF_RANGE, RANGE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::forward::Forwarder;
use super::hit;
use super::lifecycle::{Drain, LiveRules, ProxyHandle};
use super::respond::{parse_range, task_body, wait_length, BodyError, RangeAsk};
use super::rules::{Route, Rules};
use crate::engine::{Engine, EngineError, FetchRequest};
use crate::runtime::{reuseport_listener, Cores};

pub type Body = BoxBody<Bytes, BodyError>;

/// Entity headers of an origin answer that a client should see.
const PASS_HEADERS: &[&str] = &[
    "content-type",
    "etag",
    "last-modified",
    "cache-control",
    "content-disposition",
    "x-linked-etag",
    "x-linked-size",
];

/// Settings of the proxy front.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub rules: Rules,
    /// Whole request head must arrive within this, an idle keep-alive connection is closed after it, and a
    /// client that accepts no response bytes for this long is disconnected.
    pub header_read_timeout: Duration,
    /// Largest request head (and read buffer) accepted; larger heads get 431.
    pub max_header_bytes: usize,
    pub upstream_connect_timeout: Duration,
    pub upstream_head_timeout: Duration,
    /// Answer complete local hits with sendfile on the raw connection (hit.rs) instead of through hyper.
    pub zero_copy: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            rules: Rules::default(),
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 << 10,
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_head_timeout: Duration::from_secs(120),
            zero_copy: true,
        }
    }
}

struct Front {
    engine: Arc<Engine>,
    rules: Arc<LiveRules>,
    forward: Forwarder,
}

pub(super) fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))).map_err(|n: Infallible| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Starts one accept loop per core on `addr`; the handle reloads rules and drains connections.
pub fn start(cores: &Cores, addr: SocketAddr, engine: Arc<Engine>, cfg: ProxyConfig) -> std::io::Result<ProxyHandle> {
    let forward = Forwarder::new(cfg.upstream_connect_timeout, cfg.upstream_head_timeout)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let rules = Arc::new(LiveRules::new(cfg.rules.clone()));
    let drain = Drain::new();
    let front = Arc::new(Front { engine, rules: rules.clone(), forward });
    let first = reuseport_listener(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..cores.len() {
        listeners.push(reuseport_listener(bound)?);
    }
    for (core, l) in listeners.into_iter().enumerate() {
        let (front, cfg, drain) = (front.clone(), cfg.clone(), drain.clone());
        cores.spawn_on(core, async move {
            let l = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "proxy listener");
                    return;
                }
            };
            let mut stop = drain.stopping();
            // Runs until a drain starts (the listener closes with this task) or the core stops.
            loop {
                let accepted = tokio::select! {
                    a = l.accept() => a,
                    _ = super::lifecycle::stopped(&mut stop) => return,
                };
                let Ok((sock, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let (front, cfg, guard) = (front.clone(), cfg.clone(), drain.enter());
                let stop = drain.stopping();
                tokio::spawn(async move {
                    serve_connection(front, cfg, sock, stop).await;
                    drop(guard);
                });
            }
        });
    }
    Ok(ProxyHandle { addr: bound, rules, drain })
}

/// One client connection: local hits on the raw socket, the rest through hyper, until the client leaves,
/// idles out, or a drain asks it to close after its current response.
async fn serve_connection(
    front: Arc<Front>,
    cfg: ProxyConfig,
    sock: tokio::net::TcpStream,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let io = if cfg.zero_copy {
        let (idle, max) = (cfg.header_read_timeout, cfg.max_header_bytes);
        match hit::serve(sock, &front.engine, &front.rules, idle, max, &mut stop).await {
            hit::Outcome::Done => return,
            hit::Outcome::Hyper(io) => io,
        }
    } else {
        hit::Rewind::new(sock, cfg.header_read_timeout)
    };
    let svc = service_fn(move |req| handle(front.clone(), req));
    // The timer is required: hyper panics on header_read_timeout without one.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let served = tokio::select! {
        r = conn.as_mut() => r,
        _ = super::lifecycle::stopped(&mut stop) => {
            // Finishes the response in flight, then closes instead of waiting for another request.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "proxy connection ended");
    }
}

async fn handle(front: Arc<Front>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let r = route(front, req).await;
    if let Ok(resp) = &r {
        crate::metrics::global().proxy_response(resp.status().as_u16());
    }
    r
}

async fn route(front: Arc<Front>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() == Method::CONNECT {
        return Ok(front.forward.connect(req).await);
    }
    if !matches!(req.uri().scheme_str(), Some("http") | Some("https")) || req.uri().authority().is_none() {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "shoal: this is a forward proxy: the request URL must be absolute http(s)",
        ));
    }
    let mut header_digest = None;
    if let Some(v) = req.headers().get("x-shoal-digest") {
        match v.to_str().ok().and_then(|s| s.strip_prefix("sha256:")).and_then(parse_hex32) {
            Some(d) => header_digest = Some(d),
            None => return Ok(text(StatusCode::BAD_REQUEST, "shoal: X-Shoal-Digest must be sha256:<64 hex>")),
        }
    }
    let mut extra = None;
    if let Some(v) = req.headers().get("x-shoal-filtered-query-params") {
        match v.to_str().ok().and_then(super::rules::parse_extra_filtered) {
            Some(names) => extra = Some(names),
            None => {
                return Ok(text(
                    StatusCode::BAD_REQUEST,
                    "shoal: X-Shoal-Filtered-Query-Params must be a comma-separated list of parameter names",
                ))
            }
        }
    }
    match front.rules.current().route_with(req.method(), req.uri(), header_digest, extra.as_deref()) {
        Route::Pass { url } => Ok(front.forward.forward(req, url).await),
        Route::P2p { identity, url, expected_sha256 } => {
            let fr = FetchRequest {
                task_id: identity.task_id,
                url: url.to_string(),
                headers: origin_headers(&req),
                display_url: identity.display_url,
                expected_sha256,
            };
            Ok(p2p(&front.engine, fr, &req).await)
        }
    }
}

/// The client's headers that go to the origin on a miss (ours and the proxy's own are dropped).
fn origin_headers(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .filter(|(n, _)| !n.as_str().starts_with("x-shoal-") && !n.as_str().starts_with("proxy-"))
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

async fn p2p(engine: &Arc<Engine>, fr: FetchRequest, req: &Request<Incoming>) -> Response<Body> {
    let want = fr.expected_sha256;
    let f = match engine.fetch(fr).await {
        Ok(f) => f,
        Err(e) => return error_response(&e),
    };
    // The task may already exist under the URL's digest: content other than what the client asked for is
    // refused before any byte goes out (its actual sha256 once complete, else the one it is held to).
    if want.is_some_and(|w| f.task.sha256().or(f.task.expected_sha256()).is_some_and(|h| h != w)) {
        return text(StatusCode::BAD_GATEWAY, "shoal: the content's sha256 differs from X-Shoal-Digest");
    }
    // If-Range names a representation we cannot compare against: the whole content is always right.
    let range = req.headers().get(RANGE).filter(|_| !req.headers().contains_key(IF_RANGE));
    let range = range.and_then(|v| v.to_str().ok());
    let mut len = f.task.content_length();
    if range.is_some() && len.is_none() {
        // A range of content of unknown length can only be answered once the length is known.
        match wait_length(&f.task).await {
            Ok(l) => len = Some(l),
            Err(e) => return error_response(&EngineError::Storage(e)),
        }
    }
    let ask = match (range, len) {
        (Some(v), Some(l)) => parse_range(v, l),
        _ => RangeAsk::Whole,
    };
    let mut r = match ask {
        RangeAsk::Unsatisfiable => {
            let mut r = text(StatusCode::RANGE_NOT_SATISFIABLE, "shoal: range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", len.unwrap_or(0))) {
                r.headers_mut().insert(CONTENT_RANGE, v);
            }
            r
        }
        RangeAsk::Part(s, e) => {
            let mut r = Response::new(BodyExt::boxed(task_body(f.task.clone(), Some((s, e + 1)))));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = r.headers_mut();
            h.insert(CONTENT_LENGTH, HeaderValue::from(e + 1 - s));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {s}-{e}/{}", len.unwrap_or(0))) {
                h.insert(CONTENT_RANGE, v);
            }
            r
        }
        RangeAsk::Whole => {
            let mut r = Response::new(BodyExt::boxed(task_body(f.task.clone(), None)));
            if let Some(len) = len {
                r.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
            r
        }
    };
    let h = r.headers_mut();
    if let Some(oh) = &f.origin_headers {
        for name in PASS_HEADERS {
            if let Some(v) = oh.get(*name) {
                h.insert(*name, v.clone());
            }
        }
    }
    if !h.contains_key(CONTENT_TYPE) || ask == RangeAsk::Unsatisfiable {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    }
    if len.is_some() {
        h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if let Ok(v) = HeaderValue::from_str(&f.task.id().to_hex()) {
        h.insert("x-shoal-task-id", v);
    }
    h.insert("x-shoal-source", HeaderValue::from_static(f.source.as_str()));
    r
}

fn error_response(e: &EngineError) -> Response<Body> {
    match e {
        EngineError::OriginStatus { status, headers } => {
            let mut r = text(*status, &format!("origin answered {status}"));
            for name in PASS_HEADERS.iter().filter(|n| **n != "content-type") {
                if let Some(v) = headers.get(*name) {
                    r.headers_mut().insert(*name, v.clone());
                }
            }
            r.headers_mut().insert("x-shoal-source", HeaderValue::from_static("origin"));
            r
        }
        other => text(StatusCode::BAD_GATEWAY, &format!("shoal: {}", one_line(&other.to_string()))),
    }
}

fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

pub(super) fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    (s.len() == 64).then_some(())?;
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}
