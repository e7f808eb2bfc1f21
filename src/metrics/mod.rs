//! Process-wide counters and the Prometheus text exposition of them.
//!
//! Owns: the counters every subsystem bumps (bytes by source, task outcomes, piece latency, proxy
//! statuses) and their rendering. Never: blocks a data path (counters are atomics; the histogram and the
//! status map take a short uncontended lock). Called by: engine, proxy and daemon (bumps), and the metrics
//! HTTP endpoint (server.rs), whose serving loop the scheduler's /metrics uses too.

pub mod server;
pub mod tasks;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Counters since the process started.
pub struct Metrics {
    pub bytes_from_origin: AtomicU64,
    pub bytes_from_peers: AtomicU64,
    pub bytes_served: AtomicU64,
    pub tasks_started: AtomicU64,
    pub tasks_completed: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub back_to_source: AtomicU64,
    /// Authorization probes by outcome: the origin let the requester read (or a recent yes was
    /// remembered), refused, or could not be asked.
    pub authz_allowed: AtomicU64,
    pub authz_cached: AtomicU64,
    pub authz_denied: AtomicU64,
    pub authz_failed: AtomicU64,
    /// Reads that waited `gather::GUARD` on a socket's receive mark and gave it up.
    pub receive_marks_given_up: AtomicU64,
    piece_latency_us: Mutex<Histogram<u64>>,
    proxy_status: Mutex<BTreeMap<u16, u64>>,
}

/// Values sampled when scraped, owned by other subsystems.
#[derive(Default, Clone, Debug)]
pub struct Gauges {
    pub storage_bytes: u64,
    /// The quota GC enforces (the file system's size when none is set).
    pub storage_limit_bytes: u64,
    pub evictions: u64,
    pub io_engine: &'static str,
    pub uploaded_bytes: u64,
    pub upload_connections: u64,
    pub tasks_cached: u64,
    /// Piece-buffer memory that exists, by what it is doing.
    pub piece_buffers: PieceBuffers,
    /// The allocator's live bytes and what it holds beyond them, where it can tell.
    pub heap: Option<crate::runtime::HeapStats>,
}

/// Piece-buffer bytes: stored pieces kept in memory, buffers being filled, written or sent, and idle ones
/// pooled for reuse.
#[derive(Debug, Clone, Copy, Default)]
pub struct PieceBuffers {
    pub held: u64,
    pub busy: u64,
    pub idle: u64,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// One metric of `kind` ("gauge", "counter") with a series per value of `label`, in the order given.
fn labelled(o: &mut String, (name, kind): (&str, &str), help: &str, label: &str, series: &[(&str, u64)]) {
    let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
    for (value, n) in series {
        let _ = writeln!(o, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Upper bounds of the exported latency buckets, in seconds.
const BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    fn new() -> Metrics {
        // 1 µs .. 10 min at 3 significant digits: ~100 KiB, allocated once.
        let h = Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid");
        Metrics {
            bytes_from_origin: AtomicU64::new(0),
            bytes_from_peers: AtomicU64::new(0),
            bytes_served: AtomicU64::new(0),
            tasks_started: AtomicU64::new(0),
            tasks_completed: AtomicU64::new(0),
            tasks_failed: AtomicU64::new(0),
            back_to_source: AtomicU64::new(0),
            authz_allowed: AtomicU64::new(0),
            authz_cached: AtomicU64::new(0),
            authz_denied: AtomicU64::new(0),
            authz_failed: AtomicU64::new(0),
            receive_marks_given_up: AtomicU64::new(0),
            piece_latency_us: Mutex::new(h),
            proxy_status: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    /// One piece fetched from a peer, from request to stored.
    pub fn piece_downloaded(&self, took: Duration) {
        let us = took.as_micros().clamp(1, 600_000_000) as u64;
        let _ = lock(&self.piece_latency_us).record(us);
    }

    pub fn proxy_response(&self, status: u16) {
        *lock(&self.proxy_status).entry(status).or_default() += 1;
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, g: &Gauges) -> String {
        let mut o = String::new();
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n");
        };
        let gauge = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(&mut o, "shoal_bytes_from_origin_total", "Bytes received from origins.", get(&self.bytes_from_origin));
        counter(&mut o, "shoal_bytes_from_peers_total", "Bytes received from peers.", get(&self.bytes_from_peers));
        counter(&mut o, "shoal_bytes_served_total", "Bytes sent to proxy clients.", get(&self.bytes_served));
        counter(&mut o, "shoal_bytes_uploaded_total", "Bytes sent to child peers.", g.uploaded_bytes);
        counter(&mut o, "shoal_tasks_started_total", "Downloads started on this node.", get(&self.tasks_started));
        counter(&mut o, "shoal_tasks_completed_total", "Downloads completed.", get(&self.tasks_completed));
        counter(&mut o, "shoal_tasks_failed_total", "Downloads failed.", get(&self.tasks_failed));
        counter(&mut o, "shoal_back_to_source_total", "Downloads that went to the origin.", get(&self.back_to_source));
        let started = get(&self.tasks_started);
        let ended = get(&self.tasks_completed) + get(&self.tasks_failed);
        gauge(&mut o, "shoal_tasks_active", "Downloads in progress.", started.saturating_sub(ended));
        gauge(&mut o, "shoal_tasks_cached", "Tasks in the store.", g.tasks_cached);
        gauge(&mut o, "shoal_storage_bytes", "Disk bytes used by task files.", g.storage_bytes);
        gauge(
            &mut o,
            "shoal_storage_limit_bytes",
            "The quota GC keeps task files under (the file system's size when no quota is set).",
            g.storage_limit_bytes,
        );
        counter(&mut o, "shoal_storage_evictions_total", "Tasks removed by GC.", g.evictions);
        counter(
            &mut o,
            "shoal_receive_marks_given_up_total",
            "Reads from an origin or a parent that waited 25 ms on their socket's receive mark and read on \
             without it.",
            get(&self.receive_marks_given_up),
        );
        let b = g.piece_buffers;
        labelled(
            &mut o,
            ("shoal_piece_buffer_bytes", "gauge"),
            "Piece-buffer memory: stored pieces kept in memory, buffers being filled, written or sent, and idle \
             ones pooled for reuse.",
            "state",
            &[("held", b.held), ("busy", b.busy), ("idle", b.idle)],
        );
        if let Some(h) = g.heap {
            labelled(
                &mut o,
                ("shoal_heap_bytes", "gauge"),
                "The allocator's memory: in live allocations, and held beyond them.",
                "state",
                &[("in_use", h.in_use), ("free", h.free)],
            );
        }
        gauge(&mut o, "shoal_upload_connections", "Child peers connected to the upload server.", g.upload_connections);
        let _ = write!(
            o,
            "# HELP shoal_io_engine The storage io engine in use.\n# TYPE shoal_io_engine gauge\nshoal_io_engine{{engine=\"{}\"}} 1\n",
            g.io_engine
        );
        {
            use crate::membership::{refused, Role};
            labelled(
                &mut o,
                ("shoal_membership_refused_total", "counter"),
                "Connections refused (or refused by the other end) for want of cluster membership.",
                "listener",
                &[("scheduler", refused(Role::Scheduler)), ("upload", refused(Role::Upload))],
            );
        }
        labelled(
            &mut o,
            ("shoal_authorization_probes_total", "counter"),
            "Cached copies the origin was asked about before serving them, by result (cached: a recent yes was \
             reused).",
            "result",
            &[
                ("allowed", get(&self.authz_allowed)),
                ("cached", get(&self.authz_cached)),
                ("denied", get(&self.authz_denied)),
                ("failed", get(&self.authz_failed)),
            ],
        );
        {
            let h = lock(&self.piece_latency_us);
            let name = "shoal_piece_download_seconds";
            let _ = write!(o, "# HELP {name} Time to fetch one piece from a peer.\n# TYPE {name} histogram\n");
            for b in BUCKETS {
                let n = h.count_between(0, (b * 1e6) as u64);
                let _ = writeln!(o, "{name}_bucket{{le=\"{b}\"}} {n}");
            }
            let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
            let sum: f64 = h.iter_recorded().map(|v| v.value_iterated_to() as f64 * v.count_at_value() as f64).sum();
            let _ = writeln!(o, "{name}_sum {}", sum / 1e6);
            let _ = writeln!(o, "{name}_count {}", h.len());
        }
        let name = "shoal_proxy_responses_total";
        let _ = write!(o, "# HELP {name} Proxy responses by status.\n# TYPE {name} counter\n");
        for (status, n) in lock(&self.proxy_status).iter() {
            let _ = writeln!(o, "{name}{{status=\"{status}\"}} {n}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_labels() {
        let m = Metrics::new();
        Metrics::add(&m.bytes_from_origin, 42);
        m.piece_downloaded(Duration::from_millis(3));
        m.piece_downloaded(Duration::from_millis(300));
        m.proxy_response(200);
        m.proxy_response(404);
        let piece_buffers = PieceBuffers { held: 1, busy: 2, idle: 3 };
        let g = Gauges { io_engine: "uring", storage_bytes: 7, piece_buffers, ..Gauges::default() };
        let t = m.render(&g);
        assert!(t.contains("shoal_bytes_from_origin_total 42\n"), "{t}");
        assert!(t.contains("shoal_piece_download_seconds_bucket{le=\"0.005\"} 1\n"), "{t}");
        assert!(t.contains("shoal_piece_download_seconds_bucket{le=\"0.5\"} 2\n"), "{t}");
        assert!(t.contains("shoal_piece_download_seconds_count 2\n"), "{t}");
        assert!(t.contains("shoal_proxy_responses_total{status=\"404\"} 1\n"), "{t}");
        assert!(t.contains("shoal_io_engine{engine=\"uring\"} 1\n"), "{t}");
        assert!(t.contains("shoal_storage_bytes 7\n"), "{t}");
        for (state, v) in [("held", 1), ("busy", 2), ("idle", 3)] {
            assert!(t.contains(&format!("shoal_piece_buffer_bytes{{state=\"{state}\"}} {v}\n")), "{t}");
        }
        assert!(t.contains("shoal_membership_refused_total{listener=\"upload\"} "), "{t}");
        assert!(t.contains("shoal_authorization_probes_total{result=\"denied\"} 0\n"), "{t}");
    }
}
