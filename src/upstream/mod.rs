//! Outbound HTTP(S) plumbing shared by every client of the daemon that talks to origins: the engine's
//! back-to-source fetches and the proxy's pass-through.
//!
//! Owns: the connector (destination policy, TCP with a connect timeout, rustls verifying against the
//! system's roots and `upstream.ca_file`), the destination policy itself (policy.rs), which origins are
//! trusted and how a refused certificate is told (trust.rs), the hop-by-hop header list and its removal,
//! and the one-line rendering of an error chain. Never: sends a request itself, or connects to an origin
//! without verifying its certificate. Called by: engine and proxy.

pub mod policy;
pub mod trust;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, CONNECTION};
use http::Uri;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub use policy::{check_host, denial_in, dial, Denied, Destinations, DialError};
pub use trust::{bundle, client_tls, tls_refusal_in, TlsRefusal, TrustError};

pub type Https = hyper_rustls::HttpsConnector<Guarded>;

/// TCP for hyper's clients, dialled through the destination policy.
#[derive(Clone, Debug)]
pub struct Guarded {
    policy: Arc<Destinations>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Guarded {
    type Response = TokioIo<TcpStream>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let (policy, timeout) = (self.policy.clone(), self.connect_timeout);
        Box::pin(async move {
            let host = dst.host().unwrap_or("").to_owned();
            let port = dst.port_u16().unwrap_or(if dst.scheme_str() == Some("https") { 443 } else { 80 });
            dial(&policy, &host, port, timeout).await.map(TokioIo::new)
        })
    }
}

/// The connector every outbound HTTP(S) client of the daemon uses (origins, pass-through): destinations
/// checked by `policy`, TCP with a connect timeout and no Nagle, TLS through rustls verifying against the
/// system's roots (or `SSL_CERT_FILE`).
pub fn https_connector(connect_timeout: Duration, policy: Arc<Destinations>) -> Result<Https, TrustError> {
    Ok(https_connector_with(connect_timeout, policy, &*client_tls(None)?))
}

/// [`https_connector`] verifying origins with `tls` (from [`client_tls`]).
pub fn https_connector_with(connect_timeout: Duration, policy: Arc<Destinations>, tls: &rustls::ClientConfig) -> Https {
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(Guarded { policy, connect_timeout })
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the proxy's own: never
/// forwarded in either direction (the proxy's pass-through uses this list too).
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

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

/// An error and its sources joined with ": ", the way logs and one-line client replies show them.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    // Bounded by the error chain's length.
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

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
}
