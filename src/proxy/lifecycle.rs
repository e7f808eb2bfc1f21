//! The proxy's life after start: rules replaced while it serves (SIGHUP) and a bounded graceful drain
//! (SIGTERM).
//!
//! Owns: the live rule set every request reads, the count of open client connections and the stop signal
//! they watch. A reload swaps the rule set between requests: connections stay open and a request already
//! routed keeps its route. A drain stops the accept loops, lets each connection finish the response it is
//! sending (keep-alive is then refused), and waits for the count to reach zero up to a bound; connections
//! still busy after it are cut when the runtimes stop, which a client sees as a failed transfer, never as
//! a clean short body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use super::rules::Rules;

/// The rule set in force.
pub struct LiveRules(RwLock<Arc<Rules>>);

impl LiveRules {
    pub fn new(rules: Rules) -> LiveRules {
        LiveRules(RwLock::new(Arc::new(rules)))
    }

    pub fn current(&self) -> Arc<Rules> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn replace(&self, rules: Rules) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
    }
}

/// Open connections and the stop signal.
pub(super) struct Drain {
    stop: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
    /// Accept loops still holding their listener.
    listening: AtomicUsize,
    unbound: Notify,
}

/// Held by each accept loop with its listener; dropped after the listener, when the loop ends.
pub(super) struct ListenerGuard(Arc<Drain>);

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        if self.0.listening.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.unbound.notify_waiters();
        }
    }
}

/// Held by each connection's task; the count drops when the task ends, however it ends.
pub(super) struct ConnGuard(Arc<Drain>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    pub(super) fn new() -> Arc<Drain> {
        Arc::new(Drain {
            stop: watch::channel(false).0,
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            listening: AtomicUsize::new(0),
            unbound: Notify::new(),
        })
    }

    /// Taken for each accept loop before it is spawned, so a drain that starts at once still waits for it.
    pub(super) fn listener(self: &Arc<Self>) -> ListenerGuard {
        self.listening.fetch_add(1, Ordering::AcqRel);
        ListenerGuard(self.clone())
    }

    /// Signals the accept loops and waits until every one has closed its listener, or `bound` passes:
    /// from then on a new client's connect is refused by the kernel.
    async fn stop_accepting(&self, bound: Duration) {
        self.stop.send_replace(true);
        until_zero(&self.listening, &self.unbound, bound).await;
    }

    /// Connections open now.
    pub(super) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    pub(super) fn enter(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }

    /// Becomes true once a drain starts.
    pub(super) fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Signals every accept loop and connection, then waits until no connection is open or `bound`
    /// passes; returns how many were still open.
    async fn drain(&self, bound: Duration) -> usize {
        self.stop.send_replace(true);
        until_zero(&self.active, &self.idle, bound).await
    }
}

/// Waits until `count` is zero (`zeroed` is notified when it gets there) or `bound` passes; returns the
/// count then.
async fn until_zero(count: &AtomicUsize, zeroed: &Notify, bound: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + bound;
    // Each turn ends with the count reaching zero or the deadline: bounded by both.
    loop {
        let notified = zeroed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => return count.load(Ordering::Acquire),
        }
    }
}

/// Resolves once a drain has started (or the proxy is gone).
pub(super) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across an await of the caller.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// Serves one client connection until it ends; once a drain starts, the response in flight finishes and
/// the connection closes instead of waiting for another request.
pub(super) async fn serve_until_drained<I, S, B>(
    conn: hyper::server::conn::http1::UpgradeableConnection<I, S>,
    stop: &mut watch::Receiver<bool>,
) -> hyper::Result<()>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(stop) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// The running proxy, as the daemon holds it.
pub struct ProxyHandle {
    pub(super) addr: SocketAddr,
    pub(super) rules: Arc<LiveRules>,
    pub(super) drain: Arc<Drain>,
}

impl ProxyHandle {
    /// The bound listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the rules; the next request of every connection is routed by them.
    pub fn set_rules(&self, rules: Rules) {
        self.rules.replace(rules);
    }

    /// Open client connections.
    pub fn connections(&self) -> usize {
        self.drain.active.load(Ordering::Acquire)
    }

    /// A reader of [`ProxyHandle::connections`] that outlives this borrow (for background tasks).
    pub fn connection_count(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let d = self.drain.clone();
        move || d.active.load(Ordering::Acquire)
    }

    /// Stops accepting and lets in-flight responses finish, for at most `bound`. Returns the number of
    /// connections still open at the bound (the caller cuts them by stopping the runtimes).
    pub async fn drain(&self, bound: Duration) -> usize {
        self.drain.drain(bound).await
    }

    /// Stops accepting: returns once every listener is closed (or after `bound`).
    pub async fn stop_accepting(&self, bound: Duration) {
        self.drain.stop_accepting(bound).await
    }
}
