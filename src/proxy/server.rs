//! The forward-proxy listener: one SO_REUSEPORT listener per core, HTTP/1.1 with keep-alive.
//!
//! Absolute-form GETs whose URL names a content digest go through the engine (P2P). Everything else is
//! answered 501 until pass-through and CONNECT land (the proxy issue).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::respond::{task_body, BodyError};
use super::rules;
use crate::engine::{Engine, EngineError, FetchRequest};
use crate::runtime::{reuseport_listener, Cores};

type Body = BoxBody<Bytes, BodyError>;

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

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))).map_err(|n: Infallible| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Starts one accept loop per core on `addr`; returns the bound address.
pub fn start(cores: &Cores, addr: SocketAddr, engine: Arc<Engine>) -> std::io::Result<SocketAddr> {
    let first = reuseport_listener(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..cores.len() {
        listeners.push(reuseport_listener(bound)?);
    }
    for (core, l) in listeners.into_iter().enumerate() {
        let engine = engine.clone();
        cores.spawn_on(core, async move {
            let l = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "proxy listener");
                    return;
                }
            };
            // Runs until the core stops.
            loop {
                let Ok((sock, _)) = l.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let engine = engine.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(engine.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30))
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
    }
    Ok(bound)
}

async fn handle(engine: Arc<Engine>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.method() != Method::GET || req.uri().scheme().is_none() {
        return Ok(text(StatusCode::NOT_IMPLEMENTED, "shoal: only absolute-form GET is proxied so far"));
    }
    let Some(id) = rules::identify(req.uri(), rules::DEFAULT_FILTERED_PARAMS, true) else {
        return Ok(text(StatusCode::BAD_REQUEST, "shoal: request URL must be absolute http(s)"));
    };
    let mut digest = id.digest;
    if let Some(v) = req.headers().get("x-shoal-digest") {
        match v.to_str().ok().and_then(|s| s.strip_prefix("sha256:")).and_then(parse_hex32) {
            Some(d) => digest = Some(d),
            None => return Ok(text(StatusCode::BAD_REQUEST, "shoal: X-Shoal-Digest must be sha256:<64 hex>")),
        }
    }
    if id.digest.is_none() && digest.is_none() {
        return Ok(text(StatusCode::NOT_IMPLEMENTED, "shoal: pass-through of non-P2P URLs is not implemented yet"));
    }
    let task_id = id.digest.map(|_| id.task_id).or(digest.map(crate::storage::TaskId)).unwrap_or(id.task_id);
    let headers = req
        .headers()
        .iter()
        .filter(|(n, _)| !n.as_str().starts_with("x-shoal-") && !n.as_str().starts_with("proxy-"))
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let fr = FetchRequest {
        task_id,
        url: req.uri().to_string(),
        headers,
        display_url: id.display_url,
        expected_sha256: digest,
    };
    match engine.fetch(fr).await {
        Ok(f) => {
            let mut r = Response::new(BodyExt::boxed(task_body(f.task.clone())));
            let h = r.headers_mut();
            if let Some(oh) = &f.origin_headers {
                for name in PASS_HEADERS {
                    if let Some(v) = oh.get(*name) {
                        h.insert(*name, v.clone());
                    }
                }
            }
            if !h.contains_key(CONTENT_TYPE) {
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            }
            if let Some(len) = f.task.content_length() {
                h.insert(CONTENT_LENGTH, HeaderValue::from(len));
            }
            if let Ok(v) = HeaderValue::from_str(&f.task.id().to_hex()) {
                h.insert("x-shoal-task-id", v);
            }
            h.insert("x-shoal-source", HeaderValue::from_static(f.source.as_str()));
            Ok(r)
        }
        Err(e) => Ok(error_response(&e)),
    }
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

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    (s.len() == 64).then_some(())?;
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}
