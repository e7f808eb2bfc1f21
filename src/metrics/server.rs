//! The metrics endpoint: `/metrics` (Prometheus text), `/healthz` (the process answers), `/readyz`
//! (storage loaded and the scheduler reachable, or embedded), `/tasks` and `/tasks/<id>` (JSON, tasks.rs).
//!
//! `/tasks` lists URLs and file paths: it answers clients on this machine's loopback only, so the
//! listener can face a Prometheus scraper (the chart binds it to every address) without exposing the
//! cache's contents; `shoal ls` inside the pod or on the node reaches it through 127.0.0.1.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use super::Gauges;

/// What the endpoint asks the daemon at scrape time.
pub trait Probe: Send + Sync + 'static {
    fn gauges(&self) -> Gauges;
    fn tasks(&self) -> Vec<super::tasks::TaskView>;
    fn ready(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(v) {
        Ok(mut body) => {
            body.push('\n');
            reply(status, "application/json", body)
        }
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encoding: {e}\n")),
    }
}

/// Whether a client may read `/tasks`: only from this machine's loopback.
pub fn may_list_tasks(client: SocketAddr) -> bool {
    client.ip().to_canonical().is_loopback()
}

async fn handle(
    probe: Arc<dyn Probe>,
    client: SocketAddr,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into()));
    }
    if req.uri().path().starts_with("/tasks") && !may_list_tasks(client) {
        let why = "shoal: /tasks answers loopback clients only (run shoal ls on the node)\n";
        return Ok(reply(StatusCode::FORBIDDEN, "text/plain", why.into()));
    }
    Ok(match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", super::global().render(&probe.gauges())),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => match tokio::time::timeout(Duration::from_secs(2), probe.ready()).await {
            Ok(Ok(())) => reply(StatusCode::OK, "text/plain", "ready\n".into()),
            Ok(Err(why)) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {why}\n")),
            Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready: check timed out\n".into()),
        },
        "/tasks" => json(StatusCode::OK, &probe.tasks()),
        p if p.starts_with("/tasks/") => {
            use super::tasks::{lookup, Lookup};
            match lookup(probe.tasks(), &p["/tasks/".len()..]) {
                Lookup::One(t) => json(StatusCode::OK, &t),
                Lookup::None => reply(StatusCode::NOT_FOUND, "text/plain", "no such task\n".into()),
                Lookup::Ambiguous(n) => {
                    reply(StatusCode::CONFLICT, "text/plain", format!("the prefix matches {n} tasks\n"))
                }
                Lookup::BadKey => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{}\n", super::tasks::BAD_KEY)),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}

/// Binds `addr` and serves on the current runtime (call it inside one); returns the bound address.
pub fn start(addr: SocketAddr, probe: Arc<dyn Probe>) -> std::io::Result<SocketAddr> {
    serve(addr, move |req, client| handle(probe.clone(), client, req))
}

/// Binds `addr` and serves HTTP/1 on the current runtime until it stops: every request goes to `answer`
/// with the client's address, and a request head must arrive within 10 s. Returns the bound address.
/// The daemon's endpoint ([`start`]) and the scheduler's (scheduler/ops.rs) both run on it.
pub fn serve<F, Fut>(addr: SocketAddr, answer: F) -> std::io::Result<SocketAddr>
where
    F: Fn(Request<hyper::body::Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let std_l = std::net::TcpListener::bind(addr)?;
    std_l.set_nonblocking(true)?;
    let l = tokio::net::TcpListener::from_std(std_l)?;
    let bound = l.local_addr()?;
    tokio::spawn(async move {
        // Runs until the runtime stops.
        loop {
            let Ok((sock, client)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| answer(req, client));
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_clients_may_list_tasks() {
        for ok in ["127.0.0.1:5", "127.9.9.9:5", "[::1]:5", "[::ffff:127.0.0.1]:5"] {
            assert!(may_list_tasks(ok.parse().unwrap()), "{ok}");
        }
        for no in ["10.0.0.5:5", "192.168.1.2:5", "[fe80::1]:5", "[::ffff:10.1.2.3]:5"] {
            assert!(!may_list_tasks(no.parse().unwrap()), "{no}");
        }
    }
}
