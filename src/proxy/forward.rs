//! Pass-through: requests that are not P2P go upstream unchanged, and CONNECT becomes a byte tunnel.
//!
//! Owns: the upstream HTTP(S) client of the proxy (origins' certificates always verified), hop-by-hop
//! header removal (RFC 9110 §7.6.1) in both directions, and byte tunnels for CONNECT to hosts that are not
//! intercepted (the proxy never sees inside those; intercept.rs terminates the listed ones). Bodies stream
//! both ways; nothing is buffered whole. Never: caches anything or touches the engine.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::respond::{text, Body, BodyError};
use crate::upstream::{
    denial_in, dial, error_chain, https_connector, https_connector_with, strip_hop_by_hop, tls_refusal_in,
    Destinations, DialError, Https,
};

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("TLS roots: {0}")]
    Tls(String),
}

/// The upstream side of pass-through, shared by all listeners of a daemon.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<Https, Incoming>,
    destinations: Arc<Destinations>,
    connect_timeout: Duration,
    /// Bound on waiting for an upstream's response head (the body then streams without a bound).
    head_timeout: Duration,
}

impl Forwarder {
    /// `tls` verifies origins' certificates (`upstream::client_tls`); `None`: the system's roots.
    pub fn new(
        connect_timeout: Duration,
        head_timeout: Duration,
        destinations: Arc<Destinations>,
        tls: Option<&rustls::ClientConfig>,
    ) -> Result<Forwarder, ForwardError> {
        let https = match tls {
            Some(tls) => https_connector_with(connect_timeout, destinations.clone(), tls),
            None => {
                https_connector(connect_timeout, destinations.clone()).map_err(|e| ForwardError::Tls(e.to_string()))?
            }
        };
        // The timer is what enforces the idle timeout: without one, hyper-util drops an expired idle
        // connection only when the pool is next asked for that origin, so a burst's connections (and their
        // descriptors) stayed open for good once the load stopped (scripts/soak.sh showed it).
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Forwarder { client, destinations, connect_timeout, head_timeout })
    }

    /// Sends `req` to `url` (absolute) and streams the answer back. Upstream failures are 502 (504 when the
    /// head does not come in time), each with a one-line reason.
    pub async fn forward(&self, req: Request<Incoming>, url: Uri) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        match url.authority().map(|a| HeaderValue::from_str(a.as_str())) {
            Some(Ok(host)) => {
                parts.headers.insert(HOST, host);
            }
            _ => return text(StatusCode::BAD_REQUEST, "shoal: request URL must be absolute http(s)"),
        }
        let host = url.host().unwrap_or("").to_owned();
        parts.uri = url;
        let sent = tokio::time::timeout(self.head_timeout, self.client.request(Request::from_parts(parts, body)));
        let resp = match sent.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                if let Some(d) = denial_in(&e) {
                    return text(StatusCode::FORBIDDEN, &format!("shoal: {d}"));
                }
                if let Some(t) = tls_refusal_in(&host, &e) {
                    return text(StatusCode::BAD_GATEWAY, &format!("shoal: {t}"));
                }
                let what = if e.is_connect() { "upstream connect failed" } else { "upstream request failed" };
                return text(StatusCode::BAD_GATEWAY, &format!("shoal: {what}: {}", one_line(&e)));
            }
            Err(_) => return text(StatusCode::GATEWAY_TIMEOUT, "shoal: upstream sent no response head in time"),
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, body.map_err(|e| Box::new(e) as BodyError).boxed())
    }

    /// CONNECT to `host:port` (from the plan): dials it through the destination policy, answers 200, then
    /// copies bytes both ways until either side closes. A refused port or address is a 403.
    pub async fn connect(&self, req: Request<Incoming>, host: String, port: u16) -> Response<Body> {
        let target = format!("{host}:{port}");
        if let Err(d) = self.destinations.check_connect_port(port) {
            return text(StatusCode::FORBIDDEN, &format!("shoal: {d}"));
        }
        let mut upstream = match dial(&self.destinations, &host, port, self.connect_timeout).await {
            Ok(s) => s,
            Err(DialError::Denied(d)) => return text(StatusCode::FORBIDDEN, &format!("shoal: {d}")),
            Err(e) => return text(StatusCode::BAD_GATEWAY, &format!("shoal: CONNECT {target}: {e}")),
        };
        let _ = upstream.set_nodelay(true);
        tokio::spawn(async move {
            // The upgrade completes once hyper has written the 200 below.
            match hyper::upgrade::on(req).await {
                Ok(up) => {
                    let mut client = TokioIo::new(up);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                        tracing::debug!(%target, error = %e, "tunnel ended");
                    }
                }
                Err(e) => tracing::debug!(%target, error = %e, "CONNECT upgrade failed"),
            }
        });
        Response::new(http_body_util::Empty::<Bytes>::new().map_err(|n| match n {}).boxed())
    }
}

fn one_line(e: &dyn std::error::Error) -> String {
    error_chain(e).lines().next().unwrap_or("").chars().take(300).collect()
}
