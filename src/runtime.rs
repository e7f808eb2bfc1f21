//! Thread-per-core: N worker threads, each running its own tokio current_thread runtime.
//!
//! A connection accepted on a core stays on that core for its whole life, so its state is never shared
//! across threads and its io_uring ring (storage) is that core's own. Listeners are bound once per core
//! with SO_REUSEPORT and the kernel spreads connections over them. Work moves between cores only through
//! an explicit hand-off ([`Cores::spawn_on`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::runtime::{Builder, Handle};
use tokio::sync::watch;

/// The running worker threads.
pub struct Cores {
    handles: Vec<Handle>,
    threads: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    next: AtomicUsize,
}

impl Cores {
    /// Starts `n` workers (0 means one per available CPU).
    pub fn start(n: usize, name: &str) -> io::Result<Cores> {
        let n = if n == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n };
        let (stop, _) = watch::channel(false);
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let rt = Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            let mut rx = stop.subscribe();
            threads.push(std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                rt.block_on(async move {
                    // Ends when stop is set or the Cores value is dropped.
                    let _ = rx.wait_for(|s| *s).await;
                });
            })?);
        }
        Ok(Cores { handles, threads, stop, next: AtomicUsize::new(0) })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    pub fn handle(&self, core: usize) -> &Handle {
        &self.handles[core % self.handles.len()]
    }

    /// Hands a future to a given core; it runs there to completion.
    pub fn spawn_on<F>(&self, core: usize, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle(core).spawn(fut)
    }

    /// Hands a future to the next core in turn.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let core = self.next.fetch_add(1, Ordering::Relaxed);
        self.spawn_on(core, fut)
    }

    /// Runs `make(core)` on every core, e.g. to start one accept loop per core.
    pub fn on_each<F, Fut>(&self, make: F) -> Vec<tokio::task::JoinHandle<Fut::Output>>
    where
        F: Fn(usize) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        (0..self.len()).map(|i| self.spawn_on(i, make(i))).collect()
    }

    /// Stops every worker (tasks still running are dropped) and joins the threads.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let _ = self.stop.send(true);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// `n` SO_REUSEPORT listeners on one address, one per core, and the address they share (port 0 picks one).
/// Each must be converted with `tokio::net::TcpListener::from_std` on the core that will accept on it.
///
/// A named port must be free first. SO_REUSEPORT lets any socket of the same user that also sets it join
/// a listening group, so without this check a second daemon, or this daemon's other server given the same
/// port, would start cleanly and the kernel would split connections between them.
pub fn reuseport_group(addr: SocketAddr, n: usize) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    if addr.port() != 0 {
        ensure_free(addr)?;
    }
    let first = reuseport_listener(addr)?;
    let bound = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(reuseport_listener(bound)?);
    }
    Ok((bound, listeners))
}

/// The first two of `named` listeners (a setting's name and its address) that would share a port: the
/// same port (not 0, which asks for a fresh one) on the same address, or where either is its family's
/// wildcard address. IPv6's `[::]` also takes the port on IPv4 (these sockets are dual-stack, Linux's
/// default).
pub fn clashing<'a>(named: &[(&'a str, SocketAddr)]) -> Option<(&'a str, &'a str, SocketAddr)> {
    let any_v6 = |a: SocketAddr| a.is_ipv6() && a.ip().is_unspecified();
    let overlap = |a: SocketAddr, b: SocketAddr| {
        let family =
            a.is_ipv4() == b.is_ipv4() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified());
        a.port() != 0 && a.port() == b.port() && (family || any_v6(a) || any_v6(b))
    };
    named.iter().enumerate().find_map(|(i, &(first, a))| {
        named[i + 1..].iter().find(|&&(_, b)| overlap(a, b)).map(|&(second, b)| (first, second, b))
    })
}

/// Fails with `AddrInUse` if any socket listens on `addr` (or on the wildcard address of its port). The
/// probe sets SO_REUSEADDR but not SO_REUSEPORT: it binds past connections of an earlier process still in
/// TIME_WAIT, as a restart must, but never beside a listener.
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())
}

/// A TCP listener socket with SO_REUSEPORT, so each core can bind its own on the same address.
fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Settings of a long-lived peer or scheduler connection: no Nagle (small control frames), and TCP
/// keepalive, so a peer that vanished without a FIN (power loss, a partition) is noticed by the kernel
/// within about two minutes even while nothing is being sent.
pub fn tune_long_lived(sock: &tokio::net::TcpStream) {
    let _ = sock.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(6);
    let _ = socket2::SockRef::from(sock).set_tcp_keepalive(&ka);
}

/// jemalloc, not glibc's malloc, for the whole process (feature `jemalloc`, on by default). Measured with
/// scripts/soak.sh, 1,000 connections of mixed hits, Range, cold misses and pass-through for 3 minutes:
/// RssAnon under load 0.66× glibc's at 1.16× its request rate. After the load glibc kept ~180 MiB of freed
/// memory resident across its per-thread arenas until a second malloc_trim (small live allocations pinned
/// the pages around them). jemalloc keeps small objects apart from large buffers and its background
/// threads purge freed pages on a timer, also while the process is idle (docs/reliability.md §3).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Starts the allocator's background purging (jemalloc's background threads, one per core at most):
/// without them, freed pages are only returned when some thread next allocates, so an idle daemon would
/// keep what its last burst freed. Call once at start.
pub fn start_allocator() {
    #[cfg(feature = "jemalloc")]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "allocator: background purging not started; freed memory returns on use only");
    }
}

/// Whether [`trim_heap`] does anything with this build's allocator (glibc's; jemalloc purges by itself).
pub const TRIMS_HEAP: bool = cfg!(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")));

/// Hands memory the allocator holds but no longer uses back to the kernel, for glibc's malloc (without the
/// `jemalloc` feature): glibc keeps freed memory in its per-thread arenas, and after 1,000 connections
/// each streaming 1 MiB slices the daemon's RSS stayed at 446 MiB with no connection open
/// (scripts/bench-rss.sh). Called when the proxy goes idle, not under load: memory handed back and faulted
/// in again costs CPU (on a VM, ~2.5 s per GiB). jemalloc purges on its own threads; this does nothing.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own arenas under their locks; any
    // thread may call it at any time, also while others allocate or the process shuts down.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What the allocator holds, in bytes: `in_use` by live allocations, `free` held beyond them (jemalloc:
/// resident pages not in live allocations, its own metadata included; glibc: freed bytes in its arenas,
/// some of which [`trim_heap`] may already have returned to the kernel).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeapStats {
    pub in_use: u64,
    pub free: u64,
}

/// The allocator's figures, where it can tell them (jemalloc, glibc); `None` elsewhere. Takes locks
/// briefly: for a scrape, not a data path.
pub fn heap_stats() -> Option<HeapStats> {
    #[cfg(feature = "jemalloc")]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        // jemalloc's statistics are a snapshot refreshed by advancing the epoch.
        epoch::advance().ok()?;
        let (live, resident) = (stats::allocated::read().ok()?, stats::resident::read().ok()?);
        Some(HeapStats { in_use: live as u64, free: resident.saturating_sub(live) as u64 })
    }
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
    {
        // SAFETY: mallinfo2 takes no arguments and returns a plain struct by value; it only reads glibc's
        // arena counters under their locks, at any time on any thread, shutdown included.
        let m = unsafe { libc::mallinfo2() };
        // Live: arena chunks in use plus large allocations in their own mappings; free: chunks freed.
        Some(HeapStats { in_use: (m.uordblks + m.hblkhd) as u64, free: m.fordblks as u64 })
    }
    #[cfg(not(any(feature = "jemalloc", all(target_os = "linux", target_env = "gnu"))))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};

    #[test]
    fn heap_stats_see_an_allocation() {
        // 64 MiB live, against a 32 MiB allowance for what tests on other threads free meanwhile.
        let Some(before) = heap_stats() else { return };
        let v = std::hint::black_box(vec![1u8; 64 << 20]);
        let during = heap_stats().unwrap();
        assert!(during.in_use >= before.in_use + (32 << 20), "{before:?} -> {during:?}");
        drop(v);
    }

    #[test]
    fn spawns_on_every_core_and_stops() {
        let cores = Cores::start(2, "t").unwrap();
        let seen = Arc::new(Mutex::new(HashSet::new()));
        let hs = cores.on_each(|i| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().insert(std::thread::current().name().map(str::to_owned));
                i
            }
        });
        let rt = Builder::new_current_thread().build().unwrap();
        let got: Vec<usize> = rt.block_on(async { futures_join(hs).await });
        assert_eq!(got, vec![0, 1]);
        assert_eq!(seen.lock().unwrap().len(), 2, "each core runs on its own thread");
        cores.shutdown();
    }

    async fn futures_join(hs: Vec<tokio::task::JoinHandle<usize>>) -> Vec<usize> {
        let mut v = Vec::new();
        for h in hs {
            v.push(h.await.unwrap());
        }
        v
    }

    #[test]
    fn reuseport_listeners_share_an_address() {
        let (addr, group) = reuseport_group("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_eq!(group.len(), 3);
        assert!(group.iter().all(|l| l.local_addr().unwrap() == addr));
    }

    #[test]
    fn a_group_never_joins_listeners_already_on_its_port() {
        let (addr, _held) = reuseport_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        // Without the probe this would bind: every socket involved sets SO_REUSEPORT.
        let again = reuseport_group(addr, 2).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::AddrInUse);
        let wildcard = SocketAddr::from(([0, 0, 0, 0], addr.port()));
        assert_eq!(reuseport_group(wildcard, 1).unwrap_err().kind(), io::ErrorKind::AddrInUse);
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = plain.local_addr().unwrap();
        assert_eq!(reuseport_group(taken, 1).unwrap_err().kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn listeners_clash_on_one_port_of_overlapping_addresses() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let clash = |x: &str, y: &str| clashing(&[("x", a(x)), ("y", a(y))]).is_some();
        assert!(clash("127.0.0.1:80", "127.0.0.1:80"));
        assert!(clash("0.0.0.0:80", "127.0.0.1:80") && clash("10.0.0.1:80", "0.0.0.0:80"));
        assert!(clash("[::]:80", "[::1]:80"));
        assert!(!clash("127.0.0.1:80", "127.0.0.2:80"), "two addresses, one port each");
        assert!(!clash("127.0.0.1:80", "127.0.0.1:81"));
        assert!(!clash("127.0.0.1:0", "127.0.0.1:0"), "port 0 is a fresh port each time");
        assert!(!clash("0.0.0.0:80", "[::1]:80") && !clash("127.0.0.1:80", "[::1]:80"), "another address family");
        assert!(clash("[::]:80", "127.0.0.1:80") && clash("0.0.0.0:80", "[::]:80"), "[::] is dual-stack");
        let three = [("p", a("127.0.0.1:1")), ("u", a("0.0.0.0:2")), ("m", a("127.0.0.1:2"))];
        assert_eq!(clashing(&three), Some(("u", "m", a("127.0.0.1:2"))));
    }

    #[test]
    fn a_port_freed_by_a_closed_group_binds_again() {
        let (addr, held) = reuseport_group("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        drop(held);
        let (again, _group) = reuseport_group(addr, 2).unwrap();
        assert_eq!(again, addr);
    }
}
