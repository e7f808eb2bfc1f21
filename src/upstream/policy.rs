//! Where the daemon may connect on anyone's behalf: the guard that keeps a node's proxy from being an open
//! relay into the node's network.
//!
//! Every outbound connection of the proxy and the engine (pass-through, CONNECT tunnels, back-to-source
//! fetches, a seed's triggered fetches) is dialled by [`dial`], which resolves the host itself and checks
//! each address before connecting to it: denied networks (link-local and cloud metadata addresses by
//! default, plus `proxy.deny_destinations`, minus `proxy.allow_destinations`) and the daemon's own
//! listeners are never dialled, whatever name or redirect led there. CONNECT is further limited to
//! `proxy.connect_ports`.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::TcpStream;

/// Networks no request may reach by default: link-local (169.254.169.254 and fd00:ec2::254 are the
/// common cloud metadata services), Alibaba's metadata address, and "this network".
pub const DEFAULT_DENY: &[&str] =
    &["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "100.100.100.200/32", "0.0.0.0/8"];

/// Ports CONNECT may tunnel to by default.
pub const DEFAULT_CONNECT_PORTS: &[RangeInclusive<u16>] = &[443..=443];

/// Why a destination is refused. Shown to the client (403) and in the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("destination {0} is denied by policy (link-local, metadata or proxy.deny_destinations)")]
    Network(IpAddr),
    #[error("destination {0} is one of this daemon's own listeners")]
    OwnListener(SocketAddr),
    #[error("CONNECT to port {0} is not allowed (proxy.connect_ports)")]
    Port(u16),
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: std::io::Error },
    #[error("connect to {host} timed out after {after:?}")]
    Timeout { host: String, after: Duration },
}

/// The destination policy of one daemon.
#[derive(Debug, Default)]
pub struct Destinations {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
    connect_ports: Vec<RangeInclusive<u16>>,
    /// The daemon's listeners, added as they are bound.
    own: RwLock<Vec<SocketAddr>>,
}

impl Destinations {
    pub fn new(deny: Vec<IpNet>, allow: Vec<IpNet>, connect_ports: Vec<RangeInclusive<u16>>) -> Arc<Destinations> {
        Arc::new(Destinations { deny, allow, connect_ports, own: RwLock::new(Vec::new()) })
    }

    /// The default policy: [`DEFAULT_DENY`], nothing allowed back, CONNECT to 443 only.
    pub fn standard() -> Arc<Destinations> {
        let deny = DEFAULT_DENY.iter().filter_map(|n| n.parse().ok()).collect();
        Destinations::new(deny, Vec::new(), DEFAULT_CONNECT_PORTS.to_vec())
    }

    /// Anything goes (tools and tests that talk to their own loopback servers only).
    pub fn open() -> Arc<Destinations> {
        Destinations::new(Vec::new(), Vec::new(), vec![0..=u16::MAX])
    }

    /// Records a listener of this daemon: nothing is dialled on its behalf.
    pub fn add_own(&self, addr: SocketAddr) {
        self.own.write().unwrap_or_else(|p| p.into_inner()).push(addr);
    }

    /// Whether `addr` may be dialled.
    pub fn check(&self, addr: SocketAddr) -> Result<(), Denied> {
        let ip = addr.ip().to_canonical();
        let listed = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&ip));
        if listed(&self.deny) && !listed(&self.allow) {
            return Err(Denied::Network(ip));
        }
        let own = self.own.read().unwrap_or_else(|p| p.into_inner());
        for l in own.iter().filter(|l| l.port() == addr.port()) {
            let l_ip = l.ip().to_canonical();
            if l_ip == ip || (l_ip.is_unspecified() && is_local(ip)) {
                return Err(Denied::OwnListener(addr));
            }
        }
        Ok(())
    }

    /// Whether CONNECT may tunnel to `port`.
    pub fn check_connect_port(&self, port: u16) -> Result<(), Denied> {
        match self.connect_ports.iter().any(|r| r.contains(&port)) {
            true => Ok(()),
            false => Err(Denied::Port(port)),
        }
    }
}

/// An address of this machine: loopback, or one a socket can bind to.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Resolves `host` and connects to the first address the policy allows, each attempt bounded by
/// `timeout`. A host whose every address is denied fails with the first denial.
pub async fn dial(policy: &Destinations, host: &str, port: u16, timeout: Duration) -> Result<TcpStream, DialError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs = resolve(host, port, timeout).await?;
    let mut first_err = None;
    for addr in addrs {
        if let Err(d) = policy.check(addr) {
            first_err.get_or_insert(DialError::Denied(d));
            continue;
        }
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(source)) => {
                first_err.get_or_insert(DialError::Connect { addr, source });
            }
            Err(_) => {
                first_err.get_or_insert(DialError::Timeout { host: host.to_owned(), after: timeout });
            }
        }
    }
    Err(first_err.unwrap_or_else(|| DialError::NoAddress { host: host.to_owned() }))
}

/// Whether `host:port` may be dialled at all, without connecting: resolves it and fails with the first
/// denial when the policy refuses every address (what [`dial`] would then fail with). For a CONNECT the
/// proxy answers itself (an intercepted one), so the client gets the same 403 as for a tunnel.
pub async fn check_host(policy: &Destinations, host: &str, port: u16, timeout: Duration) -> Result<(), DialError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut first_err = None;
    for addr in resolve(host, port, timeout).await? {
        match policy.check(addr) {
            Ok(()) => return Ok(()),
            Err(d) => {
                first_err.get_or_insert(DialError::Denied(d));
            }
        }
    }
    Err(first_err.unwrap_or_else(|| DialError::NoAddress { host: host.to_owned() }))
}

/// The addresses of `host` (an IP literal is its own), the lookup bounded by `timeout`.
async fn resolve(host: &str, port: u16, timeout: Duration) -> Result<Vec<SocketAddr>, DialError> {
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| DialError::Timeout { host: host.to_owned(), after: timeout })?
            .map_err(|source| DialError::Resolve { host: host.to_owned(), source })?
            .collect(),
    })
}

/// The policy's refusal somewhere in an error's chain (hyper wraps the connector's error).
pub fn denial_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Denied> {
    let mut cur = Some(e);
    // Bounded by the error chain's length.
    while let Some(err) = cur {
        if let Some(DialError::Denied(d)) = err.downcast_ref::<DialError>() {
            return Some(d);
        }
        if let Some(d) = err.downcast_ref::<Denied>() {
            return Some(d);
        }
        cur = err.source();
    }
    None
}

/// A port range as the config file writes it: `443` or `"8000-8999"`.
pub fn parse_ports(s: &str) -> Option<RangeInclusive<u16>> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some(a..=b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn link_local_metadata_and_own_listeners_are_denied_and_allow_punches_holes() {
        let p = Destinations::standard();
        assert_eq!(p.check(sa("169.254.169.254:80")), Err(Denied::Network("169.254.169.254".parse().unwrap())));
        assert!(p.check(sa("[::ffff:169.254.169.254]:80")).is_err(), "v4-mapped v6 is the same address");
        assert!(p.check(sa("[fd00:ec2::254]:80")).is_err());
        assert!(p.check(sa("[fe80::1]:443")).is_err());
        assert!(p.check(sa("100.100.100.200:80")).is_err());
        assert!(p.check(sa("127.0.0.2:8080")).is_ok());
        assert!(p.check(sa("93.184.216.34:443")).is_ok());
        p.add_own(sa("127.0.0.9:65001"));
        p.add_own(sa("0.0.0.0:65002"));
        assert_eq!(p.check(sa("127.0.0.9:65001")), Err(Denied::OwnListener(sa("127.0.0.9:65001"))));
        assert!(p.check(sa("127.0.0.10:65001")).is_ok(), "another host's port");
        assert!(p.check(sa("127.0.0.77:65002")).is_err(), "a wildcard listener is reachable on every local address");
        let holed = Destinations::new(
            vec!["169.254.0.0/16".parse().unwrap()],
            vec!["169.254.10.0/24".parse().unwrap()],
            vec![],
        );
        assert!(holed.check(sa("169.254.10.5:80")).is_ok());
        assert!(holed.check(sa("169.254.11.5:80")).is_err());
        assert_eq!(p.check_connect_port(443), Ok(()));
        assert_eq!(p.check_connect_port(22), Err(Denied::Port(22)));
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_ports("443"), Some(443..=443));
        assert_eq!(parse_ports("8000-8999"), Some(8000..=8999));
        assert_eq!(parse_ports("9-1"), None);
        assert_eq!(parse_ports("x"), None);
        assert_eq!(parse_ports("70000"), None);
    }

    #[test]
    fn dial_never_connects_to_a_denied_address_and_says_why() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let p = Destinations::new(vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()], vec![], vec![]);
            let e = dial(&p, "localhost", addr.port(), Duration::from_secs(2)).await;
            let e = e.expect_err("localhost is denied by the policy");
            assert!(denial_in(&e).is_some(), "{e}");
            let e = check_host(&p, "localhost", addr.port(), Duration::from_secs(2)).await.unwrap_err();
            assert!(denial_in(&e).is_some(), "checked like a dial, without connecting: {e}");
            let open = Destinations::open();
            assert!(check_host(&open, "localhost", 1, Duration::from_secs(2)).await.is_ok());
            assert!(dial(&open, "127.0.0.1", addr.port(), Duration::from_secs(2)).await.is_ok());
            let e = dial(&open, "[::1]", 1, Duration::from_secs(2)).await.err().unwrap();
            assert!(denial_in(&e).is_none());
        });
    }
}
