//! The scheduler's operations endpoint: `/metrics` (Prometheus text) and `/healthz`.
//!
//! What an operator needs to see a scheduler at scale: hosts and tasks known, decisions by kind, and how
//! long each decision holds the state lock (a histogram: the lock serialises every peer's frames, so its
//! hold time is the scheduler's capacity). Counts only; no host names, URLs or task IDs leave here.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;

/// Upper bounds of the decision-latency buckets, in microseconds.
const BUCKETS_US: [u64; 9] = [10, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];

/// Counters the server updates as it decides.
#[derive(Default)]
pub struct Stats {
    parents: AtomicU64,
    back_to_source: AtomicU64,
    waits: AtomicU64,
    refused: AtomicU64,
    /// Cumulative counts per bucket of [`BUCKETS_US`], then the overflow.
    latency: [AtomicU64; BUCKETS_US.len() + 1],
    latency_sum_ns: AtomicU64,
}

/// What a decision was, for the counters.
pub enum Kind {
    Parents,
    BackToSource,
    Wait,
    Refused,
}

impl Stats {
    /// Records one decision and how long the state took to make it.
    pub fn decided(&self, kind: Kind, took: Duration) {
        let c = match kind {
            Kind::Parents => &self.parents,
            Kind::BackToSource => &self.back_to_source,
            Kind::Wait => &self.waits,
            Kind::Refused => &self.refused,
        };
        c.fetch_add(1, Ordering::Relaxed);
        let us = took.as_micros() as u64;
        let b = BUCKETS_US.iter().position(|&le| us <= le).unwrap_or(BUCKETS_US.len());
        self.latency[b].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Prometheus text: these counters plus the gauges read from the state at scrape time.
    pub fn render(&self, g: &Gauges) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let gauge = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(&mut s, "shoal_scheduler_hosts", "Hosts registered.", g.hosts);
        gauge(&mut s, "shoal_scheduler_tasks", "Tasks known.", g.tasks);
        gauge(&mut s, "shoal_scheduler_task_peers", "Peers known across all tasks.", g.task_peers);
        gauge(&mut s, "shoal_scheduler_connections", "Peer connections open.", g.connections);
        let _ = writeln!(s, "# HELP shoal_scheduler_decisions_total Task requests answered, by decision.");
        let _ = writeln!(s, "# TYPE shoal_scheduler_decisions_total counter");
        for (kind, c) in [
            ("parents", &self.parents),
            ("back_to_source", &self.back_to_source),
            ("wait", &self.waits),
            ("refused", &self.refused),
        ] {
            let _ = writeln!(s, "shoal_scheduler_decisions_total{{decision=\"{kind}\"}} {}", c.load(Ordering::Relaxed));
        }
        let name = "shoal_scheduler_decision_seconds";
        let _ = writeln!(s, "# HELP {name} Time the state took to decide a task request.\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, le) in BUCKETS_US.iter().enumerate() {
            cumulative += self.latency[i].load(Ordering::Relaxed);
            let _ = writeln!(s, "{name}_bucket{{le=\"{}\"}} {cumulative}", *le as f64 / 1e6);
        }
        cumulative += self.latency[BUCKETS_US.len()].load(Ordering::Relaxed);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(s, "{name}_sum {}", self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(s, "{name}_count {cumulative}");
        s
    }
}

/// Read from the state at scrape time.
pub struct Gauges {
    pub hosts: u64,
    pub tasks: u64,
    /// (task, peer) pairs: after a restart, equal to the count before once every peer re-announced.
    pub task_peers: u64,
    pub connections: u64,
}

/// Binds `addr` and serves `/metrics` and `/healthz` on the current runtime (on the daemon endpoint's
/// HTTP loop, metrics/server.rs); `gauges` is called per scrape. Returns the bound address.
pub fn start(
    addr: SocketAddr,
    stats: Arc<Stats>,
    gauges: Arc<dyn Fn() -> Gauges + Send + Sync>,
) -> std::io::Result<SocketAddr> {
    crate::metrics::server::serve(addr, move |req: Request<hyper::body::Incoming>, _client| {
        let body = match req.uri().path() {
            "/metrics" => Some(stats.render(&gauges())),
            "/healthz" => Some("ok\n".to_owned()),
            _ => None,
        };
        let (status, body) = body.map_or((StatusCode::NOT_FOUND, String::new()), |b| (StatusCode::OK, b));
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        async move { Ok::<_, Infallible>(r) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_and_latency_render_as_prometheus_text() {
        let s = Stats::default();
        s.decided(Kind::Parents, Duration::from_micros(30));
        s.decided(Kind::Wait, Duration::from_micros(700));
        s.decided(Kind::Parents, Duration::from_millis(20));
        let text = s.render(&Gauges { hosts: 3, tasks: 2, task_peers: 4, connections: 3 });
        assert!(text.contains("shoal_scheduler_hosts 3\n"));
        assert!(text.contains("shoal_scheduler_task_peers 4\n"));
        assert!(text.contains("shoal_scheduler_decisions_total{decision=\"parents\"} 2\n"));
        assert!(text.contains("shoal_scheduler_decisions_total{decision=\"wait\"} 1\n"));
        assert!(text.contains("shoal_scheduler_decision_seconds_bucket{le=\"0.00005\"} 1\n"), "{text}");
        assert!(text.contains("shoal_scheduler_decision_seconds_bucket{le=\"0.001\"} 2\n"), "{text}");
        assert!(text.contains("shoal_scheduler_decision_seconds_bucket{le=\"+Inf\"} 3\n"), "{text}");
        assert!(text.contains("shoal_scheduler_decision_seconds_count 3\n"));
    }
}
