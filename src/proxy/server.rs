//! The forward-proxy listener: one SO_REUSEPORT listener per core, HTTP/1.1 with keep-alive.
//!
//! Owns: connection settings (header size limit, header/idle timeout, the write stall bound) and executing
//! each request's plan (plan.rs): refusals, pass-through and CONNECT (forward.rs; intercept.rs for hosts in
//! `proxy.intercept`, whose inner requests come back here), and P2P responses whose head goes out as soon
//! as the task exists and whose body streams as pieces complete (respond.rs).
//!
//! A sendfile responder for complete local hits was measured against this one (scripts/bench-proxy-hit.sh,
//! docs/benchmarks.md) and removed: on this machine hyper was faster at the same CPU per GiB.
//!
//! Errors: an origin's error status passes through; a Shoal-side failure is 502 with a one-line reason;
//! a request that is not a proxy request (origin-form, non-http scheme) is 400.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::forward::Forwarder;
use super::intercept::{self, Intercept, Limits};
use super::lifecycle::{Drain, LiveRules, ProxyHandle};
use super::plan::{plan, reply, P2pPlan, Plan, Reply, ReplyBody, TaskFacts, PASS_HEADERS};
use super::respond::{task_body, text, wait_length, Body};
use super::rules::Rules;
use super::stall::WriteStall;
use crate::engine::{Engine, EngineError};
use crate::runtime::{reuseport_group, Cores};

/// Settings of the proxy front.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub rules: Rules,
    /// Where pass-through, CONNECT and (through the engine) origin fetches may connect.
    pub destinations: Arc<crate::upstream::Destinations>,
    /// Whole request head must arrive within this, an idle keep-alive connection is closed after it, and a
    /// client that accepts no response bytes for this long is disconnected.
    pub header_read_timeout: Duration,
    /// Client connections served at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Largest request head (and read buffer) accepted; larger heads get 431.
    pub max_header_bytes: usize,
    pub upstream_connect_timeout: Duration,
    pub upstream_head_timeout: Duration,
    /// Networks whose clients are served; a connection from elsewhere gets a 403 and is closed.
    pub allow_clients: Arc<Vec<ipnet::IpNet>>,
    /// CONNECT tunnels to these hosts are terminated and their requests served like plain ones.
    pub intercept: Option<Arc<Intercept>>,
    /// How pass-through verifies origins' certificates (`upstream::client_tls`); `None`: system roots.
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
}

/// The clients served by default: this machine only.
pub const LOOPBACK: &[&str] = &["127.0.0.0/8", "::1/128"];

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            rules: Rules::default(),
            destinations: crate::upstream::Destinations::standard(),
            header_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            max_header_bytes: 64 << 10,
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_head_timeout: Duration::from_secs(120),
            allow_clients: Arc::new(LOOPBACK.iter().filter_map(|n| n.parse().ok()).collect()),
            intercept: None,
            upstream_tls: None,
        }
    }
}

struct Front {
    engine: Arc<Engine>,
    rules: Arc<LiveRules>,
    forward: Forwarder,
    intercept: Option<Arc<Intercept>>,
    destinations: Arc<crate::upstream::Destinations>,
    limits: Limits,
    /// Intercepted connections count as open connections and close on a drain, like the others.
    drain: Arc<Drain>,
}

/// Starts one accept loop per core on `addr`; the handle reloads rules and drains connections.
pub fn start(cores: &Cores, addr: SocketAddr, engine: Arc<Engine>, cfg: ProxyConfig) -> std::io::Result<ProxyHandle> {
    let (connect, head, tls) = (cfg.upstream_connect_timeout, cfg.upstream_head_timeout, cfg.upstream_tls.as_deref());
    let forward = Forwarder::new(connect, head, cfg.destinations.clone(), tls)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let rules = Arc::new(LiveRules::new(cfg.rules.clone()));
    let drain = Drain::new();
    let limits = Limits {
        client_timeout: cfg.header_read_timeout,
        max_header_bytes: cfg.max_header_bytes,
        resolve_timeout: cfg.upstream_connect_timeout,
    };
    let front = Arc::new(Front {
        engine,
        rules: rules.clone(),
        forward,
        intercept: cfg.intercept.clone(),
        destinations: cfg.destinations.clone(),
        limits,
        drain: drain.clone(),
    });
    let (bound, listeners) = reuseport_group(addr, cores.len())?;
    for (core, l) in listeners.into_iter().enumerate() {
        let (front, cfg, drain) = (front.clone(), cfg.clone(), drain.clone());
        let listening = drain.listener();
        cores.spawn_on(core, async move {
            // Dropped with this future, after the listener: a drain knows when accepting has stopped.
            let _listening = listening;
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
                let Ok((sock, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let client = peer.ip().to_canonical();
                if !cfg.allow_clients.iter().any(|n| n.contains(&client)) {
                    tracing::debug!(%client, "proxy client refused: not in proxy.allow_clients");
                    let msg = format!("shoal: client {client} is not in proxy.allow_clients\n");
                    tokio::spawn(refuse(sock, 403, msg));
                    continue;
                }
                if drain.active() >= cfg.max_connections {
                    // Over the cap: a short 503 and close; the connections already open are not touched.
                    tokio::spawn(refuse(sock, 503, "shoal: too many connections to this proxy; retry later\n".into()));
                    continue;
                }
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

/// The answer to a connection that is not served (a client outside `allow_clients`: 403; over
/// `max_connections`: 503 with Retry-After), written before any request is read and with a bound, so a
/// client that never reads cannot hold the task.
async fn refuse(mut sock: tokio::net::TcpStream, status: u16, msg: String) {
    use tokio::io::AsyncWriteExt;
    crate::metrics::global().proxy_response(status);
    let (reason, retry) = match status {
        503 => ("Service Unavailable", "retry-after: 1\r\n"),
        400 => ("Bad Request", ""),
        _ => ("Forbidden", ""),
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n\
         {retry}connection: close\r\n\r\n{msg}",
        msg.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), sock.write_all(head.as_bytes())).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sock.shutdown()).await;
}

/// One client connection, through hyper, until the client leaves, idles out, stops reading, or a drain asks
/// it to close after its current response.
async fn serve_connection(
    front: Arc<Front>,
    cfg: ProxyConfig,
    sock: tokio::net::TcpStream,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // A TLS client hello on this plain-HTTP port (skopeo tries TLS on an `insecure` mirror first): a plain
    // HTTP 400 at once, which TLS clients recognise as "HTTP response to an HTTPS client" and retry in
    // plain HTTP; a bare close would look like a broken mirror to them.
    let mut first = [0u8; 1];
    if let Ok(Ok(1)) = tokio::time::timeout(cfg.header_read_timeout, sock.peek(&mut first)).await {
        if first[0] == 0x16 {
            refuse(sock, 400, "shoal: this port speaks plain HTTP, not TLS\n".into()).await;
            return;
        }
    }
    let io = WriteStall::new(sock, cfg.header_read_timeout);
    let svc = service_fn(move |req| handle(front.clone(), req));
    // The timer is required: hyper panics on header_read_timeout without one.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    let served = super::lifecycle::serve_until_drained(conn, &mut stop).await;
    if let Err(e) = served {
        tracing::debug!(error = %crate::upstream::error_chain(&e), "proxy connection ended");
    }
}

async fn handle(front: Arc<Front>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    // Host only: paths and queries may carry signed credentials.
    let host = req.uri().host().unwrap_or("").to_owned();
    let span = tracing::debug_span!("request", method = %req.method(), %host, task = tracing::field::Empty);
    let r = tracing::Instrument::instrument(route(front, req), span).await;
    if let Ok(resp) = &r {
        crate::metrics::global().proxy_response(resp.status().as_u16());
    }
    r
}

async fn route(front: Arc<Front>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let planned = plan(&front.rules.current(), req.method(), req.uri(), req.headers());
    Ok(match planned {
        Plan::Refuse { status, reason } => text(status, reason),
        Plan::Connect { host, port } => match front.intercept.clone().filter(|i| i.covers(&host)) {
            Some(i) => match i.open(&front.destinations, &host, port, front.limits).await {
                Ok(tls) => {
                    tracing::debug!(%host, port, "CONNECT intercepted");
                    spawn_intercepted(front.clone(), req, tls, host, port);
                    Response::new(http_body_util::Empty::new().map_err(|n| match n {}).boxed())
                }
                Err(refused) => refused,
            },
            None => front.forward.connect(req, host, port).await,
        },
        Plan::Pass { url } => front.forward.forward(req, url).await,
        Plan::P2p(p) => {
            tracing::Span::current().record("task", tracing::field::display(p.fetch.task_id));
            p2p(&front.engine, *p).await
        }
        Plan::Hub { url } => hub_resolve(&front, req, url).await,
    })
}

/// A Hugging Face resolve request: the hub's HEAD answer decides (hub.rs); an LFS file's GET is served
/// as the task its sha256 names, with the hub's answer as its yes for this requester.
async fn hub_resolve(front: &Arc<Front>, req: Request<Incoming>, url: http::Uri) -> Response<Body> {
    use super::hub::{decide, HubDecision};
    let asked = super::plan::origin_headers(req.headers());
    let (status, meta) = match front.engine.metadata(&url.to_string(), &asked).await {
        Ok(m) => m,
        Err(e) => return error_response(&e),
    };
    match decide(req.method(), &url, status, &meta) {
        HubDecision::Answer { status, headers } => {
            let mut r = Response::new(http_body_util::Empty::new().map_err(|n| match n {}).boxed());
            *r.status_mut() = status;
            with_headers(r, headers)
        }
        HubDecision::Pass => front.forward.forward(req, url).await,
        HubDecision::Task { sha256 } => {
            let mut h = req.headers().clone();
            let digest = format!("sha256:{}", hex::encode(sha256));
            h.insert("x-shoal-digest", HeaderValue::from_str(&digest).unwrap_or(HeaderValue::from_static("")));
            match plan(&front.rules.current(), &http::Method::GET, &url, &h) {
                Plan::P2p(p) => {
                    tracing::Span::current().record("task", tracing::field::display(p.fetch.task_id));
                    front.engine.origin_said_yes(&p.fetch);
                    p2p(&front.engine, *p).await
                }
                Plan::Refuse { status, reason } => text(status, reason),
                _ => text(StatusCode::BAD_GATEWAY, "shoal: the hub's file could not be made a task"),
            }
        }
    }
}

/// Serves an intercepted tunnel once the 200 is out: its requests go through [`handle`] like the
/// listener's. (A plain function, not async: the spawned future holds `handle`'s, whose own type holds
/// `route`'s, and that must not depend on itself.)
fn spawn_intercepted(
    front: Arc<Front>,
    req: Request<Incoming>,
    tls: Arc<rustls::ServerConfig>,
    host: String,
    port: u16,
) {
    let (guard, stop, limits) = (front.drain.enter(), front.drain.stopping(), front.limits);
    let svc = move |r| handle(front.clone(), r);
    tokio::spawn(async move {
        intercept::serve(req, tls, host, port, svc, limits, stop).await;
        drop(guard);
    });
}

/// Executes a P2P plan: the task's head as soon as the task exists, then its bytes as pieces land.
async fn p2p(engine: &Arc<Engine>, p: P2pPlan) -> Response<Body> {
    let f = match engine.fetch(p.fetch.clone()).await {
        Ok(f) => f,
        Err(e) => return error_response(&e),
    };
    // A copy that may be private goes out only once the origin agrees this requester may read it; its
    // refusal (401, 403, 404...) reaches the client as the origin said it.
    if let Err(e) = engine.authorize(&p.fetch, p.authorize, &f).await {
        return error_response(&e);
    }
    let mut len = f.task.content_length();
    if p.range.is_some() && len.is_none() {
        // A range of content of unknown length can only be answered once the length is known.
        match wait_length(&f.task).await {
            Ok(l) => len = Some(l),
            Err(e) => return error_response(&EngineError::Storage(e)),
        }
    }
    let facts = TaskFacts {
        id: f.task.id(),
        len,
        sha256: f.task.sha256().or(f.task.expected_sha256()),
        source: f.source,
        origin_headers: f.origin_headers.as_deref(),
    };
    let Reply { status, headers, body } = reply(&p, &facts);
    let window = match body {
        ReplyBody::Text(msg) => return with_headers(text(status, msg), headers),
        ReplyBody::Whole => None,
        ReplyBody::Part { start, end } => Some((start, end)),
    };
    let mut r = Response::new(BodyExt::boxed(task_body(f.task, window)));
    *r.status_mut() = status;
    with_headers(r, headers)
}

fn with_headers(mut r: Response<Body>, headers: http::HeaderMap) -> Response<Body> {
    r.headers_mut().extend(headers);
    r
}

fn error_response(e: &EngineError) -> Response<Body> {
    match e {
        EngineError::Denied(d) => text(StatusCode::FORBIDDEN, &format!("shoal: {d}")),
        EngineError::OriginStatus { status, headers } => {
            let mut r = text(*status, &format!("origin answered {status}"));
            // WWW-Authenticate: a client told 401 learns how to authenticate (git-lfs asks for credentials).
            let names = PASS_HEADERS.iter().filter(|n| **n != "content-type").chain(&["www-authenticate"]);
            for name in names {
                for v in headers.get_all(*name) {
                    r.headers_mut().append(*name, v.clone());
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
