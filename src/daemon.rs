//! Wires one node daemon together: storage, the per-core runtimes, GC, signals and clean shutdown.
//!
//! Owns start-up order and shutdown order, in three steps: [`Node::start`] wires the subsystems,
//! [`Node::serve`] waits for signals (SIGHUP reloads), [`Node::shutdown`] drains and closes. Never
//! implements a protocol itself. Called by main.rs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::net::{IpAddr, SocketAddr};

use crate::engine::{Engine, EngineConfig};
use crate::membership::{ClusterKey, HostIdentity};
use crate::metrics::server::Probe;
use crate::metrics::Gauges;
use crate::runtime::Cores;
use crate::scheduler::{HostInfo, PeerLoad, Scheduler, SchedulerClient};
use crate::storage::{Store, StoreConfig};
use crate::transfer::{ClientConfig, Pool, ServerConfig, UploadServer};

/// Everything the daemon needs, already resolved from flags (and, later, the config file).
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub store: StoreConfig,
    pub workers: usize,
    pub gc_interval: Duration,
    pub proxy_addr: SocketAddr,
    pub upload_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// Empty: run an embedded scheduler (single-node mode).
    pub schedulers: Vec<String>,
    pub seed: bool,
    pub advertise_ip: Option<IpAddr>,
    pub upload_rate: Option<u64>,
    pub engine: EngineConfig,
    pub proxy: crate::proxy::server::ProxyConfig,
    /// How long in-flight proxy responses may run after SIGTERM before they are cut.
    pub drain_timeout: Duration,
    /// The cluster secret's file (`cluster.secret_file`): required with `schedulers`; a single node
    /// without one generates its own key in memory.
    pub cluster_secret_file: Option<PathBuf>,
}

/// What SIGHUP may change without a restart.
#[derive(Clone, Debug)]
pub struct Reload {
    pub rules: crate::proxy::rules::Rules,
    pub upload_rate: Option<u64>,
    pub gc: crate::storage::GcLimits,
    pub drain_timeout: Duration,
}

/// Re-reads the configuration; an error leaves everything as it was.
pub type Reloader = Box<dyn Fn() -> Result<Reload, String> + Send>;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("scheduler: {0}")]
    Scheduler(#[from] crate::scheduler::ServerError),
    #[error("engine: {0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error("membership: {0}")]
    Membership(#[from] crate::membership::LoadError),
    #[error(
        "a cluster member needs the cluster secret: set cluster.secret_file (or --cluster-secret-file) to a \
         file holding the secret every scheduler and daemon shares (`shoal secret generate` makes one)"
    )]
    SecretRequired,
    #[error(transparent)]
    DataDir(#[from] crate::storage::DirLockError),
    /// Two of this daemon's listeners were given one address (a configuration error).
    #[error("{first} and {second} are both {addr}: each listener needs its own port")]
    SameAddress { first: &'static str, second: &'static str, addr: SocketAddr },
    /// A listener could not bind: the port is taken (often by another daemon) or the address is not local.
    #[error("{setting} {addr}: {source}")]
    Listen {
        setting: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The settings that name each listener, as the error messages print them.
const PROXY: &str = "proxy.addr (--proxy-addr)";
const UPLOAD: &str = "upload.addr (--upload-addr)";
const METRICS: &str = "metrics.addr (--metrics-addr)";

impl DaemonConfig {
    /// Refuses two listeners on one port ([`crate::runtime::clashing`]): flags may have made them so
    /// after the file was checked.
    fn check_addresses(&self) -> Result<(), DaemonError> {
        let named = [(PROXY, self.proxy_addr), (UPLOAD, self.upload_addr), (METRICS, self.metrics_addr)];
        match crate::runtime::clashing(&named) {
            Some((first, second, addr)) => Err(DaemonError::SameAddress { first, second, addr }),
            None => Ok(()),
        }
    }
}

fn listen_error(setting: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Listen { setting, addr, source }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "shoal".into())
}

/// The data directory used when none is configured.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/shoal");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("shoal");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/shoal"),
        None => PathBuf::from("shoal-data"),
    }
}

/// Runs until SIGINT or SIGTERM, then drains and closes the store cleanly. SIGHUP calls `reload` (if any)
/// and applies what it returns.
pub fn run(cfg: DaemonConfig, reload: Option<Reloader>) -> Result<(), DaemonError> {
    // Handlers first: a SIGTERM that arrives during start-up must still mean "stop cleanly", not death.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut signals = rt.block_on(async { Signals::install() })?;
    let node = Node::start(&cfg)?;
    let drain_timeout = node.serve(&rt, &mut signals, reload.as_ref(), cfg.drain_timeout);
    node.shutdown(&rt, drain_timeout);
    Ok(())
}

/// A running daemon: what shutdown must stop, in order.
struct Node {
    store: Arc<Store>,
    cores: Cores,
    upload: UploadServer,
    sched: SchedulerClient,
    proxy: crate::proxy::lifecycle::ProxyHandle,
    /// The embedded scheduler of single-node mode; it stops when dropped.
    _embedded: Option<crate::scheduler::SchedulerHandle>,
    /// This daemon owns the data directory until everything above has stopped (dropped last).
    _dir_lock: crate::storage::DirLock,
}

impl Node {
    /// Opens the store, starts the per-core runtimes, upload server, scheduler client (or an embedded
    /// scheduler), engine, proxy, metrics endpoint and the background loops.
    fn start(cfg: &DaemonConfig) -> Result<Node, DaemonError> {
        cfg.check_addresses()?;
        let holder = crate::storage::Holder::Daemon { proxy: cfg.proxy_addr.to_string() };
        let dir_lock = crate::storage::DirLock::try_acquire(&cfg.store.data_dir, &holder)?;
        let (store, _report) = Store::open(cfg.store.clone())?;
        let (key, identity) = membership(cfg, &store)?;
        let cores = Cores::start(cfg.workers, "shoal-core")?;
        // Everything that must live on a runtime is created on core 0's.
        let _core0 = cores.handle(0).enter();
        let membership = Some(key.clone());
        let upload_cfg =
            ServerConfig { upload_rate: cfg.upload_rate, membership: membership.clone(), ..Default::default() };
        let upload = UploadServer::new(store.clone(), upload_cfg);
        let (upload_addr, _accepts) =
            upload.start_on_cores(&cores, cfg.upload_addr).map_err(listen_error(UPLOAD, cfg.upload_addr))?;
        // Nothing is dialled on a client's behalf to this daemon's own listeners.
        let own = &cfg.proxy.destinations;
        own.add_own(upload_addr);
        let (scheduler_addrs, embedded) = if cfg.schedulers.is_empty() {
            let (addr, handle) = Scheduler::spawn_embedded(membership.clone())?;
            own.add_own(addr);
            (vec![addr.to_string()], Some(handle))
        } else {
            (cfg.schedulers.clone(), None)
        };
        let host = host_info(cfg, upload_addr, &identity);
        let sched_cfg = crate::scheduler::ClientConfig {
            membership: membership.clone(),
            identity: Some(identity),
            ..Default::default()
        };
        let sched = SchedulerClient::with_config(scheduler_addrs.clone(), host.clone(), sched_cfg);
        let pool = Pool::new(ClientConfig { bind_ip: Some(host.ip), membership, ..ClientConfig::default() });
        let engine = Engine::new(store.clone(), pool, Some(sched.clone()), cfg.engine.clone())?;
        let proxy = crate::proxy::server::start(&cores, cfg.proxy_addr, engine.clone(), cfg.proxy.clone())
            .map_err(listen_error(PROXY, cfg.proxy_addr))?;
        own.add_own(proxy.addr());
        if let Some(triggers) = cfg.seed.then(|| sched.seed_triggers()).flatten() {
            cores.spawn_on(0, engine.serve_seed_triggers(triggers));
        }
        let probe = Arc::new(DaemonProbe {
            store: store.clone(),
            upload: upload.clone(),
            sched: sched.clone(),
            embedded: embedded.is_some(),
        });
        let metrics_addr =
            crate::metrics::server::start(cfg.metrics_addr, probe).map_err(listen_error(METRICS, cfg.metrics_addr))?;
        own.add_own(metrics_addr);
        cores.spawn_on(0, report_load(upload.clone(), sched.clone()));
        cores.spawn_on(0, collect_garbage(store.clone(), sched.clone(), cfg.gc_interval));
        cores.spawn_on(0, announce_stored(store.clone(), sched.clone()));
        if crate::runtime::TRIMS_HEAP {
            cores.spawn_on(0, give_back_memory(proxy.connection_count()));
        }
        tracing::info!(
            data_dir = %store.data_dir().display(),
            io_engine = store.engine().name(),
            cores = cores.len(),
            proxy = %proxy.addr(),
            upload = %upload_addr,
            metrics = %metrics_addr,
            schedulers = ?scheduler_addrs,
            seed = cfg.seed,
            "daemon started"
        );
        Ok(Node { store, cores, upload, sched, proxy, _embedded: embedded, _dir_lock: dir_lock })
    }

    /// Serves until SIGTERM/SIGINT, applying each SIGHUP's reload; returns the drain bound then in force.
    fn serve(
        &self,
        rt: &tokio::runtime::Runtime,
        signals: &mut Signals,
        reload: Option<&Reloader>,
        mut drain_timeout: Duration,
    ) -> Duration {
        // One turn per SIGHUP; ends at SIGTERM/SIGINT.
        while let Sig::Reload = rt.block_on(signals.wait()) {
            let r = match reload.map(|f| f()) {
                None => {
                    tracing::info!("SIGHUP: no configuration file to re-read");
                    continue;
                }
                Some(r) => r.and_then(|r| self.store.set_gc_limits(r.gc).map(|_| r).map_err(|e| e.to_string())),
            };
            match r {
                Err(e) => tracing::warn!(error = %e, "SIGHUP: configuration not reloaded; the old one stays"),
                Ok(r) => {
                    self.proxy.set_rules(r.rules.clone());
                    self.upload.set_upload_rate(r.upload_rate);
                    drain_timeout = r.drain_timeout;
                    tracing::info!(
                        rules = r.rules.rules().len(),
                        upload_rate = ?r.upload_rate,
                        quota = ?r.gc.quota_bytes,
                        ttl = ?r.gc.ttl,
                        "SIGHUP: rules and limits reloaded"
                    );
                }
            }
        }
        drain_timeout
    }

    /// Drains the proxy up to `drain_timeout`, stops uploads, leaves the schedulers, stops the runtimes and
    /// closes the store.
    fn shutdown(self, rt: &tokio::runtime::Runtime, drain_timeout: Duration) {
        let proxy = &self.proxy;
        // New clients are refused from the moment this is logged.
        rt.block_on(proxy.stop_accepting(Duration::from_secs(2)));
        tracing::info!(connections = proxy.connections(), bound = ?drain_timeout, "shutting down: draining the proxy");
        let cut = rt.block_on(proxy.drain(drain_timeout));
        if cut > 0 {
            tracing::warn!(connections = cut, "proxy connections still busy at the drain bound are closed");
        }
        self.upload.shutdown();
        // Leave the schedulers before the runtimes stop, so nobody is sent to this node as a parent.
        let sched = self.sched.clone();
        let leave = self.cores.spawn_on(0, async move { sched.shutdown().await });
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), leave).await });
        self.cores.shutdown();
        close(&self.store);
    }
}

/// The cluster key (the configured secret; generated for a single node without one) and this host's
/// identity, kept in the data directory so the host ID survives restarts.
fn membership(cfg: &DaemonConfig, store: &Store) -> Result<(ClusterKey, Arc<HostIdentity>), DaemonError> {
    let key = match (&cfg.cluster_secret_file, cfg.schedulers.is_empty()) {
        (Some(p), _) => ClusterKey::load(p)?,
        (None, true) => ClusterKey::generate()?,
        (None, false) => return Err(DaemonError::SecretRequired),
    };
    let identity = HostIdentity::load_or_create(&store.data_dir().join(IDENTITY_FILE))?;
    Ok((key, Arc::new(identity)))
}

/// This host's Ed25519 key in the data directory (storage-format.md).
pub const IDENTITY_FILE: &str = "identity.key";

/// Who this node is to the schedulers: its upload address as peers reach it, and a host ID that ends with
/// its identity key's fingerprint (the scheduler refuses a registration that cannot prove it).
fn host_info(cfg: &DaemonConfig, upload_addr: SocketAddr, identity: &HostIdentity) -> HostInfo {
    let ip = cfg.advertise_ip.unwrap_or_else(|| match upload_addr.ip() {
        ip if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        ip => ip,
    });
    HostInfo {
        host_id: identity.host_id(&hostname()),
        hostname: hostname(),
        ip,
        upload_port: upload_addr.port(),
        upload_capacity_bytes_per_sec: cfg.upload_rate.unwrap_or(1_250_000_000),
        is_seed: cfg.seed,
    }
}

/// Tells the schedulers this node's upload load every 2 s, so they rank it as a parent.
async fn report_load(upload: UploadServer, sched: SchedulerClient) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    // Runs until the core stops at shutdown.
    loop {
        tick.tick().await;
        let l = upload.load();
        let load = PeerLoad { upload_bytes_per_sec: l.bytes_per_sec, upload_connections: l.connections as u32 };
        let _ = sched.report_load(load).await;
    }
}

/// Runs the store's GC every `interval` on the blocking pool, and tells the schedulers which tasks this
/// node no longer holds, so nobody is sent here for them.
async fn collect_garbage(store: Arc<Store>, sched: SchedulerClient, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Runs until the core stops at shutdown.
    loop {
        tick.tick().await;
        let s = store.clone();
        let Ok(report) = tokio::task::spawn_blocking(move || s.gc(crate::storage_now_ms())).await else { continue };
        for id in report.expired.into_iter().chain(report.evicted) {
            // A scheduler that cannot be told now learns it when this node fails to serve the task.
            let _ = sched.leave_task(id).await;
        }
    }
}

/// Once the proxy has gone idle after serving connections, returns the allocator's free memory to the
/// kernel: never while busy, where it would only be faulted in again, and again while idle whenever the
/// allocator's live memory fell by a piece since the last trim (idle upstream connections and finished
/// downloads release theirs after the clients have gone: the soak's first trim came before 21 MiB of it).
async fn give_back_memory(connections: impl Fn() -> usize) {
    const FREED: u64 = 4 << 20;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut busy_since_trim = false;
    let live = || crate::runtime::heap_stats().map_or(0, |h| h.in_use);
    let mut live_at_trim = live();
    // Runs until the core stops at shutdown.
    loop {
        tick.tick().await;
        if connections() > 0 {
            busy_since_trim = true;
            continue;
        }
        if busy_since_trim || live().saturating_add(FREED) < live_at_trim {
            busy_since_trim = false;
            let _ = tokio::task::spawn_blocking(crate::runtime::trim_heap).await;
            live_at_trim = live();
        }
    }
}

/// After a start, tells the schedulers which complete tasks this node already holds, so its cache serves
/// the swarm before anyone asks this node for them. Only tasks named by their digest: children hold their
/// pieces to that digest, while for a task named by its URL only the node that read the origin may
/// announce the digest children check (and this node cannot tell whether that was itself).
async fn announce_stored(store: Arc<Store>, sched: SchedulerClient) {
    let mut told = 0usize;
    for info in store.list() {
        let Some(t) = store.get(&info.id).filter(|t| t.is_complete() && t.expected_sha256().is_some()) else {
            continue;
        };
        let Some(len) = t.content_length() else { continue };
        match sched.task_finished(info.id, len, t.piece_length(), t.sha256()).await {
            Ok(()) => told += 1,
            Err(e) => {
                // The schedulers are unreachable: nothing to tell now; requests re-announce what they touch.
                tracing::debug!(error = %e, told, "stored tasks not announced");
                return;
            }
        }
    }
    if told > 0 {
        tracing::info!(tasks = told, "stored tasks announced to the schedulers");
    }
}

fn close(store: &Arc<Store>) {
    match store.close() {
        Ok(()) => tracing::info!("storage closed cleanly"),
        Err(e) => {
            tracing::warn!(error = %e, "storage close incomplete; the next start re-checks the affected tasks")
        }
    }
}

/// What /metrics and /readyz read from the running daemon.
struct DaemonProbe {
    store: Arc<Store>,
    upload: UploadServer,
    sched: SchedulerClient,
    embedded: bool,
}

/// The piece-buffer gauges, from storage's counters (read one after another, so a sum may be a buffer off).
fn piece_buffers() -> crate::metrics::PieceBuffers {
    use crate::storage::buf;
    let (held, idle, in_use) = (buf::held_bytes() as u64, buf::idle_bytes() as u64, buf::in_use_bytes() as u64);
    crate::metrics::PieceBuffers { held, busy: in_use.saturating_sub(held), idle }
}

impl Probe for DaemonProbe {
    fn gauges(&self) -> Gauges {
        Gauges {
            storage_bytes: self.store.usage_bytes(),
            storage_limit_bytes: self.store.limit_bytes(),
            evictions: self.store.evictions(),
            io_engine: self.store.engine().name(),
            uploaded_bytes: self.upload.stats().bytes_served,
            upload_connections: self.upload.load().connections as u64,
            tasks_cached: self.store.list().len() as u64,
            piece_buffers: piece_buffers(),
            heap: crate::runtime::heap_stats(),
        }
    }

    fn tasks(&self) -> Vec<crate::metrics::tasks::TaskView> {
        self.store.list().iter().map(Into::into).collect()
    }

    fn ready(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async move {
            // Storage is loaded before the endpoint exists; what can still be missing is the scheduler.
            if self.embedded {
                return Ok(());
            }
            self.sched.connect_all().await.map_err(|e| format!("scheduler unreachable: {e}"))
        })
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

enum Sig {
    Stop,
    Reload,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn wait(&mut self) -> Sig {
        tokio::select! {
            _ = self.term.recv() => Sig::Stop,
            _ = self.int.recv() => Sig::Stop,
            _ = self.hup.recv() => Sig::Reload,
        }
    }
}
