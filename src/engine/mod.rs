//! The engine: gets a task's bytes into local storage from the best place — local store, peers, or the
//! origin — and publishes every piece the moment it lands.
//!
//! Owns: the per-task conductor (conductor.rs), multi-parent piece download (pieces.rs), back-to-source
//! HTTP (source.rs; segments.rs splits a download over ranged connections, as many as pace.rs finds
//! raise its rate; wire.rs reads a GET's body straight into piece buffers) and the memory origin
//! downloads may hold (budget.rs). Never: speaks to HTTP clients (that is the proxy) or decides the
//! on-disk format (storage). Called by: the proxy, `shoal get` and a seed peer's trigger loop; calls
//! storage, transfer and the scheduler client.

mod authorize;
mod budget;
mod conductor;
mod error;
mod framing;
pub mod identity;
mod pace;
mod pieces;
mod seed;
mod segments;
pub mod source;
mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

pub use authorize::{credentials, Authorize, Credentials, CREDENTIAL_HEADERS, SIGNATURE_PARAMS, TOKEN_PARAMS};
pub use budget::IngestBudget;
pub use conductor::{Fetch, Source};
pub use error::EngineError;
pub use framing::BodyError;
pub use source::{stream_into, OriginClient, OriginResponse};
pub(crate) use wire::decode as decode_origin_answer;
pub use wire::RawBody;

use crate::metrics::{self, Metrics};
use crate::scheduler::SchedulerClient;
use crate::storage::{Store, TaskId};
use crate::transfer::Pool;

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Pieces requested from one parent at once.
    pub pieces_per_parent: usize,
    /// Parents used at once for one task.
    pub max_parents: usize,
    /// Pieces written at once while streaming from the origin.
    pub origin_in_flight: usize,
    /// Connections one origin download may use once the origin proved it serves ranges (1: one GET).
    pub origin_connections: usize,
    /// Memory for piece buffers of all downloads together (origin and peers), in bytes.
    pub ingest_memory: u64,
    /// How long a peer waits for a seed (or another back-to-source peer) to get its first pieces before
    /// going to the origin itself.
    pub parent_wait: Duration,
    /// A peer round in which no parent announces or delivers a new piece for this long ends, and the
    /// scheduler is asked again (the parents may be waiting on a source that died).
    pub parent_stall: Duration,
    /// Bound on every scheduler call; past it the peer goes to the origin.
    pub scheduler_timeout: Duration,
    /// Rounds of "parents failed, ask again" before going to the origin.
    pub max_peer_rounds: usize,
    /// How often piece progress is reported to the scheduler during a download.
    pub progress_interval: Duration,
    pub origin_connect_timeout: Duration,
    /// Bound on an origin's response head after the request is sent.
    pub origin_head_timeout: Duration,
    /// An origin body that delivers no byte for this long has stalled: the download fails (and the task
    /// with it, so later requests start afresh instead of waiting on it).
    pub origin_idle_timeout: Duration,
    /// Where origin fetches may connect (shared with the proxy, which adds the daemon's listeners).
    pub destinations: Arc<crate::upstream::Destinations>,
    /// Query parameters a seed accepts as left out of a triggered task's ID: those its own
    /// configuration filters (a trigger whose ID needs more is refused; see seed.rs).
    pub seed_filtered_params: Vec<String>,
    /// How long the origin's yes to an authorization probe is reused for the same task and credentials.
    pub authorize_ttl: Duration,
    /// How origins' certificates are verified (`upstream::client_tls`); `None`: the system's roots.
    pub origin_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pieces_per_parent: 4,
            max_parents: 4,
            origin_in_flight: 4,
            origin_connections: 4,
            ingest_memory: 32 << 20,
            parent_wait: Duration::from_secs(10),
            parent_stall: Duration::from_secs(10),
            scheduler_timeout: Duration::from_secs(3),
            max_peer_rounds: 3,
            progress_interval: Duration::from_millis(50),
            origin_connect_timeout: Duration::from_secs(10),
            origin_head_timeout: Duration::from_secs(60),
            origin_idle_timeout: Duration::from_secs(30),
            destinations: crate::upstream::Destinations::standard(),
            seed_filtered_params: identity::DEFAULT_FILTERED_PARAMS.iter().map(|p| p.to_string()).collect(),
            authorize_ttl: Duration::from_secs(60),
            origin_tls: None,
        }
    }
}

/// What a caller wants downloaded.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    pub task_id: TaskId,
    /// The URL exactly as the client asked (signed parameters included): what the origin needs.
    pub url: String,
    /// The client's request headers (Authorization etc.), forwarded to the origin.
    pub headers: Vec<(String, String)>,
    /// The URL without volatile parameters, recorded in the task's metadata.
    pub display_url: String,
    pub expected_sha256: Option<[u8; 32]>,
    /// The request's credentials ([`credentials`]): they make the task private to whoever the origin
    /// lets read it, and name the grants its authorization probes earn.
    pub credentials: Credentials,
}

pub struct Engine {
    store: Arc<Store>,
    origin: OriginClient,
    pool: Arc<Pool>,
    scheduler: Option<SchedulerClient>,
    cfg: EngineConfig,
    ingest: IngestBudget,
    active: Mutex<HashMap<TaskId, watch::Receiver<conductor::Published>>>,
    /// Parent upload address → host id, learnt from the scheduler's answers (for bad-parent reports).
    hosts: Mutex<HashMap<SocketAddr, String>>,
    grants: authorize::Grants,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Engine {
    pub fn new(
        store: Arc<Store>,
        pool: Arc<Pool>,
        scheduler: Option<SchedulerClient>,
        cfg: EngineConfig,
    ) -> Result<Arc<Engine>, EngineError> {
        let (connect, head, dest) = (cfg.origin_connect_timeout, cfg.origin_head_timeout, cfg.destinations.clone());
        let origin = match &cfg.origin_tls {
            Some(tls) => OriginClient::with_tls(connect, head, dest, tls),
            None => OriginClient::new(connect, head, dest)?,
        };
        Ok(Arc::new(Engine {
            store,
            origin,
            pool,
            scheduler,
            ingest: IngestBudget::new(cfg.ingest_memory),
            grants: authorize::Grants::new(cfg.authorize_ttl),
            cfg,
            active: Mutex::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
        }))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn scheduler(&self) -> Option<&SchedulerClient> {
        self.scheduler.as_ref()
    }

    /// The task for `req`: complete locally, or being downloaded (joined if already running here).
    /// Returns once the task exists locally; its pieces keep arriving afterwards.
    pub async fn fetch(self: &Arc<Self>, req: FetchRequest) -> Result<Fetch, Arc<EngineError>> {
        if let Some(task) = self.local_hit(&req.task_id) {
            return Ok(Fetch { task, source: Source::Local, origin_headers: None, fetched_with: None });
        }
        let mut rx = {
            let mut active = lock(&self.active);
            match active.get(&req.task_id) {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    active.insert(req.task_id, rx.clone());
                    // Every log line of the download, in any subsystem it calls, carries the task's span.
                    let span = tracing::info_span!("task", id = %req.task_id, url = %req.display_url);
                    tokio::spawn(tracing::Instrument::instrument(
                        conductor::conduct(self.clone(), req.clone(), tx),
                        span,
                    ));
                    rx
                }
            }
        };
        let published = rx.wait_for(|p| p.is_some()).await.map_err(|_| Arc::new(EngineError::Vanished))?;
        match published.as_ref() {
            Some(Ok(f)) => Ok(f.clone()),
            Some(Err(e)) => Err(e.clone()),
            None => Err(Arc::new(EngineError::Vanished)),
        }
    }

    /// Whether the requester of `req` may be served the copy `f` (see authorize.rs): Ok when no probe is
    /// needed, the origin said yes recently, or says yes now; the origin's refusal as
    /// [`EngineError::OriginStatus`] (for the client as is); another error when it could not be asked
    /// (nothing is served then: private content fails closed).
    /// The origin's answer to a HEAD of `url` with these headers, redirects not followed (a hub's
    /// metadata). Destination policy and TLS verification apply as to any origin request.
    pub async fn metadata(
        &self,
        url: &str,
        headers: &[(String, String)],
    ) -> Result<(http::StatusCode, http::HeaderMap), EngineError> {
        self.origin.head_once(url, headers).await
    }

    /// The origin just said yes to this requester for this task (its own request with these credentials
    /// succeeded): remembered as a probe's yes would be, so serving the copy asks nothing more.
    pub fn origin_said_yes(&self, req: &FetchRequest) {
        self.grants.grant(req.task_id, &req.credentials.fingerprint);
    }

    pub async fn authorize(&self, req: &FetchRequest, mode: Authorize, f: &Fetch) -> Result<(), EngineError> {
        let creds = &req.credentials;
        if !authorize::needs_probe(mode, creds, f.task.credentialed(), f.fetched_with.as_ref()) {
            return Ok(());
        }
        let m = metrics::global();
        if self.grants.granted(req.task_id, &creds.fingerprint) {
            Metrics::add(&m.authz_cached, 1);
            return Ok(());
        }
        let started = std::time::Instant::now();
        let r = authorize::probe(&self.origin, &req.url, &req.headers, creds).await;
        let ms = started.elapsed().as_millis() as u64;
        match &r {
            Ok(status) => {
                Metrics::add(&m.authz_allowed, 1);
                self.grants.grant(req.task_id, &creds.fingerprint);
                tracing::debug!(task = %req.task_id, %status, ms, source = f.source.as_str(), "origin allows the copy");
            }
            Err(EngineError::OriginStatus { status, .. }) => {
                Metrics::add(&m.authz_denied, 1);
                tracing::info!(task = %req.task_id, %status, ms, "origin refuses this requester the copy");
            }
            Err(e) => {
                Metrics::add(&m.authz_failed, 1);
                tracing::warn!(task = %req.task_id, error = %e, ms, "origin could not be asked; the copy is not served");
            }
        }
        r.map(|_| ())
    }

    /// The origin let `fp` read `id` just now (its GET for the task succeeded).
    fn granted_by_fetch(&self, id: TaskId, fp: &[u8; 32]) {
        self.grants.grant(id, fp);
    }

    /// The task when it is complete on this node (recorded as an access), else `None`.
    pub fn local_hit(&self, id: &TaskId) -> Option<Arc<crate::storage::Task>> {
        let t = self.store.get(id).filter(|t| t.is_complete())?;
        t.touch();
        Some(t)
    }

    fn finish_active(&self, id: &TaskId) {
        lock(&self.active).remove(id);
    }

    pub(crate) fn remember_parents(&self, parents: &[crate::scheduler::Parent]) {
        let mut h = lock(&self.hosts);
        for p in parents {
            h.insert(p.addr(), p.host_id.clone());
        }
    }

    fn host_id_of(&self, addr: SocketAddr) -> String {
        lock(&self.hosts).get(&addr).cloned().unwrap_or_else(|| addr.to_string())
    }
}
