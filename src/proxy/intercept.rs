//! TLS interception: a CONNECT to a host listed in `proxy.intercept` is answered by the proxy itself,
//! which terminates the client's TLS with a leaf certificate its CA issues for that host and serves the
//! HTTP/1.1 requests inside like any other proxy request.
//!
//! Owns: the host patterns (an exact host, or `*.example.com` for every subdomain), the checks a CONNECT
//! passes before the proxy answers it (`proxy.connect_ports` and the destination policy, as for a
//! tunnel), the TLS handshake with the client (ALPN http/1.1 only), and turning each inner request's
//! origin-form target into the absolute `https://host[:port]/path` URL the request plan routes. The
//! requests themselves go through the caller's service: rules, tasks, P2P and pass-through apply as for
//! plain HTTP, and every connection to the origin is TLS verified by the upstream clients. Hosts not
//! listed stay byte tunnels (forward.rs).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;

use super::respond::{text, Body};
use crate::tls::Leaves;
use crate::upstream::{check_host, Destinations, DialError};

/// One entry of `proxy.intercept`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// This host only (a name in lower case, or an IP literal without brackets).
    Exact(String),
    /// Every subdomain of this domain, at any depth, not the domain itself (`*.example.com`).
    Subdomains(String),
}

#[derive(Debug, thiserror::Error)]
#[error("{pattern:?} is not a host, an IP address or *.domain: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: &'static str,
}

impl HostPattern {
    /// Parses one pattern. Never panics, whatever the text.
    pub fn parse(s: &str) -> Result<HostPattern, PatternError> {
        let bad = |reason| PatternError { pattern: s.to_owned(), reason };
        let bare = s.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            return Ok(HostPattern::Exact(ip.to_string()));
        }
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.is_empty() || name.len() > 253 {
            return Err(bad("empty or longer than 253 characters"));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !name.split('.').all(label_ok) {
            return Err(bad("labels are letters, digits, '-' and '_', separated by single dots; '*' only as *.domain"));
        }
        Ok(if wild { HostPattern::Subdomains(name) } else { HostPattern::Exact(name) })
    }

    /// Whether a CONNECT to `host` (as the request wrote it) is intercepted by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        let host = normalize(host);
        match self {
            HostPattern::Exact(h) => *h == host,
            HostPattern::Subdomains(d) => {
                host.len() > d.len() + 1 && host.ends_with(d.as_str()) && host[..host.len() - d.len()].ends_with('.')
            }
        }
    }
}

/// A host as patterns compare it: lower case, no IPv6 brackets, no trailing dot, IP literals canonical.
fn normalize(host: &str) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => bare.strip_suffix('.').unwrap_or(bare).to_ascii_lowercase(),
    }
}

/// The hosts whose tunnels are intercepted, and the certificates presented to their clients.
pub struct Intercept {
    hosts: Vec<HostPattern>,
    leaves: Leaves,
}

impl std::fmt::Debug for Intercept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercept").field("hosts", &self.hosts).finish_non_exhaustive()
    }
}

/// Bounds of one intercepted connection (the proxy's own client settings).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The TLS handshake and each request head must arrive within this; idle keep-alive ends after it.
    pub client_timeout: Duration,
    pub max_header_bytes: usize,
    /// Bound on resolving the host when the CONNECT is checked against the destination policy.
    pub resolve_timeout: Duration,
}

impl Intercept {
    pub fn new(hosts: Vec<HostPattern>, leaves: Leaves) -> Intercept {
        Intercept { hosts, leaves }
    }

    /// Whether a CONNECT to `host` is intercepted.
    pub fn covers(&self, host: &str) -> bool {
        self.hosts.iter().any(|p| p.matches(host))
    }

    /// The checks a CONNECT to a listed host passes before the proxy answers 200 (the port and the
    /// destination policy, as for a tunnel), and the TLS settings presenting a leaf for the host. A
    /// refusal is the response to send instead.
    pub(super) async fn open(
        &self,
        policy: &Destinations,
        host: &str,
        port: u16,
        limits: Limits,
    ) -> Result<Arc<ServerConfig>, Response<Body>> {
        if let Err(d) = policy.check_connect_port(port) {
            return Err(text(StatusCode::FORBIDDEN, &format!("shoal: {d}")));
        }
        match check_host(policy, host, port, limits.resolve_timeout).await {
            Ok(()) => {}
            Err(DialError::Denied(d)) => return Err(text(StatusCode::FORBIDDEN, &format!("shoal: {d}"))),
            Err(e) => return Err(text(StatusCode::BAD_GATEWAY, &format!("shoal: CONNECT {host}:{port}: {e}"))),
        }
        self.leaves.server_config(host).map_err(|e| text(StatusCode::BAD_GATEWAY, &format!("shoal: {e}")))
    }
}

/// After the proxy's 200 to `req` (a CONNECT to `host:port`): the client's TLS handshake with `tls`, then
/// its HTTP/1.1 requests, each with an absolute `https` URL, through `svc`, with keep-alive, until the
/// client leaves, idles out, or `stop` asks the connection to close after its current response.
pub(super) async fn serve<S, F>(
    req: Request<Incoming>,
    tls: Arc<ServerConfig>,
    host: String,
    port: u16,
    svc: S,
    limits: Limits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    S: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let upgraded = match hyper::upgrade::on(req).await {
        Ok(u) => u,
        Err(e) => return tracing::debug!(%host, port, error = %e, "CONNECT upgrade failed"),
    };
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(TokioIo::new(upgraded));
    let stream = match tokio::time::timeout(limits.client_timeout, accept).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::debug!(%host, port, error = %e, "intercepted TLS handshake failed"),
        Err(_) => return tracing::debug!(%host, port, "intercepted TLS handshake timed out"),
    };
    let authority = match port {
        443 => host.clone(),
        p => format!("{host}:{p}"),
    };
    let svc = Arc::new(svc);
    let inner = service_fn(move |mut r: Request<Incoming>| {
        let svc = svc.clone();
        let url = inner_url(&authority, r.uri());
        async move {
            match url {
                Some(u) => {
                    *r.uri_mut() = u;
                    svc(r).await
                }
                None => Ok(text(StatusCode::BAD_REQUEST, "shoal: the request target inside the tunnel is invalid")),
            }
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.client_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(stream), inner)
        .with_upgrades();
    let served = super::lifecycle::serve_until_drained(conn, &mut stop).await;
    if let Err(e) = served {
        tracing::debug!(%host, port, error = %crate::upstream::error_chain(&e), "intercepted connection ended");
    }
}

/// The absolute URL of a request inside a tunnel to `authority`: its path and query on
/// `https://authority`. The tunnel decides where a request goes: an absolute-form target's own
/// authority is not followed.
pub fn inner_url(authority: &str, target: &Uri) -> Option<Uri> {
    let pq = target.path_and_query().map(|p| p.as_str()).filter(|p| p.starts_with('/')).unwrap_or("/");
    Uri::builder().scheme("https").authority(authority).path_and_query(pq).build().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_hosts_and_subdomain_patterns() {
        let p = |s: &str| HostPattern::parse(s).unwrap();
        let exact = p("LFS-Origin.test.");
        assert_eq!(exact, HostPattern::Exact("lfs-origin.test".into()));
        assert!(
            exact.matches("lfs-origin.test") && exact.matches("LFS-ORIGIN.TEST") && exact.matches("lfs-origin.test.")
        );
        assert!(!exact.matches("x.lfs-origin.test") && !exact.matches("origin.test"));
        let sub = p("*.example.com");
        for yes in ["a.example.com", "A.B.Example.COM", "cdn-1.example.com."] {
            assert!(sub.matches(yes), "{yes}");
        }
        for no in ["example.com", "badexample.com", "a.example.com.evil.test", ".example.com", ""] {
            assert!(!sub.matches(no), "{no}");
        }
        let v6 = p("[::1]");
        assert_eq!(v6, HostPattern::Exact("::1".into()));
        assert!(v6.matches("[::1]") && v6.matches("0:0::1") && !v6.matches("127.0.0.1"));
        assert!(p("127.0.0.2").matches("127.0.0.2"));
        for bad in ["", "*", "*.", "a..b", "a/b", "host:443", "*.*.example.com", "a*.example.com", "-a.test", "a b"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn inner_requests_get_absolute_https_urls_on_the_tunnel_host() {
        let u = |a: &str, t: &str| inner_url(a, &t.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(u("o.test", "/a/b?jwt=x").as_deref(), Some("https://o.test/a/b?jwt=x"));
        assert_eq!(u("o.test:8443", "/").as_deref(), Some("https://o.test:8443/"));
        assert_eq!(u("[::1]:8443", "/x").as_deref(), Some("https://[::1]:8443/x"));
        assert_eq!(
            u("o.test", "http://elsewhere.test/x?q").as_deref(),
            Some("https://o.test/x?q"),
            "the tunnel decides"
        );
        assert_eq!(u("o.test", "*").as_deref(), Some("https://o.test/"));
    }

    proptest::proptest! {
        #[test]
        fn the_pattern_parser_never_panics(s in "\\PC{0,80}", host in "[a-zA-Z0-9.*\\[\\]:_-]{0,40}") {
            if let Ok(p) = HostPattern::parse(&s) {
                let _ = p.matches(&host);
            }
            if let Ok(p) = HostPattern::parse(&host) {
                let _ = p.matches(&s);
            }
        }
    }
}
