//! Pass-through: requests that are not P2P go upstream unchanged, and CONNECT becomes a byte tunnel.
//!
//! Owns: the upstream HTTP(S) client of the proxy, hop-by-hop header removal (RFC 9110 §7.6.1) in both
//! directions, and CONNECT tunnels (no interception: the proxy never sees inside TLS). Bodies stream both
//! ways; nothing is buffered whole. Never: caches anything or touches the engine.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::respond::BodyError;
use super::server::{text, Body};
use crate::engine::source::{Https, HOP_BY_HOP};

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("TLS roots: {0}")]
    Tls(String),
}

/// The upstream side of pass-through, shared by all listeners of a daemon.
#[derive(Clone)]
pub struct Forwarder {
    client: Client<Https, Incoming>,
    connect_timeout: Duration,
    /// Bound on waiting for an upstream's response head (the body then streams without a bound).
    head_timeout: Duration,
}

impl Forwarder {
    pub fn new(connect_timeout: Duration, head_timeout: Duration) -> Result<Forwarder, ForwardError> {
        let https =
            crate::engine::source::https_connector(connect_timeout).map_err(|e| ForwardError::Tls(e.to_string()))?;
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        Ok(Forwarder { client, connect_timeout, head_timeout })
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
        parts.uri = url;
        let sent = tokio::time::timeout(self.head_timeout, self.client.request(Request::from_parts(parts, body)));
        let resp = match sent.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let what = if e.is_connect() { "upstream connect failed" } else { "upstream request failed" };
                return text(StatusCode::BAD_GATEWAY, &format!("shoal: {what}: {}", one_line(&e)));
            }
            Err(_) => return text(StatusCode::GATEWAY_TIMEOUT, "shoal: upstream sent no response head in time"),
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Response::from_parts(parts, body.map_err(|e| Box::new(e) as BodyError).boxed())
    }

    /// CONNECT: dials the target, answers 200, then copies bytes both ways until either side closes.
    pub async fn connect(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(target) = connect_target(req.uri()) else {
            return text(StatusCode::BAD_REQUEST, "shoal: CONNECT needs host:port");
        };
        let dial = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(target.as_str()));
        let mut upstream = match dial.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return text(StatusCode::BAD_GATEWAY, &format!("shoal: connect to {target} failed: {e}")),
            Err(_) => return text(StatusCode::BAD_GATEWAY, &format!("shoal: connect to {target} timed out")),
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

/// `host:port` of a CONNECT request (authority form), with a port and no path.
fn connect_target(uri: &Uri) -> Option<String> {
    let a = uri.authority()?;
    if uri.scheme().is_some() || a.port_u16().is_none() || a.host().is_empty() || a.as_str().contains('@') {
        return None;
    }
    Some(a.as_str().to_owned())
}

/// Removes the hop-by-hop headers, including every header the Connection header names.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(*n);
    }
}

fn one_line(e: &dyn std::error::Error) -> String {
    crate::engine::source::error_chain(e).lines().next().unwrap_or("").chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("connection", "close, X-Private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("authorization", "Bearer t"),
            ("range", "bytes=0-1"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["authorization", "range"]);
    }

    #[test]
    fn connect_targets_need_host_and_port() {
        let t = |s: &str| s.parse::<Uri>().ok().and_then(|u| connect_target(&u));
        assert_eq!(t("127.0.0.1:443").as_deref(), Some("127.0.0.1:443"));
        assert_eq!(t("example.test:8443").as_deref(), Some("example.test:8443"));
        assert_eq!(t("example.test"), None);
        assert_eq!(t("http://example.test:80/x"), None);
        assert_eq!(t("/path"), None);
    }
}
