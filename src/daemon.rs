//! Wires one node daemon together: storage, the per-core runtimes, GC, signals and clean shutdown.
//!
//! Owns start-up order and shutdown order. Never implements a protocol itself. Called by main.rs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::runtime::Cores;
use crate::storage::{Store, StoreConfig};

/// Everything the daemon needs, already resolved from flags (and, later, the config file).
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub store: StoreConfig,
    pub workers: usize,
    pub gc_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error("runtime: {0}")]
    Runtime(#[from] std::io::Error),
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

/// Runs until SIGINT or SIGTERM, then closes the store cleanly.
pub fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    // Handlers first: a SIGTERM that arrives during start-up must still mean "stop cleanly", not death.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut signals = rt.block_on(async { Signals::install() })?;
    let (store, _report) = Store::open(cfg.store.clone())?;
    let cores = Cores::start(cfg.workers, "shoal-core")?;
    tracing::info!(
        data_dir = %store.data_dir().display(),
        io_engine = store.engine().name(),
        cores = cores.len(),
        "daemon started (proxy, upload server and scheduler arrive with their issues)"
    );
    let gc_store = store.clone();
    let interval = cfg.gc_interval;
    cores.spawn_on(0, async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Runs until the core stops at shutdown.
        loop {
            tick.tick().await;
            let s = gc_store.clone();
            let _ = tokio::task::spawn_blocking(move || s.gc(crate::storage_now_ms())).await;
        }
    });
    rt.block_on(signals.wait());
    tracing::info!("shutting down");
    cores.shutdown();
    close(&store);
    Ok(())
}

fn close(store: &Arc<Store>) {
    match store.close() {
        Ok(()) => tracing::info!("storage closed cleanly"),
        Err(e) => {
            tracing::warn!(error = %e, "storage close incomplete; the next start re-checks the affected tasks")
        }
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
